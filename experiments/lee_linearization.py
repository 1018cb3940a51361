"""Lee et al. 2019, Figures 3, S8 and S2: a wide network against its linearization, trained side by side.

One finite network f (MLP or CNN) is drawn at theta_0 and trained by full-batch gradient descent (or
heavy-ball momentum) on MSE for a binary CIFAR-10 task with +-1 targets.  Its linearization
f_lin(theta) = f_0 + J_0 (theta - theta_0) (Eq. 5) is followed in one of two ways:

* ``linearized: closed_form`` (Figs. 3, S8): no training at all.  Outputs from Eqs. 9-11 (`dynamics:
  gd`, the discrete form of Sec. 2.1, exactly what GD on f_lin gives; `flow`: the continuous-time
  Eqs. 9-11 with t = step count; `momentum`: Eqs. S1-S2), and weights from Eq. 8, all with the
  empirical kernel Theta-hat_0 of this very network, and for comparison the outputs again with the
  analytic infinite-width kernel Theta (`ntkrepro.kernels.fc`; for the standard parameterization
  n * lim (1/n) J J^T, Eq. S42, at the network's width).
* ``linearized: direct`` (Fig. S2): f_lin is trained with the same optax optimizer, loss and steps as
  the network (`ntkrepro.linearize.make_train_step`); the closed form with Theta-hat_0 is still
  evaluated (it must coincide with direct training) for the RMSE pane.  For the tanh CNN no analytic
  kernel is available in the core: the RMSE pane shows the empirical kernel only.

Loss: the network and f_lin are trained on ``loss: mean`` = 1/(2N) sum (f - y)^2 (the per-example
average, `ntkrepro.linearize.mse_loss`) or ``total`` (the paper's Eq. 2 sum); the closed forms get the
same `loss_scale`.  The plots show the average loss 1/(2N) sum (f - y)^2 (footnote 6).

Metrics (tidy): ``quantity`` in {output, weight, loss, accuracy, rmse, weight_rel_error,
output_rel_error}, ``model`` in {network, linearized, linearized_analytic, linearized_closed_form},
``split`` in {train, test}, ``step``, ``index`` (data point / weight), ``kernel`` (empirical /
analytic), ``value``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

from experiments.lee_common import record_steps, rmse as _rmse

from ntkrepro import claims as C
from ntkrepro import data, dynamics, kernels, plotting
from ntkrepro.convnet import ConvNet
from ntkrepro.empirical import layerwise_ntk, mlp_ntk
from ntkrepro.errors import ConfigError
from ntkrepro.linearize import linearize, make_train_step, mse_loss, total_loss
from ntkrepro.manifest import record_data
from ntkrepro.nets import activation_fn, check_parameterization, init_params, make_mlp

MODELS = ("mlp", "cnn")
LINEARIZED = ("closed_form", "direct")
DYNAMICS = ("gd", "flow", "momentum")
LOSSES = ("mean", "total")


# ----------------------------------------------------------------------------------------------
# settings, data, model


def _choice(cfg, key, choices, default=None):
    value = cfg.get(key, default)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got '{value}'; "
                          f"set figure.paper.{key}")
    return value


def learning_rate(cfg) -> float:
    """eta; with `lr_per_width` the standard-parameterization eta_std = eta_0 / n (App. F, Eq. S37)."""
    lr = float(cfg.lr)
    return lr / int(cfg.width) if cfg.get("lr_per_width", False) else lr


def _pool(x: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool NHWC images by `factor` (1 = unchanged)."""
    if factor == 1:
        return x
    n, h, w, c = x.shape
    if h % factor or w % factor:
        raise ConfigError(f"image_pool={factor} must divide the image size {h}x{w}")
    return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def load_data(cfg, dtype):
    """Binary CIFAR-10 (or any `data.prepare` task) train and test sets, recorded in the manifest."""
    model = cfg.model
    out = {}
    for split, n in (("train", int(cfg.n_train)), ("test", int(cfg.n_test))):
        ds = data.prepare(cfg.dataset, split=split, n=n, classes=list(cfg.classes),
                          selection=cfg.selection, flatten=False, standardize=cfg.standardize,
                          targets=cfg.targets, source=cfg.data.source, root=cfg.data.root,
                          seed=int(cfg.seed))
        x = np.asarray(ds.x, np.float64)
        if model == "cnn":
            x = _pool(x, int(cfg.get("image_pool", 1)))
            if int(cfg.get("image_pool", 1)) > 1 and cfg.standardize == "image":  # keep unit variance
                flat = x.reshape(len(x), -1)
                flat = (flat - flat.mean(1, keepdims=True)) / np.maximum(flat.std(1, keepdims=True), 1e-8)
                x = flat.reshape(x.shape)
        else:
            x = x.reshape(len(x), -1)
        y = np.asarray(ds.y, np.float64)
        record_data(f"{cfg.dataset}-{split}", ds.info["source"], [x, y], n=n,
                    classes=list(cfg.classes), standardize=cfg.standardize, targets=cfg.targets,
                    image_pool=int(cfg.get("image_pool", 1)))
        out[split] = (jnp.asarray(x, dtype), jnp.asarray(y, dtype))
    return out


