"""fusejit.codegen.cpu.mathlib: accuracy in ULPs against NumPy, edge cases, types, vectorization.

The references are NumPy in a wider type (float64 for the float32 functions, long double
for the float64 ones), so an error is that of the function alone. Each function is
compiled once, in a loop like the generated kernels' (see ``_loop``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import numba
import numpy as np
import pytest

from fusejit.codegen.cpu import mathlib as M

UNARY = ["exp", "log", "log1p", "expm1", "tanh", "logistic", "sin", "cos", "sqrt", "rsqrt"]
BINARY = ["pow", "maximum", "minimum", "maxnum", "minnum", "atan2"]
DTYPES = ["float32", "float64"]
# float64 versions that call the C library (scalar, not vectorized).
LIBM = {("sin", "float64"), ("cos", "float64"), ("pow", "float64")}
# float32 versions that use float64 arithmetic inside on purpose (see the module docstring).
USES_FLOAT64 = {"sin", "cos", "pow", "atan2"}
LONGDOUBLE_IS_WIDER = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant

REFERENCES = M.NUMPY_REFERENCE


@cache
def _loop(name: str, dtype: str):
    """An njit loop applying the function elementwise, compiled once per session."""
    fn = M.FUNCTIONS[(name, dtype)]
    if name in BINARY:

        @numba.njit(error_model="numpy")
        def loop2(x, y, out):
            for i in range(x.shape[0]):
                out[i] = fn(x[i], y[i])

        return loop2

    @numba.njit(error_model="numpy")
    def loop1(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    return loop1


def apply(name: str, *args: np.ndarray) -> np.ndarray:
    out = np.empty_like(args[0])
    _loop(name, args[0].dtype.name)(*args, out)
    return out


def reference(name: str, *args: np.ndarray) -> np.ndarray:
    wide = np.float64 if args[0].dtype == np.float32 else np.longdouble
    with np.errstate(all="ignore"):
        return REFERENCES[name](*(a.astype(wide) for a in args))


def ulp_errors(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Error of each result in ULPs of its dtype, against a wider reference.

    NaN must match NaN; infinity is right only where the reference is beyond the largest
    finite value; a zero result for a zero reference must have the reference's sign.
    """
    info = np.finfo(y.dtype)
    wide = np.float64 if y.dtype == np.float32 else np.longdouble  # holds y - ref exactly enough
    with np.errstate(all="ignore"):
        yw, rw = y.astype(wide), ref.astype(wide)
        _, exponent = np.frexp(rw)  # |ref| = m * 2**exponent, 0.5 <= m < 1
        binade = np.clip(exponent - 1, info.minexp, info.maxexp - 1)
        err = (np.abs(yw - rw) / np.ldexp(wide(1), binade - info.nmant)).astype(np.float64)
    y_nan, r_nan = np.isnan(y), np.isnan(rw)
    err[y_nan | r_nan] = np.where((y_nan & r_nan)[y_nan | r_nan], 0.0, np.inf)
    y_inf = np.isinf(y)
    overflow = np.abs(rw) > wide(info.max)
    err[y_inf] = np.where(overflow[y_inf] & (np.sign(y[y_inf]) == np.sign(rw[y_inf])), 0.0, np.inf)
    zero = (rw == 0) & (y == 0)
    err[zero & (np.signbit(y) != np.signbit(rw))] = np.inf
    return err


def assert_within(name: str, dtype: str, x: np.ndarray, err: np.ndarray, y: np.ndarray, ref: np.ndarray):
    bound = M.MAX_ULP[(name, dtype)] + 1e-3  # the reference's own rounding (long double: 2^-11 ulp)
    bad = np.nonzero(~(err <= bound))[0]
    if bad.size:
        i = bad[np.argmax(err[bad])]
        pytest.fail(
            f"{name}_{dtype}: {bad.size} results over {bound} ulp, worst {err[i]:.3f} ulp at "
            f"x={x[i]!r}: got {y[i]!r}, expected {ref[i]!r}"
        )


