"""The CPU printer: a ``Kernel`` as the source of a Numba module.

This is the one place that spells Numba: a kernel whose one parallel loop is its last
statement (``runs_in_chunks``) prints as serial ``nogil`` code over one chunk of that loop,
which ``fusejit.runtime.chunks`` runs on fusejit's threads (no parfor: each ``prange`` cost
0.3-1.5 s of compile time); other ``parallel`` loops print as ``prange`` (and make the
function ``parallel=True``); a ``Matmul`` prints as a call of ``fusejit.codegen.cpu.gemm``
(SciPy's BLAS gemm, with offsets and leading dimensions, in a serial function),
math-library calls name the vectorizable
``fusejit.codegen.cpu.mathlib`` functions, constants become typed module globals
(``np.float32(0.5)``: a bare literal would be float64 and promote the arithmetic), int32
arithmetic is wrapped back into int32 (Numba computes it in int64), and array elements
are read and written through ``fusejit.codegen.cpu.memory``'s ``load`` and ``store``: no
negative-index wraparound, whose branch stopped loops inside ``prange`` bodies from
vectorizing (2-2.5x slower per thread, ``bench/bench_backend.py``), and a tenth less
compilation than a subscript. Every function is compiled by ``kernel_jit``, takes its
ints in one int64 array (``SIZES_PARAM``, for ``fusejit.runtime.native_calls``), and prints
a run of alike top-level loops once, inside a loop over the run (``loop_groups``).

A module's text depends only on the kernel and ``config parallel_chunks`` (no shapes, no source lines, no file names,
and on the CPU no float constants but 0, ±1, ±2 and ±0.5: the others reach it as data,
``fusejit.codegen.constants``): it is content-addressed, so identical kernels share one
compiled module across functions, batch sizes and processes.
"""

from __future__ import annotations

import math

from fusejit import config
from fusejit.codegen.cpu import gemm, loop_groups, mathlib, memory
from fusejit.codegen.exprs import (
    ATOMS,
    ZERO,
    Binary,
    BinaryOp,
    Cast,
    Const,
    Expr,
    Lit,
    Load,
    MathCall,
    Select,
    ThreadId,
    Unary,
    UnaryOp,
    Var,
)
from fusejit.codegen.kernel import Assign, If, Kernel, Let, Loop, Matmul, Stmt, Store, statements
from fusejit.ir.dtypes import DType

NP_NAME = {DType.bool: "np.bool_", DType.i32: "np.int32", DType.i64: "np.int64",
           DType.f32: "np.float32", DType.f64: "np.float64"}  # fmt: skip

_SYMBOL = {
    BinaryOp.ADD: "+", BinaryOp.SUB: "-", BinaryOp.MUL: "*", BinaryOp.DIV: "/",
    BinaryOp.FLOORDIV: "//", BinaryOp.MOD: "%", BinaryOp.AND: "&", BinaryOp.OR: "|",
    BinaryOp.XOR: "^", BinaryOp.SHL: "<<", BinaryOp.SHR: ">>",
    BinaryOp.EQ: "==", BinaryOp.NE: "!=", BinaryOp.LT: "<", BinaryOp.LE: "<=",
    BinaryOp.GT: ">", BinaryOp.GE: ">=",
}  # fmt: skip
# Operators whose int32 result Numba computes as int64: printed wrapped in np.int32(...).
_WIDENED = frozenset({BinaryOp.ADD, BinaryOp.SUB, BinaryOp.MUL, BinaryOp.DIV, BinaryOp.FLOORDIV,
                      BinaryOp.MOD, BinaryOp.AND, BinaryOp.OR, BinaryOp.XOR, BinaryOp.SHL,
                      BinaryOp.SHR})
_ROUNDING = {UnaryOp.FLOOR: "np.floor", UnaryOp.CEIL: "np.ceil", UnaryOp.RINT: "np.rint"}
# The parameters a chunked kernel takes after its own (``fusejit.runtime.chunks``): which
# chunk of its parallel loop to run, of how many, and the thread's row of scratch.
CHUNK_PARAMS = ("chunk", "chunks", "worker")
# The int64 array of a kernel's ints (sizes, offsets): one argument whatever their number,
# so that the trampolines calling kernels depend only on the number of arrays.
SIZES_PARAM = "sizes"


