"""Typed scalar expressions of the kernel IR.

A kernel body (``fusejit.codegen.kernel``) computes scalars with these nodes: variables
(``Var``: named values, loop indices, int parameters), index literals (``Lit``), typed
constants (``Const``), ``Unary``/``Binary`` operators, ``Select``, ``Cast``, array
``Load``s, calls of the target's math library (``MathCall``) and the running thread's
number (``ThreadId``). Every node has a ``dtype``; sizes, indices and loop variables have
``INDEX``. Nodes are frozen and compare by value, so common-subexpression elimination
and loop-invariant hoisting work on them directly, and a target's printer spells them
(``fusejit.codegen.cpu``): nothing here is written for one target.

Semantics a printer must keep: arithmetic in ``dtype`` (int32 wraps around like NumPy's),
``DIV`` is true division of floats, ``FLOORDIV``/``MOD`` of integers round toward minus
infinity (a zero divisor gives 0, as NumPy), ``MIN``/``MAX`` are integer (index) min/max
(floats go through the math library, which propagates NaN like ``np.maximum``), ``AND``/
``OR``/``NOT`` are logical on bools and bitwise on integers, ``XOR``/``SHL``/``SHR`` are
bitwise on integers (``SHR`` is arithmetic; a shift count must lie in [0, bit width):
other counts are undefined, as in C and LLVM), ``FLOOR``/``CEIL``/``RINT`` round floats like NumPy.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fusejit.ir.dtypes import DType

INDEX = DType.i64  # sizes, indices, loop variables, int parameters


class UnaryOp(StrEnum):
    NEG = "neg"
    NOT = "not"
    ABS = "abs"
    FLOOR = "floor"
    CEIL = "ceil"
    RINT = "rint"


class BinaryOp(StrEnum):
    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    FLOORDIV = "floordiv"
    MOD = "mod"
    AND = "and"
    OR = "or"
    XOR = "xor"
    SHL = "shl"
    SHR = "shr"
    MIN = "min"
    MAX = "max"
    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"


COMPARISONS = frozenset({BinaryOp.EQ, BinaryOp.NE, BinaryOp.LT, BinaryOp.LE, BinaryOp.GT, BinaryOp.GE})


@dataclass(frozen=True, slots=True)
class Var:
    """A named scalar: a ``let`` result, an accumulator, a loop index or an int parameter."""

    name: str
    dtype: DType


@dataclass(frozen=True, slots=True)
class Lit:
    """An index literal (a size, an offset, 0 or 1 of the index space)."""

    value: int

    @property
    def dtype(self) -> DType:
        return INDEX


@dataclass(frozen=True, slots=True, eq=False)
class Const:
    """A typed constant; ``value`` is normalized through ``dtype`` (exactly what the IR
    means). Equal when dtype and bits agree: two NaNs are one constant, -0.0 is not 0.0."""

    value: bool | int | float
    dtype: DType

    @staticmethod
    def of(value: Any, dtype: DType) -> Const:
        return Const(dtype.np.type(value).item(), dtype)

    def _key(self) -> tuple[Any, ...]:
        v = self.value
        return (self.dtype, float(v).hex() if isinstance(v, float) else v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Const) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


@dataclass(frozen=True, slots=True)
class Unary:
    op: UnaryOp
    x: Expr
    dtype: DType


@dataclass(frozen=True, slots=True)
class Binary:
    op: BinaryOp
    a: Expr
    b: Expr
    dtype: DType


@dataclass(frozen=True, slots=True)
class Select:
    """``then if cond else orelse``."""

    cond: Expr
    then: Expr
    orelse: Expr
    dtype: DType


@dataclass(frozen=True, slots=True)
class Cast:
    x: Expr
    dtype: DType


@dataclass(frozen=True, slots=True)
class Load:
    """Element ``index`` of the flat array parameter ``array`` (a generated name)."""

    array: str
    index: Expr
    dtype: DType


@dataclass(frozen=True, slots=True)
class MathCall:
    """``fn`` of the target's math library (``exp``, ``maximum``, ``accumulate``...) at
    ``dtype`` (float32 or float64); the library's functions are vectorizable."""

    fn: str
    args: tuple[Expr, ...]
    dtype: DType


@dataclass(frozen=True, slots=True)
class ThreadId:
    """The number of the thread running the enclosing parallel loop (0 when serial)."""

    @property
    def dtype(self) -> DType:
        return INDEX


Expr = Var | Lit | Const | Unary | Binary | Select | Cast | Load | MathCall | ThreadId
ATOMS = (Var, Lit, Const)

ZERO = Lit(0)
ONE = Lit(1)


# ---------------------------------------------------------------------------------------
# Constructors (the dtype follows from the operands)


def binary(op: BinaryOp, a: Expr, b: Expr) -> Binary:
    if op in COMPARISONS:
        return Binary(op, a, b, DType.bool)
    return Binary(op, a, b, b.dtype if isinstance(a, Lit) else a.dtype)


# Index arithmetic folds identities (``x + 0``, ``x * 1``, ``x // 1``) and literals, so
# that generated kernels read like hand-written ones (integer indices only: a float
# constant is a ``Const``, never a ``Lit``).


def _literal(a: Expr, b: Expr, fn: Callable[[int, int], int]) -> Expr | None:
    return Lit(fn(a.value, b.value)) if isinstance(a, Lit) and isinstance(b, Lit) else None


def add(a: Expr, b: Expr) -> Expr:
    if a == ZERO:
        return b
    return a if b == ZERO else _literal(a, b, operator.add) or binary(BinaryOp.ADD, a, b)


def sub(a: Expr, b: Expr) -> Expr:
    return a if b == ZERO else _literal(a, b, operator.sub) or binary(BinaryOp.SUB, a, b)


def mul(a: Expr, b: Expr) -> Expr:
    if ZERO in (a, b):
        return ZERO
    if a == ONE:
        return b
    return a if b == ONE else _literal(a, b, operator.mul) or binary(BinaryOp.MUL, a, b)


def floordiv(a: Expr, b: Expr) -> Expr:
    return a if b == ONE else _literal(a, b, operator.floordiv) or binary(BinaryOp.FLOORDIV, a, b)


def mod(a: Expr, b: Expr) -> Expr:
    return ZERO if b == ONE else _literal(a, b, operator.mod) or binary(BinaryOp.MOD, a, b)


def minimum(a: Expr, b: Expr) -> Binary:
    return binary(BinaryOp.MIN, a, b)


def maximum(a: Expr, b: Expr) -> Binary:
    return binary(BinaryOp.MAX, a, b)


def select(cond: Expr, then: Expr, orelse: Expr) -> Select:
    return Select(cond, then, orelse, then.dtype)


def const_value(e: Expr) -> Any:
    """The Python value of a constant, else None."""
    return e.value if isinstance(e, Const) else None


# ---------------------------------------------------------------------------------------
# Traversal


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Unary | Cast):
        return (e.x,)
    if isinstance(e, Binary):
        return (e.a, e.b)
    if isinstance(e, Select):
        return (e.cond, e.then, e.orelse)
    if isinstance(e, Load):
        return (e.index,)
    if isinstance(e, MathCall):
        return e.args
    return ()


def walk(e: Expr) -> Iterator[Expr]:
    """``e`` and every node under it, parents first, operands left to right."""
    yield e
    for c in children(e):
        yield from walk(c)


def var_names(e: Expr) -> set[str]:
    """The variables ``e`` reads."""
    return {n.name for n in walk(e) if isinstance(n, Var)}
