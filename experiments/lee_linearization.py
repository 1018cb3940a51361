"""Lee et al. 2019, Figures 3, S8 and S2: a wide network against its linearization, trained side by side.

One finite network f (MLP or CNN, `ntkrepro.models.ModelSpec`) is drawn at theta_0 and trained by
full-batch gradient descent (or heavy-ball momentum) on MSE for a binary CIFAR-10 task with +-1
targets (`ntkrepro.train.fit`).  Its linearization f_lin(theta) = f_0 + J_0 (theta - theta_0)
(Eq. 5) is followed in one of two ways:

* ``linearized: closed_form`` (Figs. 3, S8): no training at all.  Outputs from Eqs. 9-11 (`dynamics:
  gd`, the discrete form of Sec. 2.1, exactly what GD on f_lin gives; `flow`: the continuous-time
  Eqs. 9-11 with t = step count; `momentum`: Eqs. S1-S2), and weights from Eq. 8, all with the
  empirical kernel Theta-hat_0 of this very network, and for comparison the outputs again with the
  analytic infinite-width kernel Theta (`ModelSpec.analytic`, `kernels.fc`; for the standard
  parameterization n * lim (1/n) J J^T, Eq. S42, at the network's width).
* ``linearized: direct`` (Fig. S2): f_lin is trained with the network's optimizer, loss and steps
  (`Trainer.linearization`); the closed form with Theta-hat_0 is still evaluated (it must coincide
  with direct training) for the RMSE pane.  For the tanh CNN no analytic kernel is available in the
  core: the RMSE pane shows the empirical kernel only.

Loss: ``loss: mean`` = 1/(2N) sum (f - y)^2 (`train.LOSSES["mse"]`) or ``total`` (the paper's Eq. 2
sum, ``mse_total``); the closed forms get the same `loss_scale`.  The plots show the average loss
1/(2N) sum (f - y)^2 (footnote 6).

Sweep points (`points`): the models, {network, linearized, linearized_closed_form (direct only),
linearized_analytic (with `analytic_kernel`)}; each starts from theta_0 = init(seed) alone, so a
split run computes them on separate jobs.  Everything comparing two models (RMSE, output and weight
deviations) is computed from the collected metrics (`agreement`, `weight_rel_error`).

Metrics (tidy): ``quantity`` in {output (every train and test point), loss, accuracy, weight (the
shown weights' omega_t - omega_0), weight_final (theta_T of `weights_per_array` random entries of
every parameter array, with `initial` theta_0 and `stratum` = array size / entries drawn), n_params},
``model``, ``split`` in {train, test}, ``step``, ``index``, ``value``.

Mutations (tests/test_mutations.py only): `MUTATIONS`.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree

from ntkrepro import claims as C
from ntkrepro import costs, dynamics, models, plotting, precision, tasks
from ntkrepro.errors import ConfigError
from ntkrepro.train import Trainer, fit_side_by_side, log_steps, prefer_host_loop, rmse

MODELS = ("mlp", "cnn")
LINEARIZED = ("closed_form", "direct")
DYNAMICS = ("gd", "flow", "momentum")
LOSSES = {"mean": "mse", "total": "mse_total"}
CITE = {"lee-3": "Lee et al. 2019, Sec. 3 and Fig. 3 caption", "lee-s8": "Lee et al. 2019, App. F and Fig. S8 caption",
        "lee-s2": "Lee et al. 2019, Fig. S2 caption (panes as in Fig. 3)"}
MUTATIONS = {  # deliberately wrong variants, for tests/test_mutations.py only (`mutation=<name>`)
    "expansion_redrawn": "the linearization is taken at a re-drawn theta_0' (another initialisation), not at "
                         "the network's theta_0",
    "lin_lr_doubled": "the linearization (closed form or directly trained) runs at twice the network's learning "
                      "rate (the 1/2 of the MSE gradient dropped on one side)"}


class Run(NamedTuple):
    """One model's trajectory at the recorded steps."""
    train: np.ndarray                 # outputs (T, N, 1)
    test: np.ndarray                  # outputs (T, M, 1)
    weights: np.ndarray | None = None  # the shown weights (T, n_w)
    final: np.ndarray | None = None    # all parameters at the last step, flat


