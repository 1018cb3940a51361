"""The dual maps T and T-dot of an activation (Lee et al. 2019 Eq. S24).

For a 2 x 2 covariance Sigma = [[v1, c], [c, v2]] and (u, v) ~ N(0, Sigma)::

    T(Sigma)    = E[phi(u) phi(v)]
    Tdot(Sigma) = E[phi'(u) phi'(v)]                                              (Eq. S24)

Every function here is elementwise over broadcastable arrays `cov` (the off-diagonal entries c),
`var1` (v1) and `var2` (v2), so a whole (N1, N2) kernel is mapped at once with `var1` of shape
(N1, 1) and `var2` of shape (1, N2), and a diagonal with three (N,) arrays.  Memory stays
O(size of `cov`): the quadratures loop over their nodes with `lax.scan` (temporaries of
_BLOCK = 8 times that size).

Closed forms: relu (arc-cosine kernel of Cho & Saul, Eqs. S12-S15), erf (Williams, Eqs. S16-S17),
identity (T = c, Tdot = 1).  Any other activation of `ntkrepro.nets.ACTIVATIONS` goes through a
2-D Gaussian quadrature (`quadrature_t_tdot`).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.errors import ConfigError
from ntkrepro.nets import activation_fn

DEFAULT_QUAD_POINTS = 64
QUADRATURE_RULES = ("polar", "hermite")
MAX_QUAD_POINTS = {"polar": 180, "hermite": 300}
METHODS = ("auto", "closed_form", "quadrature")


def _safe_div(num, den):
    """num / den with 0 where den == 0 (and a NaN-free gradient)."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# Closed forms


def relu_t_tdot(cov, var1, var2):
    """ReLU, Lee et al. Eqs. S12-S15 (Cho & Saul arc-cosine kernels of order 1 and 0).

    With ||x|| ||y|| = sqrt(v1 v2) and cos(theta) = c / sqrt(v1 v2)::

        T    = sqrt(v1 v2) / (2 pi) * (sin(theta) + (pi - theta) cos(theta))      (S13, S14)
        Tdot = (pi - theta) / (2 pi)                                                (S15)

    cos(theta) is clipped to [-1, 1] (rounding can push it outside, and arccos would give NaN),
    and values within 64 ulp of +-1 are snapped to +-1: there theta ~ sqrt(2 (1 - cos)) turns a
    rounding error eps in c into an error sqrt(eps) in Tdot, so e.g. the diagonal of fc(x, x)
    would otherwise differ from fc(x) by ~1e-8 (float64) / 1e-4 (float32).  Snapping moves Tdot
    by at most sqrt(128 eps) / (2 pi), the size of that rounding noise.
    """
    # Written on the covariance entries directly (|x||y| sin(theta) = sqrt(v1 v2 - c^2),
    # theta = atan2(that, c)) so the whole layer fuses into one cheap elementwise pass.
    prod = var1 * var2
    gap = prod - cov * cov  # |x|^2 |y|^2 sin^2(theta)
    sin_norm = jnp.sqrt(jnp.where(gap > 128 * jnp.finfo(gap.dtype).eps * prod, gap, 0.0))
    theta = jnp.arctan2(sin_norm, cov)
    t = (sin_norm + (jnp.pi - theta) * cov) / (2 * jnp.pi)
    tdot = (jnp.pi - theta) / (2 * jnp.pi)
    return t, tdot


def erf_t_tdot(cov, var1, var2):
    """erf, Lee et al. Eqs. S16-S17 (Williams 1997), written with the covariance entries::

        T    = 2/pi arcsin(2 c / sqrt((1 + 2 v1)(1 + 2 v2)))                        (S16)
        Tdot = 4/pi det(I + 2 Sigma)^(-1/2) = 4/pi ((1 + 2 v1)(1 + 2 v2) - 4 c^2)^(-1/2)   (S17)
    """
    a = (1.0 + 2.0 * var1) * (1.0 + 2.0 * var2)
    t = 2.0 / jnp.pi * jnp.arcsin(jnp.clip(2.0 * cov / jnp.sqrt(a), -1.0, 1.0))
    tdot = 4.0 / jnp.pi / jnp.sqrt(jnp.maximum(a - 4.0 * cov * cov, jnp.finfo(a.dtype).tiny))
    return t, tdot


def identity_t_tdot(cov, var1, var2):
    """phi(x) = x: T = c, Tdot = 1."""
    return cov, jnp.ones_like(cov * var1 * var2)


