"""Lee et al. 2019, Figure 4 and Table S1: a wide residual network and its linearization, trained
by SGD with momentum on CIFAR-10 with MSE.

The network is `ntkrepro.wrn.WRN` (Table S1, one channel count in every layer, batch norm on the
statistics of the batch it is applied to); its linearization f_lin(theta, X_B) = f(theta_0, X_B) +
J(theta_0, X_B) (theta - theta_0) is trained directly (`train.Trainer.linearization`: one
`jax.jvp`, no Jacobian) with the same loss, optimizer and minibatches.  Both start from theta_0 =
init(PRNGKey(seed)) and see the minibatches `batch_schedule(..., seed)`: they are the two sweep
points (`points`), so a split run trains them on two jobs and gets the pair an unsplit run trains.
Both are evaluated at log-spaced steps, with batch statistics, on fixed evaluation batches of
`batch_size` consecutive points (`wrn.BatchStats`; see the `ntkrepro.wrn` docstring) of the first
`n_eval_train` training images and of the test images: loss and accuracy on all of them, all k
outputs on `n_compare` random points of each set (drawn from the seed; the first `n_show` are drawn
in the output panes).  The agreement of the two models (`agreement`: RMSE(f - f_lin) / std(f) per
step) is computed from those outputs by `claims` and `plot`.  On the CPU backend the steps run as a
host loop of jitted steps (`fit(host_loop=True)`: XLA:CPU is ~25x slower on the weight-gradient
convolutions inside a compiled loop).

Table S1 is generated from the model by shape evaluation (`wrn.table_s1`) for the paper's network
(channels 1024, N = 1, k = 10) and for this run's network, written by `plot` as table_s1.md / .csv
and checked against the table as printed (`table_s1` in the config).

Metrics (tidy): ``quantity`` in {loss, accuracy, output, diverged (1 when that model's loss or
parameters became non-finite: recorded, never raised), table_s1, n_params}; ``model`` in
{network, linearized}; ``split`` in {train, test}; ``step``; for outputs ``index`` (position in the
evaluation set), ``rank`` (order drawn), ``unit`` (output unit), ``label``, ``target``; for table
rows ``net`` (paper / run), ``row``, ``group``, ``output_size``, ``output_side``, ``block_type``,
``block_symbolic`` (value = parameter count).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ntkrepro import claims as C
from ntkrepro import costs, data, plotting, precision, tasks, wrn
from ntkrepro.errors import ConfigError
from ntkrepro.models import ModelSpec
from ntkrepro.train import Trainer, accuracy, fit_side_by_side, log_steps, loss_function, prefer_host_loop, rmse

MODELS = ("network", "linearized")
MUTATIONS = {   # deliberate mistakes, for tests/test_mutations.py only
    "expansion_redrawn": "the linearization is taken at a re-drawn theta_0' (another initialisation), "
                         "not at the network's theta_0",
    "lin_lr": "the linearized model is trained with a 10x smaller learning rate than the network",
}
SPLITS = ("train", "test")
PAPER_NET = dict(channels=1024, blocks=1, out_dim=10)   # caption: channel size 1024, N = 1, k = 10


# ----------------------------------------------------------------------------------------------
# settings (bad input stops here, before any data is read)


def blocks(cfg) -> int:
    """N: `blocks`, or the WRN depth 6N + 4 when `depth` is given (they must agree)."""
    n = int(cfg.blocks)
    if n < 1:
        raise ConfigError(f"figure.paper.blocks (N) must be a positive integer, got {n}")
    if cfg.get("depth") is not None:
        from_depth = wrn.blocks_from_depth(int(cfg.depth))
        if from_depth != n:
            raise ConfigError(f"depth={cfg.depth} means N = {from_depth} blocks per group but blocks={n}; "
                              "set one of figure.paper.depth / figure.paper.blocks to match")
    return n


def image_side(cfg) -> int:
    task = cfg.task
    return data.IMAGE_SHAPE[task.dataset][0] // int(task.get("image_pool", 1) or 1)


def model_spec(cfg, out_dim: int) -> ModelSpec:
    """The run's network; ConfigError for channels, N, pooling or image size the table cannot have."""
    channels = int(cfg.channels)
    if channels < 1:
        raise ConfigError(f"figure.paper.channels must be a positive integer, got {channels}")
    wrn.check_geometry((image_side(cfg),) * 2, int(cfg.pool))
    return ModelSpec(arch="wrn", width=channels, depth=wrn.depth_from_blocks(blocks(cfg)),
                     out_dim=out_dim, activation=cfg.activation, w_var=float(cfg.w_var),
                     b_var=float(cfg.b_var), parameterization=cfg.parameterization,
                     options=(("pool", int(cfg.pool)), ("bn_eps", float(cfg.bn_eps))))


