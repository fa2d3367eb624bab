"""What data parallelism over MPI costs on this machine, and a model of how it scales.

    mpiexec -n 2 python bench/bench_distributed.py [--json out.json] [--quick] [--overlap-only] [--models ...]

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
5. Overlap (``--overlap-only`` runs just this): data-parallel SGD steps run on both
   ranks, each with its own batch of the workload's size, the variants interleaved
   (a barrier, then one timed step each, repeated; medians on rank 0): ``local`` (no
   collective: the compute), the gradients' ``pmean`` in one bucket and in about three
   (``bucket_bytes`` = a third of the parameters), blocking and ``overlap=True``, with
   the MPI calls per step. Models: W5, W8 (the digits demo's CNN, 32 images per rank, with
   SGD), W9 and ``L``, an MLP 1024-2048-2048-2048-10 (42 MB of parameters, batch 32 per
   rank), large enough for its buckets' all-reduces to take a while. Launch with
   ``-genv MPICH_ASYNC_PROGRESS 1`` to let MPICH move the data while the kernels run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

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


def _large_mlp(batch: int = 32) -> tuple[Any, tuple]:
    """The ``L`` model: an MLP 1024-2048-2048-2048-10 (relu, cross-entropy)."""
    import workloads

    rng = np.random.default_rng(0)
    sizes = (1024, 2048, 2048, 2048, 10)
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        params[f"w{i}"] = (rng.standard_normal((fan_in, fan_out)) * math.sqrt(2.0 / fan_in)).astype(np.float32)
        params[f"b{i}"] = np.zeros(fan_out, np.float32)
    cross_entropy = workloads.cross_entropy_fn(np)

    def loss(p: Any, x: Any, labels: Any) -> Any:
        h = x
        for i in range(1, len(sizes)):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            h = np.maximum(h, 0.0) if i < len(sizes) - 1 else h
        return cross_entropy(h, labels)

    x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    return loss, (params, x, rng.integers(0, 10, batch))


def _overlap_model(key: str) -> tuple[Any, tuple]:
    """(loss(params, x, labels), (params, x, labels)) of model ``key`` of section 5."""
    import workloads

    if key == "W5":
        (w5,) = workloads.make_mlp("full")
        return workloads.mlp_loss_fn(np), w5.args
    if key == "W8":  # the digits demo's model and per-rank batch (32 of a global 64), with SGD
        (w8,) = workloads.make_digits_cnn("full")
        return (workloads.conv_net_loss_fn(np, workloads._fj_conv, workloads._fj_pool, 2),
                (w8.args[0][0], w8.args[1][:32], w8.args[2][:32]))
    if key == "W9":
        (w9,) = workloads.make_cifar_cnn("full")
        return (workloads.conv_net_loss_fn(np, workloads._fj_conv, workloads._fj_pool, 3),
                (w9.args[0][0], w9.args[1], w9.args[2]))
    return _large_mlp()


def measure_overlap(quick: bool, models: list[str]) -> dict[str, dict]:
    """Section 5 (module docstring) for ``models``, on both ranks; the times are rank 0's."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    out = {}
    for key in models:
        loss, (params, x, labels) = _overlap_model(key)
        param_bytes = sum(a.nbytes for a in fj.tree_leaves(params))

        def step(p: Any, x: Any, labels: Any, reduce: bool, bucket_bytes: int | None, overlap: bool,
                 loss: Any = loss) -> Any:
            grads = fj.grad(loss)(p, x, labels)
            if reduce:
                grads = D.pmean(grads, bucket_bytes=bucket_bytes, overlap=overlap)
            return fj.tree_map(lambda w, g: w - 0.01 * g, p, grads)

        jitted = fj.jit(step, static_argnums=(3, 4, 5))
        third = param_bytes // 3 + 1
        variants = {"local": (False, None, False)}
        for bucket_bytes in (None, third):
            for overlap in (False, True):
                variants[f"{'1' if bucket_bytes is None else '~3'} bucket, {'overlap' if overlap else 'blocking'}"] = (
                    True, bucket_bytes, overlap)
        info = {}
        for name, flags in variants.items():
            compiled = jitted.lower(params, x, labels, *flags).compile()
            phases = [h.phase for h in compiled.executable.call_plan.host_steps]
            before = D.stats().calls
            jitted(params, x, labels, *flags)  # warm-up, and the MPI calls of one step
            info[name] = {"buckets": phases.count("run") + phases.count("start"), "overlapped": phases.count("wait"),
                          "mpi_calls": D.stats().calls - before, "times": []}
        reps = {"W5": 40, "W8": 60, "W9": 20, "L": 30}[key] // (4 if quick else 1)
        for _ in range(reps):
            for name, flags in variants.items():
                comm.Barrier()
                start = time.perf_counter()
                jitted(params, x, labels, *flags)
                info[name]["times"].append(time.perf_counter() - start)
        for v in info.values():
            v["median_s"] = float(np.median(v.pop("times")))
        out[key] = {"param_bytes": param_bytes, "batch": int(x.shape[0]), "variants": info}
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
    p.add_argument("--overlap-only", action="store_true", help="only section 5 (module docstring)")
    p.add_argument("--models", nargs="+", choices=("W5", "W8", "W9", "L"), default=None,
                   help="the models of section 5 (default: all; W5, W8 and W9 with --quick)")
    args = p.parse_args(argv)
    D.initialize()
    if D.size() != 2:
        raise SystemExit("run under mpiexec -n 2")
    overlap = measure_overlap(args.quick, args.models or ["W5", "W8", "W9"] + ["L"] * (not args.quick))
    if args.overlap_only:
        if D.is_main():
            print_overlap(overlap)
            if args.json:
                Path(args.json).write_text(json.dumps({"overlap": overlap}, indent=1))
        return 0
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
    print_overlap(overlap)
    if args.json:
        Path(args.json).write_text(json.dumps({"allreduce": rows, "alpha_s": alpha, "beta_Bps": beta,
                                               "steps": steps, "model": model, "overlap": overlap}, indent=1))
    return 0


def print_overlap(overlap: dict[str, dict]) -> None:
    print("\nData-parallel SGD steps on the 2 ranks, blocking vs overlapped gradient psums "
          "(median per step on rank 0, variants interleaved)")
    print(f"{'model':>5}  {'variant':<22} {'buckets':>7} {'split':>5} {'MPI calls':>9} {'step':>10} "
          f"{'vs blocking':>11}")
    for key, m in overlap.items():
        v = m["variants"]
        for name, r in v.items():
            blocking = v.get(name.replace("overlap", "blocking"))
            gain = (f"{(blocking['median_s'] - r['median_s']) / blocking['median_s']:>+10.1%}"
                    if "overlap" in name and blocking else "")
            print(f"{key:>5}  {name:<22} {r['buckets']:>7} {r['overlapped']:>5} {r['mpi_calls']:>9} "
                  f"{r['median_s'] * 1e3:>8.2f}ms {gain:>11}")
        print(f"       ({m['param_bytes'] / 1e6:.2f} MB of gradients per step, batch {m['batch']} per rank)")


if __name__ == "__main__":
    sys.exit(main())
