"""What a run will cost, before it runs: XLA's own cost analysis of the compiled steps.

Nothing here executes a step on data.  A step is lowered and compiled on abstract inputs
(`jax.ShapeDtypeStruct`), and XLA reports its floating-point operations, bytes accessed and peak
memory (`Compiled.cost_analysis`, `Compiled.memory_analysis`), with each loop counted as often as
it runs (XLA counts a loop body once: `analyse`).  A job's cost is the sum over its pieces of (cost
of one call) x (number of calls).  Times are estimated with a roofline,
max(flops / peak flop rate, bytes / memory bandwidth):

* on this machine from rates measured here (a dense matmul and a large copy, timed once per process),
* on named accelerators from their published peak rates (`ACCELERATORS`, datasheet numbers, stated
  as such: real runs reach a fraction of them, so these are lower bounds on time).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import time
from typing import Callable, Sequence

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np

# Datasheet peak rates (dense, no sparsity): flop/s for float32 (non-tensor-core FP32) and float64,
# and HBM bandwidth in bytes/s.  Sources: NVIDIA A100 SXM4 80GB and H100 SXM5 80GB datasheets.
ACCELERATORS = {
    "A100": {"float32": 19.5e12, "float64": 9.7e12, "bandwidth": 2.04e12, "memory": 80e9},
    "H100": {"float32": 67e12, "float64": 34e12, "bandwidth": 3.35e12, "memory": 80e9},
}


@dataclasses.dataclass
class Cost:
    """Work of one piece of a job: `calls` executions of one compiled program."""
    name: str
    flops: float            # per call
    bytes: float            # bytes accessed per call
    peak_memory: float      # bytes (arguments + outputs + temporaries) of one call
    calls: float = 1.0
    dtype: str = "float32"
    unknown_loops: int = 0  # while loops in the program, counted once (their trip count is unknown)

    @property
    def total_flops(self) -> float:
        return self.flops * self.calls

    @property
    def total_bytes(self) -> float:
        return self.bytes * self.calls

    def seconds(self, rates: dict) -> float:
        """Roofline estimate of the time of all calls at the given peak rates."""
        return self.calls * max(self.flops / rates[self.dtype], self.bytes / rates["bandwidth"])


def abstract(tree):
    """ShapeDtypeStructs of every array leaf of `tree` (arrays, or ShapeDtypeStructs already)."""
    return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype)
                                  if not isinstance(a, jax.ShapeDtypeStruct) else a, tree)


def analyse(name: str, fn: Callable, *args, calls: float = 1.0, static_argnums=()) -> Cost:
    """Compile `fn` on abstract `args` (arrays or ShapeDtypeStructs; nothing runs) and read XLA's
    cost and memory analysis, with every loop counted as many times as it runs.

    XLA's cost analysis counts the body of a loop once, whatever its trip count (a `lax.scan` of 20
    layers, a `lax.map` over examples or blocks).  So each `scan` in the program (also inside
    calls, custom derivatives and other loops' bodies) is analysed on its own and added
    (length - 1) more times (`_loop_corrected`).  A `while_loop`, whose trip count is not known
    before it runs, stays counted once: `Cost.unknown_loops` says how many there are."""
    shapes = abstract(args)
    traced = jax.jit(fn, static_argnums=static_argnums).trace(*shapes)
    flops, nbytes, peak = _xla_cost(traced.lower())
    flops, nbytes, unknown = _loop_corrected(traced.jaxpr.jaxpr, flops, nbytes)
    leaves = [s for s in jax.tree_util.tree_leaves(shapes) if jnp.issubdtype(s.dtype, jnp.floating)]
    dtype = "float64" if any(s.dtype == jnp.float64 for s in leaves) else "float32"
    return Cost(name, flops, nbytes, peak, float(calls), dtype, unknown)


def _loops(jaxpr):
    """(body, length, bodies XLA counts) of every loop in `jaxpr` that is not inside another loop's
    body (looking into calls, custom derivatives and branches); body None for a `while_loop`."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            length, unroll = int(eqn.params["length"]), eqn.params.get("unroll", 1)
            unroll = length if unroll is True else min(max(int(unroll), 1), length)
            counted = unroll + length % unroll  # the unrolled body, and the remainder's iterations
            yield eqn.params["jaxpr"], length, counted
        elif eqn.primitive.name == "while":
            yield None, 0, 1
        else:
            for sub in jex.core.jaxprs_in_params(eqn.params):
                yield from _loops(sub)


def _loop_corrected(jaxpr, flops: float, nbytes: float) -> tuple[float, float, int]:
    """XLA's (flops, bytes) of the program of `jaxpr` with every scan body counted `length` times
    (recursively for loops in loops), and the number of while loops left counted once."""
    unknown = 0
    for body, length, counted in _loops(jaxpr):
        if body is None:
            unknown += 1
            continue
        avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in body.jaxpr.invars]
        b_flops, b_bytes, _ = _xla_cost(jax.jit(jex.core.jaxpr_as_fun(body)).lower(*avals))
        t_flops, t_bytes, inner = _loop_corrected(body.jaxpr, b_flops, b_bytes)
        flops += length * t_flops - counted * b_flops
        nbytes += length * t_bytes - counted * b_bytes
        unknown += inner
    return max(flops, 0.0), max(nbytes, 0.0), unknown


