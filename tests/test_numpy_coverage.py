"""The NumPy functions of ``fusejit.tracer.numpy_ext`` (and the bugs of issue 15) against
NumPy: values, dtypes (NumPy 2 promotion), shapes, broadcasting, zero-size and unit axes,
non-contiguous inputs; eager, jitted (reference interpreter and compiled) and as NumPy
code; gradients by finite differences, first and second order where smooth."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.scipy.special import logsumexp
from tests.test_numpy_api import assert_same as assert_same_array
from tests.test_numpy_api import interpreted

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_per_test(request: pytest.FixtureRequest) -> None:
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def assert_same(actual: Any, expected: Any, where: str = "") -> None:
    """Same values, dtypes and shapes; tuples and lists element by element."""
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, (tuple, list)) and len(actual) == len(expected), where
        for k, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same(a, e, f"{where}[{k}]")
        return
    assert_same_array(actual, expected, where)


def check(f: Callable[..., Any], *args: Any, numpy_code: bool = True, compiled: bool = False) -> None:
    """``f(m, *args)`` for ``m`` = fnp (eager, jitted) and ``m`` = np (jitted) equals
    ``f(np, *args)``; ``compiled`` also runs the NumPy code through the CPU backend."""
    with np.errstate(all="ignore"):
        expected = f(np, *args)
        assert_same(f(fnp, *args), expected, "fnp, eager")
        assert_same(interpreted(lambda *a: f(fnp, *a))(*args), expected, "fnp, jitted")
        if numpy_code:
            assert_same(interpreted(lambda *a: f(np, *a))(*args), expected, "numpy code, jitted")
        if compiled:
            assert_same(fj.jit(lambda *a: f(np, *a))(*args), expected, "numpy code, compiled")


def uniform(lo: float, hi: float, *shape: int, dtype: Any = np.float64) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(dtype)


# ---------------------------------------------------------------------------------------
# Elementwise

SPECIAL = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 1e-30, 50.0, -50.0, 1e10, 1e300, np.inf, -np.inf, np.nan]
UNARY = {  # name -> the domain sampled for values and gradients
    "arctan": (-5, 5), "arcsin": (-0.95, 0.95), "arccos": (-0.95, 0.95), "sinh": (-5, 5),
    "cosh": (-5, 5), "arcsinh": (-5, 5), "arccosh": (1.1, 5), "arctanh": (-0.95, 0.95),
    "sinc": (0.1, 3), "fabs": (0.1, 3), "deg2rad": (-5, 5), "rad2deg": (-5, 5),
    "degrees": (-5, 5), "radians": (-5, 5), "conjugate": (-5, 5),
}  # fmt: skip
BINARY = {"arctan2": (-5, 5), "hypot": (-5, 5), "logaddexp": (-5, 5), "logaddexp2": (-5, 5),
          "fmax": (-5, 5), "fmin": (-5, 5)}  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_functions_match_numpy(name: str, dtype: Any) -> None:
    lo, hi = UNARY[name]
    x = uniform(lo, hi, 3, 4, dtype=dtype) if dtype != np.int32 else RNG.integers(-3, 4, (3, 4)).astype(dtype)
    check(lambda m, a: getattr(m, name)(a), x)
    check(lambda m, a: getattr(m, name)(a), x.T)  # non-contiguous
    check(lambda m, a: getattr(m, name)(a), np.zeros((0, 2), dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_special_values_compiled(dtype: Any) -> None:
    """inf, NaN, signed zeros, tiny and huge values: the compiled kernels (math library
    atan2, the overflow-safe formulas) give NumPy's classes of results."""
    with np.errstate(over="ignore"):
        x = np.array(SPECIAL, dtype)
    names = sorted(n for n in UNARY if n not in ("conjugate",))
    got = fj.jit(lambda a: [getattr(np, n)(a) for n in names])(x)
    with np.errstate(all="ignore"):
        for n, g in zip(names, got, strict=True):
            e = getattr(np, n)(x)
            assert g.dtype == e.dtype, n
            np.testing.assert_allclose(g, e, rtol=8 * np.finfo(dtype).eps, atol=0, err_msg=n)
            assert np.array_equal(np.signbit(g[e == 0]), np.signbit(e[e == 0])), n
    a, b = np.repeat(x, x.size), np.tile(x, x.size)
    got = fj.jit(lambda p, q: [getattr(np, n)(p, q) for n in sorted(BINARY)])(a, b)
    with np.errstate(all="ignore"):
        for n, g in zip(sorted(BINARY), got, strict=True):
            # logaddexp2 goes through fnp.exp2 = exp(x ln 2), whose error grows with |x|
            rtol = (64 if n == "logaddexp2" else 8) * np.finfo(dtype).eps
            np.testing.assert_allclose(g, getattr(np, n)(a, b), rtol=rtol, atol=0, err_msg=n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverse_trigonometric_accuracy_in_ulps(dtype: Any) -> None:
    """The compiled arcsin/arccos/arctan (atan2 of the right operands) within 2 ulp
    (float32) / 4 ulp (float64) of the exact result (computed in a wider type), over their
    whole domain. Not against NumPy's own float32 arcsin: that is 2.5 ulp off on some CPUs
    (an AMD EPYC), where ours is 1.5."""
    wide = np.float64 if dtype == np.float32 else np.longdouble
    x = np.concatenate([np.linspace(-1, 1, 20001), np.geomspace(1e-30, 1, 2000)]).astype(dtype)
    x = np.concatenate([x, -x])
    got = fj.jit(lambda a: (np.arcsin(a), np.arccos(a), np.arctan(a * 100)))(x)
    bound = 2.0 if dtype == np.float32 else 4.0
    xw = x.astype(wide)
    for g, e in zip(got, (np.arcsin(xw), np.arccos(xw), np.arctan((x * dtype(100)).astype(wide))), strict=True):
        ulps = np.abs(g.astype(wide) - e) / np.spacing(np.abs(e).astype(dtype)).astype(wide)
        assert np.nanmax(ulps) <= bound


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize(("xs", "ys"), [((3, 4), (4,)), ((2, 1), (1, 3)), ((), (3,)), ((0, 2), (1, 2))])
def test_binary_functions_broadcast_and_promote(name: str, xs: tuple, ys: tuple) -> None:
    lo, hi = BINARY[name]
    check(lambda m, a, b: getattr(m, name)(a, b), uniform(lo, hi, *xs), uniform(lo, hi, *ys, dtype=np.float32))
    check(lambda m, a: getattr(m, name)(a, 2.0), uniform(lo, hi, *xs, dtype=np.float32))


def test_fmax_fmin_ignore_nan_and_maximum_does_not() -> None:
    a = np.array([np.nan, 1.0, np.nan, -2.0])
    b = np.array([0.5, np.nan, np.nan, 3.0])
    check(lambda m, x, y: (m.fmax(x, y), m.fmin(x, y), m.maximum(x, y)), a, b, compiled=True)


def test_nan_to_num_real_imag_conj() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    check(lambda m, a: m.nan_to_num(a), x)
    check(lambda m, a: m.nan_to_num(a, nan=-1.0, posinf=9.0, neginf=-9.0), x)
    check(lambda m, a: (m.real(a), m.imag(a), m.conj(a)), x)
    check(lambda m, a: m.nan_to_num(a), np.arange(3))


SMOOTH = {
    "arctan": (fnp.arctan, (-3, 3)), "arcsin": (fnp.arcsin, (-0.9, 0.9)), "arccos": (fnp.arccos, (-0.9, 0.9)),
    "sinh": (fnp.sinh, (-3, 3)), "cosh": (fnp.cosh, (-3, 3)), "arcsinh": (fnp.arcsinh, (-3, 3)),
    "arccosh": (fnp.arccosh, (1.2, 3)), "arctanh": (fnp.arctanh, (-0.9, 0.9)), "sinc": (fnp.sinc, (0.2, 2)),
    "deg2rad": (fnp.deg2rad, (-3, 3)),
    "large sinh/cosh": (lambda x: fnp.sinh(x) / fnp.cosh(x), (39, 45)),
    "arctan2": (lambda x: fnp.arctan2(x, x[::-1] + 0.1), (-3, 3)),
    "hypot": (lambda x: fnp.hypot(x, x[::-1] + 0.1), (-3, 3)),
    "logaddexp": (lambda x: fnp.logaddexp(x, x[::-1] * 2.0), (-3, 3)),
    "logaddexp2": (lambda x: fnp.logaddexp2(x, x[::-1] * 2.0), (-3, 3)),
    "logsumexp": (lambda x: logsumexp(fnp.reshape(x, (2, 3)), axis=1), (-3, 3)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_gradients_first_and_second_order(name: str) -> None:
    fn, (lo, hi) = SMOOTH[name]
    x = uniform(lo, hi, 6)
    assert fj.gradcheck(fn, (x,))
    assert fj.gradcheck(lambda v: fj.grad(lambda w: fnp.sum(fn(w)))(v), (x,))


def test_derivatives_at_ties_and_edges() -> None:
    # logaddexp's tie: half to each operand; hypot at the origin: no NaN
    gx, gy = fj.grad(lambda x, y: fnp.logaddexp(x, y), argnums=(0, 1))(1.0, 1.0)
    assert gx == gy == 0.5
    assert np.all(np.isfinite(fj.grad(lambda v: fnp.sum(fnp.hypot(v, 0.0)))(np.zeros(3))))
    assert fj.grad(fnp.sinh)(0.0) == 1.0 and fj.grad(fnp.cosh)(100.0) == pytest.approx(np.sinh(100.0))


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp_matches_scipy(axis: Any, keepdims: bool) -> None:
    scipy_special = pytest.importorskip("scipy.special")
    x = uniform(-300, 300, 3, 4)
    expected = scipy_special.logsumexp(x, axis=axis, keepdims=keepdims)
    assert_same(logsumexp(x, axis=axis, keepdims=keepdims), expected)
    assert_same(fj.jit(lambda a: logsumexp(a, axis=axis, keepdims=keepdims))(x), expected)
    assert logsumexp(np.full(3, -np.inf)) == -np.inf


# ---------------------------------------------------------------------------------------
# Reductions and scans


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.bool_])
def test_prod_and_cumprod_match_numpy(dtype: Any) -> None:
    x = uniform(0.5, 1.5, 3, 4, dtype=dtype) if dtype in (np.float32, np.float64) else (
        RNG.integers(-2, 3, (3, 4)).astype(dtype))
    for axis in (None, 0, 1, (0, 1)):
        check(lambda m, a, axis=axis: m.prod(a, axis=axis), x)
    check(lambda m, a: m.prod(a, axis=1, keepdims=True), x.T)
    check(lambda m, a: (m.cumprod(a), m.cumprod(a, axis=0), m.cumprod(a, axis=1)), x)
    check(lambda m, a: (m.prod(a, axis=0), m.cumprod(a, axis=0)), np.zeros((0, 3), dtype))


def test_prod_and_cumprod_compiled_with_zeros() -> None:
    x = np.array([[1.5, 0.0, 2.0, 3.0], [0.0, 2.0, 0.0, 4.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    check(lambda m, a: (m.prod(a, axis=1), m.prod(a), m.cumprod(a, axis=1), m.cumprod(a, axis=0)), x, compiled=True)


@pytest.mark.parametrize("zeros", [[], [2], [1, 4], [0, 1, 2, 3, 4, 5]])
def test_prod_and_cumprod_gradients_are_exact_at_zeros(zeros: list[int]) -> None:
    x = uniform(0.5, 2.0, 6)
    x[zeros] = 0.0
    prods = (fnp.prod, lambda v: fnp.sum(fnp.prod(fnp.reshape(v, (2, 3)), axis=0) ** 2))
    running = lambda v: fnp.sum(fnp.cumprod(v) * np.arange(1.0, 7.0))  # noqa: E731
    for fn in (*prods, running):
        assert fj.gradcheck(fn, (x,))
    # second order: prod everywhere; cumprod's rule is exact at zeros to first order only
    for fn in prods if zeros else (*prods, running):
        assert fj.gradcheck(lambda v, fn=fn: fj.grad(fn)(v), (x,))
    # forward mode agrees with reverse mode
    t = uniform(-1, 1, 6)
    _, tangent = fj.jvp(lambda v: fnp.cumprod(v), (x,), (t,))
    jac = fj.jacrev(lambda v: fnp.cumprod(v))(x)
    np.testing.assert_allclose(tangent, jac @ t, rtol=1e-12, atol=1e-12)


def test_diff_trace_diagonal() -> None:
    x = uniform(-1, 1, 3, 4, 5)
    check(lambda m, a: (m.diff(a), m.diff(a, n=2, axis=0), m.diff(a, axis=1, prepend=0.0, append=1.0)), x)
    check(lambda m, a: m.diff(a), RNG.random((3, 4)) < 0.5)
    for offset in (0, 1, -2, 7):
        check(lambda m, a, k=offset: (m.diagonal(a, k), m.trace(a, k), m.diagonal(a, k, 1, 2), m.trace(a, k, 0, 2)), x)
    check(lambda m, a: (m.trace(a), m.diagonal(a).sum()), x.T)
    assert fj.gradcheck(lambda v: fnp.trace(v) * fnp.sum(fnp.diff(v, axis=0) ** 2), (uniform(-1, 1, 4, 4),))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.bool_])
def test_sort_and_argsort_are_stable_along_every_axis(dtype: Any) -> None:
    x = RNG.integers(-3, 4, (4, 5, 6)).astype(dtype)  # many ties
    for axis in (-1, 0, 1, None):
        check(lambda m, a, axis=axis: (m.sort(a, axis=axis), m.argsort(a, axis=axis, kind="stable")), x)
    check(lambda m, a: m.sort(a, axis=0), x.T)
    check(lambda m, a: (m.sort(a), m.argsort(a, kind="stable")), np.zeros((2, 0), dtype))


def test_sort_puts_nans_last_and_compiles() -> None:
    x = np.array([[3.0, np.nan, -0.0, 1.0, np.nan, -2.0, 0.0], [1.0, 1.0, -np.inf, np.inf, 0.5, 2.0, 1.0]])
    check(lambda m, a: (m.sort(a, axis=1), m.argsort(a, axis=1, kind="stable")), x, compiled=True)
    assert fj.gradcheck(lambda v: fnp.sum(fnp.sort(v) * np.arange(6.0)), (uniform(-1, 1, 6),))


def test_isclose_and_allclose() -> None:
    a = np.array([1.0, np.nan, np.inf, 1e-9, 2.0, -np.inf])
    b = np.array([1.0 + 1e-9, np.nan, np.inf, 0.0, 2.1, np.inf])
    check(lambda m, x, y: (m.isclose(x, y), m.isclose(x, y, equal_nan=True), m.isclose(x, 2)), a, b)
    assert fnp.allclose(a[:1], b[:1]) is True and fnp.allclose(a, b) is False
    assert bool(fj.jit(lambda x, y: np.allclose(x, y))(a[:1], b[:1]))
    assert not bool(fj.jit(lambda x, y: np.allclose(x, y))(a, b))


def test_gradient_and_count_nonzero() -> None:
    x = uniform(-1, 1, 4, 5)
    check(lambda m, a: (m.gradient(a, axis=0), m.gradient(a, 0.5, axis=1)), x)
    check(lambda m, a: m.gradient(a), x)
    check(lambda m, a: (m.count_nonzero(a), m.count_nonzero(a > 0, axis=1)), x)


# ---------------------------------------------------------------------------------------
# Shapes and indexing


def test_repeat_tile_roll() -> None:
    x = uniform(-1, 1, 2, 3)
    check(lambda m, a: (m.repeat(a, 2), m.repeat(a, 3, axis=1), m.repeat(a, [1, 0, 2], axis=1), m.repeat(a, 1, 0)), x)
    check(lambda m, a: (m.tile(a, 2), m.tile(a, (2, 1, 2)), m.tile(a, (1, 0))), x)
    check(lambda m, a: (m.roll(a, 1), m.roll(a, -4, axis=1), m.roll(a, (1, 2), axis=(0, 1)), m.roll(a, 7, 0)), x.T)
    check(lambda m, a: m.roll(a, 1, 0), np.zeros((0, 2)))
    assert fj.gradcheck(lambda v: fnp.sum(fnp.repeat(v, [1, 2, 3], axis=1) * fnp.roll(fnp.tile(v, (1, 2)), 1)[:, :6]),
                        (uniform(-1, 1, 2, 3),))


def test_rotations_flips_triangles() -> None:
    x = uniform(-1, 1, 3, 4, 2)
    check(lambda m, a: tuple(m.rot90(a, k) for k in range(-1, 5)) + (m.rot90(a, 1, (1, 2)),), x)
    check(lambda m, a: (m.fliplr(a), m.flipud(a), m.rollaxis(a, 2), m.rollaxis(a, 0, 3), m.rollaxis(a, 1, -1)), x)
    for k in (-1, 0, 2):
        check(lambda m, a, k=k: (m.tril(a, k), m.triu(a, k), m.tri(3, 5, k), m.tril(a[0, :, 0])), x)
    check(lambda m, a: (m.tril(a), m.triu(a)), RNG.random((3, 3)) < 0.5)


def test_diag_kron_cross() -> None:
    v, x = uniform(-1, 1, 3), uniform(-1, 1, 3, 4)
    for k in (-2, 0, 1):
        check(lambda m, a, b, k=k: (m.diag(a, k), m.diag(b, k), m.diagflat(b, k)), v, x)
    check(lambda m, a, b: (m.kron(a, b), m.kron(b, a), m.kron(b, b[:2].T), m.kron(a, 2.0)), v, x)
    a3, b3 = uniform(-1, 1, 5, 3), uniform(-1, 1, 3)
    check(lambda m, a, b: (m.cross(a, b), m.cross(a.T, b, axisa=0), m.cross(a[:, :2], a[:, 1:]), m.cross(a, a, axisc=0)), a3, b3)
    assert fj.gradcheck(lambda p, q: fnp.sum(fnp.cross(p, q) ** 2) + fnp.sum(fnp.kron(p, q)), (a3, uniform(-1, 1, 5, 3)))


def test_append_split_stack() -> None:
    x = uniform(-1, 1, 6, 4, 2)
    check(lambda m, a: (m.append(a, a), m.append(a, a[:1], axis=0), m.append(a[0, 0], 1.0)), x)
    check(lambda m, a: tuple(m.split(a, 3)) + tuple(m.split(a, [1, 4, 9], axis=0)) + tuple(m.split(a, [-2], 1)), x)
    check(lambda m, a: tuple(m.array_split(a, 4)) + tuple(m.array_split(a, 3, axis=1)), x)
    check(lambda m, a: tuple(m.hsplit(a, 2)) + tuple(m.vsplit(a, [2])) + tuple(m.dsplit(a, 2)), x)
    check(lambda m, a: (m.column_stack([a[:, 0, 0], a[:, :, 1]]), m.dstack([a, a]), m.atleast_3d(a[0]),
                        m.atleast_3d(a[0, 0]), m.atleast_3d(a[0, 0, 0])), x)
    with pytest.raises(ValueError, match="equal division"):
        fnp.split(x, 4)


def test_select_and_linspace() -> None:
    x = uniform(-2, 2, 3, 4, dtype=np.float32)
    check(lambda m, a: m.select([a < -1, a > 1], [a * 2.0, -a], default=0), x)
    check(lambda m, a: m.select([a < 0], [a], default=a + 1), x)
    check(lambda m: (m.linspace(0, 1, 7), m.linspace(-1, 1, 4, endpoint=False), m.linspace(0, 3, 4, dtype=np.int32)))
    got = fj.jit(lambda s, e: fnp.linspace(s, e, 5))(1.0, np.array([2.0, 3.0]))
    np.testing.assert_allclose(got, np.linspace(1.0, np.array([2.0, 3.0]), 5))
    assert fj.gradcheck(lambda s: fnp.sum(fnp.linspace(s, 2.0 * s, 6) ** 2), (np.array(0.7),))


# ---------------------------------------------------------------------------------------
# The bugs of issue 15


def test_grad_returns_gradients_in_the_order_of_argnums() -> None:
    def f(a: Any, b: Any, c: Any, d: Any) -> Any:
        return a * b * 2.0 + d * 3.0 * b

    assert fj.grad(f, argnums=(3, 1))(1.0, 2.0, 3.0, 4.0) == (6.0, 14.0)
    value, grads = fj.value_and_grad(f, argnums=(3, 1, 0))(1.0, 2.0, 3.0, 4.0)
    assert value == 28.0 and grads == (6.0, 14.0, 4.0)


def test_second_derivative_of_a_zero_power_is_zero() -> None:
    assert fj.grad(fj.grad(lambda x: x**0.0))(0.0) == 0.0
    assert fj.grad(fj.grad(lambda x: x**1.0))(0.0) == 0.0
    assert fj.grad(fj.grad(lambda x: x**2.5))(4.0) == pytest.approx(2.5 * 1.5 * 4.0**0.5)


def test_inner_of_scalars_and_missing_names_are_attribute_errors() -> None:
    assert_same(fnp.inner(1.5, 0.3), np.inner(1.5, 0.3))
    assert_same(fj.jit(lambda a: np.inner(a, 2.0))(np.arange(3.0)), np.inner(np.arange(3.0), 2.0))
    assert hasattr(fnp, "cumsum") and hasattr(fnp, "arctan2") and not hasattr(fnp, "frompyfunc")
    assert getattr(fnp, "frompyfunc", None) is None
    with pytest.raises(NotImplementedError, match="numpy.frompyfunc is not supported"):
        fnp.frompyfunc  # noqa: B018


def test_einsum_sublist_form() -> None:
    a, b = uniform(-1, 1, 2, 3), uniform(-1, 1, 3, 4)
    check(lambda m, x, y: (m.einsum(x, [0, 1], y, [1, 2], [0, 2]), m.einsum(x, [0, 1], y, [1, 2]), m.einsum(x, [1, 0])),
          a, b)


def test_float_floor_divide_and_remainder_follow_numpy() -> None:
    a, b = np.array([1.0, 0.5, 6.0, -1.0, 7.5]), np.array([0.1, 0.1, 0.2, 0.3, -2.0])
    check(lambda m, x, y: (m.floor_divide(x, y), m.remainder(x, y), x // y, x % y), a, b, compiled=True)
    unfused = fj.jit(lambda x, y: x % y, fuse=False)(a, b)
    np.testing.assert_array_equal(unfused, a % b)


def test_grad_of_a_one_element_non_scalar_output_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match=r"output has shape \(1,\).*needs a scalar output"):
        fj.grad(lambda x: x * 2.0)(np.ones(1))


def test_partition_puts_kth_in_place_with_smaller_before_and_larger_after() -> None:
    a = np.random.default_rng(6).standard_normal((4, 7))
    for fn in (fnp.partition, fj.jit(lambda x: np.partition(x, 3, axis=1))):
        out = np.asarray(fn(a, 3, axis=1) if fn is fnp.partition else fn(a))
        want = np.partition(a, 3, axis=1)
        np.testing.assert_array_equal(out[:, 3], want[:, 3])
        assert (out[:, :3] <= out[:, 3:4]).all() and (out[:, 4:] >= out[:, 3:4]).all()
    idx = np.asarray(fj.jit(lambda x: fnp.argpartition(x, 2))(a[0]))
    assert a[0][idx][2] == np.partition(a[0], 2)[2]
    with pytest.raises(ValueError, match="kth"):
        fnp.partition(a, 9, axis=1)


def test_r_and_c_concatenate_traced_pieces_slices_and_scalars() -> None:
    x, y = np.array([3.0, 1.0]), np.arange(3.0)
    got = fj.jit(lambda a, b: (fnp.r_[a, b, 0:3, 7.0], fnp.c_[b, b], fnp.c_[np.ones((3, 2)), b]))(x, y)
    for g, w in zip(got, (np.r_[x, y, 0:3, 7.0], np.c_[y, y], np.c_[np.ones((3, 2)), y]), strict=True):
        assert_same(g, w, "r_/c_")
    f32 = np.ones(3, np.float32)  # a Python scalar is weak: the pieces stay float32
    assert_same(fj.jit(lambda a: fnp.r_[a, 1.5])(f32), np.r_[f32, 1.5], "r_ with a Python float")


def test_where_with_one_argument_is_nonzero_when_concrete_and_refused_when_traced() -> None:
    cond = np.array([[True, False], [False, True]])
    for g, w in zip(fnp.where(cond), np.where(cond), strict=True):
        assert_same(g, w, "where(cond)")
    with pytest.raises(NotImplementedError, match="depends on the data"):
        fj.jit(lambda c: fnp.where(c))(cond)


def test_argwhere_and_flatnonzero_of_a_known_array_and_refused_for_a_traced_one() -> None:
    a = np.array([[0.0, 1.5, 0.0], [2.0, 0.0, -1.0]])
    assert_same(fnp.argwhere(a), np.argwhere(a), "argwhere")
    assert_same(fnp.flatnonzero(a), np.flatnonzero(a), "flatnonzero")
    assert_same(np.argwhere(fnp.asarray(a)), np.argwhere(a), "np.argwhere dispatch")
    for fn, name in ((np.argwhere, "argwhere"), (np.flatnonzero, "flatnonzero")):
        with pytest.raises(NotImplementedError, match=f"numpy.{name} of a traced array .*depends on the data"):
            fj.jit(fn)(a)


def test_the_coverage_document_agrees_with_the_code() -> None:
    """docs/numpy_coverage.md is `python -m fusejit coverage`'s output: every NumPy name it
    lists has the status the code gives it now, and every name supported now is listed
    (names another NumPy version lacks are not compared)."""
    from pathlib import Path

    from fusejit.tracer.numpy_coverage import coverage

    text = (Path(__file__).parent.parent / "docs" / "numpy_coverage.md").read_text()
    listed = dict(line.split(" | ", 1) for line in (row.strip("| ") for row in text.splitlines()
                                                     if row.startswith("| `")))
    listed = {name.strip("`"): status for name, status in listed.items()}
    now = coverage()
    stale = {n: (listed[n], now[n]) for n in listed.keys() & now.keys() if listed[n] != now[n]}
    assert not stale, f"regenerate docs/numpy_coverage.md (python -m fusejit coverage): {stale}"
    missing = [n for n, s in now.items() if s != "refused" and n not in listed]
    assert not missing, f"regenerate docs/numpy_coverage.md: {missing} are supported but not listed"


def test_searchsorted_compress_choose_matrix_transpose_divmod() -> None:
    a = np.array([-1.5, 0.0, 0.0, 2.0, np.nan])
    v = np.array([[0.0, -3.0, np.nan], [2.0, 9.0, 0.5]])
    for side in ("left", "right"):
        check(lambda m, x, y, side=side: m.searchsorted(x, y, side=side), a, v, compiled=True)
    check(lambda m, x: m.searchsorted(x, 0.0), a)
    check(lambda m, x, y: m.searchsorted(x, y, sorter=m.argsort(x)), a[::-1], v)
    check(lambda m, x: m.searchsorted(x, np.int32(2)), np.array([1, 2, 2, 3], np.int32), compiled=True)
    x = uniform(-2, 2, 3, 4)
    check(lambda m, a: m.compress([True, False, True, True], a, axis=1), x)
    check(lambda m, a: m.compress(np.array([0, 1, 1]), a.T, axis=None), x)
    idx = np.array([[0, 1, 2, 1], [2, 2, 0, 0], [1, 0, 0, 2]])
    check(lambda m, i, a: m.choose(i, [a, a * 2, 7.0]), idx, x, compiled=True)
    check(lambda m, i, a: m.choose(i - 1, [a[0], a[1]], mode="wrap"), idx, x)
    check(lambda m, i, a: m.choose(i * 3 - 2, [a[0], a[1], a[2]], mode="clip"), idx, x)
    with pytest.raises(ValueError, match="invalid entry"):
        fnp.choose(idx + 1, [x, x, x])
    check(lambda m, a: m.matrix_transpose(a), uniform(-1, 1, 2, 3, 4), compiled=True)
    check(lambda m, a: m.divmod(a, 0.75), x, compiled=True)
    check(lambda m, a: m.divmod(a, np.int32(3)), idx.astype(np.int32), compiled=True)
    assert_same(fnp.nonzero(idx), np.nonzero(idx))  # concrete (a traced one is refused: tests/test_numpy_api.py)
