"""Shared pieces of the Liu, Zhu & Belkin 2020 experiments (Figures 1, 2 and Table 1).

Synthetic regression task (the paper's Appendix C is not available; this is our design, fixed
across widths and documented in the configs)::

    z_i ~ N(0, I_d),  x^_i = z_i / ||z_i||,  x_i = r sqrt(d) x^_i    (i = 1..N; ||x||^2 / d = r^2)
    u_c ~ N(0, I_d),  t_c(x) = mu + a sin(omega u_c . x^)            (c = 1..k; a fixed smooth teacher)
    y_i = phi(t(x_i))                                                (phi: the model's output map)

(r = `input_scale`, default 1: the first-layer pre-activations have variance w_var r^2 + b_var.)

The targets are the teacher pushed through the model's own output map, so every model class can fit
them exactly with finite weights (softmax targets are interior points of the simplex, swish
targets lie on its increasing branch): gradient descent can converge, as Theorem 5.1 requires.

Models (Eq. 11):  f(w; x) an `ntkrepro.nets.MLP` (NTK parameterization, linear readout of k units)
and  f~(w; x) = phi(f(w; x))  with phi in `OUTPUTS`:

* ``linear``:   phi(f) = f
* ``swish``:    phi(f)_c = f_c sigmoid(f_c)      (elementwise, Ramachandran et al.)
* ``softplus``: phi(f)_c = log(1 + exp(f_c))     (elementwise; the Table 1 probe, phi'' > 0)
* ``softmax``:  phi(f) = exp(f) / sum_c exp(f_c)  (over the k outputs)

Tangent kernel of f~ (derivation): grad_w f~(x) = J_phi(x) grad_w f(x) with J_phi(x) = d phi / d f
at f(w; x) (a k x k matrix), so

    K~(x, x') = grad_w f~(x) grad_w f~(x')^T = J_phi(x) K_f(x, x') J_phi(x')^T,

K_f(x, x') the (k x k) block of the network's tangent kernel (`mlp_ntk(..., trace=False)`, no
Jacobian).  Elementwise phi: J_phi = diag(phi'(f_c)), i.e. K~_cc' = phi'(f_c(x)) K_f,cc' phi'(f_c'(x'))
(for k = 1 the scalar formula phi'(f(x)) phi'(f(x')) K_f(x, x') of Eq. 12); softmax with
p = softmax(f): J_phi = diag(p) - p p^T (symmetric).  `tests/test_liu.py` checks this against
`empirical_ntk` of the composed function.

Training: full-batch gradient descent on the square loss of Theorem 5.1 (averaged over examples,
`ntkrepro.linearize.mse_loss`), with step size

    eta = lr * N / (L_phi^2 lambda_max(K_f(w_0))),     L_phi = sup |phi'| (`LIPSCHITZ`),

so that eta lambda_max(K~) / N <= lr along the whole path up to the (small, finite-width) change of
K_f: a dimensionless lr < 2 is stable for every output map and width.  Training stops when
L(w_t) <= tol * L(w_0) ("converged") or after `max_steps`; a non-finite loss stops it and is recorded
as diverged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro import data
from ntkrepro.empirical import mlp_ntk
from ntkrepro.errors import ConfigError
from ntkrepro.linearize import mse_loss
from ntkrepro.manifest import record_data
from ntkrepro.nets import init_params


def _swish(z):
    return z * jax.nn.sigmoid(z)


_ELEMENTWISE: dict[str, Callable] = {"linear": lambda z: z, "swish": _swish, "softplus": jax.nn.softplus}
OUTPUTS = ("linear", "softmax", "swish", "softplus")
# sup_z |phi'(z)| (softmax: the spectral norm of diag(p) - p p^T is at most 1/2; swish' peaks at
# 1.0998 near z = 2.4)
LIPSCHITZ = {"linear": 1.0, "softmax": 0.5, "swish": 1.0998, "softplus": 1.0}


def check_output(name: str) -> str:
    if name not in OUTPUTS:
        raise ConfigError(f"unknown output layer '{name}'; choose one of {', '.join(OUTPUTS)}")
    return name


def output_fn(name: str) -> Callable:
    """phi acting on (..., k) network outputs."""
    check_output(name)
    if name == "softmax":
        return lambda f: jax.nn.softmax(f, axis=-1)
    return _ELEMENTWISE[name]


def output_jacobian(name: str, f):
    """J_phi = d phi(f) / d f for each example: (N, k, k) from (N, k) network outputs."""
    check_output(name)
    if name == "softmax":
        p = jax.nn.softmax(f, axis=-1)
        return jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
    deriv = jax.vmap(jax.vmap(jax.grad(_ELEMENTWISE[name])))(f)
    return deriv[:, :, None] * jnp.eye(f.shape[-1], dtype=f.dtype)


@lru_cache(maxsize=None)
def _jitted_output(name: str) -> Callable:
    return jax.jit(output_fn(name))


def compose(model, output: str) -> Callable:
    """f~(params, x) = phi(f(params, x))."""
    phi = output_fn(output)

    def apply(params, x):
        return phi(model.apply({"params": params}, x))

    return apply


@partial(jax.jit, static_argnames=("model", "output"))
def tangent_kernel(model, params, x, output: str = "linear"):
    """K~(x_i, x_j) = J_phi(x_i) K_f(x_i, x_j) J_phi(x_j)^T, shape (N, N, k, k); no Jacobian formed."""
    kf = mlp_ntk(model, params, x, trace=False)
    if output == "linear":
        return kf
    j = output_jacobian(output, model.apply({"params": params}, x))
    return jnp.einsum("iab,ijbc,jdc->ijad", j, kf, j)


def as_matrix(k4):
    """(N, N, k, k) -> the (N k) x (N k) tangent-kernel matrix."""
    n, _, k, _ = k4.shape
    return jnp.transpose(k4, (0, 2, 1, 3)).reshape(n * k, n * k)


def lambda_max(k4) -> float:
    return float(np.linalg.eigvalsh(np.asarray(as_matrix(k4), dtype=np.float64))[-1])


def rel_change(k, k0) -> float:
    """||K - K_0||_F / ||K_0||_F (over all N x N x k x k entries; float64 numpy, no compilation)."""
    k, k0 = np.asarray(k, dtype=np.float64), np.asarray(k0, dtype=np.float64)
    return float(np.linalg.norm(k - k0) / np.linalg.norm(k0))


def learning_rate(lr: float, n: int, kf0, output: str) -> float:
    """eta = lr N / (L_phi^2 lambda_max(K_f(w_0))) (see the module docstring)."""
    return float(lr) * n / (LIPSCHITZ[output] ** 2 * lambda_max(kf0))


def init_network(model, seed: int, x, *tags: int):
    """Initial parameters w_0 of `model` for the run seed and the sizes `tags`.

    NTK parameterization: every parameter is N(0, 1) (`ntkrepro.nets.Dense`), drawn with numpy's
    default_rng([seed, *tags]) into the pytree structure of `init_params` (its shapes from
    `jax.eval_shape`: nothing is compiled; compiling the Flax init costs ~2 s per model on CPU).
    Standard parameterization: `init_params` itself.
    """
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    key = jax.random.PRNGKey(int(seed))
    for tag in tags:
        key = jax.random.fold_in(key, int(tag))
    if model.parameterization != "ntk":
        return jax.jit(lambda k: init_params(model, k, x))(key)
    shapes = jax.eval_shape(lambda k: init_params(model, k, x), key)
    rng = np.random.default_rng([int(seed), *(int(t) for t in tags)])
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape), dtype=dtype), shapes)


# ----------------------------------------------------------------------------------------------
# synthetic task


@dataclass(frozen=True)
class Task:
    x: jnp.ndarray          # (N, d) inputs on the sphere of radius r sqrt(d)
    t: np.ndarray           # (N, k) teacher values; targets are phi(t)

    def targets(self, output: str):
        return _jitted_output(output)(jnp.asarray(self.t, dtype=self.x.dtype))


def synthetic_task(cfg, out_dim: int | None = None) -> Task:
    """The fixed synthetic regression task of the module docstring (depends on cfg.seed only)."""
    n, d = int(cfg.n_train), int(cfg.n0)
    k = int(cfg.out_dim if out_dim is None else out_dim)
    r = float(cfg.get("input_scale", 1.0))
    if k < 1 or not r > 0:
        raise ConfigError(f"need out_dim >= 1 and input_scale > 0, got {k} and {r}; fix figure.paper")
    z = data.gaussian_inputs(n, d, seed=int(cfg.seed))
    direction = z / np.linalg.norm(z, axis=1, keepdims=True)
    u = np.random.default_rng([int(cfg.seed), 1]).standard_normal((d, k))
    teacher = cfg.teacher
    t = teacher.mu + teacher.amplitude * np.sin(teacher.omega * (direction @ u))
    x = r * math.sqrt(d) * direction
    record_data("synthetic regression", f"x = {r:g} sqrt(d) z/|z|, z ~ N(0, I_{d}); t_c = {teacher.mu} + "
                f"{teacher.amplitude} sin({teacher.omega} u_c.z/|z|), u_c ~ N(0, I); y = phi(t); "
                f"seed={cfg.seed}", [x, t], n=n, n0=d, out_dim=k)
    dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    return Task(x=jnp.asarray(x, dtype=dtype), t=t)


# ----------------------------------------------------------------------------------------------
# training


def checkpoint_steps(max_steps: int, points: int) -> set[int]:
    """0 and a geometric grid of about `points` steps in [1, max_steps]."""
    grid = np.unique(np.round(np.geomspace(1, max(1, max_steps), max(1, points))).astype(int))
    return {0, *(int(s) for s in grid)}


@dataclass
class TrainResult:
    steps: list = field(default_factory=list)      # checkpoint steps, increasing; the last is final
    losses: list = field(default_factory=list)     # loss at each checkpoint
    loss0: float = float("nan")
    final_step: int = 0
    converged: bool = False
    diverged: bool = False

    @property
    def loss_final(self) -> float:
        return self.losses[-1]


def train(apply: Callable, params, x, y, *, eta: float, max_steps: int, tol: float, checkpoints,
          on_checkpoint: Callable | None = None) -> TrainResult:
    """Full-batch gradient descent w <- w - eta grad L(w), L = mse_loss(apply(w, x), y).

    Calls ``on_checkpoint(step, params, loss)`` at every step in `checkpoints` and at the final
    step (converged, diverged or `max_steps`); never raises on inf/NaN.  ``max_steps = 0``: no
    training, only w_0 is measured.
    """
    def loss_fn(p):
        return mse_loss(apply(p, x), y)

    @jax.jit
    def step(p):
        value, grads = jax.value_and_grad(loss_fn)(p)
        return jax.tree_util.tree_map(lambda w, g: w - eta * g, p, grads), value

    res = TrainResult()
    if max_steps <= 0:  # no training: only the loss at w_0 (no gradient program to compile)
        value = float(jax.jit(loss_fn)(params))
        res.loss0, res.steps, res.losses = value, [0], [value]
        res.diverged = not math.isfinite(value)
        if on_checkpoint is not None:
            on_checkpoint(0, params, value)
        return res
    p, s = params, 0
    while True:
        p_next, value = step(p)
        value = float(value)
        if s == 0:
            res.loss0 = value
        finite = math.isfinite(value)
        stop = (not finite) or value <= tol * res.loss0 or s >= max_steps
        if s in checkpoints or stop:
            res.steps.append(s)
            res.losses.append(value)
            if on_checkpoint is not None:
                on_checkpoint(s, p, value)
        if stop:
            res.final_step, res.diverged = s, not finite
            res.converged = finite and value <= tol * res.loss0
            return res
        p, s = p_next, s + 1
