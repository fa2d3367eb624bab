"""Collective primitives: values combined across the processes of a job (MPI ranks).

Declared here and registered in ``PRIMITIVES`` by ``primitives.py``. Names and
semantics are JAX's (``lax.psum``, ``pmax``, ``all_gather``, ``psum_scatter``,
``pbroadcast``, ``axis_index``) over one implicit axis: every process of the job. Each
process runs the same program on its own data; a collective's result is the same on
every rank (``psum_scatter``: each rank's block of it). All are ``OpKind.HOST``: the
runtime runs them between kernels on host buffers (``fusejit.runtime.host_ops``), and
the reference rules below, which the interpreter runs, do the same communication
(``fusejit.ir.communicator``: MPI under an MPI launcher, else the identity of one process).

* ``psum(x, overlap)``, ``pmax(x)``: elementwise sum / maximum over the ranks, ``x``'s
  type. ``overlap=true`` lets the runtime start the psum's MPI call as soon as its operand
  is computed and complete it just before its result is first read, running the kernels
  in between meanwhile (``overlapped``; the value is the same).
* ``all_gather(x, axis, size)``: the ranks' ``x`` concatenated along ``axis`` in rank
  order; ``size`` is the number of processes the shape was traced for.
* ``psum_scatter(x, axis, size)``: the sum over the ranks, split in ``size`` blocks along
  ``axis``; rank ``r`` gets block ``r`` (MPI's ``Reduce_scatter_block``). The transpose
  of ``all_gather``.
* ``pbroadcast(x, root)``: rank ``root``'s ``x`` on every rank (MPI's ``Bcast``).
* ``axis_index()``: this process's rank as an ``i32[]`` (used by ``pbroadcast``'s
  derivative).

Derivatives assume the data-parallel convention that the quantity differentiated is the
sum of every rank's (the transpose of ``psum`` is ``psum``; see ``fusejit.ir.transforms.
autodiff_collectives``).
"""

from __future__ import annotations

import numpy as np

from fusejit.ir import communicator
from fusejit.ir.core import Op
from fusejit.ir.dtypes import DType, from_numpy
from fusejit.ir.primitives import (
    NUMERIC,
    AttrKind,
    AttrSpec,
    IRTypeError,
    _host,
)
from fusejit.ir.types import TensorType

__all__ = ["COLLECTIVES", "all_gather", "axis_index", "overlapped", "pbroadcast", "pmax", "psum", "psum_scatter"]


def describe(prim: str, x: np.ndarray, **attrs: int) -> str:
    """What a collective call is, as the ranks compare it: ``psum f32[4,3]``."""
    key = (prim, x.dtype, x.shape, tuple(sorted(attrs.items())))
    text = _DESCRIPTIONS.get(key)
    if text is None:  # built once per kind of call: collectives run every step
        extra = "".join(f" {k}={v}" for k, v in key[3])
        text = _DESCRIPTIONS[key] = f"{prim} {TensorType(from_numpy(x.dtype), tuple(x.shape))}{extra}"
    return text


_DESCRIPTIONS: dict[tuple, str] = {}


# ---------------------------------------------------------------------------------------
# The work, on concrete arrays (also the runtime's host rules)


def allreduce_into(buf: np.ndarray, op: str, prim: str) -> np.ndarray:
    """``buf`` (contiguous, writable) combined over the ranks in place; returns it."""
    communicator.world().allreduce(buf, op, describe(prim, buf))
    return buf


def allreduce_start(buf: np.ndarray, op: str, prim: str) -> communicator.Pending:
    """Starts combining ``buf`` (contiguous, writable) over the ranks in place; it holds
    the result once the returned ``Pending`` is waited for, and must not be touched
    before. Its description says so (``psum f32[4] started=1``): MPI never matches a
    started Allreduce with a blocking one, so ranks whose programs differ only in
    ``overlap`` must fail the agreement check rather than MPI's own."""
    return communicator.world().allreduce_start(buf, op, describe(prim, buf, started=1))


def overlapped(op: Op) -> bool:
    """Whether ``op`` is a collective the runtime may start early and complete late (a
    ``psum`` with ``overlap=true``)."""
    return op.prim is psum and bool(op.attrs["overlap"])


