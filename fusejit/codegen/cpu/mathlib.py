"""Vectorizable scalar math for generated Numba kernels.

Why this exists
---------------
Inside ``numba.njit`` code, ``np.exp``, ``math.tanh`` and the like compile to calls into
the C math library. The LLVM shipped in PyPI's llvmlite has no vector math library
(no SVML), so a loop calling them cannot be vectorized: every element pays a scalar
libm call, and a fused kernel ends up 5-45x slower than NumPy's own SIMD ufuncs (see
the benchmark below). The functions here are straight-line float arithmetic instead
(range reductions, polynomial approximations, exponent-field bit manipulation, and
selects instead of branches), so LLVM inlines them into the kernel's loop and
vectorizes it, as Eigen and XLA do for their own kernels.

Using it
--------
``NAME_f32`` takes and returns float32 and computes in float32 (every constant is an
``np.float32`` global), except where the method below says otherwise; ``NAME_f64`` is
the float64 version. ``FUNCTIONS[(name, "float32" | "float64")]`` maps names for the
code generator, ``MAX_ULP`` holds the accuracy table below. A generated kernel::

    from fusejit.codegen.cpu.mathlib import tanh_f32, maximum_f32  # SOURCE_HASH in a comment

    @numba.njit(cache=True, error_model="numpy")  # no fast-math flag
    def kernel(x, out, n):
        for i in range(n):
            out[i] = tanh_f32(x[i])

Kernel flags: ``error_model="numpy"`` (the default model tests divisions for zero, which
stops vectorization) and no fast-math flag at all: the library's results do not depend
on the caller's flags (tested), but the kernel's own arithmetic would (``contract``
turned ``x*s - max(x*s)`` into an FMA and a softmax into NaN). A sum vectorizes through
``accumulate_f32``/``accumulate_f64``, an add that alone may be reassociated.

How the functions are compiled: ``error_model="numpy"``, ``fastmath={"contract"}``
(FMA; no other flag, since the algorithms rely on IEEE rounding, NaN and infinity),
``forceinline=True`` (LLVM ``alwaysinline``: the bigger functions exceed LLVM's inlining
threshold, and a call left in a loop stops it from vectorizing) and ``cache=True``.
LLVM-level inlining keeps each inlined instruction's own flags; Numba's
``inline="always"`` would re-lower the code with the caller's flags. The intrinsics
(``llvm.maximum`` and friends) sit inside these functions for the same reason: Numba
adds a fast-math caller's flags to every float call it emits, and ``nnan`` on
``llvm.maximum`` drops NaN propagation. Hardware FMA is assumed for speed (x86-64-v3,
AArch64); without it ``llvm.fma`` is a slow but exact library call.

Numba's on-disk cache of a kernel does not notice when functions it calls change: put
``SOURCE_HASH`` (a hash of this file) into the generated source text so that the
kernel's cache key changes with this file.

Methods
-------
- exp: x = k ln2 + r (Cody-Waite, |r| <= ln2/2), exp(r) = 1 + r + r^2 P(r) (degree 5
  minimax), times 2^k built in the exponent field in two steps, so that exp overflows
  to inf at k = 128 and rounds gradually into the subnormals. float64: fdlibm's
  reduction and rational approximation (one division).
- log: x = 2^e (1 + f) with 1 + f in [sqrt(1/2), sqrt(2)) (subtract the bits of
  sqrt(1/2) before splitting the exponent field; f is exact; subnormals are scaled by
  2^23 first), log1p(f) = f - f^2/2 + f^3 Q(f) (Q of degree 8). float64: fdlibm's
  log(1 + f) = 2s + s R(s^2) with s = f/(2 + f) (R of degree 7, one division).
- log1p: u = 1 + x rounded, c = (1 + x) - u computed exactly, log(u) as above plus c/u.
- expm1: float32: k and r as for exp with r = r_hi (exact, via fma) + r_lo, then
  2^k r_hi + (2^k - 1) + 2^k (r^2 P(r) + r_lo): the large terms cancel exactly before the
  small one is added. float64: fdlibm's expm1 (rational approximation, correction term,
  case analysis on k), evaluated branch-free.
- tanh: x + x^3 T(x^2) for small |x| (float32: degree 11, |x| < 0.55; float64: degree
  17, |x| < 0.255), else 1 - 2/(exp(2|x|) + 1) (float32), or musl's t/(t + 2) and
  1 - 2/(t + 2) with t = expm1(2|x|) (float64); saturating at 1.
- logistic: e = exp(-|x|) <= 1, t = e/(1 + e); 1 - t for x >= 0, e - e t for x < 0
  (never overflows; the rounding of 1 + e only reaches the small term e t, so tiny
  results keep their relative accuracy down to the subnormals).
- sin, cos: float32: Payne-Hanek reduction of |x| by pi/2 in 64-bit integer arithmetic
  with a 25-entry table of 4/pi (ARM optimized-routines' sinf method), accurate for
  every float32; r is converted from float64; sin r = r + r^3 S(r^2) (degree 7),
  cos r = 1 - r^2/2 + r^4 C(r^2) (degree 8), quadrant by bit operations. float64: libm.
- pow: float32: in float64 lanes, log2|x| = e + s B(s^2) with s = (z - 1)/(z + 1) for
  the reduced mantissa z (degree 11 odd polynomial, one division), t = y log2|x|, and
  2^t = 2^k C(t - k) (degree 7); the float64 result cannot overflow, so the final
  rounding to float32 gives inf, subnormals and 0 with a single rounding. C99/NumPy
  special cases (0^0 = 1, 1^nan = 1, negative bases with integer exponents, signed zeros
  and infinities) by selects. float64: libm.
- sqrt: ``llvm.sqrt`` (one instruction, correctly rounded); rsqrt = 1/sqrt(x).
- atan2: float64: t = min(|x|,|y|)/max(|x|,|y|) in [0, 1], Cephes' atan (rational
  P(z)/Q(z) of degrees 4/5, with pi/4 + atan((t - 1)/(t + 1)) above 0.66), then
  pi/2 - a when |y| > |x| and pi - a when x is negative (or -0), the multiples of pi
  carried as hi + lo; C99's zeros and infinities by selects, the sign of y at the end.
  float32: the float64 function, rounded once.
- maximum, minimum: ``llvm.maximum``/``llvm.minimum`` (IEEE 754-2019): NaN if either is
  NaN, like ``np.maximum``, and ``acc = maximum_f32(acc, x[i])`` vectorizes (a select or
  Python's ``max`` does not). They order -0 < +0, where NumPy returns the second operand
  for equal zeros. maxnum, minnum: ``llvm.maxnum``/``llvm.minnum``, NaN-ignoring like
  ``np.fmax``/``np.fmin`` (and ``np.nanmax`` as a reduction).

Accuracy
--------
Maximum error in ULPs (units in the last place of the result's binade) against NumPy
computed in a wider type: float32 functions on all 2^32 inputs against float64 NumPy;
float64 functions on 8.4M random bit patterns and grids against long double NumPy (x86
80-bit); pow on 12.6M random pairs (whole range, negative bases with integer
exponents, bases near 1 with large exponents). ``bench/bench_mathlib.py --accuracy``
reproduces it (about 30 minutes on 2 cores); ``MAX_ULP`` holds bounds just above it.

    function   float32   float64
    exp          0.99      0.89
    log          0.81      0.77
    log1p        0.88      0.80
    expm1        1.18      0.78
    tanh         1.46      1.30
    logistic     1.64      1.52
    sin          1.58      0.52 (libm)
    cos          1.58      0.52 (libm)
    pow          0.50      0.51 (libm)   sampled; NumPy's own float32 power: 1.01
    sqrt         0.50      0.50
    rsqrt        1.49      1.50
    atan2        0.50      1.45         sampled (2^20 pairs: random bits, normals)
    maximum, minimum, maxnum, minnum: exact

Edge cases are NumPy's: NaN in, NaN out; exp/expm1 overflow to inf and exp underflows
through the subnormals to 0; log(0) = -inf, log(x < 0) = NaN, log1p(-1) = -inf; tanh and
logistic saturate at +-1 and 0/1 (logistic of large negative x is the tiny, possibly
subnormal, true value, where NumPy's float32 1/(1 + exp(-x)) gives 0 from x < -88.7);
the sign of zero is kept (tanh(-0) = sin(-0) = expm1(-0) = log1p(-0) = -0); sin/cos are
accurate up to the largest float32, and NaN at +-inf.

Speed
-----
``python bench/bench_mathlib.py``: 4M float32 elements, one thread, best of 30, on the
2-core AVX-512 VM (numba 0.68.1, numpy 2.4.6). numpy: the ufunc (or expression) into a
preallocated output; libm: an njit loop calling ``np.tanh(x[i])`` etc.; mathlib: the
same loop calling this library. Timings vary by ~10-20% between runs.

    function   numpy ms   libm ms   mathlib ms   vs numpy   vs libm
    exp            1.69      8.52         1.84      0.92x      4.6x
    log            1.39     10.13         2.32      0.60x      4.4x
    log1p          1.71     38.99         2.71      0.63x     14.4x
    expm1          1.22     37.64         2.12      0.57x     17.8x
    tanh           1.27     50.81         2.18      0.58x     23.3x
    logistic       4.70      8.31         2.16      2.18x      3.8x
    sin            2.17     29.43         4.70      0.46x      6.3x
    cos            2.15     30.50         4.79      0.45x      6.4x
    sqrt           1.08      1.07         1.07      1.01x      1.0x
    rsqrt          1.69      1.35         1.35      1.26x      1.0x
    pow            2.58     17.50         7.07      0.37x      2.5x
    max-reduce     0.57      3.98         0.67      0.85x      5.9x   (acc = maximum_f32(acc, x[i]))

NumPy's float32 ufuncs on this CPU run Intel SVML with 512-bit vectors; LLVM prefers
256-bit vectors here, so one function alone runs at 0.45-0.9x NumPy's speed. The gain is
against the libm calls a Numba kernel would otherwise make (4-23x) and in fusion: no
temporaries and one pass over memory (an unfused logistic is 4 NumPy passes). Setting
``NUMBA_CPU_FEATURES`` to the host's features plus ``-prefer-256-bit`` (before Numba is
imported; see ``llvmlite.binding.get_host_cpu_features``) made LLVM use 512-bit vectors:
exp, log, log1p, expm1, tanh and logistic then took 1.24-1.52 ms, on par with NumPy.
sin and cos pay for a reduction that is right for every float32, computed for every
element since a vector loop cannot branch per element: about 3x the cost of a Cody-Waite
reduction that is only right up to |x| ~ 1e5. pow_f32 works in float64 lanes with a
division.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = [
    "FUNCTIONS",
    "MAX_ULP",
    "SOURCE_HASH",
    "exp_f32", "exp_f64", "log_f32", "log_f64", "log1p_f32", "log1p_f64",
    "expm1_f32", "expm1_f64", "tanh_f32", "tanh_f64", "logistic_f32", "logistic_f64",
    "sin_f32", "sin_f64", "cos_f32", "cos_f64", "pow_f32", "pow_f64",
    "sqrt_f32", "sqrt_f64", "rsqrt_f32", "rsqrt_f64",
    "maximum_f32", "maximum_f64", "minimum_f32", "minimum_f64",
    "maxnum_f32", "maxnum_f64", "minnum_f32", "minnum_f64",
    "accumulate_f32", "accumulate_f64",
    "floor_divide_f32", "floor_divide_f64", "remainder_f32", "remainder_f64",
    "atan2_f32", "atan2_f64",
]  # fmt: skip

#: Changes whenever this file changes. Numba's on-disk cache of a kernel does not notice a
#: change in the functions it calls from here; put this in the generated source text.
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _jit(fn):
    """Compiles a library function: cached on disk, NumPy error model, FMA contraction only,
    always inlined.

    ``contract`` lets LLVM fuse ``a * b + c``; no other fast-math flag is allowed here,
    because the algorithms below depend on IEEE NaN, infinity and rounding behaviour
    (``reassoc`` would, for example, undo the compensated sums of fdlibm's expm1).
    ``forceinline`` marks the function ``alwaysinline`` for LLVM: a call that is not
    inlined stops the caller's loop from vectorizing, and the larger functions
    (expm1_f64, pow_f32) exceed LLVM's default inlining threshold. LLVM-level
    inlining keeps each instruction's own flags, whatever flags the caller uses;
    Numba's ``inline="always"`` would not (it re-lowers the code with the caller's flags).
    """
    options = dict(error_model="numpy", fastmath={"contract"}, forceinline=True)
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # no writable cache directory: compile in every process
        return numba.njit(**options)(fn)


# ---------------------------------------------------------------------------------------
# LLVM intrinsics. They are typed strictly (float32 stays float32) so an accidental
# promotion to float64 inside this module is a typing error, not a silent slowdown.
# ---------------------------------------------------------------------------------------

_FLOATS = (types.float32, types.float64)


def _bitcast(name: str, src: types.Type, dst: types.Type):
    """Reinterprets the bits of ``src`` as ``dst``. Float arguments must be exactly ``src``;
    integer arguments may be wider (Numba computes int32 arithmetic in int64) and are
    truncated."""

    def typer(typingctx, x):
        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], context.get_value_type(dst))

        if x == src or (isinstance(src, types.Integer) and isinstance(x, types.Integer)):
            return dst(src), codegen
        return None

    typer.__name__ = name
    return intrinsic(typer)


_f32_bits = _bitcast("_f32_bits", types.float32, types.int32)
_f32_from_bits = _bitcast("_f32_from_bits", types.int32, types.float32)
_f64_bits = _bitcast("_f64_bits", types.float64, types.int64)
_f64_from_bits = _bitcast("_f64_from_bits", types.int64, types.float64)


def _llvm_float_op(name: str, llvm_name: str, arity: int):
    """A call to the overloaded LLVM float intrinsic ``llvm_name`` (float32 or float64)."""

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(sig.return_type)
        fn = builder.module.declare_intrinsic(llvm_name, [ty], ir.FunctionType(ty, [ty] * arity))
        return builder.call(fn, args)

    def signature(*args):
        if args[0] in _FLOATS and all(a == args[0] for a in args):
            return args[0](*args), codegen
        return None

    # Numba's intrinsics take no *args: one typer per arity.
    typer = {
        1: lambda typingctx, x: signature(x),
        2: lambda typingctx, x, y: signature(x, y),
        3: lambda typingctx, x, y, z: signature(x, y, z),
    }[arity]
    typer.__name__ = name
    return intrinsic(typer)


_rint = _llvm_float_op("_rint", "llvm.rint", 1)  # round half to even (vroundps)
_sqrt = _llvm_float_op("_sqrt", "llvm.sqrt", 1)  # correctly rounded (vsqrtps)
_fma = _llvm_float_op("_fma", "llvm.fma", 3)  # exact a*b+c, one rounding, whatever the flags
_maximum = _llvm_float_op("_maximum", "llvm.maximum", 2)  # NaN-propagating, -0 < +0
_minimum = _llvm_float_op("_minimum", "llvm.minimum", 2)
_maxnum = _llvm_float_op("_maxnum", "llvm.maxnum", 2)  # NaN-ignoring (C fmax)
_minnum = _llvm_float_op("_minnum", "llvm.minnum", 2)
_libm_pow = _llvm_float_op("_libm_pow", "llvm.pow", 2)  # calls the C library
_copysign = _llvm_float_op("_copysign", "llvm.copysign", 2)
_floor = _llvm_float_op("_floor", "llvm.floor", 1)


def _frem_typer(typingctx, x, y):
    """C fmod(x, y) (LLVM ``frem``): exact, the sign of x."""

    def codegen(context, builder, sig, args):
        return builder.frem(args[0], args[1])

    if x in _FLOATS and y == x:
        return x(x, y), codegen
    return None


_fmod = intrinsic(_frem_typer)
_libm_sin = _llvm_float_op("_libm_sin", "llvm.sin", 1)
_libm_cos = _llvm_float_op("_libm_cos", "llvm.cos", 1)



def _accumulate(name: str, acc_type: types.Float):
    """``acc + x`` as one ``fadd reassoc`` (``x`` widened to ``acc_type`` first).

    The only reassociable instruction in a generated kernel: LLVM may split the running
    sum of a loop into vector lanes (so sums vectorize), while every other float operation
    keeps IEEE semantics. Kernels are compiled without any fast-math flag: a function-wide
    ``reassoc`` may rewrite the arithmetic around the sum, and ``contract`` turned
    ``x*s - max(x*s)`` into an FMA whose rounding error, times a large ``s``, made a
    softmax inf/inf = NaN (tests/test_numerics.py)."""

    def typer(typingctx, acc, x):
        if acc != acc_type or x not in _FLOATS or x.bitwidth > acc_type.bitwidth:
            return None

        def codegen(context, builder, sig, args):
            total, value = args
            if sig.args[1] != acc_type:
                value = builder.fpext(value, context.get_value_type(acc_type))
            return builder.fadd(total, value, flags=("reassoc",))

        return acc_type(acc, x), codegen

    typer.__name__ = name
    return intrinsic(typer)


#: Running sums (see ``_accumulate``): ``accumulate_f64(acc, x)`` for a float64 total of
#: float32 or float64 values, ``accumulate_f32`` for a float32 block sum.
accumulate_f32 = _accumulate("accumulate_f32", types.float32)
accumulate_f64 = _accumulate("accumulate_f64", types.float64)

# ---------------------------------------------------------------------------------------
# float32. Every constant is an np.float32 (or np.int32) module global: Numba freezes
# globals into the code as constants of their own type, so nothing is promoted.
# ---------------------------------------------------------------------------------------

_F = np.float32
_I = np.int32

_ZERO = _F(0.0)
_HALF = _F(0.5)
_ONE = _F(1.0)
_TWO = _F(2.0)
_INF = _F(np.inf)
_NAN = _F(np.nan)

_I0 = _I(0)
_I1 = _I(1)
_I2 = _I(2)
_I23 = _I(23)
_I30 = _I(30)
_EXP_BIAS = _I(127)
_MANTISSA = _I(0x7FFFFF)
_SIGN = _I(-0x80000000)

_LOG2E = _F(1.4426950408889634)
# ln2 = _LN2_HI + _LN2_LO; _LN2_HI has 9 significant bits, so k * _LN2_HI is exact.
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(-2.12194440e-4)
# ln2 = _LN2_HI24 + _LN2_LO24 with _LN2_HI24 = float32(ln2) (used with an exact fma).
_LN2_HI24 = _F(0.6931471824645996)
_LN2_LO24 = _F(-1.904654323148236e-09)

# exp(r) = 1 + r + r^2 * P(r) on |r| <= ln2/2: minimax for the relative error of expm1(r)
# (2^-32), so the same polynomial serves exp, expm1, tanh and logistic.
_EXP_P0 = _F(0.5)
_EXP_P1 = _F(0.1666666567325592)
_EXP_P2 = _F(0.041666362434625626)
_EXP_P3 = _F(0.008333389647305012)
_EXP_P4 = _F(0.0013940653298050165)
_EXP_P5 = _F(0.0001984586997423321)

# exp_f32 clamps its argument to [_EXP_MIN, _EXP_MAX]: exp(89) overflows and exp(-104)
# underflows to 0, and the clamp keeps the integer conversions below in range.
_EXP_MAX = _F(89.0)
_EXP_MIN = _F(-104.0)


@_jit
def _expm1_poly_f32(r):
    """expm1(r) - r for |r| <= ln2/2."""
    p = ((((_EXP_P5 * r + _EXP_P4) * r + _EXP_P3) * r + _EXP_P2) * r + _EXP_P1) * r + _EXP_P0
    return r * r * p


@_jit
def _pow2i_f32(k):
    """2**k as float32 for an int32 k in [-126, 127]."""
    return _f32_from_bits((k + _EXP_BIAS) << _I23)


@_jit
def exp_f32(x):
    xc = x if x < _EXP_MAX else _EXP_MAX  # NaN becomes _EXP_MAX here; fixed at the end
    xc = xc if xc > _EXP_MIN else _EXP_MIN
    k = _rint(xc * _LOG2E)
    r = _fma(k, -_LN2_HI, xc)  # exact
    r = _fma(k, -_LN2_LO, r)
    p = (r + _expm1_poly_f32(r)) + _ONE
    # Scale by 2**k in two steps so that k = 128 overflows to inf and k < -126 rounds
    # gradually into the subnormals.
    ki = _I(k)
    k1 = ki >> _I1
    y = p * _pow2i_f32(k1) * _pow2i_f32(ki - k1)
    return x if x != x else y


_EXPM1_MAX = _F(89.0)
_EXPM1_MIN = _F(-87.0)  # expm1 rounds to -1 below -17.4; 2**-126 is still normal
_K_EXACT = _F(24.0)  # 2**k - 1 is exact in float32 for k <= 24
_K_MAX = _F(127.0)


@_jit
def expm1_f32(x):
    xc = x if x < _EXPM1_MAX else _EXPM1_MAX
    xc = xc if xc > _EXPM1_MIN else _EXPM1_MIN
    k = _rint(xc * _LOG2E)
    # x = k*ln2 + r_hi + r_lo. The fma gives r_hi exactly: when k != 0, |x| > 0.34, so x
    # and k*_LN2_HI24 are multiples of 2^-25, and |r_hi| < 0.5 then fits in 24 bits.
    r_hi = _fma(k, -_LN2_HI24, xc)
    r_lo = k * -_LN2_LO24
    # expm1(r_hi + r_lo) ~ r_hi + b
    b = _expm1_poly_f32(r_hi) + r_lo * (_ONE + r_hi)
    # expm1(x) = t*(1 + r_hi + b) - 1 with t = 2**k, summed so that the large terms
    # t*r_hi and t - 1 are combined exactly before the small term t*b is added.
    kk = k if k < _K_MAX else _K_MAX  # 2**128 overflows; rescaled below
    ki = _I(kk)
    t = _pow2i_f32(ki)
    # t - 1 is inexact for k > 24: move the -1 into b instead (as -2**-k).
    big = kk > _K_EXACT
    u = t if big else t - _ONE
    b = b - _pow2i_f32(-ki) if big else b
    y = _fma(t, b, _fma(t, r_hi, u))
    y = y * _TWO if k > _K_MAX else y
    y = x if x == _ZERO else y  # keeps the sign of -0
    return x if x != x else y


_SQRT_HALF_BITS = _I(0x3F3504F3)  # bits of float32(sqrt(0.5))
_SMALLEST_NORMAL_F32 = _F(1.1754943508222875e-38)
_TWO_POW_23 = _F(8388608.0)
_TWENTY_THREE = _F(23.0)
# log1p(f) = f - f^2/2 + f^3 * Q(f) on [sqrt(0.5) - 1, sqrt(2) - 1], relative error 2^-30.
_LOG_Q0 = _F(0.3333331346511841)
_LOG_Q1 = _F(-0.25000008940696716)
_LOG_Q2 = _F(0.2000211924314499)
_LOG_Q3 = _F(-0.1666799634695053)
_LOG_Q4 = _F(0.14219553768634796)
_LOG_Q5 = _F(-0.12405591458082199)
_LOG_Q6 = _F(0.11888156086206436)
_LOG_Q7 = _F(-0.11675634235143661)
_LOG_Q8 = _F(0.06746633350849152)


@_jit
def _log_reduce_f32(x):
    """(e, f) with x = 2**e * (1 + f), 1 + f in [sqrt(0.5), sqrt(2)), for finite x > 0."""
    # Subtracting the bits of sqrt(0.5) makes the exponent field round at sqrt(2)
    # instead of at 2; f = m - 1 is then exact.
    d = _I(_f32_bits(x) - _SQRT_HALF_BITS)
    e = _F(d >> _I23)
    m = _f32_from_bits((d & _MANTISSA) + _SQRT_HALF_BITS)
    return e, m - _ONE


@_jit
def _log1p_poly_f32(f):
    """log1p(f) - f for f in [sqrt(0.5) - 1, sqrt(2) - 1]."""
    q = (((_LOG_Q8 * f + _LOG_Q7) * f + _LOG_Q6) * f + _LOG_Q5) * f + _LOG_Q4
    q = (((q * f + _LOG_Q3) * f + _LOG_Q2) * f + _LOG_Q1) * f + _LOG_Q0
    f2 = f * f
    return _fma(f2 * f, q, -_HALF * f2)


@_jit
def log_f32(x):
    tiny = x < _SMALLEST_NORMAL_F32  # subnormals: scale up so the exponent field is right
    e, f = _log_reduce_f32(x * _TWO_POW_23 if tiny else x)
    e = e - _TWENTY_THREE if tiny else e
    y = _fma(e, _LN2_LO, _log1p_poly_f32(f))
    y = _fma(e, _LN2_HI, f + y)
    y = x if x == _INF else y
    y = -_INF if x == _ZERO else y
    return _NAN if not x >= _ZERO else y  # negative or NaN


@_jit
def log1p_f32(x):
    u = x + _ONE
    # c = (1 + x) - u exactly: log1p(x) = log(u) + log(1 + c/u) ~ log(u) + c/u.
    c = x - (u - _ONE) if u < _TWO else _ONE - (u - x)
    e, f = _log_reduce_f32(u)
    y = _fma(e, _LN2_LO, _log1p_poly_f32(f) + c / u)
    y = _fma(e, _LN2_HI, f + y)
    y = x if (x == _INF) | (x == _ZERO) else y  # log1p(-0) = -0
    y = -_INF if x == -_ONE else y
    return _NAN if not x >= -_ONE else y  # x < -1 or NaN


# tanh(x) = x + x^3 * T(x^2) on |x| < 0.55 (relative error 2^-29.8); above, 1 - 2/(e^2x + 1).
_TANH_SMALL = _F(0.55)
_TANH_SAT = _F(10.0)  # tanh(x) rounds to 1 above 9.011; e^20 is still finite
_TANH_T0 = _F(-0.33333316445350647)
_TANH_T1 = _F(0.13332585990428925)
_TANH_T2 = _F(-0.05385231226682663)
_TANH_T3 = _F(0.02107168547809124)
_TANH_T4 = _F(-0.006274248473346233)


@_jit
def _exp_moderate_f32(x):
    """exp(x) for -87 < x < 88 (no overflow, underflow or NaN handling)."""
    k = _rint(x * _LOG2E)
    r = _fma(k, -_LN2_HI, x)
    r = _fma(k, -_LN2_LO, r)
    return ((r + _expm1_poly_f32(r)) + _ONE) * _pow2i_f32(_I(k))


@_jit
def tanh_f32(x):
    a = abs(x)
    z = a * a
    t = (((_TANH_T4 * z + _TANH_T3) * z + _TANH_T2) * z + _TANH_T1) * z + _TANH_T0
    small = _fma(a * z, t, a)
    ac = a if a < _TANH_SAT else _TANH_SAT  # NaN becomes _TANH_SAT here; fixed at the end
    large = _ONE - _TWO / (_exp_moderate_f32(ac + ac) + _ONE)
    y = small if a < _TANH_SMALL else large
    y = _f32_from_bits(_f32_bits(y) | (_f32_bits(x) & _SIGN))  # tanh(-x) = -tanh(x), -0 too
    return x if x != x else y


@_jit
def logistic_f32(x):
    # With e = exp(-|x|) <= 1 and t = e/(1 + e): 1 - t for x >= 0 and e - e*t for x < 0.
    # Neither overflows, and in e - e*t (= e/(1 + e)) the rounding error of 1 + e only
    # reaches the small correction e*t, so tiny results keep their relative accuracy
    # (down to the subnormals). e = 2**k * (1 + q) is inlined from exp_f32 so that 1 + q
    # is not rounded on its own.
    a = -abs(x)
    a = a if a > _EXP_MIN else _EXP_MIN  # NaN becomes _EXP_MIN here; fixed at the end
    k = _rint(a * _LOG2E)
    r = _fma(k, -_LN2_HI, a)
    r = _fma(k, -_LN2_LO, r)
    q = r + _expm1_poly_f32(r)
    ki = _I(k)
    k1 = ki >> _I1
    s1 = _pow2i_f32(k1)
    e = _fma(s1, q, s1) * _pow2i_f32(ki - k1)
    t = e / (_ONE + e)
    y = _fma(-e, t, e) if x < _ZERO else _ONE - t
    return x if x != x else y


# sin/cos: Payne-Hanek reduction of |x| by pi/2 in 64-bit integer arithmetic (the
# method of ARM's optimized-routines sinf), accurate for every float32, then polynomials on
# |r| <= pi/4: sin(r) = r + r^3 S(r^2) (2^-28), cos(r) = 1 - r^2/2 + r^4 C(r^2) (2^-33).
_SIN_S0 = _F(-0.16666655242443085)
_SIN_S1 = _F(0.008332154713571072)
_SIN_S2 = _F(-0.0001951446756720543)
_COS_C0 = _F(0.04166664555668831)
_COS_C1 = _F(-0.0013887308305129409)
_COS_C2 = _F(2.4432214559055865e-05)

# 4/pi in overlapping 32-bit windows: entry i (i >= 1) is floor(4/pi * 2^(8i - 1)) mod 2^32,
# entry 0 is a zero window so that arguments from pi/4 up index the table.
_INV_PIO4 = np.array(
    [0x0, 0xA2, 0xA2F9, 0xA2F983, 0xA2F9836E, 0xF9836E4E, 0x836E4E44, 0x6E4E4415, 0x4E441529,
     0x441529FC, 0x1529FC27, 0x29FC2757, 0xFC2757D1, 0x2757D1F5, 0x57D1F534, 0xD1F534DD,
     0xF534DDC0, 0x34DDC0DB, 0xDDC0DB62, 0xC0DB6295, 0xDB629599, 0x6295993C, 0x95993C43,
     0x993C4390, 0x3C439041],
    dtype=np.uint32,
)  # fmt: skip
_U = np.uint64
_V = np.uint32
_V3 = _V(3)
_V4 = _V(4)
_V7 = _V(7)
_V8 = _V(8)
_V23 = _V(23)
_V_MANTISSA = _V(0x7FFFFF)
_V_IMPLICIT = _V(0x800000)
_V_TABLE_OFFSET = _V(15)  # exponent field e uses table entries (e >> 3) - 15 + {0, 4, 8}
_V_PIO4_BITS = _V(0x3F490FDB)  # bits of float32(pi/4); smaller arguments skip the reduction
_U32 = _U(32)
_U62 = _U(62)
_U_LOW32 = _U(0xFFFFFFFF)
_U_HALF_QUADRANT = _U(1 << 61)
_PIO4 = _F(np.pi / 4)
_PI_OVER_2_POW_62 = np.float64(float.fromhex("0x1.921FB54442D18p-62"))


@_jit
def _reduce_pio2_f32(a):
    """(r, n) with a = n*pi/2 + r (n mod 4), |r| <= pi/4, for a = |x| >= pi/4, x finite."""
    xi = _V(_f32_bits(a))
    xi = xi if xi > _V_PIO4_BITS else _V_PIO4_BITS  # keeps the table index in range
    e = xi >> _V23
    i = _V((e >> _V3) - _V_TABLE_OFFSET)  # 32-bit indices: LLVM gathers 8 lanes at once
    m = _U(((xi & _V_MANTISSA) | _V_IMPLICIT) << (e & _V7))  # < 2^31
    # The product m * 4/pi, keeping only its 64 bits around the binary point: 2 bits of
    # quadrant and 62 of fraction. Operands of at most 32 bits let LLVM use 32x32->64
    # multiplies (vpmuludq).
    w0 = _U(_INV_PIO4[i])
    w1 = _U(_INV_PIO4[_V(i + _V4)])
    w2 = _U(_INV_PIO4[_V(i + _V8)])
    frac = ((m * w0) & _U_LOW32) << _U32 | (m * w2) >> _U32
    frac = frac + m * w1
    n = (frac + _U_HALF_QUADRANT) >> _U62
    frac = frac - (n << _U62)  # signed fraction of a quadrant, in units of 2^-62
    r = np.float64(np.int64(frac)) * _PI_OVER_2_POW_62
    return _F(r), _I(n)


@_jit
def _sin_quadrant_f32(r, q):
    """sin(r + q*pi/2) for |r| <= pi/4."""
    z = r * r
    s = _fma(r * z, (_SIN_S2 * z + _SIN_S1) * z + _SIN_S0, r)
    c = _fma(z * z, (_COS_C2 * z + _COS_C1) * z + _COS_C0, _fma(-_HALF, z, _ONE))
    y = c if (q & _I1) != 0 else s
    return _f32_from_bits(_f32_bits(y) ^ ((q & _I2) << _I30))  # negate for q = 2, 3


@_jit
def sin_f32(x):
    a = abs(x)
    r, n = _reduce_pio2_f32(a)
    small = a < _PIO4
    y = _sin_quadrant_f32(a if small else r, _I0 if small else n)
    y = _f32_from_bits(_f32_bits(y) ^ (_f32_bits(x) & _SIGN))  # sin(-x) = -sin(x), also for -0
    return y if a < _INF else _NAN  # inf or NaN


@_jit
def cos_f32(x):
    a = abs(x)
    r, n = _reduce_pio2_f32(a)
    small = a < _PIO4
    y = _sin_quadrant_f32(a if small else r, _I1 if small else n + _I1)
    return y if a < _INF else _NAN


@_jit
def sqrt_f32(x):
    return _sqrt(x)


@_jit
def rsqrt_f32(x):
    return _ONE / _sqrt(x)


@_jit
def maximum_f32(a, b):
    """np.maximum: NaN if either is NaN; vectorizes in reductions (llvm.maximum)."""
    return _maximum(a, b)


@_jit
def minimum_f32(a, b):
    return _minimum(a, b)


@_jit
def maxnum_f32(a, b):
    """np.fmax: the other operand if one is NaN (llvm.maxnum)."""
    return _maxnum(a, b)


@_jit
def minnum_f32(a, b):
    return _minnum(a, b)


# ---------------------------------------------------------------------------------------
# float64
# ---------------------------------------------------------------------------------------

_D = np.float64
_L = np.int64

_DZERO = _D(0.0)
_DHALF = _D(0.5)
_DONE = _D(1.0)
_DTWO = _D(2.0)
_DINF = _D(np.inf)
_DNAN = _D(np.nan)

_L1 = _L(1)
_L52 = _L(52)
_L60 = _L(60)
_D_SIGN = _L(-0x8000000000000000)
_D_EXP_BIAS = _L(1023)
_D_MANTISSA = _L(0xFFFFFFFFFFFFF)

_D_INVLN2 = _D(1.44269504088896338700e00)
# fdlibm's split of ln2: _D_LN2_HI has 32 significant bits, so k * _D_LN2_HI is exact.
_D_LN2_HI = _D(6.93147180369123816490e-01)
_D_LN2_LO = _D(1.90821492927058770002e-10)

# fdlibm exp: R(r^2) ~ r*(exp(r) + 1)/(exp(r) - 1) on |r| <= ln2/2 (error 2^-59).
_D_EXP_P1 = _D(1.66666666666666019037e-01)
_D_EXP_P2 = _D(-2.77777777770155933842e-03)
_D_EXP_P3 = _D(6.61375632143793436117e-05)
_D_EXP_P4 = _D(-1.65339022054652515390e-06)
_D_EXP_P5 = _D(4.13813679705723846039e-08)
_D_EXP_MAX = _D(710.0)
_D_EXP_MIN = _D(-746.0)


@_jit
def _pow2i_f64(k):
    """2**k as float64 for an int64 k in [-1022, 1023]."""
    return _f64_from_bits((k + _D_EXP_BIAS) << _L52)


@_jit
def exp_f64(x):
    xc = x if x < _D_EXP_MAX else _D_EXP_MAX
    xc = xc if xc > _D_EXP_MIN else _D_EXP_MIN
    k = _rint(xc * _D_INVLN2)
    hi = xc - k * _D_LN2_HI  # exact
    lo = k * _D_LN2_LO
    r = hi - lo
    z = r * r
    c = r - z * (_D_EXP_P1 + z * (_D_EXP_P2 + z * (_D_EXP_P3 + z * (_D_EXP_P4 + z * _D_EXP_P5))))
    p = _DONE - ((lo - (r * c) / (_DTWO - c)) - hi)
    ki = _L(k)
    k1 = ki >> _L1
    y = p * _pow2i_f64(k1) * _pow2i_f64(ki - k1)
    return x if x != x else y


_D_SQRT_HALF_BITS = _L(0x3FE6A09E667F3BCD)  # bits of sqrt(0.5)
_D_SMALLEST_NORMAL = _D(2.2250738585072014e-308)
_D_TWO_POW_54 = _D(18014398509481984.0)
_D_FIFTY_FOUR = _D(54.0)
# fdlibm log: log(1 + f) = 2s + s*R(s^2), s = f/(2 + f) (error 2^-58.45).
_D_LG1 = _D(6.666666666666735130e-01)
_D_LG2 = _D(3.999999999940941908e-01)
_D_LG3 = _D(2.857142874366239149e-01)
_D_LG4 = _D(2.222219843214978396e-01)
_D_LG5 = _D(1.818357216161805012e-01)
_D_LG6 = _D(1.531383769920937332e-01)
_D_LG7 = _D(1.479819860511658591e-01)


@_jit
def _log_reduce_f64(x):
    """(e, f) with x = 2**e * (1 + f), 1 + f in [sqrt(0.5), sqrt(2)), for finite x > 0."""
    d = _f64_bits(x) - _D_SQRT_HALF_BITS
    e = _D(d >> _L52)
    m = _f64_from_bits((d & _D_MANTISSA) + _D_SQRT_HALF_BITS)
    return e, m - _DONE


@_jit
def _log1p_kernel_f64(e, f, c):
    """e*ln2 + log1p(f) + c for a small correction c, in fdlibm's order of summation."""
    s = f / (_DTWO + f)
    z = s * s
    w = z * z
    r = z * (_D_LG1 + w * (_D_LG3 + w * (_D_LG5 + w * _D_LG7))) + w * (_D_LG2 + w * (_D_LG4 + w * _D_LG6))
    hfsq = _DHALF * f * f
    return e * _D_LN2_HI - ((hfsq - (s * (hfsq + r) + (e * _D_LN2_LO + c))) - f)


