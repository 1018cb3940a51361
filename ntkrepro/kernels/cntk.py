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
          K    = c_sigma/q^2 (lambda (pi - arccos lambda) + sqrt(1 - lambda^2)) / (2 pi) c1 c2,
          with c1 = sqrt(Sigma(x,x)[p,p]), c2 = sqrt(Sigma(x',x')[p',p']) (Eq. 39),
          Kdot = c_sigma/q^2 (pi - arccos lambda) / (2 pi)                            (Eq. 40).
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

Execution: pairs of images are processed `batch_size` pairs per jitted call (x2 = None: only
i <= j, mirrored).  Inside a call the work is cut into cache-sized pieces (_FLAT_TILE_ELEMS,
_TILE_ELEMS entries) that run one after another (lax.map), each with its whole layer recursion (a
lax.scan over the middle layers, so compile time does not grow with depth) in cache:
* flatten: tiles of r x s image pairs in the layout (H, W, r, s), s a multiple of 8 in 16-40, the
  per-image factors broadcasting over the pair axes (`_flatten_tile_shape`);
* gap: units (one pair, a group of columns of the skewed (j, j') layout, see `_pair_maps`):
  displacements p' - p never mix, so a column group is an independent problem.
XLA's arccos costs ~10-30 ns per element on CPU, so pi - arccos is evaluated as pi/2 + arcsin with
fdlibm's rational approximation (< 1 ulp); the trace over D is a separable 3-tap window sum.

All depths in one pass: Sigma(h) and Theta(h) do not depend on the network's depth, so the kernel of
every depth d in `depth=[...]` is the deepest recursion read out after layer d - 1 (K(L), Kdot(L)
at that layer serve both the readout and the next layer): a list of depths costs about what its
deepest entry costs (`_recursion`).
"""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ntkrepro.errors import ConfigError

C_SIGMA = 2.0  # c_sigma of Section 4 (= 1 / E[relu(z)^2], z ~ N(0, 1))
FILTER = 3  # q: filter size (the code below is written for q = 3: offsets a, b in {-1, 0, 1})
POOLINGS = ("flatten", "gap")

# Default work per jitted call: about this many (pair x spatial) entries (memory is bounded by
# the tiles below, so this only sets the dispatch granularity).
_DEFAULT_ELEMS = 1 << 22
# Entries per unit (gap): small enough that a unit's whole layer recursion stays in cache (2^17
# entries was ~3-4x faster per entry than whole 2^21-2^22-entry blocks on a 2-core EPYC; 2^13-2^14
# loses to per-op overhead).
_TILE_ELEMS = 1 << 17
# Entries per flatten tile (r x s pairs x H x W), and the tile's vectorised side s: a multiple of 8
# in 16-40.  Measured on the 2-core EPYC (AVX-512), depth 21, 32x32 images, microseconds per
# entry: r x s = 8 x 32: 56-61, 16 x 16: 59, 10 x 24: 58, 32 x 8: 66, 8 x 25: 66-69, 8 x 31: 90,
# 2 x 63 (the earlier rule, 2^17 entries, s as long as possible): 112-115; 16x16 images: 32 x 32
# (2^18): 13.5-14, 2 x 256: 22.6; 8x8 images: 128 x 32: 3.4-4.0, 2 x 1024: 5.0.  Tile size, 32x32,
# s = 32 (2026-11-30): 2^15: 120, 2^16: 90, 2^17: 71, 2^18: 60-62, 2^19: 74, 2^20: 91, 2^21: 118.  Also
# slower: K and Kdot . Theta + K stacked into one array (one box sum for both) 155, one 3 x 3
# reduce_window instead of two 3-tap ones 124.
_FLAT_TILE_ELEMS = 1 << 18
_FLAT_SIDES = (16, 24, 32, 40)


# ----------------------------------------------------------------------------------------------
# The trace over D_{p,p'} (a 3 x 3 box sum along the diagonal)


def _window_sum(t, axis: int, step: int):
    """out[.., k, ..] = t[.., k - step, ..] + t[.., k, ..] + t[.., k + step, ..] along `axis`,
    with zeros beyond the ends (zero padding)."""
    nd = t.ndim
    window = [1] * nd
    dil = [1] * nd
    pad = [(0, 0)] * nd
    window[axis], dil[axis], pad[axis] = 3, step, (step, step)
    return lax.reduce_window(t, jnp.zeros((), t.dtype), lax.add, tuple(window), (1,) * nd,
                             tuple(pad), window_dilation=tuple(dil))


def _box_pixels(t, axes=(0, 1)):
    """Plain 3 x 3 box sum over two spatial axes (H, W) with zero padding:
    out[i, j] = sum_{a,b in {-1,0,1}} t[i+a, j+b].  This is tr([T]_D_{p,p}) restricted to p = p'
    (the only entries the vanilla CNTK needs) and the diagonal recursion Sigma(x,x)[p,p]."""
    return _window_sum(_window_sum(t, axes[0], 1), axes[1], 1)


def _pair_maps(w: int, c: int):
    """Index maps of the *skewed guard layout* of the (j, j') pair of column indices.

    Flatten (j, j') with a zero guard column j' = W: g = j (W+1) + j', and fold g into rows of
    length W+2: (Rj, Cj) = divmod(g, W+2), Rj in [0, W), Cj in [0, W+2).  The diagonal shift
    (j, j') -> (j+b, j'+b) is g -> g + b (W+2), i.e. Rj -> Rj + b with Cj fixed; a shift that
    leaves the image lands on a guard entry (kept zero) or beyond Rj's ends (zero padding).  So
    every column Cj is an independent problem with a plain 3-tap sum along Rj: this is what lets
    the gap recursion run column group by column group, each small enough to stay in cache.
    Returns int32 jmap, jpmap (j and j' at [Cj, Rj], 0 where invalid) and the bool `valid`
    (a real (j, j') pair), shape (n_cols, W) with n_cols = W+2 rounded up to a multiple of c.
    """
    n_cols = -(-(w + 2) // c) * c
    cj, rj = np.meshgrid(np.arange(n_cols), np.arange(w), indexing="ij")
    g = rj * (w + 2) + cj
    j, jp = g // (w + 1), g % (w + 1)
    valid = (cj < w + 2) & (g < w * (w + 1)) & (jp < w)
    return (np.where(valid, j, 0).astype(np.int32), np.where(valid, jp, 0).astype(np.int32),
            valid)


def _box_unit(t, h: int, pairs_last: bool = True):
    """tr([T]_D_{p,p'}) on a unit (..., H, H+1, W, g) = [.., i, i' (+ guard i' = H), Rj, pair]
    (the g pairs of a unit on the last, vectorised axis; without it when not `pairs_last`): along
    (i, i') the diagonal shift is a flat shift by H+2 of the row-major (i, i') index (guard entries
    separate rows, as for j above), so a dilated 3-tap window sum; along Rj a plain 3-tap sum.
    Guard entries of the result are garbage; callers give them zero weight (the factors of x'
    vanish there)."""
    k = int(pairs_last)
    shape = t.shape
    t3 = t.reshape(shape[:t.ndim - 3 - k] + (h * (h + 1),) + shape[t.ndim - 1 - k:])
    t3 = _window_sum(_window_sum(t3, t3.ndim - 2 - k, h + 2), t3.ndim - 1 - k, 1)
    return t3.reshape(shape)


# ----------------------------------------------------------------------------------------------
# ReLU expectations (Appendix I)

# fdlibm (e_asin.c / e_acos.c) rational approximation: asin(s) = s + s * z P(z) / Q(z), z = s^2,
# for 0 <= s <= 0.5 (error < 1 ulp in float64).
_PS = (1.66666666666666657415e-01, -3.25565818622400915405e-01, 2.01212532134862925881e-01,
       -4.00555345006794114027e-02, 7.91534994289814532176e-04, 3.47933107596021167570e-05)
_QS = (-2.40339491173441421878e+00, 2.02094576023350569471e+00, -6.88283971605453293030e-01,
       7.70381505559019352791e-02)


def _asin(x):
    """arcsin on [-1, 1], elementwise and branch-free; for |x| >= 1/2 it uses
    asin(|x|) = pi/2 - 2 asin(sqrt((1 - |x|) / 2)).  Max abs. error 2.3e-16 in float64."""
    a = jnp.abs(x)
    small = a < 0.5
    z = jnp.where(small, a * a, 0.5 * (1.0 - a))
    s = jnp.where(small, a, jnp.sqrt(z))
    p = z * (_PS[0] + z * (_PS[1] + z * (_PS[2] + z * (_PS[3] + z * (_PS[4] + z * _PS[5])))))
    q = 1.0 + z * (_QS[0] + z * (_QS[1] + z * (_QS[2] + z * _QS[3])))
    t = s + s * (p / q)
    return jnp.copysign(jnp.where(small, t, 0.5 * jnp.pi - 2.0 * t), x)


def _relu_expectations(s, r1, r2, n1, n2, m2=None):
    """Closed forms of Eqs. (11), (12) by Appendix I, Eqs. (37)-(40) (homogeneity trick).

    s: Sigma(h-1)(x, x')[p, p'];  n1 = sqrt(Sigma(h-1)(x,x)[p,p]), n2 = sqrt(Sigma(h-1)(x',x')
    [p',p']) (the diagonal of D);  r1, r2 their inverses (0 where the variance is 0);  m2: optional
    0/1 mask on Kdot.  All broadcast to s's shape.  With lambda = s r1 r2 (the correlation of the
    normalised Lambda = D^-1 Lambda(h) D^-1) and pi - arccos(lambda) = pi/2 + arcsin(lambda):
        K(h)    = c_sigma/q^2 (lambda (pi - arccos lambda) + sqrt(1 - lambda^2)) / (2 pi) n1 n2
        Kdot(h) = c_sigma/q^2 (pi - arccos lambda) / (2 pi).
    """
    c = C_SIGMA / FILTER ** 2
    lam = jnp.clip(s * r1 * r2, -1.0, 1.0)
    pi_minus = 0.5 * jnp.pi + _asin(lam)
    kdot = (c / (2 * jnp.pi)) * pi_minus
    if m2 is not None:
        kdot = kdot * m2
    k = (c / (2 * jnp.pi)) * (lam * pi_minus + jnp.sqrt(1.0 - lam * lam)) * (n1 * n2)
    return k, kdot


def _safe_rsqrt(d):
    return jnp.where(d > 0, lax.rsqrt(jnp.where(d > 0, d, 1.0)), 0.0)


def _image_diagonals(x, n_layers: int):
    """Sigma(h)(x, x)[p, p] for h = 0..n_layers-1: shape (n_layers, N, H, W) from x (N, H, W, C).

    Sigma(0)[p,p] = box(sum_c x_c^2) and, since lambda = 1 on the diagonal (K(h)[p,p] =
    c_sigma/(2 q^2) Sigma(h-1)[p,p]), Sigma(h)[p,p] = c_sigma/(2 q^2) box(Sigma(h-1)[p,p]).
    """
    d = _box_pixels(jnp.sum(x * x, axis=-1), axes=(1, 2))
    out = [d]
    for _ in range(n_layers - 1):
        d = (C_SIGMA / (2 * FILTER ** 2)) * _box_pixels(d, axes=(1, 2))
        out.append(d)
    return jnp.stack(out, axis=0)


_diagonals = jax.jit(_image_diagonals, static_argnames=("n_layers",))


# ----------------------------------------------------------------------------------------------
# The recursions (Section 4 steps 1-4; Appendix H steps 1-4)


def _recursion(sigma0, theta0, fx, fy, box, readout, stops, read_every_layer=False):
    """Runs Sigma(h), Theta(h) layer by layer and reads the kernel out after each L in `stops`.

    sigma0, theta0: Sigma(0)(x, x') and Theta(0) in the caller's layout;  fx = (r1, n1) and
    fy = (r2, n2, m2): per-layer factors of x and x' (leading axis h = 0..max(stops)-1, the rest
    broadcastable to the layout; m2 is a 0/1 mask on Kdot or None);  box: the trace over D;
    readout(K(L), Kdot(L), Theta(L-1)) -> the outputs of a network with L convolution layers.
    Per layer (step 2):  K, Kdot from Lambda(h);  Sigma(h) = tr([K]_D);
    Theta(h) = tr([Kdot . Theta(h-1) + K]_D).  Every depth's recursion is the deepest one's
    stopped early (Sigma(h), Theta(h) do not depend on L), so one pass serves all `stops`
    (sorted, distinct, >= 1), and K(L), Kdot(L) at a stop serve both its readout and the next
    layer.  Two ways to read out the shallower stops, equal in value:
    * default: the layers between two stops run as one lax.scan, a stop's layer outside it;
    * `read_every_layer`: ONE lax.scan over every layer but the last, reading out at every layer
      and keeping the stops' readouts (used for GAP, where a readout is one sum per unit next to a
      layer's arcsin and window sums): one pass / deepest depth alone measured 0.89-0.90 in float64
      and 1.03-1.04 in float32 on XLA:CPU (since the readout shares the next layer's operand, see
      `_gap_pairs`; 1.07-1.13 and 1.15 before) against 1.14-1.22 with the scan cut at every stop
      (`make bench` case 5, median of 15 round-paired ratios).  Flatten keeps the default (one
      pass measured ~0.9x).
    Returns one readout per stop.
    """
    def expectations(sig, r1, n1, r2, n2, m2=None):
        return _relu_expectations(sig, r1, r2, n1, n2, m2)

    def advance(carry, k, kdot):
        return box(k), box(kdot * carry[1] + k)

    every = read_every_layer and len(stops) > 1

    def layer(carry, f):
        k, kdot = expectations(carry[0], *f)
        return advance(carry, k, kdot), (readout(k, kdot, carry[1]) if every else None)

    f_all = tuple(t for t in fx + fy if t is not None)
    carry, done, outs = (sigma0, theta0), 0, []
    if every:  # layers 1 .. last-1 in one scan, the readout of each kept for the stops
        carry, per_layer = lax.scan(layer, carry, tuple(t[:stops[-1] - 1] for t in f_all))
        outs = [jax.tree_util.tree_map(lambda o, n=n_conv: o[n - 1], per_layer) for n_conv in stops[:-1]]
        stops, done = stops[-1:], stops[-1] - 1
    for n_conv in stops:
        if n_conv - 1 > done:  # layers done+1 .. n_conv-1
            carry, _ = lax.scan(layer, carry, tuple(t[done:n_conv - 1] for t in f_all))
        k, kdot = expectations(carry[0], *(t[n_conv - 1] for t in f_all))  # K(L), Kdot(L)
        outs.append(readout(k, kdot, carry[1]))
        if n_conv != stops[-1]:
            carry = advance(carry, k, kdot)  # layer L of the deeper networks
        done = n_conv
    return outs


@partial(jax.jit, static_argnames=("c", "g", "stops", "nngp"))
def _gap_pairs(x1, x2, d1, d2, ii, jj, *, c: int, g: int, stops: tuple, nngp: bool):
    """Global-average-pooling CNTK and NNGP (Appendix H) for the B pairs (x1[ii[b]], x2[jj[b]]).

    x1, x2: (N1|N2, H, W, C);  d1, d2: (L, N1|N2, H, W) diagonals;  ii, jj: (B,) int32.
    Sigma(x, x')[p, p'] lives in the layout [Cj, i, i', Rj] (guard column i' = H, skewed (j, j'):
    see `_pair_maps`, `_box_unit`).  Displacements are independent, so the work is split into
    units = (g pairs, group of c columns Cj), each of shape (c, H, H+1, W, g), run one after
    another (lax.map) with the whole layer recursion of a unit in cache.  The pair axis is last
    (vectorised): for small images a unit holds many pairs (8 x 8 images: W = 8 alone would give
    2-vector inner loops); B % g == 0.
    Returns two (S, B) arrays, one row per L in `stops`: 1/(PQ)^2 sum_{p,p'} Theta(L) and
    1/(PQ)^2 sum_{p,p'} K(L) (zeros unless `nngp`).
    """
    _, h, w, n_ch = x1.shape
    jmap, jpmap, valid = (jnp.asarray(a) for a in _pair_maps(w, c))
    n_units = jmap.shape[0] // c
    box = partial(_box_unit, h=h, pairs_last=g > 1)  # g = 1 (large images): no pair axis

    def unit(idx):
        grp, u = idx // n_units, idx % n_units
        pi = lax.dynamic_slice_in_dim(ii, grp * g, g, 0)
        pj = lax.dynamic_slice_in_dim(jj, grp * g, g, 0)
        jm = lax.dynamic_slice_in_dim(jmap, u * c, c, 0)  # (c, W): j at [Cj, Rj]
        jpm = lax.dynamic_slice_in_dim(jpmap, u * c, c, 0)  # j'
        vm = lax.dynamic_slice_in_dim(valid, u * c, c, 0).astype(x1.dtype)

        def x_side(v):  # (..., H, W) per-pixel values of x -> (..., c, H, 1, W): v[i, j]
            return jnp.moveaxis(v[..., :, jm], -3, -2)[..., :, :, None, :]

        def y_side(v):  # (..., H, W) of x' -> (..., c, 1, H+1, W): v[i', j'], 0 on guards
            t = jnp.moveaxis(v[..., :, jpm], -3, -2) * vm[:, None, :]
            t = jnp.pad(t, [(0, 0)] * (t.ndim - 2) + [(0, 1), (0, 0)])
            return t[..., :, None, :, :]

        def last(t):  # pair axis (1) -> last, or dropped when g = 1
            return jnp.moveaxis(t, 1, -1) if g > 1 else t[:, 0]

        xa = x_side(jnp.moveaxis(x1[pi], -1, 0))  # (C, g, c, H, 1, W)
        xb = y_side(jnp.moveaxis(x2[pj], -1, 0))  # (C, g, c, 1, H+1, W)
        s0 = xa[0] * xb[0]  # x (x) x' summed over channels (unrolled: C is small)
        for ch in range(1, n_ch):
            s0 = s0 + xa[ch] * xb[ch]
        sigma0 = box(jnp.moveaxis(s0, 0, -1) if g > 1 else s0[0])  # Sigma(0), (c, H, H+1, W, g)
        da, db = d1[:, pi], d2[:, pj]  # (L, g, H, W)
        fx = (last(x_side(_safe_rsqrt(da))), last(x_side(jnp.sqrt(da))))
        fy = (last(y_side(_safe_rsqrt(db))), last(y_side(jnp.sqrt(db))),
              last(y_side(jnp.ones_like(db))))
        axes = tuple(range(sigma0.ndim - 1)) if g > 1 else None

        # step 3: Theta(L) = Kdot(L) . Theta(L-1) (no K(L): last layer not trained).  Summed as
        # sum(Kdot . Theta + K) - sum(K): Kdot . Theta + K is what the next layer's window sums
        # read anyway; XLA:CPU runs the one pass over all depths ~10% faster than with
        # sum(Kdot . Theta) (measured, `make bench` case 5; the optimized HLO of both has the same
        # number of arcsin evaluations, so the gain is in how the sums are fused, not fewer arcsins)
        def total(t):
            return jnp.sum(t, axis=axes).reshape(g)

        def readout(k, kdot, theta):
            tk = total(k)
            return (total(kdot * theta + k) - tk, tk if nngp else None)

        # step 1: Theta(0) = 0 (first layer not trained)
        outs = _recursion(sigma0, jnp.zeros_like(sigma0), fx, fy, box, readout, stops,
                          read_every_layer=True)
        return (jnp.stack([o[0] for o in outs]),
                jnp.stack([o[1] for o in outs]) if nngp else jnp.zeros((len(stops), g), x1.dtype))

    ntk, nn = lax.map(unit, jnp.arange(ii.shape[0] // g * n_units))  # (B/g n_units, S, g) each
    norm = (h * w) ** 2  # step 4: mean over all (p, p')

    def per_pair(t):  # -> (S, B)
        t = t.reshape(-1, n_units, len(stops), g).sum(axis=1)
        return jnp.moveaxis(t, 1, 0).reshape(len(stops), -1) / norm

    return per_pair(ntk), per_pair(nn)


def _flatten_tile(xa, xb, fx, fy, stops, nngp):
    """Vanilla CNTK and NNGP (Section 4) for the tile xa (r, H, W, C) x xb (s, H, W, C).

    fx = (r1, n1): (L, H, W, r, 1), fy = (r2, n2): (L, H, W, 1, s) per-layer factors.  Layout
    (H, W, r, s) holding Sigma(x, x')[p, p] only: by the same-offset structure of the trace, the
    p = p' entries form a closed recursion.  Returns two (S, r, s) arrays, one row per L in
    `stops`: tr(Theta(L)), tr(K(L)) (zeros unless `nngp`).
    """
    box = partial(_box_pixels, axes=(-4, -3))
    xa_t = jnp.transpose(xa, (3, 1, 2, 0))[..., :, None]  # (C, H, W, r, 1)
    xb_t = jnp.transpose(xb, (3, 1, 2, 0))[..., None, :]  # (C, H, W, 1, s)
    s0 = xa_t[0] * xb_t[0]
    for c in range(1, xa.shape[-1]):
        s0 = s0 + xa_t[c] * xb_t[c]
    sigma0 = box(s0)  # Sigma(0)[p, p]
    def readout(k, kdot, theta):  # step 3: Theta(L) = Kdot(L) . Theta(L-1) + K(L); step 4: trace
        return jnp.sum(kdot * theta + k, axis=(0, 1)), (jnp.sum(k, axis=(0, 1)) if nngp else None)

    outs = _recursion(sigma0, sigma0, fx, fy + (None,), box, readout, stops)  # Theta(0) = Sigma(0)
    ntk = jnp.stack([o[0] for o in outs])
    return ntk, (jnp.stack([o[1] for o in outs]) if nngp else jnp.zeros_like(ntk))


@jax.jit
def _flatten_factors(d):
    """(L, N, H, W) diagonals -> (1/sqrt, sqrt), each (L, H, W, N) (the tile layout's order).

    A separate jitted call on purpose: computed inside `_flatten_block`, the same factors made the
    layer loop 3-4x slower on XLA:CPU (jax 0.10), although the loop's HLO was identical."""
    t = jnp.moveaxis(d, 1, -1)
    return _safe_rsqrt(t), jnp.sqrt(t)


@partial(jax.jit, static_argnames=("r", "s", "stops", "nngp"))
def _flatten_block(xa, xb, fa, fb, *, r: int, s: int, stops: tuple, nngp: bool):
    """`_flatten_tile` over all (r x s) tiles of the block xa (R, H, W, C) x xb (S, H, W, C)
    (R % r == S % s == 0), one tile after another (lax.map) so each tile's whole layer recursion
    stays in cache.  fa, fb: `_flatten_factors` of the block's diagonals.  Returns two
    (len(stops), R, S)."""
    n_i, n_j = xa.shape[0] // r, xb.shape[0] // s

    def tile(idx):
        i, j = idx // n_j, idx % n_j
        fx = tuple(lax.dynamic_slice_in_dim(t, i * r, r, 3)[..., None] for t in fa)
        fy = tuple(lax.dynamic_slice_in_dim(t, j * s, s, 3)[..., None, :] for t in fb)
        return _flatten_tile(lax.dynamic_slice_in_dim(xa, i * r, r, 0),
                             lax.dynamic_slice_in_dim(xb, j * s, s, 0), fx, fy, stops, nngp)

    parts = lax.map(tile, jnp.arange(n_i * n_j))
    n_s = len(stops)

    def untile(t):  # (n_i n_j, S, r, s) -> (S, R, S)
        return (t.reshape(n_i, n_j, n_s, r, s).transpose(2, 0, 3, 1, 4)
                .reshape(n_s, n_i * r, n_j * s))

    return untile(parts[0]), untile(parts[1])


# ----------------------------------------------------------------------------------------------
# Public API


def _check_images(x, name):
    if x.ndim != 4:
        raise ConfigError(f"{name} must be images of shape (N, H, W, C), got shape {tuple(x.shape)};"
                          " add a channel axis for grey-scale images")
    if min(x.shape) < 1:
        raise ConfigError(f"{name} has an empty axis (shape {tuple(x.shape)}); pass at least one "
                          "image with H, W, C >= 1")


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _depths(depth) -> tuple[int, ...]:
    """The requested depths, validated: one int, or a non-empty sequence of them (each >= 2)."""
    many = isinstance(depth, (list, tuple, np.ndarray)) or (
        hasattr(depth, "__iter__") and not isinstance(depth, (str, bytes)))
    values = list(depth) if many else [depth]
    if not values:
        raise ConfigError("depth is an empty list; give at least one depth >= 2 (e.g. [3, 4, 6, 11, 21])")
    for d in values:
        if not _is_int(d) or d < 2:
            raise ConfigError(f"depth must be an integer >= 2 (conv layers + final layer, as in "
                              f"Arora et al. Table 1), got {d!r}")
    return tuple(int(d) for d in values)


def cntk(x1, x2=None, *, depth, pooling: str = "flatten", dtype=jnp.float64,
         return_nngp: bool = False, batch_size: int | None = None):
    """Exact CNTK of Arora et al. 2019 between image sets x1 (N1, H, W, C) and x2 (N2, H, W, C).

    depth: conv layers + final layer (Table 1), >= 2; or a list of depths, all computed in ONE pass
    of the recursion (the depth-d kernel is the deepest recursion read out after layer d - 1, so
    the list costs about what its deepest entry costs) and returned as a dict {depth: (N1, N2)}.
    pooling: "flatten" (vanilla CNN, Section 4) or "gap" (global average pooling, first and last
    layers fixed, Appendix H; with depth = 2 no layer is trained and the CNTK is identically 0).
    dtype: computation dtype (float64 needs jax_enable_x64, otherwise JAX's canonical float32 is
    used).  batch_size: image pairs per jitted call (default: about 2^22 pair-pixel entries, i.e. 4
    pairs of 32x32 images for gap and 4096 for flatten); memory stays bounded by the cache-sized
    tiles either way.

    Returns the (N1, N2) CNTK, or (cntk, nngp) with `return_nngp`; nngp is the output covariance
    E[f(x) f(x')] at initialisation (flatten: tr(K(L)); gap: mean of K(L) over (p, p')).  With a
    list of depths each of these is a dict {depth: (N1, N2)}.
    x2 = None means x2 = x1 (then only i <= j is computed and mirrored).
    """
    depths = _depths(depth)
    if not isinstance(pooling, str) or pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if batch_size is not None and (not _is_int(batch_size) or batch_size < 1):
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

    stops = tuple(sorted({d - 1 for d in depths}))  # convolution layers L of each network
    _, h, w, _ = x1.shape
    d1 = _diagonals(x1, n_layers=stops[-1])
    d2 = d1 if symmetric else _diagonals(x2, n_layers=stops[-1])
    if pooling == "gap":
        if batch_size is None:
            batch_size = max(1, _DEFAULT_ELEMS // (h * w) ** 2)
        ntk, nngp = _run_gap(x1, x2, d1, d2, symmetric, batch_size, stops, return_nngp)
    else:
        if batch_size is None:
            batch_size = max(1, _DEFAULT_ELEMS // (h * w))
        ntk, nngp = _run_flatten(x1, x2, d1, d2, symmetric, batch_size, stops, return_nngp)
    if isinstance(depth, (int, np.integer)):
        ntk, nngp = ntk[0], nngp[0]
    else:
        ntk, nngp = ({d: t[stops.index(d - 1)] for d in depths} for t in (ntk, nngp))
    return (ntk, nngp) if return_nngp else ntk


def _run_gap(x1, x2, d1, d2, symmetric, batch_size, stops, nngp):
    n1, n2 = x1.shape[0], x2.shape[0]
    if symmetric:
        ii, jj = np.triu_indices(n1)
    else:
        ii, jj = (a.ravel() for a in np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij"))
    n_pairs = ii.size
    _, h, w, _ = x1.shape
    c = max(1, min(w + 2, _TILE_ELEMS // (h * (h + 1) * w)))  # columns per cache-resident unit
    n_cols = -(-(w + 2) // c) * c
    # pairs per unit; the pair axis is the vectorised one, so whole SIMD vectors of pairs (8x8 images:
    # 22 -> 24 pairs, 0.65-0.68 -> 0.52-0.59 ms per depth-21 entry on 2 CPU cores), at most n_pairs
    g = _TILE_ELEMS // (n_cols * h * (h + 1) * w)
    g = max(1, min(n_pairs, (g + 4) // 8 * 8 if g >= 8 else g))
    bs = g * -(-min(batch_size, n_pairs) // g)
    n_pad = (-n_pairs) % bs
    ii_p = np.concatenate([ii, np.zeros(n_pad, ii.dtype)]).astype(np.int32)
    jj_p = np.concatenate([jj, np.zeros(n_pad, jj.dtype)]).astype(np.int32)
    parts = [_gap_pairs(x1, x2, d1, d2, ii_p[s:s + bs], jj_p[s:s + bs], c=c, g=g, stops=stops,
                        nngp=nngp)
             for s in range(0, n_pairs + n_pad, bs)]

    def assemble(vals):  # [(S, B)] -> (S, N1, N2)
        vals = jnp.concatenate(vals, axis=1)[:, :n_pairs]
        out = jnp.zeros((len(stops), n1, n2), x1.dtype).at[:, ii, jj].set(vals)
        return out.at[:, jj, ii].set(vals) if symmetric else out

    return assemble([p[0] for p in parts]), assemble([p[1] for p in parts])


def _balanced(n: int, most: int) -> int:
    """The smallest size <= `most` that covers n in the fewest pieces (ceil(n / most) of them)."""
    most = max(1, min(n, most))
    return -(-n // -(-n // most))


def _flatten_tile_shape(n1: int, n2: int, hw: int, symmetric: bool = False) -> tuple[int, int]:
    """Tile sides (r, s) for the layout (H, W, r, s), about _FLAT_TILE_ELEMS entries: s (the
    vectorised axis) one of _FLAT_SIDES, the one that pads x2 least (ties: the longer), or all of
    x2 when it has at most 16 images; r fills the tile, balanced over x1 (200 -> 4 x 50, not
    4 x 64 with 56 padded images).  Symmetric (square blocks, a multiple of both sides): r a
    multiple or a divisor of s, so the blocks' unit is max(r, s), not lcm(r, s) (8x8 images, 250
    of them: 128 x 32 pads to 256; r = 125 with s = 32 padded to lcm = 4000)."""
    pairs = max(1, _FLAT_TILE_ELEMS // hw)
    sides = [v for v in _FLAT_SIDES if v <= pairs]
    if n2 <= _FLAT_SIDES[0] or not sides:
        s = _balanced(n2, min(pairs, _FLAT_SIDES[0]))
    else:
        s = min(sides, key=lambda v: (-(-n2 // v) * v, -v))
    most = max(1, pairs // s)
    if not symmetric:
        return _balanced(n1, most), s
    if most >= s:  # r = k s, k balanced over x1's ceil(n1 / s) s-wide strips
        return s * _balanced(-(-n1 // s), most // s), s
    return max(d for d in range(1, most + 1) if s % d == 0), s


def _run_flatten(x1, x2, d1, d2, symmetric, batch_size, stops, want_nngp):
    n1, n2 = x1.shape[0], x2.shape[0]
    hw = x1.shape[1] * x1.shape[2]
    r, s = _flatten_tile_shape(n1, n2, hw, symmetric)
    if symmetric:  # square blocks (mirrored), a multiple of both tile sides
        unit = math.lcm(r, s)
        rows = cols = unit * max(1, min(-(-n1 // unit), int(np.sqrt(batch_size)) // unit))
    else:
        cols = s * max(1, min(-(-n2 // s), batch_size // (r * s)))
        rows = r * max(1, min(-(-n1 // r), batch_size // (r * cols)))

    def padded(x, d, size):
        extra = (-x.shape[0]) % size  # zero images: zero variance, handled by _safe_rsqrt
        return (jnp.pad(x, ((0, extra), (0, 0), (0, 0), (0, 0))),
                jnp.pad(d, ((0, 0), (0, extra), (0, 0), (0, 0))))

    x1p, d1p = padded(x1, d1, rows)
    x2p, d2p = (x1p, d1p) if symmetric else padded(x2, d2, cols)
    n_bi, n_bj = x1p.shape[0] // rows, x2p.shape[0] // cols
    ntk = [[None] * n_bj for _ in range(n_bi)]
    nngp = [[None] * n_bj for _ in range(n_bi)]
    # The per-image factors of a block cost about as much as the recursion of a thin block (2 x 2016
    # pairs of 32x32 images: 0.40 s against 0.50 s), so they are computed once per outer block and
    # the outer loop runs over the side whose factors would otherwise be recomputed the most
    # (1017 x 2000 images: 509 row blocks of 2 against one column block of 2016).
    rows_outer = symmetric or (x1p.shape[0] + n_bi * x2p.shape[0] <= x2p.shape[0] + n_bj * x1p.shape[0])
    outer, inner = ((range(n_bi), range(n_bj)) if rows_outer else (range(n_bj), range(n_bi)))

    def factors(d, k, size):  # block k's per-image factors
        return _flatten_factors(d[:, k * size:(k + 1) * size])

    for a in outer:
        f_outer = factors(d1p, a, rows) if rows_outer else factors(d2p, a, cols)
        for b in inner:
            bi, bj = (a, b) if rows_outer else (b, a)
            if symmetric and bj < bi:
                continue
            rs, cs = slice(bi * rows, (bi + 1) * rows), slice(bj * cols, (bj + 1) * cols)
            if rows_outer:
                fa, fb = f_outer, (f_outer if symmetric and bi == bj else factors(d2p, bj, cols))
            else:
                fa, fb = factors(d1p, bi, rows), f_outer
            ntk[bi][bj], nngp[bi][bj] = _flatten_block(x1p[rs], x2p[cs], fa, fb, r=r, s=s, stops=stops,
                                                       nngp=want_nngp)
    if symmetric:
        for bi in range(len(ntk)):
            for bj in range(bi):
                ntk[bi][bj], nngp[bi][bj] = (jnp.swapaxes(t[bj][bi], -1, -2) for t in (ntk, nngp))

    def assemble(blocks):  # grid of (S, rows, cols) -> (S, N1, N2)
        full = jnp.concatenate([jnp.concatenate(row, axis=2) for row in blocks], axis=1)
        return full[:, :n1, :n2]

    return assemble(ntk), assemble(nngp)
