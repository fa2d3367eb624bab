"""The CUDA target's pieces: the printer that spells a kernel as a Numba CUDA module
(``printer``), the device math library those modules import (``mathlib``) and the
decorators of generated functions (below: generated modules import them from here).

Nothing here imports ``numba.cuda`` at import time: the CPU backend never loads it.
"""

from __future__ import annotations

import functools
from typing import Any

# Set by fusejit.runtime.cache before it executes a kernel module: whether Numba may
# cache the compiled code next to the module's file.
DISK_CACHE = False


def kernel_jit() -> Any:
    """The decorator of a generated ``__global__`` function (a launch phase)."""
    from numba import cuda

    return cuda.jit(cache=DISK_CACHE)


@functools.cache
def simulated() -> bool:
    """Whether Numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``):
    every thread is then a Python thread, so launches stay tiny. Numba reads the setting
once, at its import: so is this (every launch asks)."""
    from numba import config

    return bool(config.ENABLE_CUDASIM)


# Threads per block, and at most how many blocks a grid-stride launch has (a larger
# iteration space loops); the simulator's are tiny (a thread there is a Python thread).
THREADS_PER_BLOCK = 256
MAX_BLOCKS = 1 << 15
# A launch whose threads each own a row of scratch memory (``ThreadId``) has at most this
# many threads; the lowering sizes that scratch by it (``Target.max_threads``).
MAX_SCRATCH_THREADS = 1 << 14


def max_threads() -> int:
    return 8 if simulated() else MAX_SCRATCH_THREADS


def launch_config(total: int, per_thread_scratch: bool) -> tuple[int, int]:
    """(blocks, threads per block) of a grid-stride launch over ``total`` iterations."""
    threads, max_blocks = (4, 2) if simulated() else (THREADS_PER_BLOCK, MAX_BLOCKS)
    if per_thread_scratch:
        max_blocks = min(max_blocks, max(1, max_threads() // threads))
    return max(1, min(-(-int(total) // threads), max_blocks)), threads


def row_threads() -> int:
    """Threads per block of a cooperative row launch (a power of two: the shared-memory
    tree halves it)."""
    return 4 if simulated() else 128


def row_launch_config(rows: int, per_block_scratch: bool) -> tuple[int, int]:
    """(blocks, threads per block) of a cooperative launch: a block per row, grid-stride;
    at most ``max_threads()`` blocks when each owns a row of scratch."""
    blocks = min(int(rows), 2 if simulated() else MAX_BLOCKS)
    if per_block_scratch:
        blocks = min(blocks, max_threads())
    return max(1, blocks), row_threads()


def split_chunks() -> int:
    """Partial sums of a full reduction (``Target.split_chunks``): enough for the GPU's
    threads, few enough for the one thread that adds them up."""
    return 8 if simulated() else 2048
