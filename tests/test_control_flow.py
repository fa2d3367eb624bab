"""fj.lax: scan, fori_loop, while_loop, cond, switch. IR text round trips, the reference
interpreter against plain Python loops, compiled == interpreted, derivatives by finite
differences (both modes, second order), batching, and the structure of what compiles."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest

import fusejit as fj
from fusejit.ir import parse, verify
from fusejit.ir import primitives as P
from fusejit.ir.transforms.autodiff_control import NotReverseDifferentiableError

lax = fj.lax
RNG = np.random.default_rng(0)
State = namedtuple("State", "h count")


def rnn_step(w):
    def step(h, x):
        h = np.tanh(h @ w + x)
        return h, h.sum(axis=-1)

    return step


def python_scan(f, init, xs, reverse=False):
    """What lax.scan means, as a Python loop (JAX's documented semantics)."""
    carry, ys = init, [None] * len(xs)
    for i in reversed(range(len(xs))) if reverse else range(len(xs)):
        carry, ys[i] = f(carry, xs[i])
    return carry, np.stack(ys) if ys else None


def ops_of(fn):
    """Every op of ``fn`` and of the functions its ops hold."""
    out, stack = [], [fn]
    while stack:
        f = stack.pop()
        out += f.ops
        stack += [g for op in f.ops for g in op.functions()]
    return out


# ---------------------------------------------------------------------------------------
# IR text and the reference interpreter


def test_scan_while_and_cond_round_trip_through_text_and_verify():
    w = RNG.standard_normal((3, 3))

    def program(xs, h0, n, p):
        h, ys = lax.scan(rnn_step(w), h0, xs, reverse=True)
        h = lax.fori_loop(0, n, lambda i, v: v * 0.5, h)
        return lax.switch(p, [lambda a: a, lambda a: -a, lambda a: a * ys.sum()], h)

    fn = fj.make_ir(program)(RNG.standard_normal((4, 2, 3)), np.zeros((2, 3)), 3, 1)
    assert {op.prim.name for op in fn.ops} >= {"scan", "while_loop", "cond"}
    text = str(fn)
    assert str(verify(parse(text))) == text
    assert "branches=(@" in text and "body=@" in text and "reverse=true" in text


def test_the_interpreter_runs_scan_like_a_python_loop_forward_and_reverse():
    w = RNG.standard_normal((3, 3))
    xs, h0 = RNG.standard_normal((5, 2, 3)), RNG.standard_normal((2, 3))
    for reverse in (False, True):
        h, ys = lax.scan(rnn_step(w), h0, xs, reverse=reverse)  # eager: the interpreter
        h_ref, ys_ref = python_scan(rnn_step(w), h0, xs, reverse)
        np.testing.assert_allclose(h, h_ref, rtol=1e-12)
        np.testing.assert_allclose(ys, ys_ref, rtol=1e-12)


def test_scan_carries_pytrees_and_stacks_pytree_outputs():
    def step(state, x):
        h = state.h + x["a"] * x["b"]
        return State(h, state.count + 1), {"h": h, "neg": [-h]}

    xs = {"a": np.arange(6.0).reshape(3, 2), "b": np.ones((3, 2), np.float32)}
    state, ys = lax.scan(step, State(np.zeros(2), 0), xs)
    assert isinstance(state, State) and int(state.count) == 3
    np.testing.assert_allclose(state.h, [6.0, 9.0])
    np.testing.assert_allclose(ys["neg"][0], -ys["h"])
    assert ys["h"].shape == (3, 2)


def test_a_zero_length_scan_returns_the_init_and_empty_stacks():
    carry, ys = lax.scan(lambda c, x: (c + x, c * 2), np.ones(3), np.zeros((0, 3)))
    np.testing.assert_array_equal(carry, np.ones(3))
    assert ys.shape == (0, 3)
    carry, ys = fj.jit(lambda xs: lax.scan(lambda c, x: (c + x, c * 2), np.ones(3), xs))(np.zeros((0, 3)))
    np.testing.assert_array_equal(carry, np.ones(3))
    assert ys.shape == (0, 3)


def test_fori_loop_while_loop_cond_and_switch_agree_with_python():
    assert lax.fori_loop(2, 7, lambda i, v: v + i, 0) == sum(range(2, 7))
    assert lax.fori_loop(5, 2, lambda i, v: v + i, 10) == 10
    assert lax.while_loop(lambda v: v < 100, lambda v: v * 3, 1) == 243
    assert lax.cond(False, lambda x: x + 1, lambda x: x - 1, 5.0) == 4.0
    branches = [lambda x: x + 1, lambda x: x * 10, lambda x: -x]
    assert [float(lax.switch(i, branches, 2.0)) for i in (-3, 0, 1, 2, 9)] == [3.0, 3.0, 20.0, -2.0, -2.0]


def test_fori_loop_is_a_scan_with_static_bounds_and_a_while_loop_with_traced_ones():
    static = fj.make_ir(lambda x: lax.fori_loop(0, 3, lambda i, v: v * 2, x))(np.ones(2))
    traced = fj.make_ir(lambda n, x: lax.fori_loop(0, n, lambda i, v: v * 2, x))(3, np.ones(2))
    assert [op.prim for op in static.ops if op.prim.kind is P.OpKind.CALL] == [P.scan]
    assert [op.prim for op in traced.ops if op.prim.kind is P.OpKind.CALL] == [P.while_loop]
    assert fj.jit(lambda n, x: lax.fori_loop(0, n, lambda i, v: v * 2, x))(3, np.ones(2)).tolist() == [
        8.0,
        8.0,
    ]


# ---------------------------------------------------------------------------------------
# Errors


def test_unroll_runs_k_steps_per_iteration_with_the_results_of_one_step_per_iteration():
    """``unroll=k``: a scan of length // k over blocks whose body holds k copies of the
    step, then a scan of the step over the length % k slices left; every result equals
    the plain scan's, bit for bit on the interpreter, forward and reverse, for lengths
    with and without a remainder, shorter than k, and zero."""
    w = RNG.standard_normal((3, 3)) * 0.5

    def step(state, x):
        h = np.tanh(state.h @ w + x["a"])
        return State(h, state.count + 1), {"h": h, "s": h.sum(axis=-1)}

    for n in (0, 1, 6, 7):
        xs, h0 = {"a": RNG.standard_normal((n, 2, 3))}, State(RNG.standard_normal((2, 3)), np.int32(0))
        for reverse in (False, True):
            expected = lax.scan(step, h0, xs, reverse=reverse)
            for unroll in (2, 3, True, 10):
                got = lax.scan(step, h0, xs, reverse=reverse, unroll=unroll)
                for a, e in zip(fj.tree_leaves(got), fj.tree_leaves(expected), strict=True):
                    assert a.dtype == e.dtype and a.shape == e.shape
                    np.testing.assert_array_equal(a, e)

    xs, h0 = RNG.standard_normal((7, 2, 3)), RNG.standard_normal((2, 3))
    fn = fj.make_ir(lambda xs, h0: lax.scan(rnn_step(w), h0, xs, unroll=3))(xs, h0)
    scans = [op for op in fn.ops if op.prim is P.scan]
    assert [op.attrs["length"] for op in scans] == [2, 1]
    assert [sum(o.prim is P.tanh for o in op.attrs["body"].ops) for op in scans] == [3, 1]

    def loss(w, xs, h0, unroll):
        h, ys = lax.scan(rnn_step(w), h0, xs, reverse=True, unroll=unroll)
        return (h**2).sum() + (ys * ys).sum()

    expected = fj.grad(loss, argnums=(0, 1, 2))(w, xs, h0, 1)
    for actual in (fj.jit(fj.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(w, xs, h0, 4),
                   fj.grad(loss, argnums=(0, 1, 2))(w, xs, h0, 4)):
        for a, e in zip(actual, expected, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-14)


def test_a_carry_whose_type_changes_is_an_error_naming_the_component():
    with pytest.raises(TypeError, match=r"init\[1\]\['h'\] has type f32\[2\] but .* f64\[2\]"):
        lax.scan(
            lambda c, x: ((c[0], {"h": c[1]["h"] * np.float64(2)}), x),
            (0.0, {"h": np.ones(2, np.float32)}),
            np.ones((2, 1)),
        )
    with pytest.raises(TypeError, match="same structure"):
        lax.scan(lambda c, x: ((c, c), x), np.ones(2), np.ones((2, 1)))
    with pytest.raises(TypeError, match="must return a pair"):
        lax.scan(lambda c, x: c, np.ones(2), np.ones((2, 1)))
    with pytest.raises(TypeError, match=r"init_val.* has type i64\[\] but .* f64\[\]"):
        lax.while_loop(lambda v: v < 3, lambda v: v / 2, np.int64(1))


def test_bad_lengths_predicates_and_branches_are_clear_errors():
    with pytest.raises(ValueError, match=r"leading axes differ \(xs\[0\]: 2, xs\[1\]: 3"):
        lax.scan(lambda c, x: (c, x), 0.0, (np.ones(2), np.ones(3)))
    with pytest.raises(ValueError, match="pass length="):
        lax.scan(lambda c, x: (c, c), 0.0, None)
    with pytest.raises(TypeError, match="must return a boolean scalar"):
        lax.while_loop(lambda v: v, lambda v: v, 1.0)
    with pytest.raises(TypeError, match=r"output 0 is f32\[2\] in false_fun and f64\[2\] in true_fun"):
        lax.cond(True, lambda x: x, lambda x: x.astype(np.float32), np.ones(2))
    with pytest.raises(TypeError, match="integer scalar"):
        lax.switch(1.5, [lambda: 0.0])


def test_reverse_mode_through_while_loop_suggests_scan():
    f = lambda x: lax.while_loop(lambda v: v[0] < 3, lambda v: (v[0] + 1, v[1] * x), (0, x))[1].sum()  # noqa: E731
    with pytest.raises(
        NotReverseDifferentiableError, match=r"test_control_flow.py:\d+\) cannot .* fj.lax.scan.*fori_loop"
    ):
        fj.grad(f)(np.ones(2))


# ---------------------------------------------------------------------------------------
# Derivatives


def test_gradients_of_scan_match_finite_differences_forward_and_reverse():
    w, xs, h0 = RNG.standard_normal((3, 3)) * 0.5, RNG.standard_normal((4, 2, 3)), RNG.standard_normal((2, 3))
    for reverse in (False, True):

        def loss(w, xs, h0, reverse=reverse):
            h, ys = lax.scan(rnn_step(w), h0, xs, reverse=reverse)
            return (h**2).sum() + (ys * ys).sum()

        assert fj.gradcheck(loss, (w, xs, h0))
        # second order: the gradient's own gradient (a reverse scan of a reverse scan)
        assert fj.gradcheck(lambda w, h0: (fj.grad(loss, argnums=(0, 2))(w, xs, h0)[0] ** 2).sum(), (w, h0))


def test_gradients_of_cond_and_fori_loop_match_finite_differences_to_second_order():
    def branchy(x, y):
        return lax.cond(x.sum() > 0, lambda a, b: np.sin(a) * b, lambda a, b: a * a + b, x, y).sum()

    x, y = RNG.standard_normal(3), RNG.standard_normal(3)
    for sign in (1, -1):
        assert fj.gradcheck(branchy, (sign * np.abs(x), y))
        assert fj.gradcheck(lambda x, y: (fj.grad(branchy)(x, y) ** 2).sum(), (sign * np.abs(x), y))
    assert fj.gradcheck(lambda x: lax.fori_loop(0, 3, lambda i, v: np.sin(v) * x + i, x).sum(), (x,))


def test_forward_mode_of_every_loop_matches_finite_differences():
    x, t = RNG.standard_normal(3), RNG.standard_normal(3)

    def loops(x):
        v = lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, np.sin(c[1]) * x), (0, x))[1]
        v = lax.switch(1, [lambda a: a, lambda a: a * a], v)
        return lax.scan(lambda c, xi: (c * xi, c), v, np.stack([x, x]))[0]

    _, tangent = fj.jvp(loops, (x,), (t,))
    eps = 1e-6
    numeric = (loops(x + eps * t) - loops(x - eps * t)) / (2 * eps)
    np.testing.assert_allclose(tangent, numeric, rtol=1e-6, atol=1e-8)


