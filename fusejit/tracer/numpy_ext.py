"""More of NumPy's names for ``fusejit.numpy``, composed from its core
(``fusejit.tracer.numpy_api``) and a few primitives of their own (``atan2``,
``reduce_prod``, ``cumprod``).

Each function follows NumPy 2 (dtypes, NEP 50 weak scalars, broadcasting, ``axis``) and
works eagerly on arrays and traced inside ``jit``/``grad``. Where a composite replaces
a NumPy algorithm, the comment says what is exact and where the derivative is taken:

- The inverse trigonometric functions are ``atan2`` of the right operands
  (``arcsin(x) = atan2(x, sqrt((1 - x)(1 + x)))``); ``sinh``/``cosh``/``arcsinh``/
  ``arccosh``/``arctanh``/``hypot``/``logaddexp`` are the cancellation- and overflow-safe
  formulas of fdlibm, the branch not taken fed a harmless operand so that its derivative
  is never ``0 * inf``.
- ``sort``/``argsort`` rank each element by counting the ones before it (a fused
  comparison-and-sum: O(n^2) work per row, no n x n buffer once fused) and scatter the
  indices to their ranks: stable, NaNs last, like NumPy's stable sort; ``sort``'s
  gradient flows through a gather.
- ``prod``/``cumprod`` are primitives whose derivatives never divide by the operand
  (exact at zeros).

This module imports ``numpy_api``; ``numpy_api`` imports it last and adds its NumPy
dispatch tables (``UFUNCS``, ``ARRAY_FUNCTIONS``) to its own.
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.dtypes import DType, from_numpy
from fusejit.tracer import inplace
from fusejit.tracer import numpy_api as A
from fusejit.tracer.tracing import TracedArray, bind, result_dtype, shape_of

Array = Any


def _ufunc(name: str, fn: Callable[..., Array]) -> Callable[..., Array]:
    """``fn`` with a ufunc's ``out=`` (same-kind casting) and NumPy's name."""

    def wrapped(*args: Array, out: Array = None) -> Array:
        return inplace.store(out, fn(*args), name)

    wrapped.__name__ = wrapped.__qualname__ = name
    wrapped.__doc__ = fn.__doc__
    return wrapped


def _flt(x: Array) -> Array:
    """``x`` in the float dtype NumPy computes its float functions in (ints: float64)."""
    return A.astype(A._as_operand(x), A._float_dtype(x), copy=False)


def _odd(x: Array, magnitude: Array) -> Array:
    """An odd function from its value at |x|: -magnitude for x < 0, magnitude for x > 0,
    and x itself at +-0 and NaN (the sign of zero kept)."""
    return A.where(A.less(x, 0), A.negative(magnitude), A.where(A.greater(x, 0), magnitude, x))


# ---------------------------------------------------------------------------------------
# Elementwise: trigonometric and hyperbolic


def _arctan2(y: Array, x: Array) -> Array:
    """The angle of the point (x, y) in [-pi, pi] (C99's signed zeros and infinities)."""
    return A._elementwise("arctan2", P.atan2, y, x, dtype=A._float_dtype(y, x))


def _arctan(x: Array) -> Array:
    return A._elementwise("arctan", P.atan2, x, 1.0, dtype=A._float_dtype(x))


def _cos_of_arcsin(x: Array) -> Array:
    """sqrt(1 - x^2) as sqrt((1 - x)(1 + x)): no cancellation near |x| = 1; NaN beyond."""
    return A.sqrt(A.multiply(A.subtract(1.0, x), A.add(1.0, x)))


def _arcsin(x: Array) -> Array:
    x = _flt(x)
    return _arctan2(x, _cos_of_arcsin(x))


def _arccos(x: Array) -> Array:
    x = _flt(x)
    return _arctan2(_cos_of_arcsin(x), x)


_HYPERBOLIC_SPLIT = 40.0  # above: e^-|x| is below float64's precision relative to e^|x|


def _split(a: Array) -> tuple[Array, Array, Array]:
    """(large, a for the moderate formula, a for the large one): each formula gets a
    harmless operand where the other is used, so neither overflows or differentiates
    to NaN there."""
    large = A.greater(a, _HYPERBOLIC_SPLIT)
    return large, A.where(large, _HYPERBOLIC_SPLIT, a), A.where(large, a, _HYPERBOLIC_SPLIT)


def _half_exp_squared(a: Array) -> Array:
    """e^a / 2 without overflowing before the result does: (e^(a/2) / 2) e^(a/2)."""
    w = A.exp(A.multiply(a, 0.5))
    return A.multiply(A.multiply(w, 0.5), w)


def _sinh(x: Array) -> Array:
    x = _flt(x)
    a = A.absolute(x)
    large, am, al = _split(a)
    u = A.expm1(am)  # sinh(a) = (u + u/(u + 1))/2: no cancellation for small a
    moderate = A.multiply(A.add(u, A.true_divide(u, A.add(u, 1.0))), 0.5)
    return _odd(x, A.where(large, _half_exp_squared(al), moderate))


def _cosh(x: Array) -> Array:
    x = _flt(x)
    a = A.absolute(x)
    large, am, al = _split(a)
    e = A.exp(am)
    moderate = A.add(A.multiply(e, 0.5), A.true_divide(0.5, e))
    return A.where(large, _half_exp_squared(al), moderate)


_LN2 = math.log(2.0)
_ASINH_SPLIT = 1e8  # above: asinh(a) = log(2a) to float64's precision


def _arcsinh(x: Array) -> Array:
    x = _flt(x)
    a = A.absolute(x)
    large = A.greater(a, _ASINH_SPLIT)
    am, al = A.where(large, 1.0, a), A.where(large, a, 1.0)
    a2 = A.multiply(am, am)  # log1p(a + a^2/(1 + sqrt(1 + a^2)))
    moderate = A.log1p(A.add(am, A.true_divide(a2, A.add(1.0, A.sqrt(A.add(1.0, a2))))))
    return _odd(x, A.where(large, A.add(A.log(al), _LN2), moderate))


def _arccosh(x: Array) -> Array:
    x = _flt(x)
    large = A.greater(x, _ASINH_SPLIT)
    xm, xl = A.where(large, 1.0, x), A.where(large, x, 1.0)
    t = A.subtract(xm, 1.0)  # log1p(t + sqrt(t (t + 2))), t = x - 1 (exact near 1)
    moderate = A.log1p(A.add(t, A.sqrt(A.multiply(t, A.add(t, 2.0)))))
    out = A.where(large, A.add(A.log(xl), _LN2), moderate)
    return A.where(A.less(x, 1.0), np.nan, out)  # t (t + 2) > 0 again below -1


def _arctanh(x: Array) -> Array:
    x = _flt(x)
    a = A.absolute(x)  # atanh(a) = log1p(2a / (1 - a)) / 2
    magnitude = A.multiply(A.log1p(A.true_divide(A.multiply(a, 2.0), A.subtract(1.0, a))), 0.5)
    return _odd(x, magnitude)


def _sinc(x: Array) -> Array:
    """sin(pi x)/(pi x), 1 at 0 (a function, not a ufunc, in NumPy)."""
    x = _flt(x)
    zero = A.equal(x, 0)
    px = A.multiply(A.where(zero, 1.0, x), math.pi)
    return A.where(zero, 1.0, A.true_divide(A.sin(px), px))


def _hypot(x: Array, y: Array) -> Array:
    """sqrt(x^2 + y^2) as m sqrt(1 + (n/m)^2), m = max(|x|, |y|): no overflow or underflow;
    inf if either is infinite (even with a NaN), as C99."""
    dt = A._float_dtype(x, y)
    x, y = A.astype(A._as_operand(x), dt, copy=False), A.astype(A._as_operand(y), dt, copy=False)
    ax, ay = A.absolute(x), A.absolute(y)
    m, n = A.maximum(ax, ay), A.minimum(ax, ay)
    zero = A.equal(m, 0)
    r = A.true_divide(n, A.where(zero, 1.0, m))
    h = A.multiply(m, A.sqrt(A.add(1.0, A.multiply(r, r))))
    h = A.where(zero, 0.0, h)
    return A.where(A.logical_or(A.isinf(ax), A.isinf(ay)), np.inf, h)


def _logaddexp_with(x: Array, y: Array, log1p_exp: Callable[[Array], Array], tie: float) -> Array:
    dt = A._float_dtype(x, y)
    x, y = A.astype(A._as_operand(x), dt, copy=False), A.astype(A._as_operand(y), dt, copy=False)
    same = A.equal(x, y)  # also +-inf twice, whose difference is NaN
    d = A.where(same, 0.0, A.negative(A.absolute(A.subtract(x, y))))
    general = A.add(A.maximum(x, y), log1p_exp(d))
    # x + log(2) on a tie, written symmetrically: each operand gets half the derivative
    return A.where(same, A.add(A.add(A.multiply(x, 0.5), A.multiply(y, 0.5)), tie), general)


def _logaddexp(x: Array, y: Array) -> Array:
    """log(e^x + e^y) without overflow."""
    return _logaddexp_with(x, y, lambda d: A.log1p(A.exp(d)), _LN2)


def _logaddexp2(x: Array, y: Array) -> Array:
    """log2(2^x + 2^y) without overflow."""
    return _logaddexp_with(x, y, lambda d: A.multiply(A.log1p(A.exp2(d)), 1.0 / _LN2), 1.0)


def _fabs(x: Array) -> Array:
    if A._dtype_of(x).is_bool:
        raise A._fail("fabs: boolean operands (NumPy's float16 result) are not supported")
    return A.absolute(_flt(x))


def _nan_ignoring(name: str, extremum: Callable[[Array, Array], Array]) -> Callable[[Array, Array], Array]:
    def fn(x: Array, y: Array) -> Array:
        if not result_dtype(x, y).is_float:
            return extremum(x, y)
        return A.where(A.isnan(y), x, A.where(A.isnan(x), y, extremum(x, y)))

    fn.__doc__ = f"``numpy.{name}``: the other operand where one is NaN."
    return fn


def _scale(factor: float) -> Callable[[Array], Array]:
    def fn(x: Array) -> Array:
        return A.multiply(_flt(x), factor)

    return fn


arctan2 = atan2 = _ufunc("arctan2", _arctan2)
arctan = atan = _ufunc("arctan", _arctan)
arcsin = asin = _ufunc("arcsin", _arcsin)
arccos = acos = _ufunc("arccos", _arccos)
sinh = _ufunc("sinh", _sinh)
cosh = _ufunc("cosh", _cosh)
arcsinh = asinh = _ufunc("arcsinh", _arcsinh)
arccosh = acosh = _ufunc("arccosh", _arccosh)
arctanh = atanh = _ufunc("arctanh", _arctanh)
hypot = _ufunc("hypot", _hypot)
logaddexp = _ufunc("logaddexp", _logaddexp)
logaddexp2 = _ufunc("logaddexp2", _logaddexp2)
fabs = _ufunc("fabs", _fabs)
fmax = _ufunc("fmax", _nan_ignoring("fmax", A.maximum))
fmin = _ufunc("fmin", _nan_ignoring("fmin", A.minimum))
deg2rad = radians = _ufunc("deg2rad", _scale(math.pi / 180.0))
rad2deg = degrees = _ufunc("rad2deg", _scale(180.0 / math.pi))
sinc = _sinc


def nan_to_num(x: Array, copy: bool = True, nan: float = 0.0, posinf: float | None = None,
               neginf: float | None = None) -> Array:
    """NaN to ``nan``, +-inf to ``posinf``/``neginf`` (default: the dtype's extremes)."""
    x = A._as_operand(x)
    dt = A._dtype_of(x)
    if not dt.is_float:
        return A.fresh(x)
    info = np.finfo(dt.np)
    hi = float(info.max) if posinf is None else posinf
    lo = float(info.min) if neginf is None else neginf
    out = A.where(A.equal(x, np.inf), hi, A.where(A.equal(x, -np.inf), lo, x))
    return A.where(A.isnan(x), nan, out)


def real(val: Array) -> Array:
    """The real part of a real array: the array itself (fusejit has no complex dtypes)."""
    return A._as_operand(val)


def imag(val: Array) -> Array:
    """The imaginary part of a real array: zeros."""
    return A.zeros_like(A._as_operand(val))


def _conjugate(x: Array) -> Array:
    return A.fresh(A._as_operand(x))


conjugate = conj = _ufunc("conjugate", _conjugate)


def iscomplexobj(x: Array) -> bool:
    return False


def isrealobj(x: Array) -> bool:
    return True


# ---------------------------------------------------------------------------------------
# Reductions and scans


def prod(a: Array, axis: Any = None, dtype: Any = None, out: Array = None, keepdims: bool = False,
         initial: Any = None) -> Array:
    """The product over ``axis`` in ``dtype`` (bools and ints in the default int, like
    NumPy); 1 over empty axes. Its derivative is the product of the other factors
    (exact at zeros)."""
    if out is not None:
        return inplace.store(out, prod(a, axis, dtype, keepdims=keepdims, initial=initial), "prod", "unsafe")
    a = A._as_operand(a)
    dt = from_numpy(dtype) if dtype is not None else A._dtype_of(a)
    if dtype is None and not dt.is_float:
        dt = DType.i64
    axes = A._axes(axis, len(shape_of(a)), "prod")
    result = A._keep(bind(P.reduce_prod, A.astype(a, dt, copy=False), axes=axes), shape_of(a), axes, keepdims)
    return result if initial is None else A.multiply(result, initial)


product = prod


def cumprod(a: Array, axis: Any = None, dtype: Any = None, out: Array = None) -> Array:
    """Running products along ``axis`` (of the flattened array when None), in order, as
    NumPy's; derivatives exact at zeros."""
    if out is not None:
        return inplace.store(out, cumprod(a, axis, dtype), "cumprod", "unsafe")
    a = A._as_operand(a)
    dt = from_numpy(dtype) if dtype is not None else A._dtype_of(a)
    if dtype is None and not dt.is_float:
        dt = DType.i64
    if axis is None:
        a, axis = A.ravel(a), 0
    (axis,) = A._axes(axis, len(shape_of(a)), "cumprod")
    return bind(P.cumprod, A.astype(a, dt, copy=False), axis=axis, reverse=False)


cumulative_prod = cumprod


def _along(a: Array, axis: int, start: int, stop: int) -> Array:
    return A._slice_or_reverse(a, axis, start, builtins.max(stop, start), 1)


def diff(a: Array, n: int = 1, axis: int = -1, prepend: Any = np._NoValue, append: Any = np._NoValue) -> Array:
    """n-th differences along ``axis`` (booleans: ``!=``, as NumPy)."""
    a = A._as_operand(a)
    nd = len(shape_of(a))
    if nd == 0:
        raise A._fail("diff requires input that is at least one dimensional")
    (ax,) = A._axes(axis, nd, "diff")
    if n < 0:
        raise A._fail(f"diff: order must be non-negative but got {n}")
    parts = []
    for extra in (prepend, append):
        if extra is np._NoValue:
            parts.append(None)
            continue
        extra = A._as_operand(extra)
        if len(shape_of(extra)) == 0:
            extra = A.broadcast_to(extra, tuple(1 if i == ax else s for i, s in enumerate(shape_of(a))))
        parts.append(extra)
    if parts[0] is not None or parts[1] is not None:
        a = A.concatenate([p for p in (parts[0], a, parts[1]) if p is not None], axis=ax)
    for _ in range(n):
        size = shape_of(a)[ax]
        hi, lo = _along(a, ax, 1, size), _along(a, ax, 0, size - 1)
        a = A.not_equal(hi, lo) if A._dtype_of(a).is_bool else A.subtract(hi, lo)
    return a


def diagonal(a: Array, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Array:
    """The diagonal of the (axis1, axis2) planes as the last axis: a strided slice of the
    flattened planes."""
    a = A._as_operand(a)
    nd = len(shape_of(a))
    if nd < 2:
        raise A._fail("diagonal: array must be at least 2-d")
    i, j = A._axes_in_order((axis1, axis2), nd, "diagonal")
    if i == j:
        raise A._fail("diagonal: axis1 and axis2 cannot be the same")
    rest = [k for k in range(nd) if k not in (i, j)]
    planes = A.transpose(a, rest + [i, j])
    shape = shape_of(planes)
    rows, cols = shape[-2], shape[-1]
    count = builtins.max(0, builtins.min(rows, cols - offset) if offset >= 0 else builtins.min(rows + offset, cols))
    flat = A.reshape(planes, shape[:-2] + (rows * cols,))
    first = offset if offset >= 0 else -offset * cols
    start, limit = (first, first + (count - 1) * (cols + 1) + 1) if count else (0, 0)
    nlead = len(shape) - 2
    return bind(P.slice, flat, start=(0,) * nlead + (start,), limit=shape[:-2] + (limit,),
                stride=(1,) * nlead + (cols + 1,))


def trace(a: Array, offset: int = 0, axis1: int = 0, axis2: int = 1, dtype: Any = None, out: Array = None) -> Array:
    result = A.sum(diagonal(a, offset, axis1, axis2), axis=-1, dtype=dtype)
    return inplace.store(out, result, "trace", "unsafe")


def _before(xj: Array, xi: Array, j_before_i: Array) -> Array:
    """Whether element j sorts before element i: smaller, or equal and earlier (NaNs are
    larger than everything and equal to each other)."""
    if not A._dtype_of(xi).is_float:
        return A.logical_or(A.less(xj, xi), A.logical_and(A.equal(xj, xi), j_before_i))
    nan_i, nan_j = A.isnan(xi), A.isnan(xj)
    less = A.logical_or(A.less(xj, xi), A.logical_and(nan_i, A.logical_not(nan_j)))
    same = A.logical_or(A.equal(xj, xi), A.logical_and(nan_i, nan_j))
    return A.logical_or(less, A.logical_and(same, j_before_i))


def _ranks(x: Array) -> Array:
    """The stable sorted position of each element along the last axis (int64)."""
    shape = shape_of(x)
    n = shape[-1]
    lead = shape[:-1]
    xi = A.broadcast_to(A.reshape(x, lead + (n, 1)), lead + (n, n))
    xj = A.broadcast_to(A.reshape(x, lead + (1, n)), lead + (n, n))
    i = bind(P.iota, shape=(n, n), dimension=0, dtype=DType.i64)
    j = bind(P.iota, shape=(n, n), dimension=1, dtype=DType.i64)
    j_before_i = A.broadcast_to(A.less(j, i), lead + (n, n))
    return A.sum(_before(xj, xi, j_before_i), axis=-1)


def _argsort_last(x: Array) -> Array:
    if A._dtype_of(x).is_bool:
        x = A.astype(x, DType.i32)
    shape = shape_of(x)
    positions = A.broadcast_to(bind(P.iota, shape=(shape[-1],), dimension=0, dtype=DType.i64), shape)
    return bind(P.scatter_add, positions, _ranks(x), axis=len(shape) - 1, size=shape[-1])


def argsort(a: Array, axis: int | None = -1, kind: str | None = None, order: Any = None,
            stable: bool | None = None) -> Array:
    """Indices that sort ``a`` along ``axis``, stably (NaNs last), for every ``kind``."""
    if order is not None:
        raise NotImplementedError("numpy.argsort with order= (structured arrays)")
    a = A._as_operand(a)
    if axis is None:
        a, axis = A.ravel(a), -1
    (ax,) = A._axes(axis, len(shape_of(a)), "argsort")
    return A.moveaxis(_argsort_last(A.moveaxis(a, ax, -1)), -1, ax)


def sort(a: Array, axis: int | None = -1, kind: str | None = None, order: Any = None,
         stable: bool | None = None) -> Array:
    """``a`` sorted along ``axis`` (NaNs last); the gradient flows to the sorted elements."""
    if order is not None:
        raise NotImplementedError("numpy.sort with order= (structured arrays)")
    a = A._as_operand(a)
    if axis is None:
        a, axis = A.ravel(a), -1
    (ax,) = A._axes(axis, len(shape_of(a)), "sort")
    moved = A.moveaxis(a, ax, -1)
    return A.moveaxis(A.take_along_axis(moved, _argsort_last(moved), axis=-1), -1, ax)


def isclose(a: Array, b: Array, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> Array:
    """NumPy's ``|a - b| <= atol + rtol |b|`` for finite ``b``, else ``a == b``."""
    a = A._as_operand(a)
    b = A._as_operand(b)
    dt = A.result_type(b, 1.0)
    b = A.astype(b, dt, copy=False)
    close = A.less_equal(A.absolute(A.subtract(a, b)), A.add(atol, A.multiply(rtol, A.absolute(b))))
    result = A.logical_or(A.logical_and(close, A.isfinite(b)), A.equal(a, b))
    if equal_nan:
        result = A.logical_or(result, A.logical_and(A.isnan(a), A.isnan(b)))
    return result


def allclose(a: Array, b: Array, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> Any:
    """Whether every element is close: a Python bool eagerly, a traced bool in ``jit``."""
    result = A.all(isclose(a, b, rtol, atol, equal_nan))
    return result if isinstance(result, TracedArray) else bool(result)


def count_nonzero(a: Array, axis: Any = None, *, keepdims: bool = False) -> Array:
    return A.sum(A.not_equal(a, 0) if not A._dtype_of(a).is_bool else a, axis=axis, keepdims=keepdims)


def gradient(f: Array, *varargs: Any, axis: Any = None, edge_order: int = 1) -> Any:
    """Central differences inside, one-sided ones at the edges (``edge_order=1``), with
    scalar spacings; a list of arrays for several axes, as NumPy."""
    if edge_order != 1:
        raise NotImplementedError("numpy.gradient with edge_order=2")
    f = A._as_operand(f)
    nd = len(shape_of(f))
    axes = A._axes_in_order(range(nd) if axis is None else axis, nd, "gradient")
    spacing = list(varargs) if len(varargs) > 1 else list(varargs) * len(axes) if varargs else [1.0] * len(axes)
    if len(spacing) != len(axes) or not builtins.all(np.ndim(h) == 0 for h in spacing):
        raise NotImplementedError("numpy.gradient with coordinate arrays (only scalar spacings)")
    f = A._as_float(f)
    out = []
    for ax, h in zip(axes, spacing, strict=True):
        n = shape_of(f)[ax]
        if n < 2:
            raise A._fail("gradient: shape of the array too small to calculate a numerical gradient")
        first = A.true_divide(A.subtract(_along(f, ax, 1, 2), _along(f, ax, 0, 1)), h)
        last = A.true_divide(A.subtract(_along(f, ax, n - 1, n), _along(f, ax, n - 2, n - 1)), h)
        inner = A.true_divide(A.subtract(_along(f, ax, 2, n), _along(f, ax, 0, n - 2)), 2.0 * h)
        out.append(A.concatenate([first, inner, last], axis=ax) if n > 2 else A.concatenate([first, last], axis=ax))
    return out[0] if len(out) == 1 else out


# ---------------------------------------------------------------------------------------
# Shapes and indexing


def repeat(a: Array, repeats: Any, axis: int | None = None) -> Array:
    """Each element ``repeats`` times along ``axis`` (the flattened array when None);
    ``repeats`` must be known when tracing (it decides the shape)."""
    a = A._as_operand(a)
    if axis is None:
        a, axis = A.ravel(a), 0
    if isinstance(repeats, TracedArray):
        raise NotImplementedError("numpy.repeat with traced repeats (the shape depends on the data)")
    shape = shape_of(a)
    (ax,) = A._axes(axis, len(shape), "repeat")
    counts = np.asarray(repeats)
    if counts.ndim == 0 or counts.size == 1:
        r = int(counts.reshape(()))
        if r < 0:
            raise A._fail("repeat: negative dimensions are not allowed")
        expanded = A.reshape(a, shape[: ax + 1] + (1,) + shape[ax + 1 :])
        spread = A.broadcast_to(expanded, shape[: ax + 1] + (r,) + shape[ax + 1 :])
        return A.reshape(spread, shape[:ax] + (shape[ax] * r,) + shape[ax + 1 :])
    if counts.shape != (shape[ax],):
        raise A._fail(f"repeat: operands could not be broadcast together with shape ({shape[ax]},) {counts.shape}")
    return A.take(a, np.repeat(np.arange(shape[ax]), counts), axis=ax)


def tile(A_: Array, reps: Any) -> Array:
    a = A._as_operand(A_)
    reps = (int(reps),) if np.ndim(reps) == 0 else tuple(int(r) for r in reps)
    shape = shape_of(a)
    d = builtins.max(len(shape), len(reps))
    shape = (1,) * (d - len(shape)) + shape
    reps = (1,) * (d - len(reps)) + reps
    inter = builtins.sum(((1, n) for n in shape), ())
    spread = builtins.sum(((r, n) for r, n in zip(reps, shape, strict=True)), ())
    out = A.broadcast_to(A.reshape(a, inter), spread)
    return A.reshape(out, tuple(r * n for r, n in zip(reps, shape, strict=True)))


def roll(a: Array, shift: Any, axis: Any = None) -> Array:
    a = A._as_operand(a)
    if axis is None:
        return A.reshape(roll(A.ravel(a), shift, 0), shape_of(a))
    shifts, axes = np.broadcast_arrays(np.asarray(shift), np.asarray(axis))
    for s, ax in zip(shifts.ravel(), axes.ravel(), strict=True):
        (ax,) = A._axes(int(ax), len(shape_of(a)), "roll")
        n = shape_of(a)[ax]
        k = int(s) % n if n else 0
        if k:
            a = A.concatenate([_along(a, ax, n - k, n), _along(a, ax, 0, n - k)], axis=ax)
    return a


def rollaxis(a: Array, axis: int, start: int = 0) -> Array:
    nd = len(shape_of(a))
    (axis,) = A._axes_in_order(axis, nd, "rollaxis")
    if not -nd <= start <= nd:
        raise A._fail(f"rollaxis: start {start} is out of bounds for an array of dimension {nd}")
    start = start + nd if start < 0 else start
    if axis < start:
        start -= 1
    if axis == start:
        return A._as_operand(a)
    order = [k for k in range(nd) if k != axis]
    order.insert(start, axis)
    return A.transpose(a, order)


def rot90(m: Array, k: int = 1, axes: Sequence[int] = (0, 1)) -> Array:
    m = A._as_operand(m)
    nd = len(shape_of(m))
    if len(axes) != 2 or nd < 2:
        raise A._fail("rot90: len(axes) must be 2 and the array at least 2-d")
    a0, a1 = A._axes_in_order(axes, nd, "rot90")
    if a0 == a1:
        raise A._fail("rot90: axes must be different")
    k %= 4
    if k == 0:
        return A.fresh(m)
    if k == 2:
        return A.flip(A.flip(m, a0), a1)
    perm = list(range(nd))
    perm[a0], perm[a1] = perm[a1], perm[a0]
    return A.transpose(A.flip(m, a1), perm) if k == 1 else A.flip(A.transpose(m, perm), a1)


def fliplr(m: Array) -> Array:
    if len(shape_of(m)) < 2:
        raise A._fail("fliplr: input must be >= 2-d")
    return A.flip(m, 1)


def flipud(m: Array) -> Array:
    if len(shape_of(m)) < 1:
        raise A._fail("flipud: input must be >= 1-d")
    return A.flip(m, 0)


def _band(shape: tuple[int, int], k: int, keep: Callable[[Array, Array], Array]) -> Array:
    rows = bind(P.iota, shape=shape, dimension=0, dtype=DType.i64)
    cols = bind(P.iota, shape=shape, dimension=1, dtype=DType.i64)
    return keep(A.subtract(cols, rows), k)


def _triangle(m: Array, k: int, keep: Callable[[Array, Array], Array]) -> Array:
    m = A._as_operand(m)
    shape = shape_of(m)
    if len(shape) < 2:
        m = A.broadcast_to(m, (shape[0], shape[0])) if shape else m
        shape = shape_of(m)
    mask = A.broadcast_to(_band(shape[-2:], k, keep), shape)
    return A.where(mask, m, A.zeros_like(m))


def tril(m: Array, k: int = 0) -> Array:
    """The lower triangle (zeros above the k-th diagonal) of the last two axes."""
    return _triangle(m, k, A.less_equal)


def triu(m: Array, k: int = 0) -> Array:
    """The upper triangle (zeros below the k-th diagonal) of the last two axes."""
    return _triangle(m, k, A.greater_equal)


def tri(N: int, M: int | None = None, k: int = 0, dtype: Any = float) -> Array:
    return A.astype(_band((N, N if M is None else M), k, A.less_equal), dtype)


def diag(v: Array, k: int = 0) -> Array:
    """The k-th diagonal of a matrix, or a matrix with vector ``v`` on its k-th diagonal."""
    v = A._as_operand(v)
    shape = shape_of(v)
    if len(shape) == 2:
        return diagonal(v, k)
    if len(shape) != 1:
        raise A._fail("diag: input must be 1- or 2-d")
    n = shape[0] + builtins.abs(k)
    padded = A.pad(v, (0, builtins.abs(k)))
    spread = bind(P.broadcast_in_dim, padded, shape=(n, n), dims=(0 if k >= 0 else 1,))
    return A.where(_band((n, n), k, A.equal), spread, A.zeros_like(spread))


def diagflat(v: Array, k: int = 0) -> Array:
    return diag(A.ravel(v), k)


def kron(a: Array, b: Array) -> Array:
    """The Kronecker product: every element of ``a`` times the whole of ``b``."""
    a, b = A._as_operand(a), A._as_operand(b)
    sa, sb = shape_of(a), shape_of(b)
    d = builtins.max(len(sa), len(sb))
    sa, sb = (1,) * (d - len(sa)) + sa, (1,) * (d - len(sb)) + sb
    left = A.reshape(a, builtins.sum(((n, 1) for n in sa), ()))
    right = A.reshape(b, builtins.sum(((1, n) for n in sb), ()))
    return A.reshape(A.multiply(left, right), tuple(x * y for x, y in zip(sa, sb, strict=True)))


def cross(a: Array, b: Array, axisa: int = -1, axisb: int = -1, axisc: int = -1, axis: int | None = None) -> Array:
    """The cross product of 3-vectors (2-vectors: its z component) along the given axes."""
    if axis is not None:
        axisa = axisb = axisc = axis
    a = A.moveaxis(A._as_operand(a), axisa, -1)
    b = A.moveaxis(A._as_operand(b), axisb, -1)
    na, nb = shape_of(a)[-1], shape_of(b)[-1]
    if na not in (2, 3) or nb not in (2, 3):
        raise A._fail("cross: incompatible dimensions for cross product (dimension must be 2 or 3)")
    if na != nb:
        raise NotImplementedError("numpy.cross of a 2-vector and a 3-vector")
    ax, ay, bx, by = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    z = A.subtract(A.multiply(ax, by), A.multiply(ay, bx))
    if na == 2:
        return z
    az, bz = a[..., 2], b[..., 2]
    x = A.subtract(A.multiply(ay, bz), A.multiply(az, by))
    y = A.subtract(A.multiply(az, bx), A.multiply(ax, bz))
    shape = A.broadcast_shapes("cross", shape_of(x), shape_of(y), shape_of(z))
    out = A.stack([A.broadcast_to(c, shape) for c in (x, y, z)], axis=-1)
    return A.moveaxis(out, -1, axisc)


def append(arr: Array, values: Array, axis: int | None = None) -> Array:
    if axis is None:
        return A.concatenate([A.ravel(arr), A.ravel(values)], axis=0)
    return A.concatenate([arr, values], axis=axis)


def _split_at(ary: Array, bounds: Sequence[int], axis: int) -> list[Array]:
    a = A._as_operand(ary)
    (ax,) = A._axes(axis, len(shape_of(a)), "split")
    n = shape_of(a)[ax]
    edges = [0, *bounds, n]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        lo, hi = builtins.min(builtins.max(lo if lo >= 0 else lo + n, 0), n), builtins.min(builtins.max(hi if hi >= 0 else hi + n, 0), n)
        out.append(_along(a, ax, lo, hi))
    return out


def array_split(ary: Array, indices_or_sections: Any, axis: int = 0) -> list[Array]:
    """Pieces of ``ary`` along ``axis``: N sections (the first N % size one longer) or
    cut at the given indices."""
    if np.ndim(indices_or_sections) == 0:
        sections = int(indices_or_sections)
        if sections <= 0:
            raise A._fail("array_split: number sections must be larger than 0")
        n = shape_of(ary)[A._axes(axis, len(shape_of(ary)), "array_split")[0]]
        each, extra = divmod(n, sections)
        sizes = [each + 1] * extra + [each] * (sections - extra)
        return _split_at(ary, [int(i) for i in np.cumsum(sizes)[:-1]], axis)
    return _split_at(ary, [int(i) for i in indices_or_sections], axis)


def split(ary: Array, indices_or_sections: Any, axis: int = 0) -> list[Array]:
    if np.ndim(indices_or_sections) == 0:
        n = shape_of(ary)[A._axes(axis, len(shape_of(ary)), "split")[0]]
        if n % int(indices_or_sections):
            raise A._fail("split: array split does not result in an equal division")
    return array_split(ary, indices_or_sections, axis)


def hsplit(ary: Array, indices_or_sections: Any) -> list[Array]:
    if len(shape_of(ary)) == 0:
        raise A._fail("hsplit only works on arrays of 1 or more dimensions")
    return split(ary, indices_or_sections, 1 if len(shape_of(ary)) > 1 else 0)


def vsplit(ary: Array, indices_or_sections: Any) -> list[Array]:
    if len(shape_of(ary)) < 2:
        raise A._fail("vsplit only works on arrays of 2 or more dimensions")
    return split(ary, indices_or_sections, 0)


def dsplit(ary: Array, indices_or_sections: Any) -> list[Array]:
    if len(shape_of(ary)) < 3:
        raise A._fail("dsplit only works on arrays of 3 or more dimensions")
    return split(ary, indices_or_sections, 2)


def atleast_3d(a: Array) -> Array:
    a = A._as_operand(a)
    shape = shape_of(a)
    if len(shape) == 0:
        return A.reshape(a, (1, 1, 1))
    if len(shape) == 1:
        return A.reshape(a, (1, shape[0], 1))
    if len(shape) == 2:
        return A.reshape(a, shape + (1,))
    return a


def partition(a: Array, kth: Any, axis: int | None = -1, kind: str = "introselect", order: Any = None) -> Array:
    """``numpy.partition``: ``a`` with the ``kth`` element(s) in sorted position, smaller
    ones before and larger after, along ``axis``. Computed as a full (stable) sort, which
    satisfies that contract; NumPy leaves the order inside each side unspecified, so the
    two may differ there. Raises ``ValueError`` for an out-of-range ``kth``."""
    _check_kth(a, kth, axis, "partition")
    return sort(a, axis=axis, order=order)


def argpartition(a: Array, kth: Any, axis: int | None = -1, kind: str = "introselect", order: Any = None) -> Array:
    """``numpy.argpartition``: the indices that partition ``a`` (those of a stable sort,
    see ``partition``)."""
    _check_kth(a, kth, axis, "argpartition")
    return argsort(a, axis=axis, order=order)


def searchsorted(a: Array, v: Array, side: str = "left", sorter: Array = None) -> Array:
    """``numpy.searchsorted``: for each element of ``v``, the index at which inserting it
    keeps the sorted 1-d ``a`` (or ``take(a, sorter)``) sorted: the count of the elements
    of ``a`` before it (``side="left"``: smaller; ``"right"``: not larger), NaNs sorting
    last as in NumPy. A comparison-and-sum over ``v.size * a.size`` pairs, fused: no
    binary search, and for an unsorted ``a`` the same count (NumPy's answer is then
    unspecified). int64, shaped like ``v``."""
    if side not in ("left", "right"):
        raise ValueError(f"searchsorted: side must be 'left' or 'right', got {side!r}")
    a = A._as_operand(a)
    if len(shape_of(a)) != 1:
        raise ValueError(f"searchsorted: a must be 1-d, got shape {shape_of(a)}")
    if sorter is not None:
        a = A.take(a, sorter)
    dt = result_dtype(a, v)  # before v becomes an array: a Python scalar is weak
    v = A._as_operand(v)
    ai, vi = A.astype(a, dt, copy=False), A.expand_dims(A.astype(v, dt, copy=False), -1)
    before = A.less(ai, vi) if side == "left" else A.less_equal(ai, vi)
    if dt.is_float:  # NaN sorts after every number and (side="right") after NaN
        nan_v = A.isnan(vi)
        before = A.logical_or(before, nan_v if side == "right" else A.logical_and(nan_v, A.logical_not(A.isnan(ai))))
    return A.sum(before, axis=-1, dtype=np.int64)


def argwhere(a: Array) -> Array:
    """``numpy.argwhere``: ``[count, ndim]`` int64 indices of the nonzero elements of a
    concrete or known ``a``. Of a traced one their count, so the result's shape, depends on
    the data: ``NotImplementedError``, as ``nonzero``."""
    A.nonzero(a, "numpy.argwhere of a traced array")
    return A.asarray(np.argwhere(np.asarray(a)))


def flatnonzero(a: Array) -> Array:
    """``numpy.flatnonzero``: the indices of the nonzero elements of the flattened ``a``,
    for a concrete or known ``a`` (see ``argwhere``)."""
    return A.nonzero(A.ravel(A._as_operand(a)), "numpy.flatnonzero of a traced array")[0]


def compress(condition: Array, a: Array, axis: int | None = None, out: Array = None) -> Array:
    """``numpy.compress``: the slices of ``a`` along ``axis`` (of the flattened ``a`` when
    None) where the 1-d ``condition`` is true, for a concrete or known ``condition``. A
    traced one's count of true values, so the result's shape, depends on the data:
    ``NotImplementedError``."""
    if out is not None:
        return inplace.store(out, compress(condition, a, axis), "compress", "unsafe")
    (idx,) = A.nonzero(A.ravel(A._as_operand(condition)), "numpy.compress with a traced condition")
    a = A._as_operand(a)
    if axis is None:
        a, axis = A.ravel(a), 0
    (ax,) = A._axes(axis, len(shape_of(a)), "compress")
    n = shape_of(a)[ax]
    if len(idx) and int(idx[-1]) >= n:
        raise IndexError(f"compress: index {int(idx[-1])} is out of bounds for axis {ax} with size {n}")
    return A.take(a, idx, axis=ax)


def choose(a: Array, choices: Any, out: Array = None, mode: str = "raise") -> Array:
    """``numpy.choose``: ``choices[a[i]][i]`` with ``a`` and every choice broadcast together
    (a chain of selects). ``mode``: ``"wrap"`` (modulo the number of choices), ``"clip"``
    (to the range) or ``"raise"``: an index out of range raises where ``a`` is known, and
    a traced one is clipped (as ``take`` clamps)."""
    if out is not None:
        return inplace.store(out, choose(a, choices, mode=mode), "choose", "unsafe")
    if mode not in ("raise", "wrap", "clip"):
        raise ValueError(f"choose: mode must be 'raise', 'wrap' or 'clip', got {mode!r}")
    pieces = [A._as_operand(c) for c in (list(choices) if not isinstance(choices, (list, tuple)) else choices)]
    if not pieces:
        raise ValueError("choose: choices must not be empty")
    a = A._as_operand(a)
    if not (A._dtype_of(a).is_int or A._dtype_of(a).is_bool):
        raise TypeError(f"choose: the index array must be of integers, got {A._dtype_of(a)}")
    n = len(pieces)
    known = a.known if isinstance(a, TracedArray) else np.asarray(a)
    if mode == "raise" and known is not None and np.any((known < 0) | (known >= n)):
        raise ValueError("choose: invalid entry in choice array")
    if mode == "wrap":
        a = A.remainder(a, n)
    dt = result_dtype(*pieces)
    shape = A.broadcast_shapes("choose", shape_of(a), *(shape_of(c) for c in pieces))
    result = A.fresh(A._broadcast(A.astype(pieces[-1], dt, copy=False), shape))
    for k in range(n - 2, -1, -1):  # an index below 0 (clipped) picks the first choice
        pick = A.less_equal(a, k) if k == 0 else A.equal(a, k)
        result = A.where(pick, A.astype(pieces[k], dt, copy=False), result)
    return result


def matrix_transpose(x: Array) -> Array:
    """``numpy.matrix_transpose`` (``x.mT``): the last two axes swapped; ``ValueError``
    below 2-d, as NumPy."""
    x = A._as_operand(x)
    ndim = len(shape_of(x))
    if ndim < 2:
        raise ValueError(f"Input array must be at least 2-dimensional, but it is {ndim}")
    return A.swapaxes(x, -1, -2)


def _check_kth(a: Array, kth: Any, axis: int | None, name: str) -> None:
    shape = shape_of(A._as_operand(a))
    n = math.prod(shape) if axis is None else shape[A._axes(axis, len(shape), name)[0]]
    for k in np.atleast_1d(np.asarray(kth)).tolist():
        if not -n <= int(k) < n:
            raise A._fail(f"{name}: kth(={k}) out of bounds ({n})")


class _AxisConcatenator:
    """``r_`` and ``c_``: ``fnp.r_[a, b, 0:3]`` concatenates along the first axis (slices
    become ``arange``s, scalars 1-element arrays); ``fnp.c_[a, b]`` stacks 1-d pieces as
    columns and joins 2-d ones along the last axis. NumPy's string directives
    (``r_['0,2', ...]``) are not supported."""

    def __init__(self, columns: bool) -> None:
        self.columns = columns

    def __getitem__(self, key: Any) -> Array:
        items = key if isinstance(key, tuple) else (key,)
        pieces = []
        for item in items:
            if isinstance(item, str):
                raise NotImplementedError(f"numpy.r_/c_ string directives ({item!r})")
            if isinstance(item, slice):
                step = 1 if item.step is None else item.step
                if isinstance(step, complex):
                    item = A.asarray(np.linspace(item.start or 0, item.stop, int(abs(step))))
                else:
                    item = A.asarray(np.arange(item.start or 0, item.stop, step))
            pieces.append(item)
        dt = result_dtype(*pieces)  # Python scalars are weak (NumPy 2): r_[float32 array, 1.5] is float32
        pieces = [A.atleast_1d(A.astype(A._as_operand(p), dt, copy=False)) for p in pieces]
        if self.columns:  # 1-d pieces become columns
            pieces = [A.reshape(p, (-1, 1)) if len(shape_of(p)) == 1 else p for p in pieces]
            return A.concatenate(pieces, axis=-1)
        return A.concatenate(pieces, axis=0)

    def __len__(self) -> int:
        return 0


r_ = _AxisConcatenator(columns=False)
c_ = _AxisConcatenator(columns=True)


def column_stack(tup: Sequence[Array]) -> Array:
    cols = []
    for a in tup:
        a = A._as_operand(a)
        cols.append(A.reshape(a, (-1, 1)) if len(shape_of(a)) < 2 else a)
    return A.concatenate(cols, axis=1)


def row_stack(tup: Sequence[Array]) -> Array:
    return A.vstack(tup)


def dstack(tup: Sequence[Array]) -> Array:
    return A.concatenate([atleast_3d(a) for a in tup], axis=2)


def select(condlist: Sequence[Array], choicelist: Sequence[Array], default: Any = 0) -> Array:
    """The first choice whose condition holds, else ``default`` (NumPy: every choice and
    the default count as arrays in the result dtype)."""
    if len(condlist) != len(choicelist):
        raise A._fail("select: list of cases must be same length as list of conditions")
    if not condlist:
        raise A._fail("select with an empty condition list is not possible")
    choices = [c if isinstance(c, TracedArray) else np.asarray(c) for c in choicelist]
    dt = result_dtype(*choices, default)  # a Python scalar default is weak (NumPy 2)
    out = A.astype(A._as_operand(default), dt, copy=False)
    for cond, choice in zip(reversed(list(condlist)), reversed(choices), strict=True):
        if not A._dtype_of(cond).is_bool:
            raise TypeError(f"invalid entry in condlist: should be boolean ndarray, got {A._dtype_of(cond)}")
        out = A.where(cond, A.astype(A._as_operand(choice), dt, copy=False), out)
    return out


def linspace(start: Any, stop: Any, num: int = 50, endpoint: bool = True, retstep: bool = False,
             dtype: Any = None, axis: int = 0) -> Any:
    """``num`` evenly spaced values; concrete bounds give NumPy's own values, traced ones
    ``start + i * step`` (the last one exactly ``stop`` with ``endpoint``)."""
    if not isinstance(start, TracedArray) and not isinstance(stop, TracedArray):
        values, step = np.linspace(start, stop, num, endpoint=endpoint, retstep=True, axis=axis)
        out = A.asarray(values, dtype)
        return (out, step) if retstep else out
    if num < 0:
        raise A._fail(f"linspace: number of samples, {num}, must be non-negative")
    dt = A._float_dtype(start, stop)
    start, stop = A.astype(A._as_operand(start), dt), A.astype(A._as_operand(stop), dt)
    div = num - 1 if endpoint else num
    shape = A.broadcast_shapes("linspace", shape_of(start), shape_of(stop))
    span = A.subtract(stop, start)
    step = A.true_divide(span, float(div)) if div > 0 else A.multiply(span, np.nan)
    ramp = A.reshape(bind(P.iota, shape=(num,), dimension=0, dtype=dt), (num,) + (1,) * len(shape))
    out = A.add(A.multiply(ramp, step), start)
    if endpoint and num > 1:
        last = A.equal(bind(P.iota, shape=(num,), dimension=0, dtype=DType.i64), num - 1)
        out = A.where(A.reshape(last, (num,) + (1,) * len(shape)), stop, out)
    out = A.moveaxis(out, 0, axis) if shape else out
    out = out if dtype is None else A.astype(out, dtype)
    return (out, step) if retstep else out


# ---------------------------------------------------------------------------------------
# In-place writes by flat position (NumPy's putmask, place, put, fill_diagonal): each
# computes the array's new contents and stores them as ``out=`` does (``inplace.store``),
# so a traced array is updated functionally and a NumPy array eagerly.


def _repeated(values: Array, count: int, name: str) -> Array:
    """``values`` flattened and repeated (cycled) to ``count`` elements, as NumPy's
    position-wise writes use a shorter ``values``."""
    flat = A.ravel(A._as_operand(values))
    size = shape_of(flat)[0]
    if size == 0:
        if count == 0:
            return flat
        raise ValueError(f"{name}: cannot insert from an empty array")
    return flat if size == count else A.take(flat, np.arange(count) % size)


def _store_flat(a: Array, positions: Array, values: Array, name: str) -> None:
    """``a.flat[positions] = values`` (repeated to the positions' count; a repeated
    position keeps the last value, as in NumPy)."""
    if not isinstance(a, TracedArray) and builtins.any(isinstance(x, TracedArray) for x in (positions, values)):
        raise inplace.cannot_hold(name)
    new = A.copy(a)
    A.reshape(new, (-1,))[positions] = _repeated(values, shape_of(positions)[0], name)
    inplace.store(a, new, name, "unsafe")


def putmask(a: Array, mask: Array, values: Array) -> None:
    """``numpy.putmask``: ``a.flat[n] = values.flat[n % values.size]`` where ``mask.flat[n]``
    (``mask`` has ``a``'s size; values cast unsafely to ``a``'s dtype)."""
    if math.prod(shape_of(mask)) != math.prod(shape_of(a)):
        raise ValueError("putmask: mask and data must be the same size")
    if isinstance(values, (np.ndarray, TracedArray)) and not np.can_cast(values.dtype, A._dtype_of(a).np, "safe"):
        raise TypeError(f"putmask: cannot cast array data from {values.dtype} to {A._dtype_of(a).np} "
                        "according to the rule 'safe'")
    spread = A.reshape(_repeated(values, math.prod(shape_of(a)), "putmask"), shape_of(a))
    mask = A.reshape(A.astype(mask, bool), shape_of(a))
    inplace.store(a, A.where(mask, A.astype(spread, A._dtype_of(a).np), a), "putmask", "unsafe")


def place(arr: Array, mask: Array, vals: Array) -> None:
    """``numpy.place``: the elements of ``arr`` where ``mask`` is True take ``vals`` in order
    (cycled): the k-th True position takes ``vals.flat[k % vals.size]``."""
    n = math.prod(shape_of(arr))
    if math.prod(shape_of(mask)) != n:
        raise ValueError("place: mask and data must be the same size")
    flat_mask = A.ravel(A.astype(mask, bool))
    if math.prod(shape_of(vals)) == 0:
        if not isinstance(flat_mask, TracedArray) or flat_mask.known is not None:
            if not np.asarray(flat_mask).any():
                return
        raise ValueError("place: cannot insert from an empty array")
    vals = A.ravel(A._as_operand(vals))
    rank = A.subtract(A.cumsum(A.astype(flat_mask, np.int64)), 1)  # k of the k-th True
    taken = A.take(vals, A.remainder(A.maximum(rank, 0), shape_of(vals)[0]))
    new = A.where(flat_mask, A.astype(taken, A._dtype_of(arr).np), A.ravel(arr))
    inplace.store(arr, A.reshape(new, shape_of(arr)), "place", "unsafe")


def put(a: Array, ind: Array, v: Array, mode: str = "raise") -> None:
    """``numpy.put``: ``a.flat[ind] = v`` (``v`` cycled to ``ind``'s length). ``mode``:
    ``"raise"`` (an index out of range raises where it is known; a traced one out of range
    writes nothing), ``"wrap"`` (modulo the size) or ``"clip"`` (to the range)."""
    n = math.prod(shape_of(a))
    ind = A.ravel(A._as_operand(ind))
    if mode == "wrap":
        ind = A.remainder(ind, n)
    elif mode == "clip":
        ind = A.clip(ind, 0, n - 1)
    elif mode != "raise":
        raise ValueError(f"put: mode must be 'raise', 'wrap' or 'clip', got {mode!r}")
    _store_flat(a, ind, v, "put")


def fill_diagonal(a: Array, val: Array, wrap: bool = False) -> None:
    """``numpy.fill_diagonal``: ``val`` (cycled) on the main diagonal of ``a`` (at least
    2-d; every axis of the same length when more than 2-d). A tall 2-d matrix's diagonal
    restarts below the square part when ``wrap``, as in NumPy."""
    shape = shape_of(a)
    if len(shape) < 2:
        raise ValueError("fill_diagonal: array must be at least 2-d")
    if len(shape) == 2:
        step = shape[1] + 1
        end = None if wrap else shape[1] * shape[1]
    else:
        if len(set(shape)) != 1:
            raise ValueError("fill_diagonal: all dimensions of input must be of equal length")
        step = 1 + int(np.cumprod(shape[:-1]).sum())
        end = None
    _store_flat(a, np.arange(math.prod(shape))[:end:step], val, "fill_diagonal")


# ---------------------------------------------------------------------------------------
# NumPy's protocols: what numpy_api adds to its dispatch tables

UFUNCS: dict[np.ufunc, Callable[..., Array]] = {
    np.arctan2: arctan2, np.arctan: arctan, np.arcsin: arcsin, np.arccos: arccos, np.sinh: sinh,
    np.cosh: cosh, np.arcsinh: arcsinh, np.arccosh: arccosh, np.arctanh: arctanh, np.hypot: hypot,
    np.logaddexp: logaddexp, np.logaddexp2: logaddexp2, np.fabs: fabs, np.fmax: fmax, np.fmin: fmin,
    np.deg2rad: deg2rad, np.rad2deg: rad2deg, np.degrees: rad2deg, np.radians: deg2rad,
    np.conjugate: conjugate,
}  # fmt: skip

ARRAY_FUNCTIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    getattr(np, name): globals()[name]
    for name in (
        "prod cumprod diff diagonal trace argsort sort isclose allclose count_nonzero gradient "
        "repeat tile roll rollaxis rot90 fliplr flipud tril triu diag diagflat kron cross append "
        "split array_split hsplit vsplit dsplit atleast_3d column_stack row_stack dstack select "
        "linspace sinc nan_to_num real imag iscomplexobj isrealobj cumulative_prod partition argpartition "
        "putmask place put fill_diagonal searchsorted compress choose matrix_transpose argwhere flatnonzero"
    ).split()
    if hasattr(np, name)
}

__all__ = [
    n for n, v in list(globals().items())
    if not n.startswith("_") and callable(v) and getattr(v, "__module__", None) == __name__
] + ["r_", "c_"]  # fmt: skip
