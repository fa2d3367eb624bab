"""``fusejit.scipy.special``: SciPy's special functions that NumPy-style models call."""

from __future__ import annotations

from typing import Any

import fusejit.numpy as fnp


def logsumexp(a: Any, axis: Any = None, b: Any = None, keepdims: bool = False,
              return_sign: bool = False) -> Any:
    """``log(sum(b * exp(a), axis))`` without overflow, as ``scipy.special.logsumexp``:
    the maximum (held constant for the derivative) is subtracted first; all -inf gives
    -inf. ``b`` weights the terms (non-negative; ``return_sign`` is not supported)."""
    if return_sign:
        raise NotImplementedError("fusejit.scipy.special.logsumexp with return_sign=True")
    a = fnp.asarray(a)
    a = a if fnp.result_type(a).kind == "f" else fnp.astype(a, fnp.float64)
    m = fnp.stop_gradient(fnp.max(a, axis=axis, keepdims=True))
    m = fnp.where(fnp.isfinite(m), m, 0.0)
    e = fnp.exp(a - m)
    if b is not None:
        e = e * b
    out = fnp.log(fnp.sum(e, axis=axis, keepdims=True)) + m
    if not keepdims:
        out = fnp.squeeze(out, axis=axis) if axis is not None else fnp.reshape(out, ())
    return out
