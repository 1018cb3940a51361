"""Split runs on a cluster: one fixed folder per run, and only the missing parts submitted again.

`python -m ntkrepro -m figure=<id> scale=<scale> shards=<n> 'shard=range(<n>)' [hydra/launcher=slurm_gpu]`
writes its parts to `<out_root>/shards/<id>/<scale>/<key>/shard=<k>/`, where <key> is a
hash of the settings given on the command line and of the code version: the same command finds the
same folder.  Before launching, the parts already finished there are left out of the sweep (if all
are, nothing is launched and the collect command is printed), and a part that was interrupted or
killed resumes from its checkpoints in its own folder.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import OmegaConf

from ntkrepro import manifest, runstate
from ntkrepro.errors import ConfigError
from ntkrepro.registry import CONF_DIR

_NOT_IN_KEY = ("shard", "plan", "resume", "device")  # how a part runs, not what it computes


class NothingToDo(Exception):
    """Every part of the split run has finished."""


def _value(parsed, key):
    from ntkrepro.preflight import _values

    found = [o for o in parsed if o.key_or_group == key]
    return _values(found[-1]) if found else None


def folder(parsed, out_root: str) -> Path:
    """The fixed sweep folder of a split run."""
    figures, scales = _value(parsed, "figure"), _value(parsed, "scale") or [_default("scale")]
    if len(figures) != 1 or len(scales) != 1:
        raise ConfigError("a split run (shards > 1) takes one figure and one scale; run each separately")
    settings = sorted(o.input_line for o in parsed
                      if not o.is_hydra_override() and o.key_or_group not in _NOT_IN_KEY)
    key = hashlib.sha256(("\n".join(settings) + manifest.code_version()).encode()).hexdigest()[:12]
    return Path(out_root) / "shards" / str(figures[0]) / str(scales[0]) / key


def _default(key: str):
    return OmegaConf.select(OmegaConf.load(CONF_DIR / "config.yaml"), key)


def finished_shards(sweep: Path) -> set[int]:
    return {int(r["shard"]) for _, r in runstate.find(sweep) if r.get("shards") and r["state"] == "finished"}


def prepare(overrides: list[str], multirun: bool) -> list[str]:
    """The overrides for Hydra: for a split run the fixed folder and the unfinished shards only
    (`NothingToDo` when none is left); other runs unchanged."""
    from ntkrepro.preflight import _parse

    parsed = _parse(overrides)
    shards = _value(parsed, "shards")
    if not shards or len(shards) != 1 or int(shards[0]) <= 1:
        return overrides
    n = int(shards[0])
    out_root = (_value(parsed, "out_root") or [_default("out_root")])[0]
    sweep = folder(parsed, str(out_root))
    wanted = [int(k) for k in (_value(parsed, "shard") or (range(n) if multirun else [0]))]
    bad = [k for k in wanted if not 0 <= k < n]
    if bad:
        raise ConfigError(f"shard must be in [0, {n}) (one of 0..{n - 1}), got {bad[0]}")
    done = finished_shards(sweep)
    todo = [k for k in wanted if k not in done]
    if not todo:
        raise NothingToDo(f"all {len(wanted)} requested parts have finished in {runstate.shown(sweep)}; "
                          f"merge them: python -m ntkrepro.collect {runstate.shown(sweep)}")
    kept = [o.input_line for o in parsed if o.key_or_group != "shard"]
    shard = f"shard={','.join(map(str, todo))}"
    if multirun:
        return [*kept, shard, f"hydra.sweep.dir='{sweep}'",
                "hydra.sweep.subdir='shard=${shard}'"]
    return [*kept, shard, f"hydra.run.dir='{sweep}/shard=${{shard}}'"]
