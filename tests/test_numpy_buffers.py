"""NumPy buffers made inside a traced function (``np.zeros`` and friends) are known traced
arrays: Python's questions about them get NumPy's answers while their contents are known,
a traced write makes them traced, and NumPy elsewhere is untouched
(``fusejit.tracer.numpy_buffers``, ``TracedArray.known``)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.ir import primitives as P
from fusejit.tracer.numpy_buffers import BUFFER_CONSTRUCTORS
from fusejit.tracer.tracing import KNOWN_MAX_SIZE, TracedArray

RNG = np.random.default_rng(0)
X = RNG.standard_normal(6)
W = RNG.standard_normal((4, 6))


def one_hot_rows(w: Any, ids: Any) -> Any:
    """The tutorial's one-hot input: a fresh NumPy buffer written at a traced position."""
    out = []
    for t in range(len(ids)):
        x = np.zeros((w.shape[1], 1))
        x[ids[t]] = 1
        out.append(np.tanh(np.dot(w, x)))
    return np.concatenate(out, axis=1)


def concrete_questions(x: Any) -> Any:
    """Python control flow, int(), tolist(), asarray and a boolean index on a buffer that
    only concrete writes reached."""
    mask = np.zeros(x.shape[0], dtype=bool)
    mask[1:4] = True
    counts = np.zeros(3, dtype=np.int64)
    for i in (0, 2, 2):
        counts[i] += 1
    assert counts.tolist() == [1, 0, 2]
    assert [i.tolist() for i in np.where(mask)] == [[1, 2, 3]]
    if mask[0] or not mask.any():
        raise AssertionError("known contents answered wrongly")
    k = int(mask.sum())
    return x[mask] * k + np.asarray(counts)[2] + x[counts[2]]


def every_constructor(x: Any) -> Any:
    total = np.zeros(2) + np.ones(2) + np.full(2, 3.0) + np.ones_like(np.zeros(2)) + np.full_like(np.zeros(2), 5.0)
    e = np.empty(2)
    e[:] = x[:2]
    el = np.empty_like(np.ones(2, np.float32))
    el[0], el[1] = x[0], 1.0
    z = np.zeros_like(np.ones(2))
    z += x[1]
    return total + e + el + z


@pytest.mark.parametrize("fn", [one_hot_rows, concrete_questions, every_constructor])
@pytest.mark.parametrize("fuse", [True, False])
def test_numpy_buffers_made_inside_jit_match_numpy(fn: Any, fuse: bool) -> None:
    args = {one_hot_rows: (W, np.array([3, 0, 5])), concrete_questions: (X,), every_constructor: (X,)}[fn]
    want = fn(*args)  # NumPy itself
    got = fj.jit(fn, fuse=fuse)(*args)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


def test_gradient_through_a_one_hot_numpy_buffer_verifies() -> None:
    ids = np.array([1, 4, 4])
    assert fj.gradcheck(lambda w: np.sum(one_hot_rows(w, ids) ** 2), (W,))
    grad = fj.grad(lambda w: np.sum(one_hot_rows(w, ids)))(W)
    want = np.zeros_like(W)
    for i in ids:
        want[:, i] += 1 - np.tanh(W[:, i]) ** 2
    np.testing.assert_allclose(grad, want, rtol=1e-12)


def test_known_index_is_a_static_slice_not_a_gather() -> None:
    def f(x: Any) -> Any:
        i = np.zeros((), dtype=np.int64)
        i += 2
        return x[i]

    text = str(fj.jit(f).lower(X).optimized)
    assert "gather" not in text and "slice" in text


def test_a_traced_write_makes_the_buffer_traced() -> None:
    def f(x: Any) -> Any:
        buf = np.zeros(3)
        assert buf.known is not None  # noqa: PT017 - known while only constants reached it
        buf[0] = x[0]
        assert buf.known is None
        return bool(buf[1] == 0)

    with pytest.raises(fj.ConcretizationError, match=r"bool\(\) / `if`"):
        fj.jit(f)(X)


def test_operations_mixing_known_and_traced_values_are_traced() -> None:
    def f(x: Any) -> Any:
        buf = np.ones(6)
        both = buf + x
        assert isinstance(both, TracedArray) and both.known is None
        assert (buf * 2).known.tolist() == [2.0] * 6
        return both

    np.testing.assert_allclose(fj.jit(f)(X), X + 1)


def test_writes_into_a_numpy_buffer_simplify_to_the_values() -> None:
    def f(x: Any) -> Any:
        buf = np.zeros(8)
        buf[2:8] = x
        return buf

    fn = fj.jit(f).lower(X).optimized
    assert not any(op.prim in (P.select, P.scatter_add) for op in fn.ops), fn
    np.testing.assert_allclose(fj.jit(f)(X), np.concatenate([np.zeros(2), X]))


def test_large_buffers_are_known_until_written_and_take_traced_values() -> None:
    n = KNOWN_MAX_SIZE + 10

    def f(x: Any) -> Any:
        big = np.zeros(n)
        assert big[7] == 0 and big.known is not None  # noqa: PT017 - known when made
        big[5] = x[0]
        varied = np.full((n, 2), [1.0, 2.0])  # elements differ: too large for the IR
        assert type(varied) is np.ndarray
        return big.sum() + big[5] + varied[0, 1]

    np.testing.assert_allclose(fj.jit(f)(X), 2 * X[0] + 2.0)


def test_numpy_and_library_code_keep_making_numpy_arrays() -> None:
    seen = []

    def f(x: Any) -> Any:
        seen.append(type(np.pad(X, 1)))  # NumPy's own Python code makes a buffer (np.empty)
        seen.append(type(fnp.zeros(3)))  # fusejit's own: traced, as before
        return x

    fj.jit(f)(X)
    assert seen == [np.ndarray, TracedArray]


def test_numpy_is_its_own_outside_traces_and_in_threads_that_do_not_trace() -> None:
    originals = {name: getattr(np, name) for name in BUFFER_CONSTRUCTORS}
    inside = threading.Event()
    other_thread_done = threading.Event()
    other: list[Any] = []

    def other_thread() -> None:
        inside.wait()
        other.append(type(np.zeros(3)))
        other_thread_done.set()

    def f(x: Any) -> Any:
        inside.set()
        assert other_thread_done.wait(10)
        return x

    t = threading.Thread(target=other_thread)
    t.start()
    fj.jit(f)(X)
    t.join()
    assert other == [np.ndarray]
    assert {name: getattr(np, name) for name in BUFFER_CONSTRUCTORS} == originals
    assert type(np.zeros(3)) is np.ndarray


def test_the_callers_numpy_arrays_stay_writable() -> None:
    """Known contents are read-only views: a constant the traced function copies or
    computes with keeps its own flags."""
    constant = np.arange(6.0)

    def f(x: Any) -> Any:
        a = np.zeros(6)
        a[:] = constant
        return a + np.reshape(constant, (6,)) * 1.0 + x

    np.testing.assert_allclose(fj.jit(f)(X), 2 * np.arange(6.0) + X)
    assert constant.flags.writeable
    constant[0] = 1.0  # still the caller's to write
