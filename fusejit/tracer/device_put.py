"""``fj.device_put``: arrays (or pytrees of them) moved between the host and the GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from fusejit.runtime.devices import DeviceArray, to_device
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
    return tree_map(to_device, x)
