"""fusejit's thread pool for parallel CPU kernels: a kernel's parallel loop in chunks.

Numba's parfor lowering of a ``prange`` loop costs 0.3-1.5 s of a cold compile per
kernel (issue 12; measured on a 2-core VM under load, ``bench/bench_parallel_chunks.py``:
layernorm 2.4 -> 0.9 s, softmax 3.0 -> 1.6 s, gelu 1.6 -> 1.1 s) and runs no faster than
the same loop compiled serially and split here. So a kernel whose parallel loop is its
last statement (``fusejit.codegen.cpu.printer.runs_in_chunks``) is compiled as serial code
that releases the GIL (``nogil``) and takes three more int64 arguments after its own:
``chunk, chunks, worker``. It runs the iterations ``[start + (stop - start) * chunk //
chunks, start + (stop - start) * (chunk + 1) // chunks)`` of its loop and uses row
``worker`` of its per-thread scratch. Every iteration runs in exactly one chunk, with the
same code: results are bit-identical to a serial run, whatever the thread count.

A call (``chunked(entry)(*args)``) hands out ``CHUNKS_PER_THREAD`` chunks per thread from a
shared counter: the calling thread takes chunks too, so when another process holds the
other core (a loaded machine), the caller does the work its sleeping helpers have not
started instead of waiting for them (OpenMP's static schedule waits; spinning threads
lost whole scheduler ticks, ``fusejit.runtime.threads``). Idle workers block on a lock:
they use no CPU between kernels. Each thread takes its chunks in compiled code
(``native_calls.trampoline_chunks``: an atomic counter, one call per thread and kernel
without the GIL); taken one Python call each, the threads passed the GIL between chunks,
tens of microseconds each on these VMs, and a 2-thread call of a kernel under 0.3 ms was
no faster than one thread (W7's step: 0.94 ms on 2 threads, 0.93 on 1).

One kernel runs on the pool at a time: a call from a second Python thread waits for the
first (Numba's parfors held the GIL, so kernels never overlapped before either), which
also keeps a single-kernel function's arena scratch private to one call.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

# Chunks per thread: a helper that wakes late finds the remaining chunks done by the
# others. More chunks cost a Python-level call each (about 1 us).
CHUNKS_PER_THREAD = 4

_create = threading.Lock()
_pools: dict[int, _Pool] = {}


class _Pool:
    """``threads - 1`` daemon workers; ``run`` shares a kernel's chunks with them."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._job: Callable[[int], None] | None = None
        self._counter = np.zeros(1, np.int64)  # the chunks a native call's threads have taken
        self._error: BaseException | None = None
        self._start()

    def _start(self) -> None:
        """New locks and worker threads (also in a forked child, which has neither the
        parent's threads nor locks in a known state)."""
        self.busy = threading.Lock()  # one kernel at a time
        self._go = [threading.Lock() for _ in range(self.threads - 1)]
        self._done = [threading.Lock() for _ in range(self.threads - 1)]
        for go, done in zip(self._go, self._done, strict=True):
            go.acquire()
            done.acquire()
        for w in range(1, self.threads):
            threading.Thread(target=self._serve, args=(w,), name=f"fusejit-chunks-{w}", daemon=True).start()

    def _serve(self, worker: int) -> None:
        go, done = self._go[worker - 1], self._done[worker - 1]  # this generation's locks
        while True:
            go.acquire()
            try:
                assert self._job is not None
                self._job(worker)
            except BaseException as e:  # noqa: BLE001 - handed to the caller, which raises it
                self._error = e
            finally:
                done.release()

    def run(self, run_chunks: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Runs a kernel's chunks on the pool: each thread calls ``run_chunks(args, counter,
        chunks, worker)`` (``native_calls.ChunkedKernel.run_chunks``), which takes chunks
        from the shared ``counter`` until ``chunks`` are taken."""
        chunks = self.threads * CHUNKS_PER_THREAD
        with self.busy:
            counter = self._counter
            counter[0] = 0
            self._job = lambda worker: run_chunks(args, counter, chunks, worker)
            self._error = None
            for go in self._go:
                go.release()
            try:
                self._job(0)
            finally:
                for done in self._done:
                    done.acquire()
                self._job = None
            if self._error is not None:
                raise self._error


def _after_fork() -> None:
    global _create
    _create = threading.Lock()
    for p in _pools.values():
        p._start()


os.register_at_fork(after_in_child=_after_fork)


def pool(threads: int) -> _Pool:
    """The process's pool of ``threads`` threads (the caller and ``threads - 1`` workers),
    started on first use."""
    with _create:
        p = _pools.get(threads)
        if p is None:
            p = _pools[threads] = _Pool(threads)
        return p


def chunked(entry: Any, threads: int) -> Callable[..., None]:
    """A callable running a chunked kernel ``entry`` on ``threads`` threads: ``call(*args)``
    with the kernel's own arguments; every chunk is run once. ``entry(*args, chunk,
    chunks, worker)`` runs one chunk, ``entry.run_chunks`` a thread's share
    (``native_calls.ChunkedKernel``)."""
    if threads <= 1:
        def call(*args: Any) -> None:
            entry(*args, 0, 1, 0)
    else:
        run, run_chunks = pool(threads).run, entry.run_chunks

        def call(*args: Any) -> None:
            run(run_chunks, args)
    call.chunked_entry = entry  # type: ignore[attr-defined] - what tests and profiles inspect
    return call
