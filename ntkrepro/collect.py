"""Merge the parts of a split run into one result: metrics, figure, claims, manifest.

    python -m ntkrepro.collect <sweep folder> [<sweep folder> ...]      (make collect DIR=...)

The parts are the run folders below the given folders whose run.json says `shards` > 1 (written by
`python -m ntkrepro figure=<id> shards=<n> shard=<k>`, usually as a sweep `-m ... 'shard=range(n)'`).
For each (figure, scale) the parts must be all of 0..n-1, finished, with the same settings and the
same code version; otherwise collect names what is missing or different and exits 2 without writing
anything.  The merged run is written beside its parts (into the folder that holds them all; for a
split run its sweep folder: `<sweep folder>/collected-<token>/`) as a finished run (run.json,
metrics.csv, settings.yaml, figure, claims.json, manifest.json listing the parts), and
`<out_root>/<id>/<scale>/latest` points at it.
"""
from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from ntkrepro import claims as claims_mod
from ntkrepro import runstate
from ntkrepro.errors import ArgumentParser, NtkreproError, one_line_errors
from ntkrepro.runner import SETTINGS_FILE, finish, load_experiment


class IncompleteSweep(NtkreproError):
    """Parts are missing, unfinished or disagree."""


def find_parts(folders) -> dict[tuple, list[tuple[Path, dict]]]:
    """(figure, scale) -> [(folder, record)] of every part of a split run below `folders`."""
    groups = defaultdict(list)
    for folder in folders:
        if not Path(folder).is_dir():
            raise IncompleteSweep(f"{folder} is not a folder; give the sweep folder of a split run")
        for path, record in runstate.find(Path(folder)):
            if int(record.get("shards", 1)) > 1:
                groups[(record.get("figure"), record.get("scale"))].append((path, record))
    if not groups:
        raise IncompleteSweep(f"no parts of a split run under {', '.join(map(str, folders))}; run one with "
                              "python -m ntkrepro -m figure=<id> shards=<n> 'shard=range(<n>)'")
    return groups


def _check(key, parts) -> list[tuple[Path, dict]]:
    """The finished parts 0..n-1 in order, or `IncompleteSweep` saying what is wrong."""
    fid, scale = key
    for field in ("settings_hash", "code_version", "shards"):
        values = defaultdict(list)
        for path, record in parts:
            values[record.get(field)].append(f"shard={record.get('shard')}")
        if len(values) > 1:
            seen = "; ".join(f"{v}: {', '.join(s)}" for v, s in values.items())
            what = {"settings_hash": "settings", "code_version": "code versions (commits)",
                    "shards": "numbers of shards"}[field]
            raise IncompleteSweep(f"the parts of {fid} at {scale} come from different {what} ({seen}); "
                                  "collect parts of one run only")
    n = int(parts[0][1]["shards"])
    finished = {int(r["shard"]): (p, r) for p, r in parts if r["state"] == "finished"}
    missing = [k for k in range(n) if k not in finished]
    if missing:
        states = {int(r["shard"]): r["state"] for _, r in parts}
        shown = ", ".join(f"shard={k} ({states.get(k, 'never started')})" for k in missing)
        raise IncompleteSweep(f"{fid} at {scale}: {len(missing)} of {n} parts not finished: {shown}; "
                              f"run the same command again to compute only those, then collect")
    return [finished[k] for k in range(n)]


def merge(parts: list[tuple[Path, dict]]) -> pd.DataFrame:
    """The parts' metrics, concatenated in shard order."""
    return pd.concat([pd.read_csv(p / "metrics.csv", low_memory=False) for p, _ in parts], ignore_index=True)


def collect_one(key, parts) -> Path:
    """Write the merged run of one (figure, scale) beside its parts; returns its folder."""
    parts = _check(key, parts)
    first_path, first = parts[0]
    cfg = OmegaConf.load(first_path / SETTINGS_FILE)
    metrics = merge(parts)
    out = Path(os.path.commonpath([p.parent for p, _ in parts])) / f"collected-{secrets.token_hex(3)}"
    folder = runstate.RunFolder(out)
    folder.claim(figure=key[0], scale=key[1], seed=first.get("seed"), command=shlex.join(["python", "-m", "ntkrepro.collect", *sys.argv[1:]]),
                 settings_hash=first["settings_hash"], code_version=first["code_version"],
                 collected_from=[runstate.shown(p) for p, _ in parts], out_root=first.get("out_root"))
    metrics.to_csv(out / "metrics.csv", index=False)
    OmegaConf.save(cfg, out / SETTINGS_FILE, resolve=True)
    result = finish(load_experiment(cfg.experiment), metrics, cfg, out)
    manifest = json.loads((first_path / "manifest.json").read_text())
    manifest.pop("part", None)
    manifest["parts"] = [{"folder": runstate.shown(p), "shard": r["shard"], "points": r.get("points"),
                          "wall_time_s": r.get("wall_time_s"), "host": r.get("host")} for p, r in parts]
    manifest["wall_time_s"] = sum(float(r.get("wall_time_s") or 0) for _, r in parts)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    folder.close("finished", claims=claims_mod.counts(result), wall_time_s=manifest["wall_time_s"])
    if first.get("out_root"):
        runstate.link_latest(Path(first["out_root"]), str(key[0]), str(key[1]), out)
    print(f"{key[0]} ({key[1]}): {len(parts)} parts -> {runstate.shown(out)}\n"
          f"{claims_mod.summary(result, str(key[1]))}")
    return out


def collect(folders) -> list[Path]:
    groups = find_parts(folders)
    for key, parts in groups.items():  # check everything before writing anything
        _check(key, parts)
    return [collect_one(key, parts) for key, parts in groups.items()]


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ntkrepro.collect", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folder(s) holding the parts")
    collect(parser.parse_args(argv).folders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
