"""What data parallelism over MPI costs on this machine, and a model of how it scales.

    mpiexec -n 2 python bench/bench_distributed.py [--json out.json] [--quick]

1. ``Allreduce`` (in place, float32 sum) of 4 B to 64 MiB between the 2 ranks: the
   median of repeated calls through mpi4py, and through a jitted ``fj.distributed.psum``
   with and without its agreement check (the host op's own overhead is the difference).
2. The fit ``t(n) = alpha + n / beta`` (least squares, relative error, messages up to
   4 MiB: the range of gradient buckets): ``alpha`` the latency of one call, ``beta`` the
   bandwidth.
3. The W5 and W9 training steps of ``bench/workloads.py`` (full size) timed on rank 0
   while rank 1 waits: compute per step, and the bytes of their parameters, which is the
   bucket a data-parallel step all-reduces (one call per step).
4. The model of a step on N ranks: ``compute + allreduce(N)``, where a ring allreduce
   sends ``2 (N - 1) / N * bytes`` per rank in ``2 (N - 1)`` latency-bound steps and
   recursive doubling ``log2 N`` full messages in ``log2 N`` steps; MPI libraries pick
   the cheaper (Thakur, Rabenseifner and Gropp, "Optimization of collective
   communication operations in MPICH", 2005). Weak scaling: every rank keeps the
   workload's batch; strong scaling: the batch is split over the ranks (compute / N).
   The agreement check before the bucket is one more 16-byte allreduce per step.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_backend import median  # noqa: E402

import fusejit as fj  # noqa: E402
from fusejit import distributed as D  # noqa: E402

SIZES = [4 << k for k in range(0, 25, 2)]  # 4 B to 64 MiB


def _median_time(call, reps: int) -> float:  # noqa: ANN001
    call()  # warm up (and the agreement check of a new shape)
    return median(call, reps)


def measure_allreduce(quick: bool) -> list[dict]:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    psum = fj.jit(D.psum)
    rows = []
    for nbytes in SIZES:
        buf = np.ones(nbytes // 4, np.float32)
        reps = max(5, min(2000, int(2e8 / max(nbytes, 1e5))) // (10 if quick else 1))
        comm.Barrier()
        raw = _median_time(lambda: comm.Allreduce(MPI.IN_PLACE, buf), reps)  # noqa: B023
        comm.Barrier()
        jitted = _median_time(lambda: psum(buf), reps)  # noqa: B023
        comm.Barrier()
        with fj.config.override(distributed_checks=False):  # on both ranks alike
            unchecked = _median_time(lambda: psum(buf), reps)  # noqa: B023
        rows.append({"bytes": nbytes, "mpi4py_s": raw, "psum_jit_s": jitted, "psum_unchecked_s": unchecked})
    return rows


def fit(rows: list[dict], up_to: int = 4 << 20) -> tuple[float, float]:
    """(alpha in s, beta in B/s): least squares of ``t = alpha + n / beta`` weighted by
    ``1 / t`` (each size counts by its relative error), over messages of ``up_to`` bytes."""
    used = [r for r in rows if r["bytes"] <= up_to]
    t = np.array([r["mpi4py_s"] for r in used])
    design = np.stack([np.ones_like(t), np.array([r["bytes"] for r in used], float)], axis=1) / t[:, None]
    (alpha, inverse_beta), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    return float(alpha), float(1 / inverse_beta)


def measure_steps(quick: bool) -> dict[str, dict]:
    import workloads

    out = {}
    for key, make in (("W5", workloads.make_mlp), ("W9", workloads.make_cifar_cnn)):
        (case,) = make("full")
        step = fj.jit(case.fn)
        args = case.args
        params = args[0][0] if key == "W9" else args[0]  # W9's first argument: (params, velocity)
        param_bytes = sum(np.asarray(a).nbytes for a in fj.tree_leaves(params))
        seconds = _median_time(lambda: step(*args), 5 if quick else 30)  # noqa: B023
        out[key] = {"label": case.name, "compute_s": seconds, "param_bytes": param_bytes,
                    "batch": int(np.asarray(args[1]).shape[0])}
    return out


def allreduce_model(n: int, nbytes: float, alpha: float, beta: float) -> float:
    """Seconds of one allreduce of ``nbytes`` over ``n`` ranks (module docstring)."""
    if n == 1:
        return 0.0
    ring = 2 * (n - 1) * alpha + 2 * (n - 1) / n * nbytes / beta
    doubling = math.ceil(math.log2(n)) * (alpha + nbytes / beta)
    return min(ring, doubling)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    D.initialize()
    if D.size() != 2:
        raise SystemExit("run under mpiexec -n 2")
    rows = measure_allreduce(args.quick)
    alpha, beta = fit(rows)
    from mpi4py import MPI

    steps = measure_steps(args.quick) if D.is_main() else {}
    # Rank 1 waits while rank 0 times the steps, sleeping: a blocking MPI wait would spin
    # on a core that rank 0 needs.
    done = MPI.COMM_WORLD.Ibarrier()
    while not done.Test():
        time.sleep(0.01)
    if not D.is_main():
        return 0
    print("Allreduce between 2 ranks of one machine (in place, float32 sum), median per call")
    print(f"{'bytes':>10}  {'mpi4py':>10}  {'jit psum':>10}  {'no check':>10}  {'GB/s (mpi4py)':>13}")
    for r in rows:
        print(f"{r['bytes']:>10}  {r['mpi4py_s'] * 1e6:>8.1f}us  {r['psum_jit_s'] * 1e6:>8.1f}us  "
              f"{r['psum_unchecked_s'] * 1e6:>8.1f}us  {r['bytes'] / r['mpi4py_s'] / 1e9:>13.2f}")
    print(f"fit: latency alpha = {alpha * 1e6:.1f} us per call, bandwidth beta = {beta / 1e9:.2f} GB/s")
    model = {}
    for key, s in steps.items():
        print(f"\n{key} {s['label']}: compute {s['compute_s'] * 1e3:.2f} ms per step on one rank, "
              f"{s['param_bytes'] / 1e3:.0f} kB of gradients all-reduced per step (one call, and its check)")
        print(f"{'ranks':>6}  {'allreduce':>10}  {'weak: step':>11} {'eff.':>5}  {'strong: step':>13} {'speed-up':>8}")
        model[key] = []
        for n in (2, 8, 64, 512):
            comm = allreduce_model(n, s["param_bytes"], alpha, beta) + allreduce_model(n, 16, alpha, beta)
            weak = s["compute_s"] + comm
            strong = s["compute_s"] / n + comm
            model[key].append({"ranks": n, "allreduce_s": comm, "weak_step_s": weak, "strong_step_s": strong})
            print(f"{n:>6}  {comm * 1e3:>8.3f}ms  {weak * 1e3:>9.2f}ms {s['compute_s'] / weak:>5.0%}  "
                  f"{strong * 1e3:>11.3f}ms {s['compute_s'] / strong:>8.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"allreduce": rows, "alpha_s": alpha, "beta_Bps": beta,
                                               "steps": steps, "model": model}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
