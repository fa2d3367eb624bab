"""Lowering a fusion group to a target-neutral ``Kernel`` (see ``fusejit.codegen``'s
docstring for the contract of each group kind).

Every strategy builds one ``KernelBuilder``: group inputs and outputs become flat array
parameters (inputs first, in ``group.inputs`` order, then outputs), sizes and offsets
become int64 parameters, and the elements of every value come from the elemental
emitter. The result, ``LoweredKernel``, binds each parameter to what the runtime passes:
a value's buffer, scratch memory, a materialized constant, or an integer.
"""

from __future__ import annotations

from fusejit.codegen.common import Ctx, LoweredKernel, Scratch, default_parallel_threshold, describe_ops
from fusejit.codegen.contraction import lower_matmul, lower_scatter
from fusejit.codegen.kernel import Unsupported
from fusejit.codegen.loops import lower_horizontal, lower_loop
from fusejit.codegen.reductions import lower_reduce, lower_row
from fusejit.ir import primitives as P
from fusejit.ir.core import Op, Value
from fusejit.ir.primitives import OpKind
from fusejit.ir.transforms.fusion import FusionGroup

__all__ = ["LoweredKernel", "Scratch", "can_lower", "describe_ops", "lower_group"]


# ---------------------------------------------------------------------------------------
# Entry points


def lower_group(
    group: FusionGroup, *, parallel_threshold: int | None = None, inplace: dict[Value, Value] | None = None
) -> LoweredKernel:
    """Lowers ``group`` to a kernel; raises ``Unsupported`` naming the reason if it cannot.

    ``inplace`` asks that each output share the array of an input (a donated buffer);
    only loop kernels accept it, and only for inputs they read at the written element.
    """
    threshold = default_parallel_threshold() if parallel_threshold is None else parallel_threshold
    ops: dict[Value, Op] = {}
    for op in group.ops:
        for v in op.outputs:
            ops[v] = op
    ctx = Ctx(group, ops, threshold, dict(inplace or {}))
    _check_common(group, ops)
    kind = _classify(group)
    if ctx.inplace and kind not in ("loop",):
        raise Unsupported(f"a {kind} kernel cannot write its output over an input")
    lowering = {
        "loop": lower_loop,
        "horizontal": lower_horizontal,
        "reduce": lower_reduce,
        "row": lower_row,
        "matmul": lower_matmul,
        "scatter": lower_scatter,
    }[kind]
    return lowering(ctx)


def can_lower(group: FusionGroup) -> str | None:
    """None if ``group`` can be lowered, else the reason (for the fusion pass)."""
    try:
        lower_group(group)
    except Unsupported as e:
        return str(e) or "unsupported group"
    return None


def _check_common(group: FusionGroup, ops: dict[Value, Op]) -> None:
    if not group.ops:
        raise Unsupported("an empty group")
    if not group.outputs:
        raise Unsupported("a group without outputs")
    for v in group.outputs:
        if v not in ops:
            raise Unsupported("a group output is not defined by one of its ops")
    inputs = set(group.inputs)
    for op in group.ops:
        if op.prim.kind is OpKind.CALL:
            raise Unsupported(f"{op.prim.name} is inlined before code generation")
        for v in op.inputs:
            if v not in ops and v not in inputs:
                raise Unsupported(f"an operand of {op.prim.name} is neither a group input nor defined in the group")


def _classify(group: FusionGroup) -> str:
    """The lowering strategy for a group, checked against its declared ``kind``."""
    kinds = [op.prim.kind for op in group.ops]
    n_dot = sum(op.prim is P.dot_general for op in group.ops)
    n_scatter = sum(op.prim is P.scatter_add for op in group.ops)
    n_reduce = sum(k is OpKind.REDUCTION for k in kinds)
    declared = group.kind
    if declared == "horizontal":
        return "horizontal"
    if n_dot:
        if n_dot > 1 or n_scatter or n_reduce:
            raise Unsupported("a matmul kernel holds one dot_general and elementwise ops")
        return "matmul"
    if n_scatter:
        if n_scatter > 1 or n_reduce:
            raise Unsupported("an indexing kernel holds one scatter_add and its producers")
        return "scatter"
    if n_reduce:
        if declared == "row":
            return "row"
        if declared in ("reduce", "loop", "indexing"):
            return "reduce"
        raise Unsupported(f"a {declared} kernel cannot hold reductions")
    if declared in ("loop", "indexing", "row", "reduce"):
        return "loop"
    raise Unsupported(f"unknown group kind {declared!r}")


