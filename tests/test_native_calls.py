"""Kernels compiled without Numba's CPython wrapper, called through shared trampolines."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from numba.core import types

import fusejit as fj
from fusejit import config
from fusejit.runtime import native_calls


def steps(fn, *args):
    return fn.lower(*args).compile().executable._steps


@pytest.mark.parametrize("llvm", [False, True])
def test_a_kernel_is_compiled_without_a_cpython_wrapper_and_runs_through_a_trampoline(llvm):
    x = np.linspace(-2, 2, 50, dtype=np.float32)
    with config.override(llvm_kernels=llvm):
        f = fj.jit(lambda x: np.tanh(x) * 2.0 + 1.0)
        np.testing.assert_allclose(f(x), np.tanh(x) * 2 + 1, atol=1e-6)
        (st,) = steps(f, x)
    if llvm:  # printed as LLVM IR: no Numba function at all
        assert st.llvm is not None and st.dispatcher is None
    else:
        assert st.llvm is None and st.dispatcher.targetoptions["no_cpython_wrapper"]
    assert isinstance(st.entry_point, native_calls.NativeKernel)
    assert st.source.count("load(sizes, ") == len(st.lowered.kernel.ints)


def test_kernels_with_as_many_arrays_share_one_trampoline_whatever_their_dtypes():
    f32 = steps(fj.jit(lambda x, y: x * y + 1.0), *(np.ones(8, np.float32),) * 2)[0]
    f64 = steps(fj.jit(lambda x, y: x - y), np.ones(8), np.ones(8))[0]
    i64 = steps(fj.jit(lambda x, y: x + y * 3), *(np.arange(8),) * 2)[0]
    assert f32.source != f64.source != i64.source
    assert f32.entry_point.trampoline is f64.entry_point.trampoline is i64.entry_point.trampoline


def test_a_kernel_called_through_its_python_callable_writes_its_outputs():
    x = np.arange(12, dtype=np.float64)
    (st,) = steps(fj.jit(lambda x: x * 3.0), x)
    assert st.array_refs == [("param", 0), ("out", 0), ("const", 0)]  # 3.0 reaches it as data
    out = np.zeros_like(x)
    st.entry_point(x, out, np.array([3.0]), st.sizes)
    np.testing.assert_array_equal(out, x * 3)
    with pytest.raises(TypeError, match="takes 4 arguments, got 3"):
        st.entry_point(x, out, st.sizes)


@numba.njit(no_cpython_wrapper=True, no_cfunc_wrapper=True)
def _checked_copy(a, b, n):
    if n > a.size:
        raise ValueError("n is larger than the array")
    for i in range(n):
        b[i] = a[i]


def test_an_exception_raised_in_compiled_code_reaches_the_caller_through_the_trampoline():
    sig = (types.Array(types.float32, 1, "C"), types.Array(types.int64, 1, "C"), types.int64)
    _checked_copy.compile(sig)
    kernel = native_calls.bind(_checked_copy, sig, chunked=False)
    a, b = np.arange(4, dtype=np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="larger than the array"):
        kernel(a, b, 5)
    kernel(a, b, 4)
    np.testing.assert_array_equal(b, [0, 1, 2, 3])


def test_a_trampoline_rejects_an_argument_that_is_not_an_array():
    x = np.ones(5, np.float32)
    (st,) = steps(fj.jit(lambda x: x + 1.0), x)
    with pytest.raises(TypeError, match="not a NumPy array"):
        st.entry_point([1.0] * 5, np.empty(5, np.float32), st.sizes)

