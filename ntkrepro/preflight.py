"""The command line checked before Hydra runs: one line `error: ...`, exit 2, no folder.

Overrides are parsed with Hydra's own parser (sweeps `a,b`, `range()`, `choice()`, `glob()` included).
Each figure setting `figure.paper.<path>=v` or `figure.<scale>.<path>=v` (with or without `+` / `++`)
must name a setting of every figure run (`ntkrepro.schema`) and hold a value of its type and range
(`ntkrepro.validate`); it is then passed on as `++figure...`, so `+` is never needed.  Top-level keys:
seed, x64, scale, out_root, data.source, data.root, device, ...; a config group choice (`task@figure.paper.task=mnist`)
must name an option of the group; `hydra.*` and `hydra/...` pass through.
"""
from __future__ import annotations

import difflib
import itertools

from ntkrepro import runstate, schema
from ntkrepro.data import SOURCES
from ntkrepro.errors import ConfigError
from ntkrepro.registry import DEVICES, SCALES, UNKNOWN_DEVICE, figure_ids
from ntkrepro.validate import validate_settings

TOP_LEVEL = ("seed", "x64", "scale", "out_root", "data.source", "data.root", "shards", "shard", "plan",
             "resume", "checkpoint.every_steps", "checkpoint.every_minutes", "mutation", "device")
DIRNAME_KEYS = "hydra.job.config.override_dirname.exclude_keys"
_ALWAYS_EXCLUDED = ("figure", "scale", "out_root")  # never part of a sweep job's folder name


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser, parsed = OverridesParser.create(), []
    for text in overrides:
        try:
            parsed += parser.parse_overrides(overrides=[text])
        except HydraException as err:
            reason = str(err).splitlines()[0]
            raise ConfigError(f"cannot read {text!r} ({reason}); write <setting>=<value>, lists as [a,b] "
                              "(https://hydra.cc/docs/advanced/override_grammar/basic)") from None
    return parsed


def _values(override) -> list:
    """The values an override takes: one, or each value of a sweep."""
    from hydra.core.override_parser.types import Glob, Override

    if not override.is_sweep_override():
        return [override.value()]
    if override.is_interval_sweep():
        return [override.value().start, override.value().end]
    if isinstance(override._value, Glob):
        key = override.key_or_group
        options = figure_ids() if key == "figure" else schema.group_options(key)
        if options is None:
            raise ConfigError(f"glob() selects config group options (figure=glob(lee-*)), not {key}")
        return override._value.filter(options)
    return [Override._convert_value(v) for v in override.sweep_iterator()]


def _is_group(override) -> bool:
    """A choice of a config group under conf/ other than figure (e.g. task@figure.paper.task=mnist)."""
    key = override.key_or_group
    return key != "figure" and not override.is_hydra_override() and schema.group_options(key) is not None


def _group_choices(overrides) -> list[tuple[str, ...]]:
    """Every combination of the config group choices given (one empty tuple when none)."""
    choices = []
    for o in (o for o in overrides if _is_group(o) and not o.is_delete()):
        options = schema.group_options(o.key_or_group)
        for value in _values(o):
            if str(value) not in options:
                raise ConfigError(f"unknown {o.key_or_group} '{value}'; choose one of: {', '.join(options)}")
        choices.append([f"{o.get_key_element()}={v}" for v in _values(o)])
    return list(itertools.product(*choices))


def group_choices(overrides: list[str]) -> tuple[str, ...]:
    """The config group choices among one job's overrides (as `ntkrepro.schema.figure_schema` takes)."""
    return _group_choices(_parse(overrides))[0]


def _figures(overrides) -> list[str]:
    known = figure_ids()
    given = [o.input_line for o in overrides if o.key_or_group == "figure"]
    if len(given) > 1:
        raise ConfigError(f"figure is given twice ({given[0]}, {given[1]}); give one figure=<id>, or several "
                          "as -m figure=<id>,<id>")
    ids = [str(v) for o in overrides if o.key_or_group == "figure" for v in _values(o)]
    if not ids:
        raise ConfigError(f"no figure given; run python -m ntkrepro figure=<id> scale=<smoke|cpu|paper> "
                          f"with <id> one of: {', '.join(known)}")
    for fid in ids:
        if fid not in known:
            raise ConfigError(f"unknown figure '{fid}'; choose one of: {', '.join(known)}")
    return ids


