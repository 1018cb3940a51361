"""Benchmark cases of Arora et al. 2019's tables (registered into `ntkrepro.bench.cases.CASES`).

Case 5, the exact CNTK at depth 21 on 32x32x3 images (vanilla and GAP, float64 and float32), ours
only, next to floors measured in the same process:

* memory-traffic floor: the bytes the recursion must move per entry if each layer's state passes
  through memory once -- read and write Sigma and Theta, 4 arrays of HW (vanilla: the displacement-0
  entries) or (HW)^2 (GAP) numbers per pair and layer -- divided by this process's streaming
  bandwidth on arrays far larger than the caches (`stream_bandwidth`);
* arithmetic floor: the closed forms of App. I alone (K, Kdot from Sigma: one arcsin, two square
  roots, a division per entry and layer), timed on a cache-resident array (`closed_form_rate`), for
  every entry and layer: no implementation of these formulas does less.

Goals: GAP within 1.5x of the memory-traffic floor; all depths [3, 4, 6, 11, 21] in one pass at most
1.1x the depth-21 kernel alone.  "5-flat-f64" also measures the accuracy change float32 causes on a
2K-style column (kernel regression, float64 solve) of the shipped sample.

Case 6, Table 2's random features: the empirical NTK of the paper's randomly initialised vanilla
CNN (`arora_cnn.AroraCNN`, 128 channels, depth 21) by `empirical.layerwise_ntk` against
neural-tangents' `empirical_ntk_fn` (implementations 1 and 3) on the equal stax network with the
same weights; goal >= 2x; floor: the arithmetic of the cheapest exact method at this machine's
matmul rate (`cases.cnn_ntk_flops`).
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.bench.cases import Bench, Case, Impl, _images, _nt, cnn_ntk_flops, register

DEPTHS = (3, 4, 6, 11, 21)


# ------------------------------------------------------------------------------ in-process rates
def _best(f, reps: int = 5) -> float:
    jax.block_until_ready(f())
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        best = min(best, time.perf_counter() - t0)
    return best


def stream_bandwidth(dtype, n: int = 1 << 25) -> float:
    """Bytes / s of y = 2 a + b on arrays of n numbers (3 n itemsize bytes moved), best of 5."""
    a = jnp.ones(n, dtype)
    b = jnp.full(n, 0.5, dtype)
    f = jax.jit(lambda a, b: 2 * a + b)
    return 3 * n * np.dtype(dtype).itemsize / _best(lambda: f(a, b))


def closed_form_rate(dtype, n: int = 1 << 17) -> float:
    """Entries / s of the App. I closed forms (K and Kdot from Sigma and the two variances) on a
    cache-resident array of n entries (`kernels.cntk._relu_expectations`), best of 5."""
    from ntkrepro.kernels.cntk import _relu_expectations

    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.uniform(-0.9, 0.9, n), dtype)
    r = jnp.asarray(rng.uniform(0.5, 2.0, n), dtype)
    f = jax.jit(lambda s, r: _relu_expectations(s, r, r, 1 / r, 1 / r))
    return n / _best(lambda: f(s, r))


# ------------------------------------------------------------------------------ case 5
CASE5 = {"gap-f64": ("gap", "float64"), "gap-f32": ("gap", "float32"),
         "flat-f64": ("flatten", "float64"), "flat-f32": ("flatten", "float32")}


def case5(which: str, size: str) -> Bench:
    from ntkrepro.kernels.cntk import cntk

    pooling, dtype_name = CASE5[which]
    dtype = getattr(jnp, dtype_name)
    depth, depths, crop = (21, DEPTHS, None) if size != "quick" else (6, (3, 4, 6), 8)
    n = ({"quick": 2, "default": 2, "full": 4} if pooling == "gap" else
         {"quick": 10, "default": 200, "full": 200})[size]
    x1 = jnp.asarray(_images("cifar10", n, crop=crop), dtype)
    x2 = jnp.asarray(_images("cifar10", n, offset=n, crop=crop), dtype)
    hw = x1.shape[1] * x1.shape[2]
    per_pair = hw if pooling == "flatten" else hw * hw
    layers = depth - 1
    n_entries = n * n
    itemsize = np.dtype(dtype).itemsize

    def all_depths():
        out = cntk(x1, x2, depth=list(depths), pooling=pooling, dtype=dtype)
        return jnp.stack([out[d] for d in depths])[-1]  # every depth computed; the deepest returned

    traffic = n_entries * 4 * per_pair * layers * itemsize
    elements = n_entries * per_pair * layers
    bench = Bench(
        id=f"5-{which}", case=5, dtype=dtype_name, n_entries=n_entries,
        title=f"exact CNTK {'GAP' if pooling == 'gap' else 'vanilla'} depth {depth}, {n} x {n} "
              f"CIFAR-10 images {x1.shape[1]}x{x1.shape[2]}x3, {dtype_name}",
        impls=[Impl(f"ours: cntk(depth={depth})", "ours",
                    lambda: cntk(x1, x2, depth=depth, pooling=pooling, dtype=dtype)),
               Impl(f"ours: cntk(depth={list(depths)}) one pass", "variant", all_depths)],
        floors=[("memory traffic", lambda: traffic / stream_bandwidth(dtype)),
                ("arithmetic", lambda: elements / closed_form_rate(dtype))],
        checks=[("floor", 0, "memory traffic", 1.5 if pooling == "gap" else None),
                ("floor", 0, "arithmetic", None), ("ratio", 1, 0, 1.1)],
        notes=[f"memory-traffic floor: 4 arrays x {per_pair} numbers x {layers} layers x "
               f"{itemsize} B = {traffic / n_entries / 1e6:.3g} MB per entry at the streaming "
               "bandwidth; arithmetic floor: the App. I closed forms alone for "
               f"{per_pair} x {layers} numbers per entry at their cache-resident rate."])
    if which == "flat-f64":  # needs jax_enable_x64 (on for the float64 benchmarks)
        bench.extra = lambda: float32_accuracy_change(size)
    return bench


def float32_accuracy_change(size: str) -> dict:
    """Kernel-regression accuracy (float64 solve, no ridge) of the vanilla CNTK at every depth,
    computed in float64 and in float32, on the shipped sample (a 2K-style column: the first
    n_train training images, the first n_test test images, the Table 1 recipe)."""
    from ntkrepro import kernels, tasks

    n_tr, n_te, pool = (50, 20, 4) if size == "quick" else (1000, 200, 1)
    task = tasks.load({"dataset": "cifar10", "n_train": n_tr, "n_test": n_te, "selection": "first",
                       "standardize": "channel_train_split", "targets": "arora"},
                      {"source": "sample"}, record=False)
    x_tr, x_te = (tasks.pool_images(x, pool, False) for x in (task.x_train, task.x_test))
    out = {"n_train": n_tr, "n_test": n_te, "image_size": int(x_tr.shape[1]), "depths": list(DEPTHS)}
    ks = {}
    for name in ("float64", "float32"):
        dt = getattr(jnp, name)
        ks[name] = (kernels.cntk(x_tr, None, depth=list(DEPTHS), dtype=dt),
                    kernels.cntk(x_te, x_tr, depth=list(DEPTHS), dtype=dt))
    for name, (ktr, kte) in ks.items():
        acc, rcond = [], []
        for d in DEPTHS:
            k = np.asarray(ktr[d], np.float64)
            try:
                pred = kernels.kernel_regression(k, kte[d], task.y_train, min_rcond=0.0)
                acc.append(kernels.accuracy(pred, task.labels_test))
            except Exception as err:  # noqa: BLE001 - a failed solve is a result here
                acc.append(f"not solvable: {err}"[:120])
            rcond.append(float(1.0 / np.linalg.cond(k, 1)))
        out[f"accuracy_{name}"], out[f"rcond_{name}"] = acc, rcond
    out["max_rel_kernel_diff"] = [
        float(np.max(np.abs(np.asarray(ks["float32"][0][d], np.float64) - np.asarray(ks["float64"][0][d]))
                     / np.max(np.abs(np.asarray(ks["float64"][0][d]))))) for d in DEPTHS]
    return out


# ------------------------------------------------------------------------------ case 6
def stax_arora_cnn(stax, module, x_shape):
    """The neural-tangents network equal to `arora_cnn.AroraCNN` (vanilla, kappa = 1)."""
    _, h, w, c0 = x_shape
    layers = [stax.Conv(module.channels, (3, 3), padding="SAME", W_std=math.sqrt(9 * c0),
                        b_std=None), stax.Relu()]
    for _ in range(module.n_conv - 1):
        layers += [stax.Conv(module.channels, (3, 3), padding="SAME", W_std=math.sqrt(2.0),
                             b_std=None), stax.Relu()]
    layers += [stax.Flatten(), stax.Dense(module.out_dim, W_std=math.sqrt(module.readout_var(x_shape)),
                                          b_std=None)]
    return stax.serial(*layers)


def to_stax(module, params, stax_init, x_shape):
    """Our parameters as the stax network's parameter list (shapes from its init)."""
    template = jax.eval_shape(lambda key: stax_init(key, tuple(x_shape))[1], jax.random.PRNGKey(0))
    ours = iter([params[f"conv_{l}"] for l in range(module.n_conv)] + [params["readout"]])
    out = []
    for leaf in template:
        if leaf == ():
            out.append(())
            continue
        w_t, b_t = leaf
        out.append((jnp.reshape(next(ours), w_t.shape), None if b_t is None else jnp.zeros(b_t.shape)))
    return out


