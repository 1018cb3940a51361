"""The benchmark cases: ours and neural-tangents' implementations of the same kernel on the same inputs.

Each `Bench` holds implementations as zero-argument callables (inputs and parameters already
built and placed on the device, everything that can be jitted jitted), so that the harness times
only the computation.  `scale` maps an implementation's value to ours' normalisation before the
values are compared (1 except for the CNTK, see `case4`).

Sizes: "quick" (tiny, for CI), "default" (the sizes of the brief: GAP CNTK 2 x 2, vanilla CNTK
200 x 200), "full" (GAP CNTK 4 x 4; everything else as default).

Registry: every case is a `Case` in `CASES` (number -> its benchmark ids, builder, goal, dtype
policy), added with `register`; `bench_ids`, `build`, `needs_x64`, `GOALS` and `GOAL_TEXT` read it,
so a new case is one builder function and one `register(Case(...))` call.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SIZES = ("quick", "default", "full")


@dataclasses.dataclass
class Impl:
    name: str
    side: str  # "ours" or "nt"
    fn: Callable[[], jax.Array]
    scale: float = 1.0


@dataclasses.dataclass
class Bench:
    id: str
    case: int
    title: str
    dtype: str
    n_entries: int  # kernel entries computed (for time per entry)
    impls: list[Impl]
    notes: list[str] = dataclasses.field(default_factory=list)
    flops: float | None = None  # arithmetic of the cheapest known exact method (roofline floor)
    # named lower bounds (seconds) on impl 0's work, measured in the worker: (name, fn() -> s)
    floors: list[tuple[str, Callable[[], float]]] = dataclasses.field(default_factory=list)
    # goals judged on this machine's timings: ("floor", impl, floor name, max time / floor or None
    # for information only) or ("ratio", impl a, impl b, max time[a] / time[b])
    checks: list[tuple] = dataclasses.field(default_factory=list)
    extra: Callable[[], dict] | None = None  # further measurements (e.g. accuracies), in raw.json

    @property
    def goal(self) -> float:
        return GOALS[self.case]


def _nt():
    from ntkrepro.bench.nt_shim import load_neural_tangents

    return load_neural_tangents()


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def _images(name, n, *, offset=0, crop=None):
    from ntkrepro.data import prepare

    ds = prepare(name, split="train", n=n + offset, source="sample", standardize="image",
                 targets="label")
    x = ds.x[offset:]
    if crop:
        x = x[:, :crop, :crop, :]
    return x


# ------------------------------------------------------------------------------ FLOP floors
def mlp_ntk_flops(n: int, n0: int, width: int, depth: int) -> float:
    """Multiply-adds x 2 that any exact empirical NTK of an n0-width^depth-1 MLP on n inputs
    (x2 = None) must do: the forward pass, the backpropagated signals of hidden layers 1..L-1
    (one width x width product each), and the symmetric (half) Grams of every layer's input and
    signal, Theta = sum_l (A_l A_l^T) * (S_l S_l^T)."""
    forward = 2 * n * (n0 * width + (depth - 1) * width ** 2 + width)
    signals = 2 * n * (depth - 1) * width ** 2
    grams = n * n * (n0 + width + 2 * (depth - 1) * width + width + 1)  # half of 2 n^2 (...)
    return float(forward + signals + grams)


def cnn_ntk_flops(n: int, hw: int, c0: int, channels: int, n_conv: int) -> float:
    """The same for the 3x3 SAME CNN + flatten readout: forward, the signals into conv layers
    1..L-1 (a transposed convolution each), the per-example weight gradients of every conv layer
    (patches^T x signal: as much as its forward convolution) and the symmetric Gram of all
    per-example gradients.  (Forming pair-wise patch Grams instead costs O(n^2 (HW)^2).)"""
    conv = 2 * n * hw * (9 * c0 * channels + (n_conv - 1) * 9 * channels ** 2)
    readout = 2 * n * hw * channels
    signals = 2 * n * hw * (n_conv - 1) * 9 * channels ** 2
    n_params = 9 * c0 * channels + (n_conv - 1) * 9 * channels ** 2 + hw * channels
    gram = n * n * n_params
    return float(conv + readout + signals + conv + gram)


# ------------------------------------------------------------------------------ case 1: MLP eNTK
def case1(dtype_name: str, size: str) -> Bench:
    from ntkrepro.empirical import mlp_ntk
    from ntkrepro.nets import init_params, make_mlp
    from ntkrepro.bench.cnn import stax_mlp_params

    nt = _nt()
    stax = nt.stax
    dtype = jnp.float32 if dtype_name == "float32" else jnp.float64
    width, depth, n = (64, 3, 8) if size == "quick" else (1024, 3, 128)
    w_var, b_var = 2.0, 0.1
    from ntkrepro.data import prepare

    x = jnp.asarray(prepare("mnist", n=n, flatten=True, source="sample", standardize="image",
                            targets="label").x, dtype)
    model = make_mlp(width=width, depth=depth, out_dim=1, activation="relu", w_var=w_var,
                     b_var=b_var, parameterization="ntk")
    params = _cast(init_params(model, jax.random.PRNGKey(0), x), dtype)
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=math.sqrt(w_var), b_std=math.sqrt(b_var)), stax.Relu()]
    _, apply_fn, _ = stax.serial(*layers, stax.Dense(1, W_std=math.sqrt(w_var),
                                                     b_std=math.sqrt(b_var)))
    nt_params = stax_mlp_params(params, depth, has_bias=True)

    impls = [Impl("ours: empirical.mlp_ntk (structured)", "ours",
                  lambda: mlp_ntk(model, params, x))]
    for impl in (1, 2, 3):
        f = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                        implementation=impl))
        impls.append(Impl(f"nt: empirical_ntk_fn implementation={impl}", "nt",
                          lambda f=f: f(x, None, nt_params)))
    return Bench(
        id=f"1-f{dtype_name[5:]}", case=1, dtype=dtype_name, n_entries=n * n, impls=impls,
        title=f"empirical NTK, MLP {x.shape[1]}-{'-'.join([str(width)] * depth)}-1 relu, "
              f"{n} MNIST inputs",
        notes=["NTK parameterization, sigma_w^2 = 2, sigma_b^2 = 0.1, same parameter values for "
               "both; neural-tangents with vmap_axes=0, trace_axes=(-1,), jitted; x2 = None for "
               "both (N x N Gram)."],
        flops=mlp_ntk_flops(n, x.shape[1], width, depth))


# ------------------------------------------------------------------------------ case 2: CNN eNTK
def case2(size: str) -> Bench:
    from ntkrepro.bench.cnn import ConvNet, stax_convnet, to_stax_params
    from ntkrepro.empirical import layerwise_ntk

    nt = _nt()
    dtype = jnp.float32
    channels, n, crop = (8, 4, 8) if size == "quick" else (64, 32, None)
    x = jnp.asarray(_images("cifar10", n, crop=crop), dtype)
    model = ConvNet(channels=channels, n_conv=3, pooling="flatten", out_dim=1, w_var=2.0,
                    b_var=0.1)
    params = _cast(jax.jit(model.init)(jax.random.PRNGKey(0), x)["params"], dtype)
    specs = model.layer_specs(x.shape)
    init_fn, apply_fn, _ = stax_convnet(nt.stax, model)
    nt_params = _cast(to_stax_params(model, params, init_fn, x.shape), dtype)

    impls = [Impl("ours: empirical.layerwise_ntk (structured)", "ours",
                  lambda: layerwise_ntk(model, params, x, layers=specs))]
    for impl in (1, 2, 3):
        f = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                        implementation=impl))
        impls.append(Impl(f"nt: empirical_ntk_fn implementation={impl}", "nt",
                          lambda f=f: f(x, None, nt_params)))
    hw = x.shape[1]
    return Bench(
        id="2", case=2, dtype="float32", n_entries=n * n, impls=impls,
        title=f"empirical NTK, CNN 3 x [conv3x3({channels}), relu] + flatten + Dense(1), "
              f"{n} CIFAR-10 inputs {hw}x{hw}x3",
        notes=["Our Flax ConvNet (ntkrepro/convnet.py) vs the equal stax network with the same "
               "parameter values (sigma_w^2 = 2, sigma_b^2 = 0.1, NTK parameterization)."],
        flops=cnn_ntk_flops(n, hw * hw, x.shape[-1], channels, 3))


# ------------------------------------------------------------------------------ case 3: fc NTK
def case3(size: str) -> Bench:
    from ntkrepro.data import gaussian_inputs
    from ntkrepro.kernels import fc

    nt = _nt()
    stax = nt.stax
    n, d, depth = (200, 784, 5) if size == "quick" else (4000, 784, 5)
    w_var, b_var = 2.0, 0.1
    x = jnp.asarray(gaussian_inputs(n, d, seed=0), jnp.float64)
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(512, W_std=math.sqrt(w_var), b_std=math.sqrt(b_var)), stax.Relu()]
    _, _, kernel_fn = stax.serial(*layers, stax.Dense(1, W_std=math.sqrt(w_var),
                                                      b_std=math.sqrt(b_var)))
    kfn = jax.jit(kernel_fn, static_argnames=("get",))
    impls = [
        Impl("ours: kernels.fc", "ours",
             lambda: fc(x, None, depth=depth, activation="relu", w_var=w_var, b_var=b_var,
                        dtype=jnp.float64).ntk),
        Impl("nt: stax kernel_fn(get='ntk')", "nt", lambda: kfn(x, None, "ntk")),
    ]
    return Bench(
        id="3", case=3, dtype="float64", n_entries=n * n, impls=impls,
        title=f"analytic NTK, fc depth {depth} relu, {n} x {n}, inputs N(0, 1)^{d}",
        notes=["float64 for both; x2 = None for both; sigma_w^2 = 2, sigma_b^2 = 0.1. "
               "neural-tangents asked for the NTK only; kernels.fc returns NNGP and NTK."])


# ------------------------------------------------------------------------------ case 4: CNTK
def _nt_gap_cntk(stax, depth):
    """Arora et al. App. H with stax: first conv's NTK contribution zeroed (layer fixed), last
    layer's removed (Theta_out - K_out: for a bias-free Dense, its own term is the output NNGP)."""
    conv = lambda: stax.Conv(1, (3, 3), padding="SAME", W_std=math.sqrt(2.0), b_std=None)
    first = stax.serial(conv())[2]
    rest_layers = [stax.Relu()]
    for _ in range(depth - 2):
        rest_layers += [conv(), stax.Relu()]
    rest = stax.serial(*rest_layers, stax.GlobalAvgPool(),
                       stax.Dense(1, W_std=math.sqrt(2.0), b_std=None))[2]

    @jax.jit
    def f(x1, x2):
        k = first(x1, x2)
        k = rest(k.replace(ntk=jnp.zeros_like(k.nngp)))
        return k.ntk - k.nngp

    return f


