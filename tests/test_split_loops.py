"""Loop kernels split at pad and concatenate pieces: one branch-free loop per piece.

A pad or concatenate read inside a loop kernel used to test, per element, which piece
the element is in; LLVM does not vectorize such a loop. The loop kernel's loops are now
split where a piece begins (``fusejit.codegen.common.choose_splits``) and each piece is
read without a test. Structure is checked on the kernel IR (no ``If`` left), values
bit for bit against NumPy (the split must change no result: -0.0 and NaN included).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_codegen import F32, F64, I32, build, data, one_group

from fusejit import config
from fusejit.codegen import CPU, lower_group
from fusejit.codegen import loops as loops_module
from fusejit.codegen.common import MAX_PIECES
from fusejit.codegen.cpu.printer import module_source
from fusejit.codegen.kernel import If, Loop, statements
from fusejit.ir import primitives as P
from fusejit.ir.transforms.fusion import FusedFunction, FusionGroup, make_group
from fusejit.runtime.cpu import CpuExecutable


@pytest.fixture(scope="module", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "fusejit-cache"
    with config.override(cache=True, cache_dir=str(root)):
        yield


def branches(kernel) -> int:
    return sum(isinstance(s, If) for s in statements(kernel.body))


def loop_count(kernel) -> int:
    return sum(isinstance(s, Loop) for s in statements(kernel.body))


def run_fused(fn, args, kind="loop", threshold=None):
    """Runs ``fn`` as one group of ``kind`` and returns its results and lowered kernel."""
    groups = one_group(fn, kind)
    exe = CpuExecutable(fn, FusedFunction(fn, tuple(groups)), threshold=threshold)
    (step,) = exe.call_plan.steps
    return exe(args), step.lowered.kernel


def assert_bits(got, want) -> None:
    """Equal bit for bit, except that a NaN only has to be a NaN: IEEE leaves the sign and
    payload of an operation's NaN open, NumPy and LLVM choose differently (LLVM rewrites
    ``0 + -(a * b)`` as ``0 - a * b``, whose NaN keeps ``a * b``'s sign)."""
    want = np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype.kind == "f":
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        got, want = got[~nan], want[~nan]
    assert got.tobytes() == want.tobytes(), (got, want)


def gru_like(b, d, z, h, r):
    """The shape of W10's GRU backward kernel: three [B,H] pieces padded into [B,3H] at
    0, H and 2H and summed, two outputs."""
    w = d.shape[1]
    a = b.op(P.pad, b.op(P.mul, d, z), lo=(0, 0), hi=(0, 2 * w), value=0.0)
    m = b.op(P.pad, b.op(P.neg, b.op(P.mul, d, r)), lo=(0, w), hi=(0, w), value=0.0)
    c = b.op(P.pad, b.op(P.mul, d, h), lo=(0, 2 * w), hi=(0, 0), value=0.0)
    hi = b.op(P.pad, h, lo=(0, 2 * w), hi=(0, 0), value=0.0)
    return [b.op(P.add, b.op(P.add, c, m), a), b.op(P.add, b.op(P.add, hi, m), a)]


def gru_like_numpy(d, z, h, r):
    w = d.shape[1]

    def pad(x, lo, hi):
        return np.pad(x, ((0, 0), (lo, hi)), constant_values=x.dtype.type(0))

    a, m = pad(d * z, 0, 2 * w), pad(-(d * r), w, w)
    return [(pad(d * h, 2 * w, 0) + m) + a, (pad(h, 2 * w, 0) + m) + a]


def test_a_summed_pad_kernel_is_one_branch_free_loop_per_piece():
    fn = build([(F32, (5, 4))] * 4, gru_like)
    args = [data(F32, (5, 4)) for _ in range(4)]  # nan, inf and -0.0 among them
    got, kernel = run_fused(fn, args)
    assert branches(kernel) == 0
    assert loop_count(kernel) == 1 + 3  # rows, then columns in three pieces
    assert "if " not in module_source(kernel)
    for g, w in zip(got, gru_like_numpy(*args), strict=True):
        assert_bits(g, w)


def test_a_split_changes_no_bit(monkeypatch: pytest.MonkeyPatch):
    """The split kernel against the same group emitted with its branches."""
    fn = build([(F32, (5, 4))] * 4, gru_like)
    args = [data(F32, (5, 4)) for _ in range(4)]
    split, kernel = run_fused(fn, args)
    monkeypatch.setattr(loops_module, "choose_splits", lambda *a: {})
    whole, kernel2 = run_fused(fn, args)
    assert branches(kernel) == 0 and branches(kernel2) == 4
    for a, b in zip(split, whole, strict=True):
        assert_bits(a, b)


