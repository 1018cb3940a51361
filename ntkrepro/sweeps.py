"""Split runs on a cluster: one fixed folder per run, and only the missing parts submitted again.

`python -m ntkrepro -m figure=<id> scale=<scale> shards=<n> 'shard=range(<n>)' [hydra/launcher=slurm_gpu]`
writes its parts to `<out_root>/shards/<id>/<scale>/<key>/shard=<k>/`, where <key> is a
hash of the settings given on the command line and of the code version: the same command finds the
same folder.  Before launching, the settings are checked (`shards` no more than the figure's sweep
points, no other setting swept: one split run per value), the parts already finished there and
those still running are left out of the sweep (if all are, nothing is launched and the collect
command is printed), and a part that was interrupted or killed resumes from its checkpoints in its
own folder.
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
    swept = [o.input_line for o in parsed if o.is_sweep_override() and not o.is_hydra_override()
             and o.key_or_group != "shard"]
    if swept:  # the parts of every value would share one folder
        raise ConfigError(f"a split run (shards > 1) sweeps only shard, but {swept[0]} sweeps several values; "
                          "start one split run per value")
    settings = sorted(o.input_line for o in parsed
                      if not o.is_hydra_override() and o.key_or_group not in _NOT_IN_KEY)
    key = hashlib.sha256(("\n".join(settings) + manifest.code_version()).encode()).hexdigest()[:12]
    return Path(out_root) / "shards" / str(figures[0]) / str(scales[0]) / key


def _default(key: str):
    return OmegaConf.select(OmegaConf.load(CONF_DIR / "config.yaml"), key)


def _check_points(parsed, n: int) -> None:
    """`ConfigError` (before anything is launched or written) when the figure cannot be split into
    `n` parts: its experiment module has no sweep points, or fewer than `n` at these settings."""
    from ntkrepro import plan, preflight, split

    figure, scale = _value(parsed, "figure")[0], (_value(parsed, "scale") or [_default("scale")])[0]
    rest = [o.input_line for o in parsed if not o.is_hydra_override()
            and o.key_or_group not in ("figure", "scale", *_NOT_IN_KEY)]
    checked = preflight.check([f"figure={figure}", f"scale={scale}", *rest], multirun=False)
    _, run_cfg, module = plan.compose(str(figure), str(scale), checked)
    split.select(split.points(module, run_cfg), n, 0, run_cfg.id)


def prepare(overrides: list[str], multirun: bool) -> list[str]:
    """The overrides for Hydra: for a split run the fixed folder and the parts neither finished nor
    running (`NothingToDo` when none is left); other runs unchanged."""
    from ntkrepro.preflight import _check_top_level, _parse

    parsed = _parse(overrides)
    for key in ("shards", "shard"):  # checked before they are used
        for value in _value(parsed, key) or []:
            _check_top_level(key, value)
    shards = _value(parsed, "shards")
    if not shards or len(shards) != 1 or shards[0] <= 1:
        return overrides
    n = int(shards[0])
    out_root = (_value(parsed, "out_root") or [_default("out_root")])[0]
    sweep = folder(parsed, str(out_root))
    wanted = [int(k) for k in (_value(parsed, "shard") or (range(n) if multirun else [0]))]
    bad = [k for k in wanted if not 0 <= k < n]
    if bad:
        raise ConfigError(f"shard must be in [0, {n}) (one of 0..{n - 1}), got {bad[0]}")
    _check_points(parsed, n)
    found = runstate.find(sweep)  # running: alive, or on a node whose Slurm job is still listed
    done = {int(r["shard"]) for _, r in found if r.get("shards") and r["state"] == "finished"}
    running = {int(r["shard"]): r for _, r in found if r.get("shards") and r["state"] == "running"}
    busy = [k for k in wanted if k in running and k not in done]
    for k in busy:
        r = running[k]
        job = f", Slurm job {r['slurm_job']}" if r.get("slurm_job") else ""
        print(f"shard={k} is still running (host {r.get('host')}, pid {r.get('pid')}{job}, since {r.get('started')}): "
              f"left out; if that process is gone though Slurm cannot tell, delete "
              f"{runstate.shown(sweep / f'shard={k}' / runstate.RUN_FILE)} and run this command again", flush=True)
    todo = [k for k in wanted if k not in done and k not in busy]
    if not todo:
        where = runstate.shown(sweep)
        if busy:
            raise NothingToDo(f"nothing launched: of the {len(wanted)} requested parts {len(wanted) - len(busy)} "
                              f"have finished and {len(busy)} are still running in {where}; when every part "
                              f"has finished: python -m ntkrepro.collect {where}")
        raise NothingToDo(f"all {len(wanted)} requested parts have finished in {where}; "
                          f"merge them: python -m ntkrepro.collect {where}")
    kept = [o.input_line for o in parsed if o.key_or_group != "shard"]
    shard = f"shard={','.join(map(str, todo))}"
    if multirun:
        return [*kept, shard, f"hydra.sweep.dir='{sweep}'",
                "hydra.sweep.subdir='shard=${shard}'"]
    return [*kept, shard, f"hydra.run.dir='{sweep}/shard=${{shard}}'"]
