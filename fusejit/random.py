"""``fj.random``: counter-based random numbers, like ``jax.random``.

A key is an int64 array of shape ``(2,)``: the two 32-bit words of a Threefry-2x32 key
(``fusejit.ir.primitives.threefry2x32``). Functions never change a key; ``split`` and
``fold_in`` derive new ones. Everything is pure and traceable: under ``jit`` the bits of
element ``i`` are enciphered from the key and ``i`` inside the fused kernel that uses
them, so a dropout mask never exists in memory.

Compatibility with JAX (``jax_threefry_partitionable``, JAX's default): ``key``,
``split``, ``fold_in``, ``bits``, ``bernoulli``, ``randint`` and ``uniform`` give JAX's
values bit for bit (``uniform`` with other bounds than [0, 1) rounds ``u * (hi - lo)``
before adding ``lo``, where XLA's CPU kernels fuse a multiply-add), and so does
``permutation`` (a stable sort by JAX's sort keys). ``normal`` is
``sqrt(2) erfinv(u)`` of JAX's ``u`` with Giles' erfinv, ``categorical`` takes the argmax
of logits plus Gumbel noise as JAX does; their logarithms are computed here with
correctly rounded arithmetic only (``_log``), so they agree with JAX to rounding and with
themselves bit for bit: same key and shape give the same values eagerly, under ``jit``,
fused or not, and whatever else shares the kernel.

The element at flat index ``i`` of a ``shape`` depends on the key and ``i`` only, so
``uniform(key, (8, 3))[:4]`` is ``uniform(key, (4, 3))``: values do not change with the
batch size. Arrays are limited to 2**32 elements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import fusejit.numpy as fnp
from fusejit.ir import primitives as P
from fusejit.ir.dtypes import DType, from_numpy
from fusejit.tracer.tracing import TracedArray, bind

Array = Any
_WORD = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------
# Keys


def key(seed: int | Array) -> Array:
    """A key from an integer seed: ``(seed >> 32, seed & 0xFFFFFFFF)`` as int64 words
    (``jax.random.PRNGKey``)."""
    if isinstance(seed, TracedArray) or (isinstance(seed, np.ndarray) and seed.ndim == 0):
        if not _dtype(seed).is_int:
            raise TypeError(f"fj.random.key: the seed must be an integer, got {_dtype(seed)}")
        s = fnp.astype(seed, np.int64)
        return fnp.stack([fnp.bitwise_and(fnp.floor_divide(s, 2**32), _WORD), fnp.bitwise_and(s, _WORD)])
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"fj.random.key: the seed must be an integer scalar, got {seed!r}")
    seed = int(seed)
    return np.array([(seed >> 32) & _WORD, seed & _WORD], np.int64)


def split(key: Array, num: int = 2) -> Array:
    """``num`` new keys, shape ``(num, 2)``: key ``i`` enciphers counter ``i``."""
    return _stack_words(*_cipher(_words(key), _counters((int(num),))))


def fold_in(key: Array, data: int | Array) -> Array:
    """A new key from ``key`` and the integer ``data`` (taken modulo 2**32)."""
    k0, k1 = _words(key)
    lo = fnp.bitwise_and(fnp.astype(fnp.asarray(data), np.int64), _WORD)
    if fnp.shape(lo) != ():
        raise ValueError(f"fj.random.fold_in: data must be a scalar, got shape {fnp.shape(lo)}")
    return _stack_words(*_cipher((k0, k1), (fnp.zeros((), np.int64), lo)))


# ---------------------------------------------------------------------------------------
# Bits and distributions


def bits(key: Array, shape: Sequence[int] = ()) -> Array:
    """Uniform 32-bit words, as int64 values in ``[0, 2**32)`` (``jax.random.bits``)."""
    w0, w1 = _cipher(_words(key), _counters(_shape(shape)))
    return fnp.bitwise_xor(w0, w1)


def uniform(key: Array, shape: Sequence[int] = (), dtype: Any = np.float32, minval: Any = 0.0,
            maxval: Any = 1.0) -> Array:
    """Uniform floats in ``[minval, maxval)``: the mantissa from the high bits, as JAX."""
    dt = _float_dtype(dtype, "uniform")
    shape = _shape(shape)
    lo, hi = fnp.asarray(minval, dt.np), fnp.asarray(maxval, dt.np)
    return fnp.maximum(lo, _unit(key, shape, dt) * (hi - lo) + lo)


def normal(key: Array, shape: Sequence[int] = (), dtype: Any = np.float32) -> Array:
    """Standard normal floats: ``sqrt(2) erfinv(u)``, ``u`` uniform in ``(-1, 1)``."""
    dt = _float_dtype(dtype, "normal")
    lo = float(np.nextafter(dt.np.type(-1), dt.np.type(0)))
    u = uniform(key, shape, dt.np, lo, 1.0)
    return _erfinv(u, dt) * math.sqrt(2.0)


def bernoulli(key: Array, p: Any = 0.5, shape: Sequence[int] | None = None) -> Array:
    """Booleans that are True with probability ``p`` (``uniform(key, shape) < p``)."""
    typed = isinstance(p, TracedArray | np.ndarray | np.generic)
    p = fnp.asarray(p)
    dt = _dtype(p) if typed and _dtype(p).is_float else DType.f32  # Python floats: float32
    shape = fnp.shape(p) if shape is None else _shape(shape)
    return fnp.less(_unit(key, shape, dt), fnp.astype(p, dt.np))


def randint(key: Array, shape: Sequence[int], minval: Any, maxval: Any, dtype: Any = np.int32) -> Array:
    """Integers in ``[minval, maxval)`` (``minval`` where ``maxval <= minval``), JAX's
    algorithm: two words per element, reduced modulo the span without bias beyond
    2**-32. The span must be below 2**32."""
    dt = from_numpy(np.dtype(dtype))
    if not dt.is_int:
        raise TypeError(f"fj.random.randint: dtype must be an integer type, got {dt}")
    shape = _shape(shape)
    for bound in (minval, maxval):
        if not isinstance(bound, TracedArray) and not np.issubdtype(np.asarray(bound).dtype, np.integer):
            raise TypeError(f"fj.random.randint: bounds must be integers, got {bound!r}")
    lo = fnp.broadcast_to(fnp.astype(fnp.asarray(minval), np.int64), shape)
    hi = fnp.broadcast_to(fnp.astype(fnp.asarray(maxval), np.int64), shape)
    if not isinstance(minval, TracedArray) and not isinstance(maxval, TracedArray):
        if np.any(np.asarray(maxval, np.int64) - np.asarray(minval, np.int64) > _WORD):
            raise ValueError("fj.random.randint: maxval - minval must be below 2**32")
    k1, k2 = _split_pair(key)
    higher, lower = bits(k1, shape), bits(k2, shape)
    span = fnp.where(fnp.less_equal(hi, lo), 1, fnp.subtract(hi, lo))
    # uint32 arithmetic as in JAX: every product and sum wraps around modulo 2**32 (so
    # the multiplier is 0 for spans above 2**16, where (2**16)**2 wraps to 0).
    multiplier = fnp.remainder(fnp.full(shape, 2**16, np.int64), span)
    multiplier = fnp.remainder(fnp.bitwise_and(fnp.multiply(multiplier, multiplier), _WORD), span)
    offset = fnp.bitwise_and(fnp.multiply(fnp.remainder(higher, span), multiplier), _WORD)
    offset = fnp.bitwise_and(fnp.add(offset, fnp.remainder(lower, span)), _WORD)
    return fnp.astype(fnp.add(lo, fnp.remainder(offset, span)), dt.np)


def permutation(key: Array, x: int | Array) -> Array:
    """A random permutation of ``arange(x)`` (an int) or of ``x``'s rows: JAX's shuffle,
    a stable sort by random 32-bit keys, rounds enough for 3 log2(n) bits. The sort
    ranks each element by comparing it with every other one (n**2 comparisons, fused
    into one reduction): meant for the permutations of data sets and batches."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        n = int(x)
        values = fnp.arange(n, dtype=np.int64)
    else:
        values = fnp.asarray(x)
        if fnp.ndim(values) == 0:
            raise ValueError("fj.random.permutation: x must be an int or an array of rank >= 1")
        n = fnp.shape(values)[0]
    order = fnp.arange(n, dtype=np.int64)
    rounds = math.ceil(3 * math.log(max(1, n)) / math.log(_WORD))
    for _ in range(rounds):
        key, subkey = _split_pair(key)
        order = _stable_sort_by(bits(subkey, (n,)), order)
    if isinstance(x, (int, np.integer)):
        return order
    return fnp.take(values, order, axis=0)


