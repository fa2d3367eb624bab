"""``fusejit.numpy``: NumPy's names over fusejit's primitives.

Every function works on traced values (recording IR) and on concrete arrays (running
eagerly through the same primitives), with NumPy 2 semantics: broadcasting, NEP 50
promotion (Python scalars are weak), ``axis``/``keepdims``. NumPy functions applied to
traced values dispatch here through ``__array_ufunc__``/``__array_function__``.
"""

from __future__ import annotations

import builtins
import math
import operator
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.dtypes import DType, from_numpy
from fusejit.ir.primitives import IRTypeError
from fusejit.tracer import inplace
from fusejit.tracer.tracing import (
    TracedArray,
    bind,
    is_weak,
    operand_dtype,
    result_dtype,
    shape_of,
    user_source_loc,
)

# NumPy constants and dtype names, so that `import fusejit.numpy as np` keeps working.
pi, e, inf, nan, newaxis = np.pi, np.e, np.inf, np.nan, None
float32, float64, int32, int64, bool_ = np.float32, np.float64, np.int32, np.int64, np.bool_
ndarray = np.ndarray

Array = Any  # a TracedArray, a NumPy array or a scalar


# ---------------------------------------------------------------------------------------
# Operand preparation


def _fail(message: str) -> IRTypeError:
    loc = user_source_loc()
    return IRTypeError(f"{message}{f' (at {loc})' if loc else ''}")


def _boolean_mask_error() -> NotImplementedError:
    """Reading ``a[mask]`` with a traced mask: the result's shape depends on the data."""
    loc = user_source_loc()
    return NotImplementedError(
        "boolean mask indexing (its shape depends on the data)"
        f"{f' at {loc}' if loc else ''}: select instead, e.g. fnp.where(mask, a, 0).sum() for "
        "a[mask].sum() (a[mask] = value and a[mask] *= scalar work)"
    )


