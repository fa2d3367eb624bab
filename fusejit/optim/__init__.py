"""``fj.optim``: pure, jittable optimizers over parameter pytrees.

``opt.init(params) -> state``; ``opt.update(grads, state, params) -> (params, state)``.
Jitted, each update fuses into a few kernels (one per parameter, then horizontally);
its ops are traced in the scope ``sgd``, ``adam`` or ``adamw`` (``fj.named_scope``).

``lr`` may be a float or a schedule (``constant``, ``step_decay``, ``exponential_decay``,
``cosine_decay``): a function of the number of updates made so far, which the state
keeps (``state["count"]``). Gradient transformations (``clip_by_global_norm``) map
gradients to gradients; ``chain(clip_by_global_norm(1.0), adam(1e-3))`` applies them in
order, then the optimizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import fusejit.numpy as fnp
from fusejit.optim.schedules import (
    Schedule,
    constant,
    cosine_decay,
    exponential_decay,
    step_decay,
    value_at,
)
from fusejit.optim.transforms import (
    GradientTransformation,
    Optimizer,
    chain,
    clip_by_global_norm,
    global_norm,
)
from fusejit.tracer.pytree import tree_flatten, tree_map, tree_unflatten
from fusejit.tracer.scopes import named_scope


def sgd(lr: float | Schedule, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0) -> Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay,
    as in ``torch.optim.SGD``. With a schedule for ``lr`` the state counts the updates."""

    def init(params: Any) -> Any:
        state = {} if momentum == 0.0 else {"velocity": tree_map(np.zeros_like, params)}
        if callable(lr):
            state["count"] = np.zeros((), _dtype_of(params))
        return state if state else ()

    @named_scope("sgd")
    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        new_state = {}
        rate = lr
        if callable(lr):
            rate = lr(state["count"])
            new_state["count"] = state["count"] + 1
        if weight_decay:
            grads = tree_map(lambda g, p: g + weight_decay * p, grads, params)
        if momentum == 0.0:
            return tree_map(lambda p, g: p - rate * g, params, grads), (new_state if new_state else ())
        velocity = tree_map(lambda v, g: momentum * v + g, state["velocity"], grads)
        step = tree_map(lambda v, g: g + momentum * v, velocity, grads) if nesterov else velocity
        return tree_map(lambda p, s: p - rate * s, params, step), {**new_state, "velocity": velocity}

    return Optimizer(init, update)


def _dtype_of(params: Any) -> Any:
    leaves, _ = tree_flatten(params)
    return leaves[0].dtype if leaves else np.float32


def _adam(lr: float | Schedule, b1: float, b2: float, eps: float, l2: float, decoupled: float) -> Optimizer:
    """Adam with bias correction (``torch.optim.Adam``'s update); ``l2`` is added to the
    gradient (``Adam``'s ``weight_decay``), ``decoupled`` shrinks the parameters by
    ``lr * decoupled`` (``AdamW``'s)."""

    def init(params: Any) -> Any:
        return {
            "count": np.zeros((), _dtype_of(params)),
            "m": tree_map(np.zeros_like, params),
            "v": tree_map(np.zeros_like, params),
        }

    @named_scope("adamw" if decoupled else "adam")
    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        rate = value_at(lr, state["count"])
        count = state["count"] + 1
        if l2:
            grads = tree_map(lambda g, p: g + l2 * p, grads, params)
        # Bias corrections are scalars: computed once, then broadcast into each update.
        step_size = rate * fnp.sqrt(1 - b2**count) / (1 - b1**count)
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["m"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * (g * g), state["v"], grads)
        eps_hat = eps * fnp.sqrt(1 - b2**count)

        def new_param(p: Any, m: Any, v: Any) -> Any:
            p_new = p - step_size * m / (fnp.sqrt(v) + eps_hat)
            return p_new - rate * decoupled * p if decoupled else p_new

        p_leaves, treedef = tree_flatten(params)
        new = [new_param(p, mm, vv) for p, mm, vv in zip(p_leaves, tree_flatten(m)[0], tree_flatten(v)[0], strict=True)]
        return tree_unflatten(treedef, new), {"count": count, "m": m, "v": v}

    return Optimizer(init, update)


def adam(lr: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> Optimizer:
    """Adam as ``torch.optim.Adam``: ``weight_decay`` adds ``weight_decay * p`` to the
    gradient (L2 regularization, which Adam's scaling then divides)."""
    return _adam(lr, b1, b2, eps, l2=weight_decay, decoupled=0.0)


def adamw(lr: float | Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.01) -> Optimizer:
    """AdamW as ``torch.optim.AdamW``: the parameters shrink by ``lr * weight_decay``
    apart from the gradient (decoupled weight decay, Loshchilov and Hutter)."""
    return _adam(lr, b1, b2, eps, l2=0.0, decoupled=weight_decay)


__all__ = [
    "GradientTransformation",
    "Optimizer",
    "Schedule",
    "adam",
    "adamw",
    "chain",
    "clip_by_global_norm",
    "constant",
    "cosine_decay",
    "exponential_decay",
    "global_norm",
    "sgd",
    "step_decay",
]
