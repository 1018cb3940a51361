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
the gradient X^T G = Q C^T G never leaves span(Q): training W1' = Q^T W1 on the coordinates c, with the
NTK scale sigma_w / sqrt(n0) of the ORIGINAL fan-in n0, gives exactly the outputs of the full network
at every step (tests/test_lee_predictive.py checks this).  The first layer costs N x n instead of
n0 x n.

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
from ntkrepro import data, kernels, plotting
from ntkrepro.dynamics import nngp_posterior, ntk_gp_mean_cov, readout_mean_cov
from ntkrepro.errors import ConfigError
from ntkrepro.manifest import record_data
from ntkrepro.nets import activation_fn

SOURCES = ("ensemble", "ntk_gp", "nngp")
BAND = {"ntk_gp": ("tab:blue", "NTK-GP, Eqs. 14-15"),
        "nngp": ("tab:red", "NNGP (readout only), Eqs. S22-S23")}


# ----------------------------------------------------------------------------------------------
# Data


def load_task(cfg):
    """Binary CIFAR-10 training set (Sec. 3) and the interpolation path between its first example of
    each class: x(1) = first `classes[0]` (target +1), x(2) = first `classes[1]` (target -1)."""
    ds = data.prepare("cifar10", split="train", n=int(cfg.n_train), classes=list(cfg.classes),
                      selection=cfg.selection, flatten=True, standardize=cfg.standardize, targets="pm1",
                      source=cfg.data.source, root=cfg.data.root, seed=cfg.seed)
    record_data("cifar10", ds.info["source"], [ds.x, ds.y], n=len(ds.x), classes=list(cfg.classes),
                selection=cfg.selection, standardize=cfg.standardize)
    i1 = int(np.flatnonzero(ds.labels == 0)[0])
    i2 = int(np.flatnonzero(ds.labels == 1)[0])
    lo, hi = cfg.alpha_range
    alphas = np.linspace(float(lo), float(hi), int(cfg.n_alpha))
    xs = alphas[:, None] * ds.x[i1][None] + (1.0 - alphas[:, None]) * ds.x[i2][None]
    record_data("interpolation", f"x(alpha) = alpha x[{i1}] + (1 - alpha) x[{i2}] (train indices), "
                f"alpha in [{lo}, {hi}], {len(alphas)} points", [alphas, xs])
    return ds.x, ds.y, xs, alphas, (i1, i2)


def project(x_train, x_test):
    """Coordinates of the inputs in an orthonormal basis Q of the training inputs' row space.

    Returns (c_train, c_test) with x = c Q^T for every input in that span (the test inputs must lie
    in it; `x(alpha)` does).  When N >= n0 the inputs are returned unchanged.
    """
    n, n0 = x_train.shape
    if n >= n0:
        return x_train, x_test
    q, _ = np.linalg.qr(x_train.T)  # (n0, N)
    c_test = x_test @ q
    resid = np.linalg.norm(x_test - c_test @ q.T) / max(np.linalg.norm(x_test), 1e-300)
    if resid > 1e-8:
        raise ConfigError(f"test inputs leave the span of the training inputs (relative residual "
                          f"{resid:.1e}); the exact input projection does not apply")
    return x_train @ q, c_test


# ----------------------------------------------------------------------------------------------
# Networks: a plain MLP (NTK parameterization, Eq. 1) with an explicit first-layer fan-in


def init_mlp(key, d_in: int, width: int, depth: int, dtype, b_var: float):
    """N(0, 1) weights (and biases if b_var > 0): (d_in, n), (n, n) * (depth - 1), (n, 1)."""
    sizes = [d_in] + [width] * depth + [1]
    keys = jax.random.split(key, 2 * len(sizes))
    ws = [jax.random.normal(keys[2 * i], (a, b), dtype)
          for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]
    bs = [jax.random.normal(keys[2 * i + 1], (b,), dtype) if b_var > 0 else jnp.zeros((0,), dtype)
          for i, b in enumerate(sizes[1:])]
    return {"w": ws, "b": bs}


def apply_mlp(params, x, *, fan_in: int, activation: str, w_var: float, b_var: float):
    """h^{l+1} = sigma_w / sqrt(n_l) h^l omega + sigma_b beta (Eq. 1); n_0 = `fan_in` (the original
    input dimension, also when x holds projected coordinates).  Returns (batch,)."""
    phi = activation_fn(activation)
    sw, sb = math.sqrt(w_var), math.sqrt(b_var)
    h = x
    n_layers = len(params["w"])
    for l, (w, b) in enumerate(zip(params["w"], params["b"])):
        n_in = fan_in if l == 0 else w.shape[0]
        h = (sw / math.sqrt(n_in)) * (h @ w)
        if b_var > 0:
            h = h + sb * b
        if l < n_layers - 1:
            h = phi(h)
    return h[:, 0]


