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
from ntkrepro.models import ModelSpec
from ntkrepro.nets import init_params, make_mlp
from ntkrepro.train import batch_schedule, rmse

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


def test_network_vs_linearization_matches_make_train_step_and_the_closed_form():
    """lee-s5's network is `steps` optax.sgd steps on the mean MSE; its linearization the closed form."""
    x = jax.random.normal(jax.random.PRNGKey(3), (8, 4), jnp.float64)
    xt = jax.random.normal(jax.random.PRNGKey(9), (3, 4), jnp.float64)
    y = np.asarray(jnp.sign(x[:, :1]))
    spec = ModelSpec(width=16, depth=1)
    p0 = spec.init(jax.random.PRNGKey(4), x)
    out = S5.network_vs_linearization(spec, p0, x, y, xt, lr=0.2, steps=7, dtype=jnp.float64)
    opt = optax.sgd(0.2)
    step = make_train_step(spec.apply, mse_loss, opt)
    p, state = p0, opt.init(p0)
    for _ in range(7):
        p, state, _ = step(p, state, x, y)
    lin = gradient_descent_mse(spec.empirical_ntk(p0, x), spec.apply(p0, x), y, lr=0.2, steps=[7],
                               theta_test_train=spec.empirical_ntk(p0, xt, x), f0_test=spec.apply(p0, xt),
                               loss_scale="mean")
    net_train, net_test = np.asarray(spec.apply(p, x)), np.asarray(spec.apply(p, xt))
    np.testing.assert_allclose(out["loss_final_net"], 0.5 * np.mean((net_train - y) ** 2), rtol=1e-10)
    np.testing.assert_allclose(out["rmse_train"], rmse(net_train, lin.train[-1]), rtol=1e-8)
    np.testing.assert_allclose(out["rmse_test"], rmse(net_test, lin.test[-1]), rtol=1e-8)
    np.testing.assert_allclose(out["loss_initial"], float(mse_loss(spec.apply(p0, x), y)), rtol=1e-12)
    assert out["diverged"] == 0 and out["value"] == out["rmse_test"]


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
    idx = batch_schedule(10, 4, 7, seed=0)   # lee-s7's minibatches (`fit` with batch_size=4, seed=0)
    assert idx.shape == (7, 4)
    first_epoch = idx[:2].ravel()
    assert len(set(first_epoch.tolist())) == 8 and first_epoch.max() < 10


def test_divergence_and_accuracy_never_crash_on_nan():
    losses = np.array([[1.0, 0.5, 0.4, 0.3], [1.0, np.nan, np.nan, np.nan], [1.0, 3.0, 5.0, 9.0],
                       [1.0, 1.0, 1.0, 1.0], [1.0, 0.5, 0.5, np.inf]])
    flags = S7.diverged_flags(losses[:, 0], losses[:, -1:], np.array([True, False, True, True, True]),
                              blowup=2.0)
    assert flags.tolist() == [False, True, True, False, True]
    logits = np.array([[[0.0, 1.0], [np.nan, 0.0], [2.0, 1.0]]])
    assert S7.accuracy(logits, np.array([1, 1, 0]))[0] == 2 / 3


def test_s7_grid_vmaps_learning_rates_and_flags_divergence():
    x = jax.random.normal(jax.random.PRNGKey(7), (32, 8), jnp.float32)
    labels = np.asarray(jnp.argmax(x[:, :3], axis=1))
    y = jnp.asarray(np.eye(3)[labels], jnp.float32)
    spec = ModelSpec(width=32, depth=1, out_dim=3, w_var=2.0, b_var=0.1)
    p0 = spec.init(jax.random.PRNGKey(8), x)
    lrs = jnp.asarray([0.1, 1e4], jnp.float32)
    r = S7.train_grid(spec.apply, "mse", p0, lrs, x, y, x, steps=40, batch_size=8, seed=0)
    flags = S7.diverged_flags(r["initial"], r["late"], r["finite"], 2.0)
    assert flags.tolist() == [False, True]
    assert r["logits"].shape == (2, 32, 3) and r["late"].shape == (2, 4)
    # each learning rate of the grid is the run a plain optax.sgd loop over the same minibatches makes
    idx = batch_schedule(32, 8, 40, 0)
    opt = optax.sgd(0.1)
    step = make_train_step(spec.apply, mse_loss, opt)
    p, state = p0, opt.init(p0)
    for s in range(40):
        batch_loss = mse_loss(spec.apply(p, x[idx[s]]), y[idx[s]])   # before the update of step s
        if s == 0:
            np.testing.assert_allclose(r["initial"][0], batch_loss, rtol=2e-5)
        if s == 36:   # the first of the last tenth of the 40 steps
            np.testing.assert_allclose(r["late"][0, 0], batch_loss, rtol=2e-5)
        p, state, _ = step(p, state, x[idx[s]], y[idx[s]])
    np.testing.assert_allclose(r["logits"][0], spec.apply(p, x), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(r["train_loss"][0], mse_loss(spec.apply(p, x), y), rtol=2e-4)


def _s7_metrics(ntk, standard):
    rows = []
    for par, curve in (("ntk", ntk), ("standard", standard)):
        for lr, (acc, div) in zip([0.25, 1.0, 4.0, 16.0], curve):
            rows.append(dict(dataset="mnist", activation="relu", loss="xent", parameterization=par, lr=lr,
                             accuracy=acc, diverged=div, n_test=1000, value=acc))
    return pd.DataFrame(rows)


def test_s7_claims_compare_lr_by_lr_and_the_divergence_boundary():
    cfg = OmegaConf.create({"claims": {"max_gap_se": 3.5, "boundary_steps": 1,
                                       "min_best_accuracy": {"mnist": 0.85}}})
    ntk = [(0.80, 0), (0.95, 0), (0.96, 0), (0.10, 1)]
    near = [(0.78, 0), (0.93, 0), (0.97, 0), (0.10, 1)]        # the same curve, within one grid step
    gap, bound, learns = S7.claims(_s7_metrics(ntk, near), cfg)
    assert [c.status for c in (gap, bound, learns)] == ["PASS"] * 3
    assert abs(gap.value - 0.01 / np.sqrt(2 * 0.97 * 0.03 / 1000)) < 1e-9 and bound.value == 0
    assert gap.kind == bound.kind == "paper" and gap.cite and learns.kind == "check"
    shifted = [(0.95, 0), (0.10, 1), (0.10, 1), (0.10, 1)]     # eta_std too large by two grid steps
    gap, bound, _ = S7.claims(_s7_metrics(ntk, shifted), cfg)
    assert gap.status == bound.status == "FAIL" and bound.value == 2


def test_s7_mutation_drops_the_1_over_n_of_eta_std():
    cfg = OmegaConf.create({"width": 256, "mutation": None})
    assert S7.lr_scale(cfg, "ntk") == 1.0 and S7.lr_scale(cfg, "standard") == 1.0 / 256
    cfg.mutation = "eta_std_without_1_over_n"
    assert S7.lr_scale(cfg, "standard") == 1.0 and "eta_std_without_1_over_n" in S7.MUTATIONS
