"""Parallel CPU kernels in chunks on fusejit's threads (``fusejit.runtime.chunks``): which
kernels are chunked, that their modules compile without parfors, that the chunks of a
call cover every iteration once, that results are bit-identical to Numba's parfors, and
that calls from several threads get their own results."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

import fusejit as fj
import fusejit.nn as nn
import fusejit.numpy as fnp
from fusejit import config
from fusejit.codegen.target import CPU
from fusejit.runtime import chunks

THRESHOLD = 256  # small arrays run on threads: the tests stay fast


def gelu(x):
    return 0.5 * x * (1.0 + fnp.tanh(0.79788456 * (x + 0.044715 * (x * x * x))))


def softmax_rows(x):
    """A row kernel with per-thread scratch (its exps, kept between two passes)."""
    return nn.softmax(x)


def steps(fn, *args):
    return fn.lower(*args).compile().executable._steps


def has_parfor(step) -> bool:
    """Whether Numba's parfor pass outlined a loop of the step's compiled kernel (compiled in
    this process: code loaded from the disk cache has no LLVM text to inspect). A kernel
    compiled from fusejit's LLVM IR never went through Numba's passes."""
    if step.llvm is not None:
        return False
    (overload,) = step.dispatcher.overloads.values()
    return "parfor" in overload.library.get_llvm_str()


# ---------------------------------------------------------------------------------------
# The pool alone (no Numba)


class Recorder:
    """A chunked kernel's stand-in: records the (tag, chunk, chunks, worker) of every chunk
    it runs (calling ``on_chunk`` with them first), and takes a thread's chunks from the
    call's counter as ``native_calls.ChunkedKernel.run_chunks`` does (under a lock here,
    where the kernel's loop increments it atomically)."""

    def __init__(self, on_chunk=None) -> None:
        self.seen: list[tuple[object, int, int, int]] = []
        self.on_chunk = on_chunk
        self.lock = threading.Lock()

    def __call__(self, tag, chunk, chunks_, worker) -> None:
        if self.on_chunk is not None:
            self.on_chunk(tag, chunk, chunks_, worker)
        with self.lock:
            self.seen.append((tag, chunk, chunks_, worker))

    def run_chunks(self, args, counter, chunks_, worker) -> None:
        while True:
            with self.lock:
                chunk = int(counter[0])
                counter[0] += 1
            if chunk >= chunks_:
                return
            self(*args, chunk, chunks_, worker)


def recorder():
    entry = Recorder()
    return entry, entry.seen


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_call_runs_every_chunk_once_on_the_pool_threads(threads):
    entry, seen = recorder()
    chunks.chunked(entry, threads)("call")
    got = sorted(c for _, c, _, _ in seen)
    total = {n for _, _, n, _ in seen}
    assert len(total) == 1 and got == list(range(total.pop()))
    assert {w for *_, w in seen} <= set(range(threads))


def test_calls_from_several_threads_each_run_all_their_chunks():
    entry, seen = recorder()
    call = chunks.chunked(entry, 2)
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        barrier.wait()
        for r in range(5):
            call((k, r))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_call: dict[object, list[int]] = {}
    counts: dict[object, set[int]] = {}
    for tag, c, n, _ in seen:
        per_call.setdefault(tag, []).append(c)
        counts.setdefault(tag, set()).add(n)
    assert len(per_call) == 20
    for tag, cs in per_call.items():
        (n,) = counts[tag]
        assert sorted(cs) == list(range(n)), tag


