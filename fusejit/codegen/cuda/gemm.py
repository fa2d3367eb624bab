"""Batched GEMM on the GPU for ``Matmul`` statements: ``c[b] = op(a[b]) @ op(b[b])`` on
flat device arrays, called by a kernel's launcher between its launches.

float32 and float64 go to cuBLAS (``cublas<t>gemmStridedBatched``) through CuPy's
low-level binding, on raw device addresses: no CuPy arrays, one handle per thread bound to
the legacy default stream the kernels run on, IEEE arithmetic (the handle's default math
mode: no TF32). Row-major products are column-major ones with the operands swapped: C =
A B is Cᵀ = Bᵀ Aᵀ. Other dtypes, a machine without CuPy and the simulator use a Numba
CUDA kernel with one thread per output element.

Each cuBLAS call is also noted for the executable's replay (``fusejit.codegen.cuda.launch``):
``PackedGemm`` repeats it with new addresses.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import cuda

from fusejit.codegen.cuda import launch_config, simulated
from fusejit.codegen.cuda.launch import GemmCall, device_pointer, launch, record


@functools.cache
def _cublas() -> Any:
    """CuPy's cuBLAS binding, or None (no CuPy, or the simulator)."""
    if simulated():
        return None
    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:
        return None
    return cublas


_handles = threading.local()
# alpha = 1 and beta = 0 at host addresses (cuBLAS's host pointer mode), per dtype
_SCALARS = {np.dtype(t): (np.ones(1, t), np.zeros(1, t)) for t in (np.float32, np.float64)}


def _handle(cublas: Any) -> int:
    handle = getattr(_handles, "handle", None)
    if handle is None:
        cuda.current_context()  # cuBLAS joins the context Numba made current (the primary one)
        handle = cublas.create()
        cublas.setStream(handle, 0)
        cublas.setPointerMode(handle, cublas.CUBLAS_POINTER_MODE_HOST)
        _handles.handle = handle
    return handle


def gemm(a: Any, b: Any, c: Any, batch: int, m: int, k: int, n: int, a_t: bool, b_t: bool) -> None:
    """``c`` viewed as ``[batch, m, n]`` = ``a`` as ``[batch, m, k]`` (``[batch, k, m]``
    transposed when ``a_t``) times ``b`` as ``[batch, k, n]`` (``[batch, n, k]`` when
    ``b_t``)."""
    batch, m, k, n = int(batch), int(m), int(k), int(n)
    if batch * m * n == 0:
        return
    cublas = _cublas()
    if cublas is None or c.dtype not in _SCALARS:
        zero = c.dtype.type(0)  # the accumulator's type
        # Through ``launch`` so that a recording sees it (its bool and float parameters then
        # keep the executable on the dispatcher: nothing is skipped on replay).
        launch(_gemm_kernel, launch_config(batch * m * n, False), a, b, c, batch, m, k, n, a_t, b_t, zero)
        return
    args = (a, b, c, batch, m, k, n, bool(a_t), bool(b_t))
    _call(cublas, *_arguments(cublas, *args), device_pointer(a), device_pointer(b), device_pointer(c))
    record(GemmCall(args))


def _arguments(cublas: Any, a: Any, b: Any, c: Any, batch: int, m: int, k: int, n: int,
               a_t: bool, b_t: bool) -> tuple[Any, ...]:
    """The address-free arguments of the cuBLAS call computing ``c``: the function, the
    column-major product Cᵀ = op(B)ᵀ op(A)ᵀ's operations, sizes and strides."""
    one, zero = _SCALARS[c.dtype]
    fn = cublas.sgemmStridedBatched if c.dtype == np.float32 else cublas.dgemmStridedBatched
    op_b = cublas.CUBLAS_OP_T if b_t else cublas.CUBLAS_OP_N
    op_a = cublas.CUBLAS_OP_T if a_t else cublas.CUBLAS_OP_N
    ldb = max(k, 1) if b_t else n  # a leading dimension is at least 1, also for k = 0
    lda = m if a_t else max(k, 1)
    return (fn, op_b, op_a, n, m, k, one.ctypes.data, ldb, k * n, lda, m * k, zero.ctypes.data, n, m * n, batch)


def _call(cublas: Any, fn: Callable[..., None], op_b: int, op_a: int, n: int, m: int, k: int, alpha: int,
          ldb: int, stride_b: int, lda: int, stride_a: int, beta: int, ldc: int, stride_c: int, batch: int,
          pa: int, pb: int, pc: int) -> None:
    fn(_handle(cublas), op_b, op_a, n, m, k, alpha, pb, ldb, stride_b, pa, lda, stride_a, beta, pc, ldc,
       stride_c, batch)


class PackedGemm:
    """A recorded cuBLAS GEMM, run again with the addresses of a new call (see
    ``fusejit.codegen.cuda.launch.Replay``): ``slot_of`` gives the slot of an array that
    changes between calls, or None."""

    __slots__ = ("name", "cublas", "arguments", "pointers", "slots")

    def __init__(self, args: tuple[Any, ...], slot_of: Callable[[Any], int | None]) -> None:
        batch, m, k, n = args[3:7]
        self.name = f"cublas gemm {batch}x{m}x{k}x{n}"
        self.cublas = _cublas()
        self.arguments = _arguments(self.cublas, *args)
        self.pointers = [device_pointer(x) for x in args[:3]]
        self.slots = tuple((j, slot) for j, x in enumerate(args[:3]) if (slot := slot_of(x)) is not None)

    def __call__(self, addresses: Any) -> None:
        pointers = self.pointers
        for j, slot in self.slots:
            pointers[j] = addresses[slot]
        _call(self.cublas, *self.arguments, *pointers)


@cuda.jit
def _gemm_kernel(a, b, c, batch, m, k, n, a_t, b_t, zero):  # noqa: ANN001 - a Numba CUDA kernel
    t = cuda.grid(1)
    while t < batch * m * n:
        j = t % n
        i = (t // n) % m
        p = t // (m * n)
        acc = zero
        for q in range(k):
            x = a[p * m * k + q * m + i] if a_t else a[p * m * k + i * k + q]
            y = b[p * k * n + j * k + q] if b_t else b[p * k * n + q * n + j]
            acc += x * y
        c[p * m * n + i * n + j] = acc
        t += cuda.gridsize(1)
