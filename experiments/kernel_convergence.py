"""Lee et al. 2019, Appendix I (Figures S9 and S10): Monte Carlo kernels converge to the analytic ones.

For each depth and width n, M networks are drawn at initialisation; the mean of their empirical NNGP
(readout-feature Gram, App. D) and NTK (J J^T, Eq. 4) over the first M draws is compared with the
analytic kernels (Eqs. S26-S29) by relative Frobenius distance ||K_hat - K||_F / ||K||_F.
The paper: both distances are O(1/sqrt(n)) (a CLT, Daniely et al.) and fall as M grows.
The NTK is computed layer by layer (`ntkrepro.empirical.mlp_ntk`), never forming a Jacobian.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import data, kernels, plotting
from ntkrepro.empirical import mlp_nngp, mlp_ntk
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params, make_mlp

KERNELS = ("nngp", "ntk")


def _draw(model, x, key):
    params = init_params(model, key, x)
    return mlp_nngp(model, params, x), mlp_ntk(model, params, x)


def _rel_frob(a, b) -> float:
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def _inputs(cfg):
    """N(0, 1) inputs of dimension n0 (App. I), or flattened, per-image standardised real images."""
    source = cfg.get("inputs", "gaussian")
    if source == "gaussian":
        x = data.gaussian_inputs(cfg.n_inputs, cfg.n0, seed=cfg.seed)
        record_data("inputs", f"synthetic N(0,1), n={cfg.n_inputs}, n0={cfg.n0}, seed={cfg.seed}", [x])
        return x
    ds = data.prepare(source, split="train", n=cfg.n_inputs, flatten=True, standardize="image",
                      targets="label", source=cfg.data.source, root=cfg.data.root, seed=cfg.seed)
    record_data(source, ds.info["source"], [ds.x], n=len(ds.x))
    return ds.x


def run(cfg) -> pd.DataFrame:
    x = _inputs(cfg)
    x = jnp.asarray(x, dtype=jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    counts = sorted(set(int(m) for m in cfg.mc_samples))
    n_show = min(int(cfg.get("n_show", 12)), len(x))
    rows = []
    key = jax.random.PRNGKey(cfg.seed)
    jobs = [(d, n) for d in cfg.depths for n in cfg.widths]
    for depth, width in tqdm(jobs, desc=cfg.id, disable=None):
        ref = kernels.fc(x, depth=depth, activation=cfg.activation, w_var=cfg.w_var, b_var=cfg.b_var,
                         parameterization=cfg.parameterization, width=width)
        ref = {"nngp": ref.nngp, "ntk": ref.ntk}
        model = make_mlp(width=width, depth=depth, activation=cfg.activation, w_var=cfg.w_var,
                         b_var=cfg.b_var, parameterization=cfg.parameterization)
        draw = jax.jit(partial(_draw, model, x))
        scale = float(width) if cfg.parameterization == "standard" else 1.0  # Eq. S42: (1/n) J J^T
        for trial in range(cfg.trials):
            total = {k: 0.0 for k in KERNELS}
            for m in range(1, counts[-1] + 1):
                key, sub = jax.random.split(key)
                nngp, ntk = draw(sub)
                total["nngp"] = total["nngp"] + nngp
                total["ntk"] = total["ntk"] + ntk / scale
                if m not in counts:
                    continue
                for k in KERNELS:
                    mean = total[k] / m
                    common = dict(depth=depth, width=width, mc_samples=m, trial=trial, kernel=k)
                    rows.append(dict(quantity="rel_frob_error", value=_rel_frob(mean, ref[k]), **common))
                    if trial == 0 and m in (counts[0], counts[-1]):
                        emp, ana = np.asarray(mean), np.asarray(ref[k])
                        for i in range(n_show):
                            for j in range(i, n_show):
                                rows.append(dict(quantity="entry", value=emp[i, j], analytic=ana[i, j],
                                                 i=i, j=j, **common))
    return pd.DataFrame(rows)


def errors(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean relative Frobenius error over trials, by depth, kernel, width and M."""
    m = metrics[metrics.quantity == "rel_frob_error"]
    return m.groupby(["depth", "kernel", "width", "mc_samples"], as_index=False)["value"].mean()


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    err = errors(metrics)
    lo, hi = cfg.claims.width_slope
    slo, shi = cfg.claims.samples_slope
    out = []
    for (depth, kern), g in err.groupby(["depth", "kernel"]):
        name = f"{kern.upper()}, {depth} hidden layer{'s' if depth > 1 else ''}"
        if g.width.nunique() > 1:
            top = g[g.mc_samples == g.mc_samples.max()]
            out.append(C.in_range(f"{name}: ||K_hat - K||_F / ||K||_F = O(1/sqrt(n))",
                                  f"log-log slope over width at M={int(top.mc_samples.iloc[0])}",
                                  C.loglog_slope(top.width, top.value), lo, hi))
        wide = g[g.width == g.width.max()]
        out.append(C.in_range(f"{name}: distance falls as the number of samples M grows",
                              f"log-log slope over M at n={int(wide.width.iloc[0])}",
                              C.loglog_slope(wide.mc_samples, wide.value), slo, shi))
    return out


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    err = errors(metrics)
    depths = sorted(err.depth.unique())
    if cfg.view == "width":
        _plot_over_width(err, depths, out_dir, cfg)
    else:
        _plot_over_samples(metrics, err, out_dir, cfg)


