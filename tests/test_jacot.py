"""Logic of the Jacot et al. 2018 figures (jacot-1, -2, -3): conventions and helpers."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.jacot_function import limit_rows
from experiments.jacot_pca import decompose, principal_components
from ntkrepro import models
from ntkrepro.tasks import circle_points, load
from ntkrepro.train import Trainer, fit

jax.config.update("jax_enable_x64", True)
# Jacot's beta = 0.1 enters as sigma_b = beta: b_var = beta^2 (as in conf/figure/jacot-*.yaml)
BETA = 0.1
CFG = OmegaConf.create(dict(arch="mlp", depth=1, activation="relu", parameterization="ntk", w_var=1.0,
                            b_var=BETA ** 2))
CONF = str(Path(__file__).resolve().parent.parent / "conf")


def _spec(width=16, **kw):
    return models.from_config(CFG, width=width, **kw)


def _relu_maps(s11, s12, s22):
    """E[relu(u) relu(v)] and E[relu'(u) relu'(v)] for (u, v) ~ N(0, [[s11, s12], [s12, s22]])."""
    c = np.clip(s12 / np.sqrt(s11 * s22), -1, 1)
    th = np.arccos(c)
    t = np.sqrt(s11 * s22) * (np.sin(th) + (np.pi - th) * c) / (2 * np.pi)
    return t, (np.pi - th) / (2 * np.pi)


def test_depth_convention_matches_jacots_recursion():
    """Jacot's Theta^(2) (L = 2: one hidden layer, Sec. 4.1) == kernels.fc(depth=1), beta^2 = b_var."""
    x = np.array([[1.0, 0.0], [0.6, 0.8], [-0.3, 2.0]])
    beta2 = BETA ** 2
    s1 = x @ x.T / 2 + beta2                                       # Sigma^(1) = x.x'/n0 + beta^2
    d = np.diag(s1)
    t, tdot = _relu_maps(d[:, None], s1, d[None, :])
    s2 = t + beta2                                                 # Sigma^(2)
    theta2 = s1 * tdot + s2                                        # Theta^(1) Sigma-dot^(2) + Sigma^(2)
    k = _spec().analytic(x)
    np.testing.assert_allclose(np.asarray(k.nngp), s2, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(k.ntk), theta2, rtol=1e-10)


def test_empirical_ntk_of_jacot_model_approaches_the_limit():
    x = jnp.asarray(circle_points(np.linspace(-3, 3, 5), "sin_cos"))
    spec = _spec(4096)
    theta = np.mean([np.asarray(spec.empirical_ntk(spec.init(jax.random.PRNGKey(s), x), x))
                     for s in range(4)], axis=0)
    ref = np.asarray(spec.analytic(x).ntk)
    assert np.linalg.norm(theta - ref) / np.linalg.norm(ref) < 0.05


def test_fit_is_gradient_descent_on_the_mean_cost():
    """The figures' training: `train.fit` with the default loss is GD on 1/2 E_pin (f - f*)^2 (Sec. 5)."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2)))
    y = jnp.asarray(np.random.default_rng(1).standard_normal((6, 1)))
    spec = _spec(16)
    p0 = spec.init(jax.random.PRNGKey(0), x)
    result = fit(Trainer(spec.apply, lr=0.5), p0, x, y, steps=1, record_at=[0])

    def cost(p):
        return 0.5 * jnp.mean((spec.apply(p, x) - y) ** 2)  # 1/2 E_pin (f - f*)^2

    grad = jax.grad(cost)(p0)
    want = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p0, grad)
    for a, b in zip(jax.tree_util.tree_leaves(result.state.variable), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    np.testing.assert_allclose(float(result.losses[0]), float(cost(p0)), rtol=1e-12)


def test_key_chain_batched_inits_equal_inits_drawn_one_after_another():
    """`models.key_chain` (the core helper the figures used before their keys came from (seed, point))."""
    x = jnp.ones((3, 2))
    spec = _spec(8)
    key, draws = jax.random.PRNGKey(0), []
    for _ in range(3):
        key, sub = jax.random.split(key)
        draws.append(spec.init(sub, x))
    stacked = jax.vmap(lambda k: spec.init(k, x))(jnp.stack(models.key_chain(0, 3)))
    for i, p in enumerate(draws):
        for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(stacked)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[i])


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
    x_tr = circle_points([-2.5, -1.0, 0.4, 1.9], "sin_cos")
    y = x_tr[:, :1] * x_tr[:, 1:]
    k = _spec().analytic(np.concatenate([x_tr, x_tr]))
    rows = limit_rows("analytic", np.nan, k.nngp, k.ntk, y, np.arange(4), 1.0)
    np.testing.assert_allclose(rows[rows.quantity == "gp_mean"].value, y[:, 0], atol=1e-8)
    np.testing.assert_allclose(rows[rows.quantity == "gp_std"].value, 0.0, atol=1e-5)


def _settings(fid, scale="paper"):
    """The figure's paper block with the scale preset merged on top (tasks composed by Hydra defaults)."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        fig = compose("config", overrides=[f"figure={fid}"]).figure
    return fig.paper if scale == "paper" else OmegaConf.merge(fig.paper, fig.get(scale))


