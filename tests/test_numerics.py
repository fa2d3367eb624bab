"""Numerics of compiled kernels, each kind of bug as a table: reductions over every axis
subset with unit axes, fused kernels never turning finite results into inf/NaN, sums as
accurate as NumPy's, zero-size operands, and a bound on the size of generated kernels."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import fusejit as fj
import fusejit.nn as nn
import fusejit.numpy as fnp
from fusejit import config
from fusejit.codegen import common
from fusejit.ir.primitives import IRTypeError

MODES = {"fused": {}, "unfused": {"fuse": False}}


def axis_subsets(rank: int) -> list[tuple[int, ...]]:
    return [c for r in range(1, rank + 1) for c in itertools.combinations(range(rank), r)]


def every_reduction(x, i, np=fnp):
    """Float sums and maxima, int sums over every axis subset, and a row kernel (a
    reduction broadcast back over its rows); ``np=numpy`` gives NumPy's answers."""
    out = [x - np.max(x, axis=-1, keepdims=True)]
    for axes in axis_subsets(x.ndim):
        out += [np.sum(x, axis=axes), np.max(x, axis=axes), np.sum(i, axis=axes, keepdims=True)]
    return tuple(out)


# Every placement of unit axes in a rank-3 shape (and none): the unit axes take no loop,
# which changes which axis is innermost and so which strategy reduces.
UNIT_AXIS_SHAPES = [(2, 3, 1), (1, 3, 4), (2, 1, 4), (3, 1, 1), (1, 1, 5), (1, 3, 1), (2, 3, 4)]


def check_reductions(x: np.ndarray, i: np.ndarray, **jit_options) -> None:
    got = fj.jit(every_reduction, **jit_options)(x, i)
    for g, want in zip(got, every_reduction(x, i, np=np), strict=True):
        assert g.shape == want.shape and g.dtype == want.dtype
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", UNIT_AXIS_SHAPES, ids=str)
def test_reductions_over_every_axis_subset_with_unit_axes_match_numpy(shape, mode):
    rng = np.random.default_rng(1)
    check_reductions(rng.standard_normal(shape).astype(np.float32),
                     rng.integers(-50, 50, shape).astype(np.int32), **MODES[mode])


def every_sum(x, np=fnp):
    return tuple(np.sum(x, axis=axes) for axes in axis_subsets(x.ndim))


@pytest.mark.parametrize("shape", [(64, 1, 33), (33, 64, 1)], ids=str)
def test_parallel_sums_with_unit_axes_match_numpy(shape):
    """Above the parallel threshold the row, column and whole-array strategies use threads
    (a prange kernel compiles slowly: sums only)."""
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    with config.override(parallel_threshold=64):
        got = fj.jit(every_sum)(x)
    for g, want in zip(got, every_sum(x, np=np), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-5)


def test_the_gradient_of_a_broadcast_over_a_middle_axis_sums_that_axis():
    w = np.arange(6.0).reshape(2, 3, 1)
    grad = fj.jit(fj.grad(lambda w: fnp.sum(w * np.ones((2, 3, 4)))))(w)
    np.testing.assert_array_equal(grad, np.full((2, 3, 1), 4.0))
    assert fj.gradcheck(lambda w: fnp.sum(fnp.tanh(w * np.linspace(0, 1, 24).reshape(2, 3, 4))), (w,))


# ---------------------------------------------------------------------------------------
# Fused kernels may round differently, never to inf or NaN. Kernels are compiled without
# fast-math flags: with ``contract``, ``x*s - max(x*s)`` became fma(x, s, -max) whose
# exact product differs from the rounded max by up to half an ulp of x*s, which exp()
# turns into inf once |x*s| is large (a softmax of inf/inf = NaN).

SCALES = [np.float32(s) for s in (1e-30, 1.0, 3e4, 1e10, -1.7197e14, 1e37)]


