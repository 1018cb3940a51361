"""Jacot, Gabriel & Hongler 2018, Sec. 6.3 (Figure 3): convergence along a kernel principal component.

(a) The NTK Gram Theta(x_i, x_j) of one wide network (`pca_width`) on a batch of N MNIST digits
defines the non-centred kernel PCA operator Pi(f)(x) = 1/N sum_i f(x_i) Theta(x_i, x) (Sec. 5);
on the batch Pi is the matrix Theta / N.  Its first three eigenpairs (lambda_i, f^(i)) come from
`numpy.linalg.eigh` of the symmetric N x N matrix (exact; the paper used power iteration, which
converges to the same top eigenpairs), with f^(i) = sqrt(N) v_i so that ||f^(i)||_pin = 1.  The
analytic limit's eigenvalues (`ntkrepro.kernels.fc`) are recorded too.
(b, c) Networks of several widths, two trials each, are trained by full-batch gradient descent
(learning rate 1.0, cost 1/2 E_pin (f - f*)^2 = the MEAN over the batch) towards
f* = f_theta(0) + 0.5 f^(2).  Every `record_every` steps (an observer of `train.fit`) f_theta(t) - f*
is split into g_t = <f_t - f*, f^(2)>_pin f^(2) and h_t (orthogonal to f^(2)); in the infinite-width
limit ||g_t||_pin = 0.5 exp(-lambda_2 t) and h_t = 0.  Kernels are float64; training runs in
`train_dtype` (float32 by default).

Sweep points (`points`): the kernel PCA first ({"part": "pca"}: panel a, eigenvalues), then
(width, trial), width-major.  A network is drawn from (seed, width, trial) only; every job that trains
networks computes the 2nd component of the training digits from the PCA network (drawn from the seed
alone), so each point's rows do not depend on the other points.  `MUTATIONS`: deliberate mistakes,
for tests/test_mutations.py only.
"""
from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import costs, models, plotting, precision, split, tasks
from ntkrepro.train import Trainer, fit

CITE = "Jacot et al. 2018, Sec. 6.3 and Fig. 3 captions"
MUTATIONS = {"pi_without_1_over_n": "the kernel PCA operator taken as the Gram matrix Theta instead of "
                                    "Pi = Theta / N (Sec. 5): eigenvalues N times too large, so the theory "
                                    "curve 0.5 exp(-lambda_2 t) decays N times too fast"}


@jax.jit
def decompose(f, y, f2):
    """(||g||_pin, ||h||_pin) of r = f - y split along the unit-pin-norm f2 and orthogonal to it."""
    r = (f - y)[:, 0]
    coef = jnp.mean(r * f2)
    h = r - coef * f2
    return jnp.stack([jnp.abs(coef), jnp.sqrt(jnp.mean(h * h))])


def principal_components(gram: np.ndarray, k: int = 3, mutation=None):
    """Top-k eigenpairs of Pi = Gram / N: eigenvalues, and components with ||f||_pin = 1."""
    n = len(gram)
    lam, v = np.linalg.eigh(0.5 * (gram + gram.T) / (1 if mutation == "pi_without_1_over_n" else n))
    lam, v = lam[::-1][:k], v[:, ::-1][:, :k]
    f = v * np.sqrt(n)
    f *= np.sign(f[np.argmax(np.abs(f), axis=0), np.arange(k)])  # largest entry positive
    return lam, f


def points(cfg) -> list[dict]:
    """The kernel PCA, then one point per (width, trial), width-major."""
    return [{"part": "pca"}] + [{"part": "network", "width": int(w), "trial": t}
                                for w in cfg.widths for t in range(int(cfg.trials))]


def point_key(seed: int, width: int, trial: int):
    """The random key of a network: from the seed, its width and trial only (the PCA network: trial -1)."""
    return split.point_key(seed, width, int(trial) + 1)


def pca_gram(cfg, x) -> np.ndarray:
    """The NTK Gram of the width-`pca_width` PCA network on the digits x (float64)."""
    pca, x64 = models.from_config(cfg, width=cfg.pca_width), jnp.asarray(x, jnp.float64)
    return np.asarray(pca.empirical_ntk(pca.init(point_key(cfg.seed, cfg.pca_width, -1), x64), x64))


