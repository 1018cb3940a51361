"""One figure run: effective settings -> experiment.run -> metrics.csv, plot, claims.json, manifest.json.

The experiment module is named by the figure's config (`experiment: experiments.<module>`); the core
never imports `experiments/` itself.  Each experiment module exposes

    run(cfg) -> pandas.DataFrame          tidy metrics, one row per measured point
    plot(metrics, out_dir, cfg) -> None   writes <id>.png and <id>.pdf
    claims(metrics, cfg) -> list[Claim]   the paper's claims, computed from the metrics
"""
from __future__ import annotations

import importlib
import logging
import os
import shlex
import shutil
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ntkrepro import claims as claims_mod
from ntkrepro import checkpoint, manifest, preflight, runstate, split
from ntkrepro.errors import ConfigError, NtkreproError
from ntkrepro.registry import DEVICES, SCALES, UNKNOWN_DEVICE
from ntkrepro.validate import validate_settings

log = logging.getLogger("ntkrepro")
SETTINGS_FILE = "settings.yaml"


def effective_settings(cfg: DictConfig, task_overrides=()) -> DictConfig:
    """figure.paper, then the scale's preset, then the command line's figure.<paper|scale>.* overrides."""
    fig, scale = cfg.figure, cfg.scale
    if scale not in SCALES:
        raise ConfigError(f"unknown scale '{scale}'; use scale=smoke, scale=cpu or scale=paper")
    if "paper" not in fig:
        raise ConfigError(f"conf/figure/{fig.id}.yaml has no 'paper' block; add the paper's settings")
    def plain(node):
        return OmegaConf.to_container(node, resolve=True) if node is not None else {}

    merged = OmegaConf.create(plain(fig.paper))
    if scale != "paper":
        merged = OmegaConf.merge(merged, plain(fig.get(scale)))
    for override in task_overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        parts = key.split(".")
        if override.startswith("~") or len(parts) < 3 or parts[0] != "figure":
            continue
        if parts[1] in ("paper", scale):
            OmegaConf.update(merged, ".".join(parts[2:]), OmegaConf.select(cfg, key), merge=False)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if scale == "smoke" and data.get("source") == "auto":
        data["source"] = "sample"  # smoke runs use the real samples shipped in the package: offline
    run_cfg = OmegaConf.merge(merged, {
        "id": fig.id, "title": fig.get("title", fig.id), "experiment": fig.experiment,
        "scale": scale, "seed": cfg.seed, "x64": bool(cfg.get("x64", False)), "data": data,
        "mutation": cfg.get("mutation"),
    })
    return run_cfg


