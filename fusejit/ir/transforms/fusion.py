"""Fusion: partitioning a function's ops into kernels (fusion groups).

A ``FusionGroup`` is the unit the code generator lowers to one kernel: its ops run in
one loop nest, reading ``inputs`` from memory once and writing ``outputs`` once; every
other value stays in registers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusejit.ir.core import Function, Op, Value
from fusejit.ir.primitives import OpKind
from fusejit.ir.printer import print_function


@dataclass(frozen=True, slots=True, eq=False)
class FusionGroup:
    """Ops lowered as one kernel; ``inputs`` come from memory, ``outputs`` go to memory."""

    ops: tuple[Op, ...]
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    kind: str = "loop"

    @property
    def bytes_read(self) -> int:
        return sum(v.type.nbytes for v in self.inputs)

    @property
    def bytes_written(self) -> int:
        return sum(v.type.nbytes for v in self.outputs)


@dataclass(frozen=True, slots=True, eq=False)
class FusedFunction:
    """A function and its partition into kernels, in execution order."""

    function: Function
    groups: tuple[FusionGroup, ...]
    refusals: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        return print_fused(self)


def make_group(ops: list[Op], fn_results: set[Value], users: dict[Value, list[Op]], kind: str) -> FusionGroup:
    """The group of ``ops``: inputs defined outside it, outputs needed outside it."""
    inside = {v for op in ops for v in op.outputs}
    member = set(map(id, ops))
    inputs: list[Value] = []
    for op in ops:
        for v in op.inputs:
            if v not in inside and v not in inputs:
                inputs.append(v)
    outputs = [
        v
        for op in ops
        for v in op.outputs
        if v in fn_results or any(id(u) not in member for u in users.get(v, []))
    ]
    return FusionGroup(tuple(ops), tuple(inputs), tuple(outputs), kind)


def group_kind(op: Op) -> str:
    return {
        OpKind.ELEMENTWISE: "loop",
        OpKind.LAYOUT: "loop",
        OpKind.SOURCE: "loop",
        OpKind.REDUCTION: "reduce",
        OpKind.CONTRACTION: "matmul",
        OpKind.INDEXING: "indexing",
        OpKind.CALL: "call",
    }[op.prim.kind]


def one_op_per_group(fn: Function) -> FusedFunction:
    """The unfused partition: every op is its own kernel."""
    users = fn.users()
    results = set(fn.results)
    return FusedFunction(fn, tuple(make_group([op], results, users, group_kind(op)) for op in fn.ops))


def print_fused(fused: FusedFunction) -> str:
    """The function's text with each kernel's ops between ``kernel`` markers."""
    text = print_function(fused.function).splitlines()
    body = text[1 : 1 + len(fused.function.ops)]
    line_of = {id(op): line for op, line in zip(fused.function.ops, body, strict=True)}
    out = [text[0]]
    for k, group in enumerate(fused.groups):
        out.append(f"  // kernel {k}: {group.kind}, {len(group.ops)} ops, "
                   f"reads {group.bytes_read} B, writes {group.bytes_written} B")
        out.extend(line_of[id(op)] for op in group.ops)
    out.extend(text[1 + len(fused.function.ops) :])
    return "\n".join(out) + "\n"
