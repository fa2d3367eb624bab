"""Numba's thread pool, started so that its idle threads sleep instead of spinning.

Numba's threading layer on Linux is OpenMP (the system libgomp) unless TBB is installed.
Without ``OMP_WAIT_POLICY`` libgomp's threads spin (``GOMP_SPINCOUNT`` 300,000 rounds)
after each parallel loop, and the thread that ends a parallel loop first spins until the
other arrives. A train step runs parallel kernels a few hundred microseconds apart, so
both threads spin almost all the time. When other processes want the cores too (a shared
machine), the scheduler then ranks these threads behind the others, and each parallel
kernel waits for its second thread's next turn on a core: whole scheduler ticks (4 ms).
Measured on a 2-core VM at load 4-5, the CNN step W7 (batch 256, 5 parallel kernels of
0.1-0.9 ms): 29-60 ms per step with 2 threads, 4.4-7.4 ms with 1; with
``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at once, and a woken sleeper gets a core
promptly) 4.6-7.1 ms with 2 threads. Waking a sleeping thread costs a few microseconds;
fusejit runs loops on threads only from ``parallel_threshold`` elements, about 100 us of
work or more.

So the first CPU executable with a parallel kernel starts Numba's pool (``start``) with
``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets a policy (the user's choice
wins). libgomp reads the variable once, when it is loaded, which is when Numba launches
its threads; the variable is removed again afterwards, so that OpenMP runtimes loaded
later (PyTorch bundles its own libgomp) keep their own default. It has no effect if the
process had already loaded libgomp or launched Numba's threads, nor on the other layers
(``workqueue`` and ``tbb`` threads block rather than spin).
"""

from __future__ import annotations

import os
import threading

WAIT_POLICY = "OMP_WAIT_POLICY"

_lock = threading.Lock()
_started = False


def start() -> None:
    """Launches Numba's thread pool (once per process), with sleeping idle threads if
    OpenMP runs it and the environment chose no wait policy."""
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        import numba

        ours = WAIT_POLICY not in os.environ
        if ours:
            os.environ[WAIT_POLICY] = "PASSIVE"
        try:
            numba.get_num_threads()  # launches the threading layer, which loads libgomp
        finally:
            if ours:
                os.environ.pop(WAIT_POLICY, None)
        _started = True
