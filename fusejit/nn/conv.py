"""Convolutions and pools (PyTorch's layouts and defaults), each one primitive.

``conv1d``/``conv2d`` bind ``conv`` (NC[H]W input, OI[H]W weight, cross-correlation);
the pools bind ``max_pool``/``avg_pool`` with a window of one on the batch and channel
axes. Their kernels and derivatives are the primitives' (``fusejit.codegen.conv``,
``fusejit.codegen.pool``, ``fusejit.ir.transforms.autodiff``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fusejit.numpy as fnp
from fusejit.ir import primitives as P
from fusejit.nn.scoping import layer_scope
from fusejit.tracer.tracing import bind

Array = Any
IntOrTuple = int | tuple[int, ...]


def _tuple(v: IntOrTuple, n: int, what: str) -> tuple[int, ...]:
    out = (int(v),) * n if isinstance(v, int) else tuple(int(a) for a in v)
    if len(out) != n:
        raise ValueError(f"{what}={v!r} needs {n} entries")
    return out


def _conv_padding(padding: IntOrTuple | str, strides: tuple[int, ...], dilations: tuple[int, ...],
                  kernel: tuple[int, ...], name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Zeros before and after each spatial axis: ``padding`` per axis (both sides), or
    PyTorch's ``"valid"`` (none) and ``"same"`` (stride 1: the output has the input's
    size; an odd total puts the extra zero after, as PyTorch does)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(kernel), (0,) * len(kernel)
        if padding != "same":
            raise ValueError(f"{name}: padding={padding!r} must be an int, a tuple of ints, 'valid' or 'same'")
        if any(s != 1 for s in strides):
            raise ValueError(f"{name}: padding='same' needs stride 1 (as in PyTorch), got stride={strides}")
        total = [d * (k - 1) for d, k in zip(dilations, kernel, strict=True)]
        return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    pad = _tuple(padding, len(kernel), "padding")
    return pad, pad


def _as_array(x: Array) -> Array:
    return x if hasattr(x, "shape") and hasattr(x, "dtype") else fnp.asarray(x)


def conv(x: Array, w: Array, b: Array | None, stride: IntOrTuple, padding: IntOrTuple | str, dilation: IntOrTuple,
         groups: int, nsp: int, name: str) -> Array:
    """The ``nsp``-d convolution of ``x`` [N, C, *S] with ``w`` [O, C // groups, *K], plus
    ``b`` [O]; ``padding`` zeros on both sides of each spatial axis, or ``"valid"``/``"same"``."""
    x, w = _as_array(x), _as_array(w)
    if len(x.shape) != nsp + 2 or len(w.shape) != nsp + 2:
        raise ValueError(f"{name}: input {tuple(x.shape)} and weight {tuple(w.shape)} must have {nsp + 2} axes")
    if x.shape[1] != w.shape[1] * groups:
        raise ValueError(f"{name}: input has {x.shape[1]} channels, weight expects {w.shape[1]} x {groups} groups")
    if x.dtype != w.dtype:
        common = fnp.result_type(x, w)
        x, w = fnp.astype(x, common), fnp.astype(w, common)
    strides, dilations = _tuple(stride, nsp, "stride"), _tuple(dilation, nsp, "dilation")
    lo, hi = _conv_padding(padding, strides, dilations, tuple(w.shape[2:]), name)
    y = bind(P.conv, x, w, strides=strides, lo=lo, hi=hi, lhs_dilation=(1,) * nsp, rhs_dilation=dilations,
             groups=int(groups))
    if b is None:
        return y
    return y + fnp.reshape(b, (1, w.shape[0]) + (1,) * nsp)


@layer_scope("conv1d", nameable=True)
def conv1d(x: Array, w: Array, b: Array | None = None, stride: IntOrTuple = 1, padding: IntOrTuple | str = 0,
           dilation: IntOrTuple = 1, groups: int = 1) -> Array:
    """1-d convolution (cross-correlation, as PyTorch's) of NCW ``x`` with OIW ``w``.
    Traced in scope ``conv1d``, or the keyword ``name`` (``fj.named_scope``)."""
    return conv(x, w, b, stride, padding, dilation, groups, 1, "conv1d")


@layer_scope("conv2d", nameable=True)
def conv2d(x: Array, w: Array, b: Array | None = None, stride: IntOrTuple = 1, padding: IntOrTuple | str = 0,
           dilation: IntOrTuple = 1, groups: int = 1) -> Array:
    """2-d convolution (cross-correlation, as PyTorch's) of NCHW ``x`` with OIHW ``w``.
    Traced in scope ``conv2d``, or the keyword ``name`` (``fj.named_scope``)."""
    return conv(x, w, b, stride, padding, dilation, groups, 2, "conv2d")


def _pool(prim: P.Primitive, x: Array, kernel_size: IntOrTuple, stride: IntOrTuple | None, padding: IntOrTuple,
          nsp: int, name: str) -> Array:
    x = _as_array(x)
    if len(x.shape) != nsp + 2:
        raise ValueError(f"{name}: input {tuple(x.shape)} must have {nsp + 2} axes (N, C, spatial)")
    window = _tuple(kernel_size, nsp, "kernel_size")
    strides = window if stride is None else _tuple(stride, nsp, "stride")
    pad = _tuple(padding, nsp, "padding")
    if np.dtype(x.dtype).kind != "f":
        x = fnp.astype(x, np.float32)
    return bind(prim, x, window=(1, 1) + window, strides=(1, 1) + strides, lo=(0, 0) + pad, hi=(0, 0) + pad)


@layer_scope("max_pool1d")
def max_pool1d(x: Array, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0) -> Array:
    """Max over windows of the last axis (padding is -inf); the gradient goes to the
    first largest element of each window."""
    return _pool(P.max_pool, x, kernel_size, stride, padding, 1, "max_pool1d")


@layer_scope("max_pool2d")
def max_pool2d(x: Array, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0) -> Array:
    """Max over windows of the last two axes (padding is -inf); the gradient goes to the
    first largest element of each window."""
    return _pool(P.max_pool, x, kernel_size, stride, padding, 2, "max_pool2d")


@layer_scope("avg_pool1d")
def avg_pool1d(x: Array, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0) -> Array:
    """Mean over windows of the last axis; padded zeros count (PyTorch's default)."""
    return _pool(P.avg_pool, x, kernel_size, stride, padding, 1, "avg_pool1d")


@layer_scope("avg_pool2d")
def avg_pool2d(x: Array, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0) -> Array:
    """Mean over windows of the last two axes; padded zeros count (PyTorch's default)."""
    return _pool(P.avg_pool, x, kernel_size, stride, padding, 2, "avg_pool2d")
