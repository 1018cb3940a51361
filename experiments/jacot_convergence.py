"""Jacot, Gabriel & Hongler 2018, Sec. 6.1 (Figure 1): the NTK converges to a fixed limit.

Networks of Jacot's depth L (L - 1 hidden ReLU layers of width n, one output, Sec. 2 with
beta = 0.1: a `models.ModelSpec` mlp in NTK parameterization with w_var = 1, b_var = beta^2) are drawn
`ensemble` times per width.  Theta^(L)(x0, x) is evaluated for x0 = (1, 0) and x = (cos g, sin g)
(the `circle` task) at initialisation and after `steps` steps of full-batch gradient descent
(learning rate 1.0, `train.fit`) on the cost C(f) = 1/2 E_pin (f - f*)^2 (the MEAN over the training
points, Sec. 5) with f*(x) = x1 x2 on N(0, I_2) inputs (the `task`).  The analytic limit
Theta^(L)_inf (`kernels.fc`) is the reference.  Kernels are computed layer by layer
(`empirical.mlp_ntk`) in float64; training runs in `train_dtype` (float32 by default, for speed).

Sweep points (`points`, the units a split run distributes over jobs): (width, init), width-major so
that round-robin shards get every width; a point's network is drawn from (seed, width, init) only, and
the analytic reference comes with the first point.  `MUTATIONS`: deliberate mistakes, for
tests/test_mutations.py only.
"""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, split, tasks
from ntkrepro.train import Trainer, fit

CITE = "Jacot et al. 2018, Sec. 6.1 and Fig. 1 caption"
MUTATIONS = {"limit_sigma_b_is_beta": "the analytic limit Theta_inf takes sigma_b^2 = beta = 0.1 while the "
                                      "network's bias enters as beta b (sigma_b^2 = beta^2 = 0.01, Remark 1)"}


def points(cfg) -> list[dict]:
    """One sweep point per (width, init), width-major (round-robin shards then get every width)."""
    return [{"width": int(w), "init": i} for w in cfg.widths for i in range(int(cfg.ensemble))]


def point_key(seed: int, point: dict):
    """The random key of a point: from the seed and the point only (not from the other points)."""
    return split.point_key(seed, point["width"], point["init"])


def reference(cfg, x0, xs) -> np.ndarray:
    """Theta_inf(x0, x) on the circle (the mutation: sigma_b^2 = beta instead of beta^2)."""
    spec = models.from_config(cfg)
    if cfg.get("mutation") == "limit_sigma_b_is_beta":
        spec = spec.replace(b_var=float(np.sqrt(spec.b_var)))
    return np.asarray(spec.analytic(x0, xs).ntk)[0]


def measure(cfg, point, x, y, x0, xs, gammas) -> list[pd.DataFrame]:
    """Train one network `steps` steps; Theta(x0, x) at t = 0 and t = steps, and the loss."""
    spec, steps = models.from_config(cfg, width=point["width"]), int(cfg.steps)
    params0 = spec.init(point_key(cfg.seed, point), x)
    result = fit(_trainer(spec, float(cfg.lr)), params0, x, y, steps=steps, record_at=[0])
    frames = [pd.DataFrame(dict(quantity="train_loss", step=[0, steps], gamma=np.nan,
                                value=result.losses[[0, -1]]))]
    for step, p in ((0, params0), (steps, result.state.variable)):
        theta = np.asarray(spec.empirical_ntk(precision.cast(p, jnp.float64), x0, xs))[0]
        frames.append(pd.DataFrame(dict(quantity="ntk", step=step, gamma=gammas, value=theta)))
    return frames


@functools.lru_cache(maxsize=None)
def _trainer(spec: models.ModelSpec, lr: float) -> Trainer:
    return Trainer(spec.apply, lr=lr)  # one per width: `fit` compiles once


