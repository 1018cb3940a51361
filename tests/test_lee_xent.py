"""experiments.lee_xent (Lee et al. Figs. S3-S4): direct training of a network and its linearization,
and the dopri5 ODE of Eqs. S10-S11 against a directly trained linearized model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from omegaconf import OmegaConf

from experiments import lee_xent
from ntkrepro import models
from ntkrepro.linearize import linearize, make_train_step, xent_loss
from ntkrepro.train import batch_schedule


def _cfg(**kw):
    base = dict(id="t", depth=2, activation="tanh", w_var=1.5, b_var=0.05, parameterization="ntk",
                train_dtype="float64", eval_chunk=64, ode_lr=0.2, ode_steps=30, ode_points=6,
                ode_rtol=1e-9, ode_atol=1e-11, lr=0.5, momentum=0.9, batch_size=8, steps=5, seed=0)
    base.update(kw)
    return OmegaConf.create(base)


def _data(n, k, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = np.eye(k)[rng.integers(0, k, n)]
    return x, y


def test_record_steps_are_unique_and_span_the_run():
    s = lee_xent.log_steps(1000, 20)
    assert s[0] == 0 and s[-1] == 1000 and np.all(np.diff(s) > 0)


def test_loss_and_accuracy_match_softmax_cross_entropy():
    f = np.array([[2.0, 0.0], [0.0, 1.0]])
    y = np.array([[1.0, 0.0], [1.0, 0.0]])
    loss, acc = lee_xent._loss_acc(f, y)
    expect = -np.mean([2 - np.log(np.exp(2) + 1), 0 - np.log(1 + np.e)])
    assert np.isclose(loss, expect) and acc == 0.5
    assert np.isnan(lee_xent._loss_acc(np.full((2, 2), np.nan), y)[1])


def test_network_and_linearization_start_equal_and_share_minibatches():
    cfg = _cfg()
    x, y = _data(40, 3)
    spec = models.from_config(cfg, width=64, out_dim=3)
    out, params0 = lee_xent.train_pair(cfg, spec, jax.random.PRNGKey(0), x, y, {"test": x[:8]}, np.array([0, 1, 5]))
    assert sorted(out) == [0, 1, 5]
    np.testing.assert_allclose(out[0]["nn"]["test"], out[0]["lin"]["test"], rtol=1e-12, atol=1e-12)
    # after one step the two differ only at second order in the update
    d1 = np.abs(out[1]["nn"]["test"] - out[1]["lin"]["test"]).max()
    move = np.abs(out[1]["lin"]["test"] - out[0]["lin"]["test"]).max()
    assert 0 < d1 < 0.1 * move
    # both models took optax's momentum steps on the same minibatches (epochs of permutations, seed 0)
    opt = optax.sgd(0.5, momentum=0.9)
    sched = batch_schedule(40, 8, 5, seed=0)
    for m, f in (("nn", spec.apply), ("lin", linearize(spec.apply, params0))):
        step, p, s = make_train_step(f, xent_loss, opt), params0, opt.init(params0)
        for idx in sched:
            p, s, _ = step(p, s, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
        np.testing.assert_allclose(out[5][m]["test"], np.asarray(f(p, jnp.asarray(x[:8]))), rtol=1e-9, atol=1e-11)


def test_ode_follows_directly_trained_linearization():
    cfg = _cfg()
    x, y = _data(24, 3, seed=1)
    spec = models.from_config(cfg, width=128, out_dim=3)
    params0 = spec.init(jax.random.PRNGKey(1), x)
    rows = pd.DataFrame(lee_xent.ode_check(cfg, spec, params0, x[:16], y[:16], x[16:], y[16:],
                                           dict(width=128, point=0)))
    rel = rows[(rows.quantity == "ode_relative_deviation") & (rows.step > 0)].value
    assert len(rel) and rel.max() < 0.05
    # halving the learning rate halves the Euler (GD) error: the gap is discretisation, not a bug
    rows2 = pd.DataFrame(lee_xent.ode_check(_cfg(ode_lr=0.1, ode_steps=60), spec, params0, x[:16], y[:16],
                                            x[16:], y[16:], dict(width=128, point=0)))
    rel2 = rows2[(rows2.quantity == "ode_relative_deviation") & (rows2.step == 60)].value.max()
    rel1 = rows[(rows.quantity == "ode_relative_deviation") & (rows.step == 30)].value.max()
    assert 0.35 < rel2 / rel1 < 0.65


def test_points_are_the_widths_then_the_ode_check_and_the_mutation_moves_the_expansion_point():
    cfg = _cfg(widths=[8, 32], ode_width=8)
    assert lee_xent.points(cfg) == [{"part": "train", "width": 32}, {"part": "train", "width": 8},
                                    {"part": "ode", "width": 8}]
    assert lee_xent.points(_cfg(widths=[8], ode=False)) == [{"part": "train", "width": 8}]
    x, y = _data(16, 2)
    spec = models.from_config(cfg, width=32, out_dim=2)
    rec = np.array([0])
    out, _ = lee_xent.train_pair(_cfg(mutation="linearized_at_another_init"), spec, jax.random.PRNGKey(0), x, y,
                                 {"test": x[:4]}, rec)
    assert np.abs(out[0]["nn"]["test"] - out[0]["lin"]["test"]).max() > 1e-3
