"""Liu, Zhu & Belkin 2020, Table 1, measured: Hessian spectral norm and gradient norm against width.

Table 1 of the paper (Sec. 4) lists orders, not measurements:

    network                 Hessian norm     NTK     transition to linearity (constant NTK)?
    linear output layer     O~(1/sqrt(m))    Theta(1)  yes
    nonlinear output layer  O~(1)            Theta(1)  no
    bottleneck              O~(1)            Theta(1)  no

Here each class is trained by gradient descent on the synthetic task of liu-1
(`conf/task/liu_teacher.yaml` with a scalar output: the paper's H(w; x) = d^2 f(w; x) / dw^2 is for one
input of a scalar model), as in liu-1 (normalised step `ntkrepro.outputs.normalized_lr`, stopped at
L(w_t) <= tol L(w_0)), and at initialization and at checkpoints along the training path we measure,
for a few training inputs x,

* ||H(w; x)|| by Lanczos on Hessian-vector products (`ntkrepro.hessian`; H is never formed),
* ||grad_w f(w; x)|| = sqrt(K(x, x)) (Eq. 6: the NTK's Theta(1)), from the diagonal of the tangent
  kernel (`ntkrepro.outputs.tangent_kernel`, no Jacobian; equal to `ntkrepro.hessian.gradient_norm`),

and report per width the maximum over the inputs (at w_0, and over the whole path), plus the final
relative kernel change Delta K of the model.  Fitted log-log slopes against m are compared with the
table's orders (-1/2 for the linear output, 0 otherwise; 0 for the gradient norm).

Model classes (all NTK parameterization with N(0, 1) parameters, tanh hidden units):

* ``linear``:     one hidden layer of width m, linear scalar output f (Eq. 4 / Eq. 7);
* ``nonlinear``:  the same f through phi = `nonlinear_output` (softplus by default):
  H~ = phi''(f) grad f grad f^T + phi'(f) H (Eq. 13), so ||H~|| >= |phi''(f)| ||grad f||^2 - |phi'(f)| ||H||
  (Eq. 14) = Theta(1) needs phi'' away from 0 at the typical outputs: softplus'' = sigmoid (1 - sigmoid)
  is 0.2-0.25 there, whereas tanh'' vanishes at f = 0 and swish'' changes sign near f = 2.4;
* ``bottleneck``: three hidden layers [m, m_b, m] with a fixed narrow m_b, linear output.

Sweep points (`points`): one (class, width) each; w_0 from (seed, its sizes) only (the linear and
nonlinear classes share w_0 at a width).  `cost` bounds a point's work by `steps` GD steps and
`lanczos_iters` Hessian-vector products per Lanczos run.  `MUTATIONS`: deliberate mistakes for
tests/test_mutations.py.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, tasks, train
from ntkrepro.errors import ConfigError
from ntkrepro.hessian import HessianConvergenceWarning, hessian_spectral_norms, hvp
from ntkrepro.outputs import (OutputModel, check_output, lambda_max, normalized_lr, output_fn, rel_change,
                              tangent_kernel)

CLASSES = ("linear", "nonlinear", "bottleneck")
PAPER = {  # Table 1
    "linear": ("linear output layer", "O~(1/sqrt(m))", -0.5, "Yes"),
    "nonlinear": ("nonlinear output layer", "O~(1)", 0.0, "No"),
    "bottleneck": ("bottleneck", "O~(1)", 0.0, "No"),
}
COLORS = {"linear": "tab:blue", "nonlinear": "tab:red", "bottleneck": "tab:green"}


MUTATIONS = {  # deliberate mistakes, for tests/test_mutations.py only (`mutation=<name>`)
    "standard_parameterization": "the networks in the standard parameterization (weights N(0, "
                                 "sigma_w^2 / fan-in), no 1/sqrt(fan-in) multiplier; the same functions "
                                 "at w_0), where Table 1's orders assume the NTK parameterization",
}


def points(cfg) -> list[dict]:
    """The sweep points: one (model class, width) each, widths ascending within a class."""
    for cls in cfg.classes:
        if cls not in CLASSES:
            raise ConfigError(f"unknown model class '{cls}'; choose from {', '.join(CLASSES)}")
    return [{"cls": str(c), "width": int(m)} for c in cfg.classes for m in cfg.widths]


def _model(cfg, cls: str, width: int) -> tuple[OutputModel, tuple]:
    """The model f~ of a class at width m, and the sizes that tag its initialization."""
    if cls == "bottleneck":
        mb = int(cfg.bottleneck_width)
        if mb < 1:
            raise ConfigError(f"bottleneck_width must be a positive integer, got {mb}")
        return OutputModel(models.from_config(cfg, width=(width, mb, width), depth=3, out_dim=1)), (width, mb)
    output = "linear" if cls == "linear" else check_output(cfg.nonlinear_output)
    return OutputModel(models.from_config(cfg, width=width, depth=1, out_dim=1), output), (width,)


def _initial(cfg, f: OutputModel, tags: tuple, x, dtype) -> tuple[OutputModel, dict]:
    """w_0: N(0, 1) parameters from numpy default_rng([seed, *tags]) (NTK parameterization); under
    the mutation `standard_parameterization` the same function in the standard parameterization
    (each weight times sigma_w / sqrt(fan-in), each bias times sigma_b, multipliers 1)."""
    p0 = f.spec.init_normal(np.random.default_rng([int(cfg.seed), *tags]), x, dtype)
    if cfg.get("mutation") != "standard_parameterization":
        return f, p0
    spec = f.spec.replace(parameterization="standard")
    w, b = math.sqrt(f.spec.w_var), math.sqrt(f.spec.b_var)
    p0 = {layer: {k: v * (w / math.sqrt(v.shape[0]) if k == "kernel" else b) for k, v in leaves.items()}
          for layer, leaves in p0.items()}
    return OutputModel(spec, f.output), p0


def _norms(f: OutputModel, params, x, n_probe: int, cfg, **columns) -> list[dict]:
    """||H(w; x)|| (Lanczos; with how many runs missed the tolerance) and ||grad_w f~(w; x)|| per probe."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HessianConvergenceWarning)
        hess = hessian_spectral_norms(f, params, x[:n_probe], num_iters=int(cfg.lanczos_iters),
                                      tol=float(cfg.lanczos_tol), reorthogonalize=bool(cfg.reorthogonalize))
    bad = sum(issubclass(w.category, HessianConvergenceWarning) for w in caught)
    # ||grad_w f~(w; x)||^2 = K~(x, x) (Eq. 6): the diagonal of the structured tangent kernel
    grad = np.sqrt(np.diag(np.asarray(tangent_kernel(f.spec, params, x, f.output))[:, :, 0, 0]))[:n_probe]
    rows = []
    for i, (h, g) in enumerate(zip(hess, grad)):
        rows.append(dict(quantity="hessian_norm", value=h, probe=i, lanczos_unconverged=bad, **columns))
        rows.append(dict(quantity="grad_norm", value=g, probe=i, **columns))
    return rows


