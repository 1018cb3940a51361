"""Lee et al. 2019 Figs. 1 / S6 (experiments.lee_movement): the training loop and the claims logic."""
from __future__ import annotations

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from ntkrepro.errors import ConfigError
from ntkrepro.models import ModelSpec
from ntkrepro.train import LOSSES, Trainer, fit, log_steps

from experiments.lee_movement import MUTATIONS, claims, cost, kernels_at, measure, network, panels, points

mse = LOSSES["mse_per_output"]  # the loss lee_movement trains on


def _net(width=6, depth=2, out_dim=2):
    spec = ModelSpec(width=width, depth=depth, out_dim=out_dim, activation="relu", w_var=2.0, b_var=0.1)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (5, 3)), np.float64)
    y = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (5, out_dim)), np.float64)
    return spec, x, y


def test_training_is_plain_gradient_descent_and_resumes():
    """theta_0 + delta after 2 x 3 steps of fit (delta storage, resumed from the saved state) ==
    6 explicit steps of theta <- theta - lr grad L, with the loss recorded at every step."""
    spec, x, y = _net()
    params0 = spec.init(jax.random.PRNGKey(0), x)
    trainer = Trainer(spec.apply, loss="mse_per_output", lr=0.3, delta=True)
    first = fit(trainer, params0, x, y, steps=3, record_at=range(4))
    second = fit(trainer, params0, x, y, steps=6, record_at=range(7), state=first.state)

    def loss(p):
        return mse(spec.apply(p, x), y)

    p, want = params0, []
    for _ in range(6):
        want.append(float(loss(p)))
        p = jax.tree_util.tree_map(lambda a, g: a - 0.3 * g, p, jax.grad(loss)(p))
    got = trainer.params(second.state)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert first.steps == [0, 1, 2, 3] and second.steps == [4, 5, 6]
    np.testing.assert_allclose(np.concatenate([first.losses, second.losses[:-1]]), want, rtol=1e-10)
    np.testing.assert_allclose(second.losses[-1], float(loss(p)), rtol=1e-10)
    # the loss is the mean over examples and output units
    np.testing.assert_allclose(mse(jnp.ones((5, 2)), jnp.zeros((5, 2))), 0.5)


def test_measure_records_changes_at_half_and_end_and_the_loss_curve():
    """Rows at T/2 and T agree with the weights fit reaches; the curve starts at L(theta_0)."""
    spec, x, y = _net()
    p = dict(depth=2, activation="relu", w_var=2.0, b_var=0.1, steps=8, lr=0.3, train_dtype="float64")
    key = jax.random.PRNGKey(0)
    rows = pd.DataFrame(measure(p, x, y, 6, key, 4))
    params0 = spec.init(key, x)
    trainer = Trainer(spec.apply, loss="mse_per_output", lr=0.3, delta=True)
    for t in (4, 8):
        delta = fit(trainer, params0, x, y, steps=t).state.variable
        for layer in (1, 2, 3):
            want = np.linalg.norm(delta[f"dense_{layer - 1}"]["kernel"]) / np.linalg.norm(
                params0[f"dense_{layer - 1}"]["kernel"])
            got = rows[(rows.quantity == "weight") & (rows.layer == layer) & (rows.step == t)].value.item()
            np.testing.assert_allclose(got, want, rtol=1e-10)
        assert (rows[(rows.step == t) & (rows.role == "kernel")].value > 0).all()
    curve = rows[rows.quantity == "loss"]
    assert curve.step.tolist() == log_steps(8, 4).tolist() == [0, 1, 2, 4, 8]
    np.testing.assert_allclose(curve.value.iloc[0], float(mse(spec.apply(params0, x), y)), rtol=1e-10)
    assert rows[rows.quantity == "loss_initial"].value.item() == curve.value.iloc[0]
    assert rows[rows.quantity == "loss_final"].value.item() == curve.value.iloc[-1]
    assert rows[rows.quantity == "diverged"].value.item() == 0.0


def test_divergence_is_recorded_not_raised():
    _, x, y = _net()
    p = dict(depth=2, activation="relu", w_var=2.0, b_var=0.1, steps=40, lr=1e6)
    rows = pd.DataFrame(measure(p, x, y, 6, jax.random.PRNGKey(0), 5))
    assert rows[rows.quantity == "diverged"].value.item() == 1.0
    assert rows[rows.quantity.isin(["weight", "ntk", "nngp"]) & (rows.step == 40)].value.isna().all()


def test_panels_inherit_top_level_settings_and_pick_their_task():
    cfg = OmegaConf.merge(CFG, {"steps": 50, "panels": {"q": {"label": "other", "depth": 1, "steps": 7,
                                                              "activation": "tanh",
                                                              "task": {"dataset": "cifar10"}}}})
    got = dict(panels(cfg))
    assert got["p"]["steps"] == 50 and got["p"]["widths"] == [256, 512, 1024, 2048]
    assert got["q"]["steps"] == 7 and got["q"]["task"] == {"dataset": "cifar10"}
    assert got["p"]["task"]["dataset"] == "mnist"
    with pytest.raises(ConfigError, match="panel 'p' of lee-1 lacks task"):
        panels(_without_task())


def _without_task():
    cfg = OmegaConf.to_container(CFG)
    del cfg["panels"]["p"]["task"]
    return OmegaConf.create(cfg)


