"""Naming a group of ops by the ``fj.named_scope`` paths they were traced in.

A kernel is easier to find by its layers than by its line numbers: kernel headers, the
fusion report, ``Compiled.kernels`` and the profile show ``conv1/conv2d + relu bwd`` for
a kernel holding ops of those scopes (``bwd``: ops of a reverse sweep, ``jvp``: of
forward mode).
"""

from __future__ import annotations

from collections.abc import Iterable

from fusejit.ir import primitives as P
from fusejit.ir.core import Op

MAX_LABELS = 4  # a kernel of more scopes names the first ones and counts the rest


def op_scope_label(op: Op) -> str:
    """``conv1/conv2d``, ``conv1/conv2d bwd`` or ``conv1/conv2d jvp``; ``""`` without a scope."""
    loc = op.loc
    if loc is None or not loc.scope:
        return ""
    if loc.is_backward:
        return f"{loc.scope} bwd"
    return f"{loc.scope} jvp" if loc.derived else loc.scope


def scope_label(ops: Iterable[Op]) -> str:
    """The distinct scope labels of ``ops`` in order of first appearance, joined by ``+``
    (``conv1/conv2d + relu + conv1/conv2d bwd``; at most ``MAX_LABELS``, then ``+N
    more``); ``""`` if no op has a scope. Constants, iotas and cheap layout ops
    (``P.RECOMPUTABLE``) count only in a kernel of nothing else: common subexpression
    elimination shares one constant among scopes, and fusion copies it into every kernel
    that reads it."""
    ops = list(ops)
    named = [op for op in ops if op.prim not in P.RECOMPUTABLE] or ops
    labels = [label for label in dict.fromkeys(map(op_scope_label, named)) if label]
    shown = " + ".join(labels[:MAX_LABELS])
    return shown + (f" +{len(labels) - MAX_LABELS} more" if len(labels) > MAX_LABELS else "")
