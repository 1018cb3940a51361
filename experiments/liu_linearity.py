"""Liu, Zhu & Belkin 2020, Figures 1 and 2: when does the tangent kernel stay constant in training?

Measured quantity (Sec. 6):  Delta K = sup_t ||K(w_t) - K(w_0)||_F / ||K(w_0)||_F  over a gradient
descent run until the loss has converged, on the synthetic regression task `conf/task/liu_teacher.yaml`
(their App. C is not available: x on a sphere, targets y = phi(t(x)) for a smooth teacher t pushed
through each model's own output map phi, so every model class can fit them with finite weights and
gradient descent can converge, as Theorem 5.1 requires).  The sup is taken over a geometric grid of
checkpoints (plus the final step); K is the (N k) x (N k) tangent kernel J_phi K_f J_phi^T of the
model actually trained (`ntkrepro.outputs.tangent_kernel`), computed layer by layer, never from a
Jacobian, so widths of 10^6 fit in memory.

Models (Eq. 11): f an MLP in NTK parameterization with N(0, 1) parameters (`ModelSpec.init_normal`,
numpy default_rng([seed, *sizes, trial])), and f~ = phi(f) (`ntkrepro.outputs.OutputModel`).
Training: full-batch gradient descent on the example-averaged square loss (Thm. 5.1) with the step
eta = lr N / (L_phi^2 lambda_max(K_f(w_0))) (`ntkrepro.outputs.normalized_lr`: lr < 2 is stable for
every output map and width), stopped when L(w_t) <= tol L(w_0) ("converged"), at a non-finite loss
(recorded as diverged) or after `steps`.

* ``view: width`` (Figure 1): one hidden layer, NTK parameterization (Sec. 3.1, Remark 3.1), the same
  network f with a linear output, and f~ = softmax(f), f~ = swish(f) (Eq. 11), all from the same w_0.
  Left: Delta K against the width m; right: Delta K(t) against the epoch at one width (m = 10^4).
  Sec. 4: the nonlinear outputs keep a Theta(1) kernel change at any width (term A), the linear one
  tends to a constant kernel (Prop. 2.2 with ||H|| = O~(m^-1/2), Thm. 3.2); Theorem 5.1: gradient
  descent still converges for the nonlinear outputs.
* ``view: bottleneck`` (Figure 2): three hidden layers of width m with the second a bottleneck of
  width m_b, linear output; Delta K against m_b (Sec. 4: a narrow layer breaks condition (b) of
  Theorem 3.1).

Sweep points (`points`, the units a split run distributes over jobs): (width, trial, output) for Fig. 1,
(m_b, trial) for Fig. 2.  A point's network is drawn from (seed, its sizes, trial) only, so the output
maps of one (width, trial) share w_0 wherever they run.  `cost` bounds a point's work by `steps` GD
steps (training stops earlier, at convergence).  `MUTATIONS`: deliberate mistakes for
tests/test_mutations.py.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, tasks, train
from ntkrepro.errors import ConfigError
from ntkrepro.outputs import (OutputModel, check_output, lambda_max, normalized_lr, output_fn, rel_change,
                              tangent_kernel)

LABELS = {"linear": "linear output $f$", "softmax": r"softmax output $\tilde f$",
          "swish": r"swish output $\tilde f$", "softplus": r"softplus output $\tilde f$"}
COLORS = {"linear": "tab:blue", "softmax": "tab:red", "swish": "tab:orange", "softplus": "tab:purple"}


MUTATIONS = {  # deliberate mistakes, for tests/test_mutations.py only (`mutation=<name>`)
    "no_output_jacobian": "the tangent kernel of phi(f) taken without J_phi (K_f instead of "
                          "J_phi K_f J_phi^T): the nonlinear-output models look like the linear one",
    "no_bottleneck": "the bottleneck width never reaches the network: all three hidden layers have "
                     "width m (Fig. 2 then measures a network without a bottleneck)",
}


def points(cfg) -> list[dict]:
    """The sweep points: (width, trial, output) for Fig. 1, (bottleneck width, trial) for Fig. 2;
    sizes ascending (round-robin shards then get a similar mix of cheap and costly points)."""
    trials = range(int(cfg.get("trials", 1)))
    if cfg.view == "width":
        outputs = [check_output(o) for o in cfg.outputs]
        return [{"width": int(m), "trial": tr, "output": o} for m in cfg.widths for tr in trials
                for o in outputs]
    if cfg.view == "bottleneck":
        return [{"bottleneck_width": int(mb), "trial": tr} for mb in cfg.bottleneck_widths for tr in trials]
    raise ConfigError(f"unknown view '{cfg.view}' for {cfg.id}; use 'width' or 'bottleneck'")


def _network(cfg, point: dict, k: int) -> tuple:
    """(spec, init tags, row columns) of a point's network f: one hidden layer of width m (Fig. 1) or
    [m, m_b, m] (Fig. 2).  The tags seed its N(0, 1) draws (numpy default_rng([seed, *tags])): the
    same w_0 for every output map of a (width, trial), independent of the other points."""
    tr = int(point["trial"])
    if cfg.view == "width":
        m = int(point["width"])
        return (models.from_config(cfg, width=m, out_dim=k), (m, tr),
                dict(width=m, trial=tr))
    m, mb = int(cfg.width), int(point["bottleneck_width"])
    hidden = (m, m, m) if cfg.get("mutation") == "no_bottleneck" else (m, mb, m)
    return (models.from_config(cfg, width=hidden, out_dim=k), (m, mb, tr),
            dict(width=m, trial=tr, bottleneck_width=mb))


def _measured(cfg, output: str) -> str:
    """The output map whose tangent kernel is measured: the trained model's own (the mutation
    `no_output_jacobian` drops J_phi and measures K_f of the network under it)."""
    return "linear" if cfg.get("mutation") == "no_output_jacobian" else output


def fit_and_track(spec, p0, x, t, output: str, cfg, kf0) -> tuple[list[dict], dict]:
    """Train phi(f) by gradient descent from p0; Delta K(t) at the checkpoints and a summary."""
    measured = _measured(cfg, output)
    k0 = kf0 if measured == "linear" else tangent_kernel(spec, p0, x, measured)
    eta = normalized_lr(cfg.lr, len(x), lambda_max(kf0), output)
    trainer = train.Trainer(OutputModel(spec, output), loss="mse", lr=eta)
    tol, steps = float(cfg.tol), int(cfg.steps)
    res = train.fit(trainer, p0, x, output_fn(output)(t), steps=steps,
                    record_at=train.log_steps(steps, int(cfg.kernel_points)),
                    observe=lambda _, st: rel_change(tangent_kernel(spec, trainer.params(st), x, measured), k0),
                    stop=lambda loss, loss0: ~jnp.isfinite(loss) | (loss <= tol * loss0))
    trace = [dict(step=step, delta_k=dk if math.isfinite(loss) else math.nan, loss=loss)
             for step, dk, loss in zip(res.steps, res.records, res.losses.tolist())]
    loss0, loss_final = trace[0]["loss"], trace[-1]["loss"]
    finite = [r["delta_k"] for r in trace if math.isfinite(r["delta_k"])]
    summary = dict(delta_k=max(finite) if finite and not res.diverged else math.nan,   # diverged: nan
                   loss0=loss0, loss_final=loss_final,
                   loss_ratio=loss_final / loss0, final_step=trace[-1]["step"],
                   converged=int(math.isfinite(loss_final) and loss_final <= tol * loss0),
                   diverged=int(res.diverged), eta=eta)
    return trace, summary


def run(cfg, subset=None) -> pd.DataFrame:
    """The rows of the points in `subset` (None: every point); each point's network is drawn from
    (seed, its tags) only, so a split run's parts hold the rows of the unsplit run."""
    dtype = precision.train_dtype(cfg)
    task = tasks.load(cfg.task, cfg.data, seed=int(cfg.seed), name="teacher")
    x, t = jnp.asarray(task.x_train, dtype), jnp.asarray(task.y_train, dtype)
    todo = points(cfg) if subset is None else list(subset)
    rows, drawn = [], {}
    for point in tqdm(todo, desc=cfg.id, disable=None):
        spec, tags, common = _network(cfg, point, task.out_dim)
        if tags not in drawn:  # w_0 and K_f(w_0), shared by the output maps of one network
            p0 = spec.init_normal(np.random.default_rng([int(cfg.seed), *tags]), x, dtype)
            drawn = {tags: (p0, tangent_kernel(spec, p0, x))}
        p0, kf0 = drawn[tags]
        output = point.get("output", "linear")
        trace, summary = fit_and_track(spec, p0, x, t, output, cfg, kf0)
        rows.append(dict(quantity="delta_k", value=summary.pop("delta_k"), output=output, **common, **summary))
        rows += [dict(quantity="delta_k_t", value=r["delta_k"], step=r["step"], loss=r["loss"],
                      output=output, **common) for r in trace]
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """One point: at most `steps` full-batch GD steps of phi(f) (an upper bound: training stops at
    convergence) with the loss and the tangent kernel at every recording point, and K_f(w_0)."""
    shapes = tasks.shapes(cfg.task)
    dtype = precision.train_dtype(cfg)
    spec, _, common = _network(cfg, point, shapes["y_train"][-1])
    output = point.get("output", "linear")
    steps = int(cfg.steps)
    records = len(train.log_steps(steps, int(cfg.kernel_points)))
    trainer = train.Trainer(OutputModel(spec, output), loss="mse", lr=1.0)
    name = ", ".join(f"{k}={v}" for k, v in {**common, "output": output}.items())
    x = jax.ShapeDtypeStruct(shapes["x_train"], dtype)
    params = spec.param_shapes(x)
    measured = _measured(cfg, output)
    return [*costs.training(name, trainer, spec, shapes["x_train"], shapes["y_train"], steps, dtype=dtype,
                            record_points=records),
            costs.analyse(f"{name}: tangent kernel", lambda p, u: tangent_kernel(spec, p, u, measured),
                          params, x, calls=records + 2)]


