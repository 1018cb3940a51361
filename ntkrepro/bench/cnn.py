"""A small CNN in the NTK parameterization, and its neural-tangents `stax` twin with equal weights.

ConvNet: `n_conv` x [3 x 3 stride-1 SAME conv with `channels` channels, ReLU], then flatten or
global average pooling, then Dense(out_dim).  Every layer (NTK parameterization, omega, beta ~
N(0, 1))::

    h = sigma_w / sqrt(fan_in) * op(a, omega) + sigma_b * beta,
    fan_in = 9 C_in (conv), n_in (dense)

exactly as `neural_tangents.stax.Conv` / `Dense` with W_std = sigma_w, b_std = sigma_b (kernel
layout HWIO for both, NHWC activations).  Layers follow the `ntkrepro.nets.MLP` convention (input
of layer l sown as ``input_{l}``, pre-activation perturbed as ``pre_{l}``) so that
`ntkrepro.empirical.layerwise_ntk` computes its empirical NTK without a parameter Jacobian.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntkrepro.nets import Dense

FILTER = (3, 3)


class ConvNTK(nn.Module):
    """Stride-1, SAME-padded 2-D convolution in the NTK parameterization."""

    features: int
    w_var: float = 2.0
    b_var: float = 0.0

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        w = self.param("kernel", nn.initializers.normal(1.0), FILTER + (c_in, self.features),
                       x.dtype)
        scale = math.sqrt(self.w_var) / math.sqrt(FILTER[0] * FILTER[1] * c_in)
        y = scale * jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.b_var > 0:
            y = y + math.sqrt(self.b_var) * self.param("bias", nn.initializers.normal(1.0),
                                                       (self.features,), x.dtype)
        return y


class ConvNet(nn.Module):
    channels: int = 64
    n_conv: int = 3
    pooling: str = "flatten"  # or "gap"
    out_dim: int = 1
    w_var: float = 2.0
    b_var: float = 0.0

    @nn.compact
    def __call__(self, x):
        h = x
        for l in range(self.n_conv):
            self.sow("intermediates", f"input_{l}", h)
            z = ConvNTK(self.channels, self.w_var, self.b_var, name=f"conv_{l}")(h)
            z = self.perturb(f"pre_{l}", z)
            h = jax.nn.relu(z)
        h = h.reshape(h.shape[0], -1) if self.pooling == "flatten" else h.mean(axis=(1, 2))
        self.sow("intermediates", f"input_{self.n_conv}", h)
        z = Dense(self.out_dim, self.w_var, self.b_var, "ntk", name="readout")(h)
        return self.perturb(f"pre_{self.n_conv}", z)

    def layer_specs(self, x_shape):
        """The `layers` argument of `layerwise_ntk`: (c_w, c_b, filter_shape) per layer."""
        _, h, w, c_in = x_shape
        specs, c = [], c_in
        for _ in range(self.n_conv):
            specs.append((self.w_var / (FILTER[0] * FILTER[1] * c), self.b_var, FILTER))
            c = self.channels
        fan_in = h * w * c if self.pooling == "flatten" else c
        specs.append((self.w_var / fan_in, self.b_var, None))
        return tuple(specs)


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