def _train_and_probe(f: OutputModel, p0, x, t, cfg, common: dict) -> list[dict]:
    """Gradient descent from p0; the norms at `hessian_steps` and at the end, then Delta K."""
    n_probe, tol = int(cfg.n_probe), float(cfg.tol)
    kf0 = tangent_kernel(f.spec, p0, x)
    k0 = kf0 if f.output == "linear" else tangent_kernel(f.spec, p0, x, f.output)
    trainer = train.Trainer(f, loss="mse", lr=normalized_lr(cfg.lr, len(x), lambda_max(kf0), f.output))
    y = output_fn(f.output)(t)
    rows, last = [], {}

    def observe(step, state):
        if not math.isfinite(float(trainer.loss(state, x, y))):
            return  # diverged: nothing to measure
        last.update(step=step, params=trainer.params(state))
        rows.extend(_norms(f, last["params"], x, n_probe, cfg, step=step, **common))

    res = train.fit(trainer, p0, x, y, steps=int(cfg.steps) if cfg.get("train", True) else 0,
                    record_at=[int(s) for s in cfg.hessian_steps], observe=observe,
                    stop=lambda loss, loss0: ~jnp.isfinite(loss) | (loss <= tol * loss0))
    loss0, loss_final = float(train.LOSSES["mse"](f(p0, x), y)), float(res.losses[-1])
    dk = rel_change(tangent_kernel(f.spec, last["params"], x, f.output), k0) if last else math.nan
    rows.append(dict(quantity="delta_k", value=dk, step=last.get("step", 0), loss0=loss0,
                     loss_ratio=loss_final / loss0, converged=int(loss_final <= tol * loss0),
                     diverged=int(res.diverged), **common))
    return rows