@_jit
def log_f64(x):
    tiny = x < _D_SMALLEST_NORMAL
    e, f = _log_reduce_f64(x * _D_TWO_POW_54 if tiny else x)
    e = e - _D_FIFTY_FOUR if tiny else e
    y = _log1p_kernel_f64(e, f, _DZERO)
    y = x if x == _DINF else y
    y = -_DINF if x == _DZERO else y
    return _DNAN if not x >= _DZERO else y


@_jit
def log1p_f64(x):
    u = x + _DONE
    c = x - (u - _DONE) if u < _DTWO else _DONE - (u - x)  # (1 + x) - u, exactly
    e, f = _log_reduce_f64(u)
    y = _log1p_kernel_f64(e, f, c / u)
    y = x if (x == _DINF) | (x == _DZERO) else y
    y = -_DINF if x == -_DONE else y
    return _DNAN if not x >= -_DONE else y


# fdlibm expm1 (s_expm1.c): rational approximation and case analysis, made branch-free.
_D_EXPM1_Q1 = _D(-3.33333333333331316428e-02)
_D_EXPM1_Q2 = _D(1.58730158725481460165e-03)
_D_EXPM1_Q3 = _D(-7.93650757867487942473e-05)
_D_EXPM1_Q4 = _D(4.00821782732936239552e-06)
_D_EXPM1_Q5 = _D(-2.01099218183624371326e-07)
_D_EXPM1_MAX = _D(710.0)
_D_EXPM1_MIN = _D(-60.0)  # expm1(x) rounds to -1 below -38
_D_THREE = _D(3.0)
_D_SIX = _D(6.0)
_D_QUARTER = _D(0.25)
_D_K1 = _D(1.0)
_D_K20 = _D(20.0)
_D_K56 = _D(56.0)