# ----------------------------------------------------------------------------------------------
# claims


def _summary(metrics):
    """Delta K per output and size: mean over trials (value), min and max; worst loss ratio (nan where
    a trial diverged, so that no claim passes on the others)."""
    s = metrics[metrics.quantity == "delta_k"]
    keys = [c for c in ("output", "width", "bottleneck_width") if c in s.columns and s[c].notna().any()]
    g = s.groupby(keys)
    return pd.DataFrame(dict(value=g.value.mean(skipna=False), lo=g.value.min(skipna=False),
                             hi=g.value.max(skipna=False), loss_ratio=g.loss_ratio.max(skipna=False),
                             trials=g.value.size())).reset_index()


def _panel(metrics, **where):
    """Delta K(t) rows of trial 0 matching `where` (the right panel shows one training run)."""
    t = metrics[(metrics.quantity == "delta_k_t") & (metrics.trial == 0)]
    for key, val in where.items():
        t = t[t[key] == val]
    return t


PAPER = "Liu, Zhu & Belkin 2020"


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    if cfg.view == "bottleneck":
        return _claims_bottleneck(metrics, cfg)
    tol = cfg.claims
    s = _summary(metrics)
    lin = s[s.output == "linear"].sort_values("width")
    wide = int(s.width.max())
    out = [C.in_range("linear output: Delta K falls with the width (constant NTK in the limit; "
                      "bound O(m^-1/2), Prop. 2.2 + Thm. 3.2)",
                      "log-log slope of Delta K over m", C.loglog_slope(lin.width, lin.value, strict=True),
                      *tol.linear_slope,
                      cite=f"{PAPER}, Sec. 6 and Fig. 1 (left); the bound: Eq. 5, Prop. 2.2, Thm. 3.2")]
    for o in [o for o in s.output.unique() if o != "linear"]:
        g = s[s.output == o].sort_values("width")
        out.append(C.above(f"{o} output: Delta K stays of order one at every width (Sec. 4, term A)",
                           "min over widths of Delta K", C.strict_min(g.value), tol.nonlinear_min,
                           cite=f"{PAPER}, Sec. 6 and Fig. 1 (left): 'always takes significant change, even "
                                "if the network width is large'; Sec. 4, term A"))
        out.append(C.in_range(f"{o} output: Delta K does not decay with the width",
                              "log-log slope of Delta K over m", C.loglog_slope(g.width, g.value, strict=True),
                              *tol.nonlinear_slope,
                              cite=f"{PAPER}, Sec. 4: a change of order Theta(1) even as m -> infinity"))
        ratio = float(g[g.width == wide].value.iloc[0] / lin[lin.width == wide].value.iloc[0])
        out.append(C.above(f"{o} vs linear output at the largest width: the nonlinear output changes the "
                           "kernel far more", f"Delta K({o}) / Delta K(linear) at m={wide}", ratio,
                           tol.ratio_at_widest, cite=f"{PAPER}, Fig. 1 (left)"))
        out.append(C.below(f"{o} output: gradient descent still converges (Thm. 5.1)",
                           "max over widths of L(w_T) / L(w_0)", C.strict_max(g.loss_ratio),
                           tol.nonlinear_loss_ratio, cite=f"{PAPER}, Thm. 5.1 (Sec. 5); Sec. 6"))
    out.append(C.below("linear output: gradient descent converged at every width (Delta K is measured "
                       "from initialization to convergence)", "max over widths of L(w_T) / L(w_0)",
                       C.strict_max(lin.loss_ratio), tol.linear_loss_ratio, kind="check"))
    panel = int(cfg.panel_width)
    t = _panel(metrics, output="linear", width=panel)
    if len(t):
        out.append(C.below(f"right panel: the linear-output kernel is nearly unchanged during training at "
                           f"m={panel}", "sup_t Delta K(t)", C.strict_max(t.value), tol.linear_panel_max,
                           cite=f"{PAPER}, Fig. 1 (right) and Sec. 6: 'nearly unchanged during training'"))
    return out


