"""Lee et al. 2019, Figure 2 and Figure S1: the predictive distribution of trained networks over time.

An ensemble of `ensemble` networks (3 hidden tanh layers of width `width`, sigma_w^2 = 1.5, no bias,
NTK parameterization) is trained by full-batch gradient descent (lr 0.5) with MSE on |D| = 128
binary CIFAR-10 images (airplane = +1, horse = -1, Sec. 3).  At each of `times` (gradient steps) the
outputs on x(alpha) = alpha x(1) + (1 - alpha) x(2), interpolating one airplane x(1) and one horse
x(2) of the training set, are recorded and summarised by the ensemble mean and standard deviation.
These are compared with, from the analytic kernels K (NNGP) and Theta (NTK) of the infinite network:

* the NTK-GP (Eqs. 14-15, `ntkrepro.dynamics.ntk_gp_mean_cov`): the distribution of the trained
  infinitely wide network at time t (Theorem 2.2) -- the blue band of Fig. 2;
* the NNGP readout-only dynamics (Eqs. S22-S23, `ntkrepro.dynamics.readout_mean_cov`): training only
  the last layer -- the red band; its t -> inf limit is the NNGP posterior (Eq. 13).

Loss normalisation.  The networks minimise the per-example average 1/(2N) sum (f - y)^2 (footnote 6:
the plots of Sec. 3 use the average loss; with the total loss of Eq. 2, eta = 0.5 gives
eta lambda_max(Theta) ~ 16 > 2 on these 128 images and gradient descent diverges), so every closed
form is evaluated with ``loss_scale="mean"`` (eta_eff = eta / N).  Time t of Eqs. 14-15 and S22-S23
is counted in gradient steps (f_{s+1} - f_s = -eta Theta grad L); at eta lambda_max / N ~ 0.12 the
discrete and the continuous solutions differ by < 0.15 ensemble standard errors.

Exact input projection (speed, no approximation).  All inputs (the 128 training images and every
x(alpha)) lie in the row space of the training matrix X (N = 128 < n0 = 3072).  With X = C Q^T, Q an
orthonormal n0 x N basis, the first layer sees x W1 = c (Q^T W1), Q^T W1 is again i.i.d. N(0, 1), and
the gradient X^T G = Q C^T G never leaves span(Q): training W1' = Q^T W1 on the coordinates c
(`models.span_coordinates`), with the NTK scale sigma_w / sqrt(n0) of the ORIGINAL fan-in n0
(``ModelSpec(input_fan_in=n0)``), gives exactly the outputs of the full network at every step
(tests/test_lee_predictive.py checks this).  The first layer costs N x n instead of n0 x n.

Claims (discrepancies in units of the ensemble's sampling noise).  With M ensemble members drawn from
the NTK-GP N(mu, sigma^2), the ensemble mean has standard error sigma / sqrt(M) and the ensemble
standard deviation (ddof 1) sigma / sqrt(2 (M - 1)).  Per time,

    D_mean = rms_alpha(mean_ens - mu) / (rms_alpha(sigma) / sqrt(M))
    D_std  = rms_alpha(std_ens - sigma) / (rms_alpha(sigma) / sqrt(2 (M - 1)))

have E[D^2] ~ 1 under the NTK-GP (any M); pooling over alpha with the rms keeps points where sigma ~ 0
(the training points late in training) from dividing by zero.  In the worst case (all alpha fully
correlated) D is |N(0, 1)| and D > 3.5 happens by chance with probability 5e-4 per test (less
correlation concentrates D near 1).  The same D against the NNGP readout prediction at the last
time must exceed the same level to count as a measurable difference.  Fig. S1 (view "functions")
adds the share of (function, alpha) pairs inside the NTK-GP 2-sigma band (0.954 for draws from it).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import models, plotting, precision, tasks
from ntkrepro.dynamics import nngp_posterior, ntk_gp_mean_cov, readout_mean_cov
from ntkrepro.errors import ConfigError
from ntkrepro.manifest import record_data
from ntkrepro.train import Trainer, fit

SOURCES = ("ensemble", "ntk_gp", "nngp")
BAND = {"ntk_gp": ("tab:blue", "NTK-GP, Eqs. 14-15"),
        "nngp": ("tab:red", "NNGP (readout only), Eqs. S22-S23")}
LOSS = {"mean": "mse", "total": "mse_total"}  # 1/(2N) sum (f - y)^2 (module docstring); Eq. 2


# ----------------------------------------------------------------------------------------------
# Data


def load_path(cfg):
    """Binary CIFAR-10 training set (Sec. 3, `cfg.task`) and the interpolation path between its first
    example of each class: x(1) = first `classes[0]` (target +1), x(2) = first `classes[1]` (target -1).
    Returns (task, x(alpha) for every alpha, alphas)."""
    task = tasks.load(cfg.task, cfg.data, seed=cfg.seed, name="train")
    i1, i2 = (int(np.flatnonzero(task.labels_train == c)[0]) for c in (0, 1))
    lo, hi = cfg.alpha_range
    alphas = np.linspace(float(lo), float(hi), int(cfg.n_alpha))
    xs = alphas[:, None] * task.x_train[i1][None] + (1.0 - alphas[:, None]) * task.x_train[i2][None]
    record_data("interpolation", f"x(alpha) = alpha x[{i1}] + (1 - alpha) x[{i2}] (train indices), "
                f"alpha in [{lo}, {hi}], {len(alphas)} points", [alphas, xs])
    return task, xs, alphas


# ----------------------------------------------------------------------------------------------
# Networks


def draw_params(spec: models.ModelSpec, key, x, dtype):
    """N(0, 1) parameters (NTK parameterization, Eq. 1) of `spec` for inputs like x, from `key` split
    2 (L + 2) ways: layer l's weights from key 2l, its bias (if any) from key 2l + 1 (the draws of
    this module's earlier hand-written MLP, so the ensemble is the same)."""
    shapes = jax.eval_shape(lambda: spec.init(jax.random.PRNGKey(0), jnp.asarray(x[:1], dtype)))
    keys = jax.random.split(key, 2 * (int(spec.depth) + 2))
    return {layer: {name: jax.random.normal(keys[2 * int(layer.split("_")[1]) + (name == "bias")],
                                            leaf.shape, dtype) for name, leaf in leaves.items()}
            for layer, leaves in shapes.items()}


