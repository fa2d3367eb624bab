"""The derivative rules of the collectives (``fusejit.ir.collectives``), entered into
``autodiff``'s tables (imported by it last).

The convention is data parallelism's (JAX's for ``psum`` over a named axis): the
quantity differentiated is the sum of every rank's, so a value every rank received from
a collective sends its cotangent back through the transposed collective:

* ``psum`` is linear and its own transpose; ``all_gather`` and ``psum_scatter`` are each
  other's transposes (JAX: the transpose of ``all_gather`` is ``psum_scatter``);
* ``pbroadcast``'s operand only matters on the root: its cotangent is the ``psum`` of the
  cotangents there and zero elsewhere (``axis_index`` says which rank this is);
* ``pmax`` passes the summed cotangent to the ranks holding the maximum, split evenly
  between tied ranks (as ``reduce_max`` splits between tied elements).

Forward mode applies each (linear) collective to the tangents; ``pmax``'s tangent is the
mean of the tangents of the tied maxima.
"""

from __future__ import annotations

from collections.abc import Sequence

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Op, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.transforms.autodiff import Ct, _define, zero_jvp, zero_vjp


def _apply(prim: P.Primitive, transposed: P.Primitive):  # noqa: ANN202 - a pair of rules
    """A linear collective: its jvp is itself, its vjp the ``transposed`` collective."""

    def vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
        (g,) = cts
        return (b.op(transposed, g, **op.attrs) if g is not None else None,)

    def jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
        (t,) = tangents
        return (b.op(prim, t, **op.attrs) if t is not None else None,)

    return vjp, jvp


def _on_root(b: Builder, op: Op, g: Value) -> Value:
    """``g`` on rank ``root`` of ``op`` and zeros on the others."""
    here = b.op(P.eq, b.op(P.axis_index), b.constant(op.attrs["root"], DType.i32))
    return b.op(P.select, b.broadcast(here, g.shape), g, b.full_like(0, g))


def _pbroadcast_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    return (_on_root(b, op, b.op(P.psum, g, overlap=False)) if g is not None else None,)


def _maxima(b: Builder, op: Op) -> tuple[Value, Value]:
    """Where this rank holds the maximum (1 or 0, ``x``'s dtype) and how many ranks do."""
    (x,), z = op.inputs, op.output
    mine = b.op(P.convert, b.op(P.eq, x, z), dtype=x.dtype)
    return mine, b.op(P.psum, mine, overlap=False)


def _pmax_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    if g is None:
        return (None,)
    mine, ties = _maxima(b, op)
    return (b.op(P.div, b.op(P.mul, b.op(P.psum, g, overlap=False), mine), ties),)


def _pmax_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (t,) = tangents
    if t is None:
        return (None,)
    mine, ties = _maxima(b, op)
    return (b.op(P.div, b.op(P.psum, b.op(P.mul, t, mine), overlap=False), ties),)


_define(P.psum, *_apply(P.psum, P.psum))
_define(P.all_gather, *_apply(P.all_gather, P.psum_scatter))
_define(P.psum_scatter, *_apply(P.psum_scatter, P.all_gather))
_define(P.pbroadcast, _pbroadcast_vjp, _apply(P.pbroadcast, P.pbroadcast)[1])
_define(P.pmax, _pmax_vjp, _pmax_jvp)
_define(P.axis_index, zero_vjp, zero_jvp)
