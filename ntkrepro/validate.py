"""Checks on a figure's effective settings, each failing with one line naming the fix."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ntkrepro.errors import ConfigError
from ntkrepro.nets import ACTIVATIONS, PARAMETERIZATIONS

_POSITIVE_INT = ("width", "widths", "depth", "depths", "n_inputs", "n0", "mc_samples", "steps",
                 "n_train", "n_test", "ensemble", "trials", "channels", "bottleneck_widths")
_POSITIVE = ("lr", "learning_rate", "learning_rates")
_CHOICES = {"activation": ACTIVATIONS, "activations": ACTIVATIONS,
            "parameterization": PARAMETERIZATIONS, "parameterizations": PARAMETERIZATIONS}


def _values(v):
    if isinstance(v, Sequence) and not isinstance(v, str):
        return list(v)
    return [v]


def validate_settings(settings: Mapping, figure_id: str) -> None:
    """Raise `ConfigError` for impossible settings (width or depth below 1, unknown activation, ...)."""
    for key, value in settings.items():
        if isinstance(value, Mapping):
            continue
        hint = f"set figure.paper.{key} to a valid value (python -m ntkrepro figure={figure_id} ...)"
        if key in _POSITIVE_INT:
            for v in _values(value):
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ConfigError(f"{key} must be a positive integer, got {v!r}; {hint}")
        elif key in _POSITIVE:
            for v in _values(value):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                    raise ConfigError(f"{key} (learning rate) must be positive, got {v!r}; {hint}")
        elif key in _CHOICES:
            for v in _values(value):
                if v not in _CHOICES[key]:
                    raise ConfigError(f"unknown {key.rstrip('s')} '{v}'; choose one of "
                                      f"{', '.join(sorted(_CHOICES[key]))}")
