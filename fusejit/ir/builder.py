"""Building IR: append ops to a body, inferring each output's type from the primitive."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Op, SourceLoc, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.primitives import IRTypeError, Primitive


class Builder:
    """Collects ops in order. ``loc`` is stamped on every op emitted while it is set."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.loc: SourceLoc | None = None

    def emit(self, prim: Primitive, inputs: tuple[Value, ...], attrs: dict[str, Any],
             loc: SourceLoc | None = None) -> tuple[Value, ...]:
        """Appends ``prim(inputs, **attrs)`` and returns its outputs.

        Raises ``IRTypeError`` naming the op (and the source line when known) if the
        operands' types are not accepted.
        """
        loc = loc or self.loc
        try:
            types = prim.infer(tuple(v.type for v in inputs), attrs)
        except IRTypeError as e:
            where = f" (at {loc})" if loc else ""
            raise IRTypeError(f"{e}{where}") from None
        outputs = tuple(Value(t) for t in types)
        self.ops.append(Op(prim, tuple(inputs), outputs, attrs, loc))
        return outputs

    def op(self, prim: Primitive, *inputs: Value, **attrs: Any) -> Value:
        """Appends a single-output op and returns its output."""
        (out,) = self.emit(prim, inputs, attrs)
        return out

    @contextmanager
    def at(self, loc: SourceLoc | None) -> Iterator[None]:
        """Stamps ``loc`` on the ops emitted inside the block."""
        saved, self.loc = self.loc, loc if loc is not None else self.loc
        try:
            yield
        finally:
            self.loc = saved

    def function(self, name: str, params: tuple[Value, ...], results: tuple[Value, ...]) -> Function:
        return Function(name, tuple(params), tuple(self.ops), tuple(results))

    # Helpers that transforms use often -------------------------------------------------

    def constant(self, value: Any, dtype: DType, shape: tuple[int, ...] = ()) -> Value:
        return self.op(P.constant, value=P.constant_value(value, dtype), shape=tuple(shape), dtype=dtype)

    def inline(self, fn: Function, args: Sequence[Value]) -> tuple[Value, ...]:
        """Appends ``fn``'s ops applied to ``args``; returns its results. Inner ops keep
        their own source lines."""
        env: dict[Value, Value] = dict(zip(fn.params, args, strict=True))
        for op in fn.ops:
            outs = self.emit(op.prim, tuple(env[v] for v in op.inputs), dict(op.attrs), op.loc)
            env.update(zip(op.outputs, outs, strict=True))
        return tuple(env[r] for r in fn.results)

    def full_like(self, value: Any, like: Value) -> Value:
        """A constant of ``like``'s type, as a broadcast scalar (cheap to fuse)."""
        scalar = self.constant(value, like.dtype)
        return self.broadcast(scalar, like.shape)

    def broadcast(self, x: Value, shape: tuple[int, ...], dims: tuple[int, ...] | None = None) -> Value:
        """``x`` broadcast to ``shape``; by default its axes align with the trailing axes."""
        if dims is None:
            dims = tuple(range(len(shape) - x.type.ndim, len(shape)))
        if x.shape == tuple(shape) and dims == tuple(range(len(shape))):
            return x
        return self.op(P.broadcast_in_dim, x, shape=tuple(shape), dims=tuple(dims))

    def reshape(self, x: Value, shape: tuple[int, ...]) -> Value:
        return x if x.shape == tuple(shape) else self.op(P.reshape, x, shape=tuple(shape))

    def convert(self, x: Value, dtype: DType) -> Value:
        return x if x.dtype == dtype else self.op(P.convert, x, dtype=dtype)

    def sum_to(self, x: Value, shape: tuple[int, ...]) -> Value:
        """Sums ``x`` over the axes that broadcasting ``shape`` to ``x.shape`` added or
        stretched: the transpose of a NumPy-style broadcast."""
        lead = x.type.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(
            lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1
        )
        if axes:
            x = self.op(P.reduce_sum, x, axes=axes)
        return self.reshape(x, shape)