def _claims_bottleneck(metrics, cfg):
    tol = cfg.claims
    s = _summary(metrics).sort_values("bottleneck_width")
    narrow, wide = s.iloc[0], s.iloc[-1]
    return [
        C.above("a narrow bottleneck keeps the tangent kernel far from constant (Sec. 4)",
                f"Delta K at m_b={int(narrow.bottleneck_width)}", float(narrow.value), tol.narrow_min,
                cite=f"{PAPER}, Sec. 6 and Fig. 2: 'a narrow bottleneck layer ... prevent[s] the neural "
                     "tangent kernel from being constant'; Sec. 4, 'Wide neural networks with bottleneck'"),
        C.in_range("Delta K falls as the bottleneck widens",
                   "log-log slope of Delta K over m_b",
                   C.loglog_slope(s.bottleneck_width, s.value, strict=True),
                   *tol.slope, cite=f"{PAPER}, Sec. 6 and Fig. 2: 'increasing the width of the bottleneck "
                                    "layer makes the change of the tangent kernel smaller'"),
        C.below("with a wide bottleneck the kernel is nearly constant again",
                f"Delta K at m_b={int(wide.bottleneck_width)}", float(wide.value), tol.wide_max,
                cite=f"{PAPER}, Fig. 2; Sec. 3.2, Thm. 3.2 (every hidden layer wide: small Hessian)"),
        C.below("gradient descent converged for every bottleneck width", "max over m_b of L(w_T) / L(w_0)",
                C.strict_max(s.loss_ratio), tol.loss_ratio, kind="check"),
    ]