class Setup(NamedTuple):
    """What every point shares: model, data, recorded steps, shown and sampled weights."""
    spec: models.ModelSpec
    x_train: jnp.ndarray
    y_train: np.ndarray
    x_test: jnp.ndarray
    y_test: np.ndarray
    steps: np.ndarray
    shown: np.ndarray                  # flat indices of the weights drawn in the figure
    sample: tuple                      # (flat indices, stratum weights) for the weight claim


# ----------------------------------------------------------------------------------------------
# settings


def _choice(cfg, key, choices, default=None):
    value = cfg.get(key, default)
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got '{value}'; "
                          f"set figure.paper.{key}")
    return value


def learning_rate(cfg, model: str = "network") -> float:
    """eta; with `lr_per_width` the standard-parameterization eta_std = eta_0 / n (App. F, Eq. S37)."""
    lr = float(cfg.lr) / (int(cfg.width) if cfg.get("lr_per_width", False) else 1)
    return 2 * lr if model != "network" and cfg.get("mutation") == "lin_lr_doubled" else lr


def _momentum(cfg) -> float:
    return float(cfg.get("momentum", 0.0) or 0.0)


def _spec(cfg) -> models.ModelSpec:
    _choice(cfg, "linearized", LINEARIZED)
    _choice(cfg, "loss", LOSSES, "mean")
    if _choice(cfg, "dynamics", DYNAMICS) == "momentum" and not _momentum(cfg) > 0:
        raise ConfigError("dynamics=momentum needs momentum > 0; set figure.paper.momentum")
    return models.from_config(cfg, arch=_choice(cfg, "model", MODELS), out_dim=1)


def _flat(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def _trained(cfg, model: str) -> bool:
    return model == "network" or (model == "linearized" and cfg.linearized == "direct")


def points(cfg) -> list[dict]:
    """The models, the network first (the most work): the units a split run computes separately."""
    names = ["network", "linearized"] + (["linearized_closed_form"] if cfg.linearized == "direct" else [])
    return [{"model": m} for m in names + (["linearized_analytic"] if cfg.get("analytic_kernel", False) else [])]


def initial_params(cfg, spec, model: str, x):
    """theta_0 from the seed alone, the same for every model (`mutation=expansion_redrawn`: the
    linearizations expand around a re-drawn theta_0')."""
    key, _ = jax.random.split(jax.random.PRNGKey(int(cfg.seed)))
    if model != "network" and cfg.get("mutation") == "expansion_redrawn":
        key = jax.random.fold_in(key, 1)
    return spec.init(key, x)


def weight_sample(params0, per_array: int, seed: int):
    """`per_array` random entries of every parameter array (all of a smaller one): their flat indices
    and stratum weights (array size / entries drawn), so sum_i stratum_i d_i^2 estimates ||d||^2
    without bias and without letting the few large readout moves drown in the hidden weights."""
    rng, idx, weight, start = np.random.default_rng(seed + 1), [], [], 0
    for leaf in jax.tree_util.tree_leaves(params0):
        m = min(per_array, leaf.size)
        idx.append(start + np.sort(rng.choice(leaf.size, size=m, replace=False)))
        weight.append(np.full(m, leaf.size / m))
        start += leaf.size
    return np.concatenate(idx), np.concatenate(weight)


def setup(cfg) -> Setup:
    spec, dt = _spec(cfg), precision.train_dtype(cfg)
    task = tasks.load(cfg.task, cfg.data, seed=int(cfg.seed))
    x_tr, x_te = (jnp.asarray(a, dt) for a in (task.x_train, task.x_test))
    params0 = initial_params(cfg, spec, "network", x_tr)
    n_par = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params0))
    rng = np.random.default_rng(int(cfg.seed))
    shown = np.sort(rng.choice(n_par, size=min(int(cfg.n_show_weights), n_par), replace=False))
    return Setup(spec, x_tr, np.asarray(task.y_train, np.float64), x_te, np.asarray(task.y_test, np.float64),
                 log_steps(int(cfg.steps), int(cfg.record_points)), shown,
                 weight_sample(params0, int(cfg.get("weights_per_array", 256)), int(cfg.seed)))


# ----------------------------------------------------------------------------------------------
# measure


def trainer(cfg, spec, model: str) -> Trainer:
    """The network's trainer or its linearization's (the same loss, optimizer and steps)."""
    return Trainer(spec.apply, loss=LOSSES[cfg.get("loss", "mean")], lr=learning_rate(cfg, model),
                   momentum=_momentum(cfg), linearized=model != "network")


