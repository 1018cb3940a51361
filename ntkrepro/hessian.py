"""Spectrum of the Hessian of the model output w.r.t. the parameters (Liu, Zhu & Belkin 2020).

Liu et al. (Sec. 2, Def. of H; Sec. 3, Eq. 5; Table 1) study the Hessian of the *model*, not of a
loss::

    H(w; x) = d^2 f(w; x) / dw^2                       (a P x P matrix, one input x, scalar f)

and its spectral norm ||H|| = max_i |lambda_i(H)|.  For networks with a linear output layer,
||H|| = O~(1/sqrt(m)) in the width m (Theorem 3.1, Eq. 5 for one hidden layer); with a nonlinear
output layer phi, f~ = phi(f) has  H~ = phi''(f) grad f grad f^T + phi'(f) H  (Eq. 13), hence
||H~|| >= |phi''(f)| ||grad f||^2 - |phi'(f)| ||H|| = Omega(1) (Eq. 14); ||grad f||^2 = K(x, x) is
the tangent kernel's diagonal entry (Eq. 6), see `gradient_norm`.

What is computed here
---------------------
Every function takes a model ``f(params, x)`` and reduces its output to one scalar
``s(w) = sum_j c_j f_j(w; x)``:

* ``output_weights=None`` (default): the output must hold exactly one number (a scalar, or shape
  ``(1,)``/``(1, 1)``: one input of a one-output network) and ``s = f(w; x)``.  This is Liu et al.'s
  Table 1 quantity.  Anything bigger raises `ConfigError` rather than silently summing.
* ``output_weights=c`` (an array broadcastable to the output's shape): ``s = sum(c * f(w; x))``, e.g.
  ``jnp.ones`` for the sum of outputs over a batch, or a one-hot vector to pick one output of a
  vector-valued network.  Note that the Hessian of a sum over inputs is the *sum* of per-input
  Hessians, which is NOT what Liu et al. bound; for their quantity over several inputs, take the
  per-input norms and their maximum (`hessian_spectral_norms`, `max_hessian_spectral_norm`).

The Hessian is never formed: `hvp` is forward-over-reverse (``jax.jvp`` of ``jax.grad``), costing a
small constant times one gradient; the spectral routines run on the flattened parameter vector
(``jax.flatten_util.ravel_pytree``) with

* Lanczos with full reorthogonalisation (default): at most ``num_iters`` steps (Krylov dimension,
  default 50), eigenvalues of the tridiagonal matrix in float64; stops early once the residual
  ``beta_j |s_j|`` of the wanted Ritz pairs is below ``tol * max|theta|``.  The top eigenvalues of a
  wide one-hidden-layer network cluster (||H|| is a maximum over m near-independent hidden-unit
  blocks, Eq. 5), so more steps are needed as m grows: ~30 at m = 10^4, ~48 at m = 10^6 for
  tol = 1e-4.  Memory: ``num_iters`` vectors of size P (``reorthogonalize=False`` keeps only 3, at
  the cost of spurious copies of converged Ritz values, harmless for the spectral norm; at
  P = 1.1e7 on 2 CPU cores it needs 0.8 GB instead of 5.3 GB and is faster: each step of full
  reorthogonalisation reads the whole (num_iters, P) basis twice).
* power iteration on H: converges to the eigenvector(s) of largest |lambda|.  The estimate is
  ``||H v_k||`` for the unit iterate ``v_k`` (a lower bound on ||H|| that never decreases and is
  correct also when lambda_max = -lambda_min, where the Rayleigh quotient would average to ~0), so
  a negative dominant eigenvalue is reported by its magnitude.  Error ~ (|lambda_2|/|lambda_1|)^(2k);
  stops when the relative residual of ``(||H v_k||^2, v_k)`` as an eigenpair of H^2 is below
  ``tol``.  Memory: 3 vectors of size P.

Krylov vectors are float64 when ``jax_enable_x64`` is on (float32 otherwise); the HVP itself runs in
the parameters' dtype, so pass float64 parameters for float64 Hessian-vector products.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ntkrepro.errors import ConfigError

__all__ = [
    "hvp",
    "gradient_norm",
    "hessian_spectral_norm",
    "hessian_top_eigenvalues",
    "hessian_spectral_norms",
    "max_hessian_spectral_norm",
    "HessianConvergenceWarning",
]

METHODS = ("lanczos", "power")
DEFAULT_LANCZOS_ITERS = 50
DEFAULT_POWER_ITERS = 500


class HessianConvergenceWarning(RuntimeWarning):
    """An iterative eigen-solver stopped at ``num_iters`` before reaching ``tol``."""


# ----------------------------------------------------------------------------------------------
# The scalar whose Hessian is taken
# ----------------------------------------------------------------------------------------------
def _reduce_output(out, output_weights):
    """s = f (one number) or sum(c * f); see the module docstring."""
    out = jnp.asarray(out)
    if output_weights is None:
        if out.size != 1:
            raise ConfigError(
                f"the model output has shape {tuple(out.shape)}, not a single number; pass one input "
                "of a one-output model (Liu et al.'s H(w; x)), or output_weights (e.g. ones for the "
                "sum over a batch), or use max_hessian_spectral_norm for a maximum over inputs")
        return out.reshape(())
    c = jnp.asarray(output_weights, dtype=out.dtype)
    try:
        jnp.broadcast_shapes(c.shape, out.shape)
    except ValueError:
        raise ConfigError(f"output_weights of shape {tuple(c.shape)} do not broadcast to the model "
                          f"output's shape {tuple(out.shape)}") from None
    return jnp.sum(out * c)


def _cast_like(tree, like):
    return jax.tree_util.tree_map(lambda t, p: jnp.asarray(t, dtype=jnp.asarray(p).dtype), tree, like)


def _hvp_tree(f, params, x, v, output_weights):
    s = lambda p: _reduce_output(f(p, x), output_weights)  # noqa: E731
    return jax.jvp(jax.grad(s), (params,), (_cast_like(v, params),))[1]


def _grad_tree(f, params, x, output_weights):
    return jax.grad(lambda p: _reduce_output(f(p, x), output_weights))(params)


# `f` is a static argument: one compilation per model function (and argument shapes), reused by
# every call with the same `f` object; params and x are arguments, never baked-in constants.
class _ByIdentity:
    """Hashable stand-in for an unhashable model function (compiled afresh per call)."""

    def __init__(self, f):
        self.f = f

    def __call__(self, *args):
        return self.f(*args)


def _static(f):
    try:
        hash(f)
        return f
    except TypeError:
        return _ByIdentity(f)


_hvp_jit = jax.jit(_hvp_tree, static_argnums=0)
_grad_jit = jax.jit(_grad_tree, static_argnums=0)


def _flat_matvec(f, params, x, output_weights, v_flat):
    """H v on flat vectors: v_flat is unravelled to params' structure and dtypes, H v ravelled."""
    _, unravel = ravel_pytree(params)  # only its structure is used; XLA drops the concatenation
    hv, _ = ravel_pytree(_hvp_tree(f, params, x, unravel(v_flat), output_weights))
    return hv.astype(v_flat.dtype)