def check_sizes(cfg, n_train: int, n_test: int) -> None:
    """Batch size against the training set; evaluation sets cut into whole evaluation batches."""
    b = int(cfg.batch_size)
    if b < 1:
        raise ConfigError(f"figure.paper.batch_size must be a positive integer, got {b}")
    if b > n_train:
        raise ConfigError(f"batch_size={b} is larger than the {n_train} training images; lower "
                          "figure.paper.batch_size or raise figure.paper.task.n_train")
    n_eval = int(cfg.n_eval_train)
    if n_eval > n_train:
        raise ConfigError(f"n_eval_train={n_eval} exceeds the {n_train} training images; lower it")
    for name, n in (("n_eval_train", n_eval), ("task.n_test", n_test), ("eval_chunk", int(cfg.eval_chunk))):
        if n < b or n % b:
            raise ConfigError(f"figure.paper.{name}={n} must be a positive multiple of batch_size={b} "
                              "(evaluation runs on whole batches of that size)")
    if int(cfg.n_show) > min(n_eval, n_test):
        raise ConfigError(f"n_show={cfg.n_show} exceeds the evaluation sets ({n_eval} train, {n_test} "
                          "test points); lower figure.paper.n_show")


# ----------------------------------------------------------------------------------------------
# measure


def table_rows(cfg, spec: ModelSpec) -> list[dict]:
    """Table S1 of the paper's network and of this run's, from `jax.eval_shape`."""
    side = image_side(cfg)
    nets = {"paper": wrn.make_wrn(**PAPER_NET, pool=int(cfg.pool)),
            "run": spec.module}
    rows = []
    for net, module in nets.items():
        for i, r in enumerate(wrn.table_s1(module, (side, side, 3))):
            rows.append(dict(quantity="table_s1", net=net, row=i, value=float(r.pop("params")), **r))
    return rows


def points(cfg) -> list[dict]:
    """The two models: the units a split run trains on separately (each point's rows depend only on
    the settings and its model: both start from theta_0 = init(PRNGKey(seed)) and see the minibatches
    of `batch_schedule(..., seed)`, so the network and its linearization trained on two jobs are the
    pair trained in one)."""
    return [{"model": m} for m in MODELS]


def trainer(cfg, spec: ModelSpec, model: str) -> Trainer:
    """The network's trainer (batch statistics over each minibatch) or its linearization's (the same
    loss, optimizer and batches; `mutation=lin_lr`: a 10x smaller learning rate)."""
    net = Trainer(wrn.BatchStats(spec.apply, int(cfg.batch_size)), loss=cfg.loss, lr=float(cfg.lr),
                  momentum=float(cfg.momentum), batch_size=int(cfg.batch_size), delta=True)
    if model == "network":
        return net
    if cfg.get("mutation") == "lin_lr":
        return Trainer(net.apply_fn, loss=cfg.loss, lr=net.lr / 10, momentum=net.momentum,
                       batch_size=net.batch_size, linearized=True)
    return net.linearization()


def initial_params(cfg, spec: ModelSpec, model: str, x, dtype):
    """theta_0 from the seed alone (the same for both models: the linearization is taken at the
    network's initialisation; `mutation=expansion_redrawn`: at a re-drawn theta_0')."""
    key = jax.random.PRNGKey(int(cfg.seed))
    if model == "linearized" and cfg.get("mutation") == "expansion_redrawn":
        key = jax.random.fold_in(key, 1)
    return spec.init(key, x, dtype)


def eval_sets(cfg, task: tasks.Task, dtype) -> dict:
    """{split: (inputs, targets, labels)}: the first `n_eval_train` training points and the test set."""
    x = jnp.asarray(task.x_train, dtype)
    n_eval = int(cfg.n_eval_train)
    return {"train": (x[:n_eval], task.y_train[:n_eval], task.labels_train[:n_eval]),
            "test": (jnp.asarray(task.x_test, dtype), task.y_test, task.labels_test)}