def gather_along(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Every rank's ``x`` concatenated along ``axis`` in rank order."""
    w = communicator.check_size("all_gather", size)
    moved = np.ascontiguousarray(np.moveaxis(x, axis, 0))
    out = np.empty((size,) + moved.shape, x.dtype)
    w.allgather(moved, out, describe("all_gather", x, axis=axis, size=size))
    return np.ascontiguousarray(np.moveaxis(out.reshape((size * moved.shape[0],) + moved.shape[1:]), 0, axis))


def scatter_sum_along(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """This rank's block along ``axis`` of the sum of every rank's ``x``."""
    w = communicator.check_size("psum_scatter", size)
    moved = np.ascontiguousarray(np.moveaxis(x, axis, 0))
    out = np.empty((moved.shape[0] // size,) + moved.shape[1:], x.dtype)
    w.reduce_scatter(moved, out, describe("psum_scatter", x, axis=axis, size=size))
    return np.ascontiguousarray(np.moveaxis(out, 0, axis))


def broadcast_into(buf: np.ndarray, root: int) -> np.ndarray:
    """``buf`` (contiguous, writable) overwritten with rank ``root``'s; returns it."""
    w = communicator.world()
    if not 0 <= root < w.size:
        raise communicator.DistributedSetupError(f"pbroadcast: root={root} is not a rank of a job of {w.size}")
    w.bcast(buf, root, describe("pbroadcast", buf, root=root))
    return buf


def rank_value() -> np.ndarray:
    return np.array(communicator.world().rank, dtype=np.int32)


# ---------------------------------------------------------------------------------------
# Declarations


def _same_rule(in_types: tuple[TensorType, ...], **attrs: int) -> tuple[TensorType, ...]:
    return (in_types[0],)


def _axis_and_size(prim: str, x: TensorType, axis: int, size: int) -> None:
    if not 0 <= axis < x.ndim:
        raise IRTypeError(f"{prim}: axis={axis} is not an axis of a rank-{x.ndim} operand")
    if size < 1:
        raise IRTypeError(f"{prim}: size={size} must be a number of processes (at least 1)")


def _all_gather_rule(in_types: tuple[TensorType, ...], axis: int, size: int) -> tuple[TensorType, ...]:
    (x,) = in_types
    _axis_and_size("all_gather", x, axis, size)
    return (x.with_shape(x.shape[:axis] + (x.shape[axis] * size,) + x.shape[axis + 1:]),)


def _psum_scatter_rule(in_types: tuple[TensorType, ...], axis: int, size: int) -> tuple[TensorType, ...]:
    (x,) = in_types
    _axis_and_size("psum_scatter", x, axis, size)
    if x.shape[axis] % size:
        raise IRTypeError(f"psum_scatter: axis {axis} of {x.shape} does not split into {size} equal blocks")
    return (x.with_shape(x.shape[:axis] + (x.shape[axis] // size,) + x.shape[axis + 1:]),)


def _pbroadcast_rule(in_types: tuple[TensorType, ...], root: int) -> tuple[TensorType, ...]:
    if root < 0:
        raise IRTypeError(f"pbroadcast: root={root} is not a rank")
    return (in_types[0],)


_AXIS_SIZE = {"axis": AttrSpec(AttrKind.INT), "size": AttrSpec(AttrKind.INT)}

psum = _host("psum", 1, {"overlap": AttrSpec(AttrKind.BOOL)}, _same_rule,
             lambda x, overlap: (allreduce_into(np.array(x, copy=True), "sum", "psum"),), NUMERIC)
pmax = _host("pmax", 1, {}, _same_rule, lambda x: (allreduce_into(np.array(x, copy=True), "max", "pmax"),),
             NUMERIC)
all_gather = _host("all_gather", 1, _AXIS_SIZE, _all_gather_rule,
                   lambda x, axis, size: (gather_along(x, axis, size),))
psum_scatter = _host("psum_scatter", 1, _AXIS_SIZE, _psum_scatter_rule,
                     lambda x, axis, size: (scatter_sum_along(x, axis, size),), NUMERIC)
pbroadcast = _host("pbroadcast", 1, {"root": AttrSpec(AttrKind.INT)}, _pbroadcast_rule,
                   lambda x, root: (broadcast_into(np.array(x, copy=True), root),))
axis_index = _host("axis_index", 0, {}, lambda in_types: (TensorType(DType.i32, ()),), lambda: (rank_value(),))

COLLECTIVES = (psum, pmax, all_gather, psum_scatter, pbroadcast, axis_index)
