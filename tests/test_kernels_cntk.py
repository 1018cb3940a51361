"""Tests of `ntkrepro.kernels.cntk` (Arora et al. 2019 CNTK, vanilla and global average pooling).

* Monte Carlo: the finite-width CNN of Section 4 / Appendix H, written here in plain JAX with the
  paper's parameterisation (N(0, 1) weights, sqrt(c_sigma / (C(h) q^2)) after each ReLU, an
  unscaled N(0, 1) readout), has empirical NTKs (`ntkrepro.empirical.empirical_ntk`) whose mean
  over initialisations must match `cntk` within the measured Monte Carlo error, with an error that
  shrinks when the channels grow 4x.  For gap only the middle convolutions are differentiated
  (Appendix H: first and last layers fixed).
* The NNGP (output covariance) likewise, from the readout-feature Gram (the output covariance
  conditional on the hidden layers, i.e. E_{W(L+1)}[f(x) f(x')]).
* An independent loop-over-pixels numpy transcription of the formulas (Section 4, Appendix H,
  general 2 x 2 Gaussian expectations, no homogeneity trick) equals the vectorised code to 1e-10.
* Symmetry, PSD, x2=None, float32 vs float64, blocking invariance, bad input.
"""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ntkrepro.empirical import empirical_ntk
from ntkrepro.errors import ConfigError

cntk_mod = importlib.import_module("ntkrepro.kernels.cntk")
cntk = cntk_mod.cntk
C_SIGMA = 2.0

# ----------------------------------------------------------------------------------------------
# The finite-width network of Section 4 (flatten) and Appendix H (gap)


def init_cnn(key, depth, c_in, width, pooling, hw):
    """Conv filters W(h) (3, 3, C(h-1), C(h)) ~ N(0, 1), h = 1..L, and the readout W(L+1) ~ N(0, 1):
    (H, W, C(L)) for flatten (<W(L+1)_a, x(L)_a> summed over a) or (C(L),) for gap."""
    n_conv = depth - 1
    keys = jax.random.split(key, n_conv + 1)
    convs, cin = [], c_in
    for h in range(n_conv):
        convs.append(jax.random.normal(keys[h], (3, 3, cin, width)))
        cin = width
    out = jax.random.normal(keys[-1], tuple(hw) + (width,) if pooling == "flatten" else (width,))
    return convs, out


def cnn_hidden(convs, x):
    """x(L): x~(h) = sum_a W(h)_(a),(b) * x(h-1)_(a) (Eq. 10, zero padding, stride 1),
    x(h) = sqrt(c_sigma / (C(h) q^2)) relu(x~(h)); the input x(0) = x is not rescaled."""
    h = x
    for w in convs:
        h = lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jnp.sqrt(C_SIGMA / (w.shape[-1] * 9)) * jax.nn.relu(h)
    return h


def cnn_apply(convs, out, x, pooling):
    h = cnn_hidden(convs, x)
    if pooling == "flatten":
        return jnp.einsum("nhwc,hwc->n", h, out)
    return jnp.mean(h, axis=(1, 2)) @ out  # global average pooling, then W(L+1)


def group_mean_ntk(x, depth, pooling, width, seeds):
    """Mean over the initialisations `seeds` of the empirical NTK, from ONE `empirical_ntk` call:
    g(theta_1..theta_M, x) = sum_m f(theta_m, x) / sqrt(M) has disjoint parameter blocks, so
    J_g J_g^T = (1/M) sum_m J_m J_m^T exactly (one compilation instead of M)."""
    params = [init_cnn(jax.random.PRNGKey(s), depth, x.shape[-1], width, pooling, x.shape[1:3])
              for s in seeds]
    scale = 1.0 / np.sqrt(len(seeds))
    if pooling == "flatten":  # every layer trained
        def g(p, xs):
            return scale * sum(cnn_apply(c, o, xs, pooling) for c, o in p)
        trainable = params
    else:  # Appendix H: W(1) and W(L+1) fixed, only the middle convolutions differentiated
        fixed = [(c[0], o) for c, o in params]

        def g(p, xs):
            return scale * sum(cnn_apply([c0] + list(rest), o, xs, pooling)
                               for rest, (c0, o) in zip(p, fixed))
        trainable = [c[1:] for c, _ in params]
    return empirical_ntk(g, trainable, x)


