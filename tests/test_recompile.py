"""What a new signature of a compiled function costs (issue 12): kernels are shape-generic
(sizes are int parameters) and read float constants as data (``codegen/constants.py``), so
a new batch size retraces and plans but compiles nothing with Numba, and crossing the
parallel threshold recompiles only the kernels that become parallel."""

from __future__ import annotations

import re

import numpy as np

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import config
from fusejit.codegen.constants import kept_in_source
from fusejit.codegen.exprs import Const
from fusejit.ir.dtypes import DType
from fusejit.runtime.cache import COUNTERS
from fusejit.runtime.timings import KernelOrigin


def mlp_loss(params, x, y):
    w1, b1, w2, b2 = params
    h = fnp.tanh(x @ w1 + b1)
    return fnp.mean((h @ w2 + b2 - y) ** 2)


def mlp_data(batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((16, 32)).astype(np.float32) * 0.3, rng.standard_normal(32).astype(np.float32),
              rng.standard_normal((32, 5)).astype(np.float32) * 0.3, rng.standard_normal(5).astype(np.float32)]
    x = rng.standard_normal((batch, 16)).astype(np.float32)
    y = rng.standard_normal((batch, 5)).astype(np.float32)
    return params, x, y


def assert_matches_interpreter(result, params, x, y):
    (loss, grads) = result
    want_loss, want_grads = fj.jit(fj.value_and_grad(mlp_loss), backend="interpret")(params, x, y)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for g, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-6)


def test_a_new_batch_size_of_an_mlp_step_retraces_but_compiles_nothing(tmp_path):
    # Odd batch sizes, so that no other test of this process compiled the same mean.
    step = fj.jit(fj.value_and_grad(mlp_loss))
    with config.override(cache=True, cache_dir=str(tmp_path)):
        assert_matches_interpreter(step(*mlp_data(37)), *mlp_data(37))
        before = COUNTERS.numba_compiles
        assert_matches_interpreter(step(*mlp_data(53, seed=1)), *mlp_data(53, seed=1))
    assert COUNTERS.numba_compiles == before
    first, second = step.cache_info().compile_times
    assert {k.origin for k in second.kernels} == {KernelOrigin.MEMORY}
    assert len(second.kernels) == len(first.kernels)


def test_batch_sizes_that_are_and_are_not_powers_of_two_share_every_kernel(tmp_path):
    """A mean over the batch divides by 37, 32 and 48: the same kernels (a division by a
    power of two once became a multiplication, a different kernel)."""

    def per_example_loss(params, x, y):
        w1, b1, w2, b2 = params
        return fnp.mean(fnp.sum((fnp.tanh(x @ w1 + b1) @ w2 + b2 - y) ** 2, axis=1))

    step = fj.jit(fj.value_and_grad(per_example_loss))
    with config.override(cache=True, cache_dir=str(tmp_path)):
        step(*mlp_data(37))
        before = COUNTERS.numba_compiles
        for batch in (32, 48):
            params, x, y = mlp_data(batch, seed=batch)
            loss, _ = step(params, x, y)
            want, _ = fj.jit(fj.value_and_grad(per_example_loss), backend="interpret")(params, x, y)
            np.testing.assert_allclose(loss, want, rtol=1e-5)
    assert COUNTERS.numba_compiles == before


def test_a_new_batch_size_of_a_conv_weight_gradient_compiles_nothing(tmp_path):
    """The weight gradient's contraction runs over the batch's samples in chunks: a batch
    that the chunk size does not divide (17, 18) once added a kernel part for the rest,
    and each such batch compiled a new kernel (2-5 s)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)

    def loss(w, x):
        return (fj.nn.conv2d(x, w, padding=1) ** 2).sum()

    grad = fj.jit(fj.grad(loss))
    with config.override(cache=True, cache_dir=str(tmp_path)):
        grad(w, rng.standard_normal((16, 1, 8, 8)).astype(np.float32))
        before = COUNTERS.numba_compiles
        for batch in (17, 18, 24):
            x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
            np.testing.assert_allclose(grad(w, x), fj.jit(fj.grad(loss), backend="interpret")(w, x),
                                       rtol=1e-4, atol=1e-4)
    assert COUNTERS.numba_compiles == before


def test_crossing_the_parallel_threshold_recompiles_only_the_kernels_that_become_parallel(tmp_path):
    step = fj.jit(fj.value_and_grad(mlp_loss))
    # 41 x 32 hidden units cross the threshold; 41 x 5 outputs and the weights stay serial.
    with config.override(cache=True, cache_dir=str(tmp_path), parallel_threshold=41 * 32):
        step(*mlp_data(29))
        assert_matches_interpreter(step(*mlp_data(41)), *mlp_data(41))
        compiled = step.lower(*mlp_data(41)).compile()
    times = step.cache_info().compile_times[-1]
    sources = {k.name: k.source for k in compiled.kernels}
    recompiled = [k.name for k in times.kernels if k.origin is KernelOrigin.COMPILED]
    assert recompiled and len(recompiled) < len(times.kernels)
    # parallel: a parfor, or chunks on fusejit's threads (nogil, runtime/chunks.py)
    assert all("parallel=True" in sources[name] or "nogil=True" in sources[name] for name in recompiled), recompiled


def test_kernels_differing_only_in_float_constants_share_one_module():
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6)
    f = fj.jit(lambda x: fnp.tanh(x * 0.37 + 1.25) / 3.0)
    g = fj.jit(lambda x: fnp.tanh(x * 1.93 + 0.61) / 7.0)
    np.testing.assert_allclose(f(x), np.tanh(x * np.float32(0.37) + np.float32(1.25)) / np.float32(3), rtol=1e-6)
    before = COUNTERS.numba_compiles
    np.testing.assert_allclose(g(x), np.tanh(x * np.float32(1.93) + np.float32(0.61)) / np.float32(7), rtol=1e-6)
    assert COUNTERS.numba_compiles == before, g.cache_info()
    (kf,), (kg,) = f.lower(x).compile().kernels, g.lower(x).compile().kernels
    module = re.compile(r"\(module (fj_\w+)\)")  # the content hash of the generated module
    assert module.search(kf.source)[1] == module.search(kg.source)[1]
    code = "\n".join(line for line in kf.source.splitlines() if not line.startswith("#"))  # not the IR comments
    assert "0.37" not in code and "3.0" not in code and "def loop_" in code


def test_identities_and_small_powers_of_two_stay_literals_of_the_source():
    x = np.arange(6, dtype=np.float32)
    f = fj.jit(lambda x: fnp.maximum(x * 2.0, 0.5))
    np.testing.assert_array_equal(f(x), np.maximum(x * 2, 0.5))
    (kernel,) = f.lower(x).compile().kernels
    assert "np.float32(0.5)" in kernel.source
    assert all(kept_in_source(Const.of(v, DType.f32)) for v in (0.0, -0.0, 1.0, -2.0, 0.5, np.inf, np.nan))
    assert not any(kept_in_source(Const.of(v, DType.f32)) for v in (3.0, 0.1, 480.0, 1e-5))
    assert kept_in_source(Const.of(480, DType.i32))
