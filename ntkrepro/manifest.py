"""What produced a run: command line, start time, code version, packages, devices, precision, seed,
time, data provenance."""
from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

from ntkrepro.data import checksum

_PACKAGES = ("ntkrepro", "jax", "jaxlib", "flax", "optax", "hydra-core", "numpy", "scipy", "pandas",
             "matplotlib", "diffrax", "tensorflow-datasets")
_DATA: list[dict] = []


def record_data(name: str, source: str, arrays=(), **extra) -> None:
    """Experiments call this for every data set they use; the runner puts it in manifest.json."""
    entry = {"name": name, "source": source, **extra}
    if arrays:
        entry["sha256"] = checksum(*arrays)
    _DATA.append(entry)


def reset_data() -> None:
    _DATA.clear()


def _git(repo: Path, *args) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


REPO = Path(__file__).resolve().parent.parent
CODE_PATHS = ("ntkrepro", "experiments", "conf", "pyproject.toml")  # what a run's results depend on
# ... but not the measured run times `--help` shows (rewritten by `python -m ntkrepro.runs --timings`):
# refreshing them must not move a split run to a new sweep folder or void verify's finished runs
_PATHSPEC = (*CODE_PATHS, ":(exclude)conf/timings.yaml")


def code_version() -> str:
    """A hash of the code and configs a run's results depend on (`CODE_PATHS` but conf/timings.yaml) as they are in the
    working tree, committed or not: two runs with the same version ran the same code, and a commit
    that changes only, say, the README keeps the version."""
    import hashlib

    h = hashlib.sha256()
    for args in (("ls-files", "-s", "--", *_PATHSPEC), ("diff", "HEAD", "--", *_PATHSPEC)):
        h.update((_git(REPO, *args) or "").encode())
    untracked = (_git(REPO, "ls-files", "--others", "--exclude-standard", "--", *_PATHSPEC) or "").split()
    if untracked:
        h.update((_git(REPO, "hash-object", "--", *untracked) or "").encode())
    return h.hexdigest()[:16]


def build(*, figure_id: str, scale: str, seed: int, wall_time_s: float, settings: dict,
          command: str | None = None, started: str | None = None, **extra) -> dict:
    import jax

    commit = _git(REPO, "rev-parse", "HEAD")
    status = _git(REPO, "status", "--porcelain", "--untracked-files=no")
    return {
        "figure": figure_id,
        "scale": scale,
        "seed": seed,
        "command": command,
        "started": started,
        "wall_time_s": round(wall_time_s, 3),
        "git": {"commit": commit, "dirty": bool(status) if status is not None else None,
                "code_version": code_version()},
        "packages": {p: _version(p) for p in _PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "jax": {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
                "x64": bool(jax.config.jax_enable_x64)},
        "data": list(_DATA),
        "settings": settings,
        **extra,
    }


def write(manifest: dict, path: Path) -> None:
    path.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
