"""Benchmarks fusejit.codegen.cpu.mathlib against NumPy and against Numba calling the C library.

    python bench/bench_mathlib.py              # timing table, 4M float32 elements
    python bench/bench_mathlib.py --accuracy   # max ULP error table (exhaustive for float32)

Timing: for each function, the best of ``--repeat`` runs of
  numpy    the NumPy ufunc (or expression) writing into a preallocated output,
  libm     a serial ``numba.njit`` loop calling NumPy's scalar function (the C library),
  mathlib  the same loop calling the mathlib function.

Accuracy: float32 functions of one argument are checked on all 2^32 inputs against the
float64 NumPy result; float64 functions on random bit patterns and grids against NumPy in
long double (x86 80-bit); pow on random pairs. The ULP of a reference value is that of its
binade (the subnormal spacing below the smallest normal). It takes about half an hour on
2 cores; the results are the table in the mathlib module docstring.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numba
import numpy as np

from fusejit.codegen.cpu import mathlib as M

F32_ONE = np.float32(1.0)


def unary_loop(fn: Callable) -> Callable:
    @numba.njit(error_model="numpy")
    def loop(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    return loop


def binary_loop(fn: Callable) -> Callable:
    @numba.njit(error_model="numpy")
    def loop(x, y, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i], y[i])

    return loop


def max_reduce_loop(fn: Callable) -> Callable:
    @numba.njit(error_model="numpy")
    def loop(x):
        acc = x[0]
        for i in range(1, x.shape[0]):
            acc = fn(acc, x[i])
        return acc

    return loop


def libm(ufunc: np.ufunc) -> Callable:
    """The scalar C-library version, as a kernel calling the NumPy function gets it."""
    return numba.njit(lambda *args: ufunc(*args))


@numba.njit
def libm_logistic(v):
    return F32_ONE / (F32_ONE + np.exp(-v))


@numba.njit
def libm_rsqrt(v):
    return F32_ONE / np.sqrt(v)


@numba.njit
def libm_max(a, b):
    return max(a, b)


def numpy_logistic(x, *, out):
    np.negative(x, out=out)
    np.exp(out, out=out)
    np.add(out, F32_ONE, out=out)
    np.divide(F32_ONE, out, out=out)


def numpy_rsqrt(x, *, out):
    np.sqrt(x, out=out)
    np.divide(F32_ONE, out, out=out)


def best_ms(fn: Callable, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * min(times)


def row(name: str, repeat: int, numpy_call: Callable, libm_loop: Callable, ours: Callable, *args) -> tuple:
    return (
        name,
        best_ms(numpy_call, repeat),
        best_ms(lambda: libm_loop(*args), repeat),
        best_ms(lambda: ours(*args), repeat),
    )


def timing(n: int, repeat: int) -> None:
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(n).astype(np.float32) * np.float32(3)
    positive = np.abs(normal) + np.float32(1e-3)
    angles = rng.uniform(-100, 100, n).astype(np.float32)
    exponents = rng.uniform(-2, 2, n).astype(np.float32)
    out = np.empty(n, np.float32)
    unary = [
        # name, input, numpy(x, out), libm scalar function
        ("exp", normal, np.exp, libm(np.exp)),
        ("log", positive, np.log, libm(np.log)),
        ("log1p", positive, np.log1p, libm(np.log1p)),
        ("expm1", normal, np.expm1, libm(np.expm1)),
        ("tanh", normal, np.tanh, libm(np.tanh)),
        ("logistic", normal, numpy_logistic, libm_logistic),
        ("sin", angles, np.sin, libm(np.sin)),
        ("cos", angles, np.cos, libm(np.cos)),
        ("sqrt", positive, np.sqrt, libm(np.sqrt)),
        ("rsqrt", positive, numpy_rsqrt, libm_rsqrt),
    ]
    rows = []
    for name, x, numpy_fn, libm_fn in unary:
        ours = unary_loop(M.FUNCTIONS[(name, "float32")])
        rows.append(row(name, repeat, partial(numpy_fn, x, out=out), unary_loop(libm_fn), ours, x, out))
    pow_args = (positive, exponents, out)
    rows.append(
        row(
            "pow",
            repeat,
            partial(np.power, *pow_args),
            binary_loop(libm(np.power)),
            binary_loop(M.pow_f32),
            *pow_args,
        )
    )
    max_args = (normal,)
    rows.append(
        row(
            "max-reduce",
            repeat,
            partial(np.max, normal),
            max_reduce_loop(libm_max),
            max_reduce_loop(M.maximum_f32),
            *max_args,
        )
    )

    print(f"{n:,} float32 elements, best of {repeat}; numba {numba.__version__}, numpy {np.__version__}")
    print(f"{'function':11} {'numpy ms':>9} {'libm ms':>9} {'mathlib ms':>11} {'vs numpy':>9} {'vs libm':>8}")
    for name, t_numpy, t_libm, t_ours in rows:
        speedups = f"{t_numpy / t_ours:8.2f}x {t_libm / t_ours:7.1f}x"
        print(f"{name:11} {t_numpy:9.2f} {t_libm:9.2f} {t_ours:11.2f} {speedups}")


# ---------------------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------------------


@numba.njit(parallel=True, error_model="numpy")
def ulp_errors_f32(y, ref):
    """ULP error of each float32 result against a float64 reference (inf if NaN/inf differ)."""
    out = np.empty(y.shape[0], np.float64)
    for i in numba.prange(y.shape[0]):
        r = ref[i]
        v = np.float64(y[i])
        if r != r or v != v:
            out[i] = 0.0 if (r != r and v != v) else np.inf
        elif abs(r) > 3.4028234663852886e38 or abs(v) == np.inf:
            # the reference overflows float32: the result must be the infinity
            out[i] = 0.0 if v == np.copysign(np.inf, r) else np.inf
        else:
            e = max(np.floor(np.log2(max(abs(r), 1.1754943508222875e-38))), -126.0)
            out[i] = abs(v - r) / 2.0 ** (e - 23.0)
    return out


def ulp_errors_f64(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """ULP error of float64 results against a long double reference."""
    ld = np.longdouble
    with np.errstate(all="ignore"):
        mag = np.maximum(np.abs(ref), ld(2.2250738585072014e-308))
        ulp = np.exp2(np.floor(np.log2(mag)) - 52)
        err = (np.abs(y.astype(ld) - ref) / ulp).astype(np.float64)
    ref64 = ref.astype(np.float64)
    special = np.isnan(y) | np.isnan(ref64) | np.isinf(y) | np.isinf(ref64)
    same = (y == ref64) | (np.isnan(y) & np.isnan(ref64))
    err[special] = np.where(same[special], 0.0, np.inf)
    return err


# The unary functions (pow is measured on its own).
REFERENCES = {k: f for k, f in M.NUMPY_REFERENCE.items() if k != "pow"}


def exhaustive_f32(name: str, chunk: int = 1 << 24) -> tuple[float, float]:
    loop = unary_loop(M.FUNCTIONS[(name, "float32")])
    worst, worst_x = 0.0, 0.0
    out = np.empty(chunk, np.float32)
    for start in range(0, 1 << 32, chunk):
        x = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        loop(x, out)
        with np.errstate(all="ignore"):
            err = ulp_errors_f32(out, REFERENCES[name](x.astype(np.float64)))
        i = int(np.argmax(err))
        if err[i] > worst:
            worst, worst_x = float(err[i]), float(x[i])
    return worst, worst_x


def samples_f64(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 1 << 64, n, dtype=np.uint64, endpoint=False)
    grid = np.concatenate([np.geomspace(5e-324, 1.7e308, n // 4), np.linspace(-50, 50, n // 4)])
    return np.concatenate([bits.view(np.float64), grid, -grid])


def accuracy(n64: int) -> None:
    rng = np.random.default_rng(0)
    ld = np.longdouble
    x64 = samples_f64(rng, n64)
    print(f"{'function':9} {'float32 (all inputs)':>30} {'float64 (sampled)':>30}")
    for name in REFERENCES:
        e32, at32 = exhaustive_f32(name)
        y = np.empty_like(x64)
        unary_loop(M.FUNCTIONS[(name, "float64")])(x64, y)
        with np.errstate(all="ignore"):
            err = ulp_errors_f64(y, REFERENCES[name](x64.astype(ld)))
        i = int(np.argmax(err))
        print(f"{name:9} {e32:8.3f} ulp at {at32!r:>15} {err[i]:10.3f} ulp at {x64[i]!r:>15}", flush=True)
    # pow on random pairs: positive bases over the whole range, negative bases with
    # integer exponents, and bases near 1 with large exponents.
    for dtype in (np.float32, np.float64):
        top = 80 if dtype == np.float32 else 700
        pairs = [
            (np.exp(rng.uniform(-top, top, n64)), rng.uniform(-4, 4, n64)),
            (rng.uniform(-100, 100, n64), np.round(rng.uniform(-40, 40, n64))),
            (rng.uniform(0, 2, n64), rng.uniform(-300, 300, n64)),
        ]
        loop = binary_loop(M.FUNCTIONS[("pow", np.dtype(dtype).name)])
        worst = 0.0
        for a, b in pairs:
            a, b = a.astype(dtype), b.astype(dtype)
            y = np.empty_like(a)
            loop(a, b, y)
            with np.errstate(all="ignore"):
                ref = np.power(a.astype(ld), b.astype(ld))
                err = (
                    ulp_errors_f32(y, ref.astype(np.float64))
                    if dtype == np.float32
                    else ulp_errors_f64(y, ref)
                )
            worst = max(worst, float(np.max(err)))
        print(f"pow {np.dtype(dtype).name}: {worst:.3f} ulp (sampled)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4_000_000, help="elements for the timing table")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--accuracy", action="store_true", help="measure max ULP errors instead")
    parser.add_argument("--samples", type=int, default=1 << 22, help="float64 accuracy samples")
    args = parser.parse_args()
    if args.accuracy:
        accuracy(args.samples)
    else:
        timing(args.n, args.repeat)


if __name__ == "__main__":
    main()
