"""lee-2 / lee-s1: the exact input projection used to train the ensemble, and the claim statistics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from experiments import lee_predictive as L
from ntkrepro.nets import init_params, make_mlp


def _full_and_projected(seed=0, n=6, n0=20, width=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n0))
    alphas = np.linspace(-0.5, 1.5, 5)
    xs = alphas[:, None] * x[0] + (1 - alphas[:, None]) * x[1]
    y = rng.choice([-1.0, 1.0], size=n)
    model = make_mlp(width=width, depth=3, activation="tanh", w_var=1.5, b_var=0.0)
    p_full = init_params(model, jax.random.PRNGKey(seed), jnp.asarray(x))
    c, cs = L.project(x, xs)
    q, _ = np.linalg.qr(x.T)
    ws = [p_full[f"dense_{l}"]["kernel"] for l in range(4)]
    p_proj = {"w": [jnp.asarray(q.T) @ ws[0]] + ws[1:], "b": [jnp.zeros((0,))] * 4}
    return model, p_full, p_proj, x, xs, c, cs, y


def _f_proj(p, c, n0):
    return L.apply_mlp(p, c, fan_in=n0, activation="tanh", w_var=1.5, b_var=0.0)


def test_projection_gives_the_full_networks_outputs_and_gradient_steps():
    model, p_full, p_proj, x, xs, c, cs, y = _full_and_projected()
    n0 = x.shape[1]
    f_full = lambda p, a: model.apply({"params": p}, a)[:, 0]
    np.testing.assert_allclose(_f_proj(p_proj, cs, n0), f_full(p_full, xs), rtol=1e-10, atol=1e-12)
    # a few GD steps on 1/(2N) sum (f - y)^2: same outputs on the path at every step
    lf = lambda p: 0.5 * jnp.mean((f_full(p, x) - y) ** 2)
    lp = lambda p: 0.5 * jnp.mean((_f_proj(p, c, n0) - y) ** 2)
    for _ in range(3):
        p_full = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p_full, jax.grad(lf)(p_full))
        p_proj = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p_proj, jax.grad(lp)(p_proj))
        np.testing.assert_allclose(_f_proj(p_proj, cs, n0), f_full(p_full, xs), rtol=1e-9, atol=1e-11)


def test_train_ensemble_matches_a_plain_loop():
    _, _, p_proj, x, xs, c, cs, y = _full_and_projected(seed=1)
    cfg = OmegaConf.create(dict(id="t", seed=3, ensemble=3, ensemble_chunk=2, width=8, depth=3,
                                activation="tanh", w_var=1.5, b_var=0.0, lr=0.5, loss_scale="mean",
                                train_dtype="float64"))
    f, loss = L.train_ensemble(cfg, x.shape[1], c, y[:, None], cs, np.array([0, 2, 5]))
    assert f.shape == (3, 3, len(xs)) and loss.shape == (3, 3)
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    p = L.init_mlp(keys[2], c.shape[1], 8, 3, jnp.float64, 0.0)
    lp = lambda p: 0.5 * jnp.mean((_f_proj(p, c, x.shape[1]) - y) ** 2)
    for _ in range(5):
        p = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p, jax.grad(lp)(p))
    np.testing.assert_allclose(f[2, 2], _f_proj(p, cs, x.shape[1]), rtol=1e-10)


def _metrics(ens_mean, ens_std, mu, sigma, m):
    rows = []
    for src, (a, b) in {"ensemble": (ens_mean, ens_std), "ntk_gp": (mu, sigma), "nngp": (mu, sigma),
                        "nngp_posterior": (mu, sigma)}.items():
        for i, (u, v) in enumerate(zip(a, b)):
            rows += [dict(source=src, stat="mean", time=0, alpha=float(i), member=-1, value=u),
                     dict(source=src, stat="std", time=0, alpha=float(i), member=-1, value=v)]
    rows.append(dict(source="ensemble", stat="n_members", time=0, alpha=np.nan, member=-1, value=m))
    return pd.DataFrame(rows)


def test_discrepancy_is_in_units_of_the_standard_error():
    sigma = np.array([1.0, 2.0, 2.0, 1.0])
    m = 101
    se = np.sqrt(np.mean(sigma ** 2) / m)
    d = L.discrepancies(_metrics(np.full(4, 2.0 * se), sigma, np.zeros(4), sigma, m))
    assert abs(d[0][0] - 2.0) < 1e-12 and d[0][1] == 0.0
    se_std = np.sqrt(np.mean(sigma ** 2) / (2 * (m - 1)))
    d = L.discrepancies(_metrics(np.zeros(4), sigma + 3.0 * se_std, np.zeros(4), sigma, m))
    assert d[0][0] == 0.0 and abs(d[0][1] - 3.0) < 1e-12