def build_model(cfg):
    check_parameterization(cfg.parameterization)
    activation_fn(cfg.activation)
    if cfg.model == "mlp":
        return make_mlp(width=int(cfg.width), depth=int(cfg.depth), out_dim=1,
                        activation=cfg.activation, w_var=float(cfg.w_var), b_var=float(cfg.b_var),
                        parameterization=cfg.parameterization)
    return ConvNet(channels=int(cfg.width), n_conv=int(cfg.depth), pooling=cfg.get("pooling", "gap"),
                   out_dim=1, w_var=float(cfg.w_var), b_var=float(cfg.b_var),
                   activation=cfg.activation, parameterization=cfg.parameterization)


def empirical_kernel(cfg, model, params, x1, x2=None) -> np.ndarray:
    """Theta-hat_0 = J_0(x1) J_0(x2)^T in float64 (layer by layer, no Jacobian)."""
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
    x1 = jnp.asarray(x1, jnp.float64)
    x2 = None if x2 is None else jnp.asarray(x2, jnp.float64)
    if cfg.model == "mlp":
        return np.asarray(mlp_ntk(model, p64, x1, x2), np.float64)
    specs = model.layer_specs(tuple(x1.shape))
    return np.asarray(layerwise_ntk(model, p64, x1, x2, layers=specs), np.float64)


def analytic_kernel(cfg, x_train, x_test):
    """(Theta(X, X), Theta(X*, X)) of the infinite-width MLP in the units of the dynamics."""
    x = jnp.asarray(np.concatenate([np.asarray(x_train), np.asarray(x_test)]), jnp.float64)
    k = kernels.fc(x, depth=int(cfg.depth), activation=cfg.activation, w_var=float(cfg.w_var),
                   b_var=float(cfg.b_var), parameterization=cfg.parameterization,
                   width=float(cfg.width))
    theta = np.asarray(k.ntk, np.float64)
    if cfg.parameterization == "standard":  # fc gives lim (1/n) J J^T (Eq. S42); GD sees J J^T
        theta = theta * float(cfg.width)
    n = len(x_train)
    return theta[:n, :n], theta[n:, :n]


def closed_form(kind, theta_tt, theta_st, f0_tr, f0_te, y, *, lr, steps, momentum, loss_scale):
    kw = dict(theta_test_train=theta_st, f0_test=f0_te, loss_scale=loss_scale)
    if kind == "gd":
        return dynamics.gradient_descent_mse(theta_tt, f0_tr, y, lr=lr, steps=steps, **kw)
    if kind == "flow":
        return dynamics.gradient_flow_mse(theta_tt, f0_tr, y, lr=lr, times=steps, **kw)
    return dynamics.momentum_mse(theta_tt, f0_tr, y, lr=lr, momentum=momentum, steps=steps, **kw)


# ----------------------------------------------------------------------------------------------
# run


def _acc(f, y) -> float:
    return float(np.mean(np.sign(f) == np.sign(y)))


def _loss(f, y) -> float:
    with np.errstate(all="ignore"):
        return float(0.5 * np.mean(np.sum((np.asarray(f, np.float64) - y) ** 2, axis=-1)))


