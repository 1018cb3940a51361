"""One precision policy: `train_dtype` (a figure setting) for training networks, float64 for kernel
algebra (the top-level `x64` setting turns JAX's float64 on; it is on by default).

    dt = precision.train_dtype(cfg)            # jnp.float32 unless cfg.train_dtype == "float64"
    kt = precision.kernel_dtype()              # jnp.float64 (float32 only when x64=false)
    params64 = precision.cast(params, kt)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.errors import ConfigError

TRAIN_DTYPES = {"float32": jnp.float32, "float64": jnp.float64}


def train_dtype(cfg, default: str = "float32"):
    """The dtype networks are trained in: the figure's `train_dtype` setting ("float32" or "float64")."""
    name = str(cfg.get("train_dtype", default) if hasattr(cfg, "get") else default)
    if name not in TRAIN_DTYPES:
        raise ConfigError(f"train_dtype must be float32 or float64, got '{name}'; set figure.paper.train_dtype")
    if name == "float64" and not jax.config.jax_enable_x64:
        raise ConfigError("train_dtype=float64 needs x64=true")
    return TRAIN_DTYPES[name]


def kernel_dtype():
    """float64 for kernel algebra (closed forms, solves, eigendecompositions) when x64 is on."""
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def cast(tree, dtype):
    """Every array leaf of `tree` as a JAX array of `dtype`."""
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def host64(tree):
    """Every leaf as a float64 numpy array (host side: no compilation per shape)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)