@pytest.mark.parametrize("scale", SCALES, ids=lambda s: f"{s:g}")
@pytest.mark.parametrize("fn", [nn.softmax, nn.log_softmax], ids=lambda f: f.__name__)
def test_softmax_of_scaled_logits_is_finite_up_to_the_float32_range(fn, scale):
    x = np.array([[0.3, -1.2, 0.8], [2.0, 2.0, -3.0]], np.float32)
    z = (x * scale).astype(np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    want = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    if fn is nn.softmax:
        want = np.exp(want)
    for mode in MODES.values():
        got = fj.jit(lambda s: fn(s * scale), **mode)(x)
        assert np.isfinite(got).all(), (mode, got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_fused_product_minus_its_maximum_is_exactly_zero_at_the_maximum():
    x = np.array([0.3, -1.2, 0.8, 0.1], np.float32)
    s = np.float32(-1.7197e14)
    got = fj.jit(lambda x: x * s - fnp.max(x * s))(x)
    assert got[np.argmax(x * s)] == 0.0
    np.testing.assert_array_equal(got, x * s - np.max(x * s))


# ---------------------------------------------------------------------------------------
# Sums: blocked, with float64 totals for float32 data (every reduction strategy).


def relative_error(got, exact):
    return float(np.max(np.abs(np.asarray(got, np.float64) - exact) / np.maximum(np.abs(exact), 1e-300)))


SUM_CASES = {
    # name: (function, its float64 reference, data)
    "sum 1/255 x 1e5": (fnp.sum, np.sum, np.full(100_000, 1 / 255, np.float32)),
    "mean 1000.1 x 1e5": (fnp.mean, np.mean, np.full(100_000, 1000.1, np.float32)),
    "var": (fnp.var, np.var, np.random.default_rng(3).normal(1000.0, 1.0, 100_000).astype(np.float32)),
    "column sums": (lambda x: fnp.sum(x, axis=0), lambda x: np.sum(x, axis=0),
                    np.full((100_000, 3), 0.1, np.float32)),
    "row sums": (lambda x: fnp.sum(x, axis=1), lambda x: np.sum(x, axis=1), np.full((3, 100_000), 0.1, np.float32)),
    "softmax denominator": (lambda x: fnp.sum(fnp.exp(x), axis=-1), lambda x: np.sum(np.exp(x), axis=-1),
                            np.full((2, 100_000), -0.5, np.float32)),
}


@pytest.mark.parametrize("case", SUM_CASES)
def test_float32_sums_are_as_accurate_as_numpy(case):
    fn, ref, x = SUM_CASES[case]
    exact = ref(x.astype(np.float64))
    numpy_error = relative_error(ref(x), exact)
    got = fj.jit(fn)(x)
    assert got.dtype == np.float32
    # within two float32 roundings of the exact value, or NumPy's own error
    assert relative_error(got, exact) <= max(2 * np.finfo(np.float32).eps, numpy_error)


def test_a_parallel_whole_array_sum_is_accurate():
    x = np.full(1 << 19, 1 / 255, np.float32)  # above the parallel threshold: 64 chunks
    got = fj.jit(fnp.sum)(x)
    assert relative_error(got, np.sum(x.astype(np.float64))) <= 2 * np.finfo(np.float32).eps


# ---------------------------------------------------------------------------------------
# Zero-size operands: wherever NumPy accepts them.

ZERO_SIZE_CASES = {
    "any over an empty axis": (lambda x: fnp.any(x > 0, axis=0), lambda x: np.any(x > 0, axis=0), (0, 3)),
    "all over an empty axis": (lambda x: fnp.all(x > 0, axis=0), lambda x: np.all(x > 0, axis=0), (0, 3)),
    "any of everything": (lambda x: fnp.any(x), lambda x: np.any(x), (0, 3)),
    "all keepdims": (lambda x: fnp.all(x, axis=1, keepdims=True), lambda x: np.all(x, axis=1, keepdims=True),
                     (2, 0)),
    "any over a kept empty axis": (lambda x: fnp.any(x, axis=1), lambda x: np.any(x, axis=1), (0, 3)),
    "sum over an empty axis": (lambda x: fnp.sum(x, axis=0), lambda x: np.sum(x, axis=0), (0, 3)),
    "concatenate of empty slices": (lambda x: fnp.concatenate([x[1:1], x[1:1]]),
                                    lambda x: np.concatenate([x[1:1], x[1:1]]), (5,)),
    "concatenate with an empty piece": (lambda x: fnp.concatenate([x[1:1], fnp.exp(x)]),
                                        lambda x: np.concatenate([x[1:1], np.exp(x)]), (5,)),
    "stack of empties": (lambda x: fnp.stack([x, x + 1], axis=-1), lambda x: np.stack([x, x + 1], axis=-1), (0, 2)),
    "matmul with an empty contraction": (lambda x: x.T @ x, lambda x: x.T @ x, (0, 3)),
    "matmul with an empty result": (lambda x: x @ x.T, lambda x: x @ x.T, (0, 3)),
    "elementwise chain": (lambda x: fnp.tanh(x) * 2 + fnp.exp(x), lambda x: np.tanh(x) * 2 + np.exp(x), (3, 0)),
    "reversed empty slice": (lambda x: x[::-1] + 1, lambda x: x[::-1] + 1, (0, 4)),
    "broadcast against an empty axis": (lambda x: x + fnp.ones((1, 4)), lambda x: x + np.ones((1, 4)), (0, 4)),
}


@pytest.mark.parametrize("case", ZERO_SIZE_CASES)
def test_zero_size_operands_work_wherever_numpy_accepts_them(case):
    fn, ref, shape = ZERO_SIZE_CASES[case]
    x = np.zeros(shape)
    want = ref(x)
    for got in (fn(x), fj.jit(fn)(x), fj.jit(fn, fuse=False)(x)):
        got = np.asarray(got)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["max", "min"])
def test_an_extremum_over_an_empty_axis_raises_naming_the_function(name):
    fn = getattr(fnp, name)
    for call in (lambda x: fn(x, axis=0), fj.jit(lambda x: fn(x, axis=0))):
        with pytest.raises(IRTypeError, match=rf"^{name}: zero-size array .*test_numerics.py"):
            call(np.zeros((0, 3)))


# ---------------------------------------------------------------------------------------
# Generated kernels have a bounded size.


# Math computed inside the branch of a concatenate/pad piece made LLVM's loop vectorizer
# run for minutes (if-converting two inlined exps under a tanh); such producers get
# kernels of their own. Each of these compiled for minutes or ran out of memory.
BRANCHY_PROGRAMS = {
    "sum of a chain through a stack": (
        lambda x: fnp.sum(fnp.tanh(fnp.log(fnp.abs(fnp.stack([fnp.expm1(x)] * 2, axis=-1)) + 0.5)), axis=(1, 2)),
        lambda x: np.sum(np.tanh(np.log(np.abs(np.stack([np.expm1(x)] * 2, axis=-1)) + 0.5)), axis=(1, 2))),
    "tanh of a stack of exps": (lambda x: fnp.tanh(fnp.stack([fnp.exp(x)] * 2, axis=-1)),
                                lambda x: np.tanh(np.stack([np.exp(x)] * 2, axis=-1))),
    "sum of a concatenation": (
        lambda x: fnp.sum(fnp.tanh(fnp.concatenate([fnp.expm1(x), fnp.sin(x)], axis=-1)), axis=-1),
        lambda x: np.sum(np.tanh(np.concatenate([np.expm1(x), np.sin(x)], axis=-1)), axis=-1)),
    "padded exp": (lambda x: fnp.tanh(fnp.pad(fnp.exp(x), ((1, 1), (0, 2)))),
                   lambda x: np.tanh(np.pad(np.exp(x), ((1, 1), (0, 2))))),
}


@pytest.mark.parametrize("case", BRANCHY_PROGRAMS)
def test_math_inside_concatenate_and_pad_pieces_compiles_quickly_and_matches_numpy(case):
    fn, ref = BRANCHY_PROGRAMS[case]
    x = np.random.default_rng(4).random((5, 3))
    np.testing.assert_allclose(fj.jit(fn)(x), ref(x), rtol=1e-12)


def deep_chain(x):
    for _ in range(5):
        x = fnp.tanh(x * 1.5)
    return x


def test_a_group_over_the_kernel_size_bound_is_split_and_still_right(monkeypatch):
    monkeypatch.setattr(common, "MAX_KERNEL_SIZE", 5 * common.MATHLIB_CALL_SIZE - 1)  # under 5 tanh
    x = np.linspace(-1, 1, 7)
    lowered = fj.jit(deep_chain).lower(x)
    assert len(lowered.fused.groups) == 1
    compiled = lowered.compile()
    assert len(compiled.kernels) > 5  # one kernel per op (each tanh in its own)
    want = x
    for _ in range(5):
        want = np.tanh(want * 1.5)
    np.testing.assert_allclose(compiled(x), want, rtol=1e-12)


def test_kernel_size_counts_each_inlined_math_call():
    from fusejit.codegen.exprs import MathCall
    from fusejit.codegen.kernel import KernelBuilder
    from fusejit.ir.dtypes import DType

    b = KernelBuilder()
    src, dst = b.array(DType.f64, "in"), b.array(DType.f64, "out")
    with b.loop(b.int_param("n", 8)) as i:
        v = b.load(src, i)
        b.store(dst, i, MathCall("exp", (MathCall("exp", (v,), DType.f64),), DType.f64))
    # the loop, the load, and a store holding two calls
    assert common.kernel_size(b.finish()) == 1 + 1 + 1 + 2 * common.MATHLIB_CALL_SIZE
