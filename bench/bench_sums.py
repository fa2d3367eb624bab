"""Accuracy and speed of float32 reductions: fusejit vs NumPy (vs JAX when installed).

    python bench/bench_sums.py                 # 1e3 .. 1e8 elements
    python bench/bench_sums.py --max-exp 7     # up to 1e7 (less memory, quicker)

For each size and data set, the relative error of ``sum``, ``mean`` and ``var`` of float32
data against the exact value (computed in float64 with ``math.fsum`` for sums), and the
time of ``jit(sum)`` next to ``np.sum`` (median of ``--repeat`` calls, same process,
interleaved) with its bandwidth. fusejit sums in blocks of 256 (vectorized, float32)
whose totals add up in float64 (``fusejit/codegen/reductions.py``); NumPy sums pairwise
in float32.

Data sets: ``1/255`` (a constant: the worst case for a naive running sum, every rounding
has the same sign), ``U[0,1)``, and ``N(1000, 1)`` (a large mean: the hard case for var).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

import fusejit as fj
import fusejit.numpy as fnp


def data_sets(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "1/255": np.full(n, 1 / 255, np.float32),
        "U[0,1)": rng.random(n, dtype=np.float32),
        "N(1000,1)": (1000 + rng.standard_normal(n, dtype=np.float32)).astype(np.float32),
    }


def exact(name: str, x: np.ndarray) -> float:
    x64 = x.astype(np.float64)
    total = math.fsum(x64)
    if name == "sum":
        return total
    mean = total / x.size
    if name == "mean":
        return mean
    return math.fsum((x64 - mean) ** 2) / x.size


def rel(got: float, want: float) -> float:
    return abs(float(got) - want) / abs(want) if want else abs(float(got))


def timed(fn, x: np.ndarray, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-exp", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    try:
        import jax
        import jax.numpy as jnp

        jax_fns = {"sum": jax.jit(jnp.sum), "mean": jax.jit(jnp.mean), "var": jax.jit(jnp.var)}
    except ImportError:
        jax_fns = None
    ours = {"sum": fj.jit(fnp.sum), "mean": fj.jit(fnp.mean), "var": fj.jit(fnp.var)}
    theirs = {"sum": np.sum, "mean": np.mean, "var": np.var}
    rng = np.random.default_rng(0)
    head = f"{'n':>6} {'data':>10} {'op':>5} {'fusejit':>9} {'NumPy':>9}" + (f" {'JAX':>9}" if jax_fns else "")
    print("relative error vs the exact value (float32 data)")
    print(head)
    speed = []
    for e in range(3, args.max_exp + 1):
        n = 10**e
        for dname, x in data_sets(n, rng).items():
            for op in ("sum", "mean", "var"):
                want = exact(op, x)
                row = f"{f'1e{e}':>6} {dname:>10} {op:>5} {rel(ours[op](x), want):9.1e} {rel(theirs[op](x), want):9.1e}"
                if jax_fns:
                    row += f" {rel(jax_fns[op](x), want):9.1e}"
                print(row)
        x = data_sets(n, rng)["U[0,1)"]
        t_ours, t_np = [], []
        for _ in range(args.repeat):  # interleaved
            t_ours.append(timed(ours["sum"], x, 1))
            t_np.append(timed(np.sum, x, 1))
        speed.append((e, statistics.median(t_ours), statistics.median(t_np), x.nbytes))
    print("\nsum of float32 U[0,1): median time (GB/s)")
    print(f"{'n':>6} {'fusejit':>18} {'NumPy':>18}")
    for e, a, b, nbytes in speed:
        print(f"{f'1e{e}':>6} {a * 1e3:9.3f} ms ({nbytes / a / 1e9:4.1f}) {b * 1e3:9.3f} ms ({nbytes / b / 1e9:4.1f})")


if __name__ == "__main__":
    main()
