"""Every primitive against NumPy, on every dtype it accepts.

``CASES`` maps each primitive's name to a function that, given a dtype, returns the calls
to check: operands, attributes, and the answer NumPy itself gives (written with NumPy's
own functions, not with the primitive's rule). Each call runs twice:

* eagerly: ``bind(prim, *operands, **attrs)`` with no trace active runs the primitive's
  NumPy rule at once;
* traced: the same ``bind`` inside ``fj.jit(..., backend="interpret")`` records one op,
  which the optimizer and the reference interpreter then run.

Both must give NumPy's values, dtype and shape, on 0-d, size-1 and 0-size operands as
well as ordinary ones. ``test_every_primitive_has_cases`` fails when a primitive is added
without cases here.
"""

from __future__ import annotations

import itertools
import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import conv_reference
import numpy as np
import pytest

import fusejit as fj
from fusejit.ir import PRIMITIVES, DType, IRTypeError
from fusejit.ir import primitives as P
from fusejit.tracer.tracing import bind

# custom_vjp_call holds nested functions; its own tests are with the autodiff transform.
TESTED_ELSEWHERE = {"custom_vjp_call", "scan", "while_loop", "cond"}  # tests/test_control_flow.py
TESTED_ELSEWHERE |= {"checkpoint"}  # tests/test_checkpoint.py
TESTED_ELSEWHERE |= {p.name for p in P.COLLECTIVES}  # tests/test_distributed.py
TESTED_ELSEWHERE |= {"debug_callback"}  # tests/test_debugging.py
TESTED_ELSEWHERE |= {p.name for p in P.LINALG}  # tests/test_linalg.py (against NumPy/SciPy)
ALL_DTYPES = (DType.bool, DType.i32, DType.i64, DType.f32, DType.f64)
NUMERIC = (DType.i32, DType.i64, DType.f32, DType.f64)
# 0-d, size-1, 0-size, and ordinary shapes.
SHAPES = [(), (1,), (0,), (5,), (2, 3), (2, 0, 3), (1, 3, 1)]


@dataclass
class Case:
    """One call of a primitive, and NumPy's answer to it."""

    label: str
    operands: tuple[np.ndarray, ...]
    attrs: dict[str, Any]
    expected: np.ndarray = field(repr=False)


def data(shape: tuple[int, ...], dtype: DType, *, positive: bool = False, seed: int = 0) -> np.ndarray:
    """Deterministic test data: small values with repeats (ties for argmax, duplicates
    for scatter); ``positive`` keeps floats in log/sqrt/pow's domain and ints nonzero."""
    rng = np.random.default_rng(zlib.crc32(repr((shape, dtype.value, positive, seed)).encode()))
    if dtype.is_bool:
        return rng.random(shape) < 0.5
    if dtype.is_int:
        return rng.integers(1 if positive else -4, 5, shape).astype(dtype.np)
    low = 0.25 if positive else -2.0
    return rng.uniform(low, 2.0, shape).astype(dtype.np)


def specials(dtype: DType) -> np.ndarray:
    """Floats NumPy treats specially: nan, infinities, signed zeros, halves (rounding)."""
    return np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 1.5, 2.5, -2.5, 1.0], dtype.np)


# ---------------------------------------------------------------------------------------
# The table: NumPy's answer for each primitive.


def unary(numpy_fn: Callable[[np.ndarray], Any], *, positive: bool = False, special: bool = True):
    def cases(dtype: DType) -> list[Case]:
        out = []
        for shape in SHAPES:
            x = data(shape, dtype, positive=positive)
            out.append(Case(f"{shape}", (x,), {}, np.asarray(numpy_fn(x))))
        if dtype.is_float and special:
            x = specials(dtype)
            with np.errstate(all="ignore"):
                out.append(Case("nan/inf/-0.0/halves", (x,), {}, np.asarray(numpy_fn(x))))
        return out

    return cases


def binary(numpy_fn: Callable[[np.ndarray, np.ndarray], Any], *, positive_rhs: bool = False,
           positive_lhs: bool = False):  # fmt: skip
    def cases(dtype: DType) -> list[Case]:
        out = []
        for shape in SHAPES:
            x = data(shape, dtype, positive=positive_lhs, seed=1)
            y = data(shape, dtype, positive=positive_rhs, seed=2)
            out.append(Case(f"{shape}", (x, y), {}, np.asarray(numpy_fn(x, y))))
        if dtype.is_float:
            x = specials(dtype)
            y = np.roll(x, 3)
            with np.errstate(all="ignore"):
                out.append(Case("nan/inf/-0.0", (x, y), {}, np.asarray(numpy_fn(x, y))))
        return out

    return cases


