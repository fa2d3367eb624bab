"""How compiled scans run: loop invariants computed once before the loop, stacked outputs
written in place by the body, stacked buffers reused across calls. Each is checked by the
structure it leaves (ops in a body, copies made, arrays reused) and by results equal to
the reference interpreter's."""

from __future__ import annotations

import numpy as np
import pytest

import fusejit as fj
from fusejit.ir import primitives as P
from fusejit.ir import verify
from fusejit.ir.transforms.loop_invariants import hoist_scan_invariants
from fusejit.runtime import control
from fusejit.runtime.donation import DonationError

lax = fj.lax
RNG = np.random.default_rng(3)


def scans(fn):
    return [op for op in fn.ops if op.prim is P.scan]


def prims(fn):
    return [op.prim for op in fn.ops]


def assert_same(actual, expected, rtol=1e-6):
    for a, e in zip(fj.tree_leaves(actual), fj.tree_leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-7)


def normalized_rnn(w, b, xs, h0):
    """A step that normalizes and exponentiates its weight: the same work every step."""

    def step(h, x):
        wn = np.exp(w) / np.exp(w).sum(axis=0)
        return np.tanh(h @ wn.T + b + x), (h * h).sum()

    return lax.scan(step, h0, xs)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Loop-invariant code motion


def test_a_forward_scan_computes_its_invariants_once_before_the_loop():
    args = (f32(4, 4), f32(4), f32(6, 3, 4), f32(3, 4))
    opt = fj.jit(normalized_rnn).lower(*args).optimized
    (scan,) = scans(opt)
    body = scan.attrs["body"]
    assert P.exp not in prims(body) and P.reduce_sum in prims(body)  # (h * h).sum() depends on h
    before = opt.ops[: opt.ops.index(scan)]
    assert P.exp in [op.prim for op in before] and P.div in [op.prim for op in before]
    # The bias stays a broadcast read in place inside the body, not an array made outside.
    assert P.broadcast_in_dim in prims(body)
    verify(opt)
    assert_same(fj.jit(normalized_rnn)(*args), fj.jit(normalized_rnn, backend="interpret")(*args))


def test_a_gru_step_keeps_its_body_whole_when_nothing_pays_for_hoisting():
    """The weights' transposes fold into the products and the biases are broadcast in
    place: nothing of a GRU step is worth computing before the loop, so the pass leaves
    the scan alone (and its results bit for bit as they were)."""

    def gru(wi, wh, bi, bh, xs, h0):
        n = wh.shape[1]

        def step(h, x):
            gi, gh = x @ wi.T + bi, h @ wh.T + bh
            r = 1.0 / (1.0 + np.exp(-(gi[:, :n] + gh[:, :n])))
            z = 1.0 / (1.0 + np.exp(-(gi[:, n:2 * n] + gh[:, n:2 * n])))
            return (1.0 - z) * np.tanh(gi[:, 2 * n:] + r * gh[:, 2 * n:]) + z * h, None

        return lax.scan(step, h0, xs)[0]

    fn = fj.make_ir(gru)(f32(12, 5), f32(12, 4), f32(12), f32(12), f32(3, 2, 5), f32(2, 4))
    assert hoist_scan_invariants(fn) is fn


def test_invariants_of_nested_scans_leave_every_loop_they_do_not_depend_on():
    def program(w, xs, h0):
        def outer(h, x):
            def inner(c, _):
                return c * np.exp(w).sum() + x, None

            return lax.scan(inner, h, None, length=3)[0], None

        return lax.scan(outer, h0, xs)[0]

    args = (f32(4), f32(5, 4), f32(4))
    opt = fj.jit(program).lower(*args).optimized
    (outer,) = scans(opt)
    assert P.exp in prims(opt) and P.reduce_sum in prims(opt)
    (inner,) = scans(outer.attrs["body"])
    assert P.exp not in prims(outer.attrs["body"]) and P.exp not in prims(inner.attrs["body"])
    assert_same(fj.jit(program)(*args), fj.jit(program, backend="interpret")(*args))


def test_effects_size_inflating_ops_and_empty_scans_stay_in_the_loop():
    def program(b, xs, h0):
        def step(h, x):
            fj.debug.print("b sum {}", b.sum())  # printed every iteration (its sum moves out)
            return h + np.broadcast_to(b, h.shape) * 2.0 + x, None  # a 3-vector made 2x3

        return lax.scan(step, h0, xs)[0]

    fn = fj.make_ir(program)(f32(3), f32(4, 2, 3), f32(2, 3))
    body = scans(hoist_scan_invariants(fn))[0].attrs["body"]
    assert any(op.prim in P.EFFECTFUL for op in body.ops)
    assert P.reduce_sum not in prims(body) and P.mul in prims(body) and P.broadcast_in_dim in prims(body)
    empty = fj.make_ir(normalized_rnn)(f32(4, 4), f32(4), f32(0, 3, 4), f32(3, 4))
    assert hoist_scan_invariants(empty) is empty


