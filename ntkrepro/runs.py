"""List runs by figure and scale with their state, claims and time; or rewrite conf/timings.yaml.

    python -m ntkrepro.runs [--figure ID] [--scale S] [--out-root DIR]
    python -m ntkrepro.runs --timings [--out-root DIR]

States: running (host, pid alive), finished, failed (traceback in FAILED.txt), interrupted (SIGINT,
SIGTERM or SIGHUP), stale (marked running but its process is gone: killed, e.g. by SIGKILL).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ntkrepro import runstate, timings
from ntkrepro.errors import ArgumentParser, one_line_errors
from ntkrepro.registry import SCALES, figure_id

COLUMNS = ("figure", "scale", "state", "claims", "time", "started", "folder")


def claims_cell(record: dict) -> str:
    """`passed/evaluated` paper claims (plus the number not evaluated), or '-' before the end."""
    c = record.get("claims")
    if not c:
        return "-"
    text = f"{c['paper_passed']}/{c['paper_evaluated']}"
    return text + (f" ({c['not_evaluated']} not evaluated)" if c.get("not_evaluated") else "")


def table(rows: list[tuple]) -> str:
    """Fixed-width text table; the first row is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(f"{str(v):<{w}}" for v, w in zip(r, widths)).rstrip() for r in rows)


def _row(folder: Path, record: dict) -> tuple:
    started = str(record.get("started", "")).replace("T", " ")[:19]
    return (record.get("figure", "?"), record.get("scale", "?"), record["state"], claims_cell(record),
            timings.fmt(record.get("wall_time_s")), started, runstate.shown(folder))


def _order(item) -> tuple:
    _, record = item
    scale = record.get("scale")
    return (str(record.get("figure")), SCALES.index(scale) if scale in SCALES else 9, str(record.get("started")))


def listing(out_root: Path, figure: str | None = None, scale: str | None = None) -> str:
    runs = [(f, r) for f, r in runstate.find(out_root)
            if figure in (None, r.get("figure")) and scale in (None, r.get("scale"))]
    if not runs:
        return f"no runs under {out_root}" + (f" for {figure}" if figure else "") + (f" at {scale}" if scale else "")
    return table([COLUMNS, *(_row(f, r) for f, r in sorted(runs, key=_order))])


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ntkrepro.runs", description=__doc__.split("\n")[0])
    parser.add_argument("--figure", type=figure_id, help="only this figure id")
    parser.add_argument("--scale", choices=SCALES, help="only this scale")
    parser.add_argument("--out-root", default=None, type=Path,
                        help="where the runs are (default: conf/config.yaml's out_root)")
    parser.add_argument("--timings", action="store_true",
                        help="rewrite conf/timings.yaml from the latest finished runs")
    args = parser.parse_args(argv)
    args.out_root = runstate.runs_root(args.out_root)
    if args.out_root.is_symlink():  # e.g. <out_root>/<id>/<scale>/latest: the run it points at
        args.out_root = args.out_root.resolve()
    if args.timings:
        measured = timings.update(args.out_root, figure=args.figure, scale=args.scale)
        print(f"{timings.TIMINGS_FILE}: {', '.join(measured)} updated" if measured else
              f"no finished run at its preset under {args.out_root}; {timings.TIMINGS_FILE} left as it is")
        return 0
    print(listing(args.out_root, args.figure, args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
