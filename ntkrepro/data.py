"""Data: MNIST / CIFAR-10 from a local folder, tensorflow-datasets or the shipped samples; synthetic inputs.

Sources (`source=`), each returning the same arrays for the same images:
  "npz"    a data root holding `mnist.npz` and `cifar10.npz` (or, failing that, `cifar10_partial.npz`),
           keys x_train y_train x_test y_test, pixels uint8; or the files as the data sets' own sites
           distribute them, read as they are (no conversion step): MNIST's four IDX files
           (`train-images-idx3-ubyte.gz`, ..., gzipped or not) and CIFAR-10's python version
           (`cifar-10-python.tar.gz`, or the `cifar-10-batches-py/` folder it unpacks to);
  "tfds"   `tensorflow_datasets.data_source(name, split, download=True, data_dir=root)`;
  "sample" the small real samples inside the package (`ntkrepro/samples/<name>_sample.npz`:
           MNIST first 2000 train / 500 test, CIFAR-10 first 1000 train / 200 test);
  "auto"   "npz" when a root is given, else "tfds" when tensorflow-datasets works here (it and what
           it needs to prepare a data set import: `tfds_available`), else a `DataError` saying how to
           get the data (the runner picks "sample" itself at smoke scale).
A request for more examples than the source holds is a `DataError` that says how many it holds;
nothing is ever silently truncated.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import importlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ntkrepro.errors import ConfigError, DataError

DATASETS = ("mnist", "cifar10")
SPLITS = ("train", "test")
SOURCES = ("auto", "npz", "tfds", "sample")
SELECTIONS = ("first", "stratified", "random")
STANDARDIZE = ("none", "feature", "image", "unit_norm")
TARGETS = ("label", "onehot", "centered_onehot", "pm1", "arora")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES = {"mnist": tuple(str(d) for d in range(10)), "cifar10": CIFAR10_CLASSES}
IMAGE_SHAPE = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
NPZ_FILES = {"mnist": ("mnist.npz",), "cifar10": ("cifar10.npz", "cifar10_partial.npz")}
# the files as distributed by the data sets' sites (yann.lecun.com / its mirrors; cs.toronto.edu/~kriz)
MNIST_IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR10_PYTHON = ("cifar-10-python.tar.gz", "cifar-10-batches-py")
CIFAR10_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
LOOKED_FOR = {"mnist": ("mnist.npz", "train-images-idx3-ubyte[.gz] and the other MNIST IDX files"),
              "cifar10": ("cifar10.npz", *CIFAR10_PYTHON, "cifar10_partial.npz")}
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
STD_FLOOR = 1e-8
PM1_NEEDS_TWO = "targets=pm1 needs exactly 2 classes, got {k}; set data.classes=[a,b] or data.targets=onehot"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """x: float64 (N, H, W, C), or (N, H*W*C) if flattened; y: float64 targets (N, k), or (N, 1) for
    targets "label"/"pm1"; labels: int64 (N,) in 0..k-1 (order of `classes`); info: JSON-friendly provenance."""
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    info: dict

    def __len__(self) -> int:
        return len(self.x)


def checksum(*arrays) -> str:
    """sha256 (hex) over the dtype, shape and C-order bytes of each array, in order."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _one_line(err: BaseException) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _choice(kind: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")


# ----------------------------------------------------------------------------------- raw loading
def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    keys = (f"x_{split}", f"y_{split}")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks the keys {', '.join(missing)} (has {', '.join(f.files)}); "
                                f"save it with keys x_train y_train x_test y_test")
            return f[keys[0]], f[keys[1]]
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one clear line
        raise DataError(f"cannot read {path} ({_one_line(err)}); replace the file or set data.source=tfds") from err


def _idx_file(root: Path, stem: str) -> Path | None:
    return next((root / f for f in (stem, stem + ".gz") if (root / f).is_file()), None)


