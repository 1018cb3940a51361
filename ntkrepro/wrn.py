"""The wide residual network of Lee et al. 2019 (Sec. 3, Fig. 4, App. J Table S1): Zagoruyko &
Komodakis' WRN with one channel count C in every layer ("1024 in this case"), in the NTK (or
standard) parameterization, and its Table S1 generated from the model by shape evaluation.

    module = make_wrn(channels=1024, blocks=1, out_dim=10, w_var=1.0, b_var=0.0)
    rows = table_s1(module)                 # group, output size, block type, parameters
    spec = models.ModelSpec(arch="wrn", width=1024, depth=depth_from_blocks(1), out_dim=10, ...)
    f = BatchStats(spec.apply, group=8)     # the model applied to fixed batches of 8 (see below)

Architecture (Table S1; "In the residual block, we follow Batch Normalization-ReLU-Conv ordering")::

    conv1     3x3 convolution, C channels                                        32 x 32
    conv2     N blocks [BN-ReLU-3x3 conv C; BN-ReLU-3x3 conv C], stride 1         32 x 32
    conv3     N blocks, the first with stride 2                                  16 x 16
    conv4     N blocks, the first with stride 2                                   8 x 8
    avg-pool  BN-ReLU, then 8x8 average pooling                                   1 x 1
    readout   dense layer, k outputs

A block computes a = relu(bn(x)), r = conv_b(relu(bn(conv_a(a)))) and returns s + r, with the
identity shortcut s = x where the block keeps the shape, and the projection shortcut s = 1x1
convolution of a (stride 2) where it does not: the first block of conv3 and of conv4 (as in the
original implementation, which projects the pre-activated input).  As in the original: no dropout;
padding 1 for the 3x3 convolutions (so a stride-2 3x3 convolution and the 1x1 stride-2 projection
sample the same pixels); no convolution biases (sigma_b^2 = 0; sigma_b^2 > 0 adds the biases of
Eq. 1); batch norm with a trainable per-channel scale (init 1) and shift (init 0), eps = 1e-5.
The WRN depth is 6N + 4 (WRN-10 for N = 1, WRN-16 for N = 2).  Every convolution and the readout
are `convnet.ConvNTK` / `nets.Dense`, i.e. the one parameterization rule `nets.weight_scales`
(NTK: omega ~ N(0, 1), h = sigma_w / sqrt(fan_in) op(a, omega) + sigma_b beta, fan_in = kh kw C_in).

Batch normalization and the linearization.  Batch norm uses the statistics of the batch it is
applied to (per channel, mean and biased variance over examples, height and width; no running
averages are kept), so the network is a function f(theta, X_B) of the parameters and of the whole
batch X_B.  Its linearization (Eq. 5) is taken at theta_0 for that same batch,

    f_lin(theta, X_B) = f(theta_0, X_B) + J(theta_0, X_B) (theta - theta_0),

J the derivative of the batch-statistics network, gradients flowing through the batch mean and
variance exactly as when the network is trained; `train.Trainer(linearized=True)` evaluates it with
one `jax.jvp` (no Jacobian is formed).

Test-time predictions.  Both models are evaluated with batch statistics on fixed evaluation
batches: the evaluation points taken in consecutive groups of `group` examples (lee-4: the training
batch size, 8), f(theta, X_G) and f_lin(theta, X_G) for every group G (`BatchStats`).  The network
and its linearization thus see the same groups and are compared point by point as the very
functions they were trained as.  Running averages are not used: the linearization has no running
statistics of its own (its batch norm is the tangent of the batch statistics at theta_0), and
population statistics would evaluate, for the network only, a different function than the one
trained and linearized.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.convnet import ConvNTK
from ntkrepro.errors import ConfigError
from ntkrepro.nets import Dense, activation_fn, check_parameterization

GROUPS = ("conv1", "conv2", "conv3", "conv4")
GROUP_STRIDES = {"conv2": 1, "conv3": 2, "conv4": 2}
PAD3 = ((1, 1), (1, 1))  # the original implementation's padding=1 for 3x3 convolutions


# ----------------------------------------------------------------------------------------------
# layers


class BatchNorm(nn.Module):
    """Batch norm on the statistics of the batch it is applied to (NHWC: over N, H, W)."""

    eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), x.dtype)
        shift = self.param("shift", nn.initializers.zeros, (x.shape[-1],), x.dtype)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + shift


class Block(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the identity (or a 1x1 projection) shortcut."""

    channels: int
    stride: int = 1
    w_var: float = 1.0
    b_var: float = 0.0
    parameterization: str = "ntk"
    activation: str = "relu"
    bn_eps: float = 1e-5

    def _conv(self, name, kernel=(3, 3), stride=1):
        return ConvNTK(self.channels, self.w_var, self.b_var, self.parameterization,
                       kernel_size=kernel, strides=(stride, stride),
                       padding=PAD3 if kernel == (3, 3) else "VALID", name=name)

    @nn.compact
    def __call__(self, x):
        phi = activation_fn(self.activation)
        a = phi(BatchNorm(self.bn_eps, name="bn_a")(x))
        project = self.stride != 1 or x.shape[-1] != self.channels
        shortcut = self._conv("shortcut", (1, 1), self.stride)(a) if project else x
        h = self._conv("conv_a", stride=self.stride)(a)
        h = self._conv("conv_b")(phi(BatchNorm(self.bn_eps, name="bn_b")(h)))
        return shortcut + h