def run(cfg, subset=None) -> pd.DataFrame:
    """The rows of the points in `subset` (None: every point); each point's w_0 comes from (seed, its
    sizes) only, so a split run's parts hold the rows of the unsplit run."""
    dtype = precision.train_dtype(cfg)
    task = tasks.load(cfg.task, cfg.data, seed=int(cfg.seed), name="teacher")
    x, t = jnp.asarray(task.x_train, dtype), jnp.asarray(task.y_train, dtype)
    if task.out_dim != 1:
        raise ConfigError(f"Table 1's Hessian is that of a scalar model: set task.out_dim=1, "
                          f"got {task.out_dim}")
    if not 1 <= int(cfg.n_probe) <= len(x):
        raise ConfigError(f"n_probe must be between 1 and n_train={len(x)}, got {cfg.n_probe}")
    todo = points(cfg) if subset is None else list(subset)
    rows = []
    for point in tqdm(todo, desc=cfg.id, disable=None):
        f, tags = _model(cfg, point["cls"], int(point["width"]))
        f, p0 = _initial(cfg, f, tags, x, dtype)
        rows += _train_and_probe(f, p0, x, t, cfg, dict(cls=point["cls"], output=f.output,
                                                        width=int(point["width"])))
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """One point: at most `steps` GD steps (an upper bound: training stops at convergence), and at each
    of the probed steps `n_probe` Lanczos runs of `lanczos_iters` Hessian-vector products plus the
    tangent kernel; the initial and final tangent kernels."""
    shapes = tasks.shapes(cfg.task)
    dtype = precision.train_dtype(cfg)
    f, _ = _model(cfg, point["cls"], int(point["width"]))
    if cfg.get("mutation") == "standard_parameterization":
        f = OutputModel(f.spec.replace(parameterization="standard"), f.output)
    steps = int(cfg.steps) if cfg.get("train", True) else 0
    probes = len({int(s) for s in cfg.hessian_steps if 0 <= int(s) <= steps} | {steps})
    name = f"{point['cls']} m={int(point['width'])}"
    x = jax.ShapeDtypeStruct(shapes["x_train"], dtype)
    params = f.spec.param_shapes(x)
    one = jax.ShapeDtypeStruct((1, *shapes["x_train"][1:]), dtype)
    trainer = train.Trainer(f, loss="mse", lr=1.0)
    fit = costs.training(name, trainer, f.spec, shapes["x_train"], shapes["y_train"], steps, dtype=dtype,
                         record_points=probes) if steps > 0 else []
    return [*fit,
            costs.analyse(f"{name}: Hessian-vector product", lambda p, u, v: hvp(f, p, u, v), params, one,
                          params, calls=probes * int(cfg.n_probe) * int(cfg.lanczos_iters)),
            costs.analyse(f"{name}: tangent kernel", lambda p, u: tangent_kernel(f.spec, p, u, f.output),
                          params, x, calls=probes + 3)]