def mc_ntk_stats(x, depth, pooling, width, n_groups=4, per_group=2, seed0=0):
    """(mean of all inits, the n_groups group means): the spread of the group means measures the
    Monte Carlo error."""
    groups = [group_mean_ntk(x, depth, pooling, width,
                             range(seed0 + g * per_group, seed0 + (g + 1) * per_group))
              for g in range(n_groups)]
    return sum(groups) / n_groups, groups


def rel(a, ref):
    return float(jnp.linalg.norm(a) / jnp.linalg.norm(ref))


@pytest.fixture(scope="module")
def images():
    # H != W so that a transposition of spatial axes cannot go unnoticed.
    return jnp.asarray(np.random.default_rng(0).normal(size=(3, 4, 5, 2)))


MC_CASES = [("flatten", 2), ("flatten", 3), ("gap", 3)]


@pytest.mark.parametrize("pooling,depth", MC_CASES)
def test_ntk_matches_monte_carlo(images, pooling, depth):
    """Mean empirical NTK of 8 networks with 256 channels vs the CNTK.

    Tolerance = 4 standard errors of the 8-init mean (estimated from the spread of 4 group means)
    + 4/C for the O(1/C) finite-width bias.  Normalisation errors (c_sigma, 1/q^2, the channel
    sum, the 1/(PQ)^2 of gap, the trained layers) change the kernel by factors of 2 or more and
    fail by far: the measured errors are ~1-3%.  Then: the group-mean deviation (a Monte Carlo
    fluctuation ~ 1/sqrt(C)) must shrink from C = 64 to 4C = 256.
    """
    k = cntk(images, depth=depth, pooling=pooling)
    spread = {}
    for width in (64, 256):
        mean, groups = mc_ntk_stats(images, depth, pooling, width)
        spread[width] = np.sqrt(np.mean([rel(g - k, k) ** 2 for g in groups]))
        if width == 256:
            n = len(groups)  # standard error of the mean of n group means, Frobenius, relative
            se = np.sqrt(sum(rel(g - mean, k) ** 2 for g in groups) / (n * (n - 1)))
            err = rel(mean - k, k)
            assert err < 4 * se + 4 / width, (pooling, depth, err, se)
    assert spread[256] < spread[64], (pooling, depth, spread)


def mc_nngp(x, depth, pooling, width, seeds):
    """Per-init E_{W(L+1)}[f(x) f(x')] = sum_a <x(L)_a, x'(L)_a> (flatten; W(L+1) ~ N(0, 1) entries)
    or sum_a mean x(L)_a mean x'(L)_a (gap): an unbiased sample of the output covariance with the
    readout integrated out exactly."""
    def one(s):
        convs, _ = init_cnn(jax.random.PRNGKey(s), depth, x.shape[-1], width, pooling,
                            x.shape[1:3])
        h = cnn_hidden(convs, x)
        if pooling == "flatten":
            return jnp.einsum("nhwc,mhwc->nm", h, h)
        m = jnp.mean(h, axis=(1, 2))
        return m @ m.T
    return jnp.stack([one(s) for s in seeds])


@pytest.mark.parametrize("pooling,depth", [("flatten", 2), ("flatten", 3), ("gap", 2),
                                           ("gap", 3)])