def _nt_flat_cntk(stax, depth):
    layers = []
    for _ in range(depth - 1):
        layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=math.sqrt(2.0), b_std=None),
                   stax.Relu()]
    kernel_fn = stax.serial(*layers, stax.Flatten(),
                            stax.Dense(1, W_std=math.sqrt(2.0), b_std=None))[2]
    return jax.jit(lambda x1, x2: kernel_fn(x1, x2, "ntk"))


CASE4 = {  # id suffix -> (pooling, depth) ; counts depend on size
    "gap6": ("gap", 6),
    "gap21": ("gap", 21),
    "flat21": ("flatten", 21),
}


def case4(which: str, size: str) -> Bench:
    from ntkrepro.kernels.cntk import cntk

    nt = _nt()
    pooling, depth = CASE4[which]
    if size == "quick":
        depth = {"gap6": 3, "gap21": 6, "flat21": 6}[which]
    crop = 8 if size == "quick" else None
    if pooling == "gap":
        n = {"quick": 2, "default": 2, "full": 4}[size]
    else:
        n = {"quick": 10, "default": 200, "full": 200}[size]
    x1 = jnp.asarray(_images("cifar10", n, crop=crop), jnp.float64)
    x2 = jnp.asarray(_images("cifar10", n, offset=n, crop=crop), jnp.float64)
    c0, hw = x1.shape[3], x1.shape[1] * x1.shape[2]
    if pooling == "gap":
        ntf, scale = _nt_gap_cntk(nt.stax, depth), c0 / 2.0
        rel = "Arora = (C0 / 2) * NT = 1.5 * NT"
    else:
        ntf, scale = _nt_flat_cntk(nt.stax, depth), c0 * hw / 2.0
        rel = f"Arora = (C0 H W / 2) * NT = {c0 * hw / 2:g} * NT"
    impls = [
        Impl(f"ours: kernels.cntk.cntk(pooling='{pooling}')", "ours",
             lambda: cntk(x1, x2, depth=depth, pooling=pooling, dtype=jnp.float64)),
        Impl("nt: stax kernel_fn" + (" (App. H: first/last layer fixed)" if pooling == "gap"
                                     else "(get='ntk')"), "nt", lambda: ntf(x1, x2), scale=scale),
    ]
    side = x1.shape[1]
    return Bench(
        id=f"4-{which}", case=4, dtype="float64", n_entries=n * n, impls=impls,
        title=f"analytic CNTK {'GAP' if pooling == 'gap' else 'vanilla (flatten)'} depth {depth}, "
              f"{n} x {n} CIFAR-10 images {side}x{side}x3",
        notes=[f"{pooling}: {rel} (Arora et al.: unnormalised input Sigma(0), c_sigma = 2, "
               "N(0, 1) readout"
               + (", first and last layers not trained" if pooling == "gap" else "")
               + "; stax: W_std = sqrt(2) every layer, no bias). Cross kernel x1 != x2 (no "
               "symmetry to exploit), float64 both."])


