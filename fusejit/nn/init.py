"""Parameter initialisers, driven by a ``numpy.random.Generator``."""

from __future__ import annotations

import math

import numpy as np


def he_normal(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, dtype=np.float32) -> np.ndarray:
    """Normal with variance ``2 / fan_in`` (for ReLU layers)."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int, fan_out: int,
                   dtype=np.float32) -> np.ndarray:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def init_linear(rng: np.random.Generator, in_features: int, out_features: int, dtype=np.float32) -> dict:
    """``{"w": (out, in), "b": (out,)}`` for ``fj.nn.linear``."""
    return {
        "w": he_normal(rng, (out_features, in_features), in_features, dtype),
        "b": np.zeros(out_features, dtype),
    }


def init_conv2d(rng: np.random.Generator, in_channels: int, out_channels: int, kernel_size: int,
                dtype=np.float32) -> dict:
    """``{"w": (out, in, k, k), "b": (out,)}`` for ``fj.nn.conv2d``."""
    fan_in = in_channels * kernel_size * kernel_size
    return {
        "w": he_normal(rng, (out_channels, in_channels, kernel_size, kernel_size), fan_in, dtype),
        "b": np.zeros(out_channels, dtype),
    }


def init_mlp(rng: np.random.Generator, sizes: list[int], dtype=np.float32) -> list[dict]:
    """One ``init_linear`` dict per consecutive pair of ``sizes``."""
    return [init_linear(rng, a, b, dtype) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
