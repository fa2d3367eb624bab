"""Simplification passes: common subexpressions, constant folding, algebraic identities
and layout canonicalization.

None of these changes a result's value, NaN/inf behaviour or the sign of a zero, with
one documented exception: ``x ** 3`` and ``x ** 4`` become products (one or two extra
roundings; NumPy's own float32 ``powf`` loop is 20x slower than the multiplies).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.rewrite import rewrite

# ---------------------------------------------------------------------------------------
# Common-subexpression elimination


def _attr_identity(value: Any) -> Any:
    """A hashable key that tells apart attribute values equal under ``==`` but not the
    same (``0.0``/``-0.0``, ``1``/``1.0``/``True``) and makes NaN equal to itself."""
    if isinstance(value, tuple):
        return tuple(_attr_identity(v) for v in value)
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (bool, int)):
        return (type(value).__name__, value)
    if isinstance(value, Function):
        return ("function", id(value))
    return value


def eliminate_common_subexpressions(fn: Function) -> Function:
    """Merges ops that apply the same primitive with the same attributes to the same
    operands. Guarantees: at most one op per (primitive, operands, attributes)."""
    seen: dict[Any, Op] = {}

    def merge(op: Op, producer: dict[Value, Op], b: Builder) -> Value | None:
        key = (op.prim.name, tuple(map(id, op.inputs)), _attr_identity(tuple(sorted(op.attrs.items()))),
               op.output.type)
        first = seen.get(key)
        if first is None:
            seen[key] = op
            return None
        return first.output

    return rewrite(fn, [merge])


# ---------------------------------------------------------------------------------------
# Constant folding

_FOLD_SIZE = 1  # fold only single values: a larger folded constant would be baked into code


def scalar_constant(v: Value, producer: dict[Value, Op]) -> Any | None:
    """The Python scalar ``v`` holds everywhere, if it is a constant or a broadcast of one."""
    op = producer.get(v)
    while op is not None and op.prim in (P.broadcast_in_dim, P.reshape):
        op = producer.get(op.inputs[0])
    if op is None or op.prim is not P.constant:
        return None
    value = op.attrs["value"]
    if isinstance(value, tuple):
        return value[0] if len(set(map(_attr_identity, value))) == 1 and value else None
    return value


def _fold(op: Op, producer: dict[Value, Op], b: Builder) -> Value | None:
    """Evaluates scalar ops whose operands are all scalar constants."""
    # Host ops (collectives) run at run time only: their value depends on the other processes.
    if op.prim.kind in (P.OpKind.SOURCE, P.OpKind.CALL, P.OpKind.HOST) or op.output.type.size != _FOLD_SIZE:
        return None
    if op.prim is P.stop_gradient or not op.inputs:
        return None
    values = [scalar_constant(v, producer) for v in op.inputs]
    if any(v is None for v in values):
        return None
    arrays = [np.full(v.shape, x, dtype=v.dtype.np) for v, x in zip(op.inputs, values, strict=True)]
    with np.errstate(all="ignore"):
        (out,) = op.prim.impl(*arrays, **op.attrs)
    out = np.asarray(out, dtype=op.output.dtype.np)
    return b.reshape(b.constant(out.reshape(-1)[0].item(), op.output.dtype), op.output.shape)


def fold_constants(fn: Function) -> Function:
    """Replaces scalar ops of constants by their value (computed with the op's NumPy rule,
    so the result is exactly what the op would compute)."""
    return rewrite(fn, [_fold])


# ---------------------------------------------------------------------------------------
# Algebraic identities


def _is(v: Value, producer: dict[Value, Op], value: float) -> bool:
    c = scalar_constant(v, producer)
    return c is not None and not isinstance(c, bool) and c == value and math.copysign(1, c) == math.copysign(1, value)


def _identities(op: Op, producer: dict[Value, Op], b: Builder) -> Value | None:
    p = op.prim
    x = op.inputs[0] if op.inputs else None
    y = op.inputs[1] if len(op.inputs) > 1 else None
    if p is P.mul:
        if _is(y, producer, 1):
            return x
        if _is(x, producer, 1):
            return y
    if p is P.add:
        # x + 0 is x only for integers (-0.0 + 0.0 is +0.0); x + -0.0 is x for floats.
        zero = 0 if x.dtype.is_int else -0.0
        if _is(y, producer, zero):
            return x
        if _is(x, producer, zero):
            return y
    if p is P.sub and (_is(y, producer, 0) or (x.dtype.is_float and _is(y, producer, -0.0))):
        return x
    if p is P.div and _is(y, producer, 1):
        return x
    # A division by a power of two stays a division, although multiplying by the reciprocal
    # would be exact: kernels take their float constants as data (codegen/constants.py),
    # and a mean over the batch must be the same kernel for a batch of 32 and one of 48.
    if p is P.pow:
        c = scalar_constant(y, producer)
        if c == 1:
            return x
        if c == -1:
            return b.op(P.div, b.full_like(1.0, x), x)
        if c in (2, 3, 4):
            sq = b.op(P.mul, x, x)
            return sq if c == 2 else b.op(P.mul, sq, x) if c == 3 else b.op(P.mul, sq, sq)
    if p is P.neg and (inner := producer.get(x)) is not None and inner.prim is P.neg:
        return inner.inputs[0]
    if p is P.select and op.inputs[1] is op.inputs[2]:
        return op.inputs[1]
    if p is P.select and _is(op.inputs[1], producer, 1) and _is(op.inputs[2], producer, 0):
        return b.convert(x, op.output.dtype)  # a one-hot: True is 1, False is 0
    if p is P.select and (fill := scalar_constant(op.inputs[2], producer)) is not None:
        filled = _filled_spread(op.inputs[0], op.inputs[1], fill, producer, b)
        if filled is not None:
            return filled
    if p is P.stop_gradient:
        return x  # differentiation happened at trace time; from here on it is the identity
    if p is P.convert and op.attrs["dtype"] == x.dtype:
        return x
    if p is P.scatter_add and x.shape[op.attrs["axis"]] == 1:
        return _one_hot_scatter(op, b)
    return None


def _filled_spread(mask: Value, data: Value, fill: Any, producer: dict[Value, Op], b: Builder) -> Value | None:
    """``select(mask, data, fill)`` without the select, when ``mask`` is ``True`` placed by
    the same pads (reshapes, slices) that place ``data``, with ``False`` around: ``data``
    with its pads filled with ``fill``. This is what a write into a fresh constant buffer
    (``buf = np.zeros(n); buf[2:5] = v``) traces to (``fusejit.tracer.inplace``): the
    buffer disappears and the written values are padded with the buffer's value."""
    if scalar_constant(mask, producer) is True:
        return data
    m, d = producer.get(mask), producer.get(data)
    if m is None or d is None or m.prim is not d.prim or m.prim not in (P.pad, P.reshape, P.slice):
        return None
    if m.prim is P.pad:
        if m.attrs["value"] is not False or (m.attrs["lo"], m.attrs["hi"]) != (d.attrs["lo"], d.attrs["hi"]):
            return None
    elif dict(m.attrs) != dict(d.attrs):
        return None
    inner = _filled_spread(m.inputs[0], d.inputs[0], fill, producer, b)
    if inner is None:
        return None
    attrs = dict(d.attrs)
    if m.prim is P.pad:
        attrs["value"] = P.constant_value(fill, data.dtype)
    return b.op(d.prim, inner, **attrs)


