"""Preemption-safe training: `train.fit` saves its state into the run folder and resumes from it.

The runner opens a `Session` on `<run folder>/checkpoints` for the whole run.  Every `train.fit` call
of the run takes the next key of the session (``fit-0000``, ``fit-0001``, ...: the order of fit calls
is a function of the settings, so a restarted run with the same settings asks for the same keys):

* a fit whose final checkpoint exists returns it at once (nothing is recomputed);
* a fit with a partial checkpoint restores its state, recorded points and losses, and continues;
* while it runs, a fit saves every `every_steps` steps and at least every `every_seconds` seconds
  (at the first pause after that time), and when a stop was requested (SIGTERM, SIGHUP or SIGUSR1:
  what Slurm sends before preemption) it saves and raises `runstate.Interrupted`, which the runner
  records as an interrupted run.  Pauses come at least every ~30 s of training
  (`train._Checkpoints.PAUSE_SECONDS`; the segment length adapts to the measured time per step).

States are saved with orbax-checkpoint (`StandardCheckpointer`); the recorded points and losses
(arbitrary Python objects returned by observers) beside them with pickle.  Both are written to a
temporary name and renamed, so a kill at any moment leaves the previous checkpoint intact.
Kernel blocks use the same folder: `Session.cache_dir(name)` is a `kernels.blockwise` cache.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import time
from pathlib import Path

import jax
import numpy as np

from ntkrepro.errors import NtkreproError

_CURRENT: list["Session"] = []


class Session:
    """Checkpoints of one run folder."""

    def __init__(self, root: Path, *, every_steps: int = 1000, every_seconds: float = 600.0,
                 fingerprint: str = ""):
        self.root = Path(root)
        self.every_steps = max(1, int(every_steps))
        self.every_seconds = float(every_seconds)
        self.fingerprint = fingerprint
        self.counter = 0
        self.stop_signal: int | None = None
        self.in_fit = False

    # -- keys ---------------------------------------------------------------------------------
    def next_key(self) -> str:
        key = f"fit-{self.counter:04d}"
        self.counter += 1
        return key

    def cache_dir(self, name: str) -> Path:
        path = self.root / "kernels" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def request_stop(self, signum: int) -> None:
        self.stop_signal = signum

    # -- save / restore -----------------------------------------------------------------------
    def _dir(self, key: str) -> Path:
        return self.root / key

    def load(self, key: str, abstract_state):
        """(state, meta) of the newest checkpoint of `key`, or None."""
        meta_path = self._dir(key) / "meta.pkl"
        if not meta_path.is_file():
            return None
        with open(meta_path, "rb") as fh:
            meta = pickle.load(fh)
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointMismatch(self._dir(key))
        import orbax.checkpoint as ocp

        state = ocp.StandardCheckpointer().restore(self._dir(key) / meta["state_dir"], abstract_state)
        return state, meta

    def save(self, key: str, state, meta: dict) -> None:
        import orbax.checkpoint as ocp

        d = self._dir(key)
        d.mkdir(parents=True, exist_ok=True)
        state_dir = f"state-{int(np.max(np.asarray(state.step))):010d}"
        target = d / state_dir
        if not target.exists():
            ckpt = ocp.StandardCheckpointer()
            ckpt.save(target, jax.tree_util.tree_map(np.asarray, state))
            ckpt.wait_until_finished()
        meta = {**meta, "state_dir": state_dir, "fingerprint": self.fingerprint}
        tmp = d / "meta.pkl.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(meta, fh)
        os.replace(tmp, d / "meta.pkl")
        for old in d.glob("state-*"):  # keep only the state the meta points at
            if old.name != state_dir:
                shutil.rmtree(old, ignore_errors=True)


class CheckpointMismatch(NtkreproError):
    def __init__(self, path):
        super().__init__(f"the checkpoint in {path} was written with other settings; start a fresh "
                         f"run (or remove that folder) instead of resuming it")
        self.path = path


def current() -> Session | None:
    """The session of the run in progress (None outside a run: fit then saves nothing)."""
    return _CURRENT[-1] if _CURRENT else None


@contextlib.contextmanager
def session(root: Path, **kw):
    """Open the checkpoint session of a run (see the module docstring)."""
    sess = Session(root, **kw)
    _CURRENT.append(sess)
    try:
        yield sess
    finally:
        _CURRENT.remove(sess)


def defer_stop(signum: int) -> bool:
    """Called by the stop-signal handler: while a fit of the run is training, ask it to save a
    checkpoint and stop at its next pause (True); otherwise the signal acts at once (False)."""
    sess = current()
    if sess is None or not sess.in_fit:
        return False
    sess.request_stop(signum)
    return True


class Clock:
    """When the next periodic save is due."""

    def __init__(self, seconds: float):
        self.seconds, self.last = seconds, time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


def kernel_cache(name: str) -> Path | None:
    """A `kernels.blockwise` cache folder for the kernel `name` inside the run in progress (None
    outside a run): the blocks a killed run had finished are read back, not recomputed."""
    sess = current()
    return None if sess is None else sess.cache_dir(name)
