"""Hessian-spectrum tools (`ntkrepro.hessian`) against dense Hessians, and Liu et al. Table 1 scaling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ntkrepro import hessian as hs
from ntkrepro.errors import ConfigError
from ntkrepro.nets import init_params, make_mlp

pytestmark = pytest.mark.filterwarnings("error::ntkrepro.hessian.HessianConvergenceWarning")


def _model_fn(model):
    return lambda p, x: model.apply({"params": p}, x)


def _dense_hessian(f, unravel):
    """(q, x) -> the P x P matrix d^2 f(unravel(q); x) / dq^2, by jax.hessian (reference only)."""
    return jax.jit(jax.hessian(lambda q, x: f(unravel(q), x)[0, 0]))


@pytest.fixture(scope="module")
def tiny():
    """Two hidden tanh layers of width 12, input dim 3, biases: P = 217 parameters."""
    model = make_mlp(width=12, depth=2, activation="tanh", w_var=1.0, b_var=0.1)
    x = jax.random.normal(jax.random.PRNGKey(100), (1, 3))
    params = init_params(model, jax.random.PRNGKey(0), x)
    f = _model_fn(model)
    flat, unravel = ravel_pytree(params)
    dense = np.asarray(_dense_hessian(f, unravel)(flat, x))
    eig = np.linalg.eigvalsh(dense)
    return dict(f=f, x=x, params=params, flat=flat, unravel=unravel, dense=dense, eig=eig)


def test_tiny_model_has_about_200_parameters_and_a_nonsparse_spectrum(tiny):
    assert 150 <= tiny["flat"].size <= 250
    assert np.allclose(tiny["dense"], tiny["dense"].T)
    assert np.sum(np.abs(tiny["eig"]) > 1e-3 * np.max(np.abs(tiny["eig"]))) > 20


@pytest.mark.parametrize("method,kwargs", [("lanczos", dict(num_iters=80, tol=1e-8)),
                                           ("power", dict(num_iters=20000, tol=1e-12))])
def test_spectral_norm_equals_dense_max_abs_eigenvalue(tiny, method, kwargs):
    expected = np.max(np.abs(tiny["eig"]))
    got = hs.hessian_spectral_norm(tiny["f"], tiny["params"], tiny["x"], method=method,
                                   key=jax.random.PRNGKey(3), **kwargs)
    assert isinstance(got, float)
    assert abs(got - expected) <= 1e-6 * expected


@pytest.mark.parametrize("which", ["magnitude", "largest"])
def test_top_eigenvalues_equal_dense(tiny, which):
    eig = tiny["eig"]
    order = np.argsort(-np.abs(eig)) if which == "magnitude" else np.argsort(-eig)
    expected = eig[order[:5]]
    got = hs.hessian_top_eigenvalues(tiny["f"], tiny["params"], tiny["x"], 5, num_iters=100,
                                     which=which)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.max(np.abs(eig)))


def test_hvp_equals_dense_hessian_times_vector(tiny):
    v_flat = jax.random.normal(jax.random.PRNGKey(5), tiny["flat"].shape)
    v = tiny["unravel"](v_flat)
    hv = hs.hvp(tiny["f"], tiny["params"], tiny["x"], v)
    assert jax.tree_util.tree_structure(hv) == jax.tree_util.tree_structure(tiny["params"])
    hv_flat, _ = ravel_pytree(hv)
    np.testing.assert_allclose(hv_flat, tiny["dense"] @ np.asarray(v_flat), rtol=1e-10, atol=1e-12)


def test_hvp_of_weighted_batch_output_is_weighted_sum_of_per_input_hvps(tiny):
    xs = jax.random.normal(jax.random.PRNGKey(6), (3, 3))
    c = jnp.array([[0.5], [-2.0], [1.5]])
    v = tiny["unravel"](jax.random.normal(jax.random.PRNGKey(7), tiny["flat"].shape))
    batch, _ = ravel_pytree(hs.hvp(tiny["f"], tiny["params"], xs, v, output_weights=c))
    singles = sum(c[i, 0] * ravel_pytree(hs.hvp(tiny["f"], tiny["params"], xs[i:i + 1], v))[0]
                  for i in range(3))
    np.testing.assert_allclose(batch, singles, rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="output_weights"):
        hs.hvp(tiny["f"], tiny["params"], xs, v)


def test_gradient_norm_and_max_over_inputs(tiny):
    f, params, unravel, flat = tiny["f"], tiny["params"], tiny["unravel"], tiny["flat"]
    grad = jax.grad(lambda q: f(unravel(q), tiny["x"])[0, 0])(flat)
    assert abs(hs.gradient_norm(f, params, tiny["x"]) - float(np.linalg.norm(grad))) < 1e-12
    xs = jax.random.normal(jax.random.PRNGKey(8), (3, 3))
    dense = _dense_hessian(f, unravel)
    dense_norms = [np.max(np.abs(np.linalg.eigvalsh(dense(flat, xs[i:i + 1])))) for i in range(3)]
    got = hs.hessian_spectral_norms(f, params, xs, tol=1e-8, num_iters=80)
    np.testing.assert_allclose(got, dense_norms, rtol=1e-6)
    assert hs.max_hessian_spectral_norm(f, params, xs, tol=1e-8, num_iters=80) == pytest.approx(
        max(dense_norms), rel=1e-6)


def test_float32_parameters_give_the_float64_answer_to_float32_accuracy(tiny):
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), tiny["params"])
    got = hs.hessian_spectral_norm(tiny["f"], params32, tiny["x"].astype(jnp.float32), tol=1e-4)
    expected = np.max(np.abs(tiny["eig"]))
    assert abs(got - expected) <= 1e-4 * expected


# ----------------------------------------------------------------------------------------------
# Sign handling: power iteration converges to the eigenvalue of largest magnitude
# ----------------------------------------------------------------------------------------------
def _quadratic(eigenvalues, seed=0):
    """f(w) = w^T A w / 2 with spectrum `eigenvalues`, parameters split into a dict pytree."""
    n = len(eigenvalues)
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    a = jnp.asarray(q @ np.diag(eigenvalues) @ q.T)

    def f(p, x):
        w = jnp.concatenate([p["a"], p["b"]])
        return 0.5 * w @ a @ w + jnp.sum(x)

    params = {"a": jnp.ones(2), "b": jnp.arange(n - 2, dtype=jnp.float64)}
    return f, params


@pytest.mark.parametrize("method", ["power", "lanczos"])
def test_negative_dominant_eigenvalue_is_reported_by_its_magnitude(method):
    f, params = _quadratic([-5.0, 3.0, 1.0, -0.5, 2.0])
    got = hs.hessian_spectral_norm(f, params, jnp.zeros(1), method=method, num_iters=400, tol=1e-12)
    assert got == pytest.approx(5.0, rel=1e-6)
    top = hs.hessian_top_eigenvalues(f, params, jnp.zeros(1), 2, num_iters=5)
    np.testing.assert_allclose(top, [-5.0, 3.0], atol=1e-10)


def test_power_iteration_with_opposite_dominant_pair():
    """Eigenvalues +4 and -4: the iterates' Rayleigh quotient averages to ~0, but ||H v|| -> 4."""
    f, params = _quadratic([4.0, -4.0, 1.0, 0.5, -2.0], seed=1)
    got = hs.hessian_spectral_norm(f, params, jnp.zeros(1), method="power", num_iters=400, tol=1e-12)
    assert got == pytest.approx(4.0, rel=1e-6)


