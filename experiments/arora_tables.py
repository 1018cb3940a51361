"""Arora et al. 2019, "On Exact Computation with an Infinitely Wide Neural Net": Tables 1 and 2.

Table 1 (`table: 1`): CIFAR-10 test accuracy of the vanilla CNN (CNN-V), its exact CNTK (CNTK-V, and
CNTK-V-2K trained on 2,000 images), the CNN with global average pooling (CNN-GAP) and its CNTK
(CNTK-GAP, CNTK-GAP-2K) at depths 3, 4, 6, 11, 21 (convolution layers + 1).
Table 2 (`table: 2`): CIFAR-2 (airplane, automobile) accuracy of the exact CNTK-V / CNTK-GAP against
random features (RF-V, RF-GAP): the empirical NTK (gradients with respect to the weights) of a
randomly initialised CNN of `rf.channels` channels, median over `rf.draws` initialisations.

Recipe (App. A and the authors' released code; `conf/task/cifar10_arora.yaml`): pixels / 255,
per-channel standardisation with the statistics of the source's whole training split, labels
-0.1 * 1 + e_c, prediction argmax K(test, train) K(train, train)^-1 Y, solved exactly in float64
(`kernels.kernel_regression`, no ridge).  Every depth of a kernel comes from ONE pass of the CNTK
recursion (`kernels.cntk(depth=[...])`).  CNN-V / CNN-GAP: `models` arch ``cntk_cnn`` trained with
`train.fit` (SGD, fixed learning rate, best mean over trials of each learning rate, test accuracy
averaged over the `after_full` epochs after reaching 100% training accuracy).

Columns are computed on "parts" of the data: `full` (the full-data columns CNN-*, CNTK-V, CNTK-GAP,
and Table 2) and `two_k` (the 2K columns), each with its own `n_train` (the first images of the
training split in file order) and `image_pool` (> 1: a reduced problem of average-pooled images,
stated in every output).  The published numbers are rows with source = paper.

Sweep points (split runs, `points`): one per exact-kernel column (all depths in one pass), one per
(column, depth) for the CNN and random-feature columns; the published rows come with the first point.
Mutation (tests/test_mutations.py only): `MUTATIONS`.
"""
from __future__ import annotations

import logging
import math
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import checkpoint, costs, kernels, plotting, precision, tasks, train
from ntkrepro import claims as C
from ntkrepro.errors import ConfigError
from ntkrepro.models import ModelSpec

TABLE_COLUMNS = {1: ("CNN-V", "CNTK-V", "CNTK-V-2K", "CNN-GAP", "CNTK-GAP", "CNTK-GAP-2K"),
                 2: ("RF-V", "CNTK-V", "RF-GAP", "CNTK-GAP")}
POOLINGS = ("flatten", "gap")
COLORS = {"V": "tab:blue", "GAP": "tab:red"}
CITE = {"table1": "Arora et al. 2019, Table 1",
        "depth": "Arora et al. 2019, Sec. 5 (\"depth can affect the classification accuracy\") and Table 1",
        "gap": "Arora et al. 2019, Sec. 5 (GAP \"can significantly increase the classification "
               "accuracy by 8% - 10% for both CNN and CNTK\") and Table 1",
        "cnn": "Arora et al. 2019, Sec. 5 (\"a 5% - 6% performance gap between CNTKs and CNNs\")",
        "rf": "Arora et al. 2019, App. B (\"random features have much worse accuracies than exact "
              "kernels by a large margin\") and Table 2"}
log = logging.getLogger(__name__)
MUTATIONS = {"gap_readout_as_vanilla": "the GAP columns ignore the pooling setting: the CNTK-GAP kernel "
                                       "is read out as the vanilla one (the trace over matching "
                                       "positions, not the mean over all pairs of positions) and the "
                                       "random-feature / trained CNN-GAP networks get the vanilla "
                                       "flatten readout",
             "one_pass_reads_first_stop": "the all-depths pass of the CNTK recursion returns the kernel "
                                          "read out at its first stop for every requested depth (each "
                                          "column's kernel is the shallowest depth's)"}


# ----------------------------------------------------------------------------------------------
# settings


def _arch(column: str) -> str:
    """"V" or "GAP" from a column name (CNTK-GAP-2K -> GAP)."""
    return "GAP" if "GAP" in column else "V"


def _kind(column: str) -> str:
    return column.split("-")[0]  # CNN, CNTK or RF


def _part(column: str) -> str:
    return "two_k" if column.endswith("-2K") else "full"


