"""Liu et al. 2020 experiments: the tangent kernel of phi(f) and the gradient-descent loop."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from ntkrepro.empirical import empirical_ntk
from ntkrepro.nets import init_params, make_mlp

from experiments.liu_common import (LIPSCHITZ, compose, init_network, learning_rate, output_jacobian,
                                    synthetic_task, tangent_kernel, train)


def _setup(out_dim=3, width=7, depth=1):
    model = make_mlp(width=width, depth=depth, out_dim=out_dim, activation="tanh", w_var=1.0, b_var=0.1)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3), dtype=jnp.float64)
    params = init_network(model, 0, x, depth)
    return model, params, x


@pytest.mark.parametrize("output", ["linear", "softmax", "swish", "softplus"])
def test_tangent_kernel_of_composed_model_matches_jacobian_contraction(output):
    """J_phi K_f J_phi^T (structured) == J J^T of phi(f) (dense Jacobian, small width only)."""
    model, params, x = _setup()
    params = jax.tree_util.tree_map(lambda p: 1.5 * p, params)  # outputs away from 0
    got = tangent_kernel(model, params, x, output)
    want = empirical_ntk(compose(model, output), params, x, trace=False)
    assert got.shape == want.shape == (4, 4, 3, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bottleneck_model_kernel_matches_jacobian_contraction():
    model, params, x = _setup(width=[6, 2, 5], depth=3)
    np.testing.assert_allclose(tangent_kernel(model, params, x, "swish"),
                               empirical_ntk(compose(model, "swish"), params, x, trace=False),
                               rtol=1e-10, atol=1e-12)


def test_scalar_output_kernel_is_phi_prime_times_kf():
    """k = 1: K~(x, x') = phi'(f(x)) phi'(f(x')) K_f(x, x') (Liu et al. Eq. 12)."""
    model, params, x = _setup(out_dim=1)
    f = model.apply({"params": params}, x)[:, 0]
    d = jax.vmap(jax.grad(lambda z: z * jax.nn.sigmoid(z)))(f)
    kf = tangent_kernel(model, params, x, "linear")[:, :, 0, 0]
    np.testing.assert_allclose(tangent_kernel(model, params, x, "swish")[:, :, 0, 0],
                               d[:, None] * kf * d[None, :], rtol=1e-12)


def test_softmax_jacobian_norm_is_at_most_the_lipschitz_constant():
    f = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (200, 3), dtype=jnp.float64)
    norms = np.linalg.norm(np.asarray(output_jacobian("softmax", f)), ord=2, axis=(1, 2))
    assert norms.max() <= LIPSCHITZ["softmax"] + 1e-12
    z = jnp.linspace(-10, 10, 2001, dtype=jnp.float64)[:, None]
    assert float(jnp.max(output_jacobian("swish", z))) <= LIPSCHITZ["swish"] + 1e-4


def test_init_network_draws_standard_normal_in_the_flax_structure():
    model = make_mlp(width=300, depth=1, out_dim=2, activation="tanh", w_var=1.0, b_var=0.1)
    x = jnp.ones((2, 5), dtype=jnp.float64)
    p = init_network(model, 0, x, 300)
    ref = init_params(model, jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(ref)
    w = np.asarray(p["dense_0"]["kernel"])
    assert w.dtype == np.float64 and abs(w.mean()) < 0.05 and abs(w.std() - 1) < 0.05
    again = init_network(model, 0, x, 300)
    np.testing.assert_array_equal(w, np.asarray(again["dense_0"]["kernel"]))


def _task():
    cfg = OmegaConf.create({"n_train": 6, "n0": 4, "out_dim": 3, "seed": 0, "input_scale": 2.0,
                            "teacher": {"mu": 1.5, "amplitude": 1.0, "omega": 1.5}})
    return synthetic_task(cfg)


@pytest.mark.parametrize("output", ["linear", "softmax", "swish"])
def test_gradient_descent_converges_and_checkpoints(output):
    task = _task()
    assert np.allclose(np.linalg.norm(np.asarray(task.x), axis=1), 4.0)  # radius r sqrt(d), r = 2
    # liu-1's settings: sigma_w^2 = 1/4 with inputs of norm 2 sqrt(d) (initial outputs right of the
    # swish minimum)
    model = make_mlp(width=64, depth=1, out_dim=3, activation="tanh", w_var=0.25, b_var=0.025)
    p0 = init_network(model, 0, task.x, 64)
    eta = learning_rate(1.5, 6, tangent_kernel(model, p0, task.x, "linear"), output)
    seen = []
    res = train(compose(model, output), p0, task.x, task.targets(output), eta=eta, max_steps=3000,
                tol=1e-6, checkpoints={0, 5}, on_checkpoint=lambda s, p, l: seen.append(s))
    assert res.converged and not res.diverged
    assert res.loss_final <= 1e-6 * res.loss0
    assert seen[:2] == [0, 5] and seen[-1] == res.final_step == res.steps[-1]


def test_divergence_is_recorded_not_raised():
    task = _task()
    model = make_mlp(width=16, depth=1, out_dim=3, activation="tanh", w_var=1.0, b_var=0.1)
    p0 = init_network(model, 0, task.x, 16)
    res = train(compose(model, "linear"), p0, task.x, task.targets("linear"), eta=1e6, max_steps=200,
                tol=1e-6, checkpoints=set())
    assert res.diverged and not res.converged and not np.isfinite(res.loss_final)