@_jit
def expm1_f64(x):
    xc = x if x < _D_EXPM1_MAX else _D_EXPM1_MAX
    xc = xc if xc > _D_EXPM1_MIN else _D_EXPM1_MIN
    k = _rint(xc * _D_INVLN2)
    hi = xc - k * _D_LN2_HI
    lo = k * _D_LN2_LO
    r = hi - lo
    c = (hi - r) - lo  # the rounding error of r (0 when k = 0)
    hfx = _DHALF * r
    hxs = r * hfx
    r1 = _DONE + hxs * (
        _D_EXPM1_Q1 + hxs * (_D_EXPM1_Q2 + hxs * (_D_EXPM1_Q3 + hxs * (_D_EXPM1_Q4 + hxs * _D_EXPM1_Q5)))
    )
    t = _D_THREE - r1 * hfx
    e = hxs * ((r1 - t) / (_D_SIX - r * t))
    e = r * (e - c) - c - hxs  # expm1(r + c) = r - e
    ki = _L(k)
    k1 = ki >> _L1
    s1 = _pow2i_f64(k1)  # 2**k = s1 * s2, which does not overflow at k = 1024
    s2 = _pow2i_f64(ki - k1)
    twomk = _pow2i_f64(-(ki if ki < _L60 else _L60))  # 2**-k, used for 2 <= k <= 56 only
    # fdlibm's cases, evaluated together and selected:
    y_far = (r - e + _DONE) * s1 * s2 - _DONE  # k < -1 or k > 56
    y_mid = (r - e + (_DONE - twomk)) * s1 * s2  # 2 <= k < 20
    y_high = (r - (e + twomk) + _DONE) * s1 * s2  # 20 <= k <= 56
    y_km1 = _DHALF * (r - e) - _DHALF  # k = -1
    y_k1 = -_DTWO * (e - (r + _DHALF)) if r < -_D_QUARTER else _DONE + _DTWO * (r - e)  # k = 1
    y = y_far if (k < -_D_K1) | (k > _D_K56) else (y_mid if k < _D_K20 else y_high)
    y = y_k1 if k == _D_K1 else y
    y = y_km1 if k == -_D_K1 else y
    y = r - e if k == _DZERO else y
    y = x if x == _DZERO else y  # keeps the sign of -0
    return x if x != x else y


