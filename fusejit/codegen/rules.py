"""The codegen rule of every primitive: ``CODEGEN_RULES``, keyed by ``Primitive``.

A rule is a ``CodegenRule``; what it provides depends on the primitive's role:

* ``elemental``: elementwise, layout, source and gather ops. ``elemental(em, op, idx)``
  returns the element ``idx`` of the op's output (see ``fusejit.codegen.elemental``):
  elementwise rules combine their operands' elements at the same index, layout rules
  rewrite the index, sources compute it from the index.
* ``reduction``: ``init(dtype)`` (the identity), ``combine(em, acc, x, dtype)`` (the
  expression that folds element ``x`` into accumulator ``acc`` of ``dtype``) and
  ``blocked`` for sums, which accumulate in blocks and float32 totals in float64
  (``fusejit.codegen.reductions``); argmax/argmin are ``arg`` reductions that also track
  an index.
* ``contraction`` (dot_general), ``scatter`` (scatter_add): lowered by whole-group
  strategies in ``fusejit.codegen.lowering``.
* ``call`` (custom_vjp_call): never reaches a backend (the simplifier inlines it).

Every Numba typing pitfall is handled here once: int32 arithmetic is computed in int64
by Numba and wrapped back (``np.int32(a + b)``), float32 constants are ``np.float32``
globals, transcendentals call the vectorizable ``fusejit.codegen.mathlib``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.codegen.elemental import Elem, Emitter, Index, delinearize, linearize
from fusejit.codegen.kernel import NP_NAME, Unsupported
from fusejit.ir import primitives as P
from fusejit.ir.core import Op
from fusejit.ir.dtypes import DType


@dataclass(frozen=True, slots=True)
class CodegenRule:
    role: str  # "elemental" | "reduction" | "contraction" | "scatter" | "call"
    elemental: Callable[[Emitter, Op, Index], Elem] | None = None
    init: Callable[[DType], Any] | None = None
    combine: Callable[[Emitter, str, str, DType], str] | None = None
    arg: str | None = None  # for argmax/argmin: the comparison that replaces the best
    blocked: bool = False  # a float sum: summed in blocks, float32 totals in float64
    math: bool = False  # calls the math library on float operands (a structural fact for fusion)


def _suffix(dtype: DType) -> str:
    return {DType.f32: "f32", DType.f64: "f64"}[dtype]


def wrap(expr: str, dtype: DType) -> str:
    """``expr`` converted to ``dtype`` where Numba would compute it wider (int32)."""
    return f"np.int32({expr})" if dtype is DType.i32 else expr


def _fold(em: Emitter, op: Op, args: list[Elem]) -> Elem:
    """Evaluates an op on constant operands with its NumPy rule (exact IR semantics)."""
    arrays = [np.asarray(a.const, dtype=v.dtype.np) for a, v in zip(args, op.inputs, strict=True)]
    with np.errstate(all="ignore"):
        (out,) = op.prim.impl(*arrays, **op.attrs)
    return em.const(np.asarray(out).item(), op.output.dtype)


# ---------------------------------------------------------------------------------------
# Elementwise

ExprFn = Callable[[Emitter, Op, list[Elem]], "str | Elem"]


def _elementwise(expr_fn: ExprFn, math: bool = False) -> CodegenRule:
    def elemental(em: Emitter, op: Op, idx: Index) -> Elem:
        args = [em.at(v, idx) for v in op.inputs]
        if all(a.const is not None for a in args):
            return _fold(em, op, args)
        out = expr_fn(em, op, args)
        return out if isinstance(out, Elem) else em.let(out)

    return CodegenRule("elemental", elemental=elemental, math=math)


def _math(name: str) -> CodegenRule:
    def expr(em: Emitter, op: Op, a: list[Elem]) -> str:
        fn = em.b.math(f"{name}_{_suffix(op.output.dtype)}")
        return f"{fn}({', '.join(x.expr for x in a)})"

    return _elementwise(expr, math=True)


def _unary_op(symbol: str) -> CodegenRule:
    return _elementwise(lambda em, op, a: wrap(f"{symbol}{a[0].expr}", op.output.dtype))


def _binary_op(symbol: str) -> CodegenRule:
    return _elementwise(lambda em, op, a: wrap(f"{a[0].expr} {symbol} {a[1].expr}", op.output.dtype))


def _compare(symbol: str) -> CodegenRule:
    return _elementwise(lambda em, op, a: f"{a[0].expr} {symbol} {a[1].expr}")


def _sign(em: Emitter, op: Op, a: list[Elem]) -> str:
    dt = op.output.dtype
    x = a[0].expr
    one, minus, zero = (em.const(v, dt).expr for v in (1, -1, 0))
    if dt.is_float:  # np.sign: nan stays nan, -0.0 gives +0.0
        return f"{one} if {x} > {zero} else ({minus} if {x} < {zero} else ({x} if {x} != {x} else {zero}))"
    return f"{one} if {x} > {zero} else ({minus} if {x} < {zero} else {zero})"


def _not(em: Emitter, op: Op, a: list[Elem]) -> str:
    if op.output.dtype.is_bool:
        return f"not {a[0].expr}"
    return wrap(f"~{a[0].expr}", op.output.dtype)


def _logical(symbol: str, word: str) -> ExprFn:
    def expr(em: Emitter, op: Op, a: list[Elem]) -> str:
        if op.output.dtype.is_bool:
            return f"{a[0].expr} {symbol} {a[1].expr}"
        return wrap(f"{a[0].expr} {symbol} {a[1].expr}", op.output.dtype)

    return expr


def _extremum(name: str) -> ExprFn:
    def expr(em: Emitter, op: Op, a: list[Elem]) -> str:
        dt = op.output.dtype
        if dt.is_float:  # NaN-propagating like np.maximum, and vectorizable
            return f"{em.b.math(f'{name}imum_{_suffix(dt)}')}({a[0].expr}, {a[1].expr})"
        return f"{name}({a[0].expr}, {a[1].expr})"

    return expr


def _pow(em: Emitter, op: Op, a: list[Elem]) -> str | Elem:
    x, y = a
    dt = op.output.dtype
    if y.const is not None:  # strength reduction: NumPy's own x**3 is a scalar powf loop
        if y.const == 1:
            return x
        if y.const == 2:
            return f"{x.expr} * {x.expr}"
        if y.const == 3:
            sq = em.let(f"{x.expr} * {x.expr}").expr
            return f"{sq} * {x.expr}"
        if y.const == -1:
            return f"{em.const(1, dt).expr} / {x.expr}"
        if y.const == 0.5:  # what NumPy's scalar-exponent fast path computes
            return f"{em.b.math('sqrt_' + _suffix(dt))}({x.expr})"
    return f"{em.b.math('pow_' + _suffix(dt))}({x.expr}, {y.expr})"


def _divmod(name: str, int_symbol: str) -> ExprFn:
    """floor_divide/remainder: the math library's NumPy algorithm for floats; Numba's
    integer ``//`` and ``%`` already round down (and give 0 for a zero divisor, as NumPy)."""

    def expr(em: Emitter, op: Op, a: list[Elem]) -> str:
        dt = op.output.dtype
        if dt.is_float:
            return f"{em.b.math(f'{name}_{_suffix(dt)}')}({a[0].expr}, {a[1].expr})"
        return wrap(f"{a[0].expr} {int_symbol} {a[1].expr}", dt)

    return expr


