"""GEMMs on (sub-)matrices of flat arrays, for every float ``Matmul`` of a generated kernel.

``gemm_f32``/``gemm_f64`` call the routine Numba's ``np.dot`` calls (SciPy's BLAS, through
Numba's own ``numba_xxgemm`` entry point, which is linked by name, so a kernel that calls
it still caches on disk), with what ``np.dot`` cannot take: sub-matrices whose rows lie
further apart than their length (a leading dimension) and a product added into the
output (BLAS's beta = 1), for the conv kernel's shifted GEMMs (``fusejit.codegen.conv``).
Plain matmuls call them too: typing ``np.dot`` cost a kernel's compilation about 0.1 s,
and 0.5 s more the first time in a process. A generated module
imports them and prints ``SOURCE_HASH`` in its text: Numba's cache of the kernel would
not notice a change here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
import numpy as np
from numba import types

from fusejit.ir.dtypes import DType

#: A hash of this file for the generated source text (see the module docstring).
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _xxgemm(dtype: types.Type) -> types.ExternalFunction:
    """Numba's BLAS gemm entry point: kind, transa, transb, m, n, k, alpha, a, lda, b, ldb,
    beta, c, ldc (Fortran's column-major convention)."""
    p = types.CPointer(dtype)
    sig = types.intc(types.char, types.char, types.char, types.intp, types.intp, types.intp,
                     p, p, types.intp, p, types.intp, p, p, types.intp)
    return types.ExternalFunction("numba_xxgemm", sig)


_SGEMM = _xxgemm(types.float32)
_DGEMM = _xxgemm(types.float64)
_NOTRANS, _TRANS = ord("n"), ord("t")


def _jit(fn):  # noqa: ANN001, ANN202
    try:
        return numba.njit(cache=True, error_model="numpy", boundscheck=False)(fn)
    except RuntimeError:  # no writable cache directory: compile in every process
        return numba.njit(error_model="numpy", boundscheck=False)(fn)


@_jit
def _empty(m, n, k, c, c_off, ldc, accumulate):  # noqa: ANN001, ANN202
    """Whether the product has no terms (BLAS would refuse a leading dimension of 0): an
    empty ``C``, or ``k == 0``, where ``C`` is zeroed unless ``accumulate``."""
    if m == 0 or n == 0:
        return True
    if k == 0:
        if not accumulate:
            for i in range(m):
                c[c_off + i * ldc:c_off + i * ldc + n] = 0
        return True
    return False


@_jit
def gemm_f32(m, n, k, a, a_off, lda, a_t, b, b_off, ldb, b_t, c, c_off, ldc, accumulate):  # noqa: ANN001, ANN201
    """Row-major ``C[i, j] (+)= sum_l A[i, l] * B[l, j]`` for ``i < m``, ``j < n``, ``l < k``
    on float32 flat arrays, where ``A[i, l] = a[a_off + i * lda + l]`` (``a[a_off + l * lda
    + i]`` when ``a_t``: ``a`` holds ``A`` transposed), ``B[l, j] = b[b_off + l * ldb + j]``
    (``b[b_off + j * ldb + l]`` when ``b_t``) and ``C[i, j] = c[c_off + i * ldc + j]``; each
    leading dimension is at least its stored row's length and every element lies inside
    its array. ``accumulate`` nonzero adds the product to ``C``, else ``C`` is overwritten."""
    if _empty(m, n, k, c, c_off, ldc, accumulate):
        return
    alpha = np.ones(1, np.float32)
    beta = np.full(1, 1.0 if accumulate else 0.0, np.float32)
    # Column-major BLAS sees each row-major matrix transposed: C^T = B^T A^T.
    _SGEMM(ord("s"), _TRANS if b_t else _NOTRANS, _TRANS if a_t else _NOTRANS, n, m, k, alpha.ctypes,
           b[b_off:].ctypes, ldb, a[a_off:].ctypes, lda, beta.ctypes, c[c_off:].ctypes, ldc)


@_jit
def gemm_f64(m, n, k, a, a_off, lda, a_t, b, b_off, ldb, b_t, c, c_off, ldc, accumulate):  # noqa: ANN001, ANN201
    """``gemm_f32`` on float64 arrays."""
    if _empty(m, n, k, c, c_off, ldc, accumulate):
        return
    alpha = np.ones(1, np.float64)
    beta = np.full(1, 1.0 if accumulate else 0.0, np.float64)
    _DGEMM(ord("d"), _TRANS if b_t else _NOTRANS, _TRANS if a_t else _NOTRANS, n, m, k, alpha.ctypes,
           b[b_off:].ctypes, ldb, a[a_off:].ctypes, lda, beta.ctypes, c[c_off:].ctypes, ldc)


#: The function a kernel calls for a strided ``Matmul`` on arrays of each float dtype.
FUNCTIONS = {DType.f32: "gemm_f32", DType.f64: "gemm_f64"}
