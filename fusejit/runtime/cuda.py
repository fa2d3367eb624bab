"""The CUDA executable: a function's kernels as Numba CUDA launches on the GPU.

The same call plan as the CPU's (``fusejit.runtime.plan``, lowered for the ``CUDA``
target): one arena of device memory allocated once for every intermediate value and
every kernel's scratch, constants copied to the device once, results allocated on the
device per call. Each kernel's module (``fusejit.codegen.cuda.printer``) holds a
launcher, a Python function with the kernel's parameters that launches its phases on the
default stream, so kernels run in program order without host synchronization; the host
waits only when a result is copied back.

Host ops (``fusejit.runtime.host_ops``: prints, callbacks, collectives, LAPACK) run
between the launches on copies of their operands on the host.

Arguments may be NumPy arrays (copied to the device per call) or ``DeviceArray``s (used in
place); results are ``DeviceArray``s. A donated ``DeviceArray`` argument's buffer may hold
a result afterwards and the argument becomes unusable (as in JAX). Calls hold the
executable's lock (the arena is shared). A result array the caller has dropped is
reused by a later call (the last two of each result are kept). Numba compiles each launch's
kernel at its first launch, so the first call compiles everything; it also records the
launches, and later calls replay them with the new arguments' addresses, bypassing Numba's
dispatcher (``fusejit.codegen.cuda.launch``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from fusejit import config
from fusejit.codegen.cuda import simulated
from fusejit.codegen.cuda.launch import NotReplayable, Recorder, Replay, device_pointer
from fusejit.codegen.target import CUDA
from fusejit.ir.core import Function
from fusejit.ir.transforms.fusion import FusedFunction
from fusejit.runtime.cache import load_module, module_name
from fusejit.runtime.cpu import kernel_info
from fusejit.runtime.devices import DeviceArray, copy, cuda_module, empty, to_device
from fusejit.runtime.host_ops import host_runner
from fusejit.runtime.plan import plan_call
from fusejit.runtime.timings import CompileTimes, KernelOrigin, KernelTime


class CudaExecutable:
    """Runs a function's kernels on the GPU (see the module docstring)."""

    def __init__(self, fn: Function, fused: FusedFunction, donate_argnums: Sequence[int] = ()) -> None:
        cuda = cuda_module()
        from numba import config as numba_config

        # Small grids are deliberate here (a 1-thread combine, a 16-element kernel).
        numba_config.CUDA_LOW_OCCUPANCY_WARNINGS = False
        self.function = fn
        self.fused = fused
        self.donated = tuple(sorted(set(donate_argnums)))
        self.compile_times = CompileTimes()
        start = time.perf_counter()
        call = plan_call(fn, fused, self.donated, target=CUDA)
        self.call_plan = call
        self._hosts = [(hs, host_runner(hs.call)) for hs in call.host_steps]
        sources = [CUDA.print_module(sp.lowered.kernel) for sp in call.steps]
        self.compile_times.lower = time.perf_counter() - start
        self._launchers = []
        times = []
        for sp, source in zip(call.steps, sources, strict=True):
            t0 = time.perf_counter()
            self._launchers.append(getattr(load_module(source), sp.lowered.kernel.name))
            times.append(KernelTime(sp.lowered.display_name, time.perf_counter() - t0, KernelOrigin.COMPILED))
        self.compile_times.kernels = times
        arena = cuda.device_array(max(call.arena.arena_bytes, 1), dtype=np.uint8)
        dims = call.dims
        self._fixed = {("buf", key): arena[dims[slot]:dims[slot + 1]].view(call.buf_dtype[key].np)
                       for key, slot in call.buf_slot.items()}
        self._fixed.update((("const", k), cuda.to_device(c)) for k, c in enumerate(call.consts))
        self._args = [(sp.refs, [int(dims[i]) for i in sp.int_slots]) for sp in call.steps]
        self._lock = threading.RLock()
        self._pools: list[list[DeviceArray]] = [[] for _ in call.out_specs]
        # The launches packed for replay after the first call (None: not yet; False: never,
        # for the reason in ``replay_refused``).
        self.replay: Replay | None | bool = None
        self.replay_refused = ""
        if self._hosts or simulated() or not config.value("cuda_replay"):
            self.replay = False
            self.replay_refused = ("host ops run between its kernels" if self._hosts else
                                   "the simulator runs Python kernels" if simulated() else "FUSEJIT_CUDA_REPLAY=0")
        self.kernels = [kernel_info(sp.lowered, module_name(source), source)
                        for sp, source in zip(call.steps, sources, strict=True)]
        self.run = self.__call__

    def __call__(self, args: Sequence[Any]) -> tuple[DeviceArray, ...]:
        params = [(a._donate() if k in self.donated else a.buffer) if isinstance(a, DeviceArray)
                  else to_device(a, self.function.params[k].dtype.np).buffer for k, a in enumerate(args)]
        with self._lock:
            return self._run(params)

    def _output(self, j: int) -> DeviceArray:
        """Result ``j``'s array: one of the last two returned if the caller has let go of
        it (the pool's, the loop's and getrefcount's own references are all there are),
        else a new one: device allocations are slow, and freeing one synchronizes."""
        pool = self._pools[j]
        for arr in pool:
            if sys.getrefcount(arr) <= 3 and arr._buffer is not None:
                return arr
        arr = empty(*self.call_plan.out_specs[j])
        pool.insert(0, arr)
        del pool[2:]
        return arr

    def _run(self, params: list[Any]) -> tuple[DeviceArray, ...]:
        call = self.call_plan
        results_of = [None if k is not None else self._output(j) for j, k in enumerate(call.out_in_param)]
        outs = [params[k] if k is not None else results_of[j].buffer for j, k in enumerate(call.out_in_param)]
        if self.replay:
            self.replay([device_pointer(a) for a in params] + [device_pointer(a) for a in outs])
        else:
            self._launch_all(params, outs)
        results = []
        for kind, k in call.result_refs:
            if kind == "param":  # an argument returned as is: a copy, as on the CPU
                param = self.function.params[k]
                results.append(copy(DeviceArray(params[k], param.shape, param.dtype.np)))
            elif results_of[k] is not None:
                results.append(results_of[k])
            else:  # written into a donated argument's buffer
                results.append(DeviceArray(outs[k], *call.out_specs[k]))
        return tuple(results)

    def _launch_all(self, params: list[Any], outs: list[Any]) -> None:
        """Every launch and host op through Numba's dispatcher; the launches recorded for
        replay (``fusejit.codegen.cuda.launch``) while the executable may still replay,
        on a call whose arguments are distinct objects (else their slots would be
        ambiguous; a donated argument's result is its buffer by the plan, on every call)."""
        buffers = dict(self._fixed)  # every ref's device array: the arena and constants, then this call's
        buffers.update((("param", k), p) for k, p in enumerate(params))
        buffers.update((("out", j), o) for j, o in enumerate(outs))
        slots = params + outs
        recording = self.replay is None and len({id(a) for a in params}) == len(params)
        with Recorder() if recording else nullcontext() as steps:
            for k, (launch, (refs, ints)) in enumerate(zip(self._launchers, self._args, strict=True)):
                self._run_hosts(k, buffers)
                launch(*[buffers[r] for r in refs], *ints)
            self._run_hosts(len(self._launchers), buffers)
        if recording:
            try:
                self.replay = Replay(steps, slots)
            except NotReplayable as e:
                self.replay, self.replay_refused = False, str(e)

    def _run_hosts(self, position: int, buffers: dict[Any, Any]) -> None:
        """The host ops due before kernel ``position``: operands copied to the host (which
        waits for the kernels before), the rule run, results copied back."""
        for hs, run in self._hosts:
            if hs.position != position:
                continue
            inputs = [buffers[r].copy_to_host() if v.type.size else np.empty(0, v.dtype.np)
                      for r, v in zip(hs.in_refs, hs.call.op.inputs, strict=True)]
            outputs = [np.empty(v.type.size, v.dtype.np) for v in hs.call.op.outputs]
            run(inputs, outputs)
            for r, out in zip(hs.out_refs, outputs, strict=True):
                if out.size:
                    buffers[r].copy_to_device(out)

    def kernel_source(self) -> str:
        return "\n\n".join(k.source for k in self.kernels)
