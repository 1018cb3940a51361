"""Block-by-block kernels (`ntkrepro.kernels.blocks`): equal to the one-shot kernel, block shape
bounded by the memory budget, resumable from disk, spread over several devices."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkrepro.errors import ConfigError
from ntkrepro.kernels.blocks import BlockPlan, blockwise, measure_block_bytes, plan_blocks
from ntkrepro.kernels.fc import fc

N0 = 8
X1 = np.random.RandomState(0).randn(37, N0)
X2 = np.random.RandomState(1).randn(23, N0)
KEY = "fc depth=3 relu w_var=2 b_var=0.1"
PPB = 100  # bytes_per_pair used where the test wants a deterministic block shape


def fc3(a, b):
    return fc(a, b, depth=3, b_var=0.1, dtype=a.dtype)


class Recorder:
    """kernel_fn wrapper: counts concrete calls (not jit traces), records block shapes and devices,
    and optionally raises after `fail_after` calls (a simulated interruption)."""

    def __init__(self, fn=fc3, fail_after=None):
        self.fn, self.fail_after = fn, fail_after
        self.calls, self.shapes, self.devices = 0, [], set()

    def __call__(self, a, b):
        if not isinstance(a, jax.core.Tracer):
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise RuntimeError("simulated interruption")
            self.calls += 1
            self.shapes.append((a.shape[0], b.shape[0]))
            self.devices |= {str(d) for x in (a, b) for d in x.devices()}
        return self.fn(a, b)


def _ref(x1, x2, dtype):
    k = fc(x1, x2, depth=3, b_var=0.1, dtype=dtype)
    return {"ntk": np.asarray(k.ntk), "nngp": np.asarray(k.nngp)}


def _model_bytes(rows, cols, itemsize, ppb=PPB):
    return itemsize * N0 * (rows + cols) + ppb * rows * cols


def _close(got, want, dtype):
    tol = 1e-12 if dtype == jnp.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


# ----------------------------------------------------------------------------------------------
# equality with the one-shot kernel

@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
@pytest.mark.parametrize("symmetric", [True, False])
def test_blockwise_equals_one_shot(dtype, symmetric):
    x2 = None if symmetric else X2
    want = _ref(X1, x2, dtype)
    itemsize = np.dtype(dtype).itemsize
    seen = []
    # budgets for ~8-, ~16-row blocks and a single block
    for side in (8, 16, 64) if dtype == jnp.float64 else (8, 64):
        rec = Recorder()
        budget = _model_bytes(side, side, itemsize)
        got = blockwise(rec, X1, x2, memory_budget=budget, bytes_per_pair=PPB, dtype=dtype,
                        outputs=("ntk", "nngp"), progress=False)
        for name in ("ntk", "nngp"):
            assert got[name].dtype == np.dtype(dtype) and got[name].shape == want[name].shape
            _close(got[name], want[name], dtype)
        if symmetric:
            np.testing.assert_array_equal(got["ntk"], got["ntk"].T)
        seen.append(max(rec.shapes))
        plan = plan_blocks(fc3, X1, x2, memory_budget=budget, bytes_per_pair=PPB, dtype=dtype)
        assert rec.calls == plan.n_blocks
    assert len(set(seen)) == len(seen)  # the budgets really forced different block sizes
    if symmetric:  # only the upper-triangular blocks are computed: g (g + 1) / 2 of g^2
        plan = plan_blocks(fc3, X1, memory_budget=_model_bytes(8, 8, itemsize),
                           bytes_per_pair=PPB, dtype=dtype)
        g = plan.grid[0]
        assert g > 1 and plan.n_blocks == g * (g + 1) // 2


def test_measured_budget_equals_one_shot_and_fits():
    """bytes_per_pair measured with XLA: the chosen block's own memory analysis fits the budget."""
    budget = 40_000
    rec = Recorder()
    got = blockwise(rec, X1, memory_budget=budget, outputs="ntk", progress=False)
    _close(got, _ref(X1, None, jnp.float64)["ntk"], jnp.float64)
    plan = plan_blocks(fc3, X1, memory_budget=budget)
    assert plan.source == "measured" and 1 < plan.rows < X1.shape[0]
    assert max(rec.shapes) == (plan.rows, plan.cols)
    assert plan.block_bytes <= budget
    assert measure_block_bytes(fc3, X1, X1, plan.rows, plan.cols) <= budget
    # a budget below the probe block's: the estimate (fixed costs spread over 32^2 pairs) is too
    # optimistic for small blocks, so the chosen shape must be re-measured and shrunk
    small = 3_000
    plan = plan_blocks(fc3, X1, memory_budget=small)
    assert 1 < plan.rows < 8
    assert plan.block_bytes == measure_block_bytes(fc3, X1, X1, plan.rows, plan.rows) <= small


