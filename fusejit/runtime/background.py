"""Tiered compilation (``config compile = "background"``, opt-in): answer first, compile behind.

A cold compilation of a training step takes seconds. In background mode the first call
does not wait: while a thread has the fused kernels compiled (by the compile workers,
``fusejit.runtime.compile_pool``, so that this process's interpreter lock stays with the
caller; by the thread itself when there are no workers) and then loads them from the
disk cache, calls run the function op by op on NumPy (the reference interpreter). The
first call after the kernels are ready switches to them. Results agree within rounding
(the interpreter is the semantics every backend is tested against, not a bit-identical
twin of the kernels). The default mode stays synchronous and deterministic.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusejit.ir.interpreter import run_function
from fusejit.ir.transforms.fusion import FusedFunction
from fusejit.runtime.cpu import CpuExecutable
from fusejit.runtime.timings import CompileTimes


class BackgroundExecutable:
    """The interpreter until the compiled kernels are ready, then the kernels.

    ``interpreted_calls`` counts the calls answered by the interpreter; ``wait()`` blocks
    until the kernels are ready (for tests and benchmarks) and raises what the background
    compilation raised.
    """

    def __init__(self, fused: FusedFunction, donate_argnums: Sequence[int], times: CompileTimes | None,
                 on_ready: Callable[[CpuExecutable], None], build: Callable[[], Any] | None = None) -> None:
        """``build()``, when given, makes the executable instead of a ``CpuExecutable`` of
        ``fused`` (a function with loops: ``fusejit.runtime.control``)."""
        self.fused = fused
        self._build = build
        self.function = fused.function
        self.interpreted_calls = 0
        self._compiled: CpuExecutable | None = None
        self._error: BaseException | None = None
        self._times = times
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._compile, args=(tuple(donate_argnums), on_ready),
                                        name="fusejit-background-compile", daemon=True)
        self._thread.start()

    def _compile(self, donated: tuple[int, ...], on_ready: Callable[[CpuExecutable], None]) -> None:
        try:
            exe = self._build() if self._build else CpuExecutable(self.function, self.fused, donated,
                                                                  workers_only=True)
            if self._times is not None:
                self._times.add_executable(exe.compile_times)
            on_ready(exe)
            self._compiled = exe
        except BaseException as e:  # surfaced by wait() and by the next call
            self._error = e
        finally:
            self._ready.set()

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait(self, timeout: float | None = None) -> CpuExecutable:
        """The compiled executable, once it is ready."""
        if not self._ready.wait(timeout):
            raise TimeoutError("the background compilation is still running")
        if self._error is not None:
            raise self._error
        assert self._compiled is not None
        return self._compiled

    def __call__(self, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        exe = self._compiled
        if exe is not None:
            return exe(args)
        if self._error is not None:
            raise self._error
        self.interpreted_calls += 1
        if self._times is not None:
            self._times.interpreted_calls += 1
        return tuple(run_function(self.function, *args))

    @property
    def kernels(self) -> list[Any]:
        return self.wait().kernels

    def kernel_source(self) -> str:
        return self.wait().kernel_source()
