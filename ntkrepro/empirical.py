"""Empirical (finite-width) NTK and NNGP.

* `empirical_ntk`: Theta-hat(x1, x2) = J(x1) J(x2)^T (Lee et al. 2019 Eq. 4) for any
  `f(params, x)`, by Jacobian contraction over blocks of inputs, so the full N x P Jacobian is never
  held: only a block of `batch_size` rows of it at a time.
* `mlp_ntk`: the same quantity for `ntkrepro.nets.MLP` without any Jacobian, as a sum over layers
  of (layer-input Gram * c_w + c_b) times (backpropagated-signal Gram) (Lee et al. Eqs. S30-S35 at
  finite width).  Cost O(N^2 n L) time and O(N n) memory, so widths of 10^6 are practical.
* `mlp_nngp`: the readout-feature Gram  x-bar(x) . x-bar(x')  (Lee et al. App. D), whose mean over
  initialisations is the NNGP kernel K^{L+1}.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from ntkrepro.errors import ConfigError
from ntkrepro.nets import MLP, layer_coefficients


def _blocks(n: int, size: int | None):
    size = n if not size else max(1, int(size))
    return [(i, min(i + size, n)) for i in range(0, n, size)]


DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes for the two Jacobian blocks held at once


def auto_batch_size(f, params, x, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """Largest block of inputs whose two Jacobian blocks (2 * b * k * P numbers) fit the budget."""
    out = jax.eval_shape(lambda: f(params, x[:1]))
    k = int(out.shape[1]) if len(out.shape) > 1 else 1
    n_params = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(params))
    itemsize = max(jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree_util.tree_leaves(params))
    return max(1, min(len(x), memory_budget // (2 * k * n_params * itemsize)))


IMPLEMENTATIONS = ("jacobian", "ntvp")


def empirical_ntk(f, params, x1, x2=None, *, batch_size: int | None = None, trace: bool = True,
                  memory_budget: int = DEFAULT_MEMORY_BUDGET, implementation: str = "jacobian"):
    """J(x1) J(x2)^T for `f(params, x) -> (N,) or (N, k)`.

    Returns (N1, N2) when the output is scalar or `trace` is true (sum over the k outputs), else
    (N1, N2, k, k).  Rows are processed `batch_size` inputs at a time; by default the block size is
    chosen so that the Jacobian blocks held at once stay under `memory_budget` bytes.
    `implementation`: "jacobian" contracts the two Jacobian blocks; "ntvp" never forms a Jacobian:
    each column Theta e_j = J(x1) (J(x2)^T e_j) is one VJP followed by one JVP (memory O(P) per
    column, vmapped over the columns of a block).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ConfigError(f"unknown implementation '{implementation}'; choose one of "
                          f"{', '.join(IMPLEMENTATIONS)}")
    x2 = x1 if x2 is None else x2
    if batch_size is None:
        batch_size = auto_batch_size(f, params, x1, memory_budget)
    out_ndim = len(jax.eval_shape(lambda: f(params, x1[:1])).shape)
    block_fn = _ntk_block if implementation == "jacobian" else _ntvp_block
    fn = jax.jit(partial(block_fn, f, out_ndim=out_ndim, trace=trace))
    rows = []
    for i0, i1 in _blocks(len(x1), batch_size):
        cols = [fn(params, x1[i0:i1], x2[j0:j1]) for j0, j1 in _blocks(len(x2), batch_size)]
        rows.append(jnp.concatenate(cols, axis=1))
    return jnp.concatenate(rows, axis=0)