def broadcast_shapes(name: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy's broadcast of ``shapes``; the error names the op ``name`` and every shape."""
    first = tuple(shapes[0])
    if builtins.all(tuple(s) == first for s in shapes[1:]):  # the common case, without NumPy
        return first
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise _fail(
            f"{name}: operands could not be broadcast together with shapes "
            + " ".join(str(tuple(s)) for s in shapes)
        ) from None


def _with_weak(out: Any, weak: bool) -> Any:
    if isinstance(out, TracedArray):
        out.weak = weak
    return out


def _dtype_of(x: Array) -> DType:
    return operand_dtype(x)[0]


def astype(x: Array, dtype: Any, copy: bool = True) -> Array:
    """``x`` converted to ``dtype``, a new array as in NumPy; with ``copy=False``, ``x``
    itself when it already has that dtype (``np.asarray(x, dtype)``). The result
    is strongly typed, like ``np.float32(2.0)``."""
    dt = from_numpy(dtype)
    if isinstance(x, TracedArray):
        if x.value.dtype == dt:
            return fresh(x) if copy else x
        return _with_weak(bind(P.convert, x, dtype=dt), False)
    arr = np.asarray(x)
    if arr.dtype == dt.np:
        return arr.copy() if copy else arr
    return bind(P.convert, arr, dtype=dt)


def fresh(x: Array) -> Array:
    """A new array with ``x``'s contents (a traced copy costs nothing: it is the same SSA
    value in a new handle, which later writes to ``x`` do not reach)."""
    if isinstance(x, TracedArray):
        return TracedArray(x.value, x.trace, x.weak, x.known)
    return np.array(x)


def broadcast_to(x: Array, shape: Sequence[int]) -> Array:
    """A read-only view of ``x`` broadcast to ``shape``, as in NumPy."""
    out = _broadcast(x, shape)
    return out if out is x else inplace.view_of(x, out, inplace.Broadcast(shape_of(out)))


def _broadcast(x: Array, shape: Sequence[int]) -> Array:
    shape = tuple(int(s) for s in shape)
    xs = shape_of(x)
    if xs == shape:
        return x
    broadcast_shapes("broadcast_to", xs, shape)
    if len(xs) > len(shape) or broadcast_shapes("broadcast_to", xs, shape) != shape:
        raise _fail(f"broadcast_to: cannot broadcast shape {xs} to {shape}")
    dims = tuple(range(len(shape) - len(xs), len(shape)))
    out = bind(P.broadcast_in_dim, _as_operand(x), shape=shape, dims=dims)
    return _with_weak(out, is_weak(x))


def _as_operand(x: Array) -> Array:
    """Tracers pass through; everything else becomes a NumPy array of a supported dtype."""
    if isinstance(x, TracedArray):
        return x
    arr = np.asarray(x)
    from_numpy(arr.dtype)  # raises for unsupported dtypes
    return arr


def _prepare(x: Array, dt: DType, shape: tuple[int, ...]) -> Array:
    if not isinstance(x, TracedArray):
        x = np.asarray(x, dtype=dt.np)
    return _broadcast(astype(x, dt), shape)


def _elementwise(name: str, prim: P.Primitive, *xs: Array, dtype: DType | None = None) -> Array:
    """``prim`` applied to NumPy-promoted, broadcast operands."""
    dt = dtype or result_dtype(*xs)
    shape = broadcast_shapes(name, *(shape_of(x) for x in xs))
    out = bind(prim, *(_prepare(x, dt, shape) for x in xs))
    return _with_weak(out, is_weak(*xs))


def _float_dtype(*xs: Array) -> DType:
    """The dtype NumPy computes float functions of ``xs`` in (ints go to float64)."""
    dt = result_dtype(*xs)
    return dt if dt.is_float else DType.f64


def _unary_float(name: str, prim: P.Primitive) -> Callable[[Array], Array]:
    def fn(x: Array, out: Array = None) -> Array:
        return inplace.store(out, _elementwise(name, prim, x, dtype=_float_dtype(x)), name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise ``numpy.{name}``."
    return fn


def _binary(
    name: str, prim: P.Primitive, on_bool: P.Primitive | None = None
) -> Callable[[Array, Array], Array]:
    """A NumPy binary ufunc; ``on_bool`` is the primitive NumPy's bool loop amounts to
    (``True + True`` is ``True``: add is logical or, multiply logical and)."""

    def fn(x: Array, y: Array, out: Array = None) -> Array:
        use = on_bool if on_bool is not None and result_dtype(x, y).is_bool else prim
        return inplace.store(out, _elementwise(name, use, x, y), name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise ``numpy.{name}`` with broadcasting and NumPy 2 promotion."
    return fn


def _comparison(name: str, prim: P.Primitive) -> Callable[[Array, Array], Array]:
    def fn(x: Array, y: Array, out: Array = None) -> Array:
        dt = result_dtype(x, y)
        if dt.is_bool and dt not in prim.dtypes:
            dt = DType.i32  # False < True: order bools as 0 and 1
        shape = broadcast_shapes(name, shape_of(x), shape_of(y))
        return inplace.store(out, bind(prim, _prepare(x, dt, shape), _prepare(y, dt, shape)), name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise ``numpy.{name}``; returns bool."
    return fn


# ---------------------------------------------------------------------------------------
# Elementwise functions

add = _binary("add", P.add, P.logical_or)
subtract = _binary("subtract", P.sub)
multiply = _binary("multiply", P.mul, P.logical_and)
maximum = _binary("maximum", P.max, P.logical_or)
minimum = _binary("minimum", P.min, P.logical_and)
equal = _comparison("equal", P.eq)
not_equal = _comparison("not_equal", P.ne)
less = _comparison("less", P.lt)
less_equal = _comparison("less_equal", P.le)
greater = _comparison("greater", P.gt)
greater_equal = _comparison("greater_equal", P.ge)

exp = _unary_float("exp", P.exp)
log = _unary_float("log", P.log)
log1p = _unary_float("log1p", P.log1p)
expm1 = _unary_float("expm1", P.expm1)
sqrt = _unary_float("sqrt", P.sqrt)
tanh = _unary_float("tanh", P.tanh)
sin = _unary_float("sin", P.sin)
cos = _unary_float("cos", P.cos)
rint = _unary_float("rint", P.round)


def _integral(name: str, prim: P.Primitive) -> Callable[[Array], Array]:
    """floor/ceil/trunc: integers and bools are already integral, and NumPy 2 keeps them."""
    as_float = _unary_float(name, prim)

    def fn(x: Array, out: Array = None) -> Array:
        return inplace.store(out, fresh(_as_operand(x)) if not _dtype_of(x).is_float else as_float(x), name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise ``numpy.{name}``."
    return fn


floor = _integral("floor", P.floor)
ceil = _integral("ceil", P.ceil)


def trunc(x: Array) -> Array:
    """Rounds toward zero."""
    if not _dtype_of(x).is_float:
        return fresh(_as_operand(x))
    return where(less(x, 0), ceil(x), floor(x))


def true_divide(x: Array, y: Array) -> Array:
    """``x / y``; integer operands divide in float64, as in NumPy."""
    return _elementwise("true_divide", P.div, x, y, dtype=_float_dtype(x, y))


divide = true_divide


def floor_divide(x: Array, y: Array) -> Array:
    """``x // y``, rounded down, exactly as NumPy (booleans divide as int32)."""
    return _elementwise("floor_divide", P.floor_divide, *_numeric(x, y))


def remainder(x: Array, y: Array) -> Array:
    """``x % y`` with the sign of ``y``, exactly as NumPy (fmod, then one correction)."""
    return _elementwise("remainder", P.remainder, *_numeric(x, y))


def _numeric(*xs: Array) -> tuple[Array, ...]:
    """Boolean operands as int32 (no primitive divides booleans; NumPy's int8 result is
    not a fusejit dtype)."""
    if result_dtype(*xs).is_bool:
        return tuple(astype(x, DType.i32) for x in xs)
    return xs


mod = remainder


def power(x: Array, y: Array) -> Array:
    """``x ** y``. Integer bases need a non-negative Python int exponent."""
    dt = result_dtype(x, y)
    if type(y) is int and y == 2 and dt == _dtype_of(x):
        return multiply(x, x)  # exactly NumPy's x**2, with a cheaper derivative than pow
    if dt.is_float:
        return _elementwise("power", P.pow, x, y)
    if type(y) is int and y >= 0:
        out = ones_like(x, dtype=dt.np)
        for _ in range(y):
            out = multiply(out, x)
        return out
    raise NotImplementedError("numpy.power of integers needs a non-negative Python int exponent")


def negative(x: Array) -> Array:
    return _with_weak(bind(P.neg, _as_operand(x)), is_weak(x))


def positive(x: Array) -> Array:
    return fresh(x)


def absolute(x: Array) -> Array:
    if _dtype_of(x).is_bool:
        return fresh(x)
    return _with_weak(bind(P.abs, _as_operand(x)), is_weak(x))


abs = absolute  # noqa: A001 - NumPy's name


def sign(x: Array) -> Array:
    return _with_weak(bind(P.sign, _as_operand(x)), is_weak(x))


def square(x: Array) -> Array:
    return multiply(x, x)


def reciprocal(x: Array) -> Array:
    return true_divide(1, x) if _dtype_of(x).is_float else true_divide(1, x).astype(_dtype_of(x).np)


def log2(x: Array) -> Array:
    return multiply(log(x), 1.0 / math.log(2.0))


def log10(x: Array) -> Array:
    return multiply(log(x), 1.0 / math.log(10.0))


def exp2(x: Array) -> Array:
    return exp(multiply(_as_float(x), math.log(2.0)))


def tan(x: Array) -> Array:
    return true_divide(sin(x), cos(x))


def _as_float(x: Array) -> Array:
    return astype(x, _float_dtype(x))


def round(a: Array, decimals: int = 0, out: Array = None) -> Array:  # noqa: A001 - NumPy's name
    """Round half to even, like ``numpy.round``; integers keep their dtype (and only
    negative ``decimals`` change them: to tens, hundreds...)."""
    if out is not None:
        return inplace.store(out, round(a, decimals), "round", "unsafe")
    dt = _dtype_of(a)
    if not dt.is_float:
        if decimals >= 0:
            return fresh(a)
        scale = 10.0 ** (-decimals)
        return astype(multiply(rint(true_divide(a, scale)), scale), dt)
    if decimals == 0:
        return rint(a)
    scale = 10.0**decimals
    return true_divide(rint(multiply(a, scale)), scale)


around = round


def logical_not(x: Array) -> Array:
    return bind(P.logical_not, astype(x, DType.bool))


def logical_and(x: Array, y: Array) -> Array:
    return _elementwise("logical_and", P.logical_and, astype(x, DType.bool), astype(y, DType.bool))


def logical_or(x: Array, y: Array) -> Array:
    return _elementwise("logical_or", P.logical_or, astype(x, DType.bool), astype(y, DType.bool))


def logical_xor(x: Array, y: Array) -> Array:
    return not_equal(astype(x, DType.bool), astype(y, DType.bool))


def bitwise_and(x: Array, y: Array) -> Array:
    return _elementwise("bitwise_and", P.logical_and, x, y)


def bitwise_or(x: Array, y: Array) -> Array:
    return _elementwise("bitwise_or", P.logical_or, x, y)


def invert(x: Array) -> Array:
    return _with_weak(bind(P.logical_not, _as_operand(x)), is_weak(x))


def bitwise_xor(x: Array, y: Array) -> Array:
    if result_dtype(x, y).is_bool:
        return not_equal(x, y)
    return bitwise_and(bitwise_or(x, y), invert(bitwise_and(x, y)))


def _shift(name: str, prim: P.Primitive) -> Callable[..., Array]:
    """left_shift/right_shift: NumPy 2's result for every count (see ``P.shift_left``:
    counts outside [0, bit width), negative ones included, shift every bit out), NumPy 2
    promotion (mixed widths widen, Python ints are weak). Bool operands alone shift as
    int32 (NumPy's int8 is not a fusejit dtype); a float operand is a ``TypeError``, as
    NumPy's ufunc has no float loop."""

    def fn(x: Array, y: Array, out: Array = None) -> Array:
        if result_dtype(x, y).is_float:
            loc = user_source_loc()
            raise TypeError(f"ufunc '{name}' not supported for the input types, and the inputs could not be "
                            f"safely coerced to any supported types according to the casting rule ''safe''"
                            f"{f' (at {loc})' if loc else ''}")
        return inplace.store(out, _elementwise(name, prim, *_numeric(x, y)), name)

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise ``numpy.{name}`` of integers, with broadcasting and NumPy 2 promotion."
    return fn


left_shift = bitwise_left_shift = _shift("left_shift", P.shift_left)
right_shift = bitwise_right_shift = _shift("right_shift", P.shift_right_arithmetic)


def divmod(x: Array, y: Array) -> tuple[Array, Array]:  # noqa: A001 - NumPy's name
    """``numpy.divmod``: ``(floor_divide(x, y), remainder(x, y))``, exactly as NumPy."""
    return floor_divide(x, y), remainder(x, y)


def isnan(x: Array) -> Array:
    return not_equal(x, x) if _dtype_of(x).is_float else full_like(x, False, dtype=np.bool_)


def isinf(x: Array) -> Array:
    return equal(absolute(x), inf) if _dtype_of(x).is_float else full_like(x, False, dtype=np.bool_)


def isfinite(x: Array) -> Array:
    return less(absolute(x), inf) if _dtype_of(x).is_float else full_like(x, True, dtype=np.bool_)


def where(condition: Array, x: Array = None, y: Array = None) -> Array:
    """``numpy.where(condition, x, y)``; with ``condition`` alone, ``nonzero(condition)``
    when it is concrete or known (a traced condition's nonzero count, so the result's
    shape, depends on the data: ``NotImplementedError``)."""
    if x is None and y is None:
        return nonzero(condition, "numpy.where with one traced argument")
    if x is None or y is None:
        raise ValueError("either both or neither of x and y should be given")
    dt = result_dtype(x, y)
    shape = broadcast_shapes("where", shape_of(condition), shape_of(x), shape_of(y))
    cond = _broadcast(astype(condition, DType.bool), shape)
    out = bind(P.select, _as_operand(cond), _prepare(x, dt, shape), _prepare(y, dt, shape))
    return _with_weak(out, is_weak(x, y))


_select = where  # for functions whose where= argument hides this one


def nonzero(a: Array, _what: str = "numpy.nonzero of a traced array") -> tuple[Array, ...]:
    """``numpy.nonzero``: the indices of the nonzero elements, one array per axis, when
    ``a`` is concrete or known. Of a traced ``a`` their number, so the result's shape,
    depends on the data: ``NotImplementedError``."""
    if isinstance(a, TracedArray) and a.known is None:
        loc = user_source_loc()
        raise NotImplementedError(
            f"{_what} (its shape depends on the data){f' at {loc}' if loc else ''}: "
            "use fnp.where(condition, x, y) or a mask instead (e.g. fnp.where(a != 0, a, 0).sum()), "
            "or compute the indices outside jit"
        )
    return tuple(asarray(i) for i in np.nonzero(np.asarray(a)))


def clip(
    a: Array, a_min: Array = None, a_max: Array = None, out: Array = None, *,
    min: Array = None, max: Array = None,  # noqa: A002
) -> Array:
    """``numpy.clip``: bounds by position (``a_min``/``a_max``) or by NumPy 2's names;
    ``out=`` as a ufunc's (same-kind casting)."""
    a_min = min if a_min is None else a_min
    a_max = max if a_max is None else a_max
    result = a
    if a_min is not None:
        result = maximum(result, a_min)
    if a_max is not None:
        result = minimum(result, a_max)
    return inplace.store(out, fresh(a) if result is a else result, "clip")


def stop_gradient(x: Array) -> Array:
    """The identity, whose derivative is zero."""
    return _with_weak(bind(P.stop_gradient, _as_operand(x)), is_weak(x))


# ---------------------------------------------------------------------------------------
# Reductions


def _axes(axis: Any, ndim: int, name: str) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        a = operator.index(a)
        if not -ndim <= a < ndim:
            raise _fail(f"{name}: axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise _fail(f"{name}: repeated axis in {axes}")
    return tuple(sorted(out))


def _keep(out: Array, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> Array:
    if not keepdims:
        return out
    return reshape(out, tuple(1 if i in axes else n for i, n in enumerate(shape)))


def sum(a: Array, axis: Any = None, dtype: Any = None, out: Array = None, keepdims: bool = False) -> Array:  # noqa: A001
    if out is not None:
        return inplace.store(out, sum(a, axis, dtype, keepdims=keepdims), "sum", "unsafe")
    a = _as_operand(a)
    dt = from_numpy(dtype) if dtype is not None else _dtype_of(a)
    if dtype is None and not dt.is_float:
        dt = DType.i64  # NumPy sums bools and small ints in the default int
    axes = _axes(axis, len(shape_of(a)), "sum")
    out = bind(P.reduce_sum, astype(a, dt), axes=axes)
    return _keep(out, shape_of(a), axes, keepdims)


def cumsum(a: Array, axis: Any = None, dtype: Any = None, out: Array = None) -> Array:
    """NumPy's ``cumsum``: running sums along ``axis`` (of the flattened array when None),
    in ``dtype`` (bools and small ints in the default int, like NumPy). One kernel of its
    own (``fusejit.codegen.scan``); float sums accumulate in order, exactly as NumPy's."""
    if out is not None:
        return inplace.store(out, cumsum(a, axis, dtype), "cumsum", "unsafe")
    a = _as_operand(a)
    dt = from_numpy(dtype) if dtype is not None else _dtype_of(a)
    if dtype is None and not dt.is_float:
        dt = DType.i64
    if axis is None:
        a, axis = ravel(a), 0
    (axis,) = _axes(axis, len(shape_of(a)), "cumsum")
    return bind(P.cumsum, astype(a, dt), axis=axis, reverse=False)


def mean(a: Array, axis: Any = None, dtype: Any = None, out: Array = None, keepdims: bool = False) -> Array:
    if out is not None:
        return inplace.store(out, mean(a, axis, dtype, keepdims=keepdims), "mean", "unsafe")
    a = _as_operand(a)
    dt = from_numpy(dtype) if dtype is not None else _float_dtype(a)
    axes = _axes(axis, len(shape_of(a)), "mean")
    count = math.prod(shape_of(a)[i] for i in axes)
    total = sum(astype(a, dt), axis=axes, keepdims=keepdims)
    return true_divide(total, float(count))


def var(a: Array, axis: Any = None, dtype: Any = None, out: Array = None, ddof: int = 0,
        keepdims: bool = False) -> Array:
    if out is not None:
        return inplace.store(out, var(a, axis, dtype, ddof=ddof, keepdims=keepdims), "var", "unsafe")
    a = _as_operand(a)
    axes = _axes(axis, len(shape_of(a)), "var")
    count = math.prod(shape_of(a)[i] for i in axes)
    centered = subtract(a, mean(a, axis=axes, dtype=dtype, keepdims=True))
    total = sum(multiply(centered, centered), axis=axes, keepdims=keepdims)
    return true_divide(total, float(builtins.max(count - ddof, 0)))


def std(a: Array, axis: Any = None, dtype: Any = None, out: Array = None, ddof: int = 0,
        keepdims: bool = False) -> Array:
    result = sqrt(var(a, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims))
    return inplace.store(out, result, "std", "unsafe")


def _extremum(prim: P.Primitive, name: str) -> Callable[..., Array]:
    def fn(a: Array, axis: Any = None, out: Array = None, keepdims: bool = False) -> Array:
        if out is not None:
            return inplace.store(out, fn(a, axis, keepdims=keepdims), name, "unsafe")
        a = _as_operand(a)
        axes = _axes(axis, len(shape_of(a)), name)
        if builtins.any(shape_of(a)[k] == 0 for k in axes):
            raise _fail(f"{name}: zero-size array to reduction operation {name} which has no identity "
                        f"(axis {axis} of shape {shape_of(a)})")
        src = astype(a, DType.i32) if _dtype_of(a).is_bool else a
        out = bind(prim, src, axes=axes)
        out = astype(out, DType.bool) if _dtype_of(a).is_bool else out
        return _keep(out, shape_of(a), axes, keepdims)

    fn.__name__ = fn.__qualname__ = name
    return fn


max = amax = _extremum(P.reduce_max, "max")  # noqa: A001
min = amin = _extremum(P.reduce_min, "min")  # noqa: A001


def _logical_reduction(extremum: Callable[..., Array], identity: bool, name: str) -> Callable[..., Array]:
    """``any``/``all``: the max/min of booleans, and ``identity`` over zero-size axes."""

    def fn(a: Array, axis: Any = None, out: Array = None, keepdims: bool = False) -> Array:
        if out is not None:
            return inplace.store(out, fn(a, axis, keepdims=keepdims), name, "unsafe")
        a = astype(_as_operand(a), DType.bool)
        shape = shape_of(a)
        axes = _axes(axis, len(shape), name)
        if builtins.any(shape[k] == 0 for k in axes):
            out = full(tuple(n for k, n in enumerate(shape) if k not in axes), identity, DType.bool)
            return _keep(out, shape, axes, keepdims)
        return extremum(a, axis=axes, keepdims=keepdims)

    fn.__name__ = fn.__qualname__ = name
    return fn


all = _logical_reduction(min, True, "all")  # noqa: A001
any = _logical_reduction(max, False, "any")  # noqa: A001


def _arg_extremum(prim: P.Primitive, name: str) -> Callable[..., Array]:
    def fn(a: Array, axis: int | None = None, out: Array = None, keepdims: bool = False) -> Array:
        if out is not None:
            return inplace.store(out, fn(a, axis, keepdims=keepdims), name, "unsafe")
        a = _as_operand(a)
        if _dtype_of(a).is_bool:
            a = astype(a, DType.i32)
        if axis is None:
            out = bind(prim, ravel(a), axis=0)
            return reshape(out, (1,) * len(shape_of(a))) if keepdims else out
        (ax,) = _axes(axis, len(shape_of(a)), name)
        out = bind(prim, a, axis=ax)
        return _keep(out, shape_of(a), (ax,), keepdims)

    fn.__name__ = fn.__qualname__ = name
    return fn


argmax = _arg_extremum(P.argmax, "argmax")
argmin = _arg_extremum(P.argmin, "argmin")


# ---------------------------------------------------------------------------------------
# Shapes and layout


def _normalize_shape(shape: Any, size: int) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    shape = tuple(operator.index(s) for s in shape)
    if shape.count(-1) > 1:
        raise _fail(f"reshape: can only infer one dimension in {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or size % known:
            raise _fail(f"reshape: cannot reshape an array of size {size} into shape {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    if math.prod(shape) != size:
        raise _fail(f"reshape: cannot reshape an array of size {size} into shape {shape}")
    return shape


def reshape(a: Array, shape: Any, order: str = "C") -> Array:
    if order != "C":
        raise NotImplementedError("numpy.reshape with order other than 'C'")
    a = _as_operand(a)
    new = _normalize_shape(shape, math.prod(shape_of(a)))
    if new == shape_of(a):
        return a
    return inplace.view_of(a, _with_weak(bind(P.reshape, a, shape=new), is_weak(a)), inplace.Reshape(new))


def ravel(a: Array) -> Array:
    return reshape(a, (-1,))


def transpose(a: Array, axes: Any = None) -> Array:
    a = _as_operand(a)
    ndim = len(shape_of(a))
    if axes is None:
        perm = tuple(reversed(range(ndim)))
    else:
        perm = tuple(_axes_in_order(list(axes), ndim, "transpose"))
    if sorted(perm) != list(range(ndim)):
        raise _fail(f"transpose: axes {axes} don't match an array of dimension {ndim}")
    if perm == tuple(range(ndim)):
        return a
    return inplace.view_of(a, _with_weak(bind(P.transpose, a, perm=perm), is_weak(a)), inplace.Transpose(perm))


def moveaxis(a: Array, source: Any, destination: Any) -> Array:
    ndim = len(shape_of(a))
    src = _axes_in_order(source, ndim, "moveaxis")
    dst = _axes_in_order(destination, ndim, "moveaxis")
    if len(src) != len(dst):
        raise _fail("moveaxis: source and destination need the same number of axes")
    order = [i for i in range(ndim) if i not in src]
    for d, s in sorted(zip(dst, src, strict=True)):
        order.insert(d, s)
    return transpose(a, order)


def _axes_in_order(axis: Any, ndim: int, name: str) -> list[int]:
    axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise _fail(f"{name}: axis {a} is out of bounds for an array of dimension {ndim}")
        out.append(int(a) % ndim)
    return out


def swapaxes(a: Array, axis1: int, axis2: int) -> Array:
    ndim = len(shape_of(a))
    perm = list(range(ndim))
    i, j = _axes_in_order((axis1, axis2), ndim, "swapaxes")
    perm[i], perm[j] = perm[j], perm[i]
    return transpose(a, perm)


def expand_dims(a: Array, axis: Any) -> Array:
    shape = list(shape_of(a))
    axes = _axes(axis, len(shape) + (1 if isinstance(axis, (int, np.integer)) else len(axis)), "expand_dims")
    for ax in axes:
        shape.insert(ax, 1)
    return reshape(a, tuple(shape))


def squeeze(a: Array, axis: Any = None) -> Array:
    shape = shape_of(a)
    axes = tuple(i for i, n in enumerate(shape) if n == 1) if axis is None else _axes(axis, len(shape), "squeeze")
    for ax in axes:
        if shape[ax] != 1:
            raise _fail(f"squeeze: cannot select an axis to squeeze out which has size not equal to one ({shape})")
    return reshape(a, tuple(n for i, n in enumerate(shape) if i not in axes))


def atleast_1d(a: Array) -> Array:
    return reshape(a, (1,)) if len(shape_of(a)) == 0 else _as_operand(a)


def atleast_2d(a: Array) -> Array:
    a = atleast_1d(a)
    return reshape(a, (1,) + shape_of(a)) if len(shape_of(a)) == 1 else a


def flip(m: Array, axis: Any = None) -> Array:
    """``numpy.flip``: reverses the order of elements along ``axis`` (default: all)."""
    m = _as_operand(m)
    ndim = len(shape_of(m))
    axes = _axes(axis, ndim, "flip")
    return getitem(m, tuple(builtins.slice(None, None, -1) if i in axes else builtins.slice(None) for i in range(ndim)))


def copy(a: Array) -> Array:
    """A new array with ``a``'s contents, which writes to ``a`` do not change."""
    return fresh(_as_operand(a))


def shape(a: Array) -> tuple[int, ...]:
    return shape_of(a)


def ndim(a: Array) -> int:
    return len(shape_of(a))


def size(a: Array, axis: int | None = None) -> int:
    s = shape_of(a)
    return math.prod(s) if axis is None else s[_axes(axis, len(s), "size")[0]]


def result_type(*arrays_and_dtypes: Any) -> np.dtype:
    """NumPy's ``result_type``; weakly typed traced scalars count as Python scalars."""
    proxies = []
    for x in arrays_and_dtypes:
        if isinstance(x, TracedArray):
            dt = x.value.dtype
            proxies.append({DType.bool: False, DType.i64: 0, DType.f64: 0.0}[dt] if x.weak else dt.np)
        else:
            proxies.append(x)
    return np.result_type(*proxies)


def concatenate(arrays: Sequence[Array], axis: int | None = 0, out: Array = None) -> Array:
    if out is not None:
        return inplace.store(out, concatenate(arrays, axis), "concatenate")
    arrays = list(arrays)
    if not arrays:
        raise _fail("concatenate: need at least one array to concatenate")
    if axis is None:
        arrays, axis = [ravel(a) for a in arrays], 0
    dt = result_dtype(*arrays)
    ndim = len(shape_of(arrays[0]))
    if ndim == 0:
        raise _fail("concatenate: zero-dimensional arrays cannot be concatenated")
    (ax,) = _axes(axis, ndim, "concatenate")
    operands = [astype(_as_operand(a), dt) for a in arrays]
    if len(operands) == 1:
        return operands[0]
    return _with_weak(bind(P.concatenate, *operands, axis=ax), is_weak(*arrays))


def stack(arrays: Sequence[Array], axis: int = 0) -> Array:
    arrays = list(arrays)
    if not arrays:
        raise _fail("stack: need at least one array to stack")
    shapes = {shape_of(a) for a in arrays}
    if len(shapes) != 1:
        raise _fail(f"stack: all input arrays must have the same shape, got {sorted(shapes)}")
    return concatenate([expand_dims(a, axis) for a in arrays], axis=axis)


def vstack(arrays: Sequence[Array]) -> Array:
    return concatenate([atleast_2d(a) for a in arrays], axis=0)


def hstack(arrays: Sequence[Array]) -> Array:
    arrays = [atleast_1d(a) for a in arrays]
    return concatenate(arrays, axis=0 if len(shape_of(arrays[0])) == 1 else 1)


def pad(array: Array, pad_width: Any, mode: str = "constant", constant_values: Any = 0) -> Array:
    if mode != "constant":
        raise NotImplementedError(f"numpy.pad with mode={mode!r} (only 'constant' is supported)")
    a = _as_operand(array)
    ndim = len(shape_of(a))
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (ndim, 2))
    if not isinstance(constant_values, (bool, int, float, np.generic)):
        raise NotImplementedError("numpy.pad with per-axis constant_values")
    value = P.constant_value(constant_values, _dtype_of(a))
    return bind(P.pad, a, lo=tuple(int(w) for w in widths[:, 0]), hi=tuple(int(w) for w in widths[:, 1]), value=value)


def _slice_or_reverse(a: Array, ax: int, start: int, stop: int, step: int) -> Array:
    """``a`` sliced along ``ax`` by a normalized Python slice (steps may be negative)."""
    shape = shape_of(a)
    n = shape[ax]
    if step > 0:
        if (start, stop, step) == (0, n, 1):
            return a
        starts = [0] * len(shape)
        limits = list(shape)
        strides = [1] * len(shape)
        starts[ax], limits[ax], strides[ax] = start, builtins.max(stop, start), step
        return bind(P.slice, a, start=tuple(starts), limit=tuple(limits), stride=tuple(strides))
    # The normalized bounds of a negative step can be -1 ("before index 0"), which a
    # second slicing would read as "the last element": enumerate them with range().
    indices = np.array(range(start, stop, step), dtype=np.int64)
    return take(a, indices, axis=ax)


def expand_key(ndim: int, key: Any) -> tuple:
    """An index as a tuple with its Ellipsis expanded and ``range``s as integer arrays;
    raises ``IndexError`` for more indices than axes."""
    key = key if isinstance(key, tuple) else (key,)
    key = tuple(np.asarray(k, dtype=np.int64) if isinstance(k, range) else _known_index(k) for k in key)
    # A concrete boolean mask is the integer indices of its True elements.
    key = builtins.sum((tuple(np.nonzero(k)) if _is_concrete_mask(k) else (k,) for k in key), ())
    if builtins.sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if builtins.any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        used = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
        key = key[:i] + (builtins.slice(None),) * (ndim - used) + key[i + 1 :]
    if builtins.sum(1 for k in key if k is not None) > ndim:
        raise _index_error(f"too many indices for an array of dimension {ndim}")
    return key


def _known_index(k: Any) -> Any:
    """A traced index whose contents are known, as the NumPy index it is (a static slice of
    the data instead of a gather; a boolean mask of known shape)."""
    known = k.known if isinstance(k, TracedArray) else None
    if known is None:
        return k
    return known.item() if known.ndim == 0 and known.dtype.kind in "iub" else known


def _is_concrete_mask(k: Any) -> bool:
    return isinstance(k, (list, np.ndarray)) and np.asarray(k).dtype == np.bool_ and np.ndim(k) > 0


def is_array_index(k: Any) -> bool:
    return isinstance(k, (TracedArray, list, np.ndarray))


def is_basic_key(key: tuple) -> bool:
    """Whether an expanded key selects a view (ints, slices and None only)."""
    return not builtins.any(is_array_index(k) or isinstance(k, (bool, np.bool_)) for k in key)


def getitem(a: Array, key: Any) -> Array:
    """NumPy basic indexing (ints, slices, None, Ellipsis) and integer-array indexing.

    As in NumPy, the integer-array indices' dimensions replace their axes when every
    integer index (scalar or array) is next to the others, and move to the front
    otherwise. A basic index of a traced array is a view: writes through it update the
    array (``fusejit.tracer.inplace``).
    """
    a = _as_operand(a)
    key = expand_key(len(shape_of(a)), key)
    selection = inplace.masked_selection(a, key)  # the target of a[mask] op= v
    if selection is not None:
        return selection
    out = index_value(a, key)
    return inplace.view_of(a, out, inplace.Index(key)) if is_basic_key(key) else out


def merge_array_indices(a: Array, key: tuple) -> tuple[Array, tuple, tuple[int, ...], tuple[int, ...]]:
    """Several integer-array indices as one: the indexed axes are moved next to each other
    (to the front when NumPy would put the result's index dimensions there), merged
    into one axis by a reshape, and indexed by the flat index. Returns the merged array,
    the key with one array, the transpose applied to ``a`` and the shape before merging
    (what a write through the merged array needs to undo it)."""
    if builtins.any(k is None for k in key):
        raise NotImplementedError("indexing with several integer arrays and None (np.newaxis)")
    # Scalar integers count as array indices next to arrays (NumPy's advanced indexing).
    key = tuple(np.asarray(k) if isinstance(k, (int, np.integer)) and not isinstance(k, bool) else k for k in key)
    positions = [i for i, k in enumerate(key) if is_array_index(k)]
    shape = shape_of(a)
    rest = [i for i in range(len(shape)) if i not in positions]
    if positions == list(range(positions[0], positions[-1] + 1)):
        perm = tuple(range(len(shape)))
    else:
        perm = tuple(positions + rest)
        key = tuple(key[i] for i in positions) + tuple(key[i] for i in rest if i < len(key))
        positions = list(range(len(positions)))
    moved = transpose(a, perm)
    moved_shape = shape_of(moved)
    first, sizes = positions[0], [moved_shape[i] for i in positions]
    arrays = [key[i] if isinstance(key[i], TracedArray) else np.asarray(key[i]) for i in positions]
    for idx in arrays:
        if _dtype_of(idx).is_bool:
            raise _boolean_mask_error()
        if not _dtype_of(idx).is_int:
            raise IndexError(f"arrays used as indices must be of integer type, not {_dtype_of(idx)}")
    normalized = []
    for idx, n in zip(arrays, sizes, strict=True):
        if isinstance(idx, TracedArray):  # clamped, as gather does
            idx = astype(idx, DType.i64, copy=False)
            normalized.append(clip(where(less(idx, 0), add(idx, n), idx), 0, builtins.max(n - 1, 0)))
            continue
        bad = (idx < -n) | (idx >= n)
        if np.any(bad):
            raise _index_error(f"index {int(idx[bad].flat[0])} is out of bounds for axis with size {n}")
        normalized.append(np.where(idx < 0, idx + n, idx).astype(np.int64))
    if builtins.any(isinstance(idx, TracedArray) for idx in normalized):
        flat = None
        for idx, n in zip(normalized, sizes, strict=True):
            flat = idx if flat is None else add(multiply(flat, n), idx)
    else:
        flat = np.ravel_multi_index(tuple(normalized), sizes)
    merged = reshape(moved, moved_shape[:first] + (math.prod(sizes),) + moved_shape[first + len(sizes):])
    return merged, key[:first] + (flat,) + key[first + len(sizes):], perm, moved_shape


def lane_index(shape: tuple[int, ...], key: tuple) -> tuple[int, int] | None:
    """For a key ``(..., range(n), ..., idx, ...)`` that picks one position ``idx[i]`` along
    one axis for each lane ``i`` of another (``probs[range(N), y]``): the positions of
    the lane and the index in the key; None for other keys. Other entries are ``:``."""
    arrays = [i for i, k in enumerate(key) if is_array_index(k)]
    if len(arrays) != 2 or builtins.any(
        k != builtins.slice(None) for i, k in enumerate(key) if i not in arrays
    ):
        return None
    for lane, other in ((arrays[0], arrays[1]), (arrays[1], arrays[0])):
        lanes, idx = key[lane], key[other]
        if isinstance(lanes, TracedArray) or not isinstance(idx, TracedArray) or len(shape_of(idx)) != 1:
            continue
        if np.array_equal(np.asarray(lanes), np.arange(shape[lane])) and _dtype_of(idx).is_int:
            return (lane, other) if shape_of(idx)[0] == shape[lane] else None
    return None


def index_value(a: Array, key: tuple) -> Array:
    """``a[key]`` for an expanded key, as a new value (``getitem`` makes basic ones views)."""
    lanes = lane_index(shape_of(a), key)
    if lanes is not None:  # one gather along the indexed axis
        lane, other = lanes
        along = [1] * len(shape_of(a))
        along[lane] = shape_of(a)[lane]
        picked = take_along_axis(a, reshape(key[other], tuple(along)), axis=other)
        picked = squeeze(picked, other)
        front = 0 if builtins.abs(lane - other) > 1 else builtins.min(lane, other)  # where NumPy puts it
        return moveaxis(picked, lane if lane < other else lane - 1, front)
    if builtins.sum(1 for k in key if is_array_index(k)) > 1:
        merged, key, _, _ = merge_array_indices(a, key)
        return index_value(merged, key)
    out, axis, out_shape, array_index = a, 0, [], None
    integer_positions = []  # where in the key the scalar and array integer indices are
    for pos, k in enumerate(key):
        if k is None:
            out_shape.append(("new", None))
            continue
        n = shape_of(a)[axis]
        if isinstance(k, builtins.slice):
            start, stop, step = k.indices(n)
            out = _slice_or_reverse(out, axis, start, stop, step)
            out_shape.append(("keep", axis))
        elif isinstance(k, (bool, np.bool_)):
            raise NotImplementedError("indexing with a boolean (a mask: its shape depends on the data)")
        elif isinstance(k, (int, np.integer)):
            i = int(k)
            if not -n <= i < n:
                raise _index_error(f"index {i} is out of bounds for axis {axis} with size {n}")
            out = _slice_or_reverse(out, axis, i % n, i % n + 1, 1)
            out_shape.append(("drop", axis))
            integer_positions.append(pos)
        elif is_array_index(k):
            idx = k if isinstance(k, TracedArray) else np.asarray(k)
            if _dtype_of(idx).is_bool:
                raise _boolean_mask_error()
            if not _dtype_of(idx).is_int:
                raise IndexError(f"arrays used as indices must be of integer type, not {_dtype_of(idx)}")
            array_index = (axis, idx)
            out_shape.append(("array", axis))
            integer_positions.append(pos)
        else:
            raise IndexError(f"unsupported index {k!r} of type {type(k).__name__}")
        axis += 1
    # Axes not named by the key are kept.
    out_shape += [("keep", i) for i in range(axis, len(shape_of(a)))]
    if array_index is None:
        final = [1 if kind == "new" else shape_of(out)[ax] for kind, ax in out_shape if kind != "drop"]
        return reshape(out, tuple(final))
    ax, idx = array_index
    out = take(out, idx, axis=ax)
    idx_ndim, cur = len(shape_of(idx)), shape_of(out)
    final, array_at = [], 0
    for kind, i in out_shape:
        if kind == "new":
            final.append(1)
        elif kind == "keep":
            final.append(cur[i + (idx_ndim - 1 if i > ax else 0)])
        elif kind == "array":
            array_at = len(final)
            final.extend(cur[i : i + idx_ndim])
    out = reshape(out, tuple(final))
    if integer_positions != list(range(integer_positions[0], integer_positions[-1] + 1)):
        array_axes = list(range(array_at, array_at + idx_ndim))
        out = transpose(out, array_axes + [i for i in range(len(final)) if i not in array_axes])
    return out


def _index_error(message: str) -> IndexError:
    loc = user_source_loc()
    return IndexError(f"{message}{f' (at {loc})' if loc else ''}")


def take(a: Array, indices: Array, axis: int | None = None, out: Array = None) -> Array:
    """``numpy.take``: out-of-range indices are clamped, negative ones count from the end."""
    if out is not None:
        return inplace.store(out, take(a, indices, axis), "take", "unsafe")
    a = _as_operand(a)
    if axis is None:
        a, axis = ravel(a), 0
    shape = shape_of(a)
    (ax,) = _axes(axis, len(shape), "take")
    idx = _as_operand(indices)
    if not _dtype_of(idx).is_int:
        raise _fail(f"take: indices must be integers, got {_dtype_of(idx)}")
    ishape = shape_of(idx)
    pre, post = shape[:ax], shape[ax + 1 :]
    out_shape = pre + ishape + post
    # Line up operand and indices on out_shape: the operand gets size-1 axes where the
    # indices go, the indices get size-1 axes for the operand's other axes.
    x = reshape(a, pre + (shape[ax],) + (1,) * builtins.max(len(ishape) - 1, 0) + post)
    x = _broadcast(x, pre + (shape[ax],) + ishape[1:] + post) if ishape else x
    i = reshape(idx, (1,) * len(pre) + (ishape or (1,)) + (1,) * len(post))
    i = _broadcast(i, pre + (ishape or (1,)) + post)
    if not ishape:
        x = _broadcast(x, pre + (shape[ax],) + post)
    out = bind(P.gather, x, i, axis=ax)
    return reshape(out, out_shape)


def take_along_axis(arr: Array, indices: Array, axis: int) -> Array:
    a, idx = _as_operand(arr), _as_operand(indices)
    shape, ishape = shape_of(a), shape_of(idx)
    if len(shape) != len(ishape):
        raise _fail(f"take_along_axis: indices {ishape} and array {shape} need the same number of dimensions")
    (ax,) = _axes(axis, len(shape), "take_along_axis")
    common = broadcast_shapes(
        "take_along_axis", tuple(1 if i == ax else n for i, n in enumerate(shape)),
        tuple(1 if i == ax else n for i, n in enumerate(ishape)),
    )
    a = _broadcast(a, tuple(shape[ax] if i == ax else n for i, n in enumerate(common)))
    idx = _broadcast(idx, tuple(ishape[ax] if i == ax else n for i, n in enumerate(common)))
    return bind(P.gather, a, idx, axis=ax)


# ---------------------------------------------------------------------------------------
# Products


def _dot(a: Array, b: Array, contract: tuple, batch: tuple = ((), ())) -> Array:
    dt = result_dtype(a, b)
    if dt.is_bool:
        raise _fail("matmul: boolean operands are not supported")
    return bind(P.dot_general, astype(_as_operand(a), dt), astype(_as_operand(b), dt), contract=contract, batch=batch)


def matmul(a: Array, b: Array, out: Array = None) -> Array:
    """``a @ b`` with NumPy's rules for 1-d operands and broadcast batch dimensions."""
    if out is not None:
        return inplace.store(out, matmul(a, b), "matmul")
    sa, sb = shape_of(a), shape_of(b)
    if not sa or not sb:
        raise _fail("matmul: operands must not be scalars")
    if len(sa) == 1 and len(sb) == 1:
        _check_contract(sa, sb, 0, 0)
        return _dot(a, b, ((0,), (0,)))
    if len(sb) <= 2:
        kb = 0
        _check_contract(sa, sb, len(sa) - 1, kb)
        return _dot(a, b, ((len(sa) - 1,), (kb,)))
    if len(sa) == 1:
        return squeeze(matmul(reshape(a, (1, sa[0])), b), -2)
    batch = broadcast_shapes("matmul", sa[:-2], sb[:-2])
    _check_contract(sa, sb, len(sa) - 1, len(sb) - 2)
    a = _broadcast(a, batch + sa[-2:])
    b = _broadcast(b, batch + sb[-2:])
    nb = len(batch)
    bd = tuple(range(nb))
    return _dot(a, b, ((nb + 1,), (nb,)), (bd, bd))


def _check_contract(sa: tuple[int, ...], sb: tuple[int, ...], ia: int, ib: int) -> None:
    if sa[ia] != sb[ib]:
        raise _fail(f"matmul: contracted dimensions differ: shapes {sa} and {sb} ({sa[ia]} != {sb[ib]})")


def dot(a: Array, b: Array, out: Array = None) -> Array:
    if out is not None:  # NumPy takes only an out of exactly the result's dtype and shape
        return inplace.store(out, dot(a, b), "dot", "exact")
    sa, sb = shape_of(a), shape_of(b)
    if not sa or not sb:  # numpy.dot makes a Python scalar an array: not weak (NEP 50)
        return multiply(*(np.asarray(x) if isinstance(x, (bool, int, float)) else x for x in (a, b)))
    kb = 0 if len(sb) == 1 else len(sb) - 2
    _check_contract(sa, sb, len(sa) - 1, kb)
    return _dot(a, b, ((len(sa) - 1,), (kb,)))


def inner(a: Array, b: Array) -> Array:
    sa, sb = shape_of(a), shape_of(b)
    if not sa or not sb:  # a scalar operand: a product, as numpy.inner (not weak, as dot)
        return dot(a, b)
    _check_contract(sa, sb, len(sa) - 1, len(sb) - 1)
    return _dot(a, b, ((len(sa) - 1,), (len(sb) - 1,)))


def outer(a: Array, b: Array) -> Array:
    return multiply(reshape(a, (-1, 1)), reshape(b, (1, -1)))


def tensordot(a: Array, b: Array, axes: Any = 2) -> Array:
    """``numpy.tensordot``: ``axes=N`` contracts a's last N axes with b's first N."""
    sa, sb = shape_of(a), shape_of(b)
    if isinstance(axes, (int, np.integer)):
        n = int(axes)
        ia, ib = list(range(len(sa) - n, len(sa))), list(range(n))
    else:
        ia, ib = ([x] if isinstance(x, (int, np.integer)) else list(x) for x in axes)
    ia, ib = _axes_in_order(ia, len(sa), "tensordot"), _axes_in_order(ib, len(sb), "tensordot")
    if len(ia) != len(ib) or builtins.any(sa[i] != sb[j] for i, j in zip(ia, ib, strict=True)):
        raise _fail(f"tensordot: shape-mismatch for sum: shapes {sa} and {sb} along axes {ia} and {ib}")
    return _dot(a, b, (tuple(ia), tuple(ib)))


def _einsum_sublists(first: Array, *rest: Any) -> tuple[str, tuple[Array, ...]]:
    """NumPy's sublist form (operand, [axis labels], operand, [labels], ..., [output
    labels]) as a subscripts string and the operands; labels are ints (or Ellipsis)."""
    args = (first, *rest)
    pairs, output = args[: len(args) // 2 * 2], args[len(args) // 2 * 2 :]

    def letters(labels: Sequence[Any]) -> str:
        return "".join("..." if k is Ellipsis else string.ascii_letters[operator.index(k)] for k in labels)

    operands = tuple(pairs[0::2])
    spec = ",".join(letters(s) for s in pairs[1::2])
    if output:
        spec += "->" + letters(output[0])
    return spec, operands


def einsum(subscripts: Any, *operands: Array, optimize: Any = False) -> Array:
    """``numpy.einsum``: any number of operands, ``...`` for broadcast axes, an index
    repeated in one operand (its diagonal), the implicit output (the indices seen once,
    sorted, after the ``...`` axes) and the sublist form ``einsum(a, [0, 1], b, [1, 2],
    [0, 2])``. Operands are contracted left to right, each pair as one ``dot_general``
    after summing the indices no later term needs (``optimize`` is accepted for NumPy
    compatibility and does not change that order). Raises ``ValueError`` for terms that do
    not match their operands or sizes that do not broadcast."""
    if not isinstance(subscripts, str):
        subscripts, operands = _einsum_sublists(subscripts, *operands)
    terms, output = _einsum_terms(subscripts.replace(" ", ""), operands)
    ops = [_einsum_diagonals(t, _as_operand(x)) for t, x in zip(terms, operands, strict=True)]
    sizes: dict[str, int] = {}
    for t, x in ops:
        for c, n in zip(t, shape_of(x), strict=True):
            if sizes.get(c, 1) != 1 and n not in (1, sizes[c]):
                raise _fail(f"einsum: index {c!r} has sizes {sizes[c]} and {n}, which do not broadcast")
            sizes[c] = n if sizes.get(c, 1) == 1 else sizes[c]
    ops = [(t, _broadcast(x, tuple(sizes[c] for c in t))) for t, x in ops]
    t, x = _einsum_sum(ops[0][0], ops[0][1], set(output) | set("".join(t for t, _ in ops[1:])))
    for k in range(1, len(ops)):
        later = set(output) | set("".join(t for t, _ in ops[k + 1 :]))
        t, x = _einsum_pair(t, x, *ops[k], later)
    return transpose(x, [t.index(c) for c in output])


def _einsum_terms(spec: str, operands: Sequence[Array]) -> tuple[list[str], str]:
    """The terms and the output of ``spec`` with every ``...`` written as letters of
    their own (right-aligned across operands, as NumPy broadcasts them)."""
    inputs, arrow, output = spec.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(operands):
        raise _fail(f"einsum: {len(terms)} terms in {spec!r} for {len(operands)} operands")
    for t in [*terms, output]:
        if builtins.any(c not in string.ascii_letters for c in t.replace("...", "")):
            raise _fail(f"einsum: invalid subscript term {t!r} in {spec!r}")
    free = [c for c in string.ascii_letters if c not in spec]
    dots = [len(shape_of(x)) - (len(t) - 3) for t, x in zip(terms, operands, strict=True) if "..." in t]
    if builtins.any(n < 0 for n in dots):
        raise _fail(f"einsum: an operand has fewer axes than its term in {spec!r}")
    ellipsis = "".join(free[: builtins.max(dots, default=0)])
    terms = [t.replace("...", ellipsis[len(ellipsis) - (len(shape_of(x)) - (len(t) - 3)):])
             for t, x in zip(terms, operands, strict=True)]
    if arrow:
        output = output.replace("...", ellipsis)
    else:
        seen = "".join(terms)
        output = ellipsis + "".join(sorted(c for c in set(seen) if seen.count(c) == 1 and c not in ellipsis))
    for t, x in zip(terms, operands, strict=True):
        if len(t) != len(shape_of(x)):
            raise _fail(f"einsum: term {t!r} does not match operand shape {shape_of(x)}")
    if len(set(output)) != len(output) or not set(output) <= set("".join(terms)):
        raise _fail(f"einsum: output {output!r} repeats an index or names one no operand has")
    return terms, output


def _einsum_diagonals(t: str, x: Array) -> tuple[str, Array]:
    """An index repeated in one operand's term taken along that operand's diagonal."""
    from fusejit.tracer.numpy_ext import diagonal

    while len(set(t)) != len(t):
        c = next(c for c in t if t.count(c) > 1)
        i = t.index(c)
        j = t.index(c, i + 1)
        x = diagonal(x, axis1=i, axis2=j)
        t = "".join(d for k, d in enumerate(t) if k not in (i, j)) + c
    return t, x


def _einsum_sum(t: str, x: Array, keep: set[str]) -> tuple[str, Array]:
    """``x`` with the indices outside ``keep`` summed (in the operand's dtype: numpy.sum
    would widen int32; any() for booleans)."""
    lonely = tuple(k for k, c in enumerate(t) if c not in keep)
    if not lonely:
        return t, x
    dt = _dtype_of(x)
    x = any(x, axis=lonely) if dt.is_bool else sum(x, axis=lonely, dtype=dt.np)
    return "".join(c for c in t if c in keep), x


def _einsum_pair(ta: str, a: Array, tb: str, b: Array, keep: set[str]) -> tuple[str, Array]:
    """The contraction of two operands, keeping the indices in ``keep``: one
    ``dot_general`` whose result is indexed batch indices, then ``a``'s, then ``b``'s."""
    ta, a = _einsum_sum(ta, a, keep | set(tb))
    tb, b = _einsum_sum(tb, b, keep | set(ta))
    batch_idx = [c for c in ta if c in tb and c in keep]
    contract_idx = [c for c in ta if c in tb and c not in keep]
    out = _dot(
        a, b,
        (tuple(ta.index(c) for c in contract_idx), tuple(tb.index(c) for c in contract_idx)),
        (tuple(ta.index(c) for c in batch_idx), tuple(tb.index(c) for c in batch_idx)),
    )
    order = batch_idx + [c for c in ta if c not in tb] + [c for c in tb if c not in ta]
    return "".join(order), out


# ---------------------------------------------------------------------------------------
# Constructors


def asarray(a: Array, dtype: Any = None) -> Array:
    out = _as_operand(a)
    return out if dtype is None else astype(out, dtype, copy=False)


def array(a: Array, dtype: Any = None) -> Array:
    if isinstance(a, (list, tuple)) and builtins.any(isinstance(x, TracedArray) for x in a):
        return stack([asarray(x) for x in a]) if dtype is None else astype(stack(list(a)), dtype)
    return fresh(asarray(a, dtype)) if isinstance(a, TracedArray) else asarray(np.array(a), dtype)


def full(shape: Any, fill_value: Any, dtype: Any = None) -> Array:
    shape = _normalize_shape(shape, math.prod((shape,) if isinstance(shape, int) else shape))
    dt = from_numpy(dtype) if dtype is not None else _dtype_of(fill_value)
    if isinstance(fill_value, TracedArray):
        return fresh(_broadcast(astype(fill_value, dt), shape))
    value = bind(P.constant, value=P.constant_value(fill_value, dt), shape=(), dtype=dt)
    return fresh(_broadcast(value, shape))


def zeros(shape: Any, dtype: Any = float) -> Array:
    return full(shape, 0, dtype)


def ones(shape: Any, dtype: Any = float) -> Array:
    return full(shape, 1, dtype)


def full_like(a: Array, fill_value: Any, dtype: Any = None) -> Array:
    return full(shape_of(a), fill_value, dtype if dtype is not None else _dtype_of(a).np)


def zeros_like(a: Array, dtype: Any = None) -> Array:
    return full_like(a, 0, dtype)


def ones_like(a: Array, dtype: Any = None) -> Array:
    return full_like(a, 1, dtype)


def arange(start: int, stop: int | None = None, step: int = 1, dtype: Any = None) -> Array:
    if stop is None:
        start, stop = 0, start
    values = np.arange(start, stop, step)
    dt = from_numpy(dtype) if dtype is not None else from_numpy(values.dtype)
    ramp = bind(P.iota, shape=(len(values),), dimension=0, dtype=dt)
    if step != 1:
        ramp = multiply(ramp, step)
    if start != 0:
        ramp = add(ramp, start)
    return astype(ramp, dt)


def eye(n: int, m: int | None = None, dtype: Any = float) -> Array:
    shape = (n, m if m is not None else n)
    rows = bind(P.iota, shape=shape, dimension=0, dtype=DType.i64)
    cols = bind(P.iota, shape=shape, dimension=1, dtype=DType.i64)
    return astype(equal(rows, cols), dtype)


def copyto(dst: Array, src: Array, casting: str = "same_kind", where: Array = True) -> None:  # noqa: A002
    """``numpy.copyto``: ``src`` broadcast into ``dst`` (where ``where`` is True), with
    NumPy's casting rule; a traced ``dst`` is updated functionally
    (``fusejit.tracer.inplace``)."""
    if where is not True:
        src = _select(where, src, dst)
    inplace.store(dst, src, "copyto", casting)


def empty(shape: Any, dtype: Any = float) -> Array:
    """An array to be written before it is read: zeros (whose writes the simplifier turns
    into the written values)."""
    return zeros(shape, dtype)


def empty_like(a: Array, dtype: Any = None) -> Array:
    return zeros_like(a, dtype)


def linspace(start: float, stop: float, num: int = 50, endpoint: bool = True, dtype: Any = None) -> Array:
    return asarray(np.linspace(start, stop, num, endpoint=endpoint), dtype)


# ---------------------------------------------------------------------------------------
# NumPy's protocols: which NumPy callables map to which fusejit.numpy functions.

_UFUNCS: dict[np.ufunc, Callable[..., Array]] = {
    np.add: add, np.subtract: subtract, np.multiply: multiply, np.divide: true_divide,
    np.floor_divide: floor_divide, np.power: power, np.maximum: maximum, np.minimum: minimum,
    np.negative: negative, np.positive: positive, np.absolute: absolute, np.sign: sign,
    np.exp: exp, np.log: log, np.log1p: log1p, np.expm1: expm1, np.sqrt: sqrt, np.tanh: tanh,
    np.sin: sin, np.cos: cos, np.tan: tan, np.floor: floor, np.ceil: ceil, np.rint: rint, np.trunc: trunc,
    np.equal: equal, np.not_equal: not_equal, np.less: less, np.less_equal: less_equal,
    np.greater: greater, np.greater_equal: greater_equal, np.logical_and: logical_and,
    np.logical_or: logical_or, np.logical_not: logical_not, np.logical_xor: logical_xor,
    np.square: square, np.reciprocal: reciprocal, np.log2: log2, np.log10: log10,
    np.exp2: exp2, np.bitwise_and: bitwise_and, np.bitwise_or: bitwise_or, np.invert: invert,
    np.matmul: matmul, np.remainder: remainder, np.bitwise_xor: bitwise_xor, np.isnan: isnan,
    np.isinf: isinf, np.isfinite: isfinite, np.left_shift: left_shift, np.right_shift: right_shift,
    np.divmod: divmod,
}  # fmt: skip
_UFUNC_REDUCTIONS = {
    np.add: sum, np.maximum: max, np.minimum: min, np.logical_and: all, np.logical_or: any,
}  # fmt: skip


def apply_ufunc(ufunc: np.ufunc, method: str, inputs: tuple, kwargs: dict[str, Any]) -> Array:
    """A NumPy ufunc call on traced values. ``out=`` (and ``a += b``, which NumPy runs as
    ``np.add(a, b, out=a)``) stores the result into ``out`` with the ufunc's same-kind
    casting, ``where=`` (with ``out``) keeps ``out``'s elements where it is False."""
    name = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    out, where_ = kwargs.get("out"), kwargs.get("where", True)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("out", "where")}
    unsupported = set(kwargs) - {"axis", "keepdims", "dtype"} if method == "reduce" else set(kwargs)
    if unsupported:
        raise NotImplementedError(f"{name} with arguments {sorted(unsupported)} has no fusejit rule")
    if where_ is not True and (out is None or method != "__call__"):
        raise NotImplementedError(f"{name} with arguments ['where'] has no fusejit rule without out= "
                                  "(the other elements would be unspecified)")
    if method == "__call__" and ufunc in _UFUNCS:
        result = _UFUNCS[ufunc](*inputs)
    elif method == "reduce" and ufunc in _UFUNC_REDUCTIONS:
        kwargs.setdefault("axis", 0)
        result = _UFUNC_REDUCTIONS[ufunc](*inputs, **kwargs)
    elif method == "at" and ufunc in (np.add, np.subtract):
        a, key, *values = inputs
        (value,) = values or (1,)
        inplace.accumulate_at(a, key, negative(value) if ufunc is np.subtract else value, name)
        return None
    else:
        raise NotImplementedError(f"{name} has no fusejit rule (it cannot be traced)")
    if out is None:
        return result
    if ufunc.nout > 1:
        raise NotImplementedError(f"{name} with out= has no fusejit rule (assign its results instead)")
    (out,) = out if isinstance(out, tuple) else (out,)
    if where_ is not True:
        result = where(where_, result, out)
    return inplace.store(out, result, name, "unsafe" if method == "reduce" else "same_kind",
                         first_operand=inputs[0] if inputs else None)


# NumPy functions (keyed by the function object, so that numpy.linalg.norm is not taken
# for some other "norm") and the fusejit.numpy function each dispatches to.
_ARRAY_FUNCTIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    getattr(np, name): globals()[name]
    for name in (
        "sum cumsum mean var std max min amax amin argmax argmin all any clip where reshape ravel "
        "transpose moveaxis swapaxes expand_dims squeeze concatenate stack vstack hstack pad "
        "take take_along_axis matmul dot inner outer tensordot einsum broadcast_to zeros_like "
        "ones_like full_like round around atleast_1d atleast_2d flip copy shape ndim size "
        "result_type astype copyto nonzero"
    ).split()
    if hasattr(np, name)
}
_ARRAY_FUNCTIONS[np.empty_like] = zeros_like  # the contents of an empty array are unspecified


def apply_array_function(func: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> Array:
    rule = _ARRAY_FUNCTIONS.get(func)
    if rule is None:
        module = getattr(func, "__module__", None) or "numpy"
        name = f"{module}.{getattr(func, '__name__', repr(func))}"
        raise NotImplementedError(f"{name} has no fusejit rule (it cannot be traced)")
    return rule(*args, **kwargs)


class UnsupportedNumPyName(AttributeError, NotImplementedError):
    """A NumPy name that ``fusejit.numpy`` does not have: an ``AttributeError`` (so that
    ``hasattr``/``getattr(fnp, name, None)`` work) that is also a ``NotImplementedError``."""


def __getattr__(name: str) -> Any:
    if not name.startswith("_") and hasattr(np, name):
        raise UnsupportedNumPyName(f"numpy.{name} is not supported by fusejit.numpy")
    raise AttributeError(f"module 'fusejit.numpy' has no attribute {name!r}")


_NOT_EXPORTED = {
    "annotations", "Any", "Array", "Callable", "Sequence", "DType", "IRTypeError", "TracedArray",
    "bind", "is_weak", "operand_dtype", "result_dtype", "shape_of", "user_source_loc",
    "from_numpy", "apply_ufunc", "apply_array_function", "getitem", "broadcast_shapes",
    "fresh", "expand_key", "is_array_index", "is_basic_key", "merge_array_indices", "index_value",
    "UnsupportedNumPyName",
}  # fmt: skip
__all__ = [
    n for n, v in list(globals().items())
    if not n.startswith("_") and n not in _NOT_EXPORTED and type(v).__name__ != "module"
]  # fmt: skip

# The functions composed from the ones above (fusejit.tracer.numpy_ext, which imports this
# module) join the dispatch tables; fusejit.numpy exports both modules' names.
from fusejit.tracer import numpy_ext as _ext  # noqa: E402

_UFUNCS.update(_ext.UFUNCS)
_ARRAY_FUNCTIONS.update(_ext.ARRAY_FUNCTIONS)
# numpy.linalg's functions (fusejit.numpy.linalg) dispatch to fusejit.tracer.linalg.
from fusejit.tracer import linalg as _linalg  # noqa: E402

_ARRAY_FUNCTIONS.update(_linalg.ARRAY_FUNCTIONS)