def categorical(key: Array, logits: Array, axis: int = -1) -> Array:
    """Indices drawn with probabilities ``softmax(logits, axis)``: the argmax of
    ``logits`` plus Gumbel noise ``-log(-log(u))``, one draw per slice along ``axis``."""
    logits = fnp.asarray(logits)
    dt = _dtype(logits) if _dtype(logits).is_float else DType.f32
    logits = fnp.astype(logits, dt.np)
    tiny = float(np.finfo(dt.np).tiny)
    u = uniform(key, fnp.shape(logits), dt.np, tiny, 1.0)
    gumbel = -_log(-_log(u, dt), dt)
    return fnp.argmax(gumbel + logits, axis=axis)


# ---------------------------------------------------------------------------------------
# Internals


def _dtype(x: Array) -> DType:
    return from_numpy(x.dtype) if hasattr(x, "dtype") else from_numpy(np.asarray(x).dtype)


def _shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(int(n) < 0 for n in shape):
        raise ValueError(f"fj.random: negative dimension in shape {shape}")
    if math.prod(shape) > 2**32:
        raise NotImplementedError(f"fj.random: {math.prod(shape)} elements exceed 2**32")
    return tuple(int(n) for n in shape)


def _float_dtype(dtype: Any, name: str) -> DType:
    dt = from_numpy(np.dtype(dtype))
    if not dt.is_float:
        raise TypeError(f"fj.random.{name}: dtype must be a float type, got {dt}")
    return dt