def check_settings(cfg) -> tuple[int, list[int], list[str], dict]:
    """(table, depths, columns, pooling per architecture), each checked; one-line ConfigError."""
    table = int(cfg.table)
    if table not in TABLE_COLUMNS:
        raise ConfigError(f"table must be 1 or 2, got {table}; set figure.paper.table")
    depths = [int(d) for d in cfg.depths]
    bad = [d for d in depths if d < 2]
    if bad or not depths:
        raise ConfigError(f"every depth must be >= 2 (convolution layers + 1, as Table 1 counts), got "
                          f"{list(cfg.depths)}; set figure.paper.depths=[3,4,6,11,21]")
    columns = [str(c) for c in cfg.columns]
    unknown = [c for c in columns if c not in TABLE_COLUMNS[table]]
    if unknown:
        raise ConfigError(f"unknown column(s) {unknown} for Table {table}; choose among "
                          f"{', '.join(TABLE_COLUMNS[table])}")
    pooling = {str(k): str(v) for k, v in cfg.pooling.items()}
    for arch, p in pooling.items():
        if p not in POOLINGS:
            raise ConfigError(f"unknown pooling '{p}' for {arch}; choose flatten (vanilla CNN) or gap "
                              "(global average pooling)")
    if cfg.kernel_dtype == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("kernel_dtype=float64 needs x64=true (the exact solve of App. A)")
    return table, sorted(set(depths)), columns, pooling


def _pooling(cfg, pooling: str) -> str:
    """The pooling actually used (the mutation reads every GAP column as vanilla)."""
    return "flatten" if cfg.get("mutation") == "gap_readout_as_vanilla" else pooling


def _mutate_depths(cfg, by_depth: dict) -> dict:
    """The mutation `one_pass_reads_first_stop`: every depth gets the shallowest depth's kernel."""
    if cfg.get("mutation") != "one_pass_reads_first_stop":
        return by_depth
    return {d: by_depth[min(by_depth)] for d in by_depth}


def _kernel_dtype(cfg):
    if cfg.kernel_dtype not in ("float32", "float64"):
        raise ConfigError(f"kernel_dtype must be float32 or float64, got {cfg.kernel_dtype!r}")
    return jnp.float64 if cfg.kernel_dtype == "float64" else jnp.float32


def load_parts(cfg, columns) -> dict:
    """The data of each part that a requested column uses: {part: dict(x_train, y_train, labels_train,
    x_test, labels_test, setting, as_paper)}; the first `n_train` training images in file order."""
    needed = sorted({_part(c) for c in columns})
    n_max = max(int(cfg[p].n_train) for p in needed)
    task = tasks.load({**_plain(cfg.task), "n_train": n_max}, cfg.data, seed=cfg.seed, name=cfg.id)
    paper_n = (int(cfg.paper_sizes.n_train), int(cfg.paper_sizes.n_test))
    parts = {}
    for p in needed:
        n, pool = int(cfg[p].n_train), int(cfg[p].get("image_pool", 1))
        x_tr = tasks.pool_images(task.x_train[:n], pool, False)
        x_te = tasks.pool_images(task.x_test, pool, False)
        size = x_tr.shape[1]
        setting = (f"{size}x{size} images" + (f" ({pool}x{pool}-average-pooled: reduced)" if pool > 1
                                              else "") + f", {n} train, {len(x_te)} test")
        # the paper's training set and resolution (the test-set size enters the tolerances)
        as_paper = pool == 1 and n == (paper_n[0] if p == "full" else int(cfg.paper_sizes.n_train_2k))
        parts[p] = dict(x_train=x_tr, y_train=task.y_train[:n], labels_train=task.labels_train[:n],
                        x_test=x_te, labels_test=task.labels_test, setting=setting,
                        as_paper=bool(as_paper), image_size=int(size))
    return parts


def _plain(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)


# ----------------------------------------------------------------------------------------------
# measure: exact kernels