def _select(em: Emitter, op: Op, idx: Index) -> Elem:
    pred = em.at(op.inputs[0], idx)
    if pred.const is not None:
        return em.at(op.inputs[1] if pred.const else op.inputs[2], idx)
    t, f = em.at(op.inputs[1], idx), em.at(op.inputs[2], idx)
    if t.const is not None and f.const is not None and t.const == f.const:
        return t
    return em.let(f"{t.expr} if {pred.expr} else {f.expr}")


def _convert(em: Emitter, op: Op, a: list[Elem]) -> str | Elem:
    src, dst = op.inputs[0].dtype, op.output.dtype
    x = a[0].expr
    if src == dst:
        return a[0]
    if dst.is_bool:
        return f"{x} != {em.const(0, src).expr}"
    return f"{NP_NAME[dst]}({x})"


def _floor_like(np_fn: str) -> CodegenRule:
    return _elementwise(lambda em, op, a: f"np.{np_fn}({a[0].expr})")


ELEMENTWISE_RULES: dict[P.Primitive, CodegenRule] = {
    P.neg: _unary_op("-"),
    P.abs: _elementwise(lambda em, op, a: f"abs({a[0].expr})"),
    P.sign: _elementwise(_sign),
    P.exp: _math("exp"),
    P.log: _math("log"),
    P.log1p: _math("log1p"),
    P.expm1: _math("expm1"),
    P.sqrt: _math("sqrt"),
    P.rsqrt: _math("rsqrt"),
    P.tanh: _math("tanh"),
    P.logistic: _math("logistic"),
    P.sin: _math("sin"),
    P.cos: _math("cos"),
    P.floor: _floor_like("floor"),
    P.ceil: _floor_like("ceil"),
    P.round: _floor_like("rint"),
    P.stop_gradient: _elementwise(lambda em, op, a: a[0]),
    P.logical_not: _elementwise(_not),
    P.add: _binary_op("+"),
    P.sub: _binary_op("-"),
    P.mul: _binary_op("*"),
    P.div: _binary_op("/"),
    P.pow: _elementwise(_pow, math=True),
    P.floor_divide: _elementwise(_divmod("floor_divide", "//"), math=True),
    P.remainder: _elementwise(_divmod("remainder", "%"), math=True),
    P.max: _elementwise(_extremum("max"), math=True),
    P.min: _elementwise(_extremum("min"), math=True),
    P.eq: _compare("=="),
    P.ne: _compare("!="),
    P.lt: _compare("<"),
    P.le: _compare("<="),
    P.gt: _compare(">"),
    P.ge: _compare(">="),
    P.logical_and: _elementwise(_logical("&", "and")),
    P.logical_or: _elementwise(_logical("|", "or")),
    P.select: CodegenRule("elemental", elemental=_select),
    P.convert: _elementwise(_convert),
}


