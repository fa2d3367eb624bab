"""In-place updates trace: every form NumPy code mutates arrays with gives NumPy's result
eagerly, under ``jit`` (fused and unfused) and differentiated (``fusejit.tracer.inplace``).

Each case is written once against an array module ``xp``: NumPy itself is the reference,
``fusejit.numpy`` on concrete arrays is eager mode, and under ``jit`` both NumPy's own
functions (through the array protocols) and ``fusejit.numpy`` trace.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.ir import primitives as P
from fusejit.tracer.inplace import InputMutationWarning

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import numpy_char_rnn  # noqa: E402
import numpy_mlp  # noqa: E402

RNG = np.random.default_rng(0)
A = RNG.standard_normal((4, 5))
V5 = RNG.standard_normal(5)
IDX = np.array([3, -1, 0])
MASK = RNG.standard_normal((4, 5)) > 0


def where(fn: Callable[..., Any], text: str) -> str:
    """``path:line`` of the line of ``fn``'s source that contains ``text``."""
    lines, first = inspect.getsourcelines(fn)
    hits = [first + i for i, line in enumerate(lines) if text in line]
    assert len(hits) == 1, f"{text!r} must occur once in {fn.__name__}"
    return f"{inspect.getsourcefile(fn)}:{hits[0]}"


# ---------------------------------------------------------------------------------------
# The table: (name, function of (xp, *args), args). Functions copy what they mutate, so
# that the NumPy reference leaves the shared inputs alone.

def _set_int(xp, a, v):
    a = a.copy(); a[1] = v; a[-1, 0] = 7.0; return a  # noqa: E702
def _set_slice(xp, a, v):
    a = a.copy(); a[1:3, 2:] = v[:3]; return a  # noqa: E702
def _set_strided(xp, a, v):
    a = a.copy(); a[::2, 1::3] = v[:2]; return a  # noqa: E702
def _set_negative_step(xp, a, v):
    a = a.copy(); a[::-1, 0] = v[:4]; a[3:0:-2, 4] = -v[:2]; return a  # noqa: E702
def _set_ellipsis_newaxis(xp, a, v):
    a = a.copy(); a[..., 2] = v[:4]; a[None, 0] = v; return a  # noqa: E702
def _augmented_slices(xp, a, v):
    a = a.copy(); a[1:3] += v; a[:, 1] -= 2.0; a[2] *= v; a[0, 1:] /= 4.0; a[3] **= 2  # noqa: E702
    a[:, 4] //= 0.5; a[1] %= 0.7; return a  # noqa: E702
def _whole_array(xp, a, v):
    a = a.copy(); a += v; a -= 1.0; a *= a; a /= v + 10.0; return a  # noqa: E702
def _advanced(xp, a, v):
    a = a.copy(); a[[0, 2]] = v; a[:, [1, -1]] -= 1.0; return a  # noqa: E702
def _repeated_indices(xp, a, v):
    a = a.copy(); a[[1, 1, 3, -3]] += v[:4, None] * np.array([1.0, 2.0, 3.0, 4.0])[:, None]  # noqa: E702
    a[[0, 0]] = v[:2, None]; return a  # noqa: E702
def _traced_index(xp, a, v, idx):
    a = a.copy(); a[idx] = v; a[1, idx] += 1.0; return a  # noqa: E702
def _traced_repeated_index(xp, a, v, idx):
    a = a.copy(); a[xp.concatenate([idx, idx])] *= 2.0; return a  # noqa: E702
def _two_arrays(xp, a, v):
    a = a.copy(); a[[0, 1, 0], [2, 0, 2]] = v[:3]; a[[3], 1:3] += 1.0; return a  # noqa: E702
def _lanes(xp, a, v, idx):
    a = a[:3].copy(); a[range(3), idx] -= 1.0; a[range(3), 0] = v[:3]; return a  # noqa: E702
def _masks(xp, a, v, mask):
    a = a.copy(); a[a > 0.5] = 0.5; a[mask] = -v[0]; a[np.arange(4) > 1] += v; return a  # noqa: E702
def _views(xp, a, v):
    a = a.copy(); w = a[1:3]; w += 1.0; t = a.T; t[0] = v[:4]; r = a.reshape(-1); r[7] = 100.0  # noqa: E702
    col = a[:, 2]; a[0, 2] = -5.0; return a, col * 1.0, w  # noqa: E702
def _strided_reshape_copies(xp, a, v):
    a = a.copy(); r = a[:, ::2].reshape(-1); r[0] = 100.0; return a, r  # noqa: E702