def _train(apply_fn, params0, x_tr, y_tr, x_te, optimizer, loss, steps, weight_idx, desc):
    """Full-batch training; outputs (train, test) and tracked weights at every recorded step.

    Returns (f_train (T, N, 1), f_test (T, M, 1), weights (T, n_w), final params).  A diverging run
    keeps going (inf / nan values are recorded as they are)."""
    step_fn = make_train_step(apply_fn, loss, optimizer)
    predict = jax.jit(apply_fn)
    params, state = params0, optimizer.init(params0)
    record = set(int(s) for s in steps)
    x_all, n = jnp.concatenate([x_tr, x_te]), len(x_tr)  # one compiled prediction for both sets
    f_tr, f_te, ws = [], [], []
    for s in tqdm(range(int(steps[-1]) + 1), desc=desc, disable=None, mininterval=2):
        if s in record:
            f = np.asarray(predict(params, x_all), np.float64)
            f_tr.append(f[:n])
            f_te.append(f[n:])
            ws.append(np.asarray(ravel_pytree(params)[0][weight_idx], np.float64))
        if s < steps[-1]:
            params, state, _ = step_fn(params, state, x_tr, y_tr)
    return np.stack(f_tr), np.stack(f_te), np.stack(ws), params


def _closed_form_weights(apply_fn, params0, x_tr, theta_tt, y, f0_tr, *, kind, lr, steps, momentum,
                         loss_scale, weight_idx, chunk=4):
    """Eq. 8 weights at every recorded step: the tracked subset (T, n_w) and the final flat vector."""
    dyn = {"gd": "gd", "flow": "flow", "momentum": "momentum"}[kind]
    p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params0)
    x64 = jnp.asarray(x_tr, jnp.float64)
    rows, last = [], None
    for i in range(0, len(steps), chunk):
        times = steps[i:i + chunk]
        tree = dynamics.weights_mse(apply_fn, p64, x64, theta_tt, y, lr=lr, times=times,
                                    f0_train=f0_tr, dynamics=dyn, momentum=momentum,
                                    loss_scale=loss_scale)
        flat = jax.vmap(lambda t: ravel_pytree(t)[0])(tree)
        rows.append(np.asarray(flat[:, weight_idx], np.float64))
        last = np.asarray(flat[-1], np.float64)
    return np.concatenate(rows), last


