"""Model specs: one description of a network gives its Flax module, initialisation, forward pass,
analytic infinite-width kernel (where the core has one) and the best empirical-NTK path for it.

    spec = ModelSpec(arch="mlp", width=2048, depth=3, activation="relu", w_var=2.0, b_var=0.1)
    params = spec.init(jax.random.PRNGKey(0), x)
    f = spec.apply(params, x)                          # hashable: pass it to jit, `train.Trainer`
    theta_hat = spec.empirical_ntk(params, x)          # mlp: `empirical.mlp_ntk`, no Jacobian
    k = spec.analytic(x)                               # mlp: `kernels.fc` (k.nngp, k.ntk)

Architectures (`ARCHS`; each is an `Arch`, register more with `register`):

* ``mlp``: `nets.MLP`, `depth` hidden layers of `width` units (Lee et al. Eq. 1 / S36); analytic
  NNGP and NTK from `kernels.fc`; empirical NTK layer by layer (`empirical.mlp_ntk`).
* ``cnn``: `convnet.ConvNet`, `depth` 3x3 stride-1 SAME convolutions with `width` channels, then
  `pooling` ("flatten" or "gap") and a dense readout; empirical NTK layer by layer
  (`empirical.layerwise_ntk`); no analytic kernel for this architecture (Arora et al.'s exact CNTK
  is the kernel of a different scaling: see `kernels.cntk`).
* ``wrn``: `wrn.WRN`, Lee et al.'s wide residual network (Table S1): `width` channels in every layer,
  `depth` = 6N + 4 (N blocks per group; `wrn.depth_from_blocks`), options ``pool`` (8) and
  ``bn_eps``; batch norm on the statistics of the batch it is applied to; empirical NTK of a joint
  batch by one VJP and one JVP per output column (`wrn.empirical_ntk`); no analytic kernel.
* ``cntk_cnn``: `arora_cnn.AroraCNN`, Arora et al. 2019's CNN (Sec. 4 / App. H) in its own
  parameterisation: `depth` 3x3 convolutions (the paper's depth is depth + 1) of `width` channels,
  `pooling` "flatten" (CNN-V) or "gap" (CNN-GAP: first and last layers fixed), options ``kappa``
  (output multiplier) and ``flatten_scale``; analytic kernel `kernels.cntk` (times kappa^2);
  empirical NTK layer by layer (`empirical.layerwise_ntk`, fixed layers excluded).

The NTK / standard parameterization rule (weight and bias scales) is `nets.weight_scales`; every
architecture here uses it except ``cntk_cnn``, which keeps Arora et al.'s own multipliers.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro import empirical, kernels
from ntkrepro.convnet import ConvNet
from ntkrepro.errors import ConfigError
from ntkrepro.nets import activation_fn, check_parameterization, make_mlp

POOLINGS = ("flatten", "gap")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A network, hashable (usable as a static argument of `jax.jit`).

    arch              a name in `ARCHS` ("mlp", "cnn", ...)
    width             hidden units (mlp; an int or one int per hidden layer) or channels (cnn)
    depth             hidden layers (mlp) or convolution layers (cnn)
    out_dim           output units k
    activation        `nets.ACTIVATIONS`
    w_var, b_var      sigma_w^2, sigma_b^2
    parameterization  "ntk" (Eq. 1) or "standard" (Eq. S36)
    pooling           cnn: "flatten" or "gap"
    input_fan_in      mlp: n_0 of the first layer's scale when inputs are coordinates in a basis of
                      their span (see `nets.MLP`; `span_coordinates` computes them)
    """
    arch: str = "mlp"
    width: Any = 512
    depth: int = 1
    out_dim: int = 1
    activation: str = "relu"
    w_var: float = 2.0
    b_var: float = 0.0
    parameterization: str = "ntk"
    pooling: str = "gap"
    input_fan_in: int | None = None
    options: tuple = ()  # architecture-specific (key, value) pairs, e.g. (("blocks", 1),)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown model architecture '{self.arch}'; choose one of {', '.join(ARCHS)}")
        if isinstance(self.width, list):
            object.__setattr__(self, "width", tuple(int(w) for w in self.width))
        check_parameterization(self.parameterization)
        activation_fn(self.activation)
        if not self.w_var > 0 or self.b_var < 0:
            raise ConfigError(f"need w_var > 0 and b_var >= 0, got w_var={self.w_var}, b_var={self.b_var}")
        if int(self.out_dim) < 1:
            raise ConfigError(f"out_dim must be at least 1, got {self.out_dim}")
        self.module  # validates the architecture's own settings

    @property
    def arch_impl(self) -> "Arch":
        return ARCHS[self.arch]

    def option(self, key: str, default=None):
        return dict(self.options).get(key, default)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    @property
    def module(self) -> nn.Module:
        return self.arch_impl.module(self)

    def init(self, key, x, dtype=None):
        """Trainable parameters (the Flax `params` collection) for inputs like `x` (a batch), in
        `dtype` (default: that of x)."""
        x = jnp.asarray(x[:1], dtype) if dtype is not None else jnp.asarray(x[:1])
        return _init(self, key, x)

    def param_shapes(self, x, dtype=None):
        """The parameters `init` would return, as shapes and dtypes only (`jax.eval_shape`: nothing
        is computed); `x` an array or a `jax.ShapeDtypeStruct` batch.  For cost plans."""
        return jax.eval_shape(lambda k, u: self.init(k, u, dtype), jax.random.PRNGKey(0), x)

    def init_normal(self, rng: np.random.Generator, x, dtype=None):
        """NTK parameterization only: every parameter N(0, 1), drawn by numpy `rng` into the shapes
        of `init` (nothing is compiled: fast for sweeps over many widths)."""
        if self.parameterization != "ntk":
            raise ConfigError("init_normal draws N(0, 1) parameters: NTK parameterization only")
        dtype = dtype or jnp.asarray(x).dtype
        shapes = self.param_shapes(x, dtype)
        return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.standard_normal(s.shape), dtype), shapes)

    def apply(self, params, x):
        """Network outputs (N, out_dim)."""
        return self.module.apply({"params": params}, x)

    @property
    def has_analytic(self) -> bool:
        return self.arch_impl.analytic is not None

    def analytic(self, x1, x2=None, *, dtype=jnp.float64, **kw) -> kernels.Kernel:
        """Infinite-width NNGP and NTK (a `kernels.Kernel`), in float64 by default."""
        if not self.has_analytic:
            raise ConfigError(f"no analytic kernel for arch={self.arch} in the core; "
                              "use the empirical kernel (set analytic_kernel=false)")
        return self.arch_impl.analytic(self, x1, x2, dtype=dtype, **kw)

    def empirical_ntk(self, params, x1, x2=None, *, trace: bool = True):
        """Theta-hat(x1, x2) = J(x1) J(x2)^T (Lee et al. Eq. 4) by the architecture's best path;
        (N1, N2), or (N1, N2, k, k) with trace=False."""
        return self.arch_impl.empirical_ntk(self, params, x1, x2, trace)

    def n_params(self, x) -> int:
        return int(sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(self.param_shapes(x))))