def test_a_split_kernel_is_reused_for_another_shape_with_the_same_pieces():
    """Pieces begin at int parameters: a new batch size and width compile nothing new."""
    fn = build([(F32, (5, 4))] * 4, gru_like)
    fn2 = build([(F32, (3, 6))] * 4, gru_like)
    k1 = lower_group(one_group(fn, "loop")[0]).kernel
    k2 = lower_group(one_group(fn2, "loop")[0]).kernel
    assert module_source(k1) == module_source(k2)
    args = [data(F32, (3, 6)) for _ in range(4)]
    got, _ = run_fused(fn2, args)
    for g, w in zip(got, [np.asarray(x) for x in gru_like_numpy(*args)], strict=True):
        assert_bits(g, w)


PAD_CASES = [
    # (input shape, lo, hi): unit pieces, a piece on one side, both axes, a unit axis.
    ((4, 1), (0, 1), (0, 1)),
    ((4, 3), (0, 0), (0, 1)),
    ((4, 3), (2, 0), (0, 0)),
    ((3, 4), (1, 2), (2, 1)),
    ((1, 5), (0, 3), (0, 0)),
    ((7,), (1,), (2,)),
    ((2, 3, 4), (0, 1, 0), (1, 0, 2)),
]


@pytest.mark.parametrize("dt", [F32, I32], ids=str)
@pytest.mark.parametrize("shape,lo,hi", PAD_CASES, ids=[f"{s}-{lo}-{hi}" for s, lo, hi in PAD_CASES])
def test_pads_read_without_a_branch(shape, lo, hi, dt):
    """pad then a consumer (x * 2 + padded): the value and its piece tests all resolved."""

    def body(b, x):
        p = b.op(P.pad, x, lo=lo, hi=hi, value=-1.5 if dt.is_float else 3)
        return b.op(P.add, b.op(P.add, p, p), p)

    fn = build([(dt, shape)], body)
    x = data(dt, shape)
    (got,), kernel = run_fused(fn, [x])
    pieces = int(np.prod([1 + (a > 0) + (c > 0) for a, c in zip(lo, hi, strict=True)]))
    assert branches(kernel) == 0 and pieces <= MAX_PIECES
    p = np.pad(x, list(zip(lo, hi, strict=True)), constant_values=x.dtype.type(-1.5 if dt.is_float else 3))
    assert_bits(got, (p + p) + p)


def test_a_pad_of_an_empty_array_is_its_value():
    fn = build([(F64, (0, 3)), (F64, (2, 3))], lambda b, x, y: b.op(P.add, b.op(P.pad, x, lo=(1, 0), hi=(1, 0), value=2.0), y))
    y = data(F64, (2, 3))
    (got,), kernel = run_fused(fn, [np.zeros((0, 3)), y])
    assert branches(kernel) == 0
    assert_bits(got, 2.0 + y)


CONCAT_CASES = [
    # (part shapes, axis): zero-size and unit parts, the outer axis, one dimension.
    ([(2, 3), (0, 3), (1, 3), (4, 3)], 0),
    ([(2, 1), (2, 5), (2, 0), (2, 2)], 1),
    ([(3,), (1,), (0,), (6,)], 0),
    ([(2, 2, 3), (2, 1, 3)], 1),
]


@pytest.mark.parametrize("dt", [F32, I32], ids=str)
@pytest.mark.parametrize("shapes,axis", CONCAT_CASES, ids=["outer", "inner", "flat", "middle"])
def test_concatenates_read_without_a_branch(shapes, axis, dt):
    """concatenate then two consumers: its pieces as loops, its values exact."""

    def body(b, *xs):
        c = b.op(P.concatenate, *xs, axis=axis)
        return [b.op(P.mul, c, c), b.op(P.neg, c)]

    fn = build([(dt, s) for s in shapes], body)
    xs = [data(dt, s) for s in shapes]
    (sq, ng), kernel = run_fused(fn, xs)
    assert branches(kernel) == 0
    c = np.concatenate(xs, axis=axis)
    assert_bits(sq, c * c)
    assert_bits(ng, -c)