def _ntk_block(f, params, xa, xb, *, out_ndim: int, trace: bool):
    ja = jax.jacrev(lambda p: f(p, xa))(params)
    jb = jax.jacrev(lambda p: f(p, xb))(params)
    total = 0.0
    for a, b in zip(jax.tree_util.tree_leaves(ja), jax.tree_util.tree_leaves(jb)):
        if out_ndim == 1:  # (N, *param)
            total = total + a.reshape(a.shape[0], -1) @ b.reshape(b.shape[0], -1).T
        elif trace:  # (N, k, *param)
            total = total + jnp.einsum("ikp,jkp->ij", a.reshape(a.shape[0], a.shape[1], -1),
                                       b.reshape(b.shape[0], b.shape[1], -1))
        else:
            total = total + jnp.einsum("ikp,jlp->ijkl", a.reshape(a.shape[0], a.shape[1], -1),
                                       b.reshape(b.shape[0], b.shape[1], -1))
    return total


def _ntvp_block(f, params, xa, xb, *, out_ndim: int, trace: bool):
    """One block by NTK-vector products: column (j, l) is J(xa) J(xb)^T e_(j, l)."""
    fb, vjp_b = jax.vjp(lambda p: f(p, xb), params)
    n_cols = fb.size

    def column(cotangent):
        (g,) = vjp_b(cotangent.reshape(fb.shape))
        return jax.jvp(lambda p: f(p, xa), (params,), (g,))[1]

    cols = jax.vmap(column)(jnp.eye(n_cols, dtype=fb.dtype))  # (Nb*k, *fa.shape)
    if out_ndim == 1:  # cols[j, i] = Theta[i, j]
        return cols.T
    nb, k = fb.shape
    full = cols.reshape(nb, k, -1, k).transpose(2, 0, 3, 1)  # (Na, Nb, k_a, k_b)
    return jnp.einsum("ijkk->ij", full) if trace else full


def empirical_nngp(f, params, x1, x2=None):
    """Output covariance f(x1) f(x2)^T / k of one network (k outputs; k = 1 for scalar outputs).

    Averaged over initialisations this estimates the NNGP kernel of any model (Lee et al. Sec. 2.3).
    For `MLP`s `mlp_nngp` is the lower-variance readout-feature estimate.
    """
    f1 = f(params, x1)
    f2 = f1 if x2 is None else f(params, x2)
    f1, f2 = f1.reshape(f1.shape[0], -1), f2.reshape(f2.shape[0], -1)
    return f1 @ f2.T / f1.shape[1]


# ----------------------------------------------------------------------------------------------
# Structured path for MLPs


def mlp_features(model: MLP, params, x):
    """Per-layer inputs a_l (N, n_{l-1}) and backpropagated signals delta_l (k, N, n_l).

    delta_l[c, i] = d f_c(x_i) / d h^l(x_i), obtained with one VJP per output unit through the
    model's zero `perturbations` (so no parameter Jacobian is formed).
    """
    return layer_taps(model, params, x)


def _layer_coeffs(model: MLP, x_dim: int):
    sizes = (model.input_fan_in or x_dim,) + model.widths
    return [layer_coefficients(n_in, model.w_var, model.b_var, model.parameterization)
            for n_in in sizes]


@partial(jax.jit, static_argnames=("model", "trace"))
def mlp_ntk(model: MLP, params, x1, x2=None, trace: bool = True):
    """Empirical NTK of an `MLP` as sum_l (c_w a_l a_l'^T + c_b) * (delta_l delta_l'^T).

    Equals `empirical_ntk(model.apply, ...)` exactly (it is the same sum, regrouped).  With
    `trace=False` and k outputs the result has shape (N1, N2, k, k).
    """
    _, a1, d1 = mlp_features(model, params, x1)
    if x2 is None:
        a2, d2 = a1, d1
    else:
        _, a2, d2 = mlp_features(model, params, x2)
    total = 0.0
    for (cw, cb), u1, u2, s1, s2 in zip(_layer_coeffs(model, x1.shape[-1]), a1, a2, d1, d2):
        gram_in = cw * (u1 @ u2.T) + cb
        if trace:
            gram_sig = jnp.einsum("kip,kjp->ij", s1, s2)
            total = total + gram_in * gram_sig
        else:
            gram_sig = jnp.einsum("kip,ljp->ijkl", s1, s2)
            total = total + gram_in[:, :, None, None] * gram_sig
    return total