def test_nngp_matches_monte_carlo(images, pooling, depth):
    _, nngp = cntk(images, depth=depth, pooling=pooling, return_nngp=True)
    dev = {}
    for width in (64, 256):
        samples = mc_nngp(images, depth, pooling, width, range(100, 116))
        mean = samples.mean(axis=0)
        dev[width] = np.sqrt(np.mean([rel(s - nngp, nngp) ** 2 for s in samples]))
        if width == 256:
            m = len(samples)  # standard error of the 16-init mean (spread around the mean)
            se = np.sqrt(sum(rel(s_ - mean, nngp) ** 2 for s_ in samples) / (m * (m - 1)))
            err = rel(mean - nngp, nngp)
            assert err < 4 * se + 4 / width, (pooling, depth, err, se)
    assert dev[256] < 0.75 * dev[64], (pooling, depth, dev)  # ~1/sqrt(C): expect ratio 0.5


def test_gap_depth2_has_no_trained_layer(images):
    """Appendix H with L = 1: W(1) and W(2) both fixed, nothing trained, Theta = 0."""
    ntk, nngp = cntk(images, depth=2, pooling="gap", return_nngp=True)
    assert np.all(np.asarray(ntk) == 0.0)
    assert np.all(np.linalg.eigvalsh(np.asarray(nngp)) > 0)


# ----------------------------------------------------------------------------------------------
# Independent literal transcription


def _naive_trace_d(t, h, w):
    out = np.zeros_like(t)
    for i in range(h):
        for j in range(w):
            for i2 in range(h):
                for j2 in range(w):
                    s = 0.0
                    for a in (-1, 0, 1):
                        for b in (-1, 0, 1):
                            if (0 <= i + a < h and 0 <= j + b < w and 0 <= i2 + a < h
                                    and 0 <= j2 + b < w):
                                s += t[i + a, j + b, i2 + a, j2 + b]
                    out[i, j, i2, j2] = s
    return out


def naive_cntk(x, y, depth, pooling):
    """Section 4 / Appendix H with explicit pixel loops and the general (un-normalised) 2 x 2
    Gaussian expectations E[relu u relu v] = sqrt(s11 s22)(sin t + (pi - t) cos t)/(2 pi),
    E[relu' u relu' v] = (pi - t)/(2 pi), cos t = s12/sqrt(s11 s22).  Returns (ntk, nngp)."""
    h, w, n_ch = x.shape
    q2, n_conv = 9, depth - 1
    imgs = {"x": x, "y": y}
    sig = {}
    for a, b in (("x", "x"), ("x", "y"), ("y", "y")):
        t = np.zeros((h, w, h, w))
        for c in range(n_ch):
            t += _naive_trace_d(np.multiply.outer(imgs[a][:, :, c], imgs[b][:, :, c]), h, w)
        sig[a, b] = t
    theta = sig["x", "y"].copy() if pooling == "flatten" else np.zeros((h, w, h, w))
    for layer in range(1, n_conv + 1):
        k, kd = {}, np.zeros((h, w, h, w))
        for key in sig:
            a, b = key
            k[key] = np.zeros((h, w, h, w))
            for i in range(h):
                for j in range(w):
                    for i2 in range(h):
                        for j2 in range(w):
                            s11, s22 = sig[a, a][i, j, i, j], sig[b, b][i2, j2, i2, j2]
                            cos = np.clip(sig[key][i, j, i2, j2] / np.sqrt(s11 * s22), -1, 1)
                            t = np.arccos(cos)
                            k[key][i, j, i2, j2] = (C_SIGMA / q2 * np.sqrt(s11 * s22)
                                                    * (np.sin(t) + (np.pi - t) * cos) / (2 * np.pi))
                            if key == ("x", "y"):
                                kd[i, j, i2, j2] = C_SIGMA / q2 * (np.pi - t) / (2 * np.pi)
        if layer < n_conv:
            theta = _naive_trace_d(kd * theta + k["x", "y"], h, w)
            sig = {key: _naive_trace_d(val, h, w) for key, val in k.items()}
        elif pooling == "flatten":
            theta = kd * theta + k["x", "y"]
            diag = lambda t4: sum(t4[i, j, i, j] for i in range(h) for j in range(w))  # noqa: E731
            return diag(theta), diag(k["x", "y"])
        else:
            return (kd * theta).sum() / (h * w) ** 2, k["x", "y"].sum() / (h * w) ** 2


