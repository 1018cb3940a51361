"""Jacot, Gabriel & Hongler 2018, Sec. 6.2 (Figure 2): network functions near convergence.

Networks of Jacot's depth L = 4 (3 hidden ReLU layers, beta = 0.1) of two widths are trained
`ensemble` times each by full-batch gradient descent (learning rate 1.0, cost 1/2 E_pin (f - f*)^2,
the MEAN over the 4 training points) for `steps` steps, and their functions on the unit circle
x = (sin g, cos g) (the paper's axis label f(sin(gamma), cos(gamma)); the `circle` task with
`order: sin_cos`) are compared with the 10th / 50th / 90th percentiles of the t -> inf limiting
Gaussian of Sec. 5:

    mean  = Theta(x, X) Theta^{-1} Y,
    cov   = Sigma(x, x) + A Sigma(X, X) A^T - A Sigma(X, x) - Sigma(x, X) A^T,  A = Theta(x, X) Theta^{-1}

(`ntkrepro.dynamics.ntk_gp_mean_cov` with times = [inf]; the t -> inf limit does not depend on the
loss scale, `loss_scale="mean"` matches the paper's cost).  The kernels Sigma^(4), Theta^(4) come
(i) from the analytic limit and (ii), as in the paper, from one network of width `ref_width`
(readout-feature Gram `mlp_nngp`, NTK `mlp_ntk`, float64).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.stats import norm
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import models, plotting, precision, tasks
from ntkrepro.dynamics import ntk_gp_mean_cov
from ntkrepro.empirical import mlp_nngp
from ntkrepro.train import Trainer, fit

PERCENTILES = (10, 50, 90)


def limit_rows(source, width, k, theta, y, gammas, lr) -> pd.DataFrame:
    """Mean and std on the grid of the t -> inf Gaussian from joint (train + grid) kernels, train first."""
    n, k, theta = len(y), np.asarray(k), np.asarray(theta)
    mean, cov = ntk_gp_mean_cov(k[:n, :n], k[n:, :n], k[n:, n:], theta[:n, :n], theta[n:, :n], None, y,
                                lr=lr, times=[np.inf], loss_scale="mean")
    std = np.sqrt(np.clip(np.diag(cov[0]), 0.0, None))
    return pd.DataFrame(dict(quantity=np.repeat(["gp_mean", "gp_std"], len(gammas)), source=source,
                             width=width, init=-1, gamma=np.tile(gammas, 2), value=np.r_[mean[0, :, 0], std]))


def run(cfg) -> pd.DataFrame:
    task = tasks.load(cfg.task, cfg.data, seed=cfg.seed, name="circle")  # train points, then the grid
    gammas, y_tr, lr = task.labels_test, task.y_train, float(cfg.lr)
    x_all = jnp.asarray(np.concatenate([task.x_train, task.x_test]), jnp.float64)
    ana = models.from_config(cfg).analytic(x_all)
    frames = [pd.DataFrame(dict(quantity="train_point", source="data", width=np.nan, init=-1,
                                gamma=task.labels_train, value=y_tr[:, 0])),
              limit_rows("analytic", np.nan, ana.nngp, ana.ntk, y_tr, gammas, lr)]
    keys = iter(models.key_chain(cfg.seed, 1 + int(cfg.ensemble) * len(cfg.widths)))
    ref = models.from_config(cfg, width=cfg.ref_width)
    p = ref.init(next(keys), x_all)
    frames.append(limit_rows("empirical", int(cfg.ref_width), mlp_nngp(ref.module, p, x_all),
                             ref.empirical_ntk(p, x_all), y_tr, gammas, lr))
    del p  # the reference network's float64 parameters (1.6 GB at width 10^4)
    dt = precision.train_dtype(cfg)
    x_tr, y_t, x_grid = (jnp.asarray(a, dt) for a in (task.x_train, y_tr, task.x_test))
    for width in tqdm([int(w) for w in cfg.widths], desc=cfg.id, disable=None):
        spec = models.from_config(cfg, width=width)
        trainer = Trainer(spec.apply, lr=lr)  # one per width: `fit` compiles once
        for init in range(int(cfg.ensemble)):
            result = fit(trainer, spec.init(next(keys), x_tr), x_tr, y_t, steps=int(cfg.steps), record_at=[0])
            f, f_tr = (np.asarray(spec.apply(result.state.variable, a), float) for a in (x_grid, x_tr))
            common = dict(source="network", width=width, init=init)
            frames.append(pd.DataFrame(dict(quantity="f", gamma=gammas, value=f[:, 0], **common)))
            frames.append(pd.DataFrame(dict(
                quantity=["train_loss_initial", "train_loss_final"], gamma=np.nan,
                value=[result.losses[0], 0.5 * np.mean((f_tr - y_tr) ** 2)], **common)))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# claims


def gp_band(metrics, source) -> pd.DataFrame:
    """gamma, mean, std, P10, P50, P90 of the limiting Gaussian from `source` kernels."""
    band = metrics[metrics.source == source].pivot(index="gamma", columns="quantity", values="value")
    band = band.reset_index().rename(columns={"gp_mean": "mean", "gp_std": "std"})
    for p in PERCENTILES:
        band[f"P{p}"] = band["mean"] + norm.ppf(p / 100) * band["std"]
    return band


def ensemble_percentiles(metrics, width) -> pd.DataFrame:
    f = C.select(metrics, "f", width=width).pivot(index="gamma", columns="init", values="value")
    return pd.DataFrame({"gamma": f.index.to_numpy(),
                         **{f"P{p}": np.percentile(f.to_numpy(), p, axis=1) for p in PERCENTILES}})


def distance_to_band(metrics, width, source="analytic") -> float:
    """mean over gamma and p in {10, 50, 90} of |P_p(ensemble) - P_p(limit)|, / mean_gamma std(limit)."""
    band, ens = gp_band(metrics, source), ensemble_percentiles(metrics, width)
    diffs = [np.abs(ens[f"P{p}"].to_numpy() - band[f"P{p}"].to_numpy()) for p in PERCENTILES]
    return float(np.mean(diffs) / band["std"].mean())


def _widths(metrics) -> list[int]:
    return sorted(int(w) for w in metrics[metrics.quantity == "f"].width.unique())


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol, widths = cfg.claims, _widths(metrics)
    ana, emp = gp_band(metrics, "analytic"), gp_band(metrics, "empirical")
    band_gap = max(np.abs(emp[f"P{p}"] - ana[f"P{p}"]).max() for p in PERCENTILES) / ana["std"].max()
    out = [C.below(f"The limiting band from one width-{int(cfg.ref_width)} network's kernels (as in the "
                   "paper) matches the analytic Theta_inf, Sigma band",
                   "max_gamma,p |P_p(empirical kernels) - P_p(analytic)| / max_gamma std(analytic)",
                   float(band_gap), tol.ref_band_max),
           C.below(f"The networks are near convergence after {int(cfg.steps)} steps",
                   "largest final cost 1/2 mean (f - f*)^2 over all networks",
                   float(C.select(metrics, "train_loss_final").value.max()), tol.final_loss_max)]
    dist = {w: distance_to_band(metrics, w) for w in widths}
    out += [C.below(f"The trained ensemble (n={w}) falls near the limiting t->inf band",
                    "mean |P_p(ensemble) - P_p(analytic limit)| / mean std, p in {10, 50, 90}",
                    dist[w], tol.distance_max) for w in widths]
    if len(widths) > 1:
        size = int(C.select(metrics, "f").init.nunique())
        claim = C.below(f"The wider ensemble (n={widths[-1]}) is closer to the band than n={widths[0]}",
                        f"distance(n wide) / distance(n narrow), {size} inits per width",
                        dist[widths[-1]] / dist[widths[0]], tol.closer_ratio_max)
        out += C.finalize([claim], size >= int(tol.closer_min_ensemble), (
            f"{size} inits cannot resolve it: the percentiles of {size} draws scatter by ~0.4 limiting std, "
            f"the width effect is ~0.1; needs >= {tol.closer_min_ensemble} (figure.paper.ensemble=100)"))
    return out


# ----------------------------------------------------------------------------------------------
# plot


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    fig, axes = plotting.subplots(1, 2, width=5.2, height=4.6)
    widths, ax = _widths(metrics), axes[0][0]
    colors = dict(zip(widths, ["tab:orange", "tab:green", "tab:purple"]))
    for w in widths:
        f = C.select(metrics, "f", width=w).pivot(index="gamma", columns="init", values="value")
        shown = f.columns[:int(cfg.get("n_show", 10))]
        ax.plot(f.index, f[shown], color=colors[w], lw=0.7, alpha=0.8,
                label=[f"n = {w} ({len(shown)} of {f.shape[1]} inits)"] + ["_"] * (len(shown) - 1))
    ref_w = int(metrics[metrics.source == "empirical"].width.iloc[0])
    ana = gp_band(metrics, "analytic")
    for source, color, lw, ls, name in (("empirical", "k", 1.5, ("-", "--"), f"n = {ref_w} kernels"),
                                        ("analytic", "tab:blue", 1.3, (":", "-."), "analytic kernels")):
        band = gp_band(metrics, source)
        ax.plot(band.gamma, band.P50, color=color, ls=ls[0], lw=lw,
                label=rf"$n = \infty$, $P_{{50}}$ ({name})")
        ax.plot(band.gamma, band[["P10", "P90"]], color=color, ls=ls[1], lw=lw - 0.3,
                label=[rf"$n = \infty$, $\{{P_{{10}}, P_{{90}}\}}$ ({name})", "_"])
    tr = C.select(metrics, "train_point")
    ax.plot(tr.gamma, tr.value, "o", color="red", ms=5, zorder=5, label="training points")
    ax.set(xlabel=r"$\gamma$", ylabel=r"$f(\sin\gamma, \cos\gamma)$", xlim=(-np.pi, np.pi),
           title="trained functions and the t -> inf limit (as the paper)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=6)
    # right: the ensembles' percentiles (all inits) against the analytic limiting band
    ax = axes[0][1]
    ax.plot(ana.gamma, ana[["P10", "P90"]].sub(ana["mean"], axis=0), color="tab:blue", ls="-.", lw=1.0,
            label=[r"limit $P_{10}, P_{90}$", "_"])
    ax.axhline(0.0, color="tab:blue", ls=":", lw=1.3, label=r"limit $P_{50}$")
    for w in widths:
        ens, size = ensemble_percentiles(metrics, w), C.select(metrics, "f", width=w).init.nunique()
        for q, ls in (("P10", "--"), ("P50", "-"), ("P90", "--")):
            ax.plot(ens.gamma, ens[q] - ana["mean"].to_numpy(), color=colors[w], ls=ls, lw=1.0,
                    label=f"n = {w}: P10, P50, P90 of {size} nets (D = {distance_to_band(metrics, w):.2f})"
                    if q == "P50" else None)
    ax.set(xlabel=r"$\gamma$", ylabel="percentile minus the limiting mean", xlim=(-np.pi, np.pi),
           title="ensemble percentiles vs the analytic limiting band")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, fontsize=6)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; {int(cfg.ensemble)} inits per "
                  f"width, {int(cfg.steps)} steps, lr {cfg.lr})")
