"""Redraw a run's figure and re-evaluate its claims from the saved metrics, without recomputing.

    python -m ntkrepro.replot outputs/lee-s9/cpu/latest
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from ntkrepro import claims as claims_mod
from ntkrepro import runstate
from ntkrepro.errors import NtkreproError, one_line_errors
from ntkrepro.runner import SETTINGS_FILE, finish, load_experiment


def replot(run_dir: Path) -> list[claims_mod.Claim]:
    run_dir = Path(run_dir)
    settings, metrics = run_dir / SETTINGS_FILE, run_dir / "metrics.csv"
    for f in (settings, metrics):
        if not f.is_file():
            raise NtkreproError(f"{f} not found; give the folder of a finished run "
                                "(e.g. outputs/<id>/<scale>/latest)")
    record = runstate.read(run_dir) or {}
    if record.get("shards") and "shard" in record:
        raise NtkreproError(f"{run_dir} is part {record['shard']} of a split run of {record['shards']} parts: its "
                            f"metrics alone are not the figure's; merge the parts first: python -m "
                            f"ntkrepro.collect {run_dir.parent}")
    cfg = OmegaConf.load(settings)
    result = finish(load_experiment(cfg.experiment), pd.read_csv(metrics, low_memory=False), cfg, run_dir)
    if record:  # the claim counts `runs`, `make figures` and `verify` show follow the new claims.json
        runstate.RunFolder(run_dir).amend(claims=claims_mod.counts(result))
    return result


@one_line_errors
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("error: give one run folder: python -m ntkrepro.replot <run_dir> (e.g. outputs/<id>/<scale>/latest)",
              file=sys.stderr)
        return 2
    result = replot(Path(argv[0]))
    print(claims_mod.summary(result, OmegaConf.load(Path(argv[0]) / SETTINGS_FILE).get("scale", "")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