# ----------------------------------------------------------------------------------------------
# plots


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    if cfg.view == "bottleneck":
        return _plot_bottleneck(metrics, out_dir, cfg)
    s = _summary(metrics)
    fig, axes = plotting.subplots(1, 3, width=3.5, height=3.0)
    ax = axes[0][0]
    for o in s.output.unique():
        g = s[s.output == o].sort_values("width")
        ax.errorbar(g.width, g.value, yerr=[g.value - g.lo, g.hi - g.value], fmt="o-", color=COLORS.get(o),
                    ms=4, capsize=2, label=LABELS.get(o, o))
    lin = s[s.output == "linear"].sort_values("width")
    if len(lin) > 1:
        m = np.asarray(lin.width, float)
        y0 = float(lin.value.iloc[0])
        ax.plot(m, y0 * np.sqrt(m[0] / m), "k--", lw=0.8, label=r"$\propto m^{-1/2}$ (bound)")
        ax.plot(m, y0 * (m[0] / m), "k:", lw=0.8, label=r"$\propto m^{-1}$")
    ax.set(xscale="log", yscale="log", xlabel="width m",
           ylabel=r"$\Delta K$" + (f" (mean of {int(s.trials.max())} nets, min-max)"
                                    if s.trials.max() > 1 else ""),
           title=r"max change of tangent kernel $\Delta K$ vs width")
    ax.legend()

    panel = int(cfg.panel_width)
    t = _panel(metrics, width=panel)
    for o in t.output.unique():
        g = t[t.output == o].sort_values("step")
        later = g[g.step > 0]  # Delta K(0) = 0: the log axis starts at the first step
        axes[0][1].plot(later.step, later.value, ".-", color=COLORS.get(o), ms=3, label=LABELS.get(o, o))
        axes[0][2].plot(np.maximum(g.step, 0), g.loss / g.loss.iloc[0], ".-", color=COLORS.get(o), ms=3,
                        label=LABELS.get(o, o))
    axes[0][1].set(xscale="log", xlabel="epoch (full-batch GD step)", ylabel=r"$\Delta K(t)$",
                   title=rf"evolution of $\Delta K(t)$, m = {panel:g}")
    axes[0][1].legend()
    axes[0][2].set(yscale="log", xlabel="epoch", ylabel=r"$L(w_t) / L(w_0)$",
                   title=f"training loss (Thm. 5.1), m = {panel:g}")
    axes[0][2].legend()
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")


