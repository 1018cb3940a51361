"""Large kernel matrices computed block by block under a device-memory budget, resumable from disk.

`blockwise(kernel_fn, x1, x2)` fills the (N1, N2) host (numpy) matrix kernel_fn(x1, x2) one
rows x cols block at a time: the block's inputs x1[r0:r1], x2[c0:c1] are put on a device, the
kernel is evaluated there, and the block is copied back to the host matrix.  Nothing of size
N1 x N2 ever lives on a device, so a full CIFAR-10 kernel (60000 x 60000) fits a small GPU.

Memory budget (bytes, *per device*).  The device working set of one block is

    bytes(rows, cols) = argument bytes (the two input slices) + output bytes + XLA temporaries

and the block shape is the largest one with bytes(rows, cols) <= memory_budget:

1. Per-pair cost.  `bytes_per_pair` if given; otherwise measured: `jax.jit(kernel_fn)` is compiled
   for a p x p probe block (p = min(32, N1, N2)) and XLA's `memory_analysis()` gives
   arguments + outputs + temporaries - aliased; bytes_per_pair = (that - argument bytes) / p^2.
   Constant and per-row costs are folded into the per-pair figure, which therefore over-estimates
   the cost of blocks larger than the probe.  When the kernel cannot be compiled stand-alone or the
   backend gives no memory analysis, a conservative default of DEFAULT_WORDS_PER_PAIR words
   (dtype itemsize each) per pair is used: ample for `fc` (~15 words per pair at depth 3), NOT for
   kernels with large per-pair state (the CNTK keeps ~H*W words per pair, GAP ~(H*W)^2): pass
   `bytes_per_pair` for those, or let the measurement work.
2. Model.  bytes(rows, cols) ~ row_bytes1 * rows + row_bytes2 * cols + bytes_per_pair * rows * cols
   (row_bytes = one input row in `dtype`); the largest square block (the largest rows x N2 or
   N1 x cols strip when a whole side fits) is taken, then rows / cols are shrunk to split N1 / N2
   into equal blocks (less padding), and, with several devices, until every device gets a block.
3. Verification (measured mode only).  The chosen shape itself is compiled and its exact
   memory_analysis() checked against the budget; while it exceeds it the block is shrunk by
   sqrt(budget / bytes) (x 0.9) and re-checked.  If even a 1 x 1 block does not fit, ConfigError
   says what minimum budget is needed.

A given `block_size` is checked the same way (ConfigError if the block does not fit).  Each device
has at most one block in flight (its inputs, outputs and temporaries), so the device never holds
more than one block's working set.  What is NOT counted: the host-side result (the N1 x N2 arrays
returned to the caller, in host RAM), the host copies of x1 / x2, the compiled code, and allocator
overhead outside XLA's buffer accounting (e.g. GPU preallocation: set
XLA_PYTHON_CLIENT_PREALLOCATE=false to have XLA allocate only what it uses).  With
`bytes_per_pair` given, the budget is enforced on that model and not re-measured.

Blocks are padded to the common block shape by repeating the last input row (so kernel_fn is
compiled once and always sees real data); the padded part of the result is dropped.

Symmetric case (x2 None): only the blocks on and above the diagonal are computed (a square grid),
the others are mirrored (transposed copies), and diagonal blocks are symmetrised, (B + B^T) / 2.

Devices: blocks go round-robin to `devices` (default: all of jax.devices()); kernel_fn is called
eagerly on inputs committed to that device (jax.device_put), so it runs there (JAX dispatch is
asynchronous: all devices work at once), and a device's previous block is gathered to the host
just before it receives a new one.

Resume (`cache_dir`): each finished block is saved atomically (written to a temporary file, then
os.replace) as `<cache_dir>/block_<i>_<j>.npz` holding all requested outputs; `meta.json` records
the shapes, dtype, block shape, symmetry, `key` and a fingerprint = sha256 of (x1, x2 as cast to
`dtype`, their shapes, dtype, symmetry, `key`).  `key` is a caller-provided description of
kernel_fn (e.g. "fc depth=3 relu w_var=2 b_var=0.1") and is required with cache_dir.  On restart
with the same fingerprint the saved blocks are loaded, not recomputed, and the saved block shape is
reused (checked against the budget); with a different fingerprint ConfigError asks for another
cache_dir (blocks of different kernels are never mixed).  If the run is stopped by an exception,
blocks already dispatched are still gathered and saved before it propagates.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import re
import warnings
from collections.abc import Mapping
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntkrepro.errors import ConfigError

DEFAULT_WORDS_PER_PAIR = 256  # fallback per-pair working set, in dtype words (see module doc)
PROBE = 32  # side of the probe block compiled to measure the per-pair cost
SINGLE = "kernel"  # npz field name when kernel_fn returns a bare array
META = "meta.json"
FORMAT = "ntkrepro-blockwise-1"
_BLOCK_RE = re.compile(r"^block_(\d+)_(\d+)\.npz$")


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """How a kernel matrix is split: blocks of rows x cols over a grid_rows x grid_cols grid.

    block_bytes: device working set of one block (measured by XLA, or the model estimate);
    bytes_per_pair: per-pair figure used to choose the shape; source: "measured", "given"
    (bytes_per_pair passed) or "default" (measurement unavailable, DEFAULT_WORDS_PER_PAIR).
    """

    n1: int
    n2: int
    rows: int
    cols: int
    symmetric: bool
    block_bytes: int
    bytes_per_pair: int
    source: str

    @property
    def grid(self) -> tuple[int, int]:
        return -(-self.n1 // self.rows), -(-self.n2 // self.cols)

    def blocks(self) -> list[tuple[int, int]]:
        """Block indices (i, j) to compute: all, or j >= i when symmetric."""
        g1, g2 = self.grid
        return [(i, j) for i in range(g1) for j in range(g2) if not self.symmetric or j >= i]

    @property
    def n_blocks(self) -> int:
        return len(self.blocks())


# ----------------------------------------------------------------------------------------------
# inputs and options

def _check_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"dtype {dtype!r} is not a dtype; use jnp.float32 or "
                          "jnp.float64") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ConfigError(f"dtype must be float32 or float64, got {dt}")
    if dt == np.float64 and not jax.config.read("jax_enable_x64"):
        raise ConfigError("dtype float64 needs 64-bit JAX: set JAX_ENABLE_X64=1 (or "
                          "jax.config.update('jax_enable_x64', True)), or use dtype=jnp.float32")
    return dt


def _positive_int(value, name: str, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _block_arg(block_size):
    """block_size: None, an int (square side) or a (rows, cols) pair."""
    if block_size is None:
        return None
    if isinstance(block_size, (tuple, list)) and len(block_size) == 2:
        return tuple(_positive_int(b, "block_size") for b in block_size)
    b = _positive_int(block_size, "block_size")
    return b, b


def _host_inputs(x1, x2, dt, symmetric):
    """Host copies in `dt`; returns (x1, x2, symmetric) with x2 None in the symmetric case."""
    x1 = np.ascontiguousarray(np.asarray(x1), dtype=dt)
    if x1.ndim < 1 or x1.shape[0] == 0:
        raise ConfigError(f"x1 must have at least one row (shape (N1, ...)), got shape {x1.shape}")
    if x2 is not None:
        x2 = np.ascontiguousarray(np.asarray(x2), dtype=dt)
        if x2.ndim < 1 or x2.shape[0] == 0:
            raise ConfigError(f"x2 must have at least one row (shape (N2, ...)), got {x2.shape}")
    if symmetric is None:
        symmetric = x2 is None
    elif symmetric and x2 is not None:
        if x2.shape != x1.shape or not np.array_equal(x1, x2):
            raise ConfigError("symmetric=True needs x2 None or equal to x1; pass symmetric=False "
                              "(or None) for a rectangular kernel")
        x2 = None
    if not symmetric and x2 is None:
        x2 = x1
    return x1, x2, bool(symmetric)


def _output_names(outputs) -> tuple[tuple[str, ...], bool]:
    """(names, unwrap): a str selects one field and returns a bare array."""
    if isinstance(outputs, str):
        return (outputs,), True
    try:
        names = tuple(outputs)
    except TypeError:
        raise ConfigError(f"outputs must be a field name or a sequence of names, got {outputs!r}") \
            from None
    if (not names or not all(isinstance(n, str) and n for n in names)
            or len(set(names)) != len(names)):
        raise ConfigError(f"outputs must be distinct non-empty field names, got {outputs!r}")
    return names, False


def _is_array(res) -> bool:
    return isinstance(res, (jax.Array, np.ndarray, jax.ShapeDtypeStruct))


def _select(res, names):
    """{name: array} from kernel_fn's result: a bare array -> {SINGLE: it}; a mapping / object with
    fields (e.g. `Kernel`) -> the requested fields."""
    if _is_array(res):
        return {SINGLE: res}
    if isinstance(res, (tuple, list)):
        raise ConfigError("kernel_fn returned a tuple; return an array, a dict or an object with "
                          "fields, e.g. lambda a, b: dict(zip(('ntk', 'nngp'), "
                          "cntk(a, b, ..., return_nngp=True)))")
    out = {}
    for n in names:
        try:
            out[n] = res[n] if isinstance(res, Mapping) else getattr(res, n)
        except (KeyError, AttributeError):
            have = (list(res) if isinstance(res, Mapping) else
                    [f.name for f in dataclasses.fields(res)] if dataclasses.is_dataclass(res)
                    else [a for a in dir(res) if not a.startswith("_")])
            raise ConfigError(f"kernel_fn's result has no output {n!r}; outputs must be among "
                              f"{', '.join(map(str, have))}") from None
    return out


def _check_shapes(arrays, rows, cols):
    for n, a in arrays.items():
        if tuple(a.shape) != (rows, cols):
            raise ConfigError(f"kernel_fn output {n!r} has shape {tuple(a.shape)} for a "
                              f"{rows} x {cols} block; it must be (len(xa), len(xb))")


# ----------------------------------------------------------------------------------------------
# block size from the memory budget

def _spec(x, n):
    return jax.ShapeDtypeStruct((n,) + x.shape[1:], x.dtype)


def measure_block_bytes(kernel_fn, x1, x2, rows: int, cols: int) -> int | None:
    """XLA's device working set (arguments + outputs + temporaries - aliased, bytes) of kernel_fn
    on a rows x cols block of host inputs x1, x2; None if it cannot be compiled stand-alone or the
    backend reports no memory analysis."""
    try:
        compiled = jax.jit(kernel_fn).lower(_spec(x1, rows), _spec(x2, cols)).compile()
        m = compiled.memory_analysis()
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - any failure means "no measurement": fall back
        return None
    return int(total) if total > 0 else None


def _largest_square(budget, r1, r2, ppb) -> int:
    """Largest s with r1 s + r2 s + ppb s^2 <= budget (0 if none)."""
    r = r1 + r2
    s = int((-r + math.sqrt(r * r + 4.0 * ppb * budget)) / (2.0 * ppb))
    while s > 0 and r * s + ppb * s * s > budget:
        s -= 1
    while r * (s + 1) + ppb * (s + 1) ** 2 <= budget:
        s += 1
    return s


def _balance(n, size):
    """Shrink `size` so that n splits into ceil(n / size) equal-as-possible blocks."""
    return -(-n // -(-n // size))


def _fit(budget, r1, r2, ppb, n1, n2, symmetric, n_devices):
    """Block shape maximising the block area under the model budget (0, 0 if 1 x 1 does not fit)."""
    est = lambda a, b: r1 * a + r2 * b + ppb * a * b  # noqa: E731
    if est(1, 1) > budget:
        return 0, 0
    s = _largest_square(budget, r1, r2, ppb)
    if symmetric:
        rows = cols = min(s, n1)
    elif s >= n1 and s >= n2:
        rows, cols = n1, n2
    elif s >= n1:  # whole x1 per block: widest strip
        rows = n1
        cols = min(n2, int((budget - r1 * n1) // (r2 + ppb * n1)))
    elif s >= n2:
        cols = n2
        rows = min(n1, int((budget - r2 * n2) // (r1 + ppb * n2)))
    else:
        rows, cols = s, s
    rows, cols = max(1, rows), max(1, cols)
    # every device gets at least one block (when the matrix has enough blocks to give)
    if symmetric:
        g = -(-n1 // rows)
        while g * (g + 1) // 2 < n_devices and rows > 1:
            g += 1
            rows = cols = -(-n1 // g)
    else:
        while -(-n1 // rows) * -(-n2 // cols) < n_devices and (rows > 1 or cols > 1):
            if rows >= cols and rows > 1:
                rows = -(-n1 // (-(-n1 // rows) + 1))
            else:
                cols = -(-n2 // (-(-n2 // cols) + 1))
    rows = _balance(n1, rows)
    cols = rows if symmetric else _balance(n2, cols)
    return rows, cols


def _too_small(budget, need):
    return ConfigError(f"memory_budget={budget} bytes is too small for this kernel: even a 1 x 1 "
                       f"block needs {need} bytes on the device; use memory_budget >= {need}")


def plan_blocks(kernel_fn, x1, x2=None, *, memory_budget: int = 2**30,
                block_size: int | tuple[int, int] | None = None, bytes_per_pair: int | None = None,
                dtype=jnp.float64, symmetric: bool | None = None, n_devices: int = 1) -> BlockPlan:
    """The block shape `blockwise` uses (see the module docstring for how it follows from the
    budget).  Raises ConfigError when no block (or the given `block_size`) fits `memory_budget`."""
    dt = _check_dtype(dtype)
    budget = _positive_int(memory_budget, "memory_budget", allow_none=False)
    fixed = _block_arg(block_size)
    ppb_given = _positive_int(bytes_per_pair, "bytes_per_pair")
    x1, x2, sym = _host_inputs(x1, x2, dt, symmetric)
    return _plan(kernel_fn, x1, x2, sym, budget, fixed, ppb_given, n_devices)


def _plan(kernel_fn, x1, x2, sym, budget, fixed, ppb_given, n_devices,
          resumed: str | None = None) -> BlockPlan:
    x2_ = x1 if sym else x2
    n1, n2 = x1.shape[0], x2_.shape[0]
    r1 = x1.itemsize * math.prod(x1.shape[1:])
    r2 = x2_.itemsize * math.prod(x2_.shape[1:])
    measure = lambda a, b: measure_block_bytes(kernel_fn, x1, x2_, a, b)  # noqa: E731
    if ppb_given is not None:
        ppb, source = ppb_given, "given"
    else:
        p = min(PROBE, n1, n2)
        probe = measure(p, p)
        if probe is None:
            ppb, source = DEFAULT_WORDS_PER_PAIR * x1.itemsize, "default"
        else:
            ppb, source = max(1, -(-(probe - (r1 + r2) * p) // (p * p))), "measured"
    est = lambda a, b: r1 * a + r2 * b + ppb * a * b  # noqa: E731
    cost = measure if source == "measured" else est

    def plan(rows, cols, nbytes):
        return BlockPlan(n1=n1, n2=n2, rows=rows, cols=cols, symmetric=sym, block_bytes=int(nbytes),
                         bytes_per_pair=int(ppb), source=source)

    if fixed is not None:
        rows, cols = min(fixed[0], n1), min(fixed[1], n2)
        if sym and rows != cols:
            raise ConfigError(f"symmetric kernels need square blocks, got block_size={fixed}")
        nbytes = cost(rows, cols)
        if nbytes > budget and resumed:
            raise ConfigError(f"cache_dir {resumed} was written with {rows} x {cols} blocks, which "
                              f"need {nbytes} bytes on the device, more than memory_budget="
                              f"{budget}; use memory_budget >= {nbytes} to resume it, or another "
                              "cache_dir")
        if nbytes > budget:
            raise ConfigError(f"block_size {rows} x {cols} needs {nbytes} bytes on the device, "
                              f"more than memory_budget={budget}; use a smaller block_size or "
                              f"block_size=None")
        return plan(rows, cols, nbytes)

    rows, cols = _fit(budget, r1, r2, ppb, n1, n2, sym, n_devices)
    if rows == 0:
        raise _too_small(budget, cost(1, 1))
    for _ in range(40):
        nbytes = cost(rows, cols)
        if nbytes <= budget:
            return plan(rows, cols, nbytes)
        if rows == cols == 1:
            raise _too_small(budget, nbytes)
        f = 0.9 * math.sqrt(budget / nbytes)
        rows = _balance(n1, max(1, int(rows * f)))
        cols = rows if sym else _balance(n2, max(1, int(cols * f)))
    raise ConfigError(f"could not find a block shape fitting memory_budget={budget} bytes; pass "
                      "block_size or bytes_per_pair explicitly")


# ----------------------------------------------------------------------------------------------
# cache on disk

def fingerprint(x1, x2, dt, symmetric: bool, key: str) -> str:
    """sha256 of the inputs (as cast to dt), their shapes, dt, symmetry and the kernel key."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "dtype": str(dt), "symmetric": symmetric, "key": key,
                         "x1": list(x1.shape), "x2": None if x2 is None else list(x2.shape)},
                        sort_keys=True).encode())
    for x in (x1,) if x2 is None or x2 is x1 else (x1, x2):
        h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return h.hexdigest()