def make_trainer(cfg, fan_in: int, c_train, y, c_test):
    """jitted (params stack, n_steps) -> params after n_steps full-batch GD steps, and the outputs."""
    dtype = jnp.dtype(cfg.train_dtype)
    c_train = jnp.asarray(c_train, dtype)
    c_test = jnp.asarray(c_test, dtype)
    y = jnp.asarray(np.asarray(y)[:, 0], dtype)
    lr = float(cfg.lr)
    f = lambda p, x: apply_mlp(p, x, fan_in=fan_in, activation=cfg.activation, w_var=float(cfg.w_var),
                               b_var=float(cfg.b_var))

    reduce = jnp.mean if cfg.loss_scale == "mean" else jnp.sum

    def loss(p):  # "mean": 1/(2N) sum (f - y)^2 (module docstring); "total": 1/2 sum (f - y)^2 (Eq. 2)
        return 0.5 * reduce((f(p, c_train) - y) ** 2)

    def step(p):
        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g)

    vstep = jax.vmap(step)

    @jax.jit
    def advance(params, n_steps):
        return jax.lax.fori_loop(0, n_steps, lambda _, p: vstep(p), params)

    @jax.jit
    def outputs(params):
        return jax.vmap(lambda p: (f(p, c_test), loss(p)))(params)

    return advance, outputs


def train_ensemble(cfg, fan_in: int, c_train, y, c_test, times):
    """Outputs (M, T, n_alpha) and training losses (M, T) of `ensemble` independently initialised
    networks at the step counts `times`; trained `ensemble_chunk` at a time (vmap inside jit)."""
    m_total, chunk = int(cfg.ensemble), int(cfg.get("ensemble_chunk", cfg.ensemble))
    advance, outputs = make_trainer(cfg, fan_in, c_train, y, c_test)
    dtype = jnp.dtype(cfg.train_dtype)
    init = jax.jit(jax.vmap(lambda k: init_mlp(k, c_train.shape[1], int(cfg.width), int(cfg.depth), dtype,
                                               float(cfg.b_var))))
    keys = jax.random.split(jax.random.PRNGKey(cfg.seed), m_total)
    outs, losses = [], []
    steps = np.diff(np.concatenate([[0], times])).astype(int)
    bar = tqdm(total=m_total * int(times[-1]), desc=f"{cfg.id} GD steps x nets", disable=None)
    for start in range(0, m_total, chunk):
        params = init(keys[start:start + chunk])
        fo, lo = [], []
        for s in steps:
            if s:
                params = advance(params, s)
                bar.update(int(s) * len(keys[start:start + chunk]))
            o, l_ = outputs(params)
            fo.append(np.asarray(o, np.float64))
            lo.append(np.asarray(l_, np.float64))
        outs.append(np.stack(fo, 1))
        losses.append(np.stack(lo, 1))
    bar.close()
    return np.concatenate(outs), np.concatenate(losses)


# ----------------------------------------------------------------------------------------------
# Analytic predictions


def analytic(cfg, x_train, y, x_test, times):
    """NTK-GP (Eqs. 14-15) and NNGP readout (S22-S23) means / stds on the path, (T, n_alpha) each,
    and the NNGP posterior (Eq. 13), from the analytic kernels of the infinite network (float64)."""
    n = len(x_train)
    k = kernels.fc(np.concatenate([x_train, x_test]), depth=int(cfg.depth), activation=cfg.activation,
                   w_var=float(cfg.w_var), b_var=float(cfg.b_var), parameterization="ntk")
    kk, th = np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)
    ktt, kst, kss = kk[:n, :n], kk[n:, :n], kk[n:, n:]
    lr, scale = float(cfg.lr), cfg.loss_scale
    out = {}
    mean, cov = ntk_gp_mean_cov(ktt, kst, kss, th[:n, :n], th[n:, :n], None, y, lr=lr, times=times,
                                loss_scale=scale)
    out["ntk_gp"] = (mean[..., 0], _std(cov))
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
    if cfg.loss_scale not in ("mean", "total"):
        raise ConfigError(f"loss_scale must be 'mean' or 'total', got {cfg.loss_scale!r}")
    x, y, xs, alphas, _ = load_task(cfg)
    gp, post, info = analytic(cfg, x, y, xs, times.astype(float))
    c_train, c_test = project(x, xs)
    f, loss = train_ensemble(cfg, x.shape[1], c_train, y, c_test, times)  # (M, T, A), (M, T)
    rows = []

    def add(source, stat, ti, values, member=-1):
        for a, v in zip(alphas, values):
            rows.append(dict(source=source, stat=stat, time=int(times[ti]), alpha=float(a), member=member,
                             value=float(v)))

    with np.errstate(all="ignore"):
        ens_mean = f.mean(0)
        ens_std = f.std(0, ddof=1)
    for ti in range(len(times)):
        add("ensemble", "mean", ti, ens_mean[ti])
        add("ensemble", "std", ti, ens_std[ti])
        for src in ("ntk_gp", "nngp"):
            add(src, "mean", ti, gp[src][0][ti])
            add(src, "std", ti, gp[src][1][ti])
        add("nngp_posterior", "mean", ti, post[0])
        add("nngp_posterior", "std", ti, post[1])
        for m in range(f.shape[0]):
            add("member", "f", ti, f[m, ti], member=m)
        finite = np.isfinite(f[:, ti]).all(1)
        scalars = dict(n_diverged=float((~finite).sum()), train_loss_mean=float(np.mean(loss[:, ti])),
                       n_members=float(f.shape[0]))
        for name, v in scalars.items():
            rows.append(dict(source="ensemble", stat=name, time=int(times[ti]), alpha=np.nan, member=-1,
                             value=v))
    for name, v in info.items():
        rows.append(dict(source="analytic", stat=name, time=-1, alpha=np.nan, member=-1, value=v))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# Claims


