"""The CPU target's pieces: the printer that spells a kernel as a Numba module
(``printer``), the vectorizable math library those modules import (``mathlib``), and the
decorator every generated function is compiled with (``kernel_jit``, below: generated
modules import it from here)."""

from __future__ import annotations

from typing import Any

# Set by fusejit.runtime.cache before it executes a kernel module: whether Numba may
# cache the compiled machine code next to the module's file.
DISK_CACHE = False


def kernel_jit(parallel: bool = False, nogil: bool = False) -> Any:
    """The decorator generated modules use (reads the cache mode at module load).
    ``nogil``: a chunked kernel, whose chunks run on several threads at once
    (``fusejit.runtime.chunks``).

    No fast-math flag: each would let LLVM change results in ways the IR does not allow
    (``contract`` turned ``x*s - max(x*s)`` into an FMA whose error made a softmax NaN);
    sums vectorize through the one reassociable add, ``mathlib.accumulate_*``.
    No wrappers: neither the C-callable one nor the Python-callable one, which was a
    quarter of a kernel's compilation (``fusejit.runtime.native_calls`` calls the kernel's
    native code through a trampoline shared by all kernels with as many arrays)."""
    import numba

    return numba.njit(
        cache=DISK_CACHE,
        parallel=parallel,
        nogil=nogil,
        error_model="numpy",
        boundscheck=False,
        no_cfunc_wrapper=True,
        no_cpython_wrapper=True,
    )