def test_the_backward_scan_saves_per_step_values_and_hoists_loop_invariants():
    """The forward scan stacks what changes per step (h) but neither the weights nor the
    transposed weight the backward pass multiplies by, which is computed once."""
    w, xs, h0 = np.ones((3, 5)), np.ones((7, 2, 5)), np.ones((2, 3))
    fn = fj.make_ir(
        fj.grad(lambda w: lax.scan(lambda h, x: (np.tanh(h @ w[:, :3] + x[:, :3]), 0.0), h0, xs)[0].sum())
    )(w)
    scans = [op for op in fn.ops if op.prim is P.scan]
    assert len(scans) == 2 and scans[1].attrs["reverse"] is True
    stacked = [v.shape for v in scans[0].outputs[2:]]
    assert stacked and all(s[0] == 7 and s[1:] != (3, 3) for s in stacked)


def test_grad_inside_a_loop_and_a_loop_inside_grad_compile_like_the_interpreter():
    w, xs = RNG.standard_normal((3, 3)) * 0.5, RNG.standard_normal((4, 2, 3))

    def sgd(w, xs):
        def step(w, x):  # a training loop: the gradient is taken inside the body
            g = fj.grad(lambda w: np.tanh(x @ w).sum())(w)
            return w - 0.1 * g, (g * g).sum()

        return lax.scan(step, w, xs)

    def nested(w):  # a scan inside a scan inside grad
        return lax.scan(lambda h, x: (lax.scan(rnn_step(w), h, x[None])[0], 0.0), np.ones((2, 3)), xs)[
            0
        ].sum()

    for fun, args in ((sgd, (w, xs)), (fj.grad(nested), (w,))):
        expected = fj.jit(fun, backend="interpret")(*args)
        actual = fj.jit(fun)(*args)
        for a, e in zip(fj.tree_leaves(actual), fj.tree_leaves(expected), strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Compiled execution


def test_the_loop_body_compiles_once_whatever_the_length_and_calls_never_retrace():
    w = (0.3 * RNG.standard_normal((8, 8))).astype(np.float32)  # contracting: rounding does not grow
    jitted = fj.jit(lambda xs, h0: lax.scan(rnn_step(w), h0, xs))
    kernels = []
    for length in (3, 50):
        xs, h0 = RNG.standard_normal((length, 4, 8)).astype(np.float32), np.zeros((4, 8), np.float32)
        compiled = jitted.lower(xs, h0).compile()
        kernels.append(len(compiled.kernels))
        h, ys = jitted(xs, h0)
        h_ref, ys_ref = python_scan(rnn_step(w), h0, xs)
        np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)
        jitted(xs, h0)
    assert kernels[0] == kernels[1]
    assert jitted.cache_info().misses == 2  # one compilation per length, none per call