def _find_local(name: str, root) -> Path:
    """The file of data set `name` under the data root: its .npz, else the distributed files (the first
    MNIST IDX file; CIFAR-10's archive or unpacked folder), else `cifar10_partial.npz`."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data root {root} does not exist; set data.root=<dir holding "
                        f"{' or '.join(NPZ_FILES[name])}> or data.source=tfds")
    found = [root / NPZ_FILES[name][0]]
    if name == "mnist":
        found.append(_idx_file(root, MNIST_IDX["train"][0]))
    else:
        found += [root / CIFAR10_PYTHON[0], root / CIFAR10_PYTHON[1], root / NPZ_FILES[name][1]]
    for path in found:
        if path is not None and (path.is_dir() if path.name == CIFAR10_PYTHON[1] else path.is_file()):
            return path
    raise DataError(f"data set {name!r} not found under {root} (looked for {', '.join(LOOKED_FOR[name])}); "
                    f"set data.root=<dir holding it> or data.source=tfds")


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (MNIST's format: 0, 0, type 0x08, ndim, then ndim big-endian int32
    sizes and the data), gzipped or not."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except Exception as err:  # noqa: BLE001 - a damaged download becomes one clear line
        raise DataError(f"cannot read {path} ({_one_line(err)}); download it again") from err
    ndim = raw[3] if len(raw) >= 4 else 0
    if raw[:3] != b"\0\0\x08" or len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} is not an IDX file of unsigned bytes; download it again")
    shape = tuple(int(v) for v in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {data.size} bytes of data for the shape {shape}; download it again")
    return data.reshape(shape)


def _read_mnist_idx(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(images, labels, the images' file) of MNIST's `split` from its IDX files under root."""
    paths = [_idx_file(root, stem) for stem in MNIST_IDX[split]]
    if None in paths:
        missing = [stem for stem, p in zip(MNIST_IDX[split], paths) if p is None]
        raise DataError(f"{root} lacks {', '.join(missing)}[.gz] (MNIST's {split} split); download it beside "
                        f"{MNIST_IDX['train'][0]}")
    return _read_idx(paths[0]), _read_idx(paths[1]), paths[0]


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR-10's batches (dicts of bytes, lists and numpy arrays) and nothing that could run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _cifar_batches(source: Path, names) -> list[bytes]:
    if source.is_dir():
        return [(source / n).read_bytes() for n in names]
    with tarfile.open(source, "r:gz") as tar:
        return [tar.extractfile(f"{CIFAR10_PYTHON[1]}/{n}").read() for n in names]


