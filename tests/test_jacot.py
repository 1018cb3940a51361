"""Logic of the Jacot et al. 2018 figures (jacot-1, -2, -3): conventions and helpers."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from experiments.jacot_convergence import analytic, jacot_model, train_gd
from experiments.jacot_function import _gp, circle
from experiments.jacot_pca import decompose, principal_components
from ntkrepro.empirical import mlp_ntk
from ntkrepro.nets import init_params

jax.config.update("jax_enable_x64", True)
CFG = OmegaConf.create(dict(depth=1, activation="relu", parameterization="ntk", w_var=1.0, beta=0.1))


def _relu_maps(s11, s12, s22):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[s11, s12], [s12, s22]])."""
    c = np.clip(s12 / np.sqrt(s11 * s22), -1, 1)
    th = np.arccos(c)
    t = np.sqrt(s11 * s22) * (np.sin(th) + (np.pi - th) * c) / (2 * np.pi)
    return t, (np.pi - th) / (2 * np.pi)


def test_depth_convention_matches_jacots_recursion():
    """Jacot's Theta^(2) (L = 2: one hidden layer, Sec. 4.1) == kernels.fc(depth=1), beta^2 = b_var."""
    x = np.array([[1.0, 0.0], [0.6, 0.8], [-0.3, 2.0]])
    beta2 = 0.01
    s1 = x @ x.T / 2 + beta2                                       # Sigma^(1) = x.x'/n0 + beta^2
    d = np.diag(s1)
    t, tdot = _relu_maps(d[:, None], s1, d[None, :])
    s2 = t + beta2                                                 # Sigma^(2)
    theta2 = s1 * tdot + s2                                        # Theta^(1) Sigma-dot^(2) + Sigma^(2)
    k = analytic(CFG, x)
    np.testing.assert_allclose(np.asarray(k.nngp), s2, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(k.ntk), theta2, rtol=1e-10)


def test_empirical_ntk_of_jacot_model_approaches_the_limit():
    x = jnp.asarray(circle(np.linspace(-3, 3, 5)))
    model = jacot_model(CFG, 4096)
    theta = np.mean([np.asarray(mlp_ntk(model, init_params(model, jax.random.PRNGKey(s), x), x))
                     for s in range(4)], axis=0)
    ref = np.asarray(analytic(CFG, x).ntk)
    assert np.linalg.norm(theta - ref) / np.linalg.norm(ref) < 0.05


def test_train_gd_is_gradient_descent_on_the_mean_cost():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2)))
    y = jnp.asarray(np.random.default_rng(1).standard_normal((6, 1)))
    model = jacot_model(CFG, 16)
    p0 = init_params(model, jax.random.PRNGKey(0), x)
    p1, losses = train_gd(model, p0, x, y, lr=0.5, steps=1)

    def cost(p):
        return 0.5 * jnp.mean((model.apply({"params": p}, x) - y) ** 2)  # 1/2 E_pin (f - f*)^2

    grad = jax.grad(cost)(p0)
    want = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p0, grad)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    np.testing.assert_allclose(float(losses[0]), float(cost(p0)), rtol=1e-12)


def test_principal_components_are_unit_pin_norm_eigenfunctions_of_pi():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 20))
    gram = a @ a.T
    lam, f = principal_components(gram)
    n = len(gram)
    np.testing.assert_allclose(np.mean(f ** 2, axis=0), 1.0, rtol=1e-12)      # ||f||_pin = 1
    np.testing.assert_allclose(gram / n @ f, f * lam, atol=1e-10)              # Pi f = lambda f
    np.testing.assert_allclose(lam, np.sort(np.linalg.eigvalsh(gram / n))[::-1][:3], rtol=1e-12)


def test_decompose_splits_along_and_orthogonal_to_f2():
    rng = np.random.default_rng(0)
    f2 = rng.standard_normal(50)
    f2 /= np.sqrt(np.mean(f2 ** 2))
    h = rng.standard_normal(50)
    h -= np.mean(h * f2) * f2
    y = rng.standard_normal((50, 1))
    f = y + (-0.3 * f2 + h)[:, None]
    g_norm, h_norm = np.asarray(decompose(jnp.asarray(f), jnp.asarray(y), jnp.asarray(f2)))
    np.testing.assert_allclose(g_norm, 0.3, rtol=1e-10)
    np.testing.assert_allclose(h_norm, np.sqrt(np.mean(h ** 2)), rtol=1e-10)


def test_limiting_gaussian_interpolates_the_training_points():
    x_tr = circle([-2.5, -1.0, 0.4, 1.9])
    y = x_tr[:, :1] * x_tr[:, 1:]
    k = analytic(CFG, np.concatenate([x_tr, x_tr]))
    mean, std = _gp(np.asarray(k.nngp), np.asarray(k.ntk), 4, y, 1.0)
    np.testing.assert_allclose(mean, y[:, 0], atol=1e-8)
    np.testing.assert_allclose(std, 0.0, atol=1e-5)
