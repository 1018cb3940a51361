"""Import neural-tangents 0.6.5 on current JAX, without TensorFlow.  Benchmark use only.

neural-tangents 0.6.5 (the last release) was written for JAX 0.4.x.  On JAX 0.10 it fails to import
because (a) `neural_tangents.experimental` imports `jax.experimental.jax2tf`, which needs
TensorFlow, (b) `jax.util` and several `jax.core` / `jax.interpreters.ad` names were removed or
moved.  Its `implementation=3` ("structured derivatives") additionally calls the private
`ad.linearize`, whose signature changed.  `load_neural_tangents()` patches exactly these, only by
*adding* missing names (nothing that exists in JAX is replaced), then imports and returns the
module:

* stub module for `neural_tangents.experimental` (the TF-based empirical kernels, unused here);
* `jax.util` -> `jax._src.util` (safe_map / safe_zip);
* `jax.core.{Jaxpr, JaxprEqn, Literal, Var, Primitive, ClosedJaxpr}` -> `jax.extend.core`;
  `jax.core.DShapedArray` -> an empty class (dynamic shapes no longer exist, so the
  `type(a) is DShapedArray` test in neural-tangents is simply always false);
* `jax.interpreters.ad.{source_info_util, reducing_transposes}` -> `jax._src.interpreters.ad`;
  `ad.config.jax_enable_checks` -> the current flag; `ad.zeros_like_p` -> `jax._src.ad_util`;
  `Primitive.map_primitive` -> False (attribute removed from JAX; no map primitives remain);
* `neural_tangents._src.empirical._get_primals_out_and_pullback` (implementation 3 only) is
  re-expressed with the public `jax.linearize` + `jax.make_jaxpr` instead of the private
  `ad.linearize`; the rest of neural-tangents' structured-derivative machinery is untouched.

Nothing here is imported by the core package (`ntkrepro/` outside `ntkrepro/bench/`).
"""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings

_NT = None


def available() -> bool:
    """Whether a neural_tangents distribution is installed (without importing it)."""
    return importlib.util.find_spec("neural_tangents") is not None


def _add(obj, name, value):
    """Set obj.name = value only when obj has no such attribute (never replaces JAX's own)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        missing = not hasattr(obj, name)
    if missing:
        setattr(obj, name, value)


def _patch_jax():
    import jax
    import jax.core
    import jax.extend.core as jex_core
    import jax.interpreters.ad as ad
    from jax._src import ad_util
    from jax._src import util as jax_src_util
    from jax._src.interpreters import ad as ad_src

    sys.modules.setdefault("jax.util", jax_src_util)
    for name in ("Jaxpr", "JaxprEqn", "Literal", "Var", "Primitive", "ClosedJaxpr"):
        _add(jax.core, name, getattr(jex_core, name))
    _add(jax.core, "DShapedArray", type("DShapedArray", (), {}))
    for name in ("source_info_util", "reducing_transposes"):
        _add(ad, name, getattr(ad_src, name))
    _add(ad, "config", types.SimpleNamespace(jax_enable_checks=bool(jax.config.jax_enable_checks)))
    _add(ad, "zeros_like_p", ad_util.zeros_like_p)
    _add(jex_core.Primitive, "map_primitive", False)


def _patch_structured_derivatives(ne):
    """implementation=3: linearize with the public API (old private `ad.linearize` is gone)."""
    import jax
    from jax.tree_util import tree_flatten, tree_unflatten

    def _get_primals_out_and_pullback(fn, mode, _j_rules, _s_rules, _fwd, *primals_in):
        flat_in, in_tree = tree_flatten(primals_in)
        out_tree = []

        def fn_flat(*flat):
            leaves, tree = tree_flatten(fn(*tree_unflatten(in_tree, flat)))
            out_tree.append(tree)
            return leaves

        with jax.disable_jit():  # as in 0.6.5: inline call primitives
            primals_out, f_jvp = jax.linearize(fn_flat, *flat_in)
            closed = jax.make_jaxpr(f_jvp)(*flat_in)  # the linear (tangent) jaxpr
        jaxpr, consts = closed.jaxpr, closed.consts

        def pullback_fn(*cts_in):
            cts_in, _ = tree_flatten(cts_in)
            dummy = [ne.UndefinedPrimal(v.aval) for v in jaxpr.invars]
            cts_out = ne._backward_pass(jaxpr, mode=mode, consts=consts, primals_in=dummy,
                                        cotangents_in=tuple(cts_in), _j_rules=_j_rules,
                                        _s_rules=_s_rules, _fwd=_fwd)
            return tree_unflatten(in_tree, cts_out)

        return tree_unflatten(out_tree[0], primals_out), pullback_fn

    ne._get_primals_out_and_pullback = _get_primals_out_and_pullback


def load_neural_tangents():
    """Apply the shim (once) and return the imported `neural_tangents` module."""
    global _NT
    if _NT is not None:
        return _NT
    if not available():
        raise ImportError("neural_tangents is not installed; `make bench` installs "
                          "neural-tangents==0.6.5 (pip install --no-deps) and frozendict")
    _patch_jax()
    sys.modules.setdefault("neural_tangents.experimental",
                           types.ModuleType("neural_tangents.experimental"))
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"neural_tangents")
    import neural_tangents as nt
    from neural_tangents._src import empirical as ne

    _patch_structured_derivatives(ne)
    _NT = nt
    return nt