# ------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class Case:
    """A numbered benchmark case: its benchmark ids, how to build one, its goal against nt."""
    number: int
    ids: tuple[str, ...]
    build: Callable[[str, str], Bench]        # (bench id, size) -> Bench
    goal: float                               # required speed-up: nt's best time / ours
    goal_text: str
    float32_ids: tuple[str, ...] = ()         # run without jax_enable_x64 (see `needs_x64`)


CASES: dict[int, Case] = {}
GOALS: dict[int, float] = {}
GOAL_TEXT: dict[int, str] = {}


def register(case: Case) -> None:
    CASES[case.number] = case
    GOALS[case.number] = case.goal
    GOAL_TEXT[case.number] = case.goal_text


register(Case(1, ("1-f32", "1-f64"), lambda b, size: case1("float" + b[3:], size), 10.0,
              ">= 10x faster", float32_ids=("1-f32",)))
register(Case(2, ("2",), lambda b, size: case2(size), 1.0, "at least as fast", float32_ids=("2",)))
register(Case(3, ("3",), lambda b, size: case3(size), 1.0, "at least as fast"))
register(Case(4, tuple(f"4-{k}" for k in CASE4), lambda b, size: case4(b[2:], size), 1.5,
              ">= 1.5x faster"))


def bench_ids(cases, size: str) -> list[str]:
    return [b for c in cases for b in CASES[c].ids]


