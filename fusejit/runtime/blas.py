"""The thread count of the BLAS that kernels call (SciPy's OpenBLAS: ``fusejit.codegen.cpu.gemm``).

On a machine with few cores, OpenBLAS's thread pool and Numba's (OpenMP) pool fight when
a function alternates GEMMs with parallel kernels: the threads of one spin while the
other needs the cores. Measured on the 2-core VMs, training steps (ms per step with 1 vs
2 BLAS threads): small CNN, batch 256: 5.5 vs 17-48; MLP 64-256-256-10, batch 4096:
17.4 vs 40.3; with 512-wide layers: 59.8 vs 56.2; batch 16384: 79.7 vs 83.3; 1024-wide
layers, batch 2048: 98.2 vs 79.7, batch 4096: 193 vs 128; batch 512 (no parallel
kernels): 2.1 vs 1.5.

Without parallel kernels two BLAS threads still lose as soon as another process keeps one
of the cores busy (as on a shared machine): OpenBLAS splits each GEMM in two and waits for
a thread that gets no core. Measured there (SciPy's OpenBLAS from a Numba loop, load 3-5
on 2 cores, ms per GEMM with 1 vs 2 threads): 32x576x896 (a conv's im2col chunk) 1.9 vs
6.8, 64x9x4096 0.63 vs 23.6, 256^3 1.4 vs 24, 512^3 16.6 vs 47, 1024^3 121 vs 155; the
digits CNN step (W8, 5 conv GEMM kernels, no parallel kernel) 10.2 ms vs 128 ms. One
thread costs at most the 1.5x of the unloaded MLP above; two cost up to 35x. So by default
(``FUSEJIT_BLAS_THREADS=auto``) an executable whose largest GEMM is under
``SMALL_GEMM_FLOPS`` runs its GEMMs on one thread, and any other executable with GEMMs
uses the BLAS's own default; an integer fixes the count for every executable. NumPy's own
OpenBLAS (a separate library) is never touched; SciPy's is process-wide, so a
``scipy.linalg`` call made after a fusejit call sees the count fusejit last set.
"""

from __future__ import annotations

import ctypes
from typing import Any

from fusejit import config

_state: dict[str, Any] = {"lib": None, "default": None, "current": None, "missing": False, "warmed": False}


def _library() -> Any:
    """SciPy's bundled OpenBLAS (the one the kernels call), or None if it is not found."""
    if _state["lib"] is None and not _state["missing"]:
        from fusejit.codegen.cpu.gemm import openblas

        lib = openblas()
        try:
            lib.scipy_openblas_set_num_threads.argtypes = [ctypes.c_int]
            _state["default"] = int(lib.scipy_openblas_get_num_threads())
        except AttributeError:  # another BLAS build (None included): leave it alone
            _state["missing"] = True
            return None
        _state["current"] = _state["default"]
        _state["lib"] = lib
    return _state["lib"]


# Above about this many flops (2*M*K*N) a GEMM gains more from BLAS threads than the
# thread fight costs (the crossover of the measurements above).
SMALL_GEMM_FLOPS = 2**31


def threads_for(largest_gemm_flops: int) -> int | None:
    """The BLAS thread count an executable whose largest GEMM does ``largest_gemm_flops``
    should run with (None: leave it alone). Warms the BLAS up on the first call."""
    setting = str(config.value("blas_threads")).strip().lower()
    if _library() is None:
        return None
    warm_up()
    if setting == "auto":
        # Small GEMMs on one thread, with or without parallel kernels beside them: a
        # loaded core stalls a split GEMM (see above).
        return 1 if largest_gemm_flops < SMALL_GEMM_FLOPS else _state["default"]
    try:
        return max(1, int(setting))
    except ValueError:
        return None


def use(threads: int | None) -> None:
    """Sets the BLAS thread count if it differs from the last one set (cheap to repeat)."""
    if threads is not None and threads != _state["current"] and _state["lib"] is not None:
        _state["lib"].scipy_openblas_set_num_threads(threads)
        _state["current"] = threads


def warm_up() -> None:
    """Once per process, before the first GEMM kernel runs: one float32 GEMM with a
    512x512 result (and 64 terms each, about 1 ms) through the bundled OpenBLAS's CBLAS
    entry, which the kernels call too (``fusejit.codegen.cpu.gemm``), called with ctypes:
    calling a kernel's own ``gemm_f32`` from Python cost 0.5-1 s of Numba typing or cache
    loading, and SciPy's binding imports ``scipy.linalg`` (0.25-0.5 s).

    Measured on the 2-core VMs (SciPy's OpenBLAS, Haswell kernels, 1 thread): until a
    GEMM whose result has about 400x400 elements or more has run in the process, every
    GEMM of it ran about 3.5x slower, whatever its shape, its operands' addresses or the
    calling thread. 512x256 @ 256x256 took 6.9 ms against 1.9, 256^3 3.4 ms against 0.97,
    and the W5 MLP step 25-28 ms against 8.4-11.5. A GEMM with 400 terms but a small result
    did not help, nor did a GEMM in NumPy's own OpenBLAS; one in SciPy's float64 routine
    did, and one through SciPy's float32 binding (gemm_f32 512x256 @ 256x256 after it:
    1.9-2.0 ms, against 7.0 without). The cause lies in how that OpenBLAS prepares its
    buffers; it was not found."""
    if _state["warmed"]:
        return
    _state["warmed"] = True
    lib = _library()
    if lib is None:
        return
    import numpy as np

    a = np.ones((512, 64), np.float32)
    c = np.empty((512, 512), np.float32)
    sgemm = lib.scipy_cblas_sgemm
    i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
    sgemm.restype = None
    # Row-major (101) C = A A^T (111: A as it is, 112: transposed).
    sgemm(101, 111, 112, 512, 512, 64, 1.0, a.ctypes.data, 64, a.ctypes.data, 64, 0.0, c.ctypes.data, 512)
