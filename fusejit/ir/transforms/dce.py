"""Dead-code elimination."""

from __future__ import annotations

from fusejit.ir.core import Function, Value


def eliminate_dead_code(fn: Function) -> Function:
    """Removes ops none of whose outputs reach a result. Keeps body order and params."""
    live: set[Value] = set(fn.results)
    kept = []
    for op in reversed(fn.ops):
        if any(v in live for v in op.outputs):
            kept.append(op)
            live.update(op.inputs)
    if len(kept) == len(fn.ops):
        return fn
    return fn.replace(ops=tuple(reversed(kept)))