def test_pieces_read_through_a_transpose_and_broadcast_inputs():
    """The concatenated axis is the output's first after a transpose: the outer loop is
    split; a broadcast row and a pad along the other axis join in the same kernel."""

    def body(b, x, y, w):
        c = b.op(P.transpose, b.op(P.concatenate, x, y, axis=1), perm=(1, 0))  # [5, 3]
        p = b.op(P.pad, w, lo=(0, 1), hi=(0, 0), value=0.5)  # [1, 3]
        return b.op(P.sub, c, b.op(P.broadcast_in_dim, b.op(P.reshape, p, shape=(3,)), shape=(5, 3), dims=(1,)))

    fn = build([(F32, (3, 2)), (F32, (3, 3)), (F32, (1, 2))], body)
    x, y, w = data(F32, (3, 2)), data(F32, (3, 3)), data(F32, (1, 2))
    (got,), kernel = run_fused(fn, [x, y, w])
    assert branches(kernel) == 0
    want = np.concatenate([x, y], axis=1).T - np.pad(w, ((0, 0), (1, 0)), constant_values=np.float32(0.5))[0]
    assert_bits(got, want)


def test_a_piece_index_that_is_no_loop_index_keeps_its_branch():
    """A concatenate read through a reshape that splits its axis: its index is a division
    of the loop index, not one, so the element keeps its test (and its value)."""

    def body(b, x, y):
        return b.op(P.reshape, b.op(P.concatenate, x, y, axis=0), shape=(3, 4))

    fn = build([(F32, (5,)), (F32, (7,))], body)
    x, y = data(F32, (5,)), data(F32, (7,))
    (got,), kernel = run_fused(fn, [x, y])
    assert branches(kernel) == 1
    assert_bits(got, np.concatenate([x, y]).reshape(3, 4))


def test_more_pieces_than_the_bound_keep_their_branches():
    n = MAX_PIECES + 1
    fn = build([(F32, (2, 1))] * n, lambda b, *xs: b.op(P.concatenate, *xs, axis=1))
    xs = [data(F32, (2, 1)) for _ in range(n)]
    (got,), kernel = run_fused(fn, xs)
    assert branches(kernel) == n - 1
    assert_bits(got, np.concatenate(xs, axis=1))


def test_a_kernel_over_the_size_bound_when_split_is_emitted_unsplit(monkeypatch: pytest.MonkeyPatch):
    fn = build([(F32, (5, 4))] * 4, gru_like)
    whole = lower_group(one_group(fn, "loop")[0]).kernel
    monkeypatch.setattr(loops_module, "MAX_KERNEL_SIZE", sum(1 for _ in statements(whole.body)) - 1)
    kernel = lower_group(one_group(fn, "loop")[0]).kernel
    assert branches(kernel) == 4 and loop_count(kernel) == 2


def test_the_parallel_loop_is_not_split():
    """Threads take the outer loop whole (one chunked loop): only inner axes are split."""

    def body(b, x, y):
        return b.op(P.add, b.op(P.concatenate, x, y, axis=0), b.op(P.pad, x, lo=(0, 0), hi=(3, 0), value=1.0))

    fn = build([(F32, (3, 4)), (F32, (3, 4))], body)
    x, y = data(F32, (3, 4)), data(F32, (3, 4))
    (got,), kernel = run_fused(fn, [x, y], threshold=1)
    assert kernel.parallel or CPU.chunked(kernel)
    assert branches(kernel) > 0
    want = np.concatenate([x, y]) + np.pad(x, ((0, 3), (0, 0)), constant_values=np.float32(1))
    assert_bits(got, want)


def test_horizontal_parts_are_split_each():
    def body(b, x, y):
        return [b.op(P.pad, x, lo=(0, 2), hi=(0, 1), value=0.0), b.op(P.concatenate, y, y, axis=0)]

    fn = build([(F32, (2, 3)), (F32, (4,))], body)
    users, results = fn.users(), set(fn.results)
    parts = tuple(make_group([op], results, users, "loop") for op in fn.ops)
    group = FusionGroup(fn.ops, fn.params, fn.results, "horizontal", parts)
    x, y = data(F32, (2, 3)), data(F32, (4,))
    exe = CpuExecutable(fn, FusedFunction(fn, (group,)))
    (step,) = exe.call_plan.steps
    assert branches(step.lowered.kernel) == 0
    p, c = exe([x, y])
    assert_bits(p, np.pad(x, ((0, 0), (2, 1)), constant_values=np.float32(0)))
    assert_bits(c, np.concatenate([y, y]))