class Group(nn.Module):
    """N blocks; the first one carries the group's stride."""

    channels: int
    blocks: int
    stride: int
    w_var: float = 1.0
    b_var: float = 0.0
    parameterization: str = "ntk"
    activation: str = "relu"
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        for i in range(self.blocks):
            x = Block(self.channels, self.stride if i == 0 else 1, self.w_var, self.b_var,
                      self.parameterization, self.activation, self.bn_eps, name=f"block_{i}")(x)
        return x


class WRN(nn.Module):
    """Table S1: conv1, conv2 .. conv4 (N blocks each), BN-ReLU, `pool` x `pool` average pooling,
    dense readout.  Each group's output is sown under ``intermediates`` as ``out_<group>`` (read by `table_s1`)."""

    channels: int
    blocks: int = 1
    out_dim: int = 10
    w_var: float = 1.0
    b_var: float = 0.0
    parameterization: str = "ntk"
    activation: str = "relu"
    pool: int = 8
    bn_eps: float = 1e-5

    @nn.compact
    def __call__(self, x):
        check_geometry(x.shape[1:3], self.pool)
        common = dict(w_var=self.w_var, b_var=self.b_var, parameterization=self.parameterization)
        h = ConvNTK(self.channels, padding=PAD3, name="conv1", **common)(x)
        self.sow("intermediates", "out_conv1", h)
        for name in GROUPS[1:]:
            h = Group(self.channels, self.blocks, GROUP_STRIDES[name], activation=self.activation,
                      bn_eps=self.bn_eps, name=name, **common)(h)
            self.sow("intermediates", f"out_{name}", h)
        h = activation_fn(self.activation)(BatchNorm(self.bn_eps, name="bn_final")(h))
        n, hh, ww, c = h.shape
        h = h.reshape(n, hh // self.pool, self.pool, ww // self.pool, self.pool, c).mean(axis=(2, 4))
        self.sow("intermediates", "out_avg-pool", h)
        return Dense(self.out_dim, name="readout", **common)(h.reshape(n, -1))


# ----------------------------------------------------------------------------------------------
# settings


def depth_from_blocks(blocks: int) -> int:
    """WRN depth 6N + 4 (three groups of N blocks of two convolutions, conv1, the readout)."""
    return 6 * int(blocks) + 4


def blocks_from_depth(depth: int) -> int:
    """N for a WRN depth 6N + 4; ConfigError for a depth the table cannot have."""
    depth = int(depth)
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"a wide residual network has depth 6N + 4 (Table S1: N blocks per group), "
                          f"got {depth}; use 10 (N = 1), 16 (N = 2), 22, ...")
    return (depth - 4) // 6


