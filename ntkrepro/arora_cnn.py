"""The CNNs of Arora et al. 2019 (Sec. 4: vanilla, "CNN-V"; App. H: global average pooling,
"CNN-GAP") in the paper's own parameterisation, whose infinite-width NTK is `kernels.cntk`.

Sec. 4 / App. H, with W ~ N(0, 1) everywhere, q = 3, c_sigma = 2 and no biases::

    x~(h) = sum_a W(h)_(a) * x(h-1)_(a),   x(h) = sqrt(c_sigma / (C(h) q^2)) relu(x~(h)),  h = 1..L
    vanilla:  f = sum_a <W(L+1)_(a), x(L)_(a)>           (W(L+1)_(a) in R^{P x Q})
    GAP:      f = sum_a W(L+1)_(a) mean_ij x(L)_(a),ij     (W(L+1)_(a) in R; W(1), W(L+1) fixed)
    f_nn = kappa f                                        (Sec. 3: a small output multiplier)

Written as NTK-parameterised layers (omega ~ N(0, 1), multiplier sqrt(w_var / fan_in)): the first
convolution has multiplier 1 (the input is not rescaled: w_var = 9 C(0)), the others sqrt(2 / (9 C))
(w_var = c_sigma), the readout sqrt(2 / (9 C)) on x~'s relu (w_var = 2 P Q / 9 for the flattened
readout, fan-in C P Q; 2 / 9 for GAP, fan-in C).  Parameters: {"conv_0": (3, 3, C(0), C), ...,
"readout": (fan-in, out_dim)}; the fixed layers of the GAP network go through `lax.stop_gradient`,
so SGD (`train.fit`) leaves them where they were drawn.  Layers follow the ``input_{l}`` / ``pre_{l}``
convention of `nets.MLP`, so `empirical.layerwise_ntk` gives the empirical NTK without a parameter
Jacobian; `layer_specs` gives zero weight to the fixed layers of the GAP network (App. H), so that
its mean over initialisations is ``kappa^2 * kernels.cntk(..., pooling="gap")``.

`flatten_scale` (vanilla only): "paper" is Sec. 4 as written (f sums P Q C terms, so the NTK is
the CNTK trace, about 27 L P Q per image for standardised inputs); "sqrt_pixels" divides f by
sqrt(P Q): the NTK is the CNTK / (P Q), which leaves the kernel regression predictor unchanged, but
makes the learning rates {0.1, 1, 10} of App. A usable with SGD (with "paper" every one of them
diverges on 32 x 32 images: eta * lambda_max ~ eta * 10^3 >> 2).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np

from ntkrepro.errors import ConfigError

C_SIGMA = 2.0
Q = 3
POOLINGS = ("flatten", "gap")
FLATTEN_SCALES = ("paper", "sqrt_pixels")
FIXED_GAP = ("conv_0", "readout")  # App. H: the first and the last layer are not trained


class AroraCNN(nn.Module):
    channels: int
    n_conv: int                    # L convolution layers (the paper's depth is L + 1)
    pooling: str = "flatten"       # "flatten" (CNN-V) or "gap" (CNN-GAP)
    out_dim: int = 10
    kappa: float = 1.0
    flatten_scale: str = "paper"

    def _weight(self, name: str, shape, dtype):
        """N(0, 1) weights; a fixed layer's (App. H) are constants: no gradient reaches them."""
        w = self.param(name, nn.initializers.normal(1.0), shape, dtype)
        return jax.lax.stop_gradient(w) if name in self.fixed() else w

    @nn.compact
    def __call__(self, x):
        h = x
        for l in range(self.n_conv):
            self.sow("intermediates", f"input_{l}", h)
            c_in = h.shape[-1]
            w = self._weight(f"conv_{l}", (Q, Q, c_in, self.channels), h.dtype)
            mult = 1.0 if l == 0 else math.sqrt(C_SIGMA / (Q * Q * c_in))
            z = mult * jax.lax.conv_general_dilated(h, w, (1, 1), "SAME",
                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.nn.relu(self.perturb(f"pre_{l}", z))
        h = h.reshape(h.shape[0], -1) if self.pooling == "flatten" else h.mean(axis=(1, 2))
        self.sow("intermediates", f"input_{self.n_conv}", h)
        w = self._weight("readout", (h.shape[-1], self.out_dim), h.dtype)
        z = math.sqrt(self.readout_var(x.shape) / h.shape[-1]) * (h @ w)
        return self.kappa * self.perturb(f"pre_{self.n_conv}", z)

    def readout_var(self, x_shape) -> float:
        """w_var of the readout: multiplier sqrt(w_var / fan_in) = sqrt(c_sigma / (9 C(L)))."""
        if self.pooling == "gap" or self.flatten_scale == "sqrt_pixels":
            return C_SIGMA / (Q * Q)
        return C_SIGMA * x_shape[1] * x_shape[2] / (Q * Q)

    def fixed(self) -> tuple[str, ...]:
        """Names of the layers that are not trained (GAP: the first and the last, App. H)."""
        return FIXED_GAP if self.pooling == "gap" else ()

    def layer_specs(self, x_shape):
        """The `layers` argument of `empirical.layerwise_ntk`: (c_w, 0, filter) per layer, c_w = 0
        for a fixed layer (its weights are not variables of the NTK)."""
        _, h, w, c_in = x_shape
        specs, c = [], c_in
        for l in range(self.n_conv):
            w_var = Q * Q * c if l == 0 else C_SIGMA
            c_w = 0.0 if f"conv_{l}" in self.fixed() else w_var / (Q * Q * c)
            specs.append((c_w, 0.0, (Q, Q)))
            c = self.channels
        fan_in = h * w * c if self.pooling == "flatten" else c
        c_w = 0.0 if "readout" in self.fixed() else self.readout_var(x_shape) / fan_in
        specs.append((c_w, 0.0, None))
        return tuple(specs)

    def kernel_scale(self, x_shape) -> float:
        """empirical NTK (mean over initialisations) = kernel_scale * kernels.cntk(x1, x2)."""
        pixels = x_shape[1] * x_shape[2]
        extra = 1.0 / pixels if self.pooling == "flatten" and self.flatten_scale == "sqrt_pixels" else 1.0
        return self.kappa ** 2 * extra


def make(*, channels: int, n_conv: int, pooling: str, out_dim: int, kappa: float = 1.0,
         flatten_scale: str = "paper") -> AroraCNN:
    """Validated constructor (ConfigError with the fix for impossible settings)."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling '{pooling}'; choose flatten (vanilla) or gap")
    if flatten_scale not in FLATTEN_SCALES:
        raise ConfigError(f"unknown flatten_scale '{flatten_scale}'; choose paper or sqrt_pixels")
    if int(n_conv) < 1 or int(channels) < 1 or int(out_dim) < 1:
        raise ConfigError(f"cntk_cnn needs >= 1 convolution layer, channel and output, got "
                          f"depth={n_conv}, width={channels}, out_dim={out_dim}")
    if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa > 0):
        raise ConfigError(f"kappa must be a positive number, got {kappa!r}")
    return AroraCNN(channels=int(channels), n_conv=int(n_conv), pooling=pooling,
                    out_dim=int(out_dim), kappa=float(kappa), flatten_scale=flatten_scale)


def n_trained(module: AroraCNN, params) -> int:
    """Number of trained weights (the fixed layers of the GAP network excluded)."""
    return int(sum(np.size(w) for name, w in params.items() if name not in module.fixed()))
