"""Measured wall time of one run of each figure at each scale on the reference machine
(`conf/timings.yaml`), shown by `python -m ntkrepro --help` and rewritten by
`python -m ntkrepro.runs --timings` from the latest finished runs."""
from __future__ import annotations

import os
import platform
import re
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
# outputs/ (a whole run at the preset's settings: no split part, collected, resumed or changed
# setting); a figure and scale with no such run keeps its value and its comment.
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


_ROW = re.compile(r"^  (\S+):\s+\{.*\}\s*#\s*(.*)$")
# settings that do not change what a run computes at its preset (the timing stays that of the preset)
_NEUTRAL = ("figure", "scale", "out_root", "seed", "data.root", "data.source", "device")


def comments(path: Path = TIMINGS_FILE) -> dict[str, str]:
    """The comment at the end of each figure's row of the timings file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return {}
    return {m.group(1): m.group(2) for m in map(_ROW.match, lines) if m}


def dump(data: dict, notes: dict[str, str] | None = None) -> str:
    lines = [HEADER.rstrip("\n"), f"machine: {data.get('machine')!r}", f"date: '{data.get('date')}'",
             *([f"note: {data['note']!r}"] if data.get("note") else []),
             f"from_readme: [{', '.join(data.get('from_readme', []))}]", "times:"]
    width = max((len(fid) for fid in data.get("times", {})), default=0)
    notes = notes or {}
    for fid, row in sorted(data.get("times", {}).items()):
        cells = ", ".join(f"{s}: {'null' if row.get(s) is None else row[s]}" for s in SCALES)
        comment = f"  # {notes[fid]}" if notes.get(fid) else ""
        lines.append(f"  {fid + ':':<{width + 1}} {{{cells}}}{comment}")
    return "\n".join(lines) + "\n"


def _at_preset(record: dict) -> bool:
    """A whole run of the preset: not one part of a split run, not collected from parts (its time
    is the parts'), not resumed (its time is the last attempt's), no setting beyond `_NEUTRAL`."""
    if record.get("shards") or record.get("collected_from") or record.get("resumed_from"):
        return False
    keys = [o.lstrip("+~").split("=", 1)[0] for o in record.get("overrides", [])]
    return all(k in _NEUTRAL or k.startswith("hydra.") for k in keys)


def latest_finished(out_root: Path, figure: str | None = None, scale: str | None = None) -> dict:
    """{(figure, scale): wall_time_s} of the latest finished run at its preset of each figure and scale
    (only `figure` / `scale` when given)."""
    out = {}
    for _, record in runstate.find(out_root):  # oldest first: later runs overwrite
        if (record["state"] == "finished" and record.get("wall_time_s") is not None and _at_preset(record)
                and figure in (None, record.get("figure")) and scale in (None, record.get("scale"))):
            out[(record.get("figure"), record.get("scale"))] = round(float(record["wall_time_s"]), 1)
    return out


def update(out_root: Path, path: Path = TIMINGS_FILE, figure: str | None = None,
           scale: str | None = None) -> list[str]:
    """Rewrite the timings file with the latest finished runs at their presets under out_root (of
    `figure` / `scale` when given); returns the `id.scale` entries measured (none: the file is left
    as it is).  Rows not measured keep their comments; the note says what was measured when."""
    data, notes = load(path), comments(path)
    found = latest_finished(out_root, figure, scale)
    if not found:
        return []
    times = data.setdefault("times", {})
    today = date.today().isoformat()
    for (fid, s), seconds in found.items():
        times.setdefault(fid, {k: None for k in SCALES})[s] = seconds
        notes[fid] = f"{s}: measured {today} (`runs --timings`)" + (f"; {notes[fid]}" if notes.get(fid) else "")
    measured = sorted(f"{fid}.{s}" for fid, s in found)
    copied = [c for c in data.get("from_readme", []) if c not in measured]
    note = f"{', '.join(measured)} measured {today} on {machine()} by `runs --timings`"
    data.update(date=today, from_readme=copied, note="; ".join(filter(None, [data.get("note"), note])))
    Path(path).write_text(dump(data, notes))
    return measured