def cntk_all_depths(x1, x2, pooling: str, depths, cfg, tag: str) -> dict:
    """{depth: K(x1, x2)} from one pass of the recursion; through `kernels.blockwise` (blocks cached
    in the run folder, `checkpoint.kernel_cache`: a killed run resumes) when cfg.blockwise, else one
    `kernels.cntk` call."""
    dtype = _kernel_dtype(cfg)
    if not cfg.blockwise:
        return _mutate_depths(cfg, {d: np.asarray(k) for d, k in kernels.cntk(
            x1, x2, depth=list(depths), pooling=pooling, dtype=dtype).items()})
    names = [f"d{d}" for d in depths]

    def kernel_fn(a, b):
        out = kernels.cntk(a, b, depth=list(depths), pooling=pooling, dtype=a.dtype)
        return {f"d{d}": out[d] for d in depths}

    name = f"{cfg.id}-{tag}-{pooling}-{cfg.kernel_dtype}"
    res = kernels.blockwise(kernel_fn, x1, x2, memory_budget=int(cfg.memory_budget_mib) << 20,
                            bytes_per_pair=64 * np.dtype(dtype).itemsize, dtype=dtype,
                            cache_dir=checkpoint.kernel_cache(name), progress=False,
                            key=f"cntk {pooling} depths={list(depths)} {tag}", outputs=names)
    return _mutate_depths(cfg, {d: res[f"d{d}"] for d in depths})


def measure_kernels(part: dict, pooling: str, depths, cfg, column: str) -> list[dict]:
    """Accuracy of the exact CNTK (every depth from one pass) by kernel regression."""
    tag = column.lower()
    k_train = cntk_all_depths(part["x_train"], None, pooling, depths, cfg, f"{tag}-train")
    k_test = cntk_all_depths(part["x_test"], part["x_train"], pooling, depths, cfg, f"{tag}-test")
    rows = []
    for d in depths:
        name = f"{column} depth {d}"
        pred = kernels.kernel_regression(k_train[d], k_test[d], part["y_train"], name=name)
        rows.append(dict(accuracy=kernels.accuracy(pred, part["labels_test"]), depth=d))
    return rows


# ----------------------------------------------------------------------------------------------
# measure: random features (Table 2)


def rf_spec(cfg, pooling: str, depth: int, out_dim: int = 1) -> ModelSpec:
    """The randomly initialised CNN of App. B (the paper's CNN, `rf.channels` channels)."""
    return ModelSpec(arch="cntk_cnn", width=int(cfg.rf.channels), depth=depth - 1, pooling=pooling,
                     out_dim=out_dim, w_var=2.0, b_var=0.0, activation="relu",
                     options=(("kappa", 1.0), ("flatten_scale", "paper")))


def _empirical(spec, params, xs, cfg, name: str) -> np.ndarray:
    """Empirical NTK of all images at once, or block by block under the memory budget (blocks
    cached in the run folder under `name`: a killed run resumes)."""
    if not cfg.blockwise:
        return np.asarray(spec.empirical_ntk(params, xs))
    return kernels.blockwise(lambda a, b: spec.empirical_ntk(params, a, b), np.asarray(xs),
                             memory_budget=int(cfg.memory_budget_mib) << 20, dtype=xs.dtype,
                             progress=False, cache_dir=checkpoint.kernel_cache(name),
                             key=f"{name} seed={int(cfg.seed)} channels={spec.width}")


def measure_random_features(part: dict, pooling: str, depths, cfg) -> list[dict]:
    """Median (and range) over `rf.draws` initialisations of the accuracy of the empirical NTK of
    the randomly initialised CNN (one output; gradients w.r.t. the trained weights), float64."""
    x_all = np.concatenate([part["x_train"], part["x_test"]])
    n_tr = len(part["x_train"])
    dtype = _kernel_dtype(cfg)
    xs = jnp.asarray(x_all, dtype)
    rows = []
    for d in depths:
        spec, accs = rf_spec(cfg, pooling, d), []
        for draw in range(int(cfg.rf.draws)):
            key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), 1000 * d + draw)
            params = spec.init(key, xs, dtype=dtype)
            name = f"RF-{'GAP' if pooling == 'gap' else 'V'} depth {d} draw {draw}"
            k = _empirical(spec, params, xs, cfg, f"{cfg.id}-{name.replace(' ', '-')}")
            pred = kernels.kernel_regression(k[:n_tr, :n_tr], k[n_tr:, :n_tr], part["y_train"],
                                             name=name)
            accs.append(kernels.accuracy(pred, part["labels_test"]))
        rows.append(dict(accuracy=float(np.median(accs)), depth=d, acc_min=float(np.min(accs)),
                         acc_max=float(np.max(accs)), n_draws=len(accs)))
    return rows


# ----------------------------------------------------------------------------------------------
# measure: trained CNNs (Table 1)


class _AllDone(Exception):
    """Raised from fit's on_record once every model has `after_full` epochs past 100% training
    accuracy (or has diverged): nothing left to measure."""


