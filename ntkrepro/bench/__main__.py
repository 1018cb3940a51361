"""`python -m ntkrepro.bench [--quick | --full] [--cases 1,3] [--reps K] [--no-memory | --memory]`."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ntkrepro import runstate
from ntkrepro.bench import cases as cases_mod
from ntkrepro.bench import report
from ntkrepro.errors import ArgumentParser, one_line_errors


def parse_args(argv=None):
    p = ArgumentParser(prog="python -m ntkrepro.bench",
                                description="ntkrepro vs neural-tangents 0.6.5 benchmark")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes (CI smoke run, < 1 min)")
    size.add_argument("--full", action="store_true",
                      help="larger GAP CNTK: 4 x 4 kernel instead of 2 x 2")
    p.add_argument("--cases", default=",".join(map(str, sorted(cases_mod.CASES))),
                   help=f"comma-separated case numbers ({', '.join(map(str, sorted(cases_mod.CASES)))})")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 3; quick 1)")
    p.add_argument("--budget-s", type=float, default=8.0,
                   help="stop repeating an implementation once its timed calls exceed this")
    mem = p.add_mutually_exclusive_group()
    mem.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    mem.add_argument("--memory", action="store_true",
                     help="measure peak memory also with --quick (which skips it by default)")
    p.add_argument("--out", default="outputs/bench", help="parent folder of the run folder")
    p.add_argument("--timeout-s", type=float, default=900.0, help="per worker process")
    p.add_argument("--deadline-min", type=float, default=13.0,
                   help="skip remaining peak-memory processes that would end after this many "
                        "minutes (estimated as 2 x the implementation's first call + 10 s)")
    args = p.parse_args(argv)
    try:
        args.case_list = sorted({int(c) for c in args.cases.split(",") if c.strip()})
    except ValueError:
        p.error(f"--cases must be comma-separated case numbers, got {args.cases!r}")
    if not args.case_list or any(c not in cases_mod.CASES for c in args.case_list):
        p.error(f"--cases must list numbers among {sorted(cases_mod.CASES)}, got {args.cases!r}")
    args.size = "quick" if args.quick else ("full" if args.full else "default")
    args.measure_memory = args.memory or not (args.no_memory or args.quick)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.reps < 1:
        p.error("--reps must be >= 1")
    for flag in ("budget_s", "timeout_s"):
        if not getattr(args, flag) > 0:
            p.error(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if not args.deadline_min >= 0:
        p.error(f"--deadline-min must be >= 0, got {args.deadline_min}")
    return args


def _worker(argv, timeout, env=None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        path = tmp.name
    cmd = [sys.executable, "-m", "ntkrepro.bench.worker", argv[0], argv[1], argv[2], path,
           *map(str, argv[3:])]
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, capture_output=True, text=True)
        with open(path) as f:
            res = json.load(f)
        if proc.returncode != 0 and "error" not in res:
            res["error"] = f"worker exit code {proc.returncode}"
        if "error" in res:
            sys.stderr.write(proc.stderr[-3000:])
        return res
    except subprocess.TimeoutExpired:
        return {"id": argv[1], "error": f"timed out after {timeout:.0f} s"}
    except (OSError, json.JSONDecodeError) as err:
        return {"id": argv[1], "error": f"{type(err).__name__}: {err}"}
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


@one_line_errors
def main(argv=None) -> int:
    args = parse_args(argv)
    runstate.check_can_hold_folders(args.out, "--out")
    t_start = time.time()
    started = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out_dir = Path(args.out) / started
    out_dir.mkdir(parents=True, exist_ok=True)
    load_start = report.load_average()
    info = report.machine()
    mem_env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}

    results, memory = [], {}
    for bench_id in cases_mod.bench_ids(args.case_list, args.size):
        t0 = time.time()
        print(f"[bench] {bench_id}: timing ...", flush=True)
        res = _worker(["timing", bench_id, args.size, args.reps, args.budget_s], args.timeout_s)
        results.append(res)
        if "impls" in res:
            for m in res["impls"]:
                if "best_s" in m:
                    print(f"[bench]   {m['name']}: best {m['best_s'] * 1e3:.1f} ms "
                          f"(k={len(m['times_s'])}, first call {m['first_call_s']:.2f} s)",
                          flush=True)
                else:
                    print(f"[bench]   {m['name']}: FAILED {m.get('error')}", flush=True)
            if args.measure_memory:
                for i, m in enumerate(res["impls"]):
                    if "best_s" not in m:
                        continue
                    est = 2 * m["first_call_s"] + 10
                    if time.time() - t_start + est > 60 * args.deadline_min:
                        memory[(bench_id, i)] = {"error": "memory not measured (--deadline-min)"}
                        print(f"[bench]   memory {m['name']}: skipped (deadline)", flush=True)
                        continue
                    mres = _worker(["memory", bench_id, args.size, i], args.timeout_s, env=mem_env)
                    memory[(bench_id, i)] = mres
                    if "peak_delta_mib" in mres:
                        print(f"[bench]   memory {m['name']}: {mres['peak_delta_mib']:.0f} MiB",
                              flush=True)
        else:
            print(f"[bench]   FAILED: {res.get('error')}", flush=True)
        print(f"[bench] {bench_id} done in {time.time() - t0:.0f} s", flush=True)

    rows = report.rows_from_results(results, memory)
    report.write_csv(out_dir / "bench.csv", rows)
    args_text = " ".join(sys.argv[1:] if argv is None else argv)
    md = report.markdown(rows, results, info, args_text=args_text, size=args.size,
                         started=started, load_start=load_start, load_end=report.load_average(),
                         wall_s=time.time() - t_start)
    (out_dir / "bench.md").write_text(md)
    with open(out_dir / "raw.json", "w") as f:
        json.dump({"results": results, "memory": {f"{k[0]}#{k[1]}": v for k, v in memory.items()},
                   "machine": info}, f, indent=1, default=float)
    print()
    print(report.markdown_table(rows))
    print(f"\n[bench] wrote {out_dir / 'bench.csv'} and {out_dir / 'bench.md'}")
    if not any("best_s" in m for r in results for m in r.get("impls", [])):
        print("error: no case was timed (every worker failed; see bench.md)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
