"""The benchmark workloads on a GPU: fusejit's CUDA backend (fused and unfused) against
PyTorch eager and ``torch.compile`` on CUDA, side by side in one process.

    python bench/bench_gpu.py [W1 W2 ...] [--size full|small|tiny] [--budget S] [--json F]

Every library keeps its arguments on the GPU (fusejit: ``fj.device_put``; PyTorch:
``.cuda()``) and every timing ends with a device synchronization, so a time is what the
GPU took plus each library's launch overhead. Each time is the median of repeated calls
within ``--budget`` seconds (after two warm-up calls, which compile). W1-W4 also report
achieved bandwidth against a device-to-device copy measured in the same run.
``torch.compile`` runs on W1-W4 only (its compile of a training step takes longer than
this script's time limit). Results are checked against NumPy before they are timed.
Prints a Markdown table.
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

DEFAULT = ["W1", "W2", "W3", "W4", "W5", "W6", "W7"]
COMPILED_TORCH = {"W1", "W2", "W3", "W4"}


def timed(step: Callable[[], None], sync: Callable[[], None], budget: float) -> float:
    """Median seconds of ``step()`` + ``sync()`` after two warm-up calls."""
    for _ in range(2):
        step()
    sync()
    times: list[float] = []
    end = time.perf_counter() + budget
    while len(times) < 5 or (time.perf_counter() < end and len(times) < 2000):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def copy_bandwidth(torch: Any) -> float:
    """Device-to-device copy of 1 GiB: bytes read plus written per second."""
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), torch.cuda.synchronize, 1.0)
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
            row["kernels"] = len(jitted.lower(*args).fused.groups)
        row[f"{name} ms"] = 1e3 * timed(runner(jitted, args, case.carry), cuda.synchronize, budget)
    if case.torch is not None and torch is not None:
        for name, compiled in (("torch eager", False), ("torch.compile", True)):
            if compiled and case.key not in COMPILED_TORCH:
                continue
            port = case.torch(compiled)
            args = fj.tree_map(lambda a: a.cuda() if hasattr(a, "cuda") else a, port.args)
            row[f"{name} ms"] = 1e3 * timed(runner(port.fn, args, port.carry), torch.cuda.synchronize, budget)
    if case.bytes_moved:
        row["fused GB/s"] = case.bytes_moved / (row["fused ms"] * 1e-3) / 1e9
        row["% of copy"] = 100 * case.bytes_moved / (row["fused ms"] * 1e-3) / copy_bw
    return row


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
    for w in workloads.select(opts.workloads):
        for case in w.make(opts.size):
            try:
                rows.append(bench_case(case, opts.budget, torch, copy_bw))
            except Exception as e:  # noqa: BLE001 - a failing workload is a result too
                where = traceback.extract_tb(e.__traceback__)[-1]
                rows.append({"workload": case.label, "check": f"{type(e).__name__}: {str(e)[:160]} "
                                                              f"({Path(where.filename).name}:{where.lineno})"})
            print(table(rows[-1:]), flush=True)
    print()
    print(head)
    print(table(rows))
    if opts.json:
        opts.json.write_text(json.dumps({"header": head, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