def _accuracies(model_out, state, x, labels) -> np.ndarray:
    """(models,) accuracy of a batched state on (x, labels); nan for a model with a non-finite
    output (diverged)."""
    f = np.asarray(model_out(state, x))
    finite = np.all(np.isfinite(f), axis=(-2, -1))
    return np.where(finite, (np.argmax(f, axis=-1) == labels).sum(axis=-1) / len(x), np.nan)


def _cnn_spec(cfg, pooling: str, depth: int, k: int) -> ModelSpec:
    """The paper's CNN (App. A): `cnn.channels` channels, kappa on the output."""
    net = cfg.cnn
    return ModelSpec(arch="cntk_cnn", width=int(net.channels), depth=depth - 1, pooling=pooling,
                     out_dim=k, w_var=2.0, b_var=0.0, activation="relu",
                     options=(("kappa", float(net.kappa)), ("flatten_scale", str(net.flatten_scale))))


def train_cnn(part: dict, pooling: str, depth: int, cfg) -> dict:
    """Every (learning rate, trial) model of one CNN, trained together (one batched `train.fit`; on CPU,
    or with `cnn.vmap_models` false, model by model from Python, `host_loop`);
    returns {lr: [per-trial accuracy or nan]} and the epochs each took to reach 100%."""
    net = cfg.cnn
    dt = precision.train_dtype(net)
    spec = _cnn_spec(cfg, pooling, depth, part["y_train"].shape[1])
    x_tr, x_te = jnp.asarray(part["x_train"], dt), jnp.asarray(part["x_test"], dt)
    lrs, trials = [float(v) for v in net.lrs], int(net.trials)
    keys = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), depth), trials)
    inits = [spec.init(kk, x_tr, dtype=dt) for kk in keys]
    params0 = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *(inits * len(lrs)))
    lr_vec = jnp.asarray(np.repeat(lrs, trials), dt)
    batch = min(int(net.batch_size), len(x_tr))
    trainer = train.Trainer(spec.apply, loss=str(net.loss), batch_size=batch)
    per_epoch, epochs = len(x_tr) // batch, int(net.max_epochs)
    host_loop = train.prefer_host_loop() or not net.vmap_models   # model by model: see `train`
    log = _EpochLog(trainer, x_tr, part["labels_train"], x_te, part["labels_test"],
                    int(net.after_full), epochs, host_loop)
    try:
        train.fit(trainer, params0, x_tr, jnp.asarray(part["y_train"], dt),
                  steps=epochs * per_epoch, record_at=range(per_epoch, epochs * per_epoch + 1, per_epoch),
                  observe=log.observe, on_record=log.check, seed=int(cfg.seed) + depth, lr=lr_vec,
                  batched=True, track_loss=False, host_loop=host_loop)
    except _AllDone:
        pass
    acc, reached = log.result()
    return {"acc": acc.reshape(len(lrs), trials), "epochs": reached.reshape(len(lrs), trials),
            "lrs": lrs, "epochs_run": len(log.train_acc)}


class _EpochLog:
    """Per-epoch training and test accuracy of every model of a batched run; test accuracy only
    from the first epoch at which some model classifies the whole training set correctly, and in
    the last `after` epochs before the cap (for models that never do)."""

    def __init__(self, trainer, x_tr, lab_tr, x_te, lab_te, after: int, epochs: int, host_loop: bool):
        self.out = lambda state, x: trainer.predict_models(state, x, host_loop, chunk=512)
        self.data = (x_tr, lab_tr, x_te, lab_te)
        self.after, self.epochs, self.train_acc, self.test_acc = after, epochs, [], []

    def observe(self, step, state):
        x_tr, lab_tr, x_te, lab_te = self.data
        tr = _accuracies(self.out, state, x_tr, lab_tr)
        started = bool(self.train_acc) and np.any(np.vstack(self.train_acc) >= 1.0)
        late = len(self.train_acc) + 1 > self.epochs - self.after
        te = (_accuracies(self.out, state, x_te, lab_te) if started or late or np.any(tr >= 1.0)
              else np.full_like(tr, np.nan))
        self.train_acc.append(tr)
        self.test_acc.append(te)

    def first_full(self) -> np.ndarray:
        tr = np.vstack(self.train_acc)
        full = tr >= 1.0
        return np.where(full.any(axis=0), full.argmax(axis=0), -1)

    def check(self, step, state):
        first, n = self.first_full(), len(self.train_acc)
        dead = np.isnan(self.train_acc[-1])
        if np.all(((first >= 0) & (n - first - 1 >= self.after)) | dead):
            raise _AllDone

    def result(self):
        """(test accuracy per model: mean over the `after` epochs after reaching 100% training
        accuracy -- or over the last `after` epochs if never reached; nan when diverged,
        epoch (1-based) of reaching 100%, -1 if never)."""
        tr, te, first = np.vstack(self.train_acc), np.vstack(self.test_acc), self.first_full()
        acc = np.full(tr.shape[1], np.nan)
        for m in range(tr.shape[1]):
            window = te[first[m] + 1:first[m] + 1 + self.after, m] if first[m] >= 0 else \
                te[-self.after:, m]
            window = window[np.isfinite(window)]
            acc[m] = window.mean() if len(window) else np.nan
        return acc, np.where(first >= 0, first + 1, -1)