def pca_rows(cfg, task, gram):
    """Panel (a) and the eigenvalues (the PCA network's, of the analytic limit, the paper's, and the
    PCA network's on the training digits, the theory curve's lambda_2)."""
    mut, n_train = cfg.get("mutation"), int(cfg.n_train)
    lam, comps = principal_components(gram, mutation=mut)
    lam_tr, _ = principal_components(gram[:n_train, :n_train], mutation=mut)
    pca = models.from_config(cfg, width=cfg.pca_width)
    lam_inf, _ = principal_components(np.asarray(pca.analytic(jnp.asarray(task.x_train, jnp.float64)).ntk),
                                      mutation=mut)
    eig = (("network", cfg.pca_width, lam), ("analytic", np.nan, lam_inf),
           ("paper", 10000, cfg.paper_eigenvalues), ("network_train_batch", cfg.pca_width, lam_tr))
    frames = [pd.DataFrame(dict(quantity="eigenvalue", source=src, width=w, rank=np.arange(1, len(v) + 1),
                                value=np.asarray(v, float))) for src, w, v in eig]
    frames.append(pd.DataFrame(dict(quantity=["constant_cosine"], source="network", width=cfg.pca_width,
                                    value=abs(np.mean(comps[:, 0])))))
    frames.append(pd.DataFrame(dict(quantity="pc", source="network", point=np.arange(len(comps)),
                                    digit=task.labels_train.astype(int), pc1=comps[:, 0], pc2=comps[:, 1],
                                    pc3=comps[:, 2], value=comps[:, 1])))
    return frames


@functools.lru_cache(maxsize=None)
def _trainer(spec: models.ModelSpec, lr: float) -> Trainer:
    return Trainer(spec.apply, lr=lr)  # one per width: `fit` compiles once


def trajectory(cfg, x, f2, width: int, trial: int) -> pd.DataFrame:
    """Train towards f* = f_theta(0) + 0.5 f^(2); ||g_t||, ||h_t|| every `record_every` steps."""
    steps, every = int(cfg.steps), int(cfg.record_every)
    spec = models.from_config(cfg, width=width)
    trainer, params0 = _trainer(spec, float(cfg.lr)), spec.init(point_key(cfg.seed, width, trial), x)
    y = spec.apply(params0, x) + 0.5 * f2[:, None]
    result = fit(trainer, params0, x, y, steps=steps, record_at=range(0, steps + 1, every),
                 observe=lambda s, state: np.asarray(decompose(trainer.predict(state, x), y, f2), float),
                 track_loss=False)
    at = [i for i, s in enumerate(result.steps) if s % every == 0]  # (`fit` also records at `steps`)
    return pd.DataFrame(dict(quantity=np.tile(["g_norm", "h_norm"], len(at)), source="network", width=width,
                             trial=trial, step=np.repeat(np.asarray(result.steps)[at], 2),
                             value=np.ravel(np.asarray(result.records)[at])))


def run(cfg, subset=None) -> pd.DataFrame:
    batch = tasks.load(cfg.task, cfg.data, seed=cfg.seed, name="mnist")  # the N digits of panel (a)
    todo, n_train = points(cfg) if subset is None else list(subset), int(cfg.n_train)
    gram = pca_gram(cfg, batch.x_train) if {"part": "pca"} in todo else None
    frames = pca_rows(cfg, batch, gram) if gram is not None else []
    nets = [p for p in todo if p["part"] == "network"]
    if nets:  # the 2nd component on the first n_train digits (the training set)
        sub = gram[:n_train, :n_train] if gram is not None else pca_gram(cfg, batch.x_train[:n_train])
        dt = precision.train_dtype(cfg)
        x, f2 = jnp.asarray(batch.x_train[:n_train], dt), jnp.asarray(principal_components(sub)[1][:, 1], dt)
    for p in tqdm(nets, desc=cfg.id, disable=None):
        frames.append(trajectory(cfg, x, f2, p["width"], p["trial"]))
    return pd.concat(frames, ignore_index=True)


