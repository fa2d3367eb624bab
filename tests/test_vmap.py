"""vmap (the batching transform of the IR) and the Jacobians built on it.

* Every primitive: vmap of one op agrees with a Python loop over the examples (the
  per-primitive calls of ``tests/test_primitives.py``'s ``CASES``, so a new primitive is
  covered here as soon as it has cases there), with the mapped axis leading, not leading,
  and absent for some operands; and the batched IR has no more ops of the primitive than
  one example's IR (no loop over the examples).
* Random IR programs over the whole primitive set: ``batch_function`` agrees with
  running the program once per example.
* Compositions with jit (compiled once per shape), grad, vjp, jvp, custom_vjp and
  nested vmap; in_axes/out_axes pytrees, axis_size, keyword arguments, the errors.
* The IR: a batched matmul is one ``dot_general`` with a batch dimension.
* Against JAX where it is installed: per-example gradients of an MLP, and jacfwd,
  jacrev and hessian.
"""

from __future__ import annotations

import re
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import random_functions
from test_primitives import CASES, assert_matches_numpy, dtypes_of

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.ir import PRIMITIVES, DType, TensorType, Value, run_function, verify
from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.transforms.batching import BatchedResultError, batch_function
from fusejit.tracer.tracing import bind

B = 3  # examples per batch
RNG = np.random.default_rng(0)

# ---------------------------------------------------------------------------------------
# Every primitive against a loop over the examples


def example(x: np.ndarray, k: int) -> np.ndarray:
    """The k-th example made from a case's operand: the same values (so the same domain:
    positive, valid indices, ties) in another order."""
    return np.roll(x.ravel(), k).reshape(x.shape) if x.size else x


def stacked(xs: list[np.ndarray], axis: int | None) -> np.ndarray:
    return xs[0] if axis is None else np.stack(xs, axis=axis)


def axes_modes(n_operands: int, ranks: list[int]) -> list[tuple[str, tuple, Any]]:
    """(label, in_axes, out_axes) to try: all leading; all at axis 1 (or the last axis of
    a rank-0 example) with the output's axis last; each operand in turn unmapped."""
    modes: list[tuple[str, tuple, Any]] = [("in_axes 0", (0,) * n_operands, 0)]
    modes.append(("in_axes 1, out_axes -1", tuple(min(1, r) for r in ranks), -1))
    if n_operands > 1:
        modes += [(f"operand {i} unmapped", tuple(None if j == i else 0 for j in range(n_operands)), 0)
                  for i in range(n_operands)]  # fmt: skip
    return modes


def count(fn: fj.ir.Function, prim: P.Primitive) -> int:
    return sum(op.prim is prim for op in fn.ops)


PRIMITIVE_DTYPES = [(n, d) for n in CASES for d in dtypes_of(n)]


@pytest.mark.parametrize(("name", "dtype"), PRIMITIVE_DTYPES, ids=[f"{n}-{d}" for n, d in PRIMITIVE_DTYPES])
def test_vmap_of_every_primitive_agrees_with_a_loop_over_the_examples(name: str, dtype: DType) -> None:
    prim = PRIMITIVES[name]
    with np.errstate(all="ignore"):  # integer division by zero in the cases' NumPy answers
        cases = CASES[name](dtype)
    for case in cases:

        def one_op(*xs: Any, attrs: dict[str, Any] = case.attrs) -> Any:
            return bind(prim, *xs, **attrs)

        if not case.operands:  # a source: nothing to map, so axis_size says how many
            out = fj.vmap(one_op, axis_size=B)()
            assert_matches_numpy(out, np.stack([case.expected] * B), f"{name}[{dtype}] {case.label}")
            continue
        ranks = [x.ndim for x in case.operands]
        for label, in_axes, out_axes in axes_modes(len(case.operands), ranks):
            where = f"{name}[{dtype}] {case.label}, {label}"
            per_example = [[example(x, k) if ax is not None else x for x, ax in zip(case.operands, in_axes, strict=True)]
                           for k in range(B)]  # fmt: skip
            args = [stacked([ex[i] for ex in per_example], ax) for i, ax in enumerate(in_axes)]
            expected = np.stack([np.asarray(one_op(*ex)) for ex in per_example], axis=out_axes)
            vmapped = fj.vmap(one_op, in_axes=in_axes, out_axes=out_axes)
            assert_matches_numpy(vmapped(*args), expected, where)
            batched_ir = verify(fj.make_ir(vmapped)(*args))
            one_ir = fj.make_ir(one_op)(*case.operands)
            if prim not in (P.transpose, P.reshape, P.broadcast_in_dim):  # batching adds these
                assert count(batched_ir, prim) == count(one_ir, prim), f"{where}: a loop over examples?"


