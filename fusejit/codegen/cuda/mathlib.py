"""The CUDA target's math library: the functions a ``MathCall`` names, as Numba CUDA
device functions (``exp_f32``, ``maximum_f64``...), imported by the generated modules.

Transcendentals are libdevice's (Numba CUDA maps ``math.exp`` on a float32 to
``__nv_expf`` and on a float64 to ``__nv_exp``; accuracy bounds in NVIDIA's libdevice user
guide, 1-2 ulp for ``expf``/``logf``/``tanhf``...). What NumPy defines differently from C
is written out here with the CPU library's formulas (``fusejit.codegen.cpu.mathlib``):
``maximum``/``minimum`` propagate a NaN (``np.maximum``), ``maxnum``/``minnum`` ignore one
(``np.fmax``), ``floor_divide`` and ``remainder`` follow NumPy's ``npy_divmod`` (C ``fmod``,
then one correction so the remainder takes the divisor's sign), and ``logistic`` is
computed from ``exp(-|x|)`` so it neither overflows nor loses tiny results.

Importing this module imports ``numba.cuda``: only generated CUDA modules do.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from fusejit.codegen.cuda import DISK_CACHE, simulated

FUNCTIONS = ("floor", "ceil", "rint", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "tanh", "logistic", "sin", "cos", "atan2", "pow",
             "maximum", "minimum", "maxnum", "minnum", "floor_divide", "remainder", "accumulate")


if simulated():  # NumPy's scalar functions give NaN and inf where Python's math raises
    _exp, _log, _log1p, _expm1, _sqrt, _tanh = np.exp, np.log, np.log1p, np.expm1, np.sqrt, np.tanh
    _sin, _cos, _atan2, _pow, _fmod, _copysign = np.sin, np.cos, np.arctan2, np.power, np.fmod, np.copysign
else:  # libdevice
    _exp, _log, _log1p, _expm1, _sqrt, _tanh = math.exp, math.log, math.log1p, math.expm1, math.sqrt, math.tanh
    _sin, _cos, _atan2, _pow, _fmod, _copysign = math.sin, math.cos, math.atan2, math.pow, math.fmod, math.copysign


def _rounding(T: type) -> tuple[object, object, object]:
    """floor, ceil and rint (half to even) at ``T``, keeping the float type (Python's
    ``math.floor`` returns an int, and Numba CUDA has no NumPy rounding ufuncs)."""
    if simulated():
        return np.floor, np.ceil, np.rint
    from numba.cuda import libdevice

    if T is np.float32:
        return libdevice.floorf, libdevice.ceilf, libdevice.rintf
    return libdevice.floor, libdevice.ceil, libdevice.rint


def _library(T: type) -> dict[str, object]:
    """Every function of the library at the float type ``T`` (np.float32 or np.float64)."""
    zero, half, one = T(0.0), T(0.5), T(1.0)
    device = cuda.jit(device=True, cache=DISK_CACHE)
    _floor_t, _ceil_t, _rint_t = _rounding(T)

    @device
    def floor(x):
        return _floor_t(x)

    @device
    def ceil(x):
        return _ceil_t(x)

    @device
    def rint(x):
        return _rint_t(x)

    @device
    def exp(x):
        return _exp(x)

    @device
    def log(x):
        return _log(x)

    @device
    def log1p(x):
        return _log1p(x)

    @device
    def expm1(x):
        return _expm1(x)

    @device
    def sqrt(x):
        return _sqrt(x)

    @device
    def rsqrt(x):
        return one / _sqrt(x)

    @device
    def tanh(x):
        return _tanh(x)

    @device
    def logistic(x):
        # e = exp(-|x|) <= 1, t = e / (1 + e): 1 - t for x >= 0, e - e*t for x < 0.
        e = _exp(-abs(x))
        t = e / (one + e)
        return e - e * t if x < zero else one - t

    @device
    def sin(x):
        return _sin(x)

    @device
    def cos(x):
        return _cos(x)

    @device
    def atan2(y, x):
        return _atan2(y, x)

    @device
    def pow(x, y):
        return _pow(x, y)

    @device
    def maximum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return a if a >= b else b

    @device
    def minimum(a, b):
        if a != a:
            return a
        if b != b:
            return b
        return a if a <= b else b

    @device
    def maxnum(a, b):
        if a != a:
            return b
        if b != b:
            return a
        return a if a >= b else b

    @device
    def minnum(a, b):
        if a != a:
            return b
        if b != b:
            return a
        return a if a <= b else b

    @device
    def remainder(x, y):
        mod = _fmod(x, y)
        if mod != zero:
            if (y < zero) != (mod < zero):
                mod = mod + y
        else:
            mod = _copysign(zero, y)
        return mod

    @device
    def floor_divide(x, y):
        if y == zero:
            return x / y
        mod = _fmod(x, y)
        div = (x - mod) / y
        if mod != zero and (y < zero) != (mod < zero):
            div = div - one
        if div == zero:
            return _copysign(zero, x / y)
        floordiv = _floor_t(div)
        if div - floordiv > half:
            floordiv = floordiv + one
        return floordiv

    @device
    def accumulate(acc, x):
        return acc + x

    return {name: fn for name, fn in locals().items() if name in FUNCTIONS}


for _suffix, _T in (("f32", np.float32), ("f64", np.float64)):
    for _name, _fn in _library(_T).items():
        globals()[f"{_name}_{_suffix}"] = _fn
