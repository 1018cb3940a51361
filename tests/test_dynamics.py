"""`ntkrepro.dynamics`: closed-form linearized dynamics against trained linearized models.

Reference derivations: Lee et al. 2019 Secs. 2.2-2.3, App. B and D, and Chen's notes
(/work/shared/papers/chen2020_linearized_networks_notes.txt): Eqs. (15), (18), (19) for outputs and
weights, (27)-(30) for the NTK-GP, Sec. 5 (41)-(47) for readout-only training.  (The last line of
the notes' Eq. 47 drops the factor 2 in e^{-2 eta K t}; its own Eq. 46 and the paper's S23 keep it,
and `test_ntk_gp_with_theta_equal_k_is_readout_gp` checks S23 against Eq. 15 with Theta = K.)
Empirical kernels only (no analytic-kernel module); float64 via tests/conftest.py.
"""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ntkrepro import dynamics as dyn
from ntkrepro.empirical import empirical_ntk, mlp_nngp
from ntkrepro.errors import ConfigError
from ntkrepro.linearize import linearize, make_train_step, mse_loss, total_loss, xent_loss
from ntkrepro.nets import init_params, make_mlp


def _init(model, key, x):
    """`init_params` under jit (one compilation instead of many eager ops)."""
    return jax.jit(lambda k, xx: init_params(model, k, xx))(key, x)

N, M, N0 = 16, 4, 8


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _at(tree, i):
    return jax.tree_util.tree_map(lambda a: a[i], tree)


def _run(step, f_lin, params0, opt, x, y, x_test, record):
    """Step a model; return train / test outputs and parameters at the steps in `record`."""
    params, state = params0, opt.init(params0)
    f_train, f_test, snaps = [], [], []
    for s in range(max(record) + 1):
        if s in record:
            f_train.append(np.asarray(f_lin(params, x)))
            f_test.append(np.asarray(f_lin(params, x_test)))
            snaps.append(params)
        if s < max(record):
            params, state, _ = step(params, state, x, y)
    return np.stack(f_train), np.stack(f_test), snaps


@pytest.fixture(scope="module")
def reg():
    """A width-256 ReLU MLP with one output, its empirical NTK and a linearized model."""
    model = make_mlp(width=256, depth=2, out_dim=1, activation="relu", w_var=2.0, b_var=0.1)
    kx, kt, kp, ky = jax.random.split(jax.random.PRNGKey(42), 4)
    x = jax.random.normal(kx, (N, N0))
    x_test = jax.random.normal(kt, (M, N0))
    y = jnp.sin(x[:, :1] + x[:, 1:2])
    params0 = _init(model, kp, x)
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)  # noqa: E731
    theta = np.asarray(empirical_ntk(apply_fn, params0, x))
    theta_st = np.asarray(empirical_ntk(apply_fn, params0, x_test, x))
    f_lin = jax.jit(linearize(apply_fn, params0))
    f0, f0_test = np.asarray(f_lin(params0, x)), np.asarray(f_lin(params0, x_test))
    lam_max = float(np.linalg.eigvalsh(theta).max())
    return dict(model=model, apply_fn=apply_fn, params0=params0, x=x, x_test=x_test, y=y,
                theta=theta, theta_st=theta_st, f_lin=f_lin, f0=f0, f0_test=f0_test,
                lam_max=lam_max)


@pytest.fixture(scope="module")
def gd_run(reg):
    """150 steps of optax.sgd on the *mean* MSE (mse_loss) of the linearized model."""
    lr = 1.5 * N / reg["lam_max"]  # eta_total * lambda_max = 1.5: oscillating but convergent top mode
    opt = optax.sgd(lr)
    step = make_train_step(reg["f_lin"], mse_loss, opt)
    record = [0, 1, 2, 7, 40, 150]
    f_train, f_test, snaps = _run(step, reg["f_lin"], reg["params0"], opt, reg["x"], reg["y"],
                                  reg["x_test"], record)
    return dict(lr=lr, record=record, train=f_train, test=f_test, snaps=snaps)


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


# ----------------------------------------------------------------------------------------------
# 1. outputs: GD closed form == stepping the linear model; GF == GD with tiny steps