def _one_hot_scatter(op: Op, b: Builder) -> Value:
    """``scatter_add`` of one update per lane along ``axis`` (the gradient of picking one
    element per row, as in cross-entropy) as ``select(iota == index, update, 0)``: an
    elementwise op that fuses, instead of a serial scatter."""
    upd, idx = op.inputs
    axis, out = op.attrs["axis"], op.output
    n = out.shape[axis]
    # The same index normalization as scatter_add: negative counts from the end, clamp.
    zero, size = b.full_like(0, idx), b.full_like(n, idx)
    idx = b.op(P.select, b.op(P.lt, idx, zero), b.op(P.add, idx, size), idx)
    idx = b.op(P.min, b.op(P.max, idx, zero), b.full_like(max(n - 1, 0), idx))
    dims = tuple(range(out.type.ndim))
    lanes = b.op(P.iota, shape=out.shape, dimension=axis, dtype=idx.dtype)
    hit = b.op(P.eq, lanes, b.op(P.broadcast_in_dim, b.reshape(idx, _drop(idx.shape, axis)),
                                  shape=out.shape, dims=_drop(dims, axis)))
    spread = b.op(P.broadcast_in_dim, b.reshape(upd, _drop(upd.shape, axis)),
                  shape=out.shape, dims=_drop(dims, axis))
    return b.op(P.select, hit, spread, b.full_like(0, spread))


