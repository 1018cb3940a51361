"""Jacot, Gabriel & Hongler 2018, Sec. 6.1 (Figure 1): the NTK converges to a fixed limit.

Networks of Jacot's depth L (L - 1 hidden ReLU layers of width n, one output, Sec. 2 with
beta = 0.1: `ntkrepro.nets` NTK parameterization with w_var = 1, b_var = beta^2) are drawn
`ensemble` times per width.  Theta^(L)(x0, x) is evaluated for x0 = (1, 0) and x = (cos g, sin g)
at initialisation and after `steps` steps of full-batch gradient descent (learning rate 1.0) on the
cost C(f) = 1/2 E_pin (f - f*)^2 (the MEAN over the training points, Sec. 5) with f*(x) = x1 x2
on N(0, I_2) inputs.  The analytic limit Theta^(L)_inf (`ntkrepro.kernels.fc`) is the reference.
Kernels are computed layer by layer (`ntkrepro.empirical.mlp_ntk`) in float64; training runs in
`train_dtype` (float32 by default, for speed).

The helpers `jacot_model` and `train_gd` are shared with `jacot_function` and `jacot_pca`.
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
from ntkrepro.empirical import mlp_ntk
from ntkrepro.linearize import mse_loss
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params, make_mlp


# ----------------------------------------------------------------------------------------------
# shared helpers


def b_var(cfg) -> float:
    """Jacot's bias multiplier beta enters the NTK parameterization as sigma_b = beta."""
    return float(cfg.beta) ** 2


def jacot_model(cfg, width: int, depth: int | None = None):
    """Sec. 2 / Remark 1: h = W x / sqrt(n_l) + beta b, W, b ~ N(0, 1); `depth` hidden layers."""
    return make_mlp(width=int(width), depth=int(cfg.depth if depth is None else depth),
                    activation=cfg.activation, w_var=float(cfg.w_var), b_var=b_var(cfg),
                    parameterization=cfg.parameterization)


def analytic(cfg, x1, x2=None, depth: int | None = None):
    """Limiting NNGP Sigma^(L) and NTK Theta^(L)_inf (float64)."""
    return kernels.fc(np.asarray(x1, np.float64), None if x2 is None else np.asarray(x2, np.float64),
                      depth=int(cfg.depth if depth is None else depth), activation=cfg.activation,
                      w_var=float(cfg.w_var), b_var=b_var(cfg), parameterization=cfg.parameterization)