def train(cfg, s: Setup, model: str, params0) -> Run:
    """The network, or its linearization trained directly, by `fit`.  A diverging run keeps going
    (inf / nan values are recorded as they are)."""
    tr, n = trainer(cfg, s.spec, model), len(s.x_train)
    res = fit_side_by_side({model: tr}, params0, s.x_train, jnp.asarray(s.y_train, s.x_train.dtype),
                           inputs={"all": jnp.concatenate([s.x_train, s.x_test])},  # one compiled prediction
                           observe=lambda t, st, v: {"weights": _flat(t.params(v))[s.shown]},
                           steps=int(s.steps[-1]), record_at=s.steps, track_loss=False,
                           host_loop=prefer_host_loop(s.spec.arch == "cnn"))[model]  # see `train`
    f = np.stack([rec["all"] for rec in res.records])
    return Run(f[:, :n], f[:, n:], np.stack([rec["weights"] for rec in res.records]), _flat(tr.params(res.state)))


def analytic_kernel(spec, x) -> np.ndarray:
    """Theta(x, x) of the infinite-width MLP in the units of the dynamics."""
    theta = np.asarray(spec.analytic(np.asarray(x)).ntk, np.float64)
    if spec.parameterization == "standard":  # Eq. S42 is lim (1/n) J J^T; GD sees J J^T
        theta = theta * float(spec.width)
    return theta


def closed_form(theta, n, f0, y, **kw):
    """Outputs on the first n (train) and the other (test) points of `theta` by Eqs. 9-11 / S1-S2."""
    return dynamics.outputs_mse(theta[:n, :n], f0[0], y, theta_test_train=theta[n:, :n], f0_test=f0[1], **kw)


def closed_form_weights(apply_fn, params0, x_tr, theta_tt, y, f0_tr, *, times, weight_idx, chunk=4, **kw):
    """Eq. 8 weights at every recorded step: the tracked subset (T, n_w) and the final flat vector."""
    p64, x64 = precision.cast(params0, jnp.float64), jnp.asarray(x_tr, jnp.float64)
    rows, last = [], None
    for i in range(0, len(times), chunk):
        tree = dynamics.weights_mse(apply_fn, p64, x64, theta_tt, y, times=times[i:i + chunk], f0_train=f0_tr, **kw)
        flat = jax.vmap(lambda t: ravel_pytree(t)[0])(tree)
        rows.append(np.asarray(flat[:, weight_idx], np.float64))
        last = np.asarray(flat[-1], np.float64)
    return np.concatenate(rows), last


def solve(cfg, s: Setup, model: str, params0) -> Run:
    """f_lin by the closed forms: with Theta-hat_0 (``linearized``, also its Eq. 8 weights; with
    ``linearized: direct`` as ``linearized_closed_form``) or with the analytic Theta."""
    n, x_all = len(s.x_train), jnp.concatenate([s.x_train, s.x_test])
    f0 = np.asarray(jax.jit(s.spec.apply)(params0, x_all), np.float64)   # as the network's step-0 record
    f0 = (f0[:n], f0[n:])
    kw = dict(lr=learning_rate(cfg, model), times=s.steps, dynamics=cfg.dynamics, momentum=_momentum(cfg),
              loss_scale=cfg.get("loss", "mean"))
    if model == "linearized_analytic":   # the CNN has none: `spec.analytic` says so
        theta = analytic_kernel(s.spec, x_all)
    else:   # Theta-hat_0 = J_0 J_0^T in float64 (layer by layer, no Jacobian), one kernel over train + test
        kt = precision.kernel_dtype()
        theta = np.asarray(s.spec.empirical_ntk(precision.cast(params0, kt), jnp.asarray(x_all, kt)), np.float64)
    traj = closed_form(theta, n, f0, s.y_train, **kw)
    if model != "linearized":
        return Run(traj.train, traj.test)
    return Run(traj.train, traj.test, *closed_form_weights(s.spec.apply, params0, s.x_train, theta[:n, :n],
                                                           s.y_train, f0[0], weight_idx=s.shown, **kw))


