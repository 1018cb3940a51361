"""Lee et al. 2019, Figures S3 and S4: a network and its linearization under cross-entropy loss.

Both figures train a fully connected network f(theta, x) and its linearization (Eq. 5)

    f_lin(theta, x) = f(theta_0, x) + J(theta_0, x) (theta - theta_0)

side by side, *directly* (`ntkrepro.linearize.make_train_step`: the very same optax optimizer, loss
and minibatch sequence for both models; the linearized model is never replaced by a closed form),
on the softmax cross-entropy averaged over the batch (`xent_loss`, Eq. S5 / batch size).

* ``view: s3`` (Figure S3): 10-class MNIST, one width, SGD with momentum on minibatches.  Top row:
  all k logits of one randomly selected point for both models; bottom row: train / test loss and
  accuracy of both models over training.
* ``view: s4`` (Figure S4): several widths, the same training per width; the *logit deviation*
  RMSE_t = sqrt(mean_{i, c} (f_t(x_i)_c - f^lin_t(x_i)_c)^2) over test (and train) points, against
  the training step, one row per width, plus the deviation against width.

Linearized function-space ODE (Eqs. S10-S11).  Besides direct training, each figure integrates

    d f^lin_t(X)/dt = -eta Theta_0(X, X) (softmax(f^lin_t(X)) - Y) / N,     (S10, mean loss)
    d f^lin_t(x)/dt = -eta Theta_0(x, X) (softmax(f^lin_t(X)) - Y) / N      (S11)

with dopri5 (`ntkrepro.dynamics.xent_ode`, the N k x N k empirical NTK from `mlp_ntk(trace=False)`,
float64) on an ODE subset of `n_ode` training points, and compares it at t = ode_lr * step / ode_lr
(= step, in units of the learning rate) with a linearized model of the same network trained
*directly* by full-batch gradient descent on that subset at the small learning rate `ode_lr`.  The
ODE is gradient flow, so a small-step full-batch run is the model it describes; the minibatch
SGD-with-momentum runs of the main panels follow it only on the rescaled time
t = lr * step / (1 - momentum), which we do not use for a quantitative check.
"""
from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from experiments.lee_common import record_steps, rmse as _rmse

from ntkrepro import claims as C
from ntkrepro import data, plotting
from ntkrepro.dynamics import xent_ode
from ntkrepro.empirical import mlp_ntk
from ntkrepro.errors import ConfigError
from ntkrepro.linearize import linearize, make_train_step, xent_loss
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params, make_mlp

MODELS = ("nn", "lin")
LABELS = {"nn": "network", "lin": "linearized", "ode": "ODE (S10-S11, dopri5)", "lin_gd": "linearized, full-batch GD"}


# ----------------------------------------------------------------------------------------------
# Data and models


def _datasets(cfg):
    """(train, test) Datasets: flattened images, one-hot targets (k = number of classes)."""
    classes = None if cfg.get("classes") is None else list(cfg.classes)
    common = dict(classes=classes, flatten=True, standardize=cfg.standardize, targets="onehot",
                  source=cfg.data.source, root=cfg.data.root, seed=cfg.seed)
    tr = data.prepare(cfg.dataset, split="train", n=int(cfg.n_train), selection=cfg.selection, **common)
    te = data.prepare(cfg.dataset, split="test", n=int(cfg.n_test), selection=cfg.selection, **common)
    for split, ds in (("train", tr), ("test", te)):
        record_data(f"{cfg.dataset}-{split}", ds.info["source"], [ds.x, ds.y], n=len(ds.x),
                    classes=ds.info["classes"], selection=cfg.selection, standardize=cfg.standardize)
    return tr, te


def _model(cfg, width: int, k: int):
    return make_mlp(width=int(width), depth=int(cfg.depth), out_dim=k, activation=cfg.activation,
                    w_var=float(cfg.w_var), b_var=float(cfg.b_var), parameterization=cfg.parameterization)


def _dtype(cfg):
    return jnp.float64 if cfg.get("train_dtype", "float32") == "float64" else jnp.float32


