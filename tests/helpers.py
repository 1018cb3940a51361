"""Shared test helpers: run the command line in a subprocess, find the shared data root."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "datasets"


def cli(*args, out_root: Path, module: str = "ntkrepro", timeout: int = 600):
    """Run `python -m <module> <args> out_root=<out_root>`; returns the CompletedProcess."""
    argv = [sys.executable, "-m", module, *args]
    if module == "ntkrepro":
        argv.append(f"out_root={out_root}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def finished_runs(out_root: Path) -> list[Path]:
    """Folders under out_root that look like a finished run (they hold metrics.csv or claims.json)."""
    return sorted({p.parent for pat in ("metrics.csv", "claims.json", "manifest.json")
                   for p in Path(out_root).rglob(pat)})
