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
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import models, plotting, precision, tasks, train
from ntkrepro.errors import ConfigError
from ntkrepro.outputs import (OutputModel, check_output, lambda_max, normalized_lr, output_fn, rel_change,
                              tangent_kernel)

LABELS = {"linear": "linear output $f$", "softmax": r"softmax output $\tilde f$",
          "swish": r"swish output $\tilde f$", "softplus": r"softplus output $\tilde f$"}
COLORS = {"linear": "tab:blue", "softmax": "tab:red", "swish": "tab:orange", "softplus": "tab:purple"}


def _networks(cfg, k: int) -> list[tuple]:
    """(spec, init tags, row columns) per network: widths m (Fig. 1) or bottleneck widths m_b (Fig. 2)."""
    trials = range(int(cfg.get("trials", 1)))
    if cfg.view == "width":
        return [(models.from_config(cfg, width=int(m), out_dim=k), (int(m), tr),
                 dict(width=int(m), trial=tr)) for m in cfg.widths for tr in trials]
    if cfg.view == "bottleneck":
        m = int(cfg.width)
        return [(models.from_config(cfg, width=(m, int(mb), m), out_dim=k), (m, int(mb), tr),
                 dict(width=m, trial=tr, bottleneck_width=int(mb)))
                for mb in cfg.bottleneck_widths for tr in trials]
    raise ConfigError(f"unknown view '{cfg.view}' for {cfg.id}; use 'width' or 'bottleneck'")


def fit_and_track(spec, p0, x, t, output: str, cfg, kf0) -> tuple[list[dict], dict]:
    """Train phi(f) by gradient descent from p0; Delta K(t) at the checkpoints and a summary."""
    k0 = kf0 if output == "linear" else tangent_kernel(spec, p0, x, output)
    eta = normalized_lr(cfg.lr, len(x), lambda_max(kf0), output)
    trainer = train.Trainer(OutputModel(spec, output), loss="mse", lr=eta)
    tol, steps = float(cfg.tol), int(cfg.steps)
    res = train.fit(trainer, p0, x, output_fn(output)(t), steps=steps,
                    record_at=train.log_steps(steps, int(cfg.kernel_points)),
                    observe=lambda _, st: rel_change(tangent_kernel(spec, trainer.params(st), x, output), k0),
                    stop=lambda loss, loss0: ~jnp.isfinite(loss) | (loss <= tol * loss0))
    trace = [dict(step=step, delta_k=dk if math.isfinite(loss) else math.nan, loss=loss)
             for step, dk, loss in zip(res.steps, res.records, res.losses.tolist())]
    loss0, loss_final = trace[0]["loss"], trace[-1]["loss"]
    finite = [r["delta_k"] for r in trace if math.isfinite(r["delta_k"])]
    summary = dict(delta_k=max(finite) if finite else math.nan, loss0=loss0, loss_final=loss_final,
                   loss_ratio=loss_final / loss0, final_step=trace[-1]["step"],
                   converged=int(math.isfinite(loss_final) and loss_final <= tol * loss0),
                   diverged=int(res.diverged), eta=eta)
    return trace, summary


def run(cfg) -> pd.DataFrame:
    dtype = precision.train_dtype(cfg)
    task = tasks.load(cfg.task, cfg.data, seed=int(cfg.seed), name="teacher")
    x, t = jnp.asarray(task.x_train, dtype), jnp.asarray(task.y_train, dtype)
    outputs = [check_output(o) for o in cfg.outputs] if cfg.view == "width" else ["linear"]
    networks = _networks(cfg, task.out_dim)
    rows = []
    bar = tqdm(total=len(networks) * len(outputs), desc=cfg.id, disable=None)
    for spec, tags, common in networks:
        p0 = spec.init_normal(np.random.default_rng([int(cfg.seed), *tags]), x, dtype)
        kf0 = tangent_kernel(spec, p0, x)
        for output in outputs:
            bar.set_postfix(**common, output=output)
            trace, summary = fit_and_track(spec, p0, x, t, output, cfg, kf0)
            rows.append(dict(quantity="delta_k", value=summary.pop("delta_k"), output=output, **common,
                             **summary))
            rows += [dict(quantity="delta_k_t", value=r["delta_k"], step=r["step"], loss=r["loss"],
                          output=output, **common) for r in trace]
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# claims