def logistic(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def logical_not(x: np.ndarray) -> np.ndarray:
    return np.logical_not(x) if x.dtype == np.bool_ else np.invert(x)


def select_cases(dtype: DType) -> list[Case]:
    out = []
    for shape in SHAPES:
        pred = data(shape, DType.bool, seed=3)
        a, b = data(shape, dtype, seed=1), data(shape, dtype, seed=2)
        out.append(Case(f"{shape}", (pred, a, b), {}, np.where(pred, a, b)))
    return out


def convert_cases(dtype: DType) -> list[Case]:
    out = []
    for target, shape in itertools.product(ALL_DTYPES, [(), (0,), (2, 3)]):
        x = data(shape, dtype)
        out.append(Case(f"to {target} {shape}", (x,), {"dtype": target}, x.astype(target.np)))
    return out


def broadcast_in_dim_cases(dtype: DType) -> list[Case]:
    out = []
    for in_shape, shape, dims in [
        ((), (2, 3), ()),
        ((3,), (2, 3), (1,)),
        ((3,), (3, 2), (0,)),
        ((1, 3), (4, 3), (0, 1)),
        ((2, 1), (2, 5, 4), (0, 2)),
        ((0,), (2, 0), (1,)),
        ((1,), (0,), (0,)),
        ((2, 3), (2, 3), (0, 1)),
    ]:
        x = data(in_shape, dtype)
        missing = tuple(d for d in range(len(shape)) if d not in dims)
        expected = np.broadcast_to(np.expand_dims(x, missing), shape)
        out.append(Case(f"{in_shape}->{shape} dims={dims}", (x,), {"shape": shape, "dims": dims}, expected))
    return out


def reshape_cases(dtype: DType) -> list[Case]:
    out = []
    for in_shape, shape in [((2, 3), (3, 2)), ((6,), (1, 2, 3)), ((), (1, 1)), ((1,), ()), ((0, 3), (3, 0)), ((2, 3), (6,))]:
        x = data(in_shape, dtype)
        out.append(Case(f"{in_shape}->{shape}", (x,), {"shape": shape}, np.reshape(x, shape)))
    return out


def transpose_cases(dtype: DType) -> list[Case]:
    out = []
    for shape, perm in [((2, 3, 4), (2, 0, 1)), ((2, 3), (1, 0)), ((), ()), ((0, 3), (1, 0)), ((1,), (0,))]:
        x = data(shape, dtype)
        out.append(Case(f"{shape} perm={perm}", (x,), {"perm": perm}, np.transpose(x, perm)))
    return out


def slice_cases(dtype: DType) -> list[Case]:
    out = []
    for shape, start, limit, stride in [
        ((5,), (1,), (4,), (2,)),
        ((3, 4), (0, 1), (3, 4), (2, 1)),
        ((3, 4), (1, 0), (2, 4), (1, 3)),
        ((5,), (2,), (2,), (1,)),  # empty result
        ((0,), (0,), (0,), (1,)),
        ((), (), (), ()),
        ((1,), (0,), (1,), (5,)),
    ]:
        x = data(shape, dtype)
        key = tuple(slice(*a) for a in zip(start, limit, stride, strict=True))
        attrs = {"start": start, "limit": limit, "stride": stride}
        out.append(Case(f"{shape}[{key}]", (x,), attrs, x[key]))
    return out


def concatenate_cases(dtype: DType) -> list[Case]:
    out = []
    for shapes, axis in [
        ([(3,)], 0),
        ([(2, 3), (4, 3)], 0),
        ([(2, 3), (2, 1), (2, 0)], 1),
        ([(0,), (0,)], 0),
        ([(1, 2, 3), (1, 2, 3), (1, 2, 3)], 2),
    ]:
        xs = tuple(data(s, dtype, seed=i) for i, s in enumerate(shapes))
        out.append(Case(f"{shapes} axis={axis}", xs, {"axis": axis}, np.concatenate(xs, axis=axis)))
    return out


def pad_cases(dtype: DType) -> list[Case]:
    value = P.constant_value(True if dtype.is_bool else 7, dtype)
    out = []
    for shape, lo, hi in [((2, 3), (1, 0), (2, 1)), ((1,), (0,), (2,)), ((0,), (1,), (2,)), ((3,), (0,), (0,)), ((), (), ())]:
        x = data(shape, dtype)
        # (np.pad cannot take the empty pad_width of a 0-d array: nothing to pad is x itself)
        expected = np.pad(x, list(zip(lo, hi, strict=True)), constant_values=value) if shape else x
        out.append(Case(f"{shape} lo={lo} hi={hi}", (x,), {"lo": lo, "hi": hi, "value": value}, expected))
    return out


def reduce_cases(numpy_fn: Callable[..., Any], *, empty_ok: bool):
    def cases(dtype: DType) -> list[Case]:
        out = []
        for shape, axes in [
            ((), ()),
            ((1,), (0,)),
            ((5,), (0,)),
            ((2, 3), (0,)),
            ((2, 3), (1,)),
            ((2, 3), (0, 1)),
            ((2, 3), ()),
            ((2, 0, 3), (0,)),  # a 0-size operand, but the reduced axis is not empty
            ((2, 0, 3), (1,)),  # the reduced axis is empty: only sum has an identity
            ((0,), (0,)),
        ]:
            x = data(shape, dtype)
            if not empty_ok and any(shape[a] == 0 for a in axes):
                continue
            expected = np.asarray(numpy_fn(x, axis=axes)).astype(dtype.np)
            out.append(Case(f"{shape} axes={axes}", (x,), {"axes": axes}, expected))
        return out

    return cases


def reduce_sum(x: np.ndarray, axis: tuple[int, ...]) -> np.ndarray:
    return np.sum(x, axis=axis, dtype=x.dtype)  # the IR keeps the dtype; fnp.sum promotes


def arg_reduce_cases(numpy_fn: Callable[..., Any]):
    def cases(dtype: DType) -> list[Case]:
        out = []
        for shape, axis in [((1,), 0), ((5,), 0), ((2, 3), 0), ((2, 3), 1), ((2, 0, 3), 2), ((4, 6), 1)]:
            x = data(shape, dtype)
            out.append(Case(f"{shape} axis={axis}", (x,), {"axis": axis}, numpy_fn(x, axis=axis).astype(np.int64)))
        if dtype.is_float:  # the first of equal extremes wins
            x = np.array([[1.0, 3.0, 3.0, -1.0, -1.0]], dtype.np)
            out.append(Case("ties", (x,), {"axis": 1}, numpy_fn(x, axis=1)))
        return out

    return cases


def dot_general_reference(lhs: np.ndarray, rhs: np.ndarray, contract: tuple, batch: tuple) -> np.ndarray:
    """``np.einsum`` of the contraction: batch axes, then lhs free, then rhs free axes."""
    letters = iter(string.ascii_letters)
    lhs_idx = [next(letters) for _ in range(lhs.ndim)]
    rhs_idx = [next(letters) for _ in range(rhs.ndim)]
    for a, b in zip(contract[0] + batch[0], contract[1] + batch[1], strict=True):
        rhs_idx[b] = lhs_idx[a]
    out = [lhs_idx[a] for a in batch[0]]
    out += [c for i, c in enumerate(lhs_idx) if i not in contract[0] + batch[0]]
    out += [c for i, c in enumerate(rhs_idx) if i not in contract[1] + batch[1]]
    spec = f"{''.join(lhs_idx)},{''.join(rhs_idx)}->{''.join(out)}"
    return np.einsum(spec, lhs, rhs).astype(lhs.dtype)


def dot_general_cases(dtype: DType) -> list[Case]:
    out = []
    for label, ls, rs, contract, batch in [
        ("matrix @ matrix", (2, 3), (3, 4), ((1,), (0,)), ((), ())),
        ("vector . vector", (3,), (3,), ((0,), (0,)), ((), ())),
        ("matrix @ vector", (2, 3), (3,), ((1,), (0,)), ((), ())),
        ("outer product", (2,), (3,), ((), ()), ((), ())),
        ("batched", (2, 3, 4), (2, 4, 5), ((2,), (1,)), ((0,), (0,))),
        ("two contracted axes", (2, 3, 4), (3, 4, 5), ((1, 2), (0, 1)), ((), ())),
        ("transposed operands", (3, 2), (4, 3), ((0,), (1,)), ((), ())),
        ("batch axis not leading", (3, 2, 4), (4, 2), ((2,), (0,)), ((1,), (1,))),
        ("empty contraction", (2, 0), (0, 3), ((1,), (0,)), ((), ())),
        ("size-1 everything", (1, 1), (1, 1), ((1,), (0,)), ((), ())),
        ("scalar-like", (1,), (1,), ((0,), (0,)), ((), ())),
    ]:
        lhs, rhs = data(ls, dtype, seed=1), data(rs, dtype, seed=2)
        attrs = {"contract": contract, "batch": batch}
        out.append(Case(label, (lhs, rhs), attrs, dot_general_reference(lhs, rhs, contract, batch)))
    return out


def clamp_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """fusejit's index rule: negative indices count from the end, out-of-range ones clamp."""
    return np.array([min(max(i + n if i < 0 else i, 0), n - 1) for i in idx.ravel()], np.int64).reshape(idx.shape)


def gather_cases(dtype: DType) -> list[Case]:
    out = []
    for label, shape, idx, axis in [
        ("rows", (3, 4), [[0, 2], [3, 3], [1, 0]], 1),
        ("negative", (3, 4), [[-1, -4], [-2, 0], [0, -3]], 1),
        ("out of range clamps", (3, 4), [[7, -9], [4, -5], [100, 0]], 1),
        ("axis 0", (3, 2), [[2, 0], [0, 1]], 0),
        ("1-d", (5,), [4, 0, 0, -1], 0),
        ("no indices", (3, 4), np.zeros((3, 0), np.int64), 1),
        ("size-1", (1,), [0], 0),
    ]:
        x = data(shape, dtype)
        for idx_dtype in (np.int32, np.int64):
            i = np.asarray(idx, idx_dtype)
            expected = np.take_along_axis(x, clamp_indices(i, shape[axis]), axis=axis)
            out.append(Case(f"{label} ({np.dtype(idx_dtype)} indices)", (x, i), {"axis": axis}, expected))
    return out


def scatter_add_cases(dtype: DType) -> list[Case]:
    out = []
    for label, upd_shape, idx, axis, size in [
        ("duplicates add up", (2, 3), [[0, 0, 2], [3, 1, 1]], 1, 4),
        ("negative and clamped", (2, 2), [[-1, 9], [-9, 0]], 1, 3),
        ("axis 0", (3, 2), [[1, 0], [1, 1], [0, 0]], 0, 2),
        ("no updates", (0, 2), np.zeros((0, 2), np.int64), 0, 3),
        ("empty target", (2, 0), np.zeros((2, 0), np.int64), 1, 0),
    ]:
        upd = data(upd_shape, dtype)
        i = np.asarray(idx, np.int64)
        expected = np.zeros(upd_shape[:axis] + (size,) + upd_shape[axis + 1 :], dtype.np)
        clamped = clamp_indices(i, size) if size else i
        for pos in np.ndindex(*upd_shape):
            target = list(pos)
            target[axis] = clamped[pos]
            expected[tuple(target)] += upd[pos]
        attrs = {"axis": axis, "size": size}
        out.append(Case(label, (upd, i), attrs, expected))
    return out


def scan_cases(ufunc: np.ufunc, with_zero: bool = False) -> Callable[[DType], list[Case]]:
    """Running sums (products) in the operand's dtype, in order (NumPy's add.accumulate,
    multiply.accumulate), from either end, along every kind of axis, including empty and
    unit ones; ``with_zero`` puts a zero into the operand (it stops the products)."""

    def cases(dtype: DType) -> list[Case]:
        out = []
        for label, shape, axis in [
            ("vector", (7,), 0),
            ("0-size", (0,), 0),
            ("leading axis", (5, 3), 0),
            ("middle axis", (2, 6, 3), 1),
            ("last axis", (2, 3, 6), 2),
            ("unit axis", (4, 1, 3), 1),
            ("empty rows", (3, 0), 0),
        ]:
            x = data(shape, dtype)
            if with_zero and x.size > 4:
                x.flat[3] = 0
            forward = ufunc.accumulate(x, axis=axis, dtype=dtype.np)
            backward = np.flip(ufunc.accumulate(np.flip(x, axis), axis=axis, dtype=dtype.np), axis)
            out.append(Case(label, (x,), {"axis": axis, "reverse": False}, forward))
            out.append(Case(f"{label}, reversed", (x,), {"axis": axis, "reverse": True}, backward))
        return out

    return cases


def iota_cases(dtype: DType) -> list[Case]:
    out = []
    for shape, dimension in [((4,), 0), ((2, 3), 0), ((2, 3), 1), ((0,), 0), ((1,), 0), ((2, 0, 3), 2)]:
        expected = np.indices(shape, dtype=np.int64)[dimension].astype(dtype.np)
        out.append(Case(f"{shape} dimension={dimension}", (), {"shape": shape, "dimension": dimension, "dtype": dtype}, expected))
    return out


def constant_cases(dtype: DType) -> list[Case]:
    scalar = {DType.bool: True, DType.i32: -3, DType.i64: 2**40, DType.f32: 0.1, DType.f64: -1.5e300}[dtype]
    value = P.constant_value(scalar, dtype)
    out = [
        Case(f"{shape} filled with {scalar}", (), {"value": value, "shape": shape, "dtype": dtype},
             np.full(shape, scalar, dtype.np))
        for shape in [(), (1,), (2, 3), (0,), (2, 0)]
    ]  # fmt: skip
    values = tuple(P.constant_value(v, dtype) for v in (1, 0, 1, 1, 0, 0))
    out.append(Case("(2,3) from a tuple", (), {"value": values, "shape": (2, 3), "dtype": dtype},
                    np.array(values, dtype.np).reshape(2, 3)))  # fmt: skip
    return out


def _threefry_reference(k0: int, k1: int, x0: int, x1: int) -> tuple[int, int]:
    """Threefry-2x32 (20 rounds) from the Random123 specification, on Python ints."""
    m = 0xFFFFFFFF
    ks = (k0 & m, k1 & m, (k0 ^ k1 ^ 0x1BD11BDA) & m)
    x = [(x0 + ks[0]) & m, (x1 + ks[1]) & m]
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    for i in range(5):
        for r in rotations[i % 2]:
            x[0] = (x[0] + x[1]) & m
            x[1] = (((x[1] << r) | (x[1] >> (32 - r))) & m) ^ x[0]
        x[0] = (x[0] + ks[(i + 1) % 3]) & m
        x[1] = (x[1] + ks[(i + 2) % 3] + i + 1) & m
    return x[0], x[1]


def threefry_cases(dtype: DType) -> list[Case]:
    """The Random123 known answers, then int64 operands of every sign and size (taken
    modulo 2**32), on ordinary, 0-d and 0-size shapes; both output words."""
    kat = np.array([[0, 0, 0, 0], [2**32 - 1] * 4, [0x13198A2E, 0x03707344, 0x243F6A88, 0x85A308D3]]).T
    rng = np.random.default_rng(14)
    out = []
    for label, operands in [("known answers", tuple(kat)),
                            *[(f"{shape}", tuple(rng.integers(-2**40, 2**40, shape) for _ in range(4)))
                              for shape in [(2, 3), (), (0,), (1, 3, 1)]]]:  # fmt: skip
        flat = [np.ravel(o) for o in operands]
        words = np.array([_threefry_reference(*(int(f[i]) for f in flat)) for i in range(flat[0].size)],
                         dtype=np.int64).reshape(-1, 2)
        for word in (0, 1):
            expected = words[:, word].reshape(operands[0].shape)
            out.append(Case(f"{label} word {word}", operands, {"word": word}, expected))
    return out


def quarters(shape: tuple[int, ...], dtype: DType, seed: int = 0) -> np.ndarray:
    """Multiples of 1/4 in [-2, 2]: sums of a few products are exact in any order."""
    return (np.round(data(shape, dtype, seed=seed) * 4) / 4).astype(dtype.np)


def conv_cases(dtype: DType) -> list[Case]:
    """Against a loop over each output element (``tests/conv_reference.py``): strides,
    padding (negative: cropping), both dilations, groups, 1-d and 2-d, batch 1, empty."""
    out = []
    for label, xs, ws, s, lo, hi, ld, rd, g in [
        ("1-d", (2, 3, 7), (4, 3, 3), (1,), (0,), (0,), (1,), (1,), 1),
        ("1-d strided, padded, dilated", (1, 2, 9), (3, 2, 2), (2,), (2,), (1,), (1,), (3,), 1),
        ("2-d same padding", (2, 2, 5, 4), (3, 2, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), 1),
        ("2-d groups, strides", (1, 4, 6, 7), (6, 2, 2, 3), (2, 1), (0, 1), (1, 0), (1, 1), (1, 2), 2),
        ("2-d lhs dilation, cropping", (2, 2, 4, 3), (2, 2, 2, 2), (1, 2), (-1, 1), (1, -1), (2, 3), (1, 1), 1),
        ("depthwise", (1, 3, 5, 5), (3, 1, 3, 3), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1), 3),
        ("window larger than input", (1, 1, 2), (1, 1, 3), (1,), (0,), (0,), (1,), (1,), 1),
        ("empty batch", (0, 2, 4, 4), (3, 2, 2, 2), (1, 1), (0, 0), (0, 0), (1, 1), (1, 1), 1),
    ]:
        x, w = quarters(xs, dtype), quarters(ws, dtype, seed=1)
        attrs = {"strides": s, "lo": lo, "hi": hi, "lhs_dilation": ld, "rhs_dilation": rd, "groups": g}
        out.append(Case(label, (x, w), attrs, conv_reference.conv(x, w, **attrs)))
    return out


