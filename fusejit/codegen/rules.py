"""The codegen rules of primitives, keyed by ``Primitive``.

A rule is a ``CodegenRule``; what it provides depends on the primitive's role:

* ``elemental``: elementwise, layout, source and gather ops. ``elemental(em, op, idx)``
  returns the element ``idx`` of the op's output (see ``fusejit.codegen.elemental``):
  elementwise rules combine their operands' elements at the same index, layout rules
  rewrite the index, sources compute it from the index.
* ``reduction``: ``init(dtype)`` (the identity), ``combine(acc, x, dtype)`` (the
  expression that folds element ``x`` into accumulator ``acc`` of ``dtype``) and
  ``blocked`` for sums, which accumulate in blocks and float32 totals in float64
  (``fusejit.codegen.reductions``); argmax/argmin are ``arg`` reductions that also track
  an index.
* ``contraction`` (dot_general): lowered by the matmul strategy.
* ``kernel`` (scatter_add, cumsum): ``kernel`` is the primitive's own ``Strategy``; its
  rule sits beside it (``contraction.KERNEL_RULES``, ``scan.KERNEL_RULES``).
* ``call`` (custom_vjp_call, checkpoint): never reaches a backend (the pipeline inlines it).

This module holds the elemental and reduction rules; ``fusejit.codegen.lowering``
assembles ``CODEGEN_RULES`` from them and the strategy modules' rules.

Rules build typed expressions (``fusejit.codegen.exprs``); how a target spells them (int32
wraparound, typed constants, the math library) is its printer's business.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.codegen.elemental import Emitter, Index, delinearize, linearize
from fusejit.codegen.exprs import (
    INDEX,
    ONE,
    ZERO,
    Binary,
    BinaryOp,
    Cast,
    Expr,
    Lit,
    MathCall,
    Unary,
    UnaryOp,
    add,
    binary,
    const_value,
    maximum,
    minimum,
    mul,
    select,
    sub,
)
from fusejit.codegen.kernel import KernelBuilder
from fusejit.ir import primitives as P
from fusejit.ir.core import Op
from fusejit.ir.dtypes import DType


@dataclass(frozen=True, slots=True)
class CodegenRule:
    role: str  # "elemental" | "reduction" | "contraction" | "kernel" | "call" | "host" (run by the runtime)
    elemental: Callable[[Emitter, Op, Index], Expr] | None = None
    init: Callable[[DType], Any] | None = None
    combine: Callable[[Expr, Expr, DType], Expr] | None = None
    arg: BinaryOp | None = None  # for argmax/argmin: the comparison that replaces the best
    blocked: bool = False  # a float sum: summed in blocks, float32 totals in float64
    math: bool = False  # calls the math library on float operands (a structural fact for fusion)
    kernel: Any = None  # the primitive's own ``Strategy`` (role "kernel")


def _fold(em: Emitter, op: Op, args: list[Expr]) -> Expr:
    """Evaluates an op on constant operands with its NumPy rule (exact IR semantics)."""
    arrays = [np.asarray(const_value(a), dtype=v.dtype.np) for a, v in zip(args, op.inputs, strict=True)]
    with np.errstate(all="ignore"):
        (out,) = op.prim.impl(*arrays, **op.attrs)
    return em.const(np.asarray(out).item(), op.output.dtype)


# ---------------------------------------------------------------------------------------
# Elementwise

ExprFn = Callable[[Emitter, Op, list[Expr]], Expr]


def _elementwise(expr_fn: ExprFn, math: bool = False) -> CodegenRule:
    def elemental(em: Emitter, op: Op, idx: Index) -> Expr:
        args = [em.at(v, idx) for v in op.inputs]
        if all(const_value(a) is not None for a in args):
            return _fold(em, op, args)
        return em.let(expr_fn(em, op, args))

    return CodegenRule("elemental", elemental=elemental, math=math)


def _math(name: str) -> CodegenRule:
    return _elementwise(lambda em, op, a: MathCall(name, tuple(a), op.output.dtype), math=True)


def _unary(uop: UnaryOp) -> CodegenRule:
    return _elementwise(lambda em, op, a: Unary(uop, a[0], op.output.dtype))


def _binary(bop: BinaryOp) -> CodegenRule:
    return _elementwise(lambda em, op, a: Binary(bop, a[0], a[1], op.output.dtype))


def _sign(em: Emitter, op: Op, a: list[Expr]) -> Expr:
    dt = op.output.dtype
    x = a[0]
    one, minus, zero = (em.const(v, dt) for v in (1, -1, 0))
    inner = zero
    if dt.is_float:  # np.sign: nan stays nan, -0.0 gives +0.0
        inner = select(binary(BinaryOp.NE, x, x), x, zero)
    return select(binary(BinaryOp.GT, x, zero), one, select(binary(BinaryOp.LT, x, zero), minus, inner))


def _extremum(name: str, int_op: BinaryOp) -> ExprFn:
    def expr(em: Emitter, op: Op, a: list[Expr]) -> Expr:
        dt = op.output.dtype
        if dt.is_float:  # NaN-propagating like np.maximum, and vectorizable
            return MathCall(name, (a[0], a[1]), dt)
        return Binary(int_op, a[0], a[1], dt)

    return expr


def _pow(em: Emitter, op: Op, a: list[Expr]) -> Expr:
    x, y = a
    dt = op.output.dtype
    exponent = const_value(y)
    if exponent is not None:  # strength reduction: NumPy's own x**3 is a scalar powf loop
        if exponent == 1:
            return x
        if exponent == 2:
            return mul(x, x)
        if exponent == 3:
            return mul(em.let(mul(x, x)), x)
        if exponent == -1:
            return Binary(BinaryOp.DIV, em.const(1, dt), x, dt)
        if exponent == 0.5:  # what NumPy's scalar-exponent fast path computes
            return MathCall("sqrt", (x,), dt)
    return MathCall("pow", (x, y), dt)


def _divmod(name: str, int_op: BinaryOp) -> ExprFn:
    """floor_divide/remainder: the math library's NumPy algorithm for floats; integer
    ``FLOORDIV``/``MOD`` already round down (and give 0 for a zero divisor, as NumPy)."""

    def expr(em: Emitter, op: Op, a: list[Expr]) -> Expr:
        dt = op.output.dtype
        if dt.is_float:
            return MathCall(name, (a[0], a[1]), dt)
        return Binary(int_op, a[0], a[1], dt)

    return expr


def _shift(left: bool) -> ExprFn:
    """shift_left/shift_right_arithmetic with NumPy's results for every count: a count
    outside [0, bit width) shifts every bit out (0, or the sign for a right shift).
    ``SHL``/``SHR`` by such a count are undefined (poison in LLVM, the count taken modulo
    the width on x86), so the operator only ever sees a count in range: the left shift's
    count masked to the width (its result then discarded by a select), the right shift's
    count replaced by width - 1 (which gives the sign)."""

    def expr(em: Emitter, op: Op, a: list[Expr]) -> Expr:
        x, count = a
        dt = op.output.dtype
        width = dt.itemsize * 8
        op_ = BinaryOp.SHL if left else BinaryOp.SHR
        c = const_value(count)
        if c is not None:  # a constant count (x << 2): the plain operator, or a constant
            if 0 <= c < width:
                return Binary(op_, x, count, dt)
            if left:
                return em.const(0, dt)
            return Binary(BinaryOp.SHR, x, em.const(width - 1, dt), dt)
        in_range = em.let(binary(BinaryOp.AND, binary(BinaryOp.GE, count, em.const(0, dt)),
                                 binary(BinaryOp.LT, count, em.const(width, dt))))
        if left:
            masked = Binary(BinaryOp.AND, count, em.const(width - 1, dt), dt)
            return select(in_range, Binary(BinaryOp.SHL, x, masked, dt), em.const(0, dt))
        return Binary(BinaryOp.SHR, x, select(in_range, count, em.const(width - 1, dt)), dt)

    return expr


def _select(em: Emitter, op: Op, idx: Index) -> Expr:
    pred = em.at(op.inputs[0], idx)
    if const_value(pred) is not None:
        return em.at(op.inputs[1] if const_value(pred) else op.inputs[2], idx)
    t, f = em.at(op.inputs[1], idx), em.at(op.inputs[2], idx)
    if const_value(t) is not None and const_value(f) is not None and const_value(t) == const_value(f):
        return t
    return em.let(select(pred, t, f))


def _threefry(em: Emitter, op: Op, a: list[Expr]) -> Expr:
    """Threefry-2x32 unrolled into int64 statements on 32-bit words (the cipher itself is
    ``P.threefry2x32_words``, shared with the NumPy rule); ``let`` shares the statements
    between the ops that take word 0 and word 1 of one counter."""
    i64 = DType.i64
    mask = em.const(0xFFFFFFFF, i64)

    def word(x: Expr) -> Expr:
        return em.let(Binary(BinaryOp.AND, x, mask, i64))

    def rotl(x: Expr, r: int) -> Expr:
        high = word(Binary(BinaryOp.SHL, x, em.const(r, i64), i64))
        return em.let(Binary(BinaryOp.OR, high, Binary(BinaryOp.SHR, x, em.const(32 - r, i64), i64), i64))

    words = P.threefry2x32_words(
        *(word(x) for x in a),
        add=lambda x, y: word(Binary(BinaryOp.ADD, x, y, i64)),
        rotl=rotl,
        xor=lambda x, y: em.let(Binary(BinaryOp.XOR, x, y, i64)),
        const=lambda v: em.const(v, i64),
    )
    return words[op.attrs["word"]]


def _convert(em: Emitter, op: Op, a: list[Expr]) -> Expr:
    src, dst = op.inputs[0].dtype, op.output.dtype
    if src == dst:
        return a[0]
    if dst.is_bool:
        return binary(BinaryOp.NE, a[0], em.const(0, src))
    return Cast(a[0], dst)


ELEMENTWISE_RULES: dict[P.Primitive, CodegenRule] = {
    P.neg: _unary(UnaryOp.NEG),
    P.abs: _unary(UnaryOp.ABS),
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
    P.floor: _unary(UnaryOp.FLOOR),
    P.ceil: _unary(UnaryOp.CEIL),
    P.round: _unary(UnaryOp.RINT),
    P.stop_gradient: _elementwise(lambda em, op, a: a[0]),
    P.logical_not: _unary(UnaryOp.NOT),
    P.add: _binary(BinaryOp.ADD),
    P.sub: _binary(BinaryOp.SUB),
    P.mul: _binary(BinaryOp.MUL),
    P.div: _binary(BinaryOp.DIV),
    P.pow: _elementwise(_pow, math=True),
    P.floor_divide: _elementwise(_divmod("floor_divide", BinaryOp.FLOORDIV), math=True),
    P.remainder: _elementwise(_divmod("remainder", BinaryOp.MOD), math=True),
    P.max: _elementwise(_extremum("maximum", BinaryOp.MAX), math=True),
    P.min: _elementwise(_extremum("minimum", BinaryOp.MIN), math=True),
    P.atan2: _math("atan2"),
    P.eq: _binary(BinaryOp.EQ),
    P.ne: _binary(BinaryOp.NE),
    P.lt: _binary(BinaryOp.LT),
    P.le: _binary(BinaryOp.LE),
    P.gt: _binary(BinaryOp.GT),
    P.ge: _binary(BinaryOp.GE),
    P.logical_and: _binary(BinaryOp.AND),
    P.logical_or: _binary(BinaryOp.OR),
    P.shift_left: _elementwise(_shift(left=True)),
    P.shift_right_arithmetic: _elementwise(_shift(left=False)),
    P.select: CodegenRule("elemental", elemental=_select),
    P.convert: _elementwise(_convert),
    P.threefry2x32: _elementwise(_threefry),
}


# ---------------------------------------------------------------------------------------
# Layout: each rule maps the output index to an operand index.


def _broadcast(em: Emitter, op: Op, idx: Index) -> Expr:
    (x,) = op.inputs
    out_shape, dims = op.attrs["shape"], op.attrs["dims"]
    xs = x.shape
    if all(n == 1 for n in xs):
        return em.at(x, Index((ONE,) * len(xs), (ZERO,) * len(xs), ZERO))
    xshape = tuple(ONE if xs[i] == 1 else idx.shape[d] for i, d in enumerate(dims))
    # Only unit axes inserted: the same linear index addresses the operand.
    if all(out_shape[d] == 1 for d in range(len(out_shape)) if d not in dims) and all(
        xs[i] == out_shape[d] for i, d in enumerate(dims)
    ):
        xdims = None if idx.dims is None else tuple(idx.dims[d] for d in dims)
        return em.at(x, Index(xshape, xdims, idx.flat))
    out_dims = em.dims(idx)
    xdims = tuple(ZERO if xs[i] == 1 else out_dims[d] for i, d in enumerate(dims))
    return em.at(x, Index(xshape, xdims))


def _reshape(em: Emitter, op: Op, idx: Index) -> Expr:
    (x,) = op.inputs
    out = op.output
    xs, os_ = x.shape, out.shape
    x_nonunit = [k for k, n in enumerate(xs) if n != 1]
    o_nonunit = [k for k, n in enumerate(os_) if n != 1]
    if [xs[k] for k in x_nonunit] == [os_[k] for k in o_nonunit]:
        # Only unit axes inserted or removed: axes correspond one to one.
        xshape: list[Expr] = [ONE] * len(xs)
        xdims: list[Expr] | None = None if idx.dims is None else [ZERO] * len(xs)
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
    xdims: list[Expr] = [ZERO] * len(xs)
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


def _transpose(em: Emitter, op: Op, idx: Index) -> Expr:
    (x,) = op.inputs
    perm = op.attrs["perm"]
    xshape: list[Expr] = [ONE] * len(perm)
    for k, p in enumerate(perm):
        xshape[p] = idx.shape[k]
    moved = [p for p in perm if x.shape[p] != 1]
    if moved == sorted(moved):  # only unit axes move: the linear index is unchanged
        xdims = None
        if idx.dims is not None:
            xdims = [ZERO] * len(perm)
            for k, p in enumerate(perm):
                xdims[p] = idx.dims[k]
        return em.at(x, Index(tuple(xshape), None if xdims is None else tuple(xdims), idx.flat))
    out_dims = em.dims(idx)
    xdims = [ZERO] * len(perm)
    for k, p in enumerate(perm):
        xdims[p] = out_dims[k]
    return em.at(x, Index(tuple(xshape), tuple(xdims)))


def _slice(em: Emitter, op: Op, idx: Index) -> Expr:
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
        term = out_dims[k] if st == 1 else em.b.let(mul(out_dims[k], Lit(st)))
        off = em.offset(("slice", id(op), k), s)
        xdims.append(term if off == ZERO else em.b.let(add(off, term)))
    return em.at(x, Index(tuple(xshape), tuple(xdims)))


def _pad(em: Emitter, op: Op, idx: Index) -> Expr:
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
        # x's index j = i - lo is inside when i >= lo and not i >= lo + n; a test the
        # loop's range decides is not emitted (``Emitter.at_least``).
        inside = em.at_least(out_dims[k], lo[k]) if lo[k] else True
        past = em.at_least(out_dims[k], lo[k] + x.shape[k]) if hi[k] else False
        if inside is False or past is True:
            return pad_value
        n = em.size(x, k)
        off = em.offset(("pad", id(op), k), lo[k])
        j = out_dims[k] if off == ZERO else em.b.let(sub(out_dims[k], off))
        if inside is None:
            conds.append(binary(BinaryOp.GE, j, ZERO))
        if past is None:
            conds.append(binary(BinaryOp.LT, j, n))
        xdims.append(j)
        xshape.append(n)
    inner = Index(tuple(xshape), tuple(xdims))
    if not conds:
        return em.at(x, inner)
    cond = em.b.let(functools.reduce(lambda p, q: binary(BinaryOp.AND, p, q), conds))
    return em.b.branch(cond, lambda: em.at(x, inner), lambda: pad_value)


def _concatenate(em: Emitter, op: Op, idx: Index) -> Expr:
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
    offsets: list[Expr] = [ZERO]
    starts = [0]  # the offsets' values
    for x in parts[:-1]:
        n = em.size(x, axis)
        offsets.append(n if offsets[-1] == ZERO else em.b.let(add(offsets[-1], n)))
        starts.append(starts[-1] + x.shape[axis])

    def piece(k: int) -> Expr:
        x = parts[k]
        j = a if offsets[k] == ZERO else em.b.let(sub(a, offsets[k]))
        dims = out_dims[:axis] + (j,) + out_dims[axis + 1 :]
        shape = idx.shape[:axis] + (em.size(x, axis),) + idx.shape[axis + 1 :]
        return em.at(x, Index(shape, dims))

    def chain(k: int) -> Expr:
        if k == len(parts) - 1:
            return piece(k)
        later = em.at_least(a, starts[k + 1])  # decided where the loop's range allows
        if later is not None:
            return chain(k + 1) if later else piece(k)
        return em.b.branch(em.b.let(binary(BinaryOp.LT, a, offsets[k + 1])), lambda: piece(k), lambda: chain(k + 1))

    return chain(0)


def _gather(em: Emitter, op: Op, idx: Index) -> Expr:
    x, ind = op.inputs
    axis = op.attrs["axis"]
    n = em.size(x, axis)
    j = clamped_index(em.b, em.at(ind, idx), n)
    if len(x.shape) == 1:
        return em.at(x, Index((n,), (j,), j))
    out_dims = em.dims(idx)
    dims = out_dims[:axis] + (j,) + out_dims[axis + 1 :]
    shape = idx.shape[:axis] + (n,) + idx.shape[axis + 1 :]
    return em.at(x, Index(shape, dims))


def clamped_index(b: KernelBuilder, raw: Expr, n: Expr) -> Expr:
    """An index operand as a position along an axis of size ``n``: a negative one counts
    from the end, one out of range is clamped (JAX's default gather/scatter mode)."""
    j = b.let(Cast(raw, INDEX))
    j = b.let(select(binary(BinaryOp.LT, j, ZERO), add(j, n), j))
    return b.let(minimum(maximum(j, ZERO), sub(n, ONE))) if n != ONE else ZERO


def _iota(em: Emitter, op: Op, idx: Index) -> Expr:
    d = em.dims(idx)[op.attrs["dimension"]]
    dt = op.output.dtype
    if d == ZERO:
        return em.const(0, dt)
    return em.let(Cast(d, dt))


def _constant(em: Emitter, op: Op, idx: Index) -> Expr:
    value = op.attrs["value"]
    dt = op.output.dtype
    if not isinstance(value, tuple):
        return em.const(value, dt)
    if len(value) == 1:
        return em.const(value[0], dt)
    return em.b.load(em.const_array(op), em.flat(idx))


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


def _sum_combine(acc: Expr, x: Expr, dtype: DType) -> Expr:
    if dtype.is_float:  # the one reassociable add: the sum vectorizes, nothing else changes
        return MathCall("accumulate", (acc, x), dtype)
    return Binary(BinaryOp.ADD, acc, x, dtype)


def _extremum_combine(name: str, int_op: BinaryOp) -> Callable[[Expr, Expr, DType], Expr]:
    def combine(acc: Expr, x: Expr, dtype: DType) -> Expr:
        if dtype.is_float:
            return MathCall(name, (acc, x), dtype)
        return Binary(int_op, acc, x, dtype)

    return combine


REDUCTION_RULES: dict[P.Primitive, CodegenRule] = {
    P.reduce_sum: CodegenRule("reduction", init=lambda dt: 0, combine=_sum_combine, blocked=True),
    P.reduce_max: CodegenRule("reduction", init=_lowest, combine=_extremum_combine("maximum", BinaryOp.MAX)),
    P.reduce_min: CodegenRule("reduction", init=_highest, combine=_extremum_combine("minimum", BinaryOp.MIN)),
    P.reduce_prod: CodegenRule("reduction", init=lambda dt: 1, combine=lambda acc, x, dt: Binary(BinaryOp.MUL, acc, x, dt)),
    # First index of the extremum; a NaN counts as the extremum (like NumPy).
    P.argmax: CodegenRule("reduction", init=_lowest, arg=BinaryOp.GT),
    P.argmin: CodegenRule("reduction", init=_highest, arg=BinaryOp.LT),
}


def calls_math(op: Op) -> bool:
    """Whether ``op``'s element calls a math-library function."""
    rule = ELEMENTWISE_RULES.get(op.prim)
    return rule is not None and rule.math and op.output.dtype.is_float
