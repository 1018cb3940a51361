"""lee-2 / lee-s1: the exact input projection used to train the ensemble, and the claim statistics."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments import lee_predictive as L
from ntkrepro.models import ModelSpec, span_coordinates
from ntkrepro.registry import CONF_DIR
from ntkrepro.train import Trainer, fit

jax.config.update("jax_enable_x64", True)


def _full_and_projected(seed=0, n=6, n0=20, width=16):
    """A network on x and the same network on the coordinates c of x in span(x) (ModelSpec with
    input_fan_in=n0, first-layer weights Q^T W1)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n0))
    alphas = np.linspace(-0.5, 1.5, 5)
    xs = alphas[:, None] * x[0] + (1 - alphas[:, None]) * x[1]
    y = rng.choice([-1.0, 1.0], size=(n, 1))
    spec = ModelSpec(width=width, depth=3, activation="tanh", w_var=1.5, b_var=0.0)
    p_full = spec.init(jax.random.PRNGKey(seed), jnp.asarray(x))
    c, cs = span_coordinates(x, xs)
    q, _ = np.linalg.qr(x.T)
    p_proj = {**p_full, "dense_0": {"kernel": jnp.asarray(q.T) @ p_full["dense_0"]["kernel"]}}
    return spec, spec.replace(input_fan_in=n0), p_full, p_proj, x, xs, c, cs, y


def test_projection_gives_the_full_networks_outputs_and_gradient_steps():
    spec, proj, p_full, p_proj, x, xs, c, cs, y = _full_and_projected()
    np.testing.assert_allclose(proj.apply(p_proj, cs), spec.apply(p_full, xs), rtol=1e-10, atol=1e-12)
    # a few GD steps on 1/(2N) sum (f - y)^2 (`fit`): same outputs on the path at every step
    steps = [1, 2, 3]
    full = fit(Trainer(spec.apply, lr=0.5), p_full, x, y, steps=3, record_at=steps,
               observe=lambda s, st: spec.apply(st.variable, xs))
    part = fit(Trainer(proj.apply, lr=0.5), p_proj, c, y, steps=3, record_at=steps,
               observe=lambda s, st: proj.apply(st.variable, cs))
    assert full.steps == part.steps == steps
    for a, b in zip(part.records, full.records):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


def _old_init_mlp(key, d_in, width, depth, dtype):
    """The hand-written initialisation lee_predictive used before the study layer (no bias)."""
    sizes = [d_in] + [width] * depth + [1]
    keys = jax.random.split(key, 2 * len(sizes))
    return [jax.random.normal(keys[2 * i], (a, b), dtype) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))]


def test_draw_params_repeats_the_earlier_draws():
    spec = ModelSpec(width=8, depth=3, activation="tanh", w_var=1.5, input_fan_in=20)
    x = jnp.zeros((2, 6), jnp.float32)
    p = L.draw_params(spec, jax.random.PRNGKey(4), x, jnp.float32)
    for l, w in enumerate(_old_init_mlp(jax.random.PRNGKey(4), 6, 8, 3, jnp.float32)):
        np.testing.assert_array_equal(p[f"dense_{l}"]["kernel"], w)
    assert set(p) == {f"dense_{l}" for l in range(4)}


def test_train_ensemble_matches_a_plain_loop():
    _, proj, _, _, x, xs, c, cs, y = _full_and_projected(seed=1)
    cfg = OmegaConf.create(dict(id="t", seed=3, ensemble=3, ensemble_chunk=2, lr=0.5, loss_scale="mean",
                                train_dtype="float64"))
    spec = proj.replace(width=8)
    f, loss = L.train_ensemble(cfg, spec, c, y, cs, np.array([0, 2, 5]))
    assert f.shape == (3, 3, len(xs)) and loss.shape == (3, 3)
    key = jax.random.fold_in(jax.random.PRNGKey(3), 2)   # member 2's key: from (seed, member) only
    p = L.draw_params(spec, key, c, jnp.float64)
    lp = lambda p: 0.5 * jnp.mean((spec.apply(p, c) - y) ** 2)  # noqa: E731
    for _ in range(5):
        p = jax.tree_util.tree_map(lambda a, g: a - 0.5 * g, p, jax.grad(lp)(p))
    np.testing.assert_allclose(f[2, 2], spec.apply(p, cs)[:, 0], rtol=1e-10)
    np.testing.assert_allclose(loss[2, 2], lp(p), rtol=1e-10)
    # a member is the same network however the ensemble is chunked (split runs: chunks are the points)
    cfg1 = OmegaConf.merge(cfg, {"ensemble_chunk": 1})
    assert L.points(cfg) == [{"chunk": 0}, {"chunk": 1}] and len(L.points(cfg1)) == 3
    f1, _ = L.train_ensemble(cfg1, spec, c, y, cs, np.array([0, 2, 5]))
    np.testing.assert_allclose(f1, f, rtol=1e-12, atol=1e-14)