POOL_ATTRS = [
    ("2-d 2x2", (2, 3, 4, 6), (1, 1, 2, 2), (1, 1, 2, 2), (0, 0, 0, 0), (0, 0, 0, 0)),
    ("2-d overlapping, padded", (1, 2, 5, 5), (1, 1, 3, 3), (1, 1, 2, 2), (0, 0, 1, 1), (0, 0, 1, 1)),
    ("1-d odd size, cropped", (2, 1, 7), (1, 1, 2), (1, 1, 2), (0, 0, -1), (0, 0, 0)),
    ("all axes", (3, 4), (2, 2), (1, 2), (1, 0), (0, 1)),
    ("window of padding", (1, 3), (1, 2), (1, 2), (0, 2), (0, 2)),
    ("empty", (0, 2, 4), (1, 1, 2), (1, 1, 2), (0, 0, 0), (0, 0, 0)),
]


def pool_cases(prim_name: str) -> Callable[[DType], list[Case]]:
    def cases(dtype: DType) -> list[Case]:
        out = []
        for label, shape, window, strides, lo, hi in POOL_ATTRS:
            attrs = {"window": window, "strides": strides, "lo": lo, "hi": hi}
            x = quarters(shape, dtype)  # with ties: the first largest wins
            pooled = conv_reference.pool_shape(shape, window, strides, lo, hi)
            if prim_name == "max_pool":
                out.append(Case(label, (x,), attrs, conv_reference.max_pool(x, **attrs)))
            elif prim_name == "avg_pool":
                out.append(Case(label, (x,), attrs, conv_reference.avg_pool(x, **attrs)))
            elif prim_name == "max_pool_gather":
                t = data(shape, dtype, seed=2)
                out.append(Case(label, (x, t), attrs, conv_reference.max_pool_gather(x, t, **attrs)))
            elif prim_name == "max_pool_scatter":
                g = quarters(pooled, dtype, seed=3)
                out.append(Case(label, (x, g), attrs, conv_reference.max_pool_scatter(x, g, **attrs)))
            else:
                g = quarters(pooled, dtype, seed=3)
                out.append(Case(label, (g,), {**attrs, "shape": shape},
                                conv_reference.avg_pool_scatter(g, **attrs, shape=shape)))
        return out

    return cases