@functools.lru_cache(maxsize=None)
def _init_fn(spec: ModelSpec):
    return jax.jit(lambda key, x: spec.module.init(key, x)["params"])


def _init(spec: ModelSpec, key, x):
    return _init_fn(spec)(key, x)


def key_chain(seed: int, n: int) -> list:
    """`n` PRNG keys in the order a loop of initialisations draws them from ``PRNGKey(seed)``:
    ``key, sub = jax.random.split(key)``, keeping each `sub`.  A slice of the chain, stacked and
    vmapped over (``jax.vmap(lambda k: spec.init(k, x))(jnp.stack(keys[a:b]))``), gives the same
    initialisations as drawing them one after another."""
    key, subs = jax.random.PRNGKey(int(seed)), []
    for _ in range(int(n)):
        key, sub = jax.random.split(key)
        subs.append(sub)
    return subs


def span_coordinates(x_train, x_other, tol: float = 1e-8):
    """Coordinates (c_train, c_other) of the inputs in an orthonormal basis Q (n0 x N) of the row
    space of x_train, x = c Q^T, for an MLP with ``input_fan_in=n0`` (exactly the network on x, at
    N x n instead of n0 x n first-layer cost).  `x_other` must lie in that span (e.g. combinations of
    training inputs); when N >= n0 the inputs are returned unchanged."""
    x_train, x_other = np.asarray(x_train), np.asarray(x_other)
    if x_train.shape[0] >= x_train.shape[1]:
        return x_train, x_other
    q, _ = np.linalg.qr(x_train.T)
    c_other = x_other @ q
    resid = np.linalg.norm(x_other - c_other @ q.T) / max(np.linalg.norm(x_other), 1e-300)
    if resid > tol:
        raise ConfigError(f"inputs leave the span of the training inputs (relative residual {resid:.1e}); "
                          "their coordinates in it do not represent them")
    return x_train @ q, c_other


