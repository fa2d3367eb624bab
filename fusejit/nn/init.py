"""Parameter initialisers, driven by a ``numpy.random.Generator``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Linear:
    """Spec of a ``linear`` layer for ``init_model``: ``{"w": (out, in), "b": (out,)}``."""

    in_features: int
    out_features: int

    def init(self, rng: np.random.Generator, dtype=np.float32) -> dict:
        return init_linear(rng, self.in_features, self.out_features, dtype)


@dataclass(frozen=True)
class Conv2d:
    """Spec of a ``conv2d`` layer for ``init_model``: ``{"w": (out, in, k, k), "b": (out,)}``."""

    in_channels: int
    out_channels: int
    kernel_size: int

    def init(self, rng: np.random.Generator, dtype=np.float32) -> dict:
        return init_conv2d(rng, self.in_channels, self.out_channels, self.kernel_size, dtype)


def init_model(rng: np.random.Generator, spec: Any, dtype=np.float32) -> Any:
    """The parameters of a whole model: ``spec`` is a pytree (dicts, lists, tuples) whose
    leaves are layer specs (``Linear``, ``Conv2d``, or any object with
    ``init(rng, dtype)``); the result has the same structure with each spec replaced by
    its parameter dict. Layers draw from ``rng`` in the order ``fj.tree_flatten`` visits
    them (dict keys sorted), so one seed gives one model. Raises ``TypeError`` for a leaf
    that is not a layer spec.

        params = fj.nn.init_model(np.random.default_rng(0), {
            "conv1": fj.nn.Conv2d(1, 16, 3), "fc": fj.nn.Linear(128, 10)})
    """
    from fusejit.tracer.pytree import tree_flatten, tree_unflatten

    specs, treedef = tree_flatten(spec)
    for path_spec in specs:
        if not callable(getattr(path_spec, "init", None)):
            raise TypeError(f"init_model: {path_spec!r} is not a layer spec (an object with init(rng, dtype))")
    return tree_unflatten(treedef, [s.init(rng, dtype) for s in specs])


def param_count(params: Any) -> int:
    """The number of scalars in a parameter pytree."""
    from fusejit.tracer.pytree import tree_leaves

    return int(sum(np.size(leaf) for leaf in tree_leaves(params)))
