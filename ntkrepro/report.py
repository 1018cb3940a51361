"""The reproduction report: what reproduced and what did not, from the runs under outputs/.

    python -m ntkrepro.report [--out-root outputs] [--dest outputs/report]      (make report)

Writes `<dest>/index.html` and `<dest>/REPORT.md` (the figures copied beside them into `<dest>/img/`,
so the folder is self-contained): a summary table (figure x scale: paper claims passed / evaluated,
our checks apart), then per figure its latest finished run at each scale with the figure, every
claim (kind, value, tolerance, status, where the paper says it), the tables the run wrote beside the
paper's published numbers (e.g. Arora et al.'s Tables 1-2, Liu et al.'s Table 1, Table S1), the
seed-robustness rows of the newest `make verify` table, run time, code version and data checksums.
"""
from __future__ import annotations

import html
import json
import re
import shutil
import sys
from pathlib import Path

from ntkrepro import runstate
from ntkrepro.errors import ArgumentParser, one_line_errors
from ntkrepro.registry import SCALES, figure_ids
from ntkrepro.timings import fmt


def latest_runs(all_runs: list[tuple[Path, dict]]) -> dict[tuple[str, str], tuple[Path, dict]]:
    """(figure, scale) -> the newest finished, complete run (not a part of a split run) of
    `runstate.find`'s runs."""
    found = {}
    for path, record in all_runs:
        if record["state"] == "finished" and not record.get("part") and (path / "claims.json").is_file():
            found[(record.get("figure"), record.get("scale"))] = (path, record)  # find() is oldest first
    return found


def _claims(path: Path) -> list[dict]:
    return json.loads((path / "claims.json").read_text())


def _count(claims: list[dict], kind: str) -> str:
    mine = [c for c in claims if c.get("kind", "paper") == kind]
    evaluated = [c for c in mine if c["status"] != "NOT EVALUATED"]
    if not mine:
        return ""
    if not evaluated:
        return f"{len(mine)} not evaluated"
    return f"{sum(c['status'] == 'PASS' for c in evaluated)}/{len(evaluated)}"


def _verify_rows(out_root: Path) -> dict[str, list[str]]:
    """figure -> its rows of the newest verify.md."""
    tables = sorted((out_root / "verify").glob("*/verify.md"))
    if not tables:
        return {}
    rows: dict[str, list[str]] = {}
    for line in tables[-1].read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] not in ("figure", "---"):
            rows.setdefault(cells[0], []).append(line)
    return rows


def _md_table(rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    return out + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows[1:]]


def _figure_section(fid: str, runs: dict, dest: Path, verify: dict) -> list[str]:
    lines = [f"## {fid}", ""]
    for scale in SCALES:
        if (fid, scale) not in runs:
            continue
        path, record = runs[(fid, scale)]
        man = json.loads((path / "manifest.json").read_text()) if (path / "manifest.json").is_file() else {}
        code = (man.get("git") or {}).get("code_version") or record.get("code_version", "?")
        lines += [f"### {fid} at {scale} scale", "",
                  f"run `{runstate.shown(path)}`, {fmt(record.get('wall_time_s'))}, seed {record.get('seed')}, "
                  f"commit {(man.get('git') or {}).get('commit', '?')}, code version {code}", ""]
        png = path / f"{fid}.png"
        if png.is_file():
            (dest / "img").mkdir(parents=True, exist_ok=True)
            shutil.copy(png, dest / "img" / f"{fid}-{scale}.png")
            lines += [f"![{fid} at {scale}](img/{fid}-{scale}.png)", ""]
        rows = [["status", "kind", "value", "expected", "claim", "measure", "where in the paper"]]
        for c in _claims(path):
            value = "n/a" if c.get("value") is None else f"{c['value']:.4g}"
            rows.append([c["status"], c.get("kind", "paper"), value, c["expected"], c["claim"], c["measure"],
                         c.get("cite", "") or c.get("reason", "")])
        lines += _md_table(rows) + [""]
        for table in sorted(path.glob("*.md")):  # its headings below this section's
            text = "\n".join("###" + ln if ln.startswith("#") else ln for ln in table.read_text().strip().splitlines())
            lines += [f"**{table.name}** (written by the run; published numbers beside ours)", "", text, ""]
        data = [f"{d.get('name')}: {str(d.get('sha256', ''))[:16]}" for d in man.get("data", [])]
        if data:
            lines += ["data (sha256): " + "; ".join(data), ""]
    if fid in verify:
        lines += ["Seed robustness (newest `make verify`):", "",
                  "| figure | kind | claim | PASS at | values |", "| --- | --- | --- | --- | --- |",
                  *verify[fid], ""]
    return lines


def markdown(out_root: Path, dest: Path) -> str:
    all_runs = runstate.find(out_root)
    runs, verify = latest_runs(all_runs), _verify_rows(out_root)
    # the state of each figure and scale's newest run, said where none finished (e.g. interrupted)
    states = {(r.get("figure"), r.get("scale")): r["state"] for _, r in all_runs if not r.get("part")}
    ids = figure_ids()
    summary = [["figure", *[f"{s}: paper claims" for s in SCALES], *[f"{s}: checks" for s in SCALES]]]
    for fid in ids:
        cells = [_count(_claims(runs[(fid, s)][0]), "paper") if (fid, s) in runs
                 else f"no finished run ({states[(fid, s)]})" if (fid, s) in states else "not run" for s in SCALES]
        checks = [_count(_claims(runs[(fid, s)][0]), "check") if (fid, s) in runs else "" for s in SCALES]
        summary.append([fid, *cells, *checks])
    lines = ["# ntkrepro reproduction report", "",
             "Paper claims passed / evaluated at each scale (our own consistency checks counted apart); "
             "from the newest finished run of each figure and scale under "
             f"`{runstate.shown(out_root)}`.", "", *_md_table(summary), ""]
    for fid in ids:
        if any((fid, s) in runs for s in SCALES):
            lines += _figure_section(fid, runs, dest, verify)
    return "\n".join(lines) + "\n"


def to_html(md: str) -> str:
    """The report's markdown (headings, pipe tables, images, paragraphs) as one HTML page."""
    body, table = [], []

    def flush():
        if table:
            head, *rest = [r for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            cells = lambda r: [html.escape(c.strip()) for c in r.strip().strip("|").split("|")]  # noqa: E731
            body.append("<table><tr>" + "".join(f"<th>{c}</th>" for c in cells(head)) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells(r)) + "</tr>" for r in rest)
                        + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}" width="900"></p>')
        elif line.strip():
            text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(line))
            body.append("<p>" + re.sub(r"`([^`]+)`", r"<code>\1</code>", text) + "</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ntkrepro report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build(out_root: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    md = markdown(out_root, dest)
    (dest / "REPORT.md").write_text(md)
    (dest / "index.html").write_text(to_html(md))
    return dest / "index.html"


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ntkrepro.report", description=__doc__.split("\n")[0])
    parser.add_argument("--out-root", default=None, type=Path,
                        help="where the runs are (default: conf/config.yaml's out_root)")
    parser.add_argument("--dest", default=None, type=Path, help="default: <out-root>/report")
    args = parser.parse_args(argv)
    out_root = args.out_root or runstate.out_root_of([])
    dest = args.dest or out_root / "report"
    runstate.check_can_hold_folders(*((dest, "--dest") if args.dest else (out_root, "--out-root")))
    path = build(runstate.runs_root(args.out_root), dest)
    print(f"wrote {runstate.shown(path)} and {runstate.shown(path.with_name('REPORT.md'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