# tanh: x + x^3 T(x^2) below log(5/3)/2 (degree 17, relative error 2^-56; musl's
# -t/(t + 2) with t = expm1(-2|x|) is 2 ulp there), above it musl's t/(t + 2) and
# 1 - 2/(t + 2) with t = expm1(2|x|).
_D_TANH_LOG3_2 = _D(0.5493061443340549)  # log(3)/2
_D_TANH_LOG53_2 = _D(0.25541281188299536)  # log(5/3)/2
_D_TANH_SAT = _D(20.0)  # tanh rounds to 1 above 19.06
_D_TANH_T0 = _D(-0.33333333333332155)
_D_TANH_T1 = _D(0.1333333333286432)
_D_TANH_T2 = _D(-0.05396825333796937)
_D_TANH_T3 = _D(0.02186944841230587)
_D_TANH_T4 = _D(-0.00886186975389787)
_D_TANH_T5 = _D(0.003566552865567966)
_D_TANH_T6 = _D(-0.0012064659947525257)
_D_TANH_T7 = _D(-0.0004171910653534025)


@_jit
def tanh_f64(x):
    a = abs(x)
    z = a * a
    t = (((_D_TANH_T7 * z + _D_TANH_T6) * z + _D_TANH_T5) * z + _D_TANH_T4) * z + _D_TANH_T3
    t = ((t * z + _D_TANH_T2) * z + _D_TANH_T1) * z + _D_TANH_T0
    small = _fma(a * z, t, a)
    ac = a if a < _D_TANH_SAT else _D_TANH_SAT  # NaN -> _D_TANH_SAT; fixed at the end
    e = expm1_f64(ac + ac)
    y = e / (e + _DTWO) if ac < _D_TANH_LOG3_2 else _DONE - _DTWO / (e + _DTWO)
    y = small if a < _D_TANH_LOG53_2 else y
    y = _f64_from_bits(_f64_bits(y) | (_f64_bits(x) & _D_SIGN))  # tanh(-x) = -tanh(x), -0 too
    return x if x != x else y