@pytest.mark.parametrize("shape,depth,pooling", [
    ((3, 3, 1), 2, "flatten"), ((3, 3, 1), 2, "gap"), ((3, 3, 1), 3, "flatten"),
    ((3, 3, 1), 3, "gap"), ((4, 3, 2), 4, "flatten"), ((4, 3, 2), 4, "gap")])
def test_matches_naive_loops(shape, depth, pooling):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(2,) + shape)
    ntk, nngp = cntk(x[:1], x[1:], depth=depth, pooling=pooling, return_nngp=True)
    ref_ntk, ref_nngp = naive_cntk(x[0], x[1], depth, pooling)
    assert abs(float(ntk[0, 0]) - ref_ntk) <= 1e-10 * max(1.0, abs(ref_ntk))
    assert abs(float(nngp[0, 0]) - ref_nngp) <= 1e-10 * max(1.0, abs(ref_nngp))
    if pooling == "gap" and depth > 2:
        assert ref_ntk != 0.0


# ----------------------------------------------------------------------------------------------
# Structural properties


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    return rng.normal(size=(6, 6, 5, 3)), rng.normal(size=(4, 6, 5, 3))


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
def test_symmetric_psd_and_x2_none(batch, pooling):
    x, _ = batch
    k_none, g_none = cntk(x, depth=4, pooling=pooling, return_nngp=True)
    k_xx, g_xx = cntk(x, x, depth=4, pooling=pooling, return_nngp=True)
    for a, b in ((k_none, k_xx), (g_none, g_xx)):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)
        np.testing.assert_allclose(a, a.T, rtol=1e-12, atol=0)
        ev = np.linalg.eigvalsh(a)
        assert ev.min() > -1e-10 * ev.max() and ev.max() > 0


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
def test_blocking_and_transpose_invariance(batch, pooling):
    x, y = batch  # 6 x 5 images
    ref = np.asarray(cntk(x, y, depth=3, pooling=pooling))
    for bs in ((1, 7) if pooling == "flatten" else (7,)):
        np.testing.assert_allclose(np.asarray(cntk(x, y, depth=3, pooling=pooling, batch_size=bs)),
                                   ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(cntk(y, x, depth=3, pooling=pooling)), ref.T, rtol=1e-12)
    # Small tiles: flatten runs many (r x s) tiles per block with padded images; gap splits the
    # W + 2 = 7 skewed columns into units of c = 1 or c = 3 (7 -> 9: padded, all-invalid columns).
    name = "_FLAT_TILE_ELEMS" if pooling == "flatten" else "_TILE_ELEMS"
    old = getattr(cntk_mod, name)
    tiles = (2 * 30,) if pooling == "flatten" else (6 * 7 * 5, 3 * 6 * 7 * 5)
    try:
        for n, tile in enumerate(tiles):
            setattr(cntk_mod, name, tile)
            np.testing.assert_allclose(
                np.asarray(cntk(x, y, depth=3, pooling=pooling, batch_size=3)), ref, rtol=1e-12)
            if n == 0:
                np.testing.assert_allclose(
                    np.asarray(cntk(x, depth=3, pooling=pooling, batch_size=5)),
                    np.asarray(cntk(x, x, depth=3, pooling=pooling)), rtol=1e-12)
    finally:
        setattr(cntk_mod, name, old)


