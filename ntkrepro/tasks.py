"""Tasks: the data a figure trains and evaluates on, described by a config block and loaded by `load`.

A figure picks a task from the config group `conf/task/` through Hydra `defaults` and overrides
what differs::

    # conf/figure/lee-1.yaml
    defaults:
      - /task@paper.panels.mnist_relu.task: mnist     # conf/task/mnist.yaml -> that panel's task
    paper:
      panels:
        mnist_relu:
          task: {n_train: 128}                        # what differs from the shared file

    task = tasks.load(panel.task, cfg.data, seed=cfg.seed)  # records the data in the manifest
    task.x_train, task.y_train, task.x_test, task.y_test     # float64 numpy arrays

Kinds (`dataset`):

* ``mnist`` / ``cifar10``: real images through `ntkrepro.data.prepare` (n_train, n_test, classes,
  selection, standardize, targets, flatten) and optional `image_pool` (average pooling by an integer
  factor, then the per-image standardisation is applied again so every image keeps unit variance).
  ``standardize: channel_train_split`` (Arora et al.'s released code): pixels / 255, then per channel
  (x - mean_c) / std_c with the mean and standard deviation (ddof 0) over every pixel of every image
  of the source's WHOLE training split (all classes, whatever is selected; `channel_statistics`),
  applied to both splits before any pooling.
* ``gaussian``: n_train (and n_test) i.i.d. N(0, 1) inputs of dimension `dim` (numpy default_rng(seed),
  test inputs drawn after the training ones); `target`: ``none`` (zeros) or ``product`` (x1 x2).
* ``circle``: points (cos g, sin g) -- or (sin g, cos g) with ``order: sin_cos`` -- at the angles
  `train_angles` (training set) and at `n_test` evenly spaced angles in [-pi, pi] (test set);
  targets as for gaussian.
* ``teacher``: Liu, Zhu & Belkin's synthetic regression (our design, their App. C is unavailable):
  x = r sqrt(d) z/|z|, z ~ N(0, I_d); teacher values t_c(x) = mu + a sin(omega u_c . z/|z|),
  u_c ~ N(0, I_d) (default_rng([seed, 1])); `y_train` holds t (each model maps it through its own
  output layer).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from ntkrepro import data
from ntkrepro.errors import ConfigError
from ntkrepro.manifest import record_data

KINDS = ("mnist", "cifar10", "gaussian", "circle", "teacher")
SYNTHETIC_TARGETS = ("none", "product")


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
    """Arrays of one task (float64 numpy; test arrays have length 0 when there is no test set)."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels_train: np.ndarray | None = None
    labels_test: np.ndarray | None = None
    info: dict = dataclasses.field(default_factory=dict)   # per split: provenance (data.prepare info)

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def out_dim(self) -> int:
        return int(self.y_train.shape[1]) if self.y_train.ndim > 1 else 1


def _get(cfg: Mapping, key: str, default=None):
    value = cfg.get(key, default) if hasattr(cfg, "get") else default
    return default if value is None else value


def _plain(cfg):
    try:
        from omegaconf import OmegaConf
        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def load(task_cfg, data_cfg=None, *, seed: int = 0, name: str = "task", record: bool = True) -> Task:
    """Load the task described by `task_cfg` (see the module docstring) from the data settings
    `data_cfg` (source, root) and record what was loaded in the run's manifest."""
    cfg = _plain(task_cfg)
    kind = cfg.get("dataset")
    if kind not in KINDS:
        raise ConfigError(f"unknown task dataset {kind!r}; set task.dataset to one of {', '.join(KINDS)}")
    data_cfg = {} if data_cfg is None else _plain(data_cfg)
    loader = {"mnist": _images, "cifar10": _images, "gaussian": _gaussian, "circle": _circle,
              "teacher": _teacher}[kind]
    task = loader(cfg, data_cfg, int(seed), name)
    if record:
        for split, x, y in (("train", task.x_train, task.y_train), ("test", task.x_test, task.y_test)):
            if len(x):
                info = task.info.get(split, {})
                record_data(f"{name}:{kind}-{split}", info.get("source", kind), [x, y], n=len(x),
                            **{k: v for k, v in info.items() if k in _RECORDED})
    return task


_RECORDED = ("classes", "selection", "standardize", "targets", "image_pool", "description", "seed",
             "flatten", "indices_checksum", "channel_mean", "channel_std")


# ----------------------------------------------------------------------------------------------
# real images


