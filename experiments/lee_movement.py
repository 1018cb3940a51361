"""Lee et al. 2019, Figure 1 and Figure S6: how far weights and kernels move during training.

For each panel (architecture + task) and width n, networks (NTK parameterization, Eq. 1) are trained by
full-batch gradient descent for T steps on the MSE loss, and we measure the relative Frobenius change
||W_T - W_0||_F / ||W_0||_F of every weight matrix (input W^1, intermediate W^2..W^L, readout
W^{L+1}), and the same quantity for the empirical NTK Theta-hat and the empirical NNGP K-hat
(readout-feature Gram, App. D) on the training set.  Theta-hat is Eq. 4's k|D| x k|D| matrix (every
pair of examples and of output units; `ModelSpec.empirical_ntk(..., trace=False)`), not its sum over
the outputs.  The caption's claims (paper claims): the input and readout weights move like 1/sqrt(n)
(their fan-in or fan-out does not grow with n), the intermediate ones like 1/n; the kernels by
"at most O(1/sqrt(n)), closer to O(1/n)" (the second implies the first: one claim).  Ours (checks):
the runs have converged and the kernel change has saturated by step T.

Sweep points: (panel, width, trial), the costliest first; each point's network is drawn from a key
folded from (seed, panel index, width, trial), so a split run's parts are the unsplit run's rows.

Training (`train.fit`): loss 1/2 the mean over examples *and* output units of (f - y)^2 (the average
the paper plots, footnote 6; eta = 1 is then stable: eta lambda_max(Theta) / (|D| k) = 0.37 for the
analytic NTK of Fig. 1).  Weights are stored as theta_0 + delta, so ||W_T - W_0|| = ||delta|| exactly
even where one step moves a weight by less than its float32 ulp (intermediate weights move by O(1/n)).
Kernels at theta_0 and theta_T are float64 (`ModelSpec.empirical_ntk` and `mlp_nngp`).  A run whose
loss turns non-finite is recorded (`diverged = 1`, NaN changes), not raised.  One row of the figure
per panel (`panels`); slopes are fitted over its `fit_points` widest widths.

Mutation (tests/test_mutations.py only): `MUTATIONS`.
"""
from __future__ import annotations

from functools import partial

import jax
import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, split, tasks
from ntkrepro.empirical import mlp_nngp
from ntkrepro.errors import ConfigError
from ntkrepro.train import Trainer, fit, log_steps, tree_finite

REQUIRED = ("task", "depth", "activation", "steps", "lr", "w_var", "b_var", "widths", "trials", "fit_points")
PANEL_KEYS = REQUIRED + ("label", "parameterization", "train_dtype")   # a panel inherits them from the top
KERNELS = ("ntk", "nngp")
ROLES = {"input": "input", "intermediate": "intermediate", "output": "readout"}   # weight roles, as named
CITE = {"lee-1": "Lee et al. 2019, Fig. 1 caption",
        "lee-s6": "Lee et al. 2019, Fig. S6 caption (the rates of Fig. 1's caption)"}
MUTATIONS = {"standard_parameterization": "trains in the standard parameterization (Eq. S36) with the "
                                          "global learning rate eta / n (App. F's eta_std = eta_NTK / n) "
                                          "instead of the NTK parameterization (Eq. 1)"}


def panels(cfg) -> list[tuple[str, dict]]:
    """[(name, settings)]: the top level holds what all panels share (`PANEL_KEYS`: widths, lr, steps,
    ...), each panel what it overrides (its `task`, picked through the figure's defaults, depth, ...).
    The runner has checked every setting where it is written."""
    top = OmegaConf.to_container(cfg, resolve=True)
    base, out = {k: top[k] for k in PANEL_KEYS if k in top}, []
    for name, over in top["panels"].items():
        merged = {"label": name, **base, **(over or {})}
        missing = [k for k in REQUIRED if k not in merged]
        if missing:
            raise ConfigError(f"panel '{name}' of {cfg.id} lacks {', '.join(missing)}; set them under "
                              f"figure.paper (all panels) or figure.paper.panels.{name}")
        out.append((str(name), merged))
    return out


@partial(jax.jit, static_argnames=("spec",))
def kernels_at(spec: models.ModelSpec, params, x):
    """{"ntk": Theta-hat, Eq. 4's k|D| x k|D| matrix as (|D|, |D|, k, k), "nngp": K-hat} on x, one
    compilation for both."""
    return {"ntk": spec.empirical_ntk(params, x, trace=False), "nngp": mlp_nngp(spec.module, params, x)}


def network(p: dict, width: int, out_dim: int, mutation=None):
    """(spec, learning rate) of panel p's width-n network: NTK parameterization with eta; the mutation
    trains the standard parameterization with eta / n."""
    spec = models.from_config(p, width=int(width), out_dim=int(out_dim))   # depth, activation, w_var, ...
    if mutation == "standard_parameterization":
        return spec.replace(parameterization="standard"), float(p["lr"]) / int(width)
    return spec, float(p["lr"])


