"""The differentiation API (grad, value_and_grad, vjp, jvp, custom_vjp, stop_gradient,
gradcheck), its compositions with jit and with itself, the derivative IR (source lines,
verification, symbolic zeros, saved values) and the error cases."""

from __future__ import annotations

import re
from collections import namedtuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import random_elementwise_programs, random_functions

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.ir import Builder, SourceLoc, TensorType, Value, run_function, verify
from fusejit.ir import primitives as P
from fusejit.ir.dtypes import DType
from fusejit.ir.transforms.autodiff import (
    MissingRuleError,
    grad_function,
    jvp_function,
    reverse_mode,
    vjp_function,
)
from fusejit.ir.transforms.autodiff_control import NotReverseDifferentiableError
from fusejit.ir.transforms.pipeline import optimize

F64 = DType.f64


def loss(w, x):
    return fnp.sum(fnp.tanh(x @ w) ** 2)


W = np.linspace(-1, 1, 6).reshape(3, 2)
X = np.linspace(-2, 1, 12).reshape(4, 3)


def loss_grad_reference(w, x):
    h = np.tanh(x @ w)
    return x.T @ (2 * h * (1 - h * h))


# ---------------------------------------------------------------------------------------
# grad / value_and_grad


def test_grad_and_value_and_grad() -> None:
    np.testing.assert_allclose(fj.grad(loss)(W, X), loss_grad_reference(W, X))
    value, g = fj.value_and_grad(loss)(W, X)
    np.testing.assert_allclose(value, np.sum(np.tanh(X @ W) ** 2))
    np.testing.assert_allclose(g, loss_grad_reference(W, X))


def test_argnums_tuple_and_negative() -> None:
    gw, gx = fj.grad(loss, argnums=(0, 1))(W, X)
    np.testing.assert_allclose(gw, loss_grad_reference(W, X))
    h = np.tanh(X @ W)
    np.testing.assert_allclose(gx, (2 * h * (1 - h * h)) @ W.T)
    (gx2,) = fj.grad(loss, argnums=(-1,))(W, X)
    np.testing.assert_allclose(gx2, gx)


def test_has_aux() -> None:
    def f(w, x):
        y = x @ w
        return fnp.sum(y * y), {"y": y, "n": fnp.argmax(y, axis=1)}

    (value, aux), g = fj.value_and_grad(f, has_aux=True)(W, X)
    np.testing.assert_allclose(aux["y"], X @ W)
    np.testing.assert_array_equal(aux["n"], np.argmax(X @ W, axis=1))
    np.testing.assert_allclose(value, np.sum((X @ W) ** 2))
    g2, aux2 = fj.grad(f, has_aux=True)(W, X)
    np.testing.assert_allclose(g2, g)
    np.testing.assert_allclose(g, 2 * X.T @ (X @ W))
    np.testing.assert_allclose(aux2["y"], aux["y"])


def test_pytree_parameters() -> None:
    Pair = namedtuple("Pair", "a b")

    def f(params, x):
        layer = params["layers"][0]
        return fnp.sum((x @ layer.a + layer.b) ** 2) + params["scale"] * fnp.sum(x)

    params = {"layers": [Pair(W, np.ones(2))], "scale": 2.0}
    g = fj.grad(f)(params, X)
    assert isinstance(g["layers"][0], Pair)
    y = X @ W + 1
    np.testing.assert_allclose(g["layers"][0].a, 2 * X.T @ y)
    np.testing.assert_allclose(g["layers"][0].b, 2 * y.sum(0))
    np.testing.assert_allclose(g["scale"], X.sum())
    assert fj.gradcheck(f, (params, X))


def test_non_differentiated_python_scalars_are_static() -> None:
    def f(x, n, mode):
        for _ in range(n):  # n is a Python int: usable for control flow
            x = fnp.sin(x)
        return fnp.sum(x) if mode == "sum" else fnp.max(x)

    g = fj.grad(f)(np.array([0.3, 0.4]), 2, "sum")
    np.testing.assert_allclose(g, np.cos(np.sin([0.3, 0.4])) * np.cos([0.3, 0.4]))