def _unknown(name: str, candidates: list[str], where: str = "") -> ConfigError:
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    shown = close or candidates[:8]
    more = "" if close or len(candidates) <= 8 else ", ..."
    return ConfigError(f"unknown setting {name}{where}; known settings: {', '.join(shown)}{more}")


def _check_top_level(key: str, value) -> None:
    if key == "seed" and not (_is_int(value) and 0 <= value < 2 ** 32):
        raise ConfigError(f"seed must be a non-negative integer below 2^32, got {value!r}")
    if key == "x64" and not isinstance(value, bool):
        raise ConfigError(f"x64 must be true or false, got {value!r}")
    if key == "scale" and value not in SCALES:
        raise ConfigError(f"unknown scale '{value}'; use scale=smoke, scale=cpu or scale=paper")
    if key == "out_root" and not (isinstance(value, str) and value.strip()):
        raise ConfigError(f"out_root must be a folder path, got {value!r}")
    if key == "data.source" and value not in SOURCES:
        raise ConfigError(f"unknown data source {value!r}; set data.source= one of {', '.join(SOURCES)}")
    if key == "data.root" and not (value is None or isinstance(value, str)):
        raise ConfigError(f"data.root must be a folder path or null, got {value!r}")
    if key in ("shards", "checkpoint.every_steps") and not (_is_int(value) and value >= 1):
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if key == "shard" and not (_is_int(value) and value >= 0):
        raise ConfigError(f"shard must be a non-negative integer below shards, got {value!r}")
    if key == "mutation" and not (value is None or isinstance(value, str)):
        raise ConfigError(f"mutation must be the name of a mutation or null, got {value!r}")
    if key == "device" and value not in DEVICES:
        raise ConfigError(UNKNOWN_DEVICE.format(value))
    if key in ("plan", "resume") and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if key == "checkpoint.every_minutes" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                  and value > 0):
        raise ConfigError(f"checkpoint.every_minutes must be positive, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nest(parts: list[str], value) -> dict:
    for part in reversed(parts):
        value = {part: value}
    return value


def _check_figure_setting(override, figures: list[str], groups: list[tuple[str, ...]]) -> None:
    key = override.key_or_group
    parts = key.split(".")
    blocks = ("paper", *[s for s in SCALES if s != "paper"])
    if len(parts) < 3 or parts[1] not in blocks:
        raise _unknown(key, [f"figure.{b}.<key>" for b in blocks])
    for fid, choice in itertools.product(figures, groups):
        tree = schema.figure_schema(fid, choice)
        if schema.lookup(tree, parts[2:]) is None:
            raise _unknown(key, schema.paths(tree, f"figure.{parts[1]}"), f" for figure {fid}")
        if not override.is_delete():
            for value in _values(override):
                validate_settings(_nest(parts[2:], value), fid, f"figure.{parts[1]}", choice)


def launchers() -> list[str]:
    """The names hydra/launcher= takes: this project's presets (conf/hydra/launcher) and those Hydra and
    its installed plugins register (basic; submitit_local, submitit_slurm with the cluster extra)."""
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports the installed plugins, which register their launchers
    names = [n.removesuffix(".yaml") for n in ConfigStore.instance().list("hydra/launcher")]
    return sorted({*names, *schema.group_options("hydra/launcher")})


def _check_launcher(override, searchpath: bool = False) -> None:
    """hydra/launcher=<name>: a launcher whose plugin is installed (submitit: the cluster extra) and,
    unless `hydra.searchpath` adds config folders of its own (`searchpath`), one that exists."""
    import importlib.util

    names = [str(v) for v in _values(override)]
    if any(n in ("slurm_gpu", "local") or n.startswith("submitit") for n in names) and \
            importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        raise ConfigError(f"hydra/launcher={names[0]} needs the submitit launcher; install the cluster extra: "
                          "pip install -e '.[cluster]'")
    known = [] if searchpath else launchers()
    for name in names:
        if known and name not in known:
            raise ConfigError(f"unknown launcher hydra/launcher={name}; choose one of: {', '.join(known)}")


def _check_slurm(overrides) -> None:
    """A sweep submitted to Slurm (hydra/launcher=slurm_gpu or submitit_slurm) needs its `sbatch`."""
    import shutil

    for o in overrides:
        slurm = [str(v) for v in _values(o) if "slurm" in str(v)] if o.key_or_group == "hydra/launcher" else []
        if slurm and shutil.which("sbatch") is None:
            raise ConfigError(f"hydra/launcher={slurm[0]} submits Slurm jobs, but sbatch is not on this "
                              "machine's PATH; run the command on the cluster's login node, or use "
                              "hydra/launcher=local to run the jobs here")


def _check(override, figures: list[str], groups: list[tuple[str, ...]], searchpath: bool = False) -> None:
    key = override.key_or_group
    if key == "hydra/launcher":
        _check_launcher(override, searchpath)
    if key == "figure" or override.is_hydra_override() or _is_group(override):
        return
    if key.startswith("figure."):
        _check_figure_setting(override, figures, groups)
    elif key in TOP_LEVEL:
        for value in _values(override):
            _check_top_level(key, value)
    else:
        raise _unknown(key, [*TOP_LEVEL, "figure.paper.<key>", "figure.<scale>.<key>"])


def _rewrite(override) -> str:
    """A figure setting as `++figure...=value` (added when the preset lacks it); others as typed."""
    if override.key_or_group.startswith("figure.") and not override.is_delete():
        return f"++{override.key_or_group}={override.get_value_string()}"
    return override.input_line


def _dirname_excludes(overrides) -> str:
    """Exclude every key that is not swept from a sweep job's folder name (`<num>_seed=1`)."""
    keys = [*_ALWAYS_EXCLUDED, *(o.key_or_group for o in overrides if not o.is_sweep_override())]
    return f"{DIRNAME_KEYS}=[{','.join(repr(k) for k in dict.fromkeys(keys))}]"


def check(overrides: list[str], multirun: bool, launching: bool = True) -> list[str]:
    """The overrides to hand to Hydra, or `ConfigError` with one line saying what is wrong (`launching`:
    false when Hydra only prints the config, `--cfg`: no Slurm needed)."""
    parsed = _parse(overrides)
    for override in parsed:
        if override.is_sweep_override() and not multirun:
            raise ConfigError(f"{override.input_line} sweeps several values; add -m (--multirun) to run "
                              "one job per value, or write a list as [a,b]")
    figures, groups = _figures(parsed), _group_choices(parsed)
    searchpath = any(o.key_or_group.startswith("hydra.searchpath") for o in parsed)
    for override in parsed:
        _check(override, figures, groups, searchpath)
    if multirun and launching:
        _check_slurm(parsed)
    out = [_rewrite(o) for o in parsed]
    if multirun and not any(o.key_or_group == DIRNAME_KEYS for o in parsed):
        out.append(_dirname_excludes(parsed))
    return out


def check_out_root(overrides: list[str]) -> None:
    """Every `out_root` the run would write under (conf/config.yaml's if none is given) can hold
    folders (`runstate.check_can_hold_folders`): else `ConfigError`, before Hydra makes the run folder."""
    roots = [str(v) for o in _parse(overrides) if o.key_or_group == "out_root" for v in _values(o)]
    for root in roots or [str(runstate.out_root_of([]))]:
        runstate.check_can_hold_folders(root)


def check_runs(figures: list[str], scale: str, overrides: list[str], out_root: bool = True,
               reserved: dict[str, str] | None = None) -> None:
    """The runs a batch command (`make figures`, `make verify`, `make plan`) will start, checked before
    any starts: a setting that no listed figure accepts (a typo, `seed=-1`) is `ConfigError`, one line;
    one that only some figures have is left to the runs (the others fail in the batch's table); a
    setting the command gives each run itself (`reserved`: key -> where to set it, e.g. figure ->
    FIGURES=...) is `ConfigError`; and (`out_root`) the out_root."""
    parsed = _parse(overrides)
    reserved = {"figure": "FIGURES='<id> ...'", "scale": "SCALE=<scale>", **(reserved or {})}
    for override in parsed:
        if override.key_or_group in reserved:
            raise ConfigError(f"{override.input_line} among the settings: this command sets "
                              f"{override.key_or_group} for each run; use {reserved[override.key_or_group]} "
                              "instead")
    groups = [o.input_line for o in parsed if _is_group(o)]  # a figure setting may live in a chosen group
    for override in parsed:
        context = groups if override.key_or_group.startswith("figure.") else []
        errors = []
        for fid in figures:
            try:
                check([f"figure={fid}", f"scale={scale}", *context, override.input_line], multirun=False)
                break
            except ConfigError as err:
                errors.append(err)
        if errors and len(errors) == len(figures):
            raise errors[0]
    if out_root:
        check_out_root(overrides)
