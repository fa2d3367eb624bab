"""The CPU target's two printers agree bit for bit: every kernel printed as LLVM IR
(``codegen/cpu/llvm_printer.py``) gives the bytes its Numba module gives, over NumPy's
edge cases (NaN, signed zeros, integer division by zero and of the most negative
integer, wrapping, shifts past the width, casts), gathers behind guards, the math
library, reductions, GEMMs, convolutions and pools, scans and chunked kernels on
threads. Kernels the LLVM printer does not spell keep Numba, with the reason."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import config, lax, nn
from fusejit.codegen.cpu import llvm_printer

RNG = np.random.default_rng(5)
I32, I64 = np.iinfo(np.int32), np.iinfo(np.int64)


def compile_with(llvm: bool, fn, args, **overrides):
    """``fn`` traced and compiled afresh with one printer; its results on ``args`` and its
    executable's steps."""
    with config.override(llvm_kernels=llvm, **overrides):
        compiled = fj.jit(fn).lower(*args).compile()
        out = compiled(*args)
        return out, cpu_steps(compiled.executable)


def cpu_steps(exe) -> list:
    """The kernel steps of a CPU executable, or of every stretch and loop body of one with
    control flow."""
    if hasattr(exe, "_steps"):
        return exe._steps
    return [st for part in exe._parts for inner in part.executables() for st in cpu_steps(inner)]


def assert_same_bytes(a, b) -> None:
    for x, y in zip(fj.tree_leaves(a), fj.tree_leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert (x.dtype, x.shape) == (y.dtype, y.shape)
        assert x.tobytes() == y.tobytes(), np.flatnonzero(x.ravel().view(np.uint8) != y.ravel().view(np.uint8))


def assert_printers_agree(fn, *args, **overrides):
    """Compiled with each printer, ``fn`` gives the same bytes, and every kernel of the LLVM
    run was printed as LLVM IR. Returns the LLVM run's results and steps."""
    llvm_out, llvm_steps = compile_with(True, fn, args, **overrides)
    numba_out, numba_steps = compile_with(False, fn, args, **overrides)
    assert all(st.llvm is None for st in numba_steps)
    not_printed = {st.lowered.kernel.name: llvm_printer.unsupported(st.lowered.kernel)
                   for st in llvm_steps if st.llvm is None}
    assert not not_printed
    assert_same_bytes(llvm_out, numba_out)
    return llvm_out, llvm_steps


def floats(dtype, *shape):
    """Normal values with NaN, infinities, signed zeros and tiny and huge ones mixed in."""
    x = RNG.standard_normal(shape).astype(dtype) * 3
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e30, 1.0, -1.5, 2.5], dtype)
    flat = x.reshape(-1)
    flat[: min(flat.size, specials.size)] = specials[: flat.size]
    return x


def ints(dtype, *shape):
    """Values over the whole range of ``dtype`` with its extremes, 0 and -1 mixed in."""
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    specials = np.array([info.min, info.max, 0, -1, 1, info.min + 1, -7, 7], dtype)
    flat = x.reshape(-1)
    flat[: min(flat.size, specials.size)] = specials[: flat.size]
    return x


