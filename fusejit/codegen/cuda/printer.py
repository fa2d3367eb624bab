"""The CUDA printer: a ``Kernel`` as the source of a Numba CUDA module.

Each launch of ``fusejit.codegen.cuda.launches.phases`` is a ``@cuda.jit`` function with
the kernel's parameters (``<name>_<k>``); the module's function named after the kernel is
the host-side *launcher*, a plain Python function with the kernel's parameters that
computes each grid's size from the int parameters and launches the phases in order
(``fusejit.codegen.cuda.launch_config`` and ``row_launch_config`` pick blocks and
threads) through ``fusejit.codegen.cuda.launch.launch``, which lets the executable record
them for replay. A grid phase whose loop uses ``ThreadId`` (per-thread scratch rows) runs on at
most ``max_threads`` threads; a cooperative row phase runs a block of ``row_threads()``
threads per row, with one shared-memory array per accumulator. A top-level ``Matmul`` is
a call of ``fusejit.codegen.cuda.gemm.gemm`` in the launcher.

Expressions print exactly as for the CPU (both are Numba's Python dialect:
``fusejit.codegen.cpu.printer.NumbaPrinter``), except rounding; math calls name the
device functions of ``fusejit.codegen.cuda.mathlib``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fusejit.codegen.cpu.printer import NP_NAME, NumbaPrinter, constant_source, math_function
from fusejit.codegen.cuda import row_threads
from fusejit.codegen.cuda.launches import LEFT, RIGHT, Phase, atomic_addend, phases, reads
from fusejit.codegen.exprs import ZERO, Load, Unary, UnaryOp, var_names, walk
from fusejit.codegen.kernel import Kernel, Let, Loop, Matmul, Stmt, Store, Unsupported, nodes

# In every module's header: a cached compilation of a module is reused only with the
# device library it was compiled against (Numba's cache checks the module's file alone).
MATHLIB_HASH = hashlib.sha256(Path(__file__).with_name("mathlib.py").read_bytes()).hexdigest()[:16]

ROUNDING = {UnaryOp.FLOOR: "floor", UnaryOp.CEIL: "ceil", UnaryOp.RINT: "rint"}

# Names the printer introduces (the kernel IR's are a<k>, n<k>, v<k>, r<k>, i<k>, c<k>).
_TID, _REST, _TOTAL = "gtid", "grest", "gtotal"


# ---------------------------------------------------------------------------------------
# Printing


class CudaPrinter(NumbaPrinter):
    THREAD_ID = "gthread"
    PARALLEL_RANGE = "range"  # inside a launch, a loop runs on the launching thread

    def block(self, stmts: list[Stmt], depth: int) -> list[str]:
        out: list[str] = []
        for s in stmts:
            if isinstance(s, Matmul):
                raise Unsupported("the CUDA printer cannot place a GEMM inside a loop")
            addend = atomic_addend(s)
            if addend is not None:
                assert isinstance(s, Store)
                out.append(f"{'    ' * depth}cuda.atomic.add({s.array}, idx({self.expr(s.index)}), {self.expr(addend)})")
            else:
                out += super().block([s], depth)
        return out

    def load(self, array: str, index: str) -> str:
        return f"{array}[idx({index})]"

    def store(self, array: str, index: str, value: str) -> str:
        return f"{array}[idx({index})] = {value}"

    def unary(self, e: Unary) -> str:
        if e.op in ROUNDING:  # the device library's (NumPy's rounding ufuncs do not compile)
            return f"{math_function(ROUNDING[e.op], e.dtype)}({self.expr(e.x)})"
        return super().unary(e)

    def lets(self, needed: set[str], preamble: list[Let], pad: str, host: bool = False) -> list[str]:
        """The preamble definitions ``needed`` reads, transitively, in order; on the
        ``host`` (the launcher), only sizes and offsets, never an array's element."""
        want = set(needed)
        for s in reversed(preamble):
            if s.var.name in want:
                want |= var_names(s.expr)
        chosen = [s for s in preamble if s.var.name in want]
        if host and any(isinstance(n, Load) for s in chosen for n in walk(s.expr)):
            raise Unsupported("a CUDA launch's size depends on an array's element")
        return [f"{pad}{s.var.name} = {self.expr(s.expr)}" for s in chosen]

    def total(self, ph: Phase) -> str:
        return " * ".join(f"np.int64({self.extent(lp)})" for lp in ph.loops)

    def phase(self, kernel: Kernel, k: int, ph: Phase, preamble: list[Let]) -> list[str]:
        head = ["@kernel_jit()", f"def {kernel.name}_{k}({', '.join(kernel.params)}):"]
        if not ph.loops:
            body = self.block(ph.body, 1)
            return head + ["    if cuda.grid(1) != 0:", "        return"] + self.lets(
                reads(ph.body), preamble, "    ") + ["    gthread = 0"] * ph.uses_thread_id + body
        if ph.reductions is not None:
            return head + self.row_phase(ph, preamble)
        needed = reads(ph.body) | {n for lp in ph.loops for n in var_names(lp.start) | var_names(lp.stop)}
        lines = head + self.lets(needed, preamble, "    ")
        lines += [f"    {_TOTAL} = {self.total(ph)}", "    gthread = cuda.grid(1)", f"    {_TID} = np.int64(gthread)",
                  f"    while {_TID} < {_TOTAL}:"]
        if len(ph.loops) == 1:
            lp = ph.loops[0]
            start = "" if lp.start == ZERO else f" + {self.operand(lp.start)}"
            lines.append(f"        {lp.var.name} = {_TID}{start}")
        else:
            lines.append(f"        {_REST} = {_TID}")
            for depth, lp in enumerate(reversed(ph.loops)):
                start = "" if lp.start == ZERO else f"{self.operand(lp.start)} + "
                if depth == len(ph.loops) - 1:
                    lines.append(f"        {lp.var.name} = {start}{_REST}")
                else:
                    ext = self.extent(lp)
                    lines += [f"        {lp.var.name} = {start}{_REST} % {ext}", f"        {_REST} = {_REST} // {ext}"]
        lines += self.block(ph.body, 2)
        lines.append(f"        {_TID} += cuda.gridsize(1)")
        return lines

    def row_phase(self, ph: Phase, preamble: list[Let]) -> list[str]:
        """A block per row (grid-stride over rows): each inner loop split over the block's
        threads, then each of its accumulators combined in shared memory."""
        (row,) = ph.loops
        block = row_threads()
        needed = reads(ph.body) | var_names(row.start) | var_names(row.stop)
        lines = self.lets(needed, preamble, "    ")
        shared = {r.var.name: f"gshared{k}" for k, r in enumerate(ph.reductions or [])}
        lines += [f"    {name} = cuda.shared.array({block}, {NP_NAME[r.var.dtype]})"
                  for r, name in zip(ph.reductions or [], shared.values(), strict=True)]
        start = "" if row.start == ZERO else f" + {self.operand(row.start)}"
        lines += [f"    {_TOTAL} = {self.total(ph)}", "    glane = cuda.threadIdx.x",
                  "    gthread = cuda.blockIdx.x  # ThreadId: the block shares a row of scratch",
                  f"    {_TID} = np.int64(cuda.blockIdx.x)", f"    while {_TID} < {_TOTAL}:",
                  f"        {row.var.name} = {_TID}{start}"]
        for s in ph.body:
            if not isinstance(s, Loop):
                lines += self.block([s], 2)
                continue
            lo = "glane" if s.start == ZERO else f"{self.operand(s.start)} + glane"
            lines.append(f"        for {s.var.name} in range({lo}, {self.expr(s.stop)}, {block}):")
            lines += self.block(s.body, 3) or ["            pass"]
            lines += self.block_reduce([r for r in ph.reductions or [] if r.loop is s], shared, block)
        lines.append(f"        {_TID} += cuda.gridDim.x")
        return lines

    def block_reduce(self, reductions: list, shared: dict[str, str], block: int) -> list[str]:
        """Each accumulator of a finished inner loop combined across the block (a tree in
        shared memory); every thread then holds the row's value. A barrier ends it either
        way: a later loop may read what other threads stored."""
        pad = "        "
        lines = [f"{pad}{shared[r.var.name]}[glane] = {r.var.name}" for r in reductions]
        lines.append(f"{pad}cuda.syncthreads()")
        if not reductions:
            return lines
        step = block // 2
        while step:
            lines.append(f"{pad}if glane < {step}:")
            for r in reductions:
                sh = shared[r.var.name]
                lines += [f"{pad}    {LEFT} = {sh}[glane]", f"{pad}    {RIGHT} = {sh}[glane + {step}]",
                          f"{pad}    {sh}[glane] = {self.expr(r.combine)}"]
            lines.append(f"{pad}cuda.syncthreads()")
            step //= 2
        lines += [f"{pad}{r.var.name} = {shared[r.var.name]}[0]" for r in reductions]
        return lines + [f"{pad}cuda.syncthreads()  # before the shared arrays are written again"]

    def launcher(self, kernel: Kernel, preamble: list[Let], launches: list[Phase]) -> list[str]:
        reads = {n for ph in launches for lp in ph.loops for n in var_names(lp.start) | var_names(lp.stop)}
        reads |= {n for ph in launches if ph.matmul is not None
                  for e in (ph.matmul.batch, ph.matmul.m, ph.matmul.k, ph.matmul.n) for n in var_names(e)}
        lines = [f"def {kernel.name}({', '.join(kernel.params)}):"] + self.lets(reads, preamble, "    ", host=True)
        args = ", ".join(kernel.params)
        for k, ph in enumerate(launches):
            if ph.matmul is not None:
                mm = ph.matmul
                if mm.strided is not None:  # the CPU's shifted conv GEMMs (gemm_in_loops only)
                    raise Unsupported("the CUDA printer has no GEMM on strided sub-matrices")
                sizes = ", ".join(self.expr(e) for e in (mm.batch, mm.m, mm.k, mm.n))
                lines.append(f"    gemm({mm.lhs}, {mm.rhs}, {mm.out}, {sizes}, {mm.lhs_t}, {mm.rhs_t})")
            elif ph.loops:
                config_of = "row_launch_config" if ph.reductions is not None else "launch_config"
                config = f"{config_of}({_TOTAL}, {ph.uses_thread_id})"
                lines += [f"    {_TOTAL} = {self.total(ph)}", f"    if {_TOTAL} > 0:",
                          f"        launch({kernel.name}_{k}, {config}, {args})"]
            else:
                lines.append(f"    launch({kernel.name}_{k}, (1, 1), {args})")
        return lines if len(lines) > 1 else lines + ["    pass"]

    def function(self, kernel: Kernel) -> list[str]:
        preamble, launches = phases(kernel)
        lines: list[str] = []
        for k, ph in enumerate(launches):
            if ph.matmul is None:
                lines += self.phase(kernel, k, ph, preamble) + ["", ""]
        return lines + self.launcher(kernel, preamble, launches)


