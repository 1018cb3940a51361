"""experiments.lee_linearization: the pieces behind lee-3, lee-s8 and lee-s2."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
import pytest
from omegaconf import OmegaConf

from experiments import lee_linearization as L
from ntkrepro.linearize import linearize, make_train_step, mse_loss


def test_record_steps_start_at_zero_and_end_at_steps():
    s = L.record_steps(1000, 20)
    assert s[0] == 0 and s[-1] == 1000 and np.all(np.diff(s) > 0)


def test_learning_rate_per_width():
    assert L.learning_rate(OmegaConf.create(dict(lr=0.005, width=2048, lr_per_width=True))) == \
        pytest.approx(0.005 / 2048)
    assert L.learning_rate(OmegaConf.create(dict(lr=0.01, width=2048))) == 0.01


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_closed_form_equals_gd_on_the_linearization(parameterization):
    """Eqs. 8-9 (discrete, loss_scale=mean) with Theta-hat_0 = what optax GD on f_lin produces."""
    cfg = OmegaConf.create(dict(model="mlp", width=16, depth=2, activation="relu", w_var=2.0, b_var=0.1,
                                parameterization=parameterization))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((12, 5)))
    xt = jnp.asarray(rng.standard_normal((4, 5)))
    y = jnp.asarray(np.sign(rng.standard_normal((12, 1))))
    model = L.build_model(cfg)
    p0 = L.init_params(model, jax.random.PRNGKey(1), x)
    f = L._Apply(model)
    theta = L.empirical_kernel(cfg, model, p0, jnp.concatenate([x, xt]))
    lr, steps = 0.3 if parameterization == "ntk" else 0.05, np.array([0, 1, 7, 25])
    traj = L.closed_form("gd", theta[:12, :12], theta[12:, :12], np.asarray(f(p0, x)),
                         np.asarray(f(p0, xt)), np.asarray(y), lr=lr, steps=steps, momentum=0.0,
                         loss_scale="mean")
    w_sub, w_last = L._closed_form_weights(f, p0, x, theta[:12, :12], np.asarray(y), np.asarray(f(p0, x)),
                                           kind="gd", lr=lr, steps=steps, momentum=0.0,
                                           loss_scale="mean", weight_idx=np.arange(5))
    f_tr, f_te, w, p_T = L._train(linearize(f, p0), p0, x, y, xt, optax.sgd(lr), mse_loss, steps,
                                  np.arange(5), "test")
    np.testing.assert_allclose(f_tr, traj.train, atol=1e-9)
    np.testing.assert_allclose(f_te, traj.test, atol=1e-9)
    np.testing.assert_allclose(w, w_sub, atol=1e-9)
    flat_T = np.asarray(ravel_pytree(p_T)[0])
    np.testing.assert_allclose(flat_T, w_last, atol=1e-9)


def test_momentum_closed_form_equals_direct_training_for_the_cnn():
    cfg = OmegaConf.create(dict(model="cnn", width=4, depth=2, activation="tanh", w_var=2.0, b_var=0.1,
                                parameterization="ntk", pooling="gap"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((6, 4, 4, 3)))
    xt = jnp.asarray(rng.standard_normal((3, 4, 4, 3)))
    y = jnp.asarray(np.sign(rng.standard_normal((6, 1))))
    model = L.build_model(cfg)
    p0 = L.init_params(model, jax.random.PRNGKey(2), x)
    f = L._Apply(model)
    theta = L.empirical_kernel(cfg, model, p0, jnp.concatenate([x, xt]))
    steps = np.array([0, 3, 10])
    traj = L.closed_form("momentum", theta[:6, :6], theta[6:, :6], np.asarray(f(p0, x)),
                         np.asarray(f(p0, xt)), np.asarray(y), lr=0.1, steps=steps, momentum=0.9,
                         loss_scale="mean")
    f_tr, f_te, _, _ = L._train(linearize(f, p0), p0, x, y, xt, optax.sgd(0.1, momentum=0.9),
                                mse_loss, steps, np.arange(3), "test")
    np.testing.assert_allclose(f_tr, traj.train, atol=1e-9)
    np.testing.assert_allclose(f_te, traj.test, atol=1e-9)
