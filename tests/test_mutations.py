"""Every figure's paper claims can fail: a deliberately wrong variant makes at least one of them FAIL.

Each figure config has a block

    mutation_test:
      mutation: <name>          # one of the experiment module's MUTATIONS (a switch used by tests only)
      scale: cpu                # the preset the small settings below are applied to
      settings: {...}           # small settings (the shipped data samples, seconds on 2 cores)

The test runs the figure twice with those settings (in this process, on the shipped data samples,
without drawing the figure), as it is and with `mutation=<name>`, and asserts that some paper claim
PASSes in the first run and FAILs in the second: the claim catches the mistake, not the small scale.
"""
from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from helpers import run_in_process
from ntkrepro.registry import CONF_DIR, figure_ids

FIGURES = figure_ids()


def mutation_test(fid: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"figure={fid}"])
    block = cfg.figure.get("mutation_test")
    assert block is not None, f"conf/figure/{fid}.yaml has no mutation_test block"
    return OmegaConf.to_container(block, resolve=True)


def _flat(prefix: str, value) -> list[str]:
    if isinstance(value, dict):
        return [o for k, v in value.items() for o in _flat(f"{prefix}.{k}", v)]
    text = json.dumps(value).replace('"', "") if isinstance(value, list) else str(value).lower() \
        if isinstance(value, bool) else "null" if value is None else str(value)
    return [f"{prefix}={text}"]


def _paper_claims(fid: str, scale: str, overrides: list[str]) -> dict[str, str]:
    from ntkrepro.runner import evaluate

    metrics, run_cfg, module = run_in_process(fid, scale, overrides)
    return {f"{c.claim} [{c.measure}]": c.status for c in evaluate(module, metrics, run_cfg)
            if c.kind == "paper"}


@pytest.mark.parametrize("fid", FIGURES)
def test_a_deliberate_mistake_makes_a_paper_claim_fail(fid):
    spec = mutation_test(fid)
    scale = spec.get("scale", "cpu")
    settings = _flat(f"++figure.{scale}", spec.get("settings", {}))
    before = _paper_claims(fid, scale, settings)
    after = _paper_claims(fid, scale, [*settings, f"mutation={spec['mutation']}"])
    caught = [c for c, s in before.items() if s == "PASS" and after.get(c) == "FAIL"]
    assert caught, (f"mutation {spec['mutation']} of {fid} made no paper claim go from PASS to FAIL;\n"
                    f"control: {before}\nmutant: {after}")
