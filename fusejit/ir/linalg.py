"""Linear-algebra primitives: matrix decompositions and solves run through LAPACK.

Declared here and registered in ``PRIMITIVES`` by ``primitives.py``; what users call is
``fusejit.numpy.linalg`` and ``fusejit.scipy.linalg`` (``fusejit.tracer.linalg``). Every
one is an ``OpKind.HOST`` op: the runtime runs it between kernels on host buffers
(``fusejit.runtime.host_ops``), calling NumPy's or SciPy's LAPACK wrappers, so fusion
treats it as a boundary. Each works on the last two axes of its operands (matrices) and
is batched over any leading axes, which all operands share exactly (the tracer
broadcasts). Float dtypes only (f32 computes in f32, as NumPy's LAPACK calls do).

* ``cholesky(a) -> l``: the lower Cholesky factor of the symmetric part ``(a + aT)/2``
  (JAX's ``symmetrize_input``; for a symmetric ``a`` this is NumPy's result).
* ``triangular_solve(a, b, lower, transpose_a) -> x``: solves ``op(a) x = b`` with
  ``op(a) = a`` or ``aT``, reading only the ``lower`` (or upper) triangle of ``a``;
  ``a: [..., n, n]``, ``b: [..., n, k]`` (JAX's ``lax.linalg.triangular_solve`` with
  ``left_side=True``).
* ``solve(a, b) -> x``: solves ``a x = b`` by LU with partial pivoting (LAPACK ``gesv``);
  ``a: [..., n, n]``, ``b: [..., n, k]``.
* ``slogdet(a) -> (sign, logabsdet)``: ``det(a) = sign * exp(logabsdet)``, shapes
  ``[...]`` (LAPACK ``getrf``); a singular ``a`` gives ``(0, -inf)``.
* ``eigh(a) -> (w, v)``: eigenvalues ascending ``[..., n]`` and orthonormal eigenvectors
  (columns) ``[..., n, n]`` of the symmetric part of ``a`` (LAPACK ``syevd``).
* ``qr(a) -> (q, r)``: the reduced QR decomposition, ``a = q @ r`` with ``k = min(m, n)``,
  ``q: [..., m, k]`` with orthonormal columns and ``r: [..., k, n]`` upper triangular
  (LAPACK ``geqrf``/``orgqr``; NumPy's signs).
* ``svd(a) -> (u, s, vh)``: the thin SVD, ``a = u @ diag(s) @ vh`` with ``k = min(m, n)``,
  ``u: [..., m, k]``, ``s: [..., k]`` descending, ``vh: [..., k, n]`` (LAPACK ``gesdd``).

Where LAPACK fails (a matrix not positive definite for ``cholesky``, singular for the
solves, no convergence) the result for that matrix is NaN, as in JAX: a compiled program
has no place to raise from half-way, and the other matrices of a batch are still right.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from fusejit.ir.primitives import FLOATS, AttrKind, AttrSpec, IRTypeError, _host
from fusejit.ir.types import TensorType

__all__ = ["LINALG", "cholesky", "eigh", "qr", "slogdet", "solve", "svd", "triangular_solve"]


# ---------------------------------------------------------------------------------------
# The work, on concrete arrays (also the runtime's host rules)


def _per_matrix(
    fn: Callable[..., tuple[np.ndarray, ...]],
    out_shapes: tuple[tuple[int, ...], ...],
    dtype: np.dtype,
    *arrays: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """``fn`` applied to the matrices of ``arrays`` one batch index at a time; a matrix on
    which LAPACK fails gets NaN results (module docstring)."""
    batch = arrays[0].shape[:-2]
    outs = tuple(np.empty(batch + s, dtype) for s in out_shapes)
    for index in np.ndindex(*batch):
        try:
            results = fn(*(a[index] for a in arrays))
        except (np.linalg.LinAlgError, ValueError):
            results = tuple(np.full(s, np.nan) for s in out_shapes)
        for o, r in zip(outs, results, strict=True):
            o[index] = r
    return outs


def _batched(
    fn: Callable[..., tuple[np.ndarray, ...]], out_shapes: tuple[tuple[int, ...], ...], *arrays: np.ndarray
) -> tuple[np.ndarray, ...]:
    """``fn`` (a batched NumPy call) on ``arrays``; if LAPACK fails on some matrix, again
    one matrix at a time so that only the failing ones are NaN."""
    dtype = arrays[0].dtype
    with np.errstate(all="ignore"):
        try:
            results = fn(*arrays)
        except np.linalg.LinAlgError:
            return _per_matrix(fn, out_shapes, dtype, *arrays)
    return tuple(np.asarray(r, dtype) for r in results)


def cholesky_impl(a: np.ndarray) -> tuple[np.ndarray]:
    sym = (a + np.swapaxes(a, -1, -2)) * a.dtype.type(0.5)
    return _batched(lambda x: (np.linalg.cholesky(x),), (a.shape[-2:],), sym)


def triangular_solve_impl(a: np.ndarray, b: np.ndarray, lower: bool, transpose_a: bool) -> tuple[np.ndarray]:
    import scipy.linalg  # here: importing it costs 0.3 s, and most programs never solve

    def one(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray]:
        if x.size == 0 or y.size == 0:
            return (np.zeros(y.shape, y.dtype),)
        return (
            scipy.linalg.solve_triangular(
                x, y, lower=lower, trans=1 if transpose_a else 0, check_finite=False
            ),
        )

    with np.errstate(all="ignore"):
        return _per_matrix(one, (b.shape[-2:],), b.dtype, a, b)


def solve_impl(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray]:
    return _batched(lambda x, y: (np.linalg.solve(x, y),), (b.shape[-2:],), a, b)


def slogdet_impl(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _batched(lambda x: tuple(np.linalg.slogdet(x)), ((), ()), a)


def eigh_impl(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sym = (a + np.swapaxes(a, -1, -2)) * a.dtype.type(0.5)
    n = a.shape[-1]
    return _batched(lambda x: tuple(np.linalg.eigh(x)), ((n,), (n, n)), sym)


def qr_impl(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m, n = a.shape[-2:]
    k = min(m, n)
    return _batched(lambda x: tuple(np.linalg.qr(x)), ((m, k), (k, n)), a)


def svd_impl(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m, n = a.shape[-2:]
    k = min(m, n)
    if a.size == 0:  # LAPACK rejects empty matrices; the thin factors of one are empty or zero
        batch = a.shape[:-2]
        eye = np.eye(max(m, n), dtype=a.dtype)
        return (
            np.broadcast_to(eye[:m, :k], batch + (m, k)).copy(),
            np.zeros(batch + (k,), a.dtype),
            np.broadcast_to(eye[:k, :n], batch + (k, n)).copy(),
        )
    return _batched(lambda x: tuple(np.linalg.svd(x, full_matrices=False)), ((m, k), (k,), (k, n)), a)


# ---------------------------------------------------------------------------------------
# Declarations


def square(prim: str, t: TensorType, what: str = "operand") -> int:
    """The order ``n`` of ``t``'s matrices ``[..., n, n]``; ``IRTypeError`` otherwise."""
    if t.ndim < 2 or t.shape[-1] != t.shape[-2]:
        raise IRTypeError(f"{prim}: {what} must be square matrices [..., n, n], got shape {t.shape}")
    return t.shape[-1]


