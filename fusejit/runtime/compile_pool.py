"""Compiling a function's kernels in parallel, in worker processes that share the disk cache.

Numba compiles one function at a time per process (its compiler holds a lock and the GIL),
and a cold compilation of a training step is a dozen kernels at 0.1-1 s each. When the
disk cache is on, each kernel the cache lacks can instead be compiled by a worker process
(``python -m fusejit.runtime.compile_worker``), which writes the module and Numba's
machine code into the same cache directory; the caller then loads it from there in a few
milliseconds. The caller compiles too, and a kernel a worker failed to compile is simply
compiled by the caller. Whoever is free takes the costliest kernel left (by the length of
its source, which is what Numba's compile time grows with): the caller ends by waiting
for the kernels the workers are still compiling, and those are then the cheapest. A worker takes its first kernel only once it has started Numba (it
says so: ``--ready``): a kernel handed to it while it still imports (~1.3 s, more on a
loaded machine) could be the last one left, and the caller then sat idle waiting for it.

A call that will likely compile starts the workers before it is traced
(``expect_compilation``): a worker needs ~0.7 s to start Numba, and started when the
kernels are known (after tracing, fusing and importing Numba in the caller) it became
ready half a second after the caller, which compiled alone meanwhile. "Likely" means that
no earlier process finished a call of the same function (its code) with arguments of the
same types on this disk cache (``finished_call`` leaves a marker file); a warm process
starts no worker. Measured (W10 T16 cold on 2 cores, interleaved, median of 4): first call
2.0 -> 1.78 s.

Workers are separate interpreters started with ``subprocess`` (not ``multiprocessing``,
which would re-run an unguarded user script) and kept for the life of the process; they
talk JSON lines over pipes. ``config compile_workers`` sets how many (``auto``: one per
CPU beyond the first, at most 4; ``0``: none).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusejit import config

MAX_AUTO_WORKERS = 4


@dataclass(frozen=True, slots=True)
class CompileJob:
    """One kernel to compile: its module source, function name and argument types."""

    source: str
    kernel: str
    arrays: tuple[str, ...]  # NumPy dtype names of the flat array parameters
    chunked: bool  # its signature ends with chunk, chunks, worker (native_calls.kernel_signature)
    llvm: str = ""  # compiled from LLVM IR: its cache name (runtime/llvm_kernels.py), else Numba's module
    llvm_text: str = ""  # and that IR

    def request(self, cache_root: str) -> str:
        return json.dumps({"source": self.source, "kernel": self.kernel, "arrays": list(self.arrays),
                           "chunked": self.chunked, "llvm": self.llvm, "llvm_text": self.llvm_text,
                           "cache_dir": cache_root}) + "\n"


def worker_count() -> int:
    """How many workers ``config compile_workers`` asks for on this machine."""
    setting = str(config.value("compile_workers")).strip().lower()
    if setting == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        return max(0, min(cpus - 1, MAX_AUTO_WORKERS))
    try:
        return max(0, int(setting))
    except ValueError:
        raise ValueError(f"FUSEJIT_COMPILE_WORKERS (config compile_workers) must be 'auto' or a number of "
                         f"worker processes, not {setting!r}") from None


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fusejit.runtime.compile_worker", "--ready"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env,
        )
        # One request and its reply at a time: threads compiling different functions share
        # the workers, and two readers of one pipe could take each other's replies (one
        # text-mode read buffers both lines; the other thread then waits forever).
        self._exchange = threading.Lock()
        self._ready: bool | None = None  # None until its first line: ``{"ready": true}``

    def ready(self) -> bool:
        """Waits until the worker has started Numba; False if it died first."""
        with self._exchange:
            if self._ready is None:
                try:
                    assert self.proc.stdout is not None
                    line = self.proc.stdout.readline()
                    self._ready = bool(line) and json.loads(line).get("ready") is True
                except (OSError, ValueError):
                    self._ready = False
            return self._ready

    def run(self, job: CompileJob, cache_root: str) -> dict[str, Any] | None:
        """The worker's reply to ``job``, or None if it is gone."""
        with self._exchange:
            try:
                assert self.proc.stdin is not None and self.proc.stdout is not None
                self.proc.stdin.write(job.request(cache_root))
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
                return json.loads(line) if line else None
            except (OSError, ValueError):
                return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


_workers: list[_Worker] = []
_pool_lock = threading.Lock()


