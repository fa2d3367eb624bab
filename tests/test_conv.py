"""Convolution and pooling: compiled kernels against a direct NumPy reference, gradients
against finite differences, fused == unfused == eager on CNN chains, batching, and the
kernel structure (counts and strategies, never timings)."""

from __future__ import annotations

import re

import conv_reference
import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import nn
from fusejit.codegen import conv as conv_codegen
from fusejit.codegen import conv_gemm, conv_kn2row, conv_taps
from fusejit.ir import primitives as P
from fusejit.tracer.tracing import bind

RNG = np.random.default_rng(11)

# (label, lhs shape, rhs shape, strides, lo, hi, lhs_dilation, rhs_dilation, groups)
CONVS = [
    ("1-d plain", (2, 3, 9), (4, 3, 3), (1,), (0,), (0,), (1,), (1,), 1),
    ("1-d stride 2, padded", (1, 2, 10), (3, 2, 4), (2,), (2,), (1,), (1,), (1,), 1),
    ("1-d rhs dilation, batch 1", (1, 4, 11), (2, 4, 3), (1,), (1,), (3,), (1,), (2,), 1),
    ("1-d lhs dilation, cropped", (2, 2, 5), (2, 2, 2), (1,), (-1,), (1,), (3,), (1,), 1),
    ("2-d same padding, odd sizes", (2, 3, 7, 5), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), 1),
    ("2-d strides, asymmetric padding", (1, 2, 9, 8), (3, 2, 3, 2), (2, 3), (0, 2), (1, 0), (1, 1), (1, 1), 1),
    ("2-d groups", (2, 4, 6, 6), (6, 2, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), 2),
    ("2-d depthwise, dilated", (1, 3, 7, 7), (3, 1, 3, 3), (1, 1), (2, 2), (2, 2), (1, 1), (2, 2), 3),
    ("2-d all at once", (2, 4, 5, 6), (4, 2, 2, 3), (2, 1), (1, 0), (2, 1), (2, 1), (1, 2), 2),
    ("2-d many channels (im2col)", (2, 8, 6, 5), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), 1),
    ("2-d many channels, strided, groups", (1, 12, 7, 7), (8, 6, 3, 3), (2, 2), (1, 1), (0, 0), (1, 1), (1, 1), 2),
    ("2-d rhs dilation, cropped, strided rows", (2, 5, 9, 11), (4, 5, 2, 3), (1, 2), (-1, 2), (2, -1), (1, 1), (2, 1),
     1),
    ("2-d padded past the window", (1, 3, 4, 5), (2, 3, 3, 3), (1, 1), (3, 2), (4, 3), (1, 1), (1, 1), 1),
    ("2-d 1x1 window", (2, 6, 5, 4), (3, 6, 1, 1), (1, 1), (0, 0), (0, 0), (1, 1), (1, 1), 1),
    ("3-d strided rows, dilated", (2, 4, 4, 5, 6), (3, 4, 3, 2, 3), (1, 1, 2), (1, 0, 1), (1, 2, 0), (1, 1, 1),
     (1, 2, 1), 1),
]


def _takes_shifted(case):
    """Whether a conv can run as shifted GEMMs: 2-d or more, no lhs dilation, stride 1 on
    every spatial axis but the last (and a window no larger than the output, as every
    case's is)."""
    _, lhs, _, strides, _, _, lhs_dilation, _, _ = case
    return len(lhs) > 3 and set(lhs_dilation) == {1} and set(strides[:-1]) == {1}


def _takes_taps(case):
    """Whether a conv can run as taps over padded planes: unit strides, no lhs dilation,
    no negative padding (and a window no larger than the output, as every case's is)."""
    _, _, _, strides, lo, _, lhs_dilation, _, _ = case
    return set(strides) == {1} and set(lhs_dilation) == {1} and min(lo) >= 0


def _takes_kn2row(case):
    """Whether a conv can run as kn2row: unit strides and no lhs dilation (and a window no
    larger than the output, as every case's is)."""
    _, _, _, strides, _, _, lhs_dilation, _, _ = case
    return set(strides) == {1} and set(lhs_dilation) == {1}


def _attrs(case):
    _, _, _, s, lo, hi, ld, rd, g = case
    return {"strides": s, "lo": lo, "hi": hi, "lhs_dilation": ld, "rhs_dilation": rd, "groups": g}


def _conv(attrs):
    return lambda x, w: bind(P.conv, x, w, **attrs)


@pytest.fixture(params=["direct", "taps", "kn2row", "gemm", "shifted"])
def strategy(request, monkeypatch):
    """Each conv kernel strategy in turn (the choice is read when a kernel is lowered)."""
    monkeypatch.setattr(conv_codegen, "DIRECT_MAX_CONTRACTION", 10**9 if request.param == "direct" else 0)
    monkeypatch.setattr(conv_codegen, "SHIFTED_MIN_ROWS", 0 if request.param == "shifted" else 10**9)
    monkeypatch.setattr(conv_codegen, "SHIFTED_MIN_CHANNELS", 0)
    monkeypatch.setattr(conv_taps, "TAPS_MAX_CONTRACTION", 10**9 if request.param == "taps" else 0)
    monkeypatch.setattr(conv_taps, "TAPS_MAX_CONTRACTION_LARGE", 0)
    monkeypatch.setattr(conv_kn2row, "KN2ROW_MIN_CHANNELS", 0 if request.param == "kn2row" else 10**9)
    monkeypatch.setattr(conv_kn2row, "KN2ROW_MIN_POSITIONS", 0)
    if request.param == "kn2row":  # whatever the channel counts
        monkeypatch.setattr(conv_codegen, "uses_kn2row", conv_gemm.unit_stride_conv)
    return request.param


