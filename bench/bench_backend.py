"""The Numba CPU backend: call overhead, compile times, bandwidth, and the measured design
choices (BLAS route, calling kernels from Python, prange threshold).

    python bench/bench_backend.py            # everything (a few minutes on 2 cores)
    python bench/bench_backend.py overhead bandwidth   # some sections

Sections:
  overhead   per-call time of a cached ``jit`` call of ``x*2+1`` on 16 float32 vs a bare
             Numba call (goal: within 2x), and JAX's jit when it is installed
  compile    cold compile of a 20-op elementwise function (empty cache), and the first
             call in a fresh process with a warm disk cache (goal: < 150 ms beyond imports)
  retrace    a new batch size of a compiled function: retrace + plan time, Numba compiles
  bandwidth  one elementwise op over 16M float32 vs a STREAM copy/triad in Numba
             (goal: >= 70% of STREAM); tanh over 4M float32 vs np.tanh (goal: >= 3x)
  blas       GEMM through np.dot inside njit (SciPy's BLAS) vs NumPy's matmul from Python
  threads    training steps with 1, 2 and "auto" BLAS threads (the thread-fight policy)
  calls      a 10-kernel function: the runner, a kernel through its dispatcher or entry point
  prange     serial vs prange elementwise kernels by size (the parallel threshold)
  softmax    the fused softmax row kernel over [4096,1024] vs NumPy

Timings are medians of repeated runs (best-of for tiny calls); machines are noisy, read
the ratios. Not a test.
"""

# ruff: noqa: B023 - the timed lambdas run inside the loop iteration that defines them
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numba  # noqa: E402

import fusejit as fj  # noqa: E402
import fusejit.numpy as fnp  # noqa: E402
from fusejit import config  # noqa: E402
from fusejit.runtime.cache import COUNTERS  # noqa: E402