def test_gradients_through_a_scan_with_hoisted_invariants_match_the_interpreter():
    def loss(w, b, xs, h0):
        h, ys = normalized_rnn(w, b, xs, h0)
        return (h**2).sum() + ys.sum()

    args = (RNG.standard_normal((4, 4)) * 0.5, RNG.standard_normal(4), RNG.standard_normal((5, 3, 4)),
            RNG.standard_normal((3, 4)))
    grad = fj.grad(loss, argnums=(0, 1, 2, 3))
    assert_same(fj.jit(grad)(*args), fj.jit(grad, backend="interpret")(*args), rtol=1e-10)
    fj.gradcheck(lambda w: loss(w, *args[1:]), (args[0],))


# ---------------------------------------------------------------------------------------
# Stacked outputs


@pytest.fixture
def row_copies(monkeypatch):
    """Counts the rows the scan drivers copy into stacked outputs."""
    count = [0]
    original = control.HostArrays.set_row

    def counting(y, i, value):
        count[0] += 1
        original(y, i, value)

    monkeypatch.setattr(control.HostArrays, "set_row", staticmethod(counting))
    return count


def test_a_compiled_body_writes_its_stacked_outputs_into_their_rows_without_copies(row_copies):
    def program(h0, xs):
        def step(h, x):
            h = np.tanh(h * 0.5 + x)
            return h, (h.sum(axis=-1), x * 2.0, x)  # computed, computed, an argument itself

        return lax.scan(step, h0, xs, reverse=True)

    args = (f32(3, 4), f32(7, 3, 4))
    for fuse in (True, False):
        row_copies[0] = 0
        assert_same(fj.jit(program, fuse=fuse)(*args), fj.jit(program, backend="interpret")(*args))
        assert row_copies[0] == 0


def test_a_stacked_output_that_is_also_the_carry_is_copied_and_correct(row_copies):
    def program(h0, xs):
        def step(h, x):
            h = h * 0.5 + x
            return h, h  # one value twice: the carry's array, and its row of the stack

        return lax.scan(step, h0, xs)

    args = (f32(2, 3), f32(5, 2, 3))
    h, hs = fj.jit(program)(*args)
    assert_same((h, hs), fj.jit(program, backend="interpret")(*args))
    assert row_copies[0] == 5


def test_the_driver_runs_scans_without_xs_without_ys_and_with_rows_copied_and_written(row_copies):
    """The driver's per-iteration arguments and result rows, made before the loop: no xs
    (``length=``), no stacked outputs, zero iterations, and a body whose stacked outputs
    are partly written in place and partly copied (the carry's own array), both ways."""

    def program(h0, xs, c):
        def step(h, x):
            h = np.tanh(h * c + x)
            return h, (h, h.sum(axis=-1), x * 2.0)  # the carry (copied), computed, computed

        def counter(k, _):
            return k * c + 1.0, None

        out = [lax.scan(step, h0, xs, reverse=r) for r in (False, True)]
        out.append(lax.scan(counter, h0, None, length=4))
        out.append(lax.scan(step, h0, xs[:0]))
        return out

    args = (f32(3, 4), f32(5, 3, 4), f32(3, 4))
    got = fj.jit(program)(*args)
    assert_same(got, fj.jit(program, backend="interpret")(*args), rtol=1e-5)  # float32 tanh: a few ulp
    assert row_copies[0] == 2 * 5  # the carry's row, each step of the two scans that stack it
    assert fj.tree_leaves(got[3])[1].shape == (0, 3, 4)


def test_the_carry_is_written_into_two_buffers_in_turn_and_each_call_returns_new_ones():
    """Swapped carries, one passed through unchanged and one also stacked: the body writes
    its carries into two buffers per carry, alternately, and the results are the right
    ones; a later call does not write over the carry an earlier one returned."""

    def program(a0, b0, c0, xs):
        def step(carry, x):
            a, b, c = carry
            a = np.tanh(a * 0.5 + x)
            return (b, a, c), (a, c * 2.0)  # swap a and b; c passes through

        return lax.scan(step, (a0, b0, c0), xs, reverse=True)

    args = (f32(3, 4), f32(3, 4), f32(3, 4), f32(5, 3, 4))
    jitted = fj.jit(program)
    exe = jitted.lower(*args).executable()
    (driver,) = [p for p in exe._parts if isinstance(p, control._Driver)]
    body = driver.nested[0]
    seen = []
    real = body.run
    body.run = lambda a, into=None: seen.append(into) or real(a, into)
    got = exe.run(list(args))
    assert_same(got, fj.jit(program, backend="interpret")(*args), rtol=1e-5)
    buffers = [{id(into[k]) for into in seen} for k in range(3)]
    assert all(len(ids) == 2 for ids in buffers)  # two per carry, used in turn
    assert [id(into[0]) for into in seen[:3]] == [id(seen[0][0]), id(seen[1][0]), id(seen[0][0])]
    assert {id(r) for r in got[:3]} <= set().union(*buffers)
    kept = [r.copy() for r in got]
    exe.run([a + 1.0 for a in args])
    for r, k in zip(got, kept, strict=True):
        np.testing.assert_array_equal(r, k)


