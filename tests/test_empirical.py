"""Empirical kernels: the structured MLP path equals the Jacobian contraction, blocks equal one shot."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkrepro.empirical import auto_batch_size, empirical_nngp, empirical_ntk, mlp_nngp, mlp_ntk
from ntkrepro.nets import init_params, make_mlp


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("out_dim", [1, 3])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_structured_equals_jacobian(parameterization, out_dim, dtype):
    model = make_mlp(width=48, depth=3, out_dim=out_dim, activation="tanh", w_var=1.7, b_var=0.2,
                     parameterization=parameterization)
    x = jax.random.normal(jax.random.PRNGKey(1), (9, 5), dtype=dtype)
    x2 = jax.random.normal(jax.random.PRNGKey(2), (4, 5), dtype=dtype)
    params = init_params(model, jax.random.PRNGKey(0), x)
    f = lambda p, z: model.apply({"params": p}, z)  # noqa: E731
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    for trace in (True, False):
        ref = empirical_ntk(f, params, x, x2, trace=trace)
        np.testing.assert_allclose(mlp_ntk(model, params, x, x2, trace=trace), ref, rtol=tol, atol=tol)
        ntvp = empirical_ntk(f, params, x, x2, trace=trace, implementation="ntvp", batch_size=3)
        np.testing.assert_allclose(ntvp, ref, rtol=tol, atol=tol)
    full = empirical_ntk(f, params, x)
    np.testing.assert_allclose(empirical_ntk(f, params, x, batch_size=2), full, rtol=tol, atol=tol)
    np.testing.assert_allclose(mlp_ntk(model, params, x), full, rtol=tol, atol=tol)


def test_memory_budget_bounds_the_block():
    model = make_mlp(width=32, depth=1)
    x = jnp.ones((50, 10))
    params = init_params(model, jax.random.PRNGKey(0), x)
    f = lambda p, z: model.apply({"params": p}, z)  # noqa: E731
    n_params = 10 * 32 + 32 * 1  # no biases (b_var = 0)
    assert auto_batch_size(f, params, x, memory_budget=2 * 8 * n_params * 7) == 7
    assert auto_batch_size(f, params, x, memory_budget=1) == 1
    a = empirical_ntk(f, params, x, memory_budget=2 * 8 * n_params * 7)
    np.testing.assert_allclose(a, empirical_ntk(f, params, x, batch_size=50), rtol=1e-12)


def test_nngp_estimates():
    model = make_mlp(width=64, depth=2, out_dim=1, b_var=0.3)
    x = jax.random.normal(jax.random.PRNGKey(3), (6, 4))
    params = init_params(model, jax.random.PRNGKey(0), x)
    f = lambda p, z: model.apply({"params": p}, z)  # noqa: E731
    out = f(params, x)
    np.testing.assert_allclose(empirical_nngp(f, params, x), out @ out.T, rtol=1e-12)
    k = mlp_nngp(model, params, x)
    assert k.shape == (6, 6) and np.allclose(k, k.T) and np.all(np.linalg.eigvalsh(k) > -1e-10)


@pytest.mark.parametrize("with_x2", [False, True])
def test_layerwise_ntk_in_blocks_equals_one_pass_and_holds_less(with_x2):
    """Past its memory budget the layer-by-layer CNN kernel is computed in blocks of examples (zero
    padding the last): the same kernel, and XLA's peak memory of the program falls with the budget."""
    from ntkrepro import costs, models
    from ntkrepro.empirical import layerwise_bytes_per_example, layerwise_ntk

    spec = models.ModelSpec(arch="cnn", width=8, depth=3, out_dim=2, activation="relu", w_var=2.0,
                            b_var=0.1, pooling="gap")
    x = jax.random.normal(jax.random.PRNGKey(1), (7, 6, 6, 3), jnp.float64)
    x2 = jax.random.normal(jax.random.PRNGKey(2), (5, 6, 6, 3), jnp.float64) if with_x2 else None
    params = spec.init(jax.random.PRNGKey(0), x)
    model, layers = spec.module, spec.module.layer_specs(tuple(x.shape))
    per = layerwise_bytes_per_example(model, params, x, layers)
    for trace in (True, False):
        full = layerwise_ntk(model, params, x, x2, layers=layers, trace=trace)
        for b in (1, 2, 3):   # blocks of b examples: 7 = 3 + 3 + 1 (padded)
            blocked = layerwise_ntk(model, params, x, x2, layers=layers, trace=trace, memory_budget=2 * b * per)
            np.testing.assert_allclose(blocked, full, rtol=1e-12, atol=1e-14)
    peak = {budget: costs.analyse("ntk", lambda p, a, c: layerwise_ntk(model, p, a, c, layers=layers,
                                                                      memory_budget=budget),
                                  params, x, x if x2 is None else x2).peak_memory
            for budget in (1 << 40, 2 * per)}
    assert peak[2 * per] < peak[1 << 40] / 2, peak