def _words(key: Array) -> tuple[Array, Array]:
    """The key's two words as int64 scalars (any integer key array of shape (2,))."""
    k = key if isinstance(key, TracedArray) else np.asarray(key)
    if tuple(k.shape) != (2,) or np.dtype(k.dtype).kind not in "iu":
        raise ValueError(
            f"fj.random: a key is an integer array of shape (2,), got {k.dtype}{list(k.shape)}"
            " (use vmap for arrays of keys)"
        )
    if not isinstance(k, TracedArray):  # uint32 keys (JAX's) too: words modulo 2**32
        k = k.astype(np.int64) & _WORD
    k = fnp.astype(k, np.int64, copy=False)
    return k[0], k[1]


def _counters(shape: tuple[int, ...]) -> tuple[Array, Array]:
    """The counter of each element: its row-major flat index, as (high, low) words."""
    n = math.prod(shape)
    flat = bind(P.iota, shape=(n,), dimension=0, dtype=DType.i64)
    low = fnp.reshape(flat, shape)
    return fnp.zeros(shape, np.int64), low


def _cipher(key: tuple[Array, Array], counters: tuple[Array, Array]) -> tuple[Array, Array]:
    x0, x1 = counters
    shape = fnp.shape(x1)
    k0, k1 = (fnp.broadcast_to(k, shape) for k in key)
    x0 = fnp.broadcast_to(x0, shape)
    return tuple(bind(P.threefry2x32, k0, k1, x0, x1, word=w) for w in (0, 1))  # type: ignore[return-value]


def _stack_words(w0: Array, w1: Array) -> Array:
    """Keys ``[..., 2]`` from their words: a select on the last index rather than a
    concatenate, so that one branch-free kernel computes the cipher once for both."""
    shape = fnp.shape(w0) + (2,)
    first = fnp.equal(bind(P.iota, shape=shape, dimension=len(shape) - 1, dtype=DType.i64), 0)
    return fnp.where(first, fnp.expand_dims(w0, -1), fnp.expand_dims(w1, -1))


def _split_pair(key: Array) -> tuple[Array, Array]:
    keys = split(key, 2)
    return keys[0], keys[1]


def _unit(key: Array, shape: tuple[int, ...], dt: DType) -> Array:
    """Uniform floats in [0, 1): the top 23 (float32) or 52 (float64) random bits as the
    mantissa, ``m * 2**-23`` (exact: what JAX's bit cast of ``1.m`` minus 1 gives)."""
    if dt is DType.f32:
        mantissa = fnp.floor_divide(bits(key, shape), 2**9)
        return fnp.astype(mantissa, np.float32) * 2.0**-23
    w0, w1 = _cipher(_words(key), _counters(shape))
    mantissa = fnp.add(fnp.multiply(w0, 2**20), fnp.floor_divide(w1, 2**12))
    return fnp.astype(mantissa, np.float64) * 2.0**-52


def _stable_sort_by(sort_keys: Array, values: Array) -> Array:
    """``values`` (1-d) ordered by ``sort_keys``, ties in their original order."""
    n = fnp.shape(values)[0]
    index = fnp.arange(n, dtype=np.int64)
    mine, other = fnp.expand_dims(sort_keys, 1), fnp.expand_dims(sort_keys, 0)
    before = fnp.logical_or(
        fnp.less(other, mine),
        fnp.logical_and(fnp.equal(other, mine), fnp.less(fnp.expand_dims(index, 0), fnp.expand_dims(index, 1))),
    )
    rank = fnp.sum(fnp.astype(before, np.int64), axis=1)
    return bind(P.scatter_add, fnp.astype(values, np.int64), rank, axis=0, size=n)


# Natural logarithm and erfinv from correctly rounded operations only (+, -, *, /, sqrt,
# comparisons): NumPy and compiled kernels compute them bit for bit alike, where the
# math libraries' log differ in the last place.

_LN2_HI, _LN2_LO = 0.693145751953125, 1.4286068203094172321e-06  # Cody-Waite split of ln 2