def _drop(t: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return t[:axis] + t[axis + 1 :]


def _layout(op: Op, producer: dict[Value, Op], b: Builder) -> Value | None:
    p = op.prim
    x = op.inputs[0] if op.inputs else None
    inner = producer.get(x) if x is not None else None
    if p is P.reshape:
        if op.attrs["shape"] == x.shape:
            return x
        if inner is not None and inner.prim is P.reshape:
            return b.reshape(inner.inputs[0], op.attrs["shape"])
    if p is P.transpose:
        perm = op.attrs["perm"]
        if perm == tuple(range(len(perm))):
            return x
        if inner is not None and inner.prim is P.transpose:
            inner_perm = inner.attrs["perm"]
            composed = tuple(inner_perm[i] for i in perm)
            src = inner.inputs[0]
            return src if composed == tuple(range(len(composed))) else b.op(P.transpose, src, perm=composed)
    if p is P.broadcast_in_dim:
        shape, dims = op.attrs["shape"], op.attrs["dims"]
        if shape == x.shape and dims == tuple(range(len(shape))):
            return x
        if inner is not None and inner.prim is P.broadcast_in_dim:
            # Broadcasting a broadcast: each source axis lands where its image does.
            composed = tuple(dims[d] for d in inner.attrs["dims"])
            return b.op(P.broadcast_in_dim, inner.inputs[0], shape=shape, dims=composed)
        if inner is not None and inner.prim is P.reshape:
            # keepdims-style reshapes that only insert unit axes fold into the broadcast.
            positions = _unit_axis_insertion(inner.inputs[0].shape, x.shape)
            if positions is not None:
                composed = tuple(dims[p] for p in positions)
                return b.op(P.broadcast_in_dim, inner.inputs[0], shape=shape, dims=composed)
    if p is P.dot_general:
        return _absorb_transposes(op, producer, b)
    return None


def _unit_axis_insertion(src: tuple[int, ...], dst: tuple[int, ...]) -> list[int] | None:
    """Where each axis of ``src`` sits in ``dst`` if ``dst`` is ``src`` with unit axes
    inserted (and unit axes of ``src`` matched or dropped), else None."""
    positions: list[int] = []
    j = 0
    for n in src:
        while j < len(dst) and dst[j] != n:
            if dst[j] != 1:
                return None
            j += 1
        if j == len(dst):
            return None
        positions.append(j)
        j += 1
    if any(d != 1 for d in dst[j:]):
        return None
    return positions


def _absorb_transposes(op: Op, producer: dict[Value, Op], b: Builder) -> Value | None:
    """``dot_general(transpose(a), b)`` reads ``a`` directly with renumbered axes, when
    the transpose keeps the order of the free axes (the output order stays the same)."""
    (lc, rc), (lb, rb) = op.attrs["contract"], op.attrs["batch"]
    operands = list(op.inputs)
    dims = [[lc, lb], [rc, rb]]
    changed = False
    for side in (0, 1):
        t = producer.get(operands[side])
        if t is None or t.prim is not P.transpose:
            continue
        perm = t.attrs["perm"]
        used = dims[side][0] + dims[side][1]
        free = [perm[i] for i in range(len(perm)) if i not in used]
        if free != sorted(free):
            continue
        dims[side] = [tuple(perm[i] for i in dims[side][0]), tuple(perm[i] for i in dims[side][1])]
        operands[side] = t.inputs[0]
        changed = True
    if not changed:
        return None
    return b.op(
        P.dot_general, *operands,
        contract=(dims[0][0], dims[1][0]), batch=(dims[0][1], dims[1][1]),
    )


def simplify_algebra(fn: Function) -> Function:
    """Removes identities (``x*1``, ``x-0``, ``--x``, ``x/1``, same-dtype converts,
    ``stop_gradient``, selects over a constant of values placed by pads), strength-reduces small integer powers and divisions by powers of
    two; never changes NaN/inf results or signs of zero."""
    return rewrite(fn, [_identities])


def canonicalize_layout(fn: Function) -> Function:
    """Collapses chains of reshapes, transposes and broadcasts, drops identity layout ops,
    and folds transposes of matmul operands into the dot_general's axis numbers, so that
    the remaining transposes are index arithmetic inside fused loops."""
    return rewrite(fn, [_layout])


def fold_transposed_matmuls(fn: Function) -> Function:
    """``transpose(dot_general(a, b))`` that swaps the two operands' free axes becomes
    ``dot_general(b, a)``, when the transpose is the product's only reader: the product is
    then written in the layout its consumer reads (a weight gradient in the weight's own
    layout), and no strided transpose is left for the loop that uses it."""
    users = fn.users()
    results = set(fn.results)
    producer = fn.producers()
    swaps: dict[Value, Op] = {}
    for op in fn.ops:
        if op.prim is not P.transpose:
            continue
        dot = producer.get(op.inputs[0])
        if dot is None or dot.prim is not P.dot_general or dot.attrs["batch"] != ((), ()):
            continue
        if len(users.get(dot.output, [])) != 1 or dot.output in results:
            continue
        lhs, rhs = dot.inputs
        (lc, rc), _ = dot.attrs["contract"], dot.attrs["batch"]
        n_lhs = lhs.type.ndim - len(lc)
        n_rhs = rhs.type.ndim - len(rc)
        swapped = tuple(range(n_lhs, n_lhs + n_rhs)) + tuple(range(n_lhs))
        if op.attrs["perm"] == swapped:
            swaps[op.output] = dot
    if not swaps:
        return fn

    def swap(op: Op, producer: dict[Value, Op], b: Builder) -> Value | None:
        dot = swaps.get(op.output)
        if dot is None:
            return None
        (lc, rc), batch = dot.attrs["contract"], dot.attrs["batch"]
        return b.op(P.dot_general, dot.inputs[1], dot.inputs[0], contract=(rc, lc), batch=batch)

    return rewrite(fn, [swap])
