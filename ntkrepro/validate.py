"""Checks on a figure's settings (types and value ranges), each failing with one line naming the setting
as the user must write it, e.g. `figure.paper.panels.mnist_relu.depth must be a positive integer, got 0`.

Types come from `ntkrepro.schema`.  Ranges: a setting whose paper value is a positive integer (or a
list of them) stays >= 1 (widths, depth, steps, ref_width, bottleneck_width, ...); learning rates
are > 0; w_var > 0; b_var >= 0; activations and parameterizations name a known one.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ntkrepro import schema
from ntkrepro.errors import ConfigError

# positive integers by name, for settings of a figure without a schema (e.g. an experiment's own keys)
_POSITIVE_INT = ("width", "widths", "depth", "depths", "n_inputs", "n0", "mc_samples", "steps",
                 "n_train", "n_test", "ensemble", "trials", "channels", "bottleneck_width",
                 "bottleneck_widths", "ref_width")
_LEARNING_RATES = ("lr", "lrs", "lr0", "learning_rate", "learning_rates")
_CHOICES = ("activation", "activations", "parameterization", "parameterizations")


def _values(v):
    if isinstance(v, Sequence) and not isinstance(v, str):
        return list(v)
    return [v]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _choices(key: str):
    from ntkrepro.nets import ACTIVATIONS, PARAMETERIZATIONS  # imports jax: only when needed

    return ACTIVATIONS if key.startswith("activation") else PARAMETERIZATIONS


def _check_range(name: str, key: str, value, spec) -> None:
    positive_int = spec.positive if isinstance(spec, schema.Type) else key in _POSITIVE_INT
    if positive_int and isinstance(value, Sequence) and not isinstance(value, str) and not value:
        raise ConfigError(f"{name} must be a non-empty list of positive integers, got []")
    for v in _values(value):
        if v is None:
            continue
        if positive_int and not (_is_int(v) and v >= 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if key.startswith("n_") and _is_int(v) and v < 0:  # a count (n_test, n_show_outputs, ...)
            raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")
        if (key in _LEARNING_RATES or key.endswith("_lr")) and not (_is_number(v) and v > 0):
            raise ConfigError(f"{name} (learning rate) must be positive, got {v!r}")
        if key == "lr_fraction" and not (_is_number(v) and 0 < v < 1):
            raise ConfigError(f"{name} (a fraction of the largest stable learning rate) must be in (0, 1), got {v!r}")
        if key == "w_var" and not (_is_number(v) and v > 0):
            raise ConfigError(f"{name} (weight variance) must be positive, got {v!r}")
        if key == "b_var" and not (_is_number(v) and v >= 0):
            raise ConfigError(f"{name} (bias variance) must be >= 0, got {v!r}")
        if key in _CHOICES and v not in _choices(key):
            raise ConfigError(f"unknown {key.rstrip('s')} '{v}' in {name}; choose one of "
                              f"{', '.join(sorted(_choices(key)))}")


def _walk(settings: Mapping, tree: dict, parts: list, prefix: str) -> None:
    for key, value in settings.items():
        path = [*parts, str(key)]
        name = ".".join([prefix, *path])
        spec = schema.lookup(tree, path)
        if isinstance(value, Mapping):
            if isinstance(spec, schema.Type) and spec is not schema.UNDECLARED:
                raise ConfigError(f"{name} must be {spec.describe()}, got a mapping")
            _walk(value, tree, path, prefix)
            continue
        if isinstance(spec, dict):
            raise ConfigError(f"{name} must be a mapping (e.g. {name}.<key>=<value>), got {value!r}")
        if spec is not None:
            schema.check_type(name, spec, value)
        _check_range(name, str(key), value, spec)


def validate_settings(settings: Mapping, figure_id: str, prefix: str = "figure.paper", groups=()) -> None:
    """Raise `ConfigError` for a setting of the wrong type or out of range (width below 1, unknown
    activation, ...); nested mappings are walked and each setting named as `<prefix>.<path>`.
    `groups`: the config group choices of the run (e.g. `task@figure.paper.task=mnist`)."""
    _walk(settings, schema.figure_schema(figure_id, groups), [], prefix)
