"""Conv kernel strategies per shape: direct loops, taps, im2col + GEMM, shifted GEMMs.

    python bench/bench_conv.py [--repeat 50] [--strategies direct,taps,gemm,shifted] [--clock thread]
    python bench/bench_conv.py --gradients [--strategies rows,table] ...

For each shape the same jitted conv (3x3, padding 1, float32) is compiled once per
strategy (the thresholds of ``fusejit.codegen.conv`` set to force it) and timed: the
median of interleaved calls, with GFLOP/s (2 * N * O * P * C * 9 flops per call) and the
median ratio of each call's time to the first strategy's call beside it. The thresholds
should sit where the winner changes. The shapes include those of W7-W9's convs: a forward
conv ``C -> O`` at a side and its input gradient, the conv ``O -> C`` at the same side.
``--clock thread`` times the CPU time of the calling thread (the kernels and their
one-thread BLAS run on it), which other processes on a loaded machine disturb less
than the wall clock.

``--gradients`` times each shape's weight-gradient conv instead (the input's planes by
the output gradient's, ``[C, N, side, side]`` by ``[O, N, side, side]`` into ``[C, O,
3, 3]``, padding 1): im2col with the windows unfolded into rows (``rows``, the default
for a kernel gradient's shape) against the column layout through the offset table
(``table``), with the same flop count.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fusejit as fj
from fusejit import nn
from fusejit.codegen import conv as conv_codegen
from fusejit.codegen import conv_kn2row, conv_taps

# (batch, in channels, side, out channels)
SHAPES = [(64, 1, 8, 32), (256, 1, 8, 16), (64, 2, 8, 32), (64, 3, 32, 32), (64, 4, 16, 16),
          (64, 8, 16, 32), (64, 16, 16, 16), (64, 16, 8, 32), (64, 32, 8, 64), (64, 32, 4, 64), (64, 64, 4, 32),
          (64, 32, 16, 64), (64, 64, 16, 32), (64, 64, 8, 128), (64, 128, 8, 64)]
# The thresholds that force each strategy (module, name): value.
_GEMMS = {(conv_codegen, "DIRECT_MAX_CONTRACTION"): 0, (conv_taps, "TAPS_MAX_CONTRACTION"): 0,
          (conv_taps, "TAPS_MAX_CONTRACTION_LARGE"): 0, (conv_kn2row, "KN2ROW_MIN_CHANNELS"): 10**9}
STRATEGIES = {
    "direct": {(conv_codegen, "DIRECT_MAX_CONTRACTION"): 10**9},
    "taps": {(conv_codegen, "DIRECT_MAX_CONTRACTION"): 0, (conv_taps, "TAPS_MAX_CONTRACTION"): 10**9},
    "kn2row": {**_GEMMS, (conv_kn2row, "KN2ROW_MIN_CHANNELS"): 0, (conv_kn2row, "KN2ROW_MIN_POSITIONS"): 0},
    "gemm": {**_GEMMS, (conv_codegen, "SHIFTED_MIN_ROWS"): 10**9},
    "shifted": {**_GEMMS, (conv_codegen, "SHIFTED_MIN_ROWS"): 0, (conv_codegen, "SHIFTED_MIN_CHANNELS"): 0},
    # (--gradients) the layouts of a kernel gradient's im2col
    "rows": {},
    "table": {(conv_codegen, "uses_window_rows"): lambda op: False},
}


def _compiled(x: np.ndarray, w: np.ndarray, strategy: str):
    saved = {k: getattr(*k) for k in STRATEGIES[strategy]}
    for (module, name), v in STRATEGIES[strategy].items():
        setattr(module, name, v)
    try:
        return fj.jit(lambda x, w: nn.conv2d(x, w, padding=1)).lower(x, w).compile()
    finally:
        for (module, name), v in saved.items():
            setattr(module, name, v)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset of "
                   + ",".join(STRATEGIES))
    p.add_argument("--clock", choices=("wall", "thread"), default="wall")
    p.add_argument("--gradients", action="store_true", help="time the weight-gradient convs (rows, table)")
    args = p.parse_args()
    if args.gradients and args.strategies == p.get_default("strategies"):
        args.strategies = "rows,table"
    strategies = args.strategies.split(",")
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    rng = np.random.default_rng(0)
    print(f"{'N,C,HxW,O':>18} {'K=C*9':>6} " + " ".join(f"{k + ' ms':>10} {'GFLOP/s':>8} {'ratio':>6}"
                                                          for k in strategies) + "  fastest")
    for n, c, side, o in SHAPES:
        x = rng.standard_normal((n, c, side, side), dtype=np.float32)
        w = rng.standard_normal((o, c, 3, 3), dtype=np.float32)
        if args.gradients:  # the input's planes by the output gradient's: [C, O, 3, 3]
            x, w = x.transpose(1, 0, 2, 3).copy(), rng.standard_normal((o, n, side, side), dtype=np.float32)
        fns = {kind: _compiled(x, w, kind) for kind in strategies}
        for f in fns.values():
            f(x, w)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeat):
            for kind, f in fns.items():
                t0 = clock()
                f(x, w)
                times[kind].append(clock() - t0)
        flops = 2 * n * o * side * side * c * 9
        med = {k: float(np.median(v)) for k, v in times.items()}
        ratio = {k: float(np.median(np.array(v) / np.array(times[strategies[0]]))) for k, v in times.items()}
        best = min(ratio, key=ratio.get)
        print(f"{f'{n},{c},{side}x{side},{o}':>18} {c * 9:>6} "
              + " ".join(f"{med[k] * 1e3:>10.3f} {flops / med[k] / 1e9:>8.2f} {ratio[k]:>6.3f}" for k in strategies)
              + f"  {best}", flush=True)


if __name__ == "__main__":
    main()
