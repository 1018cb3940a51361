"""Data layer: sources (npz root, tfds mocked and real, shipped samples, real shared data), selection,
encodings, errors."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from ntkrepro import data
from ntkrepro.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not (SHARED / "mnist.npz").is_file(), reason=f"no real data at {SHARED}")


def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def fake_npz(path, shape, labels_train, labels_test=(0, 1, 2), seed=0, **extra):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, labels in (("train", labels_train), ("test", labels_test)):
        arrays[f"x_{split}"] = rng.integers(0, 256, size=(len(labels), *shape), dtype=np.uint8)
        arrays[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def root(tmp_path):
    """A data root with a fake mnist.npz (labels 0..9 twice) and a fake cifar10.npz with known labels."""
    fake_npz(tmp_path / "mnist.npz", (28, 28), list(range(10)) * 2)
    # cifar labels in file order: airplane(0) x3, horse(7) x2, bird(2) x4, interleaved
    fake_npz(tmp_path / "cifar10.npz", (32, 32, 3), [7, 0, 2, 2, 0, 7, 2, 0, 2])
    return tmp_path


# ------------------------------------------------------------------------------------ npz source
def test_npz_root_reads_files_and_adds_mnist_channel(root):
    x, y, info = data.load_raw("mnist", "train", root=root)  # auto + root -> npz
    assert x.shape == (20, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int64
    assert info["source"] == f"npz:{root.resolve() / 'mnist.npz'}" and info["n_available"] == 20
    assert info["checksum"] == data.checksum(x, y)
    x, y, info = data.load_raw("cifar10", "test", source="npz", root=root)
    assert x.shape == (3, 32, 32, 3) and list(y) == [0, 1, 2] and info["n_available"] == 3


# ------------------------------------------------------------ the files as the data sets' sites ship them
def _idx(a) -> bytes:
    """An IDX file of unsigned bytes: 0, 0, 0x08, ndim, big-endian int32 sizes, data (MNIST's format)."""
    a = np.asarray(a, np.uint8)
    return bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">i4").tobytes() + a.tobytes()


def write_mnist_idx(root: Path, arrays: dict, gz: bool = True) -> None:
    import gzip

    for split, (images, labels) in data.MNIST_IDX.items():
        for stem, key in ((images, f"x_{split}"), (labels, f"y_{split}")):
            raw = _idx(arrays[key])
            (root / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(raw) if gz else raw)


def _cifar_batch(x, y) -> bytes:
    """One batch as CIFAR-10's python version holds it (written by Python 2: bytes keys, the array's
    reconstructor under its old module name numpy.core.multiarray), channel-first rows of 3072 bytes."""
    import pickle

    d = {b"batch_label": b"batch", b"labels": [int(v) for v in y],
         b"data": np.ascontiguousarray(np.asarray(x, np.uint8).transpose(0, 3, 1, 2).reshape(len(x), 3072)),
         b"filenames": [b"f.png"] * len(x)}
    raw = pickle.dumps(d, protocol=3)
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def write_cifar_python(root: Path, arrays: dict, archive: bool = True, batch=None) -> Path:
    import io
    import tarfile

    parts = np.array_split(np.arange(len(arrays["y_train"])), 5)
    files = {f"data_batch_{i + 1}": _cifar_batch(arrays["x_train"][p], arrays["y_train"][p]) for i, p in enumerate(parts)}
    files["test_batch"] = batch if batch is not None else _cifar_batch(arrays["x_test"], arrays["y_test"])
    if not archive:
        (root / "cifar-10-batches-py").mkdir()
        for name, raw in files.items():
            (root / "cifar-10-batches-py" / name).write_bytes(raw)
        return root / "cifar-10-batches-py"
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, raw in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return root / "cifar-10-python.tar.gz"


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_as_distributed_give_the_npz_arrays(tmp_path, gz):
    arrays = fake_npz(tmp_path / "ref.npz", (28, 28), list(range(10)) * 3, labels_test=[3, 1, 4, 1, 5])
    write_mnist_idx(tmp_path, arrays, gz=gz)
    for split in data.SPLITS:
        x, y, info = data.load_raw("mnist", split, root=tmp_path)
        assert np.array_equal(x[..., 0], arrays[f"x_{split}"]) and np.array_equal(y, arrays[f"y_{split}"])
        stem = data.MNIST_IDX[split][0] + (".gz" if gz else "")
        assert info["source"] == f"files:{tmp_path.resolve() / stem}" and y.dtype == np.int64
    (tmp_path / "mnist.npz").write_bytes((tmp_path / "ref.npz").read_bytes())   # an npz comes first
    assert data.load_raw("mnist", "train", root=tmp_path)[2]["path"].endswith("mnist.npz")


