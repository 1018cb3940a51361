"""Diverging training is recorded and fails the claims that depend on it (never a crash, never a PASS on
what is left): each figure run at smoke scale with a learning rate that blows up, claims evaluated.

pandas' reductions skip NaN, so a claim reduced over a diverged run used to PASS on its finite part (a
mean over t of what was recorded before the blow-up, a slope over the widths that did not diverge, a
max along a training path measured only up to the blow-up): the jacot-3, liu-1, liu-2 and liu-t1 cases
fail on that code."""
from __future__ import annotations

import pytest

from helpers import run_in_process

BLOW_UP = "figure.paper.lr=1e30"
CASES = [
    # (figure, overrides, what may still PASS: claims measured before any training step, by a
    #  substring of "<claim> [<measure>]"; None: only the named check is asserted)
    ("jacot-3", [BLOW_UP], ("The non-centred kernel PCA", "Large gap between the first and second", "lambda_")),
    ("lee-s3", ["figure.paper.ode_lr=1e30"], None),   # only the ODE check trains at ode_lr: it must FAIL
    ("liu-1", [BLOW_UP], ("softmax output: Delta K",)),   # softmax stays finite; its convergence claim FAILs
    ("liu-2", [BLOW_UP], ()),
    ("liu-t1", [BLOW_UP, "figure.smoke.train=true", "figure.smoke.hessian_steps=[0,2]"],
     ("at initialization]", "grad f(w_0; x)||]")),
]   # lee-4: tests/test_wrn.py::test_a_diverging_run_is_recorded_and_fails_its_claims_instead_of_stopping


@pytest.mark.parametrize("fid,overrides,allowed", CASES, ids=[c[0] for c in CASES])
def test_a_diverging_run_fails_the_claims_on_its_training(fid, overrides, allowed):
    metrics, cfg, module = run_in_process(fid, "smoke", overrides)
    result = module.claims(metrics, cfg)
    if allowed is None:
        (ode,) = [c for c in result if c.claim.startswith("the dopri5 solution")]
        assert ode.status == "FAIL", ode
        return
    text = {id(c): f"{c.claim} [{c.measure}]" for c in result}
    passed = [text[id(c)] for c in result if c.status == "PASS" and not any(a in text[id(c)] for a in allowed)]
    assert not passed, passed
    assert any(c.status == "FAIL" for c in result)
