"""experiments.lee_linearization: the pieces behind lee-3, lee-s8 and lee-s2."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from experiments import lee_linearization as L
from ntkrepro.models import ModelSpec


def test_record_steps_start_at_zero_and_end_at_steps():
    s = L.log_steps(1000, 20)
    assert s[0] == 0 and s[-1] == 1000 and np.all(np.diff(s) > 0)


def test_learning_rate_per_width():
    assert L.learning_rate(OmegaConf.create(dict(lr=0.005, width=2048, lr_per_width=True))) == \
        pytest.approx(0.005 / 2048)
    assert L.learning_rate(OmegaConf.create(dict(lr=0.01, width=2048))) == 0.01


def _direct_and_closed_form(spec, x, xt, y, *, lr, momentum, dynamics, steps, n_w, key):
    """The network and f_lin trained by `train` (linearized: direct) and f_lin by `solve` (Theta-hat_0)."""
    cfg = OmegaConf.create(dict(lr=lr, momentum=momentum, loss="mean", linearized="direct", dynamics=dynamics,
                                width=spec.width))
    p0 = spec.init(jax.random.PRNGKey(key), x)
    s = L.Setup(spec, x, np.asarray(y), xt, np.zeros((len(xt), 1)), steps, np.arange(n_w), None)
    runs = {m: L.train(cfg, s, m, p0) for m in ("network", "linearized")}
    return runs, L.solve(cfg, s, "linearized", p0)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_closed_form_equals_gd_on_the_linearization(parameterization):
    """Eqs. 8-9 (discrete, loss_scale=mean) with Theta-hat_0 = what GD on f_lin (`train.fit`) produces."""
    spec = ModelSpec(arch="mlp", width=16, depth=2, activation="relu", w_var=2.0, b_var=0.1,
                     parameterization=parameterization)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((12, 5)))
    xt = jnp.asarray(rng.standard_normal((4, 5)))
    y = jnp.asarray(np.sign(rng.standard_normal((12, 1))))
    lr = 0.3 if parameterization == "ntk" else 0.05
    runs, traj = _direct_and_closed_form(spec, x, xt, y, lr=lr, momentum=0.0, dynamics="gd",
                                         steps=np.array([0, 1, 7, 25]), n_w=5, key=1)
    lin = runs["linearized"]
    np.testing.assert_allclose(lin.train, traj.train, atol=1e-9)
    np.testing.assert_allclose(lin.test, traj.test, atol=1e-9)
    np.testing.assert_allclose(lin.weights, traj.weights, atol=1e-9)
    np.testing.assert_allclose(lin.final, traj.final, atol=1e-9)
    # the network starts where its linearization does, and is trained by the same steps
    np.testing.assert_allclose(runs["network"].train[0], traj.train[0], atol=1e-12)
    assert np.abs(runs["network"].train[-1] - traj.train[-1]).max() > 1e-8


def test_momentum_closed_form_equals_direct_training_for_the_cnn():
    spec = ModelSpec(arch="cnn", width=4, depth=2, activation="tanh", w_var=2.0, b_var=0.1,
                     parameterization="ntk", pooling="gap")
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 4, 4, 3)))
    xt = jnp.asarray(rng.standard_normal((3, 4, 4, 3)))
    y = jnp.asarray(np.sign(rng.standard_normal((6, 1))))
    runs, traj = _direct_and_closed_form(spec, x, xt, y, lr=0.1, momentum=0.9, dynamics="momentum",
                                               steps=np.array([0, 3, 10]), n_w=3, key=2)
    np.testing.assert_allclose(runs["linearized"].train, traj.train, atol=1e-9)
    np.testing.assert_allclose(runs["linearized"].test, traj.test, atol=1e-9)


def test_the_cnn_has_no_analytic_kernel():
    cfg = OmegaConf.create(dict(lr=0.1, momentum=0.0, loss="mean", linearized="closed_form", dynamics="gd", width=4))
    spec = ModelSpec(arch="cnn", width=4, depth=1, activation="tanh", w_var=2.0, b_var=0.1)
    x = jnp.ones((2, 4, 4, 3))
    p0 = spec.init(jax.random.PRNGKey(0), x)
    s = L.Setup(spec, x, np.ones((2, 1)), x, np.ones((2, 1)), np.array([0, 1]), np.arange(2), None)
    with pytest.raises(Exception, match="analytic_kernel=false"):
        L.solve(cfg, s, "linearized_analytic", p0)


def test_weight_sample_covers_small_arrays_and_weights_large_ones_by_their_size():
    params = {"a": jnp.zeros((3, 4)), "b": jnp.zeros(5)}
    idx, stratum = L.weight_sample(params, 6, seed=0)
    assert len(idx) == 11 and len(set(idx.tolist())) == 11 and set(range(12, 17)) <= set(idx.tolist())
    np.testing.assert_allclose(stratum, [2.0] * 6 + [1.0] * 5)


def test_mutations_change_only_the_linearization():
    cfg = OmegaConf.create(dict(lr=0.1, width=8, mutation="lin_lr_doubled"))
    assert L.learning_rate(cfg) == 0.1 and L.learning_rate(cfg, "linearized") == pytest.approx(0.2)
    cfg = OmegaConf.create(dict(seed=0, mutation="expansion_redrawn"))
    spec = ModelSpec(arch="mlp", width=4, depth=1, activation="relu", w_var=2.0, b_var=0.1)
    x = jnp.ones((2, 3))
    p = {m: L._flat(L.initial_params(cfg, spec, m, x)) for m in ("network", "linearized", "linearized_analytic")}
    assert not np.allclose(p["network"], p["linearized"]) and np.allclose(p["linearized"], p["linearized_analytic"])
    assert np.allclose(p["network"], L._flat(L.initial_params(OmegaConf.create(dict(seed=0)), spec, "linearized", x)))