def test_bad_arguments_raise_config_error(tiny):
    args = (tiny["f"], tiny["params"], tiny["x"])
    with pytest.raises(ConfigError, match="method"):
        hs.hessian_spectral_norm(*args, method="arnoldi")
    with pytest.raises(ConfigError, match="k must"):
        hs.hessian_top_eigenvalues(*args, 0)
    with pytest.raises(ConfigError, match="which"):
        hs.hessian_top_eigenvalues(*args, 2, which="smallest")


# ----------------------------------------------------------------------------------------------
# Liu et al. Table 1: ||H|| ~ m^-1/2 with a linear output layer, Omega(1) with a nonlinear one
# ----------------------------------------------------------------------------------------------
WIDTHS = (100, 400, 1600, 6400)


def _width_slopes():
    """Log-log slope of ||H(w0; x)|| vs m for a one-hidden-layer NTK tanh MLP, mean log over 3 seeds.

    Linear output: Liu et al. Eq. 5 / Thm 3.1, the Hessian is block diagonal over hidden units (each
    block O(1/sqrt(m))), so ||H|| = O~(m^-1/2) (a max over m units adds a slowly growing factor).
    Nonlinear output phi(f): Eq. 13-14, ||H~|| >= |phi''(f)| ||grad f||^2 - |phi'(f)| ||H|| = Omega(1).
    phi = softplus, with phi'' = sigmoid' in [0.2, 0.25] for |f| <= 1; not tanh, whose tanh''(0) = 0
    makes the Omega(1) term vanish whenever f(w0; x) happens to be near 0 (a noisy probe).
    """
    d = 10
    x = jax.random.normal(jax.random.PRNGKey(7), (1, d))
    x = x / jnp.linalg.norm(x) * np.sqrt(d)
    logs = {"linear": [], "softplus": []}
    for m in WIDTHS:
        model = make_mlp(width=m, depth=1, activation="tanh", w_var=1.0)
        f = _model_fn(model)
        fns = {"linear": f, "softplus": lambda p, x: jax.nn.softplus(f(p, x))}
        per_seed = {k: [] for k in logs}
        for seed in range(3):
            params = init_params(model, jax.random.PRNGKey(seed), x)
            for name, fn in fns.items():
                norm = hs.hessian_spectral_norm(fn, params, x, num_iters=50, tol=1e-3)
                per_seed[name].append(np.log(norm))
        for name in logs:
            logs[name].append(np.mean(per_seed[name]))
    return {name: np.polyfit(np.log(WIDTHS), vals, 1)[0] for name, vals in logs.items()}, logs


def test_hessian_norm_scales_like_inverse_sqrt_width_only_with_linear_output():
    slopes, logs = _width_slopes()
    assert -0.7 <= slopes["linear"] <= -0.3, slopes
    assert -0.2 <= slopes["softplus"] <= 0.2, slopes
    # at the widest network the nonlinear output's Hessian is several times the linear one's
    assert logs["softplus"][-1] - logs["linear"][-1] > np.log(3.0), logs