def final_size(image_size: int) -> int:
    """Side of conv4's output map for an input of side `image_size` (two stride-2 convolutions)."""
    return math.ceil(math.ceil(int(image_size) / 2) / 2)


def check_geometry(image_hw, pool: int) -> None:
    """The `pool` x `pool` average pooling must divide conv4's map (8 x 8 for 32 x 32 images)."""
    h, w = (int(s) for s in image_hw)
    fh, fw = final_size(h), final_size(w)
    if int(pool) < 1 or fh % int(pool) or fw % int(pool):
        raise ConfigError(f"the {pool}x{pool} average pooling does not divide conv4's {fh}x{fw} map "
                          f"(input {h}x{w}); use 32x32 images (task.image_pool=1) or a pool dividing "
                          f"{math.gcd(fh, fw)}")


def make_wrn(*, channels: int, blocks: int, out_dim: int = 10, w_var: float = 1.0,
             b_var: float = 0.0, parameterization: str = "ntk", activation: str = "relu",
             pool: int = 8, bn_eps: float = 1e-5) -> WRN:
    """Validated constructor: `ConfigError` (one line naming the fix) for impossible settings."""
    for name, value in (("channels", channels), ("blocks (N)", blocks), ("out_dim (k)", out_dim),
                        ("pool", pool)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"wrn {name} must be a positive integer, got {value!r}")
    if not w_var > 0 or b_var < 0 or not bn_eps > 0:
        raise ConfigError(f"wrn needs w_var > 0, b_var >= 0 and bn_eps > 0, got {w_var}, {b_var}, {bn_eps}")
    check_parameterization(parameterization)
    activation_fn(activation)
    return WRN(channels=int(channels), blocks=int(blocks), out_dim=int(out_dim), w_var=float(w_var),
               b_var=float(b_var), parameterization=parameterization, activation=activation,
               pool=int(pool), bn_eps=float(bn_eps))


