"""One benchmark in a fresh process: `python -m ntkrepro.bench.worker MODE BENCH_ID SIZE OUT.json`.

MODE "timing": builds the inputs once, runs every implementation once (warm-up: compilation and
first run, timed separately), then `reps` timed rounds, round-robin over the implementations so that
changes in machine load hit all of them alike; each call is `jax.block_until_ready`-ed.  An
implementation stops repeating once its timed calls exceed `budget_s` (at least one timed call).
Reports the best time, the warm-up time, and the relative differences of the values.

MODE "memory" (extra argument: the implementation's index): builds the same inputs, runs the one
implementation once (warm-up, compiles), waits until the resident set size stops falling (XLA frees
temporaries asynchronously), resets the kernel's peak-RSS counter (writing 5 to
/proc/self/clear_refs), records the resident set size, runs it again and reads the new peak
(VmHWM).  Peak memory = VmHWM - VmRSS before the call: the extra host memory of one steady-state
call (outputs and temporaries, compilation excluded).  The parent sets MALLOC_MMAP_THRESHOLD_ so
that glibc returns freed buffers to the OS (otherwise memory cached from the warm-up would hide part
of the second call's peak).  The warm-up peak (compilation included) is reported too.
"""
from __future__ import annotations

import gc
import json
import math
import os
import resource
import sys
import time
import traceback


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _settled_rss(window_s: float = 0.3, timeout_s: float = 10.0) -> int | None:
    """VmRSS once it has stopped falling: XLA frees an execution's temporary buffers
    asynchronously, shortly after `block_until_ready` returns, so an immediate reading can still
    include the previous call's temporaries (seen: 2.4 GiB) and hide the next call's peak."""
    last = _status_kib("VmRSS")
    t0 = time.perf_counter()
    while last is not None and time.perf_counter() - t0 < timeout_s:
        time.sleep(window_s)
        cur = _status_kib("VmRSS")
        if cur is None or abs(cur - last) < 1024:
            return cur
        last = cur
    return last


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _setup(bench_id: str):
    import jax

    from ntkrepro.bench.cases import needs_x64

    jax.config.update("jax_enable_x64", needs_x64(bench_id))
    return jax


def matmul_rate(dtype: str, n: int = 2048, reps: int = 5) -> float:
    """This process's best dense matmul throughput (FLOP/s) in `dtype`: the roofline ceiling."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), getattr(jnp, dtype))
    f = jax.jit(lambda a: a @ a)
    jax.block_until_ready(f(a))
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def run_timing(bench_id: str, size: str, reps: int, budget_s: float) -> dict:
    jax = _setup(bench_id)
    from ntkrepro.bench.cases import build, relative_differences

    bench = build(bench_id, size)
    res = {"id": bench.id, "case": bench.case, "title": bench.title, "dtype": bench.dtype,
           "n_entries": bench.n_entries, "goal": bench.goal, "notes": bench.notes, "impls": []}
    if bench.flops:
        res["flops"] = bench.flops
        res["matmul_flop_s"] = matmul_rate(bench.dtype)
    if bench.floors:
        res["floors"] = {name: float(fn()) for name, fn in bench.floors}
    if bench.checks:
        res["checks"] = [list(c) for c in bench.checks]
    values, first, errors = {}, {}, {}
    for i, impl in enumerate(bench.impls):
        try:
            t0 = time.perf_counter()
            out = jax.block_until_ready(impl.fn())
            first[i] = time.perf_counter() - t0
            values[i] = (jax.device_get(out), str(out.dtype))
            del out
        except Exception as err:  # noqa: BLE001 - a failing implementation is a result
            errors[i] = f"{type(err).__name__}: {err}"[:500]
            traceback.print_exc()
    times = {i: [] for i in values}
    for _ in range(reps):
        for i in values:
            if times[i] and sum(times[i]) > budget_s:
                continue
            t0 = time.perf_counter()
            jax.block_until_ready(bench.impls[i].fn())
            times[i].append(time.perf_counter() - t0)
    ours = next((i for i, m in enumerate(bench.impls) if m.side == "ours"), None)
    for i, impl in enumerate(bench.impls):
        row = {"name": impl.name, "side": impl.side, "scale": impl.scale}
        if i in errors:
            row["error"] = errors[i]
        else:
            row.update(best_s=min(times[i]), times_s=times[i], first_call_s=first[i],
                       out_dtype=values[i][1])
            if impl.side == "nt" and ours in values:
                ref = values[i][0] * impl.scale
                row["rel_diff_elem"], row["rel_diff_norm"] = relative_differences(
                    values[ours][0], ref)
        res["impls"].append(row)
    for check in bench.checks:  # the two values of a ratio check must agree (same kernel)
        if check[0] == "ratio" and check[1] in values and check[2] in values:
            res.setdefault("ratio_rel_diff", {})[f"{check[1]}/{check[2]}"] = relative_differences(
                values[check[1]][0], values[check[2]][0])[1]
    if bench.extra is not None:
        try:
            res["extra"] = bench.extra()
        except Exception as err:  # noqa: BLE001 - a failed extra measurement is a result
            res["extra"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    return res


def run_memory(bench_id: str, size: str, index: int) -> dict:
    jax = _setup(bench_id)
    from ntkrepro.bench.cases import build

    bench = build(bench_id, size)
    impl = bench.impls[index]
    gc.collect()
    rss0 = _settled_rss()
    maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = jax.block_until_ready(impl.fn())
    del out
    warm_peak = _status_kib("VmHWM")
    maxrss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gc.collect()
    _settled_rss()
    reset = _reset_peak()
    rss1 = _status_kib("VmRSS")
    out = jax.block_until_ready(impl.fn())
    peak = _status_kib("VmHWM")
    del out
    res = {"id": bench.id, "index": index, "name": impl.name, "hwm_reset": reset,
           "rss_before_kib": rss1, "warmup_peak_delta_mib":
               ((warm_peak - rss0) if (warm_peak and rss0) else (maxrss1 - maxrss0)) / 1024}
    if reset and peak is not None and rss1 is not None:
        res["peak_delta_mib"] = (peak - rss1) / 1024
        res["method"] = "VmHWM after clear_refs minus VmRSS, steady-state call"
    else:  # no resettable peak: the first call's peak (compilation included)
        res["peak_delta_mib"] = res["warmup_peak_delta_mib"]
        res["method"] = "ru_maxrss delta, first call incl. compilation"
    return res


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    mode, bench_id, size, out_path = argv[:4]
    try:
        if mode == "timing":
            reps, budget = int(argv[4]), float(argv[5])
            res = run_timing(bench_id, size, reps, budget)
        elif mode == "memory":
            res = run_memory(bench_id, size, int(argv[4]))
        else:
            raise ValueError(f"unknown mode {mode!r}")
    except Exception as err:  # noqa: BLE001
        traceback.print_exc()
        res = {"id": bench_id, "error": f"{type(err).__name__}: {err}"[:1000]}
    with open(out_path, "w") as f:
        json.dump(res, f, default=float)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