def test_stacked_buffers_are_reused_across_calls_but_never_while_the_caller_holds_them():
    def loss(w, xs, h0):
        h, hs = lax.scan(lambda h, x: (np.tanh(h @ w + x), h), h0, xs)
        return (h**2).sum() + (hs**2).sum()

    args = (f32(4, 4) * 0.5, f32(6, 3, 4), f32(3, 4))
    step = fj.jit(fj.value_and_grad(loss))
    exe = step.lower(*args).executable()
    expected = step(*args)
    forward = next(p for p in exe._parts if isinstance(p, control._Driver) and not p.op.attrs["reverse"])
    step(*args)
    # Ids only: holding the arrays here would keep them from being reused.
    first = [id(a) for slot in forward.stacked.slots for a in slot if a is not None]
    assert first  # the residuals the backward sweep reads, stacked per step
    step(*args)
    again = [id(a) for slot in forward.stacked.slots for a in slot if a is not None]
    assert again == first  # the same arrays: no new pages to fault
    assert_same(step(*args), expected)

    scan = fj.jit(lambda xs, h0: lax.scan(lambda h, x: (h + x, h * 2.0), h0, xs))
    _, held = scan(args[1], args[2])
    kept = held.copy()
    for _ in range(3):
        _, fresh = scan(args[1] + 1.0, args[2])
        assert not np.may_share_memory(fresh, held)
    np.testing.assert_array_equal(held, kept)


# ---------------------------------------------------------------------------------------
# Compile modes


def test_a_function_with_a_scan_compiles_in_the_background_behind_the_interpreter(tmp_path):
    """``FUSEJIT_COMPILE=background``: calls run on the interpreter (scan included) until
    the drivers and their bodies are compiled, then on them (the bodies themselves are
    compiled by the background thread, never handed to the interpreter)."""
    from fusejit import config
    from fusejit.runtime.background import BackgroundExecutable

    def program(xs, h0):  # constants no other test uses: nothing is compiled already
        return lax.scan(lambda h, x: (np.tanh(h * 0.8123 + x), (h * 1.3579).sum()), h0, xs)

    args = (f32(5, 3), f32(3))
    with config.override(cache=True, cache_dir=str(tmp_path), compile="background", compile_workers="0"):
        f = fj.jit(program)
        early = f(*args)
        exe = f.lower(*args).executable()
        assert isinstance(exe, BackgroundExecutable) and exe.interpreted_calls >= 1
        compiled = exe.wait(timeout=600)
        late = f(*args)
    assert isinstance(compiled, control.ControlFlowExecutable)
    assert_same(late, early, rtol=1e-5)
    assert_same(late, fj.jit(program, backend="interpret")(*args), rtol=1e-5)


def test_a_step_with_a_scan_writes_its_update_over_a_donated_argument():
    """The update after the loop is written over the donated argument, which is consumed,
    and the result equals a call without donation; an argument the loop reads is not
    donated (a loop that ran zero times would return it unchanged)."""

    def step(v, w, xs, h0):
        h, _ = lax.scan(lambda h, x: (np.tanh(h @ w + x), None), h0, xs)
        return v - 0.1 * h  # one elementwise kernel reading v where it writes

    v, w, xs, h0 = f32(3, 4), f32(4, 4) * 0.5, f32(5, 3, 4), f32(3, 4)
    expected = fj.jit(step)(v, w, xs, h0)
    donating = fj.jit(step, donate_argnums=(0, 1))
    exe = donating.lower(v, w, xs, h0).executable()
    assert isinstance(exe, control.ControlFlowExecutable) and exe.donated == (0,)
    mine = v.copy()
    out = donating(mine, w, xs, h0)
    assert_same(out, expected)
    assert out.ctypes.data == mine.ctypes.data  # the update went into the donated buffer
    with pytest.raises(DonationError, match="donated"):
        donating(mine, w, xs, h0)
    np.testing.assert_array_equal(donating(v.copy(), w, xs, h0), out)  # w was not consumed