def run(cfg, subset=None) -> pd.DataFrame:
    """The rows of the models in `subset` (None: all); the parameter count comes with the network."""
    s = setup(cfg)
    rows = []
    for point in points(cfg) if subset is None else subset:
        model = point["model"]
        params0 = initial_params(cfg, s.spec, model, s.x_train)
        r = (train if _trained(cfg, model) else solve)(cfg, s, model, params0)
        rows += model_rows(s, model, r, _flat(params0))
        if model == "network":
            rows.append(dict(quantity="n_params", value=float(r.final.size), step=0))
    return pd.DataFrame(rows)


def cost(cfg, point) -> list[costs.Cost]:
    """One model: `steps` training steps and its outputs at every recorded step; or the kernel
    (empirical or analytic) and the closed forms (an eigendecomposition; Eq. 8: one J^T v a step)."""
    sh, dt, kt, spec, model = tasks.shapes(cfg.task), precision.train_dtype(cfg), precision.kernel_dtype(), \
        _spec(cfg), point["model"]
    records = len(log_steps(int(cfg.steps), int(cfg.record_points)))
    n, dims = sh["x_train"][0], sh["x_train"][1:]
    x_all = jax.ShapeDtypeStruct((n + sh["x_test"][0], *dims), dt if _trained(cfg, model) else kt)
    params = spec.param_shapes(x_all)
    if _trained(cfg, model):
        tr = trainer(cfg, spec, model)
        return costs.training(model, tr, spec, sh["x_train"], sh["y_train"], int(cfg.steps), dtype=dt) + \
            [costs.analyse(f"{model}: outputs", tr.model_output, params, params, x_all, calls=records)]
    if model == "linearized_analytic":
        return [costs.analyse("analytic kernel", lambda u: spec.analytic(u).ntk, x_all)]
    out = [costs.analyse("empirical kernel", lambda p, u: spec.empirical_ntk(p, u), params, x_all),
           costs.analyse("closed form: eigendecomposition", jnp.linalg.eigh, jax.ShapeDtypeStruct((n, n), kt))]
    if model == "linearized":
        x, v = jax.ShapeDtypeStruct((n, *dims), kt), jax.ShapeDtypeStruct((n, 1), kt)
        out.append(costs.analyse("Eq. 8 weights: J^T v", lambda p, u, w: jax.vjp(lambda q: spec.apply(q, u), p)[1](w),
                                 params, x, v, calls=records))
    return out


# ----------------------------------------------------------------------------------------------
# rows and what compares two models (from the collected metrics)


def _acc(f, y) -> float:
    return float(np.mean(np.sign(f) == np.sign(y)))


def _loss(f, y) -> float:
    with np.errstate(all="ignore"):
        return float(0.5 * np.mean(np.sum((np.asarray(f, np.float64) - y) ** 2, axis=-1)))


def model_rows(s: Setup, model: str, r: Run, flat0) -> list[dict]:
    """Per recorded step: loss, accuracy and every output; the shown weights' changes omega_t -
    omega_0; and the sampled weights at the last step (with theta_0 and their stratum weights)."""
    rows = []
    for t, step in enumerate(int(v) for v in s.steps):
        for split, f, y in (("train", r.train[t], s.y_train), ("test", r.test[t], s.y_test)):
            common = dict(step=step, model=model, split=split)
            rows += [dict(quantity="loss", value=_loss(f, y), **common),
                     dict(quantity="accuracy", value=_acc(f, y), **common)]
            rows += [dict(quantity="output", index=j, target=float(y[j, 0]), value=float(f[j, 0]), **common)
                     for j in range(len(f))]
        if r.weights is not None:
            rows += [dict(quantity="weight", model=model, step=step, index=int(i), value=float(v - v0))
                     for i, v, v0 in zip(s.shown, r.weights[t], r.weights[0])]
    if r.final is not None:
        idx, stratum = s.sample
        rows += [dict(quantity="weight_final", model=model, step=int(s.steps[-1]), index=int(i), stratum=float(m),
                      initial=float(flat0[i]), value=float(r.final[i])) for i, m in zip(idx, stratum)]
    return rows


def outputs(metrics: pd.DataFrame) -> pd.DataFrame:
    """Every output, one column per model, rows (split, step, index)."""
    return C.select(metrics, "output").set_index(["split", "step", "index", "model"]).value.unstack("model")