def to_dtype(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def train_dtype(cfg):
    return jnp.float64 if str(cfg.get("train_dtype", "float32")) == "float64" else jnp.float32


@partial(jax.jit, static_argnames=("model", "steps", "observe"))
def train_gd(model, params, x, y, *, lr, steps: int, observe=None, aux=None):
    """`steps` full-batch GD steps on 1/2 mean_i (f(x_i) - y_i)^2 (Jacot Sec. 5, empirical p_in).

    Returns (params after `steps` steps, per-step record): the record at step s is
    ``observe(f_s(x), y, aux)`` (default: the cost at step s), for s = 0 .. steps - 1, taken from
    the very forward pass that the gradient step uses (`observe` must be a module-level function,
    it is a static argument).  NaN / inf propagate; nothing raises.
    """
    def cost(p):
        f = model.apply({"params": p}, x)
        return mse_loss(f, y), f

    def body(p, _):
        (value, f), grad = jax.value_and_grad(cost, has_aux=True)(p)
        p = jax.tree_util.tree_map(lambda a, g: a - lr * g, p, grad)
        return p, (value if observe is None else observe(f, y, aux))

    return jax.lax.scan(body, params, None, length=steps)


# ----------------------------------------------------------------------------------------------
# Figure 1


def _train_set(cfg):
    rng = np.random.default_rng(cfg.seed)
    x = rng.standard_normal((int(cfg.n_train), 2))
    y = (x[:, 0] * x[:, 1])[:, None]
    record_data("train", f"synthetic N(0, I_2) inputs, f*(x) = x1 x2, n={cfg.n_train}, seed={cfg.seed}",
                [x, y])
    return x, y


def run(cfg) -> pd.DataFrame:
    gammas, xs = data.unit_circle(int(cfg.n_gamma))
    x0 = np.array([[1.0, 0.0]])
    record_data("circle", f"x0 = (1, 0) and {cfg.n_gamma} points (cos g, sin g), g in [-pi, pi]", [xs])
    x_tr, y_tr = _train_set(cfg)
    dt = train_dtype(cfg)
    x0_64, xs_64 = jnp.asarray(x0), jnp.asarray(xs)
    x_tr_t, y_tr_t = jnp.asarray(x_tr, dt), jnp.asarray(y_tr, dt)
    rows = []
    ref = np.asarray(analytic(cfg, x0, xs).ntk)[0]
    rows += [dict(quantity="ntk", source="analytic", width=np.nan, init=-1, step=0, gamma=g, value=v)
             for g, v in zip(gammas, ref)]
    key = jax.random.PRNGKey(cfg.seed)
    jobs = [(w, i) for w in cfg.widths for i in range(int(cfg.ensemble))]
    for width, init in tqdm(jobs, desc=cfg.id, disable=None):
        model = jacot_model(cfg, width)
        key, sub = jax.random.split(key)
        params = init_params(model, sub, x_tr_t)
        common = dict(source="network", width=int(width), init=init)
        snapshots = [(0, params)]
        params_t, losses = train_gd(model, params, x_tr_t, y_tr_t, lr=float(cfg.lr), steps=int(cfg.steps))
        snapshots.append((int(cfg.steps), params_t))
        for step, p in snapshots:
            theta = np.asarray(mlp_ntk(model, to_dtype(p, jnp.float64), x0_64, xs_64))[0]
            rows += [dict(quantity="ntk", step=step, gamma=g, value=v, **common)
                     for g, v in zip(gammas, theta)]
        final = float(mse_loss(model.apply({"params": params_t}, x_tr_t), y_tr_t))
        losses = np.asarray(losses, float)
        rows += [dict(quantity="train_loss", step=0, gamma=np.nan, value=losses[0], **common),
                 dict(quantity="train_loss", step=int(cfg.steps), gamma=np.nan, value=final, **common)]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# claims


def _curves(metrics, width, step) -> np.ndarray:
    """(ensemble, n_gamma) kernel curves of one width at one step."""
    m = metrics[(metrics.quantity == "ntk") & (metrics.source == "network") & (metrics.width == width)
                & (metrics.step == step)]
    return m.pivot(index="init", columns="gamma", values="value").to_numpy()


def summary(metrics) -> dict:
    """Per width: spread over inits at t=0, relative movement in training, mean's distance to the limit."""
    ref_m = metrics[(metrics.quantity == "ntk") & (metrics.source == "analytic")].sort_values("gamma")
    ref = ref_m.value.to_numpy()
    steps = sorted(metrics[metrics.source == "network"].step.unique())
    t0, t1 = steps[0], steps[-1]
    out = {}
    for w in sorted(metrics[metrics.source == "network"].width.unique()):
        a, b = _curves(metrics, w, t0), _curves(metrics, w, t1)
        out[int(w)] = dict(
            spread=float(np.mean(a.std(axis=0, ddof=1)) / np.mean(np.abs(ref))),
            move=float(np.mean(np.linalg.norm(b - a, axis=1) / np.linalg.norm(a, axis=1))),
            inflation=float(np.mean(b.mean(axis=0)) / np.mean(a.mean(axis=0))),
            mean_err=float(np.linalg.norm(a.mean(axis=0) - ref) / np.linalg.norm(ref)),
            # sampling noise of that mean: sqrt(sum_x var(x) / M) / ||Theta_inf||
            mean_noise=float(np.sqrt(a.var(axis=0, ddof=1).sum() / len(a)) / np.linalg.norm(ref)),
        )
    return out


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    s = summary(metrics)
    widths = sorted(s)
    lo_w, hi_w = widths[0], widths[-1]
    tol = cfg.claims
    clt = np.sqrt(lo_w / hi_w)
    out = [
        C.in_range(f"The NTK shows less variance for the wider network: spread ratio n={hi_w} / "
                   f"n={lo_w} follows the CLT rate sqrt(n_small / n_large) = {clt:.3g}",
                   "(std over inits of Theta(x0, x) at t=0, mean over x) ratio / sqrt(n_small/n_large)",
                   s[hi_w]["spread"] / s[lo_w]["spread"] / clt, *tol.spread_ratio_vs_clt),
        C.below(f"The NTK moves less during training for the wider network (n={hi_w} vs n={lo_w})",
                "ratio of mean ||Theta_T - Theta_0|| / ||Theta_0|| (wide / narrow)",
                s[hi_w]["move"] / s[lo_w]["move"], tol.move_ratio_max),
        C.above(f"After training the NTK of the narrow network (n={lo_w}) 'inflates'",
                "mean_x,inits Theta_T / mean_x,inits Theta_0", s[lo_w]["inflation"], tol.inflation_min),
    ]
    for w in widths:
        out.append(C.below(f"The mean NTK at t=0 (n={w}) matches the analytic limit Theta_inf up to the "
                           "sampling noise of the inits",
                           "||mean over inits - Theta_inf|| / (its sampling noise sqrt(sum_x var / M))",
                           s[w]["mean_err"] / s[w]["mean_noise"], tol.mean_err_z_max))
    out.append(C.below(f"The mean NTK at t=0 of the wider network (n={hi_w}) is close to Theta_inf",
                       "||mean over inits - Theta_inf|| / ||Theta_inf|| over the circle",
                       s[hi_w]["mean_err"], tol.mean_err_wide_max))
    return out


# ----------------------------------------------------------------------------------------------
# plot


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    fig, axes = plotting.subplots(1, 2, width=4.6, height=3.4)
    ax = axes[0][0]
    net = metrics[(metrics.quantity == "ntk") & (metrics.source == "network")]
    steps = sorted(net.step.unique())
    widths = sorted(net.width.unique())
    palette = {(widths[0], steps[0]): "tab:orange", (widths[0], steps[-1]): "tab:red",
               (widths[-1], steps[0]): "tab:cyan", (widths[-1], steps[-1]): "tab:blue"}
    for w in widths:
        for t in steps:
            curves = _curves(metrics, w, t)
            g = np.sort(net[(net.width == w) & (net.step == t)].gamma.unique())
            color = palette.get((w, t), "gray")
            for i, c in enumerate(curves):
                ax.plot(g, c, color=color, lw=0.7, alpha=0.8,
                        ls="-" if t == steps[0] else "--",
                        label=f"n = {int(w)}, t = {int(t)}" if i == 0 else None)
    ref = metrics[(metrics.quantity == "ntk") & (metrics.source == "analytic")].sort_values("gamma")
    ax.plot(ref.gamma, ref.value, "k:", lw=1.6, label=r"$n = \infty$ (analytic $\Theta_\infty$)")
    ax.set(xlabel=r"$\gamma$", ylabel=r"$\Theta^{(%d)}(x_0, x)$" % (int(cfg.depth) + 1), xlim=(-np.pi, np.pi),
           title=r"$x_0 = (1, 0)$, $x = (\cos\gamma, \sin\gamma)$; %d inits per width" % int(cfg.ensemble))
    ax.legend(loc="upper left")
    # right: summary of the claims
    ax = axes[0][1]
    s = summary(metrics)
    ws = np.array(sorted(s), float)
    ax.plot(ws, [s[int(w)]["spread"] for w in ws], "o-", label="spread over inits at t=0 (rel.)")
    ax.plot(ws, [s[int(w)]["move"] for w in ws], "s-", label=f"rel. change after t={int(steps[-1])}")
    ax.plot(ws, [s[int(w)]["mean_err"] for w in ws], "^-", label="mean at t=0 vs analytic (rel.)")
    ax.plot(ws, s[int(ws[0])]["spread"] * np.sqrt(ws[0] / ws), "k--", lw=0.8, label=r"$\propto n^{-1/2}$")
    ax.set(xscale="log", yscale="log", xlabel="width n", ylabel="relative size",
           title="summary over the inits")
    ax.legend()
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; depth L={int(cfg.depth) + 1}, "
                  f"{cfg.n_train} N(0,1) training inputs, f*=x1 x2, lr {cfg.lr})")