def _chunks(n: int, size: int):
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def _loss_acc(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with np.errstate(all="ignore"):
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = float(-np.mean(np.sum(y * logp, axis=1)))
    acc = float(np.mean(np.argmax(logits, 1) == np.argmax(y, 1))) if np.all(np.isfinite(logits)) else math.nan
    return loss, acc


# ----------------------------------------------------------------------------------------------
# Direct training of a network and its linearization on the same minibatches


def train_pair(cfg, model, key, x_train, y_train, evals: dict, *, lr, momentum, batch_size, steps,
               rec, seed, desc=""):
    """Train network and linearization side by side; logits of every eval set at the steps `rec`.

    `evals` maps a name to inputs (n, d).  Returns {step: {model: {name: logits (n, k)}}} and the
    per-step minibatch losses are not kept.  Non-finite parameters are carried on (NaN logits
    recorded); nothing raises.
    """
    dt = _dtype(cfg)
    xtr = jnp.asarray(x_train, dt)
    ytr = jnp.asarray(y_train, dt)
    params0 = jax.jit(lambda kk: init_params(model, kk, xtr[:2]))(key)
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    f_lin = linearize(apply_fn, params0)
    opt = optax.sgd(float(lr), momentum=float(momentum) if momentum else None)
    fns = {"nn": apply_fn, "lin": f_lin}
    step_fn = {m: make_train_step(fns[m], xent_loss, opt) for m in MODELS}
    evalf = {m: jax.jit(fns[m]) for m in MODELS}
    state = {m: (params0, opt.init(params0)) for m in MODELS}
    ev = {name: jnp.asarray(x, dt) for name, x in evals.items()}
    n = len(x_train)
    full = batch_size is None or int(batch_size) >= n
    bs = n if full else int(batch_size)
    rng = np.random.default_rng(seed)
    perm, pos = rng.permutation(n), 0
    out = {}
    rec_set = set(int(s) for s in rec)

    def evaluate(step):
        out[step] = {}
        for m in MODELS:
            p = state[m][0]
            out[step][m] = {name: np.concatenate([np.asarray(evalf[m](p, x[a:b]), float)
                                                  for a, b in _chunks(len(x), int(cfg.eval_chunk))])
                            for name, x in ev.items()}

    for s in tqdm(range(int(steps) + 1), desc=desc or cfg.id, disable=None, mininterval=2.0):
        if s in rec_set:
            evaluate(s)
        if s == int(steps):
            break
        if full:
            xb, yb = xtr, ytr
        else:
            if pos + bs > n:
                perm, pos = rng.permutation(n), 0
            idx = perm[pos:pos + bs]
            pos += bs
            xb, yb = xtr[idx], ytr[idx]
        for m in MODELS:
            p, o = state[m]
            p, o, _ = step_fn[m](p, o, xb, yb)
            state[m] = (p, o)
    return out, params0


# ----------------------------------------------------------------------------------------------
# The linearized ODE (S10-S11) against a directly trained full-batch linearized model


def ode_check(cfg, model, params0, x_tr, y_tr, x_te, y_te, tag: dict) -> list[dict]:
    """Rows comparing dopri5 on Eqs. S10-S11 with full-batch GD of f_lin on the ODE subset."""
    lr = float(cfg.ode_lr)
    steps = int(cfg.ode_steps)
    rec = record_steps(steps, int(cfg.ode_points))
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params0)
    x64, xt64 = jnp.asarray(x_tr, jnp.float64), jnp.asarray(x_te, jnp.float64)
    theta_tt = np.asarray(mlp_ntk(model, p64, x64, trace=False))
    theta_st = np.asarray(mlp_ntk(model, p64, xt64, x64, trace=False))
    apply_fn = lambda p, x: model.apply({"params": p}, x)  # noqa: E731
    f0_tr, f0_te = np.asarray(apply_fn(p64, x64)), np.asarray(apply_fn(p64, xt64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        traj = xent_ode(theta_tt, f0_tr, y_tr, lr=lr, times=rec.astype(float), theta_test_train=theta_st,
                        f0_test=f0_te, loss_scale="mean", rtol=float(cfg.ode_rtol), atol=float(cfg.ode_atol))
    # the linearized model trained directly: full batch, plain GD at ode_lr, in the training dtype
    dt = _dtype(cfg)
    p_dt = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), params0)
    f_lin = linearize(apply_fn, p_dt)
    opt = optax.sgd(lr)
    step = make_train_step(f_lin, xent_loss, opt)
    ev = jax.jit(f_lin)
    p, o = p_dt, opt.init(p_dt)
    x64, xt64, y64 = jnp.asarray(x_tr, dt), jnp.asarray(x_te, dt), jnp.asarray(y_tr, dt)
    gd = {}
    rec_set = set(int(s) for s in rec)
    for s in tqdm(range(steps + 1), desc=f"{cfg.id} ODE check", disable=None, mininterval=2.0):
        if s in rec_set:
            gd[s] = (np.asarray(ev(p, x64), float), np.asarray(ev(p, xt64), float))
        if s == steps:
            break
        p, o, _ = step(p, o, x64, y64)
    rows = []
    for i, s in enumerate(rec):
        for split, f_ode, f_gd, f0, y in (("train", traj.train[i], gd[s][0], f0_tr, y_tr),
                                          ("test", traj.test[i], gd[s][1], f0_te, y_te)):
            base = dict(tag, step=int(s), time=float(s * lr), split=split)
            change = _rmse(f_gd, f0)
            rows.append(dict(base, quantity="ode_deviation", model="ode", value=_rmse(f_ode, f_gd)))
            rows.append(dict(base, quantity="ode_relative_deviation", model="ode",
                             value=_rmse(f_ode, f_gd) / change if change > 0 else 0.0))
            for m, f in (("ode", f_ode), ("lin_gd", f_gd)):
                loss, acc = _loss_acc(f, y)
                rows.append(dict(base, quantity="loss", model=m, value=loss))
                rows.append(dict(base, quantity="accuracy", model=m, value=acc))
                if split == "test":
                    for c in range(f.shape[1]):
                        rows.append(dict(base, quantity="ode_logit", model=m, logit=c, value=float(f[0, c])))
    return rows