def _synthetic_metrics(rates, width_list=(256, 512, 1024, 2048), steps=100):
    """Changes c n^rate at T (and 0.97 of that at T/2), loss falling 1e-4: what claims() reads."""
    rows = []
    for n in width_list:
        common = dict(panel="p", label="net", width=n, trial=0, steps=steps)
        for (quantity, layer, role), rate in rates.items():
            for step, f in ((steps, 1.0), (steps // 2, 0.97)):
                rows.append(dict(common, quantity=quantity, layer=layer, role=role, step=step,
                                 value=f * 3.0 * n ** rate))
        rows += [dict(common, quantity="loss_initial", layer=0, role="loss", step=0, value=1.0),
                 dict(common, quantity="loss_final", layer=0, role="loss", step=steps, value=1e-4),
                 dict(common, quantity="diverged", layer=0, role="status", step=steps, value=0.0)]
    return pd.DataFrame(rows)


CFG = OmegaConf.create({
    "id": "lee-1", "widths": [256, 512, 1024, 2048], "trials": 1, "fit_points": 3,
    "lr": 1.0, "steps": 100, "w_var": 2.0, "b_var": 0.1,
    "panels": {"p": {"label": "net", "depth": 2, "activation": "relu",
                     "task": {"dataset": "mnist", "targets": "centered_onehot", "n_train": 8}}},
    "claims": {"sqrt_slope": [-0.65, -0.35], "inverse_slope": [-1.15, -0.85],
               "kernel_slope": [-1.25, -0.75], "kernel_growth": 0.1, "loss_ratio": 1e-2}})


def test_claims_pass_on_the_paper_rates_and_fail_otherwise():
    good = {("weight", 1, "input"): -0.5, ("weight", 2, "intermediate"): -1.0,
            ("weight", 3, "output"): -0.5, ("ntk", 0, "kernel"): -1.0, ("nngp", 0, "kernel"): -0.9}
    result = claims(_synthetic_metrics(good), CFG)
    assert len(result) == 3 + 2 + 2 + 1  # weights, kernel slopes (paper); saturation, loss (checks)
    assert all(c.status == "PASS" for c in result), [c for c in result if c.status != "PASS"]
    assert [c.kind for c in result] == ["paper"] * 5 + ["check"] * 3
    assert all(c.cite == "Lee et al. 2019, Fig. 1 caption" for c in result[:5])
    assert not any("at most" in c.claim for c in result)   # implied by "closer to O(1/n)": no claim of its own
    slopes = [c.value for c in result if "W^2" in c.claim]
    assert math.isclose(slopes[0], -1.0, abs_tol=1e-12)
    closer = "net: change of NTK Theta-hat (Eq. 4, k|D| x k|D|) is closer to O(1/n) than to O(1/sqrt(n))"
    for rate, want in ((-0.5, "FAIL"), (-0.3, "FAIL"), (-0.8, "PASS")):
        status = {c.claim: c.status for c in claims(_synthetic_metrics({**good, ("ntk", 0, "kernel"): rate}), CFG)}
        assert status[closer] == want, rate
    status = {c.claim: c.status for c in claims(_synthetic_metrics({**good, ("weight", 1, "input"): -1.5}), CFG)}
    assert status["net: input weights W^1 change like 1/sqrt(n)"] == "FAIL"
    diverged = _synthetic_metrics(good)
    diverged.loc[diverged.quantity == "diverged", "value"] = 1.0
    last = claims(diverged, CFG)[-1]
    assert last.status == "FAIL" and last.value is not None and math.isnan(last.value)
    # the rows' order does not matter
    shuffled = _synthetic_metrics(good).sample(frac=1.0, random_state=0)
    again = claims(shuffled, CFG)
    assert [c.claim for c in again] == [c.claim for c in result]
    np.testing.assert_allclose([c.value for c in again], [c.value for c in result], rtol=1e-12)


def test_theta_hat_is_eq_4s_matrix_over_examples_and_outputs():
    """kernels_at's NTK is J J^T with J the (|D| k) x P Jacobian (Eq. 4), as (|D|, |D|, k, k); its
    sum over the outputs is the summed form."""
    spec, x, _ = _net(out_dim=3)
    params = spec.init(jax.random.PRNGKey(0), x)
    got = np.asarray(kernels_at(spec, params, x)["ntk"])
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = jax.jacrev(lambda v: spec.apply(unravel(v), x).reshape(-1))(flat)   # (|D| k, P), example-major
    want = (jac @ jac.T).reshape(5, 3, 5, 3).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.einsum("ijcc->ij", got), spec.empirical_ntk(params, x), rtol=1e-10)


def test_the_mutation_trains_the_standard_parameterization_at_eta_over_n():
    p = dict(depth=2, activation="relu", w_var=2.0, b_var=0.1, lr=1.0)
    spec, lr = network(p, 64, 10)
    assert spec.parameterization == "ntk" and lr == 1.0 and spec.width == 64 and spec.out_dim == 10
    spec, lr = network(p, 64, 10, "standard_parameterization")
    assert spec.parameterization == "standard" and lr == 1.0 / 64
    assert list(MUTATIONS) == ["standard_parameterization"]


def test_points_are_panel_width_trial_costliest_first_and_cost_composes():
    cfg = OmegaConf.merge(CFG, {"trials": 2, "seed": 0, "loss_points": 4})
    pts = points(cfg)
    assert [(q["width"], q["trial"]) for q in pts] == [(w, t) for w in (2048, 1024, 512, 256) for t in (0, 1)]
    assert {q["panel"] for q in pts} == {"p"}
    jax.config.update("jax_enable_x64", True)
    small = OmegaConf.merge(cfg, {"widths": [8], "panels": {"p": {"task": {"flatten": True}}}})
    pieces = cost(small, points(small)[0])
    assert [c.calls for c in pieces] == [100, len(set(log_steps(100, 4).tolist()) | {50, 100}), 3]
    assert all(c.flops > 0 and c.peak_memory > 0 for c in pieces)
