"""Jacot, Gabriel & Hongler 2018, Sec. 6.2 (Figure 2): network functions near convergence.

Networks of Jacot's depth L = 4 (3 hidden ReLU layers, beta = 0.1) of two widths are trained
`ensemble` times each by full-batch gradient descent (learning rate 1.0, cost 1/2 E_pin (f - f*)^2,
the MEAN over the 4 training points) for `steps` steps, and their functions on the unit circle
x = (sin g, cos g) (the paper's axis label f(sin(gamma), cos(gamma))) are compared with the
10th / 50th / 90th percentiles of the t -> inf limiting Gaussian of Sec. 5:

    mean  = Theta(x, X) Theta^{-1} Y,
    cov   = Sigma(x, x) + A Sigma(X, X) A^T - A Sigma(X, x) - Sigma(x, X) A^T,  A = Theta(x, X) Theta^{-1}

(`ntkrepro.dynamics.ntk_gp_mean_cov` with times = [inf]; the t -> inf limit does not depend on the
loss scale, `loss_scale="mean"` matches the paper's cost).  The kernels Sigma^(4), Theta^(4) come
(i) from the analytic limit and (ii), as in the paper, from one network of width `ref_width`
(readout-feature Gram `mlp_nngp`, NTK `mlp_ntk`, float64).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.stats import norm
from tqdm.auto import tqdm

from experiments.jacot_convergence import analytic, jacot_model, train_dtype, train_gd
from ntkrepro import claims as C
from ntkrepro import plotting
from ntkrepro.dynamics import ntk_gp_mean_cov
from ntkrepro.empirical import mlp_nngp, mlp_ntk
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params

PERCENTILES = (10, 50, 90)


def circle(gammas) -> np.ndarray:
    """x(gamma) = (sin gamma, cos gamma), the paper's axis label of Figure 2."""
    g = np.asarray(gammas, float)
    return np.stack([np.sin(g), np.cos(g)], axis=1)


def target(x) -> np.ndarray:
    """f*(x) = x1 x2 (NOT STATED for Fig. 2; the function of Fig. 1)."""
    return (x[:, 0] * x[:, 1])[:, None]


def _gp(k, theta, n, y, lr):
    """t -> inf mean and std on the grid from joint (train + grid) kernels; train points first."""
    mean, cov = ntk_gp_mean_cov(k[:n, :n], k[n:, :n], k[n:, n:], theta[:n, :n], theta[n:, :n], None, y,
                                lr=lr, times=[np.inf], loss_scale="mean")
    return mean[0, :, 0], np.sqrt(np.clip(np.diag(cov[0]), 0.0, None))


def run(cfg) -> pd.DataFrame:
    g_tr = np.asarray(cfg.train_angles, float)
    x_tr = circle(g_tr)
    y_tr = target(x_tr)
    gammas = np.linspace(-np.pi, np.pi, int(cfg.n_gamma))
    x_grid = circle(gammas)
    record_data("train", f"4 points (sin g, cos g) at g = {list(g_tr)}, f*(x) = x1 x2", [x_tr, y_tr])
    record_data("grid", f"{cfg.n_gamma} points (sin g, cos g), g in [-pi, pi]", [x_grid])
    n = len(x_tr)
    x_all = np.concatenate([x_tr, x_grid])
    rows = [dict(quantity="train_point", source="data", width=np.nan, init=-1, gamma=g, value=v)
            for g, v in zip(g_tr, y_tr[:, 0])]

    def gp_rows(source, width, k, theta):
        mean, std = _gp(np.asarray(k), np.asarray(theta), n, y_tr, float(cfg.lr))
        return [dict(quantity=q, source=source, width=width, init=-1, gamma=g, value=v)
                for q, vals in (("gp_mean", mean), ("gp_std", std)) for g, v in zip(gammas, vals)]

    ana = analytic(cfg, x_all)
    rows += gp_rows("analytic", np.nan, ana.nngp, ana.ntk)
    key = jax.random.PRNGKey(cfg.seed)
    key, sub = jax.random.split(key)
    ref_model = jacot_model(cfg, int(cfg.ref_width))
    xa64 = jnp.asarray(x_all, jnp.float64)
    ref_params = init_params(ref_model, sub, xa64)
    rows += gp_rows("empirical", int(cfg.ref_width), mlp_nngp(ref_model, ref_params, xa64),
                    mlp_ntk(ref_model, ref_params, xa64))
    del ref_params
    dt = train_dtype(cfg)
    x_tr_t, y_tr_t, x_grid_t = (jnp.asarray(a, dt) for a in (x_tr, y_tr, x_grid))
    jobs = [(int(w), i) for w in cfg.widths for i in range(int(cfg.ensemble))]
    for width, init in tqdm(jobs, desc=cfg.id, disable=None):
        model = jacot_model(cfg, width)
        key, sub = jax.random.split(key)
        params = init_params(model, sub, x_tr_t)
        params, losses = train_gd(model, params, x_tr_t, y_tr_t, lr=float(cfg.lr), steps=int(cfg.steps))
        f = np.asarray(model.apply({"params": params}, x_grid_t), float)[:, 0]
        f_tr = np.asarray(model.apply({"params": params}, x_tr_t), float)
        common = dict(source="network", width=width, init=init)
        rows += [dict(quantity="f", gamma=g, value=v, **common) for g, v in zip(gammas, f)]
        rows += [dict(quantity="train_loss_initial", gamma=np.nan, value=float(losses[0]), **common),
                 dict(quantity="train_loss_final", gamma=np.nan,
                      value=float(0.5 * np.mean((f_tr - y_tr) ** 2)), **common)]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# claims


