"""``fusejit.numpy`` and NumPy code on traced values, against NumPy itself.

Most checks run one function three ways and compare each with NumPy's answer (values,
dtype and shape):

* ``fnp`` eagerly on NumPy arrays;
* ``fnp`` inside ``fj.jit``;
* the same code written with ``np``, inside ``fj.jit``: traced values implement
  ``__array_ufunc__``/``__array_function__``, so unmodified NumPy code traces.

These are tests of tracing, so the jitted runs use the reference interpreter
(``backend="interpret"``): hundreds of small functions compile in no time, and compiled
backends are checked against the interpreter in their own tests. A few tests (weak scalar
arguments, NumPy's protocols) run on the default backend.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, reject, settings

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.tracer import numpy_api
from fusejit.tracer.tracing import TracedArray

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_per_test(request: pytest.FixtureRequest) -> None:
    """Each test draws the same data however tests are ordered or distributed."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def rand(*shape: int, dtype: Any = np.float64) -> np.ndarray:
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(-5, 6, shape).astype(dtype)
    if np.dtype(dtype) == np.bool_:
        return RNG.random(shape) < 0.5
    return RNG.standard_normal(shape).astype(dtype)


def assert_same(actual: Any, expected: Any, where: str = "") -> None:
    """Same dtype, shape and values (floats to within rounding)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype}, NumPy gives {expected.dtype}"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape}, NumPy gives {expected.shape}"
    if expected.dtype.kind == "f":
        rtol = 2e-5 if expected.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol, err_msg=where)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=where)


def interpreted(f: Callable[..., Any]) -> Any:
    """``f`` jitted for the reference interpreter."""
    return fj.jit(f, backend="interpret")


def check(f: Callable[..., Any], *args: Any, numpy_code: bool = True) -> None:
    """``f(m, *args)`` for ``m`` = fnp (eager and jitted) and ``m`` = np (jitted, through
    NumPy's protocols) all equal ``f(np, *args)`` on NumPy arrays."""
    expected = f(np, *args)
    assert_same(f(fnp, *args), expected, "fnp, eager")
    assert_same(interpreted(lambda *a: f(fnp, *a))(*args), expected, "fnp, jitted")
    if numpy_code:
        assert_same(interpreted(lambda *a: f(np, *a))(*args), expected, "numpy code, jitted")


# ---------------------------------------------------------------------------------------
# Broadcasting


@pytest.mark.parametrize(
    ("xs", "ys"),
    [((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 1, 4), (3, 1)), ((), (2, 3)), ((0, 3), (1, 3)), ((1,), ())],
)
def test_binary_ops_broadcast_like_numpy(xs: tuple, ys: tuple) -> None:
    x, y = rand(*xs), rand(*ys)
    for op in (np.add, np.subtract, np.multiply, np.maximum, np.minimum, np.less, np.equal):
        check(lambda m, a, b, op=op: getattr(m, op.__name__)(a, b), x, y)
    check(lambda m, a, b: a * b + a - b, x, y)


def test_where_broadcasts_all_three_operands() -> None:
    check(lambda m, c, a, b: m.where(c, a, b), rand(3, 1) > 0, rand(1, 4), rand(4))


def test_broadcast_to_and_its_error() -> None:
    check(lambda m, a: m.broadcast_to(a, (2, 3, 4)), rand(3, 1))
    with pytest.raises(ValueError, match=r"broadcast_to: .*\(3,\) .*\(4,\)"):
        fnp.broadcast_to(rand(3), (4,))


# ---------------------------------------------------------------------------------------
# NEP 50 promotion: Python scalars are weak, NumPy scalars and arrays are strong.

F32, F64, I32, I64, BOOL = np.float32, np.float64, np.int32, np.int64, np.bool_
PROMOTION = [
    ("float32 array * 2.0 stays float32", lambda m, a: a * 2.0, F32, F32),
    ("float32 array * 2 stays float32", lambda m, a: a * 2, F32, F32),
    ("2 + float32 array stays float32", lambda m, a: 2 + a, F32, F32),
    ("int32 array * 2.0 is float64", lambda m, a: a * 2.0, I32, F64),
    ("int32 array + 2 stays int32", lambda m, a: a + 2, I32, I32),
    ("float32 array * np.float64(2) is float64", lambda m, a: a * np.float64(2), F32, F64),
    ("float32 array * np.float32(2) stays float32", lambda m, a: a * np.float32(2), F32, F32),
    ("int32 array + np.int64(1) is int64", lambda m, a: a + np.int64(1), I32, I64),
    ("int32 array + int64 array is int64", lambda m, a: a + a.astype(np.int64), I32, I64),
    ("int32 array + float32 array is float64", lambda m, a: a + a.astype(np.float32), I32, F64),
    ("int64 array + float32 array is float64", lambda m, a: a + a.astype(np.float32), I64, F64),
    ("float32 array + float64 array is float64", lambda m, a: a + a.astype(np.float64), F32, F64),
    ("bool array + 1 is int64", lambda m, a: a + 1, BOOL, I64),
    ("bool array + int32 array is int32", lambda m, a: a + a.astype(np.int32), BOOL, I32),
    ("bool array * 1.5 is float64", lambda m, a: a * 1.5, BOOL, F64),
    ("bool array + bool array stays bool", lambda m, a: a + a, BOOL, BOOL),
    ("int32 / int32 (true_divide) is float64", lambda m, a: a / (a * 0 + 3), I32, F64),
    ("float32 / 2 stays float32", lambda m, a: a / 2, F32, F32),
    ("int32 // 2 stays int32", lambda m, a: a // 2, I32, I32),
    ("int32 ** 2 stays int32", lambda m, a: a**2, I32, I32),
    ("float32 ** 2.0 stays float32", lambda m, a: a**2.0, F32, F32),
    ("mean of int32 is float64", lambda m, a: m.mean(a), I32, F64),
    ("mean of float32 stays float32", lambda m, a: m.mean(a, axis=0), F32, F32),
    ("sum of int32 is int64", lambda m, a: m.sum(a), I32, I64),
    ("sum of bool is int64", lambda m, a: m.sum(a, axis=0), BOOL, I64),
    ("sum of float32 stays float32", lambda m, a: m.sum(a), F32, F32),
    ("var of int32 is float64", lambda m, a: m.var(a), I32, F64),
    ("exp of int32 is float64", lambda m, a: m.exp(a), I32, F64),
    ("sqrt of float32 stays float32", lambda m, a: m.sqrt(m.abs(a)), F32, F32),
    ("comparison of float32 with 0.5 is bool", lambda m, a: a < 0.5, F32, BOOL),
    ("comparison of int32 with 2.5 is bool", lambda m, a: a >= 2.5, I32, BOOL),
    ("max of int32 stays int32", lambda m, a: m.max(a, axis=0), I32, I32),
    ("argmax is int64", lambda m, a: m.argmax(a), F32, I64),
    ("where of float32 and 0.0 stays float32", lambda m, a: m.where(a > 0, a, 0.0), F32, F32),
    ("maximum of float32 and 0 stays float32", lambda m, a: m.maximum(a, 0), F32, F32),
    ("matmul of int32 stays int32", lambda m, a: a @ a.T, I32, I32),
    ("matmul of float32 and float64 is float64", lambda m, a: a @ a.T.astype(np.float64), F32, F64),
    ("clip of int32 to floats is float64", lambda m, a: m.clip(a, 0.5, 2.5), I32, F64),
    ("concatenate of int32 and float32 is float64", lambda m, a: m.concatenate([a, a.astype(np.float32)]), I32, F64),
    ("np.add of two Python scalars is a strong float64", lambda m, a: a * m.add(2, 3.0), F32, F64),
]


@pytest.mark.parametrize(("label", "f", "dtype", "result"), PROMOTION, ids=[p[0] for p in PROMOTION])
def test_nep50_promotion(label: str, f: Callable[..., Any], dtype: Any, result: Any) -> None:
    a = np.abs(rand(3, 3, dtype=dtype)) if dtype != BOOL else rand(3, 3, dtype=BOOL)
    assert f(np, a).dtype == result, "the table itself must agree with NumPy"
    check(f, a)


def test_python_scalar_arguments_of_jit_are_weak() -> None:
    x = rand(3, dtype=np.float32)
    assert fj.jit(lambda x, s: x * s)(x, 2.0).dtype == np.float32
    assert fj.jit(lambda x, s: x + s)(x, 2).dtype == np.float32
    assert fj.jit(lambda x, s: x * s)(x, np.float64(2.0)).dtype == np.float64
    i = rand(3, dtype=np.int32)
    assert fj.jit(lambda i, s: i * s)(i, 3).dtype == np.int32
    assert fj.jit(lambda i, s: i * s)(i, 3.0).dtype == np.float64


# ---------------------------------------------------------------------------------------
# Reductions


AXES = [None, 0, 1, -1, -2, (0, 2), (-1, 0), ()]


@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min", "var", "std", "all", "any"])
def test_reductions_with_axis_and_keepdims(name: str, axis: Any, keepdims: bool) -> None:
    x = rand(2, 3, 4)
    arg = x > 0 if name in ("all", "any") else x
    check(lambda m, a: getattr(m, name)(a, axis=axis, keepdims=keepdims), arg)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.float32])
