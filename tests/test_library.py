"""fj.nn, fj.optim and fj.augment against straightforward NumPy references, eager and
jitted."""

from __future__ import annotations

import numpy as np
import pytest

import fusejit as fj
import fusejit.augment as aug
import fusejit.nn as nn
import fusejit.optim as optim

RNG = np.random.default_rng(0)


def conv2d_reference(x, w, b, stride, padding):
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, h, wd = xp.shape
    o, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), np.float64)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w) + b
    return out


@pytest.mark.parametrize("stride,padding", [(1, 0), (1, 1), (2, 1)])
@pytest.mark.parametrize("jitted", [False, True])
def test_conv2d_matches_a_direct_loop(stride, padding, jitted):
    x = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
    p = nn.init_conv2d(RNG, 3, 4, 3)
    p["b"] = RNG.standard_normal(4).astype(np.float32)
    def conv(x, w, b):
        return nn.conv2d(x, w, b, stride=stride, padding=padding)

    out = (fj.jit(conv) if jitted else conv)(x, p["w"], p["b"])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, conv2d_reference(x, p["w"], p["b"], stride, padding), rtol=1e-5, atol=1e-5)


def test_pools_match_numpy_windows():
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(nn.max_pool2d(x, 2), x.reshape(2, 3, 4, 2, 4, 2).max(axis=(3, 5)))
    np.testing.assert_allclose(nn.avg_pool2d(x, 2), x.reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5)), rtol=1e-6,
                               atol=1e-7)  # summed in another order
    overlapping = nn.max_pool2d(x, 3, stride=2)
    assert overlapping.shape == (2, 3, 3, 3)
    assert overlapping[1, 2, 1, 1] == x[1, 2, 2:5, 2:5].max()


def test_activations_and_losses_match_numpy():
    x = RNG.standard_normal((5, 7)).astype(np.float32)
    labels = RNG.integers(0, 7, 5)
    e = np.exp(x - x.max(1, keepdims=True))
    softmax = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(nn.softmax(x), softmax, rtol=1e-6)
    np.testing.assert_allclose(nn.log_softmax(x), np.log(softmax), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nn.cross_entropy(x, labels), -np.log(softmax[np.arange(5), labels]).mean(), rtol=1e-5)
    np.testing.assert_allclose(nn.sigmoid(x), 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(nn.relu(x), np.maximum(x, 0))
    gelu = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(nn.gelu(x), gelu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nn.mse(x, 0 * x), (x**2).mean(), rtol=1e-6)
    w, b = RNG.standard_normal((3, 7)).astype(np.float32), np.ones(3, np.float32)
    np.testing.assert_allclose(fj.jit(nn.linear)(x, w, b), x @ w.T + b, rtol=1e-5)


def test_sgd_with_nesterov_momentum_follows_the_pytorch_rule():
    p, g = {"w": np.ones(3, np.float32)}, {"w": np.full(3, 0.5, np.float32)}
    opt = optim.sgd(0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    state = opt.init(p)
    p1, state = opt.update(g, state, p)
    grad = 0.5 + 0.01 * 1.0
    np.testing.assert_allclose(p1["w"], 1 - 0.1 * (grad + 0.9 * grad), rtol=1e-6)
    np.testing.assert_allclose(state["velocity"]["w"], grad, rtol=1e-6)


def test_adamw_matches_the_textbook_update_eagerly_and_jitted():
    p = {"a": RNG.standard_normal(4).astype(np.float32), "b": RNG.standard_normal((2, 3)).astype(np.float32)}
    opt = optim.adamw(0.01, weight_decay=0.1)  # decoupled; adam's weight_decay is L2 (tests/test_toolkit.py)
    step = fj.jit(opt.update)
    state_e = state_j = opt.init(p)
    pe = pj = p
    m = fj.tree_map(np.zeros_like, p)
    v = fj.tree_map(np.zeros_like, p)
    ref = p
    for t in range(1, 4):
        g = fj.tree_map(lambda x, t=t: np.sin(x * t).astype(np.float32), ref)
        m = fj.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = fj.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        ref = fj.tree_map(
            lambda p, m, v, t=t: p - 0.01 * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            - 0.01 * 0.1 * p,
            ref, m, v,
        )
        pe, state_e = opt.update(g, state_e, pe)
        pj, state_j = step(g, state_j, pj)
    for k in p:
        np.testing.assert_allclose(pe[k], ref[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pj[k], ref[k], rtol=1e-5, atol=1e-6)
        assert pj[k].dtype == np.float32


def test_augmentations_are_reproducible_and_keep_shapes():
    images = RNG.random((6, 1, 8, 8)).astype(np.float32)
    a = aug.random_affine(images, np.random.default_rng(3), flip_horizontal=True)
    b = aug.random_affine(images, np.random.default_rng(3), flip_horizontal=True)
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape and a.dtype == images.dtype


def test_identity_transform_and_flips_are_exact():
    images = RNG.random((4, 8, 8)).astype(np.float32)
    same = aug.random_affine(images, RNG, max_rotation=0, scale=(1, 1), max_translation=0)
    np.testing.assert_allclose(same, images, atol=1e-6)
    flipped = aug.flip(images, np.random.default_rng(1), horizontal=True)
    for orig, out in zip(images, flipped, strict=True):
        assert np.array_equal(out, orig) or np.array_equal(out, orig[:, ::-1])


def test_rotation_by_ninety_degrees_moves_pixels_where_expected():
    image = np.zeros((1, 5, 5), np.float32)
    image[0, 0, 2] = 1.0  # top middle
    rotated = aug._resample(image, np.array([np.pi / 2]), np.ones(1), np.zeros((1, 2)), np.ones((1, 2)))
    assert rotated[0].max() == pytest.approx(1.0, abs=1e-6)
    assert np.unravel_index(rotated[0].argmax(), (5, 5)) in {(2, 0), (2, 4)}
