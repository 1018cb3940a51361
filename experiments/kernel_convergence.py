"""Lee et al. 2019, Appendix I (Figures S9 and S10): Monte Carlo kernels converge to the analytic ones.

For each depth and width n, M networks are drawn at initialisation; the mean of their empirical NNGP
(readout-feature Gram, App. D) and NTK (J J^T, Eq. 4) over the first M draws is compared with the
analytic kernels (Eqs. S26-S29) by relative Frobenius distance ||K_hat - K||_F / ||K||_F.
The paper: both distances are O(1/sqrt(n)) (a CLT, Daniely et al.) and fall as M grows.
The NTK is computed layer by layer (`ModelSpec.empirical_ntk`), never forming a Jacobian.  Inputs: the
figure's task (gaussian: `n_train` inputs of dimension `dim` = n0; `task@figure.paper.task=mnist`).

Mutation (tests/test_mutations.py only): `MUTATIONS`.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, split, tasks
from ntkrepro.empirical import mlp_nngp
from ntkrepro.kernels.fc import fc_layers, input_kernel

KERNELS = ("nngp", "ntk")
CITE = {"lee-s9": "Lee et al. 2019, App. I and Fig. S9 caption",
        "lee-s10": "Lee et al. 2019, App. I and Fig. S10 caption"}
MUTATIONS = {"ntk_readout_without_w_var": "the analytic NTK's readout layer drops the sigma_w^2 factor of its "
                                          "recursion (Theta^{L+1} = K^{L+1} + Theta^L instead of "
                                          "K^{L+1} + sigma_w^2 Theta^L, Eq. S29)"}


def _draw(spec: models.ModelSpec, x, key):
    """(K-hat, Theta-hat) of one network drawn at initialisation (standard parameterization: the
    NTK of Eq. S42, (1/n) J J^T)."""
    params = spec.init(key, x)
    scale = float(spec.width) if spec.parameterization == "standard" else 1.0
    return mlp_nngp(spec.module, params, x), spec.empirical_ntk(params, x) / scale


def analytic(spec: models.ModelSpec, x, mutation=None) -> dict:
    """The analytic kernels {"nngp": K, "ntk": Theta} (Eqs. S26-S29); with the mutation the readout
    layer's NTK lacks its sigma_w^2 factor: Theta^{L+1} - (sigma_w^2 - 1) Tdot(K^L) Theta^L."""
    ana = spec.analytic(x)
    ref = {"nngp": ana.nngp, "ntk": ana.ntk}
    if mutation == "ntk_readout_without_w_var":
        k = input_kernel(x, dtype=ana.ntk.dtype)
        width = float(spec.width) if spec.parameterization == "standard" else math.inf
        for layer in fc_layers(depth=int(spec.depth), activation=spec.activation, w_var=spec.w_var,
                               b_var=spec.b_var, parameterization=spec.parameterization, width=width,
                               n0=math.prod(x.shape[1:]))[:-1]:   # up to the readout's input
            k = layer(k)
        ref["ntk"] = ana.ntk - (spec.w_var - 1.0) * k.ntk
    return ref


def measure(spec: models.ModelSpec, x, key, counts, trials: int, n_show: int, mutation=None) -> list[dict]:
    """Monte Carlo means of the first M draws against the analytic kernels."""
    ref = analytic(spec, x, mutation)
    draw = jax.jit(partial(_draw, spec, x))
    rows = []
    for trial in range(trials):
        total = {k: 0.0 for k in KERNELS}
        for m in range(1, counts[-1] + 1):
            key, sub = jax.random.split(key)
            total = {k: total[k] + kernel for k, kernel in zip(KERNELS, draw(sub))}
            if m not in counts:
                continue
            for k in KERNELS:
                mean = total[k] / m
                common = dict(mc_samples=m, trial=trial, kernel=k)
                value = float(jnp.linalg.norm(mean - ref[k]) / jnp.linalg.norm(ref[k]))
                rows.append(dict(quantity="rel_frob_error", value=value, **common))
                if trial == 0 and m in (counts[0], counts[-1]):  # the upper triangle, scatter panels
                    emp, a = np.asarray(mean), np.asarray(ref[k])
                    rows += [dict(quantity="entry", value=emp[i, j], analytic=a[i, j], i=i, j=j, **common)
                             for i in range(n_show) for j in range(i, n_show)]
    return rows


def points(cfg) -> list[dict]:
    """One sweep point per (depth, width): the unit a split run distributes over jobs."""
    return [{"depth": int(d), "width": int(n)} for d in cfg.depths for n in cfg.widths]


def point_key(seed: int, point: dict):
    """The random key of a point: from the seed and the point only (not from the other points)."""
    return split.point_key(seed, point["depth"], point["width"])


