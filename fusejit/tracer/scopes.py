"""``fj.named_scope``: names for the parts of a traced program.

Every op traced while a scope is open records the scope path in its source location
(``SourceLoc.scope``): the IR text shows it after the source line, and kernel headers,
the fusion report, the profile and ``FUSEJIT_DEBUG_NANS`` name kernels and ops by it.
Scopes nest: ``named_scope("block1")`` around ``named_scope("conv")`` gives
``block1/conv``. Derivative ops keep the scope of the op they differentiate. Like
``jax.named_scope`` and ``torch.profiler.record_function``, a scope changes no value.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from fusejit.ir.core import SCOPE_PATH


class _Stack(threading.local):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.path = ""


_STACK = _Stack()


def current_scope() -> str:
    """The path of the scopes open in this thread (``""`` outside every scope)."""
    return _STACK.path


F = TypeVar("F", bound=Callable[..., Any])


class named_scope:  # noqa: N801 - a function-like name, as jax.named_scope
    """Context manager and decorator: ops traced inside carry ``name`` appended to the
    enclosing scope path.

    ``name`` is one or more names joined by ``/`` (``"block1/conv"``), each made of
    letters, digits and ``_ . - < > [ ]``; anything else raises ``ValueError`` (a
    ``TypeError`` if it is not a string), because the path is printed in the IR text
    after the source line and must read back. Used as a decorator, every call of the
    function opens the scope::

        with fj.named_scope("encoder"):
            h = fj.nn.linear(x, w)          # ops in scope "encoder/linear"

        @fj.named_scope("attention")
        def attend(q, k, v): ...
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError(f"named_scope: name must be a string, got {type(name).__name__}")
        if not SCOPE_PATH.match(name):
            raise ValueError(
                f"named_scope: invalid name {name!r}: use names of letters, digits and _ . - < > [ ] "
                "joined by '/' (no spaces, ':' or '#', no empty part)"
            )
        self.name = name

    def __enter__(self) -> named_scope:
        stack = _STACK
        stack.names.append(stack.path)
        stack.path = f"{stack.path}/{self.name}" if stack.path else self.name
        return self

    def __exit__(self, *exc: Any) -> None:
        _STACK.path = _STACK.names.pop()

    def __call__(self, fun: F) -> F:
        # A wrapper of our own rather than contextlib.ContextDecorator's: ops get the
        # source line of the user's frame, and frames in fusejit are skipped, not contextlib's.
        @functools.wraps(fun)
        def scoped(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fun(*args, **kwargs)

        return scoped  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"named_scope({self.name!r})"