@_jit
def logistic_f64(x):
    e = exp_f64(-abs(x))  # as logistic_f32
    t = e / (_DONE + e)
    return _fma(-e, t, e) if x < _DZERO else _DONE - t


@_jit
def sin_f64(x):
    """libm: a vectorizable float64 reduction for large arguments is not implemented."""
    return _libm_sin(x)


@_jit
def cos_f64(x):
    return _libm_cos(x)


@_jit
def pow_f64(x, y):
    """libm pow (C99 semantics, which NumPy follows)."""
    return _libm_pow(x, y)


@_jit
def sqrt_f64(x):
    return _sqrt(x)


@_jit
def rsqrt_f64(x):
    return _DONE / _sqrt(x)


@_jit
def maximum_f64(a, b):
    return _maximum(a, b)


@_jit
def minimum_f64(a, b):
    return _minimum(a, b)


@_jit
def maxnum_f64(a, b):
    return _maxnum(a, b)


@_jit
def minnum_f64(a, b):
    return _minnum(a, b)


# ---------------------------------------------------------------------------------------
# floor_divide and remainder, exactly as NumPy's npy_divmod: C fmod (exact), then one
# correction so the remainder takes the divisor's sign and the quotient rounds down.
# float32 computes in float32, as NumPy does; fmod of float32 operands is exact in any
# precision.
# ---------------------------------------------------------------------------------------