# ----------------------------------------------------------------------------------------------
# run


def run(cfg) -> pd.DataFrame:
    tr, te = _datasets(cfg)
    k = tr.y.shape[1]
    n_eval = min(int(cfg.n_eval_train), len(tr.x))
    evals = {"train": tr.x[:n_eval], "test": te.x}
    ys = {"train": tr.y[:n_eval], "test": te.y}
    rec = record_steps(int(cfg.steps), int(cfg.record_points))
    rng = np.random.default_rng(cfg.seed)
    n_track = int(cfg.n_track)
    track = np.sort(rng.choice(len(te.x), size=min(n_track, len(te.x)), replace=False))
    key = jax.random.PRNGKey(cfg.seed)
    rows = []
    widths = [int(w) for w in cfg.widths]
    ode_width = int(cfg.get("ode_width") or max(widths))
    if cfg.get("ode", True) and ode_width not in widths:
        raise ConfigError(f"ode_width {ode_width} is not one of widths {widths}; set figure.paper.ode_width "
                          "to one of them (or figure.paper.ode=false)")
    for width in widths:
        key, sub = jax.random.split(key)
        model = _model(cfg, width, k)
        out, params0 = train_pair(cfg, model, sub, tr.x, tr.y, evals, lr=cfg.lr, momentum=cfg.momentum,
                                  batch_size=cfg.batch_size, steps=cfg.steps, rec=rec, seed=cfg.seed,
                                  desc=f"{cfg.id} n={width}")
        for s in rec:
            base = dict(width=width, step=int(s), time=float(s) * float(cfg.lr))
            for split in ("train", "test"):
                fn, fl = out[s]["nn"][split], out[s]["lin"][split]
                rows.append(dict(base, split=split, model="both", quantity="logit_deviation", value=_rmse(fn, fl)))
                rows.append(dict(base, split=split, model="both", quantity="relative_logit_deviation",
                                 value=_rmse(fn, fl) / max(_rmse(fn, 0.0), 1e-300)))
                for m in MODELS:
                    f = out[s][m][split]
                    loss, acc = _loss_acc(f, ys[split])
                    rows.append(dict(base, split=split, model=m, quantity="loss", value=loss))
                    rows.append(dict(base, split=split, model=m, quantity="accuracy", value=acc))
                    rows.append(dict(base, split=split, model=m, quantity="logit_rms", value=_rmse(f, 0.0)))
            for j, i in enumerate(track):
                for m in MODELS:
                    for c in range(k):
                        rows.append(dict(base, split="test", model=m, quantity="logit", point=int(i), track=j,
                                         logit=c, value=float(out[s][m]["test"][i, c])))
        if width == ode_width and cfg.get("ode", True):
            n_ode = min(int(cfg.n_ode), len(tr.x))
            n_ode_test = min(int(cfg.n_ode_test), len(te.x))
            rows += ode_check(cfg, model, params0, tr.x[:n_ode], tr.y[:n_ode], te.x[:n_ode_test],
                              te.y[:n_ode_test], dict(width=width, point=0))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# claims


