"""The reference executor: runs IR op by op through each primitive's NumPy rule.

This defines what IR means. Every compiled backend is tested against it.
"""

from __future__ import annotations

import numpy as np

from fusejit import config
from fusejit.ir.core import Function, Value
from fusejit.ir.nans import NonFiniteError, nonfinite_error, nonfinite_kind


class IRRuntimeError(RuntimeError):
    """An op failed while executing; the message names the op and its source line."""


def run_function(fn: Function, *args: np.ndarray) -> tuple[np.ndarray, ...]:
    """Evaluates ``fn`` on NumPy arrays and returns its results as NumPy arrays of exactly
    the result types' dtypes and shapes."""
    if len(args) != len(fn.params):
        raise TypeError(f"@{fn.name} takes {len(fn.params)} arguments, got {len(args)}")
    env: dict[Value, np.ndarray] = {}
    for p, a in zip(fn.params, args, strict=True):
        env[p] = np.asarray(a, dtype=p.dtype.np)
    check_nans = config.LIVE["debug_nans"]  # FUSEJIT_DEBUG_NANS: every op's outputs
    with np.errstate(all="ignore"):  # IEEE semantics: inf and nan are values, not errors
        for op in fn.ops:
            try:
                outs = op.prim.impl(*(env[v] for v in op.inputs), **op.attrs)
            except NonFiniteError:  # from a nested function (a loop body): already names its op
                raise
            except Exception as e:
                where = f" at {op.loc}" if op.loc else ""
                raise IRRuntimeError(f"while executing {op.prim.name}{where}: {e}") from e
            for v, out in zip(op.outputs, outs, strict=True):
                env[v] = np.asarray(out, dtype=v.dtype.np)
            if check_nans and (kind := nonfinite_kind(env[v] for v in op.outputs)) is not None:
                finite = nonfinite_kind(env[v] for v in op.inputs) is None
                raise nonfinite_error(op, kind, finite, f"@{fn.name} on the reference interpreter")
    return tuple(_owned(env[r], args) for r in fn.results)


def _owned(x: np.ndarray, args: tuple[np.ndarray, ...]) -> np.ndarray:
    """Results are fresh, writable arrays: never a caller's input or a broadcast view."""
    if x.flags.owndata and x.flags.writeable and not any(x is a for a in args):
        return x
    return np.array(x, copy=True)
