"""``fusejit.numpy.linalg`` (NumPy's ``numpy.linalg``) and ``fusejit.scipy.linalg.
solve_triangular``: traceable and differentiable linear algebra.

The decompositions and solves are primitives run through LAPACK on the host
(``fusejit.ir.linalg``: ``cholesky``, ``triangular_solve``, ``solve``, ``slogdet``,
``eigh``, ``svd``, ``qr``, with derivative rules from the matrix-calculus literature in
``fusejit.ir.transforms.autodiff_linalg``); everything else is composed from them:

- ``inv(a) = solve(a, I)``; ``det(a) = sign * exp(logabsdet)`` from ``slogdet``;
- ``matrix_power`` by repeated squaring (``inv`` first for negative powers);
- ``pinv`` from the thin SVD with NumPy's cutoff ``rcond * max(s)``;
- ``norm``: vector and matrix norms of every ``ord`` NumPy has (2, -2 and ``'nuc'`` from
  the singular values); the square roots and ``p``-th roots have gradient 0 at a zero
  input instead of NaN.

Every function takes NumPy's arguments and is batched over leading axes; integer
inputs compute in float64, like NumPy. ``cholesky``/``eigh``/``eigvalsh`` read only the
triangle NumPy reads (``UPLO``/``upper``), so gradients are exact for NumPy's function.
Where LAPACK fails (singular, not positive definite) results are NaN, as in JAX, where
NumPy raises ``LinAlgError``. Operands that are not (square) matrices raise
``IRTypeError`` naming the function and the source line.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.dtypes import DType
from fusejit.tracer import inplace
from fusejit.tracer import numpy_api as A
from fusejit.tracer import numpy_ext as E
from fusejit.tracer.tracing import bind, shape_of

Array = Any

__all__ = [
    "cholesky",
    "cond",
    "cross",
    "det",
    "diagonal",
    "eigh",
    "eigvalsh",
    "inv",
    "matmul",
    "matrix_norm",
    "matrix_power",
    "matrix_rank",
    "matrix_transpose",
    "multi_dot",
    "norm",
    "outer",
    "pinv",
    "qr",
    "slogdet",
    "solve",
    "svd",
    "svdvals",
    "tensordot",
    "tensorinv",
    "tensorsolve",
    "trace",
    "vecdot",
    "vector_norm",
]


LinAlgError = np.linalg.LinAlgError  # NumPy's: what code catching it names


class SlogdetResult(NamedTuple):
    sign: Array
    logabsdet: Array


class EighResult(NamedTuple):
    eigenvalues: Array
    eigenvectors: Array


class QRResult(NamedTuple):
    Q: Array  # noqa: N815 - NumPy's field names
    R: Array  # noqa: N815


class SVDResult(NamedTuple):
    U: Array  # noqa: N815 - NumPy's field names
    S: Array  # noqa: N815
    Vh: Array  # noqa: N815


def _float_operand(x: Array, dtype: DType | None = None) -> Array:
    x = A._as_operand(x)
    return A.astype(x, dtype or A._float_dtype(x), copy=False)


def _matrices(name: str, a: Array, *, square: bool = True) -> Array:
    """``a`` as float matrices ``[..., n, n]`` (``[..., m, n]`` if not ``square``)."""
    a = _float_operand(a)
    s = shape_of(a)
    if len(s) < 2:
        raise A._fail(f"{name}: a must be at least two-dimensional (matrices), got shape {s}")
    if square and s[-1] != s[-2]:
        raise A._fail(f"{name}: last 2 dimensions of a must be square, got shape {s}")
    return a


def _mT(x: Array) -> Array:  # noqa: N802 - NumPy's .mT
    return A.swapaxes(x, -1, -2)


def _eye_like(a: Array) -> Array:
    n = shape_of(a)[-1]
    return A.broadcast_to(A.eye(n, dtype=A.result_type(a)), shape_of(a))


def _from_triangle(a: Array, lower: bool) -> Array:
    """The symmetric matrix whose ``lower`` (or upper) triangle is ``a``'s."""
    if lower:
        return A.add(E.tril(a), _mT(E.tril(a, -1)))
    return A.add(E.triu(a), _mT(E.triu(a, 1)))


# ---------------------------------------------------------------------------------------
# Solves and determinants


