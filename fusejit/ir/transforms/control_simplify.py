"""Simplifying branches: a ``cond`` whose branches are a few cheap ops becomes ``select``s.

A ``cond`` runs one branch from a driver between kernels (``fusejit.runtime.control``),
which ends every fusion group at it. When every branch is a handful of ops that cannot
fail and cannot turn finite inputs into NaN or infinity (no division, logarithm, square
root, ...), computing all of them and selecting the results per element is cheaper and
fuses with its neighbours, as XLA lowers a cheap ``cond`` to ``select_n``. A ``cond``
whose index is a constant is replaced by its branch.
"""

from __future__ import annotations

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.control_flow import branch_index, select_branch
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.simplify import scalar_constant

# Ops that compute every element of their result from finite inputs without failing or
# leaving the finite numbers (for floats, overflow aside), so that running a branch
# whose result is not selected changes nothing (FUSEJIT_DEBUG_NANS included).
SAFE = frozenset({
    P.add, P.sub, P.mul, P.neg, P.abs, P.sign, P.max, P.min, P.select, P.convert, P.floor, P.ceil, P.round,
    P.eq, P.ne, P.lt, P.le, P.gt, P.ge, P.logical_and, P.logical_or, P.logical_not, P.stop_gradient,
    P.shift_left, P.shift_right_arithmetic,
    P.constant, P.iota, P.broadcast_in_dim, P.reshape, P.transpose, P.slice, P.pad, P.concatenate,
})  # fmt: skip
MAX_BRANCH_OPS = 8  # per branch: beyond this, running every branch costs more than a driver call


def _is_cheap(branch: Function) -> bool:
    return len(branch.ops) <= MAX_BRANCH_OPS and all(op.prim in SAFE for op in branch.ops)


def select_cheap_branches(fn: Function) -> Function:
    """Replaces each ``cond`` with a constant index by the branch it selects, and each
    ``cond`` whose branches are all cheap (``SAFE`` ops, at most ``MAX_BRANCH_OPS`` each)
    by all branches and a ``select`` per result. Guarantees: the same results as the
    ``cond`` for every index (clamped as ``cond`` clamps it); other ops unchanged."""
    if not any(op.prim is P.cond for op in fn.ops):
        return fn
    b = Builder()
    rename: dict[Value, Value] = {}
    producer = fn.producers()
    changed = False
    for op in fn.ops:
        inputs = tuple(rename.get(v, v) for v in op.inputs)
        branches = op.attrs.get("branches", ()) if op.prim is P.cond else ()
        index = scalar_constant(inputs[0], producer) if branches else None
        if not branches or (index is None and not all(map(_is_cheap, branches))):
            b.ops.append(op if inputs == op.inputs else Op(op.prim, inputs, op.outputs, op.attrs, op.loc))
            continue
        changed = True
        with b.at(op.loc):
            if index is not None:
                chosen = branches[branch_index(int(index), len(branches))]
                results = b.inline(chosen, inputs[1:])
            else:
                results = select_branch(b, inputs[0], [b.inline(br, inputs[1:]) for br in branches])
        rename.update(zip(op.outputs, results, strict=True))
    if not changed:
        return fn
    return Function(fn.name, fn.params, tuple(b.ops), tuple(rename.get(r, r) for r in fn.results))
