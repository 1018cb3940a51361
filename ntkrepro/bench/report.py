"""Machine description, bench.csv and bench.md."""
from __future__ import annotations

import csv
import math
import os
import platform
import subprocess
import sys

import numpy as np

from ntkrepro.bench.cases import GOAL_TEXT

CSV_FIELDS = ["bench", "case", "title", "implementation", "side", "dtype", "best_s", "reps",
              "first_call_s", "ms_per_entry", "n_entries", "peak_mem_mib", "warmup_peak_mem_mib",
              "mem_method", "ratio_nt_over_ours", "rel_diff_elem", "rel_diff_norm", "goal",
              "goal_met", "gflop", "matmul_gflop_s", "floor_s", "max_ratio", "error"]


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info = {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": affinity,
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["mem_total_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                      / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    code = ("import jax, jaxlib, flax, numpy; d = jax.devices(); "
            "print(jax.__version__, jaxlib.__version__, flax.__version__, numpy.__version__, "
            "jax.default_backend(), len(d), repr(d[0]), sep='|')")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120).stdout.strip().split("|")
        info.update(jax=out[0], jaxlib=out[1], flax=out[2], numpy=out[3], backend=out[4],
                    n_devices=out[5], device=out[6])
    except (subprocess.SubprocessError, IndexError):
        pass
    try:
        from importlib.metadata import version

        info["neural_tangents"] = version("neural-tangents")
    except Exception:  # noqa: BLE001
        info["neural_tangents"] = "not installed"
    return info


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def _fmt_time(s):
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.1f} ms"


def _fmt_mem(m):
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "—"
    return f"{m / 1024:.2f} GiB" if m >= 1024 else f"{m:.0f} MiB"


def _fmt_sci(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.1e}"


def rows_from_results(results: list[dict], memory: dict) -> list[dict]:
    """Flatten timing results (+ memory by (bench id, impl index)) into CSV rows."""
    rows = []
    for res in results:
        if "impls" not in res:
            rows.append({"bench": res.get("id"), "error": res.get("error", "no result")})
            continue
        impls = res["impls"]
        ok = [(i, m) for i, m in enumerate(impls) if "best_s" in m]
        ours = next(((i, m) for i, m in ok if m["side"] == "ours"), None)
        nts = [(i, m) for i, m in ok if m["side"] == "nt"]
        nt_best = min(nts, key=lambda im: im[1]["best_s"]) if nts else None
        for i, m in enumerate(impls):
            mem = memory.get((res["id"], i), {})
            row = {"bench": res["id"], "case": res["case"], "title": res["title"],
                   "implementation": m["name"], "side": m["side"],
                   "dtype": m.get("out_dtype", res["dtype"]), "n_entries": res["n_entries"],
                   "goal": GOAL_TEXT[res["case"]], "error": m.get("error", mem.get("error", "")),
                   "peak_mem_mib": mem.get("peak_delta_mib"),
                   "warmup_peak_mem_mib": mem.get("warmup_peak_delta_mib"),
                   "mem_method": mem.get("method", "")}
            if "best_s" in m:
                row.update(best_s=m["best_s"], reps=len(m["times_s"]),
                           first_call_s=m["first_call_s"],
                           ms_per_entry=m["best_s"] * 1e3 / res["n_entries"])
            if m["side"] == "nt" and "best_s" in m:
                if ours:
                    row["ratio_nt_over_ours"] = m["best_s"] / ours[1]["best_s"]
                row["rel_diff_elem"] = m.get("rel_diff_elem")
                row["rel_diff_norm"] = m.get("rel_diff_norm")
            if m["side"] == "ours" and "best_s" in m and res.get("checks"):
                checks = check_results(res)
                judged = [c["met"] for c in checks if c["met"] is not None]
                row["goal"] = "; ".join(c["text"] for c in checks)
                row["goal_met"] = "yes" if judged and all(judged) else "no"
            if m["side"] == "ours" and "best_s" in m and nt_best:
                row["implementation"] = m["name"]
                row["ratio_nt_over_ours"] = nt_best[1]["best_s"] / m["best_s"]
                row["rel_diff_elem"] = nt_best[1].get("rel_diff_elem")
                row["rel_diff_norm"] = nt_best[1].get("rel_diff_norm")
                row["goal_met"] = "yes" if row["ratio_nt_over_ours"] >= res["goal"] else "no"
                if res.get("flops") and res.get("matmul_flop_s"):
                    # roofline: no exact method beats flops / (this machine's matmul rate)
                    floor = res["flops"] / res["matmul_flop_s"]
                    row.update(gflop=res["flops"] / 1e9, matmul_gflop_s=res["matmul_flop_s"] / 1e9,
                               floor_s=floor, max_ratio=nt_best[1]["best_s"] / floor)
            rows.append(row)
    return rows