def _plot_bottleneck(metrics, out_dir, cfg):
    s = _summary(metrics).sort_values("bottleneck_width")
    fig, axes = plotting.subplots(1, 2, width=3.6, height=3.0)
    ax = axes[0][0]
    ax.errorbar(s.bottleneck_width, s.value, yerr=[s.value - s.lo, s.hi - s.value], fmt="o-",
                color="tab:blue", ms=4, capsize=2, label=f"3 hidden layers, m = {int(cfg.width):g}")
    mb = np.asarray(s.bottleneck_width, float)
    if len(mb) > 1:
        ax.plot(mb, float(s.value.iloc[0]) * np.sqrt(mb[0] / mb), "k--", lw=0.8,
                label=r"$\propto m_b^{-1/2}$")
        ax.plot(mb, float(s.value.iloc[0]) * (mb[0] / mb), "k:", lw=0.8, label=r"$\propto m_b^{-1}$")
    ax.set(xscale="log", yscale="log", xlabel=r"bottleneck width $m_b$", ylabel=r"$\Delta K$",
           title="change of tangent kernel vs bottleneck width")
    ax.legend()
    t = _panel(metrics)
    widths = sorted(t.bottleneck_width.unique())
    for color, w in zip(plotting.colors(len(widths)), widths):
        g = t[(t.bottleneck_width == w) & (t.step > 0)].sort_values("step")
        axes[0][1].plot(g.step, g.value, ".-", color=color, ms=3, label=rf"$m_b$ = {int(w)}")
    axes[0][1].set(xscale="log", yscale="log", xlabel="epoch (full-batch GD step)", ylabel=r"$\Delta K(t)$",
                   title=r"evolution of $\Delta K(t)$")
    axes[0][1].legend(ncol=2)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