def measure_networks(part: dict, pooling: str, depths, cfg) -> list[dict]:
    """CNN accuracy per depth: the learning rate with the best mean over trials (App. A)."""
    rows = []
    for d in depths:
        res = train_cnn(part, pooling, d, cfg)
        means = np.array([np.mean(a) if np.all(np.isfinite(a)) else np.nan for a in res["acc"]])
        best = int(np.nanargmax(means)) if np.any(np.isfinite(means)) else 0
        ep = res["epochs"][best]
        rows.append(dict(accuracy=float(means[best]), depth=d, lr=res["lrs"][best],
                         reached_full=bool(np.all(ep > 0)), epochs_to_full=float(np.mean(ep)),
                         epochs_run=res["epochs_run"],
                         lr_means=";".join(f"{lr:g}:{m:.4f}" for lr, m in zip(res["lrs"], means))))
    return rows


# ----------------------------------------------------------------------------------------------
# run


def _column_rows(column, found, part) -> list[dict]:
    common = dict(column=column, n_train=len(part["x_train"]), n_test=len(part["x_test"]),
                  source="ours", setting=part["setting"], as_paper=part["as_paper"],
                  image_size=part["image_size"], quantity="accuracy")
    return [{**common, **r, "value": r["accuracy"]} for r in found]


def paper_rows(cfg) -> list[dict]:
    """The published numbers (percent in the config) as rows with source = paper."""
    rows = []
    for column, values in cfg.published.items():
        n_tr = int(cfg.paper_sizes.n_train_2k if str(column).endswith("-2K") else
                   cfg.paper_sizes.n_train)
        for d, v in zip(cfg.paper_depths, values):
            rows.append(dict(column=str(column), depth=int(d), accuracy=float(v) / 100, n_train=n_tr,
                             n_test=int(cfg.paper_sizes.n_test), source="paper",
                             setting=f"{cfg.paper_sizes.description}", as_paper=True,
                             image_size=32, quantity="accuracy", value=float(v) / 100))
    return rows


def points(cfg) -> list[dict]:
    """One point per exact-kernel column (every depth from one pass of the recursion) and per
    (column, depth) of the trained-CNN and random-feature columns, the deepest first."""
    _, depths, columns, _ = check_settings(cfg)
    out = [{"column": c} for c in columns if _kind(c) == "CNTK"]
    out += [{"column": c, "depth": d} for d in reversed(depths) for c in columns if _kind(c) != "CNTK"]
    return out


def run(cfg, subset=None) -> pd.DataFrame:
    """Rows of the points in `subset` (None: all); the published rows come with the first point.
    Random keys come from (seed, depth, draw) only, so a point's rows do not depend on the others."""
    _, depths, _, pooling = check_settings(cfg)
    every = points(cfg)
    todo = every if subset is None else [dict(p) for p in subset]
    parts = load_parts(cfg, sorted({p["column"] for p in todo}))
    rows = []
    for point in tqdm(todo, desc=cfg.id, disable=None):
        column = point["column"]
        part, p = parts[_part(column)], _pooling(cfg, pooling[_arch(column)])
        ds = [int(point["depth"])] if "depth" in point else depths
        t0 = time.perf_counter()
        if _kind(column) == "CNTK":
            found = measure_kernels(part, p, ds, cfg, column)
        elif _kind(column) == "RF":
            found = measure_random_features(part, p, ds, cfg)
        else:
            found = measure_networks(part, p, ds, cfg)
        log.info("%s depths %s: %.1f s", column, ds, time.perf_counter() - t0)
        rows += _column_rows(column, found, part)
    if every[0] in todo:
        rows += paper_rows(cfg)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# cost (plan=true): XLA's cost analysis on abstract inputs, nothing loaded or trained


def _sizes(cfg, column) -> tuple[int, int, tuple]:
    """(n_train, n_test, image shape) of a column's part, from the settings alone."""
    part = cfg[_part(column)]
    shp = tasks.shapes({**_plain(cfg.task), "image_pool": int(part.get("image_pool", 1))})
    return int(part.n_train), shp["x_test"][0], shp["x_train"][1:]