def _log(t: Array, dt: DType) -> Array:
    """log(t) for positive normal ``t``: scale by powers of two into [sqrt(1/2), sqrt(2))
    (exact), then ``2 atanh(s)`` of ``s = (t - 1) / (t + 1)`` as a series in ``s**2``."""
    steps = (64, 32, 16, 8, 4, 2, 1) if dt is DType.f32 else (512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
    e = fnp.zeros_like(t)
    for k in steps:  # before: t in [2**-2k, 2**2k); after: t in [2**-k, 2**k)
        big = fnp.greater_equal(t, 2.0**k)
        t = fnp.where(big, t * 2.0**-k, t)
        e = fnp.where(big, e + float(k), e)
        small = fnp.less(t, 2.0**-k)
        t = fnp.where(small, t * 2.0**k, t)
        e = fnp.where(small, e - float(k), e)
    high, low = fnp.greater_equal(t, math.sqrt(2.0)), fnp.less(t, math.sqrt(0.5))
    t = fnp.where(high, t * 0.5, fnp.where(low, t * 2.0, t))
    e = fnp.where(high, e + 1.0, fnp.where(low, e - 1.0, e))
    s = (t - 1.0) / (t + 1.0)
    z = s * s
    terms = 6 if dt is DType.f32 else 12
    series = fnp.full_like(z, 1.0 / (2 * terms + 1))
    for j in range(terms - 1, -1, -1):
        series = series * z + 1.0 / (2 * j + 1)
    return e * _LN2_HI + (e * _LN2_LO + 2.0 * s * series)


def _horner(coefficients: Sequence[float], w: Array) -> Array:
    p = fnp.full_like(w, coefficients[0])
    for c in coefficients[1:]:
        p = c + p * w
    return p


# M. Giles, "Approximating the erfinv function", GPU Computing Gems Jade (2011).
_ERFINV_F32 = (
    (5.0, 2.5, False, (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
                       -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)),
    (math.inf, 3.0, True, (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
                           -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)),
)
_ERFINV_F64 = (
    (6.25, 3.125, False, (
        -3.6444120640178196996e-21, -1.685059138182016589e-19, 1.2858480715256400167e-18,
        1.115787767802518096e-17, -1.333171662854620906e-16, 2.0972767875968561637e-17,
        6.6376381343583238325e-15, -4.0545662729752068639e-14, -8.1519341976054721522e-14,
        2.6335093153082322977e-12, -1.2975133253453532498e-11, -5.4154120542946279317e-11,
        1.051212273321532285e-09, -4.1126339803469836976e-09, -2.9070369957882005086e-08,
        4.2347877827932403518e-07, -1.3654692000834678645e-06, -1.3882523362786468719e-05,
        0.0001867342080340571352, -0.00074070253416626697512, -0.0060336708714301490533,
        0.24015818242558961693, 1.6536545626831027356)),
    (16.0, 3.25, True, (
        2.2137376921775787049e-09, 9.0756561938885390979e-08, -2.7517406297064545428e-07,
        1.8239629214389227755e-08, 1.5027403968909827627e-06, -4.013867526981545969e-06,
        2.9234449089955446044e-06, 1.2475304481671778723e-05, -4.7318229009055733981e-05,
        6.8284851459573175448e-05, 2.4031110387097893999e-05, -0.0003550375203628474796,
        0.00095328937973738049703, -0.0016882755560235047313, 0.0024914420961078508066,
        -0.0037512085075692412107, 0.005370914553590063617, 1.0052589676941592334,
        3.0838856104922207635)),
    (math.inf, 5.0, True, (
        -2.7109920616438573243e-11, -2.5556418169965252055e-10, 1.5076572693500548083e-09,
        -3.7894654401267369937e-09, 7.6157012080783393804e-09, -1.4960026627149240478e-08,
        2.9147953450901080826e-08, -6.7711997758452339498e-08, 2.2900482228026654717e-07,
        -9.9298272942317002539e-07, 4.5260625972231537039e-06, -1.9681778105531670567e-05,
        7.5995277030017761139e-05, -0.00021503011930044477347, -0.00013871931833623122026,
        1.0103004648645343977, 4.8499064014085844221)),
)


def _erfinv(x: Array, dt: DType) -> Array:
    """erfinv(x) for x in (-1, 1): Giles' polynomials in ``w = -log((1 - x)(1 + x))``
    (or in ``sqrt(w)`` in the tails), each branch computed and the right one selected."""
    w = -_log((1.0 - x) * (1.0 + x), dt)
    pieces = _ERFINV_F32 if dt is DType.f32 else _ERFINV_F64
    root = fnp.sqrt(w)
    result = None
    for bound, shift, tail, coefficients in reversed(pieces):
        p = _horner(coefficients, (root if tail else w) - shift)
        result = p if result is None else fnp.where(fnp.less(w, bound), p, result)
    return result * x


__all__ = ["bernoulli", "bits", "categorical", "fold_in", "key", "normal", "permutation", "randint", "split",
           "uniform"]