@pytest.mark.parametrize("fid", ["jacot-1", "jacot-2", "jacot-3"])
def test_configs_give_jacots_network(fid):
    """ModelSpec mlp, NTK parameterization, sigma_w^2 = 1, sigma_b = beta = 0.1 (Sec. 2 / Remark 1)."""
    spec = models.from_config(_settings(fid), width=10)
    assert (spec.arch, spec.parameterization, spec.w_var, spec.activation) == ("mlp", "ntk", 1.0, "relu")
    assert np.isclose(np.sqrt(spec.b_var), BETA)


def test_task_point_orders():
    """jacot-1: x0 = (1, 0), x = (cos g, sin g), f* = x1 x2 on N(0, I_2); jacot-2: x = (sin g, cos g)."""
    s1 = _settings("jacot-1", "smoke")
    circle, train = load(s1.circle, record=False), load(s1.task, seed=0, record=False)
    np.testing.assert_allclose(circle.x_train, [[1.0, 0.0]])
    g = circle.labels_test
    np.testing.assert_allclose(circle.x_test, np.stack([np.cos(g), np.sin(g)], 1))
    np.testing.assert_allclose(g, np.linspace(-np.pi, np.pi, 21))
    np.testing.assert_allclose(train.x_train, np.random.default_rng(0).standard_normal((8, 2)))
    np.testing.assert_allclose(train.y_train[:, 0], train.x_train[:, 0] * train.x_train[:, 1])
    task = load(_settings("jacot-2").task, record=False)
    g = task.labels_train
    np.testing.assert_allclose(task.x_train, np.stack([np.sin(g), np.cos(g)], 1))
    np.testing.assert_allclose(g, [-2.5, -1.0, 0.4, 1.9])
    np.testing.assert_allclose(task.y_train[:, 0], task.x_train[:, 0] * task.x_train[:, 1])
    assert len(task.x_test) == 181


@pytest.mark.parametrize("fid", ["jacot-1", "jacot-2", "jacot-3"])
def test_points_cover_the_sweep_and_keys_depend_on_the_point_only(fid):
    """Issue 15: the sweep points of each figure; a network's key is a function of (seed, point)."""
    from ntkrepro.runner import load_experiment

    with initialize_config_dir(config_dir=CONF, version_base=None):
        fig = compose("config", overrides=[f"figure={fid}"]).figure
    cfg = OmegaConf.merge(fig.paper, fig.smoke)
    module = load_experiment(fig.experiment)
    pts = module.points(cfg)
    nets = [p for p in pts if p.get("part", "network") == "network"]
    per_width = int(cfg.get("ensemble", cfg.get("trials", 1)))
    assert len(nets) == len(cfg.widths) * per_width and len(pts) >= 2
    assert [p["width"] for p in nets] == sorted(p["width"] for p in nets)   # width-major
    assert module.MUTATIONS


def test_pi_without_1_over_n_scales_the_eigenvalues_by_n():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 12))
    lam, f = principal_components(a @ a.T)
    lam_m, f_m = principal_components(a @ a.T, mutation="pi_without_1_over_n")
    np.testing.assert_allclose(lam_m, 12 * lam, rtol=1e-12)
    np.testing.assert_allclose(np.abs(f_m), np.abs(f), atol=1e-10)
