"""Exact kernel regression (Arora et al. 2019, App. A): f*(x) = K(x, X) K(X, X)^-1 Y, no ridge.

    pred = kernel_regression(k_train, k_test_train, y, name="CNTK-V depth 21")   # (N_test, k)
    acc = accuracy(pred, labels_test)                                          # argmax rule

The solve is a Cholesky factorisation in float64 (scipy / LAPACK), whatever the kernel was computed
in.  No ridge is added: a kernel that is not positive definite enough to be solved exactly is bad
input, reported as one `ConfigError` line naming the kernel and suggesting float64 -- a Cholesky
failure, or LAPACK's estimate of the reciprocal 1-norm condition number (`?pocon`) below
`n * eps` of the dtype the kernel was computed in (its entries carry relative errors of about eps,
so a condition number above 1 / (n eps) leaves no correct digit in the solution).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from ntkrepro.errors import ConfigError

__all__ = ["accuracy", "kernel_regression", "solve_kernel"]


def _not_pd(name: str, n: int, why: str, dtype) -> ConfigError:
    return ConfigError(f"the {name} kernel matrix ({n} x {n}, {np.dtype(dtype).name}) is not positive "
                       f"definite enough to solve exactly ({why}); compute it in float64 (x64=true, "
                       "dtype=float64) or remove duplicate inputs")


def solve_kernel(k_train, y, *, name: str = "kernel", min_rcond: float | None = None) -> np.ndarray:
    """K(X, X)^-1 Y by Cholesky in float64 (no ridge).

    k_train: (n, n) symmetric kernel; y: (n,) or (n, k) targets.  The kernel's own dtype sets the
    default threshold min_rcond = n * eps(dtype) on LAPACK's reciprocal condition estimate; pass
    min_rcond=0 to accept any factorisable matrix.  Raises `ConfigError` (one line, naming `name`)
    when the factorisation fails, the estimate is below the threshold, or inputs are not finite.
    """
    src_dtype = np.asarray(k_train).dtype
    k = np.asarray(k_train, np.float64)
    y = np.asarray(y, np.float64)
    n = k.shape[0] if k.ndim == 2 else -1
    if k.ndim != 2 or k.shape[1] != n or y.shape[0] != n:
        raise ConfigError(f"{name}: kernel regression needs an (n, n) kernel and n targets, got "
                          f"{k.shape} and {y.shape}")
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(y))):
        raise ConfigError(f"the {name} kernel matrix or its targets hold NaN or inf; recompute the "
                          "kernel in float64 (x64=true)")
    eps = np.finfo(src_dtype).eps if np.issubdtype(src_dtype, np.floating) else np.finfo(float).eps
    threshold = n * eps if min_rcond is None else float(min_rcond)
    try:
        c, lower = scipy.linalg.cho_factor(k, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        raise _not_pd(name, n, "the Cholesky factorisation failed", src_dtype) from None
    anorm = float(np.max(np.sum(np.abs(k), axis=0)))
    rcond, info = lapack.dpocon(c, anorm, uplo="L")
    if info != 0 or not rcond > threshold:
        why = f"estimated condition number {1 / rcond:.2g} > 1 / (n eps) = {1 / threshold:.2g}" \
            if rcond > 0 else "singular"
        raise _not_pd(name, n, why, src_dtype)
    return scipy.linalg.cho_solve((c, lower), y, check_finite=False)


def kernel_regression(k_train, k_test_train, y, *, name: str = "kernel",
                      min_rcond: float | None = None) -> np.ndarray:
    """Predictions K(test, train) K(train, train)^-1 Y (float64), shape (N_test,) + y.shape[1:]."""
    alpha = solve_kernel(k_train, y, name=name, min_rcond=min_rcond)
    kst = np.asarray(k_test_train, np.float64)
    if kst.ndim != 2 or kst.shape[1] != alpha.shape[0]:
        raise ConfigError(f"{name}: K(test, train) must be (N_test, {alpha.shape[0]}), got {kst.shape}")
    return kst @ alpha


def accuracy(pred, labels) -> float:
    """Fraction of rows whose largest output is at the label (App. A: "choose the class with
    largest value"); a single output column is read as +/- (label 0 = positive)."""
    pred = np.asarray(pred, np.float64)
    labels = np.asarray(labels)
    if pred.ndim == 1 or pred.shape[1] == 1:
        guess = (pred.reshape(-1) < 0).astype(labels.dtype)
    else:
        guess = np.argmax(pred, axis=1)
    return float(np.mean(guess == labels)) if len(labels) else float("nan")
