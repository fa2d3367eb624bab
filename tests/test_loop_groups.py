"""The CPU printer's runs of alike loops (``fusejit.codegen.cpu.loop_groups``)."""

from __future__ import annotations

import numpy as np

import fusejit as fj
from fusejit.codegen.cpu.loop_groups import loop_shape
from fusejit.codegen.exprs import Binary, BinaryOp, Lit, Load, Var
from fusejit.codegen.kernel import Assign, Loop
from fusejit.ir.dtypes import DType


def steps(fn, *args):
    return fn.lower(*args).compile().executable._steps


def test_alike_loops_of_a_horizontal_kernel_print_as_one_loop_over_tuples_and_agree_with_numpy():
    """An SGD step over five parameters of different sizes: one update loop in the source."""
    rng = np.random.default_rng(0)
    shapes = [(7,), (3, 5), (11,), (2, 2, 3), (4,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    def sgd(ps, gs):
        return [p - 0.1 * g for p, g in zip(ps, gs, strict=True)]

    f = fj.jit(sgd)
    for got, p, g in zip(f(params, grads), params, grads, strict=True):
        np.testing.assert_array_equal(got, p - np.float32(0.1) * g)
    (st,) = steps(f, params, grads)
    assert st.source.count("for grp") == 1 and st.source.count("store(") == 1


def test_loops_that_update_an_outer_accumulator_are_not_grouped():
    i, acc = Var("i0", DType.i64), Var("r1", DType.f32)
    body = [Assign(acc, Binary(BinaryOp.ADD, acc, Load("a0", i, DType.f32), DType.f32))]
    assert loop_shape(Loop(i, Lit(0), Var("n0", DType.i64), body), {"a0": DType.f32}) is None
    own = Loop(i, Lit(0), Var("n0", DType.i64), [])
    assert loop_shape(own, {}) is not None
    assert loop_shape(Loop(i, Lit(0), Var("n0", DType.i64), [], parallel=True), {}) is None