CASES: dict[str, Callable[[DType], list[Case]]] = {
    "neg": unary(np.negative),
    "abs": unary(np.abs),
    "sign": unary(np.sign),
    "exp": unary(np.exp),
    "log": unary(np.log, positive=True),
    "log1p": unary(np.log1p, positive=True),
    "expm1": unary(np.expm1),
    "sqrt": unary(np.sqrt, positive=True),
    "rsqrt": unary(lambda x: 1 / np.sqrt(x), positive=True),
    "tanh": unary(np.tanh),
    "logistic": unary(logistic),
    "sin": unary(np.sin),
    "cos": unary(np.cos),
    "floor": unary(np.floor),
    "ceil": unary(np.ceil),
    "round": unary(np.round),  # half to even: the special values include halves
    "stop_gradient": unary(np.copy),
    "not": unary(logical_not),
    "add": binary(np.add),
    "sub": binary(np.subtract),
    "mul": binary(np.multiply),
    "div": binary(np.divide, positive_rhs=True),
    "pow": binary(np.power, positive_lhs=True),
    "floor_divide": binary(np.floor_divide),
    "remainder": binary(np.remainder),
    "atan2": binary(np.arctan2),
    "max": binary(np.maximum),
    "min": binary(np.minimum),
    "eq": binary(np.equal),
    "ne": binary(np.not_equal),
    "lt": binary(np.less),
    "le": binary(np.less_equal),
    "gt": binary(np.greater),
    "ge": binary(np.greater_equal),
    "and": binary(np.bitwise_and),
    "or": binary(np.bitwise_or),
    "shift_left": binary(np.left_shift),  # counts -4..4 of the int data: negative ones too
    "shift_right_arithmetic": binary(np.right_shift),
    "select": select_cases,
    "convert": convert_cases,
    "broadcast_in_dim": broadcast_in_dim_cases,
    "reshape": reshape_cases,
    "transpose": transpose_cases,
    "slice": slice_cases,
    "concatenate": concatenate_cases,
    "pad": pad_cases,
    "reduce_sum": reduce_cases(reduce_sum, empty_ok=True),
    "reduce_max": reduce_cases(np.max, empty_ok=False),
    "reduce_min": reduce_cases(np.min, empty_ok=False),
    "reduce_prod": reduce_cases(np.prod, empty_ok=True),
    "argmax": arg_reduce_cases(np.argmax),
    "argmin": arg_reduce_cases(np.argmin),
    "dot_general": dot_general_cases,
    "gather": gather_cases,
    "scatter_add": scatter_add_cases,
    "cumsum": scan_cases(np.add),
    "cumprod": scan_cases(np.multiply, with_zero=True),
    "iota": iota_cases,
    "constant": constant_cases,
    "conv": conv_cases,
    "max_pool": pool_cases("max_pool"),
    "avg_pool": pool_cases("avg_pool"),
    "max_pool_gather": pool_cases("max_pool_gather"),
    "max_pool_scatter": pool_cases("max_pool_scatter"),
    "avg_pool_scatter": pool_cases("avg_pool_scatter"),
    "threefry2x32": threefry_cases,
}


