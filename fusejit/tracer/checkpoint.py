"""``fj.checkpoint``: rematerialization, as ``jax.checkpoint`` (alias ``jax.remat``).

Inside a trace, a call of a checkpointed function records one ``checkpoint`` op holding
the function traced to IR (``fusejit.ir.checkpoint``); traced values it closes over
become extra operands, so they are differentiated like its arguments. Reverse mode then
saves only the operands and runs the function again in the backward pass
(``fusejit.ir.transforms.checkpoint``). Outside any trace the function simply runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from fusejit.ir import primitives as P
from fusejit.tracer.control_flow import _operands
from fusejit.tracer.pytree import tree_unflatten
from fusejit.tracer.tracing import (
    argument_type,
    bind,
    is_tracing,
    sanitize_name,
    with_weak,
)
from fusejit.tracer.transformations import _trace

__all__ = ["checkpoint"]


def checkpoint(fun: Callable[..., Any] | None = None, *, static_argnums: int | Sequence[int] = ()) -> Any:
    """``fun`` whose intermediates are recomputed in the backward pass instead of saved
    (``jax.checkpoint``; Chen et al. 2016, "Training deep nets with sublinear memory
    cost"; Griewank & Walther, "Evaluating Derivatives", ch. 12).

    Returns a function with ``fun``'s signature, values and derivatives (both modes, any
    order): arguments and results are pytrees of arrays and scalars, of any shapes and
    dtypes. Under ``grad``/``vjp`` only its arguments (and the traced values it closes
    over) stay alive between the forward and the backward pass; the backward pass runs
    ``fun`` again to rebuild the rest. This trades one more forward computation of
    ``fun`` for the memory of its intermediates: wrap each layer of a deep network, or a
    scan body (``fj.lax.scan(fj.checkpoint(step), ...)``: the backward scan then stacks
    each step's carry and slice instead of every intermediate of the step). Usable as a
    decorator, with or without ``static_argnums`` (positions of arguments that are not
    arrays: passed to ``fun`` as they are, as in JAX).

    Raises ``TypeError`` naming an argument that is neither an array nor a scalar (make
    it static or close over it) and, from ``fun``, whatever ``fun`` raises.
    """
    static = (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
    if fun is None:
        return lambda f: checkpoint(f, static_argnums=static)
    if not callable(fun):
        raise TypeError(f"checkpoint: expected a function, got {type(fun).__name__}")

    @functools.wraps(fun)
    def rematerialized(*args: Any, **kwargs: Any) -> Any:
        if not is_tracing():
            return fun(*args, **kwargs)  # no derivative can be taken of an eager call
        return _bind(fun, static, args, kwargs)

    return rematerialized


def _bind(fun: Callable[..., Any], static: tuple[int, ...], args: tuple, kwargs: dict[str, Any]) -> Any:
    name = getattr(fun, "__name__", None) or type(fun).__name__
    n = len(args)
    static = tuple(i + n if i < 0 else i for i in static)
    for i in static:
        if not 0 <= i < n:
            raise ValueError(
                f"checkpoint {name}: static_argnums has {i}, but it was called with {n} arguments"
            )
    def is_dynamic(i: int, path: str, leaf: Any) -> bool:
        if i in static:
            return False
        if argument_type(leaf, path) is None:
            raise TypeError(
                f"checkpoint {name}: {path} is a {type(leaf).__name__}, not an array or a scalar; "
                "list its position in static_argnums or close over it"
            )
        return True

    traced = _trace(fun, args, kwargs, is_dynamic)
    types = [p.type for p in traced.fn.params[: len(traced.dynamic)]]
    operands = [*_operands(traced.dynamic, types), *traced.captured]
    if not operands:
        return fun(*args, **kwargs)  # nothing to differentiate: a constant computation
    body = traced.fn.replace(name=sanitize_name(f"{name}_checkpoint"))
    outs = bind(P.checkpoint, *operands, body=body, prevent_cse=False)
    outs = outs if isinstance(outs, tuple) else (outs,)
    return tree_unflatten(traced.out_tree, with_weak(outs, traced.out_weak))
