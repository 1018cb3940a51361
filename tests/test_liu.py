"""Liu et al. 2020 experiments: the tangent kernel of phi(f) (`ntkrepro.outputs`), the synthetic task
(`conf/task/liu_teacher.yaml`) and gradient descent to convergence (`train.fit` with a stop rule)."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from ntkrepro import tasks, train
from ntkrepro.empirical import empirical_ntk
from ntkrepro.models import ModelSpec
from ntkrepro.outputs import (LIPSCHITZ, OutputModel, lambda_max, normalized_lr, output_fn, output_jacobian,
                              tangent_kernel)

from experiments.liu_linearity import fit_and_track

TASK = Path(__file__).resolve().parent.parent / "conf" / "task" / "liu_teacher.yaml"


def _spec(out_dim=3, width=7, depth=1, w_var=1.0, b_var=0.1):
    return ModelSpec(width=width, depth=depth, out_dim=out_dim, activation="tanh", w_var=w_var, b_var=b_var)


def _setup(out_dim=3, width=7, depth=1):
    spec = _spec(out_dim, width, depth)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 3), dtype=jnp.float64)
    params = spec.init_normal(np.random.default_rng([0, depth]), x)
    return spec, params, x


@pytest.mark.parametrize("output", ["linear", "softmax", "swish", "softplus"])
def test_tangent_kernel_of_composed_model_matches_jacobian_contraction(output):
    """J_phi K_f J_phi^T (structured) == J J^T of phi(f) (dense Jacobian, small width only)."""
    spec, params, x = _setup()
    params = jax.tree_util.tree_map(lambda p: 1.5 * p, params)  # outputs away from 0
    got = tangent_kernel(spec, params, x, output)
    want = empirical_ntk(OutputModel(spec, output), params, x, trace=False)
    assert got.shape == want.shape == (4, 4, 3, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_bottleneck_model_kernel_matches_jacobian_contraction():
    spec, params, x = _setup(width=(6, 2, 5), depth=3)
    np.testing.assert_allclose(tangent_kernel(spec, params, x, "swish"),
                               empirical_ntk(OutputModel(spec, "swish"), params, x, trace=False),
                               rtol=1e-10, atol=1e-12)


def test_scalar_output_kernel_is_phi_prime_times_kf():
    """k = 1: K~(x, x') = phi'(f(x)) phi'(f(x')) K_f(x, x') (Liu et al. Eq. 12)."""
    spec, params, x = _setup(out_dim=1)
    f = spec.apply(params, x)[:, 0]
    d = jax.vmap(jax.grad(lambda z: z * jax.nn.sigmoid(z)))(f)
    kf = tangent_kernel(spec, params, x, "linear")[:, :, 0, 0]
    np.testing.assert_allclose(tangent_kernel(spec, params, x, "swish")[:, :, 0, 0],
                               d[:, None] * kf * d[None, :], rtol=1e-12)


def test_softmax_jacobian_norm_is_at_most_the_lipschitz_constant():
    f = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (200, 3), dtype=jnp.float64)
    norms = np.linalg.norm(np.asarray(output_jacobian("softmax", f)), ord=2, axis=(1, 2))
    assert norms.max() <= LIPSCHITZ["softmax"] + 1e-12
    z = jnp.linspace(-10, 10, 2001, dtype=jnp.float64)[:, None]
    assert float(jnp.max(output_jacobian("swish", z))) <= LIPSCHITZ["swish"] + 1e-4


def test_output_model_is_hashable_and_equal_by_value():
    """One compilation per (spec, output) in jit, `train.Trainer` and `ntkrepro.hessian`."""
    assert OutputModel(_spec(), "swish") == OutputModel(_spec(), "swish")
    assert hash(OutputModel(_spec(), "swish")) == hash(OutputModel(_spec(), "swish"))
    with pytest.raises(Exception, match="unknown output layer"):
        OutputModel(_spec(), "relu")


