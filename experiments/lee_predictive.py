"""Lee et al. 2019, Figure 2 and Figure S1: the predictive distribution of trained networks over time.

An ensemble of `ensemble` networks (3 hidden tanh layers of width `width`, sigma_w^2 = 1.5, no bias,
NTK parameterization) is trained by full-batch gradient descent (lr 0.5) with MSE on |D| = 128
binary CIFAR-10 images (airplane = +1, horse = -1, Sec. 3).  At each of `times` (gradient steps) the
outputs on x(alpha) = alpha x(1) + (1 - alpha) x(2), interpolating one airplane x(1) and one horse
x(2) of the training set, are recorded and summarised by the ensemble mean and standard deviation.
These are compared with, from the analytic kernels K (NNGP) and Theta (NTK) of the infinite network:

* the NTK-GP (Eqs. 14-15, `ntkrepro.dynamics.ntk_gp_mean_cov`): the distribution of the trained
  infinitely wide network at time t (Theorem 2.2) -- the blue band of Fig. 2;
* the NNGP readout-only dynamics (Eqs. S22-S23, `ntkrepro.dynamics.readout_mean_cov`): training only
  the last layer -- the red band; its t -> inf limit is the NNGP posterior (Eq. 13).

Loss normalisation.  The networks minimise the per-example average 1/(2N) sum (f - y)^2 (footnote 6:
the plots of Sec. 3 use the average loss; with the total loss of Eq. 2, eta = 0.5 gives
eta lambda_max(Theta) ~ 16 > 2 on these 128 images and gradient descent diverges), so every closed
form is evaluated with ``loss_scale="mean"`` (eta_eff = eta / N).  Time t of Eqs. 14-15 and S22-S23
is counted in gradient steps (f_{s+1} - f_s = -eta Theta grad L); at eta lambda_max / N ~ 0.12 the
discrete and the continuous solutions differ by < 0.15 ensemble standard errors.

Exact input projection (speed, no approximation).  All inputs (the 128 training images and every
x(alpha)) lie in the row space of the training matrix X (N = 128 < n0 = 3072).  With X = C Q^T, Q an
orthonormal n0 x N basis, the first layer sees x W1 = c (Q^T W1), Q^T W1 is again i.i.d. N(0, 1), and
the gradient X^T G = Q C^T G never leaves span(Q): training W1' = Q^T W1 on the coordinates c
(`models.span_coordinates`), with the NTK scale sigma_w / sqrt(n0) of the ORIGINAL fan-in n0
(``ModelSpec(input_fan_in=n0)``), gives exactly the outputs of the full network at every step
(tests/test_lee_predictive.py checks this).  The first layer costs N x n instead of n0 x n.

Claims (discrepancies in units of the ensemble's sampling noise).  With M ensemble members drawn from
the NTK-GP N(mu, sigma^2), the ensemble mean has standard error sigma / sqrt(M) and the ensemble
standard deviation (ddof 1) sigma / sqrt(2 (M - 1)).  Per time,

    D_mean = rms_alpha(mean_ens - mu) / (rms_alpha(sigma) / sqrt(M))
    D_std  = rms_alpha(std_ens - sigma) / (rms_alpha(sigma) / sqrt(2 (M - 1)))

have E[D^2] ~ 1 under the NTK-GP (any M); pooling over alpha with the rms keeps points where sigma ~ 0
(the training points late in training) from dividing by zero.  In the worst case (all alpha fully
correlated) D is |N(0, 1)| and D > 3.5 happens by chance with probability 5e-4 per test (less
correlation concentrates D near 1).  The same D against the NNGP readout prediction at the last
time must exceed the same level to count as a measurable difference.  Fig. S1 (view "functions")
adds the share of (function, alpha) pairs inside the NTK-GP 2-sigma band (0.954 for draws from it).

Split runs (`points`): the sweep points are chunks of `ensemble_chunk` ensemble members (one vmapped
`fit` each); member i is drawn from the key fold_in(PRNGKey(seed), i), so a member is the same
network however the ensemble is chunked or split over jobs.  The analytic rows (NTK-GP, NNGP, NNGP
posterior, kernel scalars) come with chunk 0.  The ensemble's mean and standard deviation are
computed from the members' rows when the claims and the figure are made (after collecting).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, tasks
from ntkrepro.dynamics import nngp_posterior, ntk_gp_mean_cov, readout_mean_cov
from ntkrepro.errors import ConfigError
from ntkrepro.manifest import record_data
from ntkrepro.train import Trainer, fit

ANALYTIC = ("ntk_gp", "nngp", "nngp_posterior")
BAND = {"ntk_gp": ("tab:blue", "NTK-GP, Eqs. 14-15"),
        "nngp": ("tab:red", "NNGP (readout only), Eqs. S22-S23")}
LOSS = {"mean": "mse", "total": "mse_total"}  # 1/(2N) sum (f - y)^2 (module docstring); Eq. 2
MUTATIONS = {  # deliberately wrong variants, for tests/test_mutations.py only (`mutation=<name>`)
    "closed_form_total_loss": "the NTK-GP and NNGP closed forms use the total loss of Eq. 2 (eta_eff = "
                              "eta) while the networks minimise the mean loss (eta / N)",
    "ntk_gp_with_nngp_kernel": "the NTK-GP of Eqs. 14-15 evaluated with the NNGP kernel K in place of "
                               "the NTK Theta",
}


# ----------------------------------------------------------------------------------------------
# Data


def load_path(cfg):
    """Binary CIFAR-10 training set (Sec. 3, `cfg.task`) and the interpolation path between its first
    example of each class: x(1) = first `classes[0]` (target +1), x(2) = first `classes[1]` (target -1).
    Returns (task, x(alpha) for every alpha, alphas)."""
    task = tasks.load(cfg.task, cfg.data, seed=cfg.seed, name="train")
    i1, i2 = (int(np.flatnonzero(task.labels_train == c)[0]) for c in (0, 1))
    lo, hi = cfg.alpha_range
    alphas = np.linspace(float(lo), float(hi), int(cfg.n_alpha))
    xs = alphas[:, None] * task.x_train[i1][None] + (1.0 - alphas[:, None]) * task.x_train[i2][None]
    record_data("interpolation", f"x(alpha) = alpha x[{i1}] + (1 - alpha) x[{i2}] (train indices), "
                f"alpha in [{lo}, {hi}], {len(alphas)} points", [alphas, xs])
    return task, xs, alphas


# ----------------------------------------------------------------------------------------------
# Networks


def draw_params(spec: models.ModelSpec, key, x, dtype):
    """N(0, 1) parameters (NTK parameterization, Eq. 1) of `spec` for inputs like x, from `key` split
    2 (L + 2) ways: layer l's weights from key 2l, its bias (if any) from key 2l + 1 (the draws of
    this module's earlier hand-written MLP, so the ensemble is the same)."""
    shapes = spec.param_shapes(x, dtype)
    keys = jax.random.split(key, 2 * (int(spec.depth) + 2))
    return {layer: {name: jax.random.normal(keys[2 * int(layer.split("_")[1]) + (name == "bias")],
                                            leaf.shape, dtype) for name, leaf in leaves.items()}
            for layer, leaves in shapes.items()}