def dtypes_of(name: str) -> tuple[DType, ...]:
    """The dtypes a primitive accepts (select: of its branches; iota: numeric only)."""
    if name == "select":
        return ALL_DTYPES
    if name == "iota":
        return NUMERIC
    return tuple(d for d in ALL_DTYPES if d in PRIMITIVES[name].dtypes)


def assert_matches_numpy(actual: Any, expected: np.ndarray, where: str) -> None:
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype}, NumPy gives {expected.dtype}"
    assert actual.shape == expected.shape, f"{where}: shape {actual.shape}, NumPy gives {expected.shape}"
    if expected.dtype.kind == "f":
        rtol = 1e-6 if expected.dtype == np.float32 else 1e-13
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol, err_msg=where)
        # The sign of zero is part of the value (np.sign(-0.0), round(-0.4)).
        zeros = expected == 0
        assert np.array_equal(np.signbit(actual[zeros]), np.signbit(expected[zeros])), where
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=where)


# ---------------------------------------------------------------------------------------
# Tests


def test_every_primitive_has_cases() -> None:
    missing = sorted(set(PRIMITIVES) - set(CASES) - TESTED_ELSEWHERE)
    assert not missing, f"primitives without cases in tests/test_primitives.py: {missing}"
    unknown = sorted(set(CASES) - set(PRIMITIVES))
    assert not unknown, f"cases for primitives that do not exist: {unknown}"