def pool_images(x: np.ndarray, factor: int, restandardize: bool) -> np.ndarray:
    """Average-pool NHWC images by `factor` (1: unchanged); optionally per-image standardise again."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    if h % factor or w % factor:
        raise ConfigError(f"task.image_pool={factor} must divide the image size {h}x{w}; choose a divisor")
    x = x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))
    if restandardize:
        flat = x.reshape(n, -1)
        flat = (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, keepdims=True), data.STD_FLOOR)
        x = flat.reshape(x.shape)
    return x


CHANNEL_TRAIN_SPLIT = "channel_train_split"


def channel_statistics(kind: str, source: str = "auto", root=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (ddof 0) of pixels / 255 over every pixel of every
    image of the WHOLE training split of the source (Arora et al.'s released code: X_train / 255,
    X_train.mean(axis=(0, 2, 3)), X_train.std(axis=(0, 2, 3))), from exact integer sums."""
    x, _, _ = data.load_raw(kind, "train", source=source, root=root)
    flat = x.reshape(-1, x.shape[-1]).astype(np.int64)
    count = flat.shape[0]
    mean = flat.sum(axis=0) / count
    var = (flat * flat).sum(axis=0) / count - mean ** 2
    return mean / 255.0, np.sqrt(np.maximum(var, 0.0)) / 255.0