def _solve_with(name: str, a: Array, b: Array, solver: Any) -> Array:
    """``solver(a, b)`` (a primitive's ``bind`` on ``[..., n, n]`` and ``[..., n, k]``
    operands of one float dtype and equal leading axes) for NumPy's operands: ``a: [...,
    n, n]``; ``b: [n]`` (a vector) or ``[..., n, k]``, leading axes broadcast (NumPy 2)."""
    a = _matrices(name, a)
    dt = A._float_dtype(a, b)
    a, b = A.astype(a, dt, copy=False), _float_operand(b, dt)
    sa, sb = shape_of(a), shape_of(b)
    n = sa[-1]
    vector = len(sb) == 1
    if vector:
        b = A.reshape(b, (sb[0], 1))
        sb = shape_of(b)
    if len(sb) < 2 or sb[-2] != n:
        raise A._fail(f"{name}: b of shape {shape_of(b)} does not match a of shape {sa} ([n] or [..., n, k])")
    batch = A.broadcast_shapes(name, sa[:-2], sb[:-2])
    x = solver(A.broadcast_to(a, batch + sa[-2:]), A.broadcast_to(b, batch + sb[-2:]))
    return A.reshape(x, batch + (n,)) if vector else x


def solve(a: Array, b: Array) -> Array:
    """``x`` with ``a @ x = b``: ``a: [..., n, n]``; ``b: [n]`` (a vector) or
    ``[..., n, k]``, leading axes broadcast (NumPy 2); float result (ints: float64). LU
    with partial pivoting (LAPACK ``gesv``); singular ``a`` gives NaN/inf where NumPy
    raises."""
    return _solve_with("solve", a, b, lambda a, b: bind(P.solve, a, b))


def inv(a: Array) -> Array:
    """The inverse of ``a: [..., n, n]`` (``solve(a, I)``); same shape, float dtype."""
    a = _matrices("inv", a)
    return bind(P.solve, a, _eye_like(a))


def slogdet(a: Array) -> SlogdetResult:
    """``(sign, logabsdet)`` of ``a: [..., n, n]``, each ``[...]``: ``det(a) = sign *
    exp(logabsdet)`` without overflow (LU, LAPACK ``getrf``); singular: ``(0, -inf)``.
    Gradient of ``logabsdet``: ``inv(a).T`` (Giles 2008)."""
    a = _matrices("slogdet", a)
    return SlogdetResult(*bind(P.slogdet, a))


def det(a: Array) -> Array:
    """The determinant of ``a: [..., n, n]``, ``[...]``, as ``sign * exp(logabsdet)``."""
    sign, logabsdet = slogdet(_matrices("det", a))
    return A.multiply(sign, A.exp(logabsdet))