def case6(size: str) -> Bench:
    from ntkrepro.models import ModelSpec

    nt = _nt()
    dtype = jnp.float32
    channels, depth, n, crop = (8, 6, 4, 8) if size == "quick" else (128, 21, 8, None)
    x = jnp.asarray(_images("cifar10", n, crop=crop), dtype)
    spec = ModelSpec(arch="cntk_cnn", width=channels, depth=depth - 1, pooling="flatten", out_dim=1)
    module = spec.module
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), spec.init(jax.random.PRNGKey(0), x))
    init_fn, apply_fn, _ = stax_arora_cnn(nt.stax, module, x.shape)
    nt_params = to_stax(module, params, init_fn, x.shape)
    impls = [Impl("ours: ModelSpec(arch='cntk_cnn').empirical_ntk (layerwise)", "ours",
                  lambda: spec.empirical_ntk(params, x))]
    for impl in (1, 3):
        f = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=impl))
        impls.append(Impl(f"nt: empirical_ntk_fn implementation={impl}", "nt",
                          lambda f=f: f(x, None, nt_params)))
    hw = x.shape[1] * x.shape[2]
    return Bench(
        id="6", case=6, dtype="float32", n_entries=n * n, impls=impls,
        title=f"empirical NTK (Table 2 random features), Arora et al.'s vanilla CNN, {depth - 1} x "
              f"[conv3x3({channels}), relu] + flatten readout, {n} CIFAR-10 inputs "
              f"{x.shape[1]}x{x.shape[2]}x3",
        notes=["The paper's parameterisation (N(0, 1) weights, first layer unscaled, "
               "sqrt(2 / (9 C)) after each relu, no bias) as stax Conv / Dense W_std with the same "
               "weights; nt implementation 2 (NTK-vector products) is left out: one VJP + JVP per "
               "column, far slower for 3e6 parameters."],
        flops=cnn_ntk_flops(n, hw, x.shape[-1], channels, depth - 1))


register(Case(5, tuple(f"5-{k}" for k in CASE5), lambda b, size: case5(b[2:], size), 1.0,
              "see checks", float32_ids=("5-gap-f32", "5-flat-f32")))
register(Case(6, ("6",), lambda b, size: case6(size), 2.0, ">= 2x faster", float32_ids=("6",)))
