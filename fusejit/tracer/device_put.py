"""``fj.device_put``: arrays (or pytrees of them) moved between the host and the GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from fusejit.runtime.devices import DeviceArray, cuda_module
from fusejit.tracer.pytree import tree_map


def device_put(x: Any, device: str = "cuda") -> Any:
    """``x`` (an array or a pytree of arrays) on ``device``: ``"cuda"`` copies NumPy arrays
    to the GPU as ``DeviceArray``s (left as they are if already there); ``"cpu"`` copies
    ``DeviceArray``s back as NumPy arrays. Raises ``ValueError`` for another device and
    ``CudaUnavailableError`` when no GPU is usable."""
    if device == "cpu":
        return tree_map(lambda a: a.numpy() if isinstance(a, DeviceArray) else np.asarray(a), x)
    if device != "cuda":
        raise ValueError(f"unknown device {device!r} (known: 'cpu', 'cuda')")
    cuda = cuda_module()

    def put(a: Any) -> DeviceArray:
        if isinstance(a, DeviceArray):
            return a
        host = np.ascontiguousarray(a)
        return DeviceArray(cuda.to_device(host.reshape(-1)), host.shape, host.dtype)

    return tree_map(put, x)