def train_ensemble(cfg, spec: models.ModelSpec, c_train, y, c_test, times):
    """Outputs (M, T, n_alpha) and training losses (M, T) of `ensemble` independently initialised
    networks at the step counts `times`; trained `ensemble_chunk` at a time (one vmapped `fit`)."""
    dtype = precision.train_dtype(cfg)
    x, y, xt = (jnp.asarray(a, dtype) for a in (c_train, y, c_test))
    trainer = Trainer(spec.apply, loss=LOSS[cfg.loss_scale], lr=float(cfg.lr))
    draw = jax.jit(jax.vmap(lambda k: draw_params(spec, k, x, dtype)))
    outputs = jax.jit(jax.vmap(lambda st: trainer.model_output(st.params0, st.variable, xt)[:, 0]))
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), int(cfg.ensemble))
    chunk = int(cfg.get("ensemble_chunk", cfg.ensemble))
    outs, losses = [], []
    for start in tqdm(range(0, len(keys), chunk), desc=f"{cfg.id} ensemble chunks", disable=None):
        res = fit(trainer, draw(keys[start:start + chunk]), x, y, steps=int(times[-1]), record_at=times,
                  observe=lambda step, st: np.asarray(outputs(st), np.float64), batched=True)
        outs.append(np.stack(res.records, 1))
        losses.append(res.losses.T)
    return np.concatenate(outs), np.concatenate(losses)


