"""The neural-tangents `stax` twin of `ntkrepro.convnet.ConvNet` (relu, NTK parameterization) with
equal weights, and the parameter converters the benchmark and its tests use."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ntkrepro.convnet import FILTER, ConvNet, ConvNTK  # noqa: F401  (re-exported)


def stax_convnet(stax, model: ConvNet):
    """The neural-tangents network equal to `model` (same function of the same parameters)."""
    w_std = math.sqrt(model.w_var)
    b_std = math.sqrt(model.b_var) if model.b_var > 0 else None
    layers = []
    for _ in range(model.n_conv):
        layers += [stax.Conv(model.channels, FILTER, padding="SAME", W_std=w_std, b_std=b_std),
                   stax.Relu()]
    layers.append(stax.Flatten() if model.pooling == "flatten" else stax.GlobalAvgPool())
    layers.append(stax.Dense(model.out_dim, W_std=w_std, b_std=b_std))
    return stax.serial(*layers)


def to_stax_params(model: ConvNet, params, stax_init, x_shape):
    """Our Flax parameters as the `stax` network's parameter list (shapes from its init)."""
    template = jax.eval_shape(lambda key: stax_init(key, tuple(x_shape))[1],
                              jax.random.PRNGKey(0))
    ours = [params[f"conv_{l}"] for l in range(model.n_conv)] + [params["readout"]]
    out, it = [], iter(ours)
    for leaf in template:
        if leaf == ():  # Relu / Flatten / GlobalAvgPool
            out.append(())
            continue
        p = next(it)
        w_t, b_t = leaf
        w = jnp.reshape(p["kernel"], w_t.shape)
        b = None if b_t is None else jnp.reshape(p["bias"], b_t.shape)
        out.append((w, b))
    return out


def stax_mlp_params(mlp_params, depth: int, has_bias: bool):
    """`ntkrepro.nets.MLP` parameters as the list of `stax.serial([Dense, Relu] * depth, Dense)`."""
    out = []
    for l in range(depth + 1):
        d = mlp_params[f"dense_{l}"]
        out.append((d["kernel"], d["bias"][None, :] if has_bias else None))
        if l < depth:
            out.append(())
    return out
