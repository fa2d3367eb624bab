"""``fj.gradcheck``: symbolic derivatives against central finite differences.

The function is traced once at float64 (float arguments are cast to float64), so that
finite differences are accurate. Three checks, each per differentiated argument leaf:

1. for small arguments, every element of the gradient of ``<u, f(x)>`` (by ``vjp``, for
   a random output cotangent ``u``) against its own central difference;
2. reverse mode: ``<vjp(u), v>`` against ``<u, (f(x + eps v) - f(x - eps v)) / 2 eps>``
   for a random direction ``v``;
3. forward mode: ``jvp(v)`` against the same finite difference, element by element.

Random numbers come from a fixed seed, so a check is reproducible.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from fusejit.ir.dtypes import from_numpy
from fusejit.ir.interpreter import run_function
from fusejit.ir.types import TensorType
from fusejit.tracer.pytree import tree_flatten, tree_flatten_with_path, tree_unflatten
from fusejit.tracer.tracing import is_tracing, sanitize_name, trace_function
from fusejit.tracer.transformations import jvp, vjp

_FULL_CHECK_MAX_SIZE = 256  # per argument leaf: check every element up to this size


class GradcheckError(AssertionError):
    """A symbolic derivative disagrees with finite differences."""


def gradcheck(
    fun: Callable[..., Any],
    args: Any,
    *,
    eps: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> bool:
    """Checks ``fun``'s reverse- and forward-mode derivatives at ``args`` (a tuple of
    positional arguments, pytrees) against central finite differences in float64.

    Float leaves (arrays and Python floats) are differentiated; integer arrays are
    passed as they are; Python ints, bools and other objects are passed unchanged.
    A symbolic value ``s`` passes against a finite difference ``d`` when
    ``|s - d| <= atol + rtol * |d|``. Returns True, or raises ``GradcheckError`` naming
    the check, the argument (its pytree path), the worst index, both values and the
    tolerance. Defaults: ``eps=1e-6``, ``atol=1e-5``, ``rtol=1e-4``.
    """
    if is_tracing():
        raise RuntimeError("gradcheck runs the function concretely: call it outside jit/grad")
    eps = 1e-6 if eps is None else eps
    atol = 1e-5 if atol is None else atol
    rtol = 1e-4 if rtol is None else rtol
    args = args if isinstance(args, tuple) else (args,)
    name = getattr(fun, "__name__", "fun")

    # Leaves: float ones become float64 parameters, integer arrays parameters, the rest
    # stays Python.
    try:
        params = [p.name for p in inspect.signature(fun).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]  # fmt: skip
    except (TypeError, ValueError):
        params = []
    path_leaves: list[tuple[str, Any]] = []
    for i, a in enumerate(args):
        path_leaves += tree_flatten_with_path(a, params[i] if i < len(params) else f"args[{i}]")[0]
    _, treedef = tree_flatten(args)
    leaves = [x for _, x in path_leaves]
    dyn: list[int] = []
    values: list[np.ndarray] = []
    for j, leaf in enumerate(leaves):
        if isinstance(leaf, float) or (isinstance(leaf, (np.ndarray, np.generic)) and leaf.dtype.kind == "f"):
            dyn.append(j)
            values.append(np.array(leaf, dtype=np.float64))
        elif isinstance(leaf, (np.ndarray, np.generic)) and leaf.dtype.kind in "iub":
            dyn.append(j)
            values.append(np.array(leaf))
    wrt = [k for k, v in enumerate(values) if v.dtype == np.float64]
    if not wrt:
        raise TypeError(f"gradcheck of {name}: no float arguments to differentiate")

    def flat_fun(*dyn_values: Any) -> Any:
        full = list(leaves)
        for j, v in zip(dyn, dyn_values, strict=True):
            full[j] = v
        return fun(*tree_unflatten(treedef, full))

    types = [TensorType(from_numpy(v.dtype), v.shape) for v in values]
    fn, _, _ = trace_function(flat_fun, types, name=sanitize_name(name))
    outs = [k for k, r in enumerate(fn.results) if r.dtype.is_float]
    if not outs:
        raise TypeError(f"gradcheck of {name}: the function has no float outputs")

    def f(xs: list[np.ndarray]) -> list[np.ndarray]:
        res = run_function(fn, *xs)
        return [np.asarray(res[k], dtype=np.float64) for k in outs]

    rng = np.random.default_rng(seed)
    y0 = f(values)
    scalar = len(y0) == 1 and y0[0].shape == ()
    # A scalar function's gradient is checked as is; otherwise that of <u, f> for a random u.
    u = [np.ones(())] if scalar else [rng.standard_normal(y.shape) for y in y0]

    # Symbolic derivatives through the public transformations.
    out, vjp_fn = vjp(lambda *xs: _float_outputs(flat_fun(*xs)), *values)
    (grads,) = [vjp_fn(tuple(u))]

    def tolerance(d: np.ndarray) -> np.ndarray:
        return atol + rtol * np.abs(d)

    def fail(check: str, k: int, index: Any, symbolic: float, numeric: float, tol: float) -> GradcheckError:
        where = "" if index is None else f" at index {index}"
        return GradcheckError(
            f"gradcheck of {name}: {check} for argument {path_leaves[dyn[k]][0]}{where}: symbolic "
            f"{symbolic!r} vs finite differences {numeric!r} (|difference| {abs(symbolic - numeric):.3g} > "
            f"tolerance {tol:.3g} = atol {atol:g} + rtol {rtol:g} * |finite difference|)"
        )

    def central(k: int, direction: np.ndarray) -> list[np.ndarray]:
        plus = list(values)
        minus = list(values)
        plus[k] = values[k] + eps * direction
        minus[k] = values[k] - eps * direction
        return [(a - b) / (2 * eps) for a, b in zip(f(plus), f(minus), strict=True)]

    for k in wrt:
        x = values[k]
        # 1. every element of the gradient of <u, f>, for small arguments
        if x.size <= _FULL_CHECK_MAX_SIZE:
            g = np.asarray(grads[k], dtype=np.float64)
            numeric = np.empty(x.shape)
            for i in np.ndindex(x.shape):
                e = np.zeros(x.shape)
                e[i] = 1.0
                numeric[i] = sum(np.sum(a * b) for a, b in zip(u, central(k, e), strict=True))
            err = np.abs(g - numeric) - tolerance(numeric)
            if err.size and np.max(err) > 0:
                i = np.unravel_index(int(np.argmax(err)), err.shape)
                raise fail(
                    "reverse mode gradient" if scalar else "reverse mode gradient of <u, f> for a random u",
                    k,
                    tuple(map(int, i)),
                    float(g[i]),
                    float(numeric[i]),
                    float(tolerance(numeric)[i]),
                )
        v = rng.standard_normal(x.shape)
        fd = central(k, v)
        # 2. reverse mode along a random cotangent and direction
        sym = float(np.sum(np.asarray(grads[k], dtype=np.float64) * v))
        num = float(sum(np.sum(a * b) for a, b in zip(u, fd, strict=True)))
        scale = float(sum(np.sum(np.abs(a * b)) for a, b in zip(u, fd, strict=True)))
        tol = atol + rtol * scale
        if not abs(sym - num) <= tol:
            raise fail("reverse mode <vjp(u), v> for a random u and direction v", k, None, sym, num, tol)
        # 3. forward mode along the same direction, element by element of the outputs
        tangents = [np.zeros_like(val) for val in values]
        tangents[k] = v
        _, t_out = jvp(lambda *xs: _float_outputs(flat_fun(*xs)), tuple(values), tuple(tangents))
        for m, (t, d) in enumerate(zip(t_out, fd, strict=True)):
            t = np.asarray(t, dtype=np.float64)
            err = np.abs(t - d) - tolerance(d)
            if err.size and np.max(err) > 0:
                i = np.unravel_index(int(np.argmax(err)), err.shape)
                raise fail(
                    f"forward mode jvp(v) along a random direction v (output {m})",
                    k,
                    tuple(map(int, i)),
                    float(t[i]),
                    float(d[i]),
                    float(tolerance(d)[i]),
                )
    del out
    return True


def _float_outputs(out: Any) -> tuple[Any, ...]:
    """The float leaves of an output pytree, as a tuple (what gradcheck differentiates)."""
    from fusejit.tracer.tracing import TracedArray

    leaves, _ = tree_flatten(out)
    kept = []
    for leaf in leaves:
        kind = (
            leaf.value.dtype.is_float if isinstance(leaf, TracedArray) else np.asarray(leaf).dtype.kind == "f"
        )
        if kind:
            kept.append(leaf)
    return tuple(kept)
