"""Array element access for generated CPU kernels: ``load(a, i)`` and ``store(a, i, v)``.

A kernel reads and writes flat C-contiguous arrays at indices that are never negative (the
code generator computes them). Spelled ``a[i]``, each access costs Numba about 11-12 ms of
compilation (typing the subscript through its array overloads, then lowering it with the
negative-index wraparound and the bounds logic it leaves out again): a row kernel of a
cross-entropy holds some 40 of them. These two intrinsics type in one step and lower to
the address arithmetic and the load or store alone, as Numba's own subscript does for an
unsigned index: a pointer offset from the array's data (``inbounds``: the index is inside
the array). Values are packed and unpacked as Numba stores them (a boolean is a byte in
memory), and ``store`` casts its value to the array's dtype as an assignment would.

An index may arrive as a float: inside a ``prange`` body Numba types part of a parallel
kernel's index arithmetic as float64 (observed in a padded max-pool gradient, where it
failed to type). It is converted to an unsigned integer as the subscripts' ``np.uint64``
did, which is exact for every index below 2**53.

Measured on W5's generated kernels, the subscript and the intrinsic forms compiled
alternately in one warm process (one core, CPU seconds): its cross-entropy row kernel
0.955 -> 0.787 s, its loss row kernel 0.645 -> 0.417 s, its ten kernels 4.73 -> 4.26 s;
the machine code is the same loads and stores (a softmax-like row kernel's outputs were
bit-identical).

Numba's on-disk cache of a kernel does not notice when this file changes: the generated
source prints ``SOURCE_HASH`` in its header.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from numba.core import types
from numba.extending import intrinsic

#: A hash of this file for the generated source text (see the module docstring).
SOURCE_HASH = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _element_pointer(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    array_type, index_type = sig.args[0], sig.args[1]
    index = args[1]
    if isinstance(index_type, types.Float):  # see the module docstring: exact below 2**53
        index = context.cast(builder, index, index_type, types.uint64)
    data = context.make_array(array_type)(context, builder, args[0]).data
    return builder.gep(data, [index], inbounds=True)


def _flat_array(array: Any, index: Any) -> bool:
    return isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer | types.Float)


@intrinsic
def load(typingctx: Any, array: Any, index: Any) -> Any:
    """``array[index]`` of a 1-d array at a non-negative index (an integer, or an integral
    float)."""
    if not _flat_array(array, index):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        ptr = _element_pointer(context, builder, sig, args)
        return context.unpack_value(builder, sig.args[0].dtype, ptr)

    return array.dtype(array, index), codegen


@intrinsic
def store(typingctx: Any, array: Any, index: Any, value: Any) -> Any:
    """``array[index] = value`` (cast to the array's dtype) of a 1-d array at a
    non-negative index (an integer, or an integral float)."""
    if not (_flat_array(array, index) and isinstance(value, types.Number | types.Boolean)):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        array_type = sig.args[0]
        ptr = _element_pointer(context, builder, sig, args)
        item = context.cast(builder, args[2], sig.args[2], array_type.dtype)
        context.pack_value(builder, array_type.dtype, item, ptr)
        return context.get_dummy_value()

    return types.none(array, index, value), codegen
