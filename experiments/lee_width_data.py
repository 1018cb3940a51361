"""Lee et al. 2019, Figure S5 and Sec. 3 "Effects of dataset size": network vs linearization against width.

Four panes (Fig. S5 as recalled; our copy of the paper lacks the caption), each the RMSE between a
trained network and its linearization (Eq. 5) at the end of training, on held-out test points, against
width, averaged over `trials` initialisations:

    fc    (a) fully connected networks, one curve per depth (|D| = 128)
    cnn   (b) convolutional networks (`convnet.ConvNet`), one curve per depth (|D| = 128)
    wrn   (c) wide residual networks (`wrn.WRN`, Table S1; depth 6N + 4 = 10, 16), one curve per depth
    data  (d) fully connected, one depth, one curve per training-set size |D|

Every network is trained by full-batch gradient descent on the per-example-mean MSE
(`ntkrepro.train.fit`, loss `mse`).  Its linearization after the same number of steps:

* fully connected and convolutional panes: the closed form of Sec. 2.1, f_s(X) = Y + (I - eta
  Theta_hat / |D|)^s (f_0(X) - Y) on the mean loss (`ntkrepro.dynamics.gradient_descent_mse`, exactly
  what s steps of GD on f_lin give) with the float64 empirical NTK `ModelSpec.empirical_ntk` of the
  initial network (`empirical.mlp_ntk`, `empirical.layerwise_ntk`: no Jacobian; `CLOSED_FORM`);
* residual pane: f_lin trained directly beside the network from the same theta_0
  (`train.fit_side_by_side`, `Trainer.linearization`: one `jax.jvp`, no Jacobian), in float32.  The
  WRN's batch norm uses the statistics of the batch it is applied to: the full training batch in
  training, and on test points consecutive groups of |D| points (`wrn.BatchStats`), so the
  network and its linearization are evaluated as the very functions they were trained as.  On the
  CPU backend the steps run as a host loop of jitted steps (`fit(host_loop=True)`).

Learning rate per pane: a fixed `lr`, or `lr_fraction` of the edge of stability of gradient descent
on the mean MSE, eta = lr_fraction * 2 / lambda_max(Theta_hat_0 / |D|), with lambda_max of the
initial network's empirical NTK on the training set (exact eigenvalue for the closed form; power
iteration on J J^T by VJP and JVP otherwise), so that depths whose kernels differ by orders of
magnitude train at the same relative rate.

Sec. 3: "as the width grows the error decreases (Figure S5).  Additionally, we see that the error
grows in the size of the dataset."  Sec. 3 / Fig. 1: the empirical kernel moves by O(1/n) during
training, and the gap obeys d(f - f_lin)/dt = -eta Theta_0 (f - f_lin) - eta (Theta_t - Theta_0)(f - Y),
so f_T - f_lin_T = O(1/n); Theorem 2.1 bounds it by O(n^-1/2).

Split runs (`points`, `run(cfg, subset)`, `cost`): one point per (pane, depth, |D|, width, trial);
its initialisation is drawn from (seed, pane, depth, width, trial) only, so in pane (d) one
initialisation of a width serves every |D| (nested, class-balanced training sets).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, split, tasks, wrn
from ntkrepro.dynamics import gradient_descent_mse
from ntkrepro.errors import ConfigError
from ntkrepro.train import Trainer, fit, fit_side_by_side, prefer_host_loop, rmse

PANES = {"fc": "(a) fully connected", "cnn": "(b) convolutional", "wrn": "(c) wide residual",
         "data": "(d) fully connected, |D|"}
ARCH = {"fc": "mlp", "cnn": "cnn", "wrn": "wrn", "data": "mlp"}
CLOSED_FORM = ("mlp", "cnn")      # architectures whose linearization is the closed form (layerwise NTK)
MUTATIONS = {"analytic_kernel": "the fully connected panes' linearization evolves with the infinite-width "
                                "NTK Theta instead of the initial network's empirical Theta_hat_0"}
CITE = "Lee et al. 2019, Fig. S5 (caption as recalled, UNVERIFIED) and Sec. 3 'Effects of dataset size'"


# ----------------------------------------------------------------------------------------------
# settings and sweep points


def active_panes(cfg) -> list[str]:
    names = list(cfg.run_panes)
    bad = [p for p in names if p not in PANES or p not in cfg.panes]
    if bad or not names:
        raise ConfigError(f"figure.paper.run_panes must list panes of {', '.join(PANES)}, got {names}")
    return names


def pane(cfg, name: str):
    """The settings of one pane (figure.paper.panes.<name>), checked."""
    p = cfg.panes[name]
    if (p.get("lr") is None) == (p.get("lr_fraction") is None):
        raise ConfigError(f"figure.paper.panes.{name}: set exactly one of lr (fixed eta) and lr_fraction "
                          "(eta as a fraction of 2 / lambda_max)")
    if name == "wrn" and int(cfg.task.n_test) % min(int(n) for n in p.n_trains):
        raise ConfigError(f"task.n_test={cfg.task.n_test} must be a multiple of |D| (panes.wrn.n_trains): "
                          "test points are evaluated in batches of |D| (batch norm)")
    return p


def spec_of(cfg, point: dict) -> models.ModelSpec:
    p = cfg.panes[point["pane"]]
    options = (("pool", int(p.pool)),) if ARCH[point["pane"]] == "wrn" else ()
    return models.ModelSpec(arch=ARCH[point["pane"]], width=int(point["width"]), depth=int(point["depth"]),
                            activation=cfg.activation, w_var=float(cfg.w_var), b_var=float(cfg.b_var),
                            parameterization=cfg.parameterization, pooling=str(p.pooling), options=options)


def points(cfg) -> list[dict]:
    """One point per (pane, depth, |D|, width, trial), the most expensive first (so round-robin
    shards get similar work)."""
    out = []
    for name in active_panes(cfg):
        p = pane(cfg, name)
        out += [{"pane": name, "depth": int(d), "n_train": int(n), "width": int(w), "trial": t}
                for d in p.depths for n in p.n_trains for w in p.widths for t in range(int(cfg.trials))]
    for pt in out:
        spec_of(cfg, pt)                                # bad architecture settings stop here
    return sorted(out, key=lambda pt: -_work(cfg, pt))


def _work(cfg, point: dict) -> float:
    """A rough flop count of a point, for ordering only (`cost` has XLA's)."""
    p, w, d = cfg.panes[point["pane"]], point["width"], point["depth"]
    shape = tasks.shapes(task_settings(cfg, point["pane"], point["n_train"]))["x_train"]
    if ARCH[point["pane"]] == "mlp":
        per = shape[1] * w + d * w * w
    else:
        per = shape[1] * shape[2] * 9 * w * w * (d if ARCH[point["pane"]] == "cnn" else 1.5 * d) * 3
    return float(point["n_train"] * per * int(p.steps))


def point_key(seed: int, point: dict):
    """The initialisation key of a point: from the seed and the point only, never |D| (pane (d): one
    initialisation per width and trial serves every |D|, the key of the unsplit code before issue 15)."""
    if point["pane"] == "data":
        return split.point_key(seed, 1000 * point["trial"] + point["width"])
    return split.point_key(seed, 1 + list(PANES).index(point["pane"]), point["depth"],
                           1000 * point["trial"] + point["width"])


def task_settings(cfg, name: str, n_train: int) -> dict:
    """The pane's task: `cfg.task` with n_train = |D|, flattened for fully connected nets, pooled."""
    base = OmegaConf.to_container(cfg.task, resolve=True)
    p = cfg.panes[name]
    return {**base, "n_train": int(n_train), "flatten": ARCH[name] == "mlp", "image_pool": int(p.image_pool)}


def load(cfg, name: str, n_train: int, cache: dict) -> tasks.Task:
    """The pane's nested class-balanced training set of size |D| and the task's test set (cached)."""
    settings = task_settings(cfg, name, n_train)
    key = (settings["flatten"], settings["image_pool"], int(n_train))
    if key not in cache:
        cache[key] = tasks.load(settings, cfg.data, seed=int(cfg.seed), name=f"{name}-train-{n_train}")
    return cache[key]


# ----------------------------------------------------------------------------------------------
# network against linearization


def _rmse(a, b) -> float:
    v = rmse(a, b)
    return v if math.isfinite(v) else math.inf


@functools.lru_cache(maxsize=None)
def _trainers(apply_fn, delta: bool) -> tuple[Trainer, Trainer]:
    """One (network, linearization) trainer pair per model, so `fit` compiles once per model (the
    learning rate is given to `fit`)."""
    net = Trainer(apply_fn, loss="mse", lr=1.0, delta=delta)
    return net, net.linearization()


def _eta(lr, lr_fraction, lam_max: float, n: int) -> float:
    """eta: fixed, or lr_fraction * 2 / lambda_max(Theta / |D|) (mean loss: GD is stable below 2)."""
    return float(lr) if lr is not None else float(lr_fraction) * 2.0 * n / lam_max


def _summary(net_train, net_test, lin_train, lin_test, y, lr, lam_max, n, loss0, diverged) -> dict:
    rmse_test = _rmse(net_test, lin_test)
    return dict(rmse_test=rmse_test, rmse_train=_rmse(net_train, lin_train),
                lr=lr, lr_lambda_max=lr * lam_max / n,     # mean loss: Theta / |D|
                loss_initial=float(loss0),
                loss_final_net=float(0.5 * np.mean((net_train - y) ** 2)),
                loss_final_lin=float(0.5 * np.mean((lin_train - y) ** 2)),
                diverged=int(not math.isfinite(rmse_test) or bool(diverged)), value=rmse_test)


def network_vs_linearization(spec: models.ModelSpec, params64, x, y, x_test, *, lr: float | None = None,
                             steps: int, dtype, lr_fraction: float | None = None,
                             mutation: str | None = None, host_loop: bool = False) -> dict:
    """Fully connected or convolutional: train the network (in `dtype`, from float64 `params64`) for
    `steps` full-batch GD steps on the mean MSE; its linearization by the closed form (float64,
    Theta_hat_0); their RMSE on x_test and on x, the learning rate, eta lambda_max(Theta_hat / |D|),
    losses."""
    theta = np.asarray(spec.empirical_ntk(params64, x))
    theta_tx = np.asarray(spec.empirical_ntk(params64, x_test, x))
    lam = float(np.linalg.eigvalsh(theta)[-1])
    eta = _eta(lr, lr_fraction, lam, len(x))
    if mutation == "analytic_kernel" and spec.has_analytic:   # the infinite-width kernel, not Theta_hat_0
        theta, theta_tx = np.asarray(spec.analytic(x).ntk), np.asarray(spec.analytic(x_test, x).ntk)
    lin = gradient_descent_mse(theta, np.asarray(spec.apply(params64, x)), y, lr=eta, steps=[steps],
                               theta_test_train=theta_tx, f0_test=np.asarray(spec.apply(params64, x_test)),
                               loss_scale="mean")
    net, _ = _trainers(spec.apply, False)
    res = fit(net, precision.cast(params64, dtype), jnp.asarray(x, dtype), jnp.asarray(y, dtype),
              steps=steps, record_at=[0], lr=eta, host_loop=host_loop)
    net_train, net_test = (np.asarray(spec.apply(res.state.variable, jnp.asarray(a, dtype)), np.float64)
                           for a in (x, x_test))
    return _summary(net_train, net_test, lin.train[-1], lin.test[-1], y, eta, lam, len(x), res.losses[0],
                    res.diverged)


def top_eigenvalue(apply_fn, params, x, iterations: int) -> float:
    """lambda_max of Theta_hat = J J^T on x (summed over outputs) by power iteration, each product
    one VJP and one JVP (no Jacobian); a fixed start vector, so the result depends on params only."""
    v = jnp.asarray(np.random.default_rng(0).standard_normal(jax.eval_shape(apply_fn, params, x).shape),
                    jax.tree_util.tree_leaves(params)[0].dtype)
    lam = 0.0
    for _ in range(int(iterations)):
        v = v / jnp.linalg.norm(v)
        w = _ntk_matvec(apply_fn, params, x, v)
        lam = float(jnp.vdot(v, w))
        v = w
    return lam


@functools.partial(jax.jit, static_argnums=0)
def _ntk_matvec(apply_fn, params, x, v):
    _, vjp = jax.vjp(lambda p: apply_fn(p, x), params)
    return jax.jvp(lambda p: apply_fn(p, x), (params,), vjp(v))[1]


def trained_side_by_side(spec: models.ModelSpec, params0, x, y, x_test, *, lr, lr_fraction, steps: int,
                         iterations: int, group: int | None) -> dict:
    """Residual (the architectures not in `CLOSED_FORM`): the network and its linearization (Eq. 5)
    trained directly from the same `train_dtype` theta_0 for `steps` full-batch GD steps on the mean
    MSE; the same summary as `network_vs_linearization`.  group: evaluate in batches of `group`
    points (batch norm)."""
    apply_fn = spec.apply if group is None else wrn.BatchStats(spec.apply, int(group))
    lam = top_eigenvalue(apply_fn, params0, x, iterations)
    eta = _eta(lr, lr_fraction, lam, len(x))
    net, lin = _trainers(apply_fn, True)
    res = fit_side_by_side({"network": net, "linearized": lin}, params0, x, y,
                           inputs={"train": x, "test": x_test}, steps=steps, record_at=[0], lr=eta,
                           host_loop=prefer_host_loop())
    out = {m: res[m].records[-1] for m in res}
    y = np.asarray(y, np.float64)
    return _summary(out["network"]["train"], out["network"]["test"], out["linearized"]["train"],
                    out["linearized"]["test"], y, eta, lam, len(x), res["network"].losses[0],
                    res["network"].diverged or res["linearized"].diverged)


def measure(cfg, point: dict, task: tasks.Task) -> dict:
    """The row of one sweep point."""
    p, spec = cfg.panes[point["pane"]], spec_of(cfg, point)
    key, steps = point_key(int(cfg.seed), point), int(p.steps)
    common = dict(lr=p.get("lr"), lr_fraction=p.get("lr_fraction"), steps=steps)
    if spec.arch in CLOSED_FORM:
        x_test = jnp.asarray(task.x_test, jnp.float64)
        params64 = spec.init(key, x_test)               # pane (d): one initialisation for every |D|
        out = network_vs_linearization(spec, params64, jnp.asarray(task.x_train, jnp.float64), task.y_train,
                                       x_test, dtype=precision.train_dtype(cfg), mutation=cfg.get("mutation"),
                                       host_loop=prefer_host_loop(spec.arch == "cnn"),
                                       **common)
    else:
        dt = precision.train_dtype(cfg)
        x = jnp.asarray(task.x_train, dt)
        out = trained_side_by_side(spec, spec.init(key, x, dt), x, jnp.asarray(task.y_train, dt),
                                   jnp.asarray(task.x_test, dt), iterations=int(cfg.power_iterations),
                                   group=len(x) if spec.arch == "wrn" else None, **common)
    return dict(pane=point["pane"], arch=spec.arch, depth=point["depth"], n_train=point["n_train"],
                width=point["width"], trial=point["trial"], steps=steps, **out)


def run(cfg, subset=None) -> pd.DataFrame:
    if not jax.config.jax_enable_x64:
        raise ConfigError("lee-s5 computes kernels and closed forms in float64; run with x64=true")
    todo = points(cfg) if subset is None else list(subset)
    cache: dict = {}
    rows = [measure(cfg, pt, load(cfg, pt["pane"], pt["n_train"], cache))
            for pt in tqdm(todo, desc=cfg.id, disable=None)]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# cost plan


def cost(cfg, point) -> list[costs.Cost]:
    """One point: `steps` training steps of the network (and, for wrn, of its linearization and the
    power iteration); for fully connected and convolutional nets the float64 NTK and the closed form."""
    p, spec = cfg.panes[point["pane"]], spec_of(cfg, point)
    shapes = tasks.shapes(task_settings(cfg, point["pane"], point["n_train"]))
    dt = precision.train_dtype(cfg)
    x, y, xt = (jax.ShapeDtypeStruct(shapes[k], dt) for k in ("x_train", "y_train", "x_test"))
    steps, name = int(p.steps), f"{point['pane']} depth={point['depth']} n={point['width']}"
    if spec.arch in CLOSED_FORM:
        x64, xt64 = (jax.ShapeDtypeStruct(s.shape, jnp.float64) for s in (x, xt))
        out = costs.training(f"{name}: network", _trainers(spec.apply, False)[0], spec, x.shape, y.shape,
                             steps, dtype=dt)
        params = spec.param_shapes(x64)
        out.append(costs.analyse(f"{name}: NTK (float64)",
                                 lambda q, a, b: (spec.empirical_ntk(q, a), spec.empirical_ntk(q, b, a)),
                                 params, x64, xt64))
        theta = jax.ShapeDtypeStruct((x.shape[0],) * 2, jnp.float64)
        return out + [costs.analyse(f"{name}: closed form", jnp.linalg.eigh, theta)]
    apply_fn = spec.apply if spec.arch == "cnn" else wrn.BatchStats(spec.apply, x.shape[0])
    net, lin = _trainers(apply_fn, True)
    out = costs.training(f"{name}: network", net, spec, x.shape, y.shape, steps, dtype=dt)
    out += costs.training(f"{name}: linearization", lin, spec, x.shape, y.shape, steps, dtype=dt)
    params = spec.param_shapes(x)
    out.append(costs.analyse(f"{name}: power iteration", functools.partial(_ntk_matvec, apply_fn), params, x,
                             jax.ShapeDtypeStruct(y.shape, dt), calls=int(cfg.power_iterations)))
    out.append(costs.analyse(f"{name}: test outputs", apply_fn, params, xt, calls=4))
    return out


# ----------------------------------------------------------------------------------------------
# claims


def mean_errors(metrics: pd.DataFrame, column: str = "rmse_test") -> pd.DataFrame:
    """Mean over trials of the finite errors, by pane, depth, |D| and width (nan where all diverged)."""
    m = metrics.replace([np.inf, -np.inf], np.nan)
    return m.groupby(["pane", "depth", "n_train", "width"], as_index=False)[column].mean()


def _curve_label(pane_name: str, depth, n_train) -> str:
    if pane_name == "data":
        return f"{PANES['data']} = {n_train}"
    unit = "WRN-" if pane_name == "wrn" else "depth "
    return f"{PANES[pane_name]}, {unit}{depth}"


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    err, tol, out = mean_errors(metrics), cfg.claims, []
    lo, hi = tol.width_slope
    for (name, depth, n), g in err.groupby(["pane", "depth", "n_train"], sort=False):
        out.append(C.in_range(f"{_curve_label(name, depth, n)}: the network-linearization RMSE falls with "
                              "width like 1/n (closer to n^-1 than to n^-1/2)",
                              "log-log slope of test RMSE over width (mean of trials)",
                              C.loglog_slope(g.width, g.rmse_test), lo, hi,
                              cite=f"{CITE}; rate: Sec. 3 / Fig. 1 (kernel moves O(1/n)), Thm. 2.1 bound"))
    data_err = err[err.pane == "data"]
    for w, g in data_err.groupby("width"):
        out.append(C.above(f"{PANES['data']}, width {w}: the RMSE grows with the data set size |D|",
                           "log-log slope of test RMSE over |D| (mean of trials)",
                           C.loglog_slope(g.n_train, g.rmse_test), float(tol.data_slope_min),
                           cite="Lee et al. 2019, Sec. 3: 'the error grows in the size of the dataset' (Fig. S5)"))
    div = int(metrics.diverged.sum())
    out.append(C.below("every run (network and linearization) stays finite at its learning rate",
                       f"diverged runs out of {len(metrics)}", float(div), 0.5, kind="check"))
    for name, g in metrics.groupby("pane", sort=False):
        out.append(C.below(f"{PANES[name]}: the networks learn (the agreement is not that of untrained models)",
                           "median over runs of final / initial training loss of the network",
                           float(np.median(g.loss_final_net / g.loss_initial)), float(tol.loss_ratio_max),
                           kind="check"))
    return out


# ----------------------------------------------------------------------------------------------
# plot


def _pane_axes(ax, metrics, err, name: str, cfg) -> None:
    by = "n_train" if name == "data" else "depth"
    e, raw = err[err.pane == name], metrics[metrics.pane == name]
    values = sorted(e[by].unique())
    for color, v in zip(plotting.colors(len(values)), values):
        g = e[e[by] == v].sort_values("width")
        label = f"|D| = {v}" if by == "n_train" else (f"WRN-{v}" if name == "wrn" else f"depth {v}")
        ax.plot(g.width, g.rmse_test, "o-", color=color, ms=3, label=label)
        r = raw[raw[by] == v]
        ax.plot(r.width, r.rmse_test.replace([np.inf], np.nan), ".", color=color, ms=2, alpha=0.35)
    g = e[e[by] == values[-1]].sort_values("width")
    w = np.asarray(g.width, float)
    if len(w) and np.isfinite(g.rmse_test.iloc[0]):
        y0 = float(g.rmse_test.iloc[0])
        ax.plot(w, y0 * (w[0] / w), "k--", lw=0.8, label=r"$\propto n^{-1}$")
        ax.plot(w, y0 * np.sqrt(w[0] / w), "k:", lw=0.8, label=r"$\propto n^{-1/2}$")
    p = cfg.panes[name]
    rate = f"eta = {float(p.lr):g}" if p.get("lr") is not None else f"eta = {float(p.lr_fraction):g} x 2/lambda_max"
    n = "" if name == "data" else f", |D| = {int(raw.n_train.iloc[0])}"
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="channels n" if ARCH[name] != "mlp" else "width n", ylabel=r"RMSE$(f_T(x), f^{lin}_T(x))$",
           title=f"{PANES[name].split(',')[0]}{n}\n{rate}, T = {int(p.steps)}")
    ax.legend(fontsize=6)


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    err = mean_errors(metrics)
    names = [p for p in PANES if p in set(metrics.pane)]
    fig, axes = plotting.subplots(1, len(names), width=3.4, height=3.2)
    for ax, name in zip(axes[0], names):
        _pane_axes(ax, metrics, err, name, cfg)
    task = cfg.task
    plotting.save(fig, out_dir, cfg.id,
                  f"{cfg.title} ({cfg.scale} scale). CIFAR-10 {' vs '.join(task.classes)} (+1 / -1), "
                  f"{cfg.activation}, sigma_w^2 = {float(cfg.w_var):g}, sigma_b^2 = {float(cfg.b_var):g}, "
                  f"full-batch GD on MSE; test points; dots: single initialisations, lines: mean of "
                  f"{int(metrics.trial.nunique())}")

