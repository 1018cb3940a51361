"""Shared test helpers: run the command line (or make) in a subprocess, read run folders."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "datasets"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}


def cli(*args, out_root: Path, module: str = "ntkrepro", timeout: int = 600):
    """Run `python -m <module> <args> out_root=<out_root>`; returns the CompletedProcess."""
    argv = [sys.executable, "-m", module, *args]
    if module == "ntkrepro":
        argv.append(f"out_root={out_root}")
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def start(*args, out_root: Path) -> subprocess.Popen:
    """Start `python -m ntkrepro <args> out_root=<out_root>` without waiting (text pipes)."""
    return subprocess.Popen([sys.executable, "-m", "ntkrepro", *args, f"out_root={out_root}"], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def make(*args, timeout: int = 600):
    """Run `make <args>` in the repository with this interpreter as PY."""
    return subprocess.run(["make", "--no-print-directory", f"PY={sys.executable}", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=ENV)


def error_line(res) -> str:
    """The single non-empty stderr line of a rejected command (asserts there is exactly one)."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    return lines[0]


def finished_runs(out_root: Path) -> list[Path]:
    """Folders under out_root that look like a finished run (they hold metrics.csv or claims.json)."""
    return sorted({p.parent for pat in ("metrics.csv", "claims.json", "manifest.json")
                   for p in Path(out_root).rglob(pat)})


def run_files(out_root: Path, name: str) -> list[Path]:
    """`<figure>/<scale>/<run>/<name>` under out_root, for polling a live run: a fixed-depth glob never
    walks into folders the run is writing or deleting (checkpoint states); a folder that vanishes
    between listing and reading reads as "not yet"."""
    try:
        return sorted(Path(out_root).glob(f"*/*/*/{name}"))
    except FileNotFoundError:
        return []


def run_record(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def compose_in_process(fid: str, scale: str = "smoke", overrides=()):
    """(effective settings, module) of a figure, composed in this process (sample data, JAX in x64)."""
    import jax

    from ntkrepro import manifest, plan
    from ntkrepro.runner import check_mutation

    _, run_cfg, module = plan.compose(fid, scale, ["data.source=sample", *overrides])
    check_mutation(module, run_cfg)
    jax.config.update("jax_enable_x64", True)
    manifest.reset_data()
    return run_cfg, module


def run_in_process(fid: str, scale: str = "smoke", overrides=(), subset=None):
    """(metrics, effective settings, module) of a figure run in this process: what a job computes,
    without its folder, figure and claims (fast: no interpreter start, no plotting)."""
    run_cfg, module = compose_in_process(fid, scale, overrides)
    return (module.run(run_cfg) if subset is None else module.run(run_cfg, subset=subset)), run_cfg, module