def test_a_source_is_not_batched_but_broadcast_where_it_meets_a_mapped_value() -> None:
    def f(x):
        return x + fnp.arange(4.0)

    ir = fj.make_ir(fj.vmap(f))(np.ones((3, 4)))
    iota = next(op for op in ir.ops if op.prim is P.iota)
    assert iota.output.shape == (4,)  # computed once, for every example
    np.testing.assert_array_equal(fj.vmap(f)(np.ones((3, 4))), np.ones((3, 4)) + np.arange(4.0))


# ---------------------------------------------------------------------------------------
# Random programs over every primitive, batched at the IR level


def random_data(t: TensorType, rng: np.random.Generator) -> np.ndarray:
    """Small integers (as floats for float types): sums are exact whatever the order
    the batched program adds them in."""
    if t.dtype.is_bool:
        return rng.random(t.shape) < 0.5
    return rng.integers(-3, 4, t.shape).astype(t.dtype.np)


def stack_examples(xs: list[np.ndarray], axis: int, t: TensorType) -> np.ndarray:
    """The examples (of type ``t``) stacked along ``axis``, also when there are none."""
    if not xs:
        return np.zeros(t.shape[:axis] + (0,) + t.shape[axis:], t.dtype.np)
    return np.stack(xs, axis=axis)