def test_init_normal_draws_standard_normal_in_the_flax_structure():
    """N(0, 1) parameters from numpy default_rng([seed, *tags]), in the order the tree is walked."""
    spec = _spec(out_dim=2, width=300)
    x = jnp.ones((2, 5), dtype=jnp.float64)
    p = spec.init_normal(np.random.default_rng([0, 300]), x)
    ref = spec.init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(p) == jax.tree_util.tree_structure(ref)
    w = np.asarray(p["dense_0"]["kernel"])
    assert w.dtype == np.float64 and abs(w.mean()) < 0.05 and abs(w.std() - 1) < 0.05
    again = spec.init_normal(np.random.default_rng([0, 300]), x)
    np.testing.assert_array_equal(w, np.asarray(again["dense_0"]["kernel"]))
    rng = np.random.default_rng([0, 300])  # the liu figures' draws: leaf by leaf, in tree order
    for leaf in jax.tree_util.tree_leaves(p):
        np.testing.assert_array_equal(np.asarray(leaf), rng.standard_normal(leaf.shape))


def _task(n_train=6, dim=4):
    cfg = OmegaConf.merge(OmegaConf.load(TASK), {"n_train": n_train, "dim": dim, "input_scale": 2.0})
    task = tasks.load(cfg, seed=0, record=False)
    return jnp.asarray(task.x_train), jnp.asarray(task.y_train)


def test_liu_teacher_task():
    """x = r sqrt(d) z/|z| on a sphere; t_c = mu + a sin(omega u_c.z/|z|) in [mu - a, mu + a]."""
    x, t = _task()
    assert x.shape == (6, 4) and t.shape == (6, 3)
    assert np.allclose(np.linalg.norm(np.asarray(x), axis=1), 4.0)  # radius r sqrt(d), r = 2
    assert np.all((np.asarray(t) >= 0.5) & (np.asarray(t) <= 2.5))


def _stop(tol):
    return lambda loss, loss0: ~jnp.isfinite(loss) | (loss <= tol * loss0)


@pytest.mark.parametrize("output", ["linear", "softmax", "swish"])
def test_gradient_descent_converges_and_checkpoints(output):
    x, t = _task()
    # liu-1's settings: sigma_w^2 = 1/4 with inputs of norm 2 sqrt(d) (initial outputs right of the
    # swish minimum)
    spec = _spec(width=64, w_var=0.25, b_var=0.025)
    p0 = spec.init_normal(np.random.default_rng([0, 64]), x)
    eta = normalized_lr(1.5, 6, lambda_max(tangent_kernel(spec, p0, x)), output)
    res = train.fit(train.Trainer(OutputModel(spec, output), loss="mse", lr=eta), p0, x, output_fn(output)(t),
                    steps=3000, record_at=[0, 5], stop=_stop(1e-6), observe=lambda s, st: s)
    assert res.stopped and not res.diverged
    assert res.losses[-1] <= 1e-6 * res.losses[0]
    assert res.steps[:2] == [0, 5] and res.records[-1] == res.steps[-1] < 3000


def test_fit_and_track_reports_each_checkpoint_once():
    """Delta K(t) at the geometric grid and at the step GD stopped (once, also when it stops on a
    checkpoint); the summary of liu-1's rows."""
    x, t = _task()
    spec = _spec(width=64, w_var=0.25, b_var=0.025)
    p0 = spec.init_normal(np.random.default_rng([0, 64]), x)
    cfg = OmegaConf.create({"lr": 1.5, "tol": 1e-6, "steps": 3000, "kernel_points": 40})
    trace, summary = fit_and_track(spec, p0, x, t, "linear", cfg, tangent_kernel(spec, p0, x))
    steps = [r["step"] for r in trace]
    assert steps[0] == 0 and trace[0]["delta_k"] == 0.0 and np.all(np.diff(steps) > 0)
    assert summary["converged"] == 1 and summary["diverged"] == 0 and summary["final_step"] == steps[-1]
    assert summary["delta_k"] == max(r["delta_k"] for r in trace)
    # stop exactly on a checkpoint: the final step is still reported once
    cfg = OmegaConf.create({"lr": 1.5, "tol": 1e-6, "steps": 3000, "kernel_points": 3000})
    trace, summary = fit_and_track(spec, p0, x, t, "linear", cfg, tangent_kernel(spec, p0, x))
    steps = [r["step"] for r in trace]
    assert summary["final_step"] in train.log_steps(3000, 3000)  # (every step up to ~370 is in the grid)
    assert np.all(np.diff(steps) > 0) and steps[-1] == summary["final_step"] < 3000


