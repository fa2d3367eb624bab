"""Transforms of ``checkpoint`` (rematerialization): its derivative rules, its batching
rule and the pass that inlines it (entered into the tables of ``autodiff`` and
``batching`` when they are imported).

*Reverse mode* (JAX's ``remat`` partial evaluation, written as a direct vjp rule; Chen et
al. 2016, "Training deep nets with sublinear memory cost"; Griewank & Walther,
"Evaluating Derivatives", 2nd ed. 2008, ch. 12): the forward sweep keeps the op as it
is, so the values the backward sweep reads from it are its operands only, not its
body's intermediates. The vjp rule emits a second ``checkpoint`` whose body is the
body's whole reverse-mode derivative (``reverse_mode``: the forward ops it needs, then
their backward ops) from the operands and the output cotangents to the operands'
cotangents: the body's forward ops run again in the backward sweep. That op is marked
``prevent_cse``: were it inlined before common-subexpression elimination, CSE would
merge the recomputed ops with the forward ones (same primitive, same operands) and the
backward sweep would read the forward intermediates again, keeping them alive between
the sweeps, which is what checkpointing exists to avoid. Its recomputed forward ops
carry ``bwd of`` source lines: they belong to the backward sweep.

Inside a scan body the same rule makes the scan's reverse mode stack, per iteration,
only the checkpointed call's operands (``autodiff_control``'s saved values).

*Forward mode* (JAX: the jvp of a remat is a remat of the jvp): a ``checkpoint``, with
the original's ``prevent_cse``, of the body's jvp returning only the tangents, so that
reverse mode applied later (``jacrev(jacfwd(f))``) rematerializes it too.

*Batching*: a ``checkpoint`` of the batched body.

*Inlining* (``inline_checkpoints``, run by the pipeline right after CSE): each
remaining ``checkpoint`` is replaced by its body, optimized by the whole pipeline first
(the body's own common subexpressions, a recomputed value and the backward op reading
it included, are merged there).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.autodiff import Ct, _define, _derived, jvp_function, reverse_mode
from fusejit.ir.transforms.batching import BATCH_RULES, Batched, _batch_nested
from fusejit.ir.transforms.dce import eliminate_dead_code
from fusejit.ir.transforms.inline import inline_where

__all__ = ["inline_checkpoints"]


# ---------------------------------------------------------------------------------------
# Reverse mode


@functools.lru_cache(maxsize=256)
def _backward_body(body: Function, wrt: tuple[int, ...], cot: tuple[int, ...]) -> Function:
    """``(body's params..., cotangents of the ``cot`` results...) -> cotangents of the
    ``wrt`` params``: the recomputation of the forward ops the gradients need, then the
    backward ops; every op's source line is marked ``bwd of``."""
    rm = reverse_mode(body, wrt, cotangents=cot, keep_outputs=False, name=f"{body.name}_remat")
    fn, n = rm.function, rm.num_forward_ops
    return fn.replace(ops=_derived(fn.ops[:n], "bwd") + fn.ops[n:])


def _checkpoint_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    body: Function = op.attrs["body"]
    wrt = tuple(
        i for i, (p, need) in enumerate(zip(body.params, needs, strict=True)) if need and p.dtype.is_float
    )
    cot = tuple(j for j, c in enumerate(cts) if c is not None)
    result: list[Ct] = [None] * len(op.inputs)
    if not wrt or not cot:
        return result
    grads = b.emit(
        P.checkpoint,
        op.inputs + tuple(cts[j] for j in cot),  # type: ignore[operator]
        {"body": _backward_body(body, wrt, cot), "prevent_cse": True},
    )
    for i, g in zip(wrt, grads, strict=True):
        result[i] = g
    return result


# ---------------------------------------------------------------------------------------
# Forward mode


@functools.lru_cache(maxsize=256)
def _tangent_body(body: Function, wrt: tuple[int, ...]) -> tuple[Function, tuple[int, ...]]:
    """(``(body's params..., tangents of the ``wrt`` params...) -> tangents of the float
    results``, the indices of those results)."""
    jf = jvp_function(body, wrt, name=f"{body.name}_jvp")
    n = len(body.results)
    floats = tuple(j for j, r in enumerate(body.results) if r.dtype.is_float)
    return eliminate_dead_code(jf.replace(results=tuple(jf.results[n + j] for j in floats))), floats


def _checkpoint_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    body: Function = op.attrs["body"]
    wrt = tuple(i for i, t in enumerate(tangents) if t is not None and body.params[i].dtype.is_float)
    out: list[Ct] = [None] * len(op.outputs)
    if not wrt:
        return out
    tangent_body, floats = _tangent_body(body, wrt)
    if not floats:
        return out
    tans = b.emit(
        P.checkpoint,
        op.inputs + tuple(tangents[i] for i in wrt),  # type: ignore[operator]
        {"body": tangent_body, "prevent_cse": op.attrs["prevent_cse"]},
    )
    for j, t in zip(floats, tans, strict=True):
        out[j] = t
    return out


_define(P.checkpoint, _checkpoint_vjp, _checkpoint_jvp)


# ---------------------------------------------------------------------------------------
# Batching


def _checkpoint_batch(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    body_b, out_batched = _batch_nested(op.attrs["body"], batched, size)
    outs = b.emit(P.checkpoint, args, {**op.attrs, "body": body_b})
    return list(zip(outs, out_batched, strict=True))


BATCH_RULES[P.checkpoint] = _checkpoint_batch


# ---------------------------------------------------------------------------------------
# Inlining


def _late_callee(op: Op) -> Function | None:
    return _optimized(op.attrs["body"]) if op.prim is P.checkpoint else None


@functools.lru_cache(maxsize=256)
def _optimized(body: Function) -> Function:
    from fusejit.ir.transforms.pipeline import optimize  # imported here: the pipeline imports this module

    return optimize(body)[0]


def inline_checkpoints(fn: Function) -> Function:
    """Replaces every ``checkpoint`` op by its body's ops, the body optimized by the whole
    pipeline first (see the module docstring). Run after common-subexpression
    elimination, so that a recomputation stays apart from the computation it repeats.

    Guarantees: the result has no ``checkpoint`` op; values keep their types; inlined ops
    keep their own source lines.
    """
    return inline_where(fn, _late_callee)
