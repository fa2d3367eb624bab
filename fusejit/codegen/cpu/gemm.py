"""GEMMs on (sub-)matrices of flat arrays, for every float ``Matmul`` of a generated kernel.

``gemm_f32``/``gemm_f64`` call SciPy's BLAS with what ``np.dot`` cannot take: sub-matrices
whose rows lie further apart than their length (a leading dimension) and a product added
into the output (BLAS's beta = 1), for the conv kernel's shifted GEMMs
(``fusejit.codegen.conv_gemm``). Plain matmuls call them too: typing ``np.dot`` cost a kernel's
compilation about 0.1 s, and 0.5 s more the first time in a process.

Which entry point they call, by what this SciPy has:

* SciPy's bundled OpenBLAS (the ``scipy.libs/libscipy_openblas*`` of SciPy's wheels, the
  library ``scipy.linalg``'s own BLAS calls): its ``cblas_sgemm``/``cblas_dgemm``, whose
  addresses are given to LLVM under the fixed names ``fusejit_cblas_sgemm`` and
  ``fusejit_cblas_dgemm`` when this module is imported. Kernels link them by name, so a
  kernel still caches on disk, and neither a kernel loaded from the cache nor its first
  GEMM imports ``scipy.linalg`` (0.25-0.5 s of a warm first call: Numba's entry point
  imports it at its first call to find the BLAS).
* Any other SciPy build: Numba's own ``numba_xxgemm`` entry point (what ``np.dot`` calls).

A generated module imports them and prints ``SOURCE_HASH`` in its text (a hash of this
file and of the entry point in use): Numba's cache of the kernel would not notice a
change here.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.util
import os
from pathlib import Path

import numba
import numpy as np
from numba import types

from fusejit.ir.dtypes import DType


def openblas() -> ctypes.CDLL | None:
    """SciPy's bundled OpenBLAS, found without importing ``scipy.linalg``; None for a
    SciPy built against another BLAS (or none installed)."""
    spec = importlib.util.find_spec("scipy")
    if spec is None or not spec.submodule_search_locations:
        return None
    site = os.path.dirname(list(spec.submodule_search_locations)[0])
    paths = sorted(glob.glob(os.path.join(site, "scipy.libs", "libscipy_openblas*.so*")))
    try:
        lib = ctypes.CDLL(paths[0])
        lib.scipy_cblas_sgemm, lib.scipy_cblas_dgemm  # noqa: B018 - the symbols kernels link
    except (IndexError, OSError, AttributeError):
        return None
    return lib


def _link_cblas() -> bool:
    """Gives LLVM the bundled OpenBLAS's GEMMs under our names; False where there is none."""
    lib = openblas()
    if lib is None:
        return False
    from llvmlite import binding

    for ours, theirs in (("fusejit_cblas_sgemm", lib.scipy_cblas_sgemm), ("fusejit_cblas_dgemm", lib.scipy_cblas_dgemm)):
        binding.add_symbol(ours, ctypes.cast(theirs, ctypes.c_void_p).value)
    return True


CBLAS = _link_cblas()
#: A hash of this file and of the entry point in use, for the generated source text.
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes() + (b"cblas" if CBLAS else b"numba")).hexdigest()[:16]


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


_DOC = """Row-major ``C[i, j] (+)= sum_l A[i, l] * B[l, j]`` for ``i < m``, ``j < n``, ``l < k``
    on {dtype} flat arrays, where ``A[i, l] = a[a_off + i * lda + l]`` (``a[a_off + l * lda
    + i]`` when ``a_t``: ``a`` holds ``A`` transposed), ``B[l, j] = b[b_off + l * ldb + j]``
    (``b[b_off + j * ldb + l]`` when ``b_t``) and ``C[i, j] = c[c_off + i * ldc + j]``; each
    leading dimension is at least its stored row's length and every element lies inside
    its array (and, through CBLAS's 32-bit interface, below 2**31). ``accumulate`` nonzero
    adds the product to ``C``, else ``C`` is overwritten."""

if CBLAS:
    def _cblas(name: str, dtype: types.Type) -> types.ExternalFunction:
        """CBLAS's gemm: order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc."""
        p, i = types.CPointer(dtype), types.intc
        return types.ExternalFunction(name, types.void(i, i, i, i, i, i, dtype, p, i, p, i, dtype, p, i))

    _SGEMM = _cblas("fusejit_cblas_sgemm", types.float32)
    _DGEMM = _cblas("fusejit_cblas_dgemm", types.float64)
    _ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112  # CBLAS's enums

    @_jit
    def gemm_f32(m, n, k, a, a_off, lda, a_t, b, b_off, ldb, b_t, c, c_off, ldc, accumulate):  # noqa: ANN001, ANN201
        if _empty(m, n, k, c, c_off, ldc, accumulate):
            return
        _SGEMM(_ROW_MAJOR, _TRANS if a_t else _NO_TRANS, _TRANS if b_t else _NO_TRANS, m, n, k, np.float32(1.0),
               a[a_off:].ctypes, lda, b[b_off:].ctypes, ldb, np.float32(1.0 if accumulate else 0.0),
               c[c_off:].ctypes, ldc)

    @_jit
    def gemm_f64(m, n, k, a, a_off, lda, a_t, b, b_off, ldb, b_t, c, c_off, ldc, accumulate):  # noqa: ANN001, ANN201
        if _empty(m, n, k, c, c_off, ldc, accumulate):
            return
        _DGEMM(_ROW_MAJOR, _TRANS if a_t else _NO_TRANS, _TRANS if b_t else _NO_TRANS, m, n, k, 1.0,
               a[a_off:].ctypes, lda, b[b_off:].ctypes, ldb, 1.0 if accumulate else 0.0, c[c_off:].ctypes, ldc)
else:
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

    @_jit
    def gemm_f32(m, n, k, a, a_off, lda, a_t, b, b_off, ldb, b_t, c, c_off, ldc, accumulate):  # noqa: ANN001, ANN201
        if _empty(m, n, k, c, c_off, ldc, accumulate):
            return
        alpha = np.ones(1, np.float32)
        beta = np.full(1, 1.0 if accumulate else 0.0, np.float32)
        # Column-major BLAS sees each row-major matrix transposed: C^T = B^T A^T.
        _SGEMM(ord("s"), _TRANS if b_t else _NOTRANS, _TRANS if a_t else _NOTRANS, n, m, k, alpha.ctypes,
               b[b_off:].ctypes, ldb, a[a_off:].ctypes, lda, beta.ctypes, c[c_off:].ctypes, ldc)

    @_jit
    def gemm_f64(m, n, k, a, a_off, lda, a_t, b, b_off, ldb, b_t, c, c_off, ldc, accumulate):  # noqa: ANN001, ANN201
        if _empty(m, n, k, c, c_off, ldc, accumulate):
            return
        alpha = np.ones(1, np.float64)
        beta = np.full(1, 1.0 if accumulate else 0.0, np.float64)
        _DGEMM(ord("d"), _TRANS if b_t else _NOTRANS, _TRANS if a_t else _NOTRANS, n, m, k, alpha.ctypes,
               b[b_off:].ctypes, ldb, a[a_off:].ctypes, lda, beta.ctypes, c[c_off:].ctypes, ldc)

gemm_f32.__doc__ = _DOC.format(dtype="float32")
gemm_f64.__doc__ = _DOC.format(dtype="float64")

#: The function a kernel calls for a strided ``Matmul`` on arrays of each float dtype.
FUNCTIONS = {DType.f32: "gemm_f32", DType.f64: "gemm_f64"}
