"""Lee et al. 2019 Figs. S9 / S10 (experiments.kernel_convergence): Monte Carlo kernels against the
analytic ones."""
from __future__ import annotations

import jax
import numpy as np
import pandas as pd

from ntkrepro.empirical import mlp_nngp
from ntkrepro.models import ModelSpec

from experiments.kernel_convergence import MUTATIONS, analytic, measure


def test_measure_compares_the_mean_of_the_first_m_draws_with_the_analytic_kernels():
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (4, 5)), np.float64)
    for parameterization in ("ntk", "standard"):
        spec = ModelSpec(width=16, depth=1, activation="relu", w_var=2.0, b_var=0.1,
                         parameterization=parameterization)
        rows = pd.DataFrame(measure(spec, x, jax.random.PRNGKey(0), [1, 3], trials=1, n_show=2))
        # the same three draws by hand: key, sub = split(key), as measure does
        k, draws = jax.random.PRNGKey(0), []
        for _ in range(3):
            k, sub = jax.random.split(k)
            params = spec.init(sub, x)
            scale = 16.0 if parameterization == "standard" else 1.0   # Eq. S42: (1/n) J J^T
            draws.append({"nngp": mlp_nngp(spec.module, params, x),
                          "ntk": spec.empirical_ntk(params, x) / scale})
        ana = spec.analytic(x)
        for kern, ref in (("nngp", ana.nngp), ("ntk", ana.ntk)):
            for m in (1, 3):
                mean = sum(d[kern] for d in draws[:m]) / m
                want = np.linalg.norm(mean - ref) / np.linalg.norm(ref)
                got = rows[(rows.quantity == "rel_frob_error") & (rows.kernel == kern) & (rows.mc_samples == m)]
                np.testing.assert_allclose(got.value.item(), want, rtol=1e-10)
                ent = rows[(rows.quantity == "entry") & (rows.kernel == kern) & (rows.mc_samples == m)]
                assert list(zip(ent.i, ent.j)) == [(0, 0), (0, 1), (1, 1)]
                np.testing.assert_allclose(ent.value, [mean[0, 0], mean[0, 1], mean[1, 1]], rtol=1e-12)
                np.testing.assert_allclose(ent.analytic, [ref[0, 0], ref[0, 1], ref[1, 1]], rtol=1e-12)
        # the Monte Carlo NTK is close to the analytic one already at n = 16 (same scale: S42 applied)
        assert rows[(rows.quantity == "rel_frob_error") & (rows.kernel == "ntk")].value.max() < 1.0


def test_the_mutation_drops_the_readout_w_var_of_the_analytic_ntk_only():
    """Theta^{L+1} = K^{L+1} + sigma_w^2 Theta-dot^L (Eq. S29); the mutation replaces sigma_w^2 by 1."""
    from ntkrepro.kernels.fc import dense, fc_layers, input_kernel

    x = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (5, 7)), np.float64)
    for depth in (1, 3):
        spec = ModelSpec(width=16, depth=depth, activation="relu", w_var=2.0, b_var=0.1)
        k = input_kernel(x)
        for layer in fc_layers(depth=depth, w_var=2.0, b_var=0.1, n0=7)[:-1]:
            k = layer(k)
        right, wrong = analytic(spec, x), analytic(spec, x, "ntk_readout_without_w_var")
        np.testing.assert_allclose(right["ntk"], dense(k, 2.0, 0.1).ntk, rtol=1e-12)
        np.testing.assert_allclose(wrong["ntk"], dense(k, 2.0, 0.1).nngp + k.ntk, rtol=1e-12)
        np.testing.assert_array_equal(wrong["nngp"], right["nngp"])
        assert np.linalg.norm(wrong["ntk"] - right["ntk"]) > 0.1 * np.linalg.norm(right["ntk"])
    assert list(MUTATIONS) == ["ntk_readout_without_w_var"]