@pytest.mark.parametrize("archive", [True, False])
def test_cifar10_python_version_as_distributed_gives_the_npz_arrays(tmp_path, archive):
    arrays = fake_npz(tmp_path / "ref.npz", (32, 32, 3), [7, 0, 2, 2, 0, 7, 2, 0, 2, 9, 1], labels_test=[5, 6, 8])
    where = write_cifar_python(tmp_path, arrays, archive=archive)
    for split in data.SPLITS:
        x, y, info = data.load_raw("cifar10", split, root=tmp_path)
        assert np.array_equal(x, arrays[f"x_{split}"]) and np.array_equal(y, arrays[f"y_{split}"])
        assert info["path"] == str(where.resolve())
    fake_npz(tmp_path / "cifar10_partial.npz", (32, 32, 3), [1, 2])   # the official files beat the partial
    assert data.load_raw("cifar10", "train", root=tmp_path)[2]["path"] == str(where.resolve())


@needs_shared
def test_real_mnist_written_as_idx_files_reads_back_identical(tmp_path):
    with np.load(SHARED / "mnist.npz") as f:
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    write_mnist_idx(tmp_path, arrays)
    for split in data.SPLITS:
        assert data.load_raw("mnist", split, root=tmp_path)[2]["checksum"] == \
            data.load_raw("mnist", split, root=SHARED)[2]["checksum"]


def test_damaged_or_unsafe_distributed_files_are_one_line(tmp_path):
    import pickle

    arrays = fake_npz(tmp_path / "ref.npz", (28, 28), [1, 2, 3])
    write_mnist_idx(tmp_path, arrays)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "test", root=tmp_path)
    assert "lacks t10k-labels-idx1-ubyte[.gz]" in one_line(err)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "test", root=tmp_path)
    assert "download it again" in one_line(err)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(arrays["y_test"])[:-1])   # one byte short
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "test", root=tmp_path)
    assert "holds 2 bytes of data for the shape (3,)" in one_line(err)

    class Boom:  # a pickle that would run code when loaded
        def __reduce__(self):
            return (print, ("ran",))

    carr = fake_npz(tmp_path / "c.npz", (32, 32, 3), [1, 2])
    write_cifar_python(tmp_path, carr, batch=pickle.dumps({b"data": Boom()}, protocol=3))
    with pytest.raises(DataError) as err:
        data.load_raw("cifar10", "test", root=tmp_path)
    assert "builtins.print is not allowed in a CIFAR-10 batch" in one_line(err)
    with pytest.raises(DataError) as err:
        data.load_raw("cifar10", "train", root=tmp_path / "nowhere")
    assert "does not exist" in one_line(err)


def test_npz_prefers_full_cifar_file_then_partial(tmp_path):
    fake_npz(tmp_path / "cifar10_partial.npz", (32, 32, 3), [1, 2])
    assert data.load_raw("cifar10", "train", root=tmp_path)[2]["path"].endswith("cifar10_partial.npz")
    fake_npz(tmp_path / "cifar10.npz", (32, 32, 3), [1, 2, 3])
    _, y, info = data.load_raw("cifar10", "train", root=tmp_path)
    assert info["path"].endswith("cifar10.npz") and len(y) == 3


