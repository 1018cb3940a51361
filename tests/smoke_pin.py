"""Smoke-scale metrics pinned before the study-layer rewrite (issue 12), and how to compare with them.

`tests/baselines/smoke/<id>.csv` is the smoke-scale metrics.csv of each figure computed by commit
ca8be64 (before the experiments moved onto `ntkrepro.train`, `ntkrepro.models`, `ntkrepro.tasks`).
Where the computation is the same, a smoke run now must give the same table to float tolerance.

    python tests/smoke_pin.py lee-s9 [lee-s10 ...]     # run smoke and compare (exit 1 on a difference)
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
    bad = 0
    for fid in ids:
        with tempfile.TemporaryDirectory() as tmp:
            problems = compare(pd.read_csv(BASELINES / f"{fid}.csv"), run_smoke(fid, Path(tmp)))
        print(f"{fid}: {'same' if not problems else 'DIFFERENT'}")
        for p in problems:
            print("   ", p)
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
