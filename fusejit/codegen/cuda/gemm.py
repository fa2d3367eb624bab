"""Batched GEMM on the GPU for ``Matmul`` statements: ``c[b] = op(a[b]) @ op(b[b])`` on
flat device arrays, called by a kernel's launcher between its launches.

cuBLAS through CuPy (``cupy.matmul`` on zero-copy views of the Numba device arrays, on
the same legacy default stream as the kernels; float32 stays IEEE float32: CuPy enables
TF32 only when ``CUPY_TF32=1``) when CuPy is installed and a GPU is there; otherwise a
Numba CUDA kernel with one thread per output element (what the simulator runs).
"""

from __future__ import annotations

import functools
from typing import Any

from numba import cuda

from fusejit.codegen.cuda import launch_config, simulated


@functools.cache
def _cupy() -> Any:
    if simulated():
        return None
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def gemm(a: Any, b: Any, c: Any, batch: int, m: int, k: int, n: int, a_t: bool, b_t: bool) -> None:
    """``c`` viewed as ``[batch, m, n]`` = ``a`` as ``[batch, m, k]`` (``[batch, k, m]``
    transposed when ``a_t``) times ``b`` as ``[batch, k, n]`` (``[batch, n, k]`` when
    ``b_t``)."""
    batch, m, k, n = int(batch), int(m), int(k), int(n)
    if batch * m * n == 0:
        return
    cp = _cupy()
    if cp is None:
        zero = c.dtype.type(0)  # the accumulator's type
        _gemm_kernel[launch_config(batch * m * n, False)](a, b, c, batch, m, k, n, a_t, b_t, zero)
        return
    lhs = cp.asarray(a)[: batch * m * k].reshape((batch, k, m) if a_t else (batch, m, k))
    rhs = cp.asarray(b)[: batch * k * n].reshape((batch, n, k) if b_t else (batch, k, n))
    out = cp.asarray(c)[: batch * m * n].reshape((batch, m, n))
    cp.matmul(lhs.transpose(0, 2, 1) if a_t else lhs, rhs.transpose(0, 2, 1) if b_t else rhs, out=out)


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
