"""Inlining of calls (custom_vjp_call) once differentiation no longer needs them."""

from __future__ import annotations

from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Op, Value


def inline_calls(fn: Function) -> Function:
    """Replaces every ``custom_vjp_call`` by the ops of its ``fun``.

    Guarantees: the result has no call ops; values keep their types; inlined ops keep
    their own source lines.
    """
    if not any(op.prim is P.custom_vjp_call for op in fn.ops):
        return fn
    rename: dict[Value, Value] = {}
    ops: list[Op] = []

    def get(v: Value) -> Value:
        return rename.get(v, v)

    for op in fn.ops:
        if op.prim is not P.custom_vjp_call:
            if any(v in rename for v in op.inputs):
                op = Op(op.prim, tuple(get(v) for v in op.inputs), op.outputs, op.attrs, op.loc)
            ops.append(op)
            continue
        callee = inline_calls(op.attrs["fun"])
        local: dict[Value, Value] = {p: get(a) for p, a in zip(callee.params, op.inputs, strict=True)}
        for inner in callee.ops:
            outs = tuple(Value(v.type) for v in inner.outputs)
            local.update(zip(inner.outputs, outs, strict=True))
            ops.append(Op(inner.prim, tuple(local[v] for v in inner.inputs), outs, inner.attrs, inner.loc))
        for out, res in zip(op.outputs, callee.results, strict=True):
            rename[out] = local[res]
    return fn.replace(ops=tuple(ops), results=tuple(get(r) for r in fn.results))