def test_gd_closed_form_matches_stepping_linearized_model(reg, gd_run):
    out = dyn.gradient_descent_mse(reg["theta"], reg["f0"], reg["y"], lr=gd_run["lr"],
                                   steps=gd_run["record"], theta_test_train=reg["theta_st"],
                                   f0_test=reg["f0_test"], loss_scale="mean")
    assert out.train.shape == (len(gd_run["record"]), N, 1) and out.test.shape == (len(gd_run["record"]), M, 1)
    assert _rel(out.train, gd_run["train"]) < 1e-9
    assert _rel(out.test, gd_run["test"]) < 1e-9
    # the same run in the paper's total-loss convention: eta_total = eta_mean / N
    tot = dyn.gradient_descent_mse(reg["theta"], reg["f0"], reg["y"], lr=gd_run["lr"] / N,
                                   steps=gd_run["record"], theta_test_train=reg["theta_st"],
                                   f0_test=reg["f0_test"])
    np.testing.assert_allclose(tot.train, out.train, rtol=1e-12, atol=1e-12)
    # and the training has actually moved the outputs towards Y
    assert np.abs(gd_run["train"][-1] - np.asarray(reg["y"])).max() < 0.5 * np.abs(reg["f0"] - np.asarray(reg["y"])).max()


def test_gd_closed_form_total_loss_stepping(reg):
    lr = 0.9 / reg["lam_max"]
    opt = optax.sgd(lr)
    step = make_train_step(reg["f_lin"], total_loss(mse_loss), opt)
    f_train, f_test, _ = _run(step, reg["f_lin"], reg["params0"], opt, reg["x"], reg["y"],
                              reg["x_test"], [0, 3, 30])
    out = dyn.gradient_descent_mse(reg["theta"], reg["f0"], reg["y"], lr=lr, steps=[0, 3, 30],
                                   theta_test_train=reg["theta_st"], f0_test=reg["f0_test"])
    assert _rel(out.train, f_train) < 1e-9 and _rel(out.test, f_test) < 1e-9


def test_gradient_flow_is_limit_of_small_steps(reg):
    eta, times = 2.0 / reg["lam_max"], np.array([0.0, 0.5, 3.0, 40.0])
    kw = dict(theta_test_train=reg["theta_st"], f0_test=reg["f0_test"])
    flow = dyn.gradient_flow_mse(reg["theta"], reg["f0"], reg["y"], lr=eta, times=times, **kw)
    errs = []
    for delta in (1e-3, 5e-4):
        gd = dyn.gradient_descent_mse(reg["theta"], reg["f0"], reg["y"], lr=eta * delta,
                                      steps=np.round(times / delta), **kw)
        errs.append(max(_rel(gd.train, flow.train), _rel(gd.test, flow.test)))
    assert errs[0] < 1e-3
    assert 1.8 < errs[0] / errs[1] < 2.2  # first-order convergence to the flow
    # Eq. 9 limits: f_0 at t = 0 and Y on the training set at t = inf
    np.testing.assert_allclose(flow.train[0], reg["f0"], atol=1e-14)
    np.testing.assert_allclose(flow.test[0], reg["f0_test"], atol=1e-14)
    inf = dyn.gradient_flow_mse(reg["theta"], reg["f0"], reg["y"], lr=eta, times=[np.inf], **kw)
    np.testing.assert_allclose(inf.train[0], reg["y"], atol=1e-8)
    ref = reg["f0_test"] - reg["theta_st"] @ np.linalg.solve(reg["theta"], reg["f0"] - np.asarray(reg["y"]))
    np.testing.assert_allclose(inf.test[0], ref, rtol=1e-7, atol=1e-9)