def _kernel_cost(name, fn, image, n_tr, n_te, block, dtype, calls_per_entry=1.0, *args) -> costs.Cost:
    """fn(*args, a, b) on a block x block pair of abstract image sets, called for every entry of
    K(train, train) (upper triangle) and K(test, train)."""
    b = max(1, min(block, n_tr))
    sds = jax.ShapeDtypeStruct((b, *image), dtype)
    entries = n_tr * (n_tr + 1) / 2 + n_te * n_tr
    return costs.analyse(name, fn, *args, sds, sds, calls=max(1.0, calls_per_entry * entries / b ** 2))


def cost(cfg, point) -> list[costs.Cost]:
    """One point: the exact kernel (every depth in one pass), the random-feature kernels of all
    draws, or the training of every (learning rate, trial) CNN up to the epoch cap."""
    _, depths, _, pooling = check_settings(cfg)
    column = point["column"]
    p = _pooling(cfg, pooling[_arch(column)])
    n_tr, n_te, image = _sizes(cfg, column)
    dtype = _kernel_dtype(cfg)
    if _kind(column) == "CNTK":
        block = 2 if p == "gap" and image[0] > 8 else 16
        fn = lambda a, b: kernels.cntk(a, b, depth=list(depths), pooling=p, dtype=dtype)  # noqa: E731
        return [_kernel_cost(f"{column} all depths, {block}x{block} block", fn, image, n_tr, n_te,
                             block, dtype)]
    d = int(point["depth"])
    if _kind(column) == "RF":
        spec = rf_spec(cfg, p, d)
        params = spec.param_shapes(jax.ShapeDtypeStruct((1, *image), dtype))
        return [_kernel_cost(f"{column} depth {d}, {int(cfg.rf.draws)} draws", spec.empirical_ntk, image,
                             n_tr, n_te, 16, dtype, int(cfg.rf.draws), params)]
    return _cnn_cost(cfg, p, d, n_tr, image)


