"""Lee et al. 2019, Appendix F, Figure S7: NTK against standard parameterization.

Test accuracy after minibatch SGD training against the learning rate eta, for every combination of
activation (relu / tanh), loss (softmax cross-entropy / MSE) and parameterization (NTK, Eq. 1;
standard, Eq. S36), on MNIST and CIFAR-10.  The standard network is trained with the *normalized*
learning rate eta_std = eta / n (App. F, n = the hidden width), so both parameterizations are drawn
against the same eta.  App. F: "final performance of two different parameterization leads to similar
quality model for similar value of normalized learning rate eta_std = eta_NTK / n".

Both parameterizations start from the *same function*: with one PRNG key the NTK weights omega and
the standard weights W = sigma_w / sqrt(n_l) omega are the same draw (`ntkrepro.nets.Dense`), so any
difference comes from the training dynamics alone.  Every run of one (data set, activation, loss,
parameterization) sees the same minibatches; its learning rates are trained together, `jax.vmap`
over eta inside one jitted `lax.scan` over steps.

Divergence is recorded, never dropped and never fatal: a run is `diverged` when its loss or its
parameters become non-finite, or when the mean training loss over the last tenth of the steps exceeds
`blowup` times the initial loss.  Non-finite logits count as wrong predictions, so `accuracy` is
always a number; the figure draws diverged runs as crosses on the "diverged" line below the axis.
Claims use the non-diverged runs only.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from tqdm.auto import tqdm

from ntkrepro import claims as C
from ntkrepro import data, plotting
from ntkrepro.errors import ConfigError
from ntkrepro.linearize import mse_loss, xent_loss
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params, make_mlp

LOSSES = {"xent": xent_loss, "mse": mse_loss}
DATASET_LABEL = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
COLORS = {("relu", "xent"): "tab:blue", ("relu", "mse"): "tab:orange",
          ("tanh", "xent"): "tab:green", ("tanh", "mse"): "tab:red"}
MARKERS = {"ntk": "o", "standard": "^"}


def _dtype(cfg):
    name = str(cfg.get("dtype", "float32"))
    if name not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got '{name}'; set figure.paper.dtype")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("dtype=float64 needs x64=true")
    return jnp.float32 if name == "float32" else jnp.float64


def _datasets(cfg) -> list[str]:
    names = list(cfg.datasets)
    for name in names:
        if name not in cfg.log2_lrs:
            raise ConfigError(f"no learning-rate grid for {name}; set figure.paper.log2_lrs.{name}")
    return names


def lr_grid(cfg, name: str) -> np.ndarray:
    """eta = 2^e for the exponents of `log2_lrs.<name>` = [first, last, stride] (both ends included)."""
    first, last, stride = (int(v) for v in cfg.log2_lrs[name])
    if stride < 1 or last < first:
        raise ConfigError(f"log2_lrs.{name} must be [first, last, stride] with last >= first and stride >= 1")
    return 2.0 ** np.arange(first, last + 1, stride, dtype=np.float64)


def load(cfg, name: str):
    """(train, test) Datasets: flattened, per-image standardized images, one-hot targets."""
    common = dict(flatten=True, standardize=cfg.standardize, targets="onehot", selection=cfg.selection,
                  source=cfg.data.source, root=cfg.data.root, seed=cfg.seed)
    tr = data.prepare(name, split="train", n=int(cfg.n_train), **common)
    te = data.prepare(name, split="test", n=int(cfg.n_test), **common)
    for split, ds in (("train", tr), ("test", te)):
        record_data(f"{name}-{split}", ds.info["source"], [ds.x, ds.y], n=len(ds.x),
                    standardize=cfg.standardize, selection=cfg.selection)
    return tr, te


def mse_targets(y_onehot: np.ndarray) -> np.ndarray:
    """Zero-mean one-hot targets for MSE (one-hot minus 1/k); argmax is unchanged."""
    return y_onehot - 1.0 / y_onehot.shape[1]


def batch_indices(n: int, batch: int, steps: int, seed: int) -> np.ndarray:
    """(steps, batch) example indices: shuffled epochs without replacement, reshuffled each epoch."""
    batch = min(batch, n)
    rng = np.random.default_rng(seed)
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    rows = [rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch) for _ in range(epochs)]
    return np.concatenate(rows)[:steps]


def make_grid_trainer(apply_fn, loss_fn, steps: int):
    """jit(vmap over learning rates) of an SGD scan: (params0, lrs, x, y, idx, x_test) -> results.

    Returns per learning rate: the loss of every step (before its update), whether any parameter is
    non-finite at the end, the final test logits and the final full-training-set loss.
    """

    def one(params0, lr, x, y, idx, x_test):
        opt = optax.sgd(lr)

        def body(carry, ind):
            params, state = carry
            value, grads = jax.value_and_grad(lambda p: loss_fn(apply_fn(p, x[ind]), y[ind]))(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), value

        (params, _), losses = jax.lax.scan(body, (params0, opt.init(params0)), idx)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree_util.tree_leaves(params)]))
        return losses, finite, apply_fn(params, x_test), loss_fn(apply_fn(params, x), y)

    return jax.jit(jax.vmap(one, in_axes=(None, 0, None, None, None, None)))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fraction of argmax hits per row-batch (..., M, k); rows with a non-finite logit count as wrong."""
    ok = np.all(np.isfinite(logits), axis=-1)
    pred = np.argmax(np.where(np.isfinite(logits), logits, -np.inf), axis=-1)
    return np.mean((pred == labels) & ok, axis=-1)


