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
import shutil
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from ntkrepro import claims as claims_mod
from ntkrepro import manifest
from ntkrepro.errors import ConfigError, NtkreproError
from ntkrepro.registry import SCALES
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
        "scale": scale, "seed": cfg.seed, "data": data,
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


def _discard(out_dir: Path) -> None:
    """Remove a run folder that produced no result, so nothing half-written looks finished."""
    shutil.rmtree(out_dir, ignore_errors=True)


def _mark_failed(out_dir: Path) -> Path:
    (out_dir / "FAILED.txt").write_text(traceback.format_exc())
    failed = out_dir.with_name(out_dir.name + "-FAILED")
    if out_dir.exists():
        out_dir.rename(failed)
    return failed


def _link_latest(out_dir: Path) -> None:
    link = out_dir.parent / "latest"
    tmp = out_dir.parent / f".latest-{os.getpid()}"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(out_dir.name)
        os.replace(tmp, link)
    except OSError as err:  # e.g. file systems without symlinks
        log.warning("could not update %s: %s", link, err)


def run_figure(cfg: DictConfig, out_dir: Path, task_overrides=()) -> list[claims_mod.Claim]:
    """Run one figure into `out_dir`; on bad input the folder is removed and `NtkreproError` raised."""
    import jax

    jax.config.update("jax_enable_x64", bool(cfg.x64))
    t0 = time.time()
    manifest.reset_data()
    try:
        run_cfg = effective_settings(cfg, task_overrides)
        validate_settings(OmegaConf.to_container(run_cfg, resolve=True), run_cfg.id)
        module = load_experiment(run_cfg.experiment)
        log.info("figure %s at scale %s -> %s", run_cfg.id, run_cfg.scale, out_dir)
        metrics = module.run(run_cfg)
    except NtkreproError:
        _discard(out_dir)
        raise
    except BaseException:
        failed = _mark_failed(out_dir)
        log.error("run failed; traceback in %s", failed / "FAILED.txt")
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        OmegaConf.save(run_cfg, out_dir / SETTINGS_FILE, resolve=True)
        metrics.to_csv(out_dir / "metrics.csv", index=False)
        result = finish(module, metrics, run_cfg, out_dir)
        man = manifest.build(figure_id=run_cfg.id, scale=run_cfg.scale, seed=int(run_cfg.seed),
                             wall_time_s=time.time() - t0,
                             settings=OmegaConf.to_container(run_cfg, resolve=True))
        manifest.write(man, out_dir / "manifest.json")
    except BaseException:
        _mark_failed(out_dir)
        raise
    _link_latest(out_dir)
    print(f"\n{run_cfg.id} ({run_cfg.scale}) -> {out_dir}\n{claims_mod.table(result)}", flush=True)
    return result


def hydra_task(cfg: DictConfig) -> None:
    """Body of the Hydra app: one-line errors for bad input, exit status 2."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    try:
        run_figure(cfg, out_dir, list(hc.overrides.task))
    except NtkreproError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
