"""A forward rewrite driver: one walk over the body applying local rules.

A rule looks at one op (with its operands already rewritten) and returns either
``None`` (keep the op) or the ``Value`` that replaces the op's single output, emitting any
new ops it needs through the builder. Later uses are renamed to the replacement, so a
rule sees the rewritten producers of its operands and chains collapse in one walk.
"""

from __future__ import annotations

from collections.abc import Callable

from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Op, Value

Rule = Callable[[Op, dict[Value, Op], Builder], Value | None]


def rewrite(fn: Function, rules: list[Rule]) -> Function:
    """Applies ``rules`` to every op of ``fn`` in order; returns a new function (or ``fn``
    itself when nothing changed). Dead ops are left for dead-code elimination."""
    b = Builder()
    rename: dict[Value, Value] = {}
    producer: dict[Value, Op] = {}
    changed = False
    for op in fn.ops:
        inputs = tuple(rename.get(v, v) for v in op.inputs)
        if inputs != op.inputs:
            op = Op(op.prim, inputs, op.outputs, op.attrs, op.loc)
            changed = True
        replacement = None
        start = len(b.ops)
        if len(op.outputs) == 1:
            with b.at(op.loc):
                for rule in rules:
                    replacement = rule(op, producer, b)
                    if replacement is not None:
                        break
        if replacement is None:
            b.ops.append(op)
            for v in op.outputs:
                producer[v] = op
            continue
        changed = True
        rename[op.output] = replacement
        for new_op in b.ops[start:]:
            for v in new_op.outputs:
                producer[v] = new_op
    if not changed:
        return fn
    return Function(fn.name, fn.params, tuple(b.ops), tuple(rename.get(r, r) for r in fn.results))