def compared(cfg, sets) -> dict:
    """{split: indices}: `n_compare` random evaluation points per split (from the seed alone, so both
    models record the same ones), in the order drawn (the first `n_show` are drawn in the figure)."""
    rng = np.random.default_rng(int(cfg.seed))
    return {split: rng.choice(len(labels), size=min(int(cfg.n_compare), len(labels)), replace=False)
            for split, (_, _, labels) in sets.items()}


def train_one(cfg, spec: ModelSpec, task: tasks.Task, model: str, sets):
    """One model (network or linearization) trained from theta_0 by SGD with momentum -> FitResult."""
    dtype = precision.train_dtype(cfg)
    x, y = jnp.asarray(task.x_train, dtype), jnp.asarray(task.y_train, dtype)
    steps = int(cfg.steps)
    result = fit_side_by_side({model: trainer(cfg, spec, model)}, initial_params(cfg, spec, model, x, dtype),
                              x, y, inputs={s: v[0] for s, v in sets.items()}, chunk=int(cfg.eval_chunk),
                              steps=steps, record_at=log_steps(steps, int(cfg.record_points)),
                              seed=int(cfg.seed), track_loss=False,
                              host_loop=prefer_host_loop())[model]
    return result   # a diverged model is recorded (non-finite values, `diverged` row), never raised


def model_rows(result, model: str, sets, shown: dict, loss: str) -> list[dict]:
    """Loss (the trained one), accuracy on each evaluation set, and all k outputs of the compared
    points, at every recorded step."""
    loss_fn = loss_function(loss)
    rows = []
    for step, rec in zip(result.steps, result.records):
        for split, (_, y, labels) in sets.items():
            out = rec[split]
            rows.append(dict(quantity="loss", model=model, split=split, step=step, value=float(loss_fn(out, y))))
            rows.append(dict(quantity="accuracy", model=model, split=split, step=step,
                             value=float(accuracy(out, labels))))
            rows += [dict(quantity="output", model=model, split=split, step=step, index=int(i), rank=r,
                          unit=c, label=int(labels[i]), target=float(y[i, c]), value=float(out[i, c]))
                     for r, i in enumerate(shown[split]) for c in range(y.shape[1])]
    return rows