def _atomic_write(path, write):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _block_path(cache_dir, i, j):
    return os.path.join(cache_dir, f"block_{i}_{j}.npz")


def _open_cache(cache_dir, meta_new):
    """Create cache_dir / meta.json, or check an existing one; returns the stored meta (or None)."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, META)
    if not os.path.exists(path):
        if any(_BLOCK_RE.match(f) for f in os.listdir(cache_dir)):
            raise ConfigError(f"cache_dir {cache_dir} holds kernel blocks but no {META}; delete it "
                              "or use another cache_dir")
        return None
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path} ({err}); delete cache_dir {cache_dir} or use "
                          "another one") from None
    if meta.get("format") != FORMAT or meta.get("fingerprint") != meta_new["fingerprint"]:
        diff = [k for k in ("key", "dtype", "symmetric", "x1_shape", "x2_shape")
                if meta.get(k) != meta_new[k]] or ["input data"]
        raise ConfigError(f"cache_dir {cache_dir} holds blocks of a different kernel "
                          f"(differs in: {', '.join(diff)}); use another cache_dir or delete it")
    return meta


def _write_meta(cache_dir, meta):
    data = json.dumps(meta, indent=1, sort_keys=True).encode()
    _atomic_write(os.path.join(cache_dir, META), lambda f: f.write(data))


def _load_block(path, expect_names, shape, dt):
    """{name: array} of a saved block; None (with a warning) if unreadable or of the wrong shape.
    expect_names None: accept whatever fields it holds."""
    try:
        with np.load(path) as z:
            names = list(z.files) if expect_names is None else list(expect_names)
            missing = [n for n in names if n not in z.files]
            if missing:
                raise ConfigError(f"saved block {path} lacks outputs {missing} (it holds "
                                  f"{z.files}); use another cache_dir for these outputs")
            out = {n: z[n] for n in names}
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged block is recomputed
        warnings.warn(f"recomputing unreadable block {path}: {err}", stacklevel=3)
        return None
    if any(a.shape != shape or a.dtype != dt for a in out.values()):
        warnings.warn(f"recomputing block {path}: wrong shape or dtype", stacklevel=3)
        return None
    return out


# ----------------------------------------------------------------------------------------------
# the driver

def blockwise(kernel_fn: Callable, x1, x2=None, *, memory_budget: int = 2**30,
              block_size: int | tuple[int, int] | None = None, bytes_per_pair: int | None = None,
              dtype=jnp.float64, cache_dir: str | os.PathLike | None = None, key: str | None = None,
              devices: Sequence | None = None, symmetric: bool | None = None,
              progress: bool = True, outputs: str | Sequence[str] = ("ntk",),
              out_dir: str | os.PathLike | None = None):
    """kernel_fn(x1, x2) computed block by block into host memory (see the module docstring).

    kernel_fn(xa, xb): xa (a, ...), xb (b, ...) device arrays in `dtype` -> an (a, b) array, or a
        mapping / object with (a, b) fields, e.g. ``lambda a, b: fc(a, b, depth=3, dtype=a.dtype)``
        (a `Kernel`; pass dtype=a.dtype so the kernel computes in `dtype`).  Called eagerly (it may
        be jitted itself, as `fc` is), once per block, with blocks padded to a common shape.
    x1: (N1, ...); x2: (N2, ...) or None (= x1, symmetric: only blocks j >= i are computed).
    memory_budget: bytes of device memory one block may use, per device.
    block_size: None (largest fitting the budget), an int (square side) or (rows, cols).
    bytes_per_pair: per-pair device working set; None = measured with XLA's memory analysis.
    dtype: float32 or float64; inputs are cast to it and results returned in it.
    cache_dir, key: save finished blocks there and resume from them; `key` describes kernel_fn
        (part of the fingerprint, required with cache_dir).
    devices: devices to spread blocks over (default: all of jax.devices()).
    symmetric: None = (x2 is None); True needs x2 None or equal to x1.
    progress: tqdm bar over blocks (shown on a terminal).
    outputs: fields taken from a structured result; a str returns that field as a bare array,
        a sequence returns {name: array}.  Ignored when kernel_fn returns a bare array.
    out_dir: if given, each result is a disk-backed `numpy.memmap` `<out_dir>/<name>.npy`
        instead of an in-memory array (a full CIFAR-10 kernel, 60000^2 float64, is 28.8 GB).

    Returns a numpy (N1, N2) array (bare-array kernel_fn, or outputs a str) or {name: array}.
    """
    from tqdm.auto import tqdm

    dt = _check_dtype(dtype)
    budget = _positive_int(memory_budget, "memory_budget", allow_none=False)
    fixed = _block_arg(block_size)
    ppb_given = _positive_int(bytes_per_pair, "bytes_per_pair")
    names, unwrap = _output_names(outputs)
    devices = list(jax.devices()) if devices is None else list(devices)
    if not devices:
        raise ConfigError("devices is empty; pass None for all of jax.devices()")
    x1, x2, sym = _host_inputs(x1, x2, dt, symmetric)
    x2_ = x1 if sym else x2

    # Cache: check the fingerprint before any work; a resumed run reuses the saved block shape.
    meta = stored = None
    if cache_dir is not None:
        if not isinstance(key, str) or not key.strip():
            raise ConfigError("cache_dir needs key='...' describing kernel_fn (e.g. 'fc depth=3 "
                              "relu w_var=2 b_var=0.1'), so blocks of different kernels never mix")
        cache_dir = os.fspath(cache_dir)
        meta = {"format": FORMAT, "key": key, "dtype": str(dt), "symmetric": sym,
                "x1_shape": list(x1.shape), "x2_shape": None if sym else list(x2.shape),
                "fingerprint": fingerprint(x1, None if sym else x2, dt, sym, key)}
        stored = _open_cache(cache_dir, meta)
        if stored is not None:
            shape = tuple(stored["block"])
            if fixed is not None and (min(fixed[0], x1.shape[0]), min(fixed[1], x2_.shape[0])) \
                    != shape:
                raise ConfigError(f"cache_dir {cache_dir} was written with {shape[0]} x {shape[1]}"
                                  f" blocks, not block_size={block_size}; pass block_size=None "
                                  "to resume it, or use another cache_dir")
            fixed = shape

    plan = _plan(kernel_fn, x1, x2, sym, budget, fixed, ppb_given, len(devices),
                 resumed=cache_dir if stored is not None else None)
    rows, cols = plan.rows, plan.cols
    n1, n2 = plan.n1, plan.n2
    if meta is not None:
        meta["block"] = [rows, cols]
        if stored is None:
            _write_meta(cache_dir, meta)
        for f in os.listdir(cache_dir):  # leftovers of interrupted writes
            if ".tmp" in f and (f.startswith("block_") or f.startswith(META)):
                try:
                    os.remove(os.path.join(cache_dir, f))
                except OSError:
                    pass

    # Output structure, if kernel_fn can be traced (else learnt from the first block).
    try:
        shapes = jax.eval_shape(kernel_fn, _spec(x1, rows), _spec(x2_, cols))
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001
        shapes = None
    state = {"fields": None}  # npz field names, once known
    if shapes is not None:
        sel = _select(shapes, names)
        _check_shapes(sel, rows, cols)
        state["fields"] = list(sel)

    result: dict[str, np.ndarray] = {}

    def extent(i, j):
        r0, c0 = i * rows, j * cols
        return r0, min(r0 + rows, n1), c0, min(c0 + cols, n2)

    def place(i, j, arrays):
        r0, r1, c0, c1 = extent(i, j)
        for n, a in arrays.items():
            if n not in result:
                if out_dir is None:
                    result[n] = np.empty((n1, n2), dt)
                else:  # a disk-backed result, for kernels larger than host memory
                    os.makedirs(out_dir, exist_ok=True)
                    result[n] = np.lib.format.open_memmap(os.path.join(out_dir, f"{n}.npy"),
                                                          mode="w+", dtype=dt, shape=(n1, n2))
            result[n][r0:r1, c0:c1] = a
            if sym and i != j:
                result[n][c0:c1, r0:r1] = a.T

    blocks = plan.blocks()
    pending = []
    for i, j in blocks:
        r0, r1, c0, c1 = extent(i, j)
        got = None
        if cache_dir is not None and os.path.exists(_block_path(cache_dir, i, j)):
            got = _load_block(_block_path(cache_dir, i, j), state["fields"], (r1 - r0, c1 - c0), dt)
        if got is None:
            pending.append((i, j))
        else:
            state["fields"] = state["fields"] or list(got)
            place(i, j, got)

    def rows_of(x, start, size):
        chunk = x[start:start + size]
        if len(chunk) < size:  # pad by repeating the last row: real data, dropped afterwards
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)])
        return chunk

    bar = tqdm(total=len(blocks), initial=len(blocks) - len(pending), unit="block",
               desc=f"kernel {n1}x{n2} in {rows}x{cols} blocks",
               disable=None if progress else True)
    inflight: dict[int, tuple[int, int, dict]] = {}

    def finish(slot):
        i, j, out = inflight.pop(slot)
        r0, r1, c0, c1 = extent(i, j)
        host = {n: np.asarray(a)[:r1 - r0, :c1 - c0].astype(dt, copy=False) for n, a in out.items()}
        if sym and i == j:
            host = {n: ((a + a.T) / 2).astype(dt, copy=False) for n, a in host.items()}
        if cache_dir is not None:
            path = _block_path(cache_dir, i, j)
            _atomic_write(path, lambda f: np.savez(f, **host))
        place(i, j, host)
        bar.update(1)

    try:
        for k, (i, j) in enumerate(pending):
            slot = k % len(devices)
            if slot in inflight:
                finish(slot)
            dev = devices[slot]
            xa = jax.device_put(rows_of(x1, i * rows, rows), dev)
            xb = xa if (sym and i == j) else jax.device_put(rows_of(x2_, j * cols, cols), dev)
            out = _select(kernel_fn(xa, xb), names)
            if state["fields"] is None:
                state["fields"] = list(out)
            elif list(out) != state["fields"]:
                raise ConfigError(f"kernel_fn returned fields {list(out)}, expected "
                                  f"{state['fields']}")
            _check_shapes(out, rows, cols)
            inflight[slot] = (i, j, out)
            del xa, xb
        while inflight:
            finish(next(iter(inflight)))
    except BaseException:
        # save what the devices already finished, then let the error through
        for slot in list(inflight):
            try:
                finish(slot)
            except BaseException:  # noqa: BLE001
                inflight.pop(slot, None)
        raise
    finally:
        bar.close()

    if SINGLE in result and state["fields"] == [SINGLE]:
        return result[SINGLE]
    return result[names[0]] if unwrap else {n: result[n] for n in names}