@pytest.mark.parametrize("case", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_conv_matches_a_direct_loop(case, dtype, strategy):
    x = RNG.standard_normal(case[1]).astype(dtype)
    w = RNG.standard_normal(case[2]).astype(dtype)
    attrs = _attrs(case)
    expected = conv_reference.conv(x, w, **attrs)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    kernel = f"conv_{strategy}"
    if ((strategy == "shifted" and not _takes_shifted(case)) or (strategy == "taps" and not _takes_taps(case))
            or (strategy == "kn2row" and not _takes_kn2row(case))):
        kernel = "conv_gemm"
    for fuse in (True, False):
        compiled = fj.jit(_conv(attrs), fuse=fuse).lower(x, w).compile()
        assert [k.name.split("_f")[0] for k in compiled.kernels] == [kernel]
        out = compiled(x, w)
        assert out.dtype == dtype and out.shape == expected.shape
        np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


def weighted_conv_loss(case):
    """Random operands of ``case`` and a loss whose gradient is a conv's vjp with a
    random cotangent."""
    x = RNG.standard_normal(case[1])
    w = RNG.standard_normal(case[2])
    attrs = _attrs(case)
    weights = RNG.standard_normal(conv_reference.conv(x, w, **attrs).shape)

    def loss(x, w):
        return fnp.sum(bind(P.conv, x, w, **attrs) * weights)

    return x, w, loss


@pytest.mark.parametrize("case", CONVS, ids=[c[0] for c in CONVS])
def test_conv_gradients_match_finite_differences(case):
    x, w, loss = weighted_conv_loss(case)
    assert fj.gradcheck(loss, (x, w))
    compiled = fj.jit(fj.grad(loss, argnums=(0, 1)))(x, w)
    eager = fj.grad(loss, argnums=(0, 1))(x, w)
    for c, e in zip(compiled, eager, strict=True):
        np.testing.assert_allclose(c, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", CONVS, ids=[c[0] for c in CONVS])
@pytest.mark.parametrize("strategy", ["taps", "kn2row"], indirect=True)
def test_conv_gradients_match_eager_with_the_newer_strategies(case, strategy):
    """The input and weight gradients, whose convs run as taps or kn2row wherever their
    shapes allow (unit strides, no lhs dilation), serial and on threads."""
    x, w, loss = weighted_conv_loss(case)
    for threshold in (1 << 40, 1):
        with fj.config.override(parallel_threshold=threshold):
            grad = fj.jit(fj.grad(loss, argnums=(0, 1))).lower(x, w).compile()
        for c, e in zip(grad(x, w), fj.grad(loss, argnums=(0, 1))(x, w), strict=True):
            np.testing.assert_allclose(c, e, rtol=1e-10, atol=1e-10)


UNIT_STRIDES = [c for c in CONVS if _takes_shifted(c) and set(c[3]) == {1}]


@pytest.mark.parametrize("case", UNIT_STRIDES, ids=[c[0] for c in UNIT_STRIDES])
def test_shifted_gemm_gradients_match_eager(case, monkeypatch):
    """The input gradient of a conv of unit strides is such a conv again (no lhs
    dilation): it runs as shifted GEMMs too."""
    monkeypatch.setattr(conv_codegen, "DIRECT_MAX_CONTRACTION", 0)
    monkeypatch.setattr(conv_codegen, "SHIFTED_MIN_ROWS", 0)
    monkeypatch.setattr(conv_codegen, "SHIFTED_MIN_CHANNELS", 0)
    monkeypatch.setattr(conv_taps, "TAPS_MAX_CONTRACTION", 0)
    monkeypatch.setattr(conv_taps, "TAPS_MAX_CONTRACTION_LARGE", 0)
    monkeypatch.setattr(conv_kn2row, "KN2ROW_MIN_CHANNELS", 10**9)
    x, w, loss = weighted_conv_loss(case)
    grad = fj.jit(fj.grad(loss, argnums=(0, 1))).lower(x, w).compile()
    assert "conv_shifted" in [k.name.split("_f")[0] for k in grad.kernels]
    for c, e in zip(grad(x, w), fj.grad(loss, argnums=(0, 1))(x, w), strict=True):
        np.testing.assert_allclose(c, e, rtol=1e-10, atol=1e-10)


BATCHED = [c for c in CONVS if c[1][0] > 1]

def _chunked(kernel) -> bool:
    """Whether a kernel runs its loop in chunks on fusejit's threads."""
    return "chunk, chunks, worker" in kernel.source


ONE_THREAD = pytest.mark.skipif(fj.codegen.target.CPU.max_threads() < 2, reason="one thread: no loop runs on threads")


@ONE_THREAD
@pytest.mark.parametrize("case", BATCHED, ids=[c[0] for c in BATCHED])
@pytest.mark.parametrize("strategy", ["taps", "kn2row", "gemm", "shifted"], indirect=True)
def test_a_conv_on_threads_matches_a_direct_loop(case, strategy):
    """Above the parallel threshold a GEMM strategy's loop over chunks of samples runs on
    threads, each chunk in its thread's copy of the scratch. (Not bit for bit the serial
    kernel's values: where it has fewer chunks than threads, its GEMMs are wider, and
    the BLAS may sum in another order.)"""
    x = RNG.standard_normal(case[1])
    w = RNG.standard_normal(case[2])
    attrs = _attrs(case)
    with fj.config.override(parallel_threshold=1):
        threaded = fj.jit(_conv(attrs)).lower(x, w).compile()
    (kernel,) = threaded.kernels
    assert _chunked(kernel) and not _chunked(fj.jit(_conv(attrs)).lower(x, w).compile().kernels[0]), kernel.source
    np.testing.assert_allclose(threaded(x, w), conv_reference.conv(x, w, **attrs), rtol=1e-12, atol=1e-12)


@ONE_THREAD
@pytest.mark.parametrize("case", BATCHED, ids=[c[0] for c in BATCHED])
def test_conv_gradients_on_threads_match_eager(case):
    """The input and weight gradients' convs on threads (the weight gradient's samples are
    the input's channels, chunked across threads where a serial kernel takes them all at
    once)."""
    x, w, loss = weighted_conv_loss(case)
    with fj.config.override(parallel_threshold=1):
        grad = fj.jit(fj.grad(loss, argnums=(0, 1))).lower(x, w).compile()
    assert any(_chunked(k) for k in grad.kernels if k.name.startswith("conv_gemm"))
    for c, e in zip(grad(x, w), fj.grad(loss, argnums=(0, 1))(x, w), strict=True):
        np.testing.assert_allclose(c, e, rtol=1e-10, atol=1e-10)


def test_default_strategy_by_contraction_and_plane_size():
    """Direct loops for a few products per output; taps over padded planes for a short
    contraction (9), or up to 144 over planes of 256 positions or more; kn2row for at
    least 16 input channels and no more output channels than input ones; shifted GEMMs,
    each contracting 32 channels x 3 window columns, for 64 output channels or 8x8
    planes; im2col + GEMM for the rest."""
    conv = fj.jit(lambda x, w: nn.conv2d(x, w))
    for c, o, side, window, kernel in [(1, 4, 6, 2, "conv_direct"), (1, 4, 6, 3, "conv_taps"),
                                       (16, 8, 18, 3, "conv_taps"), (2, 32, 10, 3, "conv_gemm"),
                                       (32, 64, 6, 3, "conv_shifted"), (32, 8, 10, 3, "conv_kn2row"),
                                       (8, 16, 9, 3, "conv_gemm"), (8, 64, 10, 3, "conv_gemm"),
                                       (64, 32, 6, 3, "conv_kn2row")]:
        x, w = np.ones((2, c, side, side), np.float32), np.ones((o, c, window, window), np.float32)
        assert conv.lower(x, w).compile().kernels[0].name.startswith(kernel), (c, o, side)


@pytest.mark.parametrize("case", CONVS[:6], ids=[c[0] for c in CONVS[:6]])
def test_conv_jvp_is_the_sum_of_two_convs(case):
    x, w = RNG.standard_normal(case[1]), RNG.standard_normal(case[2])
    tx, tw = RNG.standard_normal(case[1]), RNG.standard_normal(case[2])
    attrs = _attrs(case)
    _, tangent = fj.jvp(_conv(attrs), (x, w), (tx, tw))
    eps = 1e-6
    numeric = (conv_reference.conv(x + eps * tx, w + eps * tw, **attrs)
               - conv_reference.conv(x - eps * tx, w - eps * tw, **attrs)) / (2 * eps)
    np.testing.assert_allclose(tangent, numeric, rtol=1e-6, atol=1e-6)


# (label, shape, window, strides, lo, hi)
POOLS = [
    ("2x2 tiles", (2, 3, 6, 4), (1, 1, 2, 2), (1, 1, 2, 2), (0, 0, 0, 0), (0, 0, 0, 0)),
    ("3x3 stride 2 padded, odd", (1, 2, 7, 5), (1, 1, 3, 3), (1, 1, 2, 2), (0, 0, 1, 1), (0, 0, 1, 1)),
    ("overlapping stride 1", (2, 1, 5, 5), (1, 1, 2, 3), (1, 1, 1, 1), (0, 0, 0, 0), (0, 0, 0, 0)),
    ("1-d cropped", (2, 2, 9), (1, 1, 3), (1, 1, 2), (0, 0, -1), (0, 0, 1)),
    ("every axis pooled", (4, 5), (2, 2), (2, 1), (1, 0), (0, 1)),
]


def _pool_attrs(case):
    _, _, window, strides, lo, hi = case
    return {"window": window, "strides": strides, "lo": lo, "hi": hi}


@pytest.mark.parametrize("case", POOLS, ids=[c[0] for c in POOLS])
@pytest.mark.parametrize("prim", [P.max_pool, P.avg_pool], ids=["max", "avg"])
def test_compiled_pools_and_their_gradients_match_direct_loops(case, prim):
    x = np.round(RNG.standard_normal(case[1]) * 2).astype(np.float32)  # many ties
    attrs = _pool_attrs(case)
    ref = conv_reference.max_pool if prim is P.max_pool else conv_reference.avg_pool
    np.testing.assert_allclose(fj.jit(lambda x: bind(prim, x, **attrs))(x), ref(x, **attrs), rtol=1e-6)
    g = np.round(RNG.standard_normal(conv_reference.pool_shape(x.shape, **attrs)) * 4).astype(np.float32)
    grad = fj.jit(fj.grad(lambda x: fnp.sum(bind(prim, x, **attrs) * g)))(x)
    if prim is P.max_pool:
        expected = conv_reference.max_pool_scatter(x, g, **attrs)
    else:
        expected = conv_reference.avg_pool_scatter(g, **attrs, shape=x.shape)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)
    x64 = RNG.standard_normal(case[1])  # no ties: finite differences are valid
    assert fj.gradcheck(lambda x: fnp.sum(bind(prim, x, **attrs) * g.astype(np.float64)), (x64,))


def test_max_pool_gradient_goes_to_the_first_of_tied_elements():
    x = np.array([[[[1.0, 3.0], [3.0, 0.0]]]], np.float32)  # the 3s tie
    for grad in (fj.grad(lambda x: nn.max_pool2d(x, 2).sum()), fj.jit(fj.grad(lambda x: nn.max_pool2d(x, 2).sum()))):
        np.testing.assert_array_equal(grad(x), [[[[0.0, 1.0], [0.0, 0.0]]]])


# A window beyond the operand's end: it holds padding only, which reads -inf like the
# all -inf windows of the tests below, and has no winner (its cotangent goes nowhere).
ALL_PADDING = ("a window of padding only", (2, 1, 3), (1, 1, 2), (1, 1, 2), (0, 0, 0), (0, 0, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [*POOLS, ALL_PADDING], ids=[c[0] for c in [*POOLS, ALL_PADDING]])
def test_max_pool_winner_with_nans_signed_zeros_and_infinities_is_the_first_largest(case, dtype):
    """The kernels pick each window's winner without branches on the data (its maximum
    ignoring NaNs, then the first NaN, else the first element equal to the maximum):
    exactly the sequential scan's choice, which the reference makes, on windows full of
    ties between -0 and +0, infinities and NaNs, and on windows of only -inf or only NaN
    next to padding (never chosen)."""
    attrs = _pool_attrs(case)
    values = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1.0, -1.0, 2.0], dtype)
    rng = np.random.default_rng(7)
    xs = [values[rng.integers(0, len(values), case[1])], np.full(case[1], -np.inf, dtype),
          np.full(case[1], np.nan, dtype), np.where(rng.random(case[1]) < 0.5, -0.0, 0.0).astype(dtype)]
    shape = conv_reference.pool_shape(case[1], **attrs)
    g = rng.integers(-8, 8, shape).astype(dtype)  # small integers: sums of overlapping windows are exact
    t = rng.integers(-8, 8, case[1]).astype(dtype)
    scatter = fj.jit(lambda x, g: bind(P.max_pool_scatter, x, g, **attrs))
    gather = fj.jit(lambda x, t: bind(P.max_pool_gather, x, t, **attrs))
    for x in xs:
        np.testing.assert_array_equal(scatter(x, g), conv_reference.max_pool_scatter(x, g, **attrs))
        np.testing.assert_array_equal(gather(x, t), conv_reference.max_pool_gather(x, t, **attrs))