# ----------------------------------------------------------------------------------------------
# architectures


@dataclasses.dataclass(frozen=True)
class Arch:
    """How an architecture is built: its module, its analytic kernel (or None), its empirical NTK."""
    module: Callable[[ModelSpec], nn.Module]
    empirical_ntk: Callable
    analytic: Callable | None = None


ARCHS: dict[str, Arch] = {}


def register(name: str, arch: Arch) -> None:
    """Make `arch` available as ``ModelSpec(arch=name)``."""
    ARCHS[name] = arch


def _mlp_module(spec: ModelSpec) -> nn.Module:
    return make_mlp(width=spec.width, depth=int(spec.depth), out_dim=int(spec.out_dim),
                    activation=spec.activation, w_var=float(spec.w_var), b_var=float(spec.b_var),
                    parameterization=spec.parameterization, input_fan_in=spec.input_fan_in)


def _mlp_analytic(spec: ModelSpec, x1, x2=None, *, dtype=jnp.float64, **kw):
    if spec.input_fan_in is not None:
        raise ConfigError("the analytic kernel needs the original inputs, not their coordinates "
                          "(input_fan_in is set)")
    if not isinstance(spec.width, int) and spec.parameterization == "standard":
        raise ConfigError("the standard-parameterization kernel needs one hidden width")
    width = float(spec.width) if spec.parameterization == "standard" else np.inf
    return kernels.fc(jnp.asarray(x1, dtype), None if x2 is None else jnp.asarray(x2, dtype),
                      depth=int(spec.depth), activation=spec.activation, w_var=float(spec.w_var),
                      b_var=float(spec.b_var), parameterization=spec.parameterization,
                      width=kw.pop("width", width), dtype=dtype, **kw)


def _mlp_ntk(spec: ModelSpec, params, x1, x2, trace):
    return empirical.mlp_ntk(spec.module, params, x1, x2, trace=trace)


def _cnn_module(spec: ModelSpec) -> nn.Module:
    if spec.pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling '{spec.pooling}'; choose one of {', '.join(POOLINGS)}")
    if int(spec.depth) < 1 or not isinstance(spec.width, int) or spec.width < 1:
        raise ConfigError(f"cnn needs depth >= 1 convolutions and an int width >= 1 (channels), got "
                          f"depth={spec.depth}, width={spec.width}")
    return ConvNet(channels=int(spec.width), n_conv=int(spec.depth), pooling=spec.pooling,
                   out_dim=int(spec.out_dim), w_var=float(spec.w_var), b_var=float(spec.b_var),
                   activation=spec.activation, parameterization=spec.parameterization)


def _cnn_ntk(spec: ModelSpec, params, x1, x2, trace):
    module = spec.module
    return empirical.layerwise_ntk(module, params, x1, x2, layers=module.layer_specs(tuple(x1.shape)),
                                   trace=trace)


