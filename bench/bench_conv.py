"""Direct loops vs im2col + GEMM for ``conv`` kernels, per shape: where the choice flips.

    python bench/bench_conv.py [--repeat 50]

For each shape the same jitted conv (3x3, padding 1, float32) is compiled twice, once
with each strategy (``fusejit.codegen.conv.DIRECT_MAX_CONTRACTION`` set below or above
its contraction length), and timed: the median of interleaved calls, with GFLOP/s
(2 * N * O * P * C * 9 flops per call). ``DIRECT_MAX_CONTRACTION`` should sit between the
contraction lengths where direct wins and those where GEMM wins.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fusejit as fj
from fusejit import nn
from fusejit.codegen import conv as conv_codegen

# (batch, in channels, side, out channels)
SHAPES = [(64, 1, 8, 32), (256, 1, 8, 16), (64, 2, 8, 32), (64, 3, 32, 32), (64, 4, 16, 16),
          (64, 32, 4, 64), (64, 32, 16, 64), (64, 64, 8, 128)]


def _compiled(x: np.ndarray, w: np.ndarray, direct: bool):
    saved = conv_codegen.DIRECT_MAX_CONTRACTION
    conv_codegen.DIRECT_MAX_CONTRACTION = 10**9 if direct else 0
    try:
        return fj.jit(lambda x, w: nn.conv2d(x, w, padding=1)).lower(x, w).compile()
    finally:
        conv_codegen.DIRECT_MAX_CONTRACTION = saved


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=50)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'N,C,HxW,O':>18} {'K=C*9':>6} {'direct ms':>10} {'GFLOP/s':>8} {'gemm ms':>9} {'GFLOP/s':>8}  faster")
    for n, c, side, o in SHAPES:
        x = rng.standard_normal((n, c, side, side), dtype=np.float32)
        w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
        fns = {kind: _compiled(x, w, kind == "direct") for kind in ("direct", "gemm")}
        for f in fns.values():
            f(x, w)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeat):
            for kind, f in fns.items():
                t0 = time.perf_counter()
                f(x, w)
                times[kind].append(time.perf_counter() - t0)
        flops = 2 * n * o * side * side * c * 9
        med = {k: float(np.median(v)) for k, v in times.items()}
        best = min(med, key=med.get)
        print(f"{f'{n},{c},{side}x{side},{o}':>18} {c * 9:>6} {med['direct'] * 1e3:>10.3f} "
              f"{flops / med['direct'] / 1e9:>8.2f} {med['gemm'] * 1e3:>9.3f} {flops / med['gemm'] / 1e9:>8.2f}  {best}")


if __name__ == "__main__":
    main()
