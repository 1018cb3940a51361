"""Lee et al. 2019, Figure 1 and Figure S6: how far weights and kernels move during training.

For each panel (architecture + data set) and width n, one network (NTK parameterization, Eq. 1) is
trained by full-batch gradient descent for T steps on the MSE loss, and we measure the relative
Frobenius change

    ||W_T - W_0||_F / ||W_0||_F

of every weight matrix (input W^1, intermediate W^2..W^L, readout W^{L+1}), and the same quantity
for the empirical NTK Theta-hat (Eq. 4) and the empirical NNGP K-hat (readout-feature Gram, App. D)
on the training set.  The caption's claims: the input and readout weights move like 1/sqrt(n)
(their fan-in or fan-out does not grow with n), the intermediate ones like 1/n; the kernels move by
O(1/sqrt(n)) at most, closer to O(1/n).

Training: the loss is 1/2 the mean over examples *and* output units of (f - y)^2 (the paper plots
the average loss, footnote 6; with the mean over the k = 10 MNIST outputs too, eta = 1 is stable:
eta lambda_max(Theta) / (|D| k) = 0.37 for the analytic NTK of Fig. 1), learning rate eta = `lr`.  Parameters are stored as theta_0 + delta with delta accumulated in float32 from 0,
so that ||W_T - W_0|| is exactly ||delta|| even when a step changes a weight by less than its float32
ulp (intermediate weights move by O(1/n) in total).  The whole run is one jitted `jax.lax.scan`.
Kernels at theta_0 and theta_T are computed in float64 with `ntkrepro.empirical.mlp_ntk` (layer by
layer, no Jacobian; Theta-hat summed over the output units) and `mlp_nngp`.  A run whose loss turns
non-finite is recorded with `diverged = 1` and NaN changes, never raised.

Settings: the top level holds the defaults shared by all panels (widths, trials, fit_points, lr,
steps, w_var, b_var, ...); `panels` maps a panel name to the keys it overrides (depth, activation,
dataset, classes, targets, steps, widths, ...; see `PANEL_KEYS`).  One row of the figure per panel.
Slopes are fitted over the `fit_points` widest widths of each panel.
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import data, plotting
from ntkrepro.empirical import mlp_nngp, mlp_ntk
from ntkrepro.errors import ConfigError
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params, make_mlp
from ntkrepro.validate import validate_settings

PANEL_KEYS = ("label", "depth", "activation", "dataset", "classes", "targets", "standardize",
              "selection", "n_train", "steps", "lr", "w_var", "b_var", "parameterization", "widths",
              "trials", "fit_points")
REQUIRED = ("depth", "activation", "dataset", "targets", "n_train", "steps", "lr", "w_var", "b_var",
            "widths", "trials", "fit_points")
KERNELS = ("ntk", "nngp")
KERNEL_LABELS = {"ntk": r"$\hat\Theta$ (NTK)", "nngp": r"$\hat K$ (NNGP)"}


# ------------------------------------------------------------------------------------ settings
def panels(cfg) -> list[tuple[str, dict]]:
    """[(name, settings)] with each panel's overrides applied over the top-level defaults."""
    base = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in PANEL_KEYS if k in cfg}
    out = []
    for name, over in OmegaConf.to_container(cfg.panels, resolve=True).items():
        merged = {**base, **(over or {})}
        merged.setdefault("label", name)
        missing = [k for k in REQUIRED if k not in merged]
        if missing:
            raise ConfigError(f"panel '{name}' of {cfg.id} lacks {', '.join(missing)}; set them under "
                              f"figure.paper (all panels) or figure.paper.panels.{name}")
        validate_settings(merged, cfg.id)
        out.append((str(name), merged))
    return out


def role(layer: int, depth: int) -> str:
    if layer == 0:
        return "input"
    return "output" if layer == depth else "intermediate"


# ------------------------------------------------------------------------------------ training
def mse(f, y):
    """1/2 mean over examples and output units of (f - y)^2."""
    return 0.5 * jnp.mean((f - y) ** 2)


@partial(jax.jit, static_argnames=("model", "steps"))
def train(model, params0, delta0, x, y, lr, steps: int):
    """`steps` full-batch GD steps from theta_0 + delta0 -> (delta, losses, final loss).

    Parameters are theta_0 + delta with theta_0 fixed and only delta updated, so delta = theta_t -
    theta_0 keeps its full float32 precision however small it is.  losses[t] is the loss before
    step t + 1 of this call; the final loss is the loss at the returned delta.
    """
    def loss_fn(delta):
        params = jax.tree_util.tree_map(jnp.add, params0, delta)
        return mse(model.apply({"params": params}, x), y)

    grad_fn = jax.value_and_grad(loss_fn)

    def body(delta, _):
        value, g = grad_fn(delta)
        delta = jax.tree_util.tree_map(lambda d, gi: d - lr * gi, delta, g)
        return delta, value

    delta, losses = jax.lax.scan(body, delta0, None, length=steps)
    return delta, losses, loss_fn(delta)