def gp_band(metrics, source) -> pd.DataFrame:
    """gamma, mean, std, P10, P50, P90 of the limiting Gaussian from `source` kernels."""
    m = metrics[metrics.source == source]
    band = m.pivot(index="gamma", columns="quantity", values="value").reset_index()
    for p in PERCENTILES:
        band[f"P{p}"] = band.gp_mean + norm.ppf(p / 100) * band.gp_std
    return band.rename(columns={"gp_mean": "mean", "gp_std": "std"})


def ensemble_percentiles(metrics, width) -> pd.DataFrame:
    m = metrics[(metrics.quantity == "f") & (metrics.width == width)]
    f = m.pivot(index="gamma", columns="init", values="value")
    out = pd.DataFrame({"gamma": f.index.to_numpy()})
    for p in PERCENTILES:
        out[f"P{p}"] = np.percentile(f.to_numpy(), p, axis=1)
    return out


def distance_to_band(metrics, width, source="analytic") -> float:
    """mean over gamma and p in {10, 50, 90} of |P_p(ensemble) - P_p(limit)|, / mean_gamma std(limit)."""
    band, ens = gp_band(metrics, source), ensemble_percentiles(metrics, width)
    diffs = [np.abs(ens[f"P{p}"].to_numpy() - band[f"P{p}"].to_numpy()) for p in PERCENTILES]
    return float(np.mean(diffs) / band["std"].mean())


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol = cfg.claims
    widths = sorted(int(w) for w in metrics[metrics.quantity == "f"].width.unique())
    ana, emp = gp_band(metrics, "analytic"), gp_band(metrics, "empirical")
    scale = ana["std"].max()
    out = [C.below(f"The limiting band from one width-{int(cfg.ref_width)} network's kernels (as in the "
                   "paper) matches the analytic Theta_inf, Sigma band",
                   "max_gamma,p |P_p(empirical kernels) - P_p(analytic)| / max_gamma std(analytic)",
                   float(max(np.abs(emp[f"P{p}"] - ana[f"P{p}"]).max() for p in PERCENTILES) / scale),
                   tol.ref_band_max)]
    loss = metrics[metrics.quantity == "train_loss_final"]
    out.append(C.below(f"The networks are near convergence after {int(cfg.steps)} steps",
                       "largest final cost 1/2 mean (f - f*)^2 over all networks",
                       float(loss.value.max()), tol.final_loss_max))
    dist = {w: distance_to_band(metrics, w) for w in widths}
    for w in widths:
        out.append(C.below(f"The trained ensemble (n={w}) falls near the limiting t->inf band",
                           "mean |P_p(ensemble) - P_p(analytic limit)| / mean std, p in {10, 50, 90}",
                           dist[w], tol.distance_max))
    if len(widths) > 1:
        size = int(metrics[metrics.quantity == "f"].init.nunique())
        claim = C.below(f"The wider ensemble (n={widths[-1]}) is closer to the band than n={widths[0]}",
                        f"distance(n wide) / distance(n narrow), {size} inits per width",
                        dist[widths[-1]] / dist[widths[0]], tol.closer_ratio_max)
        if size < int(tol.closer_min_ensemble):
            claim = C.Claim(claim.claim, claim.measure, claim.value, claim.expected, C.NOT_EVALUATED,
                            f"{size} inits cannot resolve it: the percentiles of {size} draws scatter by "
                            "~0.4 limiting std, the width effect is ~0.1; needs >= "
                            f"{tol.closer_min_ensemble} (figure.paper.ensemble=100)")
        out.append(claim)
    return out


