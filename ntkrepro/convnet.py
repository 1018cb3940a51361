"""A small CNN in the NTK (or standard) parameterization, the convolutional twin of `nets.MLP`.

ConvNet: `n_conv` x [3 x 3 stride-1 SAME conv with `channels` channels, activation], then flatten
or global average pooling, then Dense(out_dim).  Every layer in the NTK parameterization
(omega, beta ~ N(0, 1); Lee et al. 2019 Eq. 1 with fan_in = 9 C_in for a convolution)::

    h = sigma_w / sqrt(fan_in) * op(a, omega) + sigma_b * beta

and in the standard parameterization (Appendix F) omega ~ N(0, sigma_w^2 / fan_in),
beta ~ N(0, sigma_b^2), h = op(a, omega) + beta.  Kernel layout HWIO, activations NHWC, as
`neural_tangents.stax.Conv`.  Layers follow the `nets.MLP` convention (input of layer l sown as
``input_{l}``, pre-activation perturbed as ``pre_{l}``) so that `empirical.layerwise_ntk`
computes the empirical NTK without a parameter Jacobian.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from ntkrepro.nets import Dense, activation_fn, layer_coefficients, scale_and_bias, weight_scales

FILTER = (3, 3)


class ConvNTK(nn.Module):
    """2-D convolution in the NTK or standard parameterization (default: 3 x 3, stride 1, SAME).

    `kernel_size`, `strides` and `padding` (an XLA padding string or ((lo, hi), (lo, hi))) are
    options for other layers, e.g. the 3 x 3 stride-2 convolution and the 1 x 1 projection shortcut
    of the wide residual network (`ntkrepro.wrn`); fan_in = kh * kw * C_in either way."""

    features: int
    w_var: float = 2.0
    b_var: float = 0.0
    parameterization: str = "ntk"
    kernel_size: tuple = FILTER
    strides: tuple = (1, 1)
    padding: Any = "SAME"

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        kh, kw = self.kernel_size
        w_std, w_mul, b_std, b_mul = weight_scales(kh * kw * c_in, self.w_var,
                                                   self.b_var, self.parameterization)
        w = self.param("kernel", nn.initializers.normal(w_std), (kh, kw, c_in, self.features),
                       x.dtype)
        padding = self.padding if isinstance(self.padding, str) else tuple(map(tuple, self.padding))
        y = jax.lax.conv_general_dilated(x, w, tuple(self.strides), padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return scale_and_bias(self, y, w_mul, b_std, b_mul, self.b_var)


class ConvNet(nn.Module):
    channels: int = 64
    n_conv: int = 3
    pooling: str = "flatten"  # or "gap"
    out_dim: int = 1
    w_var: float = 2.0
    b_var: float = 0.0
    activation: str = "relu"
    parameterization: str = "ntk"

    @nn.compact
    def __call__(self, x):
        phi = activation_fn(self.activation)
        h = x
        for l in range(self.n_conv):
            self.sow("intermediates", f"input_{l}", h)
            z = ConvNTK(self.channels, self.w_var, self.b_var, self.parameterization,
                        name=f"conv_{l}")(h)
            z = self.perturb(f"pre_{l}", z)
            h = phi(z)
        h = h.reshape(h.shape[0], -1) if self.pooling == "flatten" else h.mean(axis=(1, 2))
        self.sow("intermediates", f"input_{self.n_conv}", h)
        z = Dense(self.out_dim, self.w_var, self.b_var, self.parameterization, name="readout")(h)
        return self.perturb(f"pre_{self.n_conv}", z)

    def layer_specs(self, x_shape):
        """The `layers` argument of `layerwise_ntk`: (c_w, c_b, filter_shape) per layer."""
        _, h, w, c_in = x_shape
        specs, c = [], c_in
        for _ in range(self.n_conv):
            c_w, c_b = layer_coefficients(FILTER[0] * FILTER[1] * c, self.w_var, self.b_var,
                                          self.parameterization)
            specs.append((c_w, c_b, FILTER))
            c = self.channels
        fan_in = h * w * c if self.pooling == "flatten" else c
        specs.append(layer_coefficients(fan_in, self.w_var, self.b_var, self.parameterization) + (None,))
        return tuple(specs)