def test_an_error_in_a_chunk_reaches_the_caller_and_the_pool_keeps_working():
    def fail_last(fail, chunk, chunks_, worker):
        if fail and chunk == chunks_ - 1:
            raise ValueError("chunk failed")

    call = chunks.chunked(Recorder(fail_last), 2)
    with pytest.raises(ValueError, match="chunk failed"):
        call(True)
    call(False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_pool_threads():
    entry, seen = recorder()
    call = chunks.chunked(entry, 2)
    call("parent")  # the pool's worker exists in the parent only
    pid = os.fork()
    if pid == 0:  # the child: exits 0 if every chunk ran, killed by the alarm if it hangs
        signal.alarm(20)
        seen.clear()
        call("child")
        os._exit(0 if sorted(c for _, c, _, _ in seen) == list(range(seen[0][2])) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# ---------------------------------------------------------------------------------------
# Kernels


def test_a_large_elementwise_kernel_is_chunked_and_compiled_without_parfors():
    x = np.linspace(-3, 3, 4096, dtype=np.float32)
    with config.override(parallel_threshold=THRESHOLD, cache=False, llvm_kernels=False):  # Numba's options
        (st,) = steps(fj.jit(gelu), x)
    assert st.chunked and CPU.chunked(st.lowered.kernel)
    assert "prange(" not in st.source and "chunk, chunks, worker):" in st.source
    options = st.dispatcher.targetoptions
    assert not options.get("parallel") and options["nogil"]
    assert not has_parfor(st)


def test_below_the_threshold_a_kernel_is_serial_and_not_chunked():
    (st,) = steps(fj.jit(gelu), np.ones(100, np.float32))
    assert not st.chunked and "chunk" not in st.source and "prange(" not in st.source


def test_the_chunks_of_a_kernel_cover_every_element_once():
    n = 1001  # not a multiple of any chunk count below
    x = np.arange(n, dtype=np.float64)
    with config.override(parallel_threshold=THRESHOLD):
        (st,) = steps(fj.jit(lambda x: x * 2.0 + 1.0), x)
    kernel = st.lowered.kernel
    assert [a.role for a in kernel.arrays] == ["in", "out"] and len(kernel.ints) == 1
    entry = st.entry_point.chunked_entry
    for count in (1, 2, 3, 7, 8, n + 5):  # more chunks than elements: some are empty
        written = np.zeros(n, np.int64)
        for c in range(count):
            out = np.full(n, np.nan)
            entry(x, out, np.array([n]), c, count, 0)
            mine = ~np.isnan(out)
            np.testing.assert_array_equal(out[mine], x[mine] * 2 + 1)
            written += mine
        np.testing.assert_array_equal(written, 1)


def test_threads_take_a_compiled_kernels_chunks_from_one_shared_counter():
    """A compiled chunked kernel's threads each make one call (``run_chunks``) that takes
    chunks from a counter they share, in compiled code without the GIL: every chunk runs
    once whichever thread takes it, and the counter ends past the last."""
    n = 1001
    x = np.arange(n, dtype=np.float64)
    with config.override(parallel_threshold=THRESHOLD):
        (st,) = steps(fj.jit(lambda x: x * 2.0 + 1.0), x)
    entry = st.entry_point.chunked_entry
    for count in (1, 2, 7, n + 5):
        out, counter = np.full(n, np.nan), np.zeros(1, np.int64)
        barrier = threading.Barrier(3)

        def work(worker: int, out: np.ndarray, counter: np.ndarray, count: int, barrier: threading.Barrier) -> None:
            barrier.wait()
            entry.run_chunks((x, out, np.array([n])), counter, count, worker)

        threads = [threading.Thread(target=work, args=(w, out, counter, count, barrier)) for w in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        np.testing.assert_array_equal(out, x * 2 + 1)
        assert counter[0] == count + 3  # each thread's last take found nothing left
    with pytest.raises(TypeError, match="besides its chunk"):
        entry.run_chunks((x, out), np.zeros(1, np.int64), 2, 0)


def test_chunked_kernels_match_numba_parfors_bit_for_bit():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 40)).astype(np.float32) * 3
    v = rng.standard_normal(5000).astype(np.float32)
    results = {}
    for mode in (True, False):
        with config.override(parallel_threshold=THRESHOLD, parallel_chunks=mode, cache=False):
            sm, g = fj.jit(softmax_rows), fj.jit(gelu)
            results[mode] = (sm(x), g(v))
            st_sm, st_g = steps(sm, x)[0], steps(g, v)[0]
            assert st_sm.chunked is mode and st_g.chunked is mode
            assert ("prange(" in st_sm.source) is not mode and has_parfor(st_sm) is not mode
    for a, b in zip(results[True], results[False], strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_kernel_with_two_parallel_loops_stays_a_parfor():
    x = np.random.default_rng(1).standard_normal((64, 48)).astype(np.float32)
    with config.override(parallel_threshold=THRESHOLD):
        f = fj.jit(lambda x: fnp.max(x, axis=0))  # column blocks: an init loop, then the blocks
        got = f(x)
        kernels = [st for st in steps(f, x) if st.lowered.kernel.parallel]
    np.testing.assert_array_equal(got, x.max(axis=0))
    assert kernels and all(not st.chunked and "prange(" in st.source for st in kernels)


def test_calls_of_a_chunked_kernel_from_several_threads_get_their_own_results():
    xs = [np.random.default_rng(k).standard_normal((64, 64)).astype(np.float32) for k in range(4)]
    with config.override(parallel_threshold=THRESHOLD):
        f = fj.jit(softmax_rows)
        want = [np.asarray(f(x)).copy() for x in xs]
        assert steps(f, xs[0])[0].chunked
    got: list[list[np.ndarray]] = [[] for _ in xs]
    barrier = threading.Barrier(len(xs))

    def work(k: int) -> None:
        barrier.wait()
        for _ in range(10):
            got[k].append(np.array(f(xs[k]), copy=True))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, results in enumerate(got):
        assert len(results) == 10
        for r in results:
            np.testing.assert_array_equal(r, want[k])


def test_the_general_path_runs_chunked_kernels_too():
    """FUSEJIT_DEBUG_NANS calls the kernels one by one, not through the runner."""
    x = np.random.default_rng(3).standard_normal((64, 64)).astype(np.float32)
    with config.override(parallel_threshold=THRESHOLD):
        f = fj.jit(softmax_rows)
        want = np.asarray(f(x)).copy()
        assert steps(f, x)[0].chunked
        with config.override(debug_nans=True):
            np.testing.assert_array_equal(f(x), want)