def assert_same(actual: np.ndarray, expected: np.ndarray, where: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (
        f"{where}: {actual.dtype}{actual.shape} vs {expected.dtype}{expected.shape}"
    )
    if expected.dtype.kind == "f":
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=where)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=where)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_functions(), st.data())
def test_batching_any_program_agrees_with_running_it_once_per_example(fn, data) -> None:
    """Every primitive, every dtype, 0-d and 0-size values, custom_vjp_call with its
    nested functions: each param mapped at a random axis or shared, each result placed
    at a random axis (or left unbatched when it does not depend on the examples)."""
    in_dims = [data.draw(st.one_of(st.none(), st.integers(0, p.type.ndim))) for p in fn.params]
    size = data.draw(st.integers(0, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    examples = [[random_data(p.type, rng) for p in fn.params] for _ in range(size)]
    shared = [random_data(p.type, rng) for p in fn.params]
    args = [
        shared[i] if d is None else stack_examples([ex[i] for ex in examples], d, p.type)
        for i, (p, d) in enumerate(zip(fn.params, in_dims, strict=True))
    ]
    out_dims = [data.draw(st.integers(0, r.type.ndim)) for r in fn.results]
    batched = verify(batch_function(fn, in_dims, size, out_dims))
    with np.errstate(all="ignore"):
        actual = run_function(batched, *args)
        per_example = [
            run_function(fn, *(shared[i] if d is None else ex[i] for i, d in enumerate(in_dims)))
            for ex in examples
        ]
    for j, (r, d) in enumerate(zip(fn.results, out_dims, strict=True)):
        expected = stack_examples([outs[j] for outs in per_example], d, r.type)
        assert_same(actual[j], expected, f"result {j} of\n{fn}")


def test_an_unbatched_result_can_stay_unbatched_and_a_batched_one_cannot() -> None:
    b = Builder()
    x, y = Value(TensorType(DType.f32, (2,)), "x"), Value(TensorType(DType.f32, (2,)), "y")
    fn = b.function("f", (x, y), (b.op(P.exp, x), b.op(P.neg, y)))
    batched = verify(batch_function(fn, [0, None], 4, [1, None]))
    assert [r.shape for r in batched.results] == [(2, 4), (2,)]
    with pytest.raises(BatchedResultError, match="result 0") as info:
        batch_function(fn, [0, None], 4, [None, None])
    assert info.value.index == 0
    with pytest.raises(ValueError, match="in_dims entry 2"):
        batch_function(fn, [2, None], 4, [0, 0])


# ---------------------------------------------------------------------------------------
# Compositions


def mlp_loss(params, x, y):
    h = np.tanh(x @ params["w1"] + params["b1"])
    out = h @ params["w2"] + params["b2"]
    return fnp.mean((out - y) ** 2)


def mlp_params(rng: np.random.Generator, dtype=np.float64) -> dict[str, np.ndarray]:
    return {
        "w1": rng.normal(size=(4, 8)).astype(dtype) * 0.5,
        "b1": rng.normal(size=(8,)).astype(dtype) * 0.1,
        "w2": rng.normal(size=(8, 2)).astype(dtype) * 0.5,
        "b2": np.zeros(2, dtype),
    }


def test_per_example_gradients_of_an_mlp_match_a_loop_eagerly_and_jitted() -> None:
    params = mlp_params(RNG)
    x, y = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 2))
    per_example = fj.vmap(fj.grad(mlp_loss), in_axes=(None, 0, 0))
    loop = [fj.grad(mlp_loss)(params, x[i], y[i]) for i in range(6)]
    for grads in (per_example(params, x, y), fj.jit(per_example)(params, x, y)):
        assert set(grads) == set(params)
        for k, g in grads.items():
            assert g.shape == (6,) + params[k].shape and g.dtype == np.float64
            np.testing.assert_allclose(g, np.stack([lp[k] for lp in loop]), rtol=1e-12, atol=1e-14)
    values, grads = fj.vmap(fj.value_and_grad(mlp_loss), in_axes=(None, 0, 0))(params, x, y)
    np.testing.assert_allclose(values, [mlp_loss(params, x[i], y[i]) for i in range(6)], rtol=1e-12)
    np.testing.assert_allclose(grads["w1"], np.stack([lp["w1"] for lp in loop]), rtol=1e-12, atol=1e-14)


def test_vmap_inside_jit_compiles_once_per_shape() -> None:
    def f(w, x):
        return np.tanh(x @ w).sum(axis=-1)

    jitted = fj.jit(fj.vmap(f, in_axes=(None, 0)))
    w = RNG.normal(size=(3, 5)).astype(np.float32)
    for n in (4, 4, 7, 4):
        x = RNG.normal(size=(n, 2, 3)).astype(np.float32)
        out = jitted(w, x)
        assert out.dtype == np.float32 and out.shape == (n, 2)
        np.testing.assert_allclose(out, np.stack([f(w, xi) for xi in x]), rtol=1e-5)
    info = jitted.cache_info()
    assert (info.misses, info.hits) == (2, 2)


def test_grad_of_vmap_sums_the_per_example_gradients_of_a_shared_argument() -> None:
    w, xs = RNG.normal(size=(3, 2)), RNG.normal(size=(5, 4, 3))

    def total(w, xs):
        return fj.vmap(lambda w, x: fnp.sum(np.sin(x @ w) ** 2), in_axes=(None, 0))(w, xs).sum()

    gw, gx = fj.grad(total, argnums=(0, 1))(w, xs)
    loop = [fj.grad(lambda w, x: fnp.sum(np.sin(x @ w) ** 2), argnums=(0, 1))(w, x) for x in xs]
    np.testing.assert_allclose(gw, sum(g for g, _ in loop), rtol=1e-12)
    np.testing.assert_allclose(gx, np.stack([g for _, g in loop]), rtol=1e-12)
    np.testing.assert_allclose(fj.jit(fj.grad(total))(w, xs), gw, rtol=1e-12)