def _rel(a, b) -> float:
    """||a - b||_F / ||b||_F in float64 (NaN when a is not finite)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if not np.all(np.isfinite(a)):
        return math.nan
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def log_grid(steps: int, points: int) -> np.ndarray:
    """About `points` step indices 0..steps, geometrically spaced (0 and `steps` included)."""
    grid = np.unique(np.round(np.geomspace(1, steps, max(2, points))).astype(int))
    return np.concatenate([[0], grid])


def _dataset(p: dict, cfg):
    ds = data.prepare(p["dataset"], split="train", n=int(p["n_train"]), classes=p.get("classes"),
                      selection=p.get("selection", "stratified"), flatten=True,
                      standardize=p.get("standardize", "image"), targets=p["targets"],
                      source=cfg.data.source, root=cfg.data.root, seed=int(cfg.seed))
    record_data(p["dataset"], ds.info["source"], [ds.x, ds.y], n=len(ds.x), classes=ds.info["classes"],
                selection=ds.info["selection"], standardize=ds.info["standardize"],
                targets=ds.info["targets"])
    return ds


def _finite(tree) -> bool:
    return all(bool(np.all(np.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


def _f64(tree):
    """A pytree of arrays as float64 numpy arrays (host-side: no per-shape compilation)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


@partial(jax.jit, static_argnames=("model",))
def kernels_at(model, params, x):
    """{"ntk": Theta-hat (summed over output units), "nngp": K-hat} on x, one compilation for both."""
    return {"ntk": mlp_ntk(model, params, x), "nngp": mlp_nngp(model, params, x)}


def _changes(model, depth, params0, delta, x64, k0, diverged) -> list[dict]:
    """Relative Frobenius change of every weight matrix and of both kernels at theta_0 + delta."""
    rows = []
    for layer in range(depth + 1):
        w0 = np.asarray(params0[f"dense_{layer}"]["kernel"], np.float64)
        dw = np.asarray(delta[f"dense_{layer}"]["kernel"], np.float64)
        value = math.nan if diverged else float(np.linalg.norm(dw) / np.linalg.norm(w0))
        rows.append(dict(quantity="weight", layer=layer + 1, role=role(layer, depth), value=value))
    pt = jax.tree_util.tree_map(np.add, _f64(params0), _f64(delta))
    kt = None if diverged else kernels_at(model, pt, x64)
    for kern in KERNELS:
        value = math.nan if diverged else _rel(kt[kern], k0[kern])
        rows.append(dict(quantity=kern, layer=0, role="kernel", value=value))
    return rows


def measure(p: dict, x, y, width: int, key, loss_points: int) -> list[dict]:
    """Train one width-n network of panel p for T steps; rows of relative changes at T/2 and T
    (column `step`), the initial and final loss, a divergence flag and the loss curve."""
    depth = int(p["depth"])
    model = make_mlp(width=int(width), depth=depth, out_dim=y.shape[1], activation=p["activation"],
                     w_var=float(p["w_var"]), b_var=float(p["b_var"]),
                     parameterization=p.get("parameterization", "ntk"))
    x32, y32 = np.asarray(x, np.float32), np.asarray(y, np.float32)
    x64 = np.asarray(x, np.float64)
    params0 = jax.device_get(jax.jit(partial(init_params, model))(key, x32))
    p0 = _f64(params0)
    k0 = kernels_at(model, p0, x64)
    steps = int(p["steps"])
    half = steps // 2
    lr = np.float32(p["lr"])
    delta = jax.tree_util.tree_map(np.zeros_like, params0)
    rows, curve, diverged = [], [], False
    for start, stop in ((0, half), (half, steps)):
        if stop > start:
            delta, losses, final = jax.device_get(train(model, params0, delta, x32, y32, lr, stop - start))
            curve.append(np.asarray(losses, np.float64))
        else:
            final = float(jax.jit(lambda p: mse(model.apply({"params": p}, x32), y32))(params0))
        diverged = diverged or not (np.all(np.isfinite(curve[-1] if curve else [])) and _finite(delta))
        for r in _changes(model, depth, params0, delta, x64, k0, diverged):
            rows.append({**r, "step": stop})
    losses = np.append(np.concatenate(curve) if curve else np.zeros(0), float(final))  # L(theta_t), t = 0..T
    diverged = diverged or not np.all(np.isfinite(losses))
    rows.append(dict(quantity="loss_initial", layer=0, role="loss", step=0, value=float(losses[0])))
    rows.append(dict(quantity="loss_final", layer=0, role="loss", step=steps, value=float(losses[-1])))
    rows.append(dict(quantity="diverged", layer=0, role="status", step=steps, value=float(diverged)))
    for t in log_grid(steps, loss_points):
        rows.append(dict(quantity="loss", layer=0, role="loss", step=int(t), value=float(losses[t])))
    return rows