def _summary(metrics):
    """Delta K per output and size: mean over trials (value), min and max; worst loss ratio."""
    s = metrics[metrics.quantity == "delta_k"]
    keys = [c for c in ("output", "width", "bottleneck_width") if c in s.columns and s[c].notna().any()]
    return (s.groupby(keys, as_index=False)
            .agg(value=("value", "mean"), lo=("value", "min"), hi=("value", "max"),
                 loss_ratio=("loss_ratio", "max"), trials=("value", "size")))


def _panel(metrics, **where):
    """Delta K(t) rows of trial 0 matching `where` (the right panel shows one training run)."""
    t = metrics[(metrics.quantity == "delta_k_t") & (metrics.trial == 0)]
    for key, val in where.items():
        t = t[t[key] == val]
    return t


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    if cfg.view == "bottleneck":
        return _claims_bottleneck(metrics, cfg)
    tol = cfg.claims
    s = _summary(metrics)
    out = []
    lin = s[s.output == "linear"].sort_values("width")
    lo, hi = tol.linear_slope
    out.append(C.in_range("linear output: Delta K falls with the width (constant NTK in the limit; "
                          "bound O(m^-1/2), Prop. 2.2 + Thm. 3.2)",
                          "log-log slope of Delta K over m", C.loglog_slope(lin.width, lin.value), lo, hi))
    for o in [o for o in s.output.unique() if o != "linear"]:
        g = s[s.output == o].sort_values("width")
        out.append(C.above(f"{o} output: Delta K stays of order one at every width (Sec. 4, term A)",
                           "min over widths of Delta K", float(g.value.min()), tol.nonlinear_min))
        lo, hi = tol.nonlinear_slope
        out.append(C.in_range(f"{o} output: Delta K does not decay with the width",
                              "log-log slope of Delta K over m", C.loglog_slope(g.width, g.value), lo, hi))
        wide = int(s.width.max())
        ratio = float(g[g.width == wide].value.iloc[0] / lin[lin.width == wide].value.iloc[0])
        out.append(C.above(f"{o} vs linear output at the largest width: the nonlinear output changes the "
                           "kernel far more", f"Delta K({o}) / Delta K(linear) at m={wide}", ratio,
                           tol.ratio_at_widest))
        out.append(C.below(f"{o} output: gradient descent still converges (Thm. 5.1)",
                           "max over widths of L(w_T) / L(w_0)", float(g.loss_ratio.max()),
                           tol.nonlinear_loss_ratio))
    panel = int(cfg.panel_width)
    t = _panel(metrics, output="linear", width=panel)
    if len(t):
        out.append(C.below(f"right panel: the linear-output kernel is nearly unchanged during training at "
                           f"m={panel}", "sup_t Delta K(t)", float(t.value.max()), tol.linear_panel_max))
    return out


def _claims_bottleneck(metrics, cfg):
    tol = cfg.claims
    s = _summary(metrics).sort_values("bottleneck_width")
    narrow, wide = s.iloc[0], s.iloc[-1]
    lo, hi = tol.slope
    return [
        C.above("a narrow bottleneck keeps the tangent kernel far from constant (Sec. 4)",
                f"Delta K at m_b={int(narrow.bottleneck_width)}", float(narrow.value), tol.narrow_min),
        C.in_range("Delta K falls as the bottleneck widens",
                   "log-log slope of Delta K over m_b", C.loglog_slope(s.bottleneck_width, s.value), lo, hi),
        C.below("with a wide bottleneck the kernel is nearly constant again",
                f"Delta K at m_b={int(wide.bottleneck_width)}", float(wide.value), tol.wide_max),
        C.below("gradient descent converged for every bottleneck width", "max over m_b of L(w_T) / L(w_0)",
                float(s.loss_ratio.max()), tol.loss_ratio),
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
