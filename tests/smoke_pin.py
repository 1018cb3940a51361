"""Pinned smoke-scale metrics of every figure, and how to compare with them.

`tests/baselines/smoke/<id>.csv` is the smoke-scale metrics.csv of each figure.  They were first
computed by commit ca8be64 (before the experiments moved onto the study layer, issue 12: where the
computation stayed the same, the new code gave the same table) and re-pinned where a later change was
meant to change the numbers (per-point random keys for split runs, issue 15; say which in the commit).
A smoke run (tests/test_figures.py) and a split run's collected parts (tests/test_scaleout.py) must
give the pinned table to float tolerance.

    python tests/smoke_pin.py lee-s9 [lee-s10 ...]            # run smoke and compare (exit 1 on a difference)
    python tests/smoke_pin.py --update lee-s9 [lee-s10 ...]   # re-pin after an intended change (say why
                                                              # in the commit message)
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

BASELINES = Path(__file__).resolve().parent / "baselines" / "smoke"
REPO = Path(__file__).resolve().parent.parent


# float32 training runs reorder sums between XLA builds and core counts: pins hold to 1e-4 relative
PIN_TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def pinned(fid: str) -> pd.DataFrame:
    """The pinned smoke-scale metrics of a figure (tests/baselines/smoke/<id>.csv)."""
    path = BASELINES / f"{fid}.csv"
    assert path.is_file(), f"no pinned smoke metrics for {fid}: run it at smoke scale and copy metrics.csv to {path}"
    return pd.read_csv(path)


def compare(expected: pd.DataFrame, actual: pd.DataFrame, rtol: float = 1e-5, atol: float = 1e-7) -> list[str]:
    """Differences between two metrics tables (same columns, same rows in the same order); [] if equal."""
    problems = []
    if sorted(expected.columns) != sorted(actual.columns):
        return [f"columns differ: {sorted(expected.columns)} vs {sorted(actual.columns)}"]
    if len(expected) != len(actual):
        return [f"{len(expected)} rows expected, got {len(actual)}"]
    for col in expected.columns:
        a, b = expected[col], actual[col]
        if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
            x, y = a.to_numpy(float), b.to_numpy(float)
            same = np.isclose(x, y, rtol=rtol, atol=atol, equal_nan=True)
        else:
            same = (a.isna().to_numpy() & b.isna().to_numpy()) | (a.astype(str).to_numpy() == b.astype(str).to_numpy())
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            problems.append(f"column {col}: {int((~same).sum())} rows differ, first at row {i}: "
                            f"{a.iloc[i]!r} vs {b.iloc[i]!r}")
    return problems


def run_smoke(fid: str, out_root: Path) -> pd.DataFrame:
    res = subprocess.run([sys.executable, "-m", "ntkrepro", f"figure={fid}", "scale=smoke",
                          f"out_root={out_root}"], cwd=REPO, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{fid} smoke run failed:\n{res.stderr[-3000:]}")
    return pd.read_csv(next((out_root / fid / "smoke").glob("*/metrics.csv")))


def main(ids: list[str]) -> int:
    bad, update = 0, "--update" in ids
    for fid in [i for i in ids if i != "--update"]:
        with tempfile.TemporaryDirectory() as tmp:
            metrics = run_smoke(fid, Path(tmp))
        if update:
            metrics.to_csv(BASELINES / f"{fid}.csv", index=False)
            print(f"{fid}: pinned {len(metrics)} rows")
            continue
        problems = compare(pd.read_csv(BASELINES / f"{fid}.csv"), metrics)
        print(f"{fid}: {'same' if not problems else 'DIFFERENT'}")
        for p in problems:
            print("   ", p)
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
