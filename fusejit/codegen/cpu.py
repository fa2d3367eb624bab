"""The CPU printer: a target-neutral ``Kernel`` as the source of a Numba module.

The only CPU-specific choices live here: ``parallel`` loops print as ``prange`` (and make
the function ``parallel=True``), a ``Matmul`` prints as ``np.dot`` on reshaped views (BLAS
through SciPy, in a serial function), and every function is compiled by ``kernel_jit``:
``error_model='numpy'`` (division by zero gives inf/nan instead of a check that stops
vectorization) and the kernel's fast-math flags (never ``nnan``/``ninf``).

A module's text depends only on the kernel (no shapes, no source lines, no file names):
it is content-addressed, so identical kernels share one compiled module across
functions, batch sizes and processes.
"""

from __future__ import annotations

from typing import Any

from fusejit.codegen import mathlib
from fusejit.codegen.kernel import Assign, Call, Comment, If, Kernel, Let, Loop, Matmul, Store, subscript

# ``thread_id()`` in a kernel expression is the index of the thread running it (0 in a
# serial kernel): per-thread scratch rows.

# Set by fusejit.runtime.cache before it executes a kernel module: whether Numba may
# cache the compiled machine code next to the module's file.
DISK_CACHE = False


def kernel_jit(parallel: bool = False, helper: bool = False) -> Any:
    """The decorator generated modules use (reads the cache mode at module load).

    No fast-math flag: each would let LLVM change results in ways the IR does not allow
    (``contract`` turned ``x*s - max(x*s)`` into an FMA whose error made a softmax NaN);
    sums vectorize through the one reassociable add, ``mathlib.accumulate_*``.
    No C-callable wrapper, and none callable from Python for a ``helper`` (called from
    its kernel only): building them was a quarter of a kernel's compile time."""
    import numba

    return numba.njit(
        cache=DISK_CACHE,
        parallel=parallel,
        error_model="numpy",
        boundscheck=False,
        no_cfunc_wrapper=True,
        no_cpython_wrapper=helper,
    )


def module_source(kernel: Kernel) -> str:
    """The Numba source of ``kernel`` and its helpers (one module)."""
    lines = [f"# fusejit kernel {kernel.name} ({kernel.kind})"]
    lines += [f"#   {d}" for d in kernel.doc]
    lines += [
        f"# math library {mathlib.SOURCE_HASH}",
        "import numpy as np",
        "from numba import get_thread_id as thread_id, prange",
        "from fusejit.codegen.cpu import kernel_jit",
    ]
    funcs = sorted(kernel.all_mathlib())
    if funcs:
        lines.append(f"from fusejit.codegen.mathlib import {', '.join(funcs)}")
    lines += ["", "idx = np.uint64  # array indices are never negative: no wraparound code"]
    for name, expr in kernel.all_consts().items():
        lines.append(f"{name} = {expr}")
    for helper in kernel.helpers:
        lines += ["", ""] + _function(helper, helper=True)
    lines += ["", ""] + _function(kernel)
    return "\n".join(lines) + "\n"


def _function(kernel: Kernel, helper: bool = False) -> list[str]:
    lines = [
        f"@kernel_jit(parallel={kernel.parallel!r}{', helper=True' if helper else ''})",
        f"def {kernel.name}({', '.join(kernel.params)}):",
    ]
    body = _block(kernel.body, 1)
    return lines + (body or ["    pass"])


def _block(stmts: list[Any], depth: int) -> list[str]:
    pad = "    " * depth
    out: list[str] = []
    for s in stmts:
        if isinstance(s, (Let, Assign)):
            out.append(f"{pad}{s.var} = {s.expr}")
        elif isinstance(s, Store):
            out.append(f"{pad}{subscript(s.array, s.index)} = {s.expr}")
        elif isinstance(s, Loop):
            rng = "prange" if s.parallel else "range"
            bounds = s.stop if s.start == "0" else f"{s.start}, {s.stop}"
            out.append(f"{pad}for {s.var} in {rng}({bounds}):")
            out += _block(s.body, depth + 1) or [f"{pad}    pass"]
        elif isinstance(s, If):
            out.append(f"{pad}if {s.cond}:")
            out += _block(s.then, depth + 1) or [f"{pad}    pass"]
            out.append(f"{pad}else:")
            out += _block(s.orelse, depth + 1) or [f"{pad}    pass"]
        elif isinstance(s, Matmul):
            out += _matmul(s, pad)
        elif isinstance(s, Call):
            out.append(f"{pad}{s.helper}({', '.join(s.args)})")
        elif isinstance(s, Comment):
            out.append(f"{pad}# {s.text}")
        else:  # pragma: no cover
            raise TypeError(f"unknown statement {s!r}")
    return out


def _matmul(s: Matmul, pad: str) -> list[str]:
    """``np.dot`` on 2-d views (transposed views are F-ordered; BLAS takes them as is)."""
    lhs_shape = (s.k, s.m) if s.lhs_t else (s.m, s.k)
    rhs_shape = (s.n, s.k) if s.rhs_t else (s.k, s.n)
    lt = ".T" if s.lhs_t else ""
    rt = ".T" if s.rhs_t else ""
    if s.batch == "1":
        return [
            f"{pad}np.dot({s.lhs}.reshape(({lhs_shape[0]}, {lhs_shape[1]})){lt}, "
            f"{s.rhs}.reshape(({rhs_shape[0]}, {rhs_shape[1]})){rt}, {s.out}.reshape(({s.m}, {s.n})))"
        ]
    return [
        f"{pad}mm_a = {s.lhs}.reshape(({s.batch}, {lhs_shape[0]}, {lhs_shape[1]}))",
        f"{pad}mm_b = {s.rhs}.reshape(({s.batch}, {rhs_shape[0]}, {rhs_shape[1]}))",
        f"{pad}mm_c = {s.out}.reshape(({s.batch}, {s.m}, {s.n}))",
        f"{pad}for mm_i in range({s.batch}):",
        f"{pad}    np.dot(mm_a[mm_i]{lt}, mm_b[mm_i]{rt}, mm_c[mm_i])",
    ]