def edge_values(dtype: str) -> np.ndarray:
    info = np.finfo(dtype)
    tiny = info.smallest_subnormal
    v = [0.0, 1.0, 2.0, 0.5, np.pi / 4, np.pi / 2, np.pi, 1e-3, 10.0, 100.0, 1e4, 1e5, 1e10, 1e30]
    v += [np.inf, tiny, 2 * tiny, info.smallest_normal, info.smallest_normal - tiny, info.max]
    v += [
        float(np.nextafter(info.dtype.type(1), 2, dtype=dtype)),
        float(np.nextafter(info.dtype.type(1), 0, dtype=dtype)),
    ]
    v = np.array(v, dtype=dtype)
    return np.concatenate([v, -v, np.array([np.nan], dtype)])


# Arguments where the result overflows, underflows, saturates or turns subnormal.
THRESHOLDS = {
    "float32": [88.72283, -87.33654, -103.97208, 9.011, -17.33, -88.72, 1.5707964, 16777216.0, 2.0**-12],
    "float64": [
        709.782712893384,
        -708.3964185322641,
        -745.1332191019412,
        19.06,
        -37.4,
        -709.7,
        1.5707963267948966,
        2.0**-28,
    ],
}


def threshold_values(dtype: str, steps: int = 100) -> np.ndarray:
    """The `steps` representable numbers on each side of each threshold (and of its negation)."""
    out = []
    for t in THRESHOLDS[dtype]:
        for start in (t, -t):
            side = [np.array(start, dtype), np.array(start, dtype)]
            for _ in range(steps):
                side.append(np.nextafter(side[-2], -np.inf))
                side.append(np.nextafter(side[-2], np.inf))
            out.append(np.array(side, dtype))
    return np.concatenate(out)