def _plot_over_width(err, depths, out_dir, cfg):
    fig, axes = plotting.subplots(len(depths), 2)
    counts = sorted(err.mc_samples.unique())
    for r, depth in enumerate(depths):
        for c, kern in enumerate(KERNELS):
            ax = axes[r][c]
            for color, m in zip(plotting.colors(len(counts)), counts):
                g = err[(err.depth == depth) & (err.kernel == kern) & (err.mc_samples == m)]
                ax.plot(g.width, g.value, "o-", color=color, ms=3, label=f"M = {m}")
            g = err[(err.depth == depth) & (err.kernel == kern) & (err.mc_samples == counts[-1])]
            if len(g):
                w = np.asarray(g.width, float)
                ax.plot(w, g.value.iloc[0] * np.sqrt(w[0] / w), "k--", lw=1, label=r"$\propto n^{-1/2}$")
            ax.set(xscale="log", yscale="log", xlabel="width n",
                   ylabel=r"$\|\hat K - K\|_F / \|K\|_F$",
                   title=f"{kern.upper()}, {depth} hidden layer{'s' if depth > 1 else ''}")
            ax.set_xscale("log", base=2)
            ax.legend()
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")


def _plot_over_samples(metrics, err, out_dir, cfg):
    fig, axes = plotting.subplots(2, 2)
    widths = sorted(err.width.unique())
    for c, kern in enumerate(KERNELS):
        ax = axes[0][c]
        for color, w in zip(plotting.colors(len(widths)), widths):
            g = err[(err.kernel == kern) & (err.width == w)]
            ax.plot(g.mc_samples, g.value, "o-", color=color, ms=3, label=f"n = {w}")
        g = err[(err.kernel == kern) & (err.width == widths[-1])]
        m = np.asarray(g.mc_samples, float)
        ax.plot(m, g.value.iloc[0] * np.sqrt(m[0] / m), "k--", lw=1, label=r"$\propto M^{-1/2}$")
        ax.set(xscale="log", yscale="log", xlabel="Monte Carlo samples M",
               ylabel=r"$\|\hat K - K\|_F / \|K\|_F$", title=f"{kern.upper()}: distance to analytic")
        ax.legend()
        ax = axes[1][c]
        ent = metrics[(metrics.quantity == "entry") & (metrics.kernel == kern)]
        picks = [(widths[0], ent.mc_samples.min()), (widths[-1], ent.mc_samples.max())]
        for color, (w, m) in zip(("tab:orange", "tab:blue"), picks):
            g = ent[(ent.width == w) & (ent.mc_samples == m)]
            ax.plot(g.analytic, g.value, ".", color=color, ms=4, label=f"n = {w}, M = {int(m)}")
        lim = [ent.analytic.min(), ent.analytic.max()]
        ax.plot(lim, lim, "k-", lw=0.8, label="analytic")
        ax.set(xlabel="analytic kernel entry", ylabel="Monte Carlo estimate",
               title=f"{kern.upper()} entries, {int(ent.depth.iloc[0])} hidden layer")
        ax.legend()
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
