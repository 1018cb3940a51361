"""Closed-form (and ODE) training dynamics of linearized networks, Lee et al. 2019 Secs. 2.2-2.3, App. B, D.

Conventions shared by every function here
-----------------------------------------
* **Loss normalisation.**  The paper's equations use the *total* loss L = sum_n l(f(x_n), y_n)
  (Eq. 2, footnote 6), with l = 1/2 ||f - y||^2 for MSE, so grad_f L = f(X) - Y.  Every function
  takes ``loss_scale`` with grad_f L = loss_scale * (f(X) - Y) (or loss_scale * (softmax(f) - Y) for
  cross-entropy): ``"total"`` (= 1, the default, the paper's Eqs. 8-11, 14-16, S1-S4, S10-S11,
  S20-S23) or ``"mean"`` (= 1/N, the per-example average used by
  `ntkrepro.linearize.mse_loss` / `xent_loss` and by the paper's plots), or any positive float.
  Only the product ``lr * loss_scale`` enters, so "mean" with lr is "total" with lr / N.
* **Kernels.**  ``theta_train`` is either (N, N), a kernel shared by the k outputs (Theta ⊗ I_k, as
  for the analytic kernels and for k = 1; note `empirical_ntk(..., trace=True)` *sums* over the k
  outputs, so divide it by k to get the per-output kernel), or (N, N, k, k) with entries
  Theta^{ab}(x_i, x_j) (`empirical_ntk(..., trace=False)`), used as the k N x k N matrix of the
  paper (row index i * k + a).  ``theta_test_train`` is (M, N) or (M, N, k, k) correspondingly.
* **Outputs** have shape (T, N, k) (train) and (T, M, k) (test), one slice per entry of
  ``times`` / ``steps``; a 1-D ``y`` of shape (N,) counts as k = 1.  All arithmetic is float64
  NumPy (inputs of any float dtype are cast first, whatever JAX's x64 flag), the ODE runs in
  float64 JAX; results are float64 NumPy arrays (the weight pytrees keep the parameters' dtype).
* **One eigendecomposition.**  Theta = V diag(lambda) V^T is computed once per call and reused for
  every time.  Every MSE trajectory is written with two scalar functions of each eigenvalue,

      residual:  f_t(X) - Y      = V diag(c_t(lambda)) V^T (f_0(X) - Y)
      gain:      G_t = V diag(G_t(lambda)) V^T,  c_t = 1 - lambda G_t,

  so that (Eqs. 8-11)  omega_t = -J_0(X)^T G_t (f_0(X) - Y),
  f_t(x) = f_0(x) - Theta(x, X) G_t (f_0(X) - Y).  For gradient flow
  G_t = Theta^{-1}(I - e^{-eta Theta t}) (computed as eta t (1 - e^{-z}) / z, z = eta lambda t, so
  that no Theta^{-1} is formed and singular kernels are fine at finite t); at t = inf the limit
  uses the pseudo-inverse (eigenvalues below ``N * eps * lambda_max`` count as zero).
* **Divergence** (discrete GD with eta lambda_max > 2, momentum outside its stability region) is
  returned as it is: growing, then inf / nan values, never an exception.
"""
from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.errors import ConfigError

__all__ = [
    "Trajectory",
    "gradient_flow_mse",
    "gradient_descent_mse",
    "momentum_mse",
    "weights_mse",
    "weights_flow_mse",
    "weights_gd_mse",
    "ntk_gp_mean_cov",
    "nngp_posterior",
    "readout_mean_cov",
    "xent_ode",
]


class Trajectory(NamedTuple):
    """Outputs over time: ``train`` (T, N, k); ``test`` (T, M, k) or None without test points."""

    train: np.ndarray
    test: np.ndarray | None


# ----------------------------------------------------------------------------------------------
# Input handling


def _f64(a) -> np.ndarray:
    return np.asarray(np.asarray(a), dtype=np.float64)


def _scale(loss_scale, n: int) -> float:
    if isinstance(loss_scale, str):
        if loss_scale == "total":
            return 1.0
        if loss_scale == "mean":
            return 1.0 / n
        raise ConfigError(f"loss_scale must be 'total', 'mean' or a positive number, got '{loss_scale}'")
    s = float(loss_scale)
    if not np.isfinite(s) or s <= 0:
        raise ConfigError(f"loss_scale must be positive and finite, got {loss_scale}")
    return s