def test_flatten_block_order(batch, monkeypatch):
    """The flatten blocks run rows-outer or columns-outer, whichever computes fewer per-image
    factors, each outer block's once (and a diagonal block's once, x2 = None); every order gives
    the unblocked kernel."""
    x, y = batch  # 6 x 4 images of 6 x 5 pixels
    refs = {False: np.asarray(cntk(x, y, depth=4)), True: np.asarray(cntk(x, x, depth=4))}
    calls = []
    factors = cntk_mod._flatten_factors
    monkeypatch.setattr(cntk_mod, "_flatten_factors", lambda d: calls.append(d.shape[1]) or factors(d))
    monkeypatch.setattr(cntk_mod, "_FLAT_TILE_ELEMS", 2 * 30)  # tiles of 2 pairs
    # (x, y), batch 4: 6 x 1 blocks of 1 x 4 pairs: the column block's factors once (columns
    # outer), not 6 times; batch 16: 2 x 1 blocks of 4 x 4 (padded): columns outer again (4 + 8
    # images, against 8 + 2 x 4 rows outer); x2 = None, batch 4: 3 x 3 blocks of 2 x 2, upper
    # triangle, rows outer, the diagonal block's factors shared
    for x2, bs, order in ((y, 4, [4] + [1] * 6), (y, 16, [4, 4, 4]), (None, 4, [2] * 6)):
        calls.clear()
        np.testing.assert_allclose(np.asarray(cntk(x, x2, depth=4, batch_size=bs)), refs[x2 is None],
                                   rtol=1e-12)
        assert calls == order, (bs, calls)


@pytest.mark.parametrize("n,hw", [(250, 64), (300, 64), (1000, 256), (2000, 1024), (200, 1024), (13, 1024)])
def test_flatten_tile_shape(n, hw):
    """Tiles of about _FLAT_TILE_ELEMS entries, the vectorised side s a multiple of 8 (or all of
    x2 when it is short); symmetric: r and s divide one another, so square blocks step by max(r, s)
    and pad x1 by less than one step (an lcm of 125 and 32 once padded 250 images to 4000)."""
    for symmetric in (False, True):
        r, s = cntk_mod._flatten_tile_shape(n, n, hw, symmetric)
        assert s % 8 == 0 or s == n, (r, s)
        assert r * s * hw <= 2 * cntk_mod._FLAT_TILE_ELEMS
        if symmetric:
            assert r % s == 0 or s % r == 0, (r, s)
            step = max(r, s)
            assert -(-n // step) * step - n < step


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
def test_float32_close_to_float64(batch, pooling):
    x, y = batch
    k64 = np.asarray(cntk(x, y, depth=5, pooling=pooling))
    k32 = cntk(x, y, depth=5, pooling=pooling, dtype=jnp.float32)
    assert k32.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(k32), k64, rtol=1e-4)


def test_zero_image_and_asin():
    """A zero image has zero variance everywhere (the safe division path): kernel 0, no NaN."""
    x = np.zeros((2, 4, 4, 1))
    x[1] = 1.0
    for pooling in ("flatten", "gap"):
        k = np.asarray(cntk(x, depth=3, pooling=pooling))
        assert np.all(np.isfinite(k)) and k[0, 0] == 0.0 and k[0, 1] == 0.0 and k[1, 1] > 0
    t = np.concatenate([np.linspace(-1, 1, 20001), 1 - np.logspace(-16, 0, 200)])
    np.testing.assert_allclose(np.asarray(cntk_mod._asin(jnp.asarray(t))), np.arcsin(t),
                               rtol=0, atol=5e-16)


@pytest.mark.parametrize("kwargs,match", [
    (dict(depth=1), "depth"), (dict(depth=0), "depth"), (dict(depth=2.5), "depth"),
    (dict(depth=True), "depth"), (dict(depth=3, pooling="max"), "pooling"),
    (dict(depth=3, batch_size=0), "batch_size"), (dict(depth=3, dtype=jnp.int32), "dtype")])
def test_bad_config_raises(kwargs, match):
    x = np.ones((2, 3, 3, 1))
    with pytest.raises(ConfigError, match=match):
        cntk(x, **kwargs)


