"""The type of every IR value: an element type and a static shape."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fusejit.ir.dtypes import DType


@dataclass(frozen=True, slots=True)
class TensorType:
    """``f32[512,64]``: a dense array type. Shapes are static; ``()`` is a scalar."""

    dtype: DType
    shape: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> TensorType:
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"
