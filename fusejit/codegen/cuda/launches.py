"""How a kernel of the kernel IR splits into GPU launches (what ``printer`` prints).

A kernel is a sequential function whose ``parallel`` loops may run on threads. On a GPU
its top-level statements become *phases*, each one launch, in order on one stream (a
launch boundary is the only grid-wide barrier):

* a **grid phase** runs the iterations of one top-level loop on all threads (grid-stride:
  thread ``t`` runs iterations ``t, t + gridsize, ...``). The loop is a ``parallel`` loop,
  or a serial one whose iterations are *independent* (``independent``: each stores only at
  indices that depend on the loop variable, reads no array it stores, and updates no
  variable defined outside it: an operand copy, a zero fill). Directly nested independent
  loops are *collapsed* into the one flat iteration space, delinearized per element, so
  an elementwise nest over ``[64, 1000]`` runs on 64,000 threads, not 64;
* a grid phase over *rows* whose inner loops only store elementwise and accumulate into
  scalars (a softmax, a layernorm, a row sum) is **cooperative** (``row_reductions``): a
  block of threads shares each row, every thread takes every ``block``-th element of each
  inner loop (adjacent threads, adjacent elements), and each accumulator is combined
  across the block in shared memory after its loop (a tree of ``log2(block)`` steps); a
  row of per-thread scratch (``ThreadId``) becomes the block's;
* a **single phase** runs the remaining top-level statements (a reduction's final
  combine) on one thread;
* a store ``a[i] = a[i] + x`` (``atomic_addend``: a scatter-add, a gradient accumulated
  into memory) is an atomic add, which commutes with its like: loops of them are
  independent (the order of a float sum then varies from run to run, as in PyTorch's
  ``index_add_`` on a GPU);
* a top-level ``Matmul`` is a GEMM (cuBLAS) between launches; a ``Matmul`` inside a loop is refused (the CUDA target
  lowers convolutions as direct loops for that reason).

Top-level definitions that read no memory the kernel writes (sizes, offsets, an input's
element hoisted out of a loop) are recomputed in every launch that reads them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

from fusejit.codegen.exprs import (
    Binary,
    BinaryOp,
    Const,
    Expr,
    Load,
    MathCall,
    ThreadId,
    Var,
    var_names,
    walk,
)
from fusejit.codegen.kernel import (
    Assign,
    If,
    Kernel,
    Let,
    Loop,
    Matmul,
    Stmt,
    Store,
    Unsupported,
    assigned_vars,
    expressions,
    nodes,
    statements,
    stored_arrays,
)
from fusejit.codegen.rules import REDUCTION_RULES
from fusejit.ir import primitives as P
from fusejit.ir.dtypes import DType


@dataclass(frozen=True, slots=True, eq=False)
class Reduction:
    """An accumulator of a cooperative row phase: ``var``, updated in ``loop``; its partial
    values are combined by ``combine`` (an expression of ``LEFT`` and ``RIGHT``)."""

    var: Var
    loop: Loop
    combine: Expr


LEFT, RIGHT = "gleft", "gright"  # the operands of a ``Reduction.combine``


@dataclass
class Phase:
    """One launch: ``loops`` (collapsed, outermost first) over ``body`` on the grid, or
    ``body`` once on one thread (no loops), or the GEMM ``matmul``. ``reductions`` is not None for a cooperative row phase."""

    body: list[Stmt]
    loops: list[Loop] = field(default_factory=list)
    reductions: list[Reduction] | None = None
    matmul: Matmul | None = None  # a GEMM the launcher runs (``fusejit.codegen.cuda.gemm``)

    @property
    def uses_thread_id(self) -> bool:
        return any(isinstance(n, ThreadId) for n in nodes(self.body))


def defined(block: list[Stmt]) -> set[str]:
    return {s.var.name for s in statements(block) if isinstance(s, Let | Loop)}


def reads(block: list[Stmt]) -> set[str]:
    return {name for s in statements(block) for e in expressions(s) for name in var_names(e)} | assigned_vars(block)


def _pure_definitions(kernel: Kernel, stored: set[str]) -> list[Let]:
    """The top-level definitions computed from the int parameters and earlier such
    definitions without reading memory the kernel writes."""
    known = {v.name for v in kernel.ints}
    updated = assigned_vars(kernel.body)  # accumulators
    pure = []
    for s in kernel.body:
        if isinstance(s, Let) and s.var.name not in updated and var_names(s.expr) <= known and not any(
                isinstance(n, ThreadId) or (isinstance(n, Load) and n.array in stored) for n in walk(s.expr)):
            pure.append(s)
            known.add(s.var.name)
    return pure


ATOMIC_DTYPES = frozenset({DType.i32, DType.i64, DType.f32, DType.f64})  # what cuda.atomic.add adds


def atomic_addend(s: Stmt) -> Expr | None:
    """``x`` if ``s`` is ``a[i] = a[i] + x`` (a scatter-add, a gradient accumulated into
    memory) on a dtype the GPU adds atomically, else None. Such a store commutes with every
    other like it: threads may run it at once (``cuda.atomic.add``)."""
    if not isinstance(s, Store) or s.value.dtype not in ATOMIC_DTYPES:
        return None
    v = s.value
    if isinstance(v, Binary) and v.op is BinaryOp.ADD and v.a == Load(s.array, s.index, v.dtype):
        if not any(isinstance(n, Load) and n.array == s.array for n in walk(v.b)):
            return v.b
    return None


def inline_atomic_updates(kernel: Kernel) -> Kernel:
    """``kernel`` with each ``u = a[i]; w = u + x; a[i] = w`` or ``u = a[i]; a[i] = u + x``
    (``u`` and ``w`` read nowhere else, no other store to ``a`` between) written
    ``a[i] = a[i] + x``, the form ``atomic_addend`` recognizes. The lowering names every subexpression; a GPU must see
    the update as one."""
    uses = Counter(n for s in statements(kernel.body) for e in expressions(s) for n in _var_uses(e))

    def block(stmts: list[Stmt]) -> list[Stmt]:
        lets = {s.var.name: (k, s) for k, s in enumerate(stmts) if isinstance(s, Let)}
        dropped: set[int] = set()
        out: list[Stmt] = []
        replaced: dict[int, Stmt] = {}
        for k, s in enumerate(stmts):
            if not isinstance(s, Store):
                continue
            total, named = s.value, set()
            if isinstance(total, Var) and total.name in lets and uses[total.name] == 1:
                named, total = {lets[total.name][0]}, lets[total.name][1].expr
            if not (isinstance(total, Binary) and total.op is BinaryOp.ADD):
                continue
            for u_side, other in ((total.a, total.b), (total.b, total.a)):
                if not (isinstance(u_side, Var) and u_side.name in lets and uses[u_side.name] == 1):
                    continue
                ku, u = lets[u_side.name]
                between = [t for t in stmts[ku + 1:k] if isinstance(t, Store | Loop | If)]
                writes = any(isinstance(t, Store) and t.array == s.array for b in between for t in statements([b]))
                if u.expr == Load(s.array, s.index, u.expr.dtype) and not writes:
                    dropped |= named | {ku}
                    replaced[k] = Store(s.array, s.index, Binary(BinaryOp.ADD, u.expr, other, total.dtype))
                    break
        for k, s in enumerate(stmts):
            if k in dropped:
                continue
            s = replaced.get(k, s)
            if isinstance(s, Loop):
                s = Loop(s.var, s.start, s.stop, block(s.body), s.parallel)
            elif isinstance(s, If):
                s = If(s.cond, block(s.then), block(s.orelse), s.depth)
            out.append(s)
        return out

    return dataclasses.replace(kernel, body=block(kernel.body))


def _var_uses(e: Expr) -> list[str]:
    """Every variable read in ``e``, once per occurrence."""
    return [n.name for n in walk(e) if isinstance(n, Var)]


def _loads(stmts: list[Stmt]) -> list[Load]:
    """The loads of ``stmts`` but an atomic add's read of its own element."""
    loads = []
    for s in stmts:
        addend = atomic_addend(s)
        exprs = expressions(s) if addend is None else (addend, s.index)
        loads += [n for e in exprs for n in walk(e) if isinstance(n, Load)]
    return loads


