"""The elemental emitter: the value of one element of an IR value, as scalar statements.

XLA's idea: a fused kernel never materializes its intermediate values. To write element
``idx`` of a group output, the emitter asks the producing op's rule for that element; an
elementwise rule asks for the same element of its operands, a layout rule rewrites the
index (broadcast drops or zeroes dimensions, transpose permutes them, reshape keeps the
linear index and maps per-axis indices group by group so that only split axes divide,
slice is affine, pad and concatenate branch), and a group input is read from memory. The recursion bottoms out at loads, constants and loop indices.

Pad and concatenate branch per element only where they must: an index that is a root
loop's (``fusejit.codegen.common.root_index``) runs over a range known when lowering,
and a piece whose bounds that range does not cross is read without a test. Where a
range does cross one, the bound is recorded (``split_points``) and a loop kernel is
emitted again with that loop split there (a branch in the loop stops LLVM's
vectorizer: W10's GRU backward kernel, [64,384] with four pad tests, took 104 us a
call with them, 24 us split).

An ``Index`` names an element by its per-dimension indices (``dims``), its row-major linear
index (``flat``) or both, together with the size expressions of the value's shape. A loop
kernel first tries to run with ``flat`` alone (one loop over all elements); a rule that
needs ``dims`` raises ``NeedDims`` and the kernel is emitted again as a loop nest.

Results are cached per (value, index) in the builder's scopes, so a value used twice at
the same element is computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fusejit.codegen.exprs import ONE, ZERO, Const, Expr, Lit, Var, add, floordiv, mod, mul
from fusejit.codegen.kernel import KernelBuilder, Unsupported
from fusejit.ir.core import Op, Value
from fusejit.ir.dtypes import DType


class NeedDims(Exception):
    """A rule needs per-dimension indices in a kernel emitted with a linear index only."""


@dataclass(frozen=True, slots=True)
class Index:
    """An element of a value: ``shape`` holds size expressions (``ONE`` for unit axes),
    ``dims`` the per-axis index expressions, ``flat`` the linear index expression."""

    shape: tuple[Expr, ...]
    dims: tuple[Expr, ...] | None = None
    flat: Expr | None = None

    def key(self) -> tuple[Any, ...]:
        return ("d", self.dims) if self.dims is not None else ("f", self.flat)


Provider = Callable[[Index], "Expr | None"]  # None: not provided at this index


class Emitter:
    """Computes elements of a group's values inside a ``KernelBuilder``.

    ``inputs`` maps the values read from memory to array parameter names; ``provided``
    maps values a kernel computes itself (accumulators, a GEMM result) to providers;
    ``ops`` maps the values the group's ops define to those ops. ``allow_delinearize``:
    when False, a rule that needs ``dims`` of an index known only by ``flat`` raises
    ``NeedDims``; when True the dims are computed by division. An element is an
    expression: a variable, or a ``Const`` when it is known at compile time (rules fold
    and strength-reduce those).
    """

    def __init__(
        self,
        b: KernelBuilder,
        ops: dict[Value, Op],
        inputs: dict[Value, str],
        provided: dict[Value, Provider] | None = None,
        allow_delinearize: bool = True,
        *,
        rules: Mapping[Any, Any],
    ) -> None:
        self.b = b
        self.rules = rules  # the target's codegen rules (``fusejit.codegen.rules``)
        self.ops = ops
        self.inputs = inputs
        self.provided = provided or {}
        self.allow_delinearize = allow_delinearize
        self.identity_reads: dict[Value, bool] = {}  # input -> read only at the root flat index
        self.root_flat: Expr | None = None
        # Root loop indices: the axis of the iteration space each runs over and its
        # [start, stop) there; and per axis, the indices at which a piece begins inside
        # a loop over it (where splitting the loop would remove a branch).
        self.root_axes: dict[Var, int] = {}
        self.ranges: dict[Var, tuple[int, int]] = {}
        self.split_points: dict[int, set[int]] = {}

    # Sizes ----------------------------------------------------------------------------
    def size(self, v: Value, axis: int) -> Expr:
        """The size of ``v``'s axis: ``ONE`` when it is 1, else an int parameter."""
        n = v.shape[axis]
        return ONE if n == 1 else self.b.int_param(("size", id(v), axis), n)

    def shape_of(self, v: Value) -> tuple[Expr, ...]:
        return tuple(self.size(v, k) for k in range(len(v.shape)))

    def offset(self, key: Any, value: int) -> Expr:
        """An int parameter for an offset attribute (``ZERO`` when it is 0)."""
        return ZERO if value == 0 else self.b.int_param(key, value)

    # Index ranges -----------------------------------------------------------------------
    def enter_root_loop(self, var: Var, axis: int, start: int, stop: int) -> None:
        """Declares ``var`` the index of a loop over ``[start, stop)`` of root axis ``axis``."""
        self.root_axes[var] = axis
        self.ranges[var] = (start, stop)

    def at_least(self, index: Expr, bound: int) -> bool | None:
        """Whether ``index >= bound`` holds at every element the enclosing loops run over
        (True), at none (False), or not known (None). Known for literals and root loop
        indices; an undecided root loop index records ``bound`` in ``split_points``."""
        if isinstance(index, Lit):
            return index.value >= bound
        span = self.ranges.get(index)  # type: ignore[call-overload]
        if span is None:
            return None
        if span[0] >= bound:
            return True
        if span[1] <= bound:
            return False
        self.split_points.setdefault(self.root_axes[index], set()).add(bound)  # type: ignore[index]
        return None

    # Index arithmetic -------------------------------------------------------------------
    def flat(self, idx: Index) -> Expr:
        if idx.flat is not None:
            return idx.flat
        assert idx.dims is not None
        return linearize(self.b, idx.dims, idx.shape)

    def dims(self, idx: Index) -> tuple[Expr, ...]:
        if idx.dims is not None:
            return idx.dims
        assert idx.flat is not None
        if all(s == ONE for s in idx.shape):
            return tuple(ZERO for _ in idx.shape)
        if sum(s != ONE for s in idx.shape) == 1:
            return tuple(ZERO if s == ONE else idx.flat for s in idx.shape)
        if not self.allow_delinearize:
            raise NeedDims()
        return delinearize(self.b, idx.flat, idx.shape)

    def with_flat(self, idx: Index) -> Index:
        return idx if idx.flat is not None else Index(idx.shape, idx.dims, self.flat(idx))

    # Elements ---------------------------------------------------------------------------
    def at(self, v: Value, idx: Index) -> Expr:
        """The element ``idx`` of ``v`` (emitting whatever statements it needs)."""
        key = ("elem", id(v), idx.key())
        found = self.b.lookup(key)
        if found is not None:
            return found
        elem = self.provided[v](idx) if v in self.provided else None
        if elem is not None:
            pass
        elif v in self.inputs:
            elem = self.load(self.inputs[v], v, idx)
        elif v in self.ops:
            op = self.ops[v]
            rule = self.rules.get(op.prim)
            if rule is None or rule.elemental is None:
                raise Unsupported(f"{op.prim.name} cannot be computed per element inside this kernel")
            elem = rule.elemental(self, op, idx)
        else:  # pragma: no cover - make_group guarantees every operand is defined
            raise Unsupported("a value is neither an input nor defined in the group")
        self.b.remember(key, elem)
        return elem

    def load(self, array: str, v: Value, idx: Index) -> Expr:
        flat = self.flat(idx)
        identity = self.root_flat is not None and flat == self.root_flat
        self.identity_reads[v] = self.identity_reads.get(v, True) and identity
        return self.b.load(array, flat)

    def const_array(self, op: Op) -> str:
        """The array parameter holding a constant op's data (the lowering binds it)."""
        raise Unsupported("constant arrays need an array binding")

    def let(self, expr: Expr) -> Expr:
        return self.b.let(expr)

    def const(self, value: Any, dtype: DType) -> Const:
        return self.b.const(value, dtype)


