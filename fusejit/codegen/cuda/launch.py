"""Launching the generated CUDA kernels with little Python per call.

A call of a CUDA executable runs the same launches every time: its kernels, grids and
scratch buffers are fixed by its call plan, and only the addresses of the arguments and
results change. So the executable's first call goes through Numba's dispatcher (which
compiles each kernel and checks its arguments' types) while a ``Recorder`` notes every
launch and GEMM (``launch`` and ``fusejit.codegen.cuda.gemm.gemm`` report to it); the
recorded calls then become a ``Replay``: for each launch, the kernel's driver handle, its
grid and one packed array of its parameters, in which later calls only overwrite the
addresses that changed before handing it to ``cuLaunchKernel``. That takes the Python
work of a launch from Numba's per-launch typing and argument marshalling down to a few
stores and one driver call.

The packed parameters follow Numba's kernel ABI: an array argument is passed as its data
model's fields (meminfo, parent, item count, item size, data pointer, shape, strides in
bytes), every field 8 bytes, and an integer as itself. A kernel whose signature holds
anything else (a 32-bit integer, a float, a record) is not replayed; its executable keeps
calling through the dispatcher. ``FUSEJIT_CUDA_REPLAY=0`` turns replay off everywhere.

Nothing here imports ``numba.cuda`` or the CUDA driver bindings before a launch needs
them, and the simulator never replays (its kernels are Python functions).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_recording = threading.local()  # .steps: the active Recorder's list, on this thread only
_attached = threading.local()  # .context: the driver's context is current on this thread


@dataclass(frozen=True, slots=True)
class KernelLaunch:
    """One recorded launch: a ``@cuda.jit`` dispatcher, its grid and its arguments."""

    kernel: Any
    griddim: Any
    blockdim: Any
    args: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class GemmCall:
    """One recorded cuBLAS GEMM (``gemm.cublas_gemm``'s arguments)."""

    args: tuple[Any, ...]


def launch(kernel: Any, config: tuple[Any, Any], *args: Any) -> None:
    """``kernel[config](*args)``, as a generated launcher writes it, noted by the active
    recorder of this thread, if any."""
    griddim, blockdim = config
    kernel[griddim, blockdim](*args)
    steps = getattr(_recording, "steps", None)
    if steps is not None:
        steps.append(KernelLaunch(kernel, griddim, blockdim, args))


def record(step: GemmCall) -> None:
    """Notes a GEMM on the active recorder of this thread, if any."""
    steps = getattr(_recording, "steps", None)
    if steps is not None:
        steps.append(step)


class Recorder:
    """``with Recorder() as steps:`` collects the launches and GEMMs this thread makes."""

    def __enter__(self) -> list[KernelLaunch | GemmCall]:
        self.outer = getattr(_recording, "steps", None)
        _recording.steps = self.steps = []
        return self.steps

    def __exit__(self, *exc: object) -> None:
        _recording.steps = self.outer


# ---------------------------------------------------------------------------------------
# Replay


class NotReplayable(Exception):
    """Why a recorded call cannot be replayed (its executable keeps the dispatcher)."""


def device_pointer(array: Any) -> int:
    """The address of a Numba device array's first element (0 for an empty one)."""
    return array.device_ctypes_pointer.value or 0


def _dims(d: Any) -> tuple[int, int, int]:
    d = (d,) if isinstance(d, int | np.integer) else tuple(d)
    return tuple(int(x) for x in d) + (1,) * (3 - len(d))  # type: ignore[return-value]


class _PackedLaunch:
    """A kernel launch with its parameters packed: ``values`` holds every 8-byte field,
    ``pointers`` their addresses (what ``cuLaunchKernel`` reads), ``patches`` the
    (field, slot) pairs of the addresses a call changes, ``head`` the driver call's
    arguments before them (handle, grid, block, shared memory, stream)."""

    __slots__ = ("name", "head", "values", "pointers", "address", "patches")

    def __init__(self, step: KernelLaunch, slot_of: Callable[[Any], int | None]) -> None:
        compiled = _compiled(step.kernel, step.args)
        fields: list[int] = []
        patches: list[tuple[int, int]] = []
        for ty, arg in zip(compiled.argument_types, step.args, strict=True):
            kind = type(ty).__name__  # Numba's type classes (numba.core's or numba.cuda's)
            if kind == "Array":
                slot = slot_of(arg)
                if not arg.is_c_contiguous():
                    raise NotReplayable("an array argument is not C-contiguous")
                if slot is not None:
                    patches.append((len(fields) + 4, slot))
                fields += [0, 0, int(arg.size), arg.dtype.itemsize, device_pointer(arg), *arg.shape, *arg.strides]
            elif kind == "Integer" and ty.bitwidth == 64:
                fields.append(int(arg))
            else:
                raise NotReplayable(f"a kernel parameter of type {ty}")
        self.name = step.kernel.py_func.__name__
        handle = compiled._codelibrary.get_cufunc().handle
        self.head = (handle, *_dims(step.griddim), *_dims(step.blockdim), 0, 0)  # no dynamic shared memory; stream 0
        self.values = np.array(fields, dtype=np.int64)
        base = self.values.ctypes.data
        self.pointers = np.arange(base, base + 8 * len(fields), 8, dtype=np.uint64)
        self.address = int(self.pointers.ctypes.data)
        self.patches = tuple(patches)


def _compiled(kernel: Any, args: tuple[Any, ...]) -> Any:
    """The dispatcher's compiled kernel for ``args``' types (Numba's ``_Kernel``)."""
    overloads = kernel.overloads
    if len(overloads) == 1:
        return next(iter(overloads.values()))
    key = tuple(kernel.typeof_pyval(a) for a in args)
    if key not in overloads:
        raise NotReplayable(f"no compiled kernel of {kernel.__name__} for {key}")
    return overloads[key]


class Replay:
    """A recorded call's launches and GEMMs, run again with new addresses.

    ``slots`` are the arrays that change from call to call (arguments and results), in the
    order a caller passes their addresses to ``__call__``; every other array a step reads
    (the arena, constants) keeps its address for the executable's life, which holds it.
    Raises ``NotReplayable`` when a step cannot be packed."""

    def __init__(self, steps: Sequence[KernelLaunch | GemmCall], slots: Sequence[Any]) -> None:
        from cuda.bindings import driver

        from fusejit.codegen.cuda import gemm

        ids = {id(a): k for k, a in enumerate(slots)}
        slot_of = lambda a: ids.get(id(a))  # noqa: E731
        self._launch = driver.cuLaunchKernel
        self._ok = driver.CUresult.CUDA_SUCCESS
        self._steps: list[Any] = []
        for step in steps:
            if isinstance(step, KernelLaunch):
                self._steps.append(_PackedLaunch(step, slot_of))
            else:
                self._steps.append(gemm.PackedGemm(step.args, slot_of))
        self.launches = sum(isinstance(s, _PackedLaunch) for s in self._steps)
        # Times the steps when set (bench/bench_gpu.py): ``start(position, name)`` before
        # each step and ``stop()`` after it, on the host, around asynchronous work.
        self.timer: Any = None

    def __call__(self, addresses: Sequence[int]) -> None:
        """Runs every step in order on the default stream, the changing arrays at
        ``addresses`` (one per slot)."""
        if not getattr(_attached, "context", False):  # the driver launches in the current context
            from numba import cuda

            cuda.current_context()
            _attached.context = True
        launch, ok, timer = self._launch, self._ok, self.timer
        for k, step in enumerate(self._steps):
            if timer is not None:
                timer.start(k, step.name)
            if type(step) is _PackedLaunch:
                values = step.values
                for field, slot in step.patches:
                    values[field] = addresses[slot]
                (err,) = launch(*step.head, step.address, 0)
                if err != ok:
                    raise RuntimeError(f"cuLaunchKernel of {step.name} failed: {err!r}")
            else:
                step(addresses)
            if timer is not None:
                timer.stop()