def agreement(metrics: pd.DataFrame, ref: str = "network") -> pd.DataFrame:
    """RMSE over the points of each model's outputs to `ref`'s, per split and step (model, split, step, value)."""
    wide, rows = outputs(metrics), []
    for (split, step), g in wide.groupby(level=["split", "step"]):
        rows += [dict(model=m, split=split, step=int(step), value=rmse(g[m], g[ref])) for m in g.columns if m != ref]
    return pd.DataFrame(rows)


def output_rel_error(metrics: pd.DataFrame, split: str, model: str = "linearized", ref: str = "network") -> float:
    """max_t RMSE(f_model, f_ref) / RMS(f_T - f_0) of the network on the split's points."""
    net = outputs(metrics).loc[split, "network"].unstack("step")
    move = rmse(net.iloc[:, -1], net.iloc[:, 0])
    gaps = agreement(metrics, ref)
    return float(gaps[(gaps.model == model) & (gaps.split == split)].value.max() / move)


def weight_rel_error(metrics: pd.DataFrame) -> float:
    """||theta_T - theta_lin_T|| / ||theta_T - theta_0|| over all weights, estimated from the
    per-array samples (stratum-weighted sums of squares)."""
    w = C.select(metrics, "weight_final")
    net, lin = (w[w.model == m].sort_values("index") for m in ("network", "linearized"))
    s, a = net.stratum.to_numpy(float), net.value.to_numpy(float)
    with np.errstate(all="ignore"):
        return float(np.sqrt(np.sum(s * (a - lin.value.to_numpy(float)) ** 2)
                             / np.sum(s * (a - net.initial.to_numpy(float)) ** 2)))


def _series(metrics, quantity, **sel) -> pd.Series:
    m = C.select(metrics, quantity, **sel).sort_values("step")
    return pd.Series(m.value.to_numpy(float), index=m.step.to_numpy(int))


def log_loss_gap(metrics: pd.DataFrame, split: str) -> float:
    """max |log10 L_net(t) - log10 L_lin(t)| over the second half of training on the log-time axis
    of the loss panes (recorded t >= sqrt(T))."""
    a, b = (_series(metrics, "loss", model=m, split=split) for m in ("network", "linearized"))
    late = a.index >= np.sqrt(a.index.max())
    with np.errstate(all="ignore"):
        return float(np.max(np.abs(np.log10(a[late].to_numpy() / b[late].to_numpy()))))


# ----------------------------------------------------------------------------------------------
# claims


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol, cite, final = cfg.claims, CITE.get(str(cfg.id), "Lee et al. 2019, Sec. 3"), int(metrics.step.max())
    l_net = _series(metrics, "loss", model="network", split="train")
    out = [C.below("the network trains: train loss falls (else agreement is trivial)",
                   f"train loss at step {final} / at step 0", float(l_net.iloc[-1] / l_net.iloc[0]), tol.loss_drop,
                   kind="check")]
    for split in ("train", "test"):
        out.append(C.below(f"{split} outputs of the network and its linearization agree",
                           f"max_t RMSE(f_t, f_lin_t) / RMS(f_T - f_0), {split} points",
                           output_rel_error(metrics, split), tol.output_rel_error, cite=cite))
    for split in ("train", "test"):
        out.append(C.below(f"{split} loss of the network and its linearization agree on the log-scale pane",
                           f"max |log10 L_net - log10 L_lin| over t in [sqrt(T), T], {split}",
                           log_loss_gap(metrics, split), tol.loss_log_gap, cite=cite))
    if "accuracy_diff" in tol:
        for split in ("train", "test"):
            a, b = (_series(metrics, "accuracy", model=m, split=split) for m in ("network", "linearized"))
            out.append(C.below(f"{split} accuracy of the network and its linearization agree",
                               f"max_t |acc_net - acc_lin|, {split}", float(np.max(np.abs(a - b))),
                               tol.accuracy_diff, cite=cite))
    out.append(C.below("weights of the network and its linearization are similar",
                       f"||theta_T - theta_lin_T|| / ||theta_T - theta_0|| (all weights, sampled per array, "
                       f"step {final})", weight_rel_error(metrics), tol.weight_rel_error, cite=cite))
    gaps = agreement(metrics).query("split == 'test' and step == @final").set_index("model").value
    if "linearized_analytic" in gaps:   # a statement of Fig. 3's caption; elsewhere our comparison
        out.append(C.below("the empirical kernel Theta-hat_0 predicts the network better than the analytic Theta",
                           f"test RMSE(empirical) / RMSE(analytic) at step {final}",
                           float(gaps["linearized"] / gaps["linearized_analytic"]), tol.kernel_rmse_ratio,
                           **(dict(cite=CITE["lee-3"]) if cfg.id == "lee-3" else dict(kind="check"))))
    if "linearized_closed_form" in gaps:
        out += [C.below(f"training f_lin directly gives the closed-form dynamics (Eqs. S1-S2 with Theta-hat_0), "
                        f"{split} points", f"max_t RMSE(direct, closed form) / RMS(f_T - f_0), {split}",
                        output_rel_error(metrics, split, "linearized_closed_form", "linearized"),
                        tol.closed_form_vs_direct, kind="check") for split in ("train", "test")]
    return out