def test_reductions_of_each_dtype(dtype: Any) -> None:
    x = rand(3, 4, dtype=dtype)
    for name in ("sum", "mean", "max", "min", "argmax", "argmin", "all", "any"):
        check(lambda m, a, name=name: getattr(m, name)(a, axis=1), x)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_cumsum_like_numpy(axis: Any, dtype: Any) -> None:
    x = rand(3, 4, 5, dtype=dtype)
    check(lambda m, a: m.cumsum(a, axis=axis), x)
    check(lambda m, a: a.cumsum(axis=axis, dtype=np.float64) * 2, x)
    check(lambda m, a: m.cumsum(a[:, ::2], axis=axis), x)  # a strided view


def test_cumsum_gradient_is_a_reversed_cumsum() -> None:
    x = rand(4, 6)
    fj.gradcheck(lambda a: (fnp.cumsum(a, axis=1) ** 2).sum(), (x,))
    fj.gradcheck(lambda a: (fnp.cumsum(a) * fnp.arange(24.0)).sum(), (x,))


@pytest.mark.parametrize("ddof", [0, 1, 2])
def test_var_and_std_with_ddof(ddof: int) -> None:
    x = rand(4, 5)
    check(lambda m, a: m.var(a, axis=0, ddof=ddof), x)
    check(lambda m, a: m.std(a, axis=(0, 1), ddof=ddof, keepdims=True), x)
    check(lambda m, a: a.var(ddof=ddof) + a.std(axis=1, ddof=ddof), x)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_and_argmin(axis: Any, keepdims: bool) -> None:
    x = rand(3, 5, dtype=np.int32)  # small ints: ties resolve to the first index, as in NumPy
    check(lambda m, a: m.argmax(a, axis=axis, keepdims=keepdims), x)
    check(lambda m, a: m.argmin(a, axis=axis, keepdims=keepdims), x)


def test_reduction_methods_on_traced_values() -> None:
    check(lambda m, a: a.sum(axis=1) + a.mean() + a.max(axis=0).sum() - a.min(), rand(3, 4))
    check(lambda m, a: (a > 0).any(axis=0) | (a < 2).all(axis=0), rand(3, 4))
    check(lambda m, a: a.argmax(axis=1) + a.argmin(), rand(3, 4))


def test_ufunc_reduce_methods() -> None:
    x = rand(3, 4)
    check(lambda m, a: np.add.reduce(a, axis=1) + np.maximum.reduce(a) .sum(), x, numpy_code=True)
    check(lambda m, a: np.logical_and.reduce(a > 0, axis=0), x)


