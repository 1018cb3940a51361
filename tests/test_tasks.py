"""Task loader (`ntkrepro.tasks`) and the shared task configs in conf/task/."""
from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from ntkrepro import data, manifest, tasks
from ntkrepro.errors import ConfigError
from ntkrepro.registry import CONF_DIR

SAMPLE = {"source": "sample", "root": None}


def _cfg(name, **over):
    cfg = OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml")
    return OmegaConf.merge(cfg, over)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")))
def test_every_task_config_loads(name):
    over = {"n_train": 8} if name not in ("circle",) else {}
    if name in ("mnist", "cifar10", "cifar2"):
        over["n_test"] = 4
    task = tasks.load(_cfg(name, **over), SAMPLE, seed=0, record=False)
    assert task.n_train >= 1 and len(task.y_train) == task.n_train
    assert np.all(np.isfinite(task.x_train)) and task.x_train.dtype == np.float64


def test_image_task_equals_data_prepare_and_is_recorded():
    manifest.reset_data()
    task = tasks.load(_cfg("cifar2", n_train=10, n_test=6), SAMPLE, seed=0, name="lee-3")
    ds = data.prepare("cifar10", split="train", n=10, classes=["airplane", "horse"], selection="stratified",
                      flatten=True, standardize="image", targets="pm1", source="sample")
    np.testing.assert_array_equal(task.x_train, ds.x)
    np.testing.assert_array_equal(task.y_train, ds.y)
    assert task.x_test.shape == (6, 3072) and set(np.unique(task.y_test)) <= {-1.0, 1.0}
    recorded = [d["name"] for d in manifest._DATA]
    assert recorded == ["lee-3:cifar10-train", "lee-3:cifar10-test"]
    assert all("sha256" in d for d in manifest._DATA)


def test_pooled_images_are_restandardised():
    task = tasks.load(_cfg("cifar2", n_train=4, flatten=False, image_pool=8), SAMPLE, record=False)
    assert task.x_train.shape == (4, 4, 4, 3)
    flat = task.x_train.reshape(4, -1)
    np.testing.assert_allclose(flat.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose(flat.std(1), 1, rtol=1e-12)
    with pytest.raises(ConfigError, match="image_pool"):
        tasks.load(_cfg("cifar2", n_train=4, flatten=False, image_pool=5), SAMPLE, record=False)


def test_synthetic_tasks():
    g = tasks.load(_cfg("gaussian", n_train=5, n_test=3, dim=2, target="product"), SAMPLE, seed=4,
                   record=False)
    x = data.gaussian_inputs(8, 2, seed=4)
    np.testing.assert_array_equal(np.concatenate([g.x_train, g.x_test]), x)
    np.testing.assert_allclose(g.y_train[:, 0], x[:5, 0] * x[:5, 1])
    c = tasks.load(_cfg("circle", train_angles=[0.0, np.pi / 2], n_test=5, order="sin_cos"), SAMPLE,
                   record=False)
    np.testing.assert_allclose(c.x_train, [[0, 1], [1, 0]], atol=1e-15)
    assert c.x_test.shape == (5, 2) and np.allclose(np.linalg.norm(c.x_test, axis=1), 1)
    t = tasks.load(_cfg("teacher", n_train=6, dim=3, out_dim=2), SAMPLE, seed=1, record=False)
    np.testing.assert_allclose(np.linalg.norm(t.x_train, axis=1), np.sqrt(3))
    assert t.y_train.shape == (6, 2)


def test_bad_task_settings_name_the_key():
    with pytest.raises(ConfigError, match="task.dataset"):
        tasks.load({"dataset": "imagenet"}, SAMPLE)
    with pytest.raises(ConfigError, match="n_train"):
        tasks.load(_cfg("gaussian", n_train=0), SAMPLE)