@partial(jax.jit, static_argnames=("model",))
def mlp_nngp(model: MLP, params, x1, x2=None):
    """Readout-feature Gram sigma_w^2/n_L x^L(x1).x^L(x2) + sigma_b^2 (NTK param., Lee et al. App. D).

    Its expectation over initialisations is the NNGP kernel K^{L+1} of Eq. S26 for either
    parameterization (the forward pass is the same in distribution).
    """
    def last_input(x):
        _, state = model.apply({"params": params}, x, mutable=["intermediates"])
        return state["intermediates"][f"input_{model.depth}"][0]

    h1 = last_input(x1)
    h2 = h1 if x2 is None else last_input(x2)
    return model.w_var / h1.shape[-1] * (h1 @ h2.T) + model.b_var


# ----------------------------------------------------------------------------------------------
# Structured path for layered models (dense and stride-1 SAME convolutions)
#
# The MLP path above generalises to any Flax module that follows the same convention as
# `ntkrepro.nets.MLP`: layer l records its input under ``intermediates/input_{l}`` and exposes its
# pre-activation h_l = sqrt(c_w) * op_l(a_l, omega_l) + sqrt(c_b) * beta_l to
# ``perturbations/pre_{l}`` (omega, beta ~ N(0, 1)).  One forward pass and one VJP per output unit
# then give, for every layer, the inputs a_l and the backpropagated signals delta_l = df/dh_l of
# all examples at once (examples are independent, so no per-example backward pass is needed).
# The layer's block of J J^T follows from (a_l, delta_l) alone:
#   dense:  c_w (a a'^T) * (delta . delta') + c_b (delta . delta')          (as in `mlp_ntk`)
#   conv:   c_w <G_i, G'_j> + c_b <sum_p delta_i, sum_p delta'_j>,
#           G_i[dy, dx, ci, co] = sum_p a_i[p + (dy, dx) - pad, ci] delta_i[p, co]
# (G_i is example i's weight gradient, computed for all examples with one contraction per filter
# offset, never as a parameter Jacobian of the whole network).


def layer_taps(model, params, x):
    """(out, inputs, signals) of a module following the ``input_{l}`` / ``pre_{l}`` convention.

    inputs[l]: the input a_l of layer l, (N, ...);  signals[l]: delta_l = d f_c / d h_l for every
    output unit c, (k, N, ...).  Layers are numbered 0..L-1 without gaps.
    """
    variables = {"params": params}
    pert = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x)["perturbations"])
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), pert)

    def fwd(p):
        out, state = model.apply({**variables, "perturbations": p}, x, mutable=["intermediates"])
        return out, state["intermediates"]

    out, vjp_fn, inter = jax.vjp(fwd, zeros, has_aux=True)
    out2 = out.reshape(out.shape[0], -1)
    eye = jnp.eye(out2.shape[1], dtype=out.dtype)
    deltas = jax.vmap(lambda e: vjp_fn(jnp.broadcast_to(e, out2.shape).reshape(out.shape))[0])(eye)
    n_layers = len(deltas)
    if set(deltas) != {f"pre_{l}" for l in range(n_layers)}:
        raise ValueError(f"layer_taps needs perturbations named pre_0..pre_{n_layers - 1}, "
                         f"got {sorted(deltas)}")
    inputs = [inter[f"input_{l}"][0] for l in range(n_layers)]
    signals = [deltas[f"pre_{l}"] for l in range(n_layers)]
    return out, inputs, signals


def _contract(g1, g2, trace: bool):
    """g: (k, N, P) per-output, per-example gradients -> (N1, N2) or (N1, N2, k, k)."""
    if trace:
        return jnp.einsum("kip,kjp->ij", g1, g2)
    return jnp.einsum("kip,ljp->ijkl", g1, g2)


