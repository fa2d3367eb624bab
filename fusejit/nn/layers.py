"""Layers, activations and losses."""

from __future__ import annotations

import math
from typing import Any

import fusejit.numpy as fnp
from fusejit.ir import primitives as P
from fusejit.nn.scoping import layer_scope
from fusejit.tracer.tracing import bind

Array = Any


@layer_scope("linear", nameable=True)
def linear(x: Array, w: Array, b: Array | None = None) -> Array:
    """``x @ w.T + b`` with ``w`` of shape ``(out_features, in_features)``. Traced in
    scope ``linear``, or the keyword ``name`` (``fj.named_scope``)."""
    y = fnp.matmul(x, fnp.transpose(w))
    return y if b is None else y + b


@layer_scope("relu")
def relu(x: Array) -> Array:
    """``max(x, 0)`` whose derivative at 0 is 0 (PyTorch's and JAX's convention; a
    ``maximum`` would split the tie 0.5/0.5); NaN stays NaN."""
    return fnp.where(x <= 0, 0, x)


@layer_scope("gelu")
def gelu(x: Array) -> Array:
    """GELU, tanh form: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + fnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


@layer_scope("tanh")
def tanh(x: Array) -> Array:
    return fnp.tanh(x)


@layer_scope("sigmoid")
def sigmoid(x: Array) -> Array:
    """The logistic function ``1 / (1 + exp(-x))``, as one primitive."""
    return bind(P.logistic, fnp.asarray(x) if not hasattr(x, "value") else x)


@layer_scope("softmax")
def softmax(x: Array, axis: int = -1) -> Array:
    shifted = x - fnp.stop_gradient(fnp.max(x, axis=axis, keepdims=True))
    e = fnp.exp(shifted)
    return e / fnp.sum(e, axis=axis, keepdims=True)


@layer_scope("log_softmax")
def log_softmax(x: Array, axis: int = -1) -> Array:
    shifted = x - fnp.stop_gradient(fnp.max(x, axis=axis, keepdims=True))
    return shifted - fnp.log(fnp.sum(fnp.exp(shifted), axis=axis, keepdims=True))


@layer_scope("cross_entropy")
def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy of ``logits`` [batch, classes] and integer ``labels``."""
    log_probs = log_softmax(logits, axis=-1)
    picked = fnp.take_along_axis(log_probs, fnp.expand_dims(labels, -1), axis=-1)
    return -fnp.mean(picked)


@layer_scope("mse")
def mse(prediction: Array, target: Array) -> Array:
    diff = prediction - target
    return fnp.mean(diff * diff)


@layer_scope("accuracy")
def accuracy(logits: Array, labels: Array) -> Array:
    """The fraction of rows whose largest logit is at the integer label: ``logits``
    ``[batch, classes]`` (any float dtype), ``labels`` ``[batch]`` (integers in
    ``[0, classes)``). Returns a float32 scalar in ``[0, 1]``; not differentiable (its
    gradient is zero). A tie goes to the first largest logit, as ``np.argmax``."""
    hits = fnp.argmax(logits, axis=-1) == labels
    return fnp.mean(fnp.astype(hits, "float32"))
