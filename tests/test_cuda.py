"""The CUDA target: every primitive, random fused programs and a training step on the GPU
backend against NumPy and the CPU, the launch structure of the printed kernels, device
arrays, and every kernel kind compiled to PTX.

Here they run on Numba's CUDA simulator (``tests/conftest.py`` sets
``NUMBA_ENABLE_CUDASIM=1``: each GPU thread is a Python thread, so the shapes stay tiny);
``bench/gpu_check.sh`` runs the same file on a GPU with the simulator off. The PTX test
compiles the generated modules with NVVM in a subprocess without the simulator, which needs
the CUDA toolkit (NVVM and NVRTC) but no GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from test_primitives import CASES, assert_matches_numpy, dtypes_of  # noqa: E402

import fusejit as fj  # noqa: E402
import fusejit.numpy as fnp  # noqa: E402
from fusejit.codegen.cuda.printer import phases  # noqa: E402
from fusejit.codegen.target import CUDA  # noqa: E402
from fusejit.ir import PRIMITIVES  # noqa: E402
from fusejit.runtime.cache import module_name  # noqa: E402
from fusejit.testing.fuzz.checking import check  # noqa: E402
from fusejit.testing.fuzz.generator import generate  # noqa: E402
from fusejit.tracer.tracing import bind  # noqa: E402

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def cuda_jit(fn: Any, **kw: Any) -> Any:
    return fj.jit(fn, backend="cuda", **kw)


# ---------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_primitive_on_the_cuda_backend_matches_numpy(name: str) -> None:
    prim = PRIMITIVES[name]
    for dtype in dtypes_of(name):
        for case in CASES[name](dtype):

            def one_op(*xs: Any, attrs: dict[str, Any] = case.attrs) -> Any:
                return bind(prim, *xs, **attrs)

            out = cuda_jit(one_op)(*case.operands)
            assert isinstance(out, fj.DeviceArray)
            assert_matches_numpy(out, case.expected, f"{name}[{dtype}] {case.label} (cuda)")


def test_random_fused_programs_on_the_cuda_backend_match_numpy() -> None:
    failures = []
    checked = 0
    for seed in range(40):
        program = generate(seed, max_ops=6, grad_fraction=0.0, large_fraction=0.0)
        result = check(program, configs=("cuda",), pairs=False)
        if result.status == "ok":
            checked += 1
        elif result.status == "mismatch":
            failures.append((seed, [f"{m.category}: {m.detail}" for m in result.mismatches]))
    assert not failures, failures
    assert checked >= 25


def mlp_step(params: dict[str, Any], x: Any, y: Any) -> tuple[Any, dict[str, Any]]:
    def loss(p: dict[str, Any]) -> Any:
        h = fnp.tanh(x @ p["w1"] + p["b1"])
        logits = h @ p["w2"]
        logits = logits - logits.max(axis=1, keepdims=True)
        logp = logits - fnp.log(fnp.exp(logits).sum(axis=1, keepdims=True))
        return -(logp * y).sum() / x.shape[0]

    value, grads = fj.value_and_grad(loss)(params)
    return value, {k: params[k] - 0.1 * grads[k] for k in params}


def test_a_training_step_on_the_gpu_equals_the_cpu_and_keeps_parameters_on_the_device() -> None:
    rng = np.random.default_rng(0)
    params = {"w1": rng.standard_normal((6, 8)) * 0.3, "b1": np.zeros(8), "w2": rng.standard_normal((8, 3)) * 0.3}
    x = rng.standard_normal((5, 6))
    y = np.eye(3)[rng.integers(0, 3, 5)]
    cpu_step, gpu_step = fj.jit(mlp_step), cuda_jit(mlp_step)
    cpu_params, gpu_params = params, fj.device_put(params)
    for _ in range(3):
        cpu_loss, cpu_params = cpu_step(cpu_params, x, y)
        gpu_loss, gpu_params = gpu_step(gpu_params, x, y)
        np.testing.assert_allclose(float(gpu_loss), cpu_loss, rtol=1e-12)
    assert all(isinstance(v, fj.DeviceArray) for v in gpu_params.values())
    for k in params:
        np.testing.assert_allclose(np.asarray(gpu_params[k]), cpu_params[k], rtol=1e-12, atol=1e-14)
    assert gpu_step.cache_info().misses == 1  # device arrays in, the same executable


def test_cnn_gradients_on_the_gpu_equal_the_cpus() -> None:
    """Convolution and pooling forward and backward (the weight gradient and the pooling
    gradient accumulate with atomic adds on the GPU)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 6, 6))
    w = rng.standard_normal((3, 2, 3, 3))

    def loss(w: Any, x: Any) -> Any:
        return (fj.nn.max_pool2d(fnp.tanh(fj.nn.conv2d(x, w, padding=1)), 2) ** 2).sum()

    grad = fj.grad(loss, argnums=(0, 1))
    for got, want in zip(cuda_jit(grad)(w, x), fj.jit(grad)(w, x), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_a_long_conv_contraction_is_split_over_a_block_and_a_short_one_is_a_thread_per_output() -> None:
    """The weight gradient of a conv sums over the batch and the image (16 x 64 = 1024
    terms per weight): a block of threads per weight, then a block sum; the forward conv
    is a thread per output element. Both equal the CPU."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 1, 8, 8))
    w = rng.standard_normal((2, 1, 3, 3))
    grad = fj.grad(lambda w, x: (fnp.tanh(fj.nn.conv2d(x, w, padding=1)) ** 2).sum())
    np.testing.assert_allclose(np.asarray(cuda_jit(grad)(w, x)), fj.jit(grad)(w, x), rtol=1e-12)
    lowered = fj.jit(grad, backend="cuda").lower(w, x)
    kernels = [CUDA.lower(g).kernel for g in lowered.fused.groups]
    (forward,), (weight_grad,) = (phases(k)[1] for k in kernels if k.kind == "conv_direct")
    assert forward.reductions is None and len(forward.loops) == 2  # planes x positions, collapsed
    assert weight_grad.reductions is not None and len(weight_grad.reductions) == 1  # the block sum


def test_a_memory_accumulation_becomes_an_atomic_add_and_its_loop_runs_on_the_grid() -> None:
    def f(x: Any, i: Any) -> Any:
        return fj.grad(lambda v: fnp.take(v, i).sum())(x)

    kernels = kernels_of(f, np.ones(5), np.array([1, 1, 3]))
    sources = "\n".join(CUDA.print_module(k) for k in kernels)
    assert "cuda.atomic.add(" in sources
    launches = [ph for k in kernels for ph in phases(k)[1]]
    assert all(ph.loops for ph in launches)  # no one-thread launch left


def test_a_loop_reading_a_value_a_single_thread_computed_runs_with_it() -> None:
    """The gradient of a norm: a total computed on one thread, then a loop scaling by
    it (a launch of its own could not read the total)."""
    a = np.random.default_rng(6).standard_normal((4, 5))
    grad = fj.grad(lambda x: fnp.sqrt((x * x).sum()))
    np.testing.assert_allclose(np.asarray(cuda_jit(grad)(a)), fj.jit(grad)(a), rtol=1e-12)


def test_host_ops_run_between_the_launches_in_program_order() -> None:
    seen: list[float] = []

    def f(x: Any) -> Any:
        y = fnp.exp(x)
        fj.debug.callback(lambda v: seen.append(float(v.sum())), y)
        return fj.distributed.psum(y * 2.0)  # one process: the identity

    out = cuda_jit(f)(np.zeros(3))
    np.testing.assert_array_equal(np.asarray(out), np.full(3, 2.0))
    assert seen == [3.0]


def test_loops_and_branches_on_the_gpu_equal_the_cpu_with_their_gradients() -> None:
    rng = np.random.default_rng(4)
    w, xs, h0 = rng.standard_normal((3, 3)) * 0.5, rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 3))

    def f(w: Any, xs: Any, h0: Any) -> Any:
        def step(h: Any, x: Any) -> Any:
            h = fnp.tanh(h @ w + x)
            return h, h.sum()

        h, ys = fj.lax.scan(step, h0, xs)
        h = fj.lax.cond(ys.sum() > 0, lambda v: v * 2.0, lambda v: v - 1.0, h)
        halved = fj.lax.fori_loop(0, 3, lambda i, c: c * 0.5, h.sum())
        return (h**2).sum() + ys.sum() + halved

    def g(w: Any, xs: Any, h0: Any) -> Any:  # a while_loop has no reverse mode
        return fj.lax.while_loop(lambda c: c[0] < 3.0, lambda c: (c[0] + 1.0, c[1] @ w), (0.0, h0))[1]

    for fn in (f, fj.grad(f, argnums=(0, 2)), g):
        for got, want in zip(fj.tree_leaves(cuda_jit(fn)(w, xs, h0)), fj.tree_leaves(fj.jit(fn)(w, xs, h0)),
                             strict=True):
            assert isinstance(got, fj.DeviceArray)
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-12)


def test_a_zero_length_scan_on_the_gpu_returns_a_copy_of_its_carry() -> None:
    h0 = fj.device_put(np.ones(3))
    h, ys = cuda_jit(lambda h, xs: fj.lax.scan(lambda c, x: (c + x, c), h, xs))(h0, np.ones((0, 3)))
    assert h.buffer is not h0.buffer and ys.shape == (0, 3)
    np.testing.assert_array_equal(np.asarray(h), np.ones(3))


def test_device_arrays_round_trip_and_report_shape_dtype_and_device() -> None:
    host = np.arange(12, dtype=np.float32).reshape(3, 4)
    dev = fj.device_put(host)
    assert (dev.shape, dev.dtype, dev.ndim, dev.size, dev.device) == ((3, 4), np.float32, 2, 12, "cuda")
    np.testing.assert_array_equal(np.asarray(dev), host)
    np.testing.assert_array_equal(fj.device_put(dev, "cpu"), host)
    assert fj.device_put(dev) is dev
    assert repr(dev) == "DeviceArray(float32[3, 4], cuda)"
    assert "cuda" in fj.devices()
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        fj.device_put(host, "tpu")


def test_a_new_batch_size_on_the_gpu_reuses_every_kernel_module() -> None:
    """A mean over the batch divides by its size: the divisor is data (the kernel's
    constant array), so batches of 37 and 53 share every module and its compilation."""

    def loss(w: Any, x: Any) -> Any:
        return fnp.mean(fnp.tanh(x @ w) * 3.7)

    step = cuda_jit(fj.value_and_grad(loss))
    rng = np.random.default_rng(9)
    w = rng.standard_normal((4, 3))
    modules = []
    for batch in (37, 53):
        x = rng.standard_normal((batch, 4))
        value, grad = step(w, x)
        want_value, want_grad = fj.jit(fj.value_and_grad(loss))(w, x)
        np.testing.assert_allclose(float(value), want_value, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-12)
        plan = step.lower(w, x).executable().call_plan
        modules.append(sorted(module_name(CUDA.print_module(sp.lowered.kernel)) for sp in plan.steps))
    assert modules[0] == modules[1]


def test_a_donated_device_array_is_reused_and_then_unusable() -> None:
    x = fj.device_put(np.ones(8))
    out = cuda_jit(lambda a: a * 2.0, donate_argnums=0)(x)
    np.testing.assert_array_equal(np.asarray(out), np.full(8, 2.0))
    with pytest.raises(RuntimeError, match="donated"):
        np.asarray(x)


def test_an_argument_returned_as_is_is_a_copy_on_the_device() -> None:
    x = fj.device_put(np.arange(3.0))
    a, b = cuda_jit(lambda v: (v, v + 1))(x)
    assert a is not x and a.buffer is not x.buffer
    np.testing.assert_array_equal(np.asarray(a), np.arange(3.0))


def test_a_result_the_caller_dropped_is_reused_and_one_it_holds_is_not_overwritten() -> None:
    f = cuda_jit(lambda a: a + 1.0)
    x = fj.device_put(np.zeros(4))
    held = f(x)
    buffer = f(x).buffer  # this result is dropped at once
    again = f(x)
    assert again.buffer is buffer and held.buffer is not buffer
    np.testing.assert_array_equal(np.asarray(held), np.ones(4))


def test_asking_for_cuda_without_a_gpu_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from numba import cuda

    from fusejit.runtime import devices

    monkeypatch.setattr(cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_usable", [])
    with pytest.raises(fj.CudaUnavailableError, match="NUMBA_ENABLE_CUDASIM=1"):
        cuda_jit(lambda a: a + 1)(np.ones(3))
    assert fj.devices() == ["cpu"]


# ---------------------------------------------------------------------------------------
# Replay: later calls repeat the first call's launches with new addresses


def softmax_then_scale(a: Any, b: Any) -> Any:
    z = a @ b  # a cuBLAS GEMM on a GPU at the sizes below, its epilogue launched after it
    e = fnp.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True) * 2.0, z.sum()


def test_every_launch_of_a_call_is_reported_to_its_threads_recorder_only() -> None:
    from fusejit.codegen.cuda.launch import KernelLaunch, Recorder

    with fj.config.override(cuda_replay=False):  # every call through the launchers
        f = cuda_jit(lambda a: fnp.exp(a - a.max(axis=1, keepdims=True)).sum())
        x = np.ones((3, 4))
        f(x)
    launches = sum(len(phases(k)[1]) for k in kernels_of(lambda a: fnp.exp(a - a.max(axis=1, keepdims=True)).sum(), x))
    with Recorder() as steps:
        f(x)
        with Recorder() as inner:
            f(x)
    assert len(steps) == launches and all(isinstance(s, KernelLaunch) for s in steps)
    assert len(inner) == launches  # the inner recorder took the nested call's launches


def test_a_recorded_launch_packs_numbas_kernel_abi_and_patches_only_changing_addresses() -> None:
    """Without a GPU: a recorded launch of a kernel taking two flat arrays and an int64
    packs each array as (meminfo, parent, count, itemsize, data, shape, strides) and the
    int as itself; only the data field of the array that changes per call is patched."""
    from types import SimpleNamespace

    from numba import types

    from fusejit.codegen.cuda.launch import KernelLaunch, NotReplayable, _PackedLaunch

    def array(address: int, n: int, contiguous: bool = True) -> Any:
        return SimpleNamespace(dtype=np.dtype(np.float32), size=n, shape=(n,), strides=(4,),
                               is_c_contiguous=lambda: contiguous,
                               device_ctypes_pointer=SimpleNamespace(value=address))

    compiled = SimpleNamespace(argument_types=(types.float32[::1], types.float32[::1], types.int64),
                               _codelibrary=SimpleNamespace(get_cufunc=lambda: SimpleNamespace(handle="h")))
    kernel = SimpleNamespace(overloads={"sig": compiled}, py_func=SimpleNamespace(__name__="k_0"))
    fixed, changing = array(4096, 10), array(8192, 10)
    packed = _PackedLaunch(KernelLaunch(kernel, 3, 256, (fixed, changing, 10)),
                           lambda a: 0 if a is changing else None)
    assert packed.values.tolist() == [0, 0, 10, 4, 4096, 10, 4, 0, 0, 10, 4, 8192, 10, 4, 10]
    assert packed.patches == ((11, 0),) and packed.head == ("h", 3, 1, 1, 256, 1, 1, 0, 0)
    assert packed.pointers.tolist() == [packed.values.ctypes.data + 8 * i for i in range(15)]
    with pytest.raises(NotReplayable, match="not C-contiguous"):
        _PackedLaunch(KernelLaunch(kernel, 3, 256, (array(0, 10, contiguous=False), changing, 10)), lambda a: None)


@pytest.mark.skipif(SIMULATED, reason="the simulator's kernels are Python functions: nothing to replay")
def test_later_calls_replay_the_launches_with_new_arguments_and_match_numpy() -> None:
    rng = np.random.default_rng(5)
    f = cuda_jit(softmax_then_scale)
    for _ in range(4):
        a, b = rng.standard_normal((256, 128)), rng.standard_normal((128, 64))
        got, total = f(fj.device_put(a), b)
        z = a @ b
        e = np.exp(z - z.max(axis=1, keepdims=True))
        np.testing.assert_allclose(np.asarray(got), e / e.sum(axis=1, keepdims=True) * 2.0, rtol=1e-10)
        np.testing.assert_allclose(float(total), z.sum(), rtol=1e-10)
    exe = f.lower(a, b).executable()
    assert exe.replay and exe.replay.launches >= 3, exe.replay_refused


@pytest.mark.skipif(SIMULATED, reason="the simulator's kernels are Python functions: nothing to replay")
def test_a_donating_step_replays_and_carries_its_state() -> None:
    f = cuda_jit(lambda w, g: (w - 0.5 * g, (w * g).sum()), donate_argnums=0)
    rng = np.random.default_rng(8)
    w_host = rng.standard_normal(1000)
    w = fj.device_put(w_host)
    for _ in range(4):
        g = rng.standard_normal(1000)
        w, dot = f(w, g)
        np.testing.assert_allclose(float(dot), (w_host * g).sum(), rtol=1e-10)
        w_host = w_host - 0.5 * g
    np.testing.assert_allclose(np.asarray(w), w_host, rtol=1e-12)
    assert f.lower(w, g).executable().replay


@pytest.mark.skipif(SIMULATED, reason="the simulator's kernels are Python functions: nothing to replay")
def test_a_call_with_one_array_in_two_arguments_is_not_recorded_and_later_calls_stay_right() -> None:
    f = cuda_jit(lambda a, b: a * 2.0 - b)
    x, y = fj.device_put(np.arange(6.0)), fj.device_put(np.ones(6))
    np.testing.assert_array_equal(np.asarray(f(x, x)), np.arange(6.0))
    exe = f.lower(x, x).executable()
    assert exe.replay is None  # not recorded: the slots of a and b would be one array
    np.testing.assert_array_equal(np.asarray(f(x, y)), np.arange(6.0) * 2 - 1)
    assert exe.replay
    np.testing.assert_array_equal(np.asarray(f(y, x)), 2.0 - np.arange(6.0))
    np.testing.assert_array_equal(np.asarray(f(x, x)), np.arange(6.0))


@pytest.mark.skipif(SIMULATED, reason="threads on the simulator are too slow to race")
def test_replayed_calls_from_several_threads_get_their_own_results() -> None:
    from concurrent.futures import ThreadPoolExecutor

    f = cuda_jit(softmax_then_scale)
    rng = np.random.default_rng(6)
    inputs = [(rng.standard_normal((64, 32)), rng.standard_normal((32, 16))) for _ in range(8)]
    f(*inputs[0])

    def run(ab: tuple[Any, Any]) -> float:
        return float(f(*ab)[1])

    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, inputs * 4))
    np.testing.assert_allclose(got, [(a @ b).sum() for a, b in inputs] * 4, rtol=1e-10)


# ---------------------------------------------------------------------------------------
# Launch structure


def kernels_of(fn: Any, *args: Any) -> list[Any]:
    lowered = fj.jit(fn, backend="cuda").lower(*args)
    return [CUDA.lower(g).kernel for g in lowered.fused.groups]


def test_an_elementwise_nest_is_one_flat_launch_over_every_element() -> None:
    (kernel,) = kernels_of(lambda a, b: fnp.tanh(a * b), np.ones((4, 5)), np.ones((1, 5)))
    _, launches = phases(kernel)
    assert len(launches) == 1
    assert sum(1 for lp in launches[0].loops) == 2  # rows and columns collapsed


def test_a_full_reduction_is_a_grid_launch_then_one_thread_combining_the_partials() -> None:
    (kernel,) = kernels_of(lambda a: a.sum(), np.ones((4, 5)))
    _, launches = phases(kernel)
    assert [bool(ph.loops) for ph in launches] == [True, False]


def test_a_softmax_row_is_shared_by_a_block_with_its_max_and_sum_combined_in_shared_memory() -> None:
    (kernel,) = kernels_of(lambda a: fnp.exp(a - a.max(axis=1, keepdims=True)) / fnp.exp(a).sum(axis=1, keepdims=True),
                           np.ones((4, 5), np.float32))
    _, launches = phases(kernel)
    assert len(launches) == 1 and len(launches[0].loops) == 1
    assert sorted(r.combine.fn for r in launches[0].reductions) == ["accumulate", "maximum"]
    assert "cuda.shared.array(" in CUDA.print_module(kernel)


def test_a_column_sum_is_a_thread_per_column_not_shared_by_a_block() -> None:
    (kernel,) = kernels_of(lambda a: a.sum(axis=0), np.ones((6, 5), np.float32))
    launches = [ph for ph in phases(kernel)[1] if ph.loops and ph.reductions is None]
    assert launches and all(ph.reductions is None for ph in phases(kernel)[1])


def test_an_argmax_row_keeps_one_thread_per_row() -> None:
    (kernel,) = kernels_of(lambda a: fnp.argmax(a, axis=1), np.ones((4, 5), np.float32))
    (launch,) = phases(kernel)[1]
    assert launch.reductions is None


def test_a_small_matmul_is_one_launch_with_its_epilogue_and_a_large_one_a_gemm() -> None:
    (small,) = kernels_of(lambda a, b: fnp.maximum(a @ b, 0.0), np.ones((4, 3)), np.ones((3, 5)))
    (launch,) = phases(small)[1]
    assert len(launch.loops) == 2  # a thread per output element, the max fused in
    n = 1024  # 2 n**3 flops: over the cuda_blas_min_flops setting
    lowered = fj.jit(lambda a, b: fnp.maximum(a @ b, 0.0), backend="cuda").lower(
        np.ones((n, n), np.float32), np.ones((n, n), np.float32))
    (group,) = lowered.fused.groups
    launches = phases(CUDA.lower(group).kernel)[1]
    assert launches[0].matmul is not None and len(launches) == 2 and launches[1].loops  # the GEMM, then the max


@pytest.mark.parametrize(("a_t", "b_t"), [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize(("dtype", "k"), [(np.float64, 4), (np.float32, 7), (np.float64, 0)])
def test_the_gemm_of_every_layout_and_a_batch_equals_numpy(a_t: bool, b_t: bool, dtype: Any, k: int) -> None:
    from numba import cuda

    from fusejit.codegen.cuda.gemm import gemm

    rng = np.random.default_rng(3)
    batch, m, n = 2, 3, 5
    a = rng.standard_normal((batch, k, m) if a_t else (batch, m, k)).astype(dtype)
    b = rng.standard_normal((batch, n, k) if b_t else (batch, k, n)).astype(dtype)
    c = cuda.to_device(np.full(batch * m * n, np.nan, dtype))  # every element must be written
    gemm(cuda.to_device(a.ravel()), cuda.to_device(b.ravel()), c, batch, m, k, n, a_t, b_t)
    want = (a.transpose(0, 2, 1) if a_t else a) @ (b.transpose(0, 2, 1) if b_t else b)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(c.copy_to_host().reshape(batch, m, n), want, rtol=rtol, atol=rtol)


# ---------------------------------------------------------------------------------------
# PTX

PTX_SCRIPT = textwrap.dedent("""
    import importlib.util, json, sys, types as pytypes
    from numba import cuda, types
    from numba.cuda import dispatcher
    from numba.cuda.dispatcher import CUDADispatcher
    # Device functions (the math library) compile for the current device's compute
    # capability, and there is no device here: name a Hopper one.
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
    NB = {"bool": types.boolean, "int32": types.int32, "int64": types.int64,
          "float32": types.float32, "float64": types.float64}
    done = 0
    for path, arrays, nints in json.load(sys.stdin):
        spec = importlib.util.spec_from_file_location(f"ptx_{done}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sig = tuple(NB[a][::1] for a in arrays) + (types.int64,) * nints
        for name, obj in vars(mod).items():
            if isinstance(obj, CUDADispatcher) and obj.py_func.__module__ == mod.__name__:
                if obj.py_func.__code__.co_argcount == len(sig):
                    cuda.compile_ptx(obj.py_func, sig, cc=(9, 0))
                    done += 1
    from fusejit.codegen.cuda.gemm import _gemm_kernel  # the GEMM without CuPy
    for dt in (types.float32, types.float64):
        cuda.compile_ptx(_gemm_kernel.py_func, (dt[::1], dt[::1], dt[::1]) + (types.int64,) * 4
                         + (types.boolean, types.boolean, dt), cc=(9, 0))
    print(done)
""")


def _nvvm_found() -> bool:
    probe = "from numba import cuda, types; cuda.compile_ptx(lambda a: None, (types.float32[::1],), cc=(9, 0))"
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, timeout=120).returncode == 0


@pytest.mark.skipif(not SIMULATED, reason="on a GPU the kernels are compiled by running them")
def test_every_kernel_kind_compiles_to_ptx(tmp_path: Any) -> None:
    if not _nvvm_found():
        pytest.skip("no CUDA toolkit to compile PTX with (NVVM and NVRTC)")
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 6)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    programs = [
        (lambda a, b: fnp.maximum(a @ b, 0.0).sum(axis=0), (x, w)),  # matmul, epilogue, column sums
        (lambda a: fnp.exp(a - a.max(axis=1, keepdims=True)) / 3.0, (x,)),  # row kernel
        (lambda a: (fnp.tanh(a) ** 2).sum(), (x.astype(np.float64),)),  # full reduction, float64
        (lambda a: fnp.cumsum(a, axis=1), (x,)),  # scan kernel
        (lambda a: fj.grad(lambda v: fnp.take(v, np.array([0, 2, 2])).sum())(a), (x[0],)),  # scatter
        (lambda a: fnp.concatenate([a, -a], axis=0)[::2] % 1.5, (x,)),  # layout, remainder
        (lambda a: fnp.floor(a) + fnp.ceil(a) * fnp.round(a) + a // 0.3, (x, )),  # rounding
        (lambda a: fnp.argmax(a, axis=1) + fnp.arange(4), (x,)),  # int64 argmax
        (lambda a: fj.nn.max_pool2d(fj.nn.conv2d(a, np.ones((2, 1, 3, 3), np.float32)), 2),
         (rng.standard_normal((2, 1, 6, 6)).astype(np.float32),)),  # conv, pool
    ]
    jobs = []
    for k, (fn, args) in enumerate(programs):
        for group in fj.jit(fn, backend="cuda").lower(*args).fused.groups:
            kernel = CUDA.lower(group).kernel
            path = tmp_path / f"m{k}_{len(jobs)}.py"
            path.write_text(CUDA.print_module(kernel))
            jobs.append((str(path), [a.dtype.np.name for a in kernel.arrays], len(kernel.ints)))
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    proc = subprocess.run([sys.executable, "-c", PTX_SCRIPT], input=json.dumps(jobs), env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) >= len(jobs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cuda_math_library_matches_numpy_at_the_edges(dtype):
    """The CUDA library writes out NumPy's divmod, min/max and logistic rules again (its
    own primitives, not the CPU's): signed zeros, infinities, NaN, zero and negative
    divisors, huge and tiny quotients reach the correction branches random data misses."""
    edge = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, np.inf, -np.inf, np.nan, 1e30, -1e-30, 7.0], dtype)
    a, b = np.meshgrid(edge, edge)
    a, b = a.ravel(), b.ravel()

    def math(x, y):
        return (x // y, x % y, fnp.maximum(x, y), fnp.minimum(x, y), fnp.fmax(x, y), fnp.fmin(x, y),
                fj.nn.sigmoid(x))

    with np.errstate(all="ignore"):
        want = [np.floor_divide(a, b), np.remainder(a, b), np.maximum(a, b), np.minimum(a, b), np.fmax(a, b),
                np.fmin(a, b), 1 / (1 + np.exp(-a))]
    for k, (got, expected) in enumerate(zip(cuda_jit(math)(a, b), want, strict=True)):
        got = np.asarray(got)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        both = ~np.isnan(expected)
        np.testing.assert_allclose(got[both], expected[both], rtol=2e-7 if dtype == np.float32 else 1e-15)
        if k < 2:  # the sign of a zero quotient or remainder (max/min of tied zeros: either)
            zeros = both & (expected == 0)
            np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(expected[zeros]))