def test_nested_vmap_maps_two_axes() -> None:
    x, y = RNG.normal(size=(3, 4)), RNG.normal(size=(5, 4))

    def dist(a, b):
        return fnp.sqrt(fnp.sum((a - b) ** 2))

    pairwise = fj.vmap(fj.vmap(dist, in_axes=(None, 0)), in_axes=(0, None))
    expected = np.array([[dist(a, b) for b in y] for a in x])
    np.testing.assert_allclose(pairwise(x, y), expected, rtol=1e-12)
    np.testing.assert_allclose(fj.jit(pairwise)(x, y), expected, rtol=1e-12)
    # the inner one mapping a non-leading axis, the outer one placing its axis last
    inner_t = fj.vmap(fj.vmap(dist, in_axes=(None, 1)), in_axes=(0, None), out_axes=1)
    np.testing.assert_allclose(inner_t(x, y.T), expected.T, rtol=1e-12)


def test_vmap_of_jvp_and_of_a_vjp_function() -> None:
    x = RNG.normal(size=(3,))
    tangents = RNG.normal(size=(4, 3))

    def f(x):
        return np.sin(x) * x.sum()

    jvps = fj.vmap(lambda t: fj.jvp(f, (x,), (t,))[1])(tangents)
    np.testing.assert_allclose(jvps, np.stack([fj.jvp(f, (x,), (t,))[1] for t in tangents]), rtol=1e-12)
    _, vjp_fn = fj.vjp(f, x)
    vjps = fj.vmap(vjp_fn)(tangents)
    assert isinstance(vjps, tuple) and vjps[0].shape == (4, 3)
    np.testing.assert_allclose(vjps[0], np.stack([vjp_fn(t)[0] for t in tangents]), rtol=1e-12)


def test_vmap_of_a_custom_vjp_function_keeps_its_rule_per_example() -> None:
    @fj.custom_vjp
    def clip_grad(x, scale):
        return x * scale

    def fwd(x, scale):
        return clip_grad(x, scale), (x, scale)

    def bwd(res, g):
        x, scale = res
        return (fnp.clip(g * scale, -0.1, 0.1), fnp.sum(g * x))

    clip_grad.defvjp(fwd, bwd)
    xs, scale = RNG.normal(size=(4, 3)), np.float64(2.0)

    def loss(x, s):
        return fnp.sum(clip_grad(x, s) ** 2)

    per_example = fj.vmap(fj.grad(loss, argnums=(0, 1)), in_axes=(0, None))(xs, scale)
    loop = [fj.grad(loss, argnums=(0, 1))(x, scale) for x in xs]
    np.testing.assert_allclose(per_example[0], np.stack([g for g, _ in loop]))
    np.testing.assert_allclose(per_example[1], np.stack([g for _, g in loop]))
    assert np.all(np.abs(per_example[0]) <= 0.1)
    # grad of the vmapped call: the rule runs per example, and the shared scale's
    # cotangent is the sum of the examples' cotangents
    total = fj.grad(lambda xs, s: fj.vmap(loss, in_axes=(0, None))(xs, s).sum(), argnums=(0, 1))
    gx, gs = total(xs, scale)
    np.testing.assert_allclose(gx, per_example[0])
    np.testing.assert_allclose(gs, sum(g for _, g in loop))
    ir = fj.make_ir(fj.vmap(loss, in_axes=(0, None)))(xs, scale)
    assert count(ir, P.custom_vjp_call) == 1