def _ensure_workers(n: int) -> list[_Worker]:
    with _pool_lock:
        _workers[:] = [w for w in _workers if w.alive()]
        while len(_workers) < n:
            if not _workers:
                atexit.register(shutdown)
            _workers.append(_Worker())
        return list(_workers[:n])


def start_workers(wait: bool = False) -> None:
    """Starts the workers ``config compile_workers`` asks for (they take ~1 s to import
    Numba and fusejit, during which the caller goes on); with ``wait``, returns once they
    are ready to compile (a test that needs the workers to take kernels)."""
    workers = _ensure_workers(worker_count())
    if wait:
        for w in workers:
            w.ready()


def _marker(fingerprint: str) -> Path | None:
    """Where ``finished_call`` marks ``fingerprint``: under the disk cache's root (not in
    its versioned directory, whose name imports Numba), or None without a disk cache."""
    if not config.value("cache"):
        return None
    from fusejit.runtime.cache import default_cache_root

    return Path(config.value("cache_dir") or default_cache_root()) / "first_calls" / fingerprint


def expect_compilation(fingerprint: str) -> None:
    """Starts the workers now (they import Numba while the caller traces) unless a call
    with ``fingerprint`` (a hash of the function and its argument types) finished on this
    disk cache before, or there are no workers to start, or kernels are printed as LLVM IR
    (``config llvm_kernels``): most then compile in-process faster than a worker starts
    (``worth_workers``), and a worker starting beside the caller slowed it (W5 cold on 2
    vCPUs: 0.47 s without a worker, 0.58-0.63 s with one that compiled nothing)."""
    marker = _marker(fingerprint)
    if marker is None or worker_count() == 0 or marker.exists() or config.value("llvm_kernels"):
        return
    start_workers()


def finished_call(fingerprint: str) -> None:
    """Marks ``fingerprint``'s first call as done on this disk cache (see
    ``expect_compilation``); a cache that cannot be written is left alone."""
    marker = _marker(fingerprint)
    if marker is None or marker.exists():
        return
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()


def shutdown() -> None:
    """Stops the workers (at exit, or to release them early)."""
    with _pool_lock:
        for w in _workers:
            w.close()
        _workers.clear()


# A kernel printed as LLVM IR compiles in 20-120 ms, a Numba module in 0.15-1 s: the
# compile work of a batch in Numba modules' worth.
LLVM_JOB_WEIGHT = 1 / 8


def worth_workers(jobs: Sequence[CompileJob]) -> bool:
    """Whether ``jobs`` are enough work to hand some to workers: two Numba modules' worth
    (a worker needs ~0.5 s to start and its kernels are loaded back from the disk)."""
    return sum(LLVM_JOB_WEIGHT if job.llvm else 1 for job in jobs) >= 2


def compile_in_parallel(jobs: Sequence[CompileJob], compile_here: Callable[[int], None] | None,
                        cache_root: str) -> set[int]:
    """Compiles ``jobs``, the longest source first: this process calls ``compile_here(k)``
    for the ones it takes (unless it is None: the workers do them all) while the workers
    compile the others into the disk cache under ``cache_root``. Returns the indices the
    workers compiled (the caller then loads them from the cache; one a worker failed is
    compiled when the caller loads it)."""
    todo = deque(sorted(range(len(jobs)), key=lambda k: -len(jobs[k].source)))
    lock = threading.Condition()
    done_by_workers: set[int] = set()
    busy = [0]  # jobs a worker is compiling now

    def feed(worker: _Worker) -> None:
        if not worker.ready():
            return
        while True:
            with lock:
                if not todo:
                    return
                k = todo.popleft()
                busy[0] += 1
            reply = worker.run(jobs[k], cache_root)
            with lock:
                busy[0] -= 1
                if reply is not None and reply.get("ok"):
                    done_by_workers.add(k)
                lock.notify_all()
            if reply is None:
                return  # the worker died: the caller compiles this kernel when it loads it

    feeders = [threading.Thread(target=feed, args=(w,), daemon=True) for w in _ensure_workers(worker_count())]
    for t in feeders:
        t.start()
    if compile_here is None:  # the workers do everything: wait for them to start and finish
        for t in feeders:
            t.join()
    else:
        while True:
            with lock:
                if not todo:
                    break
                k = todo.popleft()
            compile_here(k)
        # Waits for the kernels the workers are compiling, not for a worker still starting
        # (its feeder finds nothing left to do once it is ready, and returns).
        with lock:
            lock.wait_for(lambda: busy[0] == 0)
    with lock:
        return set(done_by_workers)