def samples(dtype: str, seed: int = 0) -> np.ndarray:
    """Random bit patterns over the whole range, dense grids where the work is, thresholds."""
    rng = np.random.default_rng(seed)
    bits = np.uint32 if dtype == "float32" else np.uint64
    n = 1 << (17 if dtype == "float32" else 16)
    random = rng.integers(0, np.iinfo(bits).max, n, dtype=bits, endpoint=True).view(dtype)
    info = np.finfo(dtype)
    log2_range = np.log2([float(info.smallest_subnormal), float(info.max)])
    grid = np.concatenate([
        np.exp2(np.linspace(log2_range[0], log2_range[1] - 1e-6, 50_000)),
        np.linspace(0, 30, 50_001),
        np.geomspace(1e-8, 1e6, 50_000),
    ]).astype(dtype)  # fmt: skip
    return np.concatenate([random, grid, -grid, threshold_values(dtype), edge_values(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", UNARY)
def test_ulp_error_over_the_whole_range(name, dtype):
    if dtype == "float64" and not LONGDOUBLE_IS_WIDER:
        pytest.skip("needs a long double wider than float64 as the reference")
    x = samples(dtype)
    y = apply(name, x)
    ref = reference(name, x)
    assert_within(name, dtype, x, ulp_errors(y, ref), y, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", UNARY)
def test_edge_cases_match_numpy(name, dtype):
    """inf, nan, signed zeros and subnormals: the classes of the correctly rounded result,
    which are NumPy's (for logistic NumPy's float32 formula overflows early: 1/(1 + exp(100))
    is subnormal, not 0)."""
    x = edge_values(dtype)
    y = apply(name, x)
    with np.errstate(all="ignore"):
        expected = reference(name, x).astype(dtype)
    assert np.array_equal(np.isnan(y), np.isnan(expected)), (x, y, expected)
    finite = ~np.isnan(expected)
    assert np.array_equal(np.isinf(y[finite]), np.isinf(expected[finite])), (x, y, expected)
    zero = finite & (expected == 0)
    assert np.array_equal(y[zero], expected[zero])
    assert np.array_equal(np.signbit(y[zero]), np.signbit(expected[zero])), (x[zero], y[zero])


def test_specific_values():
    f32 = np.float32
    # overflow, underflow to subnormals and to zero, saturation
    assert np.isinf(M.exp_f32(f32(88.72284))) and np.isfinite(M.exp_f32(f32(88.72283)))
    assert (
        M.exp_f32(f32(-103.0)) == np.exp(f32(-103.0))
        and 0 < M.exp_f32(f32(-103.0)) < np.finfo(f32).smallest_normal
    )
    assert M.exp_f32(f32(-104.0)) == 0 and M.exp_f64(-746.0) == 0
    assert M.tanh_f32(f32(10.0)) == 1 and M.tanh_f32(f32(-1e30)) == -1 and M.tanh_f64(30.0) == 1
    assert M.logistic_f32(f32(-200.0)) == 0 and M.logistic_f32(f32(200.0)) == 1
    assert M.logistic_f32(f32(-100.0)) == np.float32(1 / (1 + np.exp(100.0)))  # subnormal result
    assert M.expm1_f32(f32(-30.0)) == -1 and np.isinf(M.expm1_f32(f32(89.0)))
    assert M.expm1_f64(709.78) == np.expm1(709.78) and np.isinf(M.expm1_f64(709.79))
    assert M.log_f32(f32(0.0)) == -np.inf and np.isnan(M.log_f32(f32(-1e-45)))
    assert M.log1p_f32(f32(-1.0)) == -np.inf and np.isnan(M.log1p_f64(-1.5))
    assert np.signbit(M.sin_f32(f32(-0.0))) and np.signbit(M.tanh_f64(-0.0)) and np.signbit(M.expm1_f64(-0.0))
    assert (
        M.rsqrt_f32(f32(0.0)) == np.inf and M.rsqrt_f32(f32(-0.0)) == -np.inf and np.isnan(M.rsqrt_f64(-1.0))
    )
    # sin/cos of large arguments: the reduction is accurate up to the largest float32
    for x in [f32(1e5), f32(3.0e38), f32(16777217.0), f32(2.0**100)]:
        assert abs(M.sin_f32(x) - np.sin(np.float64(x))) < 2e-7
        assert abs(M.cos_f32(x) - np.cos(np.float64(x))) < 2e-7


POW_SPECIALS = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0, 2.5, -2.5, 0.3, 7.0, -7.0, 1e9,
                -1e9, 16777217.0, 1e-40, -1e-40, 1e38, np.inf, -np.inf, np.nan]  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_pow_special_values_follow_numpy(dtype):
    """C99/NumPy pow: 0**0 = 1, x**0 = 1 for NaN x, 1**y = 1 for NaN y, negative base with
    integer exponent, signed zeros and infinities, NaN for a negative base and a
    non-integer exponent."""
    pairs = np.array([(a, b) for a in POW_SPECIALS for b in POW_SPECIALS], dtype=dtype)
    x, y = pairs[:, 0].copy(), pairs[:, 1].copy()
    got = apply("pow", x, y)
    with np.errstate(all="ignore"):
        expected = np.power(x, y)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    assert np.array_equal(np.isinf(got), np.isinf(expected))
    number = ~np.isnan(expected)
    assert np.array_equal(np.signbit(got[number]), np.signbit(expected[number]))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=2 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pow_ulp_error(dtype):
    if dtype == "float64" and not LONGDOUBLE_IS_WIDER:
        pytest.skip("needs a long double wider than float64 as the reference")
    rng = np.random.default_rng(1)
    n = 1 << 16
    top = 80 if dtype == "float32" else 700
    x = np.concatenate([
        np.exp(rng.uniform(-top, top, n)),  # whole range of positive bases
        rng.uniform(-100, 100, n),  # negative bases need integer exponents
        rng.uniform(0, 2, n),  # bases near 1 with big exponents
    ]).astype(dtype)  # fmt: skip
    y = np.concatenate(
        [rng.uniform(-4, 4, n), np.round(rng.uniform(-30, 30, n)), rng.uniform(-150, 150, n)]
    ).astype(dtype)
    got = apply("pow", x, y)
    ref = reference("pow", x, y)
    assert_within("pow", dtype, x, ulp_errors(got, ref), got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maximum_minimum_elementwise(dtype):
    v = np.array(
        [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 3.5, np.finfo(dtype).smallest_subnormal], dtype
    )
    a = np.repeat(v, v.size)
    b = np.tile(v, v.size)
    for name, expected in [
        ("maximum", np.maximum),
        ("minimum", np.minimum),
        ("maxnum", np.fmax),
        ("minnum", np.fmin),
    ]:
        got = apply(name, a, b)
        # equal values compare equal; only the sign of a zero result may differ from NumPy
        # (NumPy returns the second operand for equal zeros, LLVM orders -0 < +0)
        np.testing.assert_array_equal(got, expected(a, b), err_msg=name)


@cache
def _reduction(name: str, dtype: str):
    fn = M.FUNCTIONS[(name, dtype)]

    @numba.njit(error_model="numpy")
    def reduce(x):
        acc = x[0]
        for i in range(1, x.shape[0]):
            acc = fn(acc, x[i])
        return acc

    reduce(np.zeros(2, dtype))
    return reduce


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "name,numpy_reduce",
    [("maximum", np.max), ("minimum", np.min), ("maxnum", np.nanmax), ("minnum", np.nanmin)],
)
def test_reductions_propagate_nan_like_numpy_and_vectorize(name, numpy_reduce, dtype):
    reduce = _reduction(name, dtype)
    x = np.random.default_rng(2).standard_normal(1001).astype(dtype)
    assert reduce(x) == numpy_reduce(x)
    for where in (0, 1, 500, 999, 1000):  # NaN in the first lane, a middle one, the tail
        xn = x.copy()
        xn[where] = np.nan
        with np.errstate(all="ignore"):
            expected = numpy_reduce(xn)
        got = reduce(xn)
        assert (np.isnan(got) and np.isnan(expected)) or got == expected, (where, got, expected)
    assert _is_vectorized(reduce, dtype)


def _function_ir(dispatcher) -> str:
    """The optimized LLVM IR of the (only) compiled function itself, not its wrappers."""
    (args,) = dispatcher.signatures
    name = dispatcher.overloads[args].fndesc.mangled_name
    lines = dispatcher.inspect_llvm(args).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("define") and name in line)
    end = lines.index("}", start)
    return "\n".join(lines[start : end + 1])


def _is_vectorized(dispatcher, dtype: str) -> bool:
    """Vector arithmetic in the function, and no call left to a mathlib function."""
    ir = _function_ir(dispatcher)
    llvm_type = "float" if dtype == "float32" else "double"
    return re.search(rf"<\d+ x {llvm_type}>", ir) is not None and "@_ZN7fusejit7codegen7mathlib" not in ir


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", UNARY + BINARY)
def test_loops_calling_the_function_vectorize(name, dtype):
    if (name, dtype) in LIBM:
        pytest.skip("calls the C library")
    args = [np.ones(16, dtype)] * (2 if name in BINARY else 1)
    apply(name, *args)
    assert _is_vectorized(_loop(name, dtype), dtype)


@pytest.mark.parametrize("name", UNARY + BINARY)
def test_float32_functions_stay_float32(name):
    """Called in a loop over float32 arrays the functions return float32 and, except
    where documented, no float64 arithmetic happens inside (after inlining)."""
    fn = M.FUNCTIONS[(name, "float32")]
    x = np.ones(16, np.float32)
    apply(name, *([x] * (2 if name in BINARY else 1)))
    sigs = [s for s in fn.nopython_signatures if all(a == numba.float32 for a in s.args)]
    assert sigs and all(s.return_type == numba.float32 for s in sigs)
    if name not in USES_FLOAT64:
        assert not re.search(r"\bdouble\b", _function_ir(_loop(name, "float32"))), f"{name}_f32 uses float64"


@pytest.mark.parametrize("name", ["exp", "log1p", "tanh", "sin"])
def test_the_callers_fastmath_flags_do_not_change_results(name):
    """LLVM inlines the functions with their own flags: a caller compiled with
    fastmath=True (no NaNs, no infs assumed) still gets NaN, inf and -0 right."""
    fn = M.FUNCTIONS[(name, "float32")]

    @numba.njit(fastmath=True, error_model="numpy")
    def fast_loop(x, out):
        for i in range(x.shape[0]):
            out[i] = fn(x[i])

    x = np.concatenate([edge_values("float32"), np.linspace(-100, 100, 1001, dtype=np.float32)])
    got = np.empty_like(x)
    fast_loop(x, got)
    np.testing.assert_array_equal(got, apply(name, x))
    np.testing.assert_array_equal(np.signbit(got), np.signbit(apply(name, x)))


def test_functions_table_is_complete():
    for name in UNARY + BINARY:
        for dtype in DTYPES:
            assert M.FUNCTIONS[(name, dtype)] is getattr(M, f"{name}_f{dtype[-2:]}")
    assert M.MAX_ULP.keys() == M.FUNCTIONS.keys()


KERNEL_SOURCE = """
import numba
from fusejit.codegen.cpu.mathlib import tanh_f32, maximum_f32  # mathlib {tag}

@numba.njit(cache=True, error_model="numpy", fastmath={{"contract", "reassoc"}})
def kernel(x, out):
    acc = x[0]
    for i in range(x.shape[0]):
        out[i] = tanh_f32(x[i])
        acc = maximum_f32(acc, x[i])
    return acc
"""

RUN_KERNEL = """
import importlib.util, sys
import numpy as np
spec = importlib.util.spec_from_file_location("generated_kernel", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules["generated_kernel"] = mod
spec.loader.exec_module(mod)
x = np.linspace(-3, 3, 100, dtype=np.float32)
out = np.empty_like(x)
acc = mod.kernel(x, out)
assert acc == np.float32(3) and np.allclose(out, np.tanh(x), rtol=1e-6), acc
print(mod.kernel.stats.cache_hits.most_common(1)[0][1] if mod.kernel.stats.cache_hits else 0)
"""


def test_generated_kernels_can_import_and_cache(tmp_path):
    """A generated source file that imports from mathlib compiles with cache=True, and a
    second process loads it from the cache."""
    source = tmp_path / "generated_kernel.py"
    source.write_text(KERNEL_SOURCE.format(tag=M.SOURCE_HASH))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    root = Path(importlib.util.find_spec("fusejit").submodule_search_locations[0]).parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    runs = [
        subprocess.run(
            [sys.executable, "-c", RUN_KERNEL, str(source)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    assert [run.stdout.split()[-1] for run in runs] == ["0", "1"]


def test_source_hash_follows_the_file():
    import hashlib

    assert M.SOURCE_HASH == hashlib.sha256(Path(M.__file__).read_bytes()).hexdigest()[:16]


ATAN2_SPECIALS = [0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 1e-30, -1e-30, 1e30, np.inf, -np.inf, np.nan]


@pytest.mark.parametrize("dtype", DTYPES)
def test_atan2_ulp_error(dtype):
    """Random bit patterns (the whole range of both operands), normal pairs, x = 1 (the
    arctan of fusejit.numpy) and y << x."""
    if dtype == "float64" and not LONGDOUBLE_IS_WIDER:
        pytest.skip("needs a long double wider than float64 as the reference")
    rng = np.random.default_rng(3)
    n = 1 << 17
    bits = np.uint32 if dtype == "float32" else np.uint64
    x = rng.integers(0, np.iinfo(bits).max, n, dtype=bits, endpoint=True).view(dtype)
    y = rng.integers(0, np.iinfo(bits).max, n, dtype=bits, endpoint=True).view(dtype)
    nx, ny = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    xs = np.concatenate([x, nx, np.ones(n, dtype), nx])
    ys = np.concatenate([y, ny, ny * 100, nx * np.dtype(dtype).type(1e-3)])
    got = apply("atan2", ys, xs)
    ref = reference("atan2", ys, xs)
    assert_within("atan2", dtype, ys, ulp_errors(got, ref), got, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_atan2_special_values_follow_numpy(dtype):
    """C99 atan2: signed zeros (atan2(+-0, -0) = +-pi), infinities (atan2(inf, -inf) =
    3pi/4), NaN in either operand."""
    pairs = np.array([(a, b) for a in ATAN2_SPECIALS for b in ATAN2_SPECIALS], dtype=dtype)
    y, x = pairs[:, 0].copy(), pairs[:, 1].copy()
    got = apply("atan2", y, x)
    expected = np.arctan2(y, x)
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    number = ~np.isnan(expected)
    assert np.array_equal(np.signbit(got[number]), np.signbit(expected[number]))
    np.testing.assert_allclose(got[number], expected[number], rtol=np.finfo(dtype).eps, atol=0)