_ANALYSED: dict[bytes, tuple[float, float, float]] = {}   # sha256 of the program text -> its cost


def _xla_cost(lowered) -> tuple[float, float, float]:
    """XLA's (flops, bytes accessed, peak memory) of a lowered program, compiled once per distinct
    program text (sweep points that differ only in their random key, e.g. trials, lower to the same
    program: a plan compiles each once)."""
    program = hashlib.sha256(lowered.as_text().encode()).digest()
    if program not in _ANALYSED:
        compiled = lowered.compile()
        ca = compiled.cost_analysis() or {}
        if isinstance(ca, (list, tuple)):  # older JAX: one dict per device program
            ca = ca[0] if ca else {}
        mem, peak = compiled.memory_analysis(), 0.0
        if mem is not None:  # arguments + outputs + temporaries (XLA's CPU peak leaves out temporaries)
            peak = float(max(getattr(mem, "peak_memory_in_bytes", 0) or 0,
                             mem.argument_size_in_bytes + mem.output_size_in_bytes
                             + mem.temp_size_in_bytes - getattr(mem, "alias_size_in_bytes", 0)))
        _ANALYSED[program] = (float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0)), peak)
    return _ANALYSED[program]


@functools.lru_cache(maxsize=None)
def machine_rates() -> dict:
    """This machine's measured rates: matmul flop/s in float32 and float64, copy bandwidth (bytes/s)."""
    rates = {}
    for name, dtype in (("float32", jnp.float32), ("float64", jnp.float64)):
        if dtype == jnp.float64 and not jax.config.jax_enable_x64:
            rates[name] = rates["float32"] / 2
            continue
        n = 1024
        a = jnp.ones((n, n), dtype)
        mm = jax.jit(lambda u: u @ u)
        rates[name] = 2 * n ** 3 / _best_time(lambda: mm(a).block_until_ready())
    big = jnp.ones((32 * 2 ** 20,), jnp.float32)        # 128 MiB: past every cache
    cp = jax.jit(lambda u: u * 1.0001)
    rates["bandwidth"] = 2 * big.nbytes / _best_time(lambda: cp(big).block_until_ready())
    rates["memory"] = _physical_memory()
    return rates


def _physical_memory() -> float:
    """This machine's physical memory in bytes (nan where the OS does not say)."""
    try:
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return float("nan")


def _best_time(fn, reps: int = 3) -> float:
    fn()  # compile and warm up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@dataclasses.dataclass
class Job:
    """One job of a split run (a shard): its pieces of work."""
    name: str
    costs: list[Cost]

    @property
    def flops(self) -> float:
        return sum(c.total_flops for c in self.costs)

    @property
    def peak_memory(self) -> float:
        return max((c.peak_memory for c in self.costs), default=0.0)

    @property
    def peak_piece(self) -> str:
        """The name of the piece with the largest peak memory."""
        return max(self.costs, key=lambda c: c.peak_memory).name if self.costs else ""

    def seconds(self, rates: dict) -> float:
        return sum(c.seconds(rates) for c in self.costs)


def table(jobs: Sequence[Job], accelerators=("A100", "H100")) -> str:
    """The plan as a text table: per job flops, peak memory, estimated time here and on each
    accelerator; then the totals (GPU-hours = sum of job times on that accelerator)."""
    here = machine_rates()
    head = ["job", "GFLOP", "peak MiB", "here"] + list(accelerators)
    rows = [head]
    totals = {k: 0.0 for k in ("here", *accelerators)}
    for job in jobs:
        t_here = job.seconds(here)
        t_acc = [job.seconds(ACCELERATORS[a]) for a in accelerators]
        totals["here"] += t_here
        for a, t in zip(accelerators, t_acc):
            totals[a] += t
        rows.append([job.name, f"{job.flops / 1e9:.3g}", f"{job.peak_memory / 2 ** 20:.3g}",
                     human_time(t_here)] + [human_time(t) for t in t_acc])
    rows.append(["total", f"{sum(j.flops for j in jobs) / 1e9:.3g}",
                 f"{max((j.peak_memory for j in jobs), default=0) / 2 ** 20:.3g}",
                 human_time(totals["here"])] + [f"{totals[a] / 3600:.3g} GPU-h" for a in accelerators])
    return "\n".join([_columns(rows)] + notes(jobs, accelerators, here))