def _plain_stores(stmts: list[Stmt]) -> list[Store]:
    return [s for s in stmts if isinstance(s, Store) and atomic_addend(s) is None]


def _stores_vary(loop: Loop, inside: list[Stmt]) -> bool:
    """Whether every store of ``inside`` (``loop``'s statements) is at an index that
    depends on the loop variable."""
    varying = {loop.var.name}  # and what is computed from it (not a nested loop's variable)
    for s in inside:  # definitions come before their uses
        if isinstance(s, Let) and var_names(s.expr) & varying:
            varying.add(s.var.name)
    return all(var_names(s.index) & varying for s in _plain_stores(inside))


def independent(loop: Loop) -> bool:
    """Whether ``loop``'s iterations may run in any order at once: every store's index
    depends on the loop variable, no array is both stored and loaded, no variable defined
    outside the loop is updated, and there is no ``Matmul`` inside."""
    inside = list(statements(loop.body))
    if any(isinstance(s, Matmul) for s in inside):
        return False
    local = defined(loop.body) | {loop.var.name}
    if any(isinstance(s, Assign) and s.var.name not in local for s in inside):
        return False
    stored = {s.array for s in inside if isinstance(s, Store)}
    if stored & {n.array for n in _loads(inside)}:
        return False
    atomic = {s.array for s in inside if atomic_addend(s) is not None}
    if atomic & {s.array for s in _plain_stores(inside)}:
        return False
    return _stores_vary(loop, inside)