def check_results(res: dict) -> list[dict]:
    """The goals of `res["checks"]` judged on this run's timings: [{text, met: True/False/None}]."""
    impls, floors, out = res.get("impls", []), res.get("floors", {}), []
    for check in res.get("checks", []):
        if check[0] == "floor":
            _, i, name, goal = check
            t, floor = impls[i].get("best_s") if i < len(impls) else None, floors.get(name)
            if t is None or not floor:
                out.append({"text": f"{name} floor: not measured", "met": None if goal is None else False})
                continue
            ratio = t / floor
            text = (f"{name} floor {_fmt_time(floor)} ({floor * 1e3 / res['n_entries']:.3g} ms/entry): "
                    f"ours / floor = {ratio:.2f}")
            met = None if goal is None else ratio <= goal
            out.append({"text": text + ("" if goal is None else f" (goal <= {goal:g}: "
                                        f"{'yes' if met else 'no'})"), "met": met})
        elif check[0] == "ratio":
            _, a, b, goal = check
            ta, tb = (impls[k].get("best_s") if k < len(impls) else None for k in (a, b))
            if ta is None or tb is None:
                out.append({"text": "ratio: not measured", "met": False})
                continue
            diff = res.get("ratio_rel_diff", {}).get(f"{a}/{b}")
            # judged on the median of the round-paired ratios (the worker times the implementations
            # round-robin, so a round's two calls share the machine's load; best / best is shown too)
            paired = [x / y for x, y in zip(impls[a].get("times_s") or [ta], impls[b].get("times_s") or [tb])]
            ratio = float(np.median(paired))
            met = ratio <= goal
            spread = f", range {min(paired):.3f}-{max(paired):.3f}" if len(paired) > 1 else ""
            out.append({"text": f"{impls[a]['name']} / {impls[b]['name']} = {ratio:.3f} (median of "
                                f"{len(paired)} round-paired ratios{spread}; best / best {ta / tb:.3f}; goal <= "
                                f"{goal:g}: {'yes' if met else 'no'}; values differ by "
                                f"{diff if diff is not None else float('nan'):.1e})", "met": met})
    return out


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})


def markdown_table(rows) -> str:
    head = ("| case | implementation | dtype | time (best of k) | peak memory | ratio nt/ours "
            "| max rel diff | goal met |")
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("best_s") is None:
            lines.append(f"| {r.get('bench')} | {r.get('implementation', '')} | "
                         f"{r.get('dtype', '')} | failed: {r.get('error', '')[:120]} | — | — | — "
                         f"| {'no' if r.get('side') == 'ours' else ''} |")
            continue
        t = f"{_fmt_time(r['best_s'])} (k={r['reps']})"
        if r["case"] in (4, 5):
            t += f", {r['ms_per_entry']:.3g} ms/entry"
        ratio = r.get("ratio_nt_over_ours")
        ratio_s = "—" if ratio is None else f"{ratio:.2f}x"
        if r["side"] == "ours" and ratio is not None:
            ratio_s = f"**{ratio_s}** (vs nt best)"
        goal = ""
        if r["side"] == "ours":
            goal = f"{r.get('goal_met', 'no')} ({r['goal']})"
            if r.get("floor_s"):
                goal += (f"; floor {_fmt_time(r['floor_s'])} = {r['gflop']:.2f} GFLOP at "
                         f"{r['matmul_gflop_s']:.0f} GFLOP/s: at most {r['max_ratio']:.1f}x "
                         "possible here")
        lines.append(f"| {r['bench']} | {r['implementation']} | {r['dtype']} | {t} | "
                     f"{_fmt_mem(r.get('peak_mem_mib'))} | {ratio_s} | "
                     f"{_fmt_sci(r.get('rel_diff_elem'))} | {goal} |")
    return "\n".join(lines)