# ----------------------------------------------------------------------------------------------
# Analytic predictions


def analytic(spec: models.ModelSpec, cfg, x_train, y, x_test, times):
    """NTK-GP (Eqs. 14-15) and NNGP readout (S22-S23) means / stds on the path, (T, n_alpha) each,
    and the NNGP posterior (Eq. 13), from the analytic kernels of the infinite network (float64)."""
    n = len(x_train)
    k = spec.analytic(np.concatenate([x_train, x_test]))
    kk, th = np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)
    ktt, kst, kss = kk[:n, :n], kk[n:, :n], kk[n:, n:]
    lr, scale = float(cfg.lr), cfg.loss_scale
    mean, cov = ntk_gp_mean_cov(ktt, kst, kss, th[:n, :n], th[n:, :n], None, y, lr=lr, times=times,
                                loss_scale=scale)
    out = {"ntk_gp": (mean[..., 0], _std(cov))}
    mean, cov = readout_mean_cov(ktt, kst, kss, y, lr=lr, times=times, loss_scale=scale)
    out["nngp"] = (mean[..., 0], _std(cov))
    pm, pc = nngp_posterior(ktt, kst, kss, y)
    lam = np.linalg.eigvalsh(th[:n, :n])
    info = dict(ntk_lam_max=float(lam[-1]), ntk_lam_min=float(lam[0]),
                eta_lam_max=lr * float(lam[-1]) * (1.0 / n if scale == "mean" else 1.0))
    return out, (pm[:, 0], np.sqrt(np.clip(np.diag(pc), 0.0, None))), info


def _std(cov):
    return np.sqrt(np.clip(np.diagonal(cov, axis1=-2, axis2=-1), 0.0, None))


# ----------------------------------------------------------------------------------------------
# Experiment


def run(cfg) -> pd.DataFrame:
    times = np.asarray(sorted(set(int(t) for t in cfg.times)), dtype=np.int64)
    if times[0] < 0:
        raise ConfigError(f"times must be non-negative step counts, got {list(cfg.times)}")
    if cfg.loss_scale not in LOSS:
        raise ConfigError(f"loss_scale must be 'mean' or 'total', got {cfg.loss_scale!r}")
    spec = models.from_config(cfg, arch="mlp")
    if spec.parameterization != "ntk":
        raise ConfigError(f"{cfg.id} trains NTK-parameterized networks (Eq. 1); set parameterization: ntk")
    task, xs, alphas = load_path(cfg)
    x, y = task.x_train, task.y_train
    gp, post, info = analytic(spec, cfg, x, y, xs, times.astype(float))
    c_train, c_test = models.span_coordinates(x, xs)  # exact input projection (module docstring)
    f, loss = train_ensemble(cfg, spec.replace(input_fan_in=x.shape[1]), c_train, y, c_test, times)
    return pd.DataFrame(rows(times, alphas, f, loss, gp, post, info))


def rows(times, alphas, f, loss, gp, post, info) -> list[dict]:
    """Tidy rows: per time the ensemble / NTK-GP / NNGP / posterior mean and std on the path, every
    member's function, and the ensemble's scalars; then the analytic kernel's scalars."""
    out = []

    def add(source, stat, t, values, member=-1):
        out.extend(dict(source=source, stat=stat, time=int(t), alpha=float(a), member=member, value=float(v))
                   for a, v in zip(alphas, values))

    def scalar(source, stat, t, v):
        out.append(dict(source=source, stat=stat, time=int(t), alpha=np.nan, member=-1, value=v))

    with np.errstate(all="ignore"):
        stats = {"ensemble": (f.mean(0), f.std(0, ddof=1)), **gp,
                 "nngp_posterior": (np.broadcast_to(post[0], f.shape[1:]), np.broadcast_to(post[1], f.shape[1:]))}
    for ti, t in enumerate(times):
        for source, (mean, std) in stats.items():
            add(source, "mean", t, mean[ti])
            add(source, "std", t, std[ti])
        for m in range(f.shape[0]):
            add("member", "f", t, f[m, ti], member=m)
        scalar("ensemble", "n_diverged", t, float((~np.isfinite(f[:, ti]).all(1)).sum()))
        scalar("ensemble", "train_loss_mean", t, float(np.mean(loss[:, ti])))
        scalar("ensemble", "n_members", t, float(f.shape[0]))
    for name, v in info.items():
        scalar("analytic", name, -1, v)
    return out