def _collapse(loop: Loop, stored: set[str]) -> tuple[list[Loop], list[Stmt]]:
    """``loop`` and the independent loops directly nested in it (each the last statement
    of its parent's body, after definitions that read no stored array), outermost first,
    with the body of the innermost preceded by those definitions."""
    loops, prefix = [loop], []
    body = loop.body
    while body and isinstance(body[-1], Loop):
        inner, lets = body[-1], body[:-1]
        outer_vars = {lp.var.name for lp in loops} | defined(prefix + lets)
        if not all(isinstance(s, Let) for s in lets):
            break
        loads_stored = any(n.array in stored for n in _loads(lets))
        if loads_stored or not independent(inner) or (var_names(inner.start) | var_names(inner.stop)) & outer_vars:
            break
        loops.append(inner)
        prefix += lets
        body = inner.body
    return loops, prefix + body


# ---------------------------------------------------------------------------------------
# Cooperative rows

_SUMS = ("accumulate",)
_MAXIMA = ("maximum", "maxnum")
_MINIMA = ("minimum", "minnum")
_OPS = {BinaryOp.ADD: "sum", BinaryOp.MUL: "product", BinaryOp.MAX: "max", BinaryOp.MIN: "min"}


def _accumulation(update: Expr, acc: Var) -> tuple[str, Expr] | None:
    """(``sum``/``product``/``max``/``min``, ``x``) if ``update`` is ``f(acc, x)`` for a
    combining ``f`` and an ``x`` that does not read ``acc``."""
    if isinstance(update, MathCall) and len(update.args) == 2:
        fn, (a, x) = update.fn, update.args
        kind = "sum" if fn in _SUMS else "max" if fn in _MAXIMA else "min" if fn in _MINIMA else None
    elif isinstance(update, Binary):
        kind, a, x = _OPS.get(update.op), update.a, update.b
    else:
        return None
    return (kind, x) if kind is not None and a == acc and acc.name not in var_names(x) else None


# The reduction whose identity an accumulator of each kind starts from.
_REDUCTION_OF = {"sum": P.reduce_sum, "product": P.reduce_prod, "max": P.reduce_max, "min": P.reduce_min}


def _is_identity(init: Expr | None, kind: str) -> bool:
    """Whether ``init`` is the identity of ``kind``'s combine (the reductions' own
    ``REDUCTION_RULES`` init)."""
    if not isinstance(init, Const) or init.dtype.is_bool:
        return False
    return init == Const.of(REDUCTION_RULES[_REDUCTION_OF[kind]].init(init.dtype), init.dtype)


def _combine(update: Expr, acc: Var) -> Expr:
    left, right = Var(LEFT, acc.dtype), Var(RIGHT, acc.dtype)
    if isinstance(update, MathCall):
        return MathCall(update.fn, (left, right), update.dtype)
    assert isinstance(update, Binary)
    return Binary(update.op, left, right, update.dtype)


