"""fj.checkpoint (rematerialization): the IR op round trips and verifies; values and
derivatives equal the function's own (every backend, both modes, second order, vmap,
scan bodies); and, structurally, the backward pass recomputes instead of saving: fewer
values live between the sweeps, and the recomputation survives common-subexpression
elimination and fusion."""

from __future__ import annotations

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.ir import parse, verify
from fusejit.ir import primitives as P
from fusejit.ir.transforms.autodiff import reverse_mode
from fusejit.ir.transforms.pipeline import optimize

RNG = np.random.default_rng(0)
LAYERS = 10


def mlp(ws, h):
    for w in ws:
        h = np.tanh(h @ w)
    return h


def segmented(k):
    """The MLP with every ``k`` consecutive layers checkpointed together."""

    def f(ws, h):
        for i in range(0, len(ws), k):
            h = fj.checkpoint(mlp)(ws[i : i + k], h)
        return h

    return f


def mlp_loss(f):
    return lambda ws, x: fnp.sum(f(ws, x) ** 2)


def mlp_args(dtype=np.float32, width=16):
    ws = [(0.3 * RNG.standard_normal((width, width))).astype(dtype) for _ in range(LAYERS)]
    return ws, RNG.standard_normal((8, width)).astype(dtype)


def is_bwd(op):
    return op.loc is not None and op.loc.is_backward


def crossing(fn):
    """The op outputs of the forward sweep that ops of the backward sweep read: what
    stays alive from one sweep to the other (parameters are alive anyway)."""
    forward = {v for op in fn.ops if not is_bwd(op) for v in op.outputs}
    return {v for op in fn.ops if is_bwd(op) for v in op.inputs if v in forward}


def crossing_kernels(fused):
    """The buffers kernels of the forward sweep write and kernels of the backward sweep
    read (a kernel holding any backward op counts as backward)."""
    written = {v for g in fused.groups if not any(map(is_bwd, g.ops)) for v in g.outputs}
    return {v for g in fused.groups if any(map(is_bwd, g.ops)) for v in g.inputs if v in written}


def close(actual, expected, rtol=1e-6, atol=1e-7):
    for a, e in zip(fj.tree_leaves(actual), fj.tree_leaves(expected), strict=True):
        assert a.dtype == e.dtype and a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------------------
# The op


def test_a_checkpoint_and_its_gradient_round_trip_through_text_and_verify():
    ws, x = mlp_args(width=4)
    loss = mlp_loss(fj.checkpoint(mlp))
    for fn in (fj.make_ir(loss)(ws, x), fj.make_ir(fj.grad(loss))(ws, x)):
        text = str(fn)
        assert str(verify(parse(text))) == text
    assert "checkpoint" in text and "body=@mlp_checkpoint" in text
    assert "prevent_cse=false" in text and "prevent_cse=true" in text  # the forward call, the recomputation


def test_eager_calls_and_the_interpreter_give_the_function_s_values():
    ws, x = mlp_args(np.float64, width=4)
    ck = fj.checkpoint(mlp)
    np.testing.assert_array_equal(ck(ws, x), mlp(ws, x))  # eager: the function itself
    fn = fj.make_ir(ck)(ws, x)
    assert [op.prim for op in fn.ops] == [P.checkpoint]
    close(fj.jit(ck, backend="interpret")(ws, x), mlp(ws, x), rtol=1e-14)


def test_the_checkpoint_type_rule_names_mismatched_operands():
    fn = fj.make_ir(fj.checkpoint(lambda a: a * 2))(np.ones(3))
    body = fn.ops[0].attrs["body"]
    with pytest.raises(
        P.IRTypeError, match=r"checkpoint: body @\w+ takes \(f64\[3\]\), but the operands are \(f64\[2\]\)"
    ):
        P.checkpoint.infer((P.TensorType(P.DType.f64, (2,)),), {"body": body, "prevent_cse": False})


# ---------------------------------------------------------------------------------------
# Values and derivatives


def test_gradients_equal_the_uncheckpointed_ones_on_every_backend():
    ws, x = mlp_args(np.float64)
    expected = fj.jit(fj.grad(mlp_loss(mlp)), backend="interpret")(ws, x)
    for f in (fj.checkpoint(mlp), segmented(3)):
        grad = fj.grad(mlp_loss(f))
        # The interpreter runs the same ops in the same order: bit for bit.
        close(fj.jit(grad, backend="interpret")(ws, x), expected, rtol=0, atol=0)
        close(fj.jit(grad)(ws, x), expected, rtol=1e-12, atol=1e-14)
        close(fj.jit(grad, fuse=False)(ws, x), expected, rtol=1e-12, atol=1e-14)
        close(grad(ws, x), expected, rtol=1e-12, atol=1e-14)  # grad without jit


