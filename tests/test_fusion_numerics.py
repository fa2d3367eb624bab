"""Fused kernels compute what unfused kernels and eager NumPy compute, on every fusion
pattern, for ordinary, size-1 and empty axes and for non-contiguous inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from models import adam_step, gelu, layernorm

import fusejit as fj
import fusejit.nn as nn
import fusejit.numpy as fnp

RNG = np.random.default_rng(7)


def attention(q, k, v):
    scores = q @ fnp.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    return nn.softmax(scores) @ v


def layout_chain(x):
    y = fnp.concatenate([x[:, ::2], fnp.pad(x, ((0, 0), (1, 0)))[:, :1]], axis=1)
    return fnp.exp(y.T).sum(axis=0) + y.max(axis=1)


def column_and_row_sums(x):
    e = fnp.exp(x)
    return e.sum(axis=0), e.sum(axis=1), e / e.sum()


def mlp_step(params, x, labels):
    def loss(params):
        h = nn.relu(nn.linear(x, params["w1"], params["b1"]))
        return nn.cross_entropy(nn.linear(h, params["w2"], params["b2"]), labels)

    value, grads = fj.value_and_grad(loss)(params)
    return value, fj.tree_map(lambda p, g: p - 0.1 * g, params, grads)


def pool_grad(x):
    return fj.grad(lambda x: (nn.max_pool2d(x, 2) ** 2).sum())(x)


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


ROW_SHAPES = [(4, 6), (1, 6), (4, 1), (0, 6), (3, 0)]


def cases():
    for shape in ROW_SHAPES:
        yield f"gelu{shape}", gelu, (f32(*shape),)
        if shape[-1]:  # the max over an empty row has no value, in NumPy too
            yield f"softmax{shape}", nn.softmax, (f32(*shape),)
            yield f"log_softmax{shape}", nn.log_softmax, (f32(*shape),)
        yield f"layernorm{shape}", layernorm, (f32(*shape), f32(shape[1]), f32(shape[1]))
        yield f"adam{shape}", adam_step, (f32(*shape), f32(*shape), np.abs(f32(*shape)), f32(*shape))
    yield "column_and_row_sums", column_and_row_sums, (f32(5, 7),)
    yield "layout_chain", layout_chain, (f32(4, 6),)
    yield "attention", attention, (f32(2, 5, 4), f32(2, 6, 4), f32(2, 6, 3))
    yield "pool_grad", pool_grad, (f32(2, 3, 4, 4),)
    params = {"w1": f32(8, 5), "b1": f32(8), "w2": f32(3, 8), "b2": f32(3)}
    yield "mlp_step", mlp_step, (params, f32(6, 5), RNG.integers(0, 3, 6))
    wide = f32(6, 10)
    yield "gelu_of_a_strided_view", gelu, (wide[:, ::2],)
    yield "softmax_of_a_transposed_view", nn.softmax, (wide.T,)
    yield "layernorm_of_a_sliced_view", layernorm, (wide[1:, 2:7], f32(5), f32(5))


CASES = list(cases())


def assert_close(got, want):
    for g, w in zip(fj.tree_leaves(got), fj.tree_leaves(want), strict=True):
        g, w = np.asarray(g), np.asarray(w)
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name,fn,args", CASES, ids=[c[0] for c in CASES])
def test_fused_equals_unfused_equals_eager(name, fn, args):
    eager = fn(*args)
    unfused = fj.jit(fn, fuse=False)(*args)
    fused = fj.jit(fn)(*args)
    assert_close(unfused, eager)
    assert_close(fused, eager)