def test_npz_missing_root_file_keys_and_bad_dtype(tmp_path):
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "train", root=tmp_path / "nowhere")
    assert "does not exist" in one_line(err) and "data.root" in str(err.value)
    with pytest.raises(DataError) as err:
        data.load_raw("cifar10", "train", root=tmp_path)
    msg = one_line(err)
    assert "cifar10.npz, cifar-10-python.tar.gz, cifar-10-batches-py, cifar10_partial.npz" in msg and str(tmp_path) in msg and "data.source=tfds" in msg
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "train", source="npz")
    assert "data.root" in one_line(err)
    np.savez(tmp_path / "mnist.npz", x_train=np.zeros((2, 28, 28), np.uint8), y_train=np.zeros(2))
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "train", root=tmp_path)
    assert "x_test, y_test" in one_line(err)
    fake_npz(tmp_path / "mnist.npz", (28, 28), [1, 2])
    np.savez(tmp_path / "mnist.npz", **{**dict(np.load(tmp_path / "mnist.npz")),
                                        "x_train": np.zeros((2, 28, 28), np.float32)})
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "train", root=tmp_path)
    assert "uint8" in one_line(err)
    (tmp_path / "mnist.npz").write_text("not a zip file")
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "train", root=tmp_path)
    assert "cannot read" in one_line(err)


def test_npz_wrong_image_shape(tmp_path):
    fake_npz(tmp_path / "cifar10.npz", (28, 28), [1, 2])  # MNIST-shaped images in the CIFAR file
    with pytest.raises(DataError) as err:
        data.load_raw("cifar10", "train", root=tmp_path)
    assert "32, 32, 3" in one_line(err)


