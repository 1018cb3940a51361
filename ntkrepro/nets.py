"""Fully connected networks in the NTK and the standard parameterization.

NTK parameterization, Lee et al. 2019 Eq. 1 (Jacot et al. 2018 Sec. 2 with beta = sigma_b)::

    h^{l+1} = sigma_w / sqrt(n_l) * x^l @ omega^{l+1} + sigma_b * beta^{l+1},   omega, beta ~ N(0, 1)

Standard parameterization, Lee et al. 2019 Eq. S36::

    h^{l+1} = x^l @ W^{l+1} + b^{l+1},   W ~ N(0, sigma_w^2 / n_l),  b ~ N(0, sigma_b^2)

`depth` is the number of hidden layers L; the readout is layer L+1.  Every dense layer records its
input under the ``intermediates`` collection and exposes its pre-activation to ``perturbations`` so
that `ntkrepro.empirical` can build the NTK layer by layer without forming a Jacobian.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ntkrepro.errors import ConfigError

PARAMETERIZATIONS = ("ntk", "standard")


def _swish(x):
    return x * jax.nn.sigmoid(x)


ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "erf": jax.scipy.special.erf,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
    "sigmoid": jax.nn.sigmoid,
    "swish": _swish,
}


def activation_fn(name: str) -> Callable:
    """The elementwise nonlinearity called `name` (one of `ACTIVATIONS`)."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown activation '{name}'; choose one of {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def check_parameterization(name: str) -> str:
    if name not in PARAMETERIZATIONS:
        raise ConfigError(f"unknown parameterization '{name}'; choose 'ntk' or 'standard'")
    return name


def layer_coefficients(n_in: int, w_var: float, b_var: float, parameterization: str):
    """(c_w, c_b) with d h / d(weights) Gram = c_w * x x^T and bias Gram = c_b: the squared
    multipliers of `weight_scales` (NTK: sigma_w^2 / n_in, sigma_b^2; standard: 1, 1 when a bias
    exists, i.e. sigma_b^2 > 0)."""
    _, w_mul, _, b_mul = weight_scales(n_in, w_var, b_var, parameterization)
    return w_mul ** 2, (b_mul ** 2 if b_var > 0 else 0.0)


def weight_scales(fan_in: int, w_var: float, b_var: float, parameterization: str):
    """(init std of omega, multiplier of omega, init std of beta, multiplier of beta) of a layer
    h = mult_w * op(x, omega) + mult_b * beta.  NTK (Eq. 1): omega, beta ~ N(0, 1) with
    multipliers sigma_w / sqrt(fan_in), sigma_b; standard (Eq. S36): omega ~ N(0, sigma_w^2 /
    fan_in), beta ~ N(0, sigma_b^2), multipliers 1."""
    if parameterization == "ntk":
        return 1.0, math.sqrt(w_var) / math.sqrt(fan_in), 1.0, math.sqrt(b_var)
    return math.sqrt(w_var / fan_in), 1.0, math.sqrt(b_var), 1.0


def scale_and_bias(module: nn.Module, y, w_mul: float, b_std: float, b_mul: float, b_var: float):
    """The rest of a layer after op(x, omega): y -> w_mul * y + b_mul * beta (beta a parameter
    "bias" of `module`, present only when b_var > 0)."""
    if w_mul != 1.0:
        y = w_mul * y
    if b_var > 0:
        b = module.param("bias", nn.initializers.normal(b_std), (y.shape[-1],), y.dtype)
        y = y + (b_mul * b if b_mul != 1.0 else b)
    return y


class Dense(nn.Module):
    """One affine layer of Lee et al. Eq. 1 (ntk) or Eq. S36 (standard)."""

    features: int
    w_var: float = 1.0
    b_var: float = 0.0
    parameterization: str = "ntk"
    fan_in: int | None = None  # the n_l of the scale, if not x.shape[-1] (inputs given as coordinates)

    @nn.compact
    def __call__(self, x):
        n_in = x.shape[-1]
        w_std, w_mul, b_std, b_mul = weight_scales(self.fan_in or n_in, self.w_var, self.b_var,
                                                   self.parameterization)
        w = self.param("kernel", nn.initializers.normal(w_std), (n_in, self.features), x.dtype)
        return scale_and_bias(self, x @ w, w_mul, b_std, b_mul, self.b_var)


class MLP(nn.Module):
    """L hidden layers of equal (or listed) widths, then a linear readout of `out_dim` units.

    `width` may be one int (all hidden layers) or a sequence of `depth` ints (e.g. a bottleneck).
    `input_fan_in`: the n_0 in the first layer's scale when the inputs are given as coordinates
    c = x Q in an orthonormal basis Q of their span (x omega = c (Q^T omega), and Q^T omega is again
    N(0, 1)): the outputs are exactly those of the network on x (Lee et al. Fig. 2 uses this).
    """

    width: int | Sequence[int]
    depth: int
    out_dim: int = 1
    activation: str = "relu"
    w_var: float = 2.0
    b_var: float = 0.0
    parameterization: str = "ntk"
    input_fan_in: int | None = None

    @property
    def widths(self) -> tuple[int, ...]:
        if isinstance(self.width, int):
            return (self.width,) * self.depth
        return tuple(int(w) for w in self.width)

    @nn.compact
    def __call__(self, x):
        phi = activation_fn(self.activation)
        h = x
        sizes = self.widths + (self.out_dim,)
        for l, n in enumerate(sizes):
            self.sow("intermediates", f"input_{l}", h)
            fan_in = self.input_fan_in if l == 0 else None
            z = Dense(n, self.w_var, self.b_var, self.parameterization, fan_in, name=f"dense_{l}")(h)
            z = self.perturb(f"pre_{l}", z)
            h = phi(z) if l < len(sizes) - 1 else z
        return h


def make_mlp(*, width, depth: int, out_dim: int = 1, activation: str = "relu", w_var: float = 2.0,
             b_var: float = 0.0, parameterization: str = "ntk", input_fan_in: int | None = None) -> MLP:
    """Validated constructor: raises `ConfigError` for impossible settings."""
    widths = [width] * depth if isinstance(width, int) else list(width)
    if depth < 1:
        raise ConfigError(f"depth must be at least 1 hidden layer, got {depth}")
    if len(widths) != depth:
        raise ConfigError(f"got {len(widths)} widths for {depth} hidden layers; give one per layer")
    if any(int(w) < 1 for w in widths):
        raise ConfigError(f"width must be a positive integer, got {width}")
    if out_dim < 1:
        raise ConfigError(f"out_dim must be at least 1, got {out_dim}")
    if w_var <= 0 or b_var < 0:
        raise ConfigError(f"need w_var > 0 and b_var >= 0, got w_var={w_var}, b_var={b_var}")
    activation_fn(activation)
    check_parameterization(parameterization)
    return MLP(width=width if isinstance(width, int) else tuple(int(w) for w in width), depth=depth,
               out_dim=out_dim, activation=activation, w_var=float(w_var), b_var=float(b_var),
               parameterization=parameterization, input_fan_in=input_fan_in)


def init_params(model: nn.Module, key, x):
    """Trainable parameters only (drops the zero `perturbations` collection)."""
    return model.init(key, x)["params"]