_q = C.select


def _at(metrics, quantity, step, **sel) -> float:
    m = _q(metrics, quantity, **sel)
    m = m[m.step == m.step[m.step <= step].max()] if (m.step <= step).any() else m.iloc[:0]
    return float(m.value.mean()) if len(m) else math.nan


def _ode_claim(metrics, cfg) -> list[C.Claim]:
    m = _q(metrics, "ode_relative_deviation")
    m = m[m.step > 0]
    if not len(m):
        return []
    w = int(m.width.iloc[0])
    return [C.below("the dopri5 solution of the linearized ODE (S10-S11) follows the directly trained "
                    "linearized model",
                    f"max over t and train/test of RMSE(ODE - f_lin GD) / RMSE(f_lin - f_0), n={w}, "
                    f"{int(cfg.n_ode)} train points, lr={cfg.ode_lr}",
                    float(m.value.max()), float(cfg.claims.ode_rel_max))]


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    if cfg.view == "s3":
        return _claims_s3(metrics, cfg) + _ode_claim(metrics, cfg)
    return _claims_s4(metrics, cfg) + _ode_claim(metrics, cfg)


def _claims_s3(metrics, cfg):
    cl = cfg.claims
    last = int(metrics[metrics.quantity == "loss"].step.max())
    w = int(max(cfg.widths))
    out = [C.below("network and linearization give the same logits (top row)",
                   f"test RMSE(f - f_lin) / RMS(f) at the last step {last}, n={w}",
                   _at(metrics, "relative_logit_deviation", last, split="test", width=w),
                   float(cl.logit_rel_max))]
    for split in ("train", "test"):
        ln, ll = (_at(metrics, "loss", last, split=split, model=m, width=w) for m in MODELS)
        an, al = (_at(metrics, "accuracy", last, split=split, model=m, width=w) for m in MODELS)
        out.append(C.below(f"{split} loss curves agree", f"|L_lin - L| / L at step {last}",
                           abs(ll - ln) / ln if ln > 0 else math.nan, float(cl.loss_rel_max)))
        out.append(C.below(f"{split} accuracy curves agree", f"|acc_lin - acc| at step {last}",
                           abs(al - an), float(cl.acc_diff_max)))
    acc = min(_at(metrics, "accuracy", last, split="test", model=m, width=w) for m in MODELS)
    out.append(C.above("both models learn MNIST", f"min test accuracy of the two at step {last}", acc,
                       float(cl.test_acc_min)))
    return out