def run(cfg) -> pd.DataFrame:
    rows = []
    key = jax.random.PRNGKey(int(cfg.seed))
    loss_points = int(cfg.get("loss_points", 40))
    jobs = []
    for index, (name, p) in enumerate(panels(cfg)):
        ds = _dataset(p, cfg)
        for width in p["widths"]:
            for trial in range(int(p["trials"])):
                jobs.append((index, name, p, ds, int(width), trial))
    for index, name, p, ds, width, trial in tqdm(jobs, desc=cfg.id, disable=None):
        sub = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, index), width), trial)
        common = dict(panel=name, label=p["label"], depth=int(p["depth"]), activation=p["activation"],
                      dataset=p["dataset"], n_train=len(ds.x), steps=int(p["steps"]), width=width,
                      trial=trial)
        for r in measure(p, ds.x, ds.y, width, sub, loss_points):
            rows.append({**common, **r})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ analysis
def changes(metrics: pd.DataFrame, at: str = "end") -> pd.DataFrame:
    """Mean over trials of every relative change after T steps (`at="end"`) or T/2 (`at="half"`):
    panel, series (w1.., ntk, nngp), width -> value (NaN if any trial diverged)."""
    m = metrics[metrics.quantity.isin(("weight",) + KERNELS)].copy()
    target = m.steps if at == "end" else m.steps // 2
    m = m[m.step == target]
    m["series"] = np.where(m.quantity == "weight", "w" + m.layer.astype(int).astype(str), m.quantity)
    return m.groupby(["panel", "label", "series", "quantity", "layer", "role", "width"], as_index=False,
                     sort=False)["value"].agg(lambda v: v.mean() if v.notna().all() else math.nan)


def fit_widths(widths, fit_points: int) -> list:
    """The `fit_points` largest widths: the wide end over which slopes are fitted."""
    return sorted(set(widths))[-int(fit_points):]


def _range_text(widths) -> str:
    return f"n = {int(min(widths))}..{int(max(widths))}"


def _worst(values) -> float:
    """Largest value, NaN if any is not finite (a diverged run fails the claim)."""
    v = np.asarray(values, float)
    return float(v.max()) if len(v) and np.all(np.isfinite(v)) else math.nan


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol = cfg.claims
    end, half = changes(metrics, "end"), changes(metrics, "half")
    out = []
    settings = dict(panels(cfg))
    for panel, pg in end.groupby("panel", sort=False):
        label = pg.label.iloc[0]
        wide = fit_widths(pg.width, settings[panel]["fit_points"])
        where = _range_text(wide)
        slope_measure = f"log-log slope over the {len(wide)} widest widths ({where})"
        for series, g in pg.groupby("series", sort=False):
            g = g[g.width.isin(wide)].sort_values("width")
            slope = C.loglog_slope(g.width, g.value)
            r = g.role.iloc[0]
            if r in ("input", "output"):
                lo, hi = tol.sqrt_slope
                what = "input" if r == "input" else "readout"
                out.append(C.in_range(f"{label}: {what} weights W^{series[1:]} change like 1/sqrt(n)",
                                      slope_measure, slope, lo, hi))
            elif r == "intermediate":
                lo, hi = tol.inverse_slope
                out.append(C.in_range(f"{label}: intermediate weights W^{series[1:]} change like 1/n",
                                      slope_measure, slope, lo, hi))
            else:
                name = "NTK Theta-hat" if series == "ntk" else "NNGP K-hat"
                out.append(C.below(f"{label}: change of {name} is at most O(1/sqrt(n))", slope_measure,
                                   slope, float(tol.kernel_bound_slope)))
                lo, hi = tol.kernel_slope
                out.append(C.in_range(f"{label}: change of {name} is closer to O(1/n) than to O(1/sqrt(n))",
                                      slope_measure, slope, lo, hi))
        for kern in KERNELS:
            e = pg[(pg.series == kern) & pg.width.isin(wide)].set_index("width").value
            h = half[(half.panel == panel) & (half.series == kern)].set_index("width").value
            growth = (e - h.reindex(e.index)) / e
            name = "NTK" if kern == "ntk" else "NNGP"
            out.append(C.below(f"{label}: the {name} change has saturated by step T",
                               f"max over {where} of (change at T - change at T/2) / change at T",
                               _worst(growth), float(tol.kernel_growth)))
        sel = metrics[metrics.panel == panel]
        diverged = float(sel[sel.quantity == "diverged"].value.max())
        fin = sel[(sel.quantity == "loss_final") & sel.width.isin(wide)].set_index(["width", "trial"]).value
        ini = sel[(sel.quantity == "loss_initial") & sel.width.isin(wide)].set_index(["width", "trial"]).value
        ratio = _worst(fin / ini) if diverged == 0 else math.nan
        out.append(C.below(f"{label}: training is near convergence after T steps, no run diverged",
                           f"max over {where} and trials of L(theta_T) / L(theta_0) (NaN if any width diverged)",
                           ratio, float(tol.loss_ratio)))
    return out