def member_keys(seed: int, first: int, count: int):
    """PRNG keys of ensemble members first .. first + count - 1: member i's from (seed, i) only."""
    base = jax.random.PRNGKey(int(seed))
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(first, first + count))


def trainer_of(cfg, spec: models.ModelSpec) -> Trainer:
    """Full-batch gradient descent on the loss of `loss_scale` (module docstring)."""
    return Trainer(spec.apply, loss=LOSS[cfg.loss_scale], lr=float(cfg.lr))


def train_members(cfg, trainer: Trainer, spec: models.ModelSpec, c_train, y, c_test, times, first: int,
                  count: int):
    """Outputs (count, T, n_alpha) and training losses (count, T) of ensemble members first ..
    first + count - 1 at the step counts `times`, trained together (one vmapped `fit`)."""
    dtype = precision.train_dtype(cfg)
    x, y, xt = (jnp.asarray(a, dtype) for a in (c_train, y, c_test))
    params = jax.jit(jax.vmap(lambda k: draw_params(spec, k, x, dtype)))(member_keys(cfg.seed, first, count))
    outputs = jax.jit(jax.vmap(lambda st: trainer.model_output(st.params0, st.variable, xt)[:, 0]))
    res = fit(trainer, params, x, y, steps=int(times[-1]), record_at=times,
              observe=lambda step, st: np.asarray(outputs(st), np.float64), batched=True)
    return np.stack(res.records, 1), res.losses.T