def _metrics(ens_mean, ens_std, mu, sigma, m):
    """Metrics whose m members have exactly the given mean and std (ddof 1) at each alpha."""
    z = np.random.default_rng(0).standard_normal(m)
    z = (z - z.mean()) / z.std(ddof=1)
    rows = []
    for src in ("ntk_gp", "nngp", "nngp_posterior"):
        for i, (u, v) in enumerate(zip(mu, sigma)):
            rows += [dict(source=src, stat="mean", time=0, alpha=float(i), member=-1, value=u),
                     dict(source=src, stat="std", time=0, alpha=float(i), member=-1, value=v)]
    for i, (u, v) in enumerate(zip(ens_mean, ens_std)):
        rows += [dict(source="member", stat="f", time=0, alpha=float(i), member=k, value=u + v * z[k])
                 for k in range(m)]
    return pd.DataFrame(rows)


def test_discrepancy_is_in_units_of_the_standard_error():
    sigma = np.array([1.0, 2.0, 2.0, 1.0])
    m = 101
    se = np.sqrt(np.mean(sigma ** 2) / m)
    d = L.discrepancies(_metrics(np.full(4, 2.0 * se), sigma, np.zeros(4), sigma, m))
    assert abs(d[0][0] - 2.0) < 1e-9 and d[0][1] < 1e-9
    se_std = np.sqrt(np.mean(sigma ** 2) / (2 * (m - 1)))
    d = L.discrepancies(_metrics(np.zeros(4), sigma + 3.0 * se_std, np.zeros(4), sigma, m))
    assert d[0][0] < 1e-9 and abs(d[0][1] - 3.0) < 1e-9


def test_a_diverged_member_fails_the_claims_and_claims_carry_kind_and_cite():
    sigma = np.ones(4)
    metrics = _metrics(np.zeros(4), sigma, np.zeros(4), sigma, 30)
    cfg = OmegaConf.create({"view": "distribution", "claims": {"max_discrepancy": 3.5,
                                                               "min_nngp_discrepancy": 3.5}})
    ok = L.claims(metrics, cfg)
    assert [c.status for c in ok[:2]] == ["PASS", "PASS"]
    assert all(c.kind == "paper" and c.cite.startswith("Lee et al. 2019") for c in ok)
    metrics.loc[metrics.member == 3, "value"] = np.nan  # one network diverged: never silently dropped
    assert [c.status for c in L.claims(metrics, cfg)[:2]] == ["FAIL", "FAIL"]


def test_s1_composes_fig_2_and_holds_only_what_differs():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        f2, s1 = (OmegaConf.to_container(compose("config", overrides=[f"figure={i}"]).figure, resolve=True)
                  for i in ("lee-2", "lee-s1"))
    assert s1["paper"]["view"] == "functions" and f2["paper"]["view"] == "distribution"
    assert set(s1["paper"]["claims"]) - set(f2["paper"]["claims"]) == {"min_coverage", "coverage_floor"}
    for block in ("paper", "cpu", "smoke"):
        rest = {k: v for k, v in s1[block].items() if k not in ("view", "claims")}
        assert rest == {k: v for k, v in f2[block].items() if k not in ("view", "claims")}
    assert s1["paper"]["task"]["n_train"] == 128 and s1["paper"]["task"]["classes"] == ["airplane", "horse"]