def run(cfg, subset=None) -> pd.DataFrame:
    task = tasks.load(cfg.task, cfg.data, seed=cfg.seed, name="inputs")
    x = jnp.asarray(task.x_train, precision.kernel_dtype())
    counts = sorted(set(int(m) for m in cfg.mc_samples))
    n_show = min(int(cfg.get("n_show", 12)), len(x))
    rows = []
    for p in tqdm(points(cfg) if subset is None else subset, desc=cfg.id, disable=None):
        spec = models.from_config(cfg, width=p["width"], depth=p["depth"])  # activation, w_var, ...
        found = measure(spec, x, point_key(int(cfg.seed), p), counts, int(cfg.trials), n_show,
                        cfg.get("mutation"))
        rows += [dict(r, depth=p["depth"], width=p["width"]) for r in found]
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """One point: trials x M draws (init, NNGP and NTK of a network) and the analytic kernels."""
    x = jax.ShapeDtypeStruct(tasks.shapes(cfg.task)["x_train"], precision.kernel_dtype())
    spec = models.from_config(cfg, width=point["width"], depth=point["depth"])
    draws = int(cfg.trials) * max(int(m) for m in cfg.mc_samples)
    return [costs.analyse(f"draw n={point['width']}", partial(_draw, spec), x, jax.random.PRNGKey(0),
                          calls=draws),
            costs.analyse("analytic kernels", lambda u: spec.analytic(u), x)]


def errors(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean relative Frobenius error over trials, by depth, kernel, width and M."""
    m = metrics[metrics.quantity == "rel_frob_error"]
    return m.groupby(["depth", "kernel", "width", "mc_samples"], as_index=False)["value"].mean()


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    """Paper claims (App. I, captions of Figs. S9 / S10): the distance to the analytic kernel falls like
    n^-1/2 in width and (a mean of M independent draws: the CLT) like M^-1/2 at the widest width."""
    err, tol, out = errors(metrics), cfg.claims, []
    cite = CITE.get(str(cfg.id), "Lee et al. 2019, App. I")
    for (depth, kern), g in err.groupby(["depth", "kernel"]):
        name = f"{kern.upper()}, {_layers(depth)}"
        if g.width.nunique() > 1:
            top = g[g.mc_samples == g.mc_samples.max()]
            out.append(C.in_range(f"{name}: ||K_hat - K||_F / ||K||_F = O(1/sqrt(n))",
                                  f"log-log slope over width at M={int(top.mc_samples.iloc[0])}",
                                  C.loglog_slope(top.width, top.value), *tol.width_slope, cite=cite))
        wide = g[g.width == g.width.max()]
        out.append(C.in_range(f"{name}: distance falls as the number of samples M grows",
                              f"log-log slope over M at n={int(wide.width.iloc[0])}",
                              C.loglog_slope(wide.mc_samples, wide.value), *tol.samples_slope, cite=cite))
    return out


def _layers(depth) -> str:
    return f"{depth} hidden layer{'s' if depth > 1 else ''}"


AXES = {"width": ("n", "width n"), "mc_samples": ("M", "Monte Carlo samples M")}   # symbol, axis label


def _distance(ax, err, x: str, curves: str, title: str) -> None:
    """Distance to the analytic kernel against column x ("width" or "mc_samples"), one curve per
    value of the other, and the CLT rate x^-1/2 through the first point of the last curve."""
    plotting.curves(ax, err, curves, x=x, label=AXES[curves][0] + " = {}", marker="o", ms=3)
    g = err[err[curves] == err[curves].max()]
    t = np.asarray(g[x], float)
    ax.plot(t, g.value.iloc[0] * np.sqrt(t[0] / t), "k--", lw=1, label=rf"$\propto {AXES[x][0]}^{{-1/2}}$")
    ax.set(xscale="log", yscale="log", xlabel=AXES[x][1], ylabel=r"$\|\hat K - K\|_F / \|K\|_F$", title=title)
    ax.set_xscale("log", base=2 if x == "width" else 10)
    ax.legend()


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    """view=width (S9): distance against n per depth and kernel; view=samples (S10): distance
    against M per kernel, and below it the entries at the smallest and the largest (n, M)."""
    err = errors(metrics)
    if cfg.view == "width":
        depths = sorted(err.depth.unique())
        fig, axes = plotting.subplots(len(depths), 2)
        for r, depth in enumerate(depths):
            for c, kern in enumerate(KERNELS):
                _distance(axes[r][c], err[(err.depth == depth) & (err.kernel == kern)], "width",
                          "mc_samples", f"{kern.upper()}, {_layers(depth)}")
    else:
        fig, axes = plotting.subplots(2, 2)
        widths = sorted(err.width.unique())
        for c, kern in enumerate(KERNELS):
            _distance(axes[0][c], err[err.kernel == kern], "mc_samples", "width",
                      f"{kern.upper()}: distance to analytic")
            ax, ent = axes[1][c], metrics[(metrics.quantity == "entry") & (metrics.kernel == kern)]
            picks = [(widths[0], ent.mc_samples.min()), (widths[-1], ent.mc_samples.max())]
            for color, (w, m) in zip(("tab:orange", "tab:blue"), picks):
                g = ent[(ent.width == w) & (ent.mc_samples == m)]
                ax.plot(g.analytic, g.value, ".", color=color, ms=4, label=f"n = {w}, M = {int(m)}")
            lim = [ent.analytic.min(), ent.analytic.max()]
            ax.plot(lim, lim, "k-", lw=0.8, label="analytic")
            ax.set(xlabel="analytic kernel entry", ylabel="Monte Carlo estimate",
                   title=f"{kern.upper()} entries, {_layers(int(ent.depth.iloc[0]))}")
            ax.legend()
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
