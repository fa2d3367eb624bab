"""Dropout, embeddings, one-hot encoding, ``logsumexp`` and multi-head attention.

Ordinary traceable code like the rest of ``fj.nn``: jitted, each becomes IR that fuses
(dropout's mask is computed from the key inside the kernel that applies it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import fusejit.numpy as fnp
from fusejit import random
from fusejit.nn.init import glorot_uniform
from fusejit.nn.layers import linear, softmax
from fusejit.nn.scoping import layer_scope

Array = Any


@layer_scope("dropout")
def dropout(x: Array, rate: float, key: Array, deterministic: bool = False) -> Array:
    """Zeroes each element with probability ``rate`` and scales the others by
    ``1 / (1 - rate)`` (inverted dropout); the identity when ``deterministic`` or
    ``rate == 0``. The mask is ``fj.random.bernoulli(key, 1 - rate, x.shape)``: the same
    key drops the same elements eagerly and jitted."""
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout: rate must be in [0, 1], got {rate}")
    if deterministic or rate == 0.0:
        return x
    if rate == 1.0:
        return fnp.zeros_like(x)
    keep = random.bernoulli(key, 1.0 - rate, fnp.shape(x))
    return fnp.where(keep, x / (1.0 - rate), 0)


@layer_scope("one_hot")
def one_hot(labels: Array, num_classes: int, dtype: Any = np.float32) -> Array:
    """``labels[..., None] == arange(num_classes)`` as ``dtype``: a trailing axis of
    ``num_classes``; a label outside ``[0, num_classes)`` gives a row of zeros (JAX)."""
    classes = fnp.arange(int(num_classes), dtype=np.int64)
    hits = fnp.equal(fnp.expand_dims(fnp.astype(fnp.asarray(labels), np.int64), -1), classes)
    return fnp.astype(hits, dtype)


@layer_scope("logsumexp")
def logsumexp(x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Array:
    """``log(sum(exp(x), axis))`` without overflow: the maximum is subtracted first (and
    is 0 where it is infinite, so that all ``-inf`` gives ``-inf`` and ``+inf`` gives ``+inf``)."""
    x = fnp.asarray(x)
    top = fnp.stop_gradient(fnp.max(x, axis=axis, keepdims=True))
    top = fnp.where(fnp.isfinite(top), top, 0)
    out = fnp.log(fnp.sum(fnp.exp(x - top), axis=axis, keepdims=True)) + top
    if keepdims:
        return out
    return fnp.squeeze(out, axis=axis) if axis is not None else fnp.reshape(out, ())


@layer_scope("embedding", nameable=True)
def embedding(ids: Array, table: Array) -> Array:
    """Rows of ``table`` [num, dim] at the integer ``ids`` (any shape): ``ids.shape +
    (dim,)``; the gradient scatter-adds into the rows used (out-of-range ids clamp).
    Traced in scope ``embedding``, or the keyword ``name`` (``fj.named_scope``)."""
    return fnp.take(table, ids, axis=0)


@layer_scope("multi_head_attention", nameable=True)
def multi_head_attention(q: Array, k: Array, v: Array, params: dict, num_heads: int,
                         mask: Array | None = None) -> Array:
    """Scaled dot-product attention over ``num_heads`` heads, as
    ``torch.nn.MultiheadAttention`` (batch first): ``q`` [..., Lq, d], ``k``/``v``
    [..., Lk, d]; ``params`` holds ``wq``, ``wk``, ``wv``, ``wo`` (``(d, d)``, PyTorch's
    ``(out, in)`` layout) and optionally biases ``bq``, ``bk``, ``bv``, ``bo``
    (``init_multi_head_attention``). ``mask`` (broadcastable to [..., heads, Lq, Lk]) is
    True where a query may attend to a key. Returns [..., Lq, d].

    Jitted, the projections are matrix products with their bias adds fused in, the
    scores of all heads one batched product, and the masked softmax one row kernel.
    Traced in scope ``multi_head_attention``, or the keyword ``name``."""
    d = fnp.shape(q)[-1]
    if d % num_heads:
        raise ValueError(f"multi_head_attention: model width {d} is not a multiple of {num_heads} heads")
    dh = d // num_heads

    def heads(x: Array, name: str) -> Array:  # [..., L, d] -> [..., heads, L, dh]
        y = linear(x, params["w" + name], params.get("b" + name))
        y = fnp.reshape(y, fnp.shape(y)[:-1] + (num_heads, dh))
        return fnp.swapaxes(y, -2, -3)

    qh, kh, vh = heads(q, "q"), heads(k, "k"), heads(v, "v")
    scores = fnp.matmul(qh * (1.0 / math.sqrt(dh)), fnp.swapaxes(kh, -1, -2))
    if mask is not None:
        scores = fnp.where(mask, scores, -np.inf)
    out = fnp.matmul(softmax(scores, axis=-1), vh)  # [..., heads, Lq, dh]
    out = fnp.swapaxes(out, -2, -3)
    out = fnp.reshape(out, fnp.shape(out)[:-2] + (d,))
    return linear(out, params["wo"], params.get("bo"))


def init_multi_head_attention(rng: np.random.Generator, d_model: int, bias: bool = True,
                              dtype: Any = np.float32) -> dict:
    """Parameters for ``multi_head_attention``: Glorot-uniform ``(d, d)`` projections
    ``wq, wk, wv, wo`` and zero biases (PyTorch's defaults)."""
    params = {f"w{n}": glorot_uniform(rng, (d_model, d_model), d_model, d_model, dtype) for n in "qkvo"}
    if bias:
        params.update({f"b{n}": np.zeros(d_model, dtype) for n in "qkvo"})
    return params


def init_embedding(rng: np.random.Generator, num_embeddings: int, dim: int, dtype: Any = np.float32) -> np.ndarray:
    """A ``(num_embeddings, dim)`` table of standard normal values (``torch.nn.Embedding``)."""
    return rng.standard_normal((num_embeddings, dim)).astype(dtype)