def _table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (time, alpha): columns <source>_<stat> for the summary statistics."""
    m = metrics[metrics.source.isin(SOURCES + ("nngp_posterior",)) & metrics.stat.isin(["mean", "std"])]
    wide = m.pivot_table(index=["time", "alpha"], columns=["source", "stat"], values="value", dropna=False)
    wide.columns = [f"{a}_{b}" for a, b in wide.columns]
    return wide.reset_index()


def _ensemble_stats(metrics: pd.DataFrame) -> pd.DataFrame:
    """Ensemble mean / std recomputed from the individual functions (the drawn lines of Fig. S1)."""
    mem = metrics[(metrics.source == "member") & (metrics.stat == "f")]
    g = mem.groupby(["time", "alpha"])["value"]
    return pd.DataFrame({"ensemble_mean": g.mean(), "ensemble_std": g.std(ddof=1)}).reset_index()


def discrepancies(metrics: pd.DataFrame, reference: str = "ntk_gp", from_members: bool = False):
    """Per time: (D_mean, D_std) of the ensemble against `reference` in units of the standard errors
    of an M-member ensemble drawn from the NTK-GP (module docstring)."""
    tab = _table(metrics)
    if from_members:
        tab = tab.drop(columns=["ensemble_mean", "ensemble_std"]).merge(_ensemble_stats(metrics),
                                                                      on=["time", "alpha"])
    size = metrics[(metrics.source == "ensemble") & (metrics.stat == "n_members")]
    out = {}
    for t, g in tab.groupby("time"):
        m = float(size[size.time == t].value.iloc[0])
        scale = math.sqrt(np.mean(g["ntk_gp_std"] ** 2))  # sampling noise is set by the NTK-GP
        se_mean, se_std = scale / math.sqrt(m), scale / math.sqrt(2.0 * (m - 1.0))
        rms = lambda a: float(np.sqrt(np.mean(np.asarray(a, float) ** 2)))
        d_mean = rms(g["ensemble_mean"] - g[f"{reference}_mean"]) / se_mean
        d_std = rms(g["ensemble_std"] - g[f"{reference}_std"]) / se_std
        out[int(t)] = (d_mean, d_std)
    return out


def coverage(metrics: pd.DataFrame, floor: float):
    """Per time: fraction of (member, alpha) with |f - mu| <= 2 sigma (NTK-GP), over the alphas whose
    sigma is at least `floor` times the largest sigma at that time."""
    tab = _table(metrics)[["time", "alpha", "ntk_gp_mean", "ntk_gp_std"]]
    mem = metrics[(metrics.source == "member") & (metrics.stat == "f")].merge(tab, on=["time", "alpha"])
    out = {}
    for t, g in mem.groupby("time"):
        keep = g.ntk_gp_std >= floor * g.ntk_gp_std.max()
        g = g[keep]
        out[int(t)] = float(np.mean(np.abs(g.value - g.ntk_gp_mean) <= 2.0 * g.ntk_gp_std))
    return out


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol = float(cfg.claims.max_discrepancy)
    members = cfg.view == "functions"
    d = discrepancies(metrics, "ntk_gp", from_members=members)
    size = metrics[(metrics.source == "ensemble") & (metrics.stat == "n_members")]
    n_members = int(size.value.max())
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
    mem = metrics[(metrics.source == "member") & (metrics.stat == "f")]
    n_members = mem.member.nunique()
    for ax, t in zip(axes[0], times):
        g = tab[tab.time == t].sort_values("alpha")
        a = g.alpha.to_numpy()
        if cfg.view == "functions":
            for _, gm in mem[mem.time == t].groupby("member"):
                gm = gm.sort_values("alpha")
                ax.plot(gm.alpha, gm.value, "-", color="k", lw=0.4, alpha=0.35)
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