def _maximum_fold(vals, dtype):
    """``np.maximum`` folded from -inf as the kernels define it: NaN if any is NaN, and
    -0 < +0 (NumPy's own reduction returns either zero of a tie)."""
    vals = np.asarray(vals, dtype)
    if np.isnan(vals).any():
        return dtype(np.nan)
    top = vals.max(initial=-np.inf)
    if top == 0:
        return dtype(0.0) if np.any((vals == 0) & ~np.signbit(vals)) else dtype(-0.0)
    return dtype(top)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [*POOLS, ALL_PADDING], ids=[c[0] for c in [*POOLS, ALL_PADDING]])
def test_max_pool_keeps_nans_and_orders_signed_zeros(case, dtype):
    """The forward kernel folds each window skipping NaNs and signs a zero maximum from
    the sum of the window's zeros, refolding only windows with a NaN: bit for bit the
    ``maximum`` fold, on windows of -0 and +0 ties, infinities, NaNs and padding."""
    attrs = _pool_attrs(case)
    rng = np.random.default_rng(5)
    values = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 1.0, -1.0], dtype)
    zeros = np.array([-0.0, 0.0, -1.0], dtype)
    xs = [values[rng.integers(0, len(values), case[1])], zeros[rng.integers(0, 3, case[1])],
          np.full(case[1], -0.0, dtype), np.full(case[1], -np.inf, dtype)]
    pool = fj.jit(lambda x: bind(P.max_pool, x, **attrs))
    for x in xs:
        want = np.array([_maximum_fold([x[q] for q in members if q is not None], dtype)
                         for _, members in conv_reference._windows(x.shape, **attrs)], dtype)
        got = np.asarray(pool(x)).ravel()
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("case", POOLS[:3], ids=[c[0] for c in POOLS[:3]])
def test_max_pool_derivative_ops_are_each_others_transposes(case):
    x = RNG.standard_normal(case[1])
    attrs = _pool_attrs(case)
    t = RNG.standard_normal(x.shape)
    _, tangent = fj.jvp(lambda x: bind(P.max_pool, x, **attrs), (x,), (t,))
    np.testing.assert_allclose(tangent, conv_reference.max_pool_gather(x, t, **attrs))
    # <scatter(g), t> == <g, gather(t)>, and second derivatives through both
    g = RNG.standard_normal(tangent.shape)
    lhs = np.sum(bind(P.max_pool_scatter, x, g, **attrs) * t)
    np.testing.assert_allclose(lhs, np.sum(g * bind(P.max_pool_gather, x, t, **attrs)))
    assert fj.gradcheck(lambda g: fnp.sum(bind(P.max_pool_scatter, x, g, **attrs) ** 2), (g,))
    assert fj.gradcheck(lambda t: fnp.sum(bind(P.max_pool_gather, x, t, **attrs) ** 2), (t,))


