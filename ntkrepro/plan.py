"""The cost plan of a run, before submitting it: its jobs, their work, memory and estimated time.

    python -m ntkrepro figure=<id> scale=<scale> [shards=<n>] plan=true
    python -m ntkrepro.plan [--scale paper] [--figures "id ..."] [--shards N]     (make plan)

Nothing is trained or computed on data: each sweep point's compiled programs are lowered on abstract
inputs and XLA's cost analysis gives their floating-point work and peak memory (`ntkrepro.costs`);
the times are roofline estimates on this machine (rates measured here) and on A100 / H100 (their
datasheet peak rates).  A figure's experiment module provides ``cost(cfg, point)``.
"""
from __future__ import annotations

import sys

from ntkrepro import costs, preflight, split
from ntkrepro.errors import ArgumentParser, ConfigError, NtkreproError, one_line_errors
from ntkrepro.registry import CONF_DIR, SCALES, figure_list


def compose(fid: str, scale: str, overrides=()):
    """The effective settings of a figure run (as the runner builds them) and its experiment module."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ntkrepro.runner import effective_settings, load_experiment

    overrides = [o for o in overrides if not o.lstrip("+").startswith(("figure=", "scale=", "plan="))]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"figure={fid}", f"scale={scale}", *overrides])
    run_cfg = effective_settings(cfg, overrides)
    return cfg, run_cfg, load_experiment(run_cfg.experiment)


def jobs(fid: str, scale: str, overrides=(), shards: int = 1, first_only: bool = False) -> list[costs.Job]:
    """The jobs of a run split into `shards` parts, with the cost of every point (`first_only`: of
    each job's first point only, a quick check that the cost model compiles at these settings)."""
    import jax

    # checked for this figure (one line on a setting it lacks) and written as the command line
    # writes them (`++figure...`: a setting its preset leaves out is added)
    overrides = preflight.check([f"figure={fid}", f"scale={scale}", *overrides], multirun=False)
    _, run_cfg, module = compose(fid, scale, overrides)
    jax.config.update("jax_enable_x64", True)
    cost = getattr(module, "cost", None)
    if cost is None:
        raise ConfigError(f"figure {fid} has no cost model (its experiment module lacks cost(cfg, point))")
    points = split.points(module, run_cfg) or [None]
    out = []
    for k in range(shards):
        mine = points if shards == 1 else split.select(points, shards, k, fid)
        mine = mine[:1] if first_only else mine
        out.append(costs.Job(f"{fid} shard={k}" if shards > 1 else fid,
                             [c for p in mine for c in cost(run_cfg, p)]))
    return out


def report(fid: str, scale: str, overrides=(), shards: int = 1, pieces: int = 0) -> str:
    """The plan of a figure as text; `pieces` > 0 adds the most expensive pieces of its work."""
    js = jobs(fid, scale, overrides, shards)
    text = (f"plan: {fid} at scale {scale}, {len(js)} job{'s' if len(js) > 1 else ''} "
            f"(estimates: roofline on this machine's measured rates, and on datasheet peaks)\n"
            f"{costs.table(js)}")
    return text + ("\n" + costs.pieces_table(js, pieces) if pieces > 0 else "")


@one_line_errors
def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m ntkrepro.plan", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", default="paper", choices=SCALES)
    parser.add_argument("--figures", default="", type=figure_list, help="space-separated ids (default: every figure)")
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--pieces", type=int, default=0, metavar="N",
                        help="also list the N most expensive pieces of the work (on an A100), all jobs together")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error(f"--shards must be a positive integer, got {args.shards}")
    if args.pieces < 0:
        parser.error(f"--pieces must be 0 or a positive integer, got {args.pieces}")
    preflight.check_runs(args.figures, args.scale, args.overrides, out_root=False)  # nothing is written
    worst = 0
    for fid in args.figures:
        try:
            print(report(fid, args.scale, args.overrides, args.shards, args.pieces), "\n", flush=True)
        except NtkreproError as err:
            print(f"error: {fid}: {err}", file=sys.stderr, flush=True)
            worst = 2
    return worst


if __name__ == "__main__":
    sys.exit(main())