# ----------------------------------------------------------------------------------------------
# evaluation on fixed batches


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """``apply_fn(params, x)`` applied to consecutive groups of `group` examples of x, each with its
    own batch statistics (vmapped; len(x) a multiple of `group`).  A training minibatch of size
    `group` is one group: the function trained is the function evaluated."""

    apply_fn: Callable
    group: int

    def __call__(self, params, x):
        n = x.shape[0]
        if n % self.group:
            raise ConfigError(f"{n} inputs cannot be cut into evaluation batches of {self.group}; "
                              f"use a multiple of {self.group}")
        xs = x.reshape((n // self.group, self.group) + x.shape[1:])
        out = jax.vmap(lambda xb: self.apply_fn(params, xb))(xs)
        return out.reshape((n,) + out.shape[2:])


# ----------------------------------------------------------------------------------------------
# empirical NTK (generic: one VJP and one JVP per output column; no Jacobian is stored)


def empirical_ntk(apply_fn: Callable, params, x1, x2=None, *, trace: bool = True):
    """Theta-hat(x1, x2) = J(x1) J(x2)^T of the batch-statistics network, with x1 and x2 one batch
    (concatenated; x2 None: x1 alone).  (N1, N2), or (N1, N2, k, k) with trace=False."""
    x = x1 if x2 is None else jnp.concatenate([x1, x2])
    n1 = x1.shape[0]
    out, vjp = jax.vjp(lambda p: apply_fn(p, x), params)
    _, jvp = jax.linearize(lambda p: apply_fn(p, x), params)
    n, k = out.shape
    first = 0 if x2 is None else n1                     # rows of x2 within the joint batch
    n2 = n - first

    def column(idx):                                    # Theta[(i, a), (j, c)] for all i in x1, a
        e = jnp.zeros((n, k), out.dtype).at[first + idx // k, idx % k].set(1)
        return jvp(vjp(e)[0])[:n1]

    theta = jax.lax.map(column, jnp.arange(n2 * k))     # (N2 k, N1, k)
    theta = theta.reshape(n2, k, n1, k).transpose(2, 0, 3, 1)   # (N1, N2, k_i, k_j)
    return jnp.trace(theta, axis1=2, axis2=3) if trace else theta


# ----------------------------------------------------------------------------------------------
# Table S1 from the model


def _kernel(tree, name):
    return tree[name]["kernel"].shape


def _count(tree) -> int:
    return int(sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(tree)))


def _side(shape) -> str:
    return f"{shape[1]} x {shape[2]}"


def _conv_text(shape, symbol: str) -> str:
    return f"{shape[0]}x{shape[1]}, {symbol}"


def _group_block(tree, channels: int, blocks: int):
    """(numeric, symbolic) block type of a group from its parameter shapes."""
    names = sorted(k for k in tree if k.startswith("block_"))
    inner = [[_kernel(tree[b], c) for c in ("conv_a", "conv_b")] for b in names]
    texts = []
    for symbols in ((None, None), ("C", "N")):
        convs = "; ".join(_conv_text(s, symbols[0] if s[3] == channels and symbols[0] else str(s[3]))
                          for s in inner[0])
        same = all(i == inner[0] for i in inner)
        count = symbols[1] if symbols[1] and len(names) == blocks else str(len(names))
        texts.append(f"[{convs}] x {count}" if same else "blocks differ")
    if any("shortcut" in tree[b] for b in names):
        texts[0] += " (1x1 projection shortcut)"
    return texts


def table_s1(module: WRN, image_shape=(32, 32, 3)) -> list[dict]:
    """Table S1 of `module` by `jax.eval_shape` (nothing is computed): one row per group (conv1 ..
    conv4, avg-pool, readout) with its output size, block type (numeric, and symbolic with C for the
    channel count and N for the blocks per group, as printed in the paper) and parameter count
    (the avg-pool row holds the final batch norm's)."""
    x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)

    def shapes(key, x):
        params = module.init(key, x)["params"]
        out, state = module.apply({"params": params}, x, mutable=["intermediates"])
        return params, {k[4:]: v for k, v in state["intermediates"].items()}, out

    params, inter, out = jax.eval_shape(shapes, jax.random.PRNGKey(0), x)
    c, n = module.channels, module.blocks
    rows = [dict(group="conv1", output_size=_side(inter["conv1"][0].shape),
                 output_side=inter["conv1"][0].shape[1],
                 block_type=f"[{_conv_text(_kernel(params, 'conv1'), str(c))}]",
                 block_symbolic=f"[{_conv_text(_kernel(params, 'conv1'), 'C')}]",
                 params=_count(params["conv1"]))]
    for g in GROUPS[1:]:
        numeric, symbolic = _group_block(params[g], c, n)
        rows.append(dict(group=g, output_size=_side(inter[g][0].shape),
                         output_side=inter[g][0].shape[1], block_type=numeric,
                         block_symbolic=symbolic, params=_count(params[g])))
    pool = f"[{module.pool}x{module.pool}]"
    rows.append(dict(group="avg-pool", output_size=_side(inter["avg-pool"][0].shape),
                     output_side=inter["avg-pool"][0].shape[1], block_type=pool + " (after BN-ReLU)",
                     block_symbolic=pool, params=_count(params["bn_final"])))
    rows.append(dict(group="readout", output_size=str(out.shape[-1]), output_side=0,
                     block_type=f"dense, {params['readout']['kernel'].shape[0]} -> {out.shape[-1]}",
                     block_symbolic="dense, C -> k", params=_count(params["readout"])))
    return rows


def table_markdown(rows: list[dict], title: str) -> str:
    """A Table S1 (rows of `table_s1`) as a markdown table with a total."""
    lines = [f"**{title}**", "", "| group name | output size | block type | parameters |",
             "|---|---|---|---:|"]
    lines += [f"| {r['group']} | {r['output_size']} | {r['block_type']} | {int(r['params']):,} |"
              for r in rows]
    lines.append(f"| total | | | {sum(int(r['params']) for r in rows):,} |")
    return "\n".join(lines)