def best(fn: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Best time per call in seconds over ``repeat`` rounds of ``number`` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def median(fn: Callable[[], object], repeat: int = 9) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def row(*cells: object) -> None:
    print("  " + "  ".join(f"{c:>14}" if not isinstance(c, str) else f"{c:<34}" for c in cells))


# ---------------------------------------------------------------------------------------


def overhead() -> None:
    print("\n== per-call overhead: x*2+1 on 16 float32")
    c2, c1 = np.float32(2), np.float32(1)

    @numba.njit(error_model="numpy")
    def bare(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = x[i] * c2 + c1
        return out

    f = fj.jit(lambda x: x * 2 + 1)
    x = np.ones(16, np.float32)
    bare(x), f(x), f(x)
    np.testing.assert_array_equal(f(x), bare(x))
    t_bare = best(lambda: bare(x), 20000)
    t_jit = best(lambda: f(x), 20000)
    t_np = best(lambda: x * np.float32(2) + np.float32(1), 20000)
    row("bare numba call", f"{t_bare * 1e6:.2f} us")
    row("fj.jit call (cached)", f"{t_jit * 1e6:.2f} us", f"{t_jit / t_bare:.2f}x bare")
    row("numpy eager x*2+1", f"{t_np * 1e6:.2f} us")
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        print("  (JAX is not installed; its jit dispatch measured 11-13 us on this machine type)")
        return
    jf = jax.jit(lambda x: x * 2 + 1)
    jx = jnp.ones(16, jnp.float32)
    jf(jx).block_until_ready()
    t_jax = best(lambda: jf(jx).block_until_ready(), 5000)
    t_jax_np = best(lambda: np.asarray(jf(x)), 5000)
    row("jax.jit call (device array in)", f"{t_jax * 1e6:.2f} us", f"{t_jax / t_bare:.2f}x bare")
    row("jax.jit call (numpy in and out)", f"{t_jax_np * 1e6:.2f} us")


def _twenty_ops(x, y):
    a = x * 1.5 + y
    b = fnp.tanh(a) * 0.5 - x
    c = fnp.exp(-b * b) + a * y
    d = fnp.maximum(c, 0.0) / (1.0 + fnp.abs(b))
    e = fnp.sqrt(d * d + 1.0) - c
    return e * 0.25 + d - fnp.minimum(a, b)


def compile_times() -> None:
    print("\n== compile: a 20-op elementwise function")
    x = np.linspace(-2, 2, 4096, dtype=np.float32)
    n_ops = len(fj.jit(_twenty_ops, fuse=False).lower(x, x).optimized.ops)
    with tempfile.TemporaryDirectory() as d, config.override(cache_dir=d):
        f = fj.jit(_twenty_ops)
        before = COUNTERS.snapshot()
        t0 = time.perf_counter()
        f(x, x)
        cold = time.perf_counter() - t0
        compiled = COUNTERS.numba_compiles - before["numba_compiles"]
        kernels = len(f.lower(x, x).compile().kernels)
        row(f"cold first call ({n_ops} IR ops)", f"{cold * 1e3:.0f} ms", f"{kernels} kernel(s)",
            f"{compiled} numba fns")
        script = (
            "import time, json; t0 = time.perf_counter();"
            "import numpy as np, fusejit as fj, fusejit.numpy as fnp; t1 = time.perf_counter();"
            "import sys; sys.path.insert(0, 'bench'); from bench_backend import _twenty_ops;"
            "x = np.linspace(-2, 2, 4096, dtype=np.float32); f = fj.jit(_twenty_ops);"
            "t2 = time.perf_counter(); f(x, x); t3 = time.perf_counter(); f(x, x);"
            "t4 = time.perf_counter();"
            "from fusejit.runtime.cache import COUNTERS;"
            "print(json.dumps([t1 - t0, t3 - t2, t4 - t3, COUNTERS.numba_compiles]))"
        )
        env = dict(os.environ, FUSEJIT_CACHE_DIR=d, PYTHONPATH=str(REPO))
        with tempfile.TemporaryDirectory() as empty:
            out = subprocess.run([sys.executable, "-c", script], env=dict(env, FUSEJIT_CACHE_DIR=empty),
                                 capture_output=True, text=True, cwd=REPO, check=True)
            imports, first, second, compiles = json.loads(out.stdout.splitlines()[-1])
            row("fresh process, empty cache", f"{first * 1e3:.0f} ms first call", f"{imports * 1e3:.0f} ms imports",
                f"{compiles} compiles")
        script_init = script.replace("t2 = time.perf_counter(); f(x, x)",
                                     "from numba.core.registry import cpu_target;"
                                     "cpu_target.target_context.refresh();"
                                     "t2 = time.perf_counter(); f(x, x)")
        out = subprocess.run([sys.executable, "-c", script_init], env=env, capture_output=True, text=True,
                             cwd=REPO, check=True)
        imports, first, second, compiles = json.loads(out.stdout.splitlines()[-1])
        row("  same, Numba initialized first", f"{first * 1e3:.0f} ms first call", "(fusejit's own part)")
        for attempt in range(3):
            out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                 cwd=REPO, check=True)
            imports, first, second, compiles = json.loads(out.stdout.splitlines()[-1])
            row(f"fresh process, warm cache #{attempt + 1}", f"{first * 1e3:.0f} ms first call",
                f"{imports * 1e3:.0f} ms imports", f"{compiles} compiles")


def retrace() -> None:
    print("\n== new batch size of a compiled function")
    f = fj.jit(lambda x, w, b: fnp.tanh(x @ w + b).sum(axis=1))
    w, b = np.ones((64, 32), np.float32), np.ones(32, np.float32)
    f(np.ones((128, 64), np.float32), w, b)
    f(np.ones((128, 64), np.float32), w, b)
    for batch in (256, 512, 1000):
        x = np.ones((batch, 64), np.float32)
        before = COUNTERS.numba_compiles
        t0 = time.perf_counter()
        f.lower(x, w, b).executable()  # trace, optimize, fuse, lower, plan, load kernels
        t1 = time.perf_counter()
        f(x, w, b)
        t2 = time.perf_counter()
        f(x, w, b)  # the second call: nothing compiles
        row(f"batch {batch}", f"retrace+plan {(t1 - t0) * 1e3:.1f} ms", f"1st run {(t2 - t1) * 1e3:.1f} ms",
            f"{COUNTERS.numba_compiles - before} compiles")


def bandwidth() -> None:
    """STREAM convention: the best of many runs, interleaved so that every kernel sees the
    same machine state (the 480 MiB L3 of these VMs holds 64 MiB arrays, so numbers move
    with whatever else ran)."""
    n = 16 * 1024 * 1024
    print(f"\n== bandwidth: {n // 2**20}M float32 (threads: {numba.get_num_threads()})")

    @numba.njit(parallel=True, error_model="numpy", fastmath={"contract"})
    def copy(a, b):
        for i in numba.prange(a.size):
            b[i] = a[i]

    @numba.njit(parallel=True, error_model="numpy", fastmath={"contract"})
    def triad(a, b, c, s):
        for i in numba.prange(a.size):
            c[i] = a[i] + s * b[i]

    a, b, c = (np.ones(n, np.float32) for _ in range(3))
    s = np.float32(3)
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    f = fj.jit(lambda x: x * 3.0)
    f(x), f(x)
    exe = f.lower(x).executable()
    out = np.empty_like(x)
    (step,) = exe._steps
    runs = {
        "STREAM copy (numba prange)": (lambda: copy(a, b), 2),
        "STREAM triad (numba prange)": (lambda: triad(a, b, c, s), 3),
        "fj.jit x*3 (output recycled)": (lambda: f(x), 2),
        "fj.jit x*3, fresh output each": (lambda: (f(x), f(x), f(x)), 6),  # 3 live: no reuse
        "its kernel, preallocated out": (lambda: step.entry_point(x, out, step.sizes), 2),
    }
    for fn, _ in runs.values():
        fn()
    best_t = {k: float("inf") for k in runs}
    for _ in range(25):
        for name, (fn, _) in runs.items():
            t0 = time.perf_counter()
            fn()
            best_t[name] = min(best_t[name], time.perf_counter() - t0)
    copy_bw = 2 * n * 4 / best_t["STREAM copy (numba prange)"]
    for name, (_, arrays) in runs.items():
        bw = arrays * n * 4 / best_t[name]
        row(name, f"{bw / 1e9:.1f} GB/s", f"{bw / copy_bw:.0%} of copy")
    n4 = 4 * 1024 * 1024
    x4 = np.random.default_rng(1).standard_normal(n4).astype(np.float32)
    g = fj.jit(fnp.tanh)
    g(x4), g(x4)
    np.testing.assert_allclose(g(x4), np.tanh(x4), atol=2e-6)
    t_np = best(lambda: np.tanh(x4), 1, 25)
    t_fj = best(lambda: g(x4), 1, 25)
    row("tanh 4M: np.tanh", f"{t_np * 1e3:.2f} ms")
    row("tanh 4M: fj.jit", f"{t_fj * 1e3:.2f} ms", f"{t_np / t_fj:.2f}x np.tanh")


def blas() -> None:
    print("\n== BLAS route: GEMM C = A @ B (float32)")
    @numba.njit(error_model="numpy")
    def dot_in_njit(a, b, c, m, k, n):
        np.dot(a.reshape((m, k)), b.reshape((k, n)), c.reshape((m, n)))

    for m, k, n in [(16, 16, 16), (64, 64, 64), (512, 256, 256), (2048, 1024, 1024)]:
        a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
        b = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
        c = np.empty((m, n), np.float32)
        dot_in_njit(a.ravel(), b.ravel(), c.ravel(), m, k, n)
        reps = 2000 if m <= 64 else 5
        t_nb = best(lambda: dot_in_njit(a.ravel(), b.ravel(), c.ravel(), m, k, n), reps, 5)
        t_np = best(lambda: np.matmul(a, b, out=c), reps, 5)
        row(f"{m}x{k}x{n}", f"njit np.dot {t_nb * 1e6:.1f} us", f"numpy {t_np * 1e6:.1f} us",
            f"{2 * m * k * n / t_nb / 1e9:.1f} GF/s njit")


def calls() -> None:
    print("\n== a 10-kernel function (fuse=False): calling kernels from Python")

    def eight(x):
        for _ in range(4):
            x = fnp.exp(x) * 0.5
        return x

    x = np.ones(64, np.float32)
    f = fj.jit(eight, fuse=False)
    f(x)
    exe = f.lower(x).executable()
    st = exe._steps[0]
    argv = (x.ravel(), np.empty_like(x), st.sizes)
    t_run = best(lambda: exe.run([x]), 20000)
    t_trampoline = best(lambda: st.entry_point.trampoline(st.entry_point.address, argv), 20000)
    t_entry_point = best(lambda: st.entry_point(*argv), 20000)
    row(f"{len(exe._steps)} kernels: whole call", f"{t_run * 1e6:.2f} us")
    row("one kernel: its trampoline, as the runner calls it", f"{t_trampoline * 1e6:.2f} us")
    row("one kernel: NativeKernel(*args)", f"{t_entry_point * 1e6:.2f} us")


def prange() -> None:
    print("\n== serial vs prange: y = tanh(x) * 2 and y = x * 3 (float32)")
    from fusejit.codegen.cpu.mathlib import tanh_f32

    c = np.float32(2)

    @numba.njit(error_model="numpy", fastmath={"contract"})
    def serial(x, y):
        for i in range(x.size):
            y[i] = tanh_f32(x[i]) * c

    @numba.njit(parallel=True, error_model="numpy", fastmath={"contract"})
    def parallel(x, y):
        for i in numba.prange(x.size):
            y[i] = tanh_f32(x[i]) * c

    c3 = np.float32(3)

    @numba.njit(error_model="numpy", fastmath={"contract"})
    def serial3(x, y):
        for i in range(x.size):
            y[i] = x[i] * c3

    @numba.njit(parallel=True, error_model="numpy", fastmath={"contract"})
    def parallel3(x, y):
        for i in numba.prange(x.size):
            y[i] = x[i] * c3

    for n in [2**10, 2**12, 2**14, 2**16, 2**18, 2**20, 2**22]:
        x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
        y = np.empty_like(x)
        serial(x, y), parallel(x, y), serial3(x, y), parallel3(x, y)
        reps = max(2, 2**20 // n)
        ts, tp = best(lambda: serial(x, y), reps), best(lambda: parallel(x, y), reps)
        ts3, tp3 = best(lambda: serial3(x, y), reps), best(lambda: parallel3(x, y), reps)
        row(f"n = 2^{n.bit_length() - 1}", f"tanh: {ts * 1e6:.1f}/{tp * 1e6:.1f} us", f"{ts / tp:.2f}x",
            f"x*3: {ts3 * 1e6:.1f}/{tp3 * 1e6:.1f} us", f"{ts3 / tp3:.2f}x")


def softmax() -> None:
    print("\n== fused softmax over [4096,1024] float32")
    x = np.random.default_rng(0).standard_normal((4096, 1024)).astype(np.float32)

    def sm(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    f = fj.jit(sm)
    f(x), f(x)
    np.testing.assert_allclose(f(x), sm(x), rtol=2e-5, atol=1e-7)
    row("numpy", f"{median(lambda: sm(x)) * 1e3:.2f} ms")
    row("fj.jit (row kernel)", f"{median(lambda: f(x)) * 1e3:.2f} ms",
        ", ".join(k.name for k in f.lower(x).compile().kernels))


_STEP_SCRIPT = """
import sys, time, math, json
sys.path.insert(0, 'bench')
import numpy as np, fusejit as fj
from workloads import make_cnn, mlp_loss_fn, sgd_step_fn, _f32, _rng
out = {}
(case,) = make_cnn('full')
steps = [('CNN step b256', fj.jit(case.fn), case.args)]
for batch, hidden in [(512, 256), (4096, 256), (4096, 1024)]:
    sizes = (64, hidden, hidden, 10); rng = _rng(); params = {}
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f'w{i}'] = _f32(rng, a, b, scale=math.sqrt(2.0 / a)); params[f'b{i}'] = np.zeros(b, np.float32)
    x = _f32(rng, batch, 64); labels = rng.integers(0, 10, batch)
    steps.append((f'MLP {hidden} wide, b{batch}', fj.jit(sgd_step_fn(mlp_loss_fn(np))), (params, x, labels)))
for name, f, args in steps:
    f(*args); f(*args)
    ts = []
    for _ in range(9):
        t0 = time.perf_counter(); f(*args); ts.append(time.perf_counter() - t0)
    out[name] = float(np.median(ts))
print(json.dumps(out))
"""


def blas_threads() -> None:
    print("\n== BLAS threads in training steps (FUSEJIT_BLAS_THREADS), ms per step")
    results = {}
    for setting in ("1", "2", "auto"):
        env = dict(os.environ, FUSEJIT_BLAS_THREADS=setting, PYTHONPATH=str(REPO))
        out = subprocess.run([sys.executable, "-c", _STEP_SCRIPT], env=env, capture_output=True, text=True,
                             cwd=REPO, check=True)
        results[setting] = json.loads(out.stdout.splitlines()[-1])
    for name in results["auto"]:
        row(name, *(f"{k}: {results[k][name] * 1e3:.2f}" for k in ("1", "2", "auto")))


SECTIONS = {
    "overhead": overhead, "compile": compile_times, "retrace": retrace, "bandwidth": bandwidth,
    "blas": blas, "threads": blas_threads, "calls": calls, "prange": prange, "softmax": softmax,
}  # fmt: skip


def main(argv: list[str]) -> None:
    names = argv or list(SECTIONS)
    print(f"numba {numba.__version__}, numpy {np.__version__}, {os.cpu_count()} cpus, "
          f"threads {numba.get_num_threads()}, threshold {config.value('parallel_threshold')}")
    for name in names:
        SECTIONS[name]()


if __name__ == "__main__":
    main(sys.argv[1:])