# ---------------------------------------------------------------------------------------
# Elementwise


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arithmetic_comparisons_and_selects_agree_with_nans_and_signed_zeros(dtype):
    x, y = floats(dtype, 7, 9), np.roll(floats(dtype, 7, 9), 3)

    def f(x, y):
        arith = (x * y + x / y - fnp.abs(x) * 0.5 - (-y)) ** 2
        picked = fnp.where((x > y) | fnp.isnan(y), x, y * 2.0)
        return arith, picked, x == y, x <= y, fnp.logical_xor(x < 0, y >= 0), fnp.sign(x)

    assert_printers_agree(f, x, y)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_floordiv_and_mod_by_zero_negative_and_of_the_minimum_agree(dtype):
    a = ints(dtype, 64)
    b = np.array([0, -1, 1, -7, 7, 3, -3, 0] * 8, dtype)  # the minimum // -1 wraps, x // 0 is 0
    with np.errstate(all="ignore"):
        expected = np.floor_divide(a, b), np.remainder(a, b)
    out, _ = assert_printers_agree(lambda a, b: (a // b, a % b, a // 4, a % -3), a, b)
    nonzero = b != 0
    for got, want in zip(out[:2], expected, strict=True):
        np.testing.assert_array_equal(got[nonzero], want[nonzero])


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_arithmetic_wraps_and_bitwise_ops_agree(dtype):
    a, b = ints(dtype, 50), np.roll(ints(dtype, 50), 7)
    with np.errstate(all="ignore"):
        expected = a * b + a - b
    out, _ = assert_printers_agree(lambda a, b: (a * b + a - b, a & b, a | b, a ^ b, ~a, -a, fnp.abs(a),
                                                 fnp.maximum(a, b), fnp.minimum(a, b)), a, b)
    np.testing.assert_array_equal(out[0], expected)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_shifts_agree_with_numpy_for_every_count_negative_and_past_the_width(dtype):
    width = 8 * np.dtype(dtype).itemsize
    a = ints(dtype, width + 4)
    counts = np.array([*range(width), width, width + 5, 100, -1], dtype)  # NumPy: 0 or the sign past it
    out, _ = assert_printers_agree(lambda a, s: (a << s, a >> s, fnp.left_shift(a, 3)), a, counts)
    np.testing.assert_array_equal(out[0], a << counts)
    np.testing.assert_array_equal(out[1], a >> counts)


CASTS = [(np.float32, np.float64), (np.float64, np.float32), (np.float32, np.int32), (np.float64, np.int64),
         (np.float32, np.bool_), (np.int32, np.int64), (np.int64, np.int32), (np.int64, np.float32),
         (np.int32, np.float64), (np.bool_, np.float32), (np.bool_, np.int64), (np.int64, np.bool_)]


@pytest.mark.parametrize("source,target", CASTS, ids=[f"{np.dtype(s).name}->{np.dtype(t).name}" for s, t in CASTS])
def test_casts_agree(source, target):
    if np.dtype(source).kind == "f":  # in range of every target: fptosi of the rest is undefined
        x = floats(source, 40)
        x[~np.isfinite(x) | (np.abs(x) > 1e6)] = -0.0 if np.dtype(target).kind != "b" else np.nan
        x[-4:] = [2.5, -2.5, 0.999, -0.999]
    elif source is np.bool_:
        x = RNG.random(40) > 0.5
    else:
        x = ints(source, 40)
    out, _ = assert_printers_agree(lambda x: x.astype(target), x)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(out, x.astype(target))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_math_library_functions_agree(dtype):
    x = floats(dtype, 6, 11)
    y = np.abs(np.roll(x, 5)) + np.asarray(0.25, dtype)

    def f(x, y):
        return (fnp.exp(x), fnp.log(y), fnp.tanh(x), fnp.sin(x), fnp.cos(x), fnp.sqrt(y), fnp.expm1(x),
                fnp.log1p(y), fnp.arctan2(x, y), fnp.power(y, x), fnp.hypot(x, y), fnp.logaddexp(x, y),
                fnp.floor(x), fnp.ceil(x), fnp.rint(x), fnp.round(x, 2), fnp.trunc(x), nn.sigmoid(x))

    assert_printers_agree(f, x, y)


# ---------------------------------------------------------------------------------------
# Gathers behind guards, reductions, rows


def test_guarded_gathers_agree_take_pad_concatenate_and_strided_views():
    x = floats(np.float32, 12, 10)
    idx = np.array([0, 11, -1, -12, 5, 5], np.int64)

    def f(x, idx):
        taken = fnp.take(x, idx, axis=0) * 2.0
        padded = fnp.pad(x, ((2, 1), (0, 3))) + 1.0
        joined = fnp.concatenate([x[::2, ::-1], x[1::2]], axis=1) - 1.0
        return taken, padded, joined, fnp.roll(x, 3, axis=1) * x[::-1], x[2:9:3, 1::4] ** 2

    assert_printers_agree(f, x, idx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_reductions_agree(dtype):
    x = RNG.standard_normal((33, 17)).astype(dtype) if dtype is not np.int64 else ints(np.int32, 33, 17).astype(dtype)
    x_nan = x.copy()
    if x.dtype.kind == "f":
        x_nan[3, 4] = np.nan

    def f(x, x_nan):
        return (fnp.sum(x, axis=0), fnp.sum(x, axis=1), fnp.sum(x), fnp.max(x, axis=1), fnp.min(x_nan, axis=0),
                fnp.argmax(x, axis=0), fnp.argmin(x_nan, axis=1), fnp.any(x > 0, axis=1), fnp.all(x > -5, axis=0),
                fnp.mean(x * 1.0, axis=0))

    assert_printers_agree(f, x, x_nan)


@pytest.mark.parametrize("shape", [(5, 37), (2, 3, 1), (0, 8), (4, 1)])
def test_softmax_and_layer_norm_rows_agree(shape):
    x = RNG.standard_normal(shape).astype(np.float32) * 4
    g = RNG.standard_normal(shape[-1:]).astype(np.float32)
    assert_printers_agree(lambda x, g: (nn.softmax(x), nn.log_softmax(x), nn.layer_norm(x, g, g * 0.5)), x, g)


# ---------------------------------------------------------------------------------------
# GEMMs, convolutions, pools, scans


MATMULS = [((4, 7, 5), (4, 5, 3)), ((9, 0), (0, 6)), ((0, 4), (4, 3)), ((3, 4), (4, 0)), ((1, 6), (6, 1)),
           ((2, 1, 8, 3), (3, 3, 5))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", MATMULS, ids=[f"{a}@{b}" for a, b in MATMULS])
def test_matmuls_agree_batched_transposed_and_empty(shapes, dtype):
    a, b = (RNG.standard_normal(s).astype(dtype) for s in shapes)
    out, _ = assert_printers_agree(lambda a, b: (fnp.tanh(a @ b) + 1.0, fnp.swapaxes(b, -1, -2) @ fnp.swapaxes(a, -1, -2)),
                                   a, b)
    np.testing.assert_allclose(out[1], np.swapaxes(a @ b, -1, -2), rtol=1e-5, atol=1e-5)


# (input channels, output channels, side, window): one shape per default conv strategy
CONV_SHAPES = {"direct": (1, 4, 6, 2), "taps": (1, 4, 6, 3), "kn2row": (32, 8, 10, 3), "shifted": (32, 64, 6, 3),
               "gemm": (2, 32, 10, 3)}


@pytest.mark.parametrize("strategy", list(CONV_SHAPES))
def test_conv_pool_steps_and_their_gradients_agree_for_every_conv_strategy(strategy):
    c, o, side, window = CONV_SHAPES[strategy]
    x = RNG.standard_normal((2, c, side, side)).astype(np.float32)
    w = RNG.standard_normal((o, c, window, window)).astype(np.float32) * 0.2
    b = RNG.standard_normal(o).astype(np.float32)

    def loss(x, w, b):
        y = nn.relu(nn.conv2d(x, w, b, padding=1))
        return fnp.sum(nn.max_pool2d(y, 2) ** 2) + fnp.sum(nn.avg_pool2d(y, 2, stride=1))

    _, steps = assert_printers_agree(fj.value_and_grad(loss, argnums=(0, 1, 2)), x, w, b)
    assert any(st.lowered.kernel.name.startswith(f"conv_{strategy}") for st in steps)


def test_scans_of_a_recurrent_cell_and_their_gradients_agree():
    h0 = RNG.standard_normal((4, 8)).astype(np.float32)
    xs = RNG.standard_normal((6, 4, 3)).astype(np.float32)
    w = RNG.standard_normal((11, 8)).astype(np.float32) * 0.3

    def loss(w, h0, xs):
        def cell(h, x):
            h = fnp.tanh(fnp.concatenate([h, x], axis=1) @ w)
            return h, fnp.sum(h * h, axis=1)

        h, ys = lax.scan(cell, h0, xs)
        _, back = lax.scan(cell, h, xs, reverse=True)
        return fnp.sum(ys) + fnp.sum(back) + fnp.sum(lax.scan(cell, h0, xs[:0])[1])

    assert_printers_agree(fj.value_and_grad(loss), w, h0, xs)


# ---------------------------------------------------------------------------------------
# Threads, fallbacks, what the text holds

THRESHOLD = 2048


def gelu_and_softmax(x):
    return 0.5 * x * (1.0 + fnp.tanh(0.79788456 * (x + 0.044715 * x * x * x))), nn.softmax(x)


def test_chunked_kernels_agree_when_called_from_two_threads_at_once():
    x = RNG.standard_normal((96, 64)).astype(np.float32)
    expected, steps = compile_with(False, gelu_and_softmax, (x,), parallel_threshold=THRESHOLD)
    with config.override(parallel_threshold=THRESHOLD, llvm_kernels=True):
        f = fj.jit(gelu_and_softmax)
        steps = f.lower(x).compile().executable._steps
        assert all(st.chunked and st.llvm is not None for st in steps)
        results: list = [None] * 8

        def call(i: int) -> None:
            results[i] = [f(x) for _ in range(5)]

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(results))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for per_thread in results:
        for out in per_thread:
            assert_same_bytes(out, expected)


def test_a_numba_parfor_keeps_the_numba_printer_and_says_why():
    x = RNG.standard_normal((96, 64)).astype(np.float32)
    # Kernels of their own: test_parallel_chunks inspects the LLVM of its parfors, which a
    # module of the same source loaded from the disk cache here first would not have.
    def f(x):
        return fnp.sin(x) * 0.25 + x, nn.log_softmax(x * 2.0)

    with config.override(parallel_chunks=False):
        out, steps = compile_with(True, f, (x,), parallel_threshold=THRESHOLD)
        assert steps and all(st.llvm is None for st in steps)
        assert all("parfor" in llvm_printer.unsupported(st.lowered.kernel) for st in steps)
    assert_same_bytes(out, compile_with(True, f, (x,), parallel_threshold=THRESHOLD)[0])


def test_the_llvm_text_holds_no_user_strings():
    def user_function_named_xyzzy(plugh_argument):
        return fnp.exp(plugh_argument * 3.25) + fnp.sum(plugh_argument)

    x = np.ones((4, 5), np.float32)
    with config.override(llvm_kernels=True):
        compiled = fj.jit(user_function_named_xyzzy).lower(x).compile()
    texts = compiled.executable.llvm_sources()
    assert texts and all(texts)
    for text in texts:
        assert "xyzzy" not in text and "plugh" not in text and "test_llvm_printer" not in text
        assert f'define i32 @"{llvm_printer.KERNEL_SYMBOL}"(' in text
