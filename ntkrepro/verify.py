"""Seed robustness: every figure at several seeds, and per claim at how many seeds it PASSes.

    python -m ntkrepro.verify [--scale cpu] [--seeds 1,2,3] [--figures "id ..."] [setting=value ...]
    make verify SCALE=cpu SEEDS=1,2,3 [FIGURES="id ..."] [ARGS='data.root=...']

Each (figure, seed) runs as `python -m ntkrepro figure=<id> scale=<scale> seed=<seed> <settings>` into
`<out_root>/verify/runs/`, and its claims are appended to `<out_root>/verify/results.jsonl` with the
code version (`manifest.code_version`: a hash of ntkrepro/, experiments/, conf/ as they are, so a
commit that changes only the README or the tests keeps it).  A (figure, scale, seed, settings) that
already ran at the current code version is skipped, so the table can be built in pieces.  Every call
writes `<out_root>/verify/<timestamp>/verify.md` from all results at the current code version: per
figure and claim, PASS at how many of the seeds.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from ntkrepro import manifest, preflight, runstate
from ntkrepro.errors import ArgumentParser, one_line_errors
from ntkrepro.registry import SCALES, figure_list, seed_list

RESULTS = "results.jsonl"


def load_results(verify_dir: Path) -> list[dict]:
    path = verify_dir / RESULTS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _key(r: dict) -> tuple:
    return (r["figure"], r["scale"], int(r["seed"]), r["code_version"], tuple(r.get("settings", ())))


def run_one(fid: str, scale: str, seed: int, overrides: list[str], runs_root: Path) -> dict:
    """Run one figure at one seed (a subprocess) -> its result line."""
    t0 = time.time()
    cmd = [sys.executable, "-m", "ntkrepro", f"figure={fid}", f"scale={scale}", f"seed={seed}",
           *[o for o in overrides if not o.startswith("out_root=")], f"out_root={runs_root}"]
    proc = subprocess.Popen(cmd)
    proc.wait()
    found = [(p, r) for p, r in runstate.find(runs_root / fid / scale) if r.get("pid") == proc.pid]
    claims = []
    if found and (found[-1][0] / "claims.json").is_file():
        claims = json.loads((found[-1][0] / "claims.json").read_text())
    return {"figure": fid, "scale": scale, "seed": seed, "exit": proc.returncode,
            "state": found[-1][1]["state"] if found else "error", "wall_time_s": round(time.time() - t0, 1),
            "folder": str(found[-1][0]) if found else None, "claims": claims}


def table(results: list[dict], seeds: list[int]) -> str:
    """verify.md: per figure and claim, at how many seeds it PASSes (paper claims and checks apart)."""
    by_fig = defaultdict(dict)
    for r in results:
        by_fig[r["figure"]][int(r["seed"])] = r
    lines = [f"# Seed robustness ({len(seeds)} seeds: {', '.join(map(str, seeds))})", "",
             "| figure | kind | claim | PASS at | values |", "| --- | --- | --- | --- | --- |"]
    for fid in sorted(by_fig):
        runs = [by_fig[fid].get(s) for s in seeds]
        if any(r is None or r["state"] != "finished" for r in runs):
            states = ", ".join(f"seed {s}: {r['state'] if r else 'not run'}" for s, r in zip(seeds, runs))
            lines.append(f"| {fid} | | (incomplete: {states}) | | |")
            continue
        for i, claim in enumerate(runs[0]["claims"]):
            row = [r["claims"][i] if i < len(r["claims"]) else {} for r in runs]
            passed = sum(c.get("status") == "PASS" for c in row)
            values = ", ".join("n/a" if c.get("value") is None else f"{c['value']:.3g}" for c in row)
            cell = f"{passed}/{len(seeds)}" + ("" if passed == len(seeds) else " **")
            if all(c.get("status") == "NOT EVALUATED" for c in row):  # smoke scale: nothing to count
                cell = "not evaluated"
            lines.append(f"| {fid} | {claim.get('kind', 'paper')} | {claim['claim']} | {cell} | {values} |")
    return "\n".join(lines) + "\n"


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ntkrepro.verify", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="cpu", choices=SCALES)
    parser.add_argument("--seeds", default="1,2,3", type=seed_list, help="comma-separated seeds")
    parser.add_argument("--figures", default="", type=figure_list, help="space-separated ids (default: every figure)")
    parser.add_argument("overrides", nargs="*", help="settings passed to every run (setting=value)")
    args = parser.parse_args(argv)
    seeds = args.seeds
    preflight.check_runs(args.figures, args.scale, args.overrides,  # a bad setting: before any run
                         reserved={"seed": "SEEDS=<s>,<s>,... (--seeds)"})
    verify_dir = runstate.out_root_of(args.overrides) / "verify"
    verify_dir.mkdir(parents=True, exist_ok=True)
    version, settings = manifest.code_version(), sorted(o for o in args.overrides if not o.startswith("out_root="))
    done = {_key(r) for r in load_results(verify_dir)}
    runstate.install_signal_handlers()
    for fid in args.figures:
        for seed in seeds:
            if (fid, args.scale, seed, version, tuple(settings)) in done:
                print(f"verify: {fid} seed {seed} already ran at code version {version}; skipped", flush=True)
                continue
            result = {**run_one(fid, args.scale, seed, settings, verify_dir / "runs"),
                      "code_version": version, "settings": settings}
            with open(verify_dir / RESULTS, "a") as fh:
                fh.write(json.dumps(result) + "\n")
    current = [r for r in load_results(verify_dir)
               if r["code_version"] == version and r["scale"] == args.scale and r.get("settings") == settings
               and int(r["seed"]) in seeds]
    out = verify_dir / datetime.now().strftime("%Y-%m-%d_%H-%M-%S") / "verify.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    text = table(current, seeds)
    out.write_text(f"code version {version}, scale {args.scale}, settings {' '.join(settings) or '(none)'}\n\n"
                   + text)
    print(text + f"\nwritten to {runstate.shown(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
