"""Lee et al. 2019, Figures S3 and S4: a network and its linearization under cross-entropy loss.

Both figures train a fully connected network f(theta, x) and its linearization (Eq. 5)

    f_lin(theta, x) = f(theta_0, x) + J(theta_0, x) (theta - theta_0)

side by side, *directly* (`ntkrepro.train.fit` of a `Trainer` and of its `linearization()`: the
very same theta_0, optimizer, loss and minibatch sequence for both models; the linearized model is never replaced by a closed form), on the
softmax cross-entropy averaged over the batch (`train.LOSSES["xent"]`, Eq. S5 / batch size).

* ``view: s3`` (Figure S3): 10-class MNIST, one width, SGD with momentum on minibatches.  Top row:
  all k logits of `n_track` (2) randomly selected test points for both models and the logit
  deviation; middle row: train / test loss and accuracy of both models over training; bottom row:
  the ODE (S10-S11) against the directly trained linearization.
* ``view: s4`` (Figure S4): several widths, the same training per width; the *logit deviation*
  RMSE_t = sqrt(mean_{i, c} (f_t(x_i)_c - f^lin_t(x_i)_c)^2) over test (and train) points, against
  the training step, one row per width, plus the deviation against width.

Linearized function-space ODE (Eqs. S10-S11).  Besides direct training, each figure integrates

    d f^lin_t(X)/dt = -eta Theta_0(X, X) (softmax(f^lin_t(X)) - Y) / N,     (S10, mean loss)
    d f^lin_t(x)/dt = -eta Theta_0(x, X) (softmax(f^lin_t(X)) - Y) / N      (S11)

with dopri5 (`ntkrepro.dynamics.xent_ode`, the N k x N k empirical NTK from
`ModelSpec.empirical_ntk(trace=False)`, float64) on an ODE subset of `n_ode` training points, and
compares it at t = ode_lr * step / ode_lr (= step, in units of the learning rate) with a linearized
model of the same network trained *directly* by full-batch gradient descent on that subset at the
small learning rate `ode_lr`.  The ODE is gradient flow, so a small-step full-batch run is the model
it describes; the minibatch SGD-with-momentum runs of the main panels follow it only on the rescaled
time t = lr * step / (1 - momentum), which we do not use for a quantitative check.

Sweep points (`points`): one per width, and the ODE check as its own point; theta_0 of width n comes
from (seed, n) (`point_key`).  Mutation (tests/test_mutations.py only): `MUTATIONS`.
"""
from __future__ import annotations

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, tasks
from ntkrepro import split as sweep  # `split` names the train / test split below
from ntkrepro.dynamics import xent_ode
from ntkrepro.errors import ConfigError
from ntkrepro.train import Trainer, fit, log_steps, output_observer, rmse

MODELS = ("nn", "lin")
MUTATIONS = {"linearized_at_another_init": "the linearized model is the expansion (Eq. 5) about another "
                                          "random draw theta_0' (and trained from it), not about the "
                                          "network's own theta_0"}
LABELS = {"nn": "network", "lin": "linearized", "ode": "ODE (S10-S11, dopri5)", "lin_gd": "linearized, full-batch GD"}


