"""Splitting a figure's run into independent jobs (shards) along its sweep points.

An experiment module that can be split exposes

    points(cfg) -> list[dict]              its sweep points, e.g. [{"width": 64, "trial": 0}, ...]
    run(cfg, subset=None) -> DataFrame     the rows of the points in `subset` (None: every point)
    cost(cfg, point) -> list[costs.Cost]   the compiled work of one point (for `plan=true`)

Each point's rows depend only on the settings and on the point itself (its random numbers are
drawn from the seed and the point, never from the order in which points run), and rows that belong
to no point in particular come with exactly one of them.  So the rows of a split run, collected
from its parts (`python -m ntkrepro.collect`), are the rows of the unsplit run.

Shard k of n computes points k, k + n, k + 2n, ... (round robin, so the jobs are of similar size
when the points are ordered by cost).
"""
from __future__ import annotations

import hashlib
import json

from omegaconf import OmegaConf

from ntkrepro.errors import ConfigError


def point_key(seed: int, *parts: int):
    """The random key of a sweep point: PRNGKey(seed) with each of the point's integer `parts` folded
    in, in order (`jax.random.fold_in`), so it depends on the seed and the point alone, never on the
    other points or the order in which they run."""
    import jax

    key = jax.random.PRNGKey(int(seed))
    for part in parts:
        key = jax.random.fold_in(key, int(part))
    return key


def points(module, cfg) -> list[dict] | None:
    """The sweep points of a figure, or None when its experiment module cannot be split."""
    fn = getattr(module, "points", None)
    return None if fn is None else list(fn(cfg))


def select(all_points: list[dict] | None, shards: int, shard: int, figure_id: str) -> list[dict] | None:
    """The points of shard `shard` of `shards` (None: the whole run, unsplit)."""
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ConfigError(f"shards must be a positive integer, got {shards!r}")
    if not isinstance(shard, int) or isinstance(shard, bool) or not 0 <= shard < shards:
        raise ConfigError(f"shard must be in [0, {shards}) (one of 0..{shards - 1}), got {shard!r}")
    if shards == 1:
        return None
    if all_points is None:
        raise ConfigError(f"figure {figure_id} cannot be split into jobs (its experiment module has no "
                          "points); run it with shards=1")
    if shards > len(all_points):
        raise ConfigError(f"figure {figure_id} has {len(all_points)} sweep points at this scale, fewer "
                          f"than shards={shards}; use shards <= {len(all_points)}")
    return all_points[shard::shards]


def settings_hash(run_cfg) -> str:
    """A short hash of a run's effective settings (what its results depend on, the data included)."""
    plain = OmegaConf.to_container(run_cfg, resolve=True) if OmegaConf.is_config(run_cfg) else run_cfg
    text = json.dumps(plain, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def describe(point: dict) -> str:
    """A point as `width=64,trial=0`."""
    return ",".join(f"{k}={v}" for k, v in point.items()) or "all"
