"""Exact convolutional NTK (CNTK) of Arora et al. 2019, "On Exact Computation with an Infinitely
Wide Neural Net" (Section 4, Appendices G, H, I).

Architecture (the paper's, fixed here): ReLU, q x q = 3 x 3 filters, stride 1, zero ("SAME")
padding, c_sigma = 2, `depth` = number of convolution layers L plus the final layer (Table 1
counts layers that way, so depth = L + 1 >= 2).  The network whose infinite-width limit this is
(Section 4 / Appendix H):

    x~(h)_(b) = sum_a W(h)_(a),(b) * x(h-1)_(a)                      (W ~ N(0, 1), Eq. 10 conv.)
    x(h)_(b)  = sqrt(c_sigma / (C(h) q^2)) relu(x~(h)_(b))            h = 1..L
    flatten:  f = sum_a <W(L+1)_(a), x(L)_(a)>,   W(L+1)_(a) in R^{P x Q}, N(0, 1)
    gap:      f = sum_a W(L+1)_(a) mean_ij [x(L)_(a)]_ij,   W(L+1)_(a) in R, N(0, 1),
              W(1) and W(L+1) not trained (Appendix H).

The input is NOT normalised by its channel count: Sigma(0) sums over the C(0) input channels
(Section 4, "Sigma(0) = sum_a tr([K(0)_(a)]_D)"), exactly as the paper writes it.

Kernel recursion implemented (notation of Section 4; P x Q = H x W image, pixels p = (i, j)):

    Sigma(0)[p, p'] = sum_a tr([x_a (x) x'_a]_D_{p,p'})                         (Section 4)
    Lambda(h)[p, p'] = [[Sigma(h-1)(x,x)[p,p],  Sigma(h-1)(x,x')[p,p']],
                        [Sigma(h-1)(x',x)[p',p], Sigma(h-1)(x',x')[p',p']]]
    K(h)  = c_sigma/q^2 E[relu(u) relu(v)],  Kdot(h) = c_sigma/q^2 E[relu'(u) relu'(v)]  (11), (12)
          evaluated with the closed forms (37)-(40) of Appendix I after normalising Lambda by
          D = diag(sqrt(Sigma(x,x)[p,p]), sqrt(Sigma(x',x')[p',p'])) (homogeneity trick):
          lambda = Sigma(x,x')[p,p'] / sqrt(Sigma(x,x)[p,p] Sigma(x',x')[p',p']),
          K    = c_sigma/q^2 (lambda (pi - arccos lambda) + sqrt(1 - lambda^2)) / (2 pi) * c1 c2,
          Kdot = c_sigma/q^2 (pi - arccos lambda) / (2 pi).
    Sigma(h)[p, p'] = tr([K(h)]_D_{p,p'})
    flatten (Section 4): Theta(0) = Sigma(0); Theta(h) = tr([Kdot(h) . Theta(h-1) + K(h)]_D),
        h = 1..L-1; Theta(L) = Kdot(L) . Theta(L-1) + K(L);  CNTK = tr(Theta(L)).
    gap (Appendix H):    Theta(0) = 0;  same for h = 1..L-1;  Theta(L) = Kdot(L) . Theta(L-1);
        CNTK = 1/(P^2 Q^2) sum_{p,p'} Theta(L)[p, p'].
    NNGP (`return_nngp`): the output covariance E[f(x) f(x')] at initialisation,
        flatten: tr(K(L));  gap: 1/(P^2 Q^2) sum_{p,p'} K(L)[p, p'].

Here tr([T]_D_{p,p'}) = sum_{|a|,|b| <= 1} T[i+a, j+b, i'+a, j'+b] (entries outside the image are
zero: zero padding), i.e. a 3 x 3 box sum *along the diagonal* of the (H, W, H, W) tensor.

Two structural facts make this fast:

* The trace over D_{p,p'} shifts p and p' by the SAME offset, and Lambda's diagonal entries are
  per-pixel variances of single images.  So Sigma(h)(x,x')[p, p'] depends only on entries of
  Sigma(h-1)(x,x') with the same displacement p' - p.  The vanilla (flatten) CNTK reads only the
  displacement-0 entries (p, p), so it propagates an (H, W) array per pair: O(HW L) per pair,
  instead of O((HW)^2 L).  Global average pooling needs every displacement: (H, W, H, W) per pair.
* The per-image diagonals Sigma(h)(x,x)[p,p] obey a closed recursion (lambda = 1:
  K(h)[p,p] = c_sigma/(2 q^2) Sigma(h-1)[p,p]) and are computed once per image, not per pair.

Pairs of images are processed `batch_size` pairs at a time (an explicit pair axis inside one jit
that also contains the whole layer recursion, a lax.scan over the middle layers); with x2 = None
only the pairs i <= j are computed.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.errors import ConfigError

C_SIGMA = 2.0  # c_sigma of Section 4 (= 1 / E[relu(z)^2], z ~ N(0, 1))
FILTER = 3  # q: filter size
POOLINGS = ("flatten", "gap")

# Default number of (pair x spatial) elements held per batched call.
_GAP_ELEMS = 1 << 21
_FLAT_ELEMS = 1 << 21


# ----------------------------------------------------------------------------------------------
# Building blocks (all shapes are documented; `...` is any leading batch shape)


def _diag_shift_sum(t, axes_groups):
    """tr([T]_D): sum over offsets a, b in {-1, 0, 1} of T shifted by a along every axis of
    `axes_groups[0]` and by b along every axis of `axes_groups[1]`, with zero fill (zero padding).

    For an (..., H, W, H, W) tensor, groups ((-4, -2), (-3, -1)) give
    out[i, j, i', j'] = sum_{a,b} T[i+a, j+b, i'+a, j'+b]  (the Section 4 trace over D_{ij,i'j'}).
    For an (..., H, W) tensor, groups ((-2,), (-1,)) give the same thing restricted to p = p'
    (a plain 3 x 3 box sum).  Separable: one 3-term sum per group.
    """
    half = (FILTER - 1) // 2
    for axes in axes_groups:
        axes = [ax % t.ndim for ax in axes]
        pad = [(0, 0)] * t.ndim
        for ax in axes:
            pad[ax] = (half, half)
        tp = jnp.pad(t, pad)
        out = None
        for a in range(FILTER):
            idx = [slice(None)] * t.ndim
            for ax in axes:
                idx[ax] = slice(a, a + t.shape[ax])
            term = tp[tuple(idx)]
            out = term if out is None else out + term
        t = out
    return t


_BOX_PAIR = ((-4, -2), (-3, -1))  # (H, W, H, W): diagonal box sum
_BOX_PIX = ((-2,), (-1,))  # (H, W): ordinary box sum


# fdlibm (e_asin.c / e_acos.c) rational approximation: asin(s) = s + s * z P(z) / Q(z), z = s^2,
# for 0 <= s <= 0.5 (error < 1 ulp in float64).  XLA's CPU arccos is ~30x slower than this
# polynomial, and arccos is the innermost operation of the whole kernel.
_PS = (1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01,
       -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05)
_QS = (-2.40339491173441421878e+00, 2.02094576023350569471e+00, -6.88283971605453293030e-01,
       7.70381505559019352791e-02)


def _asin(x):
    """arcsin on [-1, 1], elementwise, branch-free: for |x| >= 1/2 uses
    asin(|x|) = pi/2 - 2 asin(sqrt((1 - |x|) / 2)).  Max abs. error 2.3e-16 (float64)."""
    a = jnp.abs(x)
    small = a < 0.5
    z = jnp.where(small, a * a, 0.5 * (1.0 - a))
    s = jnp.where(small, a, jnp.sqrt(z))
    p = z * (_PS[0] + z * (_PS[1] + z * (_PS[2] + z * (_PS[3] + z * (_PS[4] + z * _PS[5])))))
    q = 1.0 + z * (_QS[0] + z * (_QS[1] + z * (_QS[2] + z * _QS[3])))
    t = s + s * (p / q)
    return jnp.copysign(jnp.where(small, t, 0.5 * jnp.pi - 2.0 * t), x)


def _relu_expectations(s, r1, r2, n1, n2):
    """Closed-form Eqs. (11), (12) via Appendix I, Eqs. (37)-(40).

    s: Sigma(h-1)(x, x')[p, p'];  r1, r2: 1/sqrt(Sigma(h-1)(x,x)[p,p]), 1/sqrt(Sigma(h-1)(x',x')
    [p',p']) (0 where the variance is 0);  n1, n2: the square roots themselves.  All broadcast to
    s's shape.  Returns (K(h), Kdot(h)) with the c_sigma / q^2 factor included, using
    pi - arccos(lambda) = pi/2 + arcsin(lambda).
    """
    c = C_SIGMA / FILTER ** 2
    lam = jnp.clip(s * r1 * r2, -1.0, 1.0)
    pi_minus = 0.5 * jnp.pi + _asin(lam)  # pi - arccos(lambda)
    kdot = (c / (2 * jnp.pi)) * pi_minus
    k = (c / (2 * jnp.pi)) * (lam * pi_minus + jnp.sqrt(1.0 - lam * lam)) * (n1 * n2)
    return k, kdot


def _image_diagonals(x, n_layers: int):
    """Sigma(h)(x, x)[p, p] for h = 0..n_layers-1: shape (n_layers, N, H, W) from x (N, H, W, C).

    Sigma(0)[p,p] = box(sum_c x_c^2) and, since lambda = 1 on the diagonal (K = c_sigma/(2 q^2)
    Sigma), Sigma(h)[p,p] = c_sigma/(2 q^2) box(Sigma(h-1)[p,p]).
    """
    d = _diag_shift_sum(jnp.sum(x * x, axis=-1), _BOX_PIX)
    out = [d]
    for _ in range(n_layers - 1):
        d = (C_SIGMA / (2 * FILTER ** 2)) * _diag_shift_sum(d, _BOX_PIX)
        out.append(d)
    return jnp.stack(out, axis=0)


def _safe_rsqrt(d):
    return jnp.where(d > 0, jax.lax.rsqrt(jnp.where(d > 0, d, 1.0)), 0.0)


@partial(jax.jit, static_argnames=("n_conv", "pooling"))
def _pairs_block(x1, x2, d1, d2, ii, jj, *, n_conv: int, pooling: str):
    """(CNTK, NNGP) for the B image pairs (x1[ii[b]], x2[jj[b]]): two (B,) arrays.

    x1, x2: (N1|N2, H, W, C) images;  d1, d2: (L, N1|N2, H, W) their diagonals Sigma(h)[p,p],
    h = 0..L-1;  ii, jj: (B,) int pair indices.  The pair axis b is an explicit batch axis of
    every array (equivalent to a vmap over pairs).  flatten propagates the displacement-0 entries
    Sigma(x,x')[p, p], shape (B, H, W); gap the full Sigma(x,x')[p, p'], shape (B, H, W, H, W).
    The middle layers h = 1..L-1 are a lax.scan, so compile time does not grow with depth.
    """
    xa, xb = x1[ii], x2[jj]
    if pooling == "gap":
        box = _BOX_PAIR
        sigma = _diag_shift_sum(jnp.einsum("bhwc,bijc->bhwij", xa, xb), box)  # Sigma(0)(x, x')

        def outer(a, b):  # (B, H, W) per-pixel factors of x and x' -> broadcast over (p, p')
            return a[:, :, :, None, None], b[:, None, None, :, :]

        theta = jnp.zeros_like(sigma)  # Appendix H step 1: first layer not trained
    else:
        box = _BOX_PIX
        sigma = _diag_shift_sum(jnp.sum(xa * xb, axis=-1), box)  # Sigma(0)(x, x')[p, p]

        def outer(a, b):
            return a, b

        theta = sigma  # Section 4 step 1: Theta(0) = Sigma(0)

    def expectations(sig, da, db):  # Lambda(h) from Sigma(h-1) -> K(h), Kdot(h)
        da, db = da[ii], db[jj]
        r1, r2 = outer(_safe_rsqrt(da), _safe_rsqrt(db))
        n1, n2 = outer(jnp.sqrt(da), jnp.sqrt(db))
        return _relu_expectations(sig, r1, r2, n1, n2)

    def layer(carry, diag):  # h = 1..L-1 (step 2)
        sig, th = carry
        k, kdot = expectations(sig, *diag)
        sig_new = _diag_shift_sum(k, box)  # Sigma(h) = tr([K(h)]_D)
        th_new = _diag_shift_sum(kdot * th, box) + sig_new  # tr([Kdot . Theta + K]_D)
        return (sig_new, th_new), None

    if n_conv > 1:
        (sigma, theta), _ = jax.lax.scan(layer, (sigma, theta), (d1[:-1], d2[:-1]))

    k, kdot = expectations(sigma, d1[-1], d2[-1])  # K(L), Kdot(L)
    axes = tuple(range(1, k.ndim))
    if pooling == "gap":
        theta = kdot * theta  # step 3 without K(L): last layer not trained
        return jnp.mean(theta, axis=axes), jnp.mean(k, axis=axes)  # step 4: mean over (p, p')
    theta = kdot * theta + k  # step 3
    return jnp.sum(theta, axis=axes), jnp.sum(k, axis=axes)  # step 4: tr(Theta(L)) (p = p')


_diagonals = jax.jit(_image_diagonals, static_argnames=("n_layers",))


# ----------------------------------------------------------------------------------------------
# Public API


def _check_images(x, name):
    if x.ndim != 4:
        raise ConfigError(f"{name} must be images of shape (N, H, W, C), got shape {tuple(x.shape)};"
                          " add a channel axis for grey-scale images")
    if min(x.shape) < 1:
        raise ConfigError(f"{name} has an empty axis (shape {tuple(x.shape)}); pass at least one "
                          "image with H, W, C >= 1")


def cntk(x1, x2=None, *, depth: int, pooling: str = "flatten", dtype=jnp.float64,
         return_nngp: bool = False, batch_size: int | None = None):
    """Exact CNTK of Arora et al. 2019 between image sets x1 (N1, H, W, C) and x2 (N2, H, W, C).

    depth: conv layers + final layer (Table 1), >= 2.  pooling: "flatten" (vanilla CNN, Section 4)
    or "gap" (global average pooling, first and last layers fixed, Appendix H; with depth = 2 no
    layer is trained and the CNTK is identically 0).  dtype: computation dtype (float64 needs
    jax_enable_x64; otherwise JAX's canonical float32 is used).  batch_size: image pairs per
    vectorised call (default: about 2^21 pair-pixel entries per call).

    Returns the (N1, N2) CNTK, or (cntk, nngp) with `return_nngp` (nngp = output covariance at
    initialisation, see module docstring).  x2 = None means x2 = x1 (only i <= j is computed).
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 2:
        raise ConfigError(f"depth must be an integer >= 2 (conv layers + final layer, as in "
                          f"Arora et al. Table 1), got {depth!r}")
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise ConfigError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    try:
        dt = jax.dtypes.canonicalize_dtype(dtype)
    except TypeError as err:
        raise ConfigError(f"dtype {dtype!r} is not a dtype ({err}); use jnp.float32 or "
                          "jnp.float64") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ConfigError(f"dtype must be a floating type, got {dtype!r}; use jnp.float64")

    x1 = jnp.asarray(x1, dt)
    _check_images(x1, "x1")
    symmetric = x2 is None
    x2 = x1 if symmetric else jnp.asarray(x2, dt)
    _check_images(x2, "x2")
    if x1.shape[1:] != x2.shape[1:]:
        raise ConfigError(f"x1 and x2 must share (H, W, C); got {tuple(x1.shape[1:])} and "
                          f"{tuple(x2.shape[1:])}")

    n_conv = depth - 1
    n1, n2 = x1.shape[0], x2.shape[0]
    hw = x1.shape[1] * x1.shape[2]
    if batch_size is None:
        per_pair = hw * hw if pooling == "gap" else hw
        limit = _GAP_ELEMS if pooling == "gap" else _FLAT_ELEMS
        batch_size = max(1, limit // per_pair)

    d1 = _diagonals(x1, n_layers=n_conv)
    d2 = d1 if symmetric else _diagonals(x2, n_layers=n_conv)

    if symmetric:
        ii, jj = np.triu_indices(n1)
    else:
        ii, jj = (a.ravel() for a in np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij"))
    n_pairs = ii.size
    batch_size = min(batch_size, n_pairs)
    n_pad = (-n_pairs) % batch_size
    ii_p = np.concatenate([ii, np.zeros(n_pad, ii.dtype)]).astype(np.int32)
    jj_p = np.concatenate([jj, np.zeros(n_pad, jj.dtype)]).astype(np.int32)

    ntk_parts, nngp_parts = [], []
    for s in range(0, n_pairs + n_pad, batch_size):
        a, b = _pairs_block(x1, x2, d1, d2, ii_p[s:s + batch_size], jj_p[s:s + batch_size],
                            n_conv=n_conv, pooling=pooling)
        ntk_parts.append(a)
        nngp_parts.append(b)

    def assemble(parts):
        vals = jnp.concatenate(parts)[:n_pairs]
        out = jnp.zeros((n1, n2), dt).at[ii, jj].set(vals)
        if symmetric:
            out = out.at[jj, ii].set(vals)
        return out

    ntk = assemble(ntk_parts)
    return (ntk, assemble(nngp_parts)) if return_nngp else ntk