def members_of(cfg, point: dict) -> tuple[int, int]:
    """(first member, number of members) of an ensemble chunk."""
    chunk = int(cfg.get("ensemble_chunk", cfg.ensemble))
    first = int(point["chunk"]) * chunk
    return first, min(chunk, int(cfg.ensemble) - first)


def train_ensemble(cfg, spec: models.ModelSpec, c_train, y, c_test, times):
    """Outputs (M, T, n_alpha) and losses (M, T) of the whole ensemble, chunk by chunk."""
    trainer = trainer_of(cfg, spec)
    parts = [train_members(cfg, trainer, spec, c_train, y, c_test, times, *members_of(cfg, p))
             for p in points(cfg)]
    return np.concatenate([f for f, _ in parts]), np.concatenate([l for _, l in parts])


# ----------------------------------------------------------------------------------------------
# Analytic predictions


def analytic(spec: models.ModelSpec, cfg, x_train, y, x_test, times):
    """NTK-GP (Eqs. 14-15) and NNGP readout (S22-S23) means / stds on the path, (T, n_alpha) each,
    and the NNGP posterior (Eq. 13), from the analytic kernels of the infinite network (float64)."""
    n = len(x_train)
    k = spec.analytic(np.concatenate([x_train, x_test]))
    kk, th = np.asarray(k.nngp, np.float64), np.asarray(k.ntk, np.float64)
    ktt, kst, kss = kk[:n, :n], kk[n:, :n], kk[n:, n:]
    lr, mutation = float(cfg.lr), cfg.get("mutation")
    scale = "total" if mutation == "closed_form_total_loss" else cfg.loss_scale
    theta = kk if mutation == "ntk_gp_with_nngp_kernel" else th
    mean, cov = ntk_gp_mean_cov(ktt, kst, kss, theta[:n, :n], theta[n:, :n], None, y, lr=lr, times=times,
                                loss_scale=scale)
    out = {"ntk_gp": (mean[..., 0], _std(cov))}
    mean, cov = readout_mean_cov(ktt, kst, kss, y, lr=lr, times=times, loss_scale=scale)
    out["nngp"] = (mean[..., 0], _std(cov))
    pm, pc = nngp_posterior(ktt, kst, kss, y)
    lam = np.linalg.eigvalsh(th[:n, :n])
    info = dict(ntk_lam_max=float(lam[-1]), ntk_lam_min=float(lam[0]),
                eta_lam_max=lr * float(lam[-1]) * (1.0 / n if scale == "mean" else 1.0))
    return out, (pm[:, 0], np.sqrt(np.clip(np.diag(pc), 0.0, None))), info


def _std(cov):
    return np.sqrt(np.clip(np.diagonal(cov, axis1=-2, axis2=-1), 0.0, None))


# ----------------------------------------------------------------------------------------------
# Experiment


def step_times(cfg) -> np.ndarray:
    """The recorded step counts (sorted, unique), after checking the settings they come with."""
    times = np.asarray(sorted(set(int(t) for t in cfg.times)), dtype=np.int64)
    if times[0] < 0:
        raise ConfigError(f"times must be non-negative step counts, got {list(cfg.times)}")
    if cfg.loss_scale not in LOSS:
        raise ConfigError(f"loss_scale must be 'mean' or 'total', got {cfg.loss_scale!r}")
    return times


def points(cfg) -> list[dict]:
    """One sweep point per chunk of `ensemble_chunk` members (the unit a split run distributes)."""
    chunk = int(cfg.get("ensemble_chunk", cfg.ensemble))
    if chunk < 1 or int(cfg.ensemble) < 2:
        raise ConfigError(f"need ensemble >= 2 and ensemble_chunk >= 1, got {cfg.ensemble}, {chunk}")
    return [{"chunk": i} for i in range(math.ceil(int(cfg.ensemble) / chunk))]