_flat_matvec_jit = jax.jit(_flat_matvec, static_argnums=0)


def hvp(f: Callable, params: Any, x, v: Any, *, output_weights=None) -> Any:
    """Hessian-vector product  H v  with  H = d^2 s / dw^2  at ``w = params`` (Liu et al. Sec. 2).

    ``s = f(params, x)`` for one input of a one-output model, or ``sum(output_weights * f(params,
    x))`` (e.g. the sum of outputs over a batch).  ``v`` is a pytree shaped like ``params``; so is
    the result.  Forward-over-reverse: ``jax.jvp(jax.grad(s), (params,), (v,))``; H is never
    formed.  Jitted with ``f`` static (``f`` must be hashable, as functions are; reuse the same
    ``f`` object to reuse the compilation).
    """
    return _hvp_jit(_static(f), params, x, v, output_weights)


def gradient_norm(f: Callable, params: Any, x, *, output_weights=None) -> float:
    """||grad_w s(w)|| at ``w = params``; for one input, ``sqrt(K(x, x))`` of Liu et al. Eq. 6."""
    flat, _ = ravel_pytree(_grad_jit(_static(f), params, x, output_weights))
    return float(jnp.linalg.norm(flat.astype(_basis_dtype())))


# ----------------------------------------------------------------------------------------------
# H as a linear operator on flat vectors
# ----------------------------------------------------------------------------------------------
def _basis_dtype():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