def test_cond_with_a_traced_predicate_runs_the_chosen_branch_compiled():
    f = fj.jit(lambda p, x: lax.cond(p > 0, lambda a: np.exp(a), lambda a: a * -2.0, x))
    x = RNG.standard_normal(4).astype(np.float32)
    np.testing.assert_allclose(f(np.float32(1), x), np.exp(x), rtol=1e-6)
    np.testing.assert_allclose(f(np.float32(-1), x), x * -2.0, rtol=1e-6)
    assert f.cache_info().misses == 1


def test_compiled_loops_equal_the_interpreter_on_pytrees_reverse_and_nested_loops():
    def program(xs, h0, n):
        def outer(state, x):
            inner = lax.fori_loop(0, 2, lambda i, h: np.tanh(h + x["a"] * i), state.h)
            return State(inner, state.count + 1), {"h": inner, "c": state.count}

        state, ys = lax.scan(outer, State(h0, np.int32(0)), xs, reverse=True)
        k = lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 0.5), (0, state.h))[1]
        return state, ys, k

    args = ({"a": RNG.standard_normal((3, 2)).astype(np.float32)}, np.ones(2, np.float32), 4)
    expected = fj.jit(program, backend="interpret")(*args)
    for fuse in (True, False):
        actual = fj.jit(program, fuse=fuse)(*args)
        for a, e in zip(fj.tree_leaves(actual), fj.tree_leaves(expected), strict=True):
            assert a.dtype == e.dtype and a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Batching


