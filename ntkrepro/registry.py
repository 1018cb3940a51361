"""Where the configs live and which figures exist (one `conf/figure/<id>.yaml` per figure)."""
from __future__ import annotations

import argparse
from pathlib import Path

SCALES = ("smoke", "cpu", "paper")
DEVICES = ("auto", "gpu")   # `device=`: what jax finds, or a GPU required (`runner.check_device`)
UNKNOWN_DEVICE = ("unknown device {!r}; use device=auto (what jax finds) or device=gpu (stop unless jax "
                  "sees a GPU)")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def figure_ids() -> list[str]:
    """Registered figure ids, sorted."""
    return sorted(p.stem for p in (CONF_DIR / "figure").glob("*.yaml"))


def figure_id(text: str) -> str:
    """A `--figure` value: a known id; argparse reports an unknown one."""
    if text not in figure_ids():
        raise argparse.ArgumentTypeError(f"unknown figure '{text}'; choose among: {', '.join(figure_ids())}")
    return text


def figure_list(text: str) -> list[str]:
    """A `--figures` value: space-separated known ids (empty: every figure)."""
    return [figure_id(fid) for fid in text.split()] or figure_ids()


def seed_list(text: str) -> list[int]:
    """A `--seeds` value: comma-separated non-negative integers, at least one."""
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts or not all(s.isascii() and s.isdigit() and int(s) < 2 ** 32 for s in parts):
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated non-negative integers below 2^32, "
                                         f"e.g. 1,2,3; got {text!r}")
    return [int(s) for s in parts]
