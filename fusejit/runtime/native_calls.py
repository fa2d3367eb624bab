"""Calling compiled CPU kernels from Python through shared trampolines.

Numba gives every compiled function a CPython wrapper: code that unboxes each argument
from a Python object (an ndarray: adapting it into Numba's array structure, checking it),
calls the function and boxes the result. For a generated kernel that wrapper is a large
part of its compilation: measured on W10's (GRU step) fifteen kernels compiled one after
the other in one process, 2.35 s with wrappers and 1.70 s without (-27%); a kernel's
wrapper grows by about 3 ms of compilation per array argument. The kernel's own machine
code does not change.

So kernels are compiled without the wrapper (``kernel_jit``: ``no_cpython_wrapper``) and
called through a **trampoline**: one small function, compiled once per installation for
each number of array arguments (Numba's disk cache beside this file), that takes the
kernel's native address and its arguments, unboxes them, and calls the address with
Numba's calling convention (the same call one compiled function makes to another, status
and exceptions included). The trampoline does not depend on the kernel or on the arrays'
dtypes: its arrays are ``RawArray``, an ndarray passed through as Numba's array structure
whatever its element type (every 1-d C-contiguous array has the same structure; the kernel
was compiled for the dtypes the runtime passes, as with the wrapper, which checked only the
item size). A kernel's sizes travel as one int64 array, so the trampolines needed are one
per number of arrays, plus one per number for chunked kernels (three more ints: chunk,
chunks, worker; that variant releases the GIL, as chunks run on several threads).

A call through a trampoline costs what a call of the kernel's own wrapper did (1.18-1.22
us for a one-kernel ``fj.jit`` call on 16 floats, both ways, min of 15x20,000 calls): the
argument tuple costs a little, and the arrays are borrowed, not given NRT meminfos.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numba
import numpy as np
from llvmlite import ir as llvmir
from numba.core import cgutils, types
from numba.core.datamodel import models, register_default
from numba.extending import NativeValue, intrinsic, unbox
from numba.np.numpy_support import from_dtype

from fusejit.runtime.cache import compile_dispatchers


class RawArray(types.Array):
    """A 1-d C-contiguous ndarray of any dtype, unboxed to Numba's array structure and
    handed on to a kernel compiled for its real dtype (the structure is the same)."""

    def __init__(self) -> None:
        super().__init__(types.uint8, 1, "C", name="raw_array")

    @property
    def key(self) -> str:
        return "raw_array"


register_default(RawArray)(models.ArrayModel)
RAW_ARRAY = RawArray()


@unbox(RawArray)
def _unbox_raw_array(typ: Any, obj: Any, c: Any) -> NativeValue:
    """The array structure of the ndarray ``obj``, borrowed: no NRT meminfo (a null one,
    which the NRT's reference counting skips), where Numba's ndarray unboxing allocates one
    per argument and call and frees it after. A kernel never keeps an argument beyond the
    call, and the caller holds the arrays until it returns."""
    array = c.context.make_array(typ)(c.context, c.builder)
    pointer = array._getpointer()
    # Numba's helper for this (``numba_adapt_ndarray``), which its pyapi only lets a
    # context without the NRT call; like the NRT's adaptor it trusts ``obj`` to have the
    # structure's number of dimensions (one): the runtime passes flat arrays only.
    adapt = c.pyapi._get_function(llvmir.FunctionType(llvmir.IntType(32), [c.pyapi.pyobj, c.pyapi.voidptr]),
                                  name="numba_adapt_ndarray")
    error = c.builder.call(adapt, (obj, c.builder.bitcast(pointer, c.pyapi.voidptr)))
    failed = cgutils.is_not_null(c.builder, error)
    with c.builder.if_then(failed, likely=False):
        c.pyapi.err_set_string("PyExc_TypeError", "a fusejit kernel argument is not a NumPy array")
    return NativeValue(c.builder.load(pointer), is_error=failed)


@intrinsic
def _call_native(typingctx: Any, address: Any, args: Any) -> Any:
    """Calls the compiled function at ``address`` (an int) on the members of the tuple
    ``args``, with Numba's calling convention; an error status it returns is propagated."""
    if not isinstance(address, types.Integer) or not isinstance(args, types.BaseTuple):
        return None

    def codegen(context: Any, builder: Any, sig: Any, llargs: Any) -> Any:
        argtys = list(sig.args[1].types)
        values = cgutils.unpack_tuple(builder, llargs[1], len(argtys))
        fnty = context.call_conv.get_function_type(types.none, argtys)
        callee = builder.inttoptr(llargs[0], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, callee, types.none, argtys, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(address, args), codegen


@numba.njit(cache=True, no_cfunc_wrapper=True)
def trampoline(address, args):  # noqa: ANN001, ANN201 - Numba-typed
    """``kernel(*args)`` for the kernel compiled at ``address``."""
    _call_native(address, args)


@numba.njit(cache=True, no_cfunc_wrapper=True, nogil=True)
def trampoline_nogil(address, args):  # noqa: ANN001, ANN201 - Numba-typed
    """``trampoline`` without the GIL (chunked kernels run on several threads at once)."""
    _call_native(address, args)


@intrinsic
def _take_chunk(typingctx: Any, counter: Any) -> Any:
    """The next chunk of a call: ``counter``'s int64 (a ``RawArray`` shared by the call's
    threads) incremented atomically, its value before."""
    if not isinstance(counter, RawArray):
        return None

    def codegen(context: Any, builder: Any, sig: Any, llargs: Any) -> Any:
        data = context.make_array(sig.args[0])(context, builder, llargs[0]).data
        int64 = llvmir.IntType(64)
        return builder.atomic_rmw("add", builder.bitcast(data, int64.as_pointer()), int64(1), "monotonic")

    return types.int64(counter), codegen


@numba.njit(cache=True, no_cfunc_wrapper=True, nogil=True)
def trampoline_chunks(address, args, counter, chunks, worker):  # noqa: ANN001, ANN201 - Numba-typed
    """Runs chunks of the chunked kernel at ``address`` (``kernel(*args, chunk, chunks,
    worker)``) on this thread until the call's ``chunks`` are taken, each taken from the
    shared ``counter``: the threads of a call share its chunks without the GIL."""
    chunk = _take_chunk(counter)
    while chunk < chunks:
        _call_native(address, args + (chunk, chunks, worker))
        chunk = _take_chunk(counter)


class NativeKernel:
    """A compiled kernel, callable from Python with its own arguments: ``kernel(*args)``
    (``TypeError`` for another number of them). The generated runner calls
    ``trampoline(address, args)`` itself, with the right number: the trampoline trusts it
    (Numba's unboxing of the tuple does not check its length)."""

    __slots__ = ("address", "trampoline", "arity", "overload")

    def __init__(self, address: int, trampoline: Any, arity: int, overload: Any) -> None:
        self.address = address
        self.trampoline = trampoline
        self.arity = arity
        self.overload = overload  # keeps the kernel's machine code alive

    def __call__(self, *args: Any) -> None:
        if len(args) != self.arity:
            raise TypeError(f"the kernel takes {self.arity} arguments, got {len(args)}")
        self.trampoline(self.address, args)


class ChunkedKernel(NativeKernel):
    """A chunked kernel (``kernel(*args, chunk, chunks, worker)`` runs one chunk), which
    ``fusejit.runtime.chunks`` runs on several threads through ``run_chunks``."""

    __slots__ = ("chunk_loop",)

    def __init__(self, address: int, trampoline: Any, arity: int, overload: Any, chunk_loop: Any) -> None:
        super().__init__(address, trampoline, arity, overload)
        self.chunk_loop = chunk_loop

    def run_chunks(self, args: tuple[Any, ...], counter: np.ndarray, chunks: int, worker: int) -> None:
        """Runs chunks of ``kernel(*args, ...)`` taken from ``counter`` (a 1-element int64
        array the call's threads share, 0 at the call's start) until ``chunks`` are
        taken, as thread ``worker``, without the GIL (``trampoline_chunks``)."""
        if len(args) != self.arity - 3:
            raise TypeError(f"the kernel takes {self.arity - 3} arguments besides its chunk, got {len(args)}")
        self.chunk_loop(self.address, args, counter, chunks, worker)


def kernel_signature(dtypes: Sequence[Any], chunked: bool) -> tuple[Any, ...]:
    """The Numba signature of a generated CPU kernel (``cpu.printer``'s ``function``): a
    flat C-contiguous array per dtype of ``dtypes`` (NumPy dtypes or their names), the
    int64 sizes array, and for a ``chunked`` kernel its chunk, chunks and worker ints."""
    arrays = tuple(types.Array(from_dtype(np.dtype(d)), 1, "C") for d in dtypes)
    return arrays + (types.Array(types.int64, 1, "C"),) + (types.int64,) * (3 * chunked)


def bind(dispatcher: Any, signature: tuple[Any, ...], chunked: bool) -> NativeKernel:
    """The kernel ``dispatcher`` compiled for ``signature`` (``kernel_signature``), with
    the trampoline it needs (loaded from Numba's disk cache, or compiled once)."""
    overload = dispatcher.overloads[signature]
    address = overload.library.get_pointer_to_function(overload.fndesc.llvm_func_name)
    if not address:  # pragma: no cover - Numba always emits the function
        raise RuntimeError(f"no machine code for kernel {dispatcher.py_func.__qualname__}")
    return bind_address(address, overload, signature, chunked)


def bind_address(address: int, owner: Any, signature: tuple[Any, ...], chunked: bool) -> NativeKernel:
    """The kernel at ``address`` (a function with Numba's calling convention for
    ``signature``, whose machine code ``owner`` keeps alive), with its trampoline."""
    arrays = sum(isinstance(t, types.Array) for t in signature)
    which, tsig = _trampoline(arrays, len(signature) - arrays, chunked)
    compile_dispatchers(which, tsig)
    if not chunked:
        return NativeKernel(address, which.overloads[tsig].entry_point, len(signature), owner)
    loop, lsig = _chunk_loop(arrays)
    compile_dispatchers(loop, lsig)
    return ChunkedKernel(address, which.overloads[tsig].entry_point, len(signature), owner,
                         loop.overloads[lsig].entry_point)


def _trampoline(arrays: int, ints: int, chunked: bool) -> tuple[Any, tuple[Any, ...]]:
    """The trampoline for kernels of ``arrays`` arrays and ``ints`` ints, and its signature."""
    return (trampoline_nogil if chunked else trampoline,
            (types.intp, types.Tuple((RAW_ARRAY,) * arrays + (types.int64,) * ints)))


def _chunk_loop(arrays: int) -> tuple[Any, tuple[Any, ...]]:
    """``trampoline_chunks`` for chunked kernels of ``arrays`` arrays, and its signature."""
    return trampoline_chunks, (types.intp, types.Tuple((RAW_ARRAY,) * arrays), RAW_ARRAY, types.int64, types.int64)


def warm(max_arrays: int = 24) -> int:
    """Compiles (or loads) the trampolines of kernels of up to ``max_arrays`` arrays, plain
    and chunked (one chunk, and the threads' loop over chunks), into Numba's disk cache; ``make`` does it once at installation, so that a
    first call compiles only its kernels. Returns how many were compiled here."""
    from fusejit.runtime.cache import COUNTERS

    before = COUNTERS.numba_compiles
    for arrays in range(1, max_arrays + 1):
        for chunked in (False, True):
            compile_dispatchers(*_trampoline(arrays, 3 * chunked, chunked))
        compile_dispatchers(*_chunk_loop(arrays))
    return COUNTERS.numba_compiles - before


if __name__ == "__main__":
    import time

    from fusejit.runtime.llvm_kernels import warm_math_library

    start = time.perf_counter()
    count = warm()
    print(f"fusejit: {count} kernel trampolines compiled in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    count = warm_math_library()
    print(f"fusejit: {count} math-library functions compiled in {time.perf_counter() - start:.1f} s")
