"""Direct-loop NumPy references for convolution and pooling: one output element at a time,
straight from the definitions (independent of the primitives' vectorized rules)."""

from __future__ import annotations

import itertools
import math

import numpy as np


def conv(x: np.ndarray, w: np.ndarray, strides, lo, hi, lhs_dilation, rhs_dilation, groups) -> np.ndarray:
    """``out[n, o, p] = sum_{c, k} xd[n, g*Cg + c, p*s + k*rd] * w[o, c, k]`` where ``xd`` is
    ``x`` dilated by ``lhs_dilation`` and padded by ``lo``/``hi`` (negative: cropped)."""
    n, c, *spatial = x.shape
    o, cg, *window = w.shape
    og = o // groups
    dil = [0 if s == 0 else (s - 1) * d + 1 for s, d in zip(spatial, lhs_dilation, strict=True)]
    wd = [(k - 1) * d + 1 for k, d in zip(window, rhs_dilation, strict=True)]
    out_sp = [max(0, (dl + a + b - k) // s + 1) if dl + a + b >= k else 0
              for dl, a, b, k, s in zip(dil, lo, hi, wd, strides, strict=True)]
    out = np.zeros((n, o, *out_sp), np.float64)

    def value(ni: int, ci: int, q: tuple[int, ...]) -> float:
        pos = []
        for qi, a, d, s in zip(q, lo, lhs_dilation, spatial, strict=True):
            r = qi - a  # position in the dilated input
            if r < 0 or r % d or r // d >= s:
                return 0.0
            pos.append(r // d)
        return float(x[(ni, ci, *pos)])

    for ni, oi in itertools.product(range(n), range(o)):
        g = oi // og
        for p in itertools.product(*(range(m) for m in out_sp)):
            total = 0.0
            for ci in range(cg):
                for k in itertools.product(*(range(m) for m in window)):
                    q = tuple(pi * s + ki * rd for pi, s, ki, rd in zip(p, strides, k, rhs_dilation, strict=True))
                    total += value(ni, g * cg + ci, q) * float(w[(oi, ci, *k)])
            out[(ni, oi, *p)] = total
    return out.astype(x.dtype)


def _windows(shape, window, strides, lo, hi):
    """Every output position with the operand positions of its window (None: padding)."""
    out = [(n + a + b - k) // s + 1 if n + a + b >= k else 0
           for n, k, s, a, b in zip(shape, window, strides, lo, hi, strict=True)]
    for y in itertools.product(*(range(m) for m in out)):
        members = []
        for k in itertools.product(*(range(m) for m in window)):
            q = tuple(yi * s + ki - a for yi, s, ki, a in zip(y, strides, k, lo, strict=True))
            members.append(q if all(0 <= qi < n for qi, n in zip(q, shape, strict=True)) else None)
        yield y, members
    return out


def pool_shape(shape, window, strides, lo, hi) -> tuple[int, ...]:
    return tuple((n + a + b - k) // s + 1 if n + a + b >= k else 0
                 for n, k, s, a, b in zip(shape, window, strides, lo, hi, strict=True))


def max_pool(x, window, strides, lo, hi) -> np.ndarray:
    out = np.full(pool_shape(x.shape, window, strides, lo, hi), -np.inf, x.dtype)
    for y, members in _windows(x.shape, window, strides, lo, hi):
        vals = [x[q] for q in members if q is not None]
        out[y] = np.max(vals) if vals else -np.inf
    return out


def avg_pool(x, window, strides, lo, hi) -> np.ndarray:
    out = np.zeros(pool_shape(x.shape, window, strides, lo, hi), np.float64)
    for y, members in _windows(x.shape, window, strides, lo, hi):
        out[y] = sum(float(x[q]) for q in members if q is not None) / math.prod(window)
    return out.astype(x.dtype)


def first_largest(x, members):
    """The first member holding the window's largest value (a NaN counts as largest)."""
    best = None
    for q in members:
        if q is None:
            continue
        v = x[q]
        if best is None or v > x[best] or (np.isnan(v) and not np.isnan(x[best])):
            best = q
    return best


def max_pool_scatter(x, g, window, strides, lo, hi) -> np.ndarray:
    out = np.zeros(x.shape, np.float64)
    for y, members in _windows(x.shape, window, strides, lo, hi):
        q = first_largest(x, members)
        if q is not None:
            out[q] += g[y]
    return out.astype(x.dtype)


def max_pool_gather(x, t, window, strides, lo, hi) -> np.ndarray:
    out = np.zeros(pool_shape(x.shape, window, strides, lo, hi), x.dtype)
    for y, members in _windows(x.shape, window, strides, lo, hi):
        q = first_largest(x, members)
        out[y] = t[q] if q is not None else 0
    return out


def avg_pool_scatter(g, window, strides, lo, hi, shape) -> np.ndarray:
    out = np.zeros(shape, np.float64)
    for y, members in _windows(shape, window, strides, lo, hi):
        for q in members:
            if q is not None:
                out[q] += float(g[y]) / math.prod(window)
    return out.astype(g.dtype)
