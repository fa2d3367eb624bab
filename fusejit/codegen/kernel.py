"""The kernel IR: statements over typed expressions, kernels, and the builder that emits them.

A ``Kernel`` is a function over flat (1-d, C-contiguous) arrays and int64 sizes whose body
is a small tree of statements: ``Let`` (define a scalar), ``Assign`` (update an
accumulator), ``Store`` (write an array element), ``If``, ``Loop`` (``parallel`` marks the
loop a target may distribute over threads) and ``Matmul`` (a batched GEMM on array views).
Scalars are typed expression nodes
(``fusejit.codegen.exprs``); a target's printer turns a kernel into source
(``fusejit.codegen.cpu`` for Numba on the CPU). Names come from counters (``v3``, ``n0``,
``a1``...) and constants are typed numbers: nothing from IR text or user input is ever
pasted into a kernel.

``KernelBuilder`` keeps the statements in scopes, deduplicates identical expressions
(common subexpression elimination on the nodes) and hoists loop-invariant statements: every
variable has a *depth* (the loop nesting its value depends on), and when a loop closes,
each ``Let``/``If`` of its body whose depth is lower than the loop's moves in front of it.
Memory is not a value: a load from an array the loop stores into stays in the loop (with
everything computed from it), and a store forgets the loads of its array that CSE would
otherwise reuse (a column reduction's accumulator is read, updated and read again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fusejit.codegen.exprs import ATOMS, INDEX, ONE, ZERO, Const, Expr, Load, MathCall, Var, var_names, walk
from fusejit.ir.dtypes import DType


class Unsupported(Exception):
    """A group the code generator cannot lower; the message says why (for the fusion report)."""


# ---------------------------------------------------------------------------------------
# Statements


@dataclass(slots=True)
class Let:
    """``var = expr`` (the one definition of ``var``)."""

    var: Var
    expr: Expr
    depth: int


@dataclass(slots=True)
class Assign:
    """``var = expr`` for a variable defined earlier (accumulators); never hoisted."""

    var: Var
    expr: Expr


@dataclass(slots=True)
class Store:
    """``array[index] = value``."""

    array: str
    index: Expr
    value: Expr


@dataclass(slots=True)
class If:
    """``if cond: then else: orelse``; hoisted as one unit."""

    cond: Expr
    then: list[Any]
    orelse: list[Any]
    depth: int


@dataclass(slots=True)
class Loop:
    """``for var in range(start, stop)``; ``parallel``: iterations are independent and the
    target may run them on threads."""

    var: Var
    start: Expr
    stop: Expr
    body: list[Any]
    parallel: bool = False


@dataclass(slots=True)
class Matmul:
    """``out[b] = lhs[b] @ rhs[b]`` for ``b < batch`` on flat arrays viewed as
    ``[batch, m, k]`` (``[batch, k, m]`` when ``lhs_t``) and ``[batch, k, n]`` (``[batch, n, k]``
    when ``rhs_t``); ``out`` is ``[batch, m, n]``. A target calls BLAS (serially). The
    transpositions are bools, or int (0/1) expressions for a target that takes them at run
    time (``Target.gemm_flags_at_run_time``)."""

    lhs: str
    rhs: str
    out: str
    batch: Expr
    m: Expr
    k: Expr
    n: Expr
    lhs_t: bool | Expr
    rhs_t: bool | Expr
    strided: Strided | None = None  # sub-matrices at offsets, added into ``out`` (batch 1)


@dataclass(frozen=True, slots=True)
class Strided:
    """A ``Matmul`` on sub-matrices of its flat arrays (batch 1): the element offsets of
    ``lhs``, ``rhs`` and ``out`` in their arrays, the strides of their stored rows (at
    least a stored row's length; a transposed operand's stored rows are its columns), and
    ``accumulate``: where it is nonzero the product is added to ``out`` (BLAS's beta = 1)
    instead of replacing it. The conv kernel's shifted GEMMs (``fusejit.codegen.conv_gemm``)."""

    offsets: tuple[Expr, Expr, Expr]
    rows: tuple[Expr, Expr, Expr]
    accumulate: Expr


Stmt = Let | Assign | Store | If | Loop | Matmul


def expressions(s: Stmt) -> tuple[Expr, ...]:
    """The expressions ``s`` itself reads (not those of nested statements)."""
    if isinstance(s, Let | Assign):
        return (s.expr,)
    if isinstance(s, Store):
        return (s.index, s.value)
    if isinstance(s, If):
        return (s.cond,)
    if isinstance(s, Loop):
        return (s.start, s.stop)
    sizes = (s.batch, s.m, s.k, s.n)
    if s.strided is None:
        return sizes
    return sizes + s.strided.offsets + s.strided.rows + (s.strided.accumulate,)


def statements(block: list[Stmt]) -> Iterator[Stmt]:
    """Every statement of ``block`` and of the blocks nested in it, outer first."""
    for s in block:
        yield s
        if isinstance(s, Loop):
            yield from statements(s.body)
        elif isinstance(s, If):
            yield from statements(s.then + s.orelse)


def nodes(block: list[Stmt]) -> Iterator[Expr]:
    """Every expression node of ``block``, in statement order."""
    for s in statements(block):
        for e in expressions(s):
            yield from walk(e)


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
    """One generated function: ``name(*arrays, *ints)``."""

    name: str
    kind: str
    arrays: list[ArrayParam]
    ints: list[Var]
    body: list[Stmt]
    parallel: bool = False

    @property
    def params(self) -> list[str]:
        return [a.name for a in self.arrays] + [v.name for v in self.ints]

    def constants(self) -> list[Const]:
        """The distinct constants of the module, in order of first use."""
        return list(dict.fromkeys(n for n in nodes(self.body) if isinstance(n, Const)))

    def math_calls(self) -> set[tuple[str, DType]]:
        """The math-library functions the module calls, as (name, dtype)."""
        return {(n.fn, n.dtype) for n in nodes(self.body) if isinstance(n, MathCall)}


# ---------------------------------------------------------------------------------------
# The builder


class KernelBuilder:
    """Emits statements into nested scopes with CSE and loop-invariant hoisting.

    Names: ``a<k>`` arrays, ``n<k>`` int parameters, ``v<k>`` scalars, ``r<k>``
    accumulators, ``i<k>`` loop indices. ``int_param(key, value)`` dedupes parameters by a
    symbolic key and records the concrete value the runtime passes.
    """

    def __init__(self) -> None:
        self.arrays: list[ArrayParam] = []
        self.ints: list[Var] = []
        self.int_values: list[int] = []
        self._int_keys: dict[Any, Var] = {}
        self.depth_of: dict[str, int] = {}
        self._counter = 0
        self._loops = 0
        # Scopes: (statements, cse table, loop depth of the scope)
        self._scopes: list[tuple[list[Stmt], dict[Any, Any], int]] = [([], {}, 0)]
        self.parallel = False
        self._loaded_from: dict[str, str] = {}  # variable -> the array its load reads

    # Names --------------------------------------------------------------------------
    def fresh(self, prefix: str = "v") -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def array(self, dtype: DType, role: str) -> str:
        name = f"a{len(self.arrays)}"
        self.arrays.append(ArrayParam(name, dtype, role))
        return name

    def set_role(self, name: str, role: str) -> None:
        """Gives array parameter ``name`` another role (an input also written: ``inout``)."""
        k = [a.name for a in self.arrays].index(name)
        self.arrays[k] = ArrayParam(name, self.arrays[k].dtype, role)

    def dtype_of(self, array: str) -> DType:
        return next(a.dtype for a in self.arrays if a.name == array)

    def int_param(self, key: Any, value: int) -> Var:
        """An int64 parameter for ``key`` (a size or an offset), passed ``value`` at run time."""
        var = self._int_keys.get(key)
        if var is None:
            var = Var(f"n{len(self.ints)}", INDEX)
            self._int_keys[key] = var
            self.ints.append(var)
            self.int_values.append(int(value))
            self.depth_of[var.name] = 0
        return var

    def size(self, key: Any, n: int) -> Expr:
        """A size known when lowering: ``ONE`` when it is 1 (no parameter, no loop), else
        the int parameter for ``key``."""
        return ONE if n == 1 else self.int_param(key, n)

    @staticmethod
    def const(value: bool | int | float, dtype: DType) -> Const:
        return Const.of(value, dtype)

    # Scopes -------------------------------------------------------------------------
    @property
    def block(self) -> list[Stmt]:
        return self._scopes[-1][0]

    @property
    def depth(self) -> int:
        return self._scopes[-1][2]

    def expr_depth(self, expr: Expr) -> int:
        return max((self.depth_of.get(name, 0) for name in var_names(expr)), default=0)

    def lookup(self, key: Any) -> Any:
        for _, table, _ in reversed(self._scopes):
            if key in table:
                return table[key]
        return None

    def remember(self, key: Any, value: Any) -> None:
        self._scopes[-1][1][key] = value

    def let(self, expr: Expr) -> Expr:
        """A variable holding ``expr`` (an existing one if the same expression is in scope);
        variables and constants are returned as they are."""
        if isinstance(expr, ATOMS):
            return expr
        found = self.lookup(("expr", expr))
        if found is not None:
            return found
        var = Var(self.fresh(), expr.dtype)
        depth = self.expr_depth(expr)
        self.depth_of[var.name] = depth
        self.block.append(Let(var, expr, depth))
        self.remember(("expr", expr), var)
        return var

    def define(self, expr: Expr, depth: int | None = None) -> Var:
        """A new mutable variable initialized to ``expr`` (an accumulator)."""
        var = Var(self.fresh("r"), expr.dtype)
        d = self.depth if depth is None else depth
        self.depth_of[var.name] = d
        self.block.append(Let(var, expr, d))
        return var

    def assign(self, var: Var, expr: Expr) -> None:
        self.block.append(Assign(var, expr))

    def store(self, array: str, index: Expr, value: Expr) -> None:
        self.block.append(Store(array, index, value))
        for _, table, _ in self._scopes:
            for key in [k for k, v in table.items() if isinstance(v, Var) and self._loaded_from.get(v.name) == array]:
                del table[key]

    def load(self, array: str, index: Expr) -> Expr:
        """A variable holding ``array[index]`` (as the array is now)."""
        var = self.let(Load(array, index, self.dtype_of(array)))
        self._loaded_from.setdefault(var.name, array)  # type: ignore[union-attr]
        return var

    def emit(self, stmt: Stmt) -> None:
        self.block.append(stmt)

    @contextmanager
    def loop(self, stop: Expr, start: Expr = ZERO, parallel: bool = False) -> Iterator[Var]:
        """``for i in range(start, stop)``: yields the index variable; statements emitted
        inside go to the body; loop-invariant ones are hoisted when the loop closes."""
        var = Var(f"i{self._loops}", INDEX)
        self._loops += 1
        depth = self.depth + 1
        self.depth_of[var.name] = depth
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
            if v in hoisted_vars:
                self.remember(key, v)
        self.block.append(Loop(var, start, stop, kept, parallel))
        if parallel:
            self.parallel = True

    @contextmanager
    def each(self, n: Expr, parallel: bool = False) -> Iterator[Expr]:
        """``for i in range(n)``, or just ``i = 0`` when ``n`` is one."""
        if n == ONE:
            yield ZERO
            return
        with self.loop(n, parallel=parallel) as i:
            yield i

    def _split_invariant(self, body: list[Stmt], depth: int) -> tuple[list[Stmt], list[Stmt]]:
        """The statements of a closing loop's body that can move in front of it, and the
        rest. A load from an array stored in the loop is not invariant, nor is anything
        that reads a variable the loop assigns (an accumulator) or one staying in it."""
        written = stored_arrays(body)
        staying: set[str] = assigned_vars(body)  # accumulators updated in the loop
        hoisted: list[Stmt] = []
        kept: list[Stmt] = []
        for s in body:
            if isinstance(s, Let | If) and s.depth < depth:
                names = set().union(*(var_names(e) for e in _read_expressions(s)))
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

    def branch(self, cond: Expr, then_fn: Callable[[], Expr], else_fn: Callable[[], Expr]) -> Var:
        """``t = then_fn() if cond else else_fn()`` as an ``if`` statement (each side's
        statements run only on its branch, so guarded loads stay in bounds)."""
        name = self.fresh()
        depth = self.depth
        results: list[Expr] = []
        blocks: list[list[Stmt]] = []
        for fn in (then_fn, else_fn):
            body: list[Stmt] = []
            self._scopes.append((body, {}, depth))
            try:
                value = fn()
            finally:
                self._scopes.pop()
            results.append(value)
            blocks.append(body)
        out = Var(name, results[0].dtype)
        for body, value in zip(blocks, results, strict=True):
            body.append(Let(out, value, depth))
        inner = max([self.expr_depth(cond)] + [_block_depth(b, self) for b in blocks])
        self.depth_of[name] = inner
        for b in blocks:
            b[-1].depth = inner
        self.block.append(If(cond, blocks[0], blocks[1], inner))
        return out

    def finish(self) -> list[Stmt]:
        assert len(self._scopes) == 1
        return self._scopes[0][0]


def stored_arrays(block: list[Stmt]) -> set[str]:
    """Every array a block stores into or hands to a GEMM as its output."""
    out: set[str] = set()
    for s in statements(block):
        if isinstance(s, Store):
            out.add(s.array)
        elif isinstance(s, Matmul):
            out.add(s.out)
    return out


def assigned_vars(block: list[Stmt]) -> set[str]:
    """The variables a block updates with ``Assign``."""
    return {s.var.name for s in statements(block) if isinstance(s, Assign)}


def _defined_vars(s: Stmt) -> set[str]:
    return {t.var.name for t in statements([s]) if isinstance(t, Let)}


def _read_expressions(s: Stmt) -> list[Expr]:
    """The expressions a hoisting candidate reads (an ``If``'s condition and branches)."""
    return [e for t in statements([s]) for e in expressions(t)]


def _block_depth(block: list[Stmt], b: KernelBuilder) -> int:
    depth = 0
    for s in block:
        if isinstance(s, Let):
            depth = max(depth, s.depth, b.expr_depth(s.expr))
        elif isinstance(s, If):
            depth = max(depth, s.depth)
    return depth
