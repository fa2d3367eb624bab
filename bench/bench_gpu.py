"""The benchmark workloads on a GPU: fusejit's CUDA backend (fused and unfused) against
PyTorch eager and ``torch.compile`` on CUDA, side by side in one process.

    python bench/bench_gpu.py [W1 W2 ...] [--size full|small|tiny] [--budget S] [--json F]

Every library keeps its arguments on the GPU (fusejit: ``fj.device_put``; PyTorch:
``.cuda()``). Two times per configuration, each the median over ``--budget`` seconds
(after two warm-up calls, which compile):

* ``ms``: one call then a device synchronization (what the GPU took plus the library's
  launch overhead and the wait);
* ``piped ms``: ``PIPE`` calls back to back, then one synchronization, per call: the GPU's
  throughput when the host keeps ahead of it (how a training loop runs). Achieved
  bandwidth (W1-W4, against a device-to-device copy of 1 GiB measured in the same run) is
  computed from it; an input smaller than the L2 cache (60 MB on an H200) is read from it.

``torch.compile`` runs on W1-W4 only (its compile of a training step takes longer than
this script's time limit). Results are checked against NumPy before they are timed.

Then three studies: the per-call overhead of a tiny call (replayed launches vs Numba's
dispatcher vs PyTorch), the device time of each launch of the training steps (CUDA events
around each replayed step), and the training steps with cuBLAS from three GEMM sizes
(``cuda_blas_min_flops``). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads  # noqa: E402

import fusejit as fj  # noqa: E402

DEFAULT = ["W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8"]
COMPILED_TORCH = {"W1", "W2", "W3", "W4"}
PIPE = 20  # calls per synchronization in the pipelined timing
BLAS_THRESHOLDS = (0, 1 << 16, 1 << 20, 1 << 24)  # flops from which a matmul calls cuBLAS


def timed(step: Callable[[], None], sync: Callable[[], None], budget: float, calls: int = 1) -> float:
    """Median seconds per call of ``calls`` back-to-back ``step()`` calls and one ``sync()``
    (after two warm-up calls, which compile)."""
    for _ in range(2):
        step()
    sync()
    rounds: list[float] = []
    end = time.perf_counter() + budget
    while len(rounds) < 5 or (time.perf_counter() < end and len(rounds) < 2000 // calls):
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        sync()
        rounds.append((time.perf_counter() - t0) / calls)
    return statistics.median(rounds)


def piped(step: Callable[[], None], sync: Callable[[], None], budget: float) -> float:
    """``timed`` with ``PIPE`` calls per synchronization."""
    return timed(step, sync, budget, PIPE)


def runner(fn: Callable[..., Any], args: tuple, carry: Callable[[tuple, Any], tuple] | None) -> Callable[[], Any]:
    """A no-argument step; with ``carry``, each call's outputs become the next arguments."""
    state = {"args": args, "out": None}

    def step() -> Any:
        out = fn(*state["args"])
        state["out"] = out
        if carry is not None:
            state["args"] = carry(state["args"], out)
        return out

    return step


