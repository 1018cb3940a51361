"""Command line: python -m ntkrepro figure=<id> scale=<smoke|cpu|paper> [settings] (see --help).

`main` checks the command line before Hydra runs (`ntkrepro.preflight`), then runs the Hydra app
`task`, which lives here (an importable module) so that launchers such as submitit can pickle it.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import sys
from functools import lru_cache
from pathlib import Path

logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)  # "Unable to initialize backend 'tpu'"
logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every checkpoint save at INFO

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from ntkrepro import preflight, runstate, sweeps, timings  # noqa: E402
from ntkrepro.errors import ConfigError, NtkreproError  # noqa: E402
from ntkrepro.registry import CONF_DIR, SCALES, figure_ids  # noqa: E402

_PASS_THROUGH = ("hydra_help", "shell_completion", "experimental_rerun", "info")  # Hydra's own

USAGE = """\
usage: python -m ntkrepro figure=<id> scale=<smoke|cpu|paper> [<setting>=<value> ...]
       python -m ntkrepro -m figure=<id>[,<id>...] scale=<scale>[,<scale>] [<setting>=<v1>,<v2> ...]
       make figure-<id> [SCALE=<scale>] [ARGS='<setting>=<value> ...']      make figures [SCALE=...]

Runs one figure (or table) of a paper and checks the paper's claims on the result.

scales     smoke: seconds, tiny sizes, claims not evaluated (checks the plumbing)
           cpu:   the paper's claims on a 2-core machine in minutes, every claim evaluated
           paper: the paper's own settings (often a GPU job)
settings   figure.paper.<key>=<value>    a setting of the figure at every scale (wins over presets)
           figure.<scale>.<key>=<value>  at that scale only; `+` is accepted but never needed
           seed=<int>  x64=<true|false>  out_root=<dir>  data.root=<dir holding mnist.npz, cifar10.npz>
           data.source=<auto|npz|tfds|sample>  device=<auto|gpu> (gpu: stop unless jax sees a GPU)
           a figure's settings: python -m ntkrepro figure=<id> --cfg job
sweeps     -m with comma lists, range(a,b) or choice(...): one job per combination, e.g.
           python -m ntkrepro -m figure=lee-s9,lee-s10 scale=smoke seed=0,1
outputs    <out_root>/<id>/<scale>/<date>_<time>-<token>/ (default out_root=outputs); the newest
           finished run is <out_root>/<id>/<scale>/latest; a sweep writes
           <out_root>/multirun/<date>_<time>-<token>/<id>/<scale>/<job>_<swept values>/; a split run
           (shards=<n> 'shard=range(<n>)') <out_root>/shards/<id>/<scale>/<hash>/shard=<k>/
runs       python -m ntkrepro.runs lists the runs and their state (running, finished, failed,
           interrupted, stale); python -m ntkrepro.replot <run folder> redraws a figure
hydra      --hydra-help, --cfg job|hydra|all, --info, hydra/launcher=... pass through to Hydra
"""


@lru_cache(maxsize=None)
def _run_token() -> str:
    """A short random token, one per process: run folders started in the same second differ."""
    return secrets.token_hex(3)


def _job_dirname(num, override_dirname) -> str:
    """`<job num>_<swept values>` (just `<job num>` when nothing but figure and scale is swept)."""
    swept = re.sub(r"(^|,)[+~]+", r"\1", str(override_dirname or "")).replace("/", "_")
    return f"{num}_{swept}" if swept else str(num)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_token"):
        OmegaConf.register_new_resolver("run_token", _run_token, use_cache=True)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", _job_dirname)


register_resolvers()


def _title(fid: str) -> str:
    return str(OmegaConf.load(CONF_DIR / "figure" / f"{fid}.yaml").get("title", ""))


def usage() -> str:
    """The help text: usage, then every figure with its measured times and description."""
    data = timings.load()
    times = data.get("times", {})
    note = f"; {data['note']}" if data.get("note") else ""
    lines = [USAGE, f"figures (wall time of one run on {data.get('machine', 'the reference machine')}, "
                    f"{data.get('date', '?')}{note}; - never measured):",
             f"  {'id':<9} " + " ".join(f"{s:>8}" for s in SCALES) + "  description"]
    for fid in figure_ids():
        row = times.get(fid, {})
        cells = " ".join(f"{timings.fmt(row.get(s)):>8}" for s in SCALES)
        lines.append(f"  {fid:<9} {cells}  {_title(fid)}")
    return "\n".join(lines)


def _preflight(argv: list[str]) -> list[str]:
    """argv with its overrides checked and rewritten for Hydra (`ConfigError` on bad input); a split
    run gets its fixed folder and only its unfinished parts (`sweeps.NothingToDo` when none is left)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if any(getattr(args, flag) for flag in _PASS_THROUGH):
        return argv
    overrides = sweeps.prepare(args.overrides, args.multirun)
    checked = preflight.check(overrides, args.multirun, launching=not args.cfg)
    flags = [a for a in argv if a not in args.overrides]
    return flags + checked


