"""Analytic fully connected NNGP / NTK (`ntkrepro.kernels.fc`) against finite networks and known values.

Monte Carlo errors are relative Frobenius distances of the mean over M initialisations; their
standard error `se` (estimated from the M draws) is O(1/sqrt(n M)), n = width.  All seeds fixed.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkrepro.empirical import mlp_nngp, mlp_ntk
from ntkrepro.errors import ConfigError
from ntkrepro.kernels import Kernel, fc
from ntkrepro.kernels.activations import quadrature_t_tdot, relu_t_tdot, t_tdot
from ntkrepro.nets import ACTIVATIONS, init_params, make_mlp

N0 = 16
B_VAR = 0.1
W_VAR = {"relu": 2.0, "erf": 1.5, "tanh": 1.5, "identity": 1.0}


def _inputs(n=6, seed=0):
    """Gaussian inputs with one strongly correlated and one anti-parallel pair."""
    rs = np.random.RandomState(seed)
    x = rs.randn(n, N0)
    x[n - 1] = 0.8 * x[0] + 0.6 * rs.randn(N0)
    x[n - 2] = -x[1]
    return jnp.asarray(x)


X = _inputs()


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@functools.partial(jax.jit, static_argnames=("model", "n_init", "batch"))
def _draws(model, x, seed, n_init, batch=None):
    keys = jax.random.split(jax.random.PRNGKey(seed), n_init)

    def one(key):
        p = init_params(model, key, x)
        return mlp_nngp(model, p, x), mlp_ntk(model, p, x)

    return jax.lax.map(one, keys, batch_size=batch)


@functools.lru_cache(maxsize=None)
def _monte_carlo(activation, parameterization, depth, width, n_init, b_var=B_VAR, seed=0,
                 batch=None):
    """Per-initialisation (M, N, N) NNGP and NTK draws; standard NTK divided by n (Eq. S42)."""
    model = make_mlp(width=width, depth=depth, activation=activation, w_var=W_VAR[activation],
                     b_var=b_var, parameterization=parameterization)
    nngp, ntk = _draws(model, X, seed, n_init, batch)
    if parameterization == "standard":
        ntk = ntk / width
    return np.asarray(nngp), np.asarray(ntk)


def _err_and_se(draws, ref):
    m = draws.shape[0]
    se = np.linalg.norm(draws.std(axis=0, ddof=1)) / math.sqrt(m) / np.linalg.norm(ref)
    return _rel(draws.mean(axis=0), ref), float(se)


def _analytic(activation, parameterization, depth, width, b_var=B_VAR):
    return fc(X, depth=depth, activation=activation, w_var=W_VAR[activation], b_var=b_var,
              parameterization=parameterization, width=width)


# ---------------------------------------------------------------------------------------------
# 1. Monte Carlo over wide networks


# Every activation appears with both parameterizations and both depths.
MC_INITS = 40
MC_CASES = [
    ("relu", "ntk", 1), ("relu", "standard", 3),
    ("erf", "ntk", 3), ("erf", "standard", 1),
    ("tanh", "ntk", 1), ("tanh", "standard", 3),
    ("identity", "ntk", 3), ("identity", "standard", 1),
]


@pytest.mark.parametrize("activation,parameterization,depth", MC_CASES)
def test_monte_carlo_mean_matches_analytic(activation, parameterization, depth):
    width = 512
    nngp, ntk = _monte_carlo(activation, parameterization, depth, width, MC_INITS)
    ref = _analytic(activation, parameterization, depth, width)
    for name, draws, k in (("nngp", nngp, ref.nngp), ("ntk", ntk, ref.ntk)):
        err, se = _err_and_se(draws, k)
        assert se < 0.05, f"{name}: Monte Carlo too noisy to test anything (se={se:.3f})"
        # 4 standard errors of the MC mean + 0.01 for the O(depth/n) finite-width bias of the mean.
        assert err < 4 * se + 0.01, f"{name}: rel. error {err:.4f} vs se {se:.4f}"
        assert err < 0.1, f"{name}: rel. error {err:.4f}"


def test_monte_carlo_error_shrinks_with_width():
    """Error ~ 1/sqrt(n M): 4x the width should about halve it (NNGP + NTK errors summed).

    Reuses the width-512 draws of the test above (cached) and adds width 128.  (Measured ratio
    for every one of the MC_CASES: 0.37 - 0.53.)"""
    cases = [("relu", "standard", 3)]
    totals = {}
    for width in (128, 512):
        total = 0.0
        for act, par, depth in cases:
            nngp, ntk = _monte_carlo(act, par, depth, width, MC_INITS)
            ref = _analytic(act, par, depth, width)
            total += _rel(nngp.mean(0), ref.nngp) + _rel(ntk.mean(0), ref.ntk)
        totals[width] = total
    assert totals[512] < 0.75 * totals[128], totals


@pytest.mark.parametrize("activation,b_var", [("relu", 0.5), ("erf", 0.0)])
def test_standard_ntk_depth1_exact_at_small_width(activation, b_var):
    """At depth 1 the finite-width standard-parameterization formula (x.x'/n + 1_b/n terms) is the
    exact mean of (1/n) J J^T at any n (h^1 is exactly Gaussian), so n = 4 tests its constants."""
    width, n_init = 4, 20000
    _, ntk = _monte_carlo(activation, "standard", 1, width, n_init, b_var=b_var, batch=2000)
    ref = _analytic(activation, "standard", 1, width, b_var=b_var).ntk
    err, se = _err_and_se(ntk, ref)
    assert se < 0.01
    assert err < 4 * se, (err, se)
    # The test can fail: the n -> inf limit, or the wrong width, is many standard errors away.
    for wrong in (math.inf, 2 * width):
        bad = _analytic(activation, "standard", 1, wrong, b_var=b_var).ntk
        assert _rel(ntk.mean(0), bad) > 10 * se


# ---------------------------------------------------------------------------------------------
# 2. Closed forms against quadrature


def _cov_grid():
    v1 = jnp.array([0.3, 1.0, 2.0, 1.5, 0.7, 1.2])
    v2 = jnp.array([1.1, 1.0, 0.5, 1.5, 0.7, 2.5])
    rho = jnp.array([-0.9, 1.0, 0.3, -1.0, 0.0, 0.99])  # includes both degenerate ends
    return rho * jnp.sqrt(v1 * v2), v1, v2


@pytest.mark.parametrize("activation", ["relu", "erf"])
def test_closed_form_matches_quadrature(activation):
    cov, v1, v2 = _cov_grid()
    t, tdot = t_tdot(activation, cov, v1, v2)
    tq, tdotq = t_tdot(activation, cov, v1, v2, method="quadrature")
    np.testing.assert_allclose(tq, t, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(tdotq, tdot, rtol=1e-6, atol=1e-9)
    # ... and through the whole depth-2 recursion.
    a = fc(X, depth=2, activation=activation, b_var=B_VAR)
    b = fc(X, depth=2, activation=activation, b_var=B_VAR, method="quadrature")
    assert _rel(b.nngp, a.nngp) < 1e-6 and _rel(b.ntk, a.ntk) < 1e-6


def test_hermite_rule_agrees_for_smooth_activation():
    cov, v1, v2 = _cov_grid()
    tanh = ACTIVATIONS["tanh"]
    t, tdot = quadrature_t_tdot(tanh, cov, v1, v2)
    th, tdoth = quadrature_t_tdot(tanh, cov, v1, v2, points=96, rule="hermite")
    np.testing.assert_allclose(th, t, atol=1e-6)
    np.testing.assert_allclose(tdoth, tdot, atol=1e-6)


def test_tanh_default_points_accuracy():
    x = X / jnp.linalg.norm(X, axis=1, keepdims=True) * math.sqrt(N0)  # |x|^2 / n0 = 1
    a = fc(x, depth=3, activation="tanh", b_var=B_VAR)
    ref = fc(x, depth=3, activation="tanh", b_var=B_VAR, quad_points=128)
    assert _rel(a.nngp, ref.nngp) < 1e-6 and _rel(a.ntk, ref.ntk) < 1e-6


# ---------------------------------------------------------------------------------------------
# 3. Known values


@pytest.mark.parametrize("depth", [1, 3])
def test_identity_network_is_linear_formula(depth):
    w, b = 1.7, 0.3
    g = np.asarray(X @ X.T) / N0
    ks = [w * g + b]                                   # K^1
    for _ in range(depth):
        ks.append(w * ks[-1] + b)                      # K^{l+1} = w K^l + b
    theta = sum(w ** (depth + 1 - l) * ks[l - 1] for l in range(1, depth + 2))
    k = fc(X, depth=depth, activation="identity", w_var=w, b_var=b)
    np.testing.assert_allclose(k.nngp, w ** (depth + 1) * g + b * sum(w ** i for i in range(depth + 1)),
                               rtol=1e-12)
    np.testing.assert_allclose(k.ntk, theta, rtol=1e-12)
    # standard parameterization, n -> inf: Theta = sum_{l=1..L} w^{L-l} K^l
    ks_std = fc(X, depth=depth, activation="identity", w_var=w, b_var=b, parameterization="standard")
    np.testing.assert_allclose(ks_std.ntk, sum(w ** (depth - l) * ks[l - 1] for l in range(1, depth + 1)),
                               rtol=1e-12)
    np.testing.assert_allclose(ks_std.nngp, k.nngp, rtol=1e-12)


def test_relu_depth1_diagonal():
    w, b = 2.0, 0.2
    k1 = np.sum(np.asarray(X) ** 2, axis=1) * w / N0 + b
    k = fc(X, depth=1, activation="relu", w_var=w, b_var=b)
    k2 = w * k1 / 2 + b
    np.testing.assert_allclose(np.diag(k.nngp), k2, rtol=1e-12)
    np.testing.assert_allclose(np.diag(k.ntk), k2 + w * 0.5 * k1, rtol=1e-12)  # Tdot(diag) = 1/2
    np.testing.assert_allclose(k.var1, k2, rtol=1e-12)
    # anti-parallel pair x[4] = -x[1] without bias: theta = pi, so T = 0 and Tdot = 0
    k0 = fc(X, depth=1, activation="relu", w_var=w, b_var=0.0)
    assert abs(float(k0.nngp[1, 4])) < 1e-12 and abs(float(k0.ntk[1, 4])) < 1e-12
    # direct values of T, Tdot at theta = pi/2
    t, tdot = relu_t_tdot(jnp.array(0.0), jnp.array(2.0), jnp.array(8.0))
    assert abs(float(t) - 4.0 / (2 * np.pi)) < 1e-14 and abs(float(tdot) - 0.25) < 1e-14


# ---------------------------------------------------------------------------------------------
# 4. Structure, shapes, dtypes, jit


@pytest.mark.parametrize("activation,parameterization", [("relu", "ntk"), ("erf", "standard")])
def test_symmetric_psd_and_x2_none(activation, parameterization):
    k = fc(X, depth=2, activation=activation, b_var=B_VAR, parameterization=parameterization)
    kk = fc(X, X, depth=2, activation=activation, b_var=B_VAR, parameterization=parameterization)
    for m in (k.nngp, k.ntk):
        np.testing.assert_allclose(m, m.T, rtol=1e-12, atol=1e-14)
        eig = np.linalg.eigvalsh(np.asarray(m))
        assert eig.min() > -1e-10 * eig.max()
    np.testing.assert_allclose(kk.ntk, k.ntk, rtol=1e-12)
    np.testing.assert_allclose(kk.nngp, k.nngp, rtol=1e-12)
    part = fc(X, X[:3], depth=2, activation=activation, b_var=B_VAR, parameterization=parameterization)
    assert part.ntk.shape == (6, 3) and part.var2.shape == (3,)
    np.testing.assert_allclose(part.ntk, k.ntk[:, :3], rtol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_float32_close_to_float64(activation):
    k64 = fc(X, depth=3, activation=activation, b_var=B_VAR)
    k32 = fc(X, depth=3, activation=activation, b_var=B_VAR, dtype=jnp.float32)
    assert k32.ntk.dtype == jnp.float32 and k32.nngp.dtype == jnp.float32
    assert k64.ntk.dtype == jnp.float64
    assert _rel(k32.ntk, k64.ntk) < 1e-5 and _rel(k32.nngp, k64.nngp) < 1e-5


def test_jit_and_pytree():
    f = jax.jit(fc, static_argnames=("depth", "activation", "parameterization", "dtype"))
    k = f(X, X[:2], depth=2, activation="erf", w_var=1.5, b_var=0.1, parameterization="standard",
          width=100.0)
    ref = fc(X, X[:2], depth=2, activation="erf", w_var=1.5, b_var=0.1, parameterization="standard",
             width=100.0)
    assert isinstance(k, Kernel)
    np.testing.assert_allclose(k.ntk, ref.ntk, rtol=1e-12)
    assert len(jax.tree_util.tree_leaves(k)) == 4
    # w_var may be traced: d nngp / d w_var of an identity network of depth 1 is 2 w G + b.
    g = jax.grad(lambda w: fc(X, depth=1, activation="identity", w_var=w, b_var=0.1).nngp[0, 1])(1.3)
    assert abs(float(g) - (2 * 1.3 * float(X[0] @ X[1]) / N0 + 0.1)) < 1e-12


def test_standard_width_limit():
    """width=inf is the limit of the finite-width formula; 'ntk' ignores width."""
    a = fc(X, depth=2, parameterization="standard", b_var=B_VAR)
    b = fc(X, depth=2, parameterization="standard", b_var=B_VAR, width=1e9)
    assert _rel(b.ntk, a.ntk) < 1e-6 and _rel(b.ntk, a.ntk) > 0
    c = fc(X, depth=2, parameterization="ntk", b_var=B_VAR, width=7)
    np.testing.assert_array_equal(c.ntk, fc(X, depth=2, b_var=B_VAR).ntk)


# ---------------------------------------------------------------------------------------------
# 5. Bad input


@pytest.mark.parametrize("kwargs", [
    dict(depth=0), dict(depth=-1), dict(depth=2.0),
    dict(depth=1, activation="softplus"),
    dict(depth=1, parameterization="mup"),
    dict(depth=1, w_var=0.0), dict(depth=1, b_var=-1.0),
    dict(depth=1, activation="tanh", method="closed_form"),
    dict(depth=1, method="magic"), dict(depth=1, activation="tanh", quad_rule="simpson"),
    dict(depth=1, parameterization="standard", width=0),
    dict(depth=1, activation="tanh", quad_points=1), dict(depth=1, activation="tanh", quad_points=500),
])
def test_bad_input_raises_config_error(kwargs):
    with pytest.raises(ConfigError):
        fc(X, **kwargs)


def test_mismatched_input_sizes_raise():
    with pytest.raises(ConfigError):
        fc(X, X[:, :5], depth=1)


@pytest.mark.parametrize("same", [True, False])
def test_row_blocked_fold_equals_whole_fold(monkeypatch, same):
    """`fc` runs the layer fold on blocks of rows (on upper-triangular tiles when x2 is None) for
    large kernels; it must equal the one-shot fold."""
    import importlib

    fc_mod = importlib.import_module("ntkrepro.kernels.fc")

    rng = np.random.default_rng(5)
    x1, x2 = rng.normal(size=(77, 6)), (None if same else rng.normal(size=(31, 6)))
    kw = dict(depth=3, activation="erf", w_var=1.5, b_var=0.2)
    monkeypatch.setattr(fc_mod, "ROW_BLOCK_ENTRIES", 10**9)
    whole = fc_mod.fc(x1, x2, **kw)
    monkeypatch.setattr(fc_mod, "ROW_BLOCK_ENTRIES", 7 * (77 if same else 31))  # 7-row blocks
    fc_mod._fc.clear_cache()
    blocked = fc_mod.fc(x1, x2, **kw)
    for a, b in ((blocked.nngp, whole.nngp), (blocked.ntk, whole.ntk), (blocked.var1, whole.var1),
                 (blocked.var2, whole.var2)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
    if same:
        np.testing.assert_array_equal(blocked.ntk, blocked.ntk.T)
