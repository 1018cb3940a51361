"""A paper's claims as quantitative checks on a run's metrics.

Each claim is evaluated from `metrics.csv` every run (and again by `ntkrepro.replot`); nothing here
knows any expected outcome beyond the tolerance written in the figure's config.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

PASS, FAIL, NOT_EVALUATED = "PASS", "FAIL", "NOT EVALUATED"


@dataclass(frozen=True)
class Claim:
    claim: str            # the paper's statement, in words
    measure: str          # what was measured
    value: float | None   # measured value
    expected: str         # the tolerance, e.g. "in [-0.65, -0.35]"
    status: str           # PASS | FAIL | NOT EVALUATED
    reason: str = ""
    kind: str = "paper"   # "paper": a claim of the paper; "check": a consistency check of ours
    cite: str = ""        # where the paper says it (section / figure / caption), for paper claims


def select(metrics, quantity: str, **columns):
    """Rows of a tidy metrics frame with ``quantity == quantity`` and each given column equal to
    its value (e.g. ``select(m, "loss", model="network", split="test")``)."""
    m = metrics[metrics.quantity == quantity]
    for col, v in columns.items():
        m = m[m[col] == v]
    return m


KINDS = ("paper", "check")


def in_range(claim: str, measure: str, value: float, lo: float, hi: float, *, kind: str = "paper",
             cite: str = "") -> Claim:
    ok = value is not None and math.isfinite(value) and lo <= value <= hi
    return Claim(claim, measure, _f(value), f"in [{lo:g}, {hi:g}]", PASS if ok else FAIL, kind=kind, cite=cite)


def below(claim: str, measure: str, value: float, hi: float, *, kind: str = "paper", cite: str = "") -> Claim:
    ok = value is not None and math.isfinite(value) and value < hi
    return Claim(claim, measure, _f(value), f"< {hi:g}", PASS if ok else FAIL, kind=kind, cite=cite)


def above(claim: str, measure: str, value: float, lo: float, *, kind: str = "paper", cite: str = "") -> Claim:
    ok = value is not None and math.isfinite(value) and value > lo
    return Claim(claim, measure, _f(value), f"> {lo:g}", PASS if ok else FAIL, kind=kind, cite=cite)


def _f(v):
    return None if v is None else float(v)


def strict_max(values) -> float:
    """The largest value; nan when there are none or any is not finite (a diverged run), so that a
    claim on it fails instead of passing on the finite rest (numpy's nan-skipping and pandas' max
    would skip nan)."""
    v = np.asarray(values, float)
    return float(v.max()) if v.size and np.all(np.isfinite(v)) else float("nan")


def strict_min(values) -> float:
    """The smallest value; nan when there are none or any is not finite (see `strict_max`)."""
    v = np.asarray(values, float)
    return float(v.min()) if v.size and np.all(np.isfinite(v)) else float("nan")


def loglog_slope(x, y, strict: bool = False) -> float:
    """Least-squares slope of log y against log x over the finite positive points (nan when fewer than
    two); `strict`: nan when any y is not finite (e.g. a diverged run), so a claim on it fails."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or (strict and not np.all(np.isfinite(y))):
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def finalize(claims: list[Claim], evaluate: bool, reason: str) -> list[Claim]:
    """Mark every claim NOT EVALUATED (keeping its measured value) when `evaluate` is false."""
    if evaluate:
        return claims
    return [replace(c, status=NOT_EVALUATED, reason=reason) for c in claims]


def write(claims: list[Claim], path: Path) -> None:
    path.write_text(json.dumps([asdict(c) for c in claims], indent=2) + "\n")


def counts(claims: list[Claim]) -> dict:
    """How many claims passed, failed, were not evaluated; and the paper's claims passed / evaluated."""
    paper = [c for c in claims if c.kind == "paper"]
    return {"passed": sum(c.status == PASS for c in claims),
            "failed": sum(c.status == FAIL for c in claims),
            "not_evaluated": sum(c.status == NOT_EVALUATED for c in claims),
            "paper_passed": sum(c.status == PASS for c in paper),
            "paper_evaluated": sum(c.status != NOT_EVALUATED for c in paper)}


def summary(claims: list[Claim], scale: str) -> str:
    """What a run prints at its end: the claims table and the counts (paper claims and our checks
    apart), or one line when no claim was evaluated."""
    if claims and all(c.status == NOT_EVALUATED for c in claims):
        hint = "; run scale=cpu to evaluate them" if scale == "smoke" else ""
        return f"claims: not evaluated at {scale} scale ({len(claims)} computed){hint}"
    n = counts(claims)
    checks = [c for c in claims if c.kind == "check"]
    line = f"paper claims: {n['paper_passed']}/{n['paper_evaluated']} PASS"
    if checks:
        line += (f"; checks of our code: {sum(c.status == PASS for c in checks)}/"
                 f"{sum(c.status != NOT_EVALUATED for c in checks)} PASS")
    return f"{table(claims)}\n{line}"


def table(claims: list[Claim]) -> str:
    """The claims as a fixed-width text table (printed at the end of every run)."""
    rows = [("status", "kind", "value", "expected", "claim / measure")]
    for c in claims:
        val = "n/a" if c.value is None else f"{c.value:.4g}"
        text = f"{c.claim} [{c.measure}]" + (f" ({c.reason})" if c.reason else "")
        rows.append((c.status, c.kind, val, c.expected, text))
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:>{w[2]}}  {r[3]:<{w[3]}}  {r[4]}" for r in rows)
