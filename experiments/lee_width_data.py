"""Lee et al. 2019, Sec. 3 "Effects of dataset size" and Figure S5: network vs linearization against width.

For each training-set size |D| and width n, a fully connected network is trained by full-batch
gradient descent on MSE (`ntkrepro.train.fit`, the per-example-mean loss `mse`), and its
linearization (Eq. 5) is evolved for the same number of steps with the same learning rate.
For MSE the linearized model's gradient-descent trajectory is known in closed form given its
(constant) empirical NTK at initialisation: `ntkrepro.dynamics.gradient_descent_mse` with the
float64 kernel `ModelSpec.empirical_ntk` (Sec. 2.1: f_s(X) = Y + (I - eta Theta)^s (f_0(X) - Y),
exactly what s steps of SGD(eta) on f_lin give).  The error is the RMSE between the two
models' outputs at the end of training, on held-out test points (as the last pane of Figs. 3 / S8)
and on the training points; it is averaged over `trials` initialisations.

Sec. 3: "as the width grows the error decreases (Figure S5).  Additionally, we see that the error
grows in the size of the dataset."  Theorem 2.1 bounds the gap by O(n^-1/2); the kernel moves by
O(1/n) (Fig. 1), which makes the output gap O(1/n) too; the a priori slope window covers both.

The network is trained in `train_dtype` (float32 by default: the measured gaps, 1e-3 .. 1e-1, are far
above float32 round-off); initialisation, kernel, initial outputs and the closed form are float64.
For every width the same initialisation serves every |D| (nested, class-balanced training sets), so
the |D| comparison is not blurred by different draws.

Layout: one measure function per pane of Fig. S5 (`measure_width_and_data`: the last pane, error
against width for each |D|), each returning metric rows from `network_vs_linearization`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import models, plotting, precision, tasks
from ntkrepro.dynamics import gradient_descent_mse
from ntkrepro.errors import ConfigError
from ntkrepro.train import Trainer, fit, rmse


def load(cfg):
    """Nested class-balanced training sets (one per |D|: `cfg.task` with n_train = |D|) and the
    task's test set: ({|D|: Task}, the test Task)."""
    base = OmegaConf.to_container(cfg.task, resolve=True)
    sizes = sorted(set(int(n) for n in cfg.n_trains))
    sets = {n: tasks.load({**base, "n_train": n, "n_test": 0 if i else base["n_test"]}, cfg.data,
                          seed=cfg.seed, name=f"train-{n}") for i, n in enumerate(sizes)}
    return sets, sets[sizes[0]]


def _rmse(a, b) -> float:
    v = rmse(a, b)
    return v if math.isfinite(v) else math.inf


def network_vs_linearization(spec: models.ModelSpec, params64, x, y, x_test, *, lr: float, steps: int,
                             dtype) -> dict:
    """Train the network (in `dtype`, from float64 `params64`) and its linearization (closed form,
    float64) for `steps` full-batch GD steps on the mean MSE; their RMSE on x_test and x, etc."""
    theta = np.asarray(spec.empirical_ntk(params64, x))
    lin = gradient_descent_mse(theta, np.asarray(spec.apply(params64, x)), y, lr=lr, steps=[steps],
                               theta_test_train=np.asarray(spec.empirical_ntk(params64, x_test, x)),
                               f0_test=np.asarray(spec.apply(params64, x_test)), loss_scale="mean")
    res = fit(Trainer(spec.apply, loss="mse", lr=lr), precision.cast(params64, dtype),
              jnp.asarray(x, dtype), jnp.asarray(y, dtype), steps=steps, record_at=[0])
    net_train, net_test = (np.asarray(spec.apply(res.state.variable, jnp.asarray(a, dtype)), np.float64)
                           for a in (x, x_test))
    rmse_test = _rmse(net_test, lin.test[-1])
    return dict(rmse_test=rmse_test, rmse_train=_rmse(net_train, lin.train[-1]),
                lr_lambda_max=lr * float(np.linalg.eigvalsh(theta)[-1]) / len(x),  # mean loss: Theta / |D|
                loss_initial=float(res.losses[0]),
                loss_final_net=float(0.5 * np.mean((net_train - y) ** 2)),
                loss_final_lin=float(0.5 * np.mean((lin.train[-1] - y) ** 2)),
                diverged=int(not math.isfinite(rmse_test) or res.diverged), value=rmse_test)


def measure_width_and_data(cfg, sets, test) -> list[dict]:
    """Last pane of Fig. S5: for each width and trial one float64 initialisation, trained on every |D|."""
    lr, steps, depth, dt = float(cfg.lr), int(cfg.steps), int(cfg.depth), precision.train_dtype(cfg)
    x_test = jnp.asarray(test.x_test, jnp.float64)
    rows = []
    jobs = [(w, t) for w in sorted(int(w) for w in cfg.widths) for t in range(int(cfg.trials))]
    for width, trial in tqdm(jobs, desc=cfg.id, disable=None):
        spec = models.from_config(cfg, arch="mlp", width=width)
        key = jax.random.fold_in(jax.random.PRNGKey(int(cfg.seed)), 1000 * trial + width)
        params64 = spec.init(key, x_test)  # one initialisation for every |D| (nested sets)
        for n, task in sets.items():
            out = network_vs_linearization(spec, params64, jnp.asarray(task.x_train, jnp.float64),
                                           task.y_train, x_test, lr=lr, steps=steps, dtype=dt)
            rows.append(dict(trial=trial, width=width, n_train=n, depth=depth, lr=lr, steps=steps, **out))
    return rows


def run(cfg) -> pd.DataFrame:
    if not jax.config.jax_enable_x64:
        raise ConfigError("lee-s5 computes the kernel and the closed form in float64; run with x64=true")
    sets, test = load(cfg)
    return pd.DataFrame(measure_width_and_data(cfg, sets, test))


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
                  f"{cfg.title} ({cfg.scale} scale). CIFAR-10 {' vs '.join(cfg.task.classes)}, {cfg.activation}, "
                  f"{int(cfg.depth)} hidden layers, sigma_w^2 = {float(cfg.w_var):g}, sigma_b^2 = "
                  f"{float(cfg.b_var):g}, T = {int(cfg.steps)} full-batch GD steps on MSE, eta = "
                  f"{float(cfg.lr):g}; dots: single initialisations, lines: mean of {int(metrics.trial.nunique())}")