@_jit
def _remainder(x, y, zero):
    mod = _fmod(x, y)
    if mod != zero:
        if (y < zero) != (mod < zero):
            mod = mod + y
    else:
        mod = _copysign(zero, y)
    return mod


@_jit
def _floor_divide(x, y, zero, half, one):
    if y == zero:
        return x / y
    mod = _fmod(x, y)
    div = (x - mod) / y
    if mod != zero and (y < zero) != (mod < zero):
        div = div - one
    if div == zero:
        return _copysign(zero, x / y)
    floordiv = _floor(div)
    if div - floordiv > half:
        floordiv = floordiv + one
    return floordiv


@_jit
def remainder_f32(x, y):
    """np.remainder: the sign of y; x % 0 and inf % y are NaN, x % inf is x or inf."""
    return _remainder(x, y, _ZERO)


@_jit
def floor_divide_f32(x, y):
    """np.floor_divide: x // 0 is x / 0 (inf or NaN), inf // y is NaN."""
    return _floor_divide(x, y, _ZERO, _HALF, _ONE)


@_jit
def remainder_f64(x, y):
    return _remainder(x, y, _DZERO)


@_jit
def floor_divide_f64(x, y):
    return _floor_divide(x, y, _DZERO, _DHALF, _DONE)


# ---------------------------------------------------------------------------------------
# pow_f32, which computes in float64
# ---------------------------------------------------------------------------------------