def runs_in_chunks(kernel: Kernel) -> bool:
    """Whether ``kernel`` runs its parallel loop in chunks on fusejit's threads (config
    ``parallel_chunks``): its one parallel loop is the last statement of its body, after
    ``Let``s only (each chunk recomputes them: they store nothing, and what follows the loop
    would need every chunk done). Anything else is a parfor."""
    if not (kernel.parallel and kernel.body and config.value("parallel_chunks")):
        return False
    *prelude, last = kernel.body
    if not (isinstance(last, Loop) and last.parallel) or not all(isinstance(s, Let) for s in prelude):
        return False
    return sum(isinstance(s, Loop) and s.parallel for s in statements(kernel.body)) == 1


def math_function(fn: str, dtype: DType) -> str:
    """The math library's name of ``fn`` at ``dtype``: ``exp_f32``."""
    return f"{fn}_{ {DType.f32: 'f32', DType.f64: 'f64'}[dtype]}"


def constant_source(c: Const) -> str:
    """A typed constant from its numeric value (never from a string of the IR):
    ``np.float32(0.5)``, ``np.float64('nan')``, ``np.int32(-3)``, ``np.bool_(True)``."""
    if c.dtype.is_bool:
        return f"np.bool_({bool(c.value)!r})"
    if c.dtype.is_int:
        return f"{NP_NAME[c.dtype]}({int(c.value)})"
    f = float(c.value)
    if math.isnan(f):
        text = "'nan'"
    elif math.isinf(f):
        text = "'inf'" if f > 0 else "'-inf'"
    else:
        text = repr(f)
    return f"{NP_NAME[c.dtype]}({text})"