def cost(cfg, point) -> list[costs.Cost]:
    """The PCA: the width-`pca_width` network's NTK Gram of the N digits and the analytic one (float64;
    a job of networks only recomputes the Gram of the n_train training digits, not counted); a network:
    `steps` full-batch GD steps and the decomposition at every recording point."""
    shapes = tasks.shapes(cfg.task)
    if point["part"] == "pca":
        x = jax.ShapeDtypeStruct(shapes["x_train"], jnp.float64)
        pca = models.from_config(cfg, width=cfg.pca_width)
        params = pca.param_shapes(x)
        return [costs.analyse(f"NTK Gram n={cfg.pca_width}", pca.empirical_ntk, params, x),
                costs.analyse("analytic NTK", lambda u: pca.analytic(u).ntk, x)]
    spec, dt, n = models.from_config(cfg, width=point["width"]), precision.train_dtype(cfg), int(cfg.n_train)
    x_shape, y_shape = (n, *shapes["x_train"][1:]), (n, 1)
    return costs.training(f"n={point['width']} trial={point['trial']}", _trainer(spec, float(cfg.lr)),
                          spec, x_shape, y_shape, int(cfg.steps), dtype=dt,
                          record_points=int(cfg.steps) // int(cfg.record_every) + 1)


# ----------------------------------------------------------------------------------------------
# claims


def eigenvalues(metrics, source) -> np.ndarray:
    return C.select(metrics, "eigenvalue", source=source).sort_values("rank").value.to_numpy()


def theory(steps, lam2):
    """Infinite width: ||g_t||_pin = 0.5 exp(-lambda_2 t), t = steps x learning rate 1.0."""
    return 0.5 * np.exp(-lam2 * np.asarray(steps, float))


def lambda2_train(metrics) -> float:
    """lambda_2 of the batch the networks are trained on (the theory curve's rate)."""
    return float(eigenvalues(metrics, "network_train_batch")[1])


def g_deviation(metrics) -> pd.Series:
    """Per width: max over t and trials of | ||g_t|| - 0.5 exp(-lambda_2 t) | / 0.5."""
    g = C.select(metrics, "g_norm")
    dev = np.abs(g.value.to_numpy() - theory(g.step, lambda2_train(metrics))) / 0.5
    return pd.Series(dev, index=g.index).groupby(g.width).max(skipna=False)   # a diverged run: NaN


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    tol = cfg.claims
    lam, paper = eigenvalues(metrics, "network"), eigenvalues(metrics, "paper")
    n_eig = len(C.select(metrics, "pc"))
    cos1 = float(C.select(metrics, "constant_cosine").value.iloc[0])
    out = [C.above("The non-centred kernel PCA's first component is almost the constant function",
                   "|<f(1), 1>_pin| (both of unit norm)", cos1, tol.constant_cosine_min, cite=CITE),
           C.above("Large gap between the first and second eigenvalues (paper: 0.0457 / 0.00108 = 42)",
                   "lambda_1 / lambda_2", lam[0] / lam[1], tol.gap_min, cite=f"{CITE}; footnote 3")]
    out += [C.in_range(f"lambda_{i + 1} = {lam[i]:.3g} (N={n_eig}) vs the paper's {paper[i]:g} (depth and "
                       "input scale not stated: chosen as the ones whose analytic kernel gives these values, "
                       "see the config)", f"lambda_{i + 1}(ours) / lambda_{i + 1}(paper)", lam[i] / paper[i],
                       *tol.eigenvalue_ratio, kind="check") for i in range(min(3, len(lam)))]
    h, g = (C.select(metrics, q).groupby("width").value.mean(skipna=False) for q in ("h_norm", "g_norm"))
    dev, widths = g_deviation(metrics), sorted(h.index)
    lo, hi = int(widths[0]), int(widths[-1])
    out.append(C.below(f"||h_t|| is smaller for wider networks (n={hi} vs n={lo})",
                       "mean over t and trials of ||h_t||_pin, ratio wide / narrow", float(h[hi] / h[lo]),
                       tol.h_ratio_max, cite=CITE))
    if len(widths) > 2:
        out.append(C.in_range("||h_t|| decreases with every increase of the width",
                              "fraction of consecutive width pairs whose mean ||h_t|| decreases",
                              float(np.mean(np.diff(h[widths].to_numpy()) < 0)), 1.0, 1.0, cite=CITE))
        out.append(C.in_range("As the width grows, ||g_t|| converges to the theoretical limit",
                              "fraction of consecutive width pairs whose max |g_t - theory| decreases",
                              float(np.mean(np.diff(dev[widths].to_numpy()) < 0)), 1.0, 1.0, cite=CITE))
    out.append(C.below(f"Smaller networks converge faster (NTK inflation): n={lo} vs n={hi}",
                       "mean over t and trials of ||g_t||, ratio narrow / wide", float(g[lo] / g[hi]),
                       tol.faster_ratio_max, cite=CITE))
    out.append(C.below(f"||g_t|| of the widest network (n={hi}) tracks 0.5 exp(-lambda_2 t)",
                       "max over t and trials | ||g_t|| - 0.5 exp(-lambda_2 t) | / 0.5", float(dev[hi]),
                       tol.g_deviation_max, cite=CITE))
    return out


# ----------------------------------------------------------------------------------------------
# plot


def eigenvalue_table(metrics: pd.DataFrame, cfg) -> str:
    """The top eigenvalues of Pi = Theta / N, ours beside the analytic limit's and the paper's (Sec. 6.3)."""
    cols = ((f"ours (n = {int(cfg.pca_width)}, N = {len(C.select(metrics, 'pc'))})", "network"),
            ("analytic limit", "analytic"), ("paper (n = 10000)", "paper"))
    vals = [eigenvalues(metrics, src) for _, src in cols]
    rows = [f"| lambda_{i + 1} | " + " | ".join(f"{v[i]:.4g}" if i < len(v) else "" for v in vals) + " |"
            for i in range(max(map(len, vals)))]
    return "\n".join([f"# {cfg.title}: eigenvalues ({cfg.scale} scale)", "",
                      "| | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|", *rows]) + "\n"


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    (Path(out_dir) / f"{cfg.id}.md").write_text(eigenvalue_table(metrics, cfg))
    fig, axes = plotting.subplots(1, 3, width=3.6, height=3.3)
    ax, pc = axes[0][0], C.select(metrics, "pc")
    sc = ax.scatter(pc.pc2, pc.pc3, c=pc.digit, cmap="tab10", vmin=-0.5, vmax=9.5, s=6)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="digit")
    rows = ((r"$\lambda_{1,2,3}$ ours (n=%d)" % int(cfg.pca_width), "network", ".3g"),
            ("analytic limit", "analytic", ".3g"), ("paper", "paper", "g"))
    text = "\n".join(f"{name}: " + ", ".join(format(v, spec) for v in eigenvalues(metrics, source))
                     for name, source, spec in rows)
    ax.set(xlabel=r"$f^{(2)}(x)$" + "\n" + text, ylabel=r"$f^{(3)}(x)$",
           title=f"(a) 2nd and 3rd principal components, N={len(pc)}")
    widths = sorted(C.select(metrics, "h_norm").width.unique())
    colors = dict(zip(widths, ["tab:orange", "tab:green", "tab:red", "tab:purple"]))
    lam2 = lambda2_train(metrics)
    for ax, q, title in ((axes[0][1], "h_norm", r"(b) deviation from the straight line, $\|h_t\|_{p^{in}}$"),
                         (axes[0][2], "g_norm", r"(c) along the 2nd component, $\|g_t\|_{p^{in}}$")):
        m = C.select(metrics, q)
        for w in widths:
            for i, (_, g) in enumerate(m[m.width == w].groupby("trial")):
                ax.plot(g.step, g.value, color=colors[w], lw=1, label=f"n = {int(w)}" if i == 0 else None)
        if q == "g_norm":
            t = np.sort(m.step.unique())
            ax.plot(t, theory(t, lam2), color="tab:blue", lw=1.5, ls="--",
                    label=r"$n = \infty$: $0.5\,e^{-\lambda_2 t}$")
        ax.set(xlabel=f"t (steps; training on {int(cfg.n_train)} digits, " + r"$\lambda_2$"
               + f" = {lam2:.3g})", title=title, ylim=(0, None))
        ax.legend()
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; depth L={int(cfg.depth) + 1}, "
                  f"{int(cfg.trials)} trials per width, lr {cfg.lr})")