# y*log2|x| must be accurate to ~2^-37 relative for a float32 result (it reaches ~150),
# more than float32 arithmetic gives, so pow_f32 computes log2|x| and 2**t in float64
# lanes (still vectorized). The float64 intermediate never overflows or underflows, so
# the final rounding to float32 gives overflow, underflow and subnormal results with a
# single rounding. (Tables, as in glibc's powf, cost more here: the gathers were slower
# than the division they save.)
_D_TWENTY_THREE = _D(23.0)
# log2((1 + s)/(1 - s)) = s * B(s^2) for |s| <= 0.1716 (relative error 2^-44)
_POW_B0 = _D(2.8853900817779783)
_POW_B1 = _D(0.9617966940137201)
_POW_B2 = _D(0.5770779623253777)
_POW_B3 = _D(0.41220766024097183)
_POW_B4 = _D(0.3199606571223937)
_POW_B5 = _D(0.28221418077726174)
# 2**r = C(r) for |r| <= 1/2 (relative error 2^-34.5)
_POW_C0 = _D(0.9999999999616832)
_POW_C1 = _D(0.6931471807284557)
_POW_C2 = _D(0.24022651198144618)
_POW_C3 = _D(0.055504103534011175)
_POW_C4 = _D(0.009618027255188056)
_POW_C5 = _D(0.001333392261316343)
_POW_C6 = _D(0.00015469290712722533)
_POW_C7 = _D(1.5201907756029632e-05)
_POW_T_MAX = _D(130.0)  # 2**130 and 2**-160 are far outside float32 and inside float64
_POW_T_MIN = _D(-160.0)


@_jit
def _log2_f32(a):
    """log2(a) in float64 to ~2^-44 relative, for a finite float32 a > 0."""
    tiny = a < _SMALLEST_NORMAL_F32
    d = _I(_f32_bits(a * _TWO_POW_23 if tiny else a) - _SQRT_HALF_BITS)  # as _log_reduce_f32
    e = _D(d >> _I23) - (_D_TWENTY_THREE if tiny else _DZERO)
    z = _D(_f32_from_bits((d & _MANTISSA) + _SQRT_HALF_BITS))
    s = (z - _DONE) / (z + _DONE)  # log2(z) = log2((1 + s)/(1 - s))
    w = s * s
    p = ((((_POW_B5 * w + _POW_B4) * w + _POW_B3) * w + _POW_B2) * w + _POW_B1) * w + _POW_B0
    return p * s + e


@_jit
def _exp2_f64(t):
    """2**t to ~2^-34 relative, for -160 <= t <= 130."""
    k = _rint(t)
    r = t - k
    p = (((_POW_C7 * r + _POW_C6) * r + _POW_C5) * r + _POW_C4) * r + _POW_C3
    p = ((p * r + _POW_C2) * r + _POW_C1) * r + _POW_C0
    return p * _pow2i_f64(_L(k))


