"""Batching rules of structured control flow (entered into ``batching.BATCH_RULES``).

*scan*: the body is batched; a carry component is batched when its initial value is or
the body makes it depend on the example (a fixpoint, as for derivatives). A batched
``xs`` has its example axis moved behind the scanned axis, so each slice is a batched
value with the example axis first; stacked outputs move it back to the front.

*cond* with an unbatched index: the branches are batched (an output is batched if any
branch makes it so). With a batched index every branch runs on the whole batch and each
example takes its own branch's outputs (``select``), as JAX does.

*while_loop* with an unbatched predicate: the body is batched, the carry as for scan.
With a batched predicate the loop runs while any example's predicate holds, and an
example whose predicate is false keeps its carry (``select``), as JAX does.
"""

from __future__ import annotations

from collections.abc import Sequence

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.control_flow import select_branch
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.batching import (
    BATCH_RULES,
    Batched,
    _batch_body,
    _batch_nested,
    _broadcast_batch,
    _move_axis,
)


def _fixpoint(body: Function, flags: list[bool], first_carry: int, num_carry: int,
              size: int) -> tuple[list[bool], list[bool]]:
    """``flags`` (per body param) with every carry component the body batches made
    batched, until nothing changes; and which of the body's results are then batched."""
    while True:
        _, out = _batch_nested(body, flags, size)
        grow = [k for k in range(num_carry) if out[k] and not flags[first_carry + k]]
        if not grow:
            return flags, out
        for k in grow:
            flags[first_carry + k] = True


def _as(b: Builder, x: Value, batched: bool, want: bool, size: int) -> Value:
    return _broadcast_batch(b, x, size) if want and not batched else x


def _scan_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    body: Function = op.attrs["body"]
    nc, nk = op.attrs["num_consts"], op.attrs["num_carry"]
    flags, out = _fixpoint(body, list(batched), nc, nk, size)
    y_flags = out[nk:]
    body_b, _ = _batch_nested(body, flags, size, flags[nc : nc + nk] + y_flags)
    operands = list(args[:nc])
    operands += [
        _as(b, x, bx, want, size)
        for x, bx, want in zip(args[nc : nc + nk], batched[nc : nc + nk], flags[nc : nc + nk], strict=True)
    ]
    operands += [
        _move_axis(b, x, 0, 1) if bx else x for x, bx in zip(args[nc + nk :], batched[nc + nk :], strict=True)
    ]
    outs = b.emit(P.scan, tuple(operands), {**op.attrs, "body": body_b})
    results: list[Batched] = list(zip(outs[:nk], flags[nc : nc + nk], strict=True))
    results += [(_move_axis(b, y, 1, 0) if by else y, by) for y, by in zip(outs[nk:], y_flags, strict=True)]
    return results


def _cond_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    branches: tuple[Function, ...] = op.attrs["branches"]
    flags = list(batched[1:])
    if not batched[0]:
        outs_b = [_batch_nested(br, flags, size)[1] for br in branches]
        want = [any(col) for col in zip(*outs_b, strict=True)]
        new = tuple(_batch_nested(br, flags, size, want)[0] for br in branches)
        return list(zip(b.emit(P.cond, args, {"branches": new}), want, strict=True))
    # A batched index: every branch on the whole batch, each example selecting its own.
    per_branch = [
        [_as(b, *out, True, size) for out in _batch_body(b, br, list(zip(args[1:], flags, strict=True)), size)]
        for br in branches
    ]
    return [(chosen, True) for chosen in select_branch(b, args[0], per_branch)]


def _while_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    cond, body = op.attrs["cond"], op.attrs["body"]
    cn, bn = op.attrs["cond_nconsts"], op.attrs["body_nconsts"]
    nk = len(op.outputs)
    carry_flags = list(batched[cn + bn :])
    while True:
        body_flags, _ = _fixpoint(body, list(batched[cn : cn + bn]) + carry_flags, bn, nk, size)
        carry_flags = body_flags[bn:]
        cond_flags = list(batched[:cn]) + carry_flags
        cond_b, (pred_batched,) = _batch_nested(cond, cond_flags, size)
        if not pred_batched or all(carry_flags):
            break
        carry_flags = [True] * nk  # a per-example predicate: every example keeps its own carry
    carry = [
        _as(b, x, bx, want, size)
        for x, bx, want in zip(args[cn + bn :], batched[cn + bn :], carry_flags, strict=True)
    ]
    body_b, _ = _batch_nested(body, list(batched[cn : cn + bn]) + carry_flags, size, carry_flags)
    if pred_batched:
        cond_b, body_b = _any_cond(cond_b), _masked_body(cond_b, body_b, cn, bn)
        operands = (*args[:cn], *args[:cn], *args[cn : cn + bn], *carry)
        attrs = {"cond": cond_b, "body": body_b, "cond_nconsts": cn, "body_nconsts": cn + bn}
    else:
        operands = (*args[: cn + bn], *carry)
        attrs = {"cond": cond_b, "body": body_b, "cond_nconsts": cn, "body_nconsts": bn}
    return list(zip(b.emit(P.while_loop, operands, attrs), carry_flags, strict=True))


def _any_cond(cond_b: Function) -> Function:
    """The batched predicate reduced to "any example's holds"."""
    b = Builder()
    params = [Value(p.type, p.name) for p in cond_b.params]
    (pred,) = b.inline(cond_b, params)
    count = b.op(P.reduce_max, b.convert(pred, P.DType.i32), axes=(0,))
    return b.function(cond_b.name, tuple(params), (b.op(P.gt, count, b.constant(0, P.DType.i32)),))


def _masked_body(cond_b: Function, body_b: Function, cn: int, bn: int) -> Function:
    """The batched body applied only to the examples whose predicate holds; its consts
    are the cond's consts, then the body's."""
    b = Builder()
    cond_consts = [Value(p.type, p.name) for p in cond_b.params[:cn]]
    params = cond_consts + [Value(p.type, p.name) for p in body_b.params]
    carry = params[cn + bn :]
    (pred,) = b.inline(cond_b, cond_consts + carry)
    new = b.inline(body_b, params[cn:])
    results = [
        b.op(P.select, b.broadcast(pred, c.shape, (0,)), n, c) for n, c in zip(new, carry, strict=True)
    ]
    return b.function(body_b.name, tuple(params), tuple(results))


BATCH_RULES[P.scan] = _scan_rule
BATCH_RULES[P.cond] = _cond_rule
BATCH_RULES[P.while_loop] = _while_rule