def test_vmap_of_scan_cond_and_while_loop_equals_one_call_per_example():
    w = RNG.standard_normal((3, 3))
    xs, h0 = RNG.standard_normal((4, 5, 3)), RNG.standard_normal(3)
    out = fj.vmap(lambda xs: lax.scan(rnn_step(w), h0, xs), in_axes=0)(xs)
    for i in range(4):
        ref = lax.scan(rnn_step(w), h0, xs[i])
        np.testing.assert_allclose(out[0][i], ref[0], rtol=1e-12)
        np.testing.assert_allclose(out[1][i], ref[1], rtol=1e-12)
    f = lambda p, x: lax.cond(p > 0, lambda a: np.sin(a), lambda a: a * 2, x)  # noqa: E731
    ps, x = np.array([1.0, -1.0, 2.0]), RNG.standard_normal((3, 2))
    np.testing.assert_allclose(fj.vmap(f)(ps, x), np.stack([f(ps[i], x[i]) for i in range(3)]))
    g = lambda n, x: lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, c[1] * 2.0), (0, x))[1]  # noqa: E731
    ns = np.array([1, 3, 0])
    np.testing.assert_allclose(fj.jit(fj.vmap(g))(ns, x), np.stack([g(ns[i], x[i]) for i in range(3)]))


