"""Command line: python -m ntkrepro figure=<id> scale=<smoke|cpu|paper> [Hydra overrides]."""
from __future__ import annotations

import sys

import hydra

from ntkrepro.registry import SCALES, figure_ids
from ntkrepro.runner import hydra_task

_PASSTHROUGH = ("--help", "-h", "--hydra-help", "--info", "--cfg", "-c", "--version",
                "--shell-completion", "-sc")


def _values(arg: str) -> list[str] | None:
    value = arg.split("=", 1)[1]
    if "(" in value or "*" in value:  # Hydra sweep functions (choice, glob, range): let Hydra expand
        return None
    return [v.strip() for v in value.split(",")]


def preflight(argv: list[str]) -> str | None:
    """One-line message for a missing or unknown figure id or scale, else None."""
    if any(a.split("=")[0] in _PASSTHROUGH for a in argv):
        return None
    known = figure_ids()
    figs = [a for a in argv if a.lstrip("+").startswith("figure=")]
    if not figs:
        return (f"no figure given; run python -m ntkrepro figure=<id> scale=<smoke|cpu|paper> "
                f"with <id> one of: {', '.join(known)}")
    for arg in figs:
        for fid in _values(arg) or []:
            if fid not in known:
                return f"unknown figure '{fid}'; choose one of: {', '.join(known)}"
    for arg in (a for a in argv if a.startswith("scale=")):
        for s in _values(arg) or []:
            if s not in SCALES:
                return f"unknown scale '{s}'; use scale=smoke, scale=cpu or scale=paper"
    return None


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _app(cfg) -> None:
    hydra_task(cfg)


def main() -> None:
    message = preflight(sys.argv[1:])
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    _app()


if __name__ == "__main__":
    main()