def test_derivatives_match_finite_differences_in_both_modes_and_to_second_order():
    w, x = 0.5 * RNG.standard_normal((3, 3)), RNG.standard_normal((2, 3))

    @fj.checkpoint
    def block(w, h):
        a = np.tanh(h @ w)
        return np.sin(a) * a + h, a.sum()

    def loss(w, x):
        h, s = block(w, x)
        h, t = block(w, h)
        return (h * h).sum() + s * t

    assert fj.gradcheck(loss, (w, x))  # reverse and forward mode
    assert fj.gradcheck(lambda w, x: (fj.grad(loss)(w, x) ** 2).sum(), (w, x))  # grad of grad
    hess = fj.hessian(lambda w: loss(w, x))(w)  # jacfwd(jacrev): forward mode of the recomputation
    unchecked = fj.hessian(lambda w: _loss_without_checkpoint(w, x))(w)
    np.testing.assert_allclose(hess, unchecked, rtol=1e-10, atol=1e-12)


def _loss_without_checkpoint(w, x):
    def block(w, h):
        a = np.tanh(h @ w)
        return np.sin(a) * a + h, a.sum()

    h, s = block(w, x)
    h, t = block(w, h)
    return (h * h).sum() + s * t


def test_fj_vjp_saves_only_the_operands_and_its_backward_recomputes():
    ws, x = mlp_args(np.float64, width=4)
    out, vjp_fn = fj.vjp(fj.checkpoint(mlp), ws, x)
    ref_out, ref_vjp = fj.vjp(mlp, ws, x)
    ct = RNG.standard_normal(out.shape)
    np.testing.assert_array_equal(out, ref_out)
    close(vjp_fn(ct), ref_vjp(ct), rtol=1e-12, atol=1e-14)


def test_pytrees_keyword_arguments_static_arguments_and_closed_over_values():
    w, x = RNG.standard_normal((3, 3)), RNG.standard_normal((2, 3))

    def f(params, x, act, *, scale):
        h = act(x @ params["w"]) * scale
        return {"h": h, "parts": [h.sum(), (h * h).sum()]}

    ck = fj.checkpoint(f, static_argnums=2)

    def loss(w, x, s, checkpointed=True):
        out = (ck if checkpointed else f)({"w": w}, x, np.tanh, scale=s)
        return out["h"].sum() + out["parts"][1]

    close(
        fj.grad(loss, argnums=(0, 1, 2))(w, x, 0.5),
        fj.grad(loss, argnums=(0, 1, 2))(w, x, 0.5, False),
        rtol=1e-12,
        atol=1e-14,
    )

    def closing(w, x):  # w is closed over: an operand of the checkpoint, differentiated like one
        return fj.checkpoint(lambda h: np.sin(h @ w))(x).sum()

    np.testing.assert_allclose(
        fj.grad(closing)(w, x), fj.grad(lambda w, x: np.sin(x @ w).sum())(w, x), rtol=1e-12
    )
    assert fj.gradcheck(closing, (w, x))


def test_an_argument_that_is_not_an_array_is_a_clear_error():
    with pytest.raises(TypeError, match=r"checkpoint <lambda>: s is a str, not an array or a scalar"):
        fj.jit(lambda x: fj.checkpoint(lambda x, s: x)(x, "relu"))(np.ones(2))  # noqa: ARG005
    with pytest.raises(ValueError, match="static_argnums has 3"):
        fj.jit(lambda x: fj.checkpoint(lambda x: x, static_argnums=3)(x))(np.ones(2))


