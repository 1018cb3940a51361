"""Measured wall time of one run of each figure at each scale on the reference machine
(`conf/timings.yaml`), shown by `python -m ntkrepro --help` and rewritten by
`python -m ntkrepro.runs --timings` from the latest finished runs."""
from __future__ import annotations

import os
import platform
from datetime import date
from pathlib import Path

import yaml

from ntkrepro import runstate
from ntkrepro.registry import CONF_DIR, SCALES

TIMINGS_FILE = CONF_DIR / "timings.yaml"
HEADER = """\
# Wall time in seconds of one run of each figure at each scale on the reference machine below
# (null: never measured there).  `python -m ntkrepro --help` prints them.  Rewritten by
# `python -m ntkrepro.runs --timings` from the latest finished run of each figure and scale under
# outputs/; a figure and scale with no such run keeps its value.
# `from_readme` lists the values copied from README.md (runs made before this file existed); `note`
# says under what conditions the values were measured, if they were unusual.
"""


def machine() -> str:
    """The CPU model and core count of this machine, e.g. 'AMD EPYC 7B13, 2 cores'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def load(path: Path = TIMINGS_FILE) -> dict:
    """{machine, date, [note], times: {id: {smoke, cpu, paper}}, from_readme: [id.scale]} ({} if absent)."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except OSError:
        return {}


def fmt(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 100:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    if seconds < 6000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dump(data: dict) -> str:
    lines = [HEADER.rstrip("\n"), f"machine: {data.get('machine')!r}", f"date: '{data.get('date')}'",
             *([f"note: {data['note']!r}"] if data.get("note") else []),
             f"from_readme: [{', '.join(data.get('from_readme', []))}]", "times:"]
    width = max((len(fid) for fid in data.get("times", {})), default=0)
    copied = set(data.get("from_readme", []))
    for fid, row in sorted(data.get("times", {}).items()):
        cells = ", ".join(f"{s}: {'null' if row.get(s) is None else row[s]}" for s in SCALES)
        note = [s for s in SCALES if f"{fid}.{s}" in copied]
        comment = f"  # {', '.join(note)}: copied from README.md" if note else ""
        lines.append(f"  {fid + ':':<{width + 1}} {{{cells}}}{comment}")
    return "\n".join(lines) + "\n"


def latest_finished(out_root: Path) -> dict:
    """{(figure, scale): wall_time_s} of the latest finished run of each figure and scale."""
    out = {}
    for _, record in runstate.find(out_root):  # oldest first: later runs overwrite
        if record["state"] == "finished" and record.get("wall_time_s") is not None:
            out[(record.get("figure"), record.get("scale"))] = round(float(record["wall_time_s"]), 1)
    return out


def update(out_root: Path, path: Path = TIMINGS_FILE) -> dict:
    """Rewrite the timings file from the latest finished runs under out_root; returns its data."""
    data = load(path)
    times = data.setdefault("times", {})
    copied = list(data.get("from_readme", []))
    for (fid, scale), seconds in latest_finished(out_root).items():
        times.setdefault(fid, {s: None for s in SCALES})[scale] = seconds
        copied = [c for c in copied if c != f"{fid}.{scale}"]
    data.update(machine=machine(), date=date.today().isoformat(), from_readme=copied)
    data.pop("note", None)  # it described the conditions of the previous measurements
    Path(path).write_text(dump(data))
    return data