def test_every_case_covers_zero_size_operands_or_results() -> None:
    """Each primitive with operands is checked on at least one 0-size array."""
    for name, make in CASES.items():
        cases = make(dtypes_of(name)[0])
        sizes = [x.size for c in cases for x in c.operands] + [c.expected.size for c in cases]
        assert 0 in sizes, f"{name}: no 0-size case"


@pytest.mark.parametrize(
    ("name", "dtype"),
    [(n, d) for n in CASES for d in dtypes_of(n)],
    ids=[f"{n}-{d}" for n in CASES for d in dtypes_of(n)],
)
def test_primitive_matches_numpy_eagerly_and_traced(name: str, dtype: DType) -> None:
    prim = PRIMITIVES[name]
    for case in CASES[name](dtype):
        where = f"{name}[{dtype}] {case.label}"
        eager = bind(prim, *case.operands, **case.attrs)
        assert isinstance(eager, np.ndarray), f"{where}: eager bind returned {type(eager).__name__}"
        assert_matches_numpy(eager, case.expected, f"{where} (eager)")

        def one_op(*xs: Any, attrs: dict[str, Any] = case.attrs) -> Any:
            return bind(prim, *xs, **attrs)

        traced = fj.jit(one_op, backend="interpret")(*case.operands)
        assert_matches_numpy(traced, case.expected, f"{where} (traced)")