def test_vmap_of_a_checkpoint_and_of_its_gradient_equals_one_call_per_example():
    w = RNG.standard_normal((3, 3))
    xs = RNG.standard_normal((4, 2, 3))
    loss = lambda w, x: np.tanh(fj.checkpoint(lambda h: np.sin(h @ w) @ w)(x)).sum()  # noqa: E731
    per_example = fj.vmap(fj.grad(loss), in_axes=(None, 0))(w, xs)
    values = fj.jit(fj.vmap(fj.checkpoint(lambda x: np.sin(x @ w))))(xs)
    for i in range(4):
        np.testing.assert_allclose(per_example[i], fj.grad(loss)(w, xs[i]), rtol=1e-12)
        np.testing.assert_allclose(values[i], np.sin(xs[i] @ w), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# Structure: what is saved, what is recomputed


def test_a_checkpointed_chain_keeps_only_its_inputs_between_the_sweeps():
    """A 10-layer tanh MLP: without checkpointing the backward pass reads every layer's
    output from the forward pass; checkpointed whole, only the network's output (the
    loss reads it); in segments of 3 layers, the 3 segment boundaries and the output.
    Counted three ways: what reverse mode saves, what crosses the sweeps in the optimized
    function, and which buffers forward kernels write for backward kernels."""
    ws, x = mlp_args()
    saved, crossed, buffers = {}, {}, {}
    for name, f in (("plain", mlp), ("whole", fj.checkpoint(mlp)), ("segments", segmented(3))):
        traced = fj.make_ir(mlp_loss(f))(ws, x)
        saved[name] = [v for v in reverse_mode(traced, unit_seed=0).saved if v not in traced.params]
        lowered = fj.jit(fj.grad(mlp_loss(f))).lower(ws, x)
        crossed[name] = crossing(lowered.optimized)
        buffers[name] = crossing_kernels(lowered.fused)
    assert [len(saved[k]) for k in ("plain", "whole", "segments")] == [10, 1, 4]
    assert [len(crossed[k]) for k in ("plain", "whole", "segments")] == [10, 1, 4]
    assert len(buffers["whole"]) == 1 and len(buffers["segments"]) <= 4 < len(buffers["plain"])


def test_the_recomputation_survives_cse_and_runs_in_the_backward_sweep():
    ws, x = mlp_args(width=4)
    for f, recomputed in ((mlp, 0), (fj.checkpoint(mlp), LAYERS)):
        fn = fj.jit(fj.grad(mlp_loss(f))).lower(ws, x).optimized
        assert not any(op.prim is P.checkpoint for op in fn.ops)  # fusion sees ordinary ops
        tanh = [op for op in fn.ops if op.prim is P.tanh]
        assert len(tanh) == LAYERS + recomputed
        assert sum(map(is_bwd, tanh)) == recomputed
    # Without a derivative the call is inlined before CSE: it merges with an identical
    # computation outside it, as any ops would.
    fn = optimize(fj.make_ir(lambda ws, x: fj.checkpoint(mlp)(ws, x) + mlp(ws, x))(ws, x))[0]
    assert sum(op.prim is P.tanh for op in fn.ops) == LAYERS


def test_a_checkpointed_scan_body_stacks_only_its_carry():
    """Per step, the forward scan of an uncheckpointed body stacks five values for the
    backward scan (the carry and four intermediates); of a checkpointed one only the
    carry (the slice is read from xs), and the backward scan recomputes the step."""
    w, xs, h0 = 0.4 * RNG.standard_normal((6, 6)), RNG.standard_normal((5, 3, 6)), RNG.standard_normal((3, 6))

    def step(w):
        def body(h, x):
            a = np.tanh(h @ w + x)
            c = np.tanh((np.sin(a) * a) @ w)
            return c, c.sum()

        return body

    def loss(w, xs, h0, checkpointed=True):
        h, ys = fj.lax.scan(fj.checkpoint(step(w)) if checkpointed else step(w), h0, xs)
        return (h**2).sum() + (ys**2).sum()

    stacked = {}
    for checkpointed in (False, True):
        grad = fj.grad(lambda w, xs, h0, c=checkpointed: loss(w, xs, h0, c), argnums=(0, 1, 2))
        fn = fj.make_ir(grad)(w, xs, h0)
        forward, backward = [op for op in fn.ops if op.prim is P.scan]
        stacked[checkpointed] = forward.outputs[2:]  # after the carry and ys
        recomputes = [op for op in backward.attrs["body"].ops if op.prim is P.checkpoint]
        assert [op.attrs["prevent_cse"] for op in recomputes] == ([True] if checkpointed else [])
    assert len(stacked[False]) == 5 and [v.shape for v in stacked[True]] == [(5, 3, 6)]

    grad = fj.grad(loss, argnums=(0, 1, 2))
    expected = grad(w, xs, h0, False)
    close(fj.jit(grad, backend="interpret")(w, xs, h0), expected, rtol=1e-12, atol=1e-14)
    close(fj.jit(grad)(w, xs, h0), expected, rtol=1e-12, atol=1e-14)
    close(fj.jit(grad, fuse=False)(w, xs, h0), expected, rtol=1e-12, atol=1e-14)
    assert fj.gradcheck(loss, (w, xs, h0))
    # second order: the backward scan's recomputation differentiated again
    assert fj.gradcheck(lambda w, h0: (fj.grad(loss)(w, xs[:3], h0) ** 2).sum(), (w, h0))


def test_nested_checkpoints_differentiate_to_second_order_compiled():
    w, x = 0.5 * RNG.standard_normal((3, 3)), RNG.standard_normal((2, 3))

    def f(w, x, checkpoint=fj.checkpoint):
        inner = checkpoint(lambda a: np.sin(a @ w))
        outer = checkpoint(lambda a: inner(inner(a)) * a)
        return outer(x).sum()

    def plain(w, x):
        return f(w, x, checkpoint=lambda g: g)

    assert fj.gradcheck(f, (w, x))
    close(fj.jit(fj.grad(f))(w, x), fj.grad(plain)(w, x), rtol=1e-12, atol=1e-14)
    close(fj.jit(fj.hessian(f))(w, x), fj.hessian(plain)(w, x), rtol=1e-10, atol=1e-12)
