"""Where the configs live and which figures exist (one `conf/figure/<id>.yaml` per figure)."""
from __future__ import annotations

from pathlib import Path

SCALES = ("smoke", "cpu", "paper")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def figure_ids() -> list[str]:
    """Registered figure ids, sorted."""
    return sorted(p.stem for p in (CONF_DIR / "figure").glob("*.yaml"))
