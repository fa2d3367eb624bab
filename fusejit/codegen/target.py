"""Code-generation targets: what differs between the CPU and, next, a GPU.

A ``Target`` is passed to fusion (``supports``) and lowering (``lower``). It holds the
primitives' codegen rules, the strategies it lowers each ``GroupKind`` with, its thread
model (from how many elements a kernel's outer loop runs on threads, and how many threads
that may be, which sizes per-thread scratch), whether floating matmuls are BLAS calls,
and its printer (a ``Kernel`` as source for its compiler). Everything else in
``fusejit.codegen`` is shared; a second target is a second ``Target`` object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fusejit import config
from fusejit.codegen import cuda
from fusejit.codegen.common import COLUMN_BLOCK, SPLIT_CHUNKS
from fusejit.codegen.cpu import printer as cpu_printer
from fusejit.codegen.cuda import printer as cuda_printer
from fusejit.codegen.kernel import Kernel, Unsupported
from fusejit.codegen.lowering import CODEGEN_RULES, STRATEGIES, LoweredKernel, Strategy, lower_on, supports_on
from fusejit.codegen.reductions import SUM_BLOCK
from fusejit.codegen.rules import CodegenRule
from fusejit.ir.core import Value
from fusejit.ir.primitives import Primitive
from fusejit.ir.transforms.fusion import FusionGroup, GroupKind


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    name: str
    rules: Mapping[Primitive, CodegenRule]
    strategies: Mapping[GroupKind, Strategy]
    parallel_threshold: Callable[[], int]  # elements from which an outer loop runs on threads
    max_threads: Callable[[], int]  # threads a parallel loop may run on
    blas: bool  # floating matmuls as BLAS calls (else loop nests)
    print_module: Callable[[Kernel], str]  # a kernel (and its helpers) as one source module
    split_chunks: Callable[[], int] = lambda: SPLIT_CHUNKS  # chunks of a parallel full reduction
    column_block: int = COLUMN_BLOCK  # columns per thread of a parallel column reduction
    sum_block: int = SUM_BLOCK  # float sums add this many elements before the running total
    gemm_in_loops: bool = True  # a Matmul may sit inside a loop (im2col chunks), not only at the top
    conv_gather: bool = False  # direct convolutions gather into each output (else scatter weights)
    blas_min_flops: Callable[[], int] = lambda: 0  # smaller float matmuls are loop nests (their epilogue fused)
    constants_as_data: bool = False  # float constants read from a constant array (codegen/constants.py)
    # A loop kernel's loops split where pad or concatenate pieces begin (one branch-free
    # loop per piece, which a CPU's vectorizer needs); a GPU keeps one loop, whose
    # iterations it distributes over threads.
    split_loops: bool = True
    # Whether a kernel runs its parallel loop in chunks on fusejit's threads rather than on
    # the compiler's: its module's function then takes ``chunk, chunks, worker`` after its
    # own arguments (fusejit.runtime.chunks).
    chunked: Callable[[Kernel], bool] = lambda kernel: False
    # Whether a loop over ``parallel_threshold`` elements or more must be a kernel's only
    # loop nest, not a part of a horizontal kernel: alone it runs in chunks (``chunked``),
    # beside other nests the kernel is a Numba parfor, which compiles 0.5 s longer (W7's
    # input-gradient transpose with the conv bias update: 0.89 s; apart 0.3 and 0.15 s).
    parallel_loops_alone: bool = False
    # Whether a matmul's transpositions reach its kernel as ints (its ``sizes``) rather than
    # as literals in its text: kernels that differ only in them are one module, compiled
    # once (W10's three plain matmuls, NN, NT and TN, were three compilations of ~50 ms).
    gemm_flags_at_run_time: bool = False

    def supports(self, group: FusionGroup) -> str | None:
        """None if this target lowers ``group``'s structure, else why not (what fusion
        asks; nothing is lowered)."""
        return supports_on(self, group)

    def lower(self, group: FusionGroup, *, parallel_threshold: int | None = None,
              inplace: dict[Value, Value] | None = None) -> LoweredKernel:
        """``group`` as a kernel; raises ``Unsupported`` naming the reason if it cannot be."""
        return lower_on(self, group, parallel_threshold=parallel_threshold, inplace=inplace)

    def can_lower(self, group: FusionGroup) -> str | None:
        """None if ``group`` lowers, else why not: a whole lowering, for tests that check
        that ``supports`` was right."""
        try:
            self.lower(group)
        except Unsupported as e:
            return str(e) or "unsupported group"
        return None


def _numba_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


# Numba on the CPU: parallel loops from ``config parallel_threshold`` elements (see the
# package docstring), in chunks on fusejit's threads where the kernel's shape allows, else
# prange; BLAS through SciPy for float matmuls.
CPU = Target(
    name="cpu",
    rules=CODEGEN_RULES,
    strategies=STRATEGIES,
    parallel_threshold=lambda: int(config.value("parallel_threshold")),
    max_threads=_numba_threads,
    blas=True,
    print_module=cpu_printer.module_source,
    constants_as_data=True,  # a new batch size must not recompile a mean's kernel
    chunked=cpu_printer.runs_in_chunks,  # no parfor lowering: 0.3-1.5 s less compile per kernel
    parallel_loops_alone=True,
    gemm_flags_at_run_time=True,
)


# Numba CUDA on an NVIDIA GPU: every loop that may run on threads does (one thread per
# iteration, grid-stride), per-thread scratch for at most ``cuda.max_threads()`` threads,
# float matmuls as GEMM launches between kernels (cuBLAS through CuPy when installed),
# convolutions as direct loops (their GEMMs would sit inside a loop over chunks).
CUDA = Target(
    name="cuda",
    rules=CODEGEN_RULES,
    strategies=STRATEGIES,
    parallel_threshold=lambda: 1,
    max_threads=cuda.max_threads,
    blas=True,
    print_module=cuda_printer.module_source,
    # Thousands of threads: 2048 partial sums (one thread adds them up), a column each.
    split_chunks=cuda.split_chunks,
    column_block=1,
    # A block of threads shares a row (each thread's sum covers a strided part of it, then
    # a tree): a row is one block sum, with no inner loop over blocks.
    sum_block=1 << 62,
    gemm_in_loops=False,
    conv_gather=True,  # a thread per output element: no atomic adds (codegen/conv.py)
    # A new batch size must not recompile a mean's kernel here either: each launch reads the
    # lifted constants at its start (a top-level load, recomputed per launch).
    constants_as_data=True,
    split_loops=False,  # split inner loops would keep the launch from covering them
    # cuBLAS from FUSEJIT_CUDA_BLAS_MIN_FLOPS (bench/bench_gpu.py compares thresholds on
    # the training steps): below it a loop nest with the epilogue fused beats a cuBLAS call
    # plus an epilogue launch.
    blas_min_flops=lambda: config.value("cuda_blas_min_flops"),
)

TARGETS = {"cpu": CPU, "cuda": CUDA}


def supports(group: FusionGroup) -> str | None:
    """``CPU.supports``."""
    return CPU.supports(group)


def lower_group(group: FusionGroup, **kw: Any) -> LoweredKernel:
    """``CPU.lower``."""
    return CPU.lower(group, **kw)


def can_lower(group: FusionGroup) -> str | None:
    """``CPU.can_lower``."""
    return CPU.can_lower(group)