def linearize(b: KernelBuilder, dims: tuple[Expr, ...], shape: tuple[Expr, ...]) -> Expr:
    """The row-major linear index of ``dims`` in ``shape`` (unit axes contribute nothing);
    the index they were computed from when they are ``delinearize``'s result."""
    known = b.lookup(("linear", tuple(dims), tuple(shape)))
    if known is not None:
        return known
    flat: Expr | None = None
    for d, s in zip(dims, shape, strict=True):
        if s == ONE:
            continue
        if flat is None:
            flat = d
        else:
            scaled = b.let(mul(flat, s))
            flat = b.let(add(scaled, d)) if d != ZERO else scaled
    return flat if flat is not None else ZERO


def delinearize(b: KernelBuilder, flat: Expr, shape: tuple[Expr, ...]) -> tuple[Expr, ...]:
    """Per-axis indices of the linear index ``flat`` in ``shape``."""
    dims: list[Expr] = []
    rest = flat
    nonunit = [k for k, s in enumerate(shape) if s != ONE]
    for k in reversed(range(len(shape))):
        s = shape[k]
        if s == ONE:
            dims.append(ZERO)
        elif k == nonunit[0]:
            dims.append(rest)
        else:
            dims.append(b.let(mod(rest, s)))
            rest = b.let(floordiv(rest, s))
    out = tuple(reversed(dims))
    # linearize(out, shape) is ``flat`` again (the leading axis keeps the quotient whole).
    b.remember(("linear", out, tuple(shape)), flat)
    return out