def run(cfg, subset=None) -> pd.DataFrame:
    times = step_times(cfg)
    spec = models.from_config(cfg, arch="mlp")
    if spec.parameterization != "ntk":
        raise ConfigError(f"{cfg.id} trains NTK-parameterized networks (Eq. 1); set parameterization: ntk")
    task, xs, alphas = load_path(cfg)
    x, y = task.x_train, task.y_train
    c_train, c_test = models.span_coordinates(x, xs)  # exact input projection (module docstring)
    net = spec.replace(input_fan_in=x.shape[1])
    trainer = trainer_of(cfg, net)
    out = []
    for p in tqdm(points(cfg) if subset is None else subset, desc=f"{cfg.id} ensemble chunks", disable=None):
        if p["chunk"] == 0:  # rows that belong to no chunk: with the first one
            gp, post, info = analytic(spec, cfg, x, y, xs, times.astype(float))
            out += analytic_rows(times, alphas, gp, post, info)
        first, count = members_of(cfg, p)
        f, loss = train_members(cfg, trainer, net, c_train, y, c_test, times, first, count)
        out += member_rows(times, alphas, f, loss, first)
    return pd.DataFrame(out)


def _path_rows(source, stat, t, alphas, values, member=-1) -> list[dict]:
    return [dict(source=source, stat=stat, time=int(t), alpha=float(a), member=int(member), value=float(v))
            for a, v in zip(alphas, values)]


def _scalar_row(source, stat, t, v, member=-1) -> dict:
    return dict(source=source, stat=stat, time=int(t), alpha=np.nan, member=int(member), value=float(v))


def analytic_rows(times, alphas, gp, post, info) -> list[dict]:
    """Tidy rows of the analytic predictions: per time the NTK-GP / NNGP readout / NNGP posterior
    mean and std on the path; then the analytic kernel's scalars."""
    shape = (len(times), len(alphas))
    stats = {**gp, "nngp_posterior": (np.broadcast_to(post[0], shape), np.broadcast_to(post[1], shape))}
    out = []
    for ti, t in enumerate(times):
        for source, (mean, std) in stats.items():
            out += _path_rows(source, "mean", t, alphas, mean[ti]) + _path_rows(source, "std", t, alphas, std[ti])
    return out + [_scalar_row("analytic", name, -1, v) for name, v in info.items()]


def member_rows(times, alphas, f, loss, first: int) -> list[dict]:
    """Tidy rows of members first, first + 1, ...: their function on the path and training loss per time."""
    out = []
    for m in range(f.shape[0]):
        for ti, t in enumerate(times):
            out += _path_rows("member", "f", t, alphas, f[m, ti], member=first + m)
            out.append(_scalar_row("member", "train_loss", t, loss[m, ti], member=first + m))
    return out


def cost(cfg, point) -> list[costs.Cost]:
    """One chunk: its networks' gradient steps, training losses and outputs at the recorded times;
    chunk 0 also the analytic kernels and the eigendecompositions of the closed forms."""
    times, shp = step_times(cfg), tasks.shapes(cfg.task)
    (n, n0), n_alpha, dtype = shp["x_train"], int(cfg.n_alpha), precision.train_dtype(cfg)
    d = min(n, n0)  # the span coordinates of the inputs (module docstring)
    spec = models.from_config(cfg, arch="mlp")
    net = spec.replace(input_fan_in=n0)
    _, count = members_of(cfg, point)
    out = costs.training(f"chunk {point['chunk']}: {count} networks", trainer_of(cfg, net), net, (n, d),
                         (n, 1), int(times[-1]), dtype=dtype, record_points=len(times), models=count)
    params = net.param_shapes(jax.ShapeDtypeStruct((1, d), dtype))
    out.append(costs.analyse("outputs on the path", net.apply, params,
                             jax.ShapeDtypeStruct((n_alpha, d), dtype), calls=len(times) * count))
    if point["chunk"] == 0:
        kt = precision.kernel_dtype()
        out.append(costs.analyse("analytic NNGP and NTK", lambda u: spec.analytic(u),
                                 jax.ShapeDtypeStruct((n + n_alpha, n0), kt)))
        out.append(costs.analyse("closed forms (eigh)", jnp.linalg.eigh, jax.ShapeDtypeStruct((n, n), kt),
                                 calls=3))
    return out