class _FlatHessian:
    """v -> H v on vectors of length P (the ravelled parameters); never holds H."""

    def __init__(self, f, params, x, output_weights):
        leaves = [jnp.asarray(p) for p in jax.tree_util.tree_leaves(params)]
        self.size = int(sum(p.size for p in leaves))
        if self.size == 0:
            raise ConfigError("the model has no parameters: its Hessian is empty")
        if not all(jnp.issubdtype(p.dtype, jnp.floating) for p in leaves):
            raise ConfigError("parameters must be floating point, got "
                              f"{sorted({str(p.dtype) for p in leaves})}")
        self.dtype = _basis_dtype()
        self._args = (_static(f), params, x, output_weights)

    def __call__(self, v):
        return _flat_matvec_jit(*self._args, v)

    def start_vector(self, key):
        key = jax.random.PRNGKey(0) if key is None else key
        v = jax.random.normal(key, (self.size,), self.dtype)
        return v / jnp.linalg.norm(v)


@jax.jit
def _norm(a):
    return jnp.linalg.norm(a)


@jax.jit
def _scale(w, s):
    return w * s


def _lanczos_step(w, v, v_prev, beta_prev, basis, n):
    """One Lanczos step after w = H v: three-term recurrence, then (when `basis` is not None) full
    reorthogonalisation against its first n rows (the later rows are zero) by classical
    Gram-Schmidt, repeated once when the norm drops below 1/sqrt(2) of its value (the DGKS
    criterion of ARPACK).  One compiled program for all n: the cost is two passes over `basis`."""
    alpha = jnp.vdot(v, w)
    w = w - alpha * v - beta_prev * v_prev
    if basis is not None:
        mask = (jnp.arange(basis.shape[0]) < n).astype(w.dtype)

        def project_out(w):
            return w - ((basis @ w) * mask) @ basis

        before = jnp.linalg.norm(w)
        w = project_out(w)
        w = jax.lax.cond(jnp.linalg.norm(w) < before / jnp.sqrt(2.0), project_out, lambda u: u, w)
    return w, alpha, jnp.linalg.norm(w)


_lanczos_step = jax.jit(_lanczos_step)


def _store_row(basis, j, v):
    return basis.at[j].set(v)


_store_row = jax.jit(_store_row, donate_argnums=(0,))


def _tridiagonal(alphas, betas):
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if len(alphas) > 1:
        off = np.asarray(betas[: len(alphas) - 1], dtype=np.float64)
        t += np.diag(off, 1) + np.diag(off, -1)
    return t


def _order(theta, which):
    if which == "magnitude":
        return np.argsort(-np.abs(theta), kind="stable")
    if which == "largest":
        return np.argsort(-theta, kind="stable")
    raise ConfigError(f"unknown which='{which}'; choose 'magnitude' or 'largest'")


