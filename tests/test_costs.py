"""The cost plan's arithmetic: XLA's cost analysis with every loop counted as often as it runs, each
distinct program compiled once, and the notes on memory and unknown loops."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from ntkrepro import costs

X = jax.ShapeDtypeStruct((128, 128), jnp.float32)
MATMUL = 2 * 128 ** 3


def _scan(length, unroll=1):
    return lambda a: jax.lax.scan(lambda c, _: (jnp.tanh(c @ a), None), a, None, length=length,
                                  unroll=unroll)[0]


@pytest.mark.parametrize("length,unroll", [(1, 1), (2, 1), (10, 1), (10, 2), (10, 3)])
def test_a_scan_costs_what_its_unrolled_program_costs(length, unroll):
    """XLA counts a loop's body once; `analyse` counts it `length` times, as the fully unrolled
    program (no loop left for XLA to miscount) does."""
    looped = costs.analyse("scan", _scan(length, unroll), X)
    unrolled = costs.analyse("unrolled", _scan(length, True), X)
    assert looped.flops == pytest.approx(unrolled.flops, rel=1e-3) == pytest.approx(length * MATMUL, rel=1e-2)
    assert looped.bytes == pytest.approx(unrolled.bytes, rel=0.1 + 0.5 / length)
    assert looped.unknown_loops == 0


def test_nested_mapped_and_differentiated_loops_are_counted():
    def nested(a):
        return jax.lax.scan(lambda c, _: (jax.lax.scan(lambda d, _: (d @ a, None), c, None, length=4)[0], None),
                            a, None, length=3)[0]

    assert costs.analyse("nested", nested, X).flops == pytest.approx(12 * MATMUL, rel=1e-3)
    mapped = costs.analyse("map", lambda a: jax.lax.map(lambda s: a @ (a * s), jnp.arange(10.0)), X)
    assert mapped.flops == pytest.approx(10 * MATMUL, rel=2e-2)   # and the 10 elementwise products
    grad = costs.analyse("grad", jax.grad(lambda a: _scan(5)(a).sum()), X)   # 1 forward + 2 backward
    assert grad.flops == pytest.approx(15 * MATMUL, rel=1e-2)


def test_a_while_loop_is_counted_once_and_said_so():
    cost = costs.analyse("while", lambda a: jax.lax.while_loop(lambda c: c[0, 0] < 10, lambda c: c @ a, a), X)
    assert cost.unknown_loops == 1 and cost.flops == pytest.approx(MATMUL, rel=1e-2)
    text = costs.table([costs.Job("fig", [cost])])
    assert "lower bound: fig has while loops of unknown length" in text


def test_each_distinct_program_is_compiled_once(monkeypatch):
    compiled = []
    real = jax.stages.Lowered.compile
    monkeypatch.setattr(jax.stages.Lowered, "compile", lambda self, *a, **k: compiled.append(1) or real(self, *a, **k))
    f = lambda a: jnp.sin(a) @ a  # noqa: E731
    first, again = costs.analyse("a", f, jax.ShapeDtypeStruct((96, 96), jnp.float32)), \
        costs.analyse("b", f, jax.ShapeDtypeStruct((96, 96), jnp.float32), calls=3)
    assert len(compiled) == 1 and (first.flops, first.bytes) == (again.flops, again.bytes)
    other = costs.analyse("c", lambda a: jnp.cos(a) @ a @ a, jax.ShapeDtypeStruct((96, 96), jnp.float32))
    assert len(compiled) == 2 and other.flops > first.flops          # another program: its own numbers


def test_a_job_larger_than_an_accelerator_is_named_with_its_piece():
    jobs = [costs.Job("big", [costs.Cost("the kernel", 1e12, 1e9, 100e9), costs.Cost("a step", 1e9, 1e6, 1e6)]),
            costs.Job("small", [costs.Cost("a step", 1e9, 1e6, 1e6)])]
    lines = [ln for ln in costs.table(jobs).splitlines() if ln.startswith("memory:")]
    assert len(lines) == 1 and lines[0].startswith("memory: big needs 93.1 GiB at its peak ('the kernel')")
    assert "the A100 (74.5 GiB)" in lines[0] and "the H100 (74.5 GiB)" in lines[0]