# ---------------------------------------------------------------------------------------
# Layout: each rule maps the output index to an operand index.


def _broadcast(em: Emitter, op: Op, idx: Index) -> Elem:
    (x,) = op.inputs
    out_shape, dims = op.attrs["shape"], op.attrs["dims"]
    xs = x.shape
    if all(n == 1 for n in xs):
        return em.at(x, Index(("1",) * len(xs), ("0",) * len(xs), "0"))
    xshape = tuple("1" if xs[i] == 1 else idx.shape[d] for i, d in enumerate(dims))
    # Only unit axes inserted: the same linear index addresses the operand.
    if all(out_shape[d] == 1 for d in range(len(out_shape)) if d not in dims) and all(
        xs[i] == out_shape[d] for i, d in enumerate(dims)
    ):
        xdims = None if idx.dims is None else tuple(idx.dims[d] for d in dims)
        return em.at(x, Index(xshape, xdims, idx.flat))
    out_dims = em.dims(idx)
    xdims = tuple("0" if xs[i] == 1 else out_dims[d] for i, d in enumerate(dims))
    return em.at(x, Index(xshape, xdims))


def _reshape(em: Emitter, op: Op, idx: Index) -> Elem:
    (x,) = op.inputs
    out = op.output
    xs, os_ = x.shape, out.shape
    x_nonunit = [k for k, n in enumerate(xs) if n != 1]
    o_nonunit = [k for k, n in enumerate(os_) if n != 1]
    if [xs[k] for k in x_nonunit] == [os_[k] for k in o_nonunit]:
        # Only unit axes inserted or removed: axes correspond one to one.
        xshape = ["1"] * len(xs)
        xdims = None if idx.dims is None else ["0"] * len(xs)
        for xk, ok in zip(x_nonunit, o_nonunit, strict=True):
            xshape[xk] = idx.shape[ok]
            if xdims is not None and idx.dims is not None:
                xdims[xk] = idx.dims[ok]
        return em.at(x, Index(tuple(xshape), None if xdims is None else tuple(xdims), idx.flat))
    groups = reshape_groups(xs, os_)
    if idx.dims is None or groups is None:
        return em.at(x, Index(em.shape_of(x), None, em.flat(idx)))
    # Axes split or merged group by group: only the split axes need a division.
    xshape = list(em.shape_of(x))
    xdims = [""] * len(xs)
    for x_axes, o_axes in groups:
        if len(x_axes) == 1 and len(o_axes) == 1:
            xdims[x_axes[0]] = idx.dims[o_axes[0]]
            xshape[x_axes[0]] = idx.shape[o_axes[0]]
            continue
        g = linearize(em.b, tuple(idx.dims[k] for k in o_axes), tuple(idx.shape[k] for k in o_axes))
        sub = delinearize(em.b, g, tuple(xshape[k] for k in x_axes)) if x_axes else ()
        for k, d in zip(x_axes, sub, strict=True):
            xdims[k] = d
    return em.at(x, Index(tuple(xshape), tuple(xdims), idx.flat))