CLOSED_FORMS: dict[str, Callable] = {
    "relu": relu_t_tdot,
    "erf": erf_t_tdot,
    "identity": identity_t_tdot,
}


# ---------------------------------------------------------------------------------------------
# Quadrature


def derivative(phi: Callable) -> Callable:
    """phi' of an elementwise phi, for arrays of any shape (a JVP with unit tangent)."""
    return lambda x: jax.jvp(phi, (x,), (jnp.ones_like(x),))[1]


def _cholesky(cov, var1, var2):
    """(s1, b, r) with u = s1 z1, v = b z1 + r z2 for (z1, z2) ~ N(0, I): the Cholesky factor."""
    s1 = jnp.sqrt(jnp.maximum(var1, 0.0))
    b = _safe_div(cov, s1)
    r = jnp.sqrt(jnp.maximum(var2 - b * b, 0.0))
    return s1, b, r


_BLOCK = 8  # inner-loop nodes evaluated together: temporaries of BLOCK x size(cov)


def _blocked(nodes, weights, dtype):
    """Nodes and weights as (n_blocks, _BLOCK) arrays, padded with zero-weight nodes at 0."""
    m = -(-len(nodes) // _BLOCK) * _BLOCK
    nodes = np.pad(np.asarray(nodes, float), (0, m - len(nodes)))
    weights = np.pad(np.asarray(weights, float), (0, m - len(weights)))
    return (jnp.asarray(nodes.reshape(-1, _BLOCK), dtype),
            jnp.asarray(weights.reshape(-1, _BLOCK), dtype))


def _pair_expectations(phi, dphi, cov, var1, var2, rule: str, points: int):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) by the 2-D rule `rule` with `points` nodes per axis.

    An outer `lax.scan` over one axis's nodes and an inner one over blocks of the other's keep the
    memory at O(_BLOCK * size(cov)).
    """
    cov, var1, var2 = jnp.broadcast_arrays(cov, var1, var2)
    dtype = cov.dtype
    s1, b, r = _cholesky(cov, var1, var2)
    zero = jnp.zeros_like(cov)

    if rule == "hermite":
        # Gauss-Hermite (probabilists') product rule on (z1, z2): error O(exp(-c sqrt(P))) for
        # smooth phi, but only O(1/P) for a kink (relu) or a jump (relu').
        z, w = np.polynomial.hermite_e.hermegauss(points)
        w = w / math.sqrt(2 * math.pi)
        inner_nodes = _blocked(z, w, dtype)

        def outer(acc, node_a):
            za, wa = node_a
            u = s1 * za
            bz, rr = (b * za)[..., None], r[..., None]

            def inner(acc_in, node_b):
                zb, wb = node_b
                v = bz + rr * zb
                return (acc_in[0] + jnp.sum(wb * phi(v), -1),
                        acc_in[1] + jnp.sum(wb * dphi(v), -1)), None

            (gv, dgv), _ = jax.lax.scan(inner, (zero, zero), inner_nodes)
            return (acc[0] + wa * phi(u) * gv, acc[1] + wa * dphi(u) * dgv), None

        (t, tdot), _ = jax.lax.scan(outer, (zero, zero),
                                    (jnp.asarray(z, dtype), jnp.asarray(w, dtype)))
        return t, tdot

    # Polar rule.  With z = rho (cos psi, sin psi), psi in [0, pi), rho in R:
    #   E[f(u) g(v)] = 1/(2 pi) int_0^pi dpsi int_0^inf ds e^-s [F(+sqrt(2s)) + F(-sqrt(2s))],
    #   F(rho) = f(rho A) g(rho B),  A = s1 cos psi,  B = b cos psi + r sin psi.
    # The bracket is even in rho, hence smooth in s = rho^2/2: Gauss-Laguerre in s.  The psi range
    # is split where A = 0 or B = 0 (u = 0 or v = 0), with Gauss-Legendre on each piece, so that
    # activations with a kink or a jump at 0 (relu, relu') are integrated to rounding error.
    s, ws = np.polynomial.laguerre.laggauss(points)
    rho = np.sqrt(2.0 * s)
    radial = _blocked(np.concatenate([rho, -rho]), np.concatenate([ws, ws]) / (2 * math.pi), dtype)
    t_leg, w_leg = np.polynomial.legendre.leggauss(points)
    psi_v = jnp.mod(jnp.arctan2(-b, r), jnp.pi)  # where B = 0
    half = jnp.full_like(psi_v, jnp.pi / 2)      # where A = 0
    cuts = jnp.stack([zero, jnp.minimum(half, psi_v), jnp.maximum(half, psi_v), zero + jnp.pi])
    angular = (jnp.asarray(np.repeat(np.arange(3), points), jnp.int32),
               jnp.asarray(np.tile(t_leg, 3), dtype), jnp.asarray(np.tile(w_leg, 3), dtype))

    def outer(acc, node):
        piece, t, wt = node
        lo, hi = cuts[piece], cuts[piece + 1]
        half_len = (hi - lo) / 2
        psi = half_len * t + (hi + lo) / 2
        cos, sin = jnp.cos(psi), jnp.sin(psi)
        big_a = (s1 * cos)[..., None]
        big_b = (b * cos + r * sin)[..., None]

        def inner(acc_in, node_r):
            rr, wr = node_r
            u, v = big_a * rr, big_b * rr
            return (acc_in[0] + jnp.sum(wr * phi(u) * phi(v), -1),
                    acc_in[1] + jnp.sum(wr * dphi(u) * dphi(v), -1)), None

        (ft, fd), _ = jax.lax.scan(inner, (zero, zero), radial)
        w = wt * half_len
        return (acc[0] + w * ft, acc[1] + w * fd), None

    (t, tdot), _ = jax.lax.scan(outer, (zero, zero), angular)
    return t, tdot


def quadrature_t_tdot(phi: Callable, cov, var1, var2, *, points: int = DEFAULT_QUAD_POINTS,
                      rule: str = "polar"):
    """T and Tdot of any elementwise `phi` by 2-D Gaussian quadrature on the Cholesky factor.

    (u, v) = (s1 z1, b z1 + r z2) with z ~ N(0, I), s1 = sqrt(v1), b = c / s1, r = sqrt(v2 - b^2);
    phi' comes from JAX autodiff (`derivative`).  Rules (`points` nodes per axis):

    * "polar" (default): Gauss-Laguerre in rho^2/2 times Gauss-Legendre in the angle, the angle
      range split where u = 0 or v = 0.  Exact to rounding for relu (kink) and relu' (jump).
      For tanh the default 64 points give relative errors ~1e-7 on a depth-3 NTK when the
      variances are ~2 (w_var = 2, |x|^2/n0 ~ 1) and ~1e-5 at variances ~4; the error grows with
      the variance (phi' sharper than the node spacing), so raise `points` for large variances.
      Cost 6 P^2 evaluations per entry.
    * "hermite": the Gauss-Hermite product rule (P^2 evaluations per entry).  Spectrally
      accurate for smooth phi at small variances, but less accurate than "polar" for nearly
      degenerate covariances of variance >~ 2 (e.g. 1e-4 vs 2e-7 on the depth-3 tanh NTK above),
      and only O(1/P) for relu-like kinks (6e-4 on relu's T at P = 128).

    `points` may be at most 180 ("polar": numpy's Gauss-Laguerre nodes overflow beyond) or 300
    ("hermite").
    """
    if rule not in QUADRATURE_RULES:
        raise ConfigError(f"unknown quadrature rule '{rule}'; choose one of {', '.join(QUADRATURE_RULES)}")
    limit = MAX_QUAD_POINTS[rule]
    if not 2 <= int(points) <= limit:
        raise ConfigError(f"quadrature rule '{rule}' needs 2 to {limit} points per axis, got {points}")
    return _pair_expectations(phi, derivative(phi), cov, var1, var2, rule, int(points))


def t_tdot(activation: str, cov, var1, var2, *, method: str = "auto",
           quad_points: int = DEFAULT_QUAD_POINTS, quad_rule: str = "polar"):
    """(T, Tdot) of the named activation (Eq. S24), elementwise over broadcastable arrays.

    `method`: "auto" (closed form when there is one, else quadrature), "closed_form", or
    "quadrature" (forced, e.g. to cross-check a closed form).
    """
    phi = activation_fn(activation)  # ConfigError for unknown names
    if method not in METHODS:
        raise ConfigError(f"unknown kernel method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "closed_form" and activation not in CLOSED_FORMS:
        raise ConfigError(f"activation '{activation}' has no closed-form kernel; use method='auto' "
                          f"or 'quadrature' (closed forms: {', '.join(sorted(CLOSED_FORMS))})")
    if method != "quadrature" and activation in CLOSED_FORMS:
        return CLOSED_FORMS[activation](cov, var1, var2)
    return quadrature_t_tdot(phi, cov, var1, var2, points=quad_points, rule=quad_rule)