def test_traced_call_records_exactly_the_primitive() -> None:
    """The traced path above really goes through the IR: one op of the primitive."""
    x = np.ones((2, 3), np.float32)
    fn = fj.make_ir(lambda x: bind(P.reduce_sum, x, axes=(1,)))(x)
    assert [op.prim.name for op in fn.ops] == ["reduce_sum"]
    assert dict(fn.ops[0].attrs) == {"axes": (1,)}


REJECTED = [
    (n, d)
    for n in CASES
    if PRIMITIVES[n].arity != 0 and n not in ("convert",)
    for d in ALL_DTYPES
    if d not in PRIMITIVES[n].dtypes
]


@pytest.mark.parametrize(("name", "dtype"), REJECTED, ids=[f"{n}-{d}" for n, d in REJECTED])
def test_primitive_rejects_dtypes_outside_its_set(name: str, dtype: DType) -> None:
    prim = PRIMITIVES[name]
    allowed = dtypes_of(name)[0]
    case = next(c for c in CASES[name](allowed) if all(x.size for x in c.operands))
    operands = (case.operands[0].astype(dtype.np),) + case.operands[1:]
    with pytest.raises(IRTypeError, match=f"{name} does not accept dtype {dtype}"):
        bind(prim, *operands, **case.attrs)

    def one_op(*xs: Any) -> Any:
        return bind(prim, *xs, **case.attrs)

    with pytest.raises(IRTypeError, match=f"{name} does not accept dtype {dtype}"):
        fj.jit(one_op, backend="interpret")(*operands)


