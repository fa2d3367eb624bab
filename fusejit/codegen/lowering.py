"""Lowering a fusion group to a target-neutral ``Kernel`` (see ``fusejit.codegen``'s
docstring for the contract of each group kind).

Every strategy builds one ``KernelBuilder``: group inputs and outputs become flat array
parameters (inputs first, in ``group.inputs`` order, then outputs), sizes and offsets
become int64 parameters, and the elements of every value come from the elemental
emitter. The result, ``LoweredKernel``, binds each parameter to what the runtime passes:
a value's buffer, scratch memory, a materialized constant, or an integer.
"""

from __future__ import annotations

import math
from typing import Any

from fusejit.codegen import conv, pool, scan
from fusejit.codegen.common import (
    Ctx,
    LoweredKernel,
    Scratch,
    Strategy,
    branch_support,
    common_support,
    describe_ops,
)
from fusejit.codegen.contraction import KERNEL_RULES as SCATTER_RULES
from fusejit.codegen.contraction import lower_matmul, matmul_support
from fusejit.codegen.kernel import Unsupported
from fusejit.codegen.loops import (
    horizontal_support,
    loop_outputs_space,
    loop_support,
    lower_horizontal,
    lower_loop,
)
from fusejit.codegen.reductions import lower_reduce, lower_row, reduce_support, row_support, row_totals
from fusejit.codegen.rules import ELEMENTWISE_RULES, LAYOUT_RULES, REDUCTION_RULES, CodegenRule
from fusejit.ir import primitives as P
from fusejit.ir.core import Op, Value
from fusejit.ir.primitives import OpKind
from fusejit.ir.transforms.fusion import FusionGroup, GroupKind

__all__ = ["CODEGEN_RULES", "STRATEGIES", "LoweredKernel", "Scratch", "Strategy", "describe_ops", "lower_on",
           "supports_on"]


def _inlined(em: object, op: Op, idx: object) -> None:
    raise Unsupported(f"{op.prim.name} is inlined by the optimization pipeline before code generation")


def _on_host(em: object, op: Op, idx: object) -> None:
    raise Unsupported(f"{op.prim.name} runs on the host between kernels (fusejit.runtime.host_ops)")


def _driven(em: object, op: Op, idx: object) -> None:
    raise Unsupported(f"{op.prim.name} runs its nested functions' kernels from a driver (fusejit.runtime.control)")


def host_support(group: FusionGroup) -> str | None:
    """A host group is one host op, which the runtime runs itself (nothing is lowered)."""
    if len(group.ops) != 1 or group.ops[0].prim.kind is not OpKind.HOST:
        return "a host group holds exactly one host op"
    return None


# The codegen rule of every primitive. A primitive with a kernel of its own brings its
# rule from its strategy module (one line here).
CODEGEN_RULES: dict[P.Primitive, CodegenRule] = {
    **ELEMENTWISE_RULES,
    **LAYOUT_RULES,
    **REDUCTION_RULES,
    P.dot_general: CodegenRule("contraction"),
    P.custom_vjp_call: CodegenRule("call", elemental=_inlined),
    P.checkpoint: CodegenRule("call", elemental=_inlined),
    **{prim: CodegenRule("call", elemental=_driven) for prim in P.CONTROL_FLOW},
    **{prim: CodegenRule("host", elemental=_on_host) for prim in P.COLLECTIVES},
    P.debug_callback: CodegenRule("host", elemental=_on_host),
    **{prim: CodegenRule("host", elemental=_on_host) for prim in P.LINALG},
    **SCATTER_RULES,
    **scan.KERNEL_RULES,
    **conv.KERNEL_RULES,
    **pool.KERNEL_RULES,
}


def _own_kernel(ctx_or_group: Ctx | FusionGroup) -> Op:
    group = ctx_or_group.group if isinstance(ctx_or_group, Ctx) else ctx_or_group
    owners = [op for op in group.ops if op.prim.kind is OpKind.KERNEL]
    if len(owners) > 1 and owners[0].prim in P.TAKES_EPILOGUE:
        owners = owners[:1]  # a conv's kernel also runs a pool on its result (its strategy checks)
    if len(owners) != 1:
        raise Unsupported("a kernel group holds one op with a kernel of its own")
    return owners[0]


def _kernel_support(group: FusionGroup) -> str | None:
    try:
        op = _own_kernel(group)
    except Unsupported as e:
        return str(e)
    return CODEGEN_RULES[op.prim].kernel.supports(group)