# ------------------------------------------------------------------------------------ figure
ROLE_STYLE = {"input": ("tab:blue", "o"), "intermediate": ("tab:green", "s"), "output": ("tab:red", "^"),
              "ntk": ("k", "D"), "nngp": ("tab:purple", "v")}


def _series_label(series: str, r: str) -> str:
    if series in KERNEL_LABELS:
        return KERNEL_LABELS[series]
    layer = series[1:]
    what = {"input": "input", "output": "readout", "intermediate": "intermediate"}[r]
    return rf"$W^{{{layer}}}$ ({what})"


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    ch = changes(metrics)
    settings = dict(panels(cfg))
    names = list(dict.fromkeys(ch.panel))
    fig, axes = plotting.subplots(len(names), 2, width=4.4, height=4.3)
    for row, panel in enumerate(names):
        pg = ch[ch.panel == panel]
        wide = fit_widths(pg.width, settings[panel]["fit_points"])
        ax = axes[row][0]
        inter = 0
        for series, g in pg.groupby("series", sort=False):
            g = g.sort_values("width")
            r = g.role.iloc[0]
            color, marker = ROLE_STYLE[series if r == "kernel" else r]
            ls = "-"
            if r == "intermediate":
                ls = ["-", "--", ":", "-."][inter % 4]
                inter += 1
            fit = g[g.width.isin(wide)]
            slope = C.loglog_slope(fit.width, fit.value)
            ax.plot(g.width, g.value, marker=marker, ls=ls, color=color, ms=4,
                    label=f"{_series_label(series, r)}: slope {slope:.2f}")
        finite = pg[np.isfinite(pg.value) & (pg.value > 0)]
        if len(wide) > 1 and len(finite):
            # reference rates over the fitted widths, above the largest and below the smallest change
            n = np.asarray(wide, float)
            last = finite[finite.width == n[-1]]
            hi, lo = float(last.value.max()), float(last.value.min())
            ax.plot(n, 2.5 * hi * np.sqrt(n[-1] / n), color="0.45", ls="--", lw=1,
                    label=r"$\propto n^{-1/2}$")
            ax.plot(n, 0.4 * lo * (n[-1] / n), color="0.45", ls=":", lw=1, label=r"$\propto n^{-1}$")
            ax.axvspan(n[0] / 1.15, n[-1] * 1.15, color="0.9", zorder=0, lw=0)
        label = pg.label.iloc[0]
        steps = int(metrics[metrics.panel == panel].steps.max())
        ax.set(xscale="log", yscale="log", xlabel="width n (shaded: widths of the fitted slopes)",
               ylabel=r"$\|X_T - X_0\|_F \,/\, \|X_0\|_F$",
               title=f"{label}\nrelative change after T = {steps} GD steps")
        ax.set_xscale("log", base=2)
        ax.legend(ncol=2, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        # convergence check (ours): training loss against step for every width
        ax = axes[row][1]
        lg = metrics[(metrics.panel == panel) & (metrics.quantity == "loss") & (metrics.trial == 0)]
        widths = sorted(lg.width.unique())
        for color, w in zip(plotting.colors(len(widths)), widths):
            g = lg[lg.width == w].sort_values("step")
            ax.plot(np.maximum(g.step, 0.5), g.value, "-", color=color, lw=1.2, label=f"n = {int(w)}")
        ax.set(xscale="log", yscale="log", xlabel="gradient descent step t (t = 0 drawn at 1/2)",
               ylabel=r"training loss $\frac{1}{2}\,\mathrm{mean}\,(f - y)^2$",
               title=f"{label}\ntraining loss (ours: convergence check)")
        ax.legend(ncol=2)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