def _settings(argv: list[str]) -> list[str]:
    """The `key=value` settings of an argv (no flags such as -m or --cfg)."""
    return [a for a in argv if "=" in a and not a.startswith("-")]


def _plan(argv: list[str]) -> bool:
    """`plan=true`: print the cost plan of the run and return True (nothing runs, no folder)."""
    from ntkrepro import plan
    from ntkrepro.preflight import _parse, _values

    parsed = {o.key_or_group: o for o in _parse(_settings(argv))}
    if "plan" not in parsed or _values(parsed["plan"]) != [True]:
        return False
    if "-m" in argv or "--multirun" in argv:
        raise ConfigError("plan=true plans one run; drop -m (use shards=<n> to see its jobs)")
    rest = [o.input_line for k, o in parsed.items() if k not in ("figure", "scale", "plan", "shards", "shard")]
    scale = _values(parsed["scale"])[0] if "scale" in parsed else "smoke"
    shards = int(_values(parsed["shards"])[0]) if "shards" in parsed else 1
    print(plan.report(str(_values(parsed["figure"])[0]), str(scale), rest, shards))
    return True


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def task(cfg) -> None:
    from ntkrepro.runner import hydra_task

    hydra_task(cfg)


def _new_folder(path) -> Path | None:
    """The highest folder of `path` that does not exist yet (None when `path` exists)."""
    top = Path(path).absolute()
    if top.exists():
        return None
    while not top.parent.exists():
        top = top.parent
    return top


def _remove_empty(top: Path) -> None:
    """Remove the folder `top` (made by this run) if it holds nothing but empty folders."""
    inside = list(top.rglob("*"))
    if any(p.is_symlink() or not p.is_dir() for p in inside):
        return
    for path in sorted(inside, key=lambda p: len(p.parts), reverse=True) + [top]:
        try:
            path.rmdir()
        except OSError:
            return


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or "--help" in argv or "-h" in argv:
        print(usage())
        sys.exit(0)
    runstate.install_signal_handlers()
    runstate.hold_signals()  # until the run has imported what it needs (ntkrepro.runner)
    try:
        hydra_argv = _preflight(argv)
        if _plan(hydra_argv):
            sys.exit(0)
        preflight.check_out_root(_settings(hydra_argv))
    except NtkreproError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except sweeps.NothingToDo as done:
        print(done)
        sys.exit(0)
    os.environ[runstate.COMMAND_ENV] = shlex.join(["python", "-m", "ntkrepro", *argv])
    sys.argv = [sys.argv[0], *hydra_argv]
    new_root = _new_folder(runstate.out_root_of(_settings(hydra_argv)))
    try:
        task()
        runstate.release_signals()
    except SystemExit as done:  # bad input found by the run itself: its folder is gone, so is a new out_root
        if done.code == 2 and new_root is not None:
            _remove_empty(new_root)
        raise
    except KeyboardInterrupt as err:  # a stop signal before the run claimed its folder
        sig = runstate.interrupted(err)
        print(f"interrupted by {sig.name}", file=sys.stderr)
        runstate.exit_interrupted(128 + sig.signum)


if __name__ == "__main__":
    main()