def run(cfg, subset=None) -> pd.DataFrame:
    circle = tasks.load(cfg.circle, cfg.data, seed=cfg.seed, name="circle")
    train = tasks.load(cfg.task, cfg.data, seed=cfg.seed, name="train")
    x0, xs, gammas = circle.x_train, circle.x_test, circle.labels_test
    todo = points(cfg) if subset is None else list(subset)
    frames = []
    if points(cfg)[0] in todo:  # the rows of no point come with the first one
        frames.append(pd.DataFrame(dict(quantity="ntk", source="analytic", width=np.nan, init=-1, step=0,
                                        gamma=gammas, value=reference(cfg, x0, xs))))
    dt = precision.train_dtype(cfg)
    x, y = jnp.asarray(train.x_train, dt), jnp.asarray(train.y_train, dt)
    for p in tqdm(todo, desc=cfg.id, disable=None):
        frames += [f.assign(source="network", width=p["width"], init=p["init"])
                   for f in measure(cfg, p, x, y, x0, xs, gammas)]
    return pd.concat(frames, ignore_index=True)


def cost(cfg, point) -> list[costs.Cost]:
    """One point: `steps` full-batch GD steps and the loss twice (`costs.training`), and Theta(x0, x)
    in float64 at t = 0 and t = steps; the analytic reference with the first point."""
    shapes, dt = tasks.shapes(cfg.task), precision.train_dtype(cfg)
    spec, name = models.from_config(cfg, width=point["width"]), f"n={point['width']} init={point['init']}"
    out = costs.training(name, _trainer(spec, float(cfg.lr)), spec, shapes["x_train"],
                         shapes["y_train"], int(cfg.steps), dtype=dt, record_points=2)
    x0 = jax.ShapeDtypeStruct(tasks.shapes(cfg.circle)["x_train"], jnp.float64)
    xs = jax.ShapeDtypeStruct(tasks.shapes(cfg.circle)["x_test"], jnp.float64)
    params = spec.param_shapes(x0)
    out.append(costs.analyse(f"{name}: NTK", spec.empirical_ntk, params, x0, xs, calls=2))
    if point == points(cfg)[0]:
        out.append(costs.analyse("analytic Theta_inf", lambda a, b: models.from_config(cfg).analytic(a, b).ntk,
                                 x0, xs))
    return out


# ----------------------------------------------------------------------------------------------
# claims


def _curves(metrics, width, step) -> pd.DataFrame:
    """Kernel curves of one width at one step: one row per init, one column per gamma."""
    m = C.select(metrics, "ntk", source="network", width=width, step=step)
    return m.pivot(index="init", columns="gamma", values="value")


def summary(metrics) -> dict:
    """Per width: spread over inits at t=0, relative movement in training, mean's distance to the limit."""
    ref = C.select(metrics, "ntk", source="analytic").sort_values("gamma").value.to_numpy()
    steps = sorted(metrics[metrics.source == "network"].step.unique())
    t0, t1 = steps[0], steps[-1]
    out = {}
    for w in sorted(metrics[metrics.source == "network"].width.unique()):
        a, b = _curves(metrics, w, t0).to_numpy(), _curves(metrics, w, t1).to_numpy()
        out[int(w)] = dict(
            spread=float(np.mean(a.std(axis=0, ddof=1)) / np.mean(np.abs(ref))),
            move=float(np.mean(np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1))),
            inflation=float(np.mean(b.mean(axis=0)) / np.mean(a.mean(axis=0))),
            mean_err=float(np.linalg.norm(a.mean(axis=0) - ref) / np.linalg.norm(ref)),
            # sampling noise of that mean: sqrt(sum_x var(x) / M) / ||Theta_inf||
            mean_noise=float(np.sqrt(a.var(axis=0, ddof=1).sum() / len(a)) / np.linalg.norm(ref)),
        )
    return out


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    s, tol = summary(metrics), cfg.claims
    widths = sorted(s)
    lo_w, hi_w = widths[0], widths[-1]
    clt = np.sqrt(lo_w / hi_w)
    out = [
        C.in_range(f"The NTK shows less variance for the wider network: spread ratio n={hi_w} / "
                   f"n={lo_w} follows the CLT rate sqrt(n_small / n_large) = {clt:.3g}",
                   "(std over inits of Theta(x0, x) at t=0, mean over x) ratio / sqrt(n_small/n_large)",
                   s[hi_w]["spread"] / s[lo_w]["spread"] / clt, *tol.spread_ratio_vs_clt, cite=CITE),
        C.below(f"The NTK moves less during training for the wider network (n={hi_w} vs n={lo_w})",
                "ratio of mean ||Theta_T - Theta_0|| / ||Theta_0|| (wide / narrow)",
                s[hi_w]["move"] / s[lo_w]["move"], tol.move_ratio_max, cite=CITE),
        C.above(f"After training the NTK of the narrow network (n={lo_w}) 'inflates'",
                "mean_x,inits Theta_T / mean_x,inits Theta_0", s[lo_w]["inflation"], tol.inflation_min,
                cite=CITE),
    ]
    for w in widths:
        out.append(C.below(f"The mean NTK at t=0 (n={w}) matches the analytic limit Theta_inf up to the "
                           "sampling noise of the inits",
                           "||mean over inits - Theta_inf|| / (its sampling noise sqrt(sum_x var / M))",
                           s[w]["mean_err"] / s[w]["mean_noise"], tol.mean_err_z_max,
                           cite=f"{CITE} ('the expectation of the NTK is very close for both widths'); Thm. 1"))
    out.append(C.below(f"The mean NTK at t=0 of the wider network (n={hi_w}) is close to Theta_inf",
                       "||mean over inits - Theta_inf|| / ||Theta_inf|| over the circle",
                       s[hi_w]["mean_err"], tol.mean_err_wide_max, cite=f"{CITE}; Thm. 1"))
    loss = C.select(metrics, "train_loss").pivot_table(index=["width", "init"], columns="step", values="value")
    out.append(C.below("Gradient descent lowers the cost of every network (the t = T kernels are "
                       "kernels after training)", "largest final / initial cost over all networks",
                       float((loss.iloc[:, -1] / loss.iloc[:, 0]).max()), 1.0, kind="check"))
    return out