def _view_of_view(xp, a, v):
    a = a.copy(); w = a[1:][:, ::2]; w[1:] = 0.0; u = a.T[1:3]; u *= v[:4]; return a  # noqa: E702
def _copyto(xp, a, v, mask):
    a = a.copy(); xp.copyto(a[1:3], v); b = a.copy(); xp.copyto(b, 0.0, where=mask); return a, b  # noqa: E702
def _ufunc_out(xp, a, v):
    a = a.copy(); xp.add(a, v, out=a); xp.exp(a[0], out=a[0]); xp.maximum(a, 0.5, out=a); return a  # noqa: E702
def _clip_out(xp, a, v):
    a = a.copy(); xp.clip(a, -0.5, v, out=a); return a  # noqa: E702
def _reduction_out(xp, a, v):
    o = xp.zeros(5); xp.sum(a, axis=0, out=o); m = xp.zeros((4, 1)); xp.mean(a, axis=1, keepdims=True, out=m)  # noqa: E702
    xp.max(a, axis=1, out=m[:, 0]); return o, m  # noqa: E702
def _dot_out(xp, a, v):
    o = xp.zeros(4); xp.dot(a, v, out=o); return o  # noqa: E702
def _fill(xp, a, v):
    a = a.copy(); a[1:3].fill(2.5); a.T[0].fill(-1.0); return a  # noqa: E702
def _add_at(xp, a, v):
    a = a.copy(); np.add.at(a, [1, 1, 3], v); np.subtract.at(a, (0, [2, 2]), 1.5); return a  # noqa: E702
def _fresh_buffer(xp, a, v):
    buf = xp.zeros((3, 5)); buf[0] = v; buf[1:, ::2] = a[:2, :3]; out = xp.empty_like(a); out[:] = a * 2  # noqa: E702
    return buf, out
def _aliasing(xp, a, v):
    a = a.copy(); b = a; b += 1.0; c = a.copy(); c[0] = 0.0; d = a.astype(a.dtype); d[1] = 0.0  # noqa: E702
    return a, c, d
def _dtypes(xp, a, v):
    i = (a * 10).astype(np.int32); i[0] = 2.7; i += 3; f = a.astype(np.float32); f += a  # noqa: E702
    b = a > 0; b |= a < -1; i64 = xp.zeros(5, np.int64); i64[1:] += i[0, 1:]; return i, f, b, i64  # noqa: E702
def _broadcasting(xp, a, v):
    a = a.copy(); a[:, 1:3] = v[:2]; a[1:3] += v[:, None][:2, :1]; a += v[None]; return a  # noqa: E702
def _masked_augmented(xp, a, v, mask):
    a = a.copy(); a[a > 0.5] *= 0.1; a[a < -1] += v[0]; a[a[:, 0] > 0] -= v; a[mask] **= 2  # noqa: E702
    i = (a * 10).astype(np.int64); i[i < 0] //= 3; return a, i  # noqa: E702
def _putmask_place(xp, a, v, mask):
    a = a.copy(); xp.putmask(a, mask, v[:3]); b = a.copy(); xp.place(b, ~mask, v[1:])  # noqa: E702
    i = (a * 10).astype(np.int64); xp.putmask(i, mask, [2.7, -3.2]); return a, b, i  # noqa: E702
def _put(xp, a, v, idx):
    a = a.copy(); xp.put(a, [0, -1, 0, 7], v[:3]); a.put(idx, -v[:2]); xp.put(a, [25, -30], 1.5, mode="wrap")  # noqa: E702
    xp.put(a, [99], v[4], mode="clip"); return a  # noqa: E702
def _fill_diagonal(xp, a, v):
    a = a.copy(); xp.fill_diagonal(a, v[:2]); t = xp.zeros((7, 3)); xp.fill_diagonal(t, v[3], wrap=True)  # noqa: E702
    c = xp.zeros((3, 3, 3)); xp.fill_diagonal(c, v[:3]); return a, t, c  # noqa: E702
def _sort_method(xp, a, v):
    a = a.copy(); a.sort(); b = a.copy(); b[1:3].sort(axis=0); return a, b  # noqa: E702