def dense_layer_ntk(a1, s1, a2, s2, c_w, c_b, *, trace: bool = True):
    """Dense layer's block of J J^T from inputs a (N, n_in) and signals s (k, N, n_out)."""
    gram_in = c_w * (a1 @ a2.T) + c_b
    if trace:
        return gram_in * jnp.einsum("kip,kjp->ij", s1, s2)
    return gram_in[:, :, None, None] * jnp.einsum("kip,ljp->ijkl", s1, s2)


def conv_layer_ntk(a1, s1, a2, s2, c_w, c_b, *, filter_shape=(3, 3), trace: bool = True):
    """Block of J J^T of a stride-1, "SAME"-padded 2-D convolution (NHWC inputs, HWIO kernel).

    a: layer inputs (N, H, W, C_in);  s: signals (k, N, H, W, C_out).  Forms each example's weight
    gradient G_i (k, fh * fw * C_in * C_out) -- G_i[dy, dx, c, o] = sum_p a_i[p + (dy, dx)] s_i[p, o],
    the padded input correlated with the signal -- as one ordinary convolution per example (the
    input's channels as its batch, the signal as a kernel of H x W; `lax.map` over the examples),
    then Grams of G (and of the spatially summed signals for the bias).  Cost O(N H W fh fw C_in
    C_out) time, O(N fh fw C_in C_out) memory.  XLA:CPU runs this convolution at about the forward
    convolution's rate: on 2 CPU cores (2026-11-30), per layer, 1.2-4x faster than one shifted batched
    matmul per filter offset for 4x4 to 32x32 images, 64-256 channels, float32 and float64 (the whole
    network: `make bench` case 6).
    """
    fh, fw = filter_shape
    dims = ("NHWC", "HWIO", "NHWC")

    def grads(a, s):
        k, n, h, w, c_out = s.shape
        ph, pw = (fh - 1) // 2, (fw - 1) // 2  # XLA's SAME padding: low = (f - 1) // 2
        s_n = jnp.moveaxis(s, 0, -2).reshape(n, h, w, k * c_out)  # outputs as extra channels

        def one(example):  # (H, W, C_in), (H, W, k C_out) -> (C_in, fh, fw, k C_out)
            ai, si = example
            ai = jnp.pad(ai, ((ph, fh - 1 - ph), (pw, fw - 1 - pw), (0, 0)))
            return lax.conv_general_dilated(jnp.moveaxis(ai, -1, 0)[..., None], si[:, :, None, :],
                                            (1, 1), "VALID", dimension_numbers=dims)

        g = lax.map(one, (a, s_n)).reshape(n, -1, k, c_out)
        return jnp.moveaxis(g, 2, 0).reshape(k, n, -1)

    g1 = grads(a1, s1)
    g2 = g1 if (a2 is a1 and s2 is s1) else grads(a2, s2)
    total = c_w * _contract(g1, g2, trace)
    if c_b:
        total = total + c_b * _contract(s1.sum(axis=(2, 3)), s2.sum(axis=(2, 3)), trace)
    return total


LAYERWISE_MEMORY_BUDGET = 8 << 30  # bytes for the layer inputs, signals and weight gradients held at once


