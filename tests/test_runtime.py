"""The CPU executable: buffer plan, steady-state allocation, donation, the generated
runner, shape-generic reuse, FUSEJIT_DUMP and FUSEJIT_DEBUG_NANS."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import config
from fusejit.runtime import buffers
from fusejit.runtime.cache import COUNTERS
from fusejit.runtime.cpu import CpuExecutable, DonationError

RNG = np.random.default_rng(2)


@pytest.fixture(scope="module", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "fusejit-cache"
    with config.override(cache=True, cache_dir=str(root), backend="cpu"):
        yield


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def chain(x, y):
    a = x * 2.0 + y
    b = fnp.tanh(a) * y
    c = fnp.exp(-b) + a
    return c - b, fnp.sum(c, axis=1)


# ---------------------------------------------------------------------------------------
# Buffer plan


def test_buffer_plan_never_shares_memory_between_live_values():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        steps, keys = [], []
        for s in range(n):
            reads = [keys[i] for i in rng.choice(len(keys), size=min(len(keys), 2), replace=False)] if keys else []
            defines = [((s, j), int(rng.choice([64, 128, 4096, 100]))) for j in range(int(rng.integers(1, 3)))]
            scratch = [(("scratch", s), 256)] if rng.random() < 0.3 else []
            steps.append(buffers.Step(defines, reads, scratch))
            keys += [k for k, _ in defines]
        plan = buffers.plan(steps)
        assert plan.overlapping_live_pairs() == []
        assert all(iv.offset % buffers.ALIGN == 0 for iv in plan.slots.values())


def test_buffer_plan_puts_a_later_buffer_in_a_dead_larger_ones_memory():
    """A dead buffer's memory holds later buffers of other sizes (not only of its own), the
    largest placed first: here two smaller ones side by side where a 4 KiB one was."""
    steps = [buffers.Step([("big", 4096)], [], []), buffers.Step([("x", 1024)], ["big"], []),
             buffers.Step([("a", 2048), ("b", 1024)], ["x"], [("tmp", 512)]), buffers.Step([], ["a", "b"], [])]
    plan = buffers.plan(steps)
    assert plan.overlapping_live_pairs() == []
    assert plan.arena_bytes == 4096 + 1024  # x is live beside big; a, b and tmp fit in big's place
    assert {plan.slots[k].offset for k in ("a", "b", "tmp")} <= set(range(0, 4096, 64))


def test_executable_plan_reuses_dead_buffers():
    x, y = f32(64, 32), f32(64, 32)
    compiled = fj.jit(chain, fuse=False).lower(x, y).compile()
    exe = compiled.executable
    assert isinstance(exe, CpuExecutable)
    assert exe.plan.overlapping_live_pairs() == []
    intermediates = [iv for k, iv in exe.plan.slots.items()]
    assert exe.plan.arena_bytes < sum(iv.nbytes for iv in intermediates)  # something was reused
    want = fj.jit(chain, backend="interpret")(x, y)
    for got, ref in zip(compiled(x, y), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-5)


def test_steady_state_calls_allocate_only_their_outputs():
    n = 1 << 18
    x, y = f32(n), f32(n)
    f = fj.jit(lambda x, y: fnp.tanh(x * y) + fnp.exp(x) * y - x, fuse=False)
    f(x, y)
    f(x, y)
    exe = f.lower(x, y).executable()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(5):
            out = f(x, y)
            del out
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exe.arena_allocations == 1
    assert current - base < 64 * 1024
    assert peak - base < 1.5 * n * 4  # one output at a time; 4 intermediates live in the arena


# ---------------------------------------------------------------------------------------
# The runner, shapes, kernel counts


def test_runner_calls_every_kernel_and_matches_the_general_path():
    x, y = f32(8, 5), f32(8, 5)
    f = fj.jit(chain, fuse=False)
    through_runner = f(x, y)
    exe = f.lower(x, y).executable()
    runner = exe.runner_source()
    assert runner.startswith("def run(args, into=NO_INTO):")
    for k, info in enumerate(exe.kernels):
        assert f"K{k}(" in runner and info.name in runner
    assert runner in exe.kernel_source()
    general = exe._call_generic([x, y])
    for a, b in zip(through_runner, general, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fuse", [True, False])
def test_after_the_first_call_nothing_compiles(fuse):
    f = fj.jit(chain, fuse=fuse)
    x, y = f32(6, 7), f32(6, 7)
    f(x, y)
    before = COUNTERS.snapshot()
    for _ in range(3):
        f(x, y)
    after = COUNTERS.snapshot()
    assert after["numba_compiles"] == before["numba_compiles"]
    assert after["numba_cache_loads"] == before["numba_cache_loads"]


def test_new_batch_size_compiles_no_numba_code():
    f = fj.jit(chain)
    for rows in (16, 16):
        f(f32(rows, 8), f32(rows, 8))
    before = COUNTERS.snapshot()
    for rows in (40, 40, 3):
        out = f(f32(rows, 8), f32(rows, 8))
        assert out[0].shape == (rows, 8)
    after = COUNTERS.snapshot()
    assert after["numba_compiles"] == before["numba_compiles"]
    assert after["modules_written"] == before["modules_written"]
    assert f.cache_info().misses == 3


def test_fuse_false_keeps_one_op_per_kernel():
    x = f32(4, 4)

    def g(x):
        return fnp.exp(x) * 3.0 + x

    unfused = fj.jit(g, fuse=False).lower(x).compile()
    fused = fj.jit(g).lower(x).compile()
    ops = len(fj.jit(g, fuse=False).lower(x).optimized.ops)
    assert len(unfused.kernels) >= ops - 2  # constants broadcast as their own kernels too
    assert len(fused.kernels) == 1
    np.testing.assert_allclose(unfused(x), fused(x), rtol=1e-5, atol=1e-6)


def test_large_outputs_are_recycled_only_once_nothing_refers_to_them():
    f = fj.jit(lambda x: x * 2.0)
    x = f32(1 << 18)  # a 1 MiB output: recycled (no page faults on reuse)
    a = f(x)
    first = a.ctypes.data
    del a
    b = f(x)
    assert b.ctypes.data == first  # dropped by the caller: reused
    c = f(x)
    assert c.ctypes.data != b.ctypes.data  # b is still alive
    view = c[:5]
    second = c.ctypes.data
    del c
    d = f(x)
    assert d.ctypes.data not in (first, second)  # c's memory is still seen through a view
    np.testing.assert_array_equal(view, x[:5] * np.float32(2))
    np.testing.assert_array_equal(d, x * np.float32(2))


def test_outputs_are_fresh_arrays_and_passthrough_results_are_copies():
    f = fj.jit(lambda x: (x, x + 1.0, fnp.reshape(x, (2, 2))))
    x = f32(4)
    a, b, c = f(x)
    assert a is not x and not np.shares_memory(a, x) and not np.shares_memory(c, x)
    np.testing.assert_array_equal(a, x)
    np.testing.assert_array_equal(c, x.reshape(2, 2))


def test_scalars_and_zero_size_arrays():
    f = fj.jit(lambda x, s: (x * s, fnp.sum(x)))
    for shape in [(), (0,), (3, 0)]:
        x = f32(*shape)
        a, b = f(x, 2.5)
        np.testing.assert_allclose(a, x * np.float32(2.5))
        np.testing.assert_allclose(b, np.sum(x), atol=1e-6)


# ---------------------------------------------------------------------------------------
# Donation


def adam_like(p, g):
    return p - 0.01 * g, fnp.sum(g * g)


def test_donated_buffer_becomes_the_output_in_place():
    step = fj.jit(adam_like, donate_argnums=0)
    p, g = f32(1000), f32(1000)
    want = p - np.float32(0.01) * g
    p_copy = p.copy()
    new_p, norm = step(p, g)
    np.testing.assert_allclose(new_p, want, rtol=1e-6)
    assert new_p is not p and np.shares_memory(new_p, p)  # written in place, a new array
    with pytest.raises(DonationError, match="argument 0 of @adam_like was donated"):
        step(p, g)
    for _ in range(3):
        new_p, norm = step(new_p, g)
    np.testing.assert_allclose(new_p, p_copy - np.float32(0.04) * g, rtol=1e-5)


def test_several_outputs_in_place_read_the_old_values():
    """m is overwritten first, yet p's update still sees the old m (all reads precede
    the writes of an element)."""
    step = fj.jit(lambda p, m: (m * 2.0, p - m), donate_argnums=(0, 1))
    p, m = f32(500), f32(500)
    want = (m * np.float32(2), p - m)
    new_m, new_p = step(p, m)
    assert np.shares_memory(new_m, m) and np.shares_memory(new_p, p)
    np.testing.assert_allclose(new_m, want[0], rtol=1e-6)
    np.testing.assert_allclose(new_p, want[1], rtol=1e-6)


def test_passing_a_consumed_donated_array_again_raises():
    step = fj.jit(lambda p, g: (p * g).reshape(-1, 2), donate_argnums=0)
    p, g = f32(4, 4), f32(4, 4)
    out = step(p, g)
    assert out.shape == (8, 2)
    with pytest.raises(DonationError, match="donated"):
        step(p, g)
    step(out.reshape(4, 4).copy(), g)  # fresh arrays are fine


def test_donated_array_aliasing_another_argument_is_not_overwritten_early():
    step = fj.jit(lambda p, g: p + g * 2.0, donate_argnums=0)
    p = f32(16)
    want = p + p * np.float32(2.0)
    out = step(p, p)
    np.testing.assert_allclose(out, want, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Debugging: FUSEJIT_DUMP and FUSEJIT_DEBUG_NANS


def test_dump_writes_every_stage_and_kernel(tmp_path):
    x = f32(6, 3)
    with config.override(dump_dir=str(tmp_path)):
        compiled = fj.jit(lambda x: fnp.tanh(x) @ x.T).lower(x).compile()
    (directory,) = tmp_path.iterdir()
    names = sorted(p.name for p in directory.iterdir())
    assert names[0].startswith("00_traced") and any(n.endswith("_fused.ir") for n in names)
    assert any("eliminate_dead_code" in n for n in names) and "runner.py" in names
    times = (directory / "compile_times.txt").read_text()
    assert all(info.name in times for info in compiled.kernels) and "numba start-up" in times
    kernels = sorted((directory / "kernels").glob("*.py"))
    assert len(kernels) == len(compiled.kernels)
    for path, info in zip(kernels, compiled.kernels, strict=True):
        assert path.read_text() == info.source
        assert info.source in compiled.kernel_source()
    llvm_printed = sorted((directory / "kernels").glob("*.ll"))
    assert [p.stem for p in llvm_printed] == [p.stem for p in kernels]
    assert all("define i32" in p.read_text() for p in llvm_printed)
    assert "// stage: inline_calls" in (directory / "01_inline_calls.ir").read_text()
    report = (directory / "fusion_report.txt").read_text()
    assert f"in {len(compiled.kernels)} kernels" in report and "tanh" in report


def test_debug_nans_names_the_op_and_source_line():
    def f(x):
        y = x * 2.0
        return fnp.log(y) + 1.0  # the line that makes the NaN

    x = np.array([1.0, -1.0, 2.0], np.float32)
    with config.override(debug_nans=True):
        with pytest.raises(FloatingPointError, match=r"log at .*test_runtime.py:\d+"):
            fj.jit(f)(x)
        np.testing.assert_allclose(fj.jit(f)(np.abs(x)), np.log(2 * np.abs(x)) + 1, rtol=1e-6)


def test_memory_mode_compiles_without_the_disk_cache(tmp_path):
    with config.override(cache=False, cache_dir=str(tmp_path)):
        out = fj.jit(lambda x: fnp.sin(x) * 3.0)(f32(5))
    assert out.shape == (5,)
    assert not any(tmp_path.iterdir())


def test_dumped_stages_parse_back(tmp_path):
    with config.override(dump_dir=str(tmp_path)):
        fj.jit(lambda x: fnp.exp(x).sum(axis=0)).lower(f32(4, 3)).compile()
    (directory,) = tmp_path.iterdir()
    stages = sorted(p for p in directory.iterdir() if p.suffix == ".ir" and "fused" not in p.name)
    assert len(stages) >= 5
    for path in stages:
        text = path.read_text()
        assert str(fj.ir.parse(text)) == text.split("\n", 1)[1]


def _donor(kind: str) -> np.ndarray:
    base = f32(8, 8)
    return {
        "owned": base,
        "read-only": _read_only(base),
        "non-contiguous": f32(8, 16)[:, ::2],
        "a view": base[:],
        "Fortran-ordered": np.asfortranarray(base),
    }[kind]


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


DONATING_STEPS = {
    "result in the donated buffer": lambda p, g: p - 0.5 * g,
    "reshaped result in the donated buffer": lambda p, g: (p - 0.5 * g).reshape(4, 16),
    "donated buffer unused (another dtype)": lambda p, g: (p * g).astype(np.float64),
    "donated array returned as it is": lambda p, g: (p, g + 1.0),
}


@pytest.mark.parametrize("kind", ["owned", "read-only", "non-contiguous", "a view", "Fortran-ordered"])
@pytest.mark.parametrize("step", DONATING_STEPS)
def test_a_donated_array_is_unusable_afterwards_and_never_returned(step, kind):
    fn = DONATING_STEPS[step]
    jitted = fj.jit(fn, donate_argnums=0)
    p, g = _donor(kind), f32(8, 8)
    want = fn(p.copy(), g)
    out = jitted(p, g)
    for o, w in zip(fj.tree_flatten(out)[0], fj.tree_flatten(want)[0], strict=True):
        np.testing.assert_allclose(o, w, rtol=1e-6)
        assert o is not p and o is not g and not np.shares_memory(o, g)
    with pytest.raises(DonationError, match="donated"):
        jitted(p, g)


@pytest.mark.parametrize("fn", [lambda x: x, lambda x: x.reshape(-1), lambda x: (x, x.T)],
                         ids=["identity", "reshape", "transpose"])
def test_outputs_never_alias_the_inputs(fn):
    x = f32(4, 6)
    for out in fj.tree_flatten(fj.jit(fn)(x))[0]:
        assert not np.shares_memory(out, x)
