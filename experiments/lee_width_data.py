"""Lee et al. 2019, Sec. 3 "Effects of dataset size" and Figure S5: network vs linearization against width.

For each training-set size |D| and width n, a fully connected network is trained by full-batch
gradient descent on MSE (`optax.sgd`, the per-example-mean loss of `ntkrepro.linearize.mse_loss`),
and its linearization (Eq. 5) is evolved for the same number of steps with the same learning rate.
For MSE the linearized model's gradient-descent trajectory is known in closed form given its
(constant) empirical NTK at initialisation: `ntkrepro.dynamics.gradient_descent_mse` with the
float64 kernel `ntkrepro.empirical.mlp_ntk` (Sec. 2.1: f_s(X) = Y + (I - eta Theta)^s (f_0(X) - Y),
exactly what s steps of `optax.sgd(eta)` on f_lin give).  The error is the RMSE between the two
models' outputs at the end of training, on held-out test points (as the last pane of Figs. 3 / S8)
and on the training points; it is averaged over `trials` initialisations.

Sec. 3: "as the width grows the error decreases (Figure S5).  Additionally, we see that the error
grows in the size of the dataset."  Theorem 2.1 bounds the gap by O(n^-1/2); the kernel moves by
O(1/n) (Fig. 1), which makes the output gap O(1/n) too; the a priori slope window covers both.

The network is trained in `dtype` (float32 by default: the measured gaps, 1e-3 .. 1e-1, are far
above float32 round-off); initialisation, kernel, initial outputs and the closed form are float64.
For every width the same initialisation serves every |D| (nested, class-balanced training sets), so
the |D| comparison is not blurred by different draws.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from experiments.lee_common import rmse

from ntkrepro import claims as C
from ntkrepro import data, plotting
from ntkrepro.dynamics import gradient_descent_mse
from ntkrepro.empirical import mlp_ntk
from ntkrepro.errors import ConfigError
from ntkrepro.linearize import mse_loss
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params, make_mlp


def _dtype(cfg):
    name = str(cfg.get("dtype", "float32"))
    if name not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got '{name}'; set figure.paper.dtype")
    return jnp.float32 if name == "float32" else jnp.float64


def load(cfg):
    """Nested class-balanced training sets (one per |D|) and one test set, flattened and standardized."""
    common = dict(classes=list(cfg.classes), flatten=True, standardize=cfg.standardize, targets=cfg.targets,
                  selection="stratified", source=cfg.data.source, root=cfg.data.root, seed=cfg.seed)
    sizes = sorted(set(int(n) for n in cfg.n_trains))
    trains = {}
    for n in sizes:
        ds = data.prepare(cfg.dataset, split="train", n=n, **common)
        record_data(f"{cfg.dataset}-train-{n}", ds.info["source"], [ds.x, ds.y], n=n,
                    classes=list(cfg.classes), targets=cfg.targets, standardize=cfg.standardize)
        trains[n] = ds
    test = data.prepare(cfg.dataset, split="test", n=int(cfg.n_test), **common)
    record_data(f"{cfg.dataset}-test", test.info["source"], [test.x, test.y], n=len(test.x),
                classes=list(cfg.classes), targets=cfg.targets, standardize=cfg.standardize)
    return trains, test


def train_network(apply_fn, params, x, y, lr: float, steps: int):
    """`steps` full-batch `optax.sgd(lr)` steps on `mse_loss`; (final params, loss per step)."""
    opt = optax.sgd(lr)

    def body(carry, _):
        p, state = carry
        value, grads = jax.value_and_grad(lambda q: mse_loss(apply_fn(q, x), y))(p)
        updates, state = opt.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), losses = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
    return params, losses


def _rmse(a, b) -> float:
    v = rmse(a, b)
    return v if math.isfinite(v) else math.inf


def run(cfg) -> pd.DataFrame:
    if not jax.config.jax_enable_x64:
        raise ConfigError("lee-s5 computes the kernel and the closed form in float64; run with x64=true")
    dt = _dtype(cfg)
    trains, test = load(cfg)
    lr, steps, depth = float(cfg.lr), int(cfg.steps), int(cfg.depth)
    x_test = jnp.asarray(test.x, jnp.float64)
    rows = []
    jobs = [(w, t) for w in sorted(int(w) for w in cfg.widths) for t in range(int(cfg.trials))]
    for width, trial in tqdm(jobs, desc=cfg.id, disable=None):
        model = make_mlp(width=width, depth=depth, activation=cfg.activation, w_var=cfg.w_var,
                         b_var=cfg.b_var, parameterization=cfg.parameterization)

        def apply_fn(p, xx, model=model):
            return model.apply({"params": p}, xx)

        if trial == 0:  # one compiled trainer per width, reused by its trials
            fit = jax.jit(lambda p, xx, yy, f=apply_fn: train_network(f, p, xx, yy, lr, steps))
        key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), 1000 * trial + width)
        params64 = init_params(model, key, x_test[:1])  # one initialisation for every |D| (nested sets)
        f0_test = np.asarray(apply_fn(params64, x_test))
        p_net = jax.tree_util.tree_map(lambda a: a.astype(dt), params64)
        for n, ds in trains.items():
            x = jnp.asarray(ds.x, jnp.float64)
            theta = np.asarray(mlp_ntk(model, params64, x))
            theta_st = np.asarray(mlp_ntk(model, params64, x_test, x))
            f0 = np.asarray(apply_fn(params64, x))
            lin = gradient_descent_mse(theta, f0, ds.y, lr=lr, steps=[steps], theta_test_train=theta_st,
                                       f0_test=f0_test, loss_scale="mean")
            params_t, losses = fit(p_net, x.astype(dt), jnp.asarray(ds.y, dt))
            net_train = np.asarray(apply_fn(params_t, x.astype(dt)), np.float64)
            net_test = np.asarray(apply_fn(params_t, x_test.astype(dt)), np.float64)
            lam_max = float(np.linalg.eigvalsh(theta)[-1]) / n  # mean loss: eta * lambda(Theta / |D|)
            losses = np.asarray(losses, np.float64)
            rmse_test = _rmse(net_test, lin.test[-1])
            rows.append(dict(trial=trial, width=width, n_train=n, depth=depth, lr=lr, steps=steps,
                             rmse_test=rmse_test, rmse_train=_rmse(net_train, lin.train[-1]),
                             lr_lambda_max=lr * lam_max,
                             loss_initial=float(losses[0]),
                             loss_final_net=float(0.5 * np.mean((net_train - ds.y) ** 2)),
                             loss_final_lin=float(0.5 * np.mean((lin.train[-1] - ds.y) ** 2)),
                             diverged=int(not (math.isfinite(rmse_test) and np.all(np.isfinite(losses)))),
                             value=rmse_test))
    return pd.DataFrame(rows)


def mean_errors(metrics: pd.DataFrame, column: str = "rmse_test") -> pd.DataFrame:
    """Mean over trials of the finite errors, by |D| and width (nan where every trial diverged)."""
    m = metrics.replace([np.inf, -np.inf], np.nan)
    return m.groupby(["n_train", "width"], as_index=False)[column].mean()


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    err = mean_errors(metrics)
    lo, hi = cfg.claims.width_slope
    dmin = float(cfg.claims.data_slope_min)
    out = []
    for n, g in err.groupby("n_train"):
        out.append(C.in_range(f"|D| = {n}: the network-linearization RMSE falls with width "
                              "(O(n^-1/2) bound, O(1/n) kernel drift)",
                              "log-log slope of test RMSE over width (mean of trials)",
                              C.loglog_slope(g.width, g.rmse_test), lo, hi))
    for w, g in err.groupby("width"):
        out.append(C.above(f"width {w}: the RMSE grows with the data set size |D|",
                           "log-log slope of test RMSE over |D| (mean of trials)",
                           C.loglog_slope(g.n_train, g.rmse_test), dmin))
    div = int(metrics.diverged.sum())
    out.append(C.below("every run (network and linearization) stays finite at this learning rate",
                       f"diverged runs out of {len(metrics)}", float(div), 0.5))
    return out


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    fig, axes = plotting.subplots(1, 2, width=3.8, height=3.2)
    for ax, column, what in ((axes[0][0], "rmse_test", "test points"),
                             (axes[0][1], "rmse_train", "training points")):
        err = mean_errors(metrics, column)
        sizes = sorted(err.n_train.unique())
        for color, n in zip(plotting.colors(len(sizes)), sizes):
            g = err[err.n_train == n].sort_values("width")
            ax.plot(g.width, g[column], "o-", color=color, ms=3, label=f"|D| = {n}")
            raw = metrics[metrics.n_train == n]
            ax.plot(raw.width, raw[column].replace([np.inf], np.nan), ".", color=color, ms=2, alpha=0.35)
        g = err[err.n_train == sizes[-1]].sort_values("width")
        w = np.asarray(g.width, float)
        if len(w) and np.isfinite(g[column].iloc[0]):
            y0 = float(g[column].iloc[0])
            ax.plot(w, y0 * (w[0] / w), "k--", lw=0.8, label=r"$\propto n^{-1}$")
            ax.plot(w, y0 * np.sqrt(w[0] / w), "k:", lw=0.8, label=r"$\propto n^{-1/2}$")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="width n", ylabel=r"RMSE$(f_T(x), f^{lin}_T(x))$", title=f"{what}")
        ax.legend(fontsize=6)
    plotting.save(fig, out_dir, cfg.id,
                  f"{cfg.title} ({cfg.scale} scale). CIFAR-10 {' vs '.join(cfg.classes)}, {cfg.activation}, "
                  f"{int(cfg.depth)} hidden layers, sigma_w^2 = {float(cfg.w_var):g}, sigma_b^2 = "
                  f"{float(cfg.b_var):g}, T = {int(cfg.steps)} full-batch GD steps on MSE, eta = "
                  f"{float(cfg.lr):g}; dots: single initialisations, lines: mean of {int(metrics.trial.nunique())}")
