"""Parallel CPU kernels three ways (issue 12): Numba parfors, chunks on fusejit's threads,
serial.

    python bench/bench_parallel_chunks.py              # compile and run, W1-W4
    python bench/bench_parallel_chunks.py compile W2   # some sections, some workloads

Variants of every kernel of W1-W4 (full size) that runs on threads:
  parfor  ``config parallel_chunks`` off: ``prange`` in a ``parallel=True`` function
  chunks  on: serial ``nogil`` code over one chunk, called on ``fusejit.runtime.chunks``
  serial  the parallel threshold above the kernel: one thread, no chunk arguments

Sections:
  compile  seconds Numba takes to compile each kernel from an empty cache: a fresh process
           per kernel and variant (LLVM initialised first, the math library included)
  run      median (and 90th percentile) ms per call through ``fj.jit``, the variants
           interleaved in one process per thread count (NUMBA_NUM_THREADS=1, 2)

Not a test; timings are the machine's at that moment (say how loaded it was).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = ("parfor", "chunks", "serial")
WORKLOADS = ("W1", "W2", "W3", "W4")
ROUNDS = 7


def cases(keys: list[str]) -> list:
    from bench import workloads

    return [c for w in workloads.WORKLOADS if w.key in keys for c in w.make("full")]


def settings(variant: str) -> dict:
    return {"parfor": {"parallel_chunks": False}, "chunks": {"parallel_chunks": True},
            "serial": {"parallel_threshold": 1 << 62}}[variant]


def parallel_steps(case, variant: str) -> list:
    """The plan's steps (lowered, not compiled) of ``case`` that run on threads under the
    parfor setting, as lowered under ``variant``."""
    import fusejit as fj
    from fusejit import config
    from fusejit.runtime.plan import plan_call

    lowered = fj.jit(case.fn, donate_argnums=case.donate_argnums).lower(*case.args)
    with config.override(parallel_chunks=False):
        wanted = [k for k, sp in enumerate(plan_call(lowered.optimized, lowered.fused, case.donate_argnums,
                                                     None).steps) if sp.lowered.kernel.parallel]
    with config.override(**settings(variant)):
        steps = plan_call(lowered.optimized, lowered.fused, case.donate_argnums, None).steps
        return [steps[k] for k in wanted]


def compile_child(key: str, variant: str) -> None:
    """One workload's parallel kernels compiled under ``variant`` in this fresh process."""
    import numba
    from numba import types

    from fusejit import config
    from fusejit.codegen.target import CPU
    from fusejit.runtime.cache import load_module
    from fusejit.runtime.cpu import _numba_types

    numba.njit(lambda x: x + 1)(1)  # the one-time LLVM initialisation, out of the timings
    _, nbt = _numba_types()
    seen = set()
    for case in cases([key]):
        for sp in parallel_steps(case, variant):
            with config.override(**settings(variant)):
                kernel = sp.lowered.kernel
                source, chunked = CPU.print_module(kernel), CPU.chunked(kernel)
            if source in seen:
                continue  # another size of the same kernel (W1 4M and 16M): one module
            seen.add(source)
            sig = tuple(types.Array(nbt[a.dtype], 1, "C") for a in kernel.arrays)
            sig += (types.int64,) * (len(kernel.ints) + 3 * chunked)
            start = time.perf_counter()
            getattr(load_module(source), kernel.name).compile(sig)
            print(json.dumps({"case": case.label, "kernel": kernel.name, "variant": variant,
                              "compile_s": round(time.perf_counter() - start, 3)}), flush=True)


def run_child(keys: list[str]) -> None:
    """Steady state of every variant, interleaved, at this process's thread count."""
    import fusejit as fj
    from fusejit import config

    for case in cases(keys):
        calls = {}
        for variant in VARIANTS:
            with config.override(**settings(variant)):
                compiled = fj.jit(case.fn).lower(*case.args).compile()  # no donation: same arguments each call
            calls[variant] = lambda compiled=compiled, args=case.args: compiled(*args)
            calls[variant]()
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(ROUNDS):
            for variant, call in calls.items():
                start = time.perf_counter()
                while time.perf_counter() - start < 0.15:
                    t = time.perf_counter()
                    call()
                    times[variant].append(time.perf_counter() - t)
        row = {"case": case.label, "threads": int(os.environ.get("NUMBA_NUM_THREADS", "0"))}
        for variant, ts in times.items():
            ts.sort()
            row[variant] = [round(ts[len(ts) // 2] * 1e3, 3), round(ts[int(len(ts) * 0.9)] * 1e3, 3)]
        print(json.dumps(row), flush=True)


def child(args: list[str], env: dict[str, str]) -> list[dict]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        if argv[1] == "compile":
            compile_child(argv[2], argv[3])
        else:
            run_child(argv[2:])
        return
    sections = [a for a in argv if a in ("compile", "run")] or ["compile", "run"]
    keys = [a.upper() for a in argv if a.upper() in WORKLOADS] or list(WORKLOADS)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if "compile" in sections:
        for key in keys:
            for variant in VARIANTS:
                with tempfile.TemporaryDirectory() as tmp:
                    env = {"FUSEJIT_CACHE_DIR": f"{tmp}/fusejit", "NUMBA_CACHE_DIR": f"{tmp}/numba",
                           "FUSEJIT_COMPILE_WORKERS": "0"}
                    for row in child(["compile", key, variant], env):
                        print(f"compile  {row['case']:28} {row['kernel']:14} {variant:7} {row['compile_s']:7.3f} s")
    if "run" in sections:
        for threads in (1, 2):
            for row in child(["run", *keys], {"NUMBA_NUM_THREADS": str(threads)}):
                cells = "  ".join(f"{v} {row[v][0]:8.3f} ms (p90 {row[v][1]:8.3f})" for v in VARIANTS)
                print(f"run      {row['case']:28} {threads} thread(s)  {cells}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