# ----------------------------------------------------------------------------------------------
# plot


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    fig, axes = plotting.subplots(1, 2, width=4.6, height=3.4)
    ax, s = axes[0][0], summary(metrics)
    steps, widths = sorted(C.select(metrics, "ntk", source="network").step.unique()), sorted(s)
    palette = dict(zip([(w, t) for w in (widths[0], widths[-1]) for t in (steps[0], steps[-1])],
                       ["tab:orange", "tab:red", "tab:cyan", "tab:blue"]))
    for w, t in itertools.product(widths, steps):
        curves = _curves(metrics, w, t)
        ax.plot(curves.columns, curves.T, color=palette.get((w, t), "gray"), lw=0.7, alpha=0.8,
                ls="-" if t == steps[0] else "--",
                label=[f"n = {w}, t = {int(t)}"] + ["_"] * (len(curves) - 1))  # one legend entry
    ref = C.select(metrics, "ntk", source="analytic").sort_values("gamma")
    ax.plot(ref.gamma, ref.value, "k:", lw=1.6, label=r"$n = \infty$ (analytic $\Theta_\infty$)")
    ax.set(xlabel=r"$\gamma$", ylabel=r"$\Theta^{(%d)}(x_0, x)$" % (int(cfg.depth) + 1), xlim=(-np.pi, np.pi),
           title=r"$x_0 = (1, 0)$, $x = (\cos\gamma, \sin\gamma)$; %d inits per width" % int(cfg.ensemble))
    ax.legend(loc="upper left")
    ax, ws = axes[0][1], np.array(widths, float)  # right: summary of the claims
    for key, style, label in (("spread", "o-", "spread over inits at t=0 (rel.)"),
                              ("move", "s-", f"rel. change after t={int(steps[-1])}"),
                              ("mean_err", "^-", "mean at t=0 vs analytic (rel.)")):
        ax.plot(ws, [s[w][key] for w in widths], style, label=label)
    ax.plot(ws, s[widths[0]]["spread"] * np.sqrt(ws[0] / ws), "k--", lw=0.8, label=r"$\propto n^{-1/2}$")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="relative size",
           title="summary over the inits")
    ax.legend()
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; depth L={int(cfg.depth) + 1}, "
                  f"{cfg.task.n_train} N(0,1) training inputs, f*=x1 x2, lr {cfg.lr})")
