"""`make figures`: run every figure (or the listed ones) one after another, each as its own
`python -m ntkrepro figure=<id> scale=<scale> <overrides>`; go on past failures; end with a table
(figure, status, paper claims passed / evaluated, time) and exit non-zero if any figure failed.

    python -m ntkrepro.batch [--scale S] [--figures "id id ..."] [setting=value ...]
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from ntkrepro import preflight, runstate, timings
from ntkrepro.errors import ArgumentParser, one_line_errors
from ntkrepro.registry import SCALES, figure_list
from ntkrepro.runs import claims_cell, table


def _record(out_root: Path, fid: str, scale: str, pid: int) -> dict | None:
    """The run.json written by process `pid` for this figure and scale, if it got that far."""
    for _, record in runstate.find(out_root / fid / scale):
        if record.get("pid") == pid and record.get("host") == socket.gethostname():
            return record
    return None


def _wait(proc: subprocess.Popen) -> int:
    """The child's exit status; a stop signal to this process reaches the child (which marks its
    folder interrupted) unless it already got it from the terminal."""
    try:
        return proc.wait()
    except KeyboardInterrupt as err:
        try:
            return proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.send_signal(runstate.interrupted(err).signum)
            return proc.wait()


def run_one(fid: str, scale: str, overrides: list[str]) -> tuple[tuple, int]:
    """Run one figure in a subprocess -> (table row, exit status)."""
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "ntkrepro", f"figure={fid}", f"scale={scale}", *overrides])
    code = _wait(proc)
    record = _record(runstate.out_root_of(overrides), fid, scale, proc.pid) or {}
    status = record.get("state") or f"error (exit {code})"
    if record.get("state") == "finished" and code != 0:
        status = f"finished, exit {code}"
    return (fid, status, claims_cell(record), timings.fmt(time.time() - t0)), code


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ntkrepro.batch", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument("--figures", default="", type=figure_list, help="space-separated ids (default: every figure)")
    parser.add_argument("overrides", nargs="*", help="settings passed to every run (setting=value)")
    args = parser.parse_args(argv)
    figures = args.figures
    preflight.check_runs(figures, args.scale, args.overrides)  # a bad setting: one line before any run
    runstate.install_signal_handlers()
    rows, worst = [("figure", "status", "paper claims passed/evaluated", "time")], 0
    for fid in figures:
        row, code = run_one(fid, args.scale, args.overrides)
        rows.append(row)
        if code == 0 and row[1] != "finished":  # exit 0 without a finished run of this figure
            code = 1
        worst = worst or code
        if code > 128:  # stopped by a signal (Ctrl-C, SIGTERM): stop the batch too
            break
    print(f"\nmake figures SCALE={args.scale}: {sum(r[1] == 'finished' for r in rows)} of {len(figures)} "
          f"finished\n{table(rows)}", flush=True)
    return worst if worst > 128 else int(worst != 0)


if __name__ == "__main__":
    sys.exit(main())
