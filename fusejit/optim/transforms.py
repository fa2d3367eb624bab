"""Optimizers, gradient transformations and their composition.

An ``Optimizer`` turns gradients into new parameters: ``update(grads, state, params) ->
(params, state)``. A ``GradientTransformation`` turns gradients into other gradients:
``update(grads, state, params) -> (grads, state)`` (clipping, for one). ``chain`` runs
transformations in order and ends with an optimizer, like optax's ``chain`` ending in a
scale by the learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import fusejit.numpy as fnp
from fusejit.tracer.pytree import tree_leaves, tree_map


@dataclass(frozen=True)
class _Pure:
    """A pair of pure functions over pytrees: ``init`` and ``update``."""

    init: Any
    update: Any


class Optimizer(_Pure):
    """``init(params) -> state``; ``update(grads, state, params) -> (params, state)``."""


class GradientTransformation(_Pure):
    """``init(params) -> state``; ``update(grads, state, params) -> (grads, state)``."""


def global_norm(tree: Any) -> Any:
    """The 2-norm of all the leaves of ``tree`` together."""
    return fnp.sqrt(sum(fnp.sum(fnp.square(leaf)) for leaf in tree_leaves(tree)))


def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Scales the gradients by ``max_norm / norm`` when their global norm exceeds
    ``max_norm`` (optax's ``clip_by_global_norm``; ``torch.nn.utils.clip_grad_norm_``
    without its 1e-6)."""

    def init(params: Any) -> Any:
        return ()

    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        norm = global_norm(grads)
        keep = fnp.less(norm, max_norm)
        scale = fnp.where(keep, 1.0, max_norm / fnp.where(keep, 1.0, norm))
        return tree_map(lambda g: g * fnp.astype(scale, g.dtype), grads), state

    return GradientTransformation(init, update)


def chain(*transforms: GradientTransformation | Optimizer) -> GradientTransformation | Optimizer:
    """``transforms`` applied in order to the gradients; the state is a tuple of their
    states. An optimizer may only come last: the chain is then an ``Optimizer``
    (``chain(clip_by_global_norm(1.0), adam(1e-3))``), else a ``GradientTransformation``."""
    if not transforms:
        raise ValueError("chain: give at least one transformation")
    for t in transforms[:-1]:
        if not isinstance(t, GradientTransformation):
            raise TypeError(f"chain: only the last element may be an optimizer, got {t!r} before it")

    def init(params: Any) -> Any:
        return tuple(t.init(params) for t in transforms)

    def update(grads: Any, state: Any, params: Any) -> tuple[Any, Any]:
        states = []
        out = grads
        for t, s in zip(transforms, state, strict=True):
            out, s = t.update(out, s, params)
            states.append(s)
        return out, tuple(states)

    kind = Optimizer if isinstance(transforms[-1], Optimizer) else GradientTransformation
    return kind(init, update)
