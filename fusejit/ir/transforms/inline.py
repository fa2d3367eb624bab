"""Inlining of calls (custom_vjp_call, checkpoint) once differentiation no longer needs them."""

from __future__ import annotations

from collections.abc import Callable

from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Op, Value


def _early_callee(op: Op) -> Function | None:
    """The function a call inlined by ``inline_calls`` runs: a ``custom_vjp_call``'s
    ``fun``, or the body of a ``checkpoint`` that common-subexpression elimination may
    merge with the ops around it (one not marked ``prevent_cse``)."""
    if op.prim is P.custom_vjp_call:
        return op.attrs["fun"]
    if op.prim is P.checkpoint and not op.attrs["prevent_cse"]:
        return op.attrs["body"]
    return None


def inline_calls(fn: Function) -> Function:
    """Replaces every ``custom_vjp_call`` by the ops of its ``fun`` and every
    ``checkpoint`` not marked ``prevent_cse`` by the ops of its body (a backward sweep's
    recomputation keeps its ``checkpoint`` until ``fusejit.ir.transforms.checkpoint.
    inline_checkpoints``, after common-subexpression elimination).

    Guarantees: the result has no such calls; values keep their types; inlined ops keep
    their own source lines.
    """
    return inline_where(fn, _early_callee)


def inline_where(fn: Function, callee_of: Callable[[Op], Function | None]) -> Function:
    """``fn`` with each op for which ``callee_of`` returns a function replaced by that
    function's ops (inlined recursively by the same rule) applied to the op's operands;
    returns ``fn`` itself when there is none."""
    if not any(callee_of(op) is not None for op in fn.ops):
        return fn
    rename: dict[Value, Value] = {}
    ops: list[Op] = []

    def get(v: Value) -> Value:
        return rename.get(v, v)

    for op in fn.ops:
        callee = callee_of(op)
        if callee is None:
            if any(v in rename for v in op.inputs):
                op = Op(op.prim, tuple(get(v) for v in op.inputs), op.outputs, op.attrs, op.loc)
            ops.append(op)
            continue
        callee = inline_where(callee, callee_of)
        local: dict[Value, Value] = {p: get(a) for p, a in zip(callee.params, op.inputs, strict=True)}
        for inner in callee.ops:
            outs = tuple(Value(v.type) for v in inner.outputs)
            local.update(zip(inner.outputs, outs, strict=True))
            ops.append(Op(inner.prim, tuple(local[v] for v in inner.inputs), outs, inner.attrs, inner.loc))
        for out, res in zip(op.outputs, callee.results, strict=True):
            rename[out] = local[res]
    return fn.replace(ops=tuple(ops), results=tuple(get(r) for r in fn.results))