def test_divergence_is_recorded_not_raised():
    x, t = _task()
    spec = _spec(width=16)
    p0 = spec.init_normal(np.random.default_rng([0, 16]), x)
    res = train.fit(train.Trainer(OutputModel(spec, "linear"), loss="mse", lr=1e6), p0, x, t, steps=200,
                    record_at=[0], stop=_stop(1e-6))
    assert res.diverged and not np.isfinite(res.losses[-1])
    assert not res.losses[-1] <= 1e-6 * res.losses[0]  # not converged


# ----------------------------------------------------------------------------------------------
# sweep points and the deliberate mistakes of tests/test_mutations.py


def _figure(fid, scale="smoke"):
    from ntkrepro import plan

    _, run_cfg, module = plan.compose(fid, scale)
    return run_cfg, module


@pytest.mark.parametrize("fid,keys,n", [("liu-1", ("width", "trial", "output"), 2 * 2 * 3),
                                        ("liu-2", ("bottleneck_width", "trial"), 2),
                                        ("liu-t1", ("cls", "width"), 3 * 2)])
def test_points_are_the_sweep_units(fid, keys, n):
    cfg, module = _figure(fid)
    pts = module.points(cfg)
    assert len(pts) == n and all(tuple(p) == keys for p in pts)
    assert len({tuple(p.values()) for p in pts}) == n


def test_standard_parameterization_mutation_is_the_same_function_at_init():
    """The liu-t1 mutation re-expresses w_0 in the standard parameterization: same outputs, but the
    gradient (and the tangent kernel) no longer Theta(1) in the width."""
    from experiments import liu_hessian

    x, _ = _task()
    cfg = OmegaConf.create({"seed": 0, "mutation": "standard_parameterization"})
    spec = _spec(out_dim=1, width=(9, 3, 9), depth=3)
    f = OutputModel(spec, "linear")
    f_std, p_std = liu_hessian._initial(cfg, f, (9, 3), x, jnp.float64)
    _, p_ntk = liu_hessian._initial(OmegaConf.create({"seed": 0}), f, (9, 3), x, jnp.float64)
    assert f_std.spec.parameterization == "standard"
    np.testing.assert_allclose(f_std(p_std, x), f(p_ntk, x), rtol=1e-12)
    assert not np.allclose(tangent_kernel(f_std.spec, p_std, x), tangent_kernel(spec, p_ntk, x))


def test_no_output_jacobian_mutation_measures_the_kernel_of_f():
    from experiments import liu_linearity

    x, t = _task()
    spec = _spec(width=32, w_var=0.25, b_var=0.025)
    p0 = spec.init_normal(np.random.default_rng([0, 32]), x)
    kf0 = tangent_kernel(spec, p0, x)
    cfg = OmegaConf.create({"lr": 1.5, "tol": 1e-6, "steps": 300, "kernel_points": 5})
    right, _ = fit_and_track(spec, p0, x, t, "softmax", cfg, kf0)
    wrong, _ = fit_and_track(spec, p0, x, t, "softmax", OmegaConf.merge(cfg, {"mutation": "no_output_jacobian"}),
                             kf0)
    assert [r["loss"] for r in right] == [r["loss"] for r in wrong]      # the same training ...
    assert max(r["delta_k"] for r in wrong) < 0.5 * max(r["delta_k"] for r in right)  # ... measured as f's
    assert set(liu_linearity.MUTATIONS) == {"no_output_jacobian", "no_bottleneck"}
