"""Every ``fj.nn`` layer traces its ops in a ``fj.named_scope`` of its own name, so that
IR text, kernel headers, the fusion report and the profile say ``conv2d``, ``relu``,
``cross_entropy/log_softmax`` rather than only line numbers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from fusejit.tracer.scopes import named_scope

F = TypeVar("F", bound=Callable[..., Any])


def layer_scope(default: str, *, nameable: bool = False) -> Callable[[F], F]:
    """Runs the decorated layer inside ``named_scope(default)``. With ``nameable`` the
    layer also takes a keyword ``name`` that replaces ``default`` (``conv2d(x, w,
    name="conv1")`` traces in scope ``conv1``); an invalid name raises ``ValueError``."""

    def decorate(fun: F) -> F:
        if not nameable:
            return named_scope(default)(fun)  # type: ignore[return-value]

        default_scope = named_scope(default)  # checked once; a scope object keeps no state

        @functools.wraps(fun)
        def layer(*args: Any, name: str | None = None, **kwargs: Any) -> Any:
            with default_scope if name is None else named_scope(name):
                return fun(*args, **kwargs)

        return layer  # type: ignore[return-value]

    return decorate
