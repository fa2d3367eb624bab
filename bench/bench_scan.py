"""Loops: compile time against the sequence length, and the cost of one loop iteration.

    python bench/bench_scan.py                 # everything (a few minutes)
    python bench/bench_scan.py --lengths 8 32  # fewer lengths
    python bench/bench_scan.py --no-unrolled   # only the scan versions

1. *Compile time vs T* (the table of issue 13): ``fj.jit(fj.grad(loss))`` of a tanh RNN
   (hidden 64, batch 64, inputs 64) over T steps, written as a Python ``for`` loop
   (traced, hence unrolled: the program grows with T) and with ``fj.lax.scan`` (the step
   traced once). Each first call runs in a fresh process, with an empty compilation
   cache ("cold") and then again with the cache the cold run filled ("warm"); the table
   gives the traced ops, the kernels and the seconds of each first call.
2. *Per-iteration overhead*: a scan whose body is one tiny kernel (``c + x`` on one
   element), so that its time per iteration is the driver's and the body call's own cost
   (``fusejit.runtime.control``), next to one call of the body's executable alone.
3. *Fusion time vs op count*: the fusion pass alone on the unrolled RNN's gradient for
   growing T (up to about 10,000 ops); it should grow linearly.

Timings are wall-clock medians on whatever else the machine is doing; read them as such.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HIDDEN, BATCH, INPUTS = 64, 64, 64

CHILD = r"""
import json, sys, time
import numpy as np
import fusejit as fj
T, variant = int(sys.argv[1]), sys.argv[2]
H, B, I = {hidden}, {batch}, {inputs}
rng = np.random.default_rng(0)
w = (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)
u = (rng.standard_normal((I, H)) / np.sqrt(I)).astype(np.float32)
xs = rng.standard_normal((T, B, I)).astype(np.float32)

def loss(w, u, xs):
    h = np.zeros((B, H), np.float32)
    if variant == "unrolled":
        for t in range(T):
            h = np.tanh(h @ w + xs[t] @ u)
    else:
        h, _ = fj.lax.scan(lambda h, x: (np.tanh(h @ w + x @ u), None), h, xs)
    return (h * h).mean()

step = fj.jit(fj.grad(loss, argnums=(0, 1)))
start = time.perf_counter()
step(w, u, xs)
first = time.perf_counter() - start
lowered = step.lower(w, u, xs)
print(json.dumps({{"first": first, "ops": len(lowered.traced.ops), "kernels": len(lowered.compile().kernels)}}))
"""


def first_call(length: int, variant: str, cache: str) -> dict:
    env = dict(os.environ, FUSEJIT_CACHE_DIR=cache)
    code = CHILD.format(hidden=HIDDEN, batch=BATCH, inputs=INPUTS)
    out = subprocess.run(
        [sys.executable, "-c", code, str(length), variant],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_table(lengths: list[int], variants: list[str]) -> None:
    print(f"first call of fj.jit(fj.grad(loss)), tanh RNN hidden {HIDDEN}, batch {BATCH} (fresh processes)")
    print(f"{'variant':9} {'T':>4} {'ops':>6} {'kernels':>8} {'cold':>8} {'warm':>8}")
    for variant in variants:
        for length in lengths:
            with tempfile.TemporaryDirectory() as cache:
                cold = first_call(length, variant, cache)
                warm = first_call(length, variant, cache)
            print(
                f"{variant:9} {length:>4} {cold['ops']:>6} {cold['kernels']:>8} {cold['first']:>7.2f}s "
                f"{warm['first']:>7.2f}s",
                flush=True,
            )


def iteration_overhead(length: int = 20_000) -> None:
    import fusejit as fj

    scan = fj.jit(lambda c, xs: fj.lax.scan(lambda c, x: (c + x, None), c, xs)[0])
    c, xs = np.zeros(1, np.float32), np.ones((length, 1), np.float32)
    scan(c, xs)
    loop = min(_timed(lambda: scan(c, xs)) for _ in range(5)) / length
    body = scan.lower(c, xs).compile().executable.nested_executables()[0]
    args = [np.zeros(1, np.float32), np.ones(1, np.float32)]
    call = min(_timed(lambda: [body.run(args) for _ in range(length)]) for _ in range(5)) / length
    print(
        f"scan of a one-kernel body: {loop * 1e6:.2f} us per iteration; "
        f"the body's executable alone: {call * 1e6:.2f} us per call"
    )


def fusion_scaling(lengths: list[int]) -> None:
    import fusejit as fj
    from fusejit.runtime.executable import partition

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)).astype(np.float32)
    u = (rng.standard_normal((INPUTS, HIDDEN)) / np.sqrt(INPUTS)).astype(np.float32)
    print("fusion pass on the unrolled tanh RNN's gradient")
    print(f"{'T':>5} {'ops':>7} {'kernels':>8} {'fusion':>9} {'us/op':>7}")
    for length in lengths:
        xs = rng.standard_normal((length, BATCH, INPUTS)).astype(np.float32)

        def loss(w, u, xs, length=length):  # noqa: ANN001, ANN202
            h = np.zeros((BATCH, HIDDEN), np.float32)
            for t in range(length):
                h = np.tanh(h @ w + xs[t] @ u)
            return (h * h).mean()

        fn = fj.jit(fj.grad(loss, argnums=(0, 1))).lower(w, u, xs).optimized
        seconds = min(_timed(lambda fn=fn: partition(fn)) for _ in range(2))
        print(
            f"{length:>5} {len(fn.ops):>7} {len(partition(fn).groups):>8} {seconds:>8.3f}s "
            f"{seconds / len(fn.ops) * 1e6:>7.0f}",
            flush=True,
        )


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="*", default=[8, 32, 128])
    p.add_argument(
        "--no-unrolled", action="store_true", help="skip the unrolled Python loops (slow at T=128)"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the compile-time table")
    p.add_argument("--fusion-lengths", type=int, nargs="*", default=[8, 32, 128, 256, 512, 700])
    args = p.parse_args()
    iteration_overhead()
    fusion_scaling(args.fusion_lengths)
    if not args.no_compile:
        compile_table(args.lengths, ["scan"] + ([] if args.no_unrolled else ["unrolled"]))


if __name__ == "__main__":
    main()