# ----------------------------------------------------------------------------------------------
# plot


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    fig, axes = plotting.subplots(1, 2, width=5.2, height=4.6)
    ax = axes[0][0]
    widths = sorted(int(w) for w in metrics[metrics.quantity == "f"].width.unique())
    colors = ["tab:orange", "tab:green", "tab:purple"]
    for color, w in zip(colors, widths):
        m = metrics[(metrics.quantity == "f") & (metrics.width == w)]
        shown = sorted(m.init.unique())[:int(cfg.get("n_show", 10))]
        for i, (_, g) in enumerate(m[m.init.isin(shown)].groupby("init")):
            ax.plot(g.gamma, g.value, color=color, lw=0.7, alpha=0.8,
                    label=f"n = {w} ({len(shown)} of {m.init.nunique()} inits)" if i == 0 else None)
    emp = gp_band(metrics, "empirical")
    ref_w = int(metrics[metrics.source == "empirical"].width.iloc[0])
    ax.plot(emp.gamma, emp.P50, "k-", lw=1.5,
            label=rf"$n = \infty$, $P_{{50}}$ (kernels of one n={ref_w} net)")
    ax.plot(emp.gamma, emp.P10, "k--", lw=1.2,
            label=rf"$n = \infty$, $\{{P_{{10}}, P_{{90}}\}}$ (n={ref_w} kernels)")
    ax.plot(emp.gamma, emp.P90, "k--", lw=1.2)
    ana = gp_band(metrics, "analytic")
    ax.plot(ana.gamma, ana.P50, color="tab:blue", ls=":", lw=1.3,
            label=r"analytic $\Theta_\infty$, $\Sigma$: $P_{50}$")
    ax.plot(ana.gamma, ana.P10, color="tab:blue", ls="-.", lw=1.0, label=r"analytic: $\{P_{10}, P_{90}\}$")
    ax.plot(ana.gamma, ana.P90, color="tab:blue", ls="-.", lw=1.0)
    tr = metrics[metrics.quantity == "train_point"]
    ax.plot(tr.gamma, tr.value, "o", color="red", ms=5, zorder=5, label="training points")
    ax.set(xlabel=r"$\gamma$", ylabel=r"$f(\sin\gamma, \cos\gamma)$", xlim=(-np.pi, np.pi),
           title="trained functions and the t -> inf limit (as the paper)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=6)
    # right: the ensembles' percentiles (all inits) against the analytic limiting band
    ax = axes[0][1]
    for q in ("P10", "P90"):
        ax.plot(ana.gamma, ana[q] - ana["mean"], color="tab:blue", ls="-.", lw=1.0,
                label=r"limit $P_{10}, P_{90}$" if q == "P10" else None)
    ax.axhline(0.0, color="tab:blue", ls=":", lw=1.3, label=r"limit $P_{50}$")
    for color, w in zip(colors, widths):
        ens = ensemble_percentiles(metrics, w)
        size = metrics[(metrics.quantity == "f") & (metrics.width == w)].init.nunique()
        for q, ls in (("P10", "--"), ("P50", "-"), ("P90", "--")):
            ax.plot(ens.gamma, ens[q] - ana["mean"].to_numpy(), color=color, ls=ls, lw=1.0,
                    label=f"n = {w}: P10, P50, P90 of {size} nets (D = {distance_to_band(metrics, w):.2f})"
                    if q == "P50" else None)
    ax.set(xlabel=r"$\gamma$", ylabel="percentile minus the limiting mean", xlim=(-np.pi, np.pi),
           title="ensemble percentiles vs the analytic limiting band")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, fontsize=6)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; {int(cfg.ensemble)} inits per "
                  f"width, {int(cfg.steps)} steps, lr {cfg.lr})")