def _cnn_cost(cfg, pooling, depth, n_tr, image) -> list[costs.Cost]:
    net = cfg.cnn
    k = tasks.shapes(cfg.task)["y_train"][1]
    spec = _cnn_spec(cfg, pooling, depth, k)
    batch = min(int(net.batch_size), n_tr)
    trainer = train.Trainer(spec.apply, loss=str(net.loss), batch_size=batch)
    steps = int(net.max_epochs) * (n_tr // batch)
    return costs.training(f"CNN-{'GAP' if pooling == 'gap' else 'V'} depth {depth}", trainer, spec, (n_tr, *image), (n_tr, k), steps,
                          dtype=precision.train_dtype(net),
                          models=len(net.lrs) * int(net.trials), vmapped=bool(net.vmap_models))


# ----------------------------------------------------------------------------------------------
# claims


def _acc(metrics, column, depth, source="ours"):
    m = metrics[(metrics.column == column) & (metrics.depth == depth) & (metrics.source == source)]
    return float(m.accuracy.iloc[0]) if len(m) else None


def _ours(metrics, column) -> pd.DataFrame:
    return metrics[(metrics.column == column) & (metrics.source == "ours")]


def _not_evaluated(claim, measure, expected, reason, cite) -> C.Claim:
    return C.Claim(claim, measure, None, expected, C.NOT_EVALUATED, reason, kind="paper", cite=cite)


def binomial_tolerance(p: float, n_ours: int, n_paper: int, k: float) -> float:
    """k standard errors of the difference of two independent test-set accuracies around p."""
    return k * math.sqrt(p * (1 - p) * (1 / n_ours + 1 / n_paper))


def claims_2k(metrics, cfg) -> list[C.Claim]:
    """Each 2K column within k binomial SE of the published value, at every depth."""
    out, k = [], float(cfg.claims.two_k_se)
    for column in ("CNTK-V-2K", "CNTK-GAP-2K"):
        ours = _ours(metrics, column)
        for d in sorted(ours.depth.unique()):
            paper = _acc(metrics, column, d, "paper")
            row = ours[ours.depth == d].iloc[0]
            if paper is None or not row.as_paper:
                continue
            tol = binomial_tolerance(paper, int(row.n_test), int(cfg.paper_sizes.n_test), k)
            out.append(C.in_range(f"Table 1: {column} at depth {d} = {paper:.2%} (published)",
                                  f"our accuracy ({row.setting})", float(row.accuracy),
                                  round(paper - tol, 4), round(paper + tol, 4), cite=CITE["table1"]))
    return out


def claims_depth_gap(metrics, cfg) -> list[C.Claim]:
    """Depth matters (CNTK-V-2K: depth 6 above depth 3); GAP beats vanilla at every depth >= 4."""
    out = []
    a6, a3 = _acc(metrics, "CNTK-V-2K", 6), _acc(metrics, "CNTK-V-2K", 3)
    if a6 is not None and a3 is not None:
        out.append(C.above("Sec. 5: depth matters for CNTKs (CNTK-V-2K: depth 6 above depth 3)",
                           "accuracy(depth 6) - accuracy(depth 3)", a6 - a3,
                           float(cfg.claims.depth_gain), cite=CITE["depth"]))
    for v, g in (("CNTK-V", "CNTK-GAP"), ("CNTK-V-2K", "CNTK-GAP-2K")):
        both = sorted(set(_ours(metrics, v).depth) & set(_ours(metrics, g).depth))
        for d in [d for d in both if d >= 4]:
            setting = _ours(metrics, g).setting.iloc[0]
            out.append(C.above(f"Sec. 5: global average pooling increases CNTK accuracy ({g} > {v}, "
                               f"depth {d})", f"{g} - {v} ({setting})",
                               _acc(metrics, g, d) - _acc(metrics, v, d),
                               float(cfg.claims.gap_gain), cite=CITE["gap"]))
    return out


def claims_full(metrics, cfg) -> list[C.Claim]:
    """Paper scale only: the full-data CNTK columns within 1 point; CNN-GAP beats CNTK-GAP by 5-6."""
    out, tol = [], float(cfg.claims.full_tolerance)
    reason = ("needs the paper's data (50,000 / 10,000 CIFAR-10 images at 32x32; the cpu preset runs "
              "these columns on a reduced problem) and a GPU")
    for column in ("CNTK-V", "CNTK-GAP"):
        ours = _ours(metrics, column)
        ok = len(ours) and bool(ours.as_paper.all()) and bool(
            (ours.n_test == int(cfg.paper_sizes.n_test)).all())
        for d in (sorted(ours.depth.unique()) if ok else []):
            paper = _acc(metrics, column, d, "paper")
            out.append(C.in_range(f"Table 1: {column} at depth {d} = {paper:.2%} (published)",
                                  "our accuracy (full CIFAR-10)", _acc(metrics, column, d),
                                  paper - tol, paper + tol, cite=CITE["table1"]))
        if not ok:
            out.append(_not_evaluated(f"Table 1: {column} within {tol:.0%} of the published values",
                                      "our accuracy per depth", f"within ±{tol:g}", reason,
                                      CITE["table1"]))
    cnn, cntk = _ours(metrics, "CNN-GAP"), _ours(metrics, "CNTK-GAP")
    lo, hi = (float(v) for v in cfg.claims.cnn_gap_range)
    text = "Sec. 5: a 5-6% gap between CNTKs and CNNs (best CNN-GAP - best CNTK-GAP)"
    if len(cnn) and len(cntk) and bool(cnn.as_paper.all() and cntk.as_paper.all()):
        out.append(C.in_range(text, "best over depths", cnn.accuracy.max() - cntk.accuracy.max(),
                              lo, hi, cite=CITE["cnn"]))
    else:
        out.append(_not_evaluated(text, "best over depths", f"in [{lo:g}, {hi:g}]", reason,
                                  CITE["cnn"]))
    return out


def claims_rf(metrics, cfg) -> list[C.Claim]:
    """Table 2: exact beats random features at every depth, by `rf_margin` for GAP at depth <= 11."""
    out = []
    for arch in ("V", "GAP"):
        ex, rf = _ours(metrics, f"CNTK-{arch}"), _ours(metrics, f"RF-{arch}")
        for d in sorted(set(ex.depth) & set(rf.depth)):
            diff = _acc(metrics, f"CNTK-{arch}", d) - _acc(metrics, f"RF-{arch}", d)
            margin = float(cfg.claims.rf_margin) if arch == "GAP" and d <= 11 else 0.0
            word = "by a large margin" if margin > 0 else ""
            out.append(C.above(f"App. B: the exact CNTK-{arch} beats random features {word} "
                               f"(depth {d})".replace("  ", " "),
                               f"CNTK-{arch} - median RF-{arch} ({ex.setting.iloc[0]})", diff, margin,
                               cite=CITE["rf"]))
    return out


def claims_networks(metrics, cfg) -> list[C.Claim]:
    """Check (ours): each trained CNN column learns at all -- its best test accuracy over depths is
    above chance (1 / number of classes) by `cnn_above_chance`."""
    out, chance = [], 1.0 / len(cfg.task.classes or data_classes(cfg))
    for column in ("CNN-V", "CNN-GAP"):
        ours = _ours(metrics, column)
        if len(ours):
            out.append(C.above(f"{column} learns: best test accuracy over depths above chance "
                               f"({chance:.0%}) by {float(cfg.claims.cnn_above_chance):g}",
                               f"max accuracy - chance ({ours.setting.iloc[0]})",
                               float(ours.accuracy.max()) - chance,
                               float(cfg.claims.cnn_above_chance), kind="check"))
    return out


def data_classes(cfg) -> list:
    from ntkrepro import data

    return data.CLASS_NAMES[str(cfg.task.dataset)]


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    if int(cfg.table) == 2:
        return claims_rf(metrics, cfg)
    return (claims_2k(metrics, cfg) + claims_depth_gap(metrics, cfg) + claims_full(metrics, cfg)
            + claims_networks(metrics, cfg))


# ----------------------------------------------------------------------------------------------
# outputs


def table_markdown(metrics: pd.DataFrame, cfg) -> str:
    """Ours beside the published numbers, one row per depth, plus each column's data setting."""
    cols = [c for c in TABLE_COLUMNS[int(cfg.table)] if c in set(metrics.column)]
    depths = sorted(metrics.depth.unique())
    head = "| depth | " + " | ".join(f"{c} ours | {c} paper" for c in cols) + " |"
    lines = [head, "|---|" + "---|---|" * len(cols)]
    for d in depths:
        cells = []
        for c in cols:
            for src in ("ours", "paper"):
                a = _acc(metrics, c, d, src)
                cells.append("—" if a is None or not math.isfinite(a) else f"{a:.2%}")
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += ["", "Data per column (ours):", ""]
    for c in cols:
        ours = _ours(metrics, c)
        if len(ours):
            extra = "" if bool(ours.as_paper.all()) else " — NOT the paper's setting"
            lines.append(f"- {c}: {ours.setting.iloc[0]}{extra}")
    paper = metrics[metrics.source == "paper"]
    if len(paper):
        lines.append(f"- paper: {paper.setting.iloc[0]}")
    return "\n".join(lines) + "\n"


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    md = table_markdown(metrics, cfg)
    (Path(out_dir) / f"{cfg.id}.md").write_text(f"# {cfg.title} ({cfg.scale} scale)\n\n" + md)
    panels = _panels(metrics, cfg)
    fig, axes = plotting.subplots(1, len(panels), width=4.2, height=3.2)
    for ax, group in zip(axes[0], panels):
        title, cols = group
        for c in cols:
            style = dict(color=COLORS[_arch(c)], ms=4)
            if c.endswith("-2K"):
                style["alpha"] = 0.6
            for src, ls, mk in (("ours", "-", "o"), ("paper", "--", "s")):
                g = metrics[(metrics.column == c) & (metrics.source == src)].sort_values("depth")
                if len(g):
                    ax.plot(g.depth, 100 * g.accuracy, ls, marker=mk, mfc="none" if src == "paper"
                            else None, label=f"{c} ({src})", **style)
        ours = metrics[metrics.column.isin(cols) & (metrics.source == "ours")]
        if len(ours):
            title += "\n" + textwrap.fill("ours: " + "; ".join(sorted(set(ours.setting))), 52)
        ax.set(xscale="log", xlabel="depth (conv layers + 1)", ylabel="test accuracy (%)",
               title=title)
        ax.minorticks_off()
        ax.set_xticks(sorted(metrics.depth.unique()), [str(d) for d in sorted(metrics.depth.unique())])
        ax.legend(fontsize=6)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; ours solid, published "
                  "dashed)")


def _panels(metrics, cfg):
    present = set(metrics.column)
    if int(cfg.table) == 2:
        return [("vanilla: exact CNTK vs random features", [c for c in ("CNTK-V", "RF-V") if c in present]),
                ("GAP: exact CNTK vs random features", [c for c in ("CNTK-GAP", "RF-GAP") if c in present])]
    return [("CNNs", [c for c in ("CNN-V", "CNN-GAP") if c in present]),
            ("CNTKs, full training set", [c for c in ("CNTK-V", "CNTK-GAP") if c in present]),
            ("CNTKs, 2,000 training images", [c for c in ("CNTK-V-2K", "CNTK-GAP-2K") if c in present])]