def _cholesky_rule(in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    square("cholesky", in_types[0])
    return (in_types[0],)


def _solve_rule(prim: str, in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    a, b = in_types
    n = square(prim, a, "a")
    if b.dtype != a.dtype:
        raise IRTypeError(f"{prim}: operand dtypes {a.dtype} and {b.dtype} differ")
    if b.ndim != a.ndim or b.shape[:-2] != a.shape[:-2] or b.shape[-2] != n:
        raise IRTypeError(f"{prim}: b of shape {b.shape} is not [..., n, k] for a of shape {a.shape}")
    return (b,)


def _slogdet_rule(in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    a = in_types[0]
    square("slogdet", a)
    out = a.with_shape(a.shape[:-2])
    return (out, out)


def _eigh_rule(in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    a = in_types[0]
    n = square("eigh", a)
    return (a.with_shape(a.shape[:-2] + (n,)), a)


def _svd_rule(in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    a = in_types[0]
    if a.ndim < 2:
        raise IRTypeError(f"svd: operand must be matrices [..., m, n], got shape {a.shape}")
    *batch, m, n = a.shape
    k = min(m, n)
    return (a.with_shape((*batch, m, k)), a.with_shape((*batch, k)), a.with_shape((*batch, k, n)))


def _qr_rule(in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    a = in_types[0]
    if a.ndim < 2:
        raise IRTypeError(f"qr: operand must be matrices [..., m, n], got shape {a.shape}")
    *batch, m, n = a.shape
    k = min(m, n)
    return (a.with_shape((*batch, m, k)), a.with_shape((*batch, k, n)))


# LAPACK takes float32 and float64 only.
_lapack = functools.partial(_host, dtypes=FLOATS)

cholesky = _lapack("cholesky", 1, {}, _cholesky_rule, cholesky_impl)
triangular_solve = _lapack(
    "triangular_solve",
    2,
    {"lower": AttrSpec(AttrKind.BOOL), "transpose_a": AttrSpec(AttrKind.BOOL)},
    lambda in_types, lower, transpose_a: _solve_rule("triangular_solve", in_types),
    triangular_solve_impl,
)
solve = _lapack("solve", 2, {}, lambda in_types: _solve_rule("solve", in_types), solve_impl)
slogdet = _lapack("slogdet", 1, {}, _slogdet_rule, slogdet_impl)
eigh = _lapack("eigh", 1, {}, _eigh_rule, eigh_impl)
svd = _lapack("svd", 1, {}, _svd_rule, svd_impl)
qr = _lapack("qr", 1, {}, _qr_rule, qr_impl)

LINALG = (cholesky, triangular_solve, solve, slogdet, eigh, svd, qr)