def copy_bandwidth(torch: Any, nbytes: int = 1 << 30, budget: float = 1.0) -> float:
    """A device-to-device copy of ``nbytes`` (pipelined): bytes read plus written per
    second."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    seconds = piped(lambda: dst.copy_(src), torch.cuda.synchronize, budget)
    return 2 * src.nbytes / seconds


def check(case: workloads.Case, out: Any) -> str:
    """'ok', or how fusejit's first result differs from NumPy's."""
    ref = case.fn(*case.args)
    got = fj.tree_leaves(out)
    for r, g in zip(fj.tree_leaves(ref), got, strict=True):
        g = np.asarray(g)
        if not np.allclose(g, r, rtol=case.rtol, atol=case.atol):
            return f"differs from NumPy by {np.max(np.abs(g - r)):.3g}"
    return "ok"


def bench_case(case: workloads.Case, budget: float, torch: Any, copy_bw: float) -> dict[str, Any]:
    from numba import cuda

    row: dict[str, Any] = {"workload": case.label}
    for name, fuse in (("fused", True), ("unfused", False)):
        if not fuse and case.key not in COMPILED_TORCH:
            continue  # a training step unfused is hundreds of kernels to compile
        jitted = fj.jit(case.fn, backend="cuda", fuse=fuse, donate_argnums=case.donate_argnums)
        args = fj.device_put(case.args)
        start = time.perf_counter()
        first = jitted(*fj.device_put(case.args))
        cuda.synchronize()
        row[f"{name} first call s"] = time.perf_counter() - start
        if fuse:
            row["check"] = check(case, first)
            lowered = jitted.lower(*args)
            row["kernels"] = len(lowered.fused.groups)
        step = runner(jitted, args, case.carry)
        row[f"{name} ms"] = 1e3 * timed(step, cuda.synchronize, budget)
        row[f"{name} piped ms"] = 1e3 * piped(step, cuda.synchronize, budget)
        if fuse:
            replay = getattr(lowered.executable(), "replay", None)
            row["launches"] = replay.launches if replay else f"no replay: {lowered.executable().replay_refused}"
    if case.torch is not None and torch is not None:
        for name, compiled in (("torch eager", False), ("torch.compile", True)):
            if compiled and case.key not in COMPILED_TORCH:
                continue
            with torch.device("cuda"):
                port = case.torch(compiled)
            args = fj.tree_map(lambda a: a.cuda() if hasattr(a, "cuda") else a, port.args)
            step = runner(port.fn, args, port.carry)
            row[f"{name} ms"] = 1e3 * timed(step, torch.cuda.synchronize, budget)
            row[f"{name} piped ms"] = 1e3 * piped(step, torch.cuda.synchronize, budget)
    if case.bytes_moved:
        row["fused GB/s"] = case.bytes_moved / (row["fused piped ms"] * 1e-3) / 1e9
        row["% of copy"] = 100 * case.bytes_moved / (row["fused piped ms"] * 1e-3) / copy_bw
        if torch is not None:  # a copy moving the same bytes: what this size allows
            same = copy_bandwidth(torch, case.bytes_moved // 2, budget)
            row["% of same-size copy"] = 100 * case.bytes_moved / (row["fused piped ms"] * 1e-3) / same
    return row


class EventTimer:
    """CUDA events around each replayed step (``Replay.timer``): device ms per step name."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, Any, Any]] = []

    def start(self, position: int, name: str) -> None:
        from numba import cuda

        self.name, self.begin = f"{position:2d} {name}", cuda.event()
        self.begin.record()

    def stop(self) -> None:
        from numba import cuda

        end = cuda.event()
        end.record()
        self.pairs.append((self.name, self.begin, end))

    def per_call(self) -> list[tuple[str, float]]:
        """Per step, its median ms over the calls (a host stall between a start event and
        its launch would count as device time: the median drops it)."""
        from numba import cuda

        cuda.synchronize()
        times: dict[str, list[float]] = {}
        for name, begin, end in self.pairs:
            times.setdefault(name, []).append(cuda.event_elapsed_time(begin, end))
        medians = {n: statistics.median(ts) for n, ts in times.items()}
        return sorted(medians.items(), key=lambda nt: -nt[1])


def launch_profile(case: workloads.Case, calls: int = 20) -> str:
    """The device time of each launch of ``case``'s fused step, the largest first."""
    jitted = fj.jit(case.fn, backend="cuda", donate_argnums=case.donate_argnums)
    args = fj.device_put(case.args)
    step = runner(jitted, args, case.carry)
    step()
    replay = jitted.lower(*fj.device_put(case.args)).executable().replay
    if not replay:
        return f"{case.label}: no replay"
    step()
    replay.timer = timer = EventTimer()
    for _ in range(calls):
        step()
    replay.timer = None
    rows = timer.per_call()
    total = sum(t for _, t in rows)
    lines = [f"{case.label}: {len(rows)} launches, {total:.3f} ms of device time per call (events around each; medians)"]
    lines += [f"  {t:8.4f} ms  {name}" for name, t in rows[:12]]
    return "\n".join(lines)