def _claims_s4(metrics, cfg):
    cl = cfg.claims
    dev = _q(metrics, "logit_deviation", split="test")
    widths = sorted(dev.width.unique())
    last = int(dev.step.max())
    early = int(cl.early_step)
    mid = int(cl.mid_step)
    out = []
    e = [_at(metrics, "logit_deviation", early, split="test", width=w) for w in widths]
    lo, hi = cl.width_slope
    out.append(C.in_range("the deviation is smaller for wider networks (O(n^-1/2) .. O(n^-1))",
                          f"log-log slope of test logit RMSE(f - f_lin) over width at step {early}",
                          C.loglog_slope(widths, e), float(lo), float(hi)))
    # narrower networks deviate earlier: at every recorded step after `early`, deviation falls with width
    piv = dev[dev.step >= early].pivot_table(index="step", columns="width", values="value")
    ordered = (np.diff(piv.values, axis=1) < 0)
    out.append(C.above("narrower networks deviate earlier and more (ordering by width at every time)",
                       f"fraction of (step >= {early}, adjacent width pair) with RMSE(narrower) > RMSE(wider)",
                       float(ordered.mean()) if ordered.size else math.nan, float(cl.order_fraction_min)))
    ratios = [_at(metrics, "logit_deviation", last, split="test", width=w)
              / _at(metrics, "logit_deviation", mid, split="test", width=w) for w in widths]
    out.append(C.above("the deviation grows at late times (every width)",
                       f"min over widths of RMSE(step {last}) / RMSE(step {mid})", float(np.min(ratios)),
                       float(cl.late_growth_min)))
    growth = [_at(metrics, "logit_rms", last, split="train", model="lin", width=w)
              / _at(metrics, "logit_rms", mid, split="train", model="lin", width=w) for w in widths]
    out.append(C.above("logits keep growing at late times under cross-entropy",
                       f"min over widths of train logit RMS of f_lin, step {last} / step {mid}",
                       float(np.min(growth)), float(cl.logit_growth_min)))
    on = onset_steps(metrics, float(cl.onset_rel))
    out.append(C.above("wider networks start to deviate later in training",
                       f"log-log slope over width of the first step where test RMSE(f - f_lin) / RMS(f) > "
                       f"{cl.onset_rel:g} (never: the last step, a lower bound)",
                       C.loglog_slope(list(on.keys()), list(on.values())), float(cl.onset_slope_min)))
    return out


def onset_steps(metrics, threshold: float) -> dict:
    """Per width: the first recorded step with relative test deviation above `threshold` (else the last)."""
    rel = _q(metrics, "relative_logit_deviation", split="test")
    out = {}
    for w, g in rel.groupby("width"):
        g = g[g.step > 0].sort_values("step")
        hit = g[g.value > threshold]
        out[int(w)] = float(hit.step.iloc[0]) if len(hit) else float(g.step.max())
    return out


# ----------------------------------------------------------------------------------------------
# plots

STYLE = {"nn": dict(ls="-", lw=1.2), "lin": dict(ls="--", lw=1.2), "ode": dict(ls="-", lw=1.2),
         "lin_gd": dict(ls=":", lw=2.0, marker=".", ms=3)}


def _logx(ax, steps, linthresh=1.0):
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlim(0, max(steps) * 1.1 if len(steps) else 1)


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    if cfg.view == "s3":
        _plot_s3(metrics, out_dir, cfg)
    else:
        _plot_s4(metrics, out_dir, cfg)


def _plot_logits(ax, metrics, width, track, title):
    lg = _q(metrics, "logit", width=width, track=track)
    ks = sorted(lg.logit.unique())
    cols = plt_colors(len(ks))
    for c, color in zip(ks, cols):
        for m in MODELS:
            g = lg[(lg.logit == c) & (lg.model == m)].sort_values("step")
            ax.plot(g.step, g.value, color=color, label=(f"{LABELS[m]}" if c == ks[0] else None), **STYLE[m])
    _logx(ax, lg.step.unique())
    ax.set(xlabel="step t", ylabel="logit f(x)", title=title)
    ax.legend(loc="upper left")