# ----------------------------------------------------------------------------------------------
# Claims


def _members(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[(metrics.source == "member") & (metrics.stat == "f")]


def _n_members(metrics: pd.DataFrame) -> pd.Series:
    """Ensemble size M per time."""
    return metrics[(metrics.source == "ensemble") & (metrics.stat == "n_members")].set_index("time").value


def _table(metrics: pd.DataFrame, from_members: bool = False) -> pd.DataFrame:
    """One row per (time, alpha): columns <source>_<stat> for the summary statistics; `from_members`:
    the ensemble mean / std recomputed from the individual functions (the drawn lines of Fig. S1)."""
    m = metrics[metrics.source.isin(SOURCES + ("nngp_posterior",)) & metrics.stat.isin(["mean", "std"])]
    wide = m.pivot_table(index=["time", "alpha"], columns=["source", "stat"], values="value", dropna=False)
    wide.columns = [f"{a}_{b}" for a, b in wide.columns]
    if from_members:
        g = _members(metrics).groupby(["time", "alpha"])["value"]
        wide["ensemble_mean"], wide["ensemble_std"] = g.mean(), g.std(ddof=1)
    return wide.reset_index()


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.asarray(a, float) ** 2)))


def discrepancies(metrics: pd.DataFrame, reference: str = "ntk_gp", from_members: bool = False):
    """Per time: (D_mean, D_std) of the ensemble against `reference` in units of the standard errors
    of an M-member ensemble drawn from the NTK-GP (module docstring)."""
    sizes, out = _n_members(metrics), {}
    for t, g in _table(metrics, from_members).groupby("time"):
        m, scale = float(sizes[t]), _rms(g["ntk_gp_std"])  # sampling noise is set by the NTK-GP
        out[int(t)] = (_rms(g["ensemble_mean"] - g[f"{reference}_mean"]) / (scale / math.sqrt(m)),
                       _rms(g["ensemble_std"] - g[f"{reference}_std"]) / (scale / math.sqrt(2.0 * (m - 1.0))))
    return out


def coverage(metrics: pd.DataFrame, floor: float):
    """Per time: fraction of (member, alpha) with |f - mu| <= 2 sigma (NTK-GP), over the alphas whose
    sigma is at least `floor` times the largest sigma at that time."""
    tab = _table(metrics)[["time", "alpha", "ntk_gp_mean", "ntk_gp_std"]]
    out = {}
    for t, g in _members(metrics).merge(tab, on=["time", "alpha"]).groupby("time"):
        g = g[g.ntk_gp_std >= floor * g.ntk_gp_std.max()]
        out[int(t)] = float(np.mean(np.abs(g.value - g.ntk_gp_mean) <= 2.0 * g.ntk_gp_std))
    return out


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol = float(cfg.claims.max_discrepancy)
    members = cfg.view == "functions"
    d = discrepancies(metrics, "ntk_gp", from_members=members)
    n_members = int(_n_members(metrics).max())
    src = f"the {n_members} drawn functions" if members else f"the {n_members}-network ensemble"
    out = []
    for t, (dm, ds) in d.items():
        out.append(C.below(f"t = {t}: mean of {src} follows the NTK-GP mean (Eq. 14)",
                           "D_mean = rms_alpha|mean - mu| / (sigma/sqrt(M))", dm, tol))
        out.append(C.below(f"t = {t}: std of {src} follows the NTK-GP std (Eq. 15)",
                           "D_std = rms_alpha|std - sigma| / (sigma/sqrt(2(M-1)))", ds, tol))
    if members:
        lo = float(cfg.claims.min_coverage)
        for t, cov in coverage(metrics, float(cfg.claims.coverage_floor)).items():
            out.append(C.above(f"t = {t}: individual functions lie inside the NTK-GP 2-sigma band "
                               f"(95.4% for draws from it)",
                               "fraction of (function, alpha) with |f - mu| <= 2 sigma", cov, lo))
    t_end = max(d)
    dn = discrepancies(metrics, "nngp", from_members=members)[t_end]
    out.append(C.above(f"t = {t_end} (end of training): mean / std of {src} differ measurably from the "
                       f"NNGP readout prediction (Eqs. S22-S23)",
                       "max(D_mean, D_std) against the NNGP", max(dn),
                       float(cfg.claims.min_nngp_discrepancy)))
    return out