# ---------------------------------------------------------------------------------------
# Elementwise functions


@pytest.mark.parametrize(
    "name",
    ["exp", "log", "log1p", "expm1", "sqrt", "tanh", "sin", "cos", "tan", "floor", "ceil", "rint",
     "abs", "absolute", "negative", "positive", "sign", "square", "reciprocal", "log2", "log10",
     "exp2", "isnan", "isinf", "isfinite"],  # fmt: skip
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_unary_functions(name: str, dtype: Any) -> None:
    x = np.abs(rand(3, 4, dtype=dtype)) + 1  # inside every domain
    if name == "reciprocal" and dtype == np.int32:
        x = np.array([1, -1, 2, 5], np.int32)
    if name in ("isnan", "isinf", "isfinite") and dtype != np.int32:
        x = np.array([1.0, np.nan, np.inf, -np.inf], dtype)
    check(lambda m, a: getattr(m, name)(a), x)


@pytest.mark.parametrize("name", ["add", "subtract", "multiply", "true_divide", "divide", "maximum",
                                  "minimum", "power", "floor_divide", "remainder", "mod"])  # fmt: skip
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_binary_functions(name: str, dtype: Any) -> None:
    x = rand(3, 4, dtype=dtype)
    y = np.array([1, 2, 4, 5], dtype) if dtype in (np.int32, np.int64) else np.array([0.5, 1.0, 2.0, 4.0], dtype)
    if name == "power":
        if dtype in (np.int32, np.int64):
            check(lambda m, a: m.power(a, 3), x)
            return
        x = np.abs(x)
    check(lambda m, a, b: getattr(m, name)(a, b), x, y)


def test_python_operators_on_traced_values() -> None:
    x, y = rand(3, 4), rand(3, 4) + 3
    check(lambda m, a, b: (a + b, a - b, a * b, a / b, a // b, a % b, a**2, -a, +a, abs(a)), x, y)
    check(lambda m, a, b: (2 + a, 2 - a, 2 * a, 2 / b, 2 // b, 2.5 % b, 2.0**a), x, y)
    check(lambda m, a, b: (a < b, a <= b, a > b, a >= b, a == b, a != b), x, y)
    check(lambda m, a, b: ((a > 0) & (b > 0), (a > 0) | (b > 3), (a > 0) ^ (b > 3), ~(a > 0)), x, y)
    i, j = rand(3, 4, dtype=np.int32), rand(3, 4, dtype=np.int32)
    check(lambda m, a, b: (a & b, a | b, a ^ b, ~a, a % 3, a // 2), i, j)


def test_bool_arithmetic_follows_numpy() -> None:
    p, q = rand(3, 4, dtype=np.bool_), rand(3, 4, dtype=np.bool_)
    check(lambda m, a, b: (m.add(a, b), m.multiply(a, b), m.maximum(a, b), m.minimum(a, b)), p, q)
    check(lambda m, a, b: (m.logical_and(a, b), m.logical_or(a, b), m.logical_xor(a, b), m.logical_not(a)), p, q)


def test_clip() -> None:
    x = rand(4, 5)
    check(lambda m, a: m.clip(a, -0.5, 0.5), x)
    check(lambda m, a: m.clip(a, None, 0.0), x)
    check(lambda m, a: m.clip(a, a[0], 1.0), x)
    check(lambda m, a: a.clip(-1, 1), x)
    check(lambda m, a: m.clip(a, min=0.0), x)
    check(lambda m, a: m.clip(a, 0, 3), rand(4, 5, dtype=np.int32))


def test_where() -> None:
    x, y = rand(3, 4), rand(4)
    check(lambda m, a, b: m.where(a > 0, a, b), x, y)
    check(lambda m, a: m.where(a > 0, a, 0), x)
    check(lambda m, a: m.where(a > 0, 1, 2.5), x)
    check(lambda m, a: m.where(a > 0, 1, 2), x)
    check(lambda m, a: m.where(a, 1.0, -1.0), rand(3, dtype=np.int32))  # nonzero is true


def test_round() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, 1.2345, -7.777])
    check(lambda m, a: m.round(a), x)
    check(lambda m, a: m.round(a, 2), x)
    check(lambda m, a: m.around(a, 1), x)


# ---------------------------------------------------------------------------------------
# Products


MATMUL_SHAPES = [
    ("vector @ vector", (4,), (4,)),
    ("matrix @ vector", (3, 4), (4,)),
    ("vector @ matrix", (4,), (4, 5)),
    ("matrix @ matrix", (3, 4), (4, 5)),
    ("batched", (2, 3, 4), (2, 4, 5)),
    ("3-d @ 2-d", (2, 3, 4), (4, 5)),
    ("2-d @ 3-d", (3, 4), (2, 4, 5)),
    ("batch broadcasting", (2, 1, 3, 4), (5, 4, 6)),
    ("vector @ 3-d", (4,), (2, 4, 5)),
    ("3-d @ vector", (2, 3, 4), (4,)),
    ("empty contraction", (3, 0), (0, 2)),
]


@pytest.mark.parametrize(("label", "sa", "sb"), MATMUL_SHAPES, ids=[m[0] for m in MATMUL_SHAPES])
def test_matmul(label: str, sa: tuple, sb: tuple) -> None:
    a, b = rand(*sa), rand(*sb)
    check(lambda m, x, y: m.matmul(x, y), a, b)
    check(lambda m, x, y: x @ y, a, b)


def test_matmul_with_a_numpy_array_on_either_side() -> None:
    w = rand(4, 5)
    check(lambda m, x: x @ w, rand(3, 4))
    check(lambda m, x: w.T @ x, rand(4, 2))


@pytest.mark.parametrize(("sa", "sb"), [((4,), (4,)), ((3, 4), (4,)), ((3, 4), (4, 5)), ((2, 3, 4), (5, 4, 2)), ((), (3,))])
def test_dot(sa: tuple, sb: tuple) -> None:
    check(lambda m, x, y: m.dot(x, y), rand(*sa), rand(*sb))


def test_inner_outer_tensordot() -> None:
    a, b = rand(3, 4), rand(5, 4)
    check(lambda m, x, y: m.inner(x, y), a, b)
    check(lambda m, x, y: m.outer(x, y), a[0], b[:, 0])
    check(lambda m, x, y: m.tensordot(x, y, axes=([1], [1])), a, b)
    check(lambda m, x, y: m.tensordot(x, y, axes=2), rand(2, 3, 4), rand(3, 4, 5))
    check(lambda m, x, y: m.tensordot(x, y, axes=0), rand(2), rand(3))


EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("ij->ji", [(3, 4)]),
    ("ij->", [(3, 4)]),
    ("ij->j", [(3, 4)]),
    ("i,i->", [(4,), (4,)]),
    ("i,j->ij", [(3,), (4,)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij,kj", [(3, 4), (5, 4)]),  # implicit output: the indices seen once, sorted
    ("ij,jk->ki", [(3, 4), (4, 5)]),
    ("ij,ij->i", [(3, 4), (3, 4)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),  # three operands, left to right
    ("bij,bjk,bkl->bl", [(2, 3, 4), (2, 4, 5), (2, 5, 6)]),
    ("a,b,c->abc", [(2,), (3,), (4,)]),
    ("ii->i", [(3, 3)]),  # a repeated index: the diagonal
    ("ii", [(3, 3)]),  # the trace
    ("iij,jk->ik", [(3, 3, 4), (4, 2)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),  # ellipses broadcast, right-aligned
    ("...ij,...jk", [(6, 2, 3, 4), (1, 4, 5)]),
    ("i...->...", [(3, 4, 5)]),
]


@pytest.mark.parametrize(("spec", "shapes"), EINSUMS, ids=[e[0] for e in EINSUMS])
def test_einsum_common_forms(spec: str, shapes: list) -> None:
    check(lambda m, *xs: m.einsum(spec, *xs), *(rand(*s) for s in shapes))
    check(lambda m, *xs: m.einsum(spec, *xs, optimize=True), *(rand(*s) for s in shapes))


def test_einsum_gradients_through_three_operands_and_a_diagonal() -> None:
    a = np.random.default_rng(5).standard_normal((3, 3))
    fj.gradcheck(lambda x: fnp.einsum("ii,ij,jk->k", x, x, x).sum(), (a,))


@pytest.mark.parametrize(("spec", "shapes", "message"), [
    ("ij,jk->q", [(2, 3), (3, 4)], "names one no operand has"),
    ("ij,j", [(2, 3), (4,)], "do not broadcast"),
    ("i..j", [(3,)], "invalid subscript"),
    ("ij", [(3,)], "does not match operand shape"),
])
def test_einsum_errors_name_the_problem(spec: str, shapes: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fnp.einsum(spec, *(rand(*s) for s in shapes))


# ---------------------------------------------------------------------------------------
# Layout


def test_reshape_ravel_and_T() -> None:
    x = rand(2, 3, 4)
    check(lambda m, a: a.reshape(-1), x)
    check(lambda m, a: a.reshape(4, -1), x)
    check(lambda m, a: a.reshape((6, 4)), x)
    check(lambda m, a: m.reshape(a, (2, 12)), x)
    check(lambda m, a: m.ravel(a) + a.ravel() + a.flatten(), x)
    check(lambda m, a: a.T, x)
    check(lambda m, a: a.T, rand(3))
    check(lambda m, a: (a.shape[0] * a, a.ndim * a.size * a, len(a) * a), x)


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (2, 0, 1), (-1, 0, 1)], ids=str)
def test_transpose(axes: Any) -> None:
    x = rand(2, 3, 4)
    check(lambda m, a: m.transpose(a, axes), x)
    check(lambda m, a: a.transpose(axes), x)
    if axes is not None:
        check(lambda m, a: a.transpose(*axes), x)


def test_moveaxis_and_swapaxes() -> None:
    x = rand(2, 3, 4, 5)
    check(lambda m, a: m.moveaxis(a, 0, -1), x)
    check(lambda m, a: m.moveaxis(a, [0, 1], [-1, 0]), x)
    check(lambda m, a: m.moveaxis(a, -1, 1), x)
    check(lambda m, a: m.swapaxes(a, 0, -1), x)
    check(lambda m, a: a.swapaxes(1, 2), x)


def test_expand_dims_and_squeeze() -> None:
    x = rand(3, 4)
    check(lambda m, a: m.expand_dims(a, 0), x)
    check(lambda m, a: m.expand_dims(a, -1), x)
    check(lambda m, a: m.expand_dims(a, (0, 3)), x)
    y = rand(1, 3, 1, 4, 1)
    check(lambda m, a: m.squeeze(a), y)
    check(lambda m, a: m.squeeze(a, axis=0), y)
    check(lambda m, a: m.squeeze(a, axis=(0, -1)), y)
    check(lambda m, a: a.squeeze(2), y)


def test_concatenate_stack_vstack_hstack() -> None:
    a, b = rand(2, 3), rand(4, 3)
    check(lambda m, x, y: m.concatenate([x, y]), a, b)
    check(lambda m, x, y: m.concatenate([x, y.T[:, :2].T], axis=0), a, b)
    check(lambda m, x, y: m.concatenate((x.T, x.T), axis=-1), a, b)
    check(lambda m, x: m.concatenate([x, x], axis=None), a)
    check(lambda m, x: m.concatenate([x, np.zeros((0, 3))]), a)
    check(lambda m, x: m.stack([x, x * 2]), a)
    check(lambda m, x: m.stack([x, x * 2, x], axis=-1), a)
    check(lambda m, x: m.stack([x[0], x[1]], axis=1), a)
    check(lambda m, x: m.vstack([x, x[0]]), a)
    check(lambda m, x: m.hstack([x, x]), a)
    check(lambda m, x: m.hstack([x[0], x[1]]), a)


@pytest.mark.parametrize(
    "pad_width", [1, (1, 2), ((1, 2), (0, 3)), ((0, 0), (2, 0)), [[1, 1], [1, 1]]], ids=str
)
def test_pad(pad_width: Any) -> None:
    check(lambda m, a: m.pad(a, pad_width), rand(2, 3))
    check(lambda m, a: m.pad(a, pad_width, constant_values=-1.5), rand(2, 3))
    check(lambda m, a: m.pad(a, pad_width, constant_values=7), rand(2, 3, dtype=np.int32))


def test_flip() -> None:
    x = rand(2, 3, 4)
    check(lambda m, a: m.flip(a), x)
    check(lambda m, a: m.flip(a, axis=1), x)
    check(lambda m, a: m.flip(a, axis=(0, -1)), x)


# ---------------------------------------------------------------------------------------
# Indexing


INDICES = [
    ("int", 1),
    ("negative int", -1),
    ("two ints", (1, -2)),
    ("all ints", (0, 1, 2)),
    ("slice", slice(1, 3)),
    ("slice with step", (slice(None), slice(0, None, 2))),
    ("negative step", slice(None, None, -1)),
    ("negative step with bounds", (slice(None), slice(3, 0, -2))),
    ("negative step of every axis", (slice(None, None, -2), slice(1, None, -1), slice(None, None, -3))),
    ("empty slice", slice(2, 1)),
    ("out-of-range slice", slice(-10, 10)),
    ("None", None),
    ("None among slices", (slice(None), None, 0)),
    ("Ellipsis", (Ellipsis, 1)),
    ("Ellipsis with None", (0, Ellipsis, None)),
    ("Ellipsis alone", Ellipsis),
    ("empty tuple", ()),
    ("integer array", np.array([0, -1, 1])),
    ("integer list", [1, 0]),
    ("2-d integer array", np.array([[0, 1], [1, 0]])),
    ("integer array on a middle axis", (slice(None), np.array([2, 0]))),
    ("integer array next to an int", (slice(None), 1, np.array([0, 3]))),
    ("integer array separated from an int", (0, slice(None), np.array([0, 3]))),
    ("integer array with None", (np.array([1, 0]), None)),
]


@pytest.mark.parametrize(("label", "key"), INDICES, ids=[i[0] for i in INDICES])
def test_indexing(label: str, key: Any) -> None:
    x = rand(2, 3, 4)
    expected = x[key]
    assert_same(numpy_api.getitem(x, key), expected, "fnp eager")
    assert_same(interpreted(lambda a: a[key])(x), expected, "jitted")


def test_indexing_with_a_traced_integer_array() -> None:
    x, idx = rand(5, 3), np.array([4, 0, -1, 2])
    assert_same(interpreted(lambda a, i: a[i])(x, idx), x[idx])
    assert_same(interpreted(lambda a, i: a[:, i[:2] % 3])(x, idx), x[:, idx[:2] % 3])
    for i in (0, 3, -1):  # a Python int argument is a traced 0-d index
        assert_same(interpreted(lambda a, i: a[i])(x, i), x[i])
        assert_same(interpreted(lambda a, i: a[:, i % 3])(x, i), x[:, i % 3])


def test_iterating_over_a_traced_array_unrolls_its_first_axis() -> None:
    x = rand(3, 4)
    assert_same(interpreted(lambda a: sum(row * i for i, row in enumerate(a)))(x), sum(r * i for i, r in enumerate(x)))


# ---------------------------------------------------------------------------------------
# take and take_along_axis


def test_take_with_negative_indices() -> None:
    x = rand(3, 5)
    for indices, axis in [([0, -1, 2], 1), ([-3, 2], 0), ([[0, -1], [4, 1]], 1), (-1, 1), (np.array(3), None), ([0, -1], None)]:
        idx = np.asarray(indices)
        check(lambda m, a, i, axis=axis: m.take(a, i, axis=axis), x, idx)
        check(lambda m, a, i, axis=axis: a.take(i, axis=axis), x, idx)


def test_take_along_axis() -> None:
    x = rand(3, 5)
    order = np.argsort(x, axis=1)
    check(lambda m, a, i: m.take_along_axis(a, i, axis=1), x, order)
    check(lambda m, a, i: m.take_along_axis(a, i[:, :2], axis=-1), x, order)
    top = np.argmax(x, axis=0)[None]
    check(lambda m, a, i: m.take_along_axis(a, i, axis=0), x, top)
    check(lambda m, a: m.take_along_axis(a, m.argmax(a, axis=1, keepdims=True), axis=1), x)
    check(lambda m, a, i: m.take_along_axis(a, i, axis=1), x, np.array([[0, -1]]))  # broadcast rows


# ---------------------------------------------------------------------------------------
# Constructors and odds and ends


def test_constructors_in_traced_code() -> None:
    x = rand(3, 3, dtype=np.float32)
    check(lambda m, a: a + m.zeros((3, 3), dtype=np.float32) + m.ones(3, dtype=np.float32), x)
    check(lambda m, a: m.zeros(a.shape, dtype=a.dtype) + m.ones(a.shape[1:], a.dtype), x)
    check(lambda m, a: a * m.full((3,), 2.0) + m.eye(3), x)
    check(lambda m, a: m.zeros_like(a) + m.ones_like(a, dtype=np.int32) + m.full_like(a, 7), x)
    check(lambda m, a: a + m.arange(3) + m.arange(1, 7, 2) + m.arange(0, 1.5, 0.5), x)
    check(lambda m, a: m.linspace(0, 1, 3) * a, x)
    check(lambda m, a: m.asarray(a, dtype=np.float64) + m.array([1.0, 2.0, 3.0]), x, numpy_code=False)
    check(lambda m, a: m.atleast_1d(a[0, 0]) + m.atleast_2d(a[0]), x)


def test_astype_and_copy() -> None:
    x = rand(3, 4)
    check(lambda m, a: (a.astype(np.float32), a.astype(np.int32), a.astype(bool), m.copy(a)), x)


def test_numpy_shape_functions_on_traced_values() -> None:
    x = rand(3, 4)
    check(lambda m, a: a * np.shape(a)[1] + np.ndim(a) + np.size(a) + np.size(a, 0), x)
    assert interpreted(lambda a: a.astype(np.result_type(a, np.float32)))(rand(2, dtype=np.int32)).dtype == np.float64


# ---------------------------------------------------------------------------------------
# NumPy's protocols: unmodified NumPy code traces


def test_numpy_protocols_record_ir() -> None:
    x, w = rand(4, 3, dtype=np.float32), rand(3, 2, dtype=np.float32)

    def model(x: Any, w: Any) -> Any:
        h = np.maximum(x @ w, 0)
        h = np.where(h > 1, np.exp(-h), h)
        return np.sum(h, axis=1), np.mean(np.tanh(h)), np.concatenate([h, h], axis=0)

    expected = model(x, w)
    for actual, e in zip(fj.jit(model)(x, w), expected, strict=True):
        assert_same(actual, e)
    ir = fj.make_ir(model)(x, w)
    assert {"dot_general", "max", "select", "exp", "reduce_sum", "tanh", "concatenate"} <= {op.prim.name for op in ir.ops}


def test_numpy_functions_see_traced_values() -> None:
    seen = []

    def f(x: Any) -> Any:
        seen.append(type(np.exp(x)))
        return np.exp(x)

    fj.jit(f)(rand(3))
    assert seen == [TracedArray]


def test_fnp_runs_eagerly_on_concrete_arrays() -> None:
    x = rand(3, 4, dtype=np.float32)
    out = fnp.tanh(x @ x.T).sum(axis=1)
    assert type(out) is np.ndarray and out.dtype == np.float32
    assert_same(fnp.mean(x, axis=0), np.mean(x, axis=0))
    assert_same(fnp.einsum("ij,kj->ik", x, x), np.einsum("ij,kj->ik", x, x))


# ---------------------------------------------------------------------------------------
# Property: random elementwise / broadcasting expressions equal NumPy's, values and dtypes


ARRAY_DTYPES = [np.bool_, np.int32, np.int64, np.float32, np.float64]
SHAPES = [(), (1,), (3,), (2, 1), (2, 3), (1, 3)]  # every pair broadcasts
PY_SCALARS = [True, False, 0, 2, -3, 0.5, -1.25, 3.0]
NP_SCALARS = [np.float32(1.5), np.float64(-0.75), np.int32(2), np.int64(-1), np.bool_(True)]
UNARY = ["negative", "absolute", "exp", "tanh", "sin", "sqrt", "square", "logical_not", "sign"]
BINARY = {  # name -> operator (None: the function form only)
    "add": "+", "subtract": "-", "multiply": "*", "true_divide": "/", "maximum": None,
    "minimum": None, "less": "<", "greater_equal": ">=", "equal": "==", "not_equal": "!=",
    "logical_and": None, "logical_or": None,
}  # fmt: skip


@st.composite
def expressions(draw: Any, depth: int = 0) -> Any:
    """A small expression tree: ``("arg", i)``, ``("lit", scalar)``, ``(unary, e)``,
    ``(binary, form, e1, e2)`` or ``("where", c, e1, e2)``."""
    if depth >= 3 or draw(st.integers(0, 3)) == 0:
        return draw(st.one_of(
            st.tuples(st.just("arg"), st.integers(0, 2)),
            st.tuples(st.just("lit"), st.sampled_from(PY_SCALARS + NP_SCALARS)),
        ))  # fmt: skip
    kind = draw(st.sampled_from(["unary", "binary", "binary", "where"]))
    if kind == "unary":
        return (draw(st.sampled_from(UNARY)), draw(expressions(depth + 1)))
    if kind == "where":
        return ("where", draw(expressions(depth + 1)), draw(expressions(depth + 1)), draw(expressions(depth + 1)))
    name = draw(st.sampled_from(sorted(BINARY)))
    form = draw(st.sampled_from(["function", "operator"])) if BINARY[name] else "function"
    return (name, form, draw(expressions(depth + 1)), draw(expressions(depth + 1)))


SUPPORTED = {np.dtype(d) for d in ARRAY_DTYPES}


def evaluate(m: Any, e: Any, args: tuple) -> Any:
    """The expression with module ``m`` (np or fnp); operators when the form says so and
    an operand is an array (on two Python scalars, Python itself would compute).
    Expressions for which NumPy picks a dtype fusejit lacks (``np.exp`` of a bool is
    float16) are rejected."""
    out = _evaluate(m, e, args)
    dtype = getattr(out, "dtype", None)  # Python scalars have none
    if dtype is not None and dtype not in SUPPORTED:
        reject()
    return out


def _evaluate(m: Any, e: Any, args: tuple) -> Any:
    head = e[0]
    if head == "arg":
        return args[e[1]]
    if head == "lit":
        return e[1]
    if head == "where":
        return m.where(evaluate(m, e[1], args), evaluate(m, e[2], args), evaluate(m, e[3], args))
    if len(e) == 2:
        return getattr(m, head)(evaluate(m, e[1], args))
    _, form, left, right = e
    a, b = evaluate(m, left, args), evaluate(m, right, args)
    py = (bool, int, float)
    if form == "operator" and not (type(a) in py and type(b) in py):
        return eval(f"a {BINARY[head]} b", {"a": a, "b": b})  # noqa: S307 - a fixed operator
    return getattr(m, head)(a, b)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    expr=expressions(),
    dtypes=st.lists(st.sampled_from(ARRAY_DTYPES), min_size=3, max_size=3),
    shapes=st.lists(st.sampled_from(SHAPES), min_size=3, max_size=3),
    seed=st.integers(0, 2**16),
)
def test_random_expressions_match_numpy(expr: Any, dtypes: list, shapes: list, seed: int) -> None:
    rng = np.random.default_rng(seed)
    args = tuple(
        (rng.integers(-3, 4, s) if np.dtype(d).kind == "i" else rng.uniform(-2, 2, s)).astype(d)
        if d != np.bool_ else rng.random(s) < 0.5
        for d, s in zip(dtypes, shapes, strict=True)
    )  # fmt: skip
    with np.errstate(all="ignore"):
        try:
            expected = np.asarray(evaluate(np, expr, args))
        except TypeError:  # NumPy refuses (e.g. negative of a bool): so must we
            with pytest.raises(TypeError):
                interpreted(lambda *a: evaluate(fnp, expr, a))(*args)
            return
        traced = interpreted(lambda *a: evaluate(fnp, expr, a))(*args)
        numpy_code = interpreted(lambda *a: evaluate(np, expr, a))(*args)
    assert_same(traced, expected, f"{expr}")
    assert_same(numpy_code, expected, f"numpy code: {expr}")


# ---------------------------------------------------------------------------------------
# Bit shifts: NumPy 2's results for every count, compiled fused and unfused


def shift_counts(dtype: Any) -> np.ndarray:
    """0, 1, width - 1, width, width + 3, twice the width and negative counts."""
    w = np.dtype(dtype).itemsize * 8
    return np.array([0, 1, 5, w - 1, w, w + 3, 2 * w, -1, -3, -w, -w - 5], dtype)


def shift_values(dtype: Any) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.array([5, -5, 1, -1, 0, 123, -123, info.max, info.min, info.max // 3, info.min // 3], dtype)


def check_compiled(f: Callable[..., Any], *args: Any) -> None:
    """``f`` eagerly with fnp, and its NumPy code jitted fused, unfused and interpreted,
    all equal NumPy's answer (values, dtypes and shapes)."""
    expected = f(np, *args)
    assert_all_same(f(fnp, *args), expected, "fnp, eager")
    for label, jitted in [("fused", fj.jit(lambda *a: f(np, *a))),
                          ("unfused", fj.jit(lambda *a: f(np, *a), fuse=False)),
                          ("interpreted", interpreted(lambda *a: f(np, *a))),
                          ("fnp fused", fj.jit(lambda *a: f(fnp, *a)))]:
        assert_all_same(jitted(*args), expected, label)


def assert_all_same(actual: Any, expected: Any, where: str) -> None:
    """``assert_same``, element by element for (nested) tuples."""
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), where
        for k, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_all_same(a, e, f"{where}[{k}]")
    else:
        assert_same(actual, expected, where)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_shifts_follow_numpy_for_every_count(dtype: Any) -> None:
    """Counts of 0, width - 1, width, beyond and negative: NumPy 2 shifts every bit out of
    range (left: 0, right: the sign), where C and LLVM leave the shift undefined."""
    x = shift_values(dtype)[:, None]
    counts = shift_counts(dtype)[None, :]
    check_compiled(lambda m, a, c: (m.left_shift(a, c), m.right_shift(a, c)), x, counts)
    check_compiled(lambda m, a, c: (a << c, a >> c), x, counts)
    check_compiled(lambda m, a, c: (a << c, a >> c), x.T.copy().T, counts.T.copy().T)
    # a constant count of each kind (the kernel folds the selection)
    w = np.dtype(dtype).itemsize * 8
    check_compiled(lambda m, a: (a << 0, a >> 0, a << (w - 1), a >> (w - 1), a << w, a >> w,
                                 a << (w + 3), a >> (w + 3), a << -1, a >> -2), x)


def test_shifts_of_non_contiguous_operands() -> None:
    x = rand(4, 6, dtype=np.int64)
    c = RNG.integers(-70, 70, (6, 4)).astype(np.int64)
    check_compiled(lambda m, a, b: (a.T << b, a.T >> b, a[:, ::2] << b.T[:, ::2], b.T[:, 1::2] >> a[::-1, ::2]), x, c)


@pytest.mark.parametrize(
    ("label", "f"),
    [
        ("array << python int", lambda a, b: a << 3),
        ("python int << array", lambda a, b: 3 << a),
        ("array >> python int", lambda a, b: a >> 2),
        ("python int >> array", lambda a, b: -100 >> b),
        ("int32 << int64", lambda a, b: a << b),
        ("int64 >> int32", lambda a, b: b >> a),
        ("int32 << int64 scalar", lambda a, b: a << np.int64(2)),
        ("bool << python int", lambda a, b: (a > 0) << 2),
        ("bool >> int32", lambda a, b: (b > 0) >> a),
        ("bool << bool", lambda a, b: np.left_shift(a > 0, b > 0).astype(np.int32)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_shift_promotion_follows_numpy_2(label: str, f: Callable[..., Any]) -> None:
    """NumPy 2 promotion: mixed widths widen, Python ints are weak, bools shift as ints
    (bool with bool: int32 here, NumPy's int8; compared after a cast)."""
    a = np.array([0, 1, 3, 31, 32, -1, -33], np.int32)
    b = np.array([5, -5, 7, 1 << 40, -(1 << 40), 0, 2], np.int64)
    check_compiled(lambda m, x, y: f(x, y), a, b)


def test_shifts_update_in_place_and_dispatch_from_numpy() -> None:
    def f(m: Any, a: Any, c: Any) -> Any:
        a = a.copy()
        a <<= 2
        a >>= c
        a[1:3] <<= 1
        return a, m.bitwise_left_shift(a, 1), m.bitwise_right_shift(a, 1)

    check_compiled(f, rand(5, dtype=np.int32), np.array([0, 1, 31, 32, -1], np.int32))


@pytest.mark.parametrize("op", ["<<", ">>", "left_shift", "right_shift", "<<="])
def test_a_float_operand_of_a_shift_is_a_type_error_naming_the_ufunc(op: str) -> None:
    name = {"<": "left_shift", ">": "right_shift", "l": "left_shift", "r": "right_shift"}[op[0]]

    def f(a: Any) -> Any:
        if op == "<<=":
            a = a.copy()
            a <<= 1.5
            return a
        return eval(f"a {op} 1.0", {"a": a}) if op in ("<<", ">>") else getattr(fnp, op)(a, 1.0)  # noqa: S307

    with pytest.raises(TypeError, match=f"ufunc '{name}'"):
        fj.jit(f)(rand(3, dtype=np.int32))
    with pytest.raises(TypeError, match=f"ufunc '{name}'"):
        fj.jit(lambda a, b: getattr(np, name)(b, a))(rand(3, dtype=np.int32), rand(3, dtype=np.float32))


def test_shifts_are_integer_ops_with_zero_derivative() -> None:
    def f(x: Any) -> Any:
        return fnp.sum(x * ((fnp.arange(3) << 1) >> 1))

    assert_same(fj.grad(f)(np.ones(3)), np.arange(3.0))
    assert_same(fj.jit(fj.grad(lambda x: fnp.sum(x * fnp.astype(fnp.astype(x, np.int64) << 1, np.float64))))(
        np.array([1.0, 2.0])), np.array([2.0, 4.0]))


# ---------------------------------------------------------------------------------------
# ndarray methods of traced values


METHODS = {  # label -> f(x) for a float matrix x, written as NumPy's ndarray methods
    "prod": lambda x: (x.prod(), x.prod(axis=0), x.prod(axis=1, keepdims=True)),
    "round": lambda x: (x.round(), x.round(1), (x * 10).round(-1)),
    "argsort": lambda x: (x.argsort(kind="stable"), x.argsort(axis=0, kind="stable"), x.argsort(axis=None, stable=True)),
    "argpartition": lambda x: np.take_along_axis(x, x.argpartition(2, axis=1), axis=1)[:, 2],
    "partition": lambda x: _partitioned(x),
    "cumprod": lambda x: (x.cumprod(), x.cumprod(axis=1)),
    "diagonal": lambda x: (x.diagonal(), x.diagonal(1), x.T.diagonal(-1)),
    "repeat": lambda x: (x.repeat(2), x.repeat(2, axis=0), x.repeat([1, 0, 2, 1], axis=1)),
    "searchsorted": lambda x: np.sort(x[0]).searchsorted(x[1:]),
    "searchsorted right": lambda x: np.sort(x[0]).searchsorted(x[1], side="right"),
    "searchsorted sorter": lambda x: x[0].searchsorted(x[1], sorter=np.argsort(x[0])),
    "compress": lambda x: (x.compress([True, False, True], axis=0), x.compress([False, True])),
    "choose": lambda x: ((x[0] > 0).astype(np.int64) + (x[1] > 0)).choose([x[0], x[1], x[2]]),
    "choose clip": lambda x: (x[0] * 4).astype(np.int64).choose([x[0], 2.5], mode="clip"),
    "choose wrap": lambda x: np.choose((x[0] * 4).astype(np.int32), [x[1], x[2], 1.0], mode="wrap"),
    "conj": lambda x: (x.conj(), x.conjugate()),
    "real/imag": lambda x: (x.real, x.imag),
    "mT": lambda x: (x.mT, x.reshape(2, 2, 3).mT),
    "divmod": lambda x: (divmod(x, 0.75), divmod(2.0, x + 5)),
}


def _partitioned(x: Any) -> Any:
    x = x.copy()
    x.partition(1)
    return x[:, 1]


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("label", sorted(METHODS))
def test_ndarray_methods_of_traced_values_match_numpy(label: str, layout: str) -> None:
    """Each method inside fj.jit (interpreted, and compiled fused) against NumPy's ndarray
    method: values, dtypes and shapes, on contiguous and non-contiguous inputs."""
    x = np.round(rand(3, 4) * 4) / 4  # ties for the sorts, exact products
    if layout == "transposed":
        x = np.ascontiguousarray(x.T).T
    f = METHODS[label]
    expected = f(x)
    assert_all_same(interpreted(f)(x), expected, f"{label}, interpreted")
    assert_all_same(fj.jit(f)(x), expected, f"{label}, compiled")


def test_integer_methods_and_divmod_of_traced_values() -> None:
    i = rand(3, 4, dtype=np.int32)
    check_compiled(lambda m, a: (a.prod(axis=0), a.round(-1), a.cumprod(axis=1), divmod(a, 3), divmod(7, a | 1)), i)


def test_real_and_conj_are_the_array_itself_and_imag_is_zeros() -> None:
    seen = []

    def f(x: Any) -> Any:
        seen.append((x.real is x, x.conj() is x))
        return x.imag

    assert_same(fj.jit(f)(rand(3, dtype=np.float32)), np.zeros(3, np.float32))
    assert seen == [(True, True)]


def test_methods_with_a_data_dependent_shape_are_refused_clearly() -> None:
    x = rand(3, 4)
    with pytest.raises(NotImplementedError, match="nonzero of a traced array.*depends on the data"):
        fj.jit(lambda a: a.nonzero())(x)
    with pytest.raises(NotImplementedError, match="nonzero of a traced array.*depends on the data"):
        fj.jit(lambda a: np.nonzero(a))(x)
    with pytest.raises(NotImplementedError, match="compress with a traced condition.*depends on the data"):
        fj.jit(lambda a: a.compress(a[0] > 0))(x)
    # a known array (made from constants inside the function) has a concrete answer
    assert_same(fj.jit(lambda a: a[:, fnp.arange(4).nonzero()[0]])(x), x[:, np.arange(4).nonzero()[0]])
    with pytest.raises(ValueError, match="ndim < 2"):
        fj.jit(lambda a: a.mT)(x[0])