def load_experiment(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        raise ConfigError(f"experiment module '{name}' not found ({err}); check 'experiment' in the "
                          "figure's config and that the project is installed (pip install -e .)") from None


def evaluate(module, metrics: pd.DataFrame, cfg: DictConfig) -> list[claims_mod.Claim]:
    reason = cfg.get("claims_reason", "smoke scale checks the plumbing; sizes too small for the claim")
    return claims_mod.finalize(list(module.claims(metrics, cfg)), bool(cfg.get("evaluate_claims", True)),
                               reason)


def finish(module, metrics: pd.DataFrame, cfg: DictConfig, out_dir: Path) -> list[claims_mod.Claim]:
    """Plot and evaluate claims from `metrics` (shared by a run and by `ntkrepro.replot`)."""
    module.plot(metrics, out_dir, cfg)
    result = evaluate(module, metrics, cfg)
    claims_mod.write(result, out_dir / "claims.json")
    return result


def _discard(out_dir: Path, out_root: Path) -> None:
    """Remove a run folder that produced no result, so nothing half-written looks finished, and the
    folders above it up to out_root that it leaves empty."""
    shutil.rmtree(out_dir, ignore_errors=True)
    root, parent = Path(out_root).resolve(), Path(out_dir).resolve().parent
    while root in parent.parents:
        try:
            parent.rmdir()  # only an empty folder
        except OSError:
            break
        parent = parent.parent


def command_line() -> str:
    """The command as the user typed it (set by `ntkrepro.cli`), else this process's argv."""
    return os.environ.get(runstate.COMMAND_ENV) or shlex.join(sys.argv)


def _close_on_error(folder: runstate.RunFolder, err: BaseException) -> None:
    """Mark the folder interrupted (a stop signal) or failed (traceback in FAILED.txt)."""
    if isinstance(err, KeyboardInterrupt):
        folder.close("interrupted", signal=runstate.interrupted(err).name)
        return
    (folder.path / "FAILED.txt").write_text(traceback.format_exc())
    folder.close("failed")
    log.error("run failed; traceback in %s", folder.path / "FAILED.txt")


GPU_INSTALL = "pip install -e '.[cuda]' (jax with CUDA 12) in this environment"


def check_device(device: str, scale: str, backend: str, devices: str = "") -> str | None:
    """`device=gpu` on a backend other than a GPU: ConfigError (a cluster job that would run a paper
    preset on the CPU for its whole time limit stops at once instead).  `device=auto`: None, or at
    scale=paper without a GPU the text of a warning (the paper presets are GPU jobs)."""
    if device not in DEVICES:
        raise ConfigError(UNKNOWN_DEVICE.format(device))
    if backend == "gpu":
        return None
    if device == "gpu":
        found = f", {devices}" if devices else ""
        raise ConfigError(f"device=gpu but jax finds no GPU here (backend '{backend}'{found}); "
                          f"install the GPU build: {GPU_INSTALL}, or run with device=auto")
    if scale == "paper":
        return (f"scale=paper on jax's '{backend}' backend (no GPU found): the paper presets are GPU jobs "
                f"(`make plan` prices them); for a GPU: {GPU_INSTALL}")
    return None


def _prepare(cfg: DictConfig, task_overrides):
    """Effective settings (checked), JAX initialised (and its device checked, `check_device`) and the
    experiment module imported."""
    import jax

    jax.config.update("jax_enable_x64", bool(cfg.x64))
    jax.devices()  # initialise the backends now, while stop signals are held
    warning = check_device(str(cfg.get("device", "auto")), str(cfg.scale), jax.default_backend(),
                           ", ".join(str(d) for d in jax.devices()))
    if warning:
        log.warning(warning)   # on stdout and in the run's ntkrepro.log; stderr stays for errors
    manifest.reset_data()
    run_cfg = effective_settings(cfg, task_overrides)
    validate_settings(OmegaConf.to_container(run_cfg, resolve=True), run_cfg.id,
                      groups=preflight.group_choices(list(task_overrides)))
    module = load_experiment(run_cfg.experiment)
    check_mutation(module, run_cfg)
    return run_cfg, module


def check_mutation(module, run_cfg) -> None:
    """A mutation (tests only) must be one the experiment module declares in `MUTATIONS`."""
    name = run_cfg.get("mutation")
    known = getattr(module, "MUTATIONS", {})
    if name is not None and name not in known:
        raise ConfigError(f"unknown mutation '{name}' for figure {run_cfg.id}; known: "
                          f"{', '.join(known) or 'none'} (mutations exist for the tests only)")


def _compute(cfg: DictConfig, folder: runstate.RunFolder, task_overrides):
    """Effective settings, experiment module and its metrics (of this job's points when the run is
    split); stop signals are held until the imports are done (see `runstate.hold_signals`), then
    raise `runstate.Interrupted`.  Training inside the run checkpoints into the run folder."""
    runstate.hold_signals()
    try:
        run_cfg, module = _prepare(cfg, task_overrides)
    finally:
        runstate.release_signals()
    shards, shard = int(cfg.get("shards", 1)), int(cfg.get("shard", 0))
    points = split.select(split.points(module, run_cfg), shards, shard, run_cfg.id)
    fingerprint = f"{split.settings_hash(run_cfg)}@{manifest.code_version()}"
    folder.update(settings_hash=split.settings_hash(run_cfg), code_version=manifest.code_version(),
                  **({"shards": shards, "shard": shard, "points": [split.describe(p) for p in points]}
                     if points is not None else {}))
    ckpt = cfg.get("checkpoint") or {}
    root = folder.path / "checkpoints"
    if cfg.get("resume", True) and points is None:
        _adopt_checkpoints(Path(cfg.out_root), run_cfg, folder, fingerprint)
    log.info("figure %s at scale %s -> %s", run_cfg.id, run_cfg.scale, folder.path)
    with checkpoint.session(root, fingerprint=fingerprint, every_steps=int(ckpt.get("every_steps", 1000)),
                            every_seconds=60.0 * float(ckpt.get("every_minutes", 10))):
        metrics = module.run(run_cfg) if points is None else module.run(run_cfg, subset=points)
    return run_cfg, module, metrics, points


def _adopt_checkpoints(out_root: Path, run_cfg, folder: runstate.RunFolder, fingerprint: str) -> None:
    """Resume: move the checkpoints of the newest interrupted (or stale) run of the same figure, scale,
    settings and code that has any (a run of its own or a sweep job, `<out_root>/multirun/...`) into
    this run's folder, and mark that folder as resumed here."""
    runs = [*runstate.find(out_root / run_cfg.id / run_cfg.scale), *runstate.find(out_root / "multirun")]
    for path, record in sorted(runs, key=lambda r: str(r[1].get("started", "")), reverse=True):
        same = f"{record.get('settings_hash')}@{record.get('code_version')}" == fingerprint
        if path == folder.path or not same or record["state"] not in ("interrupted", "stale"):
            continue
        if (path / "checkpoints").is_dir() and not record.get("resumed_by"):
            os.rename(path / "checkpoints", folder.path / "checkpoints")
            runstate.RunFolder(path).amend(resumed_by=str(folder.path))
            folder.update(resumed_from=str(path))
            log.info("resuming from the checkpoints of %s", path)
            return


def _return_checkpoints(folder: runstate.RunFolder) -> None:
    """Undo `_adopt_checkpoints` for a run that stops on bad input before it is removed: the
    checkpoints go back to the run they came from, which can be resumed again."""
    source = Path(str(folder.record.get("resumed_from") or ""))
    if not (source / runstate.RUN_FILE).is_file() or source == folder.path or not (folder.path / "checkpoints").is_dir() or (source / "checkpoints").exists():
        return
    os.rename(folder.path / "checkpoints", source / "checkpoints")
    runstate.RunFolder(source).amend(resumed_by=None)


def _save(run_cfg, module, metrics, folder: runstate.RunFolder, points=None) -> list[claims_mod.Claim]:
    """Write the run's results; a part of a split run writes its metrics and manifest only (the
    figure and the claims come from all parts: `ntkrepro.collect`)."""
    out_dir = folder.path
    OmegaConf.save(run_cfg, out_dir / SETTINGS_FILE, resolve=True)
    metrics.to_csv(out_dir / "metrics.csv", index=False)
    result = [] if points is not None else finish(module, metrics, run_cfg, out_dir)
    extra = {} if points is None else {"part": {k: folder.record[k] for k in ("shards", "shard", "points")}}
    man = manifest.build(figure_id=run_cfg.id, scale=run_cfg.scale, seed=int(run_cfg.seed),
                         wall_time_s=time.time() - folder.t0, command=folder.record["command"],
                         started=folder.record["started"],
                         settings=OmegaConf.to_container(run_cfg, resolve=True), **extra)
    manifest.write(man, out_dir / "manifest.json")
    return result


def run_figure(cfg: DictConfig, out_dir: Path, task_overrides=()) -> list[claims_mod.Claim]:
    """Run one figure (or one part of a split run) into `out_dir`, which it claims first
    (`runstate.FolderTaken` if another process did); on bad input the folder is removed and
    `NtkreproError` raised; a failure or a stop signal marks the folder failed or interrupted and
    propagates."""
    folder = runstate.RunFolder(out_dir)
    split_run = int(cfg.get("shards", 1)) > 1
    folder.claim(resume=split_run and bool(cfg.get("resume", True)), figure=cfg.figure.id, scale=cfg.scale,
                 seed=cfg.seed, command=command_line(), overrides=list(task_overrides),
                 out_root=str(Path(cfg.out_root).resolve()))
    try:
        run_cfg, module, metrics, points = _compute(cfg, folder, task_overrides)
    except NtkreproError:
        if folder.record.get("attempt", 1) == 1:
            _return_checkpoints(folder)
            _discard(out_dir, cfg.out_root)
        raise
    except BaseException as err:
        _close_on_error(folder, err)
        raise
    try:
        result = _save(run_cfg, module, metrics, folder, points)
    except BaseException as err:
        _close_on_error(folder, err)
        raise
    if points is not None:
        folder.close("finished", part=True)
        print(f"\n{run_cfg.id} ({run_cfg.scale}) part {cfg.shard} of {cfg.shards} -> {runstate.shown(out_dir)}"
              f"\nwhen every part has finished: python -m ntkrepro.collect {runstate.shown(out_dir.parent)}",
              flush=True)
        return result
    folder.close("finished", claims=claims_mod.counts(result))
    runstate.link_latest(Path(cfg.out_root), run_cfg.id, run_cfg.scale, out_dir)
    print(f"\n{run_cfg.id} ({run_cfg.scale}) -> {runstate.shown(out_dir)}\n"
          f"{claims_mod.summary(result, run_cfg.scale)}", flush=True)
    return result


def hydra_task(cfg: DictConfig) -> None:
    """Body of the Hydra app: one-line errors for bad input (exit 2) and for a stop signal
    (the folder marked interrupted, exit 128 + signal number, `runstate.exit_interrupted`)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    runstate.install_signal_handlers()
    try:
        run_figure(cfg, out_dir, list(hc.overrides.task))
    except NtkreproError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as err:
        sig = runstate.interrupted(err)
        print(f"interrupted by {sig.name}; {runstate.shown(out_dir)} marked interrupted", file=sys.stderr,
              flush=True)
        runstate.exit_interrupted(128 + sig.signum)
