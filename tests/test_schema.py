"""Strict settings: each figure's schema (types read from its paper block, KEY_TYPES for null values),
the checks of ntkrepro.validate, and the command-line preflight that rewrites figure settings to ++."""
from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ntkrepro import preflight, schema
from ntkrepro.errors import ConfigError
from ntkrepro.registry import CONF_DIR, SCALES, figure_ids
from ntkrepro.runner import effective_settings
from ntkrepro.validate import validate_settings

FIGURES = figure_ids()


def _composed(fid: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"figure={fid}"])
    return OmegaConf.to_container(cfg.figure, resolve=True)


def _leaves(tree: dict, path=()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*path, str(key)))
        else:
            yield (*path, str(key)), value


@pytest.mark.parametrize("fid", FIGURES)
def test_null_settings_declare_their_type_and_presets_name_known_settings(fid):
    figure = _composed(fid)
    tree = schema.figure_schema(fid)
    for scale in SCALES:
        block = figure.get(scale) or {}
        for path, value in _leaves(block):
            assert value is not None or path[-1] in schema.KEY_TYPES, f"{fid}.{scale}.{'.'.join(path)} is null"
            assert schema.lookup(tree, list(path)) is not None, f"{fid}: {scale} preset sets unknown {path}"


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("fid", FIGURES)
def test_effective_settings_have_their_types(fid, scale):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"figure={fid}", f"scale={scale}"])
    settings = OmegaConf.to_container(effective_settings(cfg), resolve=True)
    tree = schema.figure_schema(fid)
    for path, value in _leaves(settings):
        spec = schema.lookup(tree, list(path))
        if isinstance(spec, schema.Type):
            assert spec.accepts(value), f"{fid} {scale}: {'.'.join(path)} = {value!r} is not {spec.describe()}"
    validate_settings(settings, fid)


def test_types_read_from_paper_values():
    assert schema.infer("w_var", 2.0) == schema.Type(("float",))
    assert schema.infer("widths", [8, 16]) == schema.Type(("int",), is_list=True, positive=True)
    assert schema.infer("times", [0, 16]) == schema.Type(("int",), is_list=True)
    assert schema.infer("alpha_range", [-1, 1.5]).kinds == ("float",)
    assert schema.infer("classes", None) is schema.KEY_TYPES["classes"]
    assert schema.Type(("float",)).accepts(1) and not schema.Type(("int",)).accepts(1.5)
    assert not schema.Type(("bool",)).accepts("maybe") and not schema.Type(("int",)).accepts(True)
    assert schema.Type(("str", "int"), is_list=True, optional=True).describe() == \
        "null or a list of strings or integers"


def test_panels_inherit_top_level_settings_but_name_no_new_panel():
    tree = schema.figure_schema("lee-1")
    assert schema.lookup(tree, ["panels", "mnist_relu", "steps"]) == tree["steps"]
    assert schema.lookup(tree, ["panels", "mnist_relu", "depth"]).positive
    assert schema.lookup(tree, ["panels", "steps"]) is None  # panels holds named panels only
    assert schema.lookup(tree, ["panels", "other", "depth"]) is None


@pytest.mark.parametrize("settings,message", [
    ({"panels": {"mnist_relu": {"depth": 0}}}, "figure.paper.panels.mnist_relu.depth must be a positive integer"),
    ({"panels": {"mnist_relu": {"steps": 2.5}}}, "figure.paper.panels.mnist_relu.steps must be an integer"),
    ({"w_var": "abc"}, "figure.paper.w_var must be a float, got 'abc'"),
    ({"lr": 0}, "figure.paper.lr (learning rate) must be positive, got 0"),
    ({"panels": 3}, "figure.paper.panels must be a mapping"),
    ({"widths": {"a": 1}}, "figure.paper.widths must be a list of integers, got a mapping"),
])
def test_validate_names_the_full_path(settings, message):
    with pytest.raises(ConfigError) as err:
        validate_settings(settings, "lee-1")
    assert message in str(err.value)


def test_experiment_modules_keep_calling_validate_settings():
    validate_settings({"depth": 3, "label": "x", "steps": 4}, "lee-1")  # a merged panel: keys of two levels
    with pytest.raises(ConfigError, match="depth must be a positive integer"):
        validate_settings({"depth": 0}, "not-a-figure")  # no schema: rules by name


def test_preflight_rewrites_figure_settings_to_force_add():
    out = preflight.check(["figure=lee-1", "scale=smoke", "figure.paper.panels.mnist_relu.steps=4",
                           "+figure.smoke.trials=3", "~figure.smoke.fit_points", "seed=2"], multirun=False)
    assert out == ["figure=lee-1", "scale=smoke", "++figure.paper.panels.mnist_relu.steps=4",
                   "++figure.smoke.trials=3", "~figure.smoke.fit_points", "seed=2"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=out)
    eff = effective_settings(cfg, out)
    assert eff.panels.mnist_relu.steps == 4 and eff.trials == 3 and eff.fit_points == cfg.figure.paper.fit_points


def test_preflight_names_only_swept_keys_in_sweep_folders():
    out = preflight.check(["figure=lee-s9,lee-s10", "seed=range(0,2)", "figure.paper.w_var=1.0,2.0",
                           "x64=false"], multirun=True)
    assert out[-1] == ("hydra.job.config.override_dirname.exclude_keys="
                       "['figure','scale','out_root','x64']")
    assert out[2] == "++figure.paper.w_var=1.0,2.0"


def test_preflight_checks_config_group_choices():
    assert preflight.group_choices(["figure=lee-s9", "task@figure.paper.task=mnist"]) == \
        ("task@figure.paper.task=mnist",)
    preflight.check(["figure=lee-s9", "task@figure.paper.task=mnist", "figure.paper.task.classes=[0,1]"], False)
    with pytest.raises(ConfigError, match="unknown setting figure.paper.task.classes"):
        preflight.check(["figure=lee-s9", "figure.paper.task.classes=[0,1]"], False)  # gaussian task