def _channel_standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean_c) / std_c over the last (channel) axis; flattened NHWC images are (N, H*W*C)."""
    c = len(mean)
    return ((x.reshape(len(x), -1, c) - mean) / np.maximum(std, data.STD_FLOOR)).reshape(x.shape)


def _images(cfg: dict, data_cfg: dict, seed: int, name: str) -> Task:
    kind = cfg["dataset"]
    pool = int(_get(cfg, "image_pool", 1))
    if pool < 1:
        raise ConfigError(f"task.image_pool must be a positive integer, got {pool}")
    flatten = bool(_get(cfg, "flatten", False))
    std_mode = _get(cfg, "standardize", "none")
    by_channel = std_mode == CHANNEL_TRAIN_SPLIT
    common = dict(classes=cfg.get("classes"), selection=_get(cfg, "selection", "first"),
                  flatten=flatten and pool == 1, standardize="none" if by_channel else std_mode,
                  targets=_get(cfg, "targets", "onehot"), source=_get(data_cfg, "source", "auto"),
                  root=data_cfg.get("root"), seed=seed)
    stats = channel_statistics(kind, common["source"], common["root"]) if by_channel else None
    out, info = {}, {}
    for split in ("train", "test"):
        n = int(_get(cfg, f"n_{split}", 0))
        if n < 0:
            raise ConfigError(f"task.n_{split} must be >= 0, got {n}")
        if n == 0:
            out[split] = None
            continue
        ds = data.prepare(kind, split=split, n=n, **common)
        x = ds.x if stats is None else _channel_standardize(ds.x, *stats)
        if pool > 1:
            x = pool_images(x, pool, common["standardize"] == "image")
            x = x.reshape(len(x), -1) if flatten else x
        out[split] = (x, ds.y, ds.labels)
        info[split] = {**ds.info, "image_pool": pool}
        if stats is not None:
            info[split].update(standardize=std_mode, channel_mean=[float(v) for v in stats[0]],
                               channel_std=[float(v) for v in stats[1]])
    if out["train"] is None:
        raise ConfigError("task.n_train must be at least 1")
    test = out["test"] or _empty_like(*out["train"])
    return Task(name, *out["train"][:2], *test[:2], out["train"][2], test[2], info)


def _empty_like(x, y, labels):
    return x[:0], y[:0], labels[:0]


# ----------------------------------------------------------------------------------------------
# synthetic inputs


def synthetic_targets(x: np.ndarray, target: str) -> np.ndarray:
    """(N, 1) targets of the synthetic tasks: "none" (zeros) or "product" (x1 x2)."""
    if target not in SYNTHETIC_TARGETS:
        raise ConfigError(f"unknown task.target '{target}'; choose one of {', '.join(SYNTHETIC_TARGETS)}")
    if target == "none":
        return np.zeros((len(x), 1))
    return (x[:, 0] * x[:, 1])[:, None]


def _gaussian(cfg: dict, data_cfg: dict, seed: int, name: str) -> Task:
    n_tr, n_te, dim = (int(_get(cfg, k, 0)) for k in ("n_train", "n_test", "dim"))
    if n_tr < 1 or dim < 1 or n_te < 0:
        raise ConfigError(f"a gaussian task needs n_train >= 1, dim >= 1 and n_test >= 0, got "
                          f"{n_tr}, {dim}, {n_te}; fix figure.paper.task.n_train / dim / n_test")
    x = data.gaussian_inputs(n_tr + n_te, dim, seed=seed)
    target = _get(cfg, "target", "none")
    y = synthetic_targets(x, target)
    desc = f"N(0, I_{dim}) inputs, seed {seed}, target {target}"
    info = {s: {"source": "synthetic", "description": desc, "seed": seed} for s in ("train", "test")}
    return Task(name, x[:n_tr], y[:n_tr], x[n_tr:], y[n_tr:], info=info)


def circle_points(angles, order: str = "cos_sin") -> np.ndarray:
    """(n, 2) points on the unit circle at `angles`: (cos g, sin g), or (sin g, cos g)."""
    if order not in ("cos_sin", "sin_cos"):
        raise ConfigError(f"unknown task.order '{order}'; choose cos_sin or sin_cos")
    g = np.asarray(angles, np.float64)
    first, second = (np.cos(g), np.sin(g)) if order == "cos_sin" else (np.sin(g), np.cos(g))
    return np.stack([first, second], axis=1)


def _circle(cfg: dict, data_cfg: dict, seed: int, name: str) -> Task:
    order = _get(cfg, "order", "cos_sin")
    target = _get(cfg, "target", "none")
    angles = cfg.get("train_angles")
    if not angles:
        raise ConfigError("a circle task needs task.train_angles (a list of angles in radians)")
    n_test = int(_get(cfg, "n_test", 0))
    grid = np.linspace(-np.pi, np.pi, n_test) if n_test > 0 else np.zeros(0)
    x_tr, x_te = circle_points(angles, order), circle_points(grid, order)
    desc = f"unit circle, {order}, train angles {list(angles)}, {n_test} test angles in [-pi, pi]"
    info = {s: {"source": "synthetic", "description": desc} for s in ("train", "test")}
    return Task(name, x_tr, synthetic_targets(x_tr, target), x_te, synthetic_targets(x_te, target),
                labels_train=np.asarray(angles, np.float64), labels_test=grid, info=info)


def _teacher(cfg: dict, data_cfg: dict, seed: int, name: str) -> Task:
    n, d, k = int(_get(cfg, "n_train", 0)), int(_get(cfg, "dim", 0)), int(_get(cfg, "out_dim", 1))
    r = float(_get(cfg, "input_scale", 1.0))
    teacher = cfg.get("teacher") or {}
    if n < 1 or d < 1 or k < 1 or not r > 0 or not {"mu", "amplitude", "omega"} <= set(teacher):
        raise ConfigError("a teacher task needs n_train, dim, out_dim >= 1, input_scale > 0 and "
                          "teacher: {mu, amplitude, omega}; fix task.*")
    z = data.gaussian_inputs(n, d, seed=seed)
    direction = z / np.linalg.norm(z, axis=1, keepdims=True)
    u = np.random.default_rng([seed, 1]).standard_normal((d, k))
    t = teacher["mu"] + teacher["amplitude"] * np.sin(teacher["omega"] * (direction @ u))
    x = r * math.sqrt(d) * direction
    desc = (f"x = {r:g} sqrt(d) z/|z|, z ~ N(0, I_{d}); t_c = {teacher['mu']} + {teacher['amplitude']} "
            f"sin({teacher['omega']} u_c.z/|z|), u_c ~ N(0, I); seed={seed}")
    info = {"train": {"source": "synthetic", "description": desc, "seed": seed}}
    return Task(name, x, t, x[:0], t[:0], info=info)


def subset(task: Task, n: int) -> Task:
    """The first n training examples of `task` (same test set)."""
    if n > task.n_train:
        raise ConfigError(f"asked for {n} training examples of a task with {task.n_train}")
    lab = None if task.labels_train is None else task.labels_train[:n]
    return dataclasses.replace(task, x_train=task.x_train[:n], y_train=task.y_train[:n], labels_train=lab)




def shapes(task_cfg) -> dict[str, tuple[int, ...]]:
    """The array shapes `load` would return, from the settings alone (nothing is read: for cost
    plans of runs whose data is not on this machine): x_train, y_train, x_test, y_test."""
    cfg = _plain(task_cfg)
    kind = cfg.get("dataset")
    n_tr, n_te = int(_get(cfg, "n_train", 0)), int(_get(cfg, "n_test", 0))
    if kind in ("mnist", "cifar10"):
        h, w, c = data.IMAGE_SHAPE[kind]
        pool = int(_get(cfg, "image_pool", 1))
        image = (h // pool, w // pool, c)
        x = (int(np.prod(image)),) if _get(cfg, "flatten", False) else image
        k = len(cfg.get("classes") or data.CLASS_NAMES[kind])
        y = (1,) if _get(cfg, "targets", "onehot") in ("label", "pm1") else (k,)
    elif kind == "circle":
        n_tr, x, y = len(cfg.get("train_angles") or []), (2,), (1,)
    elif kind == "teacher":
        x, y, n_te = (int(_get(cfg, "dim", 0)),), (int(_get(cfg, "out_dim", 1)),), 0
    elif kind == "gaussian":
        x, y = (int(_get(cfg, "dim", 0)),), (1,)
    else:
        raise ConfigError(f"unknown task dataset {kind!r}; set task.dataset to one of {', '.join(KINDS)}")
    return {"x_train": (n_tr, *x), "y_train": (n_tr, *y), "x_test": (n_te, *x), "y_test": (n_te, *y)}