class NumbaPrinter:
    """Numba's Python dialect for the kernel IR. Expressions print the same for every
    Numba target (the CUDA printer subclasses this one); ``THREAD_ID``, element access
    (``load``, ``store``) and the statements are the CPU's."""

    THREAD_ID = "thread_id()"
    PARALLEL_RANGE = "prange"

    def __init__(self, kernel: Kernel) -> None:
        self.const_names = {c: f"c{k}" for k, c in enumerate(kernel.constants())}
        self.dtypes = {a.name: a.dtype for a in kernel.arrays}
        self.chunked = False  # printing a chunked kernel: its parallel loop covers one chunk
        self.rename: dict[str, str] = {}  # array and variable names printed as others (loop_group)

    # Expressions ------------------------------------------------------------------------
    def expr(self, e: Expr) -> str:
        if isinstance(e, Var):
            return self.rename.get(e.name, e.name)
        if isinstance(e, Lit):
            return str(e.value)
        if isinstance(e, Const):
            return self.const_names[e]
        if isinstance(e, Load):
            return self.load(self.rename.get(e.array, e.array), self.expr(e.index))
        if isinstance(e, Cast):
            return f"{NP_NAME[e.dtype]}({self.expr(e.x)})"
        if isinstance(e, MathCall):
            return f"{math_function(e.fn, e.dtype)}({', '.join(self.expr(a) for a in e.args)})"
        if isinstance(e, ThreadId):
            return CHUNK_PARAMS[2] if self.chunked else self.THREAD_ID
        if isinstance(e, Select):
            return f"{self.operand(e.then)} if {self.operand(e.cond)} else {self.operand(e.orelse)}"
        if isinstance(e, Unary):
            return self.unary(e)
        assert isinstance(e, Binary), e
        a, b = self.expr(e.a), self.expr(e.b)
        if e.op in (BinaryOp.MIN, BinaryOp.MAX):
            if e.dtype.is_float:
                return f"{e.op.value}({a}, {b})"
            # Integers as a select: Numba compiles its overload of the builtin afresh in
            # every process that uses it, 40-80 ms of a cold first call (measured on a
            # loop clamping with min(max(...))).
            x, y = self.operand(e.a), self.operand(e.b)
            return f"{x} if {x} {'<' if e.op is BinaryOp.MIN else '>'} {y} else {y}"
        text = f"{self.operand(e.a)} {_SYMBOL[e.op]} {self.operand(e.b)}"
        return f"np.int32({text})" if e.dtype is DType.i32 and e.op in _WIDENED else text

    def unary(self, e: Unary) -> str:
        x = self.operand(e.x)
        if e.op is UnaryOp.ABS:
            return f"abs({self.expr(e.x)})"
        if e.op in _ROUNDING:
            return f"{_ROUNDING[e.op]}({self.expr(e.x)})"
        if e.op is UnaryOp.NOT and e.dtype.is_bool:
            return f"not {x}"
        text = f"-{x}" if e.op is UnaryOp.NEG else f"~{x}"
        return f"np.int32({text})" if e.dtype is DType.i32 else text

    def load(self, array: str, index: str) -> str:
        return f"load({array}, {index})"

    def store(self, array: str, index: str, value: str) -> str:
        return f"store({array}, {index}, {value})"

    def operand(self, e: Expr) -> str:
        """``e`` as an operand of an operator: parenthesized unless it is atomic or a call."""
        text = self.expr(e)
        if isinstance(e, ATOMS + (Load, Cast, MathCall, ThreadId)) or text.startswith("np.int32("):
            return text
        if isinstance(e, Binary) and e.op in (BinaryOp.MIN, BinaryOp.MAX) and e.dtype.is_float:
            return text
        if isinstance(e, Unary) and e.op in (UnaryOp.ABS,) + tuple(_ROUNDING):
            return text
        return f"({text})"

    def extent(self, lp: Loop) -> str:
        """The number of iterations of ``lp``, as an expression."""
        return self.expr(lp.stop) if lp.start == ZERO else f"({self.operand(lp.stop)} - {self.operand(lp.start)})"

    # Statements -------------------------------------------------------------------------
    def function(self, kernel: Kernel) -> list[str]:
        """The kernel as ``name(*arrays, sizes)`` (``SIZES_PARAM``: its ints, read first),
        chunked ones with ``CHUNK_PARAMS`` after that (``fusejit.runtime.native_calls``)."""
        self.chunked = runs_in_chunks(kernel)
        params = [a.name for a in kernel.arrays] + [SIZES_PARAM] + list(CHUNK_PARAMS if self.chunked else ())
        decorator = "@kernel_jit(nogil=True)" if self.chunked else f"@kernel_jit(parallel={kernel.parallel!r})"
        sizes = [f"    {v.name} = load({SIZES_PARAM}, {k})" for k, v in enumerate(kernel.ints)]
        body: list[str] = []
        groups = 0
        for run in loop_groups.runs(kernel.body, self.dtypes):
            if len(run) > 1:
                body += self.loop_group(run, groups)
                groups += 1
            else:
                body += self.block([run[0][0]], 1)
        return [decorator, f"def {kernel.name}({', '.join(params)}):"] + sizes + (body or ["    pass"])

    def loop_group(self, run: list, serial: int) -> list[str]:
        """A run of alike loops (``loop_groups``) as the first one's body inside a loop over
        the run, its arrays and free variables taken from tuples where the loops differ."""
        first, shape = run[0][0], run[0][1]
        g = f"grp{serial}"
        lines = []
        slots = [(name, [sh.arrays[k] for _, sh in run]) for k, name in enumerate(shape.arrays)]
        slots += [(v.name, [sh.free[k].name for _, sh in run]) for k, v in enumerate(shape.free)]
        for k, (_, names) in enumerate(slots):
            if len(set(names)) > 1:
                lines.append(f"    {g}_t{k} = ({', '.join(names)},)")
        lines.append(f"    for {g} in range({len(run)}):")
        for k, (name, names) in enumerate(slots):
            if len(set(names)) > 1:
                lines.append(f"        {g}_{k} = {g}_t{k}[{g}]")
                self.rename[name] = f"{g}_{k}"
        lines += self.block([first], 2)
        self.rename.clear()
        return lines

    def block(self, stmts: list[Stmt], depth: int) -> list[str]:
        pad = "    " * depth
        out: list[str] = []
        for s in stmts:
            if isinstance(s, Let | Assign):
                out.append(f"{pad}{s.var.name} = {self.expr(s.expr)}")
            elif isinstance(s, Store):
                out.append(pad + self.store(self.rename.get(s.array, s.array), self.expr(s.index), self.expr(s.value)))
            elif isinstance(s, Loop) and s.parallel and self.chunked:
                # This chunk's share of [start, stop): chunk k of c starts at span * k // c.
                chunk, chunks, _ = CHUNK_PARAMS
                out.append(f"{pad}chunk_span = {self.extent(s)}")
                lo, hi = (f"chunk_span * {k} // {chunks}" for k in (chunk, f"({chunk} + 1)"))
                if s.start != Lit(0):
                    lo, hi = f"{self.operand(s.start)} + {lo}", f"{self.operand(s.start)} + {hi}"
                out.append(f"{pad}for {s.var.name} in range({lo}, {hi}):")
                out += self.block(s.body, depth + 1) or [f"{pad}    pass"]
            elif isinstance(s, Loop):
                rng = self.PARALLEL_RANGE if s.parallel else "range"
                stop = self.expr(s.stop)
                bounds = stop if s.start == Lit(0) else f"{self.expr(s.start)}, {stop}"
                out.append(f"{pad}for {s.var.name} in {rng}({bounds}):")
                out += self.block(s.body, depth + 1) or [f"{pad}    pass"]
            elif isinstance(s, If):
                out.append(f"{pad}if {self.expr(s.cond)}:")
                out += self.block(s.then, depth + 1) or [f"{pad}    pass"]
                out.append(f"{pad}else:")
                out += self.block(s.orelse, depth + 1) or [f"{pad}    pass"]
            elif isinstance(s, Matmul):
                out += self.matmul(s, pad)
            else:  # pragma: no cover
                raise TypeError(f"unknown statement {s!r}")
        return out

    def matmul(self, s: Matmul, pad: str) -> list[str]:
        """A call of ``gemm_f32``/``gemm_f64`` (BLAS: ``fusejit.codegen.cpu.gemm``) per batch
        element, or once on ``Strided`` sub-matrices."""
        fn = gemm.FUNCTIONS[self.dtypes[s.out]]
        m, k, n, batch = (self.expr(e) for e in (s.m, s.k, s.n, s.batch))
        if s.strided is not None:  # sub-matrices, maybe added into ``out``
            (lo, ro, oo), (lr, rr, orow) = ((self.expr(e) for e in t) for t in (s.strided.offsets, s.strided.rows))
            return [f"{pad}{fn}({m}, {n}, {k}, {s.lhs}, {lo}, {lr}, {s.lhs_t}, "
                    f"{s.rhs}, {ro}, {rr}, {s.rhs_t}, {s.out}, {oo}, {orow}, {self.expr(s.strided.accumulate)})"]
        lhs_t, rhs_t = (self.flag(t) for t in (s.lhs_t, s.rhs_t))
        lda, ldb = self.leading(s.lhs_t, lhs_t, m, k), self.leading(s.rhs_t, rhs_t, k, n)
        if s.batch == Lit(1):
            return [f"{pad}{fn}({m}, {n}, {k}, {s.lhs}, 0, {lda}, {lhs_t}, {s.rhs}, 0, {ldb}, {rhs_t}, "
                    f"{s.out}, 0, {n}, 0)"]
        return [f"{pad}for mm_i in range({batch}):",
                f"{pad}    {fn}({m}, {n}, {k}, {s.lhs}, mm_i * {m} * {k}, {lda}, {lhs_t}, {s.rhs}, "
                f"mm_i * {k} * {n}, {ldb}, {rhs_t}, {s.out}, mm_i * {m} * {n}, {n}, 0)"]

    def flag(self, t: bool | Expr) -> str:
        """A transposition: a literal, or the kernel's int for it."""
        return str(t) if isinstance(t, bool) else self.expr(t)

    @staticmethod
    def leading(t: bool | Expr, text: str, if_t: str, if_not: str) -> str:
        """The leading dimension of a stored operand: its stored row's length."""
        if isinstance(t, bool):
            return if_t if t else if_not
        return f"({if_t} if {text} else {if_not})"