# ----------------------------------------------------------------------------------------------
# Claims


def _members(metrics: pd.DataFrame) -> pd.DataFrame:
    return metrics[(metrics.source == "member") & (metrics.stat == "f")]


def _ensemble(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per (time, alpha): the members' mean, standard deviation (ddof 1; NaN when a member diverged)
    and number."""
    f = _members(metrics).set_index(["member", "time", "alpha"]).value.unstack(["time", "alpha"])
    a = f.to_numpy(float)
    with np.errstate(all="ignore"):
        stats = pd.DataFrame({"ensemble_mean": a.mean(0), "ensemble_std": a.std(0, ddof=1),
                              "n_members": float(a.shape[0])}, index=f.columns)
    return stats


def _table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (time, alpha): columns <source>_<stat> of the analytic predictions, and the
    ensemble's mean, std and size from its members."""
    m = metrics[metrics.source.isin(ANALYTIC) & metrics.stat.isin(["mean", "std"])]
    wide = m.pivot_table(index=["time", "alpha"], columns=["source", "stat"], values="value", dropna=False)
    wide.columns = [f"{a}_{b}" for a, b in wide.columns]
    return wide.join(_ensemble(metrics)).reset_index()


def _rms(a) -> float:
    return float(np.sqrt(np.mean(np.asarray(a, float) ** 2)))


def discrepancies(metrics: pd.DataFrame, reference: str = "ntk_gp"):
    """Per time: (D_mean, D_std) of the ensemble against `reference` in units of the standard errors
    of an M-member ensemble drawn from the NTK-GP (module docstring)."""
    out = {}
    for t, g in _table(metrics).groupby("time"):
        m, scale = float(g.n_members.iloc[0]), _rms(g["ntk_gp_std"])  # sampling noise is set by the NTK-GP
        out[int(t)] = (_rms(g["ensemble_mean"] - g[f"{reference}_mean"]) / (scale / math.sqrt(m)),
                       _rms(g["ensemble_std"] - g[f"{reference}_std"]) / (scale / math.sqrt(2.0 * (m - 1.0))))
    return out


def coverage(metrics: pd.DataFrame, floor: float):
    """Per time: fraction of (member, alpha) with |f - mu| <= 2 sigma (NTK-GP), over the alphas whose
    sigma is at least `floor` times the largest sigma at that time."""
    tab = _table(metrics)[["time", "alpha", "ntk_gp_mean", "ntk_gp_std"]]
    out = {}
    for t, g in _members(metrics).merge(tab, on=["time", "alpha"]).groupby("time"):
        g = g[g.ntk_gp_std >= floor * g.ntk_gp_std.max()]
        out[int(t)] = float(np.mean(np.abs(g.value - g.ntk_gp_mean) <= 2.0 * g.ntk_gp_std))
    return out


CITE = {"distribution": "Lee et al. 2019, Fig. 2 caption and Sec. 3 (Eqs. 14, 15)",
        "functions": "Lee et al. 2019, Fig. S1 caption (the configuration of Fig. 2; Eqs. 14, 15)",
        "nngp": "Lee et al. 2019, Fig. 2 caption and Sec. 3 ('noticeably different'; Eqs. S22, S23)"}


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol, members = float(cfg.claims.max_discrepancy), cfg.view == "functions"
    d, cite = discrepancies(metrics, "ntk_gp"), CITE[cfg.view]
    n_members = int(_ensemble(metrics).n_members.max())
    src = f"the {n_members} drawn functions" if members else f"the {n_members}-network ensemble"
    out = []
    for t, (dm, ds) in d.items():
        out.append(C.below(f"t = {t}: mean of {src} follows the NTK-GP mean (Eq. 14)",
                           "D_mean = rms_alpha|mean - mu| / (sigma/sqrt(M))", dm, tol, cite=cite))
        out.append(C.below(f"t = {t}: std of {src} follows the NTK-GP std (Eq. 15)",
                           "D_std = rms_alpha|std - sigma| / (sigma/sqrt(2(M-1)))", ds, tol, cite=cite))
    if members:
        lo = float(cfg.claims.min_coverage)
        for t, cov in coverage(metrics, float(cfg.claims.coverage_floor)).items():
            out.append(C.above(f"t = {t}: individual functions lie inside the NTK-GP 2-sigma band "
                               f"(95.4% for draws from it)",
                               "fraction of (function, alpha) with |f - mu| <= 2 sigma", cov, lo, cite=cite))
    t_end = max(d)
    dn = discrepancies(metrics, "nngp")[t_end]
    out.append(C.above(f"t = {t_end} (end of training): mean / std of {src} differ measurably from the "
                       f"NNGP readout prediction (Eqs. S22-S23)",
                       "max(D_mean, D_std) against the NNGP", max(dn),
                       float(cfg.claims.min_nngp_discrepancy), cite=CITE["nngp"]))
    return out


# ----------------------------------------------------------------------------------------------
# Plot


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    tab = _table(metrics)
    times = sorted(tab.time.unique())
    fig, axes = plotting.subplots(1, len(times), width=3.0, height=2.9, sharey=True)
    mem = _members(metrics)
    n_members = mem.member.nunique()
    for ax, t in zip(axes[0], times):
        g = tab[tab.time == t].sort_values("alpha")
        a = g.alpha.to_numpy()
        if cfg.view == "functions":
            lines = mem[mem.time == t].pivot(index="alpha", columns="member", values="value")
            ax.plot(lines.index, lines.to_numpy(), "-", color="k", lw=0.4, alpha=0.35)
            mu, sd = g.ntk_gp_mean.to_numpy(), g.ntk_gp_std.to_numpy()
            ax.plot(a, mu, "-", color="tab:blue", lw=1.2, label="NTK-GP mean")
            ax.plot(a, mu + 2 * sd, "--", color="tab:blue", lw=1.0, label=r"NTK-GP $\pm 2\sigma$")
            ax.plot(a, mu - 2 * sd, "--", color="tab:blue", lw=1.0)
            ax.plot([], [], "-", color="k", lw=0.6, alpha=0.5, label=f"{n_members} trained networks")
        else:
            for src in ("nngp", "ntk_gp"):
                color, label = BAND[src]
                mu, sd = g[f"{src}_mean"].to_numpy(), g[f"{src}_std"].to_numpy()
                ax.fill_between(a, mu - 2 * sd, mu + 2 * sd, color=color, alpha=0.25, lw=0,
                                label=label + r": mean $\pm 2\sigma$")
                ax.plot(a, mu, "-", color=color, lw=1.2)
            mu, sd = g.ensemble_mean.to_numpy(), g.ensemble_std.to_numpy()
            ax.plot(a, mu, "-", color="k", lw=1.2, label=f"ensemble of {n_members} NNs: mean")
            ax.plot(a, mu + 2 * sd, ":", color="k", lw=1.2, label=r"ensemble $\pm 2$ std")
            ax.plot(a, mu - 2 * sd, ":", color="k", lw=1.2)
        ax.plot([0.0, 1.0], [-1.0, 1.0], "o", color="k", ms=5, zorder=5, label="training points")
        ax.set(xlabel=r"$\alpha$", title=f"t = {t} steps")
        ax.set_xlim(a.min(), a.max())
        ax.set_xticks([0.0, 0.5, 1.0])
    axes[0][0].set_ylabel(r"$f(x(\alpha))$,  $x(\alpha) = \alpha x^{(1)} + (1-\alpha) x^{(2)}$")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0)
    what = ("dashed: NTK-GP mean +- 2 sigma" if cfg.view == "functions" else
            "shaded / dotted: mean +- 2 standard deviations")
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale: width {cfg.width}, "
                  f"{n_members} networks, lr {cfg.lr}; {what})")