def _read_cifar_python(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's python version: the batches of `split` from the archive or its unpacked folder (each a
    pickled dict: b"data" (10000, 3072) uint8, channel-first rows; b"labels")."""
    xs, ys = [], []
    try:
        for raw in _cifar_batches(source, CIFAR10_BATCHES[split]):
            d = _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
            xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[b"labels"], np.int64))
    except Exception as err:  # noqa: BLE001 - a damaged archive or batch becomes one clear line
        raise DataError(f"cannot read CIFAR-10's {split} batches from {source} ({_one_line(err)}); "
                        "download cifar-10-python.tar.gz again") from err
    return np.concatenate(xs), np.concatenate(ys)


def _read_found(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    """(x, y, the file they came from) for what `_find_local` found."""
    if path.suffix == ".npz":
        return (*_read_npz(path, split), path)
    if path.name.startswith(MNIST_IDX["train"][0]):
        return _read_mnist_idx(path.parent, split)
    return (*_read_cifar_python(path, split), path)


def _read_tfds(name: str, split: str, root) -> tuple[np.ndarray, np.ndarray]:
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError("tensorflow_datasets is not installed; run pip install -e '.[tfds]' "
                        "or set data.root=<dir holding mnist.npz / cifar10.npz>") from err
    try:
        ds = tfds.data_source(name, split=split, download=True,
                              data_dir=None if root is None else str(root))
        examples = [ds[i] for i in range(len(ds))]
    except Exception as err:  # noqa: BLE001 - download/prepare failures of any kind
        fix = ("install the tfds extra (pip install -e '.[tfds]')" if isinstance(err, ImportError)
               else "check the network")
        raise DataError(f"tensorflow-datasets could not provide {name}/{split} ({_one_line(err)}); "
                        f"{fix} or set data.root=<dir holding {NPZ_FILES[name][0]}>") from err
    if not examples:
        raise DataError(f"tensorflow-datasets returned no examples for {name}/{split}; "
                        f"set data.root=<dir holding {NPZ_FILES[name][0]}>")
    x = np.stack([np.asarray(e["image"]) for e in examples])
    y = np.array([int(e["label"]) for e in examples], dtype=np.int64)
    return x, y


def _check(name: str, x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim == 3:
        x = x[..., None]
    if x.dtype != np.uint8:
        raise DataError(f"{where}: {name} pixels are {x.dtype}, expected uint8 in 0..255; re-save the images as uint8")
    if x.shape[1:] != IMAGE_SHAPE[name] or y.shape != (len(x),):
        raise DataError(f"{where}: {name} has images {x.shape} and labels {y.shape}, expected "
                        f"(N, {', '.join(map(str, IMAGE_SHAPE[name]))}) and (N,); fix the file")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{where}: {name} labels outside 0..9; fix the file")
    return x, y


# what `tfds.data_source(..., download=True)` imports on its way: the builder (importlib_resources,
# undeclared by tensorflow-datasets 4.9 on Python >= 3.9), the array_record reader, and tensorflow,
# which the MNIST and CIFAR-10 builders use to prepare the files
TFDS_NEEDS = ("tensorflow_datasets", "importlib_resources", "array_record", "tensorflow")


@functools.lru_cache(maxsize=None)
def tfds_available() -> bool:
    """Whether the tfds source can work here: every module in TFDS_NEEDS really imports (probed once)."""
    for name in TFDS_NEEDS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import failure means the source cannot load
            return False
    return True


def resolve_source(source: str, root=None, name: str = "mnist") -> str:
    """The concrete source that `source` means ("auto": npz if root, else tfds if it works here, else
    a `DataError` saying how to get data set `name`)."""
    _choice("data source", source, SOURCES)
    if source != "auto":
        return source
    if root is not None:
        return "npz"
    if tfds_available():
        return "tfds"
    raise DataError(f"no data source for {name}: pass data.root=<dir holding {NPZ_FILES[name][0]}> or "
                    "install the tfds extra (pip install -e '.[tfds]') on a connected machine")


def load_raw(name: str, split: str, *, source: str = "auto", root=None):
    """-> (x uint8 (N, H, W, C), y int64 (N,), info {source, path, n_available, checksum, ...})."""
    _choice("data set", name, DATASETS)
    _choice("split", split, SPLITS)
    resolved = resolve_source(source, root, name)
    path = None
    if resolved == "npz":
        if root is None:
            raise DataError("data.source=npz needs a data root; set data.root=<dir holding "
                            f"{' or '.join(NPZ_FILES[name])}>")
        x, y, path = _read_found(_find_local(name, root), split)
        label = f"{'npz' if path.suffix == '.npz' else 'files'}:{path}"
    elif resolved == "tfds":
        x, y = _read_tfds(name, split, root)
        label = "tfds"
    else:
        path = SAMPLES_DIR / f"{name}_sample.npz"
        if not path.is_file():
            raise DataError(f"the shipped sample {path} is missing; reinstall ntkrepro or set data.root")
        x, y = _read_npz(path, split)
        label = "sample"
    x, y = _check(name, x, y, label if path is None else str(path))
    info = {"name": name, "split": split, "source": label, "path": None if path is None else str(path),
            "n_available": int(len(x)), "checksum": checksum(x, y)}
    return x, y, info


# ------------------------------------------------------------------------------------- prepare
def _class_indices(name: str, classes) -> list[int]:
    names = CLASS_NAMES[name]
    if classes is None:
        return list(range(len(names)))
    if isinstance(classes, (str, int)) or len(classes) == 0:
        raise ConfigError(f"classes must be a non-empty list of names or indices, got {classes!r}; "
                          f"e.g. classes=[{names[0]},{names[7]}]")
    out = []
    for c in classes:
        if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(names):
            out.append(int(c))
        elif isinstance(c, str) and c in names:
            out.append(names.index(c))
        else:
            raise ConfigError(f"unknown {name} class {c!r}; use indices 0..{len(names) - 1} "
                              f"or names {', '.join(names)}")
    if len(set(out)) != len(out):
        raise ConfigError(f"classes {list(classes)!r} repeat a class; list each class once")
    return out


def _select(labels: np.ndarray, n: int, names: list, selection: str, seed: int, what: str) -> np.ndarray:
    """Positions (sorted, i.e. file order) of the n chosen examples; labels already re-indexed 0..k-1."""
    if selection == "first":
        return np.arange(n)
    if selection == "random":
        return np.sort(np.random.default_rng(seed).choice(len(labels), size=n, replace=False))
    k = len(names)
    quota = [n // k + (c < n % k) for c in range(k)]  # earlier classes take the remainder
    picked = []
    for c, q in enumerate(quota):
        members = np.flatnonzero(labels == c)
        if len(members) < q:
            raise DataError(f"stratified selection of {n} examples of {what} needs {q} of class {names[c]!r} "
                            f"but the source holds {len(members)}; lower figure.<scale>.task.n_train / n_test or set figure.<scale>.task.selection=first")
        picked.append(members[:q])
    return np.sort(np.concatenate(picked))


def _standardize(x: np.ndarray, how: str) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    if how == "feature":  # per feature over the selected set; constant features become 0
        flat = (flat - flat.mean(0)) / np.maximum(flat.std(0), STD_FLOOR)
    elif how == "image":  # per image: zero mean, unit variance over all its pixels and channels
        flat = (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, keepdims=True), STD_FLOOR)
    elif how == "unit_norm":  # per example: Euclidean norm 1 (an all-zero example stays 0)
        flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), STD_FLOOR)
    return flat.reshape(x.shape)


def encode_targets(labels: np.ndarray, k: int, targets: str) -> np.ndarray:
    """float64 (N, k) targets, or (N, 1) for "label" and "pm1"."""
    _choice("targets", targets, TARGETS)
    onehot = np.eye(k)[labels]
    if targets == "label":
        return labels.astype(np.float64)[:, None]
    if targets == "onehot":
        return onehot
    if targets == "centered_onehot":  # zero-mean one-hot (Lee et al. 2018/2019, MSE)
        return onehot - 1.0 / k
    if targets == "arora":  # Arora et al. 2019: 0.9 for the true class, -0.1 otherwise
        return onehot - 0.1
    if k != 2:
        raise ConfigError(PM1_NEEDS_TWO.format(k=k))
    return np.where(labels == 0, 1.0, -1.0)[:, None]


def prepare(name: str, *, split: str = "train", n: int | None = None, classes=None, selection: str = "first",
            flatten: bool = False, standardize: str = "none", targets: str = "onehot",
            source: str = "auto", root=None, seed: int = 0) -> Dataset:
    """Load, filter to `classes` (re-indexed 0..k-1 in the given order), select `n`, scale, encode.

    selection: "first" = the first n in file order; "stratified" = n//k per class (the first classes in
    `classes` order take the remainder), the first ones of each class, returned in file order;
    "random" = n drawn without replacement with `seed`, returned in file order.
    Pixels are scaled to [0, 1], then `standardize` is applied ("none", "feature", "image", "unit_norm").
    """
    _choice("data set", name, DATASETS)
    for kind, value, choices in (("selection", selection, SELECTIONS), ("standardize", standardize, STANDARDIZE),
                                 ("targets", targets, TARGETS)):
        _choice(kind, value, choices)
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1):
        raise ConfigError(f"n must be a positive integer or null (all), got {n!r}; set data.n to e.g. 1000")
    wanted = _class_indices(name, classes)
    k = len(wanted)
    if targets == "pm1" and k != 2:
        raise ConfigError(PM1_NEEDS_TWO.format(k=k))
    x_raw, y_raw, raw_info = load_raw(name, split, source=source, root=root)
    class_names = [CLASS_NAMES[name][c] for c in wanted]
    keep = np.flatnonzero(np.isin(y_raw, wanted))
    relabel = np.full(len(CLASS_NAMES[name]), -1, dtype=np.int64)
    relabel[wanted] = np.arange(k)  # original label -> position in `classes`
    labels = relabel[y_raw[keep]]
    n_avail = len(keep)
    what = f"{name} [{', '.join(class_names)}]" if classes is not None else name
    count = n_avail if n is None else int(n)
    if count > n_avail or count == 0:
        is_sample = raw_info["source"] == "sample"
        origin = f"sample:{raw_info['path']}" if is_sample else raw_info["source"]
        fewer = f"lower figure.<scale>.task.n_{split}"
        hint = (f"{fewer} or set data.root=<dir holding the full data set> or data.source=tfds" if is_sample
                else f"{fewer} or point data.root at the full data set")
        raise DataError(f"asked for {'all' if n is None else count} {split} examples of {what} but the source "
                        f"{origin} holds {n_avail}; {hint}")
    pos = _select(labels, count, class_names, selection, seed, what)
    idx, labels = keep[pos], labels[pos].astype(np.int64)
    x = _standardize(x_raw[idx].astype(np.float64) / 255.0, standardize)
    if flatten:
        x = x.reshape(len(x), -1)
    y = encode_targets(labels, k, targets)
    info = {**raw_info, "n": count, "n_in_split": raw_info["n_available"], "n_available": int(n_avail),
            "classes": class_names, "class_indices": wanted, "selection": selection, "seed": seed,
            "standardize": standardize, "targets": targets, "flatten": bool(flatten),
            "raw_checksum": raw_info["checksum"], "checksum": checksum(x, y), "indices_checksum": checksum(idx)}
    return Dataset(x=x, y=y, labels=labels, info=info)


# ------------------------------------------------------------------------------------ synthetic
def gaussian_inputs(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """(n, dim) float64 i.i.d. N(0, 1) from numpy's default_rng(seed)."""
    if n < 1 or dim < 1:
        raise ConfigError(f"gaussian_inputs needs n >= 1 and dim >= 1, got n={n}, dim={dim}; raise them")
    return np.random.default_rng(seed).standard_normal((n, dim))


def unit_circle(n_points: int, *, start: float = -np.pi, stop: float = np.pi, endpoint: bool = True):
    """-> (angles (n,), points (n, 2) = (cos, sin)), angles evenly spaced from start to stop."""
    if n_points < 1:
        raise ConfigError(f"unit_circle needs n_points >= 1, got {n_points}; raise it")
    angles = np.linspace(start, stop, n_points, endpoint=endpoint)
    return angles, np.stack([np.cos(angles), np.sin(angles)], axis=1)