def overhead(budget: float, torch: Any) -> list[dict[str, Any]]:
    """A call of x*2+1 on 16 elements: replayed launches, Numba's dispatcher, PyTorch."""
    from numba import cuda

    x = fj.device_put(np.arange(16, dtype=np.float32))
    rows = []
    for label, replay in (("fused, replayed launches", True), ("fused, Numba dispatcher", False)):
        with fj.config.override(cuda_replay=replay):
            f = fj.jit(lambda a: a * 2.0 + 1.0, backend="cuda")
            f(x)
        step = lambda f=f: f(x)  # noqa: E731
        rows.append({"call": label, "us": 1e6 * timed(step, cuda.synchronize, budget),
                     "piped us": 1e6 * piped(step, cuda.synchronize, budget)})

    @cuda.jit
    def add(a, b, n):  # noqa: ANN001 - the same work as a bare Numba CUDA kernel
        i = cuda.grid(1)
        if i < n:
            b[i] = a[i] * 2.0 + 1.0

    a, b = cuda.to_device(np.arange(16, dtype=np.float32)), cuda.device_array(16, np.float32)
    step = lambda: add[1, 32](a, b, 16)  # noqa: E731
    rows.append({"call": "bare Numba kernel launch", "us": 1e6 * timed(step, cuda.synchronize, budget),
                 "piped us": 1e6 * piped(step, cuda.synchronize, budget)})
    rows.append({"call": "cuda.synchronize alone", "us": 1e6 * timed(lambda: None, cuda.synchronize, budget)})
    if torch is not None:
        t = torch.arange(16, dtype=torch.float32, device="cuda")
        step = lambda: t * 2.0 + 1.0  # noqa: E731
        rows.append({"call": "torch eager", "us": 1e6 * timed(step, torch.cuda.synchronize, budget),
                     "piped us": 1e6 * piped(step, torch.cuda.synchronize, budget)})
    return rows


def blas_study(cases: list[workloads.Case], budget: float) -> list[dict[str, Any]]:
    """Each training step with cuBLAS from each of ``BLAS_THRESHOLDS`` flops per GEMM."""
    from numba import cuda

    rows = []
    for case in cases:
        row: dict[str, Any] = {"workload": case.label}
        for flops in BLAS_THRESHOLDS:
            with fj.config.override(cuda_blas_min_flops=flops):
                jitted = fj.jit(case.fn, backend="cuda", donate_argnums=case.donate_argnums)
                args = fj.device_put(case.args)
                step = runner(jitted, args, case.carry)
                step()
            row[f"cuBLAS from 2^{flops.bit_length() - 1 if flops else 0} piped ms"] = (
                1e3 * piped(step, cuda.synchronize, budget))
        rows.append(row)
    return rows


def guarded(label: str, run: Callable[[], Any]) -> Any:
    """``run()``, or a row saying where it failed: a failing workload is a result too."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001
        where = traceback.extract_tb(e.__traceback__)[-1]
        return {"workload": label, "check": f"{type(e).__name__}: {str(e)[:300]} "
                                            f"({Path(where.filename).name}:{where.lineno})"}


def table(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workloads", nargs="*", default=DEFAULT)
    p.add_argument("--size", default="full", choices=workloads.SIZES)
    p.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per configuration")
    p.add_argument("--json", type=Path)
    p.add_argument("--no-studies", action="store_true", help="only the workloads and their launch profiles")
    opts = p.parse_args(argv)
    import numba
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        copy_bw = copy_bandwidth(torch)
        head = (f"GPU: {props.name}, {props.multi_processor_count} SMs; numba {numba.__version__}; "
                f"torch {torch.__version__}; device-to-device copy {copy_bw / 1e9:.0f} GB/s (read + write)")
    else:  # a dry run on Numba's CUDA simulator: fusejit's columns only
        torch, copy_bw = None, float("nan")
        head = f"no GPU for PyTorch (NUMBA_ENABLE_CUDASIM={numba.config.ENABLE_CUDASIM}): fusejit only"
    print(head, flush=True)
    rows = []
    steps = []  # every case but W6, for the launch profiles
    for w in workloads.select(opts.workloads):
        for case in w.make(opts.size):
            if case.key != "W6":
                steps.append(case)
            rows.append(guarded(case.label, lambda case=case: bench_case(case, opts.budget, torch, copy_bw)))
            print(table(rows[-1:]), flush=True)
    trains = [c for c in steps if c.key in ("W5", "W7")]
    studies = {"per-call overhead (x*2+1 on 16 elements)": lambda: overhead(opts.budget, torch),
               "cuBLAS from how many flops per GEMM": lambda: blas_study(trains, opts.budget)}
    results: dict[str, Any] = {}
    for title, study in ({} if opts.no_studies else studies).items():
        results[title] = guarded(title, study)
    profiles = [guarded(case.label, lambda case=case: launch_profile(case)) for case in steps]
    print()
    print(head)
    print(table(rows))
    for title, got in results.items():
        print(f"\n{title}:\n{table(got) if isinstance(got, list) else got}")
    for p in profiles:
        print(f"\n{p}")
    if opts.json:
        opts.json.write_text(json.dumps({"header": head, "rows": rows, "studies": results, "profiles": profiles},
                                        indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
