"""``debug_callback``: an op that calls back into Python at run time with concrete values.

Declared here and registered in ``PRIMITIVES`` by ``primitives.py``; what users call is
``fj.debug.print`` and ``fj.debug.callback`` (``fusejit.tracer.debugging``). Like JAX's
``debug_callback``, the op has an effect and no value:

* ``debug_callback [%token,] %values...  callback=N token=true|false batch=(...) ->
  bool[]``. The
  Python function is not IR: ``callback`` is its number in this process's registry
  (``register_callback``), so the IR text shows the number and a function parsed in
  another process has no callback to run (running it raises ``RuntimeError``).
* Ordering: the op's result is a token that the next callback of the same function
  takes as its first operand (``token=true``), so callbacks run in program order whatever
  the passes and the scheduler do with everything else; the first one takes no token.
  Only the dependency matters: the first operand of ``token=true`` may be any value, and
  the callback never sees it.
* It is never removed as dead code (``EFFECTFUL``), never folded or merged (every call
  has its own number), not differentiated (its operands get no cotangent from it), and
  batched by calling back once per example: under ``vmap`` every value operand carries
  the leading example axes whose sizes ``batch`` lists (outermost first).
* It is an ``OpKind.HOST`` op: the runtime runs it between kernels on buffers in memory
  (``fusejit.runtime.host_ops``), so only its operands are materialized; the kernels
  around it fuse as they would without it.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable

import numpy as np

from fusejit.ir.dtypes import DType
from fusejit.ir.primitives import AttrKind, AttrSpec, IRTypeError, _host
from fusejit.ir.types import TensorType

__all__ = ["EFFECTFUL", "TOKEN", "debug_callback", "register_callback", "run_callback"]

TOKEN = TensorType(DType.bool, ())
HostCallback = Callable[[tuple[np.ndarray, ...]], None]

_callbacks: dict[int, HostCallback] = {}
_numbers = itertools.count()
_lock = threading.Lock()


def register_callback(fn: HostCallback) -> int:
    """Registers ``fn`` (called with one array per value operand) for the life of the
    process; returns its number, the op's ``callback`` attribute."""
    with _lock:
        n = next(_numbers)
        _callbacks[n] = fn
    return n


def run_callback(
    operands: tuple[np.ndarray, ...], callback: int, token: bool, batch: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Calls callback ``callback`` once per example of ``batch`` with copies of the value
    operands (the runtime's buffers are reused after the call); returns the token."""
    fn = _callbacks.get(callback)
    if fn is None:
        raise RuntimeError(
            f"debug_callback: callback {callback} is not registered in this process "
            "(was the IR text parsed from another process?)"
        )
    values = operands[1:] if token else operands
    for index in np.ndindex(*batch):
        fn(tuple(np.array(v[index], copy=True) for v in values))
    return (np.array(True),)


def _rule(
    in_types: tuple[TensorType, ...], callback: int, token: bool, batch: tuple[int, ...]
) -> tuple[TensorType, ...]:
    if callback < 0:
        raise IRTypeError(f"debug_callback: callback={callback} is not a callback number")
    for t in in_types[1:] if token else in_types:
        if t.shape[: len(batch)] != batch:
            raise IRTypeError(f"debug_callback: a {t} value does not have the example axes batch={batch}")
    return (TOKEN,)


debug_callback = _host(
    "debug_callback",
    None,
    {"callback": AttrSpec(AttrKind.INT), "token": AttrSpec(AttrKind.BOOL), "batch": AttrSpec(AttrKind.INTS)},
    _rule,
    lambda *xs, callback, token, batch: run_callback(xs, callback, token, batch),
)

# Ops with an effect: dead-code elimination keeps them although nothing reads their result.
EFFECTFUL = frozenset({debug_callback})