register("mlp", Arch(module=_mlp_module, empirical_ntk=_mlp_ntk, analytic=_mlp_analytic))
register("cnn", Arch(module=_cnn_module, empirical_ntk=_cnn_ntk))


def _wrn_module(spec: ModelSpec) -> nn.Module:
    from ntkrepro import wrn

    if not isinstance(spec.width, int):
        raise ConfigError(f"wrn needs one channel count (an int width), got width={spec.width}")
    return wrn.make_wrn(channels=int(spec.width), blocks=wrn.blocks_from_depth(spec.depth),
                        out_dim=int(spec.out_dim), w_var=float(spec.w_var), b_var=float(spec.b_var),
                        parameterization=spec.parameterization, activation=spec.activation,
                        pool=int(spec.option("pool", 8)), bn_eps=float(spec.option("bn_eps", 1e-5)))


def _wrn_ntk(spec: ModelSpec, params, x1, x2, trace):
    from ntkrepro import wrn

    return wrn.empirical_ntk(spec.apply, params, x1, x2, trace=trace)


register("wrn", Arch(module=_wrn_module, empirical_ntk=_wrn_ntk))


def _cntk_cnn_module(spec: ModelSpec) -> nn.Module:
    from ntkrepro import arora_cnn

    if spec.activation != "relu" or spec.b_var != 0 or spec.w_var != arora_cnn.C_SIGMA \
            or spec.parameterization != "ntk" or not isinstance(spec.width, int):
        raise ConfigError("cntk_cnn is Arora et al.'s relu CNN: needs activation=relu, b_var=0, "
                          f"w_var=2 (c_sigma), parameterization=ntk and an int width, got {spec}")
    return arora_cnn.make(channels=spec.width, n_conv=int(spec.depth), pooling=spec.pooling,
                          out_dim=int(spec.out_dim), kappa=float(spec.option("kappa", 1.0)),
                          flatten_scale=str(spec.option("flatten_scale", "paper")))


def _cntk_cnn_ntk(spec: ModelSpec, params, x1, x2, trace):
    module = spec.module
    return empirical.layerwise_ntk(module, params, x1, x2, layers=module.layer_specs(tuple(x1.shape)),
                                   trace=trace)


def _cntk_cnn_analytic(spec: ModelSpec, x1, x2=None, *, dtype=jnp.float64, **kw):
    scale = spec.module.kernel_scale(np.shape(x1))
    ntk, nngp = kernels.cntk(x1, x2, depth=int(spec.depth) + 1, pooling=spec.pooling, dtype=dtype,
                             return_nngp=True, **kw)
    return kernels.Kernel(nngp=scale * nngp, ntk=scale * ntk, var1=None, var2=None)


register("cntk_cnn", Arch(module=_cntk_cnn_module, empirical_ntk=_cntk_cnn_ntk,
                          analytic=_cntk_cnn_analytic))


# ----------------------------------------------------------------------------------------------
# from a config

SPEC_KEYS = ("arch", "width", "depth", "out_dim", "activation", "w_var", "b_var", "parameterization",
             "pooling", "input_fan_in")


def from_config(cfg, **overrides) -> ModelSpec:
    """A `ModelSpec` from a config mapping holding some of `SPEC_KEYS` (`model` is read as `arch`),
    with `overrides` (e.g. width=..., out_dim=...) applied on top."""
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    values = {k: get(k) for k in SPEC_KEYS if get(k) is not None}
    if "arch" not in values and get("model") is not None:
        values["arch"] = get("model")
    values.update(overrides)
    for key in ("depth", "out_dim", "input_fan_in"):
        if values.get(key) is not None:
            values[key] = int(values[key])
    for key in ("w_var", "b_var"):
        if key in values:
            values[key] = float(values[key])
    if isinstance(values.get("width"), (list, tuple)) or hasattr(values.get("width"), "__len__"):
        values["width"] = tuple(int(w) for w in values["width"])
    elif values.get("width") is not None:
        values["width"] = int(values["width"])
    return ModelSpec(**values)