def module_source(kernel: Kernel) -> str:
    """The Numba source of ``kernel`` (one module)."""
    p = NumbaPrinter(kernel)
    # No listing of the fused ops: the module is named by its text, so two groups whose
    # code is the same (the same ops in another order) share one module and one compilation
    # (``runtime.cpu.display_source`` heads a kernel's source with its concrete ops).
    lines = [f"# fusejit kernel {kernel.name} ({kernel.kind})"]
    gemms = sorted({gemm.FUNCTIONS[p.dtypes[s.out]] for s in statements(kernel.body)
                    if isinstance(s, Matmul)})
    if gemms:
        lines.append(f"# gemm library {gemm.SOURCE_HASH}")
    lines += [
        f"# math library {mathlib.SOURCE_HASH}, element access {memory.SOURCE_HASH}",
        "import numpy as np",
        "from numba import get_thread_id as thread_id, prange",
        "from fusejit.codegen.cpu import kernel_jit",
    ]
    funcs = sorted(math_function(fn, dt) for fn, dt in kernel.math_calls())
    if gemms:
        lines.append(f"from fusejit.codegen.cpu.gemm import {', '.join(gemms)}")
    if funcs:
        lines.append(f"from fusejit.codegen.cpu.mathlib import {', '.join(funcs)}")
    lines.append("from fusejit.codegen.cpu.memory import load, store")
    lines.append("")
    for c, name in p.const_names.items():
        lines.append(f"{name} = {constant_source(c)}")
    lines += ["", ""] + p.function(kernel)
    return "\n".join(lines) + "\n"
