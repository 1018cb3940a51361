"""Logic of lee-s5 (network vs linearization against width and |D|) and lee-s7 (NTK vs standard)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from omegaconf import OmegaConf

from experiments import lee_parameterization as S7
from experiments import lee_width_data as S5
from ntkrepro.dynamics import gradient_descent_mse
from ntkrepro.empirical import mlp_ntk
from ntkrepro.linearize import linearize, make_train_step, mse_loss
from ntkrepro.nets import init_params, make_mlp

jax.config.update("jax_enable_x64", True)


def test_closed_form_equals_training_the_linearization_with_optax():
    """lee-s5 uses the closed form: it must be what optax.sgd on f_lin (mean MSE) produces."""
    x = jax.random.normal(jax.random.PRNGKey(0), (12, 5), jnp.float64)
    xt = jax.random.normal(jax.random.PRNGKey(1), (4, 5), jnp.float64)
    y = jnp.sign(x[:, :1])
    model = make_mlp(width=32, depth=2, w_var=2.0, b_var=0.1)
    p0 = init_params(model, jax.random.PRNGKey(2), x)
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)  # noqa: E731
    f_lin = linearize(apply_fn, p0)
    lr, steps = 0.3, 25
    opt = optax.sgd(lr)
    step = make_train_step(f_lin, mse_loss, opt)
    p, state = p0, opt.init(p0)
    for _ in range(steps):
        p, state, _ = step(p, state, x, y)
    lin = gradient_descent_mse(mlp_ntk(model, p0, x), apply_fn(p0, x), y, lr=lr, steps=[steps],
                               theta_test_train=mlp_ntk(model, p0, xt, x), f0_test=apply_fn(p0, xt),
                               loss_scale="mean")
    np.testing.assert_allclose(lin.train[-1], f_lin(p, x), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(lin.test[-1], f_lin(p, xt), rtol=1e-9, atol=1e-10)


def test_network_trainer_matches_make_train_step():
    x = jax.random.normal(jax.random.PRNGKey(3), (8, 4), jnp.float64)
    y = jnp.sign(x[:, :1])
    model = make_mlp(width=16, depth=1)
    p0 = init_params(model, jax.random.PRNGKey(4), x)
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)  # noqa: E731
    p_scan, losses = S5.train_network(apply_fn, p0, x, y, 0.2, 7)
    opt = optax.sgd(0.2)
    step = make_train_step(apply_fn, mse_loss, opt)
    p, state = p0, opt.init(p0)
    for _ in range(7):
        p, state, _ = step(p, state, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(p_scan), jax.tree_util.tree_leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert losses.shape == (7,)


def test_ntk_and_standard_start_as_the_same_function():
    x = jax.random.normal(jax.random.PRNGKey(5), (6, 10))
    key = jax.random.PRNGKey(6)
    outs = []
    for par in ("ntk", "standard"):
        m = make_mlp(width=64, depth=2, out_dim=3, activation="tanh", w_var=2.0, b_var=0.1,
                     parameterization=par)
        outs.append(m.apply({"params": init_params(m, key, x)}, x))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_batches_are_epochs_without_replacement():
    idx = S7.batch_indices(10, 4, 7, seed=0)
    assert idx.shape == (7, 4)
    first_epoch = idx[:2].ravel()
    assert len(set(first_epoch.tolist())) == 8 and first_epoch.max() < 10


def test_divergence_and_accuracy_never_crash_on_nan():
    losses = np.array([[1.0, 0.5, 0.4, 0.3], [1.0, np.nan, np.nan, np.nan], [1.0, 3.0, 5.0, 9.0],
                       [1.0, 1.0, 1.0, 1.0]])
    flags = S7.diverged_flags(losses, np.array([True, False, True, True]), blowup=2.0)
    assert flags.tolist() == [False, True, True, False]
    logits = np.array([[[0.0, 1.0], [np.nan, 0.0], [2.0, 1.0]]])
    assert S7.accuracy(logits, np.array([1, 1, 0]))[0] == 2 / 3


def test_s7_grid_vmaps_learning_rates_and_flags_divergence():
    x = jax.random.normal(jax.random.PRNGKey(7), (32, 8), jnp.float32)
    labels = np.asarray(jnp.argmax(x[:, :3], axis=1))
    y = jnp.asarray(np.eye(3)[labels], jnp.float32)
    m = make_mlp(width=32, depth=1, out_dim=3, w_var=2.0, b_var=0.1)
    p0 = init_params(m, jax.random.PRNGKey(8), x[:1])
    trainer = S7.make_grid_trainer(lambda p, xx: m.apply({"params": p}, xx), S7.mse_loss, 40)
    idx = jnp.asarray(S7.batch_indices(32, 8, 40, 0))
    lrs = jnp.asarray([0.1, 1e4], jnp.float32)
    losses, finite, logits, _ = trainer(p0, lrs, x, y, idx, x)
    flags = S7.diverged_flags(np.asarray(losses), np.asarray(finite), 2.0)
    assert flags.tolist() == [False, True]
    assert logits.shape == (2, 32, 3)


def test_s7_claims_use_non_diverged_runs_only():
    rows = []
    for par, accs, div in (("ntk", [0.5, 0.9, 0.1], [0, 0, 1]), ("standard", [0.5, 0.88, 0.99], [0, 0, 1])):
        for lr, a, d in zip([0.1, 1.0, 10.0], accs, div):
            rows.append(dict(dataset="mnist", activation="relu", loss="xent", parameterization=par, lr=lr,
                             accuracy=a, diverged=d, value=a))
    cfg = OmegaConf.create({"claims": {"best_gap": {"mnist": 0.03}}})
    (claim,) = S7.claims(pd.DataFrame(rows), cfg)
    assert abs(claim.value - 0.02) < 1e-12 and claim.status == "PASS"
