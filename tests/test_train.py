"""The one trainer (`ntkrepro.train`): steps by hand, optax, closed forms, vmap, divergence, resume."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkrepro import dynamics
from ntkrepro.models import ModelSpec
from ntkrepro.train import LOSSES, Trainer, batch_schedule, fit, log_steps, split_models


def _linear(params, x):
    return x @ params["w"]


@pytest.fixture
def problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((12, 5)))
    y = jnp.asarray(rng.standard_normal((12, 2)))
    w0 = {"w": jnp.asarray(rng.standard_normal((5, 2)))}
    return x, y, w0


def test_one_gd_step_is_the_hand_computed_step(problem):
    x, y, w0 = problem
    lr = 0.3
    res = fit(Trainer(_linear, loss="mse", lr=lr), w0, x, y, steps=1)
    # mse = 1/(2N) sum ||x w - y||^2  ->  grad = x^T (x w - y) / N
    expected = w0["w"] - lr * x.T @ (x @ w0["w"] - y) / len(x)
    np.testing.assert_allclose(res.state.variable["w"], expected, rtol=1e-12)
    total = fit(Trainer(_linear, loss="mse_total", lr=lr), w0, x, y, steps=1)
    np.testing.assert_allclose(total.state.variable["w"], w0["w"] - lr * x.T @ (x @ w0["w"] - y),
                               rtol=1e-12)


@pytest.mark.parametrize("momentum,batch", [(0.0, None), (0.9, None), (0.9, 5), (0.0, 4)])
def test_sgd_and_momentum_match_optax(problem, momentum, batch):
    x, y, w0 = problem
    steps, lr, seed = 9, 0.05, 3
    res = fit(Trainer(_linear, loss="xent", lr=lr, momentum=momentum, batch_size=batch), w0, x,
              jax.nn.softmax(y), steps=steps, seed=seed)
    opt = optax.sgd(lr, momentum=momentum or None)
    params, state = w0, opt.init(w0)
    sched = batch_schedule(len(x), batch, steps, seed) if batch else None
    for s in range(steps):
        xb, yb = (x, y) if sched is None else (x[sched[s]], y[sched[s]])
        g = jax.grad(lambda p: optax.softmax_cross_entropy(_linear(p, xb), jax.nn.softmax(yb)).mean())(params)
        upd, state = opt.update(g, state, params)
        params = optax.apply_updates(params, upd)
    np.testing.assert_allclose(res.state.variable["w"], params["w"], rtol=1e-10, atol=1e-12)


def test_any_optax_optimizer(problem):
    x, y, w0 = problem
    opt = optax.adam(0.01)
    res = fit(Trainer(_linear, optimizer=opt), w0, x, y, steps=4)
    params, state = w0, opt.init(w0)
    for _ in range(4):
        g = jax.grad(lambda p: 0.5 * jnp.mean(jnp.sum((_linear(p, x) - y) ** 2, -1)))(params)
        upd, state = opt.update(g, state, params)
        params = optax.apply_updates(params, upd)
    np.testing.assert_allclose(res.state.variable["w"], params["w"], rtol=1e-10)


def test_linearization_trained_by_fit_matches_the_closed_form():
    """Full-batch GD on f_lin (Eq. 5) gives exactly the discrete closed form of Sec. 2.1."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((10, 6)))
    x_test = jnp.asarray(rng.standard_normal((4, 6)))
    y = jnp.asarray(rng.standard_normal((10, 1)))
    spec = ModelSpec(width=32, depth=2, activation="tanh", w_var=1.5, b_var=0.1)
    params0 = spec.init(jax.random.PRNGKey(0), x)
    lr, steps = 0.5, 40
    trainer = Trainer(spec.apply, loss="mse", lr=lr, linearized=True)
    res = fit(trainer, params0, x, y, steps=steps, record_at=[0, 7, steps],
              observe=lambda s, st: (trainer.predict(st, x), trainer.predict(st, x_test)))
    theta = np.asarray(spec.empirical_ntk(params0, jnp.concatenate([x, x_test])))
    traj = dynamics.gradient_descent_mse(theta[:10, :10], spec.apply(params0, x), y, lr=lr,
                                         steps=[0, 7, steps], theta_test_train=theta[10:, :10],
                                         f0_test=spec.apply(params0, x_test), loss_scale="mean")
    for i, (f_tr, f_te) in enumerate(res.records):
        np.testing.assert_allclose(f_tr, traj.train[i], rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(f_te, traj.test[i], rtol=1e-9, atol=1e-10)
    # the network itself moves differently (it is not linear), but starts at the same outputs
    net = fit(Trainer(spec.apply, lr=lr), params0, x, y, steps=steps)
    assert np.abs(np.asarray(spec.apply(net.state.variable, x)) - traj.train[-1]).max() > 1e-6


def test_vmapped_over_three_inits_equals_three_runs(problem):
    x, y, _ = problem
    spec = ModelSpec(width=16, depth=1, out_dim=2)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    stacked = jax.vmap(lambda k: spec.init(k, x))(keys)
    trainer = Trainer(spec.apply, lr=0.2, momentum=0.5, batch_size=4)
    both = fit(trainer, stacked, x, y, steps=11, record_at=[3], batched=True, seed=1)
    for i, k in enumerate(keys):
        one = fit(trainer, spec.init(k, x), x, y, steps=11, record_at=[3], seed=1)
        for a, b in zip(jax.tree_util.tree_leaves(both.state.variable),
                        jax.tree_util.tree_leaves(one.state.variable)):
            np.testing.assert_allclose(a[i], b, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(both.losses[:, i], one.losses, rtol=1e-10)


def test_vmapped_over_learning_rates_equals_separate_runs(problem):
    x, y, w0 = problem
    lrs = np.array([0.01, 0.1, 0.4])
    trainer = Trainer(_linear, lr=1.0)
    grid = fit(trainer, w0, x, y, steps=6, batched=True, shared_params=True, lr=lrs)
    for i, lr in enumerate(lrs):
        one = fit(Trainer(_linear, lr=float(lr)), w0, x, y, steps=6)
        np.testing.assert_allclose(grid.state.variable["w"][i], one.state.variable["w"], rtol=1e-12)


def test_batched_host_loop_equals_the_vmapped_compiled_loop(problem):
    """`fit(batched=True, host_loop=True)` (model by model from Python: convolutional networks on
    CPU) = the vmapped compiled loop: per-model inits and learning rates, minibatches, records,
    the per-model stop (one model stops early, one diverges, one runs to the end)."""
    x, y, _ = problem
    spec = ModelSpec(width=16, depth=1, out_dim=2)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    stacked = jax.vmap(lambda k: spec.init(k, x))(keys)
    trainer = Trainer(spec.apply, lr=0.2, momentum=0.5, batch_size=4)
    lrs = np.array([1e-4, 0.5, 40.0])
    stop = lambda loss, loss0: ~jnp.isfinite(loss) | (loss <= 0.05 * loss0)  # noqa: E731
    seen = {}
    runs = [fit(trainer, stacked, x, y, steps=40, record_at=[3, 20], batched=True, seed=1, lr=lrs, stop=stop,
                observe=lambda step, st, h=h: seen.setdefault(h, []).append(np.asarray(st.step)), host_loop=h)
            for h in (False, True)]
    a, b = runs
    assert a.steps == b.steps and np.array_equal(a.stopped, b.stopped) and np.array_equal(a.diverged, b.diverged)
    assert list(np.asarray(a.stopped)) == [False, True, True] and list(np.asarray(a.diverged)) == [False, False, True]
    assert list(np.asarray(a.state.step)) == [40, 16, 5] == list(np.asarray(b.state.step))
    for u, v in zip(jax.tree_util.tree_leaves(a.state), jax.tree_util.tree_leaves(b.state)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-10)
    assert [s.tolist() for s in seen[False]] == [s.tolist() for s in seen[True]]


def test_predict_models_model_by_model_equals_vmapped(problem):
    x, y, _ = problem
    spec = ModelSpec(width=16, depth=1, out_dim=2)
    stacked = jax.vmap(lambda k: spec.init(k, x))(jax.random.split(jax.random.PRNGKey(3), 3))
    trainer = Trainer(spec.apply, lr=0.1)
    state = fit(trainer, stacked, x, y, steps=4, batched=True, lr=np.array([0.01, 0.1, 0.3])).state
    a, b = trainer.predict_models(state, x), trainer.predict_models(state, x, host_loop=True)
    assert a.shape == b.shape == (3, len(x), 2)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    for host_loop in (False, True):   # `chunk` inputs per call (the last chunk shorter): the same outputs
        np.testing.assert_allclose(trainer.predict_models(state, x, host_loop, chunk=5), a, rtol=1e-12)
    for m, one in enumerate(split_models(state)):   # model m's outputs, not another model's
        assert int(one.step) == 4
        np.testing.assert_allclose(b[m], trainer.predict(one, x), rtol=1e-12)


def test_divergence_is_recorded_not_raised(problem):
    x, y, w0 = problem
    res = fit(Trainer(_linear, lr=1e3), w0, x, y, steps=200, record_at=[1, 10])
    assert res.diverged is True
    assert not np.all(np.isfinite(res.losses))
    ok = fit(Trainer(_linear, lr=1e-3), w0, x, y, steps=5)
    assert ok.diverged is False
    grid = fit(Trainer(_linear), w0, x, y, steps=200, batched=True, shared_params=True,
               lr=np.array([1e-3, 1e3]))
    assert list(grid.diverged) == [False, True]


def test_resume_from_a_saved_state_gives_the_same_run(problem):
    x, y, _ = problem
    spec = ModelSpec(width=8, depth=2, out_dim=2, b_var=0.1)
    params0 = spec.init(jax.random.PRNGKey(5), x)
    trainer = Trainer(spec.apply, lr=0.1, momentum=0.9, batch_size=5)
    straight = fit(trainer, params0, x, y, steps=13, record_at=[4], seed=7)
    first = fit(trainer, params0, x, y, steps=4, seed=7)
    state = jax.tree_util.tree_map(np.asarray, first.state)   # as if saved to disk and restored
    resumed = fit(trainer, None, x, y, steps=13, record_at=[4], seed=7, state=state)
    assert resumed.steps == [13]
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_delta_storage_keeps_changes_below_the_float32_ulp():
    x = jnp.ones((1, 1), jnp.float32)
    y = jnp.full((1, 1), 1e3 + 1e-3, jnp.float32)
    w0 = {"w": jnp.full((1, 1), 1e3, jnp.float32)}   # ulp(1000) in float32 = 6e-5
    lr = 1e-2
    plain = fit(Trainer(_linear, lr=lr), w0, x, y, steps=50)
    delta = fit(Trainer(_linear, lr=lr, delta=True), w0, x, y, steps=50)
    moved = float(delta.state.variable["w"][0, 0])
    assert float(plain.state.variable["w"][0, 0]) == 1e3     # the plain update is rounded away
    assert 3e-4 < moved < 1e-3                                # delta keeps 1 - 0.99^50 of 1e-3


def test_stop_condition_ends_early_and_keeps_the_stopping_state(problem):
    x, y, w0 = problem
    w_true = {"w": jnp.linalg.lstsq(x, y)[0]}
    y_fit = _linear(w_true, x)
    res = fit(Trainer(_linear, lr=0.5), w0, x, y_fit, steps=10_000, record_at=log_steps(10_000, 30),
              stop=lambda loss, loss0: loss <= 1e-6 * loss0)
    assert res.stopped and int(res.state.step) < 10_000
    assert res.losses[-1] <= 1.01e-6 * res.losses[0]


def test_batch_schedule_is_epochs_of_permutations():
    s = batch_schedule(10, 3, 7, seed=0)
    assert s.shape == (7, 3)
    first_epoch = s[:3].ravel()
    assert len(set(first_epoch)) == 9
    with pytest.raises(Exception, match="batch_size"):
        batch_schedule(10, 11, 3, 0)


def test_a_run_stopping_exactly_at_a_recording_point_records_it_once(problem):
    x, y, w0 = problem
    calls = []
    # stop as soon as the loss is below its value after 5 steps: met at step 5 exactly
    probe = fit(Trainer(_linear, lr=0.1), w0, x, y, steps=5)
    level = float(probe.losses[-1])
    res = fit(Trainer(_linear, lr=0.1), w0, x, y, steps=10, record_at=[0, 5, 10],
              observe=lambda s, st: calls.append(s), stop=lambda loss, loss0: loss <= level)
    assert res.steps == [0, 5] and calls == [0, 5] and len(res.losses) == 2


# ----------------------------------------------------------------------------------------------
# checkpoints (ntkrepro.checkpoint): a fit inside a run session saves and resumes


def _session_fit(tmp_path, trainer, params0, x, y, stop_after=None, **kw):
    from ntkrepro import checkpoint
    from ntkrepro.runstate import Interrupted

    with checkpoint.session(tmp_path / "ck", every_steps=3, every_seconds=1e9, fingerprint="f") as sess:
        if stop_after is not None:  # a stop signal arrives during the first segment
            sess.request_stop(15)
        try:
            return fit(trainer, params0, x, y, **kw)
        except Interrupted as err:
            assert err.signum == 15
            return None


def test_a_stopped_fit_saves_and_a_restarted_one_resumes_identically(tmp_path, problem):
    x, y, _ = problem
    spec = ModelSpec(width=8, depth=1, out_dim=2)
    params0 = spec.init(jax.random.PRNGKey(1), x)
    trainer = Trainer(spec.apply, lr=0.1, momentum=0.9, batch_size=4)
    kw = dict(steps=10, record_at=[0, 2, 7], seed=3, observe=lambda s, st: float(st.step))
    straight = fit(trainer, params0, x, y, **kw)
    assert _session_fit(tmp_path, trainer, params0, x, y, stop_after=1, **kw) is None
    meta = list((tmp_path / "ck").glob("fit-0000/meta.pkl"))
    assert meta, "the stop request saved a checkpoint"
    resumed = _session_fit(tmp_path, trainer, params0, x, y, **kw)
    assert resumed.steps == straight.steps == [0, 2, 7, 10]
    assert resumed.records == straight.records
    np.testing.assert_array_equal(resumed.losses, straight.losses)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.state), jax.tree_util.tree_leaves(straight.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a finished fit is not recomputed: its result comes back from the final checkpoint
    again = _session_fit(tmp_path, trainer, params0, x, y, **{**kw, "observe": None})
    assert again.records == straight.records and again.steps == straight.steps


def test_a_checkpoint_from_other_settings_is_refused(tmp_path, problem):
    from ntkrepro import checkpoint

    x, y, w0 = problem
    with checkpoint.session(tmp_path / "ck", fingerprint="a"):
        fit(Trainer(_linear, lr=0.1), w0, x, y, steps=3)
    with checkpoint.session(tmp_path / "ck", fingerprint="b"):
        with pytest.raises(checkpoint.CheckpointMismatch, match="other settings"):
            fit(Trainer(_linear, lr=0.1), w0, x, y, steps=3)


@pytest.mark.parametrize("loss", ["mse", "mse_total", "mse_per_output", "xent"])
def test_a_loss_refuses_outputs_and_targets_of_different_shapes(loss):
    # a 1-output model on 10-column targets broadcast into a wrong loss that still fell
    with pytest.raises(ValueError, match=r"outputs have shape \(4, 1\), the targets \(4, 10\).*out_dim"):
        LOSSES[loss](jnp.zeros((4, 1)), jnp.zeros((4, 10)))

