"""``fj.optim``: pure, jittable optimizers over parameter pytrees.

``opt.init(params) -> state``; ``opt.update(grads, state, params) -> (params, state)``.
Jitted, each update fuses into a few kernels (one per parameter, then horizontally).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import fusejit.numpy as fnp
from fusejit.tracer.pytree import tree_flatten, tree_map, tree_unflatten


@dataclass(frozen=True)
class Optimizer:
    """A pair of pure functions; see the module docstring."""

    init: Any
    update: Any


def sgd(lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0) -> Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay,
    as in ``torch.optim.SGD``."""

    def init(params: Any) -> Any:
        if momentum == 0.0:
            return ()
        return {"velocity": tree_map(np.zeros_like, params)}

    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        if weight_decay:
            grads = tree_map(lambda g, p: g + weight_decay * p, grads, params)
        if momentum == 0.0:
            return tree_map(lambda p, g: p - lr * g, params, grads), state
        velocity = tree_map(lambda v, g: momentum * v + g, state["velocity"], grads)
        step = tree_map(lambda v, g: g + momentum * v, velocity, grads) if nesterov else velocity
        return tree_map(lambda p, s: p - lr * s, params, step), {"velocity": velocity}

    return Optimizer(init, update)


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0) -> Optimizer:
    """Adam with bias correction; ``weight_decay`` is decoupled (AdamW)."""

    def init(params: Any) -> Any:
        leaves, _ = tree_flatten(params)
        dtype = leaves[0].dtype if leaves else np.float32
        return {
            "count": np.zeros((), dtype),
            "m": tree_map(np.zeros_like, params),
            "v": tree_map(np.zeros_like, params),
        }

    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        count = state["count"] + 1
        # Bias corrections are scalars: computed once, then broadcast into each update.
        step_size = lr * fnp.sqrt(1 - b2**count) / (1 - b1**count)
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), state["v"], grads)
        eps_hat = eps * fnp.sqrt(1 - b2**count)

        def new_param(p: Any, m: Any, v: Any) -> Any:
            p_new = p - step_size * m / (fnp.sqrt(v) + eps_hat)
            return p_new - lr * weight_decay * p if weight_decay else p_new

        p_leaves, treedef = tree_flatten(params)
        new = [new_param(p, mm, vv) for p, mm, vv in zip(p_leaves, tree_flatten(m)[0], tree_flatten(v)[0], strict=True)]
        return tree_unflatten(treedef, new), {"count": count, "m": m, "v": v}

    return Optimizer(init, update)


__all__ = ["Optimizer", "adam", "sgd"]