def test_flow_matches_matrix_exponential_and_mu_gamma_split():
    """Chen's notes Eq. (15) and (19): f_t = mu_t + gamma_t (Eqs. 10-11), checked with expm."""
    from scipy.linalg import expm

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(9, 30))
    theta_all = feats @ feats.T / 30
    theta, theta_st = theta_all[:6, :6], theta_all[6:, :6]
    f0, f0s, y = rng.normal(size=(6, 2)), rng.normal(size=(3, 2)), rng.normal(size=(6, 2))
    eta, times = 0.8, [0.0, 0.3, 2.0, 11.0]
    out = dyn.gradient_flow_mse(theta, f0, y, lr=eta, times=times, theta_test_train=theta_st, f0_test=f0s)
    for i, t in enumerate(times):
        e = expm(-eta * theta * t)
        np.testing.assert_allclose(out.train[i], (np.eye(6) - e) @ y + e @ f0, atol=1e-12)
        a = theta_st @ np.linalg.solve(theta, np.eye(6) - e)
        mu, gamma = a @ y, f0s - a @ f0
        np.testing.assert_allclose(out.test[i], mu + gamma, atol=1e-11)
    mu_only = dyn.gradient_flow_mse(theta, None, y, lr=eta, times=times, theta_test_train=theta_st)
    gamma_only = dyn.gradient_flow_mse(theta, f0, np.zeros_like(y), lr=eta, times=times,
                                       theta_test_train=theta_st, f0_test=f0s)
    np.testing.assert_allclose(mu_only.test + gamma_only.test, out.test, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# 2. weights (Eq. 8)


def test_weights_match_trained_linearized_model(reg, gd_run):
    theta_s = dyn.weights_gd_mse(reg["apply_fn"], reg["params0"], reg["x"], reg["theta"], reg["y"],
                                 lr=gd_run["lr"], steps=gd_run["record"], loss_scale="mean")
    p0 = _leaves(reg["params0"])
    for i, snap in enumerate(gd_run["snaps"]):
        for a, b, c in zip(_leaves(_at(theta_s, i)), _leaves(snap), p0):
            assert a.shape == b.shape and a.dtype == b.dtype
            omega_ref = np.asarray(b - c)
            scale = max(np.abs(omega_ref).max(), 1e-300)
            if i == 0:
                assert np.abs(np.asarray(a - c)).max() == 0.0
            else:
                assert np.abs(np.asarray(a - b)).max() / scale < 1e-8


def test_flow_weights_reproduce_flow_outputs_and_small_step_limit(reg):
    eta, times = 1.0 / reg["lam_max"], [0.0, 2.0, 25.0, np.inf]
    w = dyn.weights_flow_mse(reg["apply_fn"], reg["params0"], reg["x"], reg["theta"], reg["y"],
                             lr=eta, times=times)
    out = dyn.gradient_flow_mse(reg["theta"], reg["f0"], reg["y"], lr=eta, times=times,
                                theta_test_train=reg["theta_st"], f0_test=reg["f0_test"])
    for i in range(len(times)):
        p = _at(w, i)
        np.testing.assert_allclose(reg["f_lin"](p, reg["x"]), out.train[i], rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(reg["f_lin"](p, reg["x_test"]), out.test[i], rtol=1e-7, atol=1e-9)
    delta = 1e-3
    wd = dyn.weights_gd_mse(reg["apply_fn"], reg["params0"], reg["x"], reg["theta"], reg["y"],
                            lr=eta * delta, steps=[0, round(2.0 / delta), round(25.0 / delta)])
    for a, b, c in zip(_leaves(wd), _leaves(w), _leaves(reg["params0"])):
        np.testing.assert_allclose(a - c, b[:3] - c, atol=2e-3 * np.abs(b[2] - c).max())


# ----------------------------------------------------------------------------------------------
# 3. momentum (Eqs. S1-S2)


def test_momentum_matches_optax_momentum_on_linearized_model(reg):
    lr, beta, record = 1.0 / reg["lam_max"], 0.9, [0, 1, 2, 5, 60, 200]
    opt = optax.sgd(lr, momentum=beta)
    step = make_train_step(reg["f_lin"], total_loss(mse_loss), opt)
    f_train, f_test, snaps = _run(step, reg["f_lin"], reg["params0"], opt, reg["x"], reg["y"],
                                  reg["x_test"], record)
    out = dyn.momentum_mse(reg["theta"], reg["f0"], reg["y"], lr=lr, momentum=beta, steps=record,
                           theta_test_train=reg["theta_st"], f0_test=reg["f0_test"])
    assert _rel(out.train, f_train) < 1e-9 and _rel(out.test, f_test) < 1e-9
    w = dyn.weights_mse(reg["apply_fn"], reg["params0"], reg["x"], reg["theta"], reg["y"], lr=lr,
                        times=record, dynamics="momentum", momentum=beta)
    for a, b, c in zip(_leaves(_at(w, 4)), _leaves(snaps[4]), _leaves(reg["params0"])):
        assert np.abs(np.asarray(a - b)).max() < 1e-8 * np.abs(np.asarray(b - c)).max()
    # beta = 0 is plain gradient descent
    gd = dyn.gradient_descent_mse(reg["theta"], reg["f0"], reg["y"], lr=lr, steps=record)
    m0 = dyn.momentum_mse(reg["theta"], reg["f0"], reg["y"], lr=lr, momentum=0.0, steps=record)
    np.testing.assert_allclose(m0.train, gd.train, rtol=1e-12, atol=1e-12)


def test_momentum_against_function_space_recurrence_long_runs():
    """Iterate Eq. S2 directly (f_{i+1} = f_i - eta Theta (f_i - Y) + beta (f_i - f_{i-1}))."""
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(8, 5))  # rank 5 < 7 train points: singular Theta
    theta_all = feats @ feats.T
    theta, theta_st = theta_all[:7, :7], theta_all[7:, :7]
    f0, f0s, y = rng.normal(size=(7, 1)), rng.normal(size=(1, 1)), rng.normal(size=(7, 1))
    lam_max = np.linalg.eigvalsh(theta).max()
    for eta, beta in ((1.0 / lam_max, 0.5), (3.5 / lam_max, 0.8), (0.3 / lam_max, 0.99)):
        fx, fx_prev, fs, fs_prev = f0, f0, f0s, f0s
        hist_x, hist_s = [], []
        for i in range(1201):
            hist_x.append(fx), hist_s.append(fs)
            grad = theta @ (fx - y)
            fx, fx_prev = fx - eta * grad + beta * (fx - fx_prev), fx
            fs, fs_prev = fs - eta * theta_st @ (fx_prev - y) + beta * (fs - fs_prev), fs
        steps = [0, 1, 17, 500, 1200]
        out = dyn.momentum_mse(theta, f0, y, lr=eta, momentum=beta, steps=steps,
                               theta_test_train=theta_st, f0_test=f0s)
        scale = max(np.abs(np.stack(hist_x)).max(), 1.0)
        np.testing.assert_allclose(out.train, np.stack([hist_x[s] for s in steps]), atol=1e-9 * scale)
        np.testing.assert_allclose(out.test, np.stack([hist_s[s] for s in steps]), atol=1e-9 * scale)


# ----------------------------------------------------------------------------------------------
# 4. cross-entropy ODE (Eqs. S10-S11)


@pytest.fixture(scope="module")
def cls():
    k, n = 3, 12
    model = make_mlp(width=256, depth=2, out_dim=k, activation="erf", w_var=2.0, b_var=0.1)
    kx, kt, kp, ky = jax.random.split(jax.random.PRNGKey(7), 4)
    x, x_test = jax.random.normal(kx, (n, N0)), jax.random.normal(kt, (M, N0))
    y = jax.nn.one_hot(jax.random.randint(ky, (n,), 0, k), k)
    params0 = _init(model, kp, x)
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)  # noqa: E731
    theta = np.asarray(empirical_ntk(apply_fn, params0, x, trace=False))  # (n, n, k, k)
    theta_st = np.asarray(empirical_ntk(apply_fn, params0, x_test, x, trace=False))
    f_lin = jax.jit(linearize(apply_fn, params0))
    return dict(params0=params0, x=x, x_test=x_test, y=np.asarray(y), theta=theta, theta_st=theta_st,
                f_lin=f_lin, f0=np.asarray(f_lin(params0, x)), f0_test=np.asarray(f_lin(params0, x_test)),
                n=n, k=k)