def test_a_loop_that_runs_zero_times_returns_a_fresh_copy_of_its_argument():
    x = np.arange(3.0)
    out = fj.jit(lambda x, n: lax.fori_loop(0, n, lambda i, v: v * 2, x))(x, 0)
    np.testing.assert_array_equal(out, x)
    assert not np.may_share_memory(out, x)
    carry, _ = fj.jit(lambda x, xs: lax.scan(lambda c, xi: (c + xi, xi), x, xs))(x, np.zeros((0, 3)))
    assert not np.may_share_memory(carry, x)
    assert not np.may_share_memory(lax.fori_loop(0, 0, lambda i, v: v, x), x)  # eagerly too


def test_a_python_scalar_carry_takes_the_dtype_the_body_gives_it_as_in_jax():
    xs = np.ones((3, 2), np.float32)
    total, partial = lax.scan(lambda c, x: (c + x.sum(), c), 0, xs)
    assert total.dtype == np.float32 and float(total) == 6.0 and partial.tolist() == [0.0, 2.0, 4.0]
    assert lax.while_loop(lambda c: c < 2, lambda c: c + np.float32(0.5), 0).dtype == np.float32


def test_a_cond_of_cheap_branches_becomes_selects_that_fuse_and_a_constant_index_picks_its_branch():
    f = fj.jit(lambda p, x: lax.cond(p > 0, lambda a: a * 2, lambda a: -a, x) + 1)
    x = np.arange(4, dtype=np.float32)
    lowered = f.lower(np.float32(1), x)
    assert not any(op.prim is P.cond for op in lowered.optimized.ops)
    assert len(lowered.compile().kernels) == 1
    np.testing.assert_array_equal(f(np.float32(1), x), x * 2 + 1)
    np.testing.assert_array_equal(f(np.float32(-1), x), -x + 1)
    picked = fj.jit(lambda x: lax.cond(True, lambda a: np.log(a), lambda a: a, x)).lower(x).optimized
    assert [op.prim for op in picked.ops] == [P.log]
