"""Run folders and their state, kept in `<run>/run.json`.

A run claims its folder by creating `run.json` exclusively (a hard link: atomic, complete) (state `running`, host, pid, start time,
command line) and rewrites it when it ends: `finished` (with claim counts), `failed` (traceback in
`FAILED.txt`) or `interrupted` (SIGINT, SIGTERM, SIGHUP or SIGUSR1).  A folder still marked `running` whose
process no longer exists on this host (e.g. killed by SIGKILL) reads as `stale`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from ntkrepro.errors import ConfigError, NtkreproError

log = logging.getLogger("ntkrepro")
RUN_FILE = "run.json"
COMMAND_ENV = "NTKREPRO_COMMAND"  # the command as typed (set by ntkrepro.cli), recorded with each run
STATES = ("running", "finished", "failed", "interrupted", "stale")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


class FolderTaken(NtkreproError):
    """Another process already claimed the run folder."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM, SIGHUP, SIGUSR1) arrived; the exit status is 128 + signum."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signum)
        self.signum = int(signum)
        self.name = signal.Signals(signum).name


_held = {"on": False, "pending": None}  # see hold_signals


def _raise_interrupted(signum, frame):
    if _held["on"]:
        _held["pending"] = signum
        return
    from ntkrepro import checkpoint

    if signum != signal.SIGINT and checkpoint.defer_stop(signum):
        return  # a training loop saves a checkpoint first, then raises Interrupted
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """Turn SIGINT, SIGTERM, SIGHUP and SIGUSR1 into `Interrupted` (main thread only; no-op elsewhere)."""
    try:
        for sig in SIGNALS:
            signal.signal(sig, _raise_interrupted)
    except ValueError:  # not the main thread
        pass


def hold_signals() -> None:
    """Keep a stop signal pending until `release_signals`: an exception raised while a C extension
    such as numpy or jaxlib initialises can crash the interpreter, so imports run with signals held."""
    _held["on"] = True


def release_signals() -> None:
    """Stop holding; a stop signal that arrived meanwhile raises `Interrupted` now."""
    _held["on"] = False
    signum, _held["pending"] = _held["pending"], None
    if signum is not None:
        raise Interrupted(signum)


def exit_interrupted(code: int) -> None:
    """End a process stopped by a signal with status `code` at once: flush the console and logs, then
    `os._exit`.  A normal interpreter exit can crash (SIGSEGV, status 139) while XLA's threads are still
    running the computation the signal interrupted."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def interrupted(err: BaseException) -> Interrupted:
    """The `Interrupted` for a KeyboardInterrupt (a plain one is SIGINT)."""
    return err if isinstance(err, Interrupted) else Interrupted(signal.SIGINT)


def shown(path: Path) -> str:
    """A path as printed: relative to the working directory when inside it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def now_iso() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