def _euler_xent(theta_flat, theta_st_flat, f0, f0s, y, rate, dt, n_steps):
    f, fs = f0.copy(), f0s.copy()
    out, out_s = [f.copy()], [fs.copy()]
    for _ in range(n_steps):
        e = np.exp(f - f.max(-1, keepdims=True))
        err = (e / e.sum(-1, keepdims=True) - y).reshape(-1)
        f = f - dt * rate * (theta_flat @ err).reshape(f.shape)
        fs = fs - dt * rate * (theta_st_flat @ err).reshape(fs.shape)
        out.append(f.copy()), out_s.append(fs.copy())
    return np.stack(out), np.stack(out_s)


def _flat(theta):
    a, b, k, _ = theta.shape
    return theta.transpose(0, 2, 1, 3).reshape(a * k, b * k)


def test_xent_ode_against_euler_and_trained_linearized_model(cls):
    n, k = cls["n"], cls["k"]
    lam_max = np.linalg.eigvalsh(_flat(cls["theta"])).max()
    eps = 0.02 * n / lam_max  # GD learning rate on the mean cross-entropy
    n_steps, record = 400, [0, 40, 400]
    times = eps * np.array(record)  # flow with lr = 1 on the mean loss, time = eps * steps
    ode = dyn.xent_ode(cls["theta"], cls["f0"], cls["y"], lr=1.0, times=times, loss_scale="mean",
                       theta_test_train=cls["theta_st"], f0_test=cls["f0_test"], rtol=1e-10, atol=1e-12)
    assert ode.train.shape == (3, n, k) and ode.test.shape == (3, M, k)
    assert ode.train.dtype == np.float64
    # (a) first-order convergence of Euler on the same ODE
    errs, euler = [], []
    for sub in (1, 2):
        e_x, e_s = _euler_xent(_flat(cls["theta"]), _flat(cls["theta_st"]), cls["f0"], cls["f0_test"],
                               cls["y"], 1.0 / n, eps / sub, n_steps * sub)
        idx = [r * sub for r in record]
        euler.append((e_x[idx], e_s[idx]))
        errs.append(max(_rel(e_x[idx], ode.train), _rel(e_s[idx], ode.test)))
    assert errs[0] < 2e-2
    assert 1.7 < errs[0] / errs[1] < 2.3
    # (b) gradient descent on the softmax cross-entropy of the linearized model itself
    opt = optax.sgd(eps)
    step = make_train_step(cls["f_lin"], xent_loss, opt)
    f_train, f_test, _ = _run(step, cls["f_lin"], cls["params0"], opt, cls["x"], jnp.asarray(cls["y"]),
                              cls["x_test"], record)
    # the linear model's GD *is* Euler in function space with dt = eps
    assert max(_rel(f_train, euler[0][0]), _rel(f_test, euler[0][1])) < 1e-9
    assert max(_rel(f_train, ode.train), _rel(f_test, ode.test)) < 1.01 * errs[0]
    # training has moved the logits towards the labels
    assert np.mean(np.argmax(ode.train[-1], -1) == np.argmax(cls["y"], -1)) > 0.9