def test_array_kernel_and_outputs():
    """A bare-array kernel_fn gives a bare array; a str `outputs` selects one field."""
    lin = lambda a, b: a @ b.T  # noqa: E731
    got = blockwise(lin, X1, X2, block_size=10, bytes_per_pair=8, progress=False)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, X1 @ X2.T, rtol=1e-12)
    nngp = blockwise(fc3, X1, X2, block_size=(10, 7), bytes_per_pair=PPB, outputs="nngp",
                     progress=False)
    _close(nngp, _ref(X1, X2, jnp.float64)["nngp"], jnp.float64)
    with pytest.raises(ConfigError, match="no output 'bogus'"):
        blockwise(fc3, X1, block_size=10, bytes_per_pair=PPB, outputs=("bogus",),
                  progress=False)


def test_cntk_tiny_images():
    from ntkrepro.kernels.cntk import cntk
    im = np.random.RandomState(2).randn(7, 4, 4, 2)
    fn = lambda a, b: cntk(a, b, depth=3, dtype=a.dtype)  # noqa: E731
    want = np.asarray(cntk(im, depth=3))
    got = blockwise(fn, im, block_size=3, bytes_per_pair=10**4, progress=False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


# ----------------------------------------------------------------------------------------------
# the budget bounds the block size

def test_budget_bounds_block_size():
    for dtype in (jnp.float64, jnp.float32):
        itemsize = np.dtype(dtype).itemsize
        prev = None
        for budget in (3_000, 10_000, 30_000, 60_000):
            rec = Recorder()
            blockwise(rec, X1, X2, memory_budget=budget, bytes_per_pair=PPB, dtype=dtype,
                      progress=False)
            rows, cols = max(rec.shapes)
            assert _model_bytes(rows, cols, itemsize) <= budget
            assert all(s == (rows, cols) for s in rec.shapes)  # padded to one shape
            # not needlessly small: one more row or column would not fit (or N is exhausted)
            assert rows == X1.shape[0] or cols == X2.shape[0] or \
                _model_bytes(2 * rows, cols, itemsize) > budget
            if prev is not None:
                assert rows * cols >= prev
            prev = rows * cols
    assert prev > 37 * 10  # the largest budget gives big blocks


def test_budget_too_small_raises():
    with pytest.raises(ConfigError, match=r"too small.*memory_budget >= \d+"):
        blockwise(fc3, X1, memory_budget=200, progress=False)  # measured
    with pytest.raises(ConfigError, match=r"too small.*memory_budget >= 228"):
        blockwise(fc3, X1, memory_budget=227, bytes_per_pair=100, progress=False)  # 2*8*8+100
    plan = plan_blocks(fc3, X1, memory_budget=228, bytes_per_pair=100)
    assert (plan.rows, plan.cols) == (1, 1)
    with pytest.raises(ConfigError, match="block_size 20 x 20 needs"):
        blockwise(fc3, X1, memory_budget=10_000, block_size=20, bytes_per_pair=100, progress=False)


# ----------------------------------------------------------------------------------------------
# resume from disk

@pytest.mark.parametrize("symmetric", [True, False])
def test_resume_after_interruption(tmp_path, symmetric):
    x2 = None if symmetric else X2
    kw = dict(memory_budget=_model_bytes(10, 10, 8), bytes_per_pair=PPB, key=KEY,
              cache_dir=tmp_path / "cache", outputs=("ntk", "nngp"), progress=False)
    plan = plan_blocks(fc3, X1, x2, memory_budget=kw["memory_budget"], bytes_per_pair=PPB)
    total, k = plan.n_blocks, 3
    assert total > k + 1
    with pytest.raises(RuntimeError, match="simulated"):
        blockwise(Recorder(fail_after=k), X1, x2, **kw)
    saved = sorted(f for f in os.listdir(tmp_path / "cache") if f.startswith("block_"))
    assert len(saved) == k and all(f.endswith(".npz") for f in saved)  # no temporary leftovers
    meta = json.loads((tmp_path / "cache" / "meta.json").read_text())
    assert meta["block"] == [plan.rows, plan.cols] and meta["key"] == KEY

    rec = Recorder()
    got = blockwise(rec, X1, x2, **kw)
    assert rec.calls == total - k  # only the missing blocks
    want = _ref(X1, x2, jnp.float64)
    for name in ("ntk", "nngp"):
        _close(got[name], want[name], jnp.float64)

    rec = Recorder()  # everything cached now: nothing computed, same result
    again = blockwise(rec, X1, x2, **kw)
    assert rec.calls == 0
    np.testing.assert_array_equal(again["ntk"], got["ntk"])
    # a resumed run keeps the saved block shape even if the budget now allows bigger blocks
    rec = Recorder()
    blockwise(rec, X1, x2, **{**kw, "memory_budget": 10**7})
    assert rec.calls == 0


def test_fingerprint_mismatch_raises(tmp_path):
    kw = dict(memory_budget=_model_bytes(12, 12, 8), bytes_per_pair=PPB, cache_dir=tmp_path,
              progress=False)
    blockwise(fc3, X1, key=KEY, **kw)
    with pytest.raises(ConfigError, match="different kernel.*key.*another cache_dir"):
        blockwise(fc3, X1, key="fc depth=4", **kw)
    with pytest.raises(ConfigError, match="different kernel.*input data"):
        blockwise(fc3, X1 + 1e-9, key=KEY, **kw)
    with pytest.raises(ConfigError, match="different kernel.*dtype"):
        blockwise(fc3, X1, key=KEY, **{**kw, "dtype": jnp.float32})
    with pytest.raises(ConfigError, match="different kernel"):
        blockwise(fc3, X1, X2, key=KEY, **kw)
    with pytest.raises(ConfigError, match="needs key"):
        blockwise(fc3, X1, **kw)
    side = json.loads((tmp_path / "meta.json").read_text())["block"][0]  # 37 = 4 x 10 (balanced)
    assert side == 10
    with pytest.raises(ConfigError, match="written with 10 x 10 blocks.*memory_budget >= %d"
                       % _model_bytes(10, 10, 8)):
        blockwise(fc3, X1, key=KEY, **{**kw, "memory_budget": _model_bytes(6, 6, 8)})


# ----------------------------------------------------------------------------------------------
# several devices

_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    from ntkrepro.kernels.blocks import blockwise
    from ntkrepro.kernels.fc import fc
    assert len(jax.devices()) == 2, jax.devices()
    x = np.random.RandomState(0).randn(37, 8)
    used, calls = set(), []
    def fn(a, b):
        if not isinstance(a, jax.core.Tracer):
            assert a.devices() == b.devices()
            used.update(str(d) for d in a.devices())
            calls.append(a.shape)
        return fc(a, b, depth=3, b_var=0.1, dtype=a.dtype)
    got = blockwise(fn, x, memory_budget=%d, bytes_per_pair=100, outputs="ntk", progress=False,
                    cache_dir=sys.argv[1], key="fc3")
    want = np.asarray(fc(x, depth=3, b_var=0.1).ntk)
    print(json.dumps({"err": float(np.abs(got - want).max() / np.abs(want).max()),
                      "devices": sorted(used), "calls": len(calls)}))
""")


def test_two_devices(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_ENABLE_X64": "1", "JAX_PLATFORMS": "cpu"}
    script = _TWO_DEVICES % _model_bytes(10, 10, 8)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["err"] < 1e-12
    assert len(out["devices"]) == 2
    assert out["calls"] == len([f for f in os.listdir(tmp_path) if f.startswith("block_")]) > 2


def test_every_device_gets_a_block():
    plan = plan_blocks(fc3, X1, memory_budget=10**8, bytes_per_pair=PPB, n_devices=4)
    assert plan.n_blocks >= 4
    plan = plan_blocks(fc3, X1, X2, memory_budget=10**8, bytes_per_pair=PPB, n_devices=3)
    assert plan.n_blocks >= 3
    assert isinstance(plan, BlockPlan) and math.prod(plan.grid) == plan.n_blocks


def test_out_dir_gives_a_disk_backed_result(tmp_path):
    from ntkrepro.kernels import blockwise, fc

    x = np.random.default_rng(0).normal(size=(23, 4))
    ref = np.asarray(fc(x, depth=2).ntk)
    got = blockwise(lambda a, b: fc(a, b, depth=2, dtype=a.dtype), x, block_size=7, outputs="ntk",
                    out_dir=tmp_path / "k", progress=False)
    assert isinstance(got, np.memmap)
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "k" / "ntk.npy"), ref, rtol=1e-12)
