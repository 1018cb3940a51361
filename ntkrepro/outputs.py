"""Output maps phi on top of a network f, and the tangent kernel of the model phi(f) (Liu, Zhu &
Belkin 2020, Eqs. 11-14).

    model = OutputModel(spec, "softmax")               # f~(w; x) = phi(f(w; x)); hashable, jit-able
    k = tangent_kernel(spec, params, x, "softmax")     # (N, N, k, k), no Jacobian formed
    eta = normalized_lr(1.5, n, lambda_max(tangent_kernel(spec, params, x)), "softmax")

Output maps (`OUTPUTS`), acting on the (..., k) network outputs f:

* ``linear``:   phi(f) = f
* ``swish``:    phi(f)_c = f_c sigmoid(f_c)      (elementwise, Ramachandran et al.; `nets.ACTIVATIONS`)
* ``softplus``: phi(f)_c = log(1 + exp(f_c))     (elementwise; phi'' > 0)
* ``softmax``:  phi(f) = exp(f) / sum_c exp(f_c)  (over the k outputs)

Tangent kernel of f~ (derivation): grad_w f~(x) = J_phi(x) grad_w f(x) with J_phi(x) = d phi / d f
at f(w; x) (a k x k matrix), so

    K~(x, x') = grad_w f~(x) grad_w f~(x')^T = J_phi(x) K_f(x, x') J_phi(x')^T,

K_f(x, x') the (k x k) block of the network's tangent kernel (`ModelSpec.empirical_ntk(...,
trace=False)`: layer by layer for an MLP, no Jacobian).  Elementwise phi: J_phi = diag(phi'(f_c)),
i.e. K~_cc' = phi'(f_c(x)) K_f,cc' phi'(f_c'(x')) (for k = 1 the scalar formula
phi'(f(x)) phi'(f(x')) K_f(x, x') of Liu et al. Eq. 12); softmax with p = softmax(f):
J_phi = diag(p) - p p^T (symmetric).  `tests/test_liu.py` checks this against `empirical_ntk` of
the composed function.

Normalised step size (`normalized_lr`): gradient descent on the example-averaged square loss of
phi(f) with

    eta = lr * N / (L_phi^2 lambda_max(K_f(w_0))),     L_phi = sup |phi'| (`LIPSCHITZ`),

has eta lambda_max(K~) / N <= lr along the whole path up to the change of K_f, so a dimensionless
lr < 2 is stable for every output map and width.
"""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.errors import ConfigError
from ntkrepro.nets import ACTIVATIONS

_ELEMENTWISE: dict[str, Callable] = {"linear": ACTIVATIONS["identity"], "swish": ACTIVATIONS["swish"],
                                     "softplus": jax.nn.softplus}
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


@dataclasses.dataclass(frozen=True)
class OutputModel:
    """f~(params, x) = phi(f(params, x)) for a `models.ModelSpec` f; hashable, so `jax.jit`,
    `train.Trainer` and `ntkrepro.hessian` compile it once per (spec, output)."""
    spec: Any
    output: str = "linear"

    def __post_init__(self):
        check_output(self.output)

    def __call__(self, params, x):
        return output_fn(self.output)(self.spec.apply(params, x))


@partial(jax.jit, static_argnames=("spec", "output"))
def tangent_kernel(spec, params, x, output: str = "linear"):
    """K~(x_i, x_j) = J_phi(x_i) K_f(x_i, x_j) J_phi(x_j)^T, shape (N, N, k, k); no Jacobian formed."""
    kf = spec.empirical_ntk(params, x, trace=False)
    if output == "linear":
        return kf
    j = output_jacobian(output, spec.apply(params, x))
    return jnp.einsum("iab,ijbc,jdc->ijad", j, kf, j)


def as_matrix(k4):
    """(N, N, k, k) -> the (N k) x (N k) tangent-kernel matrix."""
    n, _, k, _ = k4.shape
    return jnp.transpose(k4, (0, 2, 1, 3)).reshape(n * k, n * k)


def lambda_max(k4) -> float:
    """Largest eigenvalue of the (N k) x (N k) kernel matrix (float64 numpy)."""
    return float(np.linalg.eigvalsh(np.asarray(as_matrix(k4), dtype=np.float64))[-1])


def rel_change(k, k0) -> float:
    """||K - K_0||_F / ||K_0||_F over all entries (float64 numpy, no compilation)."""
    k, k0 = np.asarray(k, dtype=np.float64), np.asarray(k0, dtype=np.float64)
    return float(np.linalg.norm(k - k0) / np.linalg.norm(k0))


def normalized_lr(lr: float, n: int, kf_lambda_max: float, output: str) -> float:
    """eta = lr N / (L_phi^2 lambda_max(K_f(w_0))) (see the module docstring)."""
    return float(lr) * n / (LIPSCHITZ[check_output(output)] ** 2 * kf_lambda_max)
