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

Sweep points (`points`): the limiting band first ({"part": "limit"}: the analytic band, the width-
`ref_width` network's band and the training points), then (width, init), width-major.  A point's
network is drawn from (seed, width, init) only (the reference network: init -1).  `MUTATIONS`:
deliberate mistakes, for tests/test_mutations.py only.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy.stats import norm
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, split, tasks
from ntkrepro.dynamics import ntk_gp_mean_cov
from ntkrepro.empirical import mlp_nngp
from ntkrepro.train import Trainer, fit

PERCENTILES = (10, 50, 90)
CITE = "Jacot et al. 2018, Sec. 6.2 and Fig. 2 caption"
MUTATIONS = {"cov_from_ntk": "the limiting Gaussian's covariance (Sec. 5) computed from the NTK Theta in "
                             "place of the NNGP kernel Sigma (the mean is right)"}


def limit_rows(source, width, k, theta, y, gammas, lr) -> pd.DataFrame:
    """Mean and std on the grid of the t -> inf Gaussian from joint (train + grid) kernels, train first."""
    n, k, theta = len(y), np.asarray(k), np.asarray(theta)
    mean, cov = ntk_gp_mean_cov(k[:n, :n], k[n:, :n], k[n:, n:], theta[:n, :n], theta[n:, :n], None, y,
                                lr=lr, times=[np.inf], loss_scale="mean")
    std = np.sqrt(np.clip(np.diag(cov[0]), 0.0, None))
    return pd.DataFrame(dict(quantity=np.repeat(["gp_mean", "gp_std"], len(gammas)), source=source,
                             width=width, init=-1, gamma=np.tile(gammas, 2), value=np.r_[mean[0, :, 0], std]))


def points(cfg) -> list[dict]:
    """The limiting band, then one point per (width, init), width-major."""
    return [{"part": "limit"}] + [{"part": "network", "width": int(w), "init": i}
                                  for w in cfg.widths for i in range(int(cfg.ensemble))]


def point_key(seed: int, width: int, init: int):
    """The random key of a network: from the seed, its width and init only (reference network: init -1)."""
    return split.point_key(seed, width, int(init) + 1)


def limit(cfg, task) -> list[pd.DataFrame]:
    """The training points and the limiting band from the analytic kernels and from one width-
    `ref_width` network's kernels (float64, as the paper)."""
    gammas, y_tr, lr = task.labels_test, task.y_train, float(cfg.lr)
    wrong = cfg.get("mutation") == "cov_from_ntk"
    x_all = jnp.asarray(np.concatenate([task.x_train, task.x_test]), jnp.float64)
    ana = models.from_config(cfg).analytic(x_all)
    ref = models.from_config(cfg, width=cfg.ref_width)
    p = ref.init(point_key(cfg.seed, cfg.ref_width, -1), x_all)
    theta = ref.empirical_ntk(p, x_all)
    return [pd.DataFrame(dict(quantity="train_point", source="data", width=np.nan, init=-1,
                              gamma=task.labels_train, value=y_tr[:, 0])),
            limit_rows("analytic", np.nan, ana.ntk if wrong else ana.nngp, ana.ntk, y_tr, gammas, lr),
            limit_rows("empirical", int(cfg.ref_width), theta if wrong else mlp_nngp(ref.module, p, x_all),
                       theta, y_tr, gammas, lr)]


@functools.lru_cache(maxsize=None)
def _trainer(spec: models.ModelSpec, lr: float) -> Trainer:
    return Trainer(spec.apply, lr=lr)  # one per width: `fit` compiles once


def network(cfg, task, width: int, init: int) -> list[pd.DataFrame]:
    """Train one network; its function on the grid and its initial and final cost."""
    dt = precision.train_dtype(cfg)
    x_tr, y_t, x_grid = (jnp.asarray(a, dt) for a in (task.x_train, task.y_train, task.x_test))
    spec = models.from_config(cfg, width=width)
    result = fit(_trainer(spec, float(cfg.lr)), spec.init(point_key(cfg.seed, width, init), x_tr), x_tr, y_t,
                 steps=int(cfg.steps), record_at=[0])
    f, f_tr = (np.asarray(spec.apply(result.state.variable, a), float) for a in (x_grid, x_tr))
    common = dict(source="network", width=width, init=init)
    return [pd.DataFrame(dict(quantity="f", gamma=task.labels_test, value=f[:, 0], **common)),
            pd.DataFrame(dict(quantity=["train_loss_initial", "train_loss_final"], gamma=np.nan,
                              value=[result.losses[0], 0.5 * np.mean((f_tr - task.y_train) ** 2)], **common))]


def run(cfg, subset=None) -> pd.DataFrame:
    task = tasks.load(cfg.task, cfg.data, seed=cfg.seed, name="circle")  # train points, then the grid
    frames = []
    for p in tqdm(points(cfg) if subset is None else subset, desc=cfg.id, disable=None):
        frames += limit(cfg, task) if p["part"] == "limit" else network(cfg, task, p["width"], p["init"])
    return pd.concat(frames, ignore_index=True)


def cost(cfg, point) -> list[costs.Cost]:
    """The band: analytic kernels and one width-`ref_width` network's NNGP and NTK (float64) on the
    training points and the grid; a network: `steps` full-batch GD steps and its function."""
    shapes = tasks.shapes(cfg.task)
    n_all = shapes["x_train"][0] + shapes["x_test"][0]
    if point["part"] == "limit":
        x = jax.ShapeDtypeStruct((n_all, 2), jnp.float64)
        ref = models.from_config(cfg, width=cfg.ref_width)
        params = ref.param_shapes(x)
        return [costs.analyse("analytic kernels", lambda u: models.from_config(cfg).analytic(u), x),
                costs.analyse(f"n={cfg.ref_width} kernels", lambda q, u: (mlp_nngp(ref.module, q, u),
                                                                           ref.empirical_ntk(q, u)), params, x)]
    spec, dt = models.from_config(cfg, width=point["width"]), precision.train_dtype(cfg)
    name = f"n={point['width']} init={point['init']}"
    return costs.training(name, _trainer(spec, float(cfg.lr)), spec, shapes["x_train"], shapes["y_train"],
                          int(cfg.steps), dtype=dt, record_points=1)


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


def std_ratio(metrics, width) -> float:
    f = C.select(metrics, "f", width=width).pivot(index="gamma", columns="init", values="value")
    return float(f.to_numpy().std(axis=1, ddof=1).mean() / gp_band(metrics, "analytic")["std"].mean())


def _widths(metrics) -> list[int]:
    return sorted(int(w) for w in metrics[metrics.quantity == "f"].width.unique())


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol, widths = cfg.claims, _widths(metrics)
    ana, emp = gp_band(metrics, "analytic"), gp_band(metrics, "empirical")
    band_gap = max(np.abs(emp[f"P{p}"] - ana[f"P{p}"]).max() for p in PERCENTILES) / ana["std"].max()
    out = [C.below(f"The limiting band from one width-{int(cfg.ref_width)} network's kernels (as in the "
                   "paper) matches the analytic Theta_inf, Sigma band",
                   "max_gamma,p |P_p(empirical kernels) - P_p(analytic)| / max_gamma std(analytic)",
                   float(band_gap), tol.ref_band_max, kind="check"),
           C.below(f"The networks are near convergence after {int(cfg.steps)} steps",
                   "largest final cost 1/2 mean (f - f*)^2 over all networks",
                   float(C.select(metrics, "train_loss_final").value.max()), tol.final_loss_max, kind="check")]
    dist = {w: distance_to_band(metrics, w) for w in widths}
    out += [C.in_range(f"The variance of the trained ensemble (n={w}) is close to that of the limiting "
                       "distribution", "mean_gamma std over inits of f / mean_gamma std of the analytic limit",
                       std_ratio(metrics, w), *tol.std_ratio, cite=CITE) for w in widths]
    out += [C.below(f"The trained ensemble (n={w}) falls near the limiting t->inf band: mean and variance "
                    "close to the limiting distribution's",
                    "mean |P_p(ensemble) - P_p(analytic limit)| / mean std, p in {10, 50, 90}",
                    dist[w], tol.distance_max, cite=CITE) for w in widths]
    if len(widths) > 1:
        size = int(C.select(metrics, "f").init.nunique())
        claim = C.below(f"The wider ensemble (n={widths[-1]}) is closer to the band than n={widths[0]}",
                        f"distance(n wide) / distance(n narrow), {size} inits per width",
                        dist[widths[-1]] / dist[widths[0]], tol.closer_ratio_max,
                        cite="Jacot et al. 2018, Sec. 5 and Thm. 2 (the n -> inf limit); Sec. 6.2 says only "
                             "'very similar for both widths'")
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