# ----------------------------------------------------------------------------------------------
# Plot


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    tab = _table(metrics)
    times = sorted(tab.time.unique())
    fig, axes = plotting.subplots(1, len(times), width=3.0, height=2.9, sharey=True)
    mem = _members(metrics)
    n_members = mem.member.nunique()
    for ax, t in zip(axes[0], times):
        g = tab[tab.time == t].sort_values("alpha")
        a = g.alpha.to_numpy()
        if cfg.view == "functions":
            lines = mem[mem.time == t].pivot(index="alpha", columns="member", values="value")
            ax.plot(lines.index, lines.to_numpy(), "-", color="k", lw=0.4, alpha=0.35)
            mu, sd = g.ntk_gp_mean.to_numpy(), g.ntk_gp_std.to_numpy()
            ax.plot(a, mu, "-", color="tab:blue", lw=1.2, label="NTK-GP mean")
            ax.plot(a, mu + 2 * sd, "--", color="tab:blue", lw=1.0, label=r"NTK-GP $\pm 2\sigma$")
            ax.plot(a, mu - 2 * sd, "--", color="tab:blue", lw=1.0)
            ax.plot([], [], "-", color="k", lw=0.6, alpha=0.5, label=f"{n_members} trained networks")
        else:
            for src in ("nngp", "ntk_gp"):
                color, label = BAND[src]
                mu, sd = g[f"{src}_mean"].to_numpy(), g[f"{src}_std"].to_numpy()
                ax.fill_between(a, mu - 2 * sd, mu + 2 * sd, color=color, alpha=0.25, lw=0,
                                label=label + r": mean $\pm 2\sigma$")
                ax.plot(a, mu, "-", color=color, lw=1.2)
            mu, sd = g.ensemble_mean.to_numpy(), g.ensemble_std.to_numpy()
            ax.plot(a, mu, "-", color="k", lw=1.2, label=f"ensemble of {n_members} NNs: mean")
            ax.plot(a, mu + 2 * sd, ":", color="k", lw=1.2, label=r"ensemble $\pm 2$ std")
            ax.plot(a, mu - 2 * sd, ":", color="k", lw=1.2)
        ax.plot([0.0, 1.0], [-1.0, 1.0], "o", color="k", ms=5, zorder=5, label="training points")
        ax.set(xlabel=r"$\alpha$", title=f"t = {t} steps")
        ax.set_xlim(a.min(), a.max())
        ax.set_xticks([0.0, 0.5, 1.0])
    axes[0][0].set_ylabel(r"$f(x(\alpha))$,  $x(\alpha) = \alpha x^{(1)} + (1-\alpha) x^{(2)}$")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)
    what = ("dashed: NTK-GP mean +- 2 sigma" if cfg.view == "functions" else
            "shaded / dotted: mean +- 2 standard deviations")
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale: width {cfg.width}, "
                  f"{n_members} networks, lr {cfg.lr}; {what})")