class RunFolder:
    """The folder of one run and its `run.json`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.record: dict = {}
        self.t0 = time.time()

    def claim(self, resume: bool = False, **fields) -> dict:
        """Create `run.json` (state running) exclusively; `FolderTaken` if another process did.
        With `resume`, a folder whose run was interrupted or went stale (a job of a split run started
        again in its own folder) is taken over, keeping its checkpoints; one taker wins."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.record = {"state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                       "slurm_job": os.environ.get("SLURM_JOB_ID"),
                       "started": now_iso(), "ended": None, "wall_time_s": None, **fields}
        tmp = self._write_tmp()
        try:
            os.link(tmp, self.path / RUN_FILE)  # atomic and exclusive: fails if run.json exists
        except FileExistsError:
            previous = read(self.path) if resume else None
            if previous is None or previous["state"] not in ("interrupted", "stale"):
                raise FolderTaken(f"{self.path} already belongs to another run ({RUN_FILE} exists); "
                                  "start this run again (it gets a new folder)") from None
            self._take_over(previous, tmp)
        finally:
            if tmp.exists():
                tmp.unlink()
        self.t0 = time.time()
        return self.record

    def _take_over(self, previous: dict, tmp: Path) -> None:
        attempt = int(previous.get("attempt", 1)) + 1
        try:  # exclusive per attempt: of two processes taking over at once, one wins
            os.close(os.open(self.path / f".attempt-{attempt}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            raise FolderTaken(f"{self.path} was just taken over by another process") from None
        self.record.update(attempt=attempt, resumed_from=previous["state"])
        os.replace(self._write_tmp(), self.path / RUN_FILE)

    def amend(self, **fields) -> None:
        """Add fields to the record of a run that has ended (e.g. `resumed_by`)."""
        self.record = json.loads((self.path / RUN_FILE).read_text())
        self.update(**fields)

    def update(self, **fields) -> None:
        """Add fields to the record of the running run."""
        self.record.update(fields)
        os.replace(self._write_tmp(), self.path / RUN_FILE)

    def close(self, state: str, **fields) -> None:
        """Record how the run ended (finished, failed or interrupted)."""
        self.record.update(state=state, ended=now_iso(), wall_time_s=round(time.time() - self.t0, 3))
        self.record.update(fields)
        os.replace(self._write_tmp(), self.path / RUN_FILE)

    def _write_tmp(self) -> Path:
        tmp = self.path / f".{RUN_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(self.record, indent=2) + "\n")
        return tmp


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _slurm_job_gone(job: str) -> bool:
    """Whether Slurm no longer lists job `job` (finished, killed, its node lost); False when it
    cannot tell (no `squeue` here, or it failed)."""
    import shutil
    import subprocess

    if not shutil.which("squeue"):
        return False
    try:
        res = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    listed = res.returncode == 0 and res.stdout.strip()
    return not listed and (res.returncode == 0 or "Invalid job id" in res.stderr)


def state(record: dict) -> str:
    """The recorded state, or `stale` for a run marked running whose process is gone: from this host
    (its pid), or a Slurm job that `squeue` no longer lists (a job of another node: SIGKILLed, out of
    memory, its node lost)."""
    if record.get("state") != "running":
        return record.get("state", "unknown")
    if record.get("host") == socket.gethostname():
        return "running" if _alive(int(record.get("pid", 0))) else "stale"
    if record.get("slurm_job") and _slurm_job_gone(record["slurm_job"]):
        return "stale"
    return "running"


def read(run_dir: Path) -> dict | None:
    """A run's record with its current state (None if the folder has no readable run.json)."""
    try:
        record = json.loads((Path(run_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {**record, "state": state(record)}


def find(out_root: Path) -> list[tuple[Path, dict]]:
    """(folder, record) of every run under out_root, oldest first."""
    runs = []
    for path in Path(out_root).rglob(RUN_FILE):
        record = read(path.parent)
        if record is not None and not path.parent.is_symlink():
            runs.append((path.parent, record))
    return sorted(runs, key=lambda r: str(r[1].get("started", "")))


def link_latest(out_root: Path, figure_id: str, scale: str, run_dir: Path) -> None:
    """Point `<out_root>/<id>/<scale>/latest` (relative symlink) at a finished run."""
    parent = Path(out_root) / figure_id / scale
    parent.mkdir(parents=True, exist_ok=True)
    link, tmp = parent / "latest", parent / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(os.path.relpath(Path(run_dir).resolve(), parent.resolve()))
        os.replace(tmp, link)
    except OSError as err:  # e.g. file systems without symlinks
        log.warning("could not update %s: %s", link, err)


def out_root_of(overrides) -> Path:
    """The out_root a command line's settings name (the last `out_root=...`), else conf/config.yaml's."""
    roots = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("out_root=")]
    if roots:
        return Path(roots[-1])
    from omegaconf import OmegaConf

    from ntkrepro.registry import CONF_DIR
    return Path(OmegaConf.load(CONF_DIR / "config.yaml").out_root)


def runs_root(given: Path | None) -> Path:
    """The out_root a command reads runs from: `given` (`--out-root`; `ConfigError` unless it is a
    folder) or conf/config.yaml's."""
    if given is not None and not Path(given).is_dir():
        raise ConfigError(f"--out-root {given} is not a folder; give the out_root the runs were written to")
    return Path(given) if given is not None else out_root_of([])


def check_can_hold_folders(root, setting: str = "out_root") -> None:
    """`ConfigError` unless folders can be made at `root`: its deepest existing ancestor must be a
    folder in which one can be made (tried with a temporary folder, removed at once; nothing else
    is created), so a run fails before it writes anything, not with a traceback half-way."""
    path = Path(root).expanduser().absolute()
    base = next(p for p in (path, *path.parents) if p.exists())
    if not base.is_dir():
        raise ConfigError(f"{setting}={root} cannot hold output folders: {base} is a file; "
                          f"set {setting}=<a writable folder>")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ntkrepro-probe-", dir=base))
    except OSError as err:
        raise ConfigError(f"{setting}={root} cannot hold output folders: no folder can be made in {base} "
                          f"({err.strerror}); set {setting}=<a writable folder>") from None
