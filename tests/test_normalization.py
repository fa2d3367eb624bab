"""fj.nn.layer_norm and fj.nn.batch_norm: values against NumPy's textbook formulas and
torch.nn.functional (when installed), eager = jit = jit(fuse=False), gradients by finite
differences, running statistics over training steps, inference, errors, and kernel counts."""

from __future__ import annotations

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import nn
from fusejit.runtime.executable import partition

RNG = np.random.default_rng(0)


def fused(f, *args):
    """The kernels the CPU backend would compile for ``f``, without compiling them."""
    return partition(fj.jit(f, backend="interpret").lower(*args).optimized, fuse=True)


def ref_layer_norm(x, gamma, beta, axes, eps=1e-5):
    axes = tuple(sorted(a % x.ndim for a in axes))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def ref_batch_norm(x, gamma, beta, mean, var, training, momentum=0.1, eps=1e-5):
    """torch.nn.functional.batch_norm's documented formulas in NumPy: returns (y, mean, var)."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
        n = x.size // x.shape[1]
        new_mean = (1 - momentum) * mean + momentum * batch_mean
        new_var = (1 - momentum) * var + momentum * batch_var * n / (n - 1)
    else:
        batch_mean, batch_var, new_mean, new_var = mean, var, mean, var
    y = (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + eps)
    return y * gamma.reshape(shape) + beta.reshape(shape), new_mean, new_var


def bn_case(shape, dtype=np.float32):
    c = shape[1]
    x = (RNG.standard_normal(shape) * 2 + 3).astype(dtype)
    gamma = (1 + 0.5 * RNG.standard_normal(c)).astype(dtype)
    beta = RNG.standard_normal(c).astype(dtype)
    state = {"mean": RNG.standard_normal(c).astype(dtype), "var": (1 + RNG.random(c)).astype(dtype)}
    return x, gamma, beta, state


LN_CASES = [((6, 10), -1), ((3, 4, 5), (1, 2)), ((3, 4, 5), (0, 2)), ((2, 3, 4, 5), 1), ((4, 7), (-2, -1))]
BN_SHAPES = [(8, 3), (4, 3, 7), (4, 3, 5, 6)]


@pytest.mark.parametrize(("shape", "axis"), LN_CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_numpy_over_any_axes(shape, axis, affine):
    x = (RNG.standard_normal(shape) * 3 + 1).astype(np.float32)
    axes = (axis,) if isinstance(axis, int) else axis
    pshape = tuple(shape[a] for a in sorted(a % len(shape) for a in axes))
    gamma = RNG.standard_normal(pshape).astype(np.float32) if affine else None
    beta = RNG.standard_normal(pshape).astype(np.float32) if affine else None
    expected = ref_layer_norm(x.astype(np.float64), gamma, beta, axes)
    for run in (nn.layer_norm, fj.jit(nn.layer_norm, static_argnames="axis")):
        y = run(x, gamma, beta, axis=axis)
        assert y.dtype == np.float32 and y.shape == x.shape
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_layer_norm_equals_torch_layer_norm():
    torch = pytest.importorskip("torch")
    x = RNG.standard_normal((4, 5, 6)).astype(np.float32)
    gamma, beta = RNG.standard_normal((5, 6)).astype(np.float32), RNG.standard_normal((5, 6)).astype(np.float32)
    expected = torch.nn.functional.layer_norm(torch.from_numpy(x), (5, 6), torch.from_numpy(gamma),
                                              torch.from_numpy(beta), eps=1e-3).numpy()
    y = fj.jit(lambda x, g, b: nn.layer_norm(x, g, b, axis=(1, 2), eps=1e-3))(x, gamma, beta)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_numpy_for_2d_3d_and_4d_inputs(shape, training):
    x, gamma, beta, state = bn_case(shape)
    y_ref, mean_ref, var_ref = ref_batch_norm(*(a.astype(np.float64) for a in (x, gamma, beta)),
                                              state["mean"].astype(np.float64), state["var"].astype(np.float64),
                                              training, momentum=0.3)
    step = fj.jit(lambda x, g, b, s: nn.batch_norm(x, g, b, s, training, momentum=0.3))
    for run in (lambda *a: nn.batch_norm(*a, training, momentum=0.3), step):
        y, new = run(x, gamma, beta, state)
        assert y.dtype == np.float32 and y.shape == x.shape
        assert new["mean"].dtype == new["var"].dtype == np.float32
        np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(new["mean"], mean_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(new["var"], var_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_equals_torch_functional_batch_norm_over_two_steps_and_in_inference(shape):
    torch = pytest.importorskip("torch")
    x, gamma, beta, _ = bn_case(shape)
    x2 = RNG.standard_normal(shape).astype(np.float32)
    state = nn.batch_norm_state(shape[1])
    t_mean, t_var = torch.zeros(shape[1]), torch.ones(shape[1])  # updated in place by torch
    t_gamma, t_beta = torch.from_numpy(gamma), torch.from_numpy(beta)
    train = fj.jit(lambda x, g, b, s: nn.batch_norm(x, g, b, s, True))
    for batch in (x, x2):
        expected = torch.nn.functional.batch_norm(torch.from_numpy(batch), t_mean, t_var, t_gamma, t_beta,
                                                  training=True, momentum=0.1, eps=1e-5)
        y, state = train(batch, gamma, beta, state)
        np.testing.assert_allclose(y, expected.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state["mean"], t_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state["var"], t_var.numpy(), rtol=1e-5, atol=1e-6)
    expected = torch.nn.functional.batch_norm(torch.from_numpy(x), t_mean, t_var, t_gamma, t_beta, training=False)
    y, _ = nn.batch_norm(x, gamma, beta, state, False)
    np.testing.assert_allclose(y, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_running_statistics_follow_the_momentum_rule_with_the_unbiased_variance_over_two_steps():
    batches = [RNG.standard_normal((5, 2, 3)) * s + s for s in (1.0, 4.0)]
    state = nn.batch_norm_state(2, np.float64)
    train = fj.jit(lambda x, s: nn.batch_norm(x, None, None, s, True, momentum=0.25))
    mean, var = np.zeros(2), np.ones(2)
    for x in batches:
        values = x.transpose(1, 0, 2).reshape(2, -1)
        mean = 0.75 * mean + 0.25 * values.mean(axis=1)
        var = 0.75 * var + 0.25 * values.var(axis=1, ddof=1)
        _, state = train(x, state)
        np.testing.assert_allclose(state["mean"], mean, rtol=1e-12)
        np.testing.assert_allclose(state["var"], var, rtol=1e-12)


def test_inference_normalizes_with_the_running_statistics_and_keeps_them():
    x, gamma, beta, state = bn_case((6, 4, 3, 3), np.float64)
    y, new = fj.jit(lambda x, g, b, s: nn.batch_norm(x, g, b, s, False))(x, gamma, beta, state)
    shape = (1, 4, 1, 1)
    expected = (x - state["mean"].reshape(shape)) / np.sqrt(state["var"].reshape(shape) + 1e-5)
    np.testing.assert_allclose(y, expected * gamma.reshape(shape) + beta.reshape(shape), rtol=1e-12)
    np.testing.assert_array_equal(new["mean"], state["mean"])
    np.testing.assert_array_equal(new["var"], state["var"])


@pytest.mark.parametrize("training", [True, False])
def test_eager_jit_and_unfused_jit_agree_forward_and_backward(training):
    x, gamma, beta, state = bn_case((4, 3, 5, 5))
    w = RNG.standard_normal((4, 3, 5, 5)).astype(np.float32)
    v = RNG.standard_normal((3, 5, 5)).astype(np.float32)

    def loss(x, gamma, beta, state):
        y, new = nn.batch_norm(x, gamma, beta, state, training)
        z = nn.layer_norm(y, gamma[:, None, None] * v, None, axis=(1, 2, 3))
        return fnp.sum(z * w), new

    step = fj.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    expected = fj.tree_leaves(step(x, gamma, beta, state))
    for fuse in (True, False):
        got = fj.tree_leaves(fj.jit(step, fuse=fuse)(x, gamma, beta, state))
        for a, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-4 * max(1.0, np.abs(e).max()))


@pytest.mark.parametrize(("shape", "axis"), LN_CASES[:3])
def test_layer_norm_gradients_match_finite_differences(shape, axis):
    x = RNG.standard_normal(shape) * 2 + 1
    axes = (axis,) if isinstance(axis, int) else axis
    pshape = tuple(shape[a] for a in sorted(a % len(shape) for a in axes))
    gamma, beta = RNG.standard_normal(pshape), RNG.standard_normal(pshape)
    w = RNG.standard_normal(shape)
    assert fj.gradcheck(lambda x, g, b: fnp.sum(nn.layer_norm(x, g, b, axis=axis) * w), (x, gamma, beta))


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients_match_finite_differences(shape, training):
    x, gamma, beta, state = bn_case(shape, np.float64)
    w = RNG.standard_normal(shape)
    assert fj.gradcheck(lambda x, g, b: fnp.sum(nn.batch_norm(x, g, b, state, training)[0] * w), (x, gamma, beta))


def test_running_statistics_carry_no_gradient():
    x, gamma, beta, state = bn_case((4, 3, 5), np.float64)

    def stats(x, gamma, state):
        _, new = nn.batch_norm(x, gamma, None, state, True)
        return fnp.sum(new["mean"] * 3.0 + new["var"] * 5.0)

    gx, gstate = fj.grad(stats, argnums=(0, 2))(x, gamma, state)
    np.testing.assert_array_equal(gx, np.zeros_like(x))
    for g in gstate.values():
        np.testing.assert_array_equal(g, np.zeros(3))
    _, vjp_fn = fj.vjp(lambda x: nn.batch_norm(x, None, None, state, False)[1]["var"], x)
    np.testing.assert_array_equal(vjp_fn(np.ones(3))[0], np.zeros_like(x))


def test_dtypes_follow_the_input():
    ints = RNG.integers(0, 10, (4, 6))
    assert nn.layer_norm(ints, np.ones(6), np.zeros(6)).dtype == np.float32  # integers normalize in float32
    x64 = RNG.standard_normal((4, 6))
    assert nn.layer_norm(x64, np.ones(6, np.float32), None).dtype == np.float64
    x32 = x64.astype(np.float32)
    y, new = nn.batch_norm(x32, np.ones(6), np.zeros(6), nn.batch_norm_state(6, np.float64), True)
    assert y.dtype == np.float32  # float64 parameters do not promote a float32 input
    assert new["mean"].dtype == new["var"].dtype == np.float64  # the state keeps its own dtype
    state = nn.batch_norm_state(5)
    assert state["mean"].dtype == np.float32
    np.testing.assert_array_equal(state["mean"], np.zeros(5))
    np.testing.assert_array_equal(state["var"], np.ones(5))


@pytest.mark.parametrize(("call", "message"), [
    (lambda: nn.layer_norm(np.ones((3, 4)), np.ones(3), None), r"gamma has shape \(3,\), expected \(4,\)"),
    (lambda: nn.layer_norm(np.ones((3, 4)), None, np.ones((3, 4)), axis=0), r"beta has shape \(3, 4\)"),
    (lambda: nn.layer_norm(np.ones((3, 4)), None, None, axis=2), "axis 2 is out of range"),
    (lambda: nn.layer_norm(np.ones((3, 4)), None, None, axis=(1, -1)), "repeats an axis"),
    (lambda: nn.batch_norm(np.ones((3, 4)), np.ones(3), None, nn.batch_norm_state(4), True),
     r"gamma has shape \(3,\), expected \(4,\)"),
    (lambda: nn.batch_norm(np.ones((3, 4)), None, np.ones(5), nn.batch_norm_state(4), True), "beta has shape"),
    (lambda: nn.batch_norm(np.ones((3, 4)), None, None, nn.batch_norm_state(3), False), r"state\['mean'\]"),
    (lambda: nn.batch_norm(np.ones((3, 4)), None, None, {"mean": np.zeros(4)}, False), "keys 'mean' and 'var'"),
    (lambda: nn.batch_norm(np.ones(4), None, None, nn.batch_norm_state(4), True), "needs a batch and a channel"),
    (lambda: nn.batch_norm(np.ones((1, 4)), None, None, nn.batch_norm_state(4), True), "more than one value"),
    (lambda: nn.batch_norm_state(0), "num_features must be at least 1"),
])
def test_wrong_shapes_raise_value_errors_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_traced_training_flag_is_refused_with_a_type_error():
    x = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="training must be a Python bool"):
        fj.jit(lambda x, t: nn.batch_norm(x, None, None, nn.batch_norm_state(4), t))(x, True)


def test_both_layers_trace_in_their_named_scopes():
    x = np.ones((3, 4), np.float32)
    text = str(fj.make_ir(lambda x: nn.layer_norm(nn.batch_norm(x, None, None, nn.batch_norm_state(4), True)[0]))(x))
    assert "batch_norm" in text and "layer_norm" in text


def test_jitted_layer_norm_over_the_last_axis_is_one_row_kernel():
    x, g = np.ones((8, 16), np.float32), np.ones(16, np.float32)
    assert [k.kind for k in fused(nn.layer_norm, x, g, g).groups] == ["row"]


def test_batch_norm_forward_and_backward_of_a_conv_shaped_input_fuse_into_at_most_nine_kernels():
    x, gamma, beta, state = bn_case((4, 8, 6, 6))
    dy = RNG.standard_normal(x.shape).astype(np.float32)

    def train_step(x, gamma, beta, state, dy):
        (y, new), vjp_fn = fj.vjp(lambda x, g, b: nn.batch_norm(x, g, b, state, True), x, gamma, beta)
        return y, new, vjp_fn((dy, {"mean": np.zeros(8, np.float32), "var": np.zeros(8, np.float32)}))

    # Measured: 9. The forward is 6: two channel reductions over the non-contiguous axes
    # (0, 2, 3), each followed by a small per-channel loop kernel (mean; variance and
    # scale), and two horizontal kernels (centering with the mean update; normalizing with
    # the variance update). The backward's sum of dy joins the variance reduction; it adds
    # two channel reductions (of the gradient's terms in x_hat) and one loop kernel for
    # the input's gradient.
    assert len(fused(train_step, x, gamma, beta, state, dy).groups) <= 9
    assert len(fused(lambda *a: nn.batch_norm(*a, True), x, gamma, beta, state).groups) <= 6