def test_dtypes_follow_the_arguments() -> None:
    x32 = np.linspace(-1, 1, 4).astype(np.float32)
    g = fj.grad(lambda x: fnp.sum(x * 2.0 + fnp.exp(x)))(x32)
    assert g.dtype == np.float32
    ir = fj.make_ir(fj.value_and_grad(lambda x: fnp.sum(x * 2.0 + fnp.exp(x))))(x32)
    assert "f64" not in str(ir)  # the weak 2.0 and the seed stay float32
    g = fj.grad(lambda x: x * x)(3.0)
    assert g.dtype == np.float64 and g == 6.0
    g = fj.grad(lambda x: fnp.sum(x) * 2)(np.ones(3, np.float32))
    assert g.dtype == np.float32


def test_stop_gradient() -> None:
    x = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(fj.grad(lambda x: fnp.sum(x * fj.stop_gradient(x)))(x), x)
    np.testing.assert_allclose(fj.grad(lambda x: fnp.sum(x * fnp.stop_gradient(x * x)))(x), x * x)
    _, t = fj.jvp(lambda x: fj.stop_gradient(x) * x, (x,), (np.ones(3),))
    np.testing.assert_allclose(t, x)
    g = fj.grad(lambda x: fnp.sum(fj.stop_gradient(x)))(x)
    np.testing.assert_array_equal(g, np.zeros(3))