def run(cfg, subset=None) -> pd.DataFrame:
    """The rows of the models in `subset` (None: both); Table S1 and the parameter count come with
    the network."""
    spec_probe = model_spec(cfg, 1)                      # bad settings stop before the data is read
    check_sizes(cfg, int(cfg.task.n_train), int(cfg.task.get("n_test", 0) or 0))
    task = tasks.load(cfg.task, cfg.data, seed=int(cfg.seed), name="cifar10")
    check_sizes(cfg, task.n_train, len(task.x_test))
    spec = spec_probe.replace(out_dim=task.out_dim)
    sets = eval_sets(cfg, task, precision.train_dtype(cfg))
    shown = compared(cfg, sets)
    rows = []
    for point in points(cfg) if subset is None else subset:
        model = point["model"]
        if model == "network":
            rows += table_rows(cfg, spec)
            rows.append(dict(quantity="n_params", value=float(spec.n_params(task.x_train[:1])), step=0))
        result = train_one(cfg, spec, task, model, sets)
        rows += model_rows(result, model, sets, shown, cfg.loss)
        rows.append(dict(quantity="diverged", model=model, step=int(cfg.steps), value=float(bool(result.diverged))))
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """One model: `steps` SGD steps on minibatches and its evaluation (both evaluation sets, in
    chunks of `eval_chunk`) at every recorded step."""
    shapes = tasks.shapes(cfg.task)
    dtype = precision.train_dtype(cfg)
    spec = model_spec(cfg, shapes["y_train"][-1])
    model = point["model"]
    tr = trainer(cfg, spec, model)
    steps = int(cfg.steps)
    out = costs.training(model, tr, spec, shapes["x_train"], shapes["y_train"], steps, dtype=dtype)
    records = len(set(log_steps(steps, int(cfg.record_points)).tolist()) | {steps})
    chunk = jax.ShapeDtypeStruct((int(cfg.eval_chunk), *shapes["x_train"][1:]), dtype)
    params = spec.param_shapes(chunk)
    n_eval = int(cfg.n_eval_train) + shapes["x_test"][0]
    out.append(costs.analyse(f"{model}: evaluate {cfg.eval_chunk} points", tr.model_output, params, params,
                             chunk, calls=records * -(-n_eval // int(cfg.eval_chunk))))
    return out


def agreement(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per split and step, over the compared points and all k outputs: RMSE(f - f_lin), the spread
    std(f) of the network's outputs and their ratio rel_rmse."""
    out = C.select(metrics, "output")
    keys = ["split", "step", "index", "unit"]
    wide = out.pivot_table(index=keys, columns="model", values="value").reset_index()
    rows = []
    for (split, step), g in wide.groupby(["split", "step"]):
        diff = rmse(g["network"], g["linearized"])
        spread = float(np.std(g["network"].to_numpy(np.float64)))
        rows.append(dict(split=split, step=int(step), rmse=diff, spread=spread,
                         rel_rmse=diff / spread if spread > 0 else float("nan")))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# claims


def _series(metrics, quantity, **sel) -> pd.Series:
    m = C.select(metrics, quantity, **sel).sort_values("step")
    return pd.Series(m.value.to_numpy(float), index=m.step.to_numpy(int))


def _check(claim: C.Claim) -> C.Claim:
    return dataclasses.replace(claim, kind="check")


def table_claims(metrics, cfg) -> list[C.Claim]:
    """The generated Table S1 (paper's network and this run's) against the table as printed."""
    printed = cfg.table_s1
    t = C.select(metrics, "table_s1")
    size_miss = block_miss = 0
    for net in ("paper", "run"):
        g = t[t.net == net].set_index("group")
        for group, side, block in zip(printed.group, printed.output_size, printed.block_type):
            size_miss += int(group not in g.index or int(g.loc[group, "output_side"]) != int(side))
            block_miss += int(group not in g.index or str(g.loc[group, "block_symbolic"]) != str(block))
    sizes = ", ".join(str(s) for s in printed.output_size)
    return [
        _check(C.in_range(f"Table S1: output sizes of {', '.join(printed.group)} are {sizes}",
                          "groups whose generated output size differs (paper's and this run's net)",
                          size_miss, 0, 0)),
        _check(C.in_range("Table S1: block structure as printed (conv1 [3x3, C]; conv2-4 "
                          "[3x3, C; 3x3, C] x N; avg-pool [8x8])",
                          "groups whose generated block type differs (paper's and this run's net)",
                          block_miss, 0, 0)),
    ]


FIG4 = "Lee et al. 2019, Fig. 4 caption"


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol = cfg.claims
    final = int(C.select(metrics, "loss").step.max())
    agree = agreement(metrics)
    out = []
    for split in SPLITS:
        rel = agree[agree.split == split].rel_rmse   # NaN (a diverged model) fails the claim
        out.append(C.below(f"the outputs of the WRN and of its linearization stay close over the whole "
                           f"run ({split} points)",
                           f"max_t RMSE(f_t - f_lin_t) / std(f_t), {cfg.n_compare} random {split} points, "
                           "k outputs", C.strict_max(rel), tol.output_rel_rmse,
                           cite=f"{FIG4} and panes 1-2 (output dynamics of random {split} points)"))
    a = _series(metrics, "loss", model="network", split="train")
    b = _series(metrics, "loss", model="linearized", split="train")
    out.append(C.below("the training-loss curves of the WRN and of its linearization agree",
                       "max_t |L_net(t) - L_lin(t)| / L_net(t), training evaluation points",
                       C.strict_max(np.abs(a - b) / a), tol.loss_rel_diff,
                       cite=f"{FIG4} and pane 3 (training curves)"))
    acc = {m: _series(metrics, "accuracy", model=m, split="test") for m in MODELS}
    diverged = C.select(metrics, "diverged")
    gap = abs(acc["network"].iloc[-1] - acc["linearized"].iloc[-1])   # a diverged model scores 0: undefined
    out.append(C.below("final test accuracies of the WRN and of its linearization differ by at most "
                       "a few points", f"|acc_net - acc_lin| on the test points at step {final}",
                       float(gap) if diverged.value.sum() == 0 else float("nan"),
                       tol.test_acc_diff, cite=f"{FIG4} and pane 4 (accuracy curves)"))
    out.append(_check(C.above("the WRN learns (agreement is not that of two untrained models)",
                              f"network test accuracy at step {final} (chance 0.1)",
                              float(acc["network"].iloc[-1]), tol.min_test_acc)))
    out.append(_check(C.in_range("neither the WRN nor its linearization diverged (training is recorded, "
                                 "not stopped, when it does)",
                                 "models whose loss or parameters became non-finite: "
                                 + (", ".join(diverged[diverged.value > 0].model) or "none"),
                                 float(diverged.value.sum()), 0, 0)))
    return out + table_claims(metrics, cfg)


# ----------------------------------------------------------------------------------------------
# plot (and Table S1 files)

STYLE = {"network": dict(ls="-", lw=1.2), "linearized": dict(ls="--", lw=1.2)}
LABEL = {"network": "WRN", "linearized": "linearized"}


def _xlog(ax):
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_xlabel("t (SGD steps)")


def _outputs(ax, metrics, split, n_show: int):
    """The true-class output of the first `n_show` compared points: network solid, linearization dashed."""
    out = C.select(metrics, "output", split=split)
    out = out[(out.unit == out.label) & (out["rank"] < n_show)]
    idx = sorted(out["index"].unique())
    for color, i in zip(plotting.colors(max(len(idx), 1)), idx):
        for m in MODELS:
            g = out[(out["index"] == i) & (out.model == m)].sort_values("step")
            ax.plot(g.step, g.value, color=color, **STYLE[m])
    for m in MODELS:
        ax.plot([], [], "k", label=LABEL[m], **STYLE[m])
    ax.set(ylabel="output of the true class", title=f"outputs, random {split} points")
    _xlog(ax)
    ax.legend()


def _curves(ax, metrics, quantity, splits, title, log=False):
    for split, color in zip(splits, ("tab:blue", "tab:red")):
        for m in MODELS:
            g = C.select(metrics, quantity, model=m, split=split).sort_values("step")
            ax.plot(g.step, g.value, color=color, label=f"{split} {LABEL[m]}", **STYLE[m])
    ax.set(ylabel=quantity, title=title)
    if log:
        ax.set_yscale("log")
    _xlog(ax)
    ax.legend()


def _rel_rmse(ax, metrics):
    agree = agreement(metrics)
    for split, color in zip(SPLITS, ("tab:blue", "tab:red")):
        g = agree[agree.split == split].sort_values("step")
        ax.plot(g.step[g.step > 0], g.rel_rmse[g.step > 0], color=color, label=split)
    ax.set(ylabel="RMSE(f, f_lin) / std(f)", title="ours: relative RMSE between the models")
    ax.set_yscale("log")
    _xlog(ax)
    ax.legend()


def write_table(metrics: pd.DataFrame, out_dir) -> None:
    """table_s1.md and table_s1.csv from the metrics (the tables of the paper's net and this run's)."""
    t = C.select(metrics, "table_s1").sort_values(["net", "row"])
    cols = ["net", "group", "output_size", "block_type", "block_symbolic", "value"]
    table = t[cols].rename(columns={"value": "params"}).astype({"params": int})
    table.to_csv(Path(out_dir) / "table_s1.csv", index=False)
    parts = ["# Table S1 (Lee et al. 2019, App. J), generated from the model by jax.eval_shape", ""]
    for net, title in (("paper", "the paper's network (channels 1024, N = 1, k = 10)"),
                       ("run", "this run's network")):
        rows = [dict(r, params=r["value"]) for r in t[t.net == net].to_dict("records")]
        parts += [wrn.table_markdown(rows, title), ""]
    (Path(out_dir) / "table_s1.md").write_text("\n".join(parts))


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    write_table(metrics, out_dir)
    fig, axes = plotting.subplots(1, 5, width=3.2, height=3.0)
    _outputs(axes[0][0], metrics, "train", int(cfg.n_show))
    _outputs(axes[0][1], metrics, "test", int(cfg.n_show))
    _curves(axes[0][2], metrics, "loss", SPLITS, "loss (train: evaluation subset)", log=True)
    _curves(axes[0][3], metrics, "accuracy", SPLITS, "accuracy")
    _rel_rmse(axes[0][4], metrics)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
