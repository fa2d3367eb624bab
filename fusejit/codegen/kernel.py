"""The target-neutral description of a kernel, and the builder that emits it.

A ``Kernel`` is a function over flat (1-d, C-contiguous) arrays and int64 sizes whose body
is a small tree of statements: ``Let`` (define a scalar), ``Assign`` (update an
accumulator), ``Store`` (write an array element), ``If``, ``Loop`` (``parallel`` marks the
loop a backend may distribute over threads) and ``Matmul`` (a batched GEMM on array
views). Expressions are Python expression strings over identifiers this module generates
(``v3``, ``n0``, ``c1``, ``a0``...), typed constants and scalar math-library calls, so the
same description prints as Numba CPU source (``fusejit.codegen.cpu``) and, later, as
numba-cuda source, where only the mapping of loops to threads differs.

Nothing from IR text or user input is ever pasted into an expression: identifiers come
from counters, constants are printed from typed numbers (``constant_expr``).

``KernelBuilder`` keeps the statements in scopes, deduplicates identical expressions
(common subexpression elimination on the text) and hoists loop-invariant statements: every
variable has a *depth* (the loop nesting its value depends on), and when a loop closes,
each ``Let``/``If`` of its body whose depth is lower than the loop's moves in front of it.
Memory is not a value: a load from an array the loop stores into stays in the loop (with
everything computed from it), and a store forgets the loads of its array that CSE would
otherwise reuse (a column reduction's accumulator is read, updated and read again).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fusejit.ir.dtypes import DType


class Unsupported(Exception):
    """A group the code generator cannot lower; the message says why (for the fusion report)."""


# ---------------------------------------------------------------------------------------
# Statements


@dataclass(slots=True)
class Let:
    """``var = expr`` (the one definition of ``var``)."""

    var: str
    expr: str
    depth: int


@dataclass(slots=True)
class Assign:
    """``var = expr`` for a variable defined earlier (accumulators); never hoisted."""

    var: str
    expr: str


@dataclass(slots=True)
class Store:
    """``array[index] = expr``."""

    array: str
    index: str
    expr: str


@dataclass(slots=True)
class If:
    """``if cond: then else: orelse``; hoisted as one unit."""

    cond: str
    then: list[Any]
    orelse: list[Any]
    depth: int


@dataclass(slots=True)
class Loop:
    """``for var in range(start, stop)``; ``parallel``: iterations are independent and the
    backend may run them on threads."""

    var: str
    start: str
    stop: str
    body: list[Any]
    parallel: bool = False


@dataclass(slots=True)
class Matmul:
    """``out[b] = lhs[b] @ rhs[b]`` for ``b < batch`` on flat arrays viewed as
    ``[batch, m, k]`` (``[batch, k, m]`` when ``lhs_t``) and ``[batch, k, n]`` (``[batch, n, k]``
    when ``rhs_t``); ``out`` is ``[batch, m, n]``. A backend calls BLAS (serially)."""

    lhs: str
    rhs: str
    out: str
    batch: str
    m: str
    k: str
    n: str
    lhs_t: bool
    rhs_t: bool


@dataclass(slots=True)
class Call:
    """Calls a helper kernel of the same module: ``helper(*args)``."""

    helper: str
    args: tuple[str, ...]


@dataclass(slots=True)
class Comment:
    text: str


Stmt = Let | Assign | Store | If | Loop | Matmul | Call | Comment


# ---------------------------------------------------------------------------------------
# Kernels


@dataclass(frozen=True, slots=True)
class ArrayParam:
    """A flat array parameter. ``role``: ``in``, ``out``, ``inout`` (an input whose buffer is
    also written), ``scratch`` (temporary memory the runtime provides) or ``const`` (a
    constant the runtime materializes once)."""

    name: str
    dtype: DType
    role: str


@dataclass
class Kernel:
    """One generated function: ``name(*arrays, *ints)``; ``helpers`` are more kernels of the
    same module that this one calls (a matmul's epilogue)."""

    name: str
    kind: str
    arrays: list[ArrayParam]
    ints: list[str]
    body: list[Stmt]
    consts: dict[str, str] = field(default_factory=dict)  # global name -> typed expression
    mathlib: set[str] = field(default_factory=set)
    parallel: bool = False
    helpers: list[Kernel] = field(default_factory=list)
    doc: list[str] = field(default_factory=list)  # shape-free op lines for the header

    @property
    def params(self) -> list[str]:
        return [a.name for a in self.arrays] + list(self.ints)

    def all_consts(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for h in self.helpers:
            out.update(h.all_consts())
        out.update(self.consts)
        return out

    def all_mathlib(self) -> set[str]:
        return set().union(self.mathlib, *(h.all_mathlib() for h in self.helpers))


# ---------------------------------------------------------------------------------------
# Typed constants


NP_NAME = {DType.bool: "np.bool_", DType.i32: "np.int32", DType.i64: "np.int64",
           DType.f32: "np.float32", DType.f64: "np.float64"}  # fmt: skip


def subscript(array: str, index: str) -> str:
    """``array[idx(index)]``: ``idx`` marks a non-negative index (every index the code
    generator makes is one). The CPU printer defines it as ``np.uint64``: Numba then skips
    the negative-index wraparound, whose branch stopped loops inside ``prange`` bodies
    from vectorizing (2-2.5x slower per thread, ``bench/bench_backend.py``)."""
    return f"{array}[idx({index})]"


def constant_expr(value: bool | int | float, dtype: DType) -> str:
    """The source of a typed scalar constant: ``np.float32(0.5)``, ``np.float64('nan')``.

    The number is normalized through ``dtype`` first (so the text is exactly the value the
    IR means) and printed from its numeric value, never from a string of the IR.
    """
    scalar = dtype.np.type(value).item()
    if dtype.is_bool:
        return f"np.bool_({bool(scalar)!r})"
    if dtype.is_int:
        return f"{NP_NAME[dtype]}({int(scalar)})"
    f = float(scalar)
    if math.isnan(f):
        text = "'nan'"
    elif math.isinf(f):
        text = "'inf'" if f > 0 else "'-inf'"
    else:
        text = repr(f)
    return f"{NP_NAME[dtype]}({text})"


# ---------------------------------------------------------------------------------------
# The builder

_IDENT = re.compile(r"\b[a-z]+[0-9]+\b")


class KernelBuilder:
    """Emits statements into nested scopes with CSE and loop-invariant hoisting.

    Names: ``a<k>`` arrays, ``n<k>`` int parameters, ``c<k>`` constants, ``v<k>`` scalars,
    ``i<k>`` loop indices. ``int_param(key, value)`` dedupes parameters by a symbolic key
    and records the concrete value the runtime passes.
    """

    def __init__(self, const_prefix: str = "c") -> None:
        self.const_prefix = const_prefix
        self.arrays: list[ArrayParam] = []
        self.ints: list[str] = []
        self.int_values: list[int] = []
        self._int_keys: dict[Any, str] = {}
        self.consts: dict[str, str] = {}
        self._const_names: dict[str, str] = {}
        self.mathlib: set[str] = set()
        self.depth_of: dict[str, int] = {}
        self._counter = 0
        self._loops = 0
        # Scopes: (statements, cse table, loop depth of the scope)
        self._scopes: list[tuple[list[Stmt], dict[Any, str], int]] = [([], {}, 0)]
        self.parallel = False
        self._loaded_from: dict[str, str] = {}  # variable -> the array its load reads

    # Names --------------------------------------------------------------------------
    def fresh(self, prefix: str = "v") -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def array(self, dtype: DType, role: str) -> str:
        name = f"a{len(self.arrays)}"
        self.arrays.append(ArrayParam(name, dtype, role))
        self.depth_of[name] = 0
        return name

    def int_param(self, key: Any, value: int) -> str:
        """An int64 parameter for ``key`` (a size or an offset), passed ``value`` at run time."""
        name = self._int_keys.get(key)
        if name is None:
            name = f"n{len(self.ints)}"
            self._int_keys[key] = name
            self.ints.append(name)
            self.int_values.append(int(value))
            self.depth_of[name] = 0
        return name

    def const(self, value: bool | int | float, dtype: DType) -> str:
        expr = constant_expr(value, dtype)
        name = self._const_names.get(expr)
        if name is None:
            name = f"{self.const_prefix}{len(self.consts)}"
            self._const_names[expr] = name
            self.consts[name] = expr
            self.depth_of[name] = 0
        return name

    def math(self, fn: str) -> str:
        """A math-library function by its full name (``exp_f32``)."""
        self.mathlib.add(fn)
        return fn

    # Scopes -------------------------------------------------------------------------
    @property
    def block(self) -> list[Stmt]:
        return self._scopes[-1][0]

    @property
    def depth(self) -> int:
        return self._scopes[-1][2]

    def expr_depth(self, expr: str) -> int:
        return max((self.depth_of.get(name, 0) for name in _IDENT.findall(expr)), default=0)

    def lookup(self, key: Any) -> str | None:
        for _, table, _ in reversed(self._scopes):
            if key in table:
                return table[key]
        return None

    def remember(self, key: Any, var: str) -> None:
        self._scopes[-1][1][key] = var

    def let(self, expr: str) -> str:
        """A variable holding ``expr`` (an existing one if the same text is in scope)."""
        if _IDENT.fullmatch(expr) or _is_literal(expr):
            return expr
        found = self.lookup(("expr", expr))
        if found is not None:
            return found
        var = self.fresh()
        depth = self.expr_depth(expr)
        self.depth_of[var] = depth
        self.block.append(Let(var, expr, depth))
        self.remember(("expr", expr), var)
        return var

    def define(self, expr: str, depth: int | None = None) -> str:
        """A new mutable variable initialized to ``expr`` (an accumulator)."""
        var = self.fresh("r")
        d = self.depth if depth is None else depth
        self.depth_of[var] = d
        self.block.append(Let(var, expr, d))
        return var

    def assign(self, var: str, expr: str) -> None:
        self.block.append(Assign(var, expr))

    def store(self, array: str, index: str, expr: str) -> None:
        self.block.append(Store(array, index, expr))
        for _, table, _ in self._scopes:
            for key in [k for k, v in table.items() if self._loaded_from.get(v) == array]:
                del table[key]

    def load(self, array: str, index: str) -> str:
        """A variable holding ``array[index]`` (as the array is now)."""
        var = self.let(subscript(array, index))
        self._loaded_from.setdefault(var, array)
        return var

    def emit(self, stmt: Stmt) -> None:
        self.block.append(stmt)

    @contextmanager
    def loop(self, stop: str, start: str = "0", parallel: bool = False) -> Iterator[str]:
        """``for i in range(start, stop)``: yields the index variable; statements emitted
        inside go to the body; loop-invariant ones are hoisted when the loop closes."""
        var = f"i{self._loops}"
        self._loops += 1
        depth = self.depth + 1
        self.depth_of[var] = depth
        body: list[Stmt] = []
        self._scopes.append((body, {}, depth))
        try:
            yield var
        finally:
            _, table, _ = self._scopes.pop()
        hoisted, kept = self._split_invariant(body, depth)
        self.block.extend(hoisted)
        # Hoisted definitions stay visible to the CSE of the enclosing scope.
        hoisted_vars = {s.var for s in hoisted if isinstance(s, Let)}
        for key, v in table.items():
            if getattr(v, "expr", v) in hoisted_vars:
                self.remember(key, v)
        self.block.append(Loop(var, start, stop, kept, parallel))
        if parallel:
            self.parallel = True

    def _split_invariant(self, body: list[Stmt], depth: int) -> tuple[list[Stmt], list[Stmt]]:
        """The statements of a closing loop's body that can move in front of it, and the
        rest. A load from an array stored in the loop is not invariant, nor is anything
        that reads a variable the loop assigns (an accumulator) or one staying in it."""
        written = _stored_arrays(body)
        staying: set[str] = _assigned_vars(body)  # accumulators updated in the loop
        hoisted: list[Stmt] = []
        kept: list[Stmt] = []
        for s in body:
            if isinstance(s, (Let, If)) and s.depth < depth:
                names = set(_IDENT.findall(_statement_text(s)))
                loads = {self._loaded_from[n] for n in _defined_vars(s) | names if n in self._loaded_from}
                if not (names & staying) and not (loads & written):
                    hoisted.append(s)
                    continue
                for var in _defined_vars(s):
                    staying.add(var)
                    self.depth_of[var] = depth
                s.depth = depth
            kept.append(s)
        return hoisted, kept

    def branch(self, cond: str, then_fn: Any, else_fn: Any) -> str:
        """``t = then_fn() if cond else else_fn()`` as an ``if`` statement (each side's
        statements run only on its branch, so guarded loads stay in bounds)."""
        out = self.fresh()
        depth = self.depth
        results = []
        blocks = []
        for fn in (then_fn, else_fn):
            body: list[Stmt] = []
            self._scopes.append((body, {}, depth))
            try:
                value = fn()
            finally:
                self._scopes.pop()
            body.append(Let(out, value, depth))
            results.append(value)
            blocks.append(body)
        inner = max([self.expr_depth(cond)] + [_block_depth(b, self) for b in blocks])
        self.depth_of[out] = inner
        for b in blocks:
            b[-1].depth = inner
        self.block.append(If(cond, blocks[0], blocks[1], inner))
        return out

    def finish(self) -> list[Stmt]:
        assert len(self._scopes) == 1
        return self._scopes[0][0]


def statements(block: list[Stmt]) -> Iterator[Stmt]:
    """Every statement of ``block`` and of the blocks nested in it, outer first."""
    for s in block:
        yield s
        if isinstance(s, Loop):
            yield from statements(s.body)
        elif isinstance(s, If):
            yield from statements(s.then + s.orelse)


def _stored_arrays(block: list[Stmt]) -> set[str]:
    """Every array a block stores into or hands to a GEMM or a helper kernel."""
    out: set[str] = set()
    for s in statements(block):
        if isinstance(s, Store):
            out.add(s.array)
        elif isinstance(s, Matmul):
            out.add(s.out)
        elif isinstance(s, Call):
            out.update(s.args)
    return out


def _assigned_vars(block: list[Stmt]) -> set[str]:
    """The variables a block updates with ``Assign``."""
    return {s.var for s in statements(block) if isinstance(s, Assign)}


def _defined_vars(s: Stmt) -> set[str]:
    return {t.var for t in statements([s]) if isinstance(t, Let)}


def _statement_text(s: Stmt) -> str:
    """The expressions a hoisting candidate reads (an ``If``'s condition and branches)."""
    return " ".join(t.cond if isinstance(t, If) else getattr(t, "expr", "") for t in statements([s]))


def _block_depth(block: list[Stmt], b: KernelBuilder) -> int:
    depth = 0
    for s in block:
        if isinstance(s, Let):
            depth = max(depth, s.depth, b.expr_depth(s.expr))
        elif isinstance(s, If):
            depth = max(depth, s.depth)
    return depth


def _is_literal(expr: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9]+", expr))
