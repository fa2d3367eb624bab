"""Donated buffers (``jit(donate_argnums=...)``): which arrays a call consumed.

A call may write its results over a donated argument's buffer; the argument is then
*consumed*: passing it again raises ``DonationError`` naming the argument, instead of
silently reading what the call wrote there. Consumed arrays are tracked by id until they
are garbage collected.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np


class DonationError(ValueError):
    """A donated array was passed again after a call consumed its buffer."""


# Arrays whose buffers a call consumed (donated and not returned), by id; entries leave
# when the array is garbage collected.
consumed: dict[int, str] = {}


def mark_consumed(arr: np.ndarray, message: str) -> None:
    key = id(arr)
    try:
        weakref.finalize(arr, consumed.pop, key, None)
    except TypeError:  # pragma: no cover - every ndarray supports weak references
        return
    consumed[key] = message


def check_not_consumed(arrays: Sequence[Any]) -> None:
    if consumed:
        for a in arrays:
            msg = consumed.get(id(a))
            if msg is not None:
                raise DonationError(msg)