def test_in_axes_and_out_axes_as_pytrees() -> None:
    Pair = namedtuple("Pair", "a b")
    batch = {"x": RNG.normal(size=(3, 5)), "y": RNG.normal(size=(5,)), "n": RNG.normal(size=(2, 5))}

    def f(d, pair):
        s = d["x"] * d["y"] + d["n"].sum(axis=0)
        return {"s": s, "t": pair.a * 2.0}, pair.b

    pair = Pair(RNG.normal(size=(5, 2)), RNG.normal(size=(4,)))
    out, b = fj.vmap(
        f, in_axes=({"x": 1, "y": 0, "n": -1}, Pair(0, None)), out_axes=({"s": 1, "t": 0}, None)
    )(batch, pair)
    loop = [
        f({"x": batch["x"][:, i], "y": batch["y"][i], "n": batch["n"][:, i]}, Pair(pair.a[i], pair.b))
        for i in range(5)
    ]
    np.testing.assert_allclose(out["s"], np.stack([lp[0]["s"] for lp in loop], axis=1))
    np.testing.assert_allclose(out["t"], np.stack([lp[0]["t"] for lp in loop]))
    np.testing.assert_array_equal(b, pair.b)  # unmapped output with out_axes None: as it is
    # a list in_axes names positional arguments like a tuple; None as a whole subtree
    np.testing.assert_allclose(fj.vmap(lambda a, b: a + b, in_axes=[0, None])(batch["n"], batch["y"]),
                               batch["n"] + batch["y"])  # fmt: skip


def test_axis_size_broadcasts_unmapped_outputs_and_must_agree() -> None:
    x = np.arange(3.0)
    out = fj.vmap(lambda x: x * 2.0, in_axes=None, axis_size=4)(x)
    np.testing.assert_array_equal(out, np.tile(x * 2.0, (4, 1)))
    out = fj.vmap(lambda x, y: (x * 2.0, y), in_axes=(0, None), out_axes=(0, 1))(x, np.ones(2))
    np.testing.assert_array_equal(out[1], np.ones((2, 3)))
    assert fj.vmap(lambda x: x + 1.0, axis_size=3)(x).shape == (3,)
    with pytest.raises(ValueError, match=r"axis_size=5(.|\n)*argument x: axis 0 has size 3"):
        fj.vmap(lambda x: x, axis_size=5)(x)


def test_keyword_arguments_are_mapped_along_axis_0_and_python_scalars_pass_through() -> None:
    def f(x, power, *, shift):
        assert isinstance(power, int)  # unmapped Python values reach the function as they are
        return x**power + shift

    x, shift = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 1))
    out = fj.vmap(f, in_axes=(0, None))(x, 2, shift=shift)
    np.testing.assert_allclose(out, x**2 + shift)


def test_weak_python_scalars_keep_the_mapped_arrays_dtype() -> None:
    x = np.ones((4, 3), np.float32)
    out = fj.jit(fj.vmap(lambda x, s: x * s, in_axes=(0, None)))(x, 2.5)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x * 2.5)


def test_errors_name_the_argument_and_say_what_is_wrong() -> None:
    x, y = np.ones((3, 2)), np.ones((4, 2))

    def f(x, y):
        return x + y

    with pytest.raises(
        ValueError,
        match=r"different sizes(.|\n)*argument x: axis 0 has size 3(.|\n)*argument y: axis 0 has size 4",
    ):
        fj.vmap(f)(x, y)
    with pytest.raises(ValueError, match=r"in_axes 2 of argument y is out of range: it has shape \(4, 2\)"):
        fj.vmap(f, in_axes=(0, 2))(x, y)
    with pytest.raises(ValueError, match=r"in_axes -3 of argument y"):
        fj.vmap(f, in_axes=(None, -3))(x, y)
    with pytest.raises(ValueError, match="no argument is mapped(.|\n)*axis_size"):
        fj.vmap(f, in_axes=None)(x, y)
    with pytest.raises(ValueError, match="in_axes has 3 entries but f was called with 2"):
        fj.vmap(f, in_axes=(0, 0, 0))(x, y)
    with pytest.raises(
        ValueError,
        match=r"does not match argument: x has structure \{'b': \*\}; \{'a': \*, 'b': \*\} is not a prefix",
    ):
        fj.vmap(lambda x: x["b"], in_axes=({"a": 0, "b": 0},))({"b": x})
    with pytest.raises(ValueError, match="output depends on the mapped axis, but its out_axes entry is None"):
        fj.vmap(f, out_axes=None)(x, x)
    with pytest.raises(ValueError, match=r"out_axes 3 of output\[1\] is out of range"):
        fj.vmap(lambda x: (x, x), out_axes=(0, 3))(x)
    with pytest.raises(ValueError, match=r"argument s is a scalar, which has no axis to map; give it in_axes None"):
        fj.vmap(lambda s: s)(2.0)
    with pytest.raises(TypeError, match="argument s is a str, which cannot be mapped"):
        fj.vmap(lambda s: s)("abc")
    with pytest.raises(TypeError, match="in_axes must be an int, None, or a pytree of them; got 'x'"):
        fj.vmap(f, in_axes=("x", 0))
    with pytest.raises(TypeError, match="in_axes must be an int, None, or a tuple with one entry per"):
        fj.vmap(f, in_axes={"x": 0})
    with pytest.raises(TypeError, match="axis_size must be a non-negative int"):
        fj.vmap(f, axis_size=-1)