def test_bad_shapes_raise():
    with pytest.raises(ConfigError, match="shape"):
        cntk(np.ones((3, 3, 1)), depth=2)
    with pytest.raises(ConfigError, match="share"):
        cntk(np.ones((2, 3, 3, 1)), np.ones((2, 4, 3, 1)), depth=2)
    with pytest.raises(ConfigError, match="share"):
        cntk(np.ones((2, 3, 3, 1)), np.ones((2, 3, 3, 2)), depth=2)
    with pytest.raises(ConfigError, match="empty"):
        cntk(np.ones((0, 3, 3, 1)), depth=2)


# ----------------------------------------------------------------------------------------------
# Cross-check with neural-tangents (skipped where it is not installed)


def _nt_available():
    try:
        from ntkrepro.bench import nt_shim
    except ImportError:
        return False
    return nt_shim.available()


@pytest.mark.skipif(not _nt_available(), reason="neural_tangents not installed")
@pytest.mark.parametrize("pooling,depth", [("flatten", 3), ("flatten", 6), ("gap", 4)])
def test_equals_neural_tangents_up_to_its_input_scaling(batch, pooling, depth):
    """neural-tangents' Conv(W_std^2 = c_sigma, SAME) + Relu stack gives the same kernels up to
    constants fixed by its different normalisation of the input layer (1/C(0)) and of the
    readout (1/(PQ) for Dense after Flatten).  The vanilla NTK and both NNGPs must agree exactly
    after that rescaling; its gap NTK trains W(1) and W(L+1), so it is not Appendix H's and is not
    compared."""
    from ntkrepro.bench import nt_shim
    stax = nt_shim.load_neural_tangents().stax
    x = batch[0][:3]
    _, h, w, c0 = x.shape
    layers = []
    for _ in range(depth - 1):
        layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=np.sqrt(C_SIGMA)), stax.Relu()]
    layers += [stax.Flatten() if pooling == "flatten" else stax.GlobalAvgPool(),
               stax.Dense(1, W_std=1.0)]
    kernel_fn = jax.jit(stax.serial(*layers)[2], static_argnames="get")
    ref = kernel_fn(jnp.asarray(x), None, get=("nngp", "ntk"))
    scale = c0 * (h * w if pooling == "flatten" else 1)
    ntk, nngp = cntk(x, depth=depth, pooling=pooling, return_nngp=True)
    np.testing.assert_allclose(np.asarray(nngp), scale * np.asarray(ref.nngp), rtol=1e-9)
    if pooling == "flatten":
        # rtol 1e-7: neural-tangents' own float64 NTK carries ~1e-8 relative rounding at depth 6
        np.testing.assert_allclose(np.asarray(ntk), scale * np.asarray(ref.ntk), rtol=1e-7)


# ----------------------------------------------------------------------------------------------
# All depths in one pass


@pytest.mark.parametrize("pooling", ["flatten", "gap"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_depths_in_one_pass_equal_separate_calls(batch, pooling, symmetric):
    """depth=[...] reads every depth out of ONE recursion (the depth-d kernel is the deepest
    recursion stopped after layer d - 1): equal to separate calls, NNGP included, any order."""
    x, y = batch
    x2 = None if symmetric else y
    depths = [6, 2, 3, 4]
    ntk, nngp = cntk(x, x2, depth=depths, pooling=pooling, return_nngp=True)
    assert list(ntk) == depths and list(nngp) == depths
    for d in depths:
        k, g = cntk(x, x2, depth=d, pooling=pooling, return_nngp=True)
        np.testing.assert_allclose(np.asarray(ntk[d]), np.asarray(k), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(np.asarray(nngp[d]), np.asarray(g), rtol=1e-12, atol=1e-300)
    only = cntk(x, x2, depth=(4, 4), pooling=pooling)  # repeated depths: computed once
    assert list(only) == [4]
    np.testing.assert_allclose(np.asarray(only[4]), np.asarray(ntk[4]), rtol=1e-12)


@pytest.mark.parametrize("depth", [[], [3, 1], [3, 2.5], (True,)])
def test_bad_depth_lists_raise(depth):
    with pytest.raises(ConfigError, match="depth"):
        cntk(np.ones((2, 3, 3, 1)), depth=depth)