def _cnn(x, w1, b1, w2, b2):
    h = nn.max_pool2d(nn.relu(nn.conv2d(x, w1, b1, padding=1)), 2)
    h = nn.avg_pool2d(nn.relu(nn.conv2d(h, w2, b2, stride=1, padding=1)), 2, stride=1)
    return h


def _cnn_params(cin=1, c1=4, c2=12, size=8, n=3, dtype=np.float32):
    return (RNG.standard_normal((n, cin, size, size)).astype(dtype),
            (RNG.standard_normal((c1, cin, 3, 3)) / 3).astype(dtype), RNG.standard_normal(c1).astype(dtype),
            (RNG.standard_normal((c2, c1, 3, 3)) / 6).astype(dtype), RNG.standard_normal(c2).astype(dtype))


def test_conv_bias_relu_pool_chain_fused_equals_unfused_equals_eager():
    args = _cnn_params()
    eager = _cnn(*args)
    np.testing.assert_allclose(fj.jit(_cnn)(*args), eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fj.jit(_cnn, fuse=False)(*args), eager, rtol=1e-5, atol=1e-5)

    def loss(w1, b1, w2, b2, x):
        return fnp.sum(_cnn(x, w1, b1, w2, b2) ** 2)

    grads = fj.grad(loss, argnums=(0, 1, 2, 3))
    x, *params = args
    expected = grads(*params, x)
    for fuse in (True, False):
        for got, want in zip(fj.jit(grads, fuse=fuse)(*params, x), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert fj.gradcheck(loss, (*(p.astype(np.float64) for p in params), x.astype(np.float64)))


def test_conv_bias_relu_is_one_kernel_with_either_strategy(strategy):
    for cin, cout in [(1, 8), (8, 16)]:
        x = RNG.standard_normal((2, cin, 6, 6)).astype(np.float32)
        w = RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32)
        b = RNG.standard_normal(cout).astype(np.float32)
        compiled = fj.jit(lambda x, w, b: nn.relu(nn.conv2d(x, w, b, padding=1))).lower(x, w, b).compile()
        (kernel,) = compiled.kernels
        assert kernel.name.startswith(f"conv_{strategy}"), kernel.name
        assert {"conv", "add"} <= {op.split()[0] for op in kernel.ops}
        source = compiled.kernel_source()
        assert ("gemm_f32(" in source) == (strategy in ("gemm", "shifted", "kn2row"))  # BLAS, or direct loops