# ----------------------------------------------------------------------------------------------


def summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per class and width: ||H|| at w_0 and max along the path (nan when the run diverged: the path
    is not measured past a non-finite loss), ||grad f|| at w_0 (max over inputs)."""
    h = metrics[metrics.quantity == "hessian_norm"]
    g = metrics[metrics.quantity == "grad_norm"]
    d = metrics[metrics.quantity == "delta_k"].set_index(["cls", "width"])
    out = []
    for (cls, width), hg in h.groupby(["cls", "width"]):
        gg = g[(g.cls == cls) & (g.width == width)]
        out.append(dict(cls=cls, width=width, hess_init=hg[hg.step == 0].value.max(),
                        hess_path=hg.value.max() if not d.diverged.get((cls, width), 0) else np.nan,
                        grad_init=gg[gg.step == 0].value.max(),
                        grad_path_min=gg.value.min(), delta_k=d.value.get((cls, width), np.nan),
                        loss_ratio=d.loss_ratio.get((cls, width), np.nan)))
    return pd.DataFrame(out).sort_values(["cls", "width"])


def _slopes(s: pd.DataFrame) -> dict:
    out = {}
    for cls, g in s.groupby("cls"):
        out[cls] = {q: C.loglog_slope(g.width, g[q], strict=True) for q in ("hess_init", "hess_path", "grad_init")}
    return out


CITE = {  # where the paper derives each row's orders
    "linear": "Liu, Zhu & Belkin 2020, Table 1, row 1; Sec. 3.1 Eqs. 5-6, Sec. 3.2 Thm. 3.2",
    "nonlinear": "Liu, Zhu & Belkin 2020, Table 1, row 2; Sec. 4 Eqs. 12-14",
    "bottleneck": "Liu, Zhu & Belkin 2020, Table 1, row 3; Sec. 4, 'Wide neural networks with bottleneck'",
}


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    s = summary(metrics)
    slopes = _slopes(s)
    tol = cfg.claims
    out = []
    for cls in [c for c in CLASSES if c in slopes]:
        name, order, _, _ = PAPER[cls]
        lo, hi = tol.linear_slope if cls == "linear" else tol.flat_slope
        for q, where in (("hess_init", "at initialization"), ("hess_path", "max along the training path")):
            out.append(C.in_range(f"{name}: Hessian spectral norm is {order} (Table 1)",
                                  f"log-log slope over m of max_x ||H(w; x)||, {where}", slopes[cls][q],
                                  lo, hi, cite=CITE[cls]))
        lo, hi = tol.grad_slope
        out.append(C.in_range(f"{name}: tangent kernel / gradient norm is Theta(1) (Table 1, Eq. 6)",
                              "log-log slope over m of max_x ||grad f(w_0; x)||", slopes[cls]["grad_init"],
                              lo, hi, cite=f"{CITE[cls]}; the NTK column, Eq. 6"))
    h = metrics[metrics.quantity == "hessian_norm"]
    missed = h.drop_duplicates(["cls", "width", "step"]).lanczos_unconverged.fillna(0).sum()
    out.append(C.below("Lanczos reached its tolerance in every Hessian-norm measurement",
                       "Lanczos runs that missed lanczos_tol", float(missed), 0.5, kind="check"))
    return out


def _fmt(m) -> str:
    """10^k, a·10^k (one significant digit) or the integer."""
    m = int(m)
    k = int(math.floor(math.log10(m)))
    a, rest = divmod(m, 10 ** k)
    if rest or k < 2:
        return str(m)
    return f"10^{k}" if a == 1 else f"{a}·10^{k}"


def table_markdown(metrics: pd.DataFrame) -> str:
    s = summary(metrics)
    slopes = _slopes(s)
    wide = int(s.width.max())
    lines = [
        "| network | Hessian norm (paper) | slope of ‖H(w₀)‖ | slope of max-path ‖H‖ | "
        f"‖H(w₀)‖ at m={_fmt(wide)} | NTK (paper) | slope of ‖∇f(w₀)‖ | "
        f"ΔK at m={_fmt(wide)} | "
        "constant NTK? (paper) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for cls in [c for c in CLASSES if c in slopes]:
        name, order, _, lin = PAPER[cls]
        g = s[(s.cls == cls) & (s.width == wide)]
        lines.append(f"| {name} | {order} | {slopes[cls]['hess_init']:+.2f} | "
                     f"{slopes[cls]['hess_path']:+.2f} | "
                     f"{float(g.hess_init.iloc[0]):.3g} | Θ(1) | {slopes[cls]['grad_init']:+.2f} | "
                     f"{float(g.delta_k.iloc[0]):.3g} | {lin} |")
    lines.append("")
    lines.append(f"Slopes: least-squares fits of log(value) against log(m) over m = "
                 f"{', '.join(_fmt(w) for w in sorted(s.width.unique()))}; the paper's orders "
                 "correspond to slopes -1/2 (O(1/sqrt(m))) and 0 (O(1), Θ(1)).  ‖H‖ and ‖∇f‖ are "
                 "maxima over the probe inputs; ΔK = ‖K(w_T) - K(w₀)‖_F / ‖K(w₀)‖_F at the end of "
                 "training.")
    return "\n".join(lines) + "\n"


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    s = summary(metrics)
    md = table_markdown(metrics)
    (Path(out_dir) / f"{cfg.id}.md").write_text(f"# {cfg.title} ({cfg.scale} scale)\n\n" + md)
    fig = plotting.plt.figure(figsize=(11, 6.4))
    grid = fig.add_gridspec(2, 2, height_ratios=[2.2, 1])
    ax_h, ax_g = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    for cls in [c for c in CLASSES if c in set(s.cls)]:
        g = s[s.cls == cls]
        label = PAPER[cls][0] + (f" ($m_b$ = {int(cfg.bottleneck_width)})" if cls == "bottleneck" else "")
        if cls == "nonlinear":
            label += f" ({cfg.nonlinear_output})"
        ax_h.plot(g.width, g.hess_init, "o-", color=COLORS[cls], ms=4, label=label + r", $w_0$")
        ax_h.plot(g.width, g.hess_path, "s--", color=COLORS[cls], ms=3, mfc="none", lw=0.8,
                  label="  max along the GD path")
        ax_g.plot(g.width, g.grad_init, "o-", color=COLORS[cls], ms=4, label=label)
    lin = s[s.cls == "linear"]
    if len(lin) > 1:
        m = np.asarray(lin.width, float)
        ax_h.plot(m, float(lin.hess_init.iloc[0]) * np.sqrt(m[0] / m), "k:", lw=1,
                  label=r"$\propto m^{-1/2}$ (Table 1)")
    ax_h.set(xscale="log", yscale="log", xlabel="width m", ylabel=r"$\max_x \|H(w; x)\|$",
             title="Hessian spectral norm of the model (Lanczos on Hessian-vector products)")
    ax_h.legend(fontsize=6.5)
    ax_g.set(xscale="log", yscale="log", xlabel="width m", ylabel=r"$\max_x \|\nabla_w f(w_0; x)\|$",
             title=r"gradient norm $= \sqrt{K(x, x)}$ (NTK: $\Theta(1)$)")
    ax_g.set_ylim(0.1, 10)
    ax_g.legend(fontsize=6.5)
    ax_t = fig.add_subplot(grid[1, :])
    ax_t.axis("off")
    rows = [r.strip("|").split("|") for r in md.splitlines()[:2 + len(s.cls.unique())]]
    header, body = [c.strip() for c in rows[0]], [[c.strip() for c in r] for r in rows[2:]]
    table = ax_t.table(cellText=body, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    table.scale(1, 1.5)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