def _lanczos(op: _FlatHessian, *, k: int, num_iters: int, key, tol: float, which: str,
             reorthogonalize: bool = True):
    """Ritz values of the `k` wanted eigenvalues after <= num_iters Lanczos steps (float64 T)."""
    n_steps = min(int(num_iters), op.size)
    v = op.start_vector(key)
    v_prev = jnp.zeros_like(v)
    basis = None
    if reorthogonalize:
        basis = _store_row(jnp.zeros((n_steps, op.size), op.dtype), 0, v)
    alphas: list[float] = []
    betas: list[float] = []
    beta = 0.0
    theta = np.zeros(0)
    converged = False
    for j in range(n_steps):
        w, alpha, beta = _lanczos_step(op(v), v, v_prev, beta, basis, j + 1)
        alpha, beta = float(alpha), float(beta)
        alphas.append(alpha)
        betas.append(beta)
        theta, s = np.linalg.eigh(_tridiagonal(alphas, betas))
        wanted = _order(theta, which)[: min(k, len(theta))]
        scale = max(float(np.max(np.abs(theta))), np.finfo(np.float64).tiny)
        residual = beta * np.abs(s[-1, wanted])
        # invariant subspace (beta ~ 0): the Ritz values are exact eigenvalues of H
        if beta <= 1e3 * np.finfo(np.dtype(op.dtype)).eps * scale or beta == 0.0:
            converged = len(theta) >= k
            break
        if len(theta) >= k and np.all(residual <= tol * scale):
            converged = True
            break
        v_prev, v = v, _scale(w, 1.0 / beta)
        if basis is not None and j + 1 < n_steps:
            basis = _store_row(basis, j + 1, v)
    if len(theta) < k:
        raise ConfigError(f"asked for {k} eigenvalues but the Krylov space has dimension "
                          f"{len(theta)} (num_iters too small, or the start vector spans an "
                          "invariant subspace); "
                          f"raise num_iters (<= number of parameters {op.size}) or change key")
    if not converged and len(theta) < op.size:
        warnings.warn(f"Lanczos stopped at num_iters={n_steps} with Ritz residual above "
                      f"tol={tol:g} x max|theta|; raise num_iters", HessianConvergenceWarning,
                      stacklevel=3)
    return theta[_order(theta, which)[:k]]


@jax.jit
def _h2_residual(w_next, v, norm):
    """||H^2 v - mu v|| / mu with mu = ||H v||^2, from w_next = H (H v / ||H v||) and norm = ||H v||."""
    return jnp.linalg.norm(w_next - norm * v) / norm


def _power(op: _FlatHessian, *, num_iters: int, key, tol: float) -> float:
    """max |lambda(H)| as lim ||H v_k||, v_{k+1} = H v_k / ||H v_k|| (sign-safe; see module doc).

    Stops when the residual of the Rayleigh pair (mu = ||H v_k||^2, v_k) of H^2 is below
    ``tol * mu``: some eigenvalue lambda^2 of H^2 then lies within that distance of mu.  The
    residual comes free from the next product H v_{k+1}; ``num_iters`` counts products.
    """
    v = op.start_vector(key)
    w = op(v)
    norm = float(_norm(w))
    for _ in range(int(num_iters) - 1):
        if norm == 0.0:
            return 0.0
        v_next = _scale(w, 1.0 / norm)
        w_next = op(v_next)
        residual = float(_h2_residual(w_next, v, norm))
        v, w, norm = v_next, w_next, float(_norm(w_next))
        if residual <= tol:
            return norm
    warnings.warn(f"power iteration stopped at num_iters={num_iters} with relative residual above "
                  f"tol={tol:g}; raise num_iters or use method='lanczos'", HessianConvergenceWarning,
                  stacklevel=3)
    return norm