def test_xent_ode_shared_kernel_and_float32_inputs():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(7, 20))
    theta_all = feats @ feats.T / 20
    theta, theta_st = theta_all[:5, :5], theta_all[5:, :5]
    y = np.eye(3)[[0, 1, 2, 1, 0]]
    f0, f0s = rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
    # a shared (N, N) kernel is Theta ⊗ I_k: same as the (N, N, k, k) kernel with identity blocks
    theta4 = np.einsum("ij,ab->ijab", theta, np.eye(3))
    theta_st4 = np.einsum("ij,ab->ijab", theta_st, np.eye(3))
    kw = dict(lr=0.7, times=[0.0, 1.0, 6.0], rtol=1e-11, atol=1e-13)
    a = dyn.xent_ode(theta, f0, y, theta_test_train=theta_st, f0_test=f0s, **kw)
    b = dyn.xent_ode(theta4, f0, y, theta_test_train=theta_st4, f0_test=f0s, **kw)
    np.testing.assert_allclose(a.train, b.train, atol=1e-9)
    np.testing.assert_allclose(a.test, b.test, atol=1e-9)
    np.testing.assert_allclose(a.train[0], f0, atol=1e-14)
    # float32 inputs: the same float64 result as for the same values given in float64
    c = dyn.xent_ode(theta.astype(np.float32), f0.astype(np.float32), y.astype(np.float32), **kw)
    d = dyn.xent_ode(theta.astype(np.float32).astype(np.float64), f0.astype(np.float32).astype(np.float64),
                     y, **kw)
    assert c.train.dtype == np.float64
    np.testing.assert_allclose(c.train, d.train, atol=1e-12)
    # conservation: the train logits of each example move along Theta @ (softmax - Y), whose
    # per-example sum over classes is zero for a shared kernel, so row sums stay constant
    np.testing.assert_allclose(a.train.sum(-1), np.broadcast_to(f0.sum(-1), (3, 5)), atol=1e-9)


# ----------------------------------------------------------------------------------------------
# 5. NTK-GP (Eqs. 13-16)


def _kernels(seed, n=8, m=3, width=40):
    rng = np.random.default_rng(seed)
    phi = rng.normal(size=(n + m, width)) / np.sqrt(width)
    psi = np.concatenate([phi, rng.normal(size=(n + m, width)) / np.sqrt(width)], axis=1)
    k_all, t_all = phi @ phi.T, 1.5 * psi @ psi.T + 0.1
    y = rng.normal(size=(n, 2))
    split = lambda a: (a[:n, :n], a[n:, :n], a[n:, n:])  # noqa: E731
    return split(k_all), split(t_all), y, phi, n, m