class _Apply:
    """`apply_fn(params, x)` of a Flax module (hashable wrapper so it can be reused)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, params, x):
        return self.module.apply({"params": params}, x)


def run(cfg) -> pd.DataFrame:
    model_kind = _choice(cfg, "model", MODELS)
    lin_kind = _choice(cfg, "linearized", LINEARIZED)
    dyn_kind = _choice(cfg, "dynamics", DYNAMICS)
    loss_kind = _choice(cfg, "loss", LOSSES, "mean")
    momentum = float(cfg.get("momentum", 0.0) or 0.0)
    if dyn_kind == "momentum" and momentum <= 0:
        raise ConfigError("dynamics=momentum needs momentum > 0; set figure.paper.momentum")
    dtype = jnp.float64 if str(cfg.get("train_dtype", "float64")) == "float64" else jnp.float32
    sets = load_data(cfg, dtype)
    (x_tr, y_tr), (x_te, y_te) = sets["train"], sets["test"]
    y_tr_np, y_te_np = np.asarray(y_tr, np.float64), np.asarray(y_te, np.float64)

    module = build_model(cfg)
    apply_fn = _Apply(module)
    key = jax.random.PRNGKey(int(cfg.seed))
    k_init, k_pick = jax.random.split(key)
    params0 = init_params(module, k_init, x_tr[:1])
    flat0, _ = ravel_pytree(params0)
    n_params = int(flat0.size)
    rng = np.random.default_rng(int(cfg.seed))
    weight_idx = np.sort(rng.choice(n_params, size=min(int(cfg.n_show_weights), n_params),
                                    replace=False))
    lr = learning_rate(cfg)
    steps = record_steps(int(cfg.steps), int(cfg.record_points))
    loss_scale = "mean" if loss_kind == "mean" else "total"
    loss = mse_loss if loss_kind == "mean" else total_loss(mse_loss)
    optimizer = optax.sgd(lr, momentum=momentum if momentum > 0 else None)

    # the network, trained
    f_tr, f_te, w_net, params_T = _train(apply_fn, params0, x_tr, y_tr, x_te, optimizer, loss, steps,
                                         weight_idx, f"{cfg.id} network")
    f0_tr, f0_te = f_tr[0], f_te[0]

    # its linearization
    n_tr = len(x_tr)  # one kernel over train + test (one compilation), then its blocks
    theta = empirical_kernel(cfg, module, params0, jnp.concatenate([x_tr, x_te]))
    theta_tt, theta_st = theta[:n_tr, :n_tr], theta[n_tr:, :n_tr]
    lin = {}
    traj = closed_form(dyn_kind, theta_tt, theta_st, f0_tr, f0_te, y_tr_np, lr=lr, steps=steps,
                       momentum=momentum, loss_scale=loss_scale)
    if lin_kind == "closed_form":
        w_lin, flat_lin_T = _closed_form_weights(apply_fn, params0, x_tr, theta_tt, y_tr_np, f0_tr,
                                                 kind=dyn_kind, lr=lr, steps=steps,
                                                 momentum=momentum, loss_scale=loss_scale,
                                                 weight_idx=weight_idx)
        lin["linearized"] = (traj.train, traj.test)
    else:
        f_lin = linearize(apply_fn, params0)
        l_tr, l_te, w_lin, lin_T = _train(f_lin, params0, x_tr, y_tr, x_te, optimizer, loss, steps,
                                          weight_idx, f"{cfg.id} linearized")
        flat_lin_T = np.asarray(ravel_pytree(lin_T)[0], np.float64)
        lin["linearized"] = (l_tr, l_te)
        lin["linearized_closed_form"] = (traj.train, traj.test)
    if cfg.get("analytic_kernel", model_kind == "mlp"):
        if model_kind != "mlp":
            raise ConfigError("analytic_kernel is available for model=mlp only (no analytic kernel "
                              "for this CNN in the core); set figure.paper.analytic_kernel=false")
        a_tt, a_st = analytic_kernel(cfg, np.asarray(x_tr), np.asarray(x_te))
        ta = closed_form(dyn_kind, a_tt, a_st, f0_tr, f0_te, y_tr_np, lr=lr, steps=steps,
                         momentum=momentum, loss_scale=loss_scale)
        lin["linearized_analytic"] = (ta.train, ta.test)

    rows = []
    n_out = int(cfg.n_show_outputs)
    models = {"network": (f_tr, f_te), **lin}
    for t, s in enumerate(steps):
        s = int(s)
        for name, (ftr, fte) in models.items():
            for split, f, y in (("train", ftr[t], y_tr_np), ("test", fte[t], y_te_np)):
                common = dict(step=s, model=name, split=split)
                rows.append(dict(quantity="loss", value=_loss(f, y), **common))
                rows.append(dict(quantity="accuracy", value=_acc(f, y), **common))
                for i in range(min(n_out, len(f))):
                    rows.append(dict(quantity="output", index=i, target=float(y[i, 0]),
                                     value=float(f[i, 0]), **common))
                if name != "network":
                    ref = f_tr[t] if split == "train" else f_te[t]
                    kern = "analytic" if name == "linearized_analytic" else "empirical"
                    rows.append(dict(quantity="rmse", kernel=kern, value=_rmse(f, ref), **common))
        for name, w in (("network", w_net), ("linearized", w_lin)):
            for j, (idx, v) in enumerate(zip(weight_idx, w[t])):
                rows.append(dict(quantity="weight", model=name, step=s, index=int(idx),
                                 value=float(v - w[0][j])))
    # summaries at the end of training (claims)
    final = int(steps[-1])
    flat_net_T = np.asarray(ravel_pytree(params_T)[0], np.float64)
    flat0 = np.asarray(flat0, np.float64)
    with np.errstate(all="ignore"):
        rows.append(dict(quantity="weight_rel_error", model="linearized", step=final,
                         value=float(np.linalg.norm(flat_net_T - flat_lin_T)
                                     / np.linalg.norm(flat_net_T - flat0))))
        for split, fn in (("train", f_tr), ("test", f_te)):
            fl = models["linearized"][0 if split == "train" else 1]
            move = np.sqrt(np.mean((fn[-1] - fn[0]) ** 2))
            dev = max(_rmse(a, b) for a, b in zip(fn, fl))
            rows.append(dict(quantity="output_rel_error", model="linearized", split=split,
                             step=final, value=float(dev / move)))
            if "linearized_closed_form" in models:  # direct training vs the closed form
                fc = models["linearized_closed_form"][0 if split == "train" else 1]
                dev = max(_rmse(a, b) for a, b in zip(fc, fl))
                rows.append(dict(quantity="output_rel_error", model="closed_form_vs_direct",
                                 split=split, step=final, value=float(dev / move)))
    rows.append(dict(quantity="n_params", value=float(n_params), step=0))
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# claims


_q = C.select


def _series(metrics, quantity, **sel) -> pd.Series:
    m = _q(metrics, quantity, **sel).sort_values("step")
    return pd.Series(m.value.to_numpy(float), index=m.step.to_numpy(int))


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol = cfg.claims
    out = []
    final = int(metrics.step.max())
    # training really happened (otherwise agreement is trivial)
    l_net = _series(metrics, "loss", model="network", split="train")
    out.append(C.below("the network trains: train loss falls",
                       f"train loss at step {final} / at step 0", float(l_net.iloc[-1] / l_net.iloc[0]),
                       tol.loss_drop))
    for split in ("train", "test"):
        v = _q(metrics, "output_rel_error", model="linearized", split=split).value
        out.append(C.below(f"{split} outputs of the network and its linearization agree",
                           f"max_t RMSE(f_t, f_lin_t) / RMS(f_T - f_0), {split} points",
                           float(v.iloc[0]) if len(v) else math.nan, tol.output_rel_error))
    # losses agree: max over time of |L_net - L_lin| relative to the initial loss
    for split in ("train", "test"):
        a = _series(metrics, "loss", model="network", split=split)
        b = _series(metrics, "loss", model="linearized", split=split)
        out.append(C.below(f"{split} loss of the network and its linearization agree",
                           f"max_t |L_net - L_lin| / L_net(0), {split}",
                           float(np.max(np.abs(a - b)) / a.iloc[0]), tol.loss_rel_error))
    if "accuracy_diff" in tol:
        for split in ("train", "test"):
            a = _series(metrics, "accuracy", model="network", split=split)
            b = _series(metrics, "accuracy", model="linearized", split=split)
            out.append(C.below(f"{split} accuracy of the network and its linearization agree",
                               f"max_t |acc_net - acc_lin|, {split}", float(np.max(np.abs(a - b))),
                               tol.accuracy_diff))
    w = _q(metrics, "weight_rel_error").value
    out.append(C.below("weights of the network and its linearization are similar",
                       f"||theta_T - theta_lin_T|| / ||theta_T - theta_0|| (all weights, step {final})",
                       float(w.iloc[0]) if len(w) else math.nan, tol.weight_rel_error))
    emp = _series(metrics, "rmse", model="linearized", split="test")
    if len(_q(metrics, "rmse", model="linearized_analytic")):
        ana = _series(metrics, "rmse", model="linearized_analytic", split="test")
        out.append(C.below("the empirical kernel Theta-hat_0 predicts the network better than the "
                           "analytic Theta", f"test RMSE(empirical) / RMSE(analytic) at step {final}",
                           float(emp.iloc[-1] / ana.iloc[-1]), tol.kernel_rmse_ratio))
    for split in ("train", "test"):
        v = _q(metrics, "output_rel_error", model="closed_form_vs_direct", split=split).value
        if len(v):
            out.append(C.below(f"training f_lin directly gives the closed-form dynamics (Eqs. S1-S2 with "
                               f"Theta-hat_0), {split} points",
                               f"max_t RMSE(direct, closed form) / RMS(f_T - f_0), {split}",
                               float(v.iloc[0]), tol.closed_form_vs_direct))
    return out


# ----------------------------------------------------------------------------------------------
# plot

STYLE = {"network": dict(ls="-", lw=1.2), "linearized": dict(ls="--", lw=1.2),
         "linearized_analytic": dict(ls=":", lw=1.2), "linearized_closed_form": dict(ls=":", lw=1.2)}
NAMES = {"network": "NN", "linearized": "linearized (emp. kernel)",
         "linearized_analytic": "linearized (analytic kernel)",
         "linearized_closed_form": "closed form (emp. kernel)"}


def _xlog(ax):
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.set_xlabel("t (steps)")


def _outputs(ax, metrics, splits, title):
    out = _q(metrics, "output")
    cols = plotting.colors(max(1, out["index"].nunique() * len(splits)))
    c = 0
    for split in splits:
        for i in sorted(_q(out, "output", split=split)["index"].unique()):
            for name in ("network", "linearized"):
                g = _q(out, "output", split=split, model=name)
                g = g[g["index"] == i].sort_values("step")
                ax.plot(g.step, g.value, color=cols[c], **STYLE[name])
            c += 1
    ax.plot([], [], "k-", label="NN")
    ax.plot([], [], "k--", label="linearized")
    ax.set(ylabel="output f(x)", title=title)
    _xlog(ax)
    ax.legend()


def _weights(ax, metrics):
    w = _q(metrics, "weight")
    idx = sorted(w["index"].unique())
    for color, i in zip(plotting.colors(len(idx)), idx):
        for name in ("network", "linearized"):
            g = _q(w, "weight", model=name)
            g = g[g["index"] == i].sort_values("step")
            ax.plot(g.step, g.value, color=color, **STYLE[name])
    ax.plot([], [], "k-", label="NN")
    ax.plot([], [], "k--", label="linearized")
    ax.set(ylabel=r"$\omega_t - \omega_0$", title="individual weights")
    _xlog(ax)
    ax.legend()


def _curves(ax, metrics, quantity, ylabel, title, log=False):
    for split, color in (("train", "tab:blue"), ("test", "tab:red")):
        for name in ("network", "linearized"):
            g = _q(metrics, quantity, model=name, split=split).sort_values("step")
            ax.plot(g.step, g.value, color=color, label=f"{split} {NAMES[name]}", **STYLE[name])
    ax.set(ylabel=ylabel, title=title)
    if log:
        ax.set_yscale("log")
    _xlog(ax)
    ax.legend()


def _rmse_pane(ax, metrics):
    for name, color in (("linearized", "tab:blue"), ("linearized_analytic", "tab:orange"),
                        ("linearized_closed_form", "tab:green")):
        g = _q(metrics, "rmse", model=name, split="test").sort_values("step")
        if len(g):
            label = {"linearized": r"empirical $\hat\Theta_0$" + (" (direct training)"
                                                                   if len(_q(metrics, "rmse", model="linearized_closed_form"))
                                                                   else ""),
                     "linearized_analytic": r"analytic $\Theta$",
                     "linearized_closed_form": r"closed form, empirical $\hat\Theta_0$"}[name]
            ls = "-" if name != "linearized_closed_form" else "--"
            ax.plot(g.step, g.value, ls, color=color, label=label)
    ax.set(ylabel="RMSE(NN, linearized), test", title="RMSE between the two models (test)")
    ax.set_yscale("log")
    _xlog(ax)
    ax.legend()


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    metrics = metrics.copy()
    if cfg.get("layout", "fig3") == "fig3":  # Fig. 3 / S2: outputs, weights, loss, RMSE
        fig, axes = plotting.subplots(1, 4, width=3.3, height=3.0)
        _outputs(axes[0][0], metrics, ("train", "test"), "outputs, train and test points")
        _weights(axes[0][1], metrics)
        _curves(axes[0][2], metrics, "loss", "loss", "train and test loss", log=True)
        _rmse_pane(axes[0][3], metrics)
    else:  # Fig. S8: train outputs, test outputs, weights / loss, accuracy, RMSE
        fig, axes = plotting.subplots(2, 3, width=3.4, height=2.9)
        _outputs(axes[0][0], metrics, ("train",), "outputs, train points")
        _outputs(axes[0][1], metrics, ("test",), "outputs, test points")
        _weights(axes[0][2], metrics)
        _curves(axes[1][0], metrics, "loss", "loss", "train and test loss", log=True)
        _curves(axes[1][1], metrics, "accuracy", "accuracy", "train and test accuracy")
        _rmse_pane(axes[1][2], metrics)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
