"""Every registered figure: its config composes at every scale, and a smoke run writes a full result."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers import cli
from ntkrepro.registry import CONF_DIR, SCALES, figure_ids
from ntkrepro.runner import effective_settings, load_experiment
from ntkrepro.validate import validate_settings

FIGURES = figure_ids()


def test_registry_not_empty():
    assert {"lee-s9", "lee-s10"} <= set(FIGURES)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("fid", FIGURES)
def test_config_composes(fid, scale):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"figure={fid}", f"scale={scale}"])
    assert cfg.figure.id == fid
    eff = effective_settings(cfg)
    validate_settings(OmegaConf.to_container(eff, resolve=True), fid)
    module = load_experiment(eff.experiment)
    for fn in ("run", "plot", "claims"):
        assert callable(getattr(module, fn))
    # the source file cites the paper (a comment naming paper and figure)
    text = (CONF_DIR / "figure" / f"{fid}.yaml").read_text()
    assert text.lstrip().startswith("#") and "Fig" in text


def test_command_line_override_wins_over_scale_preset():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["figure=lee-s9", "scale=smoke", "figure.paper.widths=[5,7]"])
    eff = effective_settings(cfg, ["figure.paper.widths=[5,7]"])
    assert list(eff.widths) == [5, 7]
    assert eff.n0 == cfg.figure.smoke.n0  # the rest of the smoke preset still applies


@pytest.mark.parametrize("fid", FIGURES)
def test_smoke_run_writes_a_complete_result(tmp_path, fid):
    res = cli(f"figure={fid}", "scale=smoke", out_root=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    latest = tmp_path / fid / "smoke" / "latest"
    assert latest.is_symlink()
    run = latest.resolve()
    for name in ("metrics.csv", f"{fid}.png", f"{fid}.pdf", "claims.json", "manifest.json",
                 "settings.yaml", ".hydra/config.yaml"):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) > 0 and metrics["value"].notna().all()
    claims = json.loads((run / "claims.json").read_text())
    assert claims and all(c["status"] in ("PASS", "FAIL", "NOT EVALUATED") for c in claims)
    assert all(c["value"] is None or isinstance(c["value"], float) for c in claims)
    man = json.loads((run / "manifest.json").read_text())
    assert man["figure"] == fid and man["jax"]["x64"] is True and man["data"]
    assert "git" in man and "jax" in man["packages"]
    # the run ends by printing the claims table
    assert "status" in res.stdout and claims[0]["status"] in res.stdout

    # replot redraws and re-evaluates from the saved metrics alone
    (run / f"{fid}.png").unlink()
    (run / "claims.json").unlink()
    rep = cli(str(run), out_root=tmp_path, module="ntkrepro.replot")
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert (run / f"{fid}.png").is_file()
    assert json.loads((run / "claims.json").read_text()) == claims


def test_multirun_sweeps_a_value(tmp_path):
    res = cli("-m", "figure=lee-s10", "scale=smoke", "seed=0,1", out_root=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [p for p in (tmp_path / "lee-s10" / "smoke").iterdir()
            if not p.is_symlink() and (p / "metrics.csv").exists()]
    assert len(runs) == 2
    seeds = sorted(json.loads((r / "manifest.json").read_text())["seed"] for r in runs)
    assert seeds == [0, 1]
