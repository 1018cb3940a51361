"""`ntkrepro.linearize`: the first-order Taylor model (Lee et al. Eq. 5), losses and the train step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkrepro.linearize import linearize, make_train_step, mse_loss, total_loss, xent_loss
from ntkrepro.nets import init_params, make_mlp


def _init(model, key, x):
    """`init_params` under jit (one compilation instead of many eager ops)."""
    return jax.jit(lambda k, xx: init_params(model, k, xx))(key, x)


@pytest.fixture(scope="module")
def small():
    model = make_mlp(width=64, depth=2, out_dim=3, activation="erf", w_var=2.0, b_var=0.1)
    kx, kp, ky = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (10, 5))
    params0 = _init(model, kp, x)
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)  # noqa: E731
    y = jax.nn.one_hot(jax.random.randint(ky, (10,), 0, 3), 3)
    return model, apply_fn, params0, x, y


def _direction(params, key, scale=1.0):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [scale * jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])


def _axpy(a, d, p):
    return jax.tree_util.tree_map(lambda u, v: v + a * u, d, p)


def test_linearization_matches_dense_jacobian(small):
    _, apply_fn, params0, x, _ = small
    f_lin = jax.jit(linearize(apply_fn, params0))
    d = _direction(params0, jax.random.PRNGKey(1), 0.3)
    theta = _axpy(1.0, d, params0)
    # Eq. 5 with the explicit Jacobian, formed here only as an independent reference
    jac = jax.jit(jax.jacrev(lambda p: apply_fn(p, x)))(params0)
    ref = apply_fn(params0, x) + sum(
        jnp.tensordot(j, dd, axes=dd.ndim)
        for j, dd in zip(jax.tree_util.tree_leaves(jac), jax.tree_util.tree_leaves(d)))
    np.testing.assert_allclose(f_lin(theta, x), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f_lin(params0, x), apply_fn(params0, x), rtol=1e-14, atol=1e-15)


def test_linearization_is_affine_and_first_order(small):
    _, apply_fn, params0, x, _ = small
    f_lin = jax.jit(linearize(apply_fn, params0))
    apply_fn = jax.jit(apply_fn)
    f0 = apply_fn(params0, x)
    d = _direction(params0, jax.random.PRNGKey(2))
    one = f_lin(_axpy(1.0, d, params0), x) - f0
    np.testing.assert_allclose(f_lin(_axpy(-2.5, d, params0), x) - f0, -2.5 * one, rtol=1e-10, atol=1e-12)
    # the network departs from it at second order: error(eps) / error(eps / 2) ~ 4
    errs = [float(jnp.max(jnp.abs(apply_fn(_axpy(e, d, params0), x) - f_lin(_axpy(e, d, params0), x))))
            for e in (1e-2, 5e-3)]
    assert 3.5 < errs[0] / errs[1] < 4.5


def test_losses_normalisation():
    f = jnp.array([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]])
    y = jnp.array([[0.0, 1.0], [1.0, 0.0], [3.0, 0.0]])
    sq = np.sum((np.asarray(f) - np.asarray(y)) ** 2)
    np.testing.assert_allclose(mse_loss(f, y), 0.5 * sq / 3)
    np.testing.assert_allclose(total_loss(mse_loss)(f, y), 0.5 * sq)
    np.testing.assert_allclose(jax.grad(mse_loss)(f, y), (f - y) / 3, rtol=1e-12)
    np.testing.assert_allclose(mse_loss(f[:, 0], y[:, 0]), 0.5 * np.sum((f[:, 0] - y[:, 0]) ** 2) / 3)
    y = jnp.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    p = jax.nn.softmax(f, axis=-1)
    np.testing.assert_allclose(xent_loss(f, y), -np.mean(np.sum(y * np.log(p), axis=-1)), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(xent_loss)(f, y), (p - y) / 3, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("opt", [optax.sgd(0.5), optax.sgd(0.5, momentum=0.9)])
def test_train_step_same_first_step_for_network_and_linearization(small, opt):
    _, apply_fn, params0, x, y = small
    f_lin = linearize(apply_fn, params0)
    step_net = make_train_step(apply_fn, xent_loss, opt)
    step_lin = make_train_step(f_lin, xent_loss, opt)
    p_net, _, l_net = step_net(params0, opt.init(params0), x, y)
    p_lin, _, l_lin = step_lin(params0, opt.init(params0), x, y)
    np.testing.assert_allclose(l_net, l_lin, rtol=1e-12)
    for a, b in zip(jax.tree_util.tree_leaves(p_net), jax.tree_util.tree_leaves(p_lin)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_train_step_minibatches_reduce_loss_for_both(small):
    _, apply_fn, params0, x, y = small
    f_lin = linearize(apply_fn, params0)
    opt = optax.sgd(0.2, momentum=0.5)
    for fn in (apply_fn, f_lin):
        step = make_train_step(fn, xent_loss, opt)
        params, state = params0, opt.init(params0)
        before = float(xent_loss(fn(params0, x), y))
        for _ in range(30):
            for i in range(0, 10, 5):  # minibatches of 5
                params, state, _ = step(params, state, x[i:i + 5], y[i:i + 5])
        assert float(xent_loss(fn(params, x), y)) < 0.5 * before


def test_train_step_survives_divergence(small):
    _, apply_fn, params0, x, y = small
    f_lin = linearize(apply_fn, params0)
    opt = optax.sgd(1e4)
    step = make_train_step(f_lin, total_loss(mse_loss), opt)
    params, state = params0, opt.init(params0)
    losses = []
    for _ in range(60):
        params, state, loss = step(params, state, x, y)
        losses.append(float(loss))
    assert not np.all(np.isfinite(losses))  # diverged to inf / nan, recorded, no exception
    assert losses[1] > losses[0]


def test_linearization_keeps_float32(small):
    model, _, params0, x, _ = small
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params0)
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)  # noqa: E731
    f_lin = jax.jit(linearize(apply_fn, p32))
    out = f_lin(_axpy(1.0, _direction(p32, jax.random.PRNGKey(3), 0.1), p32), x.astype(jnp.float32))
    assert out.dtype == jnp.float32