# ---------------------------------------------------------------------------------------
# The IR


def batched_matmul(a, b):
    return a @ b


def test_a_batched_matmul_is_one_dot_general_with_a_batch_dimension() -> None:
    a, b = np.ones((5, 3, 4), np.float32), np.ones((5, 4, 2), np.float32)
    lowered = fj.jit(fj.vmap(batched_matmul)).lower(a, b)
    for stage in ("traced", "optimized"):
        text = lowered.as_text(stage)
        dots = re.findall(r"= dot_general .*", text)
        assert len(dots) == 1, text
        assert "batch=((0),(0))" in dots[0], text
    np.testing.assert_allclose(fj.jit(fj.vmap(batched_matmul))(a, b), a @ b)


def test_a_matmul_mapped_over_one_operand_is_one_larger_matmul() -> None:
    x, w = RNG.normal(size=(5, 3, 4)), RNG.normal(size=(4, 2))
    ir = fj.make_ir(fj.vmap(batched_matmul, in_axes=(0, None)))(x, w)
    (dot,) = [op for op in ir.ops if op.prim is P.dot_general]
    assert dot.inputs[0].shape == (5, 3, 4) and dot.inputs[1].shape == (4, 2)
    assert dot.attrs["batch"] == ((), ())
    np.testing.assert_allclose(fj.vmap(batched_matmul, in_axes=(0, None))(x, w), x @ w, rtol=1e-12)
    # and over the rhs only: the example axis comes out after the lhs free axes, moved first
    out = fj.vmap(batched_matmul, in_axes=(None, 2))(x[0], np.moveaxis(RNG.normal(size=(5, 4, 2)), 0, 2))
    assert out.shape == (5, 3, 2)


def test_a_batched_function_fuses_like_the_unbatched_one() -> None:
    from fusejit.runtime.executable import partition

    def layer(x, w, b):
        return np.tanh(x @ w + b) * 0.5

    def kernels(f, *args) -> int:
        return len(partition(fj.jit(f, backend="interpret").lower(*args).optimized, fuse=True).groups)

    x, w, b = np.ones((8, 4), np.float32), np.ones((4, 6), np.float32), np.ones(6, np.float32)
    xs = np.ones((5, 8, 4), np.float32)
    assert kernels(fj.vmap(layer, in_axes=(0, None, None)), xs, w, b) == kernels(layer, x, w, b)


# ---------------------------------------------------------------------------------------
# Jacobians and Hessians


def test_jacobians_have_output_shape_then_input_shape() -> None:
    def f(x, y):
        return {"u": np.sin(x) @ y, "v": fnp.sum(x) * 2.0}

    x, y = RNG.normal(size=(2, 3)), RNG.normal(size=(3,))
    for jac in (fj.jacfwd, fj.jacrev):
        j = jac(f)(x, y)
        assert j["u"].shape == (2, 2, 3) and j["v"].shape == (2, 3)
        expected_u = np.zeros((2, 2, 3))
        for i in range(2):
            expected_u[i, i] = np.cos(x[i]) * y
        np.testing.assert_allclose(j["u"], expected_u, rtol=1e-12)
        np.testing.assert_allclose(j["v"], np.full((2, 3), 2.0))
        jx, jy = jac(f, argnums=(0, 1))(x, y)["u"]
        np.testing.assert_allclose(jx, expected_u, rtol=1e-12)
        np.testing.assert_allclose(jy, np.sin(x), rtol=1e-12)