def test_iota_rejects_bool() -> None:
    with pytest.raises(IRTypeError, match="iota: dtype must be numeric"):
        bind(P.iota, shape=(3,), dimension=0, dtype=DType.bool)


@pytest.mark.parametrize(
    ("prim", "operands", "attrs", "message"),
    [
        (P.add, ((2, 3), (3, 2)), {}, r"add: operand shapes \(2, 3\) and \(3, 2\) differ"),
        (P.reduce_sum, ((2, 3),), {"axes": (2,)}, r"reduce_sum: axes=\(2,\) are not distinct axes"),
        (P.reduce_max, ((2, 0),), {"axes": (1,)}, r"reduce_max: zero-size axis in \(2, 0\) has no identity"),
        (P.reshape, ((2, 3),), {"shape": (4,)}, r"reshape: cannot reshape \(2, 3\) \(6 elements\) to \(4,\)"),
        (P.transpose, ((2, 3),), {"perm": (0, 0)}, r"transpose: perm=\(0, 0\) is not a permutation"),
        (P.dot_general, ((2, 3), (4, 5)), {"contract": ((1,), (0,)), "batch": ((), ())},
         r"dot_general: shapes \(2, 3\) and \(4, 5\) disagree on paired axes 1 and 0"),
        (P.broadcast_in_dim, ((3,),), {"shape": (2, 4), "dims": (1,)},
         r"broadcast_in_dim: cannot broadcast shape \(3,\) to \(2, 4\)"),
    ],  # fmt: skip
    ids=["add", "reduce_sum", "reduce_max", "reshape", "transpose", "dot_general", "broadcast_in_dim"],
)
def test_primitive_type_errors_name_the_op_shapes_and_source_line(prim, operands, attrs, message) -> None:
    xs = [np.ones(s, np.float32) for s in operands]
    with pytest.raises(IRTypeError, match=message) as info:
        bind(prim, *xs, **attrs)
    assert "test_primitives.py:" in str(info.value), "the error points at the calling line"