def matrix_power(a: Array, n: int) -> Array:
    """``a`` multiplied by itself ``n`` times (``n < 0``: of ``inv(a)``; ``0``: the
    identity), by repeated squaring: ``O(log |n|)`` matrix products."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"matrix_power: exponent must be an integer, got {n!r}")
    a = A._as_operand(a)
    s = shape_of(a)
    if len(s) < 2 or s[-1] != s[-2]:
        raise A._fail(f"matrix_power: last 2 dimensions of a must be square, got shape {s}")
    if n == 0:
        return A.astype(_eye_like(a), A.result_type(a))
    base = inv(a) if n < 0 else a
    result, k = None, abs(int(n))
    while k:
        if k & 1:
            result = base if result is None else A.matmul(result, base)
        k >>= 1
        if k:
            base = A.matmul(base, base)
    return result


# ---------------------------------------------------------------------------------------
# Decompositions


def cholesky(a: Array, /, *, upper: bool = False) -> Array:
    """The Cholesky factor of a symmetric positive-definite ``a: [..., n, n]``: lower
    ``L`` with ``a = L @ L.T`` (``upper``: ``L.T``), reading only that triangle of ``a``
    as NumPy does; NaN where ``a`` is not positive definite. Derivative: Murray 2016."""
    a = _matrices("cholesky", a)
    lo = bind(P.cholesky, _from_triangle(a, not upper))
    return _mT(lo) if upper else lo


def eigh(a: Array, UPLO: str = "L") -> EighResult:  # noqa: N803 - NumPy's name
    """Eigenvalues ``[..., n]`` (ascending) and eigenvectors ``[..., n, n]`` (columns) of
    the symmetric matrix given by the ``UPLO`` triangle of ``a: [..., n, n]`` (LAPACK
    ``syevd``). The eigenvector gradient is infinite at repeated eigenvalues."""
    a = _matrices("eigh", a)
    if UPLO not in ("L", "U"):
        raise ValueError(f"eigh: UPLO must be 'L' or 'U', got {UPLO!r}")
    return EighResult(*bind(P.eigh, _from_triangle(a, UPLO == "L")))


def eigvalsh(a: Array, UPLO: str = "L") -> Array:  # noqa: N803 - NumPy's name
    """The eigenvalues of ``eigh``, ``[..., n]`` ascending."""
    return eigh(_matrices("eigvalsh", a), UPLO).eigenvalues


def svd(a: Array, full_matrices: bool = True, compute_uv: bool = True, hermitian: bool = False) -> Any:
    """``a = U @ diag(S) @ Vh`` for ``a: [..., m, n]``, ``S: [..., k]`` descending
    (``k = min(m, n)``; LAPACK ``gesdd``). ``full_matrices=True`` (NumPy's default) is
    supported where it equals the thin SVD (square ``a``); otherwise pass
    ``full_matrices=False`` (``NotImplementedError``). ``compute_uv=False``: ``S`` only.
    Derivative: Townsend 2016 (infinite at repeated singular values)."""
    a = _matrices("svd", a, square=False)
    m, n = shape_of(a)[-2:]
    if hermitian:
        raise NotImplementedError("svd: hermitian=True is not supported by fusejit (use eigh)")
    u, s, vh = bind(P.svd, a)
    if not compute_uv:
        return s
    if full_matrices and m != n:
        raise NotImplementedError(
            f"svd: full_matrices=True of a {m}x{n} matrix is not supported by fusejit "
            "(its extra columns are not unique): pass full_matrices=False"
        )
    return SVDResult(u, s, vh)


def qr(a: Array, mode: str = "reduced") -> Any:
    """The QR decomposition of ``a: [..., m, n]``: ``Q: [..., m, k]`` with orthonormal
    columns and upper-triangular ``R: [..., k, n]``, ``k = min(m, n)``, NumPy's signs
    (LAPACK ``geqrf``/``orgqr``). ``mode``: ``'reduced'`` (``QRResult(Q, R)``), ``'r'``
    (``R`` only), ``'complete'`` where it equals ``'reduced'`` (``m <= n``); otherwise
    ``NotImplementedError`` (``'raw'`` too). Derivatives for ``m >= n`` (Townsend 2018);
    a wide ``a`` has none (``NotImplementedError`` when differentiated, as in JAX)."""
    a = _matrices("qr", a, square=False)
    m, n = shape_of(a)[-2:]
    if mode not in ("reduced", "r", "complete"):
        raise NotImplementedError(
            f"qr: mode={mode!r} is not supported by fusejit ('reduced', 'r', 'complete')"
        )
    if mode == "complete" and m > n:
        raise NotImplementedError(
            f"qr: mode='complete' of a tall {m}x{n} matrix is not supported by fusejit (its extra columns "
            "are not unique): use mode='reduced'"
        )
    q, r = bind(P.qr, a)
    return r if mode == "r" else QRResult(q, r)


def pinv(a: Array, rcond: Any = None, hermitian: bool = False, *, rtol: Any = None) -> Array:
    """The Moore-Penrose pseudo-inverse ``[..., n, m]`` of ``a: [..., m, n]`` from its
    thin SVD, singular values at most ``rcond * max(S)`` treated as zero (default
    ``rcond = max(m, n) * eps``, NumPy's)."""
    a = _matrices("pinv", a, square=False)
    if hermitian:
        raise NotImplementedError("pinv: hermitian=True is not supported by fusejit")
    if rcond is not None and rtol is not None:
        raise ValueError("pinv: pass rcond or rtol, not both")
    m, n = shape_of(a)[-2:]
    cut = rcond if rcond is not None else rtol
    if cut is None:
        cut = max(m, n) * float(np.finfo(A.result_type(a)).eps)
    u, s, vh = bind(P.svd, a)
    if min(m, n) == 0:
        return A.zeros_like(_mT(a))
    keep = A.greater(s, A.multiply(A.max(s, axis=-1, keepdims=True), cut))
    s_inv = A.where(keep, A.true_divide(1.0, A.where(keep, s, 1.0)), 0.0)
    return A.matmul(_mT(vh), A.multiply(A.expand_dims(A.astype(s_inv, A.result_type(a)), -1), _mT(u)))


# ---------------------------------------------------------------------------------------
# Norms


def _safe_root(s: Array, p: float) -> Array:
    """``s ** (1/p)`` for ``s >= 0``, with gradient 0 (not NaN/inf) where ``s == 0``."""
    zero = A.equal(s, 0)
    safe = A.where(zero, 1.0, s)
    root = A.sqrt(safe) if p == 2 else A.power(safe, 1.0 / p)
    return A.where(zero, 0.0, root)


def _vector_norm(x: Array, ord: Any, axis: tuple[int, ...], keepdims: bool) -> Array:  # noqa: A002
    if ord is None or ord == 2:
        return _safe_root(A.sum(A.multiply(x, x), axis=axis, keepdims=keepdims), 2)
    if ord == math.inf:
        return A.max(A.abs(x), axis=axis, keepdims=keepdims)
    if ord == -math.inf:
        return A.min(A.abs(x), axis=axis, keepdims=keepdims)
    if ord == 0:
        return A.astype(A.sum(A.not_equal(x, 0), axis=axis, keepdims=keepdims), A.result_type(x))
    if ord == 1:
        return A.sum(A.abs(x), axis=axis, keepdims=keepdims)
    if isinstance(ord, str):
        raise ValueError(f"norm: invalid norm order {ord!r} for vectors")
    p = float(ord)
    return _safe_root(A.sum(A.power(A.abs(x), p), axis=axis, keepdims=keepdims), p)


def _matrix_norm(x: Array, ord: Any, axis: tuple[int, int], keepdims: bool) -> Array:  # noqa: A002
    r, c = axis
    if ord in (None, "fro", "f"):
        out = _safe_root(A.sum(A.multiply(x, x), axis=axis), 2)
    elif ord in (1, -1, math.inf, -math.inf):
        # 1: the largest column sum (summed over rows r); inf: the largest row sum
        summed, kept = (r, c) if ord in (1, -1) else (c, r)
        sums = A.sum(A.abs(x), axis=summed)
        out = (A.max if ord > 0 else A.min)(sums, axis=kept - (kept > summed))
    elif ord in (2, -2, "nuc"):
        s = svd(A.moveaxis(x, (r, c), (-2, -1)), compute_uv=False)
        out = A.sum(s, axis=-1) if ord == "nuc" else (A.max if ord == 2 else A.min)(s, axis=-1)
    else:
        raise ValueError(f"norm: invalid norm order {ord!r} for matrices")
    if keepdims:
        out = A.expand_dims(out, tuple(sorted(axis)))
    return out


def norm(x: Array, ord: Any = None, axis: Any = None, keepdims: bool = False) -> Array:  # noqa: A002
    """NumPy's vector or matrix norm of ``x`` over ``axis`` (an int: vectors; a pair:
    matrices; ``None``: the whole array if ``ord`` is None, else ``x`` must be 1-D or
    2-D). Every ``ord`` NumPy accepts: vectors ``None``/2, 1, ``inf``, ``-inf``, 0 (the
    count of nonzeros), any other ``p``; matrices ``'fro'``, ``'nuc'``, 1, -1, 2, -2,
    ``inf``, ``-inf``. Float result (ints compute in float64); gradient 0 at a zero ``x``
    for the roots (2-norm, ``'fro'``, ``p``-norms)."""
    x = _float_operand(x)
    nd = len(shape_of(x))
    if axis is None:
        if ord is None:
            out = _vector_norm(A.ravel(x), None, (0,), False)
            return A.reshape(out, (1,) * nd) if keepdims else out
        if nd not in (1, 2):
            raise A._fail(f"norm: improper number of dimensions {nd} for ord={ord!r} (1 or 2, or pass axis)")
        axis = tuple(range(nd))
    axes = tuple(A._axes_in_order(axis, nd, "norm"))
    if len(axes) == 1:
        return _vector_norm(x, ord, axes, keepdims)
    if len(axes) == 2 and axes[0] != axes[1]:
        return _matrix_norm(x, ord, axes, keepdims)
    raise A._fail(f"norm: axis must be an int or a pair of distinct ints, got {axis}")


# ---------------------------------------------------------------------------------------
# NumPy 2's array-API names and the rest of numpy.linalg, composed from the above


def matrix_transpose(x: Array, /) -> Array:
    """``x`` with its last two axes swapped (``x.mT``)."""
    if len(shape_of(x)) < 2:
        raise A._fail(f"matrix_transpose: x must be at least two-dimensional, got shape {shape_of(x)}")
    return _mT(x)


def svdvals(x: Array, /) -> Array:
    """The singular values ``[..., k]`` of ``x: [..., m, n]``, descending."""
    return svd(_matrices("svdvals", x, square=False), compute_uv=False)


def vector_norm(x: Array, /, *, axis: Any = None, keepdims: bool = False, ord: Any = 2) -> Array:  # noqa: A002
    """The vector norm of ``x`` over ``axis`` (``None``: all axes; a tuple: those axes
    taken as one vector), any ``ord`` of ``norm``'s vector norms."""
    x = _float_operand(x)
    nd = len(shape_of(x))
    axes = A._axes_in_order(range(nd) if axis is None else axis, nd, "vector_norm")
    rest = [a for a in range(nd) if a not in axes]
    moved = A.transpose(x, rest + list(axes))
    flat = A.reshape(moved, tuple(shape_of(x)[a] for a in rest) + (-1,))
    out = _vector_norm(flat, ord, (len(rest),), False)
    return A.expand_dims(out, axes) if keepdims else out


def matrix_norm(x: Array, /, *, keepdims: bool = False, ord: Any = "fro") -> Array:  # noqa: A002
    """``norm(x, ord, axis=(-2, -1), keepdims)``: the matrix norms of ``x``'s matrices."""
    x = _matrices("matrix_norm", x, square=False)
    return norm(x, ord, (-2, -1), keepdims)


def cond(x: Array, p: Any = None) -> Array:
    """The condition number of ``x: [..., n, n]`` in norm ``p``: ``None``/2: ``s_max /
    s_min``, -2: ``s_min / s_max`` (from the singular values, also for ``[..., m, n]``);
    other ``p``: ``norm(x, p) * norm(inv(x), p)``."""
    if p in (None, 2, -2):
        s = svdvals(_matrices("cond", x, square=False))
        big, small = A.max(s, axis=-1), A.min(s, axis=-1)
        return A.true_divide(small, big) if p == -2 else A.true_divide(big, small)
    x = _matrices("cond", x)
    return A.multiply(norm(x, p, (-2, -1)), norm(inv(x), p, (-2, -1)))


def matrix_rank(A_: Array, tol: Any = None, hermitian: bool = False, *, rtol: Any = None) -> Array:  # noqa: N803
    """The number of singular values of ``A_: [..., m, n]`` above ``tol`` (default
    ``max(S) * max(m, n) * eps``, or ``max(S) * rtol``), as NumPy; int64 ``[...]``.
    A vector's rank is 1 unless it is all zeros."""
    x = _float_operand(A_)
    if len(shape_of(x)) < 2:
        return A.astype(A.any(A.not_equal(x, 0)), DType.i64)
    m, n = shape_of(x)[-2:]
    s = svdvals(x)
    if tol is None:
        scale = rtol if rtol is not None else max(m, n) * float(np.finfo(A.result_type(x)).eps)
        tol = A.multiply(A.max(s, axis=-1, keepdims=True), scale) if min(m, n) else 0.0
    else:
        tol = A.expand_dims(A._as_operand(tol), -1) if len(np.shape(tol)) else tol
    return A.sum(A.greater(s, tol), axis=-1, dtype=DType.i64)


def tensorinv(a: Array, ind: int = 2) -> Array:
    """The inverse of ``a`` seen as a square matrix whose rows are its first ``ind`` axes
    and columns the rest; shape ``a.shape[ind:] + a.shape[:ind]`` (NumPy's)."""
    s = shape_of(a)
    if ind <= 0:
        raise ValueError(f"tensorinv: ind must be positive, got {ind}")
    rows = math.prod(s[:ind])
    if rows != math.prod(s[ind:]):
        raise A._fail(f"tensorinv: a of shape {s} is not square with ind={ind}")
    return A.reshape(inv(A.reshape(a, (rows, -1))), s[ind:] + s[:ind])


def tensorsolve(a: Array, b: Array, axes: Any = None) -> Array:
    """``x`` with ``tensordot(a, x, x.ndim) = b``: ``a``'s trailing axes (after moving
    ``axes`` to the end) are ``x``'s shape (NumPy's)."""
    a = A._as_operand(a)
    nd, nb = len(shape_of(a)), len(shape_of(b))
    if axes is not None:
        moved = A._axes_in_order(axes, nd, "tensorsolve")
        a = A.transpose(a, [k for k in range(nd) if k not in moved] + moved)
    s = shape_of(a)
    xshape = s[nb:]
    n = math.prod(xshape)
    if math.prod(s) != n * n or math.prod(shape_of(b)) != n:
        raise A._fail(f"tensorsolve: a of shape {s} and b of shape {shape_of(b)} are not a square system")
    return A.reshape(solve(A.reshape(a, (n, n)), A.ravel(b)), xshape)


def multi_dot(arrays: Any, *, out: Array = None) -> Array:
    """The product of the matrices in ``arrays`` (the first may be a row vector, the last
    a column vector, as NumPy), multiplied left to right."""
    if len(arrays) < 2:
        raise ValueError("multi_dot: expecting at least two arrays")
    result = arrays[0]
    for x in arrays[1:]:
        result = A.matmul(result, x)
    return result if out is None else inplace.store(out, result, "multi_dot")


def outer(x1: Array, x2: Array, /) -> Array:
    """The outer product of two vectors (``numpy.linalg.outer``: 1-D only)."""
    if len(shape_of(x1)) != 1 or len(shape_of(x2)) != 1:
        raise A._fail(f"outer: x1 and x2 must be 1-dimensional, got shapes {shape_of(x1)} and {shape_of(x2)}")
    return A.outer(x1, x2)


def cross(x1: Array, x2: Array, /, *, axis: int = -1) -> Array:
    """The cross product of 3-vectors along ``axis`` (``numpy.linalg.cross``)."""
    if shape_of(x1)[axis] != 3 or shape_of(x2)[axis] != 3:
        raise A._fail(f"cross: both operands must have 3 elements along axis {axis}")
    return E.cross(x1, x2, axis=axis)


def diagonal(x: Array, /, *, offset: int = 0) -> Array:
    """The diagonals ``[..., k]`` of ``x``'s matrices (the last two axes)."""
    return E.diagonal(x, offset, -2, -1)


def trace(x: Array, /, *, offset: int = 0, dtype: Any = None) -> Array:
    """The traces ``[...]`` of ``x``'s matrices (the last two axes)."""
    return E.trace(x, offset, -2, -1, dtype)


def matmul(x1: Array, x2: Array, /) -> Array:
    return A.matmul(x1, x2)


def tensordot(x1: Array, x2: Array, /, *, axes: Any = 2) -> Array:
    return A.tensordot(x1, x2, axes)


def vecdot(x1: Array, x2: Array, /, *, axis: int = -1) -> Array:
    """``sum(x1 * x2, axis)`` with broadcasting (real operands)."""
    return A.sum(A.multiply(x1, x2), axis=axis)


# ---------------------------------------------------------------------------------------
# SciPy


def solve_triangular(
    a: Array,
    b: Array,
    trans: Any = 0,
    lower: bool = False,
    unit_diagonal: bool = False,
    overwrite_b: bool = False,
    check_finite: bool = True,
) -> Array:
    """``scipy.linalg.solve_triangular``: ``x`` with ``op(a) @ x = b``, reading only the
    ``lower`` (default upper) triangle of ``a: [..., n, n]`` (``unit_diagonal``: its
    diagonal taken as ones); ``op`` is given by ``trans`` (0/'N': ``a``, 1/'T' or 2/'C':
    ``a.T``); ``b: [n]`` or ``[..., n, k]``. The ``triangular_solve`` primitive (JAX's
    ``lax.linalg.triangular_solve``); a zero on the diagonal gives NaN/inf."""
    transposes = {0: False, "N": False, 1: True, "T": True, 2: True, "C": True}
    if trans not in transposes:
        raise ValueError(f"solve_triangular: trans must be 0, 1, 2, 'N', 'T' or 'C', got {trans!r}")
    if unit_diagonal:
        a = _matrices("solve_triangular", a)
        a = A.where(A.astype(_eye_like(a), bool), 1.0, a)
    return _solve_with(
        "solve_triangular",
        a,
        b,
        lambda a, b: bind(P.triangular_solve, a, b, lower=bool(lower), transpose_a=transposes[trans]),
    )


# NumPy's functions that dispatch here through __array_function__ (numpy_api adds them).
ARRAY_FUNCTIONS = {getattr(np.linalg, name): globals()[name] for name in __all__ if hasattr(np.linalg, name)}


def __getattr__(name: str) -> Any:
    if not name.startswith("_") and hasattr(np.linalg, name):
        raise A.UnsupportedNumPyName(f"numpy.linalg.{name} is not supported by fusejit.numpy.linalg")
    raise AttributeError(f"module 'fusejit.numpy.linalg' has no attribute {name!r}")
