"""Structured control flow: primitives whose ops hold nested IR functions (regions).

Declared here rather than in ``primitives.py`` (which registers them by importing this
module) because their rules are larger than the others'. Names and operand layouts are
JAX's (``jax.lax.scan_p``, ``while_p``, ``cond_p``):

* ``scan``: operands ``consts..., init..., xs...``; ``body(consts..., carry..., x...) ->
  (carry..., y...)`` where each ``x`` is one slice of an ``xs`` along its leading axis of
  length ``length``. Results: the final carry, then each ``y`` stacked along a new leading
  axis. ``reverse`` walks the slices from last to first (``ys[i]`` still belongs to
  ``xs[i]``).
* ``while_loop``: operands ``cond_consts..., body_consts..., init...``; ``cond(cond_consts...,
  carry...) -> bool[]`` and ``body(body_consts..., carry...) -> carry...``. Results: the
  carry once ``cond`` is false.
* ``cond``: operands ``index, operands...``; ``index`` an ``i32[]`` clamped to
  ``[0, len(branches) - 1]`` (as ``jax.lax.switch``); every branch takes the operands and
  returns results of the same types.

The reference implementations run the nested functions with the interpreter; compiled
backends run them as nested executables (``fusejit.runtime.control``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.dtypes import DType
from fusejit.ir.primitives import AttrKind, AttrSpec, IRTypeError, OpKind, Primitive, _register
from fusejit.ir.types import TensorType

if TYPE_CHECKING:
    from fusejit.ir.builder import Builder
    from fusejit.ir.core import Function, Value

__all__ = ["CONTROL_FLOW", "cond", "scan", "while_loop"]


def _types(values: Any) -> tuple[TensorType, ...]:
    return tuple(v.type for v in values)


def _show(types: tuple[TensorType, ...]) -> str:
    return "(" + ", ".join(map(str, types)) + ")"


def _check_count(prim: str, what: str, n: int, total: int) -> None:
    if n < 0 or n > total:
        raise IRTypeError(f"{prim}: {what}={n} is out of range for {total} operands")


# ---------------------------------------------------------------------------------------
# scan


def _scan_rule(
    in_types: tuple[TensorType, ...], body: Any, length: int, reverse: bool, num_consts: int, num_carry: int
) -> tuple[TensorType, ...]:
    _check_count("scan", "num_consts", num_consts, len(in_types))
    _check_count("scan", "num_carry", num_carry, len(in_types) - num_consts)
    if length < 0:
        raise IRTypeError(f"scan: length={length} is negative")
    consts = in_types[:num_consts]
    carry = in_types[num_consts : num_consts + num_carry]
    xs = in_types[num_consts + num_carry :]
    for k, t in enumerate(xs):
        if t.ndim == 0 or t.shape[0] != length:
            raise IRTypeError(f"scan: xs operand {k} of type {t} has no leading axis of length {length}")
    slices = tuple(t.with_shape(t.shape[1:]) for t in xs)
    params = _types(body.params)
    if params != consts + carry + slices:
        raise IRTypeError(
            f"scan: body @{body.name} takes {_show(params)}, but the operands give "
            f"consts {_show(consts)}, carry {_show(carry)} and slices {_show(slices)}"
        )
    results = _types(body.results)
    if results[:num_carry] != carry:
        raise IRTypeError(
            f"scan: body @{body.name} returns the carry as {_show(results[:num_carry])}, "
            f"but it enters as {_show(carry)}: the carry must keep its types"
        )
    ys = tuple(t.with_shape((length,) + t.shape) for t in results[num_carry:])
    return carry + ys


def _scan_impl(
    *operands: np.ndarray, body: Any, length: int, reverse: bool, num_consts: int, num_carry: int
) -> tuple[np.ndarray, ...]:
    from fusejit.ir.interpreter import run_function

    consts = operands[:num_consts]
    # Copies: a loop that runs zero times returns its carry as a new array, not an operand.
    carry = tuple(np.array(c, copy=True) for c in operands[num_consts : num_consts + num_carry])
    xs = operands[num_consts + num_carry :]
    y_types = _types(body.results[num_carry:])
    ys = [np.empty((length,) + t.shape, t.dtype.np) for t in y_types]
    for i in range(length - 1, -1, -1) if reverse else range(length):
        outs = run_function(body, *consts, *carry, *(x[i] for x in xs))
        carry = outs[:num_carry]
        for y, out in zip(ys, outs[num_carry:], strict=True):
            y[i] = out
    return (*carry, *ys)


scan = _register(
    Primitive(
        name="scan",
        kind=OpKind.CALL,
        arity=None,
        attrs={
            "body": AttrSpec(AttrKind.FUNCTION),
            "length": AttrSpec(AttrKind.INT),
            "reverse": AttrSpec(AttrKind.BOOL),
            "num_consts": AttrSpec(AttrKind.INT),
            "num_carry": AttrSpec(AttrKind.INT),
        },
        abstract_eval=_scan_rule,
        impl=_scan_impl,
    )
)


# ---------------------------------------------------------------------------------------
# while_loop


def _while_rule(
    in_types: tuple[TensorType, ...], cond: Any, body: Any, cond_nconsts: int, body_nconsts: int
) -> tuple[TensorType, ...]:
    _check_count("while_loop", "cond_nconsts", cond_nconsts, len(in_types))
    _check_count("while_loop", "body_nconsts", body_nconsts, len(in_types) - cond_nconsts)
    cond_consts = in_types[:cond_nconsts]
    body_consts = in_types[cond_nconsts : cond_nconsts + body_nconsts]
    carry = in_types[cond_nconsts + body_nconsts :]
    if _types(cond.params) != cond_consts + carry:
        raise IRTypeError(
            f"while_loop: cond @{cond.name} takes {_show(_types(cond.params))}, but the "
            f"operands give consts {_show(cond_consts)} and carry {_show(carry)}"
        )
    if _types(cond.results) != (TensorType(DType.bool, ()),):
        raise IRTypeError(
            f"while_loop: cond @{cond.name} must return one bool[], not {_show(_types(cond.results))}"
        )
    if _types(body.params) != body_consts + carry:
        raise IRTypeError(
            f"while_loop: body @{body.name} takes {_show(_types(body.params))}, but the "
            f"operands give consts {_show(body_consts)} and carry {_show(carry)}"
        )
    if _types(body.results) != carry:
        raise IRTypeError(
            f"while_loop: body @{body.name} returns the carry as {_show(_types(body.results))}, "
            f"but it enters as {_show(carry)}: the carry must keep its types"
        )
    return carry


def _while_impl(
    *operands: np.ndarray, cond: Any, body: Any, cond_nconsts: int, body_nconsts: int
) -> tuple[np.ndarray, ...]:
    from fusejit.ir.interpreter import run_function

    cond_consts = operands[:cond_nconsts]
    body_consts = operands[cond_nconsts : cond_nconsts + body_nconsts]
    carry = tuple(np.array(c, copy=True) for c in operands[cond_nconsts + body_nconsts :])
    while bool(run_function(cond, *cond_consts, *carry)[0]):
        carry = run_function(body, *body_consts, *carry)
    return carry


while_loop = _register(
    Primitive(
        name="while_loop",
        kind=OpKind.CALL,
        arity=None,
        attrs={
            "cond": AttrSpec(AttrKind.FUNCTION),
            "body": AttrSpec(AttrKind.FUNCTION),
            "cond_nconsts": AttrSpec(AttrKind.INT),
            "body_nconsts": AttrSpec(AttrKind.INT),
        },
        abstract_eval=_while_rule,
        impl=_while_impl,
    )
)


# ---------------------------------------------------------------------------------------
# cond (switch)


def _cond_rule(in_types: tuple[TensorType, ...], branches: tuple[Any, ...]) -> tuple[TensorType, ...]:
    if in_types[0] != TensorType(DType.i32, ()):
        raise IRTypeError(f"cond: the index must be i32[], not {in_types[0]}")
    if not branches:
        raise IRTypeError("cond: needs at least one branch")
    operands = in_types[1:]
    results = _types(branches[0].results)
    for k, branch in enumerate(branches):
        if _types(branch.params) != operands:
            raise IRTypeError(
                f"cond: branch {k} @{branch.name} takes {_show(_types(branch.params))}, "
                f"but the operands are {_show(operands)}"
            )
        if _types(branch.results) != results:
            raise IRTypeError(
                f"cond: branch {k} @{branch.name} returns {_show(_types(branch.results))}, "
                f"but branch 0 returns {_show(results)}: every branch must return the same types"
            )
    return results


def _cond_impl(index: np.ndarray, *operands: np.ndarray, branches: tuple[Any, ...]) -> tuple[np.ndarray, ...]:
    from fusejit.ir.interpreter import run_function

    return run_function(branches[branch_index(int(index), len(branches))], *operands)


def branch_index(index: int, n: int) -> int:
    """The branch ``cond`` runs for ``index``: clamped into range, as ``jax.lax.switch``."""
    return min(max(index, 0), n - 1)


def select_branch(b: Builder, index: Value, outs: Sequence[Sequence[Value]]) -> tuple[Value, ...]:
    """``cond`` as ``select``s over every branch's results ``outs[k]`` (already computed):
    per result, branch ``k``'s value where ``index``, clamped as ``branch_index`` clamps
    it, is ``k``. ``index`` is a scalar, or spans the results' leading axes (one index per
    example of a batch)."""
    n = len(outs)
    clamped = b.op(P.min, b.op(P.max, index, b.full_like(0, index)), b.full_like(n - 1, index))
    dims = tuple(range(index.type.ndim))
    results = []
    for j, first in enumerate(outs[0]):
        value = first
        for k in range(1, n):
            mask = b.broadcast(b.op(P.eq, clamped, b.full_like(k, clamped)), first.shape, dims)
            value = b.op(P.select, mask, outs[k][j], value)
        results.append(value)
    return tuple(results)


cond = _register(
    Primitive(
        name="cond",
        kind=OpKind.CALL,
        arity=None,
        attrs={"branches": AttrSpec(AttrKind.FUNCTIONS)},
        abstract_eval=_cond_rule,
        impl=_cond_impl,
        dtypes=frozenset({DType.i32}),
    )
)

CONTROL_FLOW = frozenset({scan, while_loop, cond})


def has_control_flow(fn: Function) -> bool:
    """Whether ``fn`` holds a loop or a branch (its own ops; nested functions are theirs)."""
    return any(op.prim in CONTROL_FLOW for op in fn.ops)