CASES: list[tuple[str, Callable[..., Any], tuple[Any, ...]]] = [
    ("int index", _set_int, (A, V5)),
    ("slice", _set_slice, (A, V5)),
    ("strided slice", _set_strided, (A, V5)),
    ("negative step", _set_negative_step, (A, V5)),
    ("ellipsis and newaxis", _set_ellipsis_newaxis, (A, V5)),
    ("augmented slices", _augmented_slices, (A, V5)),
    ("whole array", _whole_array, (A, V5)),
    ("integer array", _advanced, (A, V5)),
    ("repeated indices: last write wins", _repeated_indices, (A, V5)),
    ("traced index", _traced_index, (A, V5, IDX)),
    ("traced repeated index", _traced_repeated_index, (A, V5, IDX)),
    ("two index arrays", _two_arrays, (A, V5)),
    ("one index per lane", _lanes, (A, V5, np.array([4, 0, -2]))),
    ("boolean masks", _masks, (A, V5, MASK)),
    ("views write their base", _views, (A, V5)),
    ("a reshape NumPy copies is a copy", _strided_reshape_copies, (A, V5)),
    ("views of views", _view_of_view, (A, V5)),
    ("copyto", _copyto, (A, V5, MASK)),
    ("ufunc out=", _ufunc_out, (A, V5)),
    ("clip out=", _clip_out, (A, V5)),
    ("reduction out=", _reduction_out, (A, V5)),
    ("dot out=", _dot_out, (A, V5)),
    ("fill", _fill, (A, V5)),
    ("add.at accumulates", _add_at, (A, V5)),
    ("fresh buffers", _fresh_buffer, (A, V5)),
    ("aliases and copies", _aliasing, (A, V5)),
    ("dtypes and casting", _dtypes, (A, V5)),
    ("broadcasting", _broadcasting, (A, V5)),
    ("masked augmented assignment", _masked_augmented, (A, V5, MASK)),
    ("putmask and place", _putmask_place, (A, V5, MASK)),
    ("put", _put, (A, V5, IDX)),
    ("fill_diagonal", _fill_diagonal, (A, V5)),
    ("ndarray.sort", _sort_method, (A, V5)),
]
IDS = [name for name, _, _ in CASES]


