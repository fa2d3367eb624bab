"""Layers, activations and losses."""

from __future__ import annotations

import functools
import math
from typing import Any

import fusejit.numpy as fnp
from fusejit.ir import primitives as P
from fusejit.tracer.tracing import bind

Array = Any


def linear(x: Array, w: Array, b: Array | None = None) -> Array:
    """``x @ w.T + b`` with ``w`` of shape ``(out_features, in_features)``."""
    y = fnp.matmul(x, fnp.transpose(w))
    return y if b is None else y + b


def relu(x: Array) -> Array:
    return fnp.maximum(x, 0)


def gelu(x: Array) -> Array:
    """GELU, tanh form: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + fnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def tanh(x: Array) -> Array:
    return fnp.tanh(x)


def sigmoid(x: Array) -> Array:
    """The logistic function ``1 / (1 + exp(-x))``, as one primitive."""
    return bind(P.logistic, fnp.asarray(x) if not hasattr(x, "value") else x)


def softmax(x: Array, axis: int = -1) -> Array:
    shifted = x - fnp.stop_gradient(fnp.max(x, axis=axis, keepdims=True))
    e = fnp.exp(shifted)
    return e / fnp.sum(e, axis=axis, keepdims=True)


def log_softmax(x: Array, axis: int = -1) -> Array:
    shifted = x - fnp.stop_gradient(fnp.max(x, axis=axis, keepdims=True))
    return shifted - fnp.log(fnp.sum(fnp.exp(shifted), axis=axis, keepdims=True))


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of ``logits`` [batch, classes] and integer ``labels``."""
    log_probs = log_softmax(logits, axis=-1)
    picked = fnp.take_along_axis(log_probs, fnp.expand_dims(labels, -1), axis=-1)
    return -fnp.mean(picked)


def mse(prediction: Array, target: Array) -> Array:
    diff = prediction - target
    return fnp.mean(diff * diff)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _windows(x: Array, kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[list[Array], int, int]:
    """The ``kh*kw`` strided views of ``x`` [N,C,H,W], one per kernel offset."""
    _, _, h, w = x.shape
    ho = (h - kernel[0]) // stride[0] + 1
    wo = (w - kernel[1]) // stride[1] + 1
    views = [
        x[:, :, i : i + stride[0] * (ho - 1) + 1 : stride[0], j : j + stride[1] * (wo - 1) + 1 : stride[1]]
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]
    return views, ho, wo


def conv2d(x: Array, w: Array, b: Array | None = None, stride: int | tuple[int, int] = 1,
           padding: int | tuple[int, int] = 0) -> Array:
    """2-d convolution (cross-correlation, as in PyTorch) of NCHW ``x`` with OIHW ``w``,
    as im2col: the ``kh*kw`` shifted views stacked, then one matmul."""
    n, c, _, _ = x.shape
    o, ci, kh, kw = w.shape
    if ci != c:
        raise ValueError(f"conv2d: input has {c} channels, weight expects {ci}")
    ph, pw = _pair(padding)
    if ph or pw:
        x = fnp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    views, ho, wo = _windows(x, (kh, kw), _pair(stride))
    cols = fnp.stack(views, axis=2)  # [N, C, kh*kw, Ho, Wo]
    cols = fnp.reshape(cols, (n, c * kh * kw, ho * wo))
    out = fnp.einsum("ok,nkp->nop", fnp.reshape(w, (o, c * kh * kw)), cols)
    out = fnp.reshape(out, (n, o, ho, wo))
    return out if b is None else out + fnp.reshape(b, (1, o, 1, 1))


def _pool(x: Array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None,
          reduce: Any, combine: Any) -> Array:
    """Pooling over ``kernel_size`` windows: ``reduce`` over the window axes of a reshape
    when windows tile the image, else ``combine`` of the strided views (one per offset)."""
    kernel = _pair(kernel_size)
    stride = _pair(stride) if stride is not None else kernel
    n, c, h, w = x.shape
    if stride == kernel and h % kernel[0] == 0 and w % kernel[1] == 0:
        blocks = fnp.reshape(x, (n, c, h // kernel[0], kernel[0], w // kernel[1], kernel[1]))
        return reduce(blocks, axis=(3, 5))
    views, _, _ = _windows(x, kernel, stride)
    return combine(views)


def max_pool2d(x: Array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> Array:
    return _pool(x, kernel_size, stride, fnp.max, lambda views: functools.reduce(fnp.maximum, views))


def avg_pool2d(x: Array, kernel_size: int | tuple[int, int], stride: int | tuple[int, int] | None = None) -> Array:
    return _pool(x, kernel_size, stride, fnp.mean, lambda views: functools.reduce(fnp.add, views) / float(len(views)))


def accuracy(logits: Array, labels: Array) -> Array:
    """The fraction of rows whose largest logit is at the integer label: ``logits``
    ``[batch, classes]`` (any float dtype), ``labels`` ``[batch]`` (integers in
    ``[0, classes)``). Returns a float32 scalar in ``[0, 1]``; not differentiable (its
    gradient is zero). A tie goes to the first largest logit, as ``np.argmax``."""
    hits = fnp.argmax(logits, axis=-1) == labels
    return fnp.mean(fnp.astype(hits, "float32"))
