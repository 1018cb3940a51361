"""Every registered figure: its config composes at every scale and cites its figure or table, and a
smoke run writes a full result (run.json, metrics, a drawn figure, claims, manifest) that replot redraws."""
from __future__ import annotations

import json
import math
import os
import re

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from matplotlib.image import imread
from omegaconf import OmegaConf

from helpers import cli, run_record
from smoke_pin import PIN_TOLERANCE, compare, pinned
from ntkrepro.registry import CONF_DIR, SCALES, figure_ids
from ntkrepro.runner import effective_settings, load_experiment
from ntkrepro.validate import validate_settings

FIGURES = figure_ids()


def test_registry_not_empty():
    assert {"lee-s9", "lee-s10"} <= set(FIGURES)


def cited(fid: str) -> tuple[str, str]:
    """(author, pattern of the figure or table) an id names: lee-s9 -> Lee, "Figure S9" or "Fig. S9";
    jacot-1 -> Jacot, "Figure 1"; liu-t1 -> Liu, "Table 1"."""
    author, item = fid.split("-", 1)
    if item.startswith("t"):
        return author.capitalize(), rf"\bTables? {item[1:]}(?!\d)"
    return author.capitalize(), rf"\b(Figure|Fig\.) {item.upper()}(?!\d)"  # "Figure 3a" cites Figure 3


@pytest.mark.parametrize("fid,author,pattern", [("lee-s9", "Lee", "Fig. S9"), ("jacot-1", "Jacot", "Figure 1"),
                                                ("liu-t1", "Liu", "Table 1"), ("arora-t2", "Arora", "Table 2")])
def test_cited_reads_the_id(fid, author, pattern):
    assert cited(fid)[0] == author and re.search(cited(fid)[1], pattern)
    assert not re.search(cited("lee-s1")[1], "Figure S10") and re.search(cited("jacot-3")[1], "Figure 3a-c")


@pytest.mark.parametrize("fid", FIGURES)
def test_config_cites_its_figure_or_table(fid):
    text = (CONF_DIR / "figure" / f"{fid}.yaml").read_text()
    header = "\n".join(line for line in text.splitlines()[:40] if line.startswith("#"))
    author, pattern = cited(fid)
    assert text.startswith("#") and author in header and re.search(pattern, header), header[:500]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("fid", FIGURES)
def test_config_composes(fid, scale):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"figure={fid}", f"scale={scale}"])
    assert cfg.figure.id == fid and cfg.figure.title
    eff = effective_settings(cfg)
    validate_settings(OmegaConf.to_container(eff, resolve=True), fid)
    module = load_experiment(eff.experiment)
    for fn in ("run", "plot", "claims"):
        assert callable(getattr(module, fn))


def test_command_line_override_wins_over_scale_preset():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["figure=lee-s9", "scale=smoke", "figure.paper.widths=[5,7]"])
    eff = effective_settings(cfg, ["figure.paper.widths=[5,7]"])
    assert list(eff.widths) == [5, 7]
    assert eff.mc_samples == cfg.figure.smoke.mc_samples  # the rest of the smoke preset still applies


def check_png(path):
    """A drawn figure: an image with varying pixels and more than one colour."""
    img = imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert img.std() > 0 and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 1


def check_pdf(path):
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and re.search(rb"/Type\s*/Page\b", data)


@pytest.mark.parametrize("fid", FIGURES)
def test_smoke_run_writes_a_complete_result(tmp_path, fid):
    res = cli(f"figure={fid}", "scale=smoke", out_root=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Unable to initialize backend" not in res.stdout + res.stderr
    latest = tmp_path / fid / "smoke" / "latest"
    assert latest.is_symlink() and not os.path.isabs(os.readlink(latest))
    run = latest.resolve()
    for name in ("run.json", "metrics.csv", f"{fid}.png", f"{fid}.pdf", "claims.json", "manifest.json",
                 "settings.yaml", ".hydra/config.yaml", "ntkrepro.log"):
        assert (run / name).is_file(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) > 0 and metrics["value"].notna().all()
    assert compare(pinned(fid), metrics, **PIN_TOLERANCE) == []  # the pinned smoke metrics (smoke_pin.py)
    check_png(run / f"{fid}.png")
    check_pdf(run / f"{fid}.pdf")

    # at smoke scale no claim is evaluated: each has a measured value or a reason, and the run says so
    claims = json.loads((run / "claims.json").read_text())
    assert claims
    for c in claims:
        assert c["status"] == "NOT EVALUATED" and c["kind"] in ("paper", "check")
        assert (c["value"] is not None and math.isfinite(c["value"])) or c["reason"], c
    last = [line for line in res.stdout.splitlines() if line.strip()][-1]
    assert last == f"claims: not evaluated at smoke scale ({len(claims)} computed); run scale=cpu to evaluate them"
    assert "NOT EVALUATED" not in res.stdout

    record = run_record(run)
    assert record["state"] == "finished" and record["wall_time_s"] > 0 and record["figure"] == fid
    assert record["claims"] == {"passed": 0, "failed": 0, "not_evaluated": len(claims),
                                "paper_passed": 0, "paper_evaluated": 0}
    man = json.loads((run / "manifest.json").read_text())
    assert man["figure"] == fid and man["jax"]["x64"] is True and man["data"]
    assert "git" in man and "jax" in man["packages"]
    assert man["command"] == f"python -m ntkrepro figure={fid} scale=smoke out_root={tmp_path}"
    assert man["started"] == record["started"]

    # replot redraws and re-evaluates from the saved metrics alone
    (run / f"{fid}.png").unlink()
    (run / "claims.json").unlink()
    rep = cli(str(run), out_root=tmp_path, module="ntkrepro.replot")
    assert rep.returncode == 0, rep.stderr[-3000:]
    check_png(run / f"{fid}.png")
    assert json.loads((run / "claims.json").read_text()) == claims
    assert run_record(run)["claims"] == record["claims"]  # run.json's counts follow claims.json