def plt_colors(n):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _plot_curves(ax, metrics, width, quantity, ylabel, logy=False):
    for split, color in (("train", "tab:blue"), ("test", "tab:red")):
        for m in MODELS:
            g = _q(metrics, quantity, width=width, split=split, model=m).sort_values("step")
            ax.plot(g.step, g.value, color=color, label=f"{split}, {LABELS[m]}", **STYLE[m])
    steps = _q(metrics, quantity, width=width).step.unique()
    _logx(ax, steps)
    ax.set(xlabel="step t", ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.legend()


def _plot_ode(axes, metrics, cfg):
    od = metrics[metrics.model.isin(["ode", "lin_gd"])]
    if not len(od):
        for ax in axes:
            ax.set_visible(False)
        return
    width = int(od.width.iloc[0])
    lg = od[od.quantity == "ode_logit"]
    ax = axes[0]
    for c, color in zip(sorted(lg.logit.unique()), plt_colors(int(lg.logit.max()) + 1)):
        for m in ("ode", "lin_gd"):
            g = lg[(lg.logit == c) & (lg.model == m)].sort_values("time")
            ax.plot(g.time, g.value, color=color, label=LABELS[m] if c == 0 else None, **STYLE[m])
    _logx(ax, lg.time.unique(), float(cfg.ode_lr))
    ax.set(xlabel=r"time $t = \eta \cdot$ step", ylabel="logit f(x)",
           title=f"ODE vs trained f_lin, n={width}, |D_ode|={int(cfg.n_ode)}")
    ax.legend(loc="upper left")
    ax = axes[1]
    for split, color in (("train", "tab:blue"), ("test", "tab:red")):
        for m in ("ode", "lin_gd"):
            g = od[(od.quantity == "loss") & (od.split == split) & (od.model == m)].sort_values("time")
            ax.plot(g.time, g.value, color=color, label=f"{split}, {LABELS[m]}", **STYLE[m])
    _logx(ax, od.time.unique(), float(cfg.ode_lr))
    ax.set(xlabel=r"time $t = \eta \cdot$ step", ylabel="cross-entropy loss", yscale="log",
           title=f"ODE subset: loss (full-batch GD, lr={cfg.ode_lr})")
    ax.legend()
    ax = axes[2]
    for split, color in (("train", "tab:blue"), ("test", "tab:red")):
        g = od[(od.quantity == "ode_relative_deviation") & (od.split == split) & (od.time > 0)].sort_values("time")
        ax.plot(g.time, g.value, "o-", color=color, ms=3, label=split)
    ax.axhline(float(cfg.claims.ode_rel_max), color="k", ls="--", lw=0.8, label="claim tolerance")
    ax.set(xscale="log", yscale="log", xlabel=r"time $t = \eta \cdot$ step",
           ylabel=r"RMSE(ODE $-$ f_lin) / RMSE(f_lin $-$ f_0)", title="ODE vs trained f_lin: relative error")
    ax.legend()


def _plot_s3(metrics, out_dir, cfg):
    import matplotlib.pyplot as plt

    width = int(max(cfg.widths))
    fig, axes = plotting.subplots(3, 3, width=3.6, height=2.9)
    lg = _q(metrics, "logit", width=width)
    tracks = sorted(lg.track.unique())[:2]
    for j, t in enumerate(tracks):
        pt = int(lg[lg.track == t].point.iloc[0])
        _plot_logits(axes[0][j], metrics, width, t, f"all {int(lg.logit.max()) + 1} logits, test point #{pt}")
    ax = axes[0][2]
    for split, color in (("train", "tab:blue"), ("test", "tab:red")):
        g = _q(metrics, "logit_deviation", width=width, split=split).sort_values("step")
        ax.plot(g.step[g.step > 0], g.value[g.step > 0], "o-", color=color, ms=3, label=split)
    ax.set(xscale="log", yscale="log", xlabel="step t", ylabel=r"RMSE$(f - f^{lin})$", title="logit deviation")
    ax.legend()
    _plot_curves(axes[1][0], metrics, width, "loss", "cross-entropy loss", logy=True)
    axes[1][0].set_title("loss")
    _plot_curves(axes[1][1], metrics, width, "accuracy", "accuracy")
    axes[1][1].set_title("accuracy")
    ax = axes[1][2]
    _plot_curves(ax, metrics, width, "accuracy", "accuracy")
    ax.set_ylim(0.8, 1.005)
    ax.set_title("accuracy (zoom)")
    _plot_ode(axes[2], metrics, cfg)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale: n={width}, |D|={cfg.n_train}, "
                                        f"lr={cfg.lr}, momentum={cfg.momentum}, batch {cfg.batch_size}, "
                                        f"{cfg.steps} steps)")
    plt.close("all")


