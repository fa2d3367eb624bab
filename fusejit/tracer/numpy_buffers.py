"""NumPy buffers made inside a traced function: ``np.zeros(...)`` becomes a known traced array.

Tutorial NumPy code makes buffers with ``np.zeros``/``np.empty`` and fills them in place,
sometimes with traced values or at traced positions (``xs[t] = np.zeros((V, 1));
xs[t][inputs[t]] = 1``). A NumPy array cannot hold a traced value, and which object a
name refers to cannot change after the fact, so while a function is traced, NumPy's buffer
constructors called from the user's code return a ``TracedArray`` whose contents are known
(``TracedArray.known``). Python can still ask about it as about the NumPy array (``if``,
``int()``, ``np.asarray``, a boolean index); concrete writes keep it known; a traced write
makes it traced, and the program computes with it like with any traced array. This is
what PyTorch's compiler does for NumPy code (its NumPy calls become traced tensor ops).

The constructors (``zeros``, ``ones``, ``empty``, ``full`` and their ``_like`` forms) are
replaced in the ``numpy`` module only while some thread traces, and they answer as NumPy's
own unless the calling thread is tracing and the caller is the user's code: fusejit, NumPy,
the standard library and installed packages keep getting NumPy arrays. ``np.empty`` gives
zeros (NumPy leaves its contents unspecified). A buffer of more than ``KNOWN_MAX_SIZE``
elements stays known until it is written (what operations compute from known values is
kept only up to that size), and one whose elements differ (``np.full`` of an array) stays
a NumPy array above it.

A Numba function compiled by another thread while a trace is running would find the
replacement under ``np.zeros`` and fail to type it; compile such functions before tracing.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from fusejit.tracer.tracing import (
    _TRACES,
    KNOWN_MAX_SIZE,
    TracedArray,
    _is_internal,
    _to_value,
    current_trace,
    read_only,
)

BUFFER_CONSTRUCTORS = ("zeros", "ones", "empty", "full", "zeros_like", "ones_like", "empty_like", "full_like")

_LIBRARY_DIRS = tuple(
    os.path.abspath(p) + os.sep
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)
_user_files: dict[str, bool] = {}


def _is_user_file(filename: str) -> bool:
    user = _user_files.get(filename)
    if user is None:
        user = not _is_internal(filename) and not os.path.abspath(filename).startswith(_LIBRARY_DIRS)
        _user_files[filename] = user
    return user


def _traced_constructor(original: Callable[..., Any], unspecified: bool) -> Callable[..., Any]:
    """``original`` (a NumPy constructor), making a known traced array when called from
    user code in a tracing thread (zeros when its contents are ``unspecified``)."""

    @functools.wraps(original)
    def constructor(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if _TRACES.traces and type(out) is np.ndarray and _is_user_file(sys._getframe(1).f_code.co_filename):
            if unspecified:
                out.fill(0)
            return _known_buffer(out)
        return out

    return constructor


def _known_buffer(contents: np.ndarray) -> TracedArray | np.ndarray:
    """A traced array of the current trace holding ``contents``, known: a broadcast scalar
    constant when every element is the same (which the simplifier folds writes into), a
    constant of the data otherwise; ``contents`` itself (a NumPy array) when it is neither
    uniform nor small enough to be written into the IR."""
    from fusejit.tracer import numpy_api as fnp

    trace = current_trace()
    assert trace is not None
    if contents.size and (contents != contents.flat[0]).any():
        if contents.size > KNOWN_MAX_SIZE:
            return contents
        return TracedArray(_to_value(contents, trace), trace, known=read_only(contents))
    out = fnp.full(contents.shape, contents.flat[0] if contents.size else 0, contents.dtype)
    out._known = read_only(contents)  # for any size: the array exists already
    return out


_ORIGINALS = {name: getattr(np, name) for name in BUFFER_CONSTRUCTORS}
_REPLACEMENTS = {name: _traced_constructor(f, name.startswith("empty")) for name, f in _ORIGINALS.items()}
_lock = threading.Lock()
_tracing_threads = 0


@contextmanager
def traced_buffers() -> Iterator[None]:
    """While active (in any thread), ``numpy``'s buffer constructors called from user code
    in a tracing thread make known traced arrays."""
    global _tracing_threads
    with _lock:
        if _tracing_threads == 0:
            for name, f in _REPLACEMENTS.items():
                setattr(np, name, f)
        _tracing_threads += 1
    try:
        yield
    finally:
        with _lock:
            _tracing_threads -= 1
            if _tracing_threads == 0:
                for name, f in _ORIGINALS.items():
                    setattr(np, name, f)