def diverged_flags(losses: np.ndarray, finite: np.ndarray, blowup: float) -> np.ndarray:
    """(L,) bools: non-finite loss or parameters, or final-window mean loss > blowup * initial loss."""
    losses = np.asarray(losses, np.float64)
    tail = max(1, losses.shape[1] // 10)
    with np.errstate(all="ignore"):
        late = np.mean(losses[:, -tail:], axis=1)
        bad = ~np.all(np.isfinite(losses), axis=1) | ~np.asarray(finite, bool)
        bad |= ~np.isfinite(late) | (late > blowup * losses[:, 0])
    return bad


def run(cfg) -> pd.DataFrame:
    dt = _dtype(cfg)
    width, depth = int(cfg.width), int(cfg.depth)
    rows = []
    for name in _datasets(cfg):
        tr, te = load(cfg, name)
        k = tr.y.shape[1]
        x = jnp.asarray(tr.x, dt)
        x_test = jnp.asarray(te.x, dt)
        targets = {"xent": jnp.asarray(tr.y, dt), "mse": jnp.asarray(mse_targets(tr.y), dt)}
        etas = lr_grid(cfg, name)
        idx = jnp.asarray(batch_indices(len(tr.x), int(cfg.batch_size), int(cfg.steps), int(cfg.seed)))
        key = jax.random.PRNGKey(int(cfg.seed))  # one key: both parameterizations start as one function
        jobs = [(a, l, p) for a in cfg.activations for l in cfg.losses for p in cfg.parameterizations]
        for act, loss, par in tqdm(jobs, desc=f"{cfg.id} {name}", disable=None):
            if loss not in LOSSES:
                raise ConfigError(f"unknown loss '{loss}'; choose xent or mse")
            model = make_mlp(width=width, depth=depth, out_dim=k, activation=act, w_var=cfg.w_var,
                             b_var=cfg.b_var, parameterization=par)
            params0 = init_params(model, key, x[:1])

            def apply_fn(p, xx, model=model):
                return model.apply({"params": p}, xx)

            scale = 1.0 if par == "ntk" else 1.0 / width  # App. F: eta_std = eta_NTK / n
            trainer = make_grid_trainer(apply_fn, LOSSES[loss], int(cfg.steps))
            losses, finite, logits, train_loss = jax.device_get(
                trainer(params0, jnp.asarray(etas * scale, dt), x, targets[loss], idx, x_test))
            acc = accuracy(np.asarray(logits, np.float64), te.labels)
            div = diverged_flags(losses, finite, float(cfg.blowup))
            for i, eta in enumerate(etas):
                rows.append(dict(dataset=name, activation=act, loss=loss, parameterization=par,
                                 lr=float(eta), log2_lr=float(np.log2(eta)), lr_used=float(eta * scale),
                                 width=width, depth=depth, n_train=len(tr.x), n_test=len(te.x),
                                 steps=int(cfg.steps), batch_size=int(idx.shape[1]),
                                 accuracy=float(acc[i]), diverged=int(div[i]),
                                 loss_initial=float(losses[i, 0]),
                                 loss_final=float(train_loss[i]) if np.isfinite(train_loss[i]) else math.inf,
                                 value=float(acc[i])))
    return pd.DataFrame(rows)


def best_accuracies(metrics: pd.DataFrame) -> pd.DataFrame:
    """Best test accuracy over the non-diverged learning rates per (dataset, activation, loss, param)."""
    ok = metrics[metrics.diverged == 0]
    keys = ["dataset", "activation", "loss", "parameterization"]
    best = ok.loc[ok.groupby(keys)["accuracy"].idxmax(), keys + ["accuracy", "lr"]]
    return best.reset_index(drop=True)


def claims(metrics: pd.DataFrame, cfg) -> list[C.Claim]:
    best = best_accuracies(metrics)
    out = []
    for (name, act, loss), g in metrics.groupby(["dataset", "activation", "loss"], sort=False):
        b = best[(best.dataset == name) & (best.activation == act) & (best.loss == loss)]
        acc = dict(zip(b.parameterization, b.accuracy))
        gap = abs(acc["ntk"] - acc["standard"]) if {"ntk", "standard"} <= set(acc) else math.nan
        margin = float(cfg.claims.best_gap[name])
        out.append(C.below(
            f"{DATASET_LABEL.get(name, name)} {act}-{loss}: NTK and standard parameterization (eta_std = "
            "eta_NTK / n) reach similar best test accuracy",
            f"|best acc NTK - best acc standard| over non-diverged eta "
            f"(NTK {acc.get('ntk', math.nan):.3f}, standard {acc.get('standard', math.nan):.3f})",
            gap, margin))
    return out


def plot(metrics: pd.DataFrame, out_dir, cfg) -> None:
    names = list(dict.fromkeys(metrics.dataset))
    fig, axes = plotting.subplots(1, len(names) + 1, width=4.4, height=3.6,
                                  gridspec_kw={"width_ratios": [1.0] * len(names) + [0.38]})
    handles = {}
    for ax, name in zip(axes[0], names):
        m = metrics[metrics.dataset == name]
        ok = m[m.diverged == 0]
        lo = float(ok.accuracy.min()) if len(ok) else 0.0
        hi = float(ok.accuracy.max()) if len(ok) else 1.0
        span = max(hi - lo, 0.05)
        floor = lo - 0.12 * span  # the "diverged" band, below every finished run
        series = list(m.groupby(["activation", "loss", "parameterization"], sort=False))
        for s, ((act, loss, par), g) in enumerate(series):
            color = COLORS.get((act, loss), "k")
            g = g.sort_values("lr")
            good = g[g.diverged == 0]
            label = f"{act}-{loss}-{par}"
            (line,) = ax.plot(good.lr, good.accuracy, MARKERS.get(par, "s"), ls="-" if par == "ntk" else "--",
                              color=color, ms=4, lw=1, mfc=color if par == "ntk" else "none", label=label)
            handles.setdefault(label, line)
            bad = g[g.diverged == 1]  # drawn, not dropped: one row of crosses per curve in the band
            y_bad = floor - (s - (len(series) - 1) / 2) * 0.012 * span
            ax.plot(bad.lr, np.full(len(bad), y_bad), "x" if par == "ntk" else "+", color=color, ms=5)
        ax.axhspan(floor - 0.06 * span, floor + 0.06 * span, color="0.92", zorder=0)
        ax.text(0.01, floor + 0.065 * span, "diverged", transform=ax.get_yaxis_transform(), va="bottom",
                fontsize=7, color="0.3")
        ax.set_xscale("log", base=2)
        e = np.log2(m.lr.to_numpy())
        ax.set_xticks(2.0 ** np.arange(np.floor(e.min()), np.ceil(e.max()) + 1, 2))
        ax.set(xlabel=r"$\eta$  (standard: $\eta_{std} = \eta / n$)", ylabel="test accuracy",
               ylim=(floor - 0.08 * span, hi + 0.06 * span),
               title=f"{DATASET_LABEL.get(name, name)}: width {int(m.width.iloc[0])}, depth "
                     f"{int(m.depth.iloc[0])}, |D| = {int(m.n_train.iloc[0])},\n{int(m.steps.iloc[0])} SGD "
                     f"steps of batch {int(m.batch_size.iloc[0])}, {int(m.n_test.iloc[0])} test images")
    leg = axes[0][-1]
    leg.axis("off")
    leg.legend(list(handles.values()), list(handles.keys()), loc="center left", fontsize=7,
               title="activation-loss-param.\n(x / +: diverged)", title_fontsize=7)
    plotting.save(fig, out_dir, cfg.id, f"{cfg.title} ({cfg.scale} scale; circles/solid: NTK, "
                                        "triangles/dashed: standard)")