def _plot_s4(metrics, out_dir, cfg):
    import matplotlib.pyplot as plt

    dev = _q(metrics, "logit_deviation")
    widths = sorted(int(w) for w in dev.width.unique())
    nrow = len(widths) + 2
    fig, axes = plotting.subplots(nrow, 3, width=3.6, height=2.6)
    for r, w in enumerate(widths):
        lg = _q(metrics, "logit", width=w)
        for j, t in enumerate(sorted(lg.track.unique())[:2]):
            pt = int(lg[lg.track == t].point.iloc[0])
            _plot_logits(axes[r][j], metrics, w, t, f"n = {w}: logits, test point #{pt}")
        ax = axes[r][2]
        for split, color in (("train", "tab:blue"), ("test", "tab:red")):
            g = _q(metrics, "logit_deviation", width=w, split=split).sort_values("step")
            ax.plot(g.step[g.step > 0], g.value[g.step > 0], "o-", color=color, ms=3, label=split)
        ax.set(xscale="log", yscale="log", xlabel="step t", ylabel=r"RMSE$(f - f^{lin})$",
               title=f"n = {w}: logit deviation")
        ax.legend()
    ax = axes[-2][0]
    for color, w in zip(plotting.colors(len(widths)), widths):
        g = _q(metrics, "logit_deviation", width=w, split="test").sort_values("step")
        ax.plot(g.step[g.step > 0], g.value[g.step > 0], "o-", color=color, ms=3, label=f"n = {w}")
    on = onset_steps(metrics, float(cfg.claims.onset_rel))
    for color, w in zip(plotting.colors(len(widths)), widths):
        ax.axvline(on[w], color=color, ls=":", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="step t", ylabel=r"test RMSE$(f - f^{lin})$",
           title=f"logit deviation, all widths (dotted: rel. dev. > {float(cfg.claims.onset_rel):g})")
    ax.legend()
    ax = axes[-2][1]
    steps = sorted(dev.step.unique())
    picks = [s for s in (int(cfg.claims.early_step), int(cfg.claims.mid_step), int(max(steps)))]
    for color, s in zip(("tab:green", "tab:orange", "tab:red"), picks):
        v = [_at(metrics, "logit_deviation", s, split="test", width=w) for w in widths]
        ax.plot(widths, v, "o-", color=color, ms=4, label=f"step {s}")
    v0 = _at(metrics, "logit_deviation", picks[0], split="test", width=widths[0])
    ww = np.asarray(widths, float)
    ax.plot(ww, v0 * np.sqrt(ww[0] / ww), "k--", lw=0.8, label=r"$\propto n^{-1/2}$")
    ax.plot(ww, v0 * (ww[0] / ww), "k:", lw=0.8, label=r"$\propto n^{-1}$")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel=r"test RMSE$(f - f^{lin})$",
           title="deviation against width")
    ax.set_xscale("log", base=2)
    ax.legend()
    ax = axes[-2][2]
    for color, w in zip(plotting.colors(len(widths)), widths):
        for m in MODELS:
            g = _q(metrics, "logit_rms", width=w, split="train", model=m).sort_values("step")
            ax.plot(g.step, g.value, color=color, label=f"n = {w}" if m == "nn" else None, **STYLE[m])
    _logx(ax, steps)
    ax.set(xlabel="step t", ylabel="train logit RMS", title="logits grow at late times (solid f, dashed f_lin)")
    ax.legend()
    _plot_ode(axes[-1], metrics, cfg)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale: |D|={cfg.n_train}, lr={cfg.lr}, "
                                        f"{'full-batch GD' if cfg.batch_size is None else 'batch ' + str(cfg.batch_size)}"
                                        f", {cfg.steps} steps)")
    plt.close("all")