def markdown(rows, results, info, *, args_text, size, started, load_start, load_end,
             wall_s) -> str:
    out = [f"# ntkrepro vs neural-tangents benchmark ({started})", "",
           f"Command: `python -m ntkrepro.bench {args_text}`  (sizes: {size}); total wall time "
           f"{wall_s:.0f} s.", "",
           "## Machine", "",
           f"- CPU: {info.get('cpu')}, {info.get('cores')} cores "
           f"({info.get('cores_usable')} usable by this process), "
           f"{info.get('mem_total_gib', '?')} GiB RAM",
           f"- JAX {info.get('jax')} (jaxlib {info.get('jaxlib')}), backend "
           f"`{info.get('backend')}`, devices: {info.get('n_devices')} x {info.get('device')}",
           f"- flax {info.get('flax')}, numpy {info.get('numpy')}, neural-tangents "
           f"{info.get('neural_tangents')} (through `ntkrepro/bench/nt_shim.py`), Python "
           f"{info.get('python')}",
           f"- load average (1/5/15 min) at start: {load_start}; at end: {load_end} "
           "(the machine is shared: timings are noisy)", "",
           "## Results", "", markdown_table(rows), "",
           "## Method", "",
           "- Every benchmark runs in a fresh process holding ours and neural-tangents' (nt) "
           "implementations on the same inputs, parameters and dtype.  Each implementation is "
           "called once first (compilation + first run, excluded; recorded in bench.csv as "
           "first_call_s), then timed in k rounds, round-robin over the implementations; time = "
           "best of the k calls, each ended by `jax.block_until_ready`.  Slow implementations "
           "stop repeating after ~budget seconds (k shown per row).",
           "- ratio nt/ours: nt's time / ours.  On ours' row: the best nt implementation's time / "
           "ours (this is what the goal is judged on).  `goal met` = that ratio reaches the goal.",
           "- Peak memory: in a separate fresh process per implementation, after one warm-up call, "
           "the kernel's peak-RSS counter is reset (`/proc/self/clear_refs`) and peak RSS (VmHWM) "
           "minus RSS before a second call is reported: host memory added by one steady-state "
           "call (outputs + temporaries; compilation excluded, shown in bench.csv as "
           "warmup_peak_mem_mib).  glibc's MALLOC_MMAP_THRESHOLD_ is set to 128 KiB in those "
           "processes so freed buffers go back to the OS.  tracemalloc cannot see XLA buffers and "
           "jax's memory_stats() is None on CPU.",
           "- floor (cases 1, 2): the arithmetic of the cheapest known exact method (forward "
           "pass, backpropagated signals, per-layer Grams; `cases.mlp_ntk_flops`, "
           "`cases.cnn_ntk_flops`) divided by this process's best dense-matmul rate in the same "
           "dtype, measured just before the timings.  No implementation can beat it on this "
           "machine, so nt's best time / floor bounds the reachable speed-up.",
           "- max rel diff: max over entries of |ours - nt| / |nt| after mapping nt to ours' "
           "normalisation; on ours' row: against the fastest nt implementation.  bench.csv also "
           "has max|ours - nt| / max|nt|.",
           ""]
    out += ["## Notes per benchmark", ""]
    for res in results:
        if "impls" not in res:
            out.append(f"- **{res.get('id')}**: failed: {res.get('error')}")
            continue
        out.append(f"- **{res['id']}** {res['title']}. " + " ".join(res["notes"]))
        for c in check_results(res):
            out.append(f"  - {c['text']}")
        if "extra" in res:
            out.append(f"  - measured: `{res['extra']}`")
    return "\n".join(out) + "\n"
