"""``fj.debug``: printing and Python callbacks from inside jitted and differentiated code.

    @fj.jit
    def step(w, x):
        h = x @ w
        fj.debug.print("step: |h| = {:.3f}, h[0] = {}", fnp.linalg.norm(h), h[0])
        return fnp.tanh(h)

A traced value has no data at trace time (``print(h)`` shows ``TracedArray(...)``);
these calls record a ``debug_callback`` op instead (``fusejit.ir.host_callbacks``) that
runs the Python function on every call of the compiled code, with the values as NumPy
arrays. As ``jax.debug.print``/``jax.debug.callback``:

* callbacks run in program order (among themselves), once per call of the compiled
  function, between the kernels that compute their values; the kernels around them fuse
  as they would without them (only the values passed are written to memory);
* under ``fj.grad``/``fj.vjp`` they run in the forward pass and are not differentiated:
  the gradients are those of the same function without them;
* under ``fj.vmap`` they run once per example, with that example's values (once in all
  if none of the values depends on the mapped arguments);
* without a trace (eager mode, ``FUSEJIT_DISABLE_JIT=1``) they run at once.

Only traced values become operands; other arguments (NumPy arrays, strings, Python
numbers) are kept as they were at trace time and passed unchanged.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.host_callbacks import register_callback
from fusejit.tracer.pytree import tree_flatten, tree_unflatten
from fusejit.tracer.tracing import TracedArray, bind_effect, is_tracing, user_source_loc

__all__ = ["callback", "print"]


def callback(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Calls ``fn(*args, **kwargs)`` at run time with the traced values in ``args`` and
    ``kwargs`` (pytrees) replaced by NumPy arrays of their shapes and dtypes (0-d arrays
    for scalars); its result is ignored. Raises ``TypeError`` if ``fn`` is not callable.
    Exceptions from ``fn`` propagate from the call of the compiled function."""
    if not callable(fn):
        raise TypeError(f"fj.debug.callback: the first argument must be callable, got {type(fn).__name__}")
    _record(lambda a, k: fn(*a, **k), args, kwargs)


def print(fmt: str, *args: Any, **kwargs: Any) -> None:  # noqa: A001 - jax.debug.print's name
    """Prints ``fmt.format(*args, **kwargs)`` at run time, with the traced values in
    ``args``/``kwargs`` as NumPy arrays (a 0-d value as a NumPy scalar, so that format
    specs such as ``{:.3f}`` apply). Raises ``TypeError`` if ``fmt`` is not a string and
    ``ValueError`` when it is called, not when it runs, if ``fmt`` names an argument that
    is not given (``"{} {}"`` with one value)."""
    if not isinstance(fmt, str):
        raise TypeError(f"fj.debug.print: the format must be a string, got {type(fmt).__name__}")
    try:
        fmt.format(*(_ANY,) * len(args), **dict.fromkeys(kwargs, _ANY))
    except (IndexError, KeyError) as e:
        loc = user_source_loc()
        where = f" (at {loc})" if loc is not None else ""
        raise ValueError(f"fj.debug.print: the format {fmt!r} asks for an argument that is not given "
                         f"({len(args)} positional, keywords {sorted(kwargs)}): {e}{where}") from None

    def show(a: tuple, k: dict) -> None:
        text = fmt.format(*map(_scalar, a), **{name: _scalar(v) for name, v in k.items()})
        builtins.print(text, flush=True)

    _record(show, args, kwargs)


class _AnyValue:
    """Stands for a value while a format is checked: takes every format spec."""

    def __format__(self, spec: str) -> str:
        return ""

    def __getattr__(self, name: str) -> Any:
        return self

    def __getitem__(self, key: Any) -> Any:
        return self


_ANY = _AnyValue()


def _scalar(v: Any) -> Any:
    """A 0-d array as its NumPy scalar (which format specs apply to), anything else as is."""
    return v[()] if isinstance(v, np.ndarray) and v.ndim == 0 else v


def _record(run: Callable[[tuple, dict], None], args: tuple, kwargs: dict) -> None:
    """Runs ``run(args, kwargs)`` now (no trace) or records the op that runs it with the
    concrete values of the traced leaves."""
    if not is_tracing():
        run(args, kwargs)
        return
    leaves, treedef = tree_flatten((args, kwargs))
    traced = [i for i, leaf in enumerate(leaves) if isinstance(leaf, TracedArray)]
    # The callback keeps the static leaves only: no tracer outlives its trace.
    static = [None if isinstance(leaf, TracedArray) else leaf for leaf in leaves]

    def call(values: tuple[np.ndarray, ...]) -> None:
        filled = list(static)
        for i, v in zip(traced, values, strict=True):
            filled[i] = v
        a, k = tree_unflatten(treedef, filled)
        run(a, k)

    bind_effect(P.debug_callback, *(leaves[i] for i in traced), callback=register_callback(call), batch=())