def module_source(kernel: Kernel) -> str:
    """The Numba CUDA source of ``kernel`` (one module)."""
    p = CudaPrinter(kernel)
    # No listing of the fused ops, as on the CPU (``cpu.printer.module_source``).
    lines = [f"# fusejit cuda kernel {kernel.name} ({kernel.kind})"]
    lines += [
        f"# cuda math library {MATHLIB_HASH}",
        "import math",
        "import numpy as np",
        "from numba import cuda",
        "from fusejit.codegen.cuda import kernel_jit, launch_config, row_launch_config",
        "from fusejit.codegen.cuda.launch import launch",
    ]
    rounding = {(ROUNDING[n.op], n.dtype) for n in nodes(kernel.body)
                if isinstance(n, Unary) and n.op in ROUNDING}
    funcs = sorted(math_function(fn, dt) for fn, dt in kernel.math_calls() | rounding)
    if funcs:
        lines.append(f"from fusejit.codegen.cuda.mathlib import {', '.join(funcs)}")
    if any(isinstance(st, Matmul) for st in kernel.body):
        lines.append("from fusejit.codegen.cuda.gemm import gemm")
    lines += ["", "idx = np.uint64  # array indices are never negative"]
    for c, name in p.const_names.items():
        lines.append(f"{name} = {constant_source(c)}")
    lines += ["", ""] + p.function(kernel)
    return "\n".join(lines) + "\n"
