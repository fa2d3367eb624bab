"""The CPU target's second printer: a ``Kernel`` as LLVM IR, compiled without Numba's front end.

Why: a kernel printed as a Numba module pays for Numba's type inference and lowering of
every statement, in Python, before LLVM sees it (~55% of a kernel's compilation: a
subscript ~12 ms, a loop ~50 ms; ``../shared/NUMBA_NOTES.md``), and the first compilation
in a process also loads Numba's typing and lowering registries (0.2-0.35 s). The kernel IR
is already typed, so it can be spelled in LLVM's own language directly and handed to the
same LLVM, through Numba's code generator (``fusejit.runtime.llvm_kernels``), which
optimizes it with the same passes and target machine as every Numba function.

The function follows Numba's calling convention for ``none(array, ..., int64 array[,
int64, int64, int64])``, so the trampolines that call Numba-compiled kernels
(``fusejit.runtime.native_calls``) call these too: ``i32 (ptr retptr, ptr excinfo, <array
0>, ..., <sizes>[, chunk, chunks, worker])`` where each 1-d array arrives as Numba's array
structure, flattened (meminfo, parent, nitems, itemsize, data, shape, stride); it returns
status 0 and never raises.

Semantics are those of the Numba module the CPU printer writes for the same kernel (and of
``fusejit.codegen.exprs``): no fast-math flag except the reassociable add of the math
library's ``accumulate``; integer ``//`` and ``%`` round toward minus infinity and give 0 for
a zero divisor (never a trapping ``sdiv``); a ``Select`` whose arms read memory or divide
branches, as Python's conditional expression does (a guarded load must not run); booleans
are bytes in memory. The math library's functions are Numba's compiled ones
(``fusejit.codegen.cpu.mathlib``), declared here under ``MATH_PREFIX`` names that the
compiler renames to the compiled symbols before linking and inlining them; GEMMs call the
bundled OpenBLAS's CBLAS entry points under the names ``fusejit.codegen.cpu.gemm`` gives
LLVM.

``unsupported(kernel)`` says why a kernel is not printed here (a Numba parfor, a GEMM
without the bundled OpenBLAS, an operation this printer does not spell); such kernels keep
the Numba printer. Names come from counters; nothing from IR text or user input reaches
the text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from llvmlite import ir

from fusejit.codegen.cpu import gemm
from fusejit.codegen.cpu.printer import runs_in_chunks
from fusejit.codegen.exprs import (
    COMPARISONS,
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
    walk,
)
from fusejit.codegen.kernel import Assign, If, Kernel, Let, Loop, Matmul, Stmt, Store, nodes, statements
from fusejit.ir.dtypes import DType

#: A hash of this file, part of a compiled kernel's cache key.
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
#: The kernel function's name in the text; the compiler gives it a unique symbol.
KERNEL_SYMBOL = "fusejit_kernel"
#: Prefix of the declared math-library functions: ``fusejit.math.exp_f32``.
MATH_PREFIX = "fusejit.math."

_I1, _I8, _I32, _I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_PTR = ir.PointerType()
_VALUE_TYPE = {DType.bool: _I1, DType.i32: _I32, DType.i64: _I64, DType.f32: ir.FloatType(),
               DType.f64: ir.DoubleType()}
_MEMORY_TYPE = {**_VALUE_TYPE, DType.bool: _I8}
# Numba's flattened array argument: meminfo, parent, nitems, itemsize, data, shape, stride.
_ARRAY_FIELDS = (_PTR, _PTR, _I64, _I64, _PTR, _I64, _I64)
_DATA_FIELD = 4
_FLOAT_COMPARE = {BinaryOp.EQ: "==", BinaryOp.NE: "!=", BinaryOp.LT: "<", BinaryOp.LE: "<=", BinaryOp.GT: ">",
                  BinaryOp.GE: ">="}
_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS = 101, 111, 112
_CBLAS = {DType.f32: "fusejit_cblas_sgemm", DType.f64: "fusejit_cblas_dgemm"}
_ROUNDING = {UnaryOp.FLOOR: "llvm.floor", UnaryOp.CEIL: "llvm.ceil", UnaryOp.RINT: "llvm.rint"}


def unsupported(kernel: Kernel) -> str | None:
    """None if ``kernel`` prints as LLVM IR here, else why not."""
    chunked = runs_in_chunks(kernel)
    for s in statements(kernel.body):
        if isinstance(s, Loop) and s.parallel and not chunked:
            return "a parallel loop that is not the kernel's chunked loop (a Numba parfor)"
        if isinstance(s, Matmul) and not gemm.CBLAS:
            return "a GEMM without SciPy's bundled OpenBLAS"
    for e in nodes(kernel.body):
        why = _unsupported_node(e, chunked)
        if why:
            return why
    return None


def _unsupported_node(e: Expr, chunked: bool) -> str | None:
    if isinstance(e, ThreadId) and not chunked:
        return "the thread number outside a chunked loop"
    if isinstance(e, Binary):
        if e.op in (BinaryOp.MIN, BinaryOp.MAX, BinaryOp.FLOORDIV, BinaryOp.MOD) and not e.dtype.is_int:
            return f"{e.op.value} of {e.dtype.value}"
        if e.op is BinaryOp.DIV and not e.dtype.is_float:
            return f"true division of {e.dtype.value}"
        if _operand_dtype(e) is None:
            return f"{e.op.value} of {e.a.dtype.value} and {e.b.dtype.value}"
    if isinstance(e, Load) and not e.index.dtype.is_int:
        return "an index that is not an integer"
    if isinstance(e, MathCall) and not all(a.dtype.is_float for a in e.args):
        return f"{e.fn} of a non-float"
    return None


def _operand_dtype(e: Binary) -> DType | None:
    """The dtype ``e`` computes in: its operands', an index literal taking the other's;
    None for two different ones."""
    a, b = e.a.dtype, e.b.dtype
    if a == b:
        return a
    if isinstance(e.a, Lit) and b.is_int:
        return b
    if isinstance(e.b, Lit) and a.is_int:
        return a
    return None


def module_text(kernel: Kernel) -> str:
    """The LLVM IR of ``kernel`` (``unsupported(kernel)`` must be None)."""
    return _Printer(kernel).text()


def math_symbol(fn: str, dtype: DType) -> str:
    return f"{MATH_PREFIX}{fn}_{ {DType.f32: 'f32', DType.f64: 'f64'}[dtype]}"


class _Printer:
    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self.chunked = runs_in_chunks(kernel)
        self.module = ir.Module(name=kernel.name)
        params = [_PTR, _PTR] + [f for _ in range(len(kernel.arrays) + 1) for f in _ARRAY_FIELDS]
        params += [_I64] * (3 * self.chunked)
        self.fn = ir.Function(self.module, ir.FunctionType(_I32, params), name=KERNEL_SYMBOL)
        self.entry = self.fn.append_basic_block("entry")
        self.allocas = ir.IRBuilder(self.entry)
        self.b = ir.IRBuilder(self.fn.append_basic_block("body"))
        self.dtypes = {a.name: a.dtype for a in kernel.arrays}
        self.data = {a.name: self.fn.args[2 + 7 * k + _DATA_FIELD] for k, a in enumerate(kernel.arrays)}
        sizes = self.fn.args[2 + 7 * len(kernel.arrays) + _DATA_FIELD]
        self.slots: dict[str, Any] = {}  # variable name -> its alloca
        self.var_dtype: dict[str, DType] = {}
        self.chunk_args = self.fn.args[-3:] if self.chunked else ()
        for k, v in enumerate(kernel.ints):
            ptr = self.b.gep(sizes, [_I64(k)], inbounds=True, source_etype=_I64)
            self._define(v.name, DType.i64, self.b.load(ptr, typ=_I64, align=8))

    def text(self) -> str:
        self.block(self.kernel.body)
        self.b.ret(_I32(0))
        self.allocas.branch(self.fn.blocks[1])
        return f"; fusejit kernel {self.kernel.name} ({self.kernel.kind})\n{self.module}"

    # Variables ------------------------------------------------------------------------
    def _define(self, name: str, dtype: DType, value: Any) -> None:
        if name not in self.slots:
            self.slots[name] = self.allocas.alloca(_VALUE_TYPE[dtype])
            self.var_dtype[name] = dtype
        self.b.store(value, self.slots[name])

    def _slot(self, ty: ir.Type) -> Any:
        return self.allocas.alloca(ty)

    # Statements -----------------------------------------------------------------------
    def block(self, stmts: list[Stmt]) -> None:
        for s in stmts:
            if isinstance(s, Let | Assign):
                self._define(s.var.name, s.var.dtype, self.coerce(s.expr, s.var.dtype))
            elif isinstance(s, Store):
                dtype = self.dtypes[s.array]
                value = self.cast(self.expr(s.value), s.value.dtype, dtype)
                if dtype.is_bool:
                    value = self.b.zext(value, _I8)
                self.b.store(value, self.element(s.array, s.index), align=dtype.itemsize)
            elif isinstance(s, Loop):
                self.loop(s)
            elif isinstance(s, If):
                with self.b.if_else(self.truth(s.cond)) as (then, orelse):
                    with then:
                        self.block(s.then)
                    with orelse:
                        self.block(s.orelse)
            elif isinstance(s, Matmul):
                self.matmul(s)
            else:  # pragma: no cover
                raise TypeError(f"unknown statement {s!r}")

    def loop(self, s: Loop) -> None:
        start, stop = self.expr(s.start), self.expr(s.stop)
        if s.parallel and self.chunked:  # this chunk's share: chunk k of c starts at span * k // c
            chunk, chunks, _ = self.chunk_args
            span = self.b.sub(stop, start)
            stop = self.b.add(start, self.b.sdiv(self.b.mul(span, self.b.add(chunk, _I64(1))), chunks))
            start = self.b.add(start, self.b.sdiv(self.b.mul(span, chunk), chunks))
        self._define(s.var.name, DType.i64, start)
        slot = self.slots[s.var.name]
        head, body, done = (self.fn.append_basic_block(n) for n in ("loop", "loop.body", "loop.end"))
        self.b.branch(head)
        self.b.position_at_end(head)
        self.b.cbranch(self.b.icmp_signed("<", self.b.load(slot, typ=_I64), stop), body, done)
        self.b.position_at_end(body)
        self.block(s.body)
        self.b.store(self.b.add(self.b.load(slot, typ=_I64), _I64(1)), slot)
        self.b.branch(head)
        self.b.position_at_end(done)

    def matmul(self, s: Matmul) -> None:
        """``fusejit.codegen.cpu.gemm``'s GEMM: nothing for an empty product, zeros (unless
        accumulating) for an empty contraction, else CBLAS, per batch element."""
        dtype = self.dtypes[s.out]
        m, k, n, batch = (self.expr(e) for e in (s.m, s.k, s.n, s.batch))
        lhs_t, rhs_t = (self.flag(t) for t in (s.lhs_t, s.rhs_t))
        if s.strided is not None:
            offsets = [self.expr(e) for e in s.strided.offsets]
            lda, ldb, ldc = (self.expr(e) for e in s.strided.rows)
            accumulate = self.truth(s.strided.accumulate)
            self.gemm(dtype, (m, n, k), (s.lhs, s.rhs, s.out), offsets, (lda, ldb, ldc), (lhs_t, rhs_t), accumulate)
            return
        lda = self.b.select(lhs_t, m, k)
        ldb = self.b.select(rhs_t, k, n)
        index = self._slot(_I64)
        self.b.store(_I64(0), index)
        head, body, done = (self.fn.append_basic_block(x) for x in ("gemm.batch", "gemm.body", "gemm.end"))
        self.b.branch(head)
        self.b.position_at_end(head)
        i = self.b.load(index, typ=_I64)
        self.b.cbranch(self.b.icmp_signed("<", i, batch), body, done)
        self.b.position_at_end(body)
        offsets = [self.b.mul(i, self.b.mul(x, y)) for x, y in ((m, k), (k, n), (m, n))]
        self.gemm(dtype, (m, n, k), (s.lhs, s.rhs, s.out), offsets, (lda, ldb, n), (lhs_t, rhs_t), _I1(0))
        self.b.store(self.b.add(i, _I64(1)), index)
        self.b.branch(head)
        self.b.position_at_end(done)

    def gemm(self, dtype: DType, mnk: tuple, arrays: tuple, offsets: list, leading: tuple, flags: tuple,
             accumulate: Any) -> None:
        m, n, k = mnk
        b = self.b
        empty = b.or_(b.icmp_signed("==", m, _I64(0)), b.icmp_signed("==", n, _I64(0)))
        with b.if_then(b.not_(empty)):
            with b.if_else(b.icmp_signed("==", k, _I64(0))) as (no_terms, terms):
                with no_terms, b.if_then(b.not_(accumulate)):
                    self.zero_rows(dtype, arrays[2], offsets[2], m, n, leading[2])
                with terms:
                    ty = _VALUE_TYPE[dtype]
                    fnty = ir.FunctionType(ir.VoidType(), [_I32] * 6 + [ty, _PTR, _I32, _PTR, _I32, ty, _PTR, _I32])
                    cblas = self.module.globals.get(_CBLAS[dtype]) or ir.Function(self.module, fnty, _CBLAS[dtype])
                    trans = [b.select(t, _I32(_CBLAS_TRANS), _I32(_CBLAS_NO_TRANS)) for t in flags]
                    lda, ldb, ldc = (b.trunc(x, _I32) for x in leading)
                    a, bb, c = (self.element(name, off) for name, off in zip(arrays, offsets, strict=True))
                    beta = b.select(accumulate, ir.Constant(ty, 1.0), ir.Constant(ty, 0.0))
                    b.call(cblas, [_I32(_CBLAS_ROW_MAJOR), *trans, b.trunc(m, _I32), b.trunc(n, _I32),
                                   b.trunc(k, _I32), ir.Constant(ty, 1.0), a, lda, bb, ldb, beta, c, ldc])

    def zero_rows(self, dtype: DType, array: str, offset: Any, m: Any, n: Any, ldc: Any) -> None:
        """``c[offset + i * ldc + j] = 0`` for ``i < m``, ``j < n``."""
        index = self._slot(_I64)
        self.b.store(_I64(0), index)
        head, body, done = (self.fn.append_basic_block(x) for x in ("zero", "zero.body", "zero.end"))
        self.b.branch(head)
        self.b.position_at_end(head)
        i = self.b.load(index, typ=_I64)
        self.b.cbranch(self.b.icmp_signed("<", i, self.b.mul(m, n)), body, done)
        self.b.position_at_end(body)
        row, col = self.b.sdiv(i, n), self.b.srem(i, n)
        at = self.b.add(offset, self.b.add(self.b.mul(row, ldc), col))
        self.b.store(ir.Constant(_MEMORY_TYPE[dtype], 0), self.element(array, at))
        self.b.store(self.b.add(i, _I64(1)), index)
        self.b.branch(head)
        self.b.position_at_end(done)

    def flag(self, t: bool | Expr) -> Any:
        return _I1(int(t)) if isinstance(t, bool) else self.truth(t)

    def truth(self, e: Expr) -> Any:
        """``e`` as an i1: nonzero."""
        return self.cast(self.expr(e), e.dtype, DType.bool)

    # Expressions ----------------------------------------------------------------------
    def element(self, array: str, index: Any) -> Any:
        """The address of ``array[index]`` (an index value, or an expression)."""
        if not isinstance(index, ir.Value):
            index = self.coerce(index, DType.i64)
        return self.b.gep(self.data[array], [index], inbounds=True, source_etype=_MEMORY_TYPE[self.dtypes[array]])

    def coerce(self, e: Expr, dtype: DType) -> Any:
        """``e`` as a ``dtype`` value (an index literal or an int32 used as an index)."""
        if isinstance(e, Lit):
            return self.constant(e.value, dtype)
        return self.cast(self.expr(e), e.dtype, dtype)

    @staticmethod
    def constant(value: Any, dtype: DType) -> Any:
        if dtype.is_float:
            return ir.Constant(_VALUE_TYPE[dtype], float(value))
        return ir.Constant(_VALUE_TYPE[dtype], int(value))

    def expr(self, e: Expr) -> Any:
        b = self.b
        if isinstance(e, Var):
            return b.load(self.slots[e.name], typ=_VALUE_TYPE[self.var_dtype[e.name]])
        if isinstance(e, Lit):
            return _I64(e.value)
        if isinstance(e, Const):
            return self.constant(e.value, e.dtype)
        if isinstance(e, Load):
            dtype = self.dtypes[e.array]
            value = b.load(self.element(e.array, e.index), typ=_MEMORY_TYPE[dtype], align=dtype.itemsize)
            return b.icmp_unsigned("!=", value, _I8(0)) if dtype.is_bool else value
        if isinstance(e, Cast):
            return self.cast(self.expr(e.x), e.x.dtype, e.dtype)
        if isinstance(e, ThreadId):
            return self.chunk_args[2]
        if isinstance(e, MathCall):
            return self.math(e)
        if isinstance(e, Select):
            return self.select(e)
        if isinstance(e, Unary):
            return self.unary(e)
        assert isinstance(e, Binary), e
        return self.binary(e)

    def select(self, e: Select) -> Any:
        cond = self.truth(e.cond)
        if not any(_traps(x) for x in (e.then, e.orelse)):
            return self.b.select(cond, self.coerce(e.then, e.dtype), self.coerce(e.orelse, e.dtype))
        # An arm that reads memory or divides runs only when taken (a guarded load).
        slot = self._slot(_VALUE_TYPE[e.dtype])
        with self.b.if_else(cond) as (then, orelse):
            with then:
                self.b.store(self.coerce(e.then, e.dtype), slot)
            with orelse:
                self.b.store(self.coerce(e.orelse, e.dtype), slot)
        return self.b.load(slot, typ=_VALUE_TYPE[e.dtype])

    def math(self, e: MathCall) -> Any:
        ty = _VALUE_TYPE[e.dtype]
        args = [self.expr(a) for a in e.args]
        if e.fn == "accumulate":  # the one reassociable add (mathlib.accumulate_*): sums vectorize
            total, x = args
            if e.args[1].dtype != e.dtype:
                x = self.b.fpext(x, ty)
            return self.b.fadd(total, x, flags=("reassoc",))
        name = math_symbol(e.fn, e.dtype)
        callee = self.module.globals.get(name)
        if callee is None:  # Numba's calling convention: status, result through retptr
            callee = ir.Function(self.module, ir.FunctionType(_I32, [_PTR, _PTR] + [a.type for a in args]), name)
        result, excinfo = self._slot(ty), self._slot(_PTR)
        self.b.call(callee, [result, excinfo, *args])
        return self.b.load(result, typ=ty)

    def unary(self, e: Unary) -> Any:
        b, x, dtype = self.b, self.expr(e.x), e.dtype
        if e.op is UnaryOp.NEG:
            return b.fneg(x) if dtype.is_float else b.neg(x)
        if e.op is UnaryOp.NOT:
            return b.not_(x)
        if e.op is UnaryOp.ABS:
            if dtype.is_float:
                return self.intrinsic("llvm.fabs", dtype, [x])
            return b.select(b.icmp_signed("<", x, ir.Constant(x.type, 0)), b.neg(x), x)
        return self.intrinsic(_ROUNDING[e.op], dtype, [x])

    def intrinsic(self, name: str, dtype: DType, args: list) -> Any:
        ty = _VALUE_TYPE[dtype]
        return self.b.call(self.module.declare_intrinsic(name, [ty], ir.FunctionType(ty, [ty] * len(args))), args)

    def binary(self, e: Binary) -> Any:
        b, op = self.b, e.op
        dtype = _operand_dtype(e)
        x, y = self.coerce(e.a, dtype), self.coerce(e.b, dtype)
        if op in COMPARISONS:
            if dtype.is_float:
                return b.fcmp_unordered("!=", x, y) if op is BinaryOp.NE else b.fcmp_ordered(_FLOAT_COMPARE[op], x, y)
            compare = b.icmp_unsigned if dtype.is_bool else b.icmp_signed
            return compare(_FLOAT_COMPARE[op], x, y)
        if dtype.is_float:
            return {BinaryOp.ADD: b.fadd, BinaryOp.SUB: b.fsub, BinaryOp.MUL: b.fmul, BinaryOp.DIV: b.fdiv}[op](x, y)
        simple = {BinaryOp.ADD: b.add, BinaryOp.SUB: b.sub, BinaryOp.MUL: b.mul, BinaryOp.AND: b.and_,
                  BinaryOp.OR: b.or_, BinaryOp.XOR: b.xor, BinaryOp.SHL: b.shl, BinaryOp.SHR: b.ashr}
        if op in simple:
            return simple[op](x, y)
        if op in (BinaryOp.MIN, BinaryOp.MAX):
            return b.select(b.icmp_signed("<" if op is BinaryOp.MIN else ">", x, y), x, y)
        return self.floor_division(op, x, y)

    def floor_division(self, op: BinaryOp, x: Any, y: Any) -> Any:
        """NumPy's integer ``//`` or ``%``: rounded toward minus infinity, 0 for a zero
        divisor; a divisor of 0 or -1 never reaches ``sdiv`` (it traps, and MIN // -1
        overflows), the quotient by -1 being the wrapped negation and the remainder 0."""
        b = self.b
        zero, one = ir.Constant(x.type, 0), ir.Constant(x.type, 1)
        minus_one = ir.Constant(x.type, -1)
        special = b.or_(b.icmp_signed("==", y, zero), b.icmp_signed("==", y, minus_one))
        safe = b.select(special, one, y)
        q, r = b.sdiv(x, safe), b.srem(x, safe)
        # A nonzero remainder whose sign differs from the divisor's: one step toward -inf.
        adjust = b.and_(b.icmp_signed("!=", r, zero), b.icmp_signed("<", b.xor(r, safe), zero))
        if op is BinaryOp.FLOORDIV:
            result = b.select(adjust, b.sub(q, one), q)
            by_special = b.select(b.icmp_signed("==", y, zero), zero, b.neg(x))
        else:
            result = b.select(adjust, b.add(r, safe), r)
            by_special = zero
        return b.select(special, by_special, result)

    def cast(self, value: Any, src: DType, dst: DType) -> Any:
        """``value`` (of ``src``) as ``dst``, as NumPy's ``astype``/Numba's conversions do."""
        if src == dst:
            return value
        b, ty = self.b, _VALUE_TYPE[dst]
        if dst.is_bool:
            if src.is_float:
                return b.fcmp_unordered("!=", value, ir.Constant(value.type, 0.0))
            return b.icmp_unsigned("!=", value, ir.Constant(value.type, 0))
        if src.is_bool:
            return b.uitofp(value, ty) if dst.is_float else b.zext(value, ty)
        if src.is_float and dst.is_float:
            return b.fpext(value, ty) if dst.itemsize > src.itemsize else b.fptrunc(value, ty)
        if src.is_float:
            return b.fptosi(value, ty)
        if dst.is_float:
            return b.sitofp(value, ty)
        return b.sext(value, ty) if dst.itemsize > src.itemsize else b.trunc(value, ty)


def _traps(e: Expr) -> bool:
    """Whether evaluating ``e`` when its guard is false could fault: it reads an array
    (integer divisions never trap here: ``floor_division``)."""
    return any(isinstance(n, Load) for n in walk(e))