def _expected(fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(np, *[np.array(a) for a in args])


def _check(got: Any, want: Any) -> None:
    got_leaves, want_leaves = fj.tree_leaves(got), fj.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves, strict=True):
        g = np.asarray(g)
        assert g.dtype == np.asarray(w).dtype and g.shape == np.shape(w)
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "fn", "args"), CASES, ids=IDS)
def test_eager_matches_numpy(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    _check(fn(fnp, *[np.array(a) for a in args]), _expected(fn, args))


# The "numpy spelling" runs NumPy's own functions on traced arrays, buffers made by
# np.zeros inside the function included (fusejit.tracer.numpy_buffers).
JIT_CASES = [
    pytest.param(name, fn, args, fuse, xp, id=f"{name}-{mode}")
    for name, fn, args in CASES
    for mode, fuse, xp in (("fused", True, fnp), ("unfused", False, fnp), ("numpy spelling", True, np))
]


@pytest.mark.parametrize(("name", "fn", "args", "fuse", "xp"), JIT_CASES)
def test_jit_matches_numpy(name: str, fn: Callable[..., Any], args: tuple[Any, ...], fuse: bool, xp: Any) -> None:
    jitted = fj.jit(lambda *xs: fn(xp, *xs), fuse=fuse)
    inputs = [np.array(a) for a in args]
    _check(jitted(*inputs), _expected(fn, args))
    for x, a in zip(inputs, args, strict=True):
        np.testing.assert_array_equal(x, a)  # the caller's arrays are untouched


GRAD_CASES = [c for c in CASES if c[0] not in ("dtypes and casting", "dot out=", "traced repeated index")]


@pytest.mark.parametrize(("name", "fn", "args"), GRAD_CASES, ids=[c[0] for c in GRAD_CASES])
def test_gradients_through_in_place_updates(name: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    def f(a: Any, v: Any, *rest: Any) -> Any:
        out = fn(fnp, a, v, *rest)
        return tuple(fnp.sin(o) for o in fj.tree_leaves(out) if o.dtype.kind == "f")

    assert fj.gradcheck(f, args)


# ---------------------------------------------------------------------------------------
# NumPy's errors, with the user's line


def test_augmented_assignment_follows_numpys_same_kind_casting() -> None:
    def f(i: Any, x: Any) -> Any:
        i = i.copy()
        i += x
        return i

    ints, floats = np.arange(3), np.ones(3)
    with pytest.raises(TypeError, match="Cannot cast ufunc 'add' output"):
        f(ints, floats)
    with pytest.raises(TypeError, match=r"numpy\.add: cannot cast the output from f64 to i64 .*'same_kind'") as info:
        fj.jit(f)(ints, floats)
    assert f"(at {where(f, 'i += x')})" in str(info.value)
    with pytest.raises(TypeError, match="same_kind"):
        fj.jit(lambda i: fnp.add(i, 1.5, out=i))(ints)  # a Python float makes float64, as in NumPy 2


def test_masked_augmented_assignment_run_many_times_on_one_line() -> None:
    """The line's bytecode is specialized after a few runs (3.11 calls ``__getitem__``
    straight from ``BINARY_SUBSCR``, leaving the frame's offset on its inline cache);
    every run must still be recognized."""

    def f(x: Any) -> Any:
        y = x.copy()
        for k in range(64):
            y[y > 0.01 * k] *= 0.99
        return y

    np.testing.assert_allclose(fj.jit(f)(A), f(A), rtol=1e-12)


def test_a_python_int_out_of_the_dtypes_range_raises_like_numpy() -> None:
    def f(x: Any) -> Any:
        b = x.copy()
        b[0] = 2**31
        return b

    ints = np.ones(4, np.int32)
    with pytest.raises(OverflowError, match="out of bounds for int32"):
        f(ints)
    with pytest.raises(OverflowError, match="Python integer 2147483648 out of bounds for int32"):
        fj.jit(f)(ints)


def test_writes_into_a_broadcast_view_are_refused_like_numpy() -> None:
    def f(x: Any) -> Any:
        b = np.broadcast_to(x, (3, 2))
        b[0] = 1.0
        return b

    with pytest.raises(ValueError, match="read-only"):
        f(np.ones(2))
    with pytest.raises(ValueError, match="assignment destination is read-only") as info:
        fj.jit(f)(np.ones(2))
    assert f"(at {where(f, 'b[0] = 1.0')})" in str(info.value)


def test_shape_errors_name_the_shapes_and_the_line() -> None:
    def setitem(x: Any) -> Any:
        x[1:3] = np.ones(3)
        return x

    def out(x: Any) -> Any:
        return np.add(x, np.ones((2, 3)), out=x)

    with pytest.raises(ValueError, match=r"could not broadcast input array from shape \(3,\) into shape \(2,\)") as info:
        fj.jit(setitem)(np.ones(4))
    assert f"(at {where(setitem, 'x[1:3] = np.ones(3)')})" in str(info.value)
    with pytest.raises(ValueError, match=r"non-broadcastable output operand with shape \(3,\)"):
        fj.jit(out)(np.ones(3))
    def out_of_bounds(x: Any) -> Any:
        x[[0, 4]] = 1.0
        return x

    with pytest.raises(IndexError, match="index 4 is out of bounds for axis 0 with size 4"):
        fj.jit(out_of_bounds)(np.ones(4))


def test_what_cannot_be_traced_says_so_with_the_line() -> None:
    def masked(x: Any) -> Any:
        x[x > 0] = np.arange(3.0)
        return x

    def outer_write(x: Any) -> Any:
        def inner(y: Any) -> Any:
            x[0] = y[0]
            return fnp.sum(y)

        return fj.grad(inner)(x)

    with pytest.raises(NotImplementedError, match="may not depend on how many elements the mask selects"):
        fj.jit(masked)(np.ones(3))
    with pytest.raises(TypeError, match="cannot change the arrays it closes over") as info:
        fj.jit(outer_write)(np.ones(3))
    assert f"(at {where(outer_write, 'x[0] = y')})" in str(info.value)


# ---------------------------------------------------------------------------------------
# Inputs, the IR and the simplifier


def test_mutating_an_input_warns_once_unless_donated_and_never_changes_the_callers_array() -> None:
    def step(w: Any, g: Any) -> Any:
        w -= 0.1 * g
        return w

    w, g = np.ones(3), np.full(3, 2.0)
    jitted = fj.jit(step)
    with pytest.warns(InputMutationWarning, match=r"writes into its argument w \(at .*\), which is not donated"):
        out = jitted(w, g)
    np.testing.assert_allclose(out, 0.8)
    np.testing.assert_array_equal(w, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jitted(w, np.ones((3,)))  # the same argument: warned once already
        jitted(w.astype(np.float32), np.ones(3, np.float32))  # a new signature, still once
        donated = fj.jit(step, donate_argnums=0)
        np.testing.assert_allclose(donated(np.ones(3), g), 0.8)


def test_ir_dump_shows_each_update_with_the_users_line() -> None:
    def f(x: Any, i: Any) -> Any:
        x = x.copy()
        x[1:3] += 1.0
        x[i] = 0.0
        return x

    text = fj.jit(f).lower(np.ones(5), np.array([0])).as_text("traced")
    slice_line = where(f, "x[1:3] += 1.0").rsplit("/", 1)[1]
    index_line = where(f, "x[i] = 0.0").rsplit("/", 1)[1]
    assert any(" pad " in line and slice_line in line for line in text.splitlines())
    assert any(" select " in line and slice_line in line for line in text.splitlines())
    assert any(" select " in line and index_line in line for line in text.splitlines())


def _ops(fn: Any) -> list[str]:
    return [op.prim.name for op in fn.ops]


def test_writes_into_a_fresh_zeros_buffer_become_the_written_values() -> None:
    def f(x: Any) -> Any:
        buf = fnp.zeros((4, 6))
        buf[1:3, ::2] = x
        return buf

    x = np.arange(6.0).reshape(2, 3)
    lowered = fj.jit(f).lower(x)
    assert "select" in _ops(lowered.traced)
    ops = _ops(lowered.optimized)
    assert "select" not in ops and "constant" not in ops  # no buffer, no mask: pads of x
    want = np.zeros((4, 6))
    want[1:3, ::2] = x
    np.testing.assert_array_equal(fj.jit(f)(x), want)


# ---------------------------------------------------------------------------------------
# Programs written the way NumPy tutorials write them


def _zero_buffer_selects(fn: Any) -> int:
    """Selects whose unselected operand is a constant zero: a write into a zero buffer
    left over after simplification."""
    producer = fn.producers()

    def is_zero(v: Any) -> bool:
        op = producer.get(v)
        while op is not None and op.prim in (P.broadcast_in_dim, P.reshape):
            op = producer.get(op.inputs[0])
        return op is not None and op.prim is P.constant and op.attrs["value"] in (0, 0.0)

    return sum(1 for op in fn.ops if op.prim is P.select and is_zero(op.inputs[2]))


def test_char_rnn_with_hand_written_backprop_runs_under_jit_and_matches_numpy() -> None:
    inputs, targets, hprev, params, mems = numpy_char_rnn.make_problem(hidden_size=16, vocab_size=8, seq_length=6)
    assert numpy_char_rnn.np is np  # the tutorial's code, NumPy import included
    want = numpy_char_rnn.train_step(inputs, targets, hprev, [p.copy() for p in params], [m.copy() for m in mems], 0.1)
    step = fj.jit(numpy_char_rnn.train_step, donate_argnums=(3, 4))
    got = step(inputs, targets, hprev, [p.copy() for p in params], [m.copy() for m in mems], 0.1)
    for g, w in zip(fj.tree_leaves(got), fj.tree_leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)
    optimized = step.lower(inputs, targets, hprev, params, mems, 0.1).optimized
    assert "scatter_add" not in str(optimized)
    assert _zero_buffer_selects(fj.ir.parse(str(optimized))) == 0


def test_mlp_with_hand_written_backprop_runs_under_jit_and_matches_numpy() -> None:
    X, y, params = numpy_mlp.make_problem(n_per_class=20, hidden=16)  # noqa: N806
    step = fj.jit(numpy_mlp.train_step, donate_argnums=(2, 3, 4, 5))
    reference = [p.copy() for p in params]
    jitted = [p.copy() for p in params]
    for _ in range(3):
        loss_np, *reference = numpy_mlp.train_step(X, y, *reference, 1e-3, 1.0)
        loss_fj, *jitted = step(X, y, *jitted, 1e-3, 1.0)
        np.testing.assert_allclose(loss_fj, loss_np, rtol=1e-12)
    for g, w in zip(jitted, reference, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-13)
    optimized = str(step.lower(X, y, *params, 1e-3, 1.0).optimized)
    assert "scatter_add" not in optimized and "reduce_max" not in optimized  # lanes are one select
    assert _zero_buffer_selects(fj.ir.parse(optimized)) == 0


def test_hand_written_rnn_gradients_equal_fj_grad_of_the_same_loss() -> None:
    inputs, targets, hprev, params, _ = numpy_char_rnn.make_problem(hidden_size=8, vocab_size=6, seq_length=5)
    _, *grads, _ = fj.jit(numpy_char_rnn.lossFun)(inputs, targets, hprev, *params)
    auto = fj.grad(lambda p: numpy_char_rnn.lossFun(inputs, targets, hprev, *p)[0])(params)
    for g, a in zip(grads, auto, strict=True):
        np.testing.assert_allclose(g, a, rtol=1e-9, atol=1e-12)