def reshape_groups(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """The axes of ``src`` and ``dst`` in consecutive groups of equal size (a reshape only
    merges or splits within a group), or None when a size is 0."""
    if 0 in src or 0 in dst:
        return None
    groups = []
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(src):
            gi.append(i)
            pi *= src[i]
            i += 1
        if j < len(dst):
            gj.append(j)
            pj *= dst[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(i)
                pi *= src[i]
                i += 1
            elif j < len(dst):
                gj.append(j)
                pj *= dst[j]
                j += 1
            else:  # pragma: no cover - the sizes of a valid reshape agree
                return None
        groups.append((gi, gj))
    return groups


def _transpose(em: Emitter, op: Op, idx: Index) -> Elem:
    (x,) = op.inputs
    perm = op.attrs["perm"]
    xshape = [""] * len(perm)
    for k, p in enumerate(perm):
        xshape[p] = idx.shape[k]
    moved = [p for p in perm if x.shape[p] != 1]
    if moved == sorted(moved):  # only unit axes move: the linear index is unchanged
        xdims = None
        if idx.dims is not None:
            xdims = [""] * len(perm)
            for k, p in enumerate(perm):
                xdims[p] = idx.dims[k]
        return em.at(x, Index(tuple(xshape), None if xdims is None else tuple(xdims), idx.flat))
    out_dims = em.dims(idx)
    xdims = [""] * len(perm)
    for k, p in enumerate(perm):
        xdims[p] = out_dims[k]
    return em.at(x, Index(tuple(xshape), tuple(xdims)))


def _slice(em: Emitter, op: Op, idx: Index) -> Elem:
    (x,) = op.inputs
    start, stride = op.attrs["start"], op.attrs["stride"]
    out = op.output
    same = [s == 0 and st == 1 and out.shape[k] == x.shape[k] for k, (s, st) in enumerate(zip(start, stride, strict=True))]
    if all(same):
        return em.at(x, idx)
    out_dims = em.dims(idx)
    xdims, xshape = [], []
    for k, (s, st) in enumerate(zip(start, stride, strict=True)):
        if same[k]:
            xdims.append(out_dims[k])
            xshape.append(idx.shape[k])
            continue
        xshape.append(em.size(x, k))
        if out.shape[k] == 1:
            xdims.append(em.offset(("slice", id(op), k), s))
            continue
        term = out_dims[k] if st == 1 else em.b.let(f"{out_dims[k]} * {st}")
        off = em.offset(("slice", id(op), k), s)
        xdims.append(term if off == "0" else em.b.let(f"{off} + {term}"))
    return em.at(x, Index(tuple(xshape), tuple(xdims)))


def _pad(em: Emitter, op: Op, idx: Index) -> Elem:
    (x,) = op.inputs
    lo, hi, value = op.attrs["lo"], op.attrs["hi"], op.attrs["value"]
    dt = op.output.dtype
    if not any(lo) and not any(hi):
        return em.at(x, idx)
    pad_value = em.const(value, dt)
    if x.type.size == 0:
        return pad_value
    out_dims = em.dims(idx)
    xdims, xshape, conds = [], [], []
    for k in range(len(lo)):
        if lo[k] == 0 and hi[k] == 0:
            xdims.append(out_dims[k])
            xshape.append(idx.shape[k])
            continue
        n = em.size(x, k)
        off = em.offset(("pad", id(op), k), lo[k])
        j = out_dims[k] if off == "0" else em.b.let(f"{out_dims[k]} - {off}")
        if lo[k]:
            conds.append(f"({j} >= 0)")
        if hi[k]:
            conds.append(f"({j} < {n})")
        xdims.append(j)
        xshape.append(n)
    inner = Index(tuple(xshape), tuple(xdims))
    cond = em.b.let(" & ".join(conds))
    var = em.b.branch(cond, lambda: em.at(x, inner).expr, lambda: pad_value.expr)
    return Elem(var)


def _concatenate(em: Emitter, op: Op, idx: Index) -> Elem:
    axis = op.attrs["axis"]
    parts = [x for x in op.inputs if x.shape[axis] != 0]
    if not parts:  # an empty result: no element is ever read
        return em.const(0, op.output.dtype)
    if len(parts) == 1:
        only = parts[0]
        if only.shape == op.output.shape:
            return em.at(only, idx)
    out_dims = em.dims(idx)
    a = out_dims[axis]
    offsets = ["0"]
    for x in parts[:-1]:
        n = em.size(x, axis)
        offsets.append(n if offsets[-1] == "0" else em.b.let(f"{offsets[-1]} + {n}"))

    def piece(k: int) -> str:
        x = parts[k]
        j = a if offsets[k] == "0" else em.b.let(f"{a} - {offsets[k]}")
        dims = out_dims[:axis] + (j,) + out_dims[axis + 1 :]
        shape = idx.shape[:axis] + (em.size(x, axis),) + idx.shape[axis + 1 :]
        return em.at(x, Index(shape, dims)).expr

    def chain(k: int) -> str:
        if k == len(parts) - 1:
            return piece(k)
        return em.b.branch(em.b.let(f"{a} < {offsets[k + 1]}"), lambda: piece(k), lambda: chain(k + 1))

    return Elem(chain(0))


def _gather(em: Emitter, op: Op, idx: Index) -> Elem:
    x, ind = op.inputs
    axis = op.attrs["axis"]
    n = em.size(x, axis)
    raw = em.at(ind, idx).expr
    j = em.b.let(f"np.int64({raw})")
    j = em.b.let(f"{j} + {n} if {j} < 0 else {j}")
    j = em.b.let(f"min(max({j}, 0), {n} - 1)") if n != "1" else "0"
    if len(x.shape) == 1:
        return em.at(x, Index((n,), (j,), j))
    out_dims = em.dims(idx)
    dims = out_dims[:axis] + (j,) + out_dims[axis + 1 :]
    shape = idx.shape[:axis] + (n,) + idx.shape[axis + 1 :]
    return em.at(x, Index(shape, dims))


def _iota(em: Emitter, op: Op, idx: Index) -> Elem:
    d = em.dims(idx)[op.attrs["dimension"]]
    dt = op.output.dtype
    if d == "0":
        return em.const(0, dt)
    return em.let(f"{NP_NAME[dt]}({d})")


def _constant(em: Emitter, op: Op, idx: Index) -> Elem:
    value = op.attrs["value"]
    dt = op.output.dtype
    if not isinstance(value, tuple):
        return em.const(value, dt)
    if len(value) == 1:
        return em.const(value[0], dt)
    return Elem(em.b.load(em.const_array(op), em.flat(idx)))


LAYOUT_RULES: dict[P.Primitive, CodegenRule] = {
    P.broadcast_in_dim: CodegenRule("elemental", elemental=_broadcast),
    P.reshape: CodegenRule("elemental", elemental=_reshape),
    P.transpose: CodegenRule("elemental", elemental=_transpose),
    P.slice: CodegenRule("elemental", elemental=_slice),
    P.pad: CodegenRule("elemental", elemental=_pad),
    P.concatenate: CodegenRule("elemental", elemental=_concatenate),
    P.gather: CodegenRule("elemental", elemental=_gather),
    P.iota: CodegenRule("elemental", elemental=_iota),
    P.constant: CodegenRule("elemental", elemental=_constant),
}


# ---------------------------------------------------------------------------------------
# Reductions


def _lowest(dtype: DType) -> Any:
    return -np.inf if dtype.is_float else int(np.iinfo(dtype.np).min)


def _highest(dtype: DType) -> Any:
    return np.inf if dtype.is_float else int(np.iinfo(dtype.np).max)


def _sum_combine(em: Emitter, acc: str, x: str, dtype: DType) -> str:
    if dtype.is_float:  # the one reassociable add: the sum vectorizes, nothing else changes
        return f"{em.b.math(f'accumulate_{_suffix(dtype)}')}({acc}, {x})"
    return wrap(f"{acc} + {x}", dtype)


def _extremum_combine(name: str) -> Callable[[Emitter, str, str, DType], str]:
    def combine(em: Emitter, acc: str, x: str, dtype: DType) -> str:
        if dtype.is_float:
            return f"{em.b.math(f'{name}imum_{_suffix(dtype)}')}({acc}, {x})"
        return f"{name}({acc}, {x})"

    return combine


REDUCTION_RULES: dict[P.Primitive, CodegenRule] = {
    P.reduce_sum: CodegenRule("reduction", init=lambda dt: 0, combine=_sum_combine, blocked=True),
    P.reduce_max: CodegenRule("reduction", init=_lowest, combine=_extremum_combine("max")),
    P.reduce_min: CodegenRule("reduction", init=_highest, combine=_extremum_combine("min")),
    # First index of the extremum; a NaN counts as the extremum (like NumPy).
    P.argmax: CodegenRule("reduction", init=_lowest, arg=">"),
    P.argmin: CodegenRule("reduction", init=_highest, arg="<"),
}


def _call_rule(em: Emitter, op: Op, idx: Index) -> Elem:
    raise Unsupported("custom_vjp_call is inlined by the simplifier before code generation")


OTHER_RULES: dict[P.Primitive, CodegenRule] = {
    P.dot_general: CodegenRule("contraction"),
    P.scatter_add: CodegenRule("scatter"),
    P.custom_vjp_call: CodegenRule("call", elemental=_call_rule),
}


CODEGEN_RULES: dict[P.Primitive, CodegenRule] = {**ELEMENTWISE_RULES, **LAYOUT_RULES, **REDUCTION_RULES, **OTHER_RULES}


def calls_math(op: Op) -> bool:
    """Whether ``op``'s element calls a math-library function."""
    rule = CODEGEN_RULES.get(op.prim)
    return rule is not None and rule.math and op.output.dtype.is_float