def _loss_acc(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    with np.errstate(all="ignore"):
        z = logits - logits.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = float(-np.mean(np.sum(y * logp, axis=1)))
    acc = float(np.mean(np.argmax(logits, 1) == np.argmax(y, 1))) if np.all(np.isfinite(logits)) else math.nan
    return loss, acc


# ----------------------------------------------------------------------------------------------
# measure: a network and its linearization on the same minibatches


def _trainer(cfg, spec) -> Trainer:
    return Trainer(spec.apply, loss="xent", lr=float(cfg.lr), momentum=float(cfg.momentum or 0.0),
                   batch_size=cfg.batch_size)


def train_pair(cfg, spec, key, x_train, y_train, evals: dict, rec):
    """Train network and linearization side by side (lr, momentum, batch_size, steps of `cfg`, the
    minibatch order from `cfg.seed`): the same theta_0 (drawn from `key`), optimizer and minibatches;
    logits of every eval set (name -> inputs) at the steps `rec`.  The mutation (tests only) expands
    the linearization about another draw theta_0' (`MUTATIONS`).

    Returns ({step: {model: {name: logits (n, k)}}}, theta_0).  Non-finite parameters are carried on
    (NaN logits recorded); nothing raises."""
    dt = precision.train_dtype(cfg)
    params0 = spec.init(key, x_train, dt)
    lin0 = (spec.init(jax.random.fold_in(key, 1), x_train, dt)
            if cfg.get("mutation") == "linearized_at_another_init" else params0)
    trainer = _trainer(cfg, spec)
    x, y = jnp.asarray(x_train, dt), jnp.asarray(y_train, dt)
    inputs = {name: jnp.asarray(v, dt) for name, v in evals.items()}
    res = {m: fit(t, p0, x, y, steps=int(cfg.steps), record_at=rec, seed=int(cfg.seed), track_loss=False,
                  observe=output_observer(t, inputs, int(cfg.eval_chunk)))
           for m, t, p0 in zip(MODELS, (trainer, trainer.linearization()), (params0, lin0))}
    return {int(s): {m: res[m].records[i] for m in MODELS} for i, s in enumerate(res["nn"].steps)}, params0


def pair_rows(out, ys, track, width, lr) -> list[dict]:
    """Logit deviation, loss, accuracy and logit RMS per step and split; the tracked test logits."""
    rows = []
    for s, o in out.items():
        base = dict(width=width, step=s, time=float(s) * float(lr))
        for split in ("train", "test"):
            fn, fl = o["nn"][split], o["lin"][split]
            rows.append(dict(base, split=split, model="both", quantity="logit_deviation", value=rmse(fn, fl)))
            rows.append(dict(base, split=split, model="both", quantity="relative_logit_deviation",
                             value=rmse(fn, fl) / max(rmse(fn, 0.0), 1e-300)))
            for m in MODELS:
                loss, acc = _loss_acc(o[m][split], ys[split])
                rows += [dict(base, split=split, model=m, quantity=q, value=v)
                         for q, v in (("loss", loss), ("accuracy", acc), ("logit_rms", rmse(o[m][split], 0.0)))]
        rows += [dict(base, split="test", model=m, quantity="logit", point=int(i), track=j, logit=c,
                      value=float(o[m]["test"][i, c]))
                 for j, i in enumerate(track) for m in MODELS for c in range(o[m]["test"].shape[1])]
    return rows


# ----------------------------------------------------------------------------------------------
# measure: the linearized ODE (S10-S11) against a directly trained full-batch linearized model


def ode_solution(cfg, spec, params0, x_tr, y_tr, x_te, times):
    """dopri5 on Eqs. S10-S11 with the empirical NTK at theta_0 (float64): (trajectory, f0 train, f0 test)."""
    kt = precision.kernel_dtype()
    p64, x64, xt64 = precision.cast(params0, kt), jnp.asarray(x_tr, kt), jnp.asarray(x_te, kt)
    theta_tt = np.asarray(spec.empirical_ntk(p64, x64, trace=False))
    theta_st = np.asarray(spec.empirical_ntk(p64, xt64, x64, trace=False))
    f0_tr, f0_te = np.asarray(spec.apply(p64, x64)), np.asarray(spec.apply(p64, xt64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        traj = xent_ode(theta_tt, f0_tr, y_tr, lr=float(cfg.ode_lr), times=times, theta_test_train=theta_st,
                        f0_test=f0_te, loss_scale="mean", rtol=float(cfg.ode_rtol), atol=float(cfg.ode_atol))
    return traj, f0_tr, f0_te


def ode_check(cfg, spec, params0, x_tr, y_tr, x_te, y_te, tag: dict) -> list[dict]:
    """Rows comparing dopri5 on Eqs. S10-S11 with full-batch GD of f_lin on the ODE subset."""
    lr, steps = float(cfg.ode_lr), int(cfg.ode_steps)
    rec = log_steps(steps, int(cfg.ode_points))
    traj, f0_tr, f0_te = ode_solution(cfg, spec, params0, x_tr, y_tr, x_te, rec.astype(float))
    # the linearized model trained directly: full batch, plain GD at ode_lr, in the training dtype
    dt = precision.train_dtype(cfg)
    trainer = Trainer(spec.apply, loss="xent", lr=lr, linearized=True)
    inputs = {"train": jnp.asarray(x_tr, dt), "test": jnp.asarray(x_te, dt)}
    gd = fit(trainer, precision.cast(params0, dt), inputs["train"], jnp.asarray(y_tr, dt), steps=steps,
             record_at=rec, observe=output_observer(trainer, inputs), track_loss=False).records
    rows = []
    for i, s in enumerate(rec):
        for split, f_ode, f0, y in (("train", traj.train[i], f0_tr, y_tr), ("test", traj.test[i], f0_te, y_te)):
            base, f_gd = dict(tag, step=int(s), time=float(s * lr), split=split), gd[i][split]
            change = rmse(f_gd, f0)
            rows.append(dict(base, quantity="ode_deviation", model="ode", value=rmse(f_ode, f_gd)))
            rows.append(dict(base, quantity="ode_relative_deviation", model="ode",
                             value=rmse(f_ode, f_gd) / change if change != 0 else 0.0))   # NaN if GD diverged
            for m, f in (("ode", f_ode), ("lin_gd", f_gd)):
                loss, acc = _loss_acc(f, y)
                rows += [dict(base, quantity="loss", model=m, value=loss),
                         dict(base, quantity="accuracy", model=m, value=acc)]
                if split == "test":
                    rows += [dict(base, quantity="ode_logit", model=m, logit=c, value=float(f[0, c]))
                             for c in range(f.shape[1])]
    return rows


def ode_width(cfg) -> int | None:
    """The width whose linearization the ODE (S10-S11) describes (None: no ODE check)."""
    if not cfg.get("ode", True):
        return None
    widths = [int(w) for w in cfg.widths]
    width = int(cfg.get("ode_width") or max(widths))
    if width not in widths:
        raise ConfigError(f"ode_width {width} is not one of widths {widths}; set figure.paper.ode_width "
                          "to one of them (or figure.paper.ode=false)")
    return width


def points(cfg) -> list[dict]:
    """One point per width (a network and its linearization trained side by side), widest (costliest)
    first, then the ODE check (S10-S11) of `ode_width`'s linearization as a point of its own."""
    out = [{"part": "train", "width": w} for w in sorted({int(w) for w in cfg.widths}, reverse=True)]
    width = ode_width(cfg)
    return out + ([] if width is None else [{"part": "ode", "width": width}])


def point_key(seed: int, width: int):
    """theta_0 of the width-n network: from the seed and the width only (the same for its "train" and
    "ode" points, never from the other points)."""
    return sweep.point_key(seed, width)


def run(cfg, subset=None) -> pd.DataFrame:
    task = tasks.load(cfg.task, cfg.data, seed=int(cfg.seed))
    rows = []
    for p in points(cfg) if subset is None else subset:
        width = int(p["width"])
        spec, key = models.from_config(cfg, width=width, out_dim=task.out_dim), point_key(cfg.seed, width)
        if p["part"] == "train":
            n_eval = min(int(cfg.n_eval_train), task.n_train)
            ys = {"train": task.y_train[:n_eval], "test": task.y_test}
            rng = np.random.default_rng(int(cfg.seed))   # the tracked test points: the same for every width
            track = np.sort(rng.choice(len(task.x_test), size=min(int(cfg.n_track), len(task.x_test)),
                                       replace=False))
            out, _ = train_pair(cfg, spec, key, task.x_train, task.y_train,
                                {"train": task.x_train[:n_eval], "test": task.x_test},
                                log_steps(int(cfg.steps), int(cfg.record_points)))
            rows += pair_rows(out, ys, track, width, cfg.lr)
        else:
            params0 = spec.init(key, task.x_train, precision.train_dtype(cfg))   # train_pair's theta_0
            n, m = min(int(cfg.n_ode), task.n_train), min(int(cfg.n_ode_test), len(task.x_test))
            rows += ode_check(cfg, spec, params0, task.x_train[:n], task.y_train[:n], task.x_test[:m],
                              task.y_test[:m], dict(width=width, point=0))
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """A "train" point: both models' steps and their logits at the recording points; an "ode" point:
    the float64 NTKs, the dopri5 vector field (assumed: 6 evaluations per GD step of `ode_lr`, as an
    explicit solver's stable step is about GD's) and full-batch GD of f_lin on the ODE subset."""
    shape, dt, width = tasks.shapes(cfg.task), precision.train_dtype(cfg), int(point["width"])
    spec, k = models.from_config(cfg, width=width, out_dim=shape["y_train"][1]), shape["y_train"][1]
    trainer, name = _trainer(cfg, spec), f"n={width}"
    if point["part"] == "train":
        n_eval = min(int(cfg.n_eval_train), shape["x_train"][0]) + shape["x_test"][0]
        chunk = min(int(cfg.eval_chunk), n_eval)
        xc = jax.ShapeDtypeStruct((chunk, *shape["x_train"][1:]), dt)
        calls = len(log_steps(int(cfg.steps), int(cfg.record_points))) * math.ceil(n_eval / chunk)
        out = []
        for label, t in (("network", trainer), ("linearization", trainer.linearization())):
            out += costs.training(f"{name}: {label}", t, spec, shape["x_train"], shape["y_train"],
                                  int(cfg.steps), dtype=dt)
            state = jax.eval_shape(t.init, spec.param_shapes(xc))
            out.append(costs.analyse(f"{name}: {label} logits", lambda s, u, t=t: t.model_output(s.params0, s.variable, u),
                                     state, xc, calls=calls))
        return out
    kt, n, m = precision.kernel_dtype(), int(cfg.n_ode), int(cfg.n_ode_test)
    n, m = min(n, shape["x_train"][0]), min(m, shape["x_test"][0])
    x, xt = (jax.ShapeDtypeStruct((r, *shape["x_train"][1:]), kt) for r in (n, m))
    params = spec.param_shapes(x)
    theta = jax.ShapeDtypeStruct((n * k, n * k), kt)
    field = costs.analyse(f"{name}: ODE field", lambda th, f: th @ jax.nn.softmax(f, axis=-1).reshape(-1), theta,
                          jax.ShapeDtypeStruct((n, k), kt), calls=6 * int(cfg.ode_steps))
    return [costs.analyse(f"{name}: NTK train-train", lambda p, u: spec.empirical_ntk(p, u, trace=False), params, x),
            costs.analyse(f"{name}: NTK test-train", lambda p, u, v: spec.empirical_ntk(p, u, v, trace=False),
                          params, xt, x), field,
            *costs.training(f"{name}: f_lin GD", Trainer(spec.apply, loss="xent", lr=float(cfg.ode_lr), linearized=True),
                            spec, x.shape, (n, k), int(cfg.ode_steps), dtype=dt)]


# ----------------------------------------------------------------------------------------------
# claims


_q = C.select


def _at(metrics, quantity, step, **sel) -> float:
    m = _q(metrics, quantity, **sel)
    m = m[m.step == m.step[m.step <= step].max()] if (m.step <= step).any() else m.iloc[:0]
    return float(m.value.mean()) if len(m) else math.nan


def _ode_claim(metrics, cfg) -> list[C.Claim]:
    m = _q(metrics, "ode_relative_deviation").query("step > 0")
    if not len(m):
        return []
    w = int(m.width.iloc[0])
    return [C.below("the dopri5 solution of the linearized ODE (S10-S11) follows the directly trained "
                    "linearized model (ODE solver vs GD)",
                    f"max over t and train/test of RMSE(ODE - f_lin GD) / RMSE(f_lin - f_0), n={w}, "
                    f"{int(cfg.n_ode)} train points, lr={cfg.ode_lr}",
                    C.strict_max(m.value), float(cfg.claims.ode_rel_max), kind="check")]


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    return (_claims_s3 if cfg.view == "s3" else _claims_s4)(metrics, cfg) + _ode_claim(metrics, cfg)


def _claims_s3(metrics, cfg):
    cl, cite = cfg.claims, "Lee et al. 2019, Fig. S3 caption and Sec. 3"
    last = int(metrics[metrics.quantity == "loss"].step.max())
    w = int(max(cfg.widths))
    out = [C.below("network and linearization give the same logits (top row)",
                   f"test RMSE(f - f_lin) / RMS(f) at the last step {last}, n={w}",
                   _at(metrics, "relative_logit_deviation", last, split="test", width=w),
                   float(cl.logit_rel_max), cite=cite)]
    for split in ("train", "test"):
        ln, ll = (_at(metrics, "loss", last, split=split, model=m, width=w) for m in MODELS)
        an, al = (_at(metrics, "accuracy", last, split=split, model=m, width=w) for m in MODELS)
        out.append(C.below(f"{split} loss curves agree", f"|L_lin - L| / L at step {last}",
                           abs(ll - ln) / ln if ln > 0 else math.nan, float(cl.loss_rel_max), cite=cite))
        out.append(C.below(f"{split} accuracy curves agree", f"|acc_lin - acc| at step {last}",
                           abs(al - an), float(cl.acc_diff_max), cite=cite))
    acc = min(_at(metrics, "accuracy", last, split="test", model=m, width=w) for m in MODELS)
    out.append(C.above("both models learn MNIST", f"min test accuracy of the two at step {last}", acc,
                       float(cl.test_acc_min), kind="check"))
    return out


def _claims_s4(metrics, cfg):
    cl, cite = cfg.claims, "Lee et al. 2019, Fig. S4 caption and Sec. 3"
    dev = _q(metrics, "logit_deviation", split="test")
    widths = sorted(dev.width.unique())
    last, early, mid = int(dev.step.max()), int(cl.early_step), int(cl.mid_step)
    e = [_at(metrics, "logit_deviation", early, split="test", width=w) for w in widths]
    out = [C.in_range("early in training the deviation falls like 1/n, the rate of the kernel's change "
                      "(closer to O(1/n) than to Thm. 2.1's bound O(n^-1/2))",
                      f"log-log slope of test logit RMSE(f - f_lin) over width at step {early}",
                      C.loglog_slope(widths, e), *map(float, cl.width_slope),
                      cite="Lee et al. 2019, Thm. 2.1, Sec. 3 and Fig. 1 caption")]
    # narrower networks deviate earlier: at every recorded step after `early`, deviation falls with width
    piv = dev[dev.step >= early].pivot_table(index="step", columns="width", values="value")
    ordered = (np.diff(piv.values, axis=1) < 0)
    out.append(C.above("narrower networks deviate earlier and more (ordering by width at every time)",
                       f"fraction of (step >= {early}, adjacent width pair) with RMSE(narrower) > RMSE(wider)",
                       float(ordered.mean()) if ordered.size else math.nan, float(cl.order_fraction_min),
                       cite=cite))
    ratios = [_at(metrics, "logit_deviation", last, split="test", width=w)
              / _at(metrics, "logit_deviation", mid, split="test", width=w) for w in widths]
    out.append(C.above("the deviation grows at late times (every width)",
                       f"min over widths of RMSE(step {last}) / RMSE(step {mid})", float(np.min(ratios)),
                       float(cl.late_growth_min), cite=cite))
    growth = [_at(metrics, "logit_rms", last, split="train", model="lin", width=w)
              / _at(metrics, "logit_rms", mid, split="train", model="lin", width=w) for w in widths]
    out.append(C.above("logits keep growing at late times under cross-entropy (any model fitting separable "
                       "data does: a sanity check of the late-time regime)",
                       f"min over widths of train logit RMS of f_lin, step {last} / step {mid}",
                       float(np.min(growth)), float(cl.logit_growth_min), kind="check"))
    on = onset_steps(metrics, float(cl.onset_rel))
    out.append(C.above("wider networks start to deviate later in training",
                       f"log-log slope over width of the first step where test RMSE(f - f_lin) / RMS(f) > "
                       f"{cl.onset_rel:g} (never: the last step, a lower bound)",
                       C.loglog_slope(list(on.keys()), list(on.values())), float(cl.onset_slope_min),
                       cite=cite))
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


def _styles(models):
    return {m: (LABELS[m], STYLE[m]) for m in models}


def _logits(ax, lg, models, x="step"):
    """Every logit of one point (a color each), one line style per model."""
    ks = sorted(lg.logit.unique())
    plotting.paired_curves(ax, lg, [dict(logit=c) for c in ks], _styles(models), x=x,
                           palette=plotting.categorical_colors(len(ks)))
    ax.set(ylabel="logit f(x)")
    ax.legend(loc="upper left")


def _deviations(ax, curves, ylabel, title, x="step", xlabel="step t"):
    """Log-log curves (x > 0) of (table, color, label)."""
    for g, color, label in curves:
        g = g[g[x] > 0].sort_values(x)
        ax.plot(g[x], g.value, "o-", color=color, ms=3, label=label)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()


def _logit_row(axes, metrics, width, title, deviation_title):
    """Two tracked test points' logits (`title` formatted with k and point), then the logit deviation."""
    lg = _q(metrics, "logit", width=width)
    for ax, t in zip(axes, sorted(lg.track.unique())[:2]):
        g = lg[lg.track == t]
        _logits(ax, g, MODELS)
        plotting.step_axis(ax, g.step.unique())
        ax.set_title(title.format(k=int(lg.logit.max()) + 1, point=int(g.point.iloc[0])))
    _deviations(axes[2], [(_q(metrics, "logit_deviation", width=width, split=s), c, s)
                          for s, c in plotting.SPLIT_COLORS.items()], r"RMSE$(f - f^{lin})$", deviation_title)


def _plot_ode(axes, metrics, cfg):
    od = metrics[metrics.model.isin(["ode", "lin_gd"])]
    if not len(od):
        for ax in axes:
            ax.set_visible(False)
        return
    xlabel = r"time $t = \eta \cdot$ step"
    _logits(axes[0], od[od.quantity == "ode_logit"], ("ode", "lin_gd"), x="time")
    plotting.split_curves(axes[1], _q(od, "loss"), _styles(("ode", "lin_gd")), x="time")
    for ax in axes[:2]:
        plotting.step_axis(ax, od.time.unique(), linthresh=float(cfg.ode_lr), xlabel=xlabel)
    axes[0].set_title(f"ODE vs trained f_lin, n={int(od.width.iloc[0])}, |D_ode|={int(cfg.n_ode)}")
    axes[1].set(ylabel="cross-entropy loss", yscale="log", title=f"ODE subset: loss (full-batch GD, lr={cfg.ode_lr})")
    axes[2].axhline(float(cfg.claims.ode_rel_max), color="k", ls="--", lw=0.8, label="claim tolerance")
    _deviations(axes[2], [(_q(od, "ode_relative_deviation", split=s), c, s) for s, c in plotting.SPLIT_COLORS.items()],
                r"RMSE(ODE $-$ f_lin) / RMSE(f_lin $-$ f_0)", "ODE vs trained f_lin: relative error", "time", xlabel)


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    fig, caption = (_plot_s3 if cfg.view == "s3" else _plot_s4)(metrics, cfg)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale: {caption}, {cfg.steps} steps)")


def _plot_s3(metrics, cfg):
    width = int(max(cfg.widths))
    fig, axes = plotting.subplots(3, 3, width=3.6, height=2.9)
    _logit_row(axes[0], metrics, width, "all {k} logits, test point #{point}", "logit deviation")
    for ax, quantity, title in zip(axes[1], ("loss", "accuracy", "accuracy"), ("loss", "accuracy", "accuracy (zoom)")):
        table = _q(metrics, quantity, width=width)
        plotting.split_curves(ax, table, _styles(MODELS))
        plotting.step_axis(ax, table.step.unique())
        ax.set(ylabel="cross-entropy loss" if quantity == "loss" else "accuracy", title=title,
               yscale="log" if quantity == "loss" else "linear")
    axes[1][2].set_ylim(0.8, 1.005)
    _plot_ode(axes[2], metrics, cfg)
    return fig, (f"n={width}, |D|={cfg.task.n_train}, lr={cfg.lr}, momentum={cfg.momentum}, "
                 f"batch {cfg.batch_size}")


def _plot_s4(metrics, cfg):
    dev = _q(metrics, "logit_deviation")
    widths = sorted(int(w) for w in dev.width.unique())
    fig, axes = plotting.subplots(len(widths) + 2, 3, width=3.6, height=2.6)
    for r, w in enumerate(widths):
        _logit_row(axes[r], metrics, w, f"n = {w}: logits, test point #{{point}}", f"n = {w}: logit deviation")
    colors, on = plotting.colors(len(widths)), onset_steps(metrics, float(cfg.claims.onset_rel))
    _deviations(axes[-2][0], [(_q(dev, "logit_deviation", width=w, split="test"), c, f"n = {w}")
                              for w, c in zip(widths, colors)], r"test RMSE$(f - f^{lin})$",
                f"logit deviation, all widths (dotted: rel. dev. > {float(cfg.claims.onset_rel):g})")
    for w, color in zip(widths, colors):
        axes[-2][0].axvline(on[w], color=color, ls=":", lw=1)
    ax, ww = axes[-2][1], np.asarray(widths, float)
    picks = (int(cfg.claims.early_step), int(cfg.claims.mid_step), int(dev.step.max()))
    for color, s in zip(("tab:green", "tab:orange", "tab:red"), picks):
        ax.plot(widths, [_at(metrics, "logit_deviation", s, split="test", width=w) for w in widths], "o-",
                color=color, ms=4, label=f"step {s}")
    v0 = _at(metrics, "logit_deviation", picks[0], split="test", width=widths[0])
    ax.plot(ww, v0 * np.sqrt(ww[0] / ww), "k--", lw=0.8, label=r"$\propto n^{-1/2}$")
    ax.plot(ww, v0 * (ww[0] / ww), "k:", lw=0.8, label=r"$\propto n^{-1}$")
    ax.set(yscale="log", xlabel="width n", ylabel=r"test RMSE$(f - f^{lin})$", title="deviation against width")
    ax.set_xscale("log", base=2)
    ax.legend()
    ax = axes[-2][2]  # colors: the widths, as in the first pane of this row
    plotting.paired_curves(ax, _q(metrics, "logit_rms", split="train"), [dict(width=w) for w in widths],
                           _styles(MODELS), palette=colors)
    plotting.step_axis(ax, dev.step.unique())
    ax.set(ylabel="train logit RMS", title="logits grow at late times (solid f, dashed f_lin)")
    ax.legend()
    _plot_ode(axes[-1], metrics, cfg)
    return fig, (f"|D|={cfg.task.n_train}, lr={cfg.lr}, "
                 f"{'full-batch GD' if cfg.batch_size is None else 'batch ' + str(cfg.batch_size)}")