@pytest.mark.parametrize("pool", ["max 2", "avg 2 stride 1", "max 3 stride 2 padded"])
def test_relu_and_pool_after_a_conv_are_one_kernel_with_either_strategy(strategy, pool):
    x, w1, b1, *_ = _cnn_params(cin=3, c1=8, size=7, n=3)
    pooled = {"max 2": lambda h: nn.max_pool2d(h, 2), "avg 2 stride 1": lambda h: nn.avg_pool2d(h, 2, stride=1),
              "max 3 stride 2 padded": lambda h: nn.max_pool2d(h, 3, stride=2, padding=1)}[pool]

    def layer(x, w, b):
        return pooled(nn.relu(nn.conv2d(x, w, b, padding=1)))

    def layer_and_activation(x, w, b):  # a training step keeps the activation for the backward pass
        h = nn.relu(nn.conv2d(x, w, b, padding=1))
        return pooled(h), h

    for fn in (layer, layer_and_activation):
        compiled = fj.jit(fn).lower(x, w1, b1).compile()
        (kernel,) = compiled.kernels
        assert kernel.name.startswith(f"conv_{strategy}"), kernel.name
        assert {"conv", "add", "select", "max_pool" if pool.startswith("max") else "avg_pool"} <= {
            op.split()[0] for op in kernel.ops}
        for got, want in zip(fj.tree_flatten(compiled(x, w1, b1))[0], fj.tree_flatten(fn(x, w1, b1))[0],
                             strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_pool_over_channels_stays_out_of_the_conv_kernel_and_the_report_says_why():
    x, w1, b1, *_ = _cnn_params(cin=3, c1=8)

    def layer(x, w, b):
        h = nn.relu(nn.conv2d(x, w, b, padding=1))
        return bind(P.max_pool, h, window=(1, 2, 2, 2), strides=(1, 2, 2, 2), lo=(0, 0, 0, 0), hi=(0, 0, 0, 0))

    lowered = fj.jit(layer).lower(x, w1, b1)
    compiled = lowered.compile()
    assert [k.name.split("_f32")[0] for k in compiled.kernels] == ["conv_gemm", "max_pool"]
    assert "a conv kernel's pool windows lie within one (sample, channel) plane" in lowered.fusion_report()
    h = np.maximum(conv_reference.conv(x, w1, strides=(1, 1), lo=(1, 1), hi=(1, 1), lhs_dilation=(1, 1),
                                       rhs_dilation=(1, 1), groups=1) + b1.reshape(1, -1, 1, 1), 0)
    n, c, hh, ww = h.shape
    expected = h.reshape(n, c // 2, 2, hh // 2, 2, ww // 2, 2).max(axis=(2, 4, 6))
    np.testing.assert_allclose(compiled(x, w1, b1), expected, rtol=1e-5, atol=1e-5)


def test_the_forward_pass_of_a_cnn_step_runs_no_pool_kernel_of_its_own():
    x, w1, b1, w2, b2 = _cnn_params(cin=1, c1=4, c2=8, size=8, n=4)

    def loss(w1, b1, w2, b2, x):
        return fnp.sum(_cnn(x, w1, b1, w2, b2) ** 2)

    compiled = fj.jit(fj.value_and_grad(loss, argnums=(0, 1, 2, 3))).lower(w1, b1, w2, b2, x).compile()
    names = [k.name.split("_f")[0] for k in compiled.kernels]
    # Both pools (max and avg) run inside their conv kernels; the backward pass keeps its
    # scatter kernels.
    assert "max_pool" not in names and "avg_pool" not in names, names
    assert names.count("max_pool_scatter") == 1 and names.count("avg_pool_scatter") == 1, names


def test_conv_ir_prints_and_parses_back():
    args = _cnn_params()
    text = fj.jit(fj.grad(lambda *a: fnp.sum(_cnn(*a)), argnums=1)).lower(*args).as_text("optimized")
    for name in ("conv", "max_pool_scatter", "avg_pool_scatter"):
        assert f" {name} " in text
    assert str(fj.ir.parse(text)) == text


def test_vmap_of_conv_over_inputs_kernels_or_both():
    x = RNG.standard_normal((4, 2, 6, 5, 5))
    w = RNG.standard_normal((4, 6, 3, 3, 3))
    f = lambda x, w: nn.conv2d(x, w, padding=1, groups=2)  # noqa: E731
    for in_axes in [(0, None), (None, 0), (0, 0)]:
        xs = x if in_axes[0] == 0 else x[0]
        ws = w if in_axes[1] == 0 else w[0]
        out = fj.jit(fj.vmap(f, in_axes=in_axes))(xs, ws)
        expected = np.stack([f(x[i] if in_axes[0] == 0 else xs, w[i] if in_axes[1] == 0 else ws) for i in range(4)])
        np.testing.assert_allclose(out, expected, rtol=1e-10)
    none = fj.vmap(f, in_axes=(None, 0))(x[0], w[:0])  # no examples: no kernels to group
    assert none.shape == (0, 2, 6, 5, 5)
    pooled = fj.vmap(lambda x: nn.max_pool2d(x, 2, padding=1))(x)
    np.testing.assert_array_equal(pooled, np.stack([nn.max_pool2d(x[i], 2, padding=1) for i in range(4)]))


def test_nn_layers_bind_one_primitive_each_with_pytorch_arguments():
    x = RNG.standard_normal((2, 4, 9)).astype(np.float32)
    w = RNG.standard_normal((6, 2, 3)).astype(np.float32)
    fn = fj.make_ir(lambda x, w: nn.conv1d(x, w, stride=2, padding=1, dilation=2, groups=2))(x, w)
    (op,) = [op for op in fn.ops if op.prim is P.conv]
    assert dict(op.attrs) == {"strides": (2,), "lo": (1,), "hi": (1,), "lhs_dilation": (1,), "rhs_dilation": (2,),
                              "groups": 2}
    out = nn.conv1d(x, w, stride=2, padding=1, dilation=2, groups=2)
    np.testing.assert_allclose(out, conv_reference.conv(x, w, **dict(op.attrs)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(nn.max_pool1d(x, 3, stride=2, padding=1),
                                  conv_reference.max_pool(x, (1, 1, 3), (1, 1, 2), (0, 0, 1), (0, 0, 1)))
    np.testing.assert_allclose(nn.avg_pool1d(x, 2), conv_reference.avg_pool(x, (1, 1, 2), (1, 1, 2), (0,) * 3, (0,) * 3),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="channels"):
        nn.conv2d(np.ones((1, 3, 4, 4), np.float32), np.ones((2, 2, 3, 3), np.float32))


def test_conv_padding_same_and_valid_follow_pytorch():
    """'same' keeps the size at stride 1 (an odd total puts the extra zero after), 'valid'
    pads nothing; anything else names the accepted values."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 4, 3))  # an even kernel: total padding 3 along the first axis
    y = nn.conv2d(x, w, padding="same", dilation=(1, 2))
    assert y.shape == (2, 4, 7, 6)
    want = conv_reference.conv(x, w, (1, 1), (1, 2), (2, 2), (1, 1), (1, 2), 1)
    np.testing.assert_allclose(fj.jit(lambda x, w: nn.conv2d(x, w, padding="same", dilation=(1, 2)))(x, w), want,
                               rtol=1e-10)
    np.testing.assert_allclose(y, want, rtol=1e-10)
    np.testing.assert_allclose(nn.conv1d(x[:, :, 0], w[:, :, 0], padding="valid"),
                               conv_reference.conv(x[:, :, 0], w[:, :, 0], (1,), (0,), (0,), (1,), (1,), 1), rtol=1e-10)
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        nn.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="must be an int, a tuple of ints, 'valid' or 'same'"):
        nn.conv2d(x, w, padding="full")


def _reads(source: str, array: str) -> bool:
    """Whether generated kernel source loads from ``array`` (``load(array, i)`` right of
    an ``=``, as ``codegen/cpu/memory.py`` spells a read)."""
    return any(f"load({array}," in line.split("=", 1)[1] for line in source.splitlines() if " = " in line)


@pytest.mark.parametrize("case", POOLS[:3], ids=[c[0] for c in POOLS[:3]])
def test_max_pool_gradient_over_tiling_windows_writes_each_element_once(case):
    """Windows that tile the operand (2x2, stride 2 over even sizes) zero their own
    elements and store the cotangent at the winner: the kernel never reads its output
    (no zeroing pass, no read-add-write). Padded or overlapping windows keep the
    scatter, which does."""
    x = np.round(RNG.standard_normal(case[1]) * 2).astype(np.float32)  # ties
    x.flat[::7] = np.nan  # a NaN counts as largest, as for np.argmax
    attrs = _pool_attrs(case)
    g = RNG.standard_normal(conv_reference.pool_shape(x.shape, **attrs)).astype(np.float32)
    compiled = fj.jit(lambda x, g: bind(P.max_pool_scatter, x, g, **attrs)).lower(x, g).compile()
    (kernel,) = compiled.kernels
    out = kernel.source.split("def max_pool_scatter")[1].split("(")[1].split(",")[2].strip()  # third array
    assert _reads(kernel.source, out) == (case[0] != "2x2 tiles"), kernel.source
    # one write per element is exact; overlapping windows add in another order than the reference
    np.testing.assert_allclose(compiled(x, g), conv_reference.max_pool_scatter(x, g, **attrs), rtol=1e-6, atol=1e-6)


def test_a_parallel_pool_gradient_whose_index_arithmetic_numba_types_as_float_runs():
    """A max-pool gradient large enough for a ``prange`` loop: Numba types part of its
    index arithmetic as float64 there, which the element access converts back as the
    subscripts did (it failed to type once: ``load(array(float32, 1d, C), float64)``)."""
    x = RNG.standard_normal((8, 4, 8, 8)).astype(np.float32)
    attrs = {"window": (1, 1, 3, 3), "strides": (1, 1, 2, 2), "lo": (0, 0, 1, 1), "hi": (0, 0, 1, 1)}
    g = RNG.standard_normal(conv_reference.pool_shape(x.shape, **attrs)).astype(np.float32)
    with fj.config.override(parallel_threshold=64):
        compiled = fj.jit(lambda x, g: bind(P.max_pool_scatter, x, g, **attrs)).lower(x, g).compile()
    assert "prange" in compiled.kernels[0].source
    np.testing.assert_allclose(compiled(x, g), conv_reference.max_pool_scatter(x, g, **attrs), rtol=1e-6, atol=1e-6)


def test_a_small_image_conv_copies_padded_planes_and_a_kernel_gradient_unfolds_windows_into_rows():
    """Short rows without lhs dilation unfold from a zero-padded copy of the chunk's
    planes (no test per element); the weight gradient's conv (a window larger than its
    output) unfolds each output position's windows into a row, copied from the input
    planes with no offset table: its kernel has two scratch arrays (the rows and the
    GEMM's result) beside its operands and output, where the column layout has a
    third, the table."""
    x, w1, _, w2, _ = _cnn_params(cin=3, c1=8, c2=8, size=8, n=4)

    def loss(w, x):
        return fnp.sum(nn.conv2d(x, w, padding=1) ** 2)

    compiled = fj.jit(fj.value_and_grad(loss)).lower(w1, x).compile()
    convs = [k for k in compiled.kernels if k.name.startswith("conv_gemm")]
    assert [k.name for k in convs] == ["conv_gemm_f32_4x8x8x8", "conv_gemm_f32_3x8x3x3"], [k.name for k in convs]
    forward, weight_grad = convs
    # no select per element: the only conditionals are the integer min/max of chunk sizes
    selects = [line for line in forward.source.splitlines() if " if " in line]
    assert all(re.fullmatch(r"\s*\w+ = (\w+) if \1 [<>] (\w+) else \2", line) for line in selects), selects
    signature = weight_grad.source.split("def conv_gemm")[1].split(")")[0]
    assert len(re.findall(r"\ba\d+\b", signature)) == 5, signature
    value, grad = compiled(w1, x)
    want_value, want_grad = fj.value_and_grad(loss)(w1, x)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-4 * np.abs(want_grad).max())


@pytest.mark.parametrize("shifted", [False, True], ids=["im2col", "shifted"])
@pytest.mark.parametrize("limit", [1000, 3000, 1 << 20])
def test_im2col_chunks_of_any_size_give_the_same_conv_and_gradients(monkeypatch, limit, shifted):
    """Samples unfold in equal chunks under a scratch limit (5 samples: 1+1+1+1+1, 3+2,
    or one chunk; shifted: 2+2+1, the last chunk's GEMMs also multiplying the previous
    chunk's left-over sample into columns that are dropped, or one chunk), for the
    forward conv (padded planes) and both gradients' convs."""
    monkeypatch.setattr(conv_gemm, "GEMM_CHUNK_ELEMENTS", limit)
    monkeypatch.setattr(conv_codegen, "SHIFTED_MIN_ROWS", 0 if shifted else 10**9)
    monkeypatch.setattr(conv_codegen, "SHIFTED_MIN_CHANNELS", 0)
    x = RNG.standard_normal((5, 3, 6, 6)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    attrs = {"strides": (1, 1), "lo": (1, 1), "hi": (1, 1), "lhs_dilation": (1, 1), "rhs_dilation": (1, 1),
             "groups": 1}
    forward = fj.jit(_conv(attrs)).lower(x, w).compile()
    assert forward.kernels[0].name.startswith("conv_shifted" if shifted else "conv_gemm")
    np.testing.assert_allclose(forward(x, w), conv_reference.conv(x, w, **attrs), rtol=1e-5, atol=1e-5)

    def loss(x, w):
        return fnp.sum(bind(P.conv, x, w, **attrs) ** 2)

    for got, want in zip(fj.jit(fj.grad(loss, argnums=(0, 1)))(x, w), fj.grad(loss, argnums=(0, 1))(x, w),
                         strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# Kernel gradients' shapes (a window larger than the output), as CONVS: block rows (the
# window's last axis spans the input's rows), runs, leading-axis units, the transposed
# GEMM (fewer output positions than output channels), channels innermost (tiny planes,
# many channels), groups, strides, dilations, 1-d, 3-d.
GRADIENT_CONVS = [
    ("stride-1 weight gradient (blocks)", (4, 6, 16, 16), (8, 6, 16, 16), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), 1),
    ("large window (units of rows)", (2, 3, 32, 32), (4, 3, 32, 32), (1, 1), (1, 0), (1, 2), (1, 1), (1, 1), 1),
    ("transposed GEMM, groups", (1, 4, 6, 6), (24, 2, 6, 6), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), 2),
    ("tiny planes, channels innermost", (2, 20, 4, 4), (3, 20, 4, 4), (1, 1), (1, 0), (1, 2), (1, 1), (1, 1), 1),
    ("strided conv's gradient (rhs dilation)", (2, 3, 9, 9), (4, 3, 4, 4), (1, 1), (0, 1), (0, 0), (1, 1), (2, 2), 1),
    ("rows two input rows apart", (2, 3, 9, 4), (2, 3, 4, 8), (1, 1), (1, 1), (3, 3), (1, 1), (2, 1), 1),
    ("strides, groups, runs", (2, 4, 9, 11), (6, 2, 4, 5), (2, 3), (1, 2), (1, 0), (1, 1), (2, 1), 2),
    ("padded past the input", (2, 2, 3, 4), (2, 2, 5, 4), (1, 1), (2, 1), (2, 1), (1, 1), (1, 1), 1),
    ("1-d", (1, 3, 12), (2, 3, 11), (1,), (1,), (1,), (1,), (1,), 1),
    ("3-d", (2, 3, 6, 5, 7), (2, 3, 5, 4, 7), (1, 1, 1), (1, 0, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
]


def _conv_ops(lowered):
    return [op for op in lowered.optimized if op.prim is P.conv]


def _specials(x, rng):
    """``x`` with a few infinities and NaNs."""
    x = x.copy()
    for value in (np.inf, -np.inf, np.nan):
        x.flat[rng.integers(0, x.size, max(1, x.size // 97))] = value
    return x


@pytest.mark.parametrize("limits", [None, (300, 40), (1 << 20, 40)], ids=["default", "small chunks", "short GEMMs"])
@pytest.mark.parametrize("case", GRADIENT_CONVS, ids=[c[0] for c in GRADIENT_CONVS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_gradient_shaped_convs_unfold_windows_into_rows(case, dtype, limits, monkeypatch):
    """A window larger than the output unfolds into rows of the im2col matrix (each an
    output position, along the window's last axis a run or block of input rows) and the
    GEMM reads the second operand as stored: against the reference, fused and unfused,
    with infinities and NaNs in either operand (the padding's zeros meet the weights as in
    the reference; nothing else does), and in chunks of samples and of the contraction
    (``limits``: the scratch, the longest GEMM contraction) that leave a rest."""
    if limits is not None:
        monkeypatch.setattr(conv_gemm, "GEMM_CHUNK_ELEMENTS", limits[0])
        monkeypatch.setattr(conv_gemm, "ROWS_MAX_CONTRACTION", limits[1])
    rng = np.random.default_rng(5)
    attrs = _attrs(case)
    x = rng.standard_normal(case[1]).astype(dtype)
    w = rng.standard_normal(case[2]).astype(dtype)
    assert [conv_codegen.uses_window_rows(op) for op in _conv_ops(fj.jit(_conv(attrs)).lower(x, w))] == [True]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for fuse in (True, False):
        compiled = fj.jit(_conv(attrs), fuse=fuse).lower(x, w).compile()
        (kernel,) = compiled.kernels
        assert kernel.name.startswith("conv_gemm")
        for xv, wv in ((x, w), (_specials(x, rng), w), (x, _specials(w, rng))):
            want = conv_reference.conv(xv, wv, **attrs)
            got = compiled(xv, wv)
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want))
            np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
            finite = np.isfinite(want)
            if finite.any():  # (a special value can reach every output of a small conv)
                np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol * np.abs(want[finite]).max())


def test_only_kernel_gradient_shapes_without_lhs_dilation_unfold_windows_into_rows():
    """The forward conv keeps the column layout; so does a window larger than the output
    with lhs dilation (which keeps the offset table for its holes)."""
    x, w1, _, _, _ = _cnn_params(cin=3, c1=8, c2=8, size=8, n=4)

    def loss(w, x):
        return fnp.sum(nn.conv2d(x, w, padding=1) ** 2)

    convs = _conv_ops(fj.jit(fj.value_and_grad(loss)).lower(w1, x))
    assert [conv_codegen.uses_window_rows(op) for op in convs] == [False, True]
    dilated = {"strides": (1, 1), "lo": (0, 0), "hi": (0, 0), "lhs_dilation": (2, 2), "rhs_dilation": (1, 1),
               "groups": 1}
    xd, wd = RNG.standard_normal((2, 3, 4, 4)), RNG.standard_normal((2, 3, 6, 6))
    (op,) = _conv_ops(fj.jit(_conv(dilated)).lower(xd, wd))
    assert not conv_codegen.uses_window_rows(op) and op.output.shape[2:] == (2, 2)
    np.testing.assert_allclose(fj.jit(_conv(dilated))(xd, wd), conv_reference.conv(xd, wd, **dilated), rtol=1e-12)


@pytest.mark.parametrize("transposed", [False, True], ids=["rows @ w^T", "w @ rows^T"])
def test_a_window_larger_than_the_output_takes_the_epilogue_and_pool_in_its_kernel(transposed):
    """The result of the rows layout (either orientation of its GEMM) goes through the
    fused epilogue (bias, relu) and the plane's pool like the other layouts' results."""
    n, o = (1, 32) if transposed else (3, 4)  # 25 output positions per sample
    x = RNG.standard_normal((n, 3, 8, 8)).astype(np.float32)
    w = RNG.standard_normal((o, 3, 6, 6)).astype(np.float32)
    b = RNG.standard_normal(o).astype(np.float32)

    def f(x, w, b):
        return nn.max_pool2d(nn.relu(nn.conv2d(x, w, b, padding=1)), 2, stride=1)

    attrs = {"strides": (1, 1), "lo": (1, 1), "hi": (1, 1), "lhs_dilation": (1, 1), "rhs_dilation": (1, 1),
             "groups": 1}
    h = np.maximum(conv_reference.conv(x, w, **attrs) + b[:, None, None], 0)  # [n, o, 5, 5]
    want = np.max([h[:, :, i:i + 4, j:j + 4] for i in (0, 1) for j in (0, 1)], axis=0)
    compiled = fj.jit(f).lower(x, w, b).compile()
    assert [k.name.split("_f32")[0] for k in compiled.kernels] == ["conv_gemm"]
    assert [conv_codegen.uses_window_rows(op) for op in _conv_ops(fj.jit(f).lower(x, w, b))] == [True]
    for fuse in (True, False):
        np.testing.assert_allclose(fj.jit(f, fuse=fuse)(x, w, b), want, rtol=1e-5, atol=1e-5)
