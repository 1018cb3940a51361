"""Lee et al. 2019, Appendix F, Figure S7: NTK against standard parameterization.

Test accuracy after minibatch SGD training against the learning rate eta, for every combination of
activation (relu / tanh), loss (softmax cross-entropy / MSE) and parameterization (NTK, Eq. 1;
standard, Eq. S36), on MNIST and CIFAR-10.  The standard network is trained with the *normalized*
learning rate eta_std = eta / n (App. F, n = the hidden width), so both parameterizations are drawn
against the same eta.  App. F: "final performance of two different parameterization leads to similar
quality model for similar value of normalized learning rate eta_std = eta_NTK / n".

Both parameterizations start from the *same function*: with one PRNG key the NTK weights omega and
the standard weights W = sigma_w / sqrt(n_l) omega are the same draw (`ntkrepro.nets.Dense`), so any
difference comes from the training dynamics alone.  Every run of one (data set, activation, loss,
parameterization) sees the same minibatches (`ntkrepro.train.batch_schedule`); its learning rates are
trained together, one `ntkrepro.train.fit` vmapped over eta.  Losses are batch means
(`ntkrepro.train.LOSSES`); MSE regresses zero-mean one-hot targets (one-hot minus 1/k, same argmax).

Divergence is recorded, never dropped and never fatal: a run is `diverged` when its loss or its
parameters become non-finite, or when the mean training loss over the last tenth of the steps exceeds
`blowup` times the initial loss.  Non-finite logits count as wrong predictions, so `accuracy` is
always a number; the figure draws diverged runs as crosses on the "diverged" line below the axis.

Claims (App. F: "similar quality model for similar value of normalized learning rate eta_std =
eta_NTK / n"), per (data set, activation, loss), the NTK curve against the standard one:

* learning rate by learning rate: at every eta where one parameterization converged, its test
  accuracy is matched by the other's curve within one grid step of eta (the accuracies of the other
  at eta / s, eta, eta * s, s the grid ratio, diverged runs included at their accuracy: the curve
  passes through every value between them).  One grid step because eta_std = eta_NTK / n makes the
  dynamics equal only up to per-layer factors (App. F, Eq. S37: sigma_w^2 = 2 on the hidden and
  readout weights), i.e. curves shifted by about a factor 2 in eta.  The gap is in binomial standard
  errors of a difference of two accuracies on n_test images, sqrt(2 p (1 - p) / n_test);
* the divergence boundary (the first diverged eta of the grid) agrees within one grid step.

A missing 1/n (the test mutation `eta_std_without_1_over_n`) shifts the standard curve by a factor n
(8 octaves at n = 256): both fail.  A check (ours) that every curve learns guards the comparison
against two curves that never leave chance level.

Split runs (`points`): one sweep point per (data set, activation, loss, parameterization), its
learning rates trained together; every point starts from the same key PRNGKey(seed) (so the NTK and
the standard network of a curve pair are one function) and sees the minibatches of `seed`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, tasks
from ntkrepro.errors import ConfigError
from ntkrepro.train import Trainer, accuracy, batch_schedule, fit

DATASET_LABEL = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
COLORS = {("relu", "xent"): "tab:blue", ("relu", "mse"): "tab:orange",
          ("tanh", "xent"): "tab:green", ("tanh", "mse"): "tab:red"}
MARKERS = {"ntk": "o", "standard": "^"}
MUTATIONS = {  # deliberately wrong variants, for tests/test_mutations.py only (`mutation=<name>`)
    "eta_std_without_1_over_n": "the standard parameterization trained with eta_std = eta_NTK instead of "
                                "eta_NTK / n (App. F)",
}


def _datasets(cfg) -> list[str]:
    names = list(cfg.datasets)
    for name in names:
        for block in ("log2_lrs", "tasks"):
            if name not in cfg[block]:
                raise ConfigError(f"no {block} entry for {name}; set figure.paper.{block}.{name}")
    return names


def lr_grid(cfg, name: str) -> np.ndarray:
    """eta = 2^e for the exponents of `log2_lrs.<name>` = [first, last, stride] (both ends included)."""
    first, last, stride = (int(v) for v in cfg.log2_lrs[name])
    if stride < 1 or last < first:
        raise ConfigError(f"log2_lrs.{name} must be [first, last, stride] with last >= first and stride >= 1")
    return 2.0 ** np.arange(first, last + 1, stride, dtype=np.float64)


def train_grid(apply_fn, loss: str, params0, lrs, x, y, x_test, *, steps: int, batch_size: int,
               seed: int) -> dict:
    """Minibatch SGD from `params0` for every learning rate in `lrs` at once (one vmapped `fit`, one
    sequence of minibatches).  Per learning rate: the minibatch loss at step 0 (`initial`) and at each
    of the last tenth of the steps (`late`, before their updates), whether the parameters stayed
    finite, the final test logits and the final loss on the whole training set."""
    trainer = Trainer(apply_fn, loss=loss, batch_size=batch_size)
    batches = batch_schedule(len(x), batch_size, steps, seed)
    late = list(range(steps - max(1, steps // 10), steps))
    loss_on = jax.jit(jax.vmap(trainer.loss, in_axes=(0, None, None)))
    predict = jax.jit(jax.vmap(trainer.predict, in_axes=(0, None)))

    def observe(step, state):
        if step == steps:
            return np.asarray(predict(state, x_test), np.float64), np.asarray(loss_on(state, x, y), np.float64)
        return np.asarray(loss_on(state, x[batches[step]], y[batches[step]]), np.float64)

    res = fit(trainer, params0, x, y, steps=steps, record_at=[0, *late], observe=observe, seed=seed,
              lr=lrs, batched=True, shared_params=True, track_loss=False)
    at = dict(zip(res.steps, res.records))
    logits, train_loss = at[steps]
    return dict(initial=at[0], late=np.stack([at[s] for s in late], 1), finite=~np.asarray(res.diverged),
                logits=logits, train_loss=train_loss)


def diverged_flags(initial, late, finite, blowup: float) -> np.ndarray:
    """(L,) bools: non-finite loss or parameters, or mean loss over the last tenth of the steps
    (`late`, (L, tail)) > blowup * the initial loss."""
    with np.errstate(all="ignore"):
        late_mean = np.mean(np.asarray(late, np.float64), axis=1)
        initial = np.asarray(initial, np.float64)
        bad = ~np.asarray(finite, bool) | ~np.isfinite(initial) | ~np.isfinite(late_mean)
        return bad | (late_mean > blowup * initial)


def lr_scale(cfg, parameterization: str) -> float:
    """The factor from eta to the learning rate used: 1 for NTK, 1 / n for standard (App. F)."""
    if parameterization == "ntk" or cfg.get("mutation") == "eta_std_without_1_over_n":
        return 1.0
    return 1.0 / int(cfg.width)


def points(cfg) -> list[dict]:
    """One sweep point per (data set, activation, loss, parameterization): one vmapped `fit` over the
    learning-rate grid (the unit a split run distributes)."""
    return [{"dataset": name, "activation": a, "loss": l, "parameterization": p}
            for name in _datasets(cfg) for a in cfg.activations for l in cfg.losses for p in cfg.parameterizations]


def measure(cfg, task, point: dict) -> list[dict]:
    """One curve: the network of `point` trained at every learning rate of its data set's grid."""
    dt = precision.train_dtype(cfg)
    name, act, loss, par = (point[k] for k in ("dataset", "activation", "loss", "parameterization"))
    x, x_test = jnp.asarray(task.x_train, dt), jnp.asarray(task.x_test, dt)
    targets = task.y_train if loss == "xent" else task.y_train - 1.0 / task.out_dim  # mse: zero-mean one-hot
    etas, width, steps = lr_grid(cfg, name), int(cfg.width), int(cfg.steps)
    batch = min(int(cfg.batch_size), len(x))
    key = jax.random.PRNGKey(int(cfg.seed))  # one key: both parameterizations start as one function
    spec = models.from_config(cfg, arch="mlp", out_dim=task.out_dim, activation=act, parameterization=par)
    scale = lr_scale(cfg, par)
    r = train_grid(spec.apply, loss, spec.init(key, x), jnp.asarray(etas * scale, dt), x, jnp.asarray(targets, dt),
                   x_test, steps=steps, batch_size=batch, seed=int(cfg.seed))
    acc = accuracy(r["logits"], task.labels_test)
    div = diverged_flags(r["initial"], r["late"], r["finite"], float(cfg.blowup))
    setting = dict(width=width, depth=int(cfg.depth), n_train=len(x), n_test=len(x_test), steps=steps,
                   batch_size=batch)
    rows = []
    for i, eta in enumerate(etas):
        final = float(r["train_loss"][i])
        rows.append(dict(dataset=name, activation=act, loss=loss, parameterization=par, lr=float(eta),
                         log2_lr=float(np.log2(eta)), lr_used=float(eta * scale), **setting,
                         accuracy=float(acc[i]), diverged=int(div[i]), loss_initial=float(r["initial"][i]),
                         loss_final=final if math.isfinite(final) else math.inf, value=float(acc[i])))
    return rows