def row_reductions(row: Loop) -> list[Reduction] | None:
    """The accumulators of ``row``'s inner loops if a block of threads may share each
    iteration of ``row`` (see the module docstring), else None. Each inner loop (its
    iterations split over the block; loops nested in it run in each thread): no ``If``,
    ``Matmul`` inside; stores at indices that depend on its variable;
    an array it both loads and stores only at one index; every update an accumulation
    ``acc = f(acc, x)`` of a row-level accumulator that starts at ``f``'s identity, is
    updated nowhere else and read nowhere else in the loop."""
    body = row.body
    inner = [s for s in body if isinstance(s, Loop)]
    if not inner:
        return None
    if any(isinstance(s, If) and any(isinstance(t, Loop | Matmul) for t in statements(s.then + s.orelse))
           for s in body) or any(isinstance(s, Matmul) for s in body):
        return None
    updates = Counter(s.var.name for s in statements(body) if isinstance(s, Assign))
    inits = {s.var.name: s.expr for s in body if isinstance(s, Let)}
    found: list[Reduction] = []
    for lp in inner:
        inside = list(statements(lp.body))
        if any(isinstance(s, If | Matmul) for s in inside) or not _stores_vary(lp, inside):
            return None
        local = defined(lp.body)  # a nested loop's own accumulators stay in its thread
        accs: dict[str, Reduction] = {}
        operands: dict[int, Expr] = {}
        for s in inside:
            if isinstance(s, Assign) and s.var.name not in local:
                found_kind = _accumulation(s.expr, s.var)
                if (found_kind is None or updates[s.var.name] != 1
                        or not _is_identity(inits.get(s.var.name), found_kind[0])):
                    return None
                accs[s.var.name] = Reduction(s.var, lp, _combine(s.expr, s.var))
                operands[id(s)] = found_kind[1]
        for s in inside:  # partial sums are read by their own update only
            exprs = (operands[id(s)],) if id(s) in operands else expressions(s)
            if any(var_names(e) & set(accs) for e in exprs):
                return None
        stores = {s.array: s.index for s in _plain_stores(inside)}
        atomic = {s.array for s in inside if atomic_addend(s) is not None}
        if atomic & (set(stores) | {n.array for n in _loads(inside)}):
            return None
        if any(n.array in stores and n.index != stores[n.array] for n in _loads(inside)):
            return None
        found += accs.values()
    return found


def phases(kernel: Kernel) -> tuple[list[Let], list[Phase]]:
    """The kernel's pure top-level definitions and its launches, in order (of the kernel
    with its memory updates inlined: ``inline_atomic_updates``)."""
    kernel = inline_atomic_updates(kernel)
    stored = stored_arrays(kernel.body)  # by stores and GEMMs
    preamble = _pure_definitions(kernel, stored)
    out: list[Phase] = []
    serial: set[str] = set()  # what one-thread statements define: a launch of its own cannot read it
    for s in kernel.body:
        if any(s is p for p in preamble):
            continue
        if isinstance(s, Loop) and (s.parallel or independent(s)) and not reads([s]) & serial:
            loops, body = _collapse(s, stored)
            reductions = row_reductions(s) if len(loops) == 1 else None
            out.append(Phase(body, loops, reductions=reductions))
        elif isinstance(s, Matmul):
            out.append(Phase([], matmul=s))
        else:
            if out and not out[-1].loops and out[-1].matmul is None:
                out[-1].body.append(s)
            else:
                out.append(Phase([s]))
            serial |= defined([s]) | assigned_vars([s])
    known = {v.name for v in kernel.ints} | {s.var.name for s in preamble}
    for ph in out:
        own = defined(ph.body) | {lp.var.name for lp in ph.loops}
        if reads(ph.body) - own - known:  # a value crosses launches: the whole kernel on one thread
            body = [s for s in kernel.body if not any(s is p for p in preamble)]
            if any(isinstance(s, Matmul) for s in body):
                raise Unsupported(f"a CUDA launch of {kernel.name} reads values defined by another launch")
            return preamble, [Phase(body)]
    return preamble, out