def test_hessian_of_a_quadratic_form_is_its_symmetric_matrix() -> None:
    a = RNG.normal(size=(4, 4))
    x = RNG.normal(size=(4,))
    h = fj.hessian(lambda x: x @ a @ x)(x)
    np.testing.assert_allclose(h, a + a.T, rtol=1e-12)
    np.testing.assert_allclose(fj.jit(fj.hessian(lambda x: x @ a @ x))(x), a + a.T, rtol=1e-12)


def test_jacobians_reject_integer_inputs_and_outputs() -> None:
    with pytest.raises(TypeError, match="jacfwd of <lambda>: argument x is an array of int64"):
        fj.jacfwd(lambda x: x * 1.0)(np.arange(3))
    with pytest.raises(TypeError, match="jacrev of <lambda>: an output has dtype int64"):
        fj.jacrev(lambda x: fnp.argmax(x))(np.ones(3))


# ---------------------------------------------------------------------------------------
# Against JAX


@pytest.fixture(scope="module")
def jax():
    return pytest.importorskip("jax")


def test_per_example_gradients_of_an_mlp_equal_jax(jax) -> None:
    jnp = jax.numpy
    rng = np.random.default_rng(1)
    params = mlp_params(rng, np.float32)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=(16, 2)).astype(np.float32)

    def jax_loss(p, x, y):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        return jnp.mean((h @ p["w2"] + p["b2"] - y) ** 2)

    ours = fj.jit(fj.vmap(fj.grad(mlp_loss), in_axes=(None, 0, 0)))(params, x, y)
    theirs = jax.vmap(jax.grad(jax_loss), in_axes=(None, 0, 0))(params, x, y)
    for k in params:
        assert ours[k].shape == theirs[k].shape and ours[k].dtype == np.float32
        np.testing.assert_allclose(ours[k], np.asarray(theirs[k]), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["jacfwd", "jacrev", "hessian"])
def test_jacobians_and_hessians_equal_jax(jax, which) -> None:
    jnp = jax.numpy
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 2)).astype(np.float32)
    w = rng.normal(size=(2, 4)).astype(np.float32)

    def ours_f(x, w):
        return fnp.sum(np.tanh(x @ w) ** 2) + fnp.sum(np.exp(x * 0.5))

    def jax_f(x, w):
        return jnp.sum(jnp.tanh(x @ w) ** 2) + jnp.sum(jnp.exp(x * 0.5))

    def ours_g(x, w):
        return {"a": np.sin(x) @ w, "b": fnp.sum(x * x, axis=0)}

    def jax_g(x, w):
        return {"a": jnp.sin(x) @ w, "b": jnp.sum(x * x, axis=0)}

    if which == "hessian":
        pairs = [(ours_f, jax_f)]
    else:
        pairs = [(ours_f, jax_f), (ours_g, jax_g)]
    for mine, theirs in pairs:
        for argnums in (0, (0, 1)):
            got = getattr(fj, which)(mine, argnums=argnums)(x, w)
            want = getattr(jax, which)(theirs, argnums=argnums)(x, w)
            got_leaves, got_tree = fj.tree_flatten(got)
            want_leaves = jax.tree_util.tree_leaves(want)
            assert len(got_leaves) == len(want_leaves), got_tree
            for g, t in zip(got_leaves, want_leaves, strict=True):
                assert g.shape == t.shape and g.dtype == t.dtype
                np.testing.assert_allclose(g, np.asarray(t), rtol=1e-4, atol=1e-5)