def run(cfg, subset=None) -> pd.DataFrame:
    todo, loaded, rows = points(cfg) if subset is None else subset, {}, []
    for p in tqdm(todo, desc=cfg.id, disable=None):
        name = p["dataset"]
        if name not in loaded:
            loaded[name] = tasks.load(cfg.tasks[name], cfg.data, seed=cfg.seed, name=name)
        rows += measure(cfg, loaded[name], p)
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """One curve: `steps` SGD steps of every learning rate, the minibatch losses of the last tenth of
    the steps, and the final test outputs and full training loss."""
    shp, name = tasks.shapes(cfg.tasks[point["dataset"]]), point["dataset"]
    dt, steps, n_lr = precision.train_dtype(cfg), int(cfg.steps), len(lr_grid(cfg, name))
    batch = min(int(cfg.batch_size), shp["x_train"][0])
    spec = models.from_config(cfg, arch="mlp", out_dim=shp["y_train"][1], activation=point["activation"],
                              parameterization=point["parameterization"])
    trainer = Trainer(spec.apply, loss=point["loss"], batch_size=batch)
    out = costs.training(f"{name} {point['activation']}-{point['loss']}-{point['parameterization']}: "
                         f"{n_lr} learning rates", trainer, spec, shp["x_train"], shp["y_train"], steps,
                         dtype=dt, models=n_lr)
    params = spec.param_shapes(jax.ShapeDtypeStruct((1, *shp["x_train"][1:]), dt))
    xy = {k: jax.ShapeDtypeStruct(v, dt) for k, v in shp.items()}
    xb, yb = (jax.ShapeDtypeStruct((batch, *shp[k][1:]), dt) for k in ("x_train", "y_train"))
    loss = lambda p, u, v: trainer.loss_fn(spec.apply(p, u), v)  # noqa: E731
    return out + [costs.analyse("minibatch loss", loss, params, xb, yb, calls=n_lr * (max(1, steps // 10) + 1)),
                  costs.analyse("training loss", loss, params, xy["x_train"], xy["y_train"], calls=n_lr),
                  costs.analyse("test outputs", spec.apply, params, xy["x_test"], calls=n_lr)]


# ----------------------------------------------------------------------------------------------
# claims


def _curve(g: pd.DataFrame, par: str) -> pd.DataFrame:
    return g[g.parameterization == par].sort_values("lr").reset_index(drop=True)


def matched_gap(a: pd.DataFrame, b: pd.DataFrame, n_test: int, steps: int = 1) -> float:
    """Max over the converged learning rates of curve `a` of the distance from its accuracy to the
    range of curve `b`'s accuracies within `steps` grid steps (both on one grid), in binomial standard
    errors of a difference, sqrt(2 p (1 - p) / n_test), p = a's accuracy (floored at 1 / n_test)."""
    acc_a, acc_b = a.accuracy.to_numpy(float), b.accuracy.to_numpy(float)
    worst = -math.inf
    for i in np.flatnonzero(a.diverged.to_numpy() == 0):
        near = acc_b[max(0, i - steps): i + steps + 1]
        gap = max(near.min() - acc_a[i], acc_a[i] - near.max(), 0.0)
        p = min(max(acc_a[i], 1.0 / n_test), 1.0 - 1.0 / n_test)
        worst = max(worst, gap / math.sqrt(2.0 * p * (1.0 - p) / n_test))
    return worst if math.isfinite(worst) else math.nan


def boundary(c: pd.DataFrame) -> int:
    """Grid index of the first diverged learning rate (the grid's length when none diverged)."""
    bad = np.flatnonzero(c.diverged.to_numpy() != 0)
    return int(bad[0]) if len(bad) else len(c)


CITE = "Lee et al. 2019, App. F and Fig. S7"


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol, out = cfg.claims, []
    curves = ["dataset", "activation", "loss"]
    for (name, act, loss), g in metrics.groupby(curves, sort=False):
        ntk, std = _curve(g, "ntk"), _curve(g, "standard")
        label, n_test = f"{DATASET_LABEL.get(name, name)} {act}-{loss}", int(g.n_test.iloc[0])
        gap = max(matched_gap(ntk, std, n_test), matched_gap(std, ntk, n_test))
        out.append(C.below(
            f"{label}: NTK and standard parameterization (eta_std = eta_NTK / n) reach similar test "
            "accuracy learning rate by learning rate",
            "max over converged eta of |acc - the other's acc within one grid step of eta| in binomial "
            "standard errors of a difference", gap, float(tol.max_gap_se), cite=CITE))
        b_ntk, b_std = boundary(ntk), boundary(std)
        out.append(C.in_range(
            f"{label}: NTK and standard parameterization diverge from the same eta (eta_std = eta_NTK / n) "
            "within one grid step", f"|first diverged eta, NTK (grid index {b_ntk}) - standard ({b_std})| "
            "in grid steps", abs(b_ntk - b_std), 0, int(tol.boundary_steps), cite=CITE))
    best = metrics[metrics.diverged == 0].groupby([*curves, "parameterization"]).accuracy.max()
    for name in dict.fromkeys(metrics.dataset):
        low = best[best.index.get_level_values(0) == name]
        worst = float(low.min()) if len(low) else math.nan
        out.append(C.above(f"{DATASET_LABEL.get(name, name)}: every curve learns (best test accuracy over "
                           "eta well above chance 0.1)", "lowest over the curves of the best accuracy",
                           worst, float(tol.min_best_accuracy[name]), kind="check"))
    return out


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    names = list(dict.fromkeys(metrics.dataset))
    fig, axes = plotting.subplots(1, len(names) + 1, width=4.4, height=3.6,
                                  gridspec_kw={"width_ratios": [1.0] * len(names) + [0.38]})
    handles = {}
    for ax, name in zip(axes[0], names):
        m = metrics[metrics.dataset == name]
        ok = m[m.diverged == 0]
        lo = float(ok.accuracy.min()) if len(ok) else 0.0
        hi = float(ok.accuracy.max()) if len(ok) else 1.0
        span = max(hi - lo, 0.05)
        floor = lo - 0.12 * span  # the "diverged" band, below every finished run
        series = list(m.groupby(["activation", "loss", "parameterization"], sort=False))
        for s, ((act, loss, par), g) in enumerate(series):
            color = COLORS.get((act, loss), "k")
            g = g.sort_values("lr")
            good = g[g.diverged == 0]
            label = f"{act}-{loss}-{par}"
            (line,) = ax.plot(good.lr, good.accuracy, MARKERS.get(par, "s"), ls="-" if par == "ntk" else "--",
                              color=color, ms=4, lw=1, mfc=color if par == "ntk" else "none", label=label)
            handles.setdefault(label, line)
            bad = g[g.diverged == 1]  # drawn, not dropped: one row of crosses per curve in the band
            y_bad = floor - (s - (len(series) - 1) / 2) * 0.012 * span
            ax.plot(bad.lr, np.full(len(bad), y_bad), "x" if par == "ntk" else "+", color=color, ms=5)
        ax.axhspan(floor - 0.06 * span, floor + 0.06 * span, color="0.92", zorder=0)
        ax.text(0.01, floor + 0.065 * span, "diverged", transform=ax.get_yaxis_transform(), va="bottom",
                fontsize=7, color="0.3")
        ax.set_xscale("log", base=2)
        e = np.log2(m.lr.to_numpy())
        ax.set_xticks(2.0 ** np.arange(np.floor(e.min()), np.ceil(e.max()) + 1, 2))
        ax.set(xlabel=r"$\eta$  (standard: $\eta_{std} = \eta / n$)", ylabel="test accuracy",
               ylim=(floor - 0.08 * span, hi + 0.06 * span),
               title=f"{DATASET_LABEL.get(name, name)}: width {int(m.width.iloc[0])}, depth "
                     f"{int(m.depth.iloc[0])}, |D| = {int(m.n_train.iloc[0])},\n{int(m.steps.iloc[0])} SGD "
                     f"steps of batch {int(m.batch_size.iloc[0])}, {int(m.n_test.iloc[0])} test images")
    leg = axes[0][-1]
    leg.axis("off")
    leg.legend(list(handles.values()), list(handles.keys()), loc="center left", fontsize=7,
               title="activation-loss-param.\n(x / +: diverged)", title_fontsize=7)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; circles/solid: NTK, "
                                        "triangles/dashed: standard)")
