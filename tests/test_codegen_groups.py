"""Multi-op fusion groups of every kind, built by hand, against the interpreter."""

from __future__ import annotations

import numpy as np
import pytest
from test_codegen import F32, F64, I32, I64, RNG, build, check, data, noncontiguous, one_group

from fusejit import config
from fusejit.codegen import can_lower, lower_group
from fusejit.codegen.cpu.printer import module_source
from fusejit.codegen.kernel import Loop, Matmul
from fusejit.ir import primitives as P
from fusejit.ir.transforms.fusion import FusionGroup, make_group


@pytest.fixture(scope="module", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "fusejit-cache"
    with config.override(cache=True, cache_dir=str(root)):
        yield


def groups_by(fn, kinds_of_ops: list[tuple[list[int], str]]):
    """Groups of ``fn`` from op index lists."""
    users, results = fn.users(), set(fn.results)
    return [make_group([fn.ops[i] for i in idx], results, users, kind) for idx, kind in kinds_of_ops]


# ---------------------------------------------------------------------------------------
# loop


def test_loop_group_of_layout_ops_materializes_nothing():
    """broadcast, transpose, reshape, slice, pad, concatenate, gather, iota, convert,
    select in one kernel with two outputs."""

    def body(b, x, w, idx):
        t = b.op(P.transpose, x, perm=(1, 0))  # [6,4]
        r = b.op(P.reshape, t, shape=(4, 6))
        s = b.op(P.slice, r, start=(0, 1), limit=(4, 6), stride=(1, 2))  # [4,3]
        p = b.op(P.pad, s, lo=(0, 1), hi=(0, 0), value=0.25)  # [4,4]
        c = b.op(P.concatenate, p, b.op(P.broadcast_in_dim, w, shape=(4, 2), dims=(0,)), axis=1)  # [4,6]
        g = b.op(P.gather, c, idx, axis=1)  # [4,6]
        it = b.op(P.convert, b.op(P.iota, shape=(4, 6), dimension=0, dtype=I32), dtype=F32)
        e = b.op(P.abs, b.op(P.mul, g, it))  # (no math-library call: see the next test)
        sel = b.op(P.select, b.op(P.gt, e, b.full_like(1.0, e)), e, g)
        return [sel, b.op(P.neg, g)]

    fn = build([(F32, (4, 6)), (F32, (4,)), (I32, (4, 6))], body)
    idx = RNG.integers(-6, 6, size=(4, 6)).astype(np.int32)
    args = [data(F32, (4, 6), special=False), data(F32, (4,)), idx]
    exe = check(fn, args, one_group(fn, "loop"))
    assert len(exe.kernels) == 1
    check(fn, [noncontiguous(args[0]), args[1], args[2]], one_group(fn, "loop"))


def test_a_kernel_holds_concatenate_or_pad_pieces_or_math_library_calls_not_both():
    fn = build([(F32, (4, 3))], lambda b, x: b.op(P.exp, b.op(P.pad, x, lo=(0, 1), hi=(0, 0), value=0.0)))
    assert "LLVM takes minutes" in can_lower(one_group(fn, "loop")[0])
    fn2 = build([(F32, (4, 3))], lambda b, x: b.op(P.abs, b.op(P.pad, x, lo=(0, 1), hi=(0, 0), value=0.0)))
    assert can_lower(one_group(fn2, "loop")[0]) is None


def test_reshapes_that_split_and_merge_axes_under_transposes():
    """Per-axis indices through reshapes, group by group (max-pool's [N,C,H,W] ->
    [N,C,H/2,2,W/2,2] and back)."""

    def body(b, x):
        split = b.op(P.reshape, x, shape=(2, 3, 2, 2, 2))  # [2,3,4,2] -> split axis 2
        t = b.op(P.transpose, split, perm=(0, 2, 1, 4, 3))
        merged = b.op(P.reshape, b.op(P.exp, t), shape=(4, 3, 4))  # merge the first two
        return b.op(P.transpose, merged, perm=(2, 1, 0))

    fn = build([(F32, (2, 3, 4, 2))], body)
    exe = check(fn, [data(F32, (2, 3, 4, 2), special=False)], one_group(fn, "loop"))
    assert len(exe.kernels) == 1


def test_loop_group_over_a_reshape_chain_stays_one_flat_loop():
    def body(b, x):
        y = b.op(P.reshape, b.op(P.tanh, x), shape=(6, 4))
        return b.op(P.reshape, b.op(P.add, y, y), shape=(24,))

    fn = build([(F64, (2, 12))], body)
    exe = check(fn, [data(F64, (2, 12))], one_group(fn, "loop"))
    src = exe.kernel_source()
    assert src.count("for i") == 1 and "//" not in src.split("# ---- entry")[0]


def test_horizontal_group_runs_independent_loops():
    def body(b, x, y):
        return [b.op(P.exp, x), b.op(P.neg, y)]

    fn = build([(F32, (3, 4)), (F32, (5,))], body)
    parts = groups_by(fn, [([0], "loop"), ([1], "loop")])
    group = FusionGroup(fn.ops, fn.params, fn.results, "horizontal", tuple(parts))
    exe = check(fn, [data(F32, (3, 4)), data(F32, (5,))], [group])
    assert len(exe.kernels) == 1


def test_horizontal_parts_run_flat_unless_a_rule_needs_indices_per_axis():
    """Two elementwise parts over matrices: one loop each; a transpose keeps its nest."""

    def body(b, x, y, z):
        return [b.op(P.neg, x), b.op(P.mul, y, y), b.op(P.transpose, z, perm=(1, 0))]

    fn = build([(F32, (3, 4)), (F32, (2, 3, 5)), (F32, (4, 6))], body)
    parts = groups_by(fn, [([0], "loop"), ([1], "loop"), ([2], "loop")])
    group = FusionGroup(fn.ops, fn.params, fn.results, "horizontal", tuple(parts))
    exe = check(fn, [data(F32, (3, 4)), data(F32, (2, 3, 5)), data(F32, (4, 6))], [group])
    (step,) = exe.call_plan.steps
    loops = [s for s in step.lowered.kernel.body if isinstance(s, Loop)]
    assert len(loops) == 3
    assert [any(isinstance(t, Loop) for t in lp.body) for lp in loops] == [False, False, True]


# ---------------------------------------------------------------------------------------
# reduce


@pytest.mark.parametrize("axes", [(1,), (0,)], ids=["rows", "cols"])
def test_reduce_group_with_producers_epilogue_and_side_output(axes):
    """sum and max of exp(x*w) with a mean-like epilogue; exp(x*w) also an output."""

    def body(b, x, w):
        e = b.op(P.exp, b.op(P.mul, x, b.op(P.broadcast_in_dim, w, shape=(5, 6), dims=(1,))))
        s = b.op(P.reduce_sum, e, axes=axes)
        m = b.op(P.reduce_max, e, axes=axes)
        mean = b.op(P.mul, s, b.full_like(1 / 6, s))
        keep = b.op(P.reshape, mean, shape=(1,) + mean.shape if axes == (0,) else mean.shape + (1,))
        return [e, keep, m, b.op(P.sub, m, mean)]

    fn = build([(F32, (5, 6)), (F32, (6,))], body)
    exe = check(fn, [data(F32, (5, 6), special=False), data(F32, (6,), special=False)],
                one_group(fn, "reduce"))
    assert len(exe.kernels) == 1


def test_reduce_group_reading_a_reduction_elsewhere_is_refused():
    def body(b, x):
        s = b.op(P.reduce_sum, x, axes=(1,))
        return b.op(P.transpose, b.op(P.broadcast_in_dim, s, shape=(4, 4), dims=(0,)), perm=(1, 0))

    fn = build([(F32, (4, 4))], body)
    assert "another element" in can_lower(one_group(fn, "reduce")[0])
    assert "another element" in can_lower(one_group(fn, "row")[0])


# ---------------------------------------------------------------------------------------
# row


def softmax(b, x):
    n = x.shape
    m = b.op(P.reduce_max, x, axes=(len(n) - 1,))
    e = b.op(P.exp, b.op(P.sub, x, b.op(P.broadcast_in_dim, m, shape=n, dims=tuple(range(len(n) - 1)))))
    s = b.op(P.reduce_sum, e, axes=(len(n) - 1,))
    return b.op(P.div, e, b.op(P.broadcast_in_dim, s, shape=n, dims=tuple(range(len(n) - 1))))


def log_softmax(b, x):
    """With keepdims reshapes, as the tracer writes it; the row max is also an output."""
    r, c = x.shape
    m = b.op(P.reduce_max, x, axes=(1,))
    mk = b.op(P.broadcast_in_dim, b.op(P.reshape, m, shape=(r, 1)), shape=(r, c), dims=(0, 1))
    d = b.op(P.sub, x, mk)
    s = b.op(P.reduce_sum, b.op(P.exp, d), axes=(1,))
    ls = b.op(P.broadcast_in_dim, b.op(P.reshape, b.op(P.log, s), shape=(r, 1)), shape=(r, c), dims=(0, 1))
    return [b.op(P.sub, d, ls), m]


def layernorm(b, x, gamma, beta):
    r, c = x.shape
    inv = b.full_like(1.0 / c, b.op(P.reduce_sum, x, axes=(1,)))
    mu = b.op(P.mul, b.op(P.reduce_sum, x, axes=(1,)), inv)
    xc = b.op(P.sub, x, b.op(P.broadcast_in_dim, mu, shape=(r, c), dims=(0,)))
    var = b.op(P.mul, b.op(P.reduce_sum, b.op(P.mul, xc, xc), axes=(1,)), inv)
    rstd = b.op(P.rsqrt, b.op(P.add, var, b.full_like(1e-5, var)))
    y = b.op(P.mul, xc, b.op(P.broadcast_in_dim, rstd, shape=(r, c), dims=(0,)))
    y = b.op(P.add, b.op(P.mul, y, b.op(P.broadcast_in_dim, gamma, shape=(r, c), dims=(1,))),
             b.op(P.broadcast_in_dim, beta, shape=(r, c), dims=(1,)))
    return [y, mu, rstd]


@pytest.mark.parametrize("dt", [F32, F64], ids=str)
def test_row_groups(dt):
    for shape in [(6, 9), (1, 5), (3, 1)]:
        fn = build([(dt, shape)], softmax)
        x = data(dt, shape, special=False)
        exe = check(fn, [x], one_group(fn, "row"))
        assert [k.name.split("_")[0] for k in exe.kernels] == ["row"]
    fn = build([(dt, (7, 10))], log_softmax)
    check(fn, [data(dt, (7, 10), special=False)], one_group(fn, "row"))
    fn = build([(dt, (7, 10)), (dt, (10,)), (dt, (10,))], layernorm)
    args = [data(dt, s, special=False) for s in [(7, 10), (10,), (10,)]]
    exe = check(fn, args, one_group(fn, "row"))
    (info,) = exe.kernels
    assert info.name == f"row_{dt}_7x10"


def test_row_group_over_a_3d_operand_with_argmax():
    def body(b, x):
        return [softmax(b, x), b.op(P.argmax, x, axis=2)]

    fn = build([(F32, (2, 3, 5))], body)
    x = data(F32, (2, 3, 5), special=False)
    check(fn, [x], one_group(fn, "row"))
    check(fn, [noncontiguous(x)], one_group(fn, "row"))


def test_softmax_row_kernel_source_has_three_passes_and_vectorizable_max():
    fn = build([(F32, (64, 128))], softmax)
    lk = lower_group(one_group(fn, "row")[0])
    src = module_source(lk.kernel)
    assert src.count("for i") == 4  # rows, max pass, sum pass, output pass
    assert "maximum_f32(" in src and "exp_f32(" in src
    assert "accumulate_f64(" in src and "fastmath" not in src  # a float64 sum of the row, vectorized


# ---------------------------------------------------------------------------------------
# matmul


@pytest.mark.parametrize("dt", [F32, I64], ids=str)
def test_matmul_with_bias_and_activation_epilogue(dt):
    def body(b, x, w, bias):
        d = b.op(P.dot_general, x, w, contract=((1,), (0,)), batch=((), ()))
        pre = b.op(P.add, d, b.op(P.broadcast_in_dim, bias, shape=d.shape, dims=(1,)))
        act = b.op(P.max, pre, b.full_like(0, pre))
        return [act, pre] if dt is F32 else act

    fn = build([(dt, (6, 5)), (dt, (5, 4)), (dt, (4,))], body)
    args = [data(dt, s, special=False) for s in [(6, 5), (5, 4), (4,)]]
    exe = check(fn, args, one_group(fn, "matmul"))
    assert len(exe.kernels) == 1


def test_matmul_epilogue_in_place_with_a_bool_side_output():
    def body(b, x, w):
        d = b.op(P.dot_general, x, w, contract=((1,), (1,)), batch=((), ()))
        return [b.op(P.tanh, d), b.op(P.gt, d, b.full_like(0.0, d))]

    fn = build([(F64, (3, 5)), (F64, (4, 5))], body)
    check(fn, [data(F64, (3, 5), special=False), data(F64, (4, 5), special=False)],
          one_group(fn, "matmul"))
    # The product is written into tanh's output, then read back and overwritten in place.
    lk = lower_group(one_group(fn, "matmul")[0])
    (mm,) = [s for s in lk.kernel.body if isinstance(s, Matmul)]
    assert {a.name: a.role for a in lk.kernel.arrays}[mm.out] == "out"


def test_a_matmul_and_its_epilogue_are_one_compiled_function_unless_the_epilogue_runs_on_threads():
    """The epilogue is a loop after the GEMM in the same function (Numba compiled a helper
    function for it: 0.15-0.25 s more per matmul kernel). An epilogue large enough for
    threads is refused with its reason: after the GEMM the kernel would be a parfor, where
    alone the epilogue is a loop kernel that runs in chunks."""
    def body(b, x, w):
        d = b.op(P.dot_general, x, w, contract=((1,), (0,)), batch=((), ()))
        return b.op(P.tanh, d)

    fn = build([(F32, (64, 32)), (F32, (32, 16))], body)
    args = [data(F32, (64, 32), special=False), data(F32, (32, 16), special=False)]
    with config.override(parallel_threshold=1 << 20):
        source = check(fn, args, one_group(fn, "matmul")).kernel_source()
    assert source.count("@kernel_jit(") == 1
    assert "parallel=False" in source
    with config.override(parallel_threshold=512):
        assert "parfor" in can_lower(one_group(fn, "matmul")[0])


def test_matmul_reading_a_fused_producer_is_refused_and_the_runtime_splits_it():
    def body(b, x, w):
        return b.op(P.dot_general, b.op(P.exp, x), w, contract=((1,), (0,)), batch=((), ()))

    fn = build([(F32, (3, 3)), (F32, (3, 3))], body)
    assert can_lower(one_group(fn, "matmul")[0]) is not None
    exe = check(fn, [data(F32, (3, 3), special=False), data(F32, (3, 3), special=False)],
                one_group(fn, "matmul"))
    assert len(exe.kernels) == 2  # one kernel per op instead


# ---------------------------------------------------------------------------------------
# indexing


def test_scatter_add_of_a_fused_producer():
    def body(b, u, i):
        return b.op(P.scatter_add, b.op(P.mul, u, u), b.op(P.add, i, b.full_like(1, i)), axis=1, size=4)

    fn = build([(F32, (3, 5)), (I64, (3, 5))], body)
    idx = RNG.integers(-3, 4, size=(3, 5))
    check(fn, [data(F32, (3, 5), special=False), idx], one_group(fn, "kernel"))


def test_group_kinds_that_mix_strategies_are_refused():
    def body(b, x, w):
        d = b.op(P.dot_general, x, w, contract=((1,), (0,)), batch=((), ()))
        return b.op(P.reduce_sum, d, axes=(1,))

    fn = build([(F32, (3, 3)), (F32, (3, 3))], body)
    assert "reduce_sum cannot be fused into a matmul epilogue" in can_lower(one_group(fn, "matmul")[0])
    fn2 = build([(F32, (3, 3)), (I64, (3,))], lambda b, x, i: [
        b.op(P.scatter_add, x, b.op(P.broadcast_in_dim, i, shape=(3, 3), dims=(0,)), axis=0, size=2),
        b.op(P.reduce_sum, x, axes=(0,))])
    assert "scatter_add result as its only output" in can_lower(one_group(fn2, "kernel")[0])


# ---------------------------------------------------------------------------------------
# kernels of their own


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(("dtype", "shape", "axis"), [
    (F32, (4, 5, 6), 1), (F64, (3, 700), 1), (I32, (6, 2), 0), (F32, (1, 9), 0), (I64, (3, 0), 0),
])  # fmt: skip
def test_cumsum_kernel_sums_in_order_along_the_axis(dtype, shape, axis, reverse):
    fn = build([(dtype, shape)], lambda b, x: b.op(P.cumsum, x, axis=axis, reverse=reverse))
    x = data(dtype, shape, special=False)
    check(fn, [x], one_group(fn, "kernel"))
    check(fn, [noncontiguous(x)], one_group(fn, "kernel"))


def test_cumsum_kernel_runs_outer_rows_on_threads_when_large():
    fn = build([(F64, (64, 50, 3))], lambda b, x: b.op(P.cumsum, x, axis=1, reverse=True))
    with config.override(parallel_threshold=1000):
        exe = check(fn, [data(F64, (64, 50, 3), special=False)], one_group(fn, "kernel"))
    source = exe.kernel_source()  # a parfor, or chunks on fusejit's threads (runtime/chunks.py)
    assert "prange" in source or "chunk, chunks, worker):" in source