# ----------------------------------------------------------------------------------------------
# Public spectral functions
# ----------------------------------------------------------------------------------------------
def hessian_spectral_norm(f: Callable, params: Any, x, *, method: str = "lanczos",
                          num_iters: int | None = None, key=None, tol: float = 1e-4,
                          output_weights=None, reorthogonalize: bool = True) -> float:
    """||H|| = max_i |lambda_i(H)|, H = d^2 f(w; x) / dw^2 at ``w = params`` (Liu et al. Eq. 5, Table 1).

    ``method="lanczos"`` (default; ``num_iters`` = maximal Krylov dimension, default 50; stops when
    the Ritz residual ``||H u - theta u||`` of the top Ritz pair is below ``tol * |theta|``: some
    eigenvalue then lies within that distance of theta, and the actual error is typically
    ~ residual^2 / gap, far smaller) or ``"power"`` (default 500 Hessian-vector products; stops
    when the relative residual of the estimate as an eigenvalue of H^2 is below ``tol``; needs
    ~ log(tol) / log((lambda_2/lambda_1)^2) products, many when the top eigenvalues cluster, as at
    wide one-hidden-layer networks: prefer Lanczos there).  ``key``: PRNG key for the random
    start (default ``PRNGKey(0)``).  See the module docstring for ``output_weights``.
    Memory: O(P) for power iteration and ``reorthogonalize=False``; ``num_iters * P`` for Lanczos
    with full reorthogonalisation.  Warns `HessianConvergenceWarning` when ``tol`` is not reached.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose 'lanczos' or 'power'")
    _check_iters(num_iters, tol)
    op = _FlatHessian(f, params, x, output_weights)
    if method == "power":
        return _power(op, num_iters=num_iters or DEFAULT_POWER_ITERS, key=key, tol=tol)
    theta = _lanczos(op, k=1, num_iters=num_iters or DEFAULT_LANCZOS_ITERS, key=key, tol=tol,
                     which="magnitude", reorthogonalize=reorthogonalize)
    return float(abs(theta[0]))


def hessian_top_eigenvalues(f: Callable, params: Any, x, k: int, *, num_iters: int | None = None,
                            key=None, tol: float = 1e-6, which: str = "magnitude",
                            output_weights=None) -> np.ndarray:
    """The k extreme eigenvalues of H = d^2 f(w; x) / dw^2 (signed, float64), by Lanczos.

    ``which="magnitude"`` (default): the k of largest |lambda|, ordered by decreasing |lambda|;
    ``which="largest"``: the k algebraically largest, decreasing.  Krylov dimension ``num_iters``
    (default ``max(50, 4 k)``, capped at P) with full reorthogonalisation; stops early when all k
    Ritz residuals are below ``tol * max|theta|``.
    """
    if int(k) < 1:
        raise ConfigError(f"k must be a positive integer, got {k}")
    _check_iters(num_iters, tol)
    op = _FlatHessian(f, params, x, output_weights)
    if k > op.size:
        raise ConfigError(f"asked for {k} eigenvalues of a {op.size} x {op.size} Hessian")
    num_iters = num_iters or max(DEFAULT_LANCZOS_ITERS, 4 * int(k))
    _order(np.zeros(1), which)  # validate early
    return _lanczos(op, k=int(k), num_iters=num_iters, key=key, tol=tol, which=which)


def hessian_spectral_norms(f: Callable, params: Any, xs, **kwargs) -> np.ndarray:
    """Per-input ||H(w; x_i)|| for each row ``xs[i]`` (passed to f as ``xs[i:i+1]``, a batch of one).

    Keyword arguments go to `hessian_spectral_norm`.  This is Liu et al.'s one-input quantity
    evaluated at several inputs (not the Hessian of a sum over inputs).
    """
    return np.array([hessian_spectral_norm(f, params, xs[i:i + 1], **kwargs)
                     for i in range(len(xs))], dtype=np.float64)


def max_hessian_spectral_norm(f: Callable, params: Any, xs, **kwargs) -> float:
    """max_i ||H(w; x_i)|| over the rows of ``xs``; see `hessian_spectral_norms`."""
    return float(np.max(hessian_spectral_norms(f, params, xs, **kwargs)))


def _check_iters(num_iters, tol):
    if num_iters is not None and int(num_iters) < 1:
        raise ConfigError(f"num_iters must be a positive integer, got {num_iters}")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ConfigError(f"tol must be a finite non-negative number, got {tol}")