@partial(jax.jit, static_argnames=("model", "layers", "trace", "memory_budget"))
def layerwise_ntk(model, params, x1, x2=None, *, layers, trace: bool = True,
                  memory_budget: int = LAYERWISE_MEMORY_BUDGET):
    """Empirical NTK J(x1) J(x2)^T of a layered module without forming any parameter Jacobian.

    `model` follows the ``input_{l}`` / ``pre_{l}`` convention (see `layer_taps`); `layers` is a
    tuple with one ``(c_w, c_b, filter_shape)`` per layer, in order: c_w, c_b the squared weight
    and bias scales of that layer (NTK parameterization: c_w = sigma_w^2 / fan_in, with fan_in =
    fh * fw * C_in for a convolution; c_b = sigma_b^2, 0 for no bias), filter_shape None for a dense
    layer or (fh, fw) for a stride-1 SAME convolution.  Equals `empirical_ntk(model.apply, ...)`.
    Returns (N1, N2), or (N1, N2, k, k) with `trace=False`.

    Every layer's inputs and signals of all examples are held at once (for a 32-layer, 256-channel
    CNN on 32 x 32 images about 0.29 GB per example in float64).  When the examples of x1 and x2
    need more than `memory_budget` bytes (`layerwise_bytes_per_example`), the kernel is computed in
    blocks of b x b examples (b from the budget; zero-padded to whole blocks, `lax.map` over row
    blocks and, inside, over column blocks, so only two blocks' taps are alive), recomputing the
    column blocks' taps once per row block.
    """
    n1 = x1.shape[0]
    n = n1 if x2 is None else n1 + x2.shape[0]
    per_example = layerwise_bytes_per_example(model, params, x1, layers)
    if n * per_example <= memory_budget:
        _, a1, d1 = layer_taps(model, params, x1)
        a2, d2 = (a1, d1) if x2 is None else layer_taps(model, params, x2)[1:]
        return _sum_over_layers(layers, a1, d1, a2, d2, trace)
    x2 = x1 if x2 is None else x2
    n2 = x2.shape[0]
    b = max(1, min(int(memory_budget // (2 * per_example)), max(n1, n2)))
    rows, cols = _padded_blocks(x1, b), _padded_blocks(x2, b)

    def row(xa):
        _, a1, d1 = layer_taps(model, params, xa)
        return lax.map(lambda xb: _sum_over_layers(layers, a1, d1, *layer_taps(model, params, xb)[1:], trace),
                       cols)

    out = lax.map(row, rows)                                    # (n_rows, n_cols, b, b, ...)
    out = jnp.moveaxis(out, 2, 1).reshape(rows.shape[0] * b, cols.shape[0] * b, *out.shape[4:])
    return out[:n1, :n2]


def _sum_over_layers(layers, a1, d1, a2, d2, trace: bool):
    if len(layers) != len(a1):
        raise ValueError(f"layers lists {len(layers)} layers but the model has {len(a1)}")
    total = 0.0
    for (c_w, c_b, fshape), u1, u2, s1, s2 in zip(layers, a1, a2, d1, d2):
        if fshape is None:
            term = dense_layer_ntk(u1, s1, u2, s2, c_w, c_b, trace=trace)
        else:
            term = conv_layer_ntk(u1, s1, u2, s2, c_w, c_b, filter_shape=tuple(fshape),
                                  trace=trace)
        total = total + term
    return total


def _padded_blocks(x, b: int):
    """x (N, ...) as (ceil(N / b), b, ...), the last block padded with zero examples."""
    nb = -(-x.shape[0] // b)
    x = jnp.concatenate([x, jnp.zeros((nb * b - x.shape[0], *x.shape[1:]), x.dtype)])
    return x.reshape(nb, b, *x.shape[1:])


def layerwise_bytes_per_example(model, params, x, layers) -> int:
    """Bytes `layerwise_ntk` holds per example: every layer's input and signals (k per output) and,
    for a convolution, the example's weight gradient (k fh fw C_in C_out).  From shapes only
    (nothing is computed); within 5% of XLA's peak memory per example for the 32-layer, 256-channel
    CNN on 32 x 32 images (0.28 against 0.29 GB in float64)."""
    one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
    _, inputs, signals = jax.eval_shape(lambda p, u: layer_taps(model, p, u), params, one)
    total = 0
    for (_, _, fshape), a, s in zip(layers, inputs, signals):
        total += a.size * a.dtype.itemsize + s.size * s.dtype.itemsize
        if fshape is not None:
            total += s.shape[0] * fshape[0] * fshape[1] * a.shape[-1] * s.shape[-1] * s.dtype.itemsize
    return total
