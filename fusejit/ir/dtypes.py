"""Element types of the IR and NumPy 2 (NEP 50) type promotion.

The IR knows five element types. Python scalars are *weak*: they take the dtype of the
array they meet (``float32_array * 2.0`` stays float32), while NumPy scalars such as
``np.float64(2.0)`` are strong, exactly as in NumPy 2.
"""

from __future__ import annotations

import enum

import numpy as np


class DType(enum.Enum):
    """An element type; the value is the short name used in IR text."""

    bool = "bool"
    i32 = "i32"
    i64 = "i64"
    f32 = "f32"
    f64 = "f64"

    @property
    def np(self) -> np.dtype:
        return _TO_NUMPY[self]

    @property
    def is_float(self) -> bool:
        return self in (DType.f32, DType.f64)

    @property
    def is_int(self) -> bool:
        return self in (DType.i32, DType.i64)

    @property
    def is_bool(self) -> bool:
        return self is DType.bool

    @property
    def itemsize(self) -> int:
        return self.np.itemsize

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"DType.{self.name}"


_TO_NUMPY = {
    DType.bool: np.dtype(np.bool_),
    DType.i32: np.dtype(np.int32),
    DType.i64: np.dtype(np.int64),
    DType.f32: np.dtype(np.float32),
    DType.f64: np.dtype(np.float64),
}
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items()}


def from_numpy(dtype: object) -> DType:
    """The IR dtype of a NumPy dtype (or anything ``np.dtype`` accepts)."""
    if isinstance(dtype, DType):
        return dtype
    try:
        d = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as e:
        raise TypeError(f"{dtype!r} is not a dtype") from e
    if d in _FROM_NUMPY:
        return _FROM_NUMPY[d]
    raise TypeError(
        f"dtype {d} is not supported by fusejit (supported: bool, int32, int64, float32, float64)"
    )


def promote(*dtypes: DType) -> DType:
    """NumPy's result type of strongly typed operands."""
    return from_numpy(np.result_type(*(d.np for d in dtypes)))


def weak_scalar_dtype(value: bool | int | float) -> DType:
    """The dtype a Python scalar has when no array gives it one (NumPy's defaults)."""
    if isinstance(value, bool):
        return DType.bool
    if isinstance(value, int):
        return DType.i64
    return DType.f64


def promote_weak(strong: DType, weak: DType) -> DType:
    """NEP 50: the dtype of an array of dtype ``strong`` combined with a weak scalar.

    The scalar only matters when it is of a higher *kind* (bool < int < float): then the
    result is the default dtype of that kind, except that a float scalar keeps a float
    array's precision.
    """
    if _kind(weak) <= _kind(strong):
        return strong
    return weak


def _kind(d: DType) -> int:
    return 0 if d.is_bool else 1 if d.is_int else 2