def test_ntk_gp_limits():
    (k_tt, k_st, k_ss), (t_tt, t_st, t_ss), y, _, n, m = _kernels(0)
    mean, cov = dyn.ntk_gp_mean_cov(k_tt, k_st, k_ss, t_tt, t_st, t_ss, y, lr=1.0, times=[0.0, np.inf])
    assert mean.shape == (2, m, 2) and cov.shape == (2, m, m)
    np.testing.assert_allclose(mean[0], 0.0, atol=1e-14)
    np.testing.assert_allclose(cov[0], k_ss, atol=1e-14)
    # Eq. 16 written out
    a = t_st @ np.linalg.inv(t_tt)
    np.testing.assert_allclose(mean[1], a @ y, rtol=1e-8, atol=1e-10)
    ref = k_ss + a @ k_tt @ a.T - a @ k_st.T - k_st @ a.T
    np.testing.assert_allclose(cov[1], ref, rtol=1e-7, atol=1e-9)
    # Theta = K at t = inf: the NNGP posterior, Eq. 13
    mean_k, cov_k = dyn.ntk_gp_mean_cov(k_tt, k_st, k_ss, k_tt, k_st, k_ss, y, lr=1.0, times=[np.inf])
    mu, sigma = dyn.nngp_posterior(k_tt, k_st, k_ss, y)
    np.testing.assert_allclose(mu, k_st @ np.linalg.solve(k_tt, y), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(sigma, k_ss - k_st @ np.linalg.solve(k_tt, k_st.T), rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(mean_k[0], mu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(cov_k[0], sigma, rtol=1e-6, atol=1e-9)
    # diag_reg is observation noise on the training targets
    mu_r, sigma_r = dyn.nngp_posterior(k_tt, k_st, k_ss, y, diag_reg=0.3)
    np.testing.assert_allclose(mu_r, k_st @ np.linalg.solve(k_tt + 0.3 * np.eye(n), y), rtol=1e-10)
    assert np.all(np.diag(sigma_r) > np.diag(sigma))


def test_ntk_gp_with_theta_equal_k_is_readout_gp():
    """Chen's notes Sec. 5: Eq. 15 with Theta = K is S23 (with e^{-2 eta K t}), Eq. 14 is S22."""
    (k_tt, k_st, k_ss), _, y, _, _, _ = _kernels(1)
    times = [0.0, 0.4, 3.0, np.inf]
    m1, c1 = dyn.ntk_gp_mean_cov(k_tt, k_st, k_ss, k_tt, k_st, k_ss, y, lr=0.6, times=times)
    m2, c2 = dyn.readout_mean_cov(k_tt, k_st, k_ss, y, lr=0.6, times=times)
    np.testing.assert_allclose(m1, m2, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c1, c2, rtol=1e-7, atol=1e-9)
    mu, sigma = dyn.nngp_posterior(k_tt, k_st, k_ss, y)
    np.testing.assert_allclose(m2[-1], mu, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(c2[-1], sigma, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(c2[0], k_ss, atol=1e-14)


def test_ntk_gp_monte_carlo_in_function_space():
    """f0 ~ N(0, K) drawn explicitly; each draw trained by the linear flow (Eqs. 10-11)."""
    (k_tt, k_st, k_ss), (t_tt, t_st, t_ss), y, phi, n, m = _kernels(2, width=12)
    rng = np.random.default_rng(5)
    s, times, eta = 40000, [0.0, 0.3, 2.0], 0.5
    f0_all = phi @ rng.normal(size=(phi.shape[1], s))  # exactly N(0, phi phi^T) = N(0, K)
    y0 = y[:, :1]
    traj = dyn.gradient_flow_mse(t_tt, f0_all[:n], np.repeat(y0, s, axis=1), lr=eta, times=times,
                                 theta_test_train=t_st, f0_test=f0_all[n:])
    mean, cov = dyn.ntk_gp_mean_cov(k_tt, k_st, k_ss, t_tt, t_st, t_ss, y0, lr=eta, times=times)
    for i in range(len(times)):
        samples = traj.test[i]  # (m, s)
        sd = np.sqrt(np.diag(cov[i]))
        se_mean = sd / np.sqrt(s)
        assert np.all(np.abs(samples.mean(1) - mean[i, :, 0]) < 5 * se_mean)
        emp = np.cov(samples)
        se_cov = np.sqrt((np.outer(sd, sd) ** 2 + cov[i] ** 2) / s)
        assert np.all(np.abs(emp - cov[i]) < 5 * se_cov)
    # mean and covariance do evolve well beyond the Monte Carlo error
    assert np.abs(cov[1] - cov[0]).max() > 20 * se_cov.max()
    assert np.abs(cov[2] - cov[1]).max() > 20 * se_cov.max()
    assert np.abs(mean[2] - mean[1]).max() > 100 * se_mean.max()


# ----------------------------------------------------------------------------------------------
# 6. readout-only training (S20-S23) of a real MLP


def test_readout_only_training_matches_s22_s23():
    model = make_mlp(width=128, depth=2, out_dim=1, activation="relu", w_var=2.0, b_var=0.1)
    n, m, e = 8, 3, 1000
    kx, kt, kp, kr = jax.random.split(jax.random.PRNGKey(11), 4)
    x = jax.random.normal(kx, (n, N0))
    x_test = x[:m] + 0.3 * jax.random.normal(kt, (m, N0))  # near training points: informative S23
    y = jnp.cos(2.0 * x[:, :1])
    params = _init(model, kp, x)
    apply_fn = lambda p, xx: model.apply({"params": p}, xx)  # noqa: E731
    readout = "dense_2"
    # ensemble: same hidden layers, fresh readout (w, b) ~ N(0, 1) (NTK param.), antithetic pairs
    half = jax.tree_util.tree_map(
        lambda a: jax.random.normal(kr, (e // 2,) + a.shape, a.dtype), params[readout])
    draws = jax.tree_util.tree_map(lambda a: jnp.concatenate([a, -a]), half)
    batched = {**jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (e,) + a.shape), params),
               readout: draws}
    labels = {name: ("train" if name == readout else "freeze") for name in params}
    lr, n_steps, record = 0.05, 240, (0, 40, 240)
    opt = optax.multi_transform({"train": optax.sgd(lr), "freeze": optax.set_to_zero()}, labels)
    step = make_train_step(apply_fn, mse_loss, opt)

    @jax.jit
    def train(p):
        def body(carry, _):
            q, st = carry
            q, st, _ = step(q, st, x, y)
            return (q, st), (apply_fn(q, x_test))
        _, outs = jax.lax.scan(body, (p, opt.init(p)), None, length=n_steps)
        return jnp.concatenate([apply_fn(p, x_test)[None], outs])  # outputs after 0..n_steps steps

    outs = np.asarray(jax.vmap(train)(batched))[..., 0][:, list(record)]  # (e, T, m)
    k_hat = np.asarray(mlp_nngp(model, params, jnp.concatenate([x, x_test])))
    k_tt, k_st, k_ss = k_hat[:n, :n], k_hat[n:, :n], k_hat[n:, n:]
    times = lr * np.array(record)  # flow time with lr = 1 on the mean loss
    mean, cov = dyn.readout_mean_cov(k_tt, k_st, k_ss, y, lr=1.0, times=times, loss_scale="mean")
    # mean: antithetic pairs cancel f0 exactly, leaving S22 up to the Euler discretisation
    np.testing.assert_allclose(outs.mean(0), mean[:, :, 0], atol=5e-3 * np.abs(mean).max() + 1e-12)
    assert np.abs(mean[-1]).max() > 0.1
    # covariance S23 within Monte Carlo error (e draws; antithetic pairs give the same second moments)
    for i in range(len(record)):
        emp = np.cov(outs[:, i, :].T)
        sd = np.sqrt(np.diag(cov[i]))
        se = np.sqrt((np.outer(sd, sd) ** 2 + cov[i] ** 2) / (e // 2))
        assert np.all(np.abs(emp - cov[i]) < 5 * se + 1e-2 * sd.max() ** 2)
    assert np.abs(np.diag(cov[-1]) - np.diag(cov[0])).max() > 10 * se.max()


# ----------------------------------------------------------------------------------------------
# 7. divergence


def test_gd_divergence_is_returned_not_raised():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(6, 10))
    theta = feats @ feats.T / 10
    f0, y = rng.normal(size=(6, 1)), rng.normal(size=(6, 1))
    lam_max = np.linalg.eigvalsh(theta).max()
    steps = [0, 5, 10, 20, 40, 3000, 10**6, np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning either
        out = dyn.gradient_descent_mse(theta, f0, y, lr=2.2 / lam_max, steps=steps,
                                       theta_test_train=theta[:2], f0_test=f0[:2])
        mom = dyn.momentum_mse(theta, f0, y, lr=4.5 / lam_max, momentum=0.9, steps=[0, 10, 100, 10**5])
        ok = dyn.gradient_descent_mse(theta, f0, y, lr=1.9 / lam_max, steps=[10**6, np.inf])
    with np.errstate(all="ignore"):
        norms = np.linalg.norm((out.train - y).reshape(len(steps), -1), axis=1)
        m_norms = np.linalg.norm((mom.train - y).reshape(4, -1), axis=1)
    assert np.all(np.diff(norms[1:5]) > 0)  # growing like 1.2^s
    assert not np.all(np.isfinite(out.train[-3:]))
    assert not np.all(np.isfinite(out.test[-1]))
    assert m_norms[2] > 1e3 * m_norms[0] and not np.all(np.isfinite(mom.train[-1]))
    np.testing.assert_allclose(ok.train, np.broadcast_to(y, (2, 6, 1)), atol=1e-10)


# ----------------------------------------------------------------------------------------------
# 8. float32 inputs, float64 answers; argument checks


def test_float32_inputs_give_float64_accurate_results():
    lam = np.array([2.0**-20, 2.0**-10, 0.5, 1.0, 3.0], dtype=np.float32)
    q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(5, 5)))
    q32 = q.astype(np.float32)
    theta32 = ((q32 * lam) @ q32.T).astype(np.float32)
    theta32 = (theta32 + theta32.T) / np.float32(2)  # exactly symmetric float32 numbers
    f0, y = np.ones((5, 1), np.float32), np.zeros((5, 1), np.float32)
    times = [0.0, 1.0, 1000.0]
    out = dyn.gradient_flow_mse(theta32, f0, y, lr=1.0, times=times)
    assert out.train.dtype == np.float64
    # exact answer for exactly these float32 numbers, computed independently in float64
    th = theta32.astype(np.float64)
    w, v = np.linalg.eigh(th)
    for i, t in enumerate(times):
        ref = v @ (np.exp(-w * t)[:, None] * (v.T @ f0.astype(np.float64)))
        np.testing.assert_allclose(out.train[i], ref, rtol=0, atol=1e-12)
    # gd with tiny eta * lambda (accurate log1p path) and jax float32 arrays
    gd = dyn.gradient_descent_mse(jnp.asarray(theta32), jnp.asarray(f0), jnp.asarray(y), lr=1e-3,
                                  steps=[10**6])
    ref = v @ (np.power(1 - 1e-3 * w, 10**6)[:, None] * (v.T @ f0.astype(np.float64)))
    np.testing.assert_allclose(gd.train[0], ref, rtol=1e-9, atol=1e-13)
    mean, cov = dyn.readout_mean_cov(theta32, theta32[:2], theta32[:2, :2], f0, lr=1.0, times=[5.0])
    assert mean.dtype == np.float64 and cov.dtype == np.float64


def test_argument_checks():
    theta, f0, y = np.eye(3), np.zeros((3, 1)), np.ones((3, 1))
    with pytest.raises(ConfigError):
        dyn.gradient_flow_mse(theta, f0, y, lr=-1.0, times=[1.0])
    with pytest.raises(ConfigError):
        dyn.gradient_flow_mse(np.eye(4), f0, y, lr=1.0, times=[1.0])
    with pytest.raises(ConfigError):
        dyn.gradient_flow_mse(theta, f0, y, lr=1.0, times=[-1.0])
    with pytest.raises(ConfigError):
        dyn.gradient_descent_mse(theta, f0, y, lr=1.0, steps=[1.5])
    with pytest.raises(ConfigError):
        dyn.gradient_flow_mse(theta, f0, y, lr=1.0, times=[1.0], loss_scale="median")
    with pytest.raises(ConfigError):
        dyn.xent_ode(theta, f0, y, lr=1.0, times=[2.0, 1.0])
    # a 1-D target is k = 1; loss_scale "mean" is 1/N
    a = dyn.gradient_flow_mse(theta, f0[:, 0], y[:, 0], lr=3.0, times=[1.0], loss_scale="mean")
    b = dyn.gradient_flow_mse(theta, f0, y, lr=1.0, times=[1.0])
    assert a.train.shape == (1, 3, 1) and a.test is None
    np.testing.assert_allclose(a.train, b.train, rtol=1e-14)