def test_unused_argument_has_zero_gradient() -> None:
    g = fj.grad(lambda x, y: fnp.sum(x * 3.0), argnums=1)(np.ones(2), np.ones((2, 3)))
    np.testing.assert_array_equal(g, np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------
# vjp / jvp


def test_vjp_of_pytree_function() -> None:
    def f(x, y):
        return {"prod": x * y, "sum": fnp.sum(x), "idx": fnp.argmax(y)}

    x, y = np.array([1.0, 2.0]), np.array([3.0, -1.0])
    out, vjp_fn = fj.vjp(f, x, y)
    np.testing.assert_allclose(out["prod"], x * y)
    ct = {"prod": np.array([1.0, 10.0]), "sum": 2.0, "idx": np.zeros((), np.int64)}
    gx, gy = vjp_fn(ct)
    np.testing.assert_allclose(gx, ct["prod"] * y + 2.0)
    np.testing.assert_allclose(gy, ct["prod"] * x)
    gx_again, _ = vjp_fn(ct)  # vjp_fn can be called many times
    np.testing.assert_allclose(gx_again, gx)


def test_vjp_with_aux_and_integer_primal() -> None:
    def f(x, i):
        return x[i] * 2.0, x.shape[0]

    out, vjp_fn, aux = fj.vjp(f, np.array([1.0, 2.0, 3.0]), np.array(2), has_aux=True)
    assert out == 6.0 and aux == 3
    gx, gi = vjp_fn(1.0)
    np.testing.assert_allclose(gx, [0.0, 0.0, 2.0])
    assert gi.shape == () and gi == 0


def test_jvp_of_pytree_function() -> None:
    def f(p):
        return {"a": fnp.sin(p["x"]) * p["y"], "b": (p["x"] ** 2,)}

    p = {"x": np.array([0.1, 0.2]), "y": np.array([2.0, 3.0])}
    t = {"x": np.array([1.0, 0.0]), "y": np.array([0.5, 1.0])}
    out, tout = fj.jvp(f, (p,), (t,))
    np.testing.assert_allclose(out["a"], np.sin(p["x"]) * p["y"])
    np.testing.assert_allclose(tout["a"], np.cos(p["x"]) * t["x"] * p["y"] + np.sin(p["x"]) * t["y"])
    np.testing.assert_allclose(tout["b"][0], 2 * p["x"] * t["x"])


def test_vjp_and_jvp_agree_with_the_jacobian() -> None:
    def f(x):
        return fnp.tanh(x[:, None] * x[None, :]).sum(axis=0)

    x = np.array([0.3, -0.2, 0.5])
    jac_rows = np.stack([fj.vjp(f, x)[1](e)[0] for e in np.eye(3)])
    jac_cols = np.stack([fj.jvp(f, (x,), (e,))[1] for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(jac_rows, jac_cols, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Compositions


def test_jit_of_grad_matches_eager() -> None:
    jitted = fj.jit(fj.value_and_grad(loss))
    value, g = jitted(W, X)
    np.testing.assert_allclose(g, loss_grad_reference(W, X))
    np.testing.assert_allclose(value, fj.value_and_grad(loss)(W, X)[0])
    jitted(W + 1, X)
    assert jitted.cache_info().misses == 1 and jitted.cache_info().hits == 1


def test_grad_of_jit() -> None:
    np.testing.assert_allclose(fj.grad(fj.jit(loss))(W, X), loss_grad_reference(W, X))
    g = fj.grad(lambda x: fj.jit(lambda y: fnp.sum(y**3))(x) * 2.0)(np.array([1.0, 2.0]))
    np.testing.assert_allclose(g, [6.0, 24.0])


def test_grad_inside_jit_closing_over_traced_values() -> None:
    @fj.jit
    def step(w, x, lr):
        g = fj.grad(lambda w: loss(w, x))(w)  # closes over the traced x
        return w - lr * g

    np.testing.assert_allclose(step(W, X, 0.1), W - 0.1 * loss_grad_reference(W, X))
    text = step.lower(W, X, 0.1).as_text("traced")
    assert "func @step(%w: f64[3,2], %x: f64[4,3], %lr: f64[])" in text


def test_nested_grad_treats_closed_over_values_as_constants() -> None:
    # d/dx [d/dy (x * y^2)](y = x) = d/dx 2 x^2 = 4 x: no perturbation confusion.
    f = fj.grad(lambda x: fj.grad(lambda y: x * y * y)(x))
    assert f(3.0) == 12.0
    g = fj.grad(lambda x: fj.grad(lambda y: fnp.sum(x * fnp.sin(y)))(x).sum())
    x = np.array([0.2, 0.9])
    np.testing.assert_allclose(g(x), np.cos(x) - x * np.sin(x))


def test_hessian_vector_product_under_jit() -> None:
    def hvp(w, v):
        return fj.jvp(fj.grad(lambda w: loss(w, X)), (w,), (v,))[1]

    v = np.ones_like(W)
    eps = 1e-6
    fd = (fj.grad(loss)(W + eps * v, X) - fj.grad(loss)(W - eps * v, X)) / (2 * eps)
    np.testing.assert_allclose(fj.jit(hvp)(W, v), fd, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hvp(W, v), fj.jit(hvp)(W, v), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# custom_vjp


@fj.custom_vjp
def log1pexp(x):
    return fnp.log1p(fnp.exp(x))


def _log1pexp_fwd(x):
    return log1pexp(x), x


def _log1pexp_bwd(x, g):
    return (g * (1.0 - 1.0 / (1.0 + fnp.exp(x))),)


log1pexp.defvjp(_log1pexp_fwd, _log1pexp_bwd)


def test_custom_vjp_numerically_stable_gradient() -> None:
    x = np.array([1000.0, 0.0, -3.0])
    naive = fj.grad(lambda x: fnp.sum(fnp.log1p(fnp.exp(x))))(x)
    assert np.isnan(naive[0])  # inf / inf without the custom rule
    g = fj.grad(lambda x: fnp.sum(log1pexp(x)))(x)
    np.testing.assert_allclose(g, 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(log1pexp(np.array([0.0])), [np.log(2.0)])  # eager call runs fun
    # Under jit the rule is used too, and compilation inlines fun (no call op remains).
    jitted = fj.jit(fj.value_and_grad(lambda x: fnp.sum(log1pexp(x))))
    np.testing.assert_allclose(jitted(x)[1], g)
    lowered = jitted.lower(x)
    assert "custom_vjp_call" not in lowered.as_text("optimized")
    # forward mode differentiates fun; grad(grad) differentiates bwd
    _, t = fj.jvp(log1pexp, (np.array([0.5]),), (np.array([2.0]),))
    np.testing.assert_allclose(t, 2 / (1 + np.exp(-0.5)))
    h = fj.grad(fj.grad(lambda x: log1pexp(x)))(0.3)
    np.testing.assert_allclose(h, np.exp(-0.3) / (1 + np.exp(-0.3)) ** 2)


def test_custom_vjp_clipped_gradient_uses_bwd() -> None:
    @fj.custom_vjp
    def clip_gradient(x, lo, hi):
        return x

    clip_gradient.defvjp(
        lambda x, lo, hi: (x, (lo, hi)), lambda res, g: (fnp.clip(g, res[0], res[1]), None, None)
    )
    x = np.array([1.0, 2.0])
    g = fj.grad(lambda x: fnp.sum(clip_gradient(x, -1.0, 1.0) * np.array([5.0, 0.5])))(x)
    np.testing.assert_allclose(g, [1.0, 0.5])
    with pytest.raises(fj.GradcheckError):  # the custom rule is not the true derivative
        fj.gradcheck(lambda x: clip_gradient(x, -1.0, 1.0) * 100.0, (x,))


def test_custom_vjp_with_pytree_arguments_inside_jit() -> None:
    @fj.custom_vjp
    def scaled(p, x):
        return p["a"] * x

    def fwd(p, x):
        return scaled(p, x), (p["a"], x)

    def bwd(res, g):
        a, x = res
        return {"a": fnp.sum(g * x) * 10.0}, g * a  # 10x: proves bwd is used

    scaled.defvjp(fwd, bwd)
    p, x = {"a": np.array(2.0)}, np.array([1.0, 3.0])
    gp, gx = fj.jit(fj.grad(lambda p, x: fnp.sum(scaled(p, x)), argnums=(0, 1)))(p, x)
    np.testing.assert_allclose(gp["a"], 40.0)
    np.testing.assert_allclose(gx, [2.0, 2.0])


def test_custom_vjp_closing_over_a_jit_value() -> None:
    @fj.jit
    def f(x, scale):
        @fj.custom_vjp
        def g(y):
            return y * scale

        g.defvjp(lambda y: (g(y), None), lambda _, ct: (ct * scale * 2.0,))
        return fj.grad(lambda y: fnp.sum(g(y)))(x)

    np.testing.assert_allclose(f(np.ones(2), 3.0), [6.0, 6.0])


def test_custom_vjp_errors() -> None:
    @fj.custom_vjp
    def f(x):
        return x * 2.0

    with pytest.raises(TypeError, match="defvjp"):
        fj.grad(lambda x: f(x))(1.0)
    f.defvjp(lambda x: (x, None), lambda _, g: (g, g))
    with pytest.raises(TypeError, match="2 cotangents for 1 arguments"):
        fj.grad(lambda x: f(x))(1.0)


# ---------------------------------------------------------------------------------------
# gradcheck


def test_gradcheck_reports_argument_index_and_values() -> None:
    @fj.custom_vjp
    def wrong(x):
        return x * x

    wrong.defvjp(lambda x: (wrong(x), x), lambda x, g: (g * x,))  # should be 2 g x
    params = {"w": np.array([[1.0, 2.0], [3.0, 4.0]])}
    with pytest.raises(fj.GradcheckError) as info:
        fj.gradcheck(lambda params: fnp.sum(wrong(params["w"])), (params,))
    message = str(info.value)
    assert isinstance(info.value, AssertionError)
    assert "params['w']" in message and "symbolic" in message and "finite differences" in message
    assert "tolerance" in message
    assert re.search(
        r"argument params\['w'\] at index \(1, 1\): symbolic (\S+) vs finite differences (\S+)", message
    )
    sym, num = map(float, re.search(r"symbolic (\S+) vs finite differences (\S+) ", message).groups())
    assert abs(2 * sym - num) < 1e-6 * abs(num)  # the rule gives half the derivative


def test_gradcheck_full_check_names_the_worst_element() -> None:
    @fj.custom_vjp
    def bad_at_one(x):
        return fnp.sin(x)

    # the rule is wrong only where x > 1.5, so only the per-element check pins it down
    bad_at_one.defvjp(
        lambda x: (bad_at_one(x), x), lambda x, g: (g * fnp.cos(x) + fnp.where(x > 1.5, g * 1e-3, 0.0),)
    )
    x = np.array([0.1, 0.2, 1.6, 0.3])
    with pytest.raises(fj.GradcheckError, match=r"argument x"):
        fj.gradcheck(lambda x: bad_at_one(x), (x,))
    assert fj.gradcheck(lambda x: bad_at_one(x), (x[:2],))


def test_gradcheck_casts_float32_to_float64() -> None:
    x = np.linspace(0.1, 1, 5).astype(np.float32)
    assert fj.gradcheck(lambda x: fnp.exp(x) * fnp.sin(x), (x,))


# ---------------------------------------------------------------------------------------
# The derivative IR


def two_line_loss(w, x):
    h = fnp.tanh(x @ w)
    return fnp.sum(h * h)


def test_value_and_grad_ir_has_forward_source_lines() -> None:
    text = fj.jit(fj.value_and_grad(two_line_loss)).lower(W, X).as_text("traced")
    first = two_line_loss.__code__.co_firstlineno
    body = [line for line in text.splitlines() if " = " in line]
    located = [re.search(r"# (bwd of )?test_autodiff_api\.py:(\d+)$", line) for line in body]
    assert all(located), text  # every op, forward and backward, has a source line
    lines = [int(m.group(2)) for m in located]
    assert set(lines) == {first + 1, first + 2}
    # forward: dot_general, tanh (line 1), mul, reduce_sum (line 2); then the backward ops,
    # each marked as such
    assert lines[:4] == [first + 1, first + 1, first + 2, first + 2]
    assert [bool(m.group(1)) for m in located] == [False] * 4 + [True] * (len(body) - 4)
    backward = list(zip(body[4:], lines[4:], strict=True))
    assert {line for _, line in backward} == {first + 1, first + 2}
    dw = [line for op, line in backward if "dot_general %x, " in op and "contract=((0),(0))" in op]
    assert dw == [first + 1]  # dW = x^T g comes from the matmul's line
    tanh_backward = [line for op, line in backward if " sub " in op]  # 1 - tanh^2
    assert tanh_backward == [first + 1]


def test_derivative_ir_verifies_and_optimizes() -> None:
    fn = fj.make_ir(loss)(W, X)
    for derived in (
        vjp_function(fn),
        grad_function(fn),
        jvp_function(fn),
        vjp_function(grad_function(fn, keep_outputs=False)),
        jvp_function(grad_function(fn)),
    ):
        verify(derived)
        optimized, _ = optimize(derived, check=True)
        verify(optimized)
        parsed = fj.ir.parse(str(derived))
        assert str(parsed) == str(derived)


def test_value_and_grad_ir_takes_only_primal_params() -> None:
    fn = fj.make_ir(loss)(W, X)
    g = grad_function(fn, [0])
    assert g.params == fn.params
    assert [str(r.type) for r in g.results] == ["f64[]", "f64[3,2]"]
    (w_grad,) = run_function(grad_function(fn, [0], keep_outputs=False), W, X)
    np.testing.assert_allclose(w_grad, loss_grad_reference(W, X))


def test_no_zero_buffers_for_dropped_cotangents() -> None:
    def ce(logits, labels, weight):
        lp = logits - fnp.log(fnp.sum(fnp.exp(logits), axis=1, keepdims=True))
        return -fnp.sum(fnp.take_along_axis(lp, labels[:, None], axis=1) * weight)

    logits, labels, weight = np.ones((4, 3)), np.array([0, 1, 2, 0]), np.ones((4, 1))
    fn = fj.make_ir(ce)(logits, labels, weight)
    rm = reverse_mode(fn, [0], unit_seed=0)
    backward = rm.backward_ops
    # nothing flows to the integer labels or to weight (not differentiated)
    assert all(v.dtype.is_float for op in backward for v in op.outputs if op.prim is not P.eq)
    zero_constants = [op for op in backward if op.prim is P.constant and op.attrs["value"] == 0]
    assert zero_constants == []
    assert sum(op.prim is P.scatter_add for op in backward) == 1
    # the weight's cotangent (g * gathered, for gathered * weight) is never built
    (times_weight,) = [op for op in fn.ops if fn.params[2] in op.inputs]
    gathered = times_weight.inputs[0]
    assert [op for op in backward if gathered in op.inputs] == []

    # a requested gradient that is entirely zero is one broadcast scalar
    fn2 = fj.make_ir(lambda x, y: fnp.sum(x * 3.0))(np.ones(2), np.ones((2, 3)))
    zero_grad = grad_function(fn2, [1], keep_outputs=False)
    assert [op.prim.name for op in zero_grad.ops] == ["constant", "broadcast_in_dim"]


def test_saved_values_and_split() -> None:
    fn = fj.make_ir(lambda w, x: fnp.sum(fnp.tanh(x @ w) ** 2.0))(W, X)
    rm = reverse_mode(fn, [0])
    forward, backward = rm.split()
    verify(forward)
    verify(backward)
    tanh_out = next(op.output for op in fn.ops if op.prim is P.tanh)
    assert tanh_out in rm.saved  # the backward pass reads tanh's output: d tanh = 1 - y^2
    assert fn.params[1] in rm.saved  # and x, for dW = x^T g
    # the exponent of ** 2.0 (a broadcast constant) is rebuilt by the backward pass, not saved
    assert [op.prim.name for op in rm.recomputed] == ["constant", "broadcast_in_dim"]
    assert not any(v is rm.recomputed[1].output for v in rm.saved)
    assert all(op in fn.ops for op in rm.function.ops[: rm.num_forward_ops])
    ct = np.array(1.5)
    outs = run_function(forward, W, X)
    (g,) = run_function(backward, *outs[1:], ct)
    np.testing.assert_allclose(g, 1.5 * loss_grad_reference(W, X))
    np.testing.assert_allclose(run_function(rm.function, W, X, ct)[1], g)


def test_backward_ops_carry_the_source_line_of_their_forward_op() -> None:
    b = Builder()
    x = Value(TensorType(F64, (3,)), "x")
    b.loc = SourceLoc("model.py", 10)
    y = b.op(P.exp, x)
    b.loc = SourceLoc("model.py", 11)
    z = b.op(P.reduce_sum, b.op(P.mul, y, y), axes=(0,))
    fn = b.function("f", (x,), (z,))
    rm = reverse_mode(fn, unit_seed=0)
    assert {str(op.loc) for op in rm.backward_ops} == {"bwd of model.py:10", "bwd of model.py:11"}
    assert all(op.loc.derived == () for op in rm.function.ops[: rm.num_forward_ops])
    exp_backward = [op for op in rm.backward_ops if op.prim is P.mul and y in op.inputs and op.loc.line == 10]
    assert exp_backward  # g * exp(x) reads the saved exp output, at exp's line


# ---------------------------------------------------------------------------------------
# Errors


def test_grad_of_non_scalar_output_names_the_shape_and_suggests_vjp() -> None:
    with pytest.raises(TypeError, match=r"shape \(4, 2\).*vjp"):
        fj.grad(lambda w, x: x @ w)(W, X)
    with pytest.raises(TypeError, match="pytree"):
        fj.grad(lambda x: (fnp.sum(x), fnp.sum(x)))(W)
    with pytest.raises(TypeError, match="pair"):
        fj.grad(lambda x: fnp.sum(x), has_aux=True)(W)


def test_grad_with_respect_to_an_integer_argument() -> None:
    with pytest.raises(TypeError, match=r"argument labels has dtype int64.*float"):
        fj.grad(lambda x, labels: fnp.sum(x[labels]), argnums=1)(W, np.array([0, 1]))
    with pytest.raises(TypeError, match=r"argument x has dtype int64"):
        fj.grad(lambda x: fnp.sum(x * 1.5))(np.arange(3))
    with pytest.raises(TypeError, match=r"argnums"):
        fj.grad(loss, argnums=2)(W, X)
    with pytest.raises(TypeError, match="not a float"):
        vjp_function(fj.make_ir(lambda i: i * 2)(np.arange(3)), [0])


def test_missing_rule_names_primitive_and_source_line() -> None:
    mystery = P.Primitive(name="mystery", kind=P.OpKind.ELEMENTWISE, arity=1, attrs={},
                          abstract_eval=lambda ts: (ts[0],), impl=lambda x: (x,),
                          dtypes=P.FLOATS)  # deliberately not registered: it has no rules
    b = Builder()
    x = Value(TensorType(F64, (2,)), "x")
    b.loc = SourceLoc("model.py", 42)
    y = b.op(mystery, x)
    fn = b.function("f", (x,), (b.op(P.reduce_sum, y, axes=(0,)),))
    with pytest.raises(MissingRuleError, match=r"'mystery' has no vjp rule \(at model\.py:42\)"):
        vjp_function(fn)
    with pytest.raises(NotImplementedError, match=r"'mystery' has no jvp rule \(at model\.py:42\)"):
        jvp_function(fn)
    vjp_function(fn.replace(results=(x,)))  # not on the differentiated path: fine


def test_vjp_fn_checks_the_cotangent() -> None:
    _, vjp_fn = fj.vjp(lambda x: (x * 2.0, fnp.sum(x)), np.ones(3))
    with pytest.raises(TypeError, match="structure"):
        vjp_fn(np.ones(3))
    with pytest.raises(ValueError, match="shape"):
        vjp_fn((np.ones(2), 1.0))
    with pytest.raises(ValueError, match="shape"):
        fj.jvp(lambda x: x, (np.ones(3),), (np.ones(2),))


# ---------------------------------------------------------------------------------------
# Properties over random IR


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_functions())
def test_derivatives_of_any_function_verify(fn) -> None:
    """Every primitive on every dtype and shape (0-d, 0-size, nested custom_vjp_call):
    the derivative functions are valid IR."""
    verify(jvp_function(fn))
    try:
        verify(vjp_function(fn))
    except NotReverseDifferentiableError:  # a while_loop on the differentiated path
        return
    forward, backward = reverse_mode(fn).split()
    verify(forward)
    verify(backward)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(random_elementwise_programs(dtypes=(DType.f64,)), st.integers(0, 2**32 - 1))
def test_reverse_and_forward_mode_agree(fn, seed) -> None:
    """The dot-product test: <u, J v> from jvp equals <J^T u, v> from vjp."""
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(0.5, 1.5, p.shape) for p in fn.params]
    v = [rng.standard_normal(p.shape) for p in fn.params]
    u = [rng.standard_normal(r.shape) for r in fn.results]
    n = len(fn.results)
    with np.errstate(all="ignore"):
        jv = run_function(jvp_function(fn), *xs, *v)[n:]
        vj = run_function(vjp_function(fn), *xs, *u)[n:]
    forward = sum(float(np.sum(a * b)) for a, b in zip(jv, u, strict=True))
    reverse = sum(float(np.sum(a * b)) for a, b in zip(vj, v, strict=True))
    if np.isfinite(forward) and np.isfinite(reverse):
        assert abs(forward - reverse) <= 1e-9 * (1 + abs(forward) + abs(reverse))