# ----------------------------------------------------------------------------------- tfds source
def test_tfds_mock_through_load_raw_and_prepare():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        x, y, info = data.load_raw("mnist", "train", source="tfds")
        assert x.shape == (12, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int64
        assert info["source"] == "tfds" and info["n_available"] == 12
        assert info["checksum"] == data.checksum(x, y)
        ds = data.prepare("cifar10", split="test", n=8, flatten=True, source="tfds", targets="onehot")
    assert ds.x.shape == (8, 3072) and ds.x.dtype == np.float64 and 0 <= ds.x.min() and ds.x.max() <= 1
    assert ds.y.shape == (8, 10) and np.array_equal(ds.y.argmax(1), ds.labels)


def test_tfds_failure_is_one_line_with_cause(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def boom(*args, **kwargs):
        raise RuntimeError("download failed:\nhost unreachable")

    monkeypatch.setattr(tfds, "data_source", boom)
    with pytest.raises(DataError) as err:
        data.load_raw("cifar10", "train", source="tfds")
    assert "download failed: host unreachable" in one_line(err) and "data.root" in str(err.value)


@pytest.fixture
def fresh_probe():
    """The tfds probe is cached per process: clear it around a test that changes what imports."""
    data.tfds_available.cache_clear()
    yield
    data.tfds_available.cache_clear()


def test_tfds_not_installed(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    with pytest.raises(DataError) as err:
        data.load_raw("mnist", "train", source="tfds")
    assert "pip install -e '.[tfds]'" in one_line(err)
    assert not data.tfds_available()
    with pytest.raises(DataError) as err:  # auto never picks a source that cannot load
        data.load_raw("cifar10", "test")
    assert one_line(err) == ("no data source for cifar10: pass data.root=<dir holding cifar10.npz> or install "
                             "the tfds extra (pip install -e '.[tfds]') on a connected machine")
    assert data.load_raw("mnist", "test", source="sample")[2]["source"] == "sample"


def test_tfds_probe_agrees_with_a_real_import(tmp_path, fresh_probe):
    """No mock: import tensorflow-datasets and go as far as its MNIST builder does before downloading."""
    if importlib.util.find_spec("tensorflow_datasets") is None:
        pytest.skip("tensorflow-datasets is not installed (the tfds extra)")
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder("mnist", data_dir=str(tmp_path))
        assert builder.code_path  # imports importlib_resources (undeclared by tfds 4.9)
        importlib.import_module("array_record")  # what data_source reads
        importlib.import_module("tensorflow")  # what the MNIST builder prepares the files with
        works = True
    except ImportError:
        works = False
    assert data.tfds_available() is works
    if not works:
        with pytest.raises(DataError, match="install the tfds extra"):
            data.resolve_source("auto", name="mnist")


def test_auto_source_resolution(tmp_path):
    assert data.resolve_source("auto", tmp_path) == "npz"
    if data.tfds_available():
        assert data.resolve_source("auto") == "tfds"
    with pytest.raises(ConfigError) as err:
        data.resolve_source("s3")
    assert "auto, npz, tfds, sample" in one_line(err)


# -------------------------------------------------------------------------------- shipped samples
@pytest.mark.parametrize("name,n_train,n_test,shape", [("mnist", 2000, 500, (28, 28, 1)),
                                                       ("cifar10", 1000, 200, (32, 32, 3))])
def test_shipped_samples_are_real_looking(name, n_train, n_test, shape):
    for split, n in (("train", n_train), ("test", n_test)):
        x, y, info = data.load_raw(name, split, source="sample")
        assert x.shape == (n, *shape) and x.dtype == np.uint8 and y.dtype == np.int64
        assert info["source"] == "sample" and info["n_available"] == n
        assert x.max() == 255 and x.min() == 0 and set(np.unique(y)) == set(range(10))
        assert np.bincount(y).min() >= n // 20  # roughly balanced, as the real data are
    with np.load(data.SAMPLES_DIR / f"{name}_sample.npz") as f:
        assert "cut from" in str(f["note"])


def test_shipped_samples_size_and_known_first_labels():
    total = sum((data.SAMPLES_DIR / f"{n}_sample.npz").stat().st_size for n in data.DATASETS)
    assert total < 6_000_000
    # the real first labels: MNIST train starts 5 0 4 1 9, CIFAR-10 data_batch_1 starts frog truck truck
    assert list(data.load_raw("mnist", "train", source="sample")[1][:5]) == [5, 0, 4, 1, 9]
    assert list(data.load_raw("cifar10", "train", source="sample")[1][:3]) == [6, 9, 9]


def test_sample_n_too_large_points_at_full_data():
    with pytest.raises(DataError) as err:
        data.prepare("mnist", split="test", n=501, source="sample")
    msg = one_line(err)
    assert "holds 500" in msg and "501" in msg and "data.root" in msg


# ------------------------------------------------------------------------------- real shared data
@needs_shared
def test_real_cifar_partial_fallback_and_available_count():
    x, y, info = data.load_raw("cifar10", "test", root=SHARED)
    assert info["path"].endswith("cifar10_partial.npz") and info["n_available"] == 1017 == len(y)
    with pytest.raises(DataError) as err:
        data.prepare("cifar10", split="train", n=50000, classes=["airplane", "horse"], root=SHARED)
    msg = one_line(err)
    assert "50000" in msg and "cifar10_partial.npz" in msg and "[airplane, horse]" in msg
    n_avail = int(np.isin(data.load_raw("cifar10", "train", root=SHARED)[1], [0, 7]).sum())
    assert f"holds {n_avail};" in msg


@needs_shared
def test_samples_match_real_data():
    for name, n in (("mnist", 500), ("cifar10", 200)):
        xs, ys, _ = data.load_raw(name, "test", source="sample")
        xr, yr, _ = data.load_raw(name, "test", root=SHARED)
        assert np.array_equal(xs, xr[:n]) and np.array_equal(ys, yr[:n])


# ------------------------------------------------------------------------------------- prepare
def test_class_subset_reindexing_in_given_order(root):
    ds = data.prepare("cifar10", classes=["horse", "airplane"], targets="label", root=root)
    # file labels [7, 0, 2, 2, 0, 7, 2, 0, 2] -> keep horse/airplane in file order -> horse=0, airplane=1
    assert list(ds.labels) == [0, 1, 1, 0, 1] and ds.labels.dtype == np.int64
    assert np.array_equal(ds.y[:, 0], ds.labels.astype(float))
    assert ds.info["classes"] == ["horse", "airplane"] and ds.info["n_available"] == 5
    by_index = data.prepare("cifar10", classes=[7, 0], targets="label", root=root)
    assert np.array_equal(by_index.x, ds.x) and np.array_equal(by_index.labels, ds.labels)
    x_raw = data.load_raw("cifar10", "train", root=root)[0]
    assert np.allclose(ds.x[0], x_raw[0] / 255.0) and np.allclose(ds.x[1], x_raw[1] / 255.0)


def test_first_and_stratified_selection(root):
    first = data.prepare("cifar10", n=4, classes=["airplane", "horse", "bird"], root=root)
    assert list(first.labels) == [1, 0, 2, 2]  # first 4 in file order: horse airplane bird bird
    strat = data.prepare("cifar10", n=7, classes=["airplane", "horse", "bird"], selection="stratified", root=root)
    assert list(np.bincount(strat.labels)) == [3, 2, 2]  # as equal as possible, earlier classes +1
    x_raw, y_raw, _ = data.load_raw("cifar10", "train", root=root)
    picked = [1, 4, 7, 0, 5, 2, 3]  # first of each class; returned in file order
    assert np.allclose(strat.x, x_raw[sorted(picked)] / 255.0)
    with pytest.raises(DataError) as err:  # horse has only 2: cannot give 3 per class
        data.prepare("cifar10", n=9, classes=["airplane", "horse", "bird"], selection="stratified", root=root)
    assert "3 of class 'horse'" in one_line(err) and "holds 2" in str(err.value)


def test_random_selection_is_seeded(root):
    a = data.prepare("mnist", n=8, selection="random", seed=1, root=root)
    b = data.prepare("mnist", n=8, selection="random", seed=1, root=root)
    c = data.prepare("mnist", n=8, selection="random", seed=2, root=root)
    assert a.info["checksum"] == b.info["checksum"] != c.info["checksum"]


def test_targets_encodings():
    labels = np.array([0, 2, 1])
    onehot = np.eye(3)[labels]
    assert np.array_equal(data.encode_targets(labels, 3, "onehot"), onehot)
    centered = data.encode_targets(labels, 3, "centered_onehot")
    assert np.allclose(centered, onehot - 1 / 3) and np.allclose(centered.sum(1), 0)
    arora = data.encode_targets(labels, 3, "arora")
    assert np.allclose(arora[0], [0.9, -0.1, -0.1]) and np.allclose(arora[1], [-0.1, -0.1, 0.9])
    assert np.array_equal(data.encode_targets(labels, 3, "label"), [[0.0], [2.0], [1.0]])
    assert np.array_equal(data.encode_targets(np.array([0, 1, 1]), 2, "pm1"), [[1.0], [-1.0], [-1.0]])
    with pytest.raises(ConfigError) as err:
        data.encode_targets(labels, 3, "pm1")
    assert "2 classes" in one_line(err)


def test_standardize_modes(root):
    kw = dict(flatten=True, root=root, source="npz")
    feat = data.prepare("mnist", standardize="feature", **kw).x
    assert np.allclose(feat.mean(0), 0) and np.allclose(feat.std(0), 1)
    img = data.prepare("mnist", standardize="image", **kw).x
    assert np.allclose(img.mean(1), 0) and np.allclose(img.std(1), 1)
    unit = data.prepare("mnist", standardize="unit_norm", **kw).x
    assert np.allclose(np.linalg.norm(unit, axis=1), 1)
    image_shaped = data.prepare("mnist", standardize="image", root=root).x
    assert image_shaped.shape == (20, 28, 28, 1) and np.allclose(image_shaped.reshape(20, -1), img)
    raw = data.prepare("mnist", **kw).x
    assert raw.min() >= 0 and raw.max() <= 1 and raw.max() > 0.99


def test_checksum_stability(root):
    a = np.arange(6, dtype=np.uint8)
    assert data.checksum(a) == data.checksum(a.copy())
    assert data.checksum(a) != data.checksum(a.reshape(2, 3)) != data.checksum(a.astype(np.int64))
    assert data.checksum(a, a) != data.checksum(a)
    # pinned: manifests compare checksums across runs and versions
    assert data.checksum(a) == "3b32beb96b25d3e64ad9ede670d3c0709f1c5e0f1304044cdb4547a8c1854bf4"
    d1 = data.prepare("cifar10", n=5, root=root)
    d2 = data.prepare("cifar10", n=5, root=root)
    assert d1.info["checksum"] == d2.info["checksum"] == data.checksum(d1.x, d1.y)
    assert d1.info["checksum"] != data.prepare("cifar10", n=4, root=root).info["checksum"]


@pytest.mark.parametrize("kwargs,error,fragment", [
    (dict(n=0), ConfigError, "positive integer"),
    (dict(n=-3), ConfigError, "positive integer"),
    (dict(n=2.5), ConfigError, "positive integer"),
    (dict(n=10), DataError, "holds 9"),
    (dict(n=6, classes=["airplane", "horse"]), DataError, "holds 5"),
    (dict(classes=["airplane", "zebra"]), ConfigError, "'zebra'"),
    (dict(classes=[0, 10]), ConfigError, "0..9"),
    (dict(classes=["horse", 7]), ConfigError, "repeat"),
    (dict(classes=[]), ConfigError, "non-empty"),
    (dict(classes=["airplane", "horse", "bird"], targets="pm1"), ConfigError, "2 classes"),
    (dict(standardize="zca"), ConfigError, "none, feature, image, unit_norm"),
    (dict(targets="softmax"), ConfigError, "label, onehot, centered_onehot, pm1, arora"),
    (dict(selection="last"), ConfigError, "first, stratified, random"),
    (dict(split="validation"), ConfigError, "train, test"),
])
def test_prepare_bad_inputs(root, kwargs, error, fragment):
    with pytest.raises(error) as err:
        data.prepare("cifar10", root=root, **kwargs)
    assert fragment in one_line(err)


def test_unknown_dataset_and_n_message(root):
    with pytest.raises(ConfigError) as err:
        data.prepare("imagenet", root=root)
    assert "mnist, cifar10" in one_line(err)
    with pytest.raises(DataError) as err:
        data.prepare("cifar10", n=50000, classes=["airplane", "horse"], root=root)
    assert one_line(err) == (f"asked for 50000 train examples of cifar10 [airplane, horse] but the source "
                             f"npz:{root.resolve() / 'cifar10.npz'} holds 5; "
                             f"lower figure.<scale>.task.n_train or point data.root at the full data set")


# ------------------------------------------------------------------------------------- synthetic
def test_gaussian_inputs_and_unit_circle():
    g = data.gaussian_inputs(500, 4, seed=3)
    assert g.shape == (500, 4) and g.dtype == np.float64
    assert np.array_equal(g, data.gaussian_inputs(500, 4, seed=3))
    assert not np.allclose(g, data.gaussian_inputs(500, 4, seed=4))
    assert abs(g.mean()) < 0.1 and abs(g.std() - 1) < 0.1
    angles, pts = data.unit_circle(5)
    assert np.allclose(angles, [-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi])
    assert np.allclose(pts[2], [1, 0]) and np.allclose(np.linalg.norm(pts, axis=1), 1)
    angles, _ = data.unit_circle(4, start=0, stop=2 * np.pi, endpoint=False)
    assert np.allclose(angles, [0, np.pi / 2, np.pi, 3 * np.pi / 2])
    for bad in (lambda: data.gaussian_inputs(0, 3), lambda: data.unit_circle(0)):
        with pytest.raises(ConfigError) as err:
            bad()
        one_line(err)


def test_a_figure_reads_the_distributed_mnist_files_through_make(tmp_path):
    # the shipped MNIST sample written as the four IDX files: the run reads them (manifest) and its
    # metrics equal those of the same run on the sample itself
    import pandas as pd

    from helpers import make

    root = tmp_path / "idx"
    root.mkdir()
    with np.load(data.SAMPLES_DIR / "mnist_sample.npz") as f:
        write_mnist_idx(root, {k: f[k] for k in f.files})
    runs = {}
    for name, source in (("files", f"data.source=npz data.root={root}"), ("sample", "data.source=sample")):
        res = make("figure-lee-1", "SCALE=smoke", f"ARGS={source} out_root={tmp_path / name}", timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = (tmp_path / name / "lee-1" / "smoke" / "latest").resolve()
    assert f"files:{root / 'train-images-idx3-ubyte.gz'}" in (runs["files"] / "manifest.json").read_text()
    pd.testing.assert_frame_equal(pd.read_csv(runs["files"] / "metrics.csv"), pd.read_csv(runs["sample"] / "metrics.csv"))
