"""Compile latency: how the compile workers are started and fed (issue 12).

Structural facts only (which kernels go where, what a worker says first); the measured
times are in the issue's reports."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from fusejit import config
from fusejit.runtime import compile_pool


class _FakeWorker:
    """A worker whose start-up ends when ``started`` is set; records the jobs it gets."""

    def __init__(self, started: threading.Event) -> None:
        self.started = started
        self.jobs: list[str] = []

    def ready(self) -> bool:
        self.started.wait()
        return True

    def run(self, job: compile_pool.CompileJob, cache_root: str) -> dict:
        self.jobs.append(job.kernel)
        return {"ok": True, "compiled": True}


def _jobs(n: int) -> list[compile_pool.CompileJob]:
    return [compile_pool.CompileJob("", f"k{i}", ("float32",), False) for i in range(n)]


def test_a_starting_worker_gets_no_kernel_and_the_caller_does_not_wait_for_it(monkeypatch):
    started = threading.Event()
    worker = _FakeWorker(started)
    monkeypatch.setattr(compile_pool, "_ensure_workers", lambda n: [worker])
    here: list[int] = []
    result: list[set[int]] = []
    caller = threading.Thread(target=lambda: result.append(compile_pool.compile_in_parallel(_jobs(4), here.append, "")),
                              daemon=True)
    caller.start()
    caller.join(timeout=120)
    alive = caller.is_alive()
    started.set()  # the worker is ready now, with nothing left to do
    assert not alive, "the caller waited for a worker that was still starting"
    assert here == [0, 1, 2, 3] and result == [set()]
    assert worker.jobs == []


def test_the_longest_kernels_are_compiled_first_so_the_last_ones_in_flight_are_cheap(monkeypatch):
    started = threading.Event()
    started.set()
    worker = _FakeWorker(started)
    monkeypatch.setattr(compile_pool, "_ensure_workers", lambda n: [worker])
    jobs = [compile_pool.CompileJob("x" * size, f"k{i}", ("float32",), False) for i, size in enumerate((5, 30, 1, 12))]
    done = compile_pool.compile_in_parallel(jobs, None, "")  # the workers do them all
    assert worker.jobs == ["k1", "k3", "k0", "k2"] and done == {0, 1, 2, 3}


def test_a_worker_started_with_ready_says_so_before_it_reads_a_request(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "fusejit.runtime.compile_worker", "--ready"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert json.loads(proc.stdout.readline()) == {"ready": True}
        source = ("from fusejit.codegen.cpu import kernel_jit\n\n\n@kernel_jit()\n"
                  "def k(a, sizes):\n    for i in range(sizes[0]):\n        a[i] = a[i] * 2.0\n")
        request = {"source": source, "kernel": "k", "arrays": ["float32"], "chunked": False, "cache_dir": str(tmp_path)}
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"ok": True, "compiled": True}
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert list(tmp_path.rglob("*.nbi")), "the worker wrote Numba's cache"


def test_a_compile_worker_count_that_is_not_a_number_names_the_setting():
    with config.override(compile_workers="abc"), pytest.raises(ValueError, match="FUSEJIT_COMPILE_WORKERS"):
        compile_pool.worker_count()


def test_a_first_call_starts_the_workers_before_tracing_unless_an_earlier_one_finished(monkeypatch, tmp_path):
    """The compile workers start when a call that will likely compile begins (they take
    ~0.7 s to start Numba, meanwhile the caller traces); a call of the same function with
    arguments of the same types that finished on this disk cache before (in an earlier
    process) marks it warm, and then no worker starts. Another function, or other
    argument types, is not marked."""
    import numpy as np

    import fusejit as fj

    started = []
    monkeypatch.setattr(compile_pool, "start_workers", lambda wait=False: started.append(len(traced)))
    traced: list[int] = []

    def f(x):
        traced.append(1)
        return x * 2.0 + 1.0

    x = np.ones(8, np.float32)
    with config.override(cache=True, cache_dir=str(tmp_path / "llvm"), compile_workers=1, llvm_kernels=True):
        fj.jit(f)(x)  # kernels printed as LLVM IR: no worker started ahead
    assert not started
    traced.clear()
    with config.override(cache=True, cache_dir=str(tmp_path), compile_workers=1, llvm_kernels=False):
        np.testing.assert_array_equal(fj.jit(f)(x), x * 2 + 1)
        assert started == [0]  # before tracing
        fj.jit(f)(x)  # a new process would see the marker the first call left
        assert started == [0]
        fj.jit(f)(np.ones(9, np.float32))  # other argument types: started before f's third trace
        fj.jit(lambda x: x - 1.0)(x)  # another function
        assert started == [0, 2, 3]
    with config.override(cache=True, cache_dir=str(tmp_path / "other"), compile_workers=0, llvm_kernels=False):
        fj.jit(f)(x)  # no workers to start
    assert len(started) == 3


def test_kernels_printed_as_llvm_ir_go_to_workers_only_in_large_numbers():
    """A worker takes ~0.5 s to start; an LLVM-printed kernel compiles in 20-120 ms."""
    def jobs(numba: int, llvm: int) -> list:
        return ([compile_pool.CompileJob("src", "k", ("float32",), False)] * numba
                + [compile_pool.CompileJob("src", "k", ("float32",), False, "fjl_0")] * llvm)

    assert compile_pool.worth_workers(jobs(2, 0)) and not compile_pool.worth_workers(jobs(1, 0))
    assert not compile_pool.worth_workers(jobs(0, 15)) and compile_pool.worth_workers(jobs(0, 16))
    assert compile_pool.worth_workers(jobs(1, 8))