def _rate(lr, loss_scale, n: int) -> float:
    lr = float(lr)
    if not np.isfinite(lr) or lr <= 0:
        raise ConfigError(f"learning rate must be positive and finite, got {lr}")
    return lr * _scale(loss_scale, n)


def _targets(y) -> np.ndarray:
    y = _f64(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ConfigError(f"targets must have shape (N,) or (N, k), got {y.shape}")
    return y


def _outputs(f0, shape, name: str) -> np.ndarray:
    """f0 as (n, k); None means zero initial outputs (the mean part, Eq. 10)."""
    if f0 is None:
        return np.zeros(shape)
    f0 = _f64(f0)
    if f0.ndim == 1 and shape[1] == 1:
        f0 = f0[:, None]
    if f0.shape != tuple(shape):
        raise ConfigError(f"{name} must have shape {tuple(shape)} (matching the targets), got {f0.shape}")
    return f0


def _kernel(theta, rows: int, cols: int, k: int, name: str) -> tuple[np.ndarray, bool]:
    """(matrix, flat): flat=True for an (n, m, k, k) kernel turned into its (n k, m k) matrix."""
    theta = _f64(theta)
    if theta.ndim == 2:
        if theta.shape != (rows, cols):
            raise ConfigError(f"{name} must have shape {(rows, cols)}, got {theta.shape}")
        return theta, False
    if theta.ndim == 4:
        if theta.shape != (rows, cols, k, k):
            raise ConfigError(f"{name} must have shape {(rows, cols)} or {(rows, cols, k, k)}, "
                              f"got {theta.shape}")
        return theta.transpose(0, 2, 1, 3).reshape(rows * k, cols * k), True
    raise ConfigError(f"{name} must be 2-D (N, M) or 4-D (N, M, k, k), got shape {theta.shape}")


def _eigh(theta: np.ndarray):
    """Eigendecomposition of the symmetrized kernel and the zero-eigenvalue cutoff."""
    lam, v = np.linalg.eigh(0.5 * (theta + theta.T))
    cutoff = theta.shape[0] * np.finfo(np.float64).eps * max(float(np.max(np.abs(lam))), 1e-300)
    return lam, v, cutoff


def _times(times, name: str = "times") -> np.ndarray:
    t = np.atleast_1d(_f64(times))
    if t.ndim != 1:
        raise ConfigError(f"{name} must be a scalar or a 1-D sequence, got shape {t.shape}")
    if np.any(np.isnan(t)) or np.any(t < 0):
        raise ConfigError(f"{name} must be non-negative (inf allowed), got {t}")
    return t


def _steps(steps) -> np.ndarray:
    s = _times(steps, "steps")
    finite = np.isfinite(s)
    if np.any(s[finite] != np.round(s[finite])):
        raise ConfigError(f"steps must be whole numbers of gradient steps (or inf), got {s}")
    return s


class _Problem(NamedTuple):
    """A train set in eigen-coordinates: residual r0 = f0(X) - Y in the (rows, cols) layout."""

    lam: np.ndarray
    v: np.ndarray
    cutoff: float
    r0_eig: np.ndarray  # V^T r0, (rows, cols)
    y: np.ndarray  # (N, k)
    f0: np.ndarray  # (N, k)
    flat: bool
    n: int
    k: int


def _layout(a: np.ndarray, flat: bool) -> np.ndarray:
    """(n, k) outputs in the matrix layout: (n k, 1) when the kernel is flat, else (n, k)."""
    return a.reshape(-1, 1) if flat else a


def _problem(theta_train, f0_train, y) -> _Problem:
    y = _targets(y)
    n, k = y.shape
    f0 = _outputs(f0_train, y.shape, "f0_train")
    theta, flat = _kernel(theta_train, n, n, k, "theta_train")
    lam, v, cutoff = _eigh(theta)
    r0_eig = v.T @ _layout(f0 - y, flat)
    return _Problem(lam, v, cutoff, r0_eig, y, f0, flat, n, k)


def _test_pieces(prob: _Problem, theta_test_train, f0_test):
    if theta_test_train is None:
        if f0_test is not None:
            raise ConfigError("f0_test given without theta_test_train; pass Theta(x_test, X_train) too")
        return None
    tt = _f64(theta_test_train)
    m = tt.shape[0] if tt.ndim in (2, 4) else -1
    theta_st, _ = _kernel(tt, m, prob.n, prob.k, "theta_test_train")
    f0s = _outputs(f0_test, (m, prob.k), "f0_test")
    return theta_st @ prob.v, f0s, m


# ----------------------------------------------------------------------------------------------
# Scalar eigen-coefficients c_t(lambda) (residual factor) and G_t(lambda) (gain), shapes (T, n)


def _phi1(z):
    """(1 - e^{-z}) / z, equal to 1 at z = 0, accurate for small |z|."""
    small = np.abs(z) < 1e-8
    zs = np.where(small, 1.0, z)
    return np.where(small, 1.0 - 0.5 * z, -np.expm1(-zs) / zs)


def _limit_coeffs(lam, cutoff, converges):
    """t = inf: c = 0, G = 1/lambda on converging modes; c = 1, G = 0 on null modes; nan else."""
    null = np.abs(lam) <= cutoff
    safe = np.where(null, 1.0, lam)
    c = np.where(null, 1.0, np.where(converges, 0.0, np.nan))
    g = np.where(null, 0.0, np.where(converges, 1.0 / safe, np.nan))
    return c, g


def _flow_coeffs(t, lam, cutoff, rate):
    """Gradient flow (Eq. 9): c = e^{-eta lambda t}, G = (1 - e^{-eta lambda t}) / lambda."""
    with np.errstate(all="ignore"):
        tt = np.where(np.isfinite(t), t, 0.0)[:, None]
        z = rate * lam[None, :] * tt
        c = np.exp(-z)
        g = rate * tt * _phi1(z)
        c_inf, g_inf = _limit_coeffs(lam, cutoff, lam > 0)
        inf = ~np.isfinite(t)
        c[inf], g[inf] = c_inf, g_inf
    return c, g


def _gd_coeffs(steps, lam, cutoff, rate):
    """Gradient descent: c = (1 - eta lambda)^s, G = eta sum_{j<s} (1 - eta lambda)^j."""
    with np.errstate(all="ignore"):
        s = np.where(np.isfinite(steps), steps, 0.0)[:, None]
        u = rate * lam[None, :]
        below = u < 1.0  # log1p path: accurate for small u, no sign alternation
        lg = np.log1p(-np.where(below, u, 0.0))
        c = np.where(below, np.exp(s * lg), np.power(1.0 - u, s))
        zero = u == 0.0
        g = np.where(zero, rate * s,
                     np.where(below, -np.expm1(s * lg), 1.0 - c) * rate / np.where(zero, 1.0, u))
        c_inf, g_inf = _limit_coeffs(lam, cutoff, (lam > 0) & (rate * lam < 2.0))
        inf = ~np.isfinite(steps)
        c[inf], g[inf] = c_inf, g_inf
    return c, g


def _batched_power(mats: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """mats (n, d, d) to the integer powers exps (T,): (T, n, d, d), by repeated squaring."""
    d = mats.shape[-1]
    exps = exps.astype(np.int64)
    out = np.broadcast_to(np.eye(d), (len(exps),) + mats.shape).copy()
    base = mats.copy()
    bits = int(exps.max()).bit_length() if len(exps) else 0
    for b in range(bits):
        take = ((exps >> b) & 1).astype(bool)
        if take.any():
            out[take] = out[take] @ base[None]
        if b + 1 < bits:
            base = base @ base
    return out


def _momentum_coeffs(steps, lam, cutoff, rate, beta):
    """Heavy ball (Eq. S1-S2) in each eigendirection, exactly (see `momentum_mse`)."""
    u = rate * lam
    n = len(lam)
    mats = np.zeros((n, 3, 3))
    mats[:, 0, 0] = 1.0 + beta - u
    mats[:, 0, 1] = -beta
    mats[:, 0, 2] = 1.0
    mats[:, 1, 0] = 1.0
    mats[:, 2, 2] = 1.0
    finite = np.isfinite(steps)
    c = np.empty((len(steps), n))
    g = np.empty((len(steps), n))
    with np.errstate(all="ignore"):
        if finite.any():
            p = _batched_power(mats, steps[finite])
            gs = p[..., 0, 2]  # (M^s e_3)_0 = g_s with g_0 = g_{-1} = 0
            g[finite] = rate * gs
            c[finite] = 1.0 - u[None, :] * gs
        if (~finite).any():
            # roots of z^2 - (1 + beta - u) z + beta: converges iff both lie inside the unit circle
            a = 1.0 + beta - u
            disc = np.sqrt((a * a - 4.0 * beta).astype(complex))
            radius = np.maximum(np.abs(0.5 * (a + disc)), np.abs(0.5 * (a - disc)))
            c_inf, g_inf = _limit_coeffs(lam, cutoff, (lam > 0) & (radius < 1.0))
            c[~finite], g[~finite] = c_inf, g_inf
    return c, g


def _assemble(prob: _Problem, c, g, test) -> Trajectory:
    """Train: Y + V c V^T r0;  test: f0(x) - Theta(x, X) V G V^T r0  (Eqs. 9-11)."""
    with np.errstate(all="ignore"):
        res = prob.v @ (c[:, :, None] * prob.r0_eig[None])
        train = prob.y[None] + res.reshape(len(c), prob.n, prob.k)
        out_test = None
        if test is not None:
            theta_sv, f0s, m = test
            delta = theta_sv @ (g[:, :, None] * prob.r0_eig[None])
            out_test = f0s[None] - delta.reshape(len(c), m, prob.k)
    return Trajectory(train, out_test)


# ----------------------------------------------------------------------------------------------
# MSE: outputs


def gradient_flow_mse(theta_train, f0_train, y, *, lr, times, theta_test_train=None, f0_test=None,
                      loss_scale="total") -> Trajectory:
    """Linearized outputs under gradient flow on MSE (Lee et al. Eqs. 9-11).

    f_t(X) = (I - e^{-eta Theta t}) Y + e^{-eta Theta t} f_0(X)                         (Eq. 9)
    f_t(x) = f_0(x) - Theta(x, X) Theta^{-1} (I - e^{-eta Theta t}) (f_0(X) - Y)    (Eqs. 10 + 11)

    with eta = lr * loss_scale (see the module docstring).  `times` may contain inf (the t -> inf
    limit, pseudo-inverse on null modes).  ``f0_train`` / ``f0_test`` = None mean zero initial
    outputs, which gives the mean part mu_t of Eq. 10.  Returns ``Trajectory(train (T, N, k),
    test (T, M, k) or None)``.
    """
    prob = _problem(theta_train, f0_train, y)
    test = _test_pieces(prob, theta_test_train, f0_test)
    c, g = _flow_coeffs(_times(times), prob.lam, prob.cutoff, _rate(lr, loss_scale, prob.n))
    return _assemble(prob, c, g, test)


def gradient_descent_mse(theta_train, f0_train, y, *, lr, steps, theta_test_train=None,
                         f0_test=None, loss_scale="total") -> Trajectory:
    """Linearized outputs after `steps` full-batch gradient-descent steps on MSE (Sec. 2.1, discrete).

    Sec. 2.1's discrete version of Eqs. 9-11: e^{-eta Theta t} is replaced by (I - eta Theta)^s::

        f_s(X) = Y + (I - eta Theta)^s (f_0(X) - Y)
        f_s(x) = f_0(x) - Theta(x, X) Theta^{-1} (I - (I - eta Theta)^s) (f_0(X) - Y)

    which is exactly what s steps of ``optax.sgd(lr)`` on the linearized model produce when Theta
    is its empirical NTK (the linear model's kernel is constant).  Theta^{-1}(I - (I - eta Theta)^s)
    is evaluated as eta sum_{j<s} (I - eta Theta)^j per eigenvalue (no inverse).  Any step count
    works; for eta lambda_max > 2 the values grow like |1 - eta lambda_max|^s and overflow to
    inf / nan, returned as such (no exception).  ``steps`` may contain inf (limit; nan when the
    iteration does not converge).
    """
    prob = _problem(theta_train, f0_train, y)
    test = _test_pieces(prob, theta_test_train, f0_test)
    c, g = _gd_coeffs(_steps(steps), prob.lam, prob.cutoff, _rate(lr, loss_scale, prob.n))
    return _assemble(prob, c, g, test)


def momentum_mse(theta_train, f0_train, y, *, lr, momentum, steps, theta_test_train=None,
                 f0_test=None, loss_scale="total") -> Trajectory:
    """Linearized outputs after `steps` of heavy-ball momentum on MSE (Lee et al. Eqs. S1-S2, exact).

    Implements the *discrete* updates S1/S2 (not their continuous limit S3/S4)::

        theta_{i+1} = theta_i + beta (theta_i - theta_{i-1}) - eta grad L(theta_i),  theta_{-1} = theta_0

    which is exactly ``optax.sgd(lr, momentum=beta)`` (nesterov=False): optax keeps
    m_i = g_i + beta m_{i-1} (m_{-1} = 0) and updates theta_{i+1} = theta_i - lr m_i, and
    -lr m_{i-1} = theta_i - theta_{i-1}.  (Note lr multiplies the whole trace, i.e. optax's
    momentum is S1 with eta = lr, beta = momentum, not the "dampened" (1 - beta) g form.)

    For the linear model write omega_i = -eta J^T q_i; then q_{i+1} = (1 + beta) q_i - beta q_{i-1} + r_i
    and r_i = r_0 - eta Theta q_i.  In the eigenbasis of Theta each direction obeys the affine
    two-term recurrence g_{i+1} = (1 + beta - eta lambda) g_i - beta g_{i-1} + 1, g_0 = g_{-1} = 0,
    solved exactly as a 3x3 companion-matrix power (repeated squaring, O(log s) per step count);
    then r_s = V diag(1 - eta lambda g_s) V^T r_0 and f_s(x) = f_0(x) - eta Theta(x, X) V diag(g_s) V^T r_0.
    Divergent settings return growing / inf / nan values.  ``steps`` may contain inf (limit).
    """
    beta = float(momentum)
    if not np.isfinite(beta) or beta < 0:
        raise ConfigError(f"momentum must be a non-negative number, got {momentum}")
    prob = _problem(theta_train, f0_train, y)
    test = _test_pieces(prob, theta_test_train, f0_test)
    c, g = _momentum_coeffs(_steps(steps), prob.lam, prob.cutoff,
                            _rate(lr, loss_scale, prob.n), beta)
    return _assemble(prob, c, g, test)


def outputs_mse(theta_train, f0_train, y, *, lr, times, dynamics="flow", momentum=0.0,
                theta_test_train=None, f0_test=None, loss_scale="total") -> Trajectory:
    """Linearized outputs under the MSE dynamics named like `weights_mse`'s: ``"flow"``
    (`gradient_flow_mse`, times t), ``"gd"`` (`gradient_descent_mse`) or ``"momentum"``
    (`momentum_mse`; `times` are then step counts)."""
    kw = dict(theta_test_train=theta_test_train, f0_test=f0_test, loss_scale=loss_scale)
    if dynamics == "flow":
        return gradient_flow_mse(theta_train, f0_train, y, lr=lr, times=times, **kw)
    if dynamics == "gd":
        return gradient_descent_mse(theta_train, f0_train, y, lr=lr, steps=times, **kw)
    if dynamics == "momentum":
        return momentum_mse(theta_train, f0_train, y, lr=lr, momentum=momentum, steps=times, **kw)
    raise ConfigError(f"dynamics must be 'flow', 'gd' or 'momentum', got '{dynamics}'")


# ----------------------------------------------------------------------------------------------
# MSE: weights


def weights_mse(apply_fn, params0, x_train, theta_train, y, *, lr, times, f0_train=None,
                dynamics="flow", momentum=0.0, loss_scale="total"):
    """Parameters theta_t = theta_0 + omega_t of the linearized model trained on MSE (Eq. 8).

        omega_t = -J_0(X)^T Theta^{-1} (I - e^{-eta Theta t}) (f_0(X) - Y)              (Eq. 8)

    for ``dynamics="flow"`` (times t); ``"gd"`` replaces e^{-eta Theta t} by (I - eta Theta)^s and
    ``"momentum"`` uses the heavy-ball gain of `momentum_mse` (``times`` are then step counts).
    J_0(X)^T is applied as one VJP of ``apply_fn(., x_train)`` at ``params0`` per time (vmapped), so
    no dense Jacobian is formed.  ``theta_train`` must be the empirical NTK of ``apply_fn`` at
    ``params0`` on ``x_train`` in the layout of the module docstring; ``f0_train`` defaults to
    ``apply_fn(params0, x_train)``.  Returns one pytree like ``params0`` whose leaves carry a
    leading time axis of length T (``jax.tree.map(lambda a: a[i], out)`` is the i-th one); leaves
    keep the parameters' dtype.  t = inf is supported (pseudo-inverse).
    """
    out_shape = jax.eval_shape(lambda: apply_fn(params0, x_train))
    if f0_train is None:
        f0_train = apply_fn(params0, x_train)
    prob = _problem(theta_train, f0_train, y)
    rate = _rate(lr, loss_scale, prob.n)
    if dynamics == "flow":
        _, g = _flow_coeffs(_times(times), prob.lam, prob.cutoff, rate)
    elif dynamics == "gd":
        _, g = _gd_coeffs(_steps(times), prob.lam, prob.cutoff, rate)
    elif dynamics == "momentum":
        _, g = _momentum_coeffs(_steps(times), prob.lam, prob.cutoff, rate, float(momentum))
    else:
        raise ConfigError(f"dynamics must be 'flow', 'gd' or 'momentum', got '{dynamics}'")
    with np.errstate(all="ignore"):
        u = (prob.v @ (g[:, :, None] * prob.r0_eig[None])).reshape((len(g),) + out_shape.shape)
    _, vjp_fn = jax.vjp(lambda p: apply_fn(p, x_train), params0)
    cot = jnp.asarray(-u, dtype=out_shape.dtype)
    omegas = jax.vmap(lambda c: vjp_fn(c)[0])(cot)
    return jax.tree_util.tree_map(lambda p0, w: p0[None] + w.astype(p0.dtype), params0, omegas)


def weights_flow_mse(apply_fn, params0, x_train, theta_train, y, *, lr, times, f0_train=None,
                     loss_scale="total"):
    """Eq. 8 under gradient flow: `weights_mse` with ``dynamics="flow"``."""
    return weights_mse(apply_fn, params0, x_train, theta_train, y, lr=lr, times=times,
                       f0_train=f0_train, dynamics="flow", loss_scale=loss_scale)


def weights_gd_mse(apply_fn, params0, x_train, theta_train, y, *, lr, steps, f0_train=None,
                   loss_scale="total"):
    """Eq. 8 after `steps` gradient-descent steps: `weights_mse` with ``dynamics="gd"``."""
    return weights_mse(apply_fn, params0, x_train, theta_train, y, lr=lr, times=steps,
                       f0_train=f0_train, dynamics="gd", loss_scale=loss_scale)


# ----------------------------------------------------------------------------------------------
# Gaussian-process views (infinite width)


def _square(a, n: int, name: str) -> np.ndarray:
    a = _f64(a)
    if a.shape != (n, n):
        raise ConfigError(f"{name} must have shape {(n, n)}, got {a.shape}")
    return a


def _gp_inputs(k_tt, k_st, k_ss, y):
    y = _targets(y)
    n = y.shape[0]
    k_tt = _square(k_tt, n, "k_tt")
    k_st = _f64(k_st)
    if k_st.ndim != 2 or k_st.shape[1] != n:
        raise ConfigError(f"k_st must have shape (M, {n}), got {k_st.shape}")
    k_ss = _square(k_ss, k_st.shape[0], "k_ss")
    return k_tt, k_st, k_ss, y


def ntk_gp_mean_cov(k_tt, k_st, k_ss, theta_tt, theta_st, theta_ss, y, *, lr, times,
                    loss_scale="total"):
    """NTK-GP predictive mean and covariance of the linearized network over time (Eqs. 14-16).

    With A_t = Theta(X*, X) Theta^{-1} (I - e^{-eta Theta t})::

        mu_t      = A_t Y                                                             (Eq. 14)
        Sigma_t   = K(X*, X*) + A_t K A_t^T - (A_t K(X, X*) + h.c.)                     (Eq. 15)

    and at t = inf A = Theta(X*, X) Theta^{-1} (Eq. 16; pseudo-inverse on null modes).  K are the
    NNGP kernels (k_tt = K(X, X), k_st = K(X*, X), k_ss = K(X*, X*)), Theta the NTKs, all per
    output (k outputs share them).  ``theta_ss`` = Theta(X*, X*) does not enter Eqs. 14-16; it is
    accepted for symmetry (shape-checked when given, may be None).  At t = 0 the mean is 0 and the
    covariance the prior K(X*, X*).  Returns ``(mean (T, M, k), cov (T, M, M))``.
    """
    k_tt, k_st, k_ss, y = _gp_inputs(k_tt, k_st, k_ss, y)
    n, m = k_tt.shape[0], k_ss.shape[0]
    theta = _square(theta_tt, n, "theta_tt")
    theta_st = _f64(theta_st)
    if theta_st.shape != (m, n):
        raise ConfigError(f"theta_st must have shape {(m, n)}, got {theta_st.shape}")
    if theta_ss is not None:
        _square(theta_ss, m, "theta_ss")
    lam, v, cutoff = _eigh(theta)
    _, g = _flow_coeffs(_times(times), lam, cutoff, _rate(lr, loss_scale, n))
    with np.errstate(all="ignore"):
        a = ((theta_st @ v)[None] * g[:, None, :]) @ v.T  # A_t, (T, M, N)
        mean = a @ y
        cross = a @ k_st.T  # A_t K(X, X*)
        cov = k_ss[None] + a @ k_tt @ a.transpose(0, 2, 1) - cross - cross.transpose(0, 2, 1)
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
    return mean, cov


def nngp_posterior(k_tt, k_st, k_ss, y, diag_reg=0.0):
    """Exact Bayesian NNGP posterior (Eq. 13): mu = K(x, X) K^{-1} Y, Sigma = K(x, x) - K(x, X) K^{-1} K(X, x).

    ``diag_reg`` is added to the diagonal of K = K(X, X) (absolute, in kernel units: observation
    noise variance); the solve uses the eigendecomposition with a pseudo-inverse on null modes.
    Returns ``(mean (M, k), cov (M, M))``.
    """
    k_tt, k_st, k_ss, y = _gp_inputs(k_tt, k_st, k_ss, y)
    reg = float(diag_reg)
    if not np.isfinite(reg) or reg < 0:
        raise ConfigError(f"diag_reg must be non-negative, got {diag_reg}")
    lam, v, cutoff = _eigh(k_tt + reg * np.eye(len(k_tt)))
    inv = np.where(np.abs(lam) > cutoff, 1.0 / np.where(np.abs(lam) > cutoff, lam, 1.0), 0.0)
    b = (k_st @ v) * inv  # K(x, X) K^{-1} in the eigenbasis
    mean = b @ (v.T @ y)
    cov = k_ss - b @ (v.T @ k_st.T)
    return mean, 0.5 * (cov + cov.T)


def readout_mean_cov(k_tt, k_st, k_ss, y, *, lr, times, loss_scale="total"):
    """Mean and covariance when only the readout layer is trained by gradient flow (Eqs. S22-S23).

        E[f_t(x*)]     = K(x*, X) K^{-1} (I - e^{-eta K t}) Y                           (S22)
        Cov[f_t(X*)]   = K(X*, X*) - K(X*, X) K^{-1} (I - e^{-2 eta K t}) K(X, X*)       (S23)

    (S23 written for the full test covariance; it is Eq. 15 with Theta = K.)  At t = inf this is
    the NNGP posterior, Eq. 13.  Returns ``(mean (T, M, k), cov (T, M, M))``.
    """
    k_tt, k_st, k_ss, y = _gp_inputs(k_tt, k_st, k_ss, y)
    n = k_tt.shape[0]
    rate = _rate(lr, loss_scale, n)
    t = _times(times)
    lam, v, cutoff = _eigh(k_tt)
    _, g1 = _flow_coeffs(t, lam, cutoff, rate)
    _, g2 = _flow_coeffs(t, lam, cutoff, 2.0 * rate)
    ksv = k_st @ v
    with np.errstate(all="ignore"):
        mean = ksv @ (g1[:, :, None] * (v.T @ y)[None])
        cov = k_ss[None] - (ksv[None] * g2[:, None, :]) @ ksv.T
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
    return mean, cov


# ----------------------------------------------------------------------------------------------
# Cross-entropy: the function-space ODE


def _xent_field(t, state, args):
    """d/dt (f, G) = (-eta Theta (softmax(f) - Y), softmax(f) - Y)   (Eq. S10 and its integral)."""
    f, _ = state
    theta, y, rate, flat = args
    err = jax.nn.softmax(f, axis=-1) - y
    if flat:
        df = -rate * (theta @ err.reshape(-1)).reshape(f.shape)
    else:
        df = -rate * (theta @ err)
    return df, err


def xent_ode(theta_train, f0_train, y_onehot, *, lr, times, theta_test_train=None, f0_test=None,
             rtol=1e-8, atol=1e-10, loss_scale="total", max_steps=1_000_000) -> Trajectory:
    """Linearized softmax cross-entropy dynamics (Lee et al. Eqs. S10-S11), integrated numerically.

        d f_t(X)/dt = -eta Theta(X, X) (softmax(f_t(X)) - Y)                              (S10)
        d f_t(x)/dt = -eta Theta(x, X) (softmax(f_t(X)) - Y)                              (S11)

    (S9 of the paper's text is the same ODE for the non-linearized network.)  The state is
    (f_t(X), E_t) with E_t = int_0^t (softmax(f_s(X)) - Y) ds, so test outputs follow without
    integrating them: f_t(x) = f_0(x) - eta Theta(x, X) E_t.  Solved with diffrax's Dopri5 (the
    paper's dopri5), a PIDController(rtol, atol) adaptive step and SaveAt(ts=times), in float64
    (JAX's x64 is switched on for the solve).  ``times`` must be finite and non-decreasing.  If the
    solver fails (e.g. ``max_steps`` reached) a warning is issued and unreached times are non-finite.
    Returns ``Trajectory(train (T, N, k), test (T, M, k) or None)``.
    """
    import diffrax

    y = _targets(y_onehot)
    n, k = y.shape
    f0 = _outputs(f0_train, y.shape, "f0_train")
    theta, flat = _kernel(theta_train, n, n, k, "theta_train")
    test = None
    if theta_test_train is not None:
        tt = _f64(theta_test_train)
        m = tt.shape[0] if tt.ndim in (2, 4) else -1
        theta_st, _ = _kernel(tt, m, n, k, "theta_test_train")
        test = (theta_st, _outputs(f0_test, (m, k), "f0_test"), m)
    elif f0_test is not None:
        raise ConfigError("f0_test given without theta_test_train; pass Theta(x_test, X_train) too")
    t = _times(times)
    if not np.all(np.isfinite(t)):
        raise ConfigError("xent_ode needs finite times")
    if np.any(np.diff(t) < 0):
        raise ConfigError(f"times must be non-decreasing, got {t}")
    rate = _rate(lr, loss_scale, n)
    t1 = float(t.max())
    if t1 == 0.0:
        fs, es = np.broadcast_to(f0, (len(t), n, k)).copy(), np.zeros((len(t), n, k))
    else:
        with jax.enable_x64(True):
            args = (jnp.asarray(theta), jnp.asarray(y), jnp.asarray(rate), flat)
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(_xent_field), diffrax.Dopri5(), t0=0.0, t1=t1, dt0=None,
                y0=(jnp.asarray(f0), jnp.zeros((n, k))), args=args,
                saveat=diffrax.SaveAt(ts=jnp.asarray(t)),
                stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                max_steps=int(max_steps), throw=False)
            fs, es = (np.asarray(a, dtype=np.float64) for a in sol.ys)
            ok = bool(sol.result == diffrax.RESULTS.successful)
        if not ok:
            warnings.warn("xent_ode: the ODE solver stopped early (max_steps or step-size failure); "
                          "unreached times are non-finite", RuntimeWarning, stacklevel=2)
    out_test = None
    if test is not None:
        theta_st, f0s, m = test
        with np.errstate(all="ignore"):
            if flat:
                delta = (es.reshape(len(t), n * k) @ theta_st.T).reshape(len(t), m, k)
            else:
                delta = np.einsum("ij,tjc->tic", theta_st, es)
        out_test = f0s[None] - rate * delta
    return Trajectory(fs, out_test)
