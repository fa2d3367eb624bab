"""Programs the differential fuzzer (``fusejit.testing.fuzz``) found failing, shrunk.

Each case is a plain function over ``fnp`` with fixed inputs and NumPy's values written
out. It runs in each configuration; the configurations a still-open bug affects are
marked ``xfail(strict=True)`` with the bug's kind, so fixing the bug flips them (and the
mark must then be removed). ``test_expected_values_are_numpys`` keeps the table honest:
the same function with ``fnp`` bound to ``numpy`` gives the expected values.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.testing.fuzz import Tolerance, compare

CONFIGS = ("eager", "interp", "unfused", "fused")
JIT = ("unfused", "fused")


@dataclass(frozen=True)
class Case:
    fn: Callable[..., tuple]
    args: tuple[np.ndarray, ...]
    expected: tuple[np.ndarray, ...]  # NumPy's values
    bug: str | None = None  # the kind of the open bug (None: fixed)
    affects: tuple[str, ...] = CONFIGS  # the configurations the open bug makes fail
    exact: bool = False  # compare bit for bit (else with a small tolerance)


# --- floor_divide of +-inf by a finite float: NumPy gives nan, fusejit gave floor(x / y) = +-inf
#     (fuzz seed 200012; fixed by the floor_divide primitive)


def floordiv_of_inf(x0):
    v0 = fnp.floor_divide(x0, 0.75)
    return (v0,)


# --- remainder by +-inf: NumPy keeps x (same sign) or gives +-inf, fusejit gave
#     x - floor(x/y)*y = nan (fixed: fmod, then one correction)


def remainder_by_inf(x0):
    v0 = fnp.remainder(x0, fnp.inf)
    return (v0,)


# --- int64 floor_divide/remainder above 2**53 went through float64 and returned values
#     outside [0, y) (fixed)


def int64_remainder_above_2_53(x0):
    v0 = fnp.remainder(x0, 3)
    return (v0,)


# --- numpy.dot with a Python float is not NEP 50 weak: NumPy gives float64 (fixed)


def dot_with_python_float(x0):
    v0 = fnp.dot(x0, 2.0)
    return (v0,)


# --- einsum that sums away an index of an int32 (or bool) operand: NumPy keeps the dtype,
#     fusejit.numpy's einsum called sum, which promotes to int64 (fuzz seed 200291; fixed)


# --- a sum over no axes (of a 0-d array) returned its element: -0.0 where NumPy's sum,
#     which starts from +0.0, gives +0.0 (fuzz seed 5000459; fixed)


def sum_of_negative_zero(x0):
    v0 = fnp.sum(x0, axis=None, keepdims=True)
    return (fnp.reciprocal(v0),)


# --- argmin/argmax of a constant: the comparison with the running best read only the
#     accumulator, so it was hoisted out of the loop and the last index won (fuzz seed
#     5000547; fixed: nothing reading a variable the loop assigns is hoisted)


def arg_extremum_of_a_constant(x0):
    return (fnp.argmin(fnp.isfinite(x0), axis=0), fnp.argmax(fnp.zeros_like(x0), axis=0))


def einsum_sum_keeps_int32(x0):
    v0 = fnp.einsum("ij->j", x0)
    return (v0,)


# --- round(int array, decimals > 0): NumPy keeps the integer dtype, fusejit returned float64
#     (fuzz seeds 200881, 201049, 201164; fixed)


def round_int_decimals(x0):
    v0 = fnp.round(x0, 1)
    return (v0,)


# --- the lead's known bugs, as the fuzzer would shrink them (fixed: plain regression tests)


def reduce_non_last_axis_unit_last(x0):
    v0 = fnp.sum(fnp.exp(x0), axis=0)
    v1 = fnp.max(x0 * 2.0, axis=1)
    return (v0, v1)


def any_all_of_zero_size(x0):
    v0 = fnp.any(x0, axis=0)
    v1 = fnp.all(x0)
    return (v0, v1)


def concatenate_empty_slices(x0):
    v0 = fnp.concatenate([x0[:, 1:1], x0, x0[:, 2:2]], axis=1)
    return (v0 + 1.0,)


_f32 = np.float32
CASES: dict[str, Case] = {
    "reduce_non_last_axis_unit_last": Case(
        reduce_non_last_axis_unit_last,
        (np.array([[[0.5]], [[-1.0]], [[2.0]]], _f32),),
        (np.array([[9.405657]], _f32), np.array([[1.0], [-2.0], [4.0]], _f32)),
    ),
    "any_all_of_zero_size": Case(
        any_all_of_zero_size,
        (np.zeros((0, 3), np.bool_),),
        (np.array([False, False, False]), np.array(True)),
        exact=True,
    ),
    "concatenate_empty_slices": Case(
        concatenate_empty_slices,
        (np.arange(6.0).reshape(2, 3),),
        (np.arange(1.0, 7.0).reshape(2, 3),),
    ),
    "round_int_decimals": Case(
        round_int_decimals,
        (np.array([15, -25, 0], np.int32),),
        (np.array([15, -25, 0], np.int32),),
        exact=True,
    ),
    "sum_of_negative_zero": Case(
        sum_of_negative_zero,
        (np.array(-0.0, _f32),),
        (np.array(np.inf, _f32),),
        exact=True,
    ),
    "arg_extremum_of_a_constant": Case(
        arg_extremum_of_a_constant,
        (np.array([-4, -4, 3], np.int32),),
        (np.array(0, np.int64), np.array(0, np.int64)),
        exact=True,
    ),
    "einsum_sum_keeps_int32": Case(
        einsum_sum_keeps_int32,
        (np.array([[1, 2, 3], [4, 5, -6]], np.int32),),
        (np.array([5, 7, -3], np.int32),),
        exact=True,
    ),
    "floordiv_of_inf": Case(
        floordiv_of_inf,
        (np.array([-np.inf, np.inf, 2.0, -2.0], _f32),),
        (np.array([np.nan, np.nan, 2.0, -3.0], _f32),),
    ),
    "remainder_by_inf": Case(
        remainder_by_inf,
        (np.array([-1.0, 1.0, 2.5, 0.0], _f32),),
        (np.array([np.inf, 1.0, 2.5, 0.0], _f32),),
    ),
    "int64_remainder_above_2_53": Case(
        int64_remainder_above_2_53,
        (np.array([2**60 + 1, -(2**60) - 1, 7], np.int64),),
        (np.array([2, 1, 1], np.int64),),
        exact=True,
    ),
    "dot_with_python_float": Case(
        dot_with_python_float,
        (np.array([1.0, 2.0], _f32),),
        (np.array([2.0, 4.0], np.float64),),
    ),
}


def _with_module(fn: Callable[..., tuple], module: object) -> Callable[..., tuple]:
    """``fn`` with its global ``fnp`` bound to ``module``."""
    return types.FunctionType(fn.__code__, dict(fn.__globals__, fnp=module), fn.__name__)


def _run(case: Case, config: str) -> tuple[np.ndarray, ...]:
    from fusejit.ir.interpreter import run_function

    fn = case.fn
    runners = {
        "eager": lambda *a: fn(*a),
        "interp": lambda *a: run_function(fj.make_ir(fn)(*a), *a),
        "unfused": fj.jit(fn, fuse=False),
        "fused": fj.jit(fn),
    }
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return tuple(np.asarray(o) for o in runners[config](*case.args))


def _params() -> list:
    out = []
    for name, case in CASES.items():
        for config in CONFIGS:
            marks = []
            if case.bug is not None and config in case.affects:
                marks.append(pytest.mark.xfail(strict=True, reason=case.bug))
            out.append(pytest.param(name, config, id=f"{name}-{config}", marks=marks))
    return out


@pytest.mark.parametrize("name, config", _params())
def test_fuzz_regression(name: str, config: str):
    case = CASES[name]
    got = _run(case, config)
    assert len(got) == len(case.expected)
    tol = Tolerance(1e-6, 1e-6, None)
    for g, e in zip(got, case.expected, strict=True):
        bad = compare(e, g, case.exact, tol, None)
        assert bad is None, f"{bad[0]}: {bad[1]}"


@pytest.mark.parametrize("name", list(CASES))
def test_expected_values_are_numpys(name: str):
    case = CASES[name]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        got = _with_module(case.fn, np)(*case.args)
    for g, e in zip(got, case.expected, strict=True):
        g = np.asarray(g)
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=0 if case.exact else 1e-6)


def test_the_gradient_of_math_on_a_concatenated_variance_compiles_in_seconds():
    """Fuzz seed 6394: the fused gradient put sin, exp, tanh and cos of a concatenated
    value in one kernel with the concatenate's branches, and LLVM spent over ten minutes
    on it. A kernel now holds branches or math-library calls, not both."""
    from fusejit.codegen import can_lower
    from fusejit.codegen.rules import calls_math
    from fusejit.ir import primitives as P

    def loss(x1):
        v1 = fnp.concatenate([fnp.var(x1, axis=(2,))] * 2, axis=-2)
        v2 = fnp.sin(v1)
        return fnp.sum(fnp.tanh(fnp.exp(v2))) + fnp.sum(fnp.tanh(v2))

    x1 = np.random.default_rng(0).standard_normal((4, 1, 3))
    lowered = fj.jit(fj.grad(loss)).lower(x1)
    for group in lowered.fused.groups:
        branches = any(op.prim in (P.concatenate, P.pad) for op in group.ops)
        assert not (branches and any(calls_math(op) for op in group.ops))
        assert can_lower(group) is None
    eps = 1e-6
    e = np.zeros_like(x1)
    e[1, 0, 2] = eps
    numeric = (loss(x1 + e) - loss(x1 - e)) / (2 * eps)
    np.testing.assert_allclose(lowered.compile()(x1)[1, 0, 2], numeric, rtol=1e-5, atol=1e-8)


def test_a_group_split_after_fusion_keeps_the_ops_only_it_recomputed():
    """Fuzz seed 977: fusion split a group whose late outputs had two shapes; a convert
    it only recomputed (every reader recomputed it, so no kernel stored it) was dropped,
    and planning the call failed with a KeyError."""

    def program(x0):
        v2 = fnp.broadcast_to(fnp.all(x0, axis=-3) >= x0, (1, 2, 5, 6))
        return v2[:, [0, 0, -1]], fnp.astype(v2, fnp.float64)

    x0 = np.random.default_rng(977).random((1, 5, 6)) > 0.5
    for got, want in zip(fj.jit(program)(x0), _with_module(program, np)(x0), strict=True):
        np.testing.assert_array_equal(got, want)