# ----------------------------------------------------------------------------------------------
# plot

STYLE = {"network": dict(ls="-", lw=1.2), "linearized": dict(ls="--", lw=1.2)}
PAIR = {"network": ("NN", STYLE["network"]), "linearized": ("linearized", STYLE["linearized"])}


def _finish(ax, ylabel, title, log=False):
    ax.set(ylabel=ylabel, title=title, yscale="log" if log else "linear")
    plotting.step_axis(ax, xlabel="t (steps)")
    ax.legend()


def _outputs(ax, metrics, splits, title, n_show):
    out = C.select(metrics, "output")
    out = out[out["index"] < n_show]
    plotting.paired_curves(ax, out, [dict(split=s, index=i) for s in splits for i in range(n_show)], PAIR)
    _finish(ax, "output f(x)", title)


def _weights(ax, metrics):
    w = C.select(metrics, "weight")
    plotting.paired_curves(ax, w, [dict(index=i) for i in sorted(w["index"].unique())], PAIR)
    _finish(ax, r"$\omega_t - \omega_0$", "individual weights")


def _curves(ax, metrics, quantity, ylabel, title, log=False):
    plotting.split_curves(ax, C.select(metrics, quantity), {"network": ("NN", STYLE["network"]),
                                                            "linearized": ("linearized (emp. kernel)", STYLE["linearized"])})
    _finish(ax, ylabel, title, log)


def _rmse_pane(ax, metrics):
    gaps = agreement(metrics)
    direct = (gaps.model == "linearized_closed_form").any()
    lines = {"linearized": (r"empirical $\hat\Theta_0$" + (" (direct training)" if direct else ""), "-", "tab:blue"),
             "linearized_analytic": (r"analytic $\Theta$", "-", "tab:orange"),
             "linearized_closed_form": (r"closed form, empirical $\hat\Theta_0$", "--", "tab:green")}
    for name, (label, ls, color) in lines.items():
        g = gaps[(gaps.model == name) & (gaps.split == "test")].sort_values("step")
        if len(g):
            ax.plot(g.step, g.value, ls, color=color, label=label)
    _finish(ax, "RMSE(NN, linearized), test", "RMSE between the two models (test)", log=True)


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    n_show = int(cfg.n_show_outputs)
    if cfg.get("layout", "fig3") == "fig3":  # Fig. 3 / S2: outputs, weights, loss, RMSE
        fig, axes = plotting.subplots(1, 4, width=3.3, height=3.0)
        _outputs(axes[0][0], metrics, ("train", "test"), "outputs, train and test points", n_show)
        _weights(axes[0][1], metrics)
        _curves(axes[0][2], metrics, "loss", "loss", "train and test loss", log=True)
        _rmse_pane(axes[0][3], metrics)
    else:  # Fig. S8: train outputs, test outputs, weights / loss, accuracy, RMSE
        fig, axes = plotting.subplots(2, 3, width=3.4, height=2.9)
        _outputs(axes[0][0], metrics, ("train",), "outputs, train points", n_show)
        _outputs(axes[0][1], metrics, ("test",), "outputs, test points", n_show)
        _weights(axes[0][2], metrics)
        _curves(axes[1][0], metrics, "loss", "loss", "train and test loss", log=True)
        _curves(axes[1][1], metrics, "accuracy", "accuracy", "train and test accuracy")
        _rmse_pane(axes[1][2], metrics)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale)")
