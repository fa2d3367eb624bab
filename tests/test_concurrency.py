"""Calls from several threads get their own results on every execution path: one kernel,
the compiled entry, kernels called one by one over the shared arena, the general path
(donation, FUSEJIT_DEBUG_NANS), and threads racing the first call."""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import fusejit as fj
import fusejit.nn as nn
import fusejit.numpy as fnp
from fusejit import config
from fusejit.runtime import cpu

THREADS = 4
CALLS = 8


def one_kernel(x):
    return fnp.tanh(x) * 2.0 + 1.0


def three_kernels(x):
    """A matmul, a softmax and a column sum: several kernels and arena buffers."""
    return fnp.sum(nn.softmax(x @ x[: x.shape[1]].T), axis=0)


def inputs(shape: tuple[int, ...]) -> list[np.ndarray]:
    return [np.random.default_rng(k).standard_normal(shape).astype(np.float32) / 8 for k in range(THREADS)]


def run_threads(call, xs: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Each thread calls ``call`` CALLS times on its own input, all starting together."""
    barrier = threading.Barrier(len(xs))
    results: list[list[np.ndarray]] = [[] for _ in xs]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(CALLS):
                results[k].append(np.array(call(xs[k]), copy=True))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def check_each_thread_got_its_own_results(jitted, xs: list[np.ndarray], want: list[np.ndarray]) -> None:
    for k, got in enumerate(run_threads(jitted, xs)):
        for r in got:
            np.testing.assert_allclose(r, want[k], rtol=2e-5, atol=1e-6)


PATHS = {
    # name: (function, input shape, whether its kernels share the arena under the lock)
    "one kernel": (one_kernel, (64, 64), False),
    "several kernels, small": (three_kernels, (48, 32), True),
    "several kernels, over 1 MiB": (three_kernels, (768, 384), True),
}


@pytest.mark.parametrize("path", PATHS)
def test_threads_get_their_own_results(path):
    fn, shape, locked = PATHS[path]
    xs = inputs(shape)
    want = [fn(x) for x in xs]  # eager
    jitted = fj.jit(fn)
    for x in xs:
        jitted(x)
    exe = jitted.lower(xs[0]).compile().executable
    assert ("with LOCK:" in exe.runner_source()) == locked
    check_each_thread_got_its_own_results(jitted, xs, want)


def test_threads_racing_the_first_call_get_their_own_results():
    xs = inputs((768, 384))
    want = [three_kernels(x) for x in xs]
    check_each_thread_got_its_own_results(fj.jit(three_kernels), xs, want)


def test_threads_on_the_general_path_get_their_own_results():
    xs = inputs((768, 384))
    want = [three_kernels(x) for x in xs]
    jitted = fj.jit(three_kernels)
    with config.override(debug_nans=True):
        check_each_thread_got_its_own_results(jitted, xs, want)


def test_threads_donating_their_own_buffers_get_their_own_results():
    def step(p, g):
        return p - 0.5 * g, fnp.sum(g * g)

    jitted = fj.jit(step, donate_argnums=0)
    gs = inputs((600, 600))  # over 1 MiB per call
    barrier = threading.Barrier(THREADS)
    finals: list[np.ndarray | None] = [None] * THREADS

    def work(k: int) -> None:
        p = np.zeros((600, 600), np.float32)
        barrier.wait()
        for _ in range(CALLS):
            p, _ = jitted(p, gs[k])
        finals[k] = p

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(THREADS):
        np.testing.assert_allclose(finals[k], -0.5 * CALLS * gs[k], rtol=1e-5)


def test_the_arena_is_shared_only_under_the_lock():
    """The runner holds the executable's lock around kernels that share the arena."""
    x = inputs((768, 384))[0]
    exe = fj.jit(three_kernels).lower(x).compile().executable
    assert isinstance(exe, cpu.CpuExecutable) and exe.plan.arena_bytes > 0
    locked = []
    original = exe._steps[0].entry_point

    def spy(*args):
        locked.append(exe._lock._is_owned())
        return original(*args)

    exe._steps[0].entry_point = spy
    exe._runner()([x])
    assert locked == [True]


def test_threads_tracing_at_the_same_time_record_their_own_programs():
    """Each thread's ops go into its own trace, even when the interpreter switches threads
    between every few bytecodes (the traces were once one process-wide stack)."""

    def chain(op):
        def fn(x):
            for _ in range(150):
                x = op(x) * 1.01
            return x

        return fn

    fns = [chain(fnp.tanh), chain(fnp.sin), chain(fnp.cos), chain(fnp.exp)]
    x = np.full(4, 0.1, np.float32)
    want = [str(fj.jit(fn).lower(x).traced) for fn in fns]
    got: list[str | None] = [None] * len(fns)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(fns))

    def work(k: int) -> None:
        try:
            barrier.wait()
            got[k] = str(fj.jit(fns[k]).lower(x).traced)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(fns))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert got == want


def test_threads_making_the_same_first_call_at_once_compile_it_once():
    """Misses trace and compile under the function's lock: the threads that arrive while
    one compiles wait, then hit (each compiled it, found by trying it)."""

    def step(x):
        time.sleep(0.05)  # tracing runs it: a slow trace (a lazy import) lets the others in
        return nn.gelu(x @ x.T).sum(axis=1)

    xs = inputs((64, 32))
    jitted = fj.jit(step)
    results = run_threads(jitted, xs)
    info = jitted.cache_info()
    assert (info.misses, info.hits) == (1, len(xs) * CALLS - 1)
    for x, got in zip(xs, results, strict=True):
        np.testing.assert_allclose(got[0], step(x), rtol=1e-5, atol=1e-6)