@_jit
def pow_f32(x, y):
    a = abs(x)
    lg = _log2_f32(a)
    lg = -_DINF if a == _ZERO else lg
    lg = _D(a) if not a < _INF else lg  # inf or NaN
    yd = _D(y)
    t = yd * lg
    t = _DZERO if lg == _DZERO else t  # |x| = 1: 1**inf = 1 (and -1 below)
    tc = t if t < _POW_T_MAX else _POW_T_MAX
    tc = tc if tc > _POW_T_MIN else _POW_T_MIN
    r = _exp2_f64(tc)
    y_int = _rint(yd) == yd  # true for +-inf, false for NaN
    y_odd = y_int & (_rint(_DHALF * yd) != _DHALF * yd)
    r = -r if y_odd & (_f32_bits(x) < _I0) else r  # negative base (or -0), odd y
    r = _DNAN if (t != t) | ((x < _ZERO) & (x > -_INF) & (not y_int)) else r
    r = _DONE if (y == _ZERO) | (x == _ONE) else r  # even for a NaN in the other operand
    return _F(r)


# ---------------------------------------------------------------------------------------
# atan2 (arctan, arcsin and arccos are atan2 of the right operands in fusejit.numpy)
# ---------------------------------------------------------------------------------------

# Cephes' atan on [0, 1]: t <= 0.66 directly, else pi/4 + atan((t - 1)/(t + 1)); then
# atan(r) = r + r z P(z)/Q(z), z = r^2 (relative error ~1e-16). pi/2 and pi/4 are carried
# as a float64 constant plus its rounding error (_ATAN_PIO2_LO), added in with the small
# terms.
_ATAN_P0 = _D(-8.750608600031904122785e-1)
_ATAN_P1 = _D(-1.615753718733365076637e1)
_ATAN_P2 = _D(-7.500855792314704667340e1)
_ATAN_P3 = _D(-1.228866684490136173410e2)
_ATAN_P4 = _D(-6.485021904942025371773e1)
_ATAN_Q0 = _D(2.485846490142306297962e1)
_ATAN_Q1 = _D(1.650270098316988542046e2)
_ATAN_Q2 = _D(4.328810604912902668951e2)
_ATAN_Q3 = _D(4.853903996359136964868e2)
_ATAN_Q4 = _D(1.945506571482613964425e2)
_ATAN_SPLIT = _D(0.66)
_ATAN_PIO2 = _D(np.pi / 2)
_ATAN_PIO4 = _D(np.pi / 4)
_ATAN_3PIO4 = _D(3 * np.pi / 4)
_ATAN_PI = _D(np.pi)
_ATAN_PIO2_LO = _D(6.123233995736765886130e-17)  # pi/2 - _ATAN_PIO2
_ATAN_PIO4_LO = _D(3.061616997868382943065e-17)
_ATAN_PI_LO = _D(1.2246467991473531772260e-16)
_ATAN_L0 = _L(0)


@_jit
def atan2_f64(y, x):
    """np.arctan2: the angle of (x, y), in [-pi, pi], with C99's signed zeros and
    infinities."""
    ax, ay = abs(x), abs(y)
    swap = ay > ax  # atan(ay/ax) = pi/2 - atan(ax/ay): t stays in [0, 1]
    t = (ax / ay) if swap else (ay / ax)
    shift = t > _ATAN_SPLIT
    r = ((t - _DONE) / (t + _DONE)) if shift else t
    z = r * r
    num = (((_ATAN_P0 * z + _ATAN_P1) * z + _ATAN_P2) * z + _ATAN_P3) * z + _ATAN_P4
    den = ((((z + _ATAN_Q0) * z + _ATAN_Q1) * z + _ATAN_Q2) * z + _ATAN_Q3) * z + _ATAN_Q4
    p = _fma(r * z, num / den, r)  # atan(r)
    # angle = hi + lo: (0 | pi/4) + p, or pi/2 - ((0 | pi/4) + p) when swapped
    hi = _ATAN_PIO4 if shift else _DZERO
    lo = _ATAN_PIO4_LO if shift else _DZERO
    hi = (_ATAN_PIO2 - hi) if swap else hi
    lo = (_ATAN_PIO2_LO - lo) if swap else lo
    p = -p if swap else p
    # x negative (or -0): pi - angle
    left = _f64_bits(x) < _ATAN_L0
    hi = (_ATAN_PI - hi) if left else hi
    lo = (_ATAN_PI_LO - lo) if left else lo
    p = -p if left else p
    a = hi + (lo + p)
    both_zero = (ax == _DZERO) & (ay == _DZERO)  # 0/0 above
    a = (_ATAN_PI if left else _DZERO) if both_zero else a
    both_inf = (ax == _DINF) & (ay == _DINF)  # inf/inf above
    a = (_ATAN_3PIO4 if left else _ATAN_PIO4) if both_inf else a
    return _copysign(a, y)


@_jit
def atan2_f32(y, x):
    """float32 arctan2: atan2_f64 of the widened operands, rounded once (the float64
    result is accurate to ~1 float64 ULP, far below float32's)."""
    return _F(atan2_f64(_D(y), _D(x)))


FUNCTIONS: dict[tuple[str, str], Callable] = {
    (name, dtype): globals()[f"{name}_{suffix}"]
    for name in (
        "exp", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "pow", "sqrt",
        "rsqrt", "maximum", "minimum", "maxnum", "minnum", "atan2",
    )
    for dtype, suffix in (("float32", "f32"), ("float64", "f64"))
}  # fmt: skip

#: What each function computes, as NumPy expressions (the references its accuracy is
#: measured against in tests/test_mathlib.py and bench/bench_mathlib.py).
NUMPY_REFERENCE: dict[str, Callable] = {
    "exp": np.exp,
    "log": np.log,
    "log1p": np.log1p,
    "expm1": np.expm1,
    "tanh": np.tanh,
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    "sin": np.sin,
    "cos": np.cos,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "pow": np.power,
    "atan2": np.arctan2,
}

#: Bound on the error in ULPs of each function (float32: all inputs; float64: sampled),
#: slightly above the measured maxima in the module docstring; tests/test_mathlib.py
#: asserts them.
MAX_ULP: dict[tuple[str, str], float] = {
    ("exp", "float32"): 1.0, ("exp", "float64"): 1.0,
    ("log", "float32"): 0.85, ("log", "float64"): 0.85,
    ("log1p", "float32"): 0.9, ("log1p", "float64"): 0.85,
    ("expm1", "float32"): 1.2, ("expm1", "float64"): 0.85,
    ("tanh", "float32"): 1.5, ("tanh", "float64"): 1.4,
    ("logistic", "float32"): 1.7, ("logistic", "float64"): 1.6,
    ("sin", "float32"): 1.6, ("sin", "float64"): 1.0,
    ("cos", "float32"): 1.6, ("cos", "float64"): 1.0,
    ("pow", "float32"): 0.55, ("pow", "float64"): 1.0,
    ("sqrt", "float32"): 0.5, ("sqrt", "float64"): 0.5,
    ("rsqrt", "float32"): 1.5, ("rsqrt", "float64"): 1.5,
    ("maximum", "float32"): 0.0, ("maximum", "float64"): 0.0,
    ("minimum", "float32"): 0.0, ("minimum", "float64"): 0.0,
    ("maxnum", "float32"): 0.0, ("maxnum", "float64"): 0.0,
    ("minnum", "float32"): 0.0, ("minnum", "float64"): 0.0,
    ("atan2", "float32"): 0.51, ("atan2", "float64"): 1.5,
}  # fmt: skip
