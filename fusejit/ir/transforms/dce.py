"""Dead-code elimination."""

from __future__ import annotations

import functools

from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Op, Value


def eliminate_dead_code(fn: Function) -> Function:
    """Removes ops none of whose outputs reach a result, except ops with an effect
    (``has_effect``: run-time callbacks). Keeps body order and params."""
    live: set[Value] = set(fn.results)
    kept = []
    for op in reversed(fn.ops):
        if any(v in live for v in op.outputs) or has_effect(op):
            kept.append(op)
            live.update(op.inputs)
    if len(kept) == len(fn.ops):
        return fn
    return fn.replace(ops=tuple(reversed(kept)))


def has_effect(op: Op) -> bool:
    """Whether ``op`` is, or calls a function (a loop body, a branch) holding, an op of
    ``P.EFFECTFUL``."""
    return op.prim in P.EFFECTFUL or any(map(_holds_effect, op.functions()))


@functools.lru_cache(maxsize=1024)
def _holds_effect(fn: Function) -> bool:
    # Functions are immutable and hashed by identity: DCE, fusion and hoisting ask again
    # and again about the same bodies, nested bodies included.
    return any(map(has_effect, fn.ops))
