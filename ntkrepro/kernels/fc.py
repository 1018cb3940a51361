"""Analytic NNGP and NTK of fully connected networks (Lee et al. 2019 App. E; Jacot et al. 2018).

Network (Lee et al. Eq. 1): L hidden layers of width n, then a linear readout (layer L+1)::

    h^1 = sigma_w/sqrt(n0) x omega^1 + sigma_b beta^1,
    h^{l+1} = sigma_w/sqrt(n) phi(h^l) omega^{l+1} + sigma_b beta^{l+1},   l = 1..L.

Infinite-width recursion (w_var = sigma_w^2, b_var = sigma_b^2, T / Tdot of Eq. S24)::

    K^1 = w_var x.x'/n0 + b_var,   Theta^1 = K^1                                  (S27, S29)
    K^{l+1} = w_var T(K^l) + b_var                                                (S26)
    Theta^{l+1} = K^{l+1} + w_var Tdot(K^l) Theta^l                               (S29)

and the output kernels are K^{L+1}, Theta^{L+1}.

Style of neural-tangents: the state is an immutable `Kernel` (a JAX pytree); a layer is a small
function Kernel -> Kernel (`dense`, `nonlinearity`), and `fc` is a fold over the layer list
``[dense, (nonlinearity, dense) * L]`` starting from `input_kernel`.  After `nonlinearity` the
fields hold the post-activation quantities (nngp = T(K^l), ntk = Tdot(K^l) Theta^l); after `dense`
the pre-activation ones (K^{l+1}, Theta^{l+1}).

Standard parameterization (Lee et al. App. F, Eq. S36: W ~ N(0, w_var/n_in), b ~ N(0, b_var)):
the forward pass has the same law, so the NNGP is unchanged; the NTK is the limit of
(1/n) J J^T (Eq. S42), n = hidden width.  Writing J J^T layer by layer (weight Gram of layer l:
x^{l-1}.x^{l-1}' un-normalised; bias Gram: 1 when the layer has a bias, i.e. b_var > 0) and
dividing by n gives, with 1_b = 1[b_var > 0]::

    Theta_std^1 = x.x'/n + 1_b/n
    Theta_std^{l+1} = T(K^l) + 1_b/n + w_var Tdot(K^l) Theta_std^l

(for l >= 1 the layer input has width n, so x^l.x^l'/n -> T(K^l)).  With depth 1 this is the exact
expectation of (1/n) J J^T at any width n, since h^1 is exactly Gaussian; for deeper nets it is
the large-n limit with the O(1/n) terms kept.  `width=inf` drops the 1/n terms.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.errors import ConfigError
from ntkrepro.kernels.activations import (DEFAULT_QUAD_POINTS, MAX_QUAD_POINTS, METHODS,
                                          QUADRATURE_RULES, t_tdot)
from ntkrepro.nets import activation_fn, check_parameterization

Array = jax.Array


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["nngp", "ntk", "var1", "var2"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class Kernel:
    """Immutable kernel state between layers (a JAX pytree).

    nngp: (N1, N2) covariance K(x1_i, x2_j); after the readout, K^{L+1} = E[f(x) f(x')].
    ntk:  (N1, N2) tangent kernel Theta(x1_i, x2_j); after the readout, Theta^{L+1}.
    var1: (N1,) K(x1_i, x1_i), the diagonal needed to form each 2 x 2 covariance for T / Tdot.
    var2: (N2,) K(x2_j, x2_j) (equal to var1 when x2 is None).

    Between layers the fields describe the current representation: pre-activations after
    `dense`, post-activations after `nonlinearity` (nngp = T(K), ntk = Tdot(K) Theta, var = T).
    """

    nngp: Array
    ntk: Array
    var1: Array
    var2: Array

    def replace(self, **changes) -> "Kernel":
        return dataclasses.replace(self, **changes)


ROW_BLOCK_ENTRIES = 1 << 16  # kernel entries per block of rows in `fc` (cache-sized)


def _is_concrete(v) -> bool:
    return isinstance(v, numbers.Real)


def input_kernel(x1, x2=None, *, dtype=jnp.float64) -> Kernel:
    """Kernel of the raw inputs: nngp = x1 . x2 / n0 (the normalised Gram of Eq. S27), ntk = 0
    (a scalar zero, broadcast by the first layer: no (N1, N2) array of zeros is made).

    Inputs of shape (N, ...) are flattened to (N, n0).
    """
    x1 = jnp.asarray(x1, dtype)
    x1 = x1.reshape(x1.shape[0], -1) if x1.ndim != 2 else x1
    if x2 is None:
        x2_, same = x1, True
    else:
        x2_ = jnp.asarray(x2, dtype)
        x2_ = x2_.reshape(x2_.shape[0], -1) if x2_.ndim != 2 else x2_
        same = False
    if x1.shape[1] != x2_.shape[1]:
        raise ConfigError(f"x1 and x2 have different input sizes ({x1.shape[1]} vs {x2_.shape[1]})")
    n0 = x1.shape[1]
    gram = x1 @ x2_.T / n0
    if same:  # exactly symmetric, and variances bitwise equal to the diagonal: theta(x, x) = 0
        gram = (gram + gram.T) / 2
        var1 = var2 = jnp.diagonal(gram)
    else:
        var1, var2 = jnp.sum(x1 * x1, axis=1) / n0, jnp.sum(x2_ * x2_, axis=1) / n0
    return Kernel(nngp=gram, ntk=jnp.zeros((), gram.dtype), var1=var1, var2=var2)


def dense(k: Kernel, w_var, b_var, *, parameterization: str = "ntk", width: float = math.inf,
          fan_in: float | None = None) -> Kernel:
    """Affine layer h = sigma_w/sqrt(n_in) x omega + sigma_b beta acting on post-activation `k`.

    NNGP (S26, S27):  K' = w_var K + b_var.
    NTK parameterization (S29):  Theta' = K' + w_var Theta.
    Standard parameterization (S36, S42; see the module docstring):
        Theta' = (fan_in / width) K + 1[b_var > 0] / width + w_var Theta,
    where `fan_in` is the layer's input width (None = the hidden width, ratio 1; the first layer
    has fan_in = n0, so its term x.x'/n vanishes when width = inf).
    """
    nngp = w_var * k.nngp + b_var
    if parameterization == "ntk":
        own = nngp
    else:
        ratio = 1.0 if fan_in is None else fan_in / jnp.asarray(width, k.nngp.dtype)
        has_bias = jnp.where(jnp.asarray(b_var) > 0, 1.0, 0.0).astype(k.nngp.dtype)
        own = ratio * k.nngp + has_bias / jnp.asarray(width, k.nngp.dtype)
    return Kernel(nngp=nngp, ntk=own + w_var * k.ntk, var1=w_var * k.var1 + b_var,
                  var2=w_var * k.var2 + b_var)


def nonlinearity(k: Kernel, activation: str, *, method: str = "auto",
                 quad_points: int = DEFAULT_QUAD_POINTS, quad_rule: str = "polar") -> Kernel:
    """Elementwise phi on pre-activations: nngp -> T(K), ntk -> Tdot(K) * Theta (Eqs. S24, S29).

    T / Tdot use the 2 x 2 covariance [[var1_i, K_ij], [K_ij, var2_j]] of each pair; the closed
    forms (relu, erf, identity) or quadrature, see `ntkrepro.kernels.activations.t_tdot`.
    """
    # Pairs by broadcasting (N1, 1) against (1, N2) variances, so XLA fuses the whole layer into
    # one elementwise pass over the (N1, N2) kernel; the two diagonals separately.
    f = functools.partial(t_tdot, activation, method=method, quad_points=quad_points,
                          quad_rule=quad_rule)
    t, tdot = f(k.nngp, k.var1[:, None], k.var2[None, :])
    var1, _ = f(k.var1, k.var1, k.var1)
    var2, _ = f(k.var2, k.var2, k.var2)
    return Kernel(nngp=t, ntk=tdot * k.ntk, var1=var1, var2=var2)


def fc_layers(*, depth: int, activation: str = "relu", w_var=2.0, b_var=0.0,
              parameterization: str = "ntk", width: float = math.inf, n0: int,
              method: str = "auto", quad_points: int = DEFAULT_QUAD_POINTS,
              quad_rule: str = "polar") -> list[Callable[[Kernel], Kernel]]:
    """The layer maps of an L-hidden-layer MLP: dense(n0 -> n), [phi, dense(n -> n)] * L."""
    lin = functools.partial(dense, w_var=w_var, b_var=b_var, parameterization=parameterization,
                            width=width)
    act = functools.partial(nonlinearity, activation=activation, method=method,
                            quad_points=quad_points, quad_rule=quad_rule)
    return [functools.partial(lin, fan_in=n0)] + [act, lin] * depth


def _validate(depth, activation, w_var, b_var, parameterization, width, method, quad_points,
              quad_rule):
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 1:
        raise ConfigError(f"depth must be an integer >= 1 (number of hidden layers), got {depth!r}")
    activation_fn(activation)
    check_parameterization(parameterization)
    if _is_concrete(w_var) and w_var <= 0:
        raise ConfigError(f"w_var must be > 0, got {w_var}")
    if _is_concrete(b_var) and b_var < 0:
        raise ConfigError(f"b_var must be >= 0, got {b_var}")
    if parameterization == "standard" and _is_concrete(width) and not width > 0:
        raise ConfigError(f"width must be positive (or math.inf), got {width}")
    if method not in METHODS:
        raise ConfigError(f"unknown kernel method '{method}'; choose one of {', '.join(METHODS)}")
    if quad_rule not in QUADRATURE_RULES:
        raise ConfigError(f"unknown quadrature rule '{quad_rule}'; choose one of "
                          f"{', '.join(QUADRATURE_RULES)}")
    if not 2 <= int(quad_points) <= MAX_QUAD_POINTS[quad_rule]:
        raise ConfigError(f"quad_points must be in [2, {MAX_QUAD_POINTS[quad_rule]}] for rule "
                          f"'{quad_rule}', got {quad_points}")


def fc(x1, x2=None, *, depth: int, activation: str = "relu", w_var=2.0, b_var=0.0,
       parameterization: str = "ntk", width: float = math.inf, dtype=jnp.float64,
       method: str = "auto", quad_points: int = DEFAULT_QUAD_POINTS,
       quad_rule: str = "polar") -> Kernel:
    """NNGP K^{L+1} and NTK Theta^{L+1} of an MLP with `depth` = L hidden layers (Lee et al. Eq. 1).

    x1: (N1, n0) (or (N1, ...), flattened); x2: (N2, n0) or None (= x1).  Returns a `Kernel` with
    nngp, ntk of shape (N1, N2) (Eqs. S26, S27, S29).  `parameterization="standard"` gives the
    NTK of Eq. S42, lim (1/n) J J^T; a finite `width` n keeps its O(1/n) terms (for comparison
    with a finite network), `width=inf` is the limit.  `width` is ignored for "ntk".
    `method` / `quad_points` / `quad_rule` select how T and Tdot are computed (closed form for
    relu, erf, identity; quadrature otherwise, see `activations.quadrature_t_tdot`).

    Jit with the configuration static, e.g.
    ``jax.jit(fc, static_argnames=("depth", "activation", "parameterization", "dtype"))``;
    w_var, b_var and width may be traced.  Memory O(N1 N2).
    """
    _validate(depth, activation, w_var, b_var, parameterization, width, method, quad_points,
              quad_rule)
    return _fc(x1, x2, w_var, b_var, width, depth=int(depth), activation=activation,
               parameterization=parameterization, dtype=dtype, method=method,
               quad_points=int(quad_points), quad_rule=quad_rule)


@functools.partial(jax.jit, static_argnames=("depth", "activation", "parameterization", "dtype",
                                             "method", "quad_points", "quad_rule"))
def _fc(x1, x2, w_var, b_var, width, *, depth, activation, parameterization, dtype, method,
        quad_points, quad_rule) -> Kernel:
    """`fc` after validation, compiled once per configuration and input shapes (w_var, b_var and
    width are traced, so e.g. a sweep over widths reuses one compilation)."""
    k0 = input_kernel(x1, x2, dtype=dtype)
    n0 = math.prod(jnp.shape(x1)[1:])
    layers = fc_layers(depth=depth, activation=activation, w_var=w_var, b_var=b_var,
                       parameterization=parameterization, width=width, n0=n0, method=method,
                       quad_points=quad_points, quad_rule=quad_rule)

    def fold(k):
        return functools.reduce(lambda k, layer: layer(k), layers, k)

    n1, n2 = k0.nngp.shape
    rows = max(1, ROW_BLOCK_ENTRIES // n2)
    if n1 <= rows:
        return fold(k0)
    if x2 is None:
        return _fold_symmetric(fold, k0)
    # Every layer is elementwise on the Gram: run all of them on one block of rows at a time, so
    # the block stays in cache across layers and temporaries are O(block) instead of O(N1 N2).
    pad = -n1 % rows
    gram = jnp.pad(k0.nngp, ((0, pad), (0, 0))).reshape(-1, rows, n2)
    var1 = jnp.pad(k0.var1, (0, pad), constant_values=1.0).reshape(-1, rows)

    def block(args):
        g, v1 = args
        k = fold(Kernel(nngp=g, ntk=k0.ntk, var1=v1, var2=k0.var2))
        return k.nngp, k.ntk, k.var1, k.var2

    nngp, ntk, var1, var2 = jax.lax.map(block, (gram, var1))
    return Kernel(nngp=nngp.reshape(-1, n2)[:n1], ntk=ntk.reshape(-1, n2)[:n1],
                  var1=var1.reshape(-1)[:n1], var2=var2[0])


def _fold_symmetric(fold, k0: Kernel) -> Kernel:
    """`fold` over a symmetric Gram (x2 = None): every layer is elementwise and maps a symmetric
    kernel to a symmetric one, so only the tiles on and above the diagonal are computed (about
    half the work); the tiles below are their transposes.  Tiles are cache-sized squares."""
    n = k0.nngp.shape[0]
    b = max(1, math.isqrt(ROW_BLOCK_ENTRIES))
    nt = -(-n // b)
    pad = nt * b - n
    gram = jnp.pad(k0.nngp, ((0, pad), (0, pad)))
    var = jnp.pad(k0.var1, (0, pad), constant_values=1.0)
    iu, ju = np.triu_indices(nt)
    ii, jj = jnp.asarray(iu, jnp.int32), jnp.asarray(ju, jnp.int32)

    def tile(ij):
        i, j = ij
        g = jax.lax.dynamic_slice(gram, (i * b, j * b), (b, b))
        v1 = jax.lax.dynamic_slice(var, (i * b,), (b,))
        v2 = jax.lax.dynamic_slice(var, (j * b,), (b,))
        k = fold(Kernel(nngp=g, ntk=k0.ntk, var1=v1, var2=v2))
        return k.nngp, jnp.broadcast_to(k.ntk, (b, b)), k.var1

    nngp_t, ntk_t, var_t = jax.lax.map(tile, (ii, jj))

    # Gather (not scatter: several times slower on CPU) the (nt, nt) grid of tiles from the
    # computed ones and their transposes.
    grid = np.empty((nt, nt), np.int32)
    grid[iu, ju] = np.arange(len(iu))
    grid[ju, iu] = np.arange(len(iu)) + len(iu)
    grid[iu[iu == ju], iu[iu == ju]] = np.flatnonzero(iu == ju)

    def assemble(t):
        both = jnp.concatenate([t, jnp.swapaxes(t, 1, 2)])
        full = jnp.take(both, jnp.asarray(grid.reshape(-1)), axis=0).reshape(nt, nt, b, b)
        return full.transpose(0, 2, 1, 3).reshape(nt * b, nt * b)[:n, :n]

    var_out = var_t[np.flatnonzero(iu == ju)].reshape(-1)[:n]
    return Kernel(nngp=assemble(nngp_t), ntk=assemble(ntk_t), var1=var_out, var2=var_out)