def trainer_for(spec: models.ModelSpec, lr: float) -> Trainer:
    return Trainer(spec.apply, loss="mse_per_output", lr=lr, delta=True)


def record_steps(steps: int, loss_points: int) -> tuple[tuple[int, int], list[int]]:
    """The steps the changes are measured at (T/2, T) and the log-spaced loss-curve steps."""
    return (steps // 2, steps), [int(t) for t in log_steps(steps, loss_points)]


def _changes(spec: models.ModelSpec, params0, delta, x64, k0, diverged: bool) -> list[dict]:
    """Relative Frobenius change of every weight matrix (||delta W|| / ||W_0||) and of both kernels
    at theta_0 + delta (NaN when diverged)."""
    def rel(change, ref):
        return np.nan if diverged else float(np.linalg.norm(change) / np.linalg.norm(ref))

    depth, rows = int(spec.depth), []
    for layer in range(depth + 1):
        w0, dw = (np.asarray(p[f"dense_{layer}"]["kernel"], np.float64) for p in (params0, delta))
        r = "input" if layer == 0 else "output" if layer == depth else "intermediate"
        rows.append(dict(quantity="weight", layer=layer + 1, role=r, value=rel(dw, w0)))
    theta = jax.tree_util.tree_map(np.add, precision.host64(params0), precision.host64(delta))
    kt = kernels_at(spec, theta, x64)
    return rows + [dict(quantity=k, layer=0, role="kernel", value=rel(kt[k] - k0[k], k0[k])) for k in KERNELS]


def measure(p: dict, x, y, width: int, key, loss_points: int, mutation=None) -> list[dict]:
    """Train one width-n network of panel p for T steps; rows of relative changes at T/2 and T
    (column `step`), the initial and final loss, a divergence flag and the loss curve."""
    spec, lr = network(p, width, y.shape[1], mutation)
    dtype = precision.train_dtype(p)
    xt, yt, x64 = np.asarray(x, dtype), np.asarray(y, dtype), np.asarray(x, np.float64)
    params0 = jax.device_get(spec.init(key, xt))
    k0 = kernels_at(spec, precision.host64(params0), x64)
    steps = int(p["steps"])
    marks, grid = record_steps(steps, loss_points)
    trainer = trainer_for(spec, lr)
    result = fit(trainer, params0, xt, yt, steps=steps, record_at=[*marks, *grid],
                 observe=lambda t, state: jax.device_get(state.variable) if t in marks else None)
    loss = dict(zip(result.steps, result.losses))
    rows = []
    for t, delta in zip(result.steps, result.records):
        if t in marks:   # diverged by step t: a non-finite delta, or loss up to t
            diverged = not (tree_finite(delta) and all(np.isfinite(v) for s, v in loss.items() if s <= t))
            rows += [dict(r, step=t) for r in _changes(spec, params0, delta, x64, k0, diverged)]
    rows += [dict(quantity="loss_initial", layer=0, role="loss", step=0, value=float(loss[0])),
             dict(quantity="loss_final", layer=0, role="loss", step=steps, value=float(loss[steps])),
             dict(quantity="diverged", layer=0, role="status", step=steps, value=float(result.diverged))]
    return rows + [dict(quantity="loss", layer=0, role="loss", step=int(t), value=float(loss[t])) for t in grid]


def points(cfg) -> list[dict]:
    """One sweep point per (panel, width, trial), the costliest first (so round-robin shards get
    similar work): work ~ steps x width x (n0 + k + (depth - 1) width)."""
    out = []
    for name, p in panels(cfg):
        shape = tasks.shapes(p["task"])
        n0, k = int(np.prod(shape["x_train"][1:])), int(shape["y_train"][1])
        for w in p["widths"]:
            work = int(p["steps"]) * int(w) * (n0 + k + (int(p["depth"]) - 1) * int(w))
            out += [(-work, {"panel": name, "width": int(w), "trial": t}) for t in range(int(p["trials"]))]
    return [point for _, point in sorted(out, key=lambda e: e[0])]   # stable: ties keep panel order


def point_key(seed: int, panel_index: int, point: dict):
    """The random key of a point: from the seed and the point only (not from the other points)."""
    return split.point_key(seed, panel_index, point["width"], point["trial"])


def run(cfg, subset=None) -> pd.DataFrame:
    settings = panels(cfg)
    index, settings = {name: i for i, (name, _) in enumerate(settings)}, dict(settings)
    loaded, rows = {}, []
    for point in tqdm(points(cfg) if subset is None else subset, desc=cfg.id, disable=None):
        name, width, trial = point["panel"], int(point["width"]), int(point["trial"])
        p = settings[name]
        if name not in loaded:   # only the panels of this job's points
            loaded[name] = tasks.load(p["task"], cfg.data, seed=int(cfg.seed), name=name)
        task = loaded[name]
        common = dict(panel=name, label=p["label"], depth=int(p["depth"]), activation=p["activation"],
                      dataset=p["task"]["dataset"], n_train=task.n_train, steps=int(p["steps"]),
                      width=width, trial=trial)
        found = measure(p, task.x_train, task.y_train, width, point_key(cfg.seed, index[name], point),
                        int(cfg.get("loss_points", 40)), cfg.get("mutation"))
        rows += [{**common, **r} for r in found]
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """One point: T training steps and the loss at the recording points (`costs.training`), and the
    kernels (Theta-hat per Eq. 4 and K-hat, float64) at theta_0, T/2 and T."""
    p = dict(panels(cfg))[point["panel"]]
    shape = tasks.shapes(p["task"])
    spec, lr = network(p, point["width"], shape["y_train"][1], cfg.get("mutation"))
    steps = int(p["steps"])
    marks, grid = record_steps(steps, int(cfg.get("loss_points", 40)))
    name = f"{point['panel']} n={point['width']}"
    out = costs.training(name, trainer_for(spec, lr), spec, shape["x_train"], shape["y_train"], steps,
                         dtype=precision.train_dtype(p), record_points=len(set(grid) | set(marks)))
    x64 = jax.ShapeDtypeStruct(shape["x_train"], precision.kernel_dtype())
    params = spec.param_shapes(x64)
    return out + [costs.analyse(f"{name}: kernels", lambda q, u: kernels_at(spec, q, u), params, x64,
                                calls=1 + len(marks))]


def changes(metrics: pd.DataFrame, at: str = "end") -> pd.DataFrame:
    """Mean over trials of every relative change after T steps (`at="end"`) or T/2 (`at="half"`):
    panel, series (w1.., ntk, nngp), width -> value (NaN if any trial diverged)."""
    m = metrics[metrics.quantity.isin(("weight",) + KERNELS)].copy()
    m = m[m.step == (m.steps if at == "end" else m.steps // 2)]
    m["series"] = np.where(m.quantity == "weight", "w" + m.layer.astype(int).astype(str), m.quantity)
    return m.groupby(["panel", "label", "series", "quantity", "layer", "role", "width"], as_index=False,
                     sort=False)["value"].agg(lambda v: v.mean() if v.notna().all() else np.nan)


def fit_widths(widths, fit_points: int) -> list:
    """The `fit_points` largest widths: the wide end over which slopes are fitted."""
    return sorted(set(widths))[-int(fit_points):]


def _slope_claims(label: str, pg, wide, tol, cite: str) -> list[C.Claim]:
    """Input / readout weights like n^-1/2, intermediate ones like n^-1, kernels closer to n^-1 than
    to n^-1/2 (the caption's "upper bounded by O(1/sqrt(n))" follows from it: not a claim of its own)."""
    measure = f"log-log slope over the {len(wide)} widest widths (n = {min(wide)}..{max(wide)})"
    out = []
    for series, g in _in_order(pg[pg.width.isin(wide)]):
        slope, r = C.loglog_slope(g.width, g.value), g.role.iloc[0]
        if r != "kernel":
            rate, key = ("1/n", tol.inverse_slope) if r == "intermediate" else ("1/sqrt(n)", tol.sqrt_slope)
            out.append(C.in_range(f"{label}: {ROLES[r]} weights W^{series[1:]} change like {rate}",
                                  measure, slope, *key, cite=cite))
            continue
        name = "NTK Theta-hat (Eq. 4, k|D| x k|D|)" if series == "ntk" else "NNGP K-hat"
        out.append(C.in_range(f"{label}: change of {name} is closer to O(1/n) than to O(1/sqrt(n))",
                              measure, slope, *tol.kernel_slope, cite=cite))
    return out


def _in_order(pg):
    """(series, rows) in the order W^1 .. W^{L+1}, NTK, NNGP, whatever the order of the rows."""
    def rank(series):
        return (1, KERNELS.index(series)) if series in KERNELS else (0, int(series[1:]))
    return [(series, pg[pg.series == series]) for series in sorted(pg.series.unique(), key=rank)]


def _checks(label: str, panel: str, pg, half, metrics, wide, tol) -> list[C.Claim]:
    """Ours: the kernel changes have saturated by step T, and training has converged (no divergence)."""
    where, out = f"n = {min(wide)}..{max(wide)}", []
    for kern in KERNELS:
        e = pg[(pg.series == kern) & pg.width.isin(wide)].set_index("width").value
        h = half[(half.panel == panel) & (half.series == kern)].set_index("width").value
        out.append(C.below(f"{label}: the {kern.upper()} change has saturated by step T",
                           f"max over {where} of (change at T - change at T/2) / change at T",
                           C.strict_max((e - h.reindex(e.index)) / e), float(tol.kernel_growth), kind="check"))
    sel = metrics[(metrics.panel == panel) & metrics.width.isin(wide)].set_index(["width", "trial"])
    ratio = C.strict_max(sel[sel.quantity == "loss_final"].value / sel[sel.quantity == "loss_initial"].value)
    diverged = metrics[(metrics.panel == panel) & (metrics.quantity == "diverged")].value.max()
    out.append(C.below(f"{label}: training is near convergence after T steps, no run diverged",
                       f"max over {where} and trials of L(theta_T) / L(theta_0) (NaN if any width diverged)",
                       ratio if diverged == 0 else np.nan, float(tol.loss_ratio), kind="check"))
    return out


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    """Per panel (in the config's order): the caption's rates (paper), then our checks."""
    tol, cite = cfg.claims, CITE.get(str(cfg.id), "Lee et al. 2019, Fig. 1 caption")
    end, half = changes(metrics, "end"), changes(metrics, "half")
    out = []
    for panel, p in panels(cfg):
        pg = end[end.panel == panel]
        if pg.empty:
            continue
        wide = [int(w) for w in fit_widths(pg.width, p["fit_points"])]
        out += _slope_claims(p["label"], pg, wide, tol, cite)
        out += _checks(p["label"], panel, pg, half, metrics, wide, tol)
    return out


STYLE = {"input": ("tab:blue", "o"), "intermediate": ("tab:green", "s"), "output": ("tab:red", "^"),
         "ntk": ("k", "D"), "nngp": ("tab:purple", "v")}
LABELS = {"ntk": r"$\hat\Theta$ (NTK)", "nngp": r"$\hat K$ (NNGP)"}


def _plot_changes(ax, pg, wide, title: str) -> None:
    """Every relative change against width, slopes over the shaded widths, reference rates."""
    for series, g in _in_order(pg):
        g, r = g.sort_values("width"), g.role.iloc[0]
        color, marker = STYLE[series if r == "kernel" else r]
        ls = ["-", "--", ":", "-."][(int(series[1:]) - 2) % 4] if r == "intermediate" else "-"
        fit = g[g.width.isin(wide)]
        name = LABELS[series] if r == "kernel" else rf"$W^{{{series[1:]}}}$ ({ROLES[r]})"
        ax.plot(g.width, g.value, marker=marker, ls=ls, color=color, ms=4,
                label=f"{name}: slope {C.loglog_slope(fit.width, fit.value):.2f}")
    last = pg[(pg.width == max(wide)) & np.isfinite(pg.value) & (pg.value > 0)].value
    if len(wide) > 1 and len(last):
        # reference rates over the fitted widths, above the largest and below the smallest change
        n, hi, lo = np.asarray(wide, float), float(last.max()), float(last.min())
        ax.plot(n, 2.5 * hi * np.sqrt(n[-1] / n), color="0.45", ls="--", lw=1, label=r"$\propto n^{-1/2}$")
        ax.plot(n, 0.4 * lo * (n[-1] / n), color="0.45", ls=":", lw=1, label=r"$\propto n^{-1}$")
        ax.axvspan(n[0] / 1.15, n[-1] * 1.15, color="0.9", zorder=0, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="width n (shaded: widths of the fitted slopes)",
           ylabel=r"$\|X_T - X_0\|_F \,/\, \|X_0\|_F$", title=title)
    ax.set_xscale("log", base=2)
    ax.legend(ncol=2, fontsize=6.5, loc="upper center", bbox_to_anchor=(0.5, -0.2))


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    """Per panel: the relative changes against width, and (ours, a convergence check) the training
    loss against the step for every width (trial 0)."""
    ch, settings = changes(metrics), panels(cfg)
    fig, axes = plotting.subplots(len(settings), 2, width=4.4, height=4.3)
    for row, (panel, p) in enumerate(settings):
        pg, label = ch[ch.panel == panel], p["label"]
        _plot_changes(axes[row][0], pg, fit_widths(pg.width, p["fit_points"]),
                      f"{label}\nrelative change after T = {p['steps']} GD steps")
        ax, lg = axes[row][1], metrics[metrics.panel == panel]
        lg = lg[(lg.quantity == "loss") & (lg.trial == 0)]
        plotting.curves(ax, lg.assign(t=np.maximum(lg.step, 0.5)), "width", x="t", label="n = {}", lw=1.2)
        ax.set(xscale="log", yscale="log", xlabel="gradient descent step t (t = 0 drawn at 1/2)",
               ylabel=r"training loss $\frac{1}{2}\,\mathrm{mean}\,(f - y)^2$",
               title=f"{label}\ntraining loss (ours: convergence check)")
        ax.legend(ncol=2)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
