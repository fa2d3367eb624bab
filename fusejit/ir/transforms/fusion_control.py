"""Fusion around control-flow ops: a loop or branch is a group of its own, and the ops
between two of them are fused as a function of their own, so no kernel spans a loop.
The nested functions are fused when they are compiled (``fusejit.runtime.control``)."""

from __future__ import annotations

from collections.abc import Callable

from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.fusion import FusedFunction, FusionGroup, GroupKind, Refusal, make_group


def sub_function(name: str, ops: list[Op], needed: set[Value]) -> Function:
    """``ops`` as a function of the values they read from outside, returning those of
    their outputs in ``needed``."""
    defined = {v for op in ops for v in op.outputs}
    params: dict[Value, None] = {}
    for op in ops:
        for v in op.inputs:
            if v not in defined:
                params.setdefault(v)
    results = tuple(v for op in ops for v in op.outputs if v in needed)
    return Function(name, tuple(params), tuple(ops), results)


def fuse_around_control_flow(fn: Function, fuse: Callable[[Function], FusedFunction]) -> FusedFunction:
    """``fn``'s kernels: each stretch of ops between control-flow ops partitioned by
    ``fuse`` on its own (fusion never crosses a loop), each control-flow op a group
    of its own."""
    users = fn.users()
    # What the ops from position k on read (or the function returns), at each k where a
    # stretch ends: one sweep, a set kept only there (not one per op: quadratic).
    ends = {k for k, op in enumerate(fn.ops) if op.prim in P.CONTROL_FLOW} | {len(fn.ops)}
    read_from: dict[int, set[Value]] = {}
    acc: set[Value] = set(fn.results)
    for k in range(len(fn.ops), -1, -1):
        if k in ends:
            read_from[k] = set(acc)
        if k:
            acc.update(fn.ops[k - 1].inputs)
    groups: list[FusionGroup] = []
    refusals: list[Refusal] = []
    stretch: list[Op] = []

    def flush(k: int) -> None:
        if stretch:
            part = fuse(sub_function(f"{fn.name}_part", stretch, read_from[k]))
            groups.extend(part.groups)
            refusals.extend(part.refusals)
            stretch.clear()

    for k, op in enumerate(fn.ops):
        if op.prim in P.CONTROL_FLOW:
            flush(k)
            groups.append(make_group([op], set(fn.results), users, GroupKind.LOOP))
        else:
            stretch.append(op)
    flush(len(fn.ops))
    return FusedFunction(fn, tuple(groups), tuple(refusals))