def _lower_kernel(ctx: Ctx) -> LoweredKernel:
    return ctx.target.rules[_own_kernel(ctx).prim].kernel.lower(ctx)


STRATEGIES: dict[GroupKind, Strategy] = {
    GroupKind.LOOP: Strategy(loop_support, lower_loop),
    GroupKind.HORIZONTAL: Strategy(horizontal_support, lower_horizontal),
    GroupKind.REDUCE: Strategy(reduce_support, lower_reduce),
    GroupKind.ROW: Strategy(row_support, lower_row),
    GroupKind.MATMUL: Strategy(matmul_support, lower_matmul),
    GroupKind.KERNEL: Strategy(_kernel_support, _lower_kernel),  # the op's rule's own strategy
}


# ---------------------------------------------------------------------------------------
# Dispatch (a ``Target`` calls these with itself)


def supports_on(target: Any, group: FusionGroup) -> str | None:
    """None if ``group``'s structure is one ``target``'s strategy for its kind lowers, else
    why not. Lowering may still refuse a supported group for its size after inlining
    (``MAX_KERNEL_SIZE``); the runtime then splits it."""
    if group.kind is GroupKind.HOST:
        return host_support(group)
    strategy = target.strategies.get(group.kind)
    if strategy is None:
        return f"the {target.name} target has no strategy for '{group.kind}' groups"
    return (common_support(group) or strategy.supports(group) or branch_support(group)
            or _parallel_part_support(target, group) or _parallel_epilogue_support(target, group)
            or _row_totals_support(target, group))


def _row_totals_support(target: Any, group: FusionGroup) -> str | None:
    """Why a row group that totals values over its rows (``reductions.row_totals``), and so
    runs them in order on one thread, must not be made, or None."""
    if group.kind is not GroupKind.ROW or not row_totals(group):
        return None
    total = max(math.prod(op.inputs[0].shape) for op in group.ops if op.prim.kind is OpKind.REDUCTION)
    if total >= target.parallel_threshold():
        return (f"a row kernel over {total} elements runs its rows on threads: it cannot also total "
                "values over its rows")
    return None


def _parallel_part_support(target: Any, group: FusionGroup) -> str | None:
    """Why a horizontal group must not hold a part whose loop runs on threads (the target's
    ``parallel_loops_alone``), or None."""
    if group.kind is not GroupKind.HORIZONTAL or not target.parallel_loops_alone or len(group.parts) < 2:
        return None
    threshold = target.parallel_threshold()
    for part in group.parts:
        total = math.prod(loop_outputs_space(part))
        if total >= threshold:
            return (f"a loop over {total} elements runs on threads: alone it runs in chunks, in a "
                    "horizontal kernel it would be a parfor (slower to compile)")
    return None


def _parallel_epilogue_support(target: Any, group: FusionGroup) -> str | None:
    """Why a matmul group must not hold an epilogue whose loop runs on threads (the
    target's ``parallel_loops_alone``), or None: after the GEMM the kernel is not one
    parallel loop, so it would be a parfor. Alone the epilogue is a loop kernel that runs
    in chunks. (W5's step at batch 1024, whose two epilogues reach the threshold: their
    matmul kernels compiled in 1.47 and 0.86 s as parfors.)"""
    if group.kind is not GroupKind.MATMUL or not target.parallel_loops_alone:
        return None
    (dot,) = [op for op in group.ops if op.prim is P.dot_general]
    total = math.prod(dot.output.shape)
    if len(group.ops) > 1 and total >= target.parallel_threshold():
        return (f"a matmul's epilogue over {total} elements runs on threads: alone it runs in chunks, in the "
                "matmul kernel it would be a parfor (slower to compile)")
    return None


def lower_on(target: Any, group: FusionGroup, *, parallel_threshold: int | None = None,
             inplace: dict[Value, Value] | None = None) -> LoweredKernel:
    """Lowers ``group`` for ``target``; raises ``Unsupported`` naming the reason if it cannot.

    ``inplace`` asks that each output share the array of an input (a donated buffer);
    only loop kernels accept it, and only for inputs they read at the written element.
    """
    reason = supports_on(target, group)
    if reason is not None:
        raise Unsupported(reason)
    if inplace and group.kind is not GroupKind.LOOP:
        raise Unsupported(f"a {group.kind} kernel cannot write its output over an input")
    threshold = target.parallel_threshold() if parallel_threshold is None else parallel_threshold
    ops: dict[Value, Op] = {v: op for op in group.ops for v in op.outputs}
    return target.strategies[group.kind].lower(Ctx(group, ops, target, threshold, dict(inplace or {})))
