"""The wide residual network of Lee et al. (Table S1, `ntkrepro.wrn`) and figure lee-4: output sizes,
parameter counts, parameterization, batch-statistics linearization, bad input, the configs."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers import SHARED_DATA, cli, error_line, finished_runs
from ntkrepro import wrn
from ntkrepro.convnet import ConvNTK
from ntkrepro.errors import ConfigError
from ntkrepro.models import ModelSpec
from ntkrepro.registry import CONF_DIR, SCALES
from ntkrepro.runner import effective_settings, load_experiment
from ntkrepro.train import Trainer
from ntkrepro.validate import validate_settings


def _x(n=4, side=32, seed=0, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal((n, side, side, 3)), dtype)


def _settings(scale: str, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["figure=lee-4", f"scale={scale}", *overrides])
    return effective_settings(cfg, list(overrides))


# ---------------------------------------------------------------------------------------------- table


@pytest.mark.parametrize("blocks", [1, 2])
def test_output_sizes_per_group_are_table_s1(blocks):
    rows = wrn.table_s1(wrn.make_wrn(channels=3, blocks=blocks, out_dim=4))
    assert [r["group"] for r in rows] == ["conv1", "conv2", "conv3", "conv4", "avg-pool", "readout"]
    assert [r["output_size"] for r in rows[:5]] == ["32 x 32", "32 x 32", "16 x 16", "8 x 8", "1 x 1"]
    assert rows[1]["block_symbolic"] == "[3x3, C; 3x3, C] x N"
    assert rows[1]["block_type"] == f"[3x3, 3; 3x3, 3] x {blocks}"
    assert rows[0]["block_symbolic"] == "[3x3, C]" and rows[4]["block_symbolic"] == "[8x8]"


@pytest.mark.parametrize("b_var", [0.0, 0.1])
def test_parameter_counts_from_eval_shape_equal_counting_by_hand(b_var):
    c, n, k = 3, 2, 4
    bias = c if b_var > 0 else 0
    conv3x3 = 9 * c * c + bias
    block = 2 * (2 * c) + 2 * conv3x3                      # two batch norms (scale, shift), two convs
    projection = c * c + bias                              # 1x1 shortcut, first block of conv3 / conv4
    expected = {"conv1": 9 * 3 * c + bias, "conv2": n * block, "conv3": n * block + projection,
                "conv4": n * block + projection, "avg-pool": 2 * c, "readout": c * k + (k if b_var > 0 else 0)}
    rows = wrn.table_s1(wrn.make_wrn(channels=c, blocks=n, out_dim=k, b_var=b_var))
    assert {r["group"]: r["params"] for r in rows} == expected
    spec = ModelSpec(arch="wrn", width=c, depth=wrn.depth_from_blocks(n), out_dim=k, w_var=1.0, b_var=b_var)
    assert spec.n_params(_x(1)) == sum(expected.values())


def test_paper_network_table():
    rows = wrn.table_s1(wrn.make_wrn(channels=1024, blocks=1, out_dim=10))
    conv = 9 * 1024 * 1024
    assert rows[1]["params"] == 2 * conv + 4 * 1024
    assert rows[2]["params"] == 2 * conv + 4 * 1024 + 1024 * 1024
    assert "projection" in rows[2]["block_type"] and "projection" not in rows[1]["block_type"]


def test_table_claims_pass_for_the_generated_table():
    from experiments import lee_wrn
    import pandas as pd

    cfg = _settings("smoke")
    spec = lee_wrn.model_spec(cfg, 10)
    metrics = pd.DataFrame(lee_wrn.table_rows(cfg, spec))
    out = lee_wrn.table_claims(metrics, cfg)
    assert [c.status for c in out] == ["PASS", "PASS"] and all(c.kind == "check" for c in out)
    bad = metrics.copy()
    bad.loc[(bad.group == "conv3") & (bad.net == "run"), "output_side"] = 15
    assert lee_wrn.table_claims(bad, cfg)[0].status == "FAIL"


# ---------------------------------------------------------------------------------------------- layers


def test_ntk_parameterization_scale():
    x = _x(2, side=8)
    conv = ConvNTK(5, w_var=2.0, parameterization="ntk", kernel_size=(1, 1), strides=(2, 2), padding="VALID")
    p = conv.init(jax.random.PRNGKey(0), x)["params"]
    expected = math.sqrt(2.0 / 3) * jax.lax.conv_general_dilated(
        x, p["kernel"], (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv.apply({"params": p}, x), expected, rtol=1e-12)
    # omega ~ N(0, 1) in the NTK parameterization, N(0, sigma_w^2 / fan_in) in the standard one
    for param, std in (("ntk", 1.0), ("standard", math.sqrt(1.0 / (9 * 64)))):
        m = wrn.make_wrn(channels=64, blocks=1, out_dim=2, parameterization=param)
        k = m.init(jax.random.PRNGKey(1), _x(1))["params"]["conv2"]["block_0"]["conv_a"]["kernel"]
        np.testing.assert_allclose(float(jnp.std(k)), std, rtol=0.03)
    # the readout: f = sigma_w / sqrt(C) h . omega in the NTK parameterization
    m = wrn.make_wrn(channels=64, blocks=1, out_dim=2, w_var=2.0)
    p = m.init(jax.random.PRNGKey(2), _x(2))["params"]
    _, state = m.apply({"params": p}, _x(2), mutable=["intermediates"])
    h = state["intermediates"]["out_avg-pool"][0].reshape(2, -1)
    np.testing.assert_allclose(m.apply({"params": p}, _x(2)), math.sqrt(2.0 / 64) * h @ p["readout"]["kernel"],
                               rtol=1e-10)


def test_stride_two_samples_the_projection_pixels():
    """Padding 1: the 3x3 stride-2 convolution is centred on the pixels the 1x1 projection reads."""
    x = _x(1, side=8)
    w = jnp.zeros((3, 3, 3, 3)).at[1, 1].set(jnp.eye(3))   # identity at the centre tap
    y3 = ConvNTK(3, w_var=27.0, strides=(2, 2), padding=wrn.PAD3).apply({"params": {"kernel": w}}, x)
    y1 = ConvNTK(3, w_var=3.0, kernel_size=(1, 1), strides=(2, 2), padding="VALID").apply(
        {"params": {"kernel": jnp.eye(3)[None, None]}}, x)
    np.testing.assert_allclose(y3, y1, rtol=1e-12)


def test_batch_norm_uses_the_statistics_of_its_batch():
    m = wrn.make_wrn(channels=4, blocks=1, out_dim=3)
    x = _x(8)
    p = m.init(jax.random.PRNGKey(0), x)["params"]
    f = lambda x: m.apply({"params": p}, x)
    assert not np.allclose(f(x)[:4], f(x[:4]))             # companions in the batch matter
    grouped = wrn.BatchStats(lambda q, x: m.apply({"params": q}, x), 4)
    np.testing.assert_allclose(grouped(p, x), jnp.concatenate([f(x[:4]), f(x[4:])]), rtol=1e-12)
    with pytest.raises(ConfigError, match="multiple of 4"):
        grouped(p, x[:6])


# ---------------------------------------------------------------------------------------------- linearization


def test_linearization_equals_the_network_at_theta0_and_so_does_its_gradient():
    spec = ModelSpec(arch="wrn", width=4, depth=10, out_dim=3, w_var=1.0, b_var=0.0)
    x = _x(4)
    y = jnp.asarray(np.random.default_rng(1).standard_normal((4, 3)))
    p0 = spec.init(jax.random.PRNGKey(0), x)
    net = Trainer(spec.apply, loss="mse", delta=True)
    lin = net.linearization()
    zero = jax.tree_util.tree_map(jnp.zeros_like, p0)
    np.testing.assert_allclose(lin.model_output(p0, zero, x), spec.apply(p0, x), rtol=1e-12)
    g_net = jax.grad(net._objective, argnums=1)(p0, zero, x, y)
    g_lin = jax.grad(lin._objective, argnums=1)(p0, zero, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(g_net), jax.tree_util.tree_leaves(g_lin)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    # first order: the gap between f and f_lin at theta_0 + eps v is O(eps^2) (a smooth activation,
    # so that no ReLU kink is crossed)
    smooth = spec.replace(activation="tanh")
    net, lin = Trainer(smooth.apply, delta=True), Trainer(smooth.apply, linearized=True)
    v = jax.tree_util.tree_map(lambda a: jnp.ones_like(a) * 0.1, p0)
    gaps = []
    for eps in (1e-2, 5e-3):
        d = jax.tree_util.tree_map(lambda a: eps * a, v)
        gaps.append(float(jnp.max(jnp.abs(net.model_output(p0, d, x) - lin.model_output(p0, d, x)))))
    assert 3.5 < gaps[0] / gaps[1] < 4.5


def test_empirical_ntk_matches_the_jacobian():
    spec = ModelSpec(arch="wrn", width=2, depth=10, out_dim=2, w_var=1.0, b_var=0.1)
    x1, x2 = _x(3, seed=1), _x(2, seed=2)
    p = spec.init(jax.random.PRNGKey(0), x1)
    theta = spec.empirical_ntk(p, x1, x2, trace=False)
    jac = jax.jacobian(lambda q: spec.apply(q, jnp.concatenate([x1, x2])))(p)
    flat = jnp.concatenate([a.reshape(5, 2, -1) for a in jax.tree_util.tree_leaves(jac)], axis=-1)
    expected = jnp.einsum("iap,jcp->ijac", flat[:3], flat[3:])
    np.testing.assert_allclose(theta, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(spec.empirical_ntk(p, x1), jnp.einsum(
        "iap,jap->ij", *[jnp.concatenate([a.reshape(3, 2, -1) for a in jax.tree_util.tree_leaves(
            jax.jacobian(lambda q: spec.apply(q, x1))(p))], axis=-1)] * 2), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kw,message", [
    (dict(channels=0), "channels must be a positive integer"),
    (dict(blocks=0), "blocks (N) must be a positive integer"),
    (dict(pool=0), "pool must be a positive integer"),
])
def test_bad_network_settings(kw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        wrn.make_wrn(**{**dict(channels=4, blocks=1, out_dim=10), **kw})


def test_depth_must_be_6n_plus_4_and_pooling_must_divide():
    assert [wrn.blocks_from_depth(d) for d in (10, 16, 22)] == [1, 2, 3]
    for d in (4, 12, 15):
        with pytest.raises(ConfigError, match="depth 6N \\+ 4"):
            wrn.blocks_from_depth(d)
    wrn.check_geometry((32, 32), 8)
    with pytest.raises(ConfigError, match="8x8 average pooling does not divide conv4's 4x4 map"):
        wrn.check_geometry((16, 16), 8)
    with pytest.raises(ConfigError, match="pool"):
        ModelSpec(arch="wrn", width=4, depth=10, out_dim=2, w_var=1.0).init(jax.random.PRNGKey(0), _x(1, side=24))


@pytest.mark.parametrize("override,message", [
    ("figure.paper.depth=12", "wide residual network has depth 6N + 4"),
    ("figure.paper.depth=16", "depth=16 means N = 2 blocks per group but blocks=1"),
    ("figure.paper.task.image_pool=2", "8x8 average pooling does not divide conv4's 4x4 map"),
    ("figure.paper.batch_size=128", "batch_size=128 is larger than the 64 training images"),
    ("figure.paper.n_eval_train=12", "n_eval_train=12 must be a positive multiple of batch_size=8"),
])
def test_bad_experiment_settings_in_process(override, message):
    from experiments import lee_wrn

    cfg = _settings("smoke", override)
    with pytest.raises(ConfigError) as err:
        lee_wrn.model_spec(cfg, 10)
        lee_wrn.check_sizes(cfg, int(cfg.task.n_train), int(cfg.task.n_test))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("args,message", [
    (["figure.paper.channels=0"], "figure.paper.channels must be a positive integer, got 0"),
    (["figure.paper.batch_size=128"], "batch_size=128 is larger than the 64 training images"),
    (["figure.paper.depth=12"], "wide residual network has depth 6N + 4"),
])
def test_bad_input_gives_one_line_exit_2_and_no_folder(tmp_path, args, message):
    res = cli("figure=lee-4", "scale=smoke", *args, out_root=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    line = error_line(res)
    assert line.startswith("error: ") and message in line
    assert finished_runs(tmp_path) == [] and not [f for f in tmp_path.rglob("*") if f.is_file()]


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("scale", SCALES)
def test_presets_compose_and_validate(scale):
    from experiments import lee_wrn

    cfg = _settings(scale)
    validate_settings(OmegaConf.to_container(cfg, resolve=True), "lee-4")
    assert load_experiment(cfg.experiment) is lee_wrn
    spec = lee_wrn.model_spec(cfg, 10)
    lee_wrn.check_sizes(cfg, int(cfg.task.n_train), int(cfg.task.n_test))
    if scale == "paper":   # the caption's settings
        assert (cfg.channels, cfg.blocks, cfg.lr, cfg.momentum, cfg.batch_size) == (1024, 1, 1.0, 0.9, 8)
        assert (cfg.w_var, cfg.b_var, cfg.task.n_train, cfg.loss) == (1.0, 0.0, 50000, "mse_per_output")
        assert spec.depth == 10 and spec.width == 1024


@pytest.mark.skipif(not (SHARED_DATA / "cifar10_partial.npz").is_file(), reason="shared data root absent")
def test_paper_scale_with_the_shared_data_root_stops_with_the_available_count(tmp_path):
    res = cli("figure=lee-4", "scale=paper", f"data.root={SHARED_DATA}", out_root=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    line = error_line(res)
    assert "asked for 50000 train examples of cifar10" in line and "holds 5085" in line
    if jax.default_backend() != "gpu":  # device=auto: the paper preset without a GPU is logged (stdout)
        assert "[WARNING] - scale=paper on jax's 'cpu' backend (no GPU found)" in res.stdout, res.stdout[-2000:]
    assert not [f for f in tmp_path.rglob("*") if f.is_file()]


def test_host_loop_trains_exactly_like_the_compiled_loop():
    """`fit(host_loop=True)` (used for convolutional networks on CPU) = the compiled loop."""
    from ntkrepro.train import fit

    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.standard_normal((12, 5))), jnp.asarray(rng.standard_normal((12, 2)))
    w0 = {"w": jnp.asarray(rng.standard_normal((5, 2)))}
    trainer = Trainer(lambda p, x: jnp.tanh(x @ p["w"]), loss="mse", lr=0.2, momentum=0.9, batch_size=4)
    for lin in (trainer, trainer.linearization()):
        a = fit(lin, w0, x, y, steps=9, record_at=[0, 3], seed=2)
        b = fit(lin, w0, x, y, steps=9, record_at=[0, 3], seed=2, host_loop=True)
        assert a.steps == b.steps == [0, 3, 9]
        np.testing.assert_allclose(a.state.variable["w"], b.state.variable["w"], rtol=1e-12)
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-12)


def test_bench_case_builds_and_both_steps_start_from_the_same_loss():
    from ntkrepro.bench import case_wrn

    b = case_wrn.bench("7-wrn", "quick")
    assert b.case == 7 and b.checks == [("ratio", 1, 0, case_wrn.GOAL_RATIO)]
    net, lin = (float(impl.fn()) for impl in b.impls)
    np.testing.assert_allclose(lin, net, rtol=1e-6)       # f_lin = f at theta_0


# ---------------------------------------------------------------------------------------------- scale-out, mutations


def test_points_are_the_two_models_and_the_compared_points_come_from_the_seed():
    from experiments import lee_wrn

    cfg = _settings("smoke")
    assert lee_wrn.points(cfg) == [{"model": "network"}, {"model": "linearized"}]
    labels = np.arange(40)
    sets = {"train": (None, None, labels), "test": (None, None, labels[:16])}
    a, b = lee_wrn.compared(cfg, sets), lee_wrn.compared(cfg, sets)
    assert all(np.array_equal(a[s], b[s]) for s in sets) and len(a["train"]) == cfg.n_compare
    assert len(set(a["train"].tolist())) == cfg.n_compare


def test_agreement_is_rmse_over_points_and_units_relative_to_the_network_spread():
    import pandas as pd

    from experiments import lee_wrn

    rng = np.random.default_rng(0)
    f, g = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    rows = [dict(quantity="output", model=m, split="test", step=7, index=i, unit=c, value=float(v[i, c]))
            for m, v in (("network", f), ("linearized", g)) for i in range(5) for c in range(3)]
    agree = lee_wrn.agreement(pd.DataFrame(rows[::-1]))      # order of the rows does not matter
    (row,) = agree.to_dict("records")
    np.testing.assert_allclose(row["rmse"], np.sqrt(np.mean((f - g) ** 2)), rtol=1e-12)
    np.testing.assert_allclose(row["rel_rmse"], row["rmse"] / np.std(f), rtol=1e-12)


def test_mutations_change_the_expansion_point_or_the_linearization_learning_rate():
    from experiments import lee_wrn

    cfg = _settings("smoke")
    spec = lee_wrn.model_spec(cfg, 3)
    x = _x(2, dtype=jnp.float32)
    same = [lee_wrn.initial_params(cfg, spec, m, x, jnp.float32) for m in lee_wrn.MODELS]
    assert all(np.array_equal(a, b) for a, b in zip(*map(jax.tree_util.tree_leaves, same)))
    bad = OmegaConf.merge(cfg, {"mutation": "expansion_redrawn"})
    moved = lee_wrn.initial_params(bad, spec, "linearized", x, jnp.float32)
    pairs = zip(jax.tree_util.tree_leaves(moved), jax.tree_util.tree_leaves(same[0]))
    assert not all(np.allclose(a, b) for a, b in pairs)  # (batch-norm scales are ones in both)
    assert lee_wrn.trainer(cfg, spec, "linearized").lr == lee_wrn.trainer(cfg, spec, "network").lr
    slow = lee_wrn.trainer(OmegaConf.merge(cfg, {"mutation": "lin_lr"}), spec, "linearized")
    assert slow.linearized and slow.lr == cfg.lr / 10
    assert set(lee_wrn.MUTATIONS) == {"expansion_redrawn", "lin_lr"}


def test_a_diverging_run_is_recorded_and_fails_its_claims_instead_of_stopping():
    # eta = 1e30: both models blow up within the smoke run's 6 steps; the run finishes, records which
    # model diverged, and no claim PASSes on the finite remainder (pandas' max would skip the NaNs)
    from helpers import run_in_process

    metrics, cfg, module = run_in_process("lee-4", "smoke", ["figure.paper.lr=1e30"])
    div = metrics[metrics.quantity == "diverged"].set_index("model").value
    assert div.to_dict() == {"network": 1.0, "linearized": 1.0}
    result = {c.claim: c for c in module.claims(metrics, cfg)}
    for name, c in result.items():
        if "Table S1" not in name:
            assert c.status == "FAIL", (name, c.value)
    diverged = next(c for n, c in result.items() if n.startswith("neither the WRN"))
    assert diverged.value == 2 and "network, linearized" in diverged.measure
    calm, cfg, module = run_in_process("lee-4", "smoke")
    assert calm[calm.quantity == "diverged"].value.tolist() == [0.0, 0.0]
    ok = next(c for c in module.claims(calm, cfg) if c.claim.startswith("neither the WRN"))
    assert ok.status == "PASS" and ok.measure.endswith("none")