def _columns(rows: list[list[str]]) -> str:
    """Rows of cells as left-aligned text columns, two spaces apart."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def pieces_table(jobs: Sequence[Job], top: int = 10, accelerators=("A100", "H100")) -> str:
    """The `top` most expensive pieces of all jobs together (pieces of the same name summed, e.g. the
    trials of a point), ordered by their time on the first accelerator, with their share of it."""
    merged: dict[str, list[Cost]] = {}
    for job in jobs:
        for c in job.costs:
            merged.setdefault(c.name, []).append(c)
    times = {name: [sum(c.seconds(ACCELERATORS[a]) for c in cs) for a in accelerators]
             for name, cs in merged.items()}
    total = sum(t[0] for t in times.values()) or float("nan")
    rows = [["piece", "calls", "GFLOP", "peak MiB"] + list(accelerators) + ["share"]]
    ranked = sorted(merged.items(), key=lambda kv: -times[kv[0]][0])
    for name, cs in ranked[:top]:
        t = times[name]
        rows.append([name, f"{sum(c.calls for c in cs):.3g}", f"{sum(c.total_flops for c in cs) / 1e9:.3g}",
                     f"{max(c.peak_memory for c in cs) / 2 ** 20:.3g}"] + [human_time(x) for x in t]
                    + [f"{100 * t[0] / total:.1f}%"])
    if len(ranked) > top:
        more = len(ranked) - top
        rows.append([f"({more} more piece{'s' if more > 1 else ''})"] + [""] * (len(rows[0]) - 1))
    return _columns(rows)


def notes(jobs: Sequence[Job], accelerators=("A100", "H100"), here: dict | None = None) -> list[str]:
    """One line per job whose peak memory (XLA's memory analysis of its largest piece) is more than
    this machine (`here["memory"]`, when known) or a named accelerator holds, and one per job with
    while loops (counted once: its work and time are lower bounds)."""
    targets = {"this machine": (here or {}).get("memory", float("nan"))}
    targets.update({f"the {a}": ACCELERATORS[a]["memory"] for a in accelerators})
    out = []
    for job in jobs:
        over = [f"{t} ({m / 2 ** 30:.3g} GiB)" for t, m in targets.items() if job.peak_memory > m]
        if over:
            out.append(f"memory: {job.name} needs {job.peak_memory / 2 ** 30:.3g} GiB at its peak "
                       f"('{job.peak_piece}'), more than {', '.join(over)} holds")
        loops = [c.name for c in job.costs if c.unknown_loops]
        if loops:
            out.append(f"lower bound: {job.name} has while loops of unknown length, counted once, in "
                       f"{len(loops)} piece(s) ('{loops[0]}'{', ...' if len(loops) > 1 else ''})")
    return out


def human_time(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "n/a"
    for unit, size in (("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def training(name: str, trainer, spec, x_shape, y_shape, steps: int, *, dtype=jnp.float32,
             record_points: int = 0, models: int = 1, vmapped: bool = True) -> list[Cost]:
    """The work of `fit(trainer, spec.init(...), x, y, steps=steps, ...)` for `models` models:
    `steps` training steps (on a batch of `trainer.batch_size`, or all of x) and the full-data loss
    at `record_points` recording points; memory of one vmapped program of all the models (of one
    model when they are trained one after another, `vmapped=False`)."""
    x = jax.ShapeDtypeStruct(tuple(x_shape), dtype)
    y = jax.ShapeDtypeStruct(tuple(y_shape), dtype)
    state = jax.eval_shape(trainer.init, spec.param_shapes(x))
    b = min(trainer.batch_size or x.shape[0], x.shape[0])
    xb = jax.ShapeDtypeStruct((b, *x.shape[1:]), dtype)
    yb = jax.ShapeDtypeStruct((b, *y.shape[1:]), dtype)
    step = analyse(f"{name}: train step", lambda s, u, v: trainer.step_fn(s, u, v), state, xb, yb,
                   calls=steps * models)
    step.peak_memory *= models if vmapped else 1
    out = [step]
    if record_points:
        out.append(analyse(f"{name}: loss", lambda s, u, v: trainer._objective(s.params0, s.variable, u, v),
                           state, x, y, calls=record_points * models))
    return out