def _case_of(bench_id: str) -> Case:
    for case in CASES.values():
        if bench_id in case.ids:
            return case
    raise ValueError(f"unknown benchmark {bench_id!r}")


def needs_x64(bench_id: str) -> bool:
    """float64 benchmarks run with jax_enable_x64; float32 ones without (JAX's default), since
    under x64 stax's Conv promotes float32 activations to float64 (numpy-scalar normaliser)."""
    return bench_id not in _case_of(bench_id).float32_ids


def build(bench_id: str, size: str) -> Bench:
    return _case_of(bench_id).build(bench_id, size)


def relative_differences(value, reference):
    """(max_ij |v - r| / |r|, max_ij |v - r| / max |r|) as floats (NaN if shapes differ)."""
    v = np.asarray(value, np.float64)
    r = np.asarray(reference, np.float64)
    if v.shape != r.shape:
        return float("nan"), float("nan")
    diff = np.abs(v - r)
    denom = np.abs(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        elem = np.where(denom > 0, diff / denom, np.where(diff > 0, np.inf, 0.0))
    scale = float(np.max(denom)) if denom.size else 0.0
    return float(np.max(elem)), float(np.max(diff) / scale) if scale > 0 else float("nan")


from ntkrepro.bench import arora as _arora  # noqa: E402,F401  (registers cases 5 and 6)
from ntkrepro.bench import case_wrn as _case_wrn  # noqa: E402  (case 7: linearized WRN step)

_case_wrn.register()
