"""Devices and device arrays: where the CUDA backend keeps inputs and results.

``DeviceArray`` is an array in GPU memory (a flat Numba CUDA device array and a shape).
The CUDA backend returns one per result, and accepts one as an argument without a copy,
so a training loop keeps its parameters and optimizer state on the GPU between steps.
``np.asarray(x)``, ``x.numpy()``, ``float(x)`` copy back to the host;
``__cuda_array_interface__`` (and, with CuPy installed, ``__dlpack__``) shares the memory
with other GPU libraries (PyTorch, CuPy) without a copy.

``numba.cuda`` is imported when something here is used, never by ``import fusejit``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class CudaUnavailableError(RuntimeError):
    """The CUDA backend was asked for where no GPU (or no numba-cuda) is usable."""


_usable: list[Any] = []  # numba.cuda, once it worked (every call asks)


def cuda_module() -> Any:
    """``numba.cuda``, once it is known to work: raises ``CudaUnavailableError`` naming
    what is missing (numba-cuda, a driver or a GPU) unless the simulator is enabled."""
    if _usable:
        return _usable[0]
    try:
        from numba import cuda
    except ImportError as e:  # pragma: no cover - numba always ships a cuda module
        raise CudaUnavailableError(f"the CUDA backend needs numba-cuda (pip install 'fusejit[cuda]'): {e}") from e
    if not cuda.is_available():
        raise CudaUnavailableError(
            "the CUDA backend needs an NVIDIA GPU and its driver, and none is usable here "
            f"({_why_unavailable(cuda)}); set NUMBA_ENABLE_CUDASIM=1 to run on Numba's CUDA "
            "simulator instead (slow, for testing), or use backend='cpu'")
    _usable.append(cuda)
    return cuda


def _why_unavailable(cuda: Any) -> str:
    try:
        cuda.detect()
    except Exception as e:  # the driver's own message
        return str(e).splitlines()[0]
    return "numba.cuda.is_available() is False"


class DeviceArray:
    """An array in GPU memory (``shape``, ``dtype``: a NumPy dtype).

    Raises ``RuntimeError`` when used after being donated to a call (``donate_argnums``).
    """

    __slots__ = ("_buffer", "shape", "dtype", "__weakref__")
    __array_priority__ = 100

    def __init__(self, buffer: Any, shape: tuple[int, ...], dtype: Any) -> None:
        self._buffer = buffer  # a flat, C-ordered Numba device array
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)

    @property
    def buffer(self) -> Any:
        """The flat Numba device array holding the elements."""
        if self._buffer is None:
            raise RuntimeError("this DeviceArray was donated to a jitted call and its memory reused")
        return self._buffer

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def device(self) -> str:
        return "cuda"

    def numpy(self) -> np.ndarray:
        """A host copy (``numpy.ndarray``)."""
        return self.buffer.copy_to_host().reshape(self.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        return self.buffer.reshape(self.shape).__cuda_array_interface__

    def __dlpack__(self, stream: Any = None) -> Any:
        try:
            import cupy
        except ImportError as e:
            raise TypeError("DLPack export of a DeviceArray needs CuPy; use __cuda_array_interface__") from e
        return cupy.asarray(self).__dlpack__(stream=stream)

    def __dlpack_device__(self) -> tuple[int, int]:
        return (2, int(cuda_module().get_current_device().id))  # kDLCUDA

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d DeviceArray")
        return self.shape[0]

    def __bool__(self) -> bool:
        return bool(self.numpy())

    def __float__(self) -> float:
        return float(self.numpy())

    def __int__(self) -> int:
        return int(self.numpy())

    def item(self) -> Any:
        return self.numpy().item()

    def __getitem__(self, index: Any) -> np.ndarray:
        return self.numpy()[index]

    def __repr__(self) -> str:
        return f"DeviceArray({self.dtype}{list(self.shape)}, cuda)"

    def _donate(self) -> Any:
        """The buffer, which a call will overwrite: this array is unusable afterwards."""
        buf = self.buffer
        self._buffer = None
        return buf


def devices() -> list[str]:
    """The devices fusejit can run on: ``["cpu"]``, plus ``"cuda"`` when a GPU (or the
    CUDA simulator) is usable."""
    try:
        cuda_module()
    except CudaUnavailableError:
        return ["cpu"]
    return ["cpu", "cuda"]


def to_device(a: Any, dtype: Any = None) -> DeviceArray:
    """``a`` (array-like) copied to the GPU, C-ordered, in ``dtype`` if given; a
    ``DeviceArray`` already there is returned as it is."""
    if isinstance(a, DeviceArray):
        return a
    host = np.ascontiguousarray(a, dtype=dtype)
    return DeviceArray(cuda_module().to_device(host.reshape(-1)), host.shape, host.dtype)


def empty(shape: tuple[int, ...], dtype: Any) -> DeviceArray:
    """A new, uninitialized ``DeviceArray``."""
    return DeviceArray(cuda_module().device_array(int(np.prod(shape, dtype=np.int64)), dtype), shape, dtype)


def copy(a: DeviceArray) -> DeviceArray:
    """A new ``DeviceArray`` holding ``a``'s elements (copied on the device)."""
    out = empty(a.shape, a.dtype)
    if a.size:
        out.buffer.copy_to_device(a.buffer)
    return out


class DeviceArrays:
    """How the control-flow drivers (``fusejit.runtime.control``) make and index arrays on
    the CUDA backend: ``DeviceArray``s, a scan's rows as views of its stacked buffer."""

    @staticmethod
    def inputs(args: Any) -> list[DeviceArray]:
        return [to_device(a) for a in args]

    empty = staticmethod(empty)

    @staticmethod
    def row(x: DeviceArray, i: int) -> DeviceArray:
        n = int(np.prod(x.shape[1:], dtype=np.int64))
        return DeviceArray(x.buffer[i * n:(i + 1) * n], x.shape[1:], x.dtype)

    @staticmethod
    def set_row(y: DeviceArray, i: int, value: DeviceArray) -> None:
        n = int(np.prod(y.shape[1:], dtype=np.int64))
        if n:
            y.buffer[i * n:(i + 1) * n].copy_to_device(value.buffer)

    @staticmethod
    def fresh(out: DeviceArray, args: Any) -> DeviceArray:
        return copy(out) if any(out.buffer is a.buffer for a in args) else out
