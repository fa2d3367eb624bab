"""Fusion: kernel counts for the patterns the mission cares about, the groups' structural
guarantees, and the fusion report."""

from __future__ import annotations

import numpy as np
import pytest
from models import adam_step, gelu, layernorm, mlp_train_step

import fusejit as fj
import fusejit.nn as nn
import fusejit.numpy as fnp
import fusejit.optim as optim
from fusejit.ir import primitives as P
from fusejit.ir.transforms.fusion import FusedFunction, fuse
from fusejit.runtime.executable import partition

RNG = np.random.default_rng(0)


def fused(f, *args) -> FusedFunction:
    """The kernels the CPU backend would compile for ``f`` (fusion asking its code
    generator's structural checks), without compiling them."""
    return partition(fj.jit(f, backend="interpret").lower(*args).optimized, fuse=True)


def kinds(f, *args) -> list[str]:
    return [g.kind for g in fused(f, *args).groups]


@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 3, 4), ()])
def test_gelu_is_one_loop_kernel_for_any_shape(shape):
    assert kinds(gelu, np.ones(shape, np.float32)) == ["loop"]


def test_softmax_over_the_last_axis_is_one_row_kernel():
    assert kinds(lambda x: nn.softmax(x), np.ones((8, 16), np.float32)) == ["row"]


def test_layernorm_over_the_last_axis_is_one_row_kernel():
    x, g = np.ones((8, 16), np.float32), np.ones(16, np.float32)
    assert kinds(layernorm, x, g, g) == ["row"]


def test_adam_update_of_one_parameter_is_one_kernel_with_three_outputs():
    x = np.ones(1000, np.float32)
    (group,) = fused(adam_step, x, x, x, x).groups
    assert len(group.outputs) == 3


def test_adam_update_of_ten_parameters_is_at_most_two_kernels():
    params = {f"p{i}": np.ones((i + 1, 3), np.float32) for i in range(10)}
    opt = optim.adam(1e-3)
    groups = fused(opt.update, params, opt.init(params), params).groups
    assert len(groups) <= 2


def test_matmul_epilogue_joins_the_matmul_kernel():
    x, w, b = np.ones((8, 4), np.float32), np.ones((5, 4), np.float32), np.ones(5, np.float32)
    assert kinds(lambda x, w, b: nn.relu(nn.linear(x, w, b)), x, w, b) == ["matmul"]


def test_every_op_is_owned_once_and_groups_run_in_dependency_order():
    x = np.ones((8, 16), np.float32)
    g = np.ones(16, np.float32)

    def model(x, g):
        h = layernorm(x, g, g)
        return nn.softmax(h @ h.T).sum(axis=0), gelu(h)

    result = fused(model, x, g)
    available = set(result.function.params)
    for group in result.groups:
        assert all(v in available for v in group.inputs)
        available |= set(group.outputs)
    assert all(r in available for r in result.function.results)


def test_expensive_producers_are_not_recomputed_in_two_kernels():
    x = np.ones((8, 16), np.float32)
    result = fused(lambda x: (fnp.exp(x) @ x.T, fnp.exp(x).sum(axis=0)), x)
    exps = [op for g in result.groups for op in g.ops if op.prim.name == "exp"]
    assert len(exps) == 1


def test_the_report_names_the_rule_that_refused_an_edge():
    from fusejit.ir.transforms.fusion import fusion_report

    x = np.ones((8, 16), np.float32)
    result = fused(lambda x: fnp.exp(x) @ x.T + fnp.exp(x).sum(), x)
    rendered = fusion_report(result)
    assert "exp at " in rendered
    assert "-> dot_general: a matmul kernel reads its operands from memory" in rendered
    assert f"{len(result.groups)} kernels" in rendered


def test_mlp_training_step_needs_at_most_six_kernels_beyond_its_matmuls():
    params = nn.init_mlp(RNG, [64, 32, 32, 10])
    x = RNG.standard_normal((16, 64)).astype(np.float32)
    labels = RNG.integers(0, 10, 16)
    result = fused(mlp_train_step, params, x, labels)
    matmuls = sum(op.prim.name == "dot_general" for op in result.function.ops)
    assert matmuls == 8
    assert len(result.groups) <= matmuls + 6


def test_each_bias_update_runs_in_the_kernel_that_sums_its_gradient():
    """A bias's SGD update is the epilogue of the reduce kernel summing its gradient over the
    batch (the updates used to be a horizontal kernel of their own): the step is its
    matmuls (the weight updates their epilogues), the softmax row kernel and one reduce
    kernel per bias, and nothing else."""
    params = nn.init_mlp(RNG, [8, 8, 8, 4])
    x = RNG.standard_normal((16, 8)).astype(np.float32)
    labels = RNG.integers(0, 4, 16)
    result = fused(mlp_train_step, params, x, labels)
    kinds = [g.kind for g in result.groups]
    assert sorted(kinds) == sorted(["matmul"] * 8 + ["row"] + ["reduce"] * 3)
    results = set(result.function.results)
    assert all(set(g.outputs) & results for g in result.groups if g.kind == "reduce")
    got = fj.tree_flatten(fj.jit(mlp_train_step)(params, x, labels))[0]
    unfused = fj.tree_flatten(fj.jit(mlp_train_step, fuse=False)(params, x, labels))[0]
    want = fj.tree_flatten(mlp_train_step(params, x, labels))[0]
    for g, u, w in zip(got, unfused, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, u, rtol=1e-5, atol=1e-6)


def test_a_value_read_by_recomputed_ops_in_two_kernels_is_not_owned_by_one_of_them():
    # max_pool2d's gradient: eq feeds a cheap convert that both a reduction and the
    # output loop recompute; owning eq in the loop kernel made two kernels wait on each other.
    step = fj.grad(lambda x: nn.max_pool2d(x, 2).sum())
    result = fused(step, np.ones((1, 1, 4, 4), np.float32))
    assert_valid_partition(result)


def assert_valid_partition(result: FusedFunction) -> None:
    available = set(result.function.params)
    owners: dict[int, int] = {}
    for k, group in enumerate(result.groups):
        assert all(v in available for v in group.inputs)
        available |= set(group.outputs)
        for v in group.outputs:
            assert id(v) not in owners, "a value is written by two kernels"
            owners[id(v)] = k
    assert all(r in available for r in result.function.results)


from hypothesis import given, settings  # noqa: E402
from strategies import random_elementwise_programs, random_functions  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(random_elementwise_programs())
def test_random_model_like_programs_partition_into_a_valid_kernel_order(fn):
    assert_valid_partition(fuse(fn))


@settings(max_examples=150, deadline=None)
@given(random_functions())
def test_random_programs_over_every_primitive_partition_validly(fn):
    from fusejit.ir.transforms.pipeline import optimize

    assert_valid_partition(fuse(optimize(fn)[0]))


# Fusion decides legality from structure alone (the strategies' ``supports``); these check
# that the code generator then lowers every group it made, which fusion never tries.


def assert_every_group_lowers(result: FusedFunction) -> None:
    from fusejit.codegen import can_lower

    # A control-flow op is run by the runtime's driver over its nested functions' kernels;
    # a host op (a collective, a debug callback) by the runtime itself: neither is lowered.
    lowered = [g for g in result.groups
               if not any(op.prim in P.CONTROL_FLOW or op.prim.kind is P.OpKind.HOST for op in g.ops)]
    refused = [(g.kind, reason) for g in lowered if (reason := can_lower(g)) is not None]
    assert not refused, f"fusion made groups the code generator refuses: {refused}"


def test_every_group_of_the_models_and_workloads_lowers():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    import workloads

    for w in workloads.WORKLOADS:
        for case in w.make("tiny"):
            fn = fj.jit(case.fn, backend="interpret").lower(*case.args).optimized
            assert_every_group_lowers(partition(fn, fuse=True))
    params = nn.init_mlp(RNG, [8, 8, 8, 4])
    x = RNG.standard_normal((16, 8)).astype(np.float32)
    assert_every_group_lowers(fused(mlp_train_step, params, x, RNG.integers(0, 4, 16)))
    assert_every_group_lowers(fused(fj.grad(lambda x: nn.max_pool2d(x, 2).sum()), np.ones((2, 3, 4, 4), np.float32)))


@settings(max_examples=100, deadline=None)
@given(random_elementwise_programs())
def test_every_group_of_random_model_like_programs_lowers(fn):
    assert_every_group_lowers(partition(fn, fuse=True))


@settings(max_examples=100, deadline=None)
@given(random_functions())
def test_every_group_of_random_programs_over_every_primitive_lowers(fn):
    from fusejit.ir.transforms.pipeline import optimize

    assert_every_group_lowers(partition(optimize(fn)[0], fuse=True))


def test_every_phase_reports_the_merges_it_refused():
    params = nn.init_mlp(RNG, [8, 8, 8, 4])
    x = RNG.standard_normal((16, 8)).astype(np.float32)
    result = fused(mlp_train_step, params, x, RNG.integers(0, 4, 16))
    from fusejit.ir.transforms.fusion import fusion_report

    phases = {r.phase for r in result.refusals}
    assert {"producers", "rows"} <= phases  # the cross-entropy's rows wait on the matmul
    report = fusion_report(result)
    for r in result.refusals:
        assert f"[{r.phase}] {r.producer.prim.name}" in report


def test_an_expensive_producer_read_by_two_kernels_is_computed_once_and_the_report_says_why():
    x = np.ones((8, 16), np.float32)
    # tanh feeds a column sum (one kernel) and a matmul operand (read from memory).
    result = fused(lambda x: (fnp.tanh(x).sum(axis=0), fnp.exp(fnp.tanh(x)) @ x.T), x)
    assert sum(op.prim.name == "tanh" for g in result.groups for op in g.ops) == 1
    from fusejit.ir.transforms.fusion import fusion_report

    assert "tanh at" in fusion_report(result)
    assert any(r.producer.prim.name == "tanh" and "not cheap enough to recompute" in r.reason
               for r in result.refusals)


def test_the_report_says_why_a_matmul_got_no_epilogue():
    x, w = np.ones((8, 4), np.float32), np.ones((5, 4), np.float32)
    from fusejit.ir.transforms.fusion import fusion_report

    two_readers = fused(lambda x, w: (fnp.exp(x @ w.T), (x @ w.T).sum(axis=0) + 1.0), x, w)
    assert "[epilogue] dot_general" in fusion_report(two_readers)
    assert any(r.phase == "epilogue" and r.reason for r in two_readers.refusals)


def test_horizontal_fusion_orders_by_a_values_first_producer_when_it_is_recomputed() -> None:
    """A second derivative through a matmul recomputes a value in two groups; the later
    one used to be taken for its producer (an IndexError in the horizontal phase)."""

    def f(t):
        m = np.eye(2) / t**2
        return fnp.sum(m @ m)

    t = np.asarray(0.8)
    want = fj.grad(fj.grad(f))(t)
    np.testing.assert_allclose(fj.jit(fj.grad(fj.grad(f)))(t), want, rtol=1e-12)
    np.testing.assert_allclose(fj.jit(fj.jacrev(fj.grad(f)))(t), want, rtol=1e-12)


# Compile latency (issue 12): kernels that need not exist, or not as a Numba parfor.


def test_reshapes_between_kernels_stay_views_instead_of_joining_a_horizontal_kernel():
    """A lone reshape, or a chain of relabels (a reshape, a transpose of unit axes, a
    reshape), that only a matmul reads needs no kernel; joined to an independent update
    in a horizontal kernel it was a copy and a kernel to compile (W7's flattened pool
    output and its input images)."""
    from fusejit.ir.transforms.fusion import is_view

    rng = np.random.default_rng(5)
    x, w, v = (rng.standard_normal(s).astype(np.float32) for s in ((8, 4), (4, 8), (16, 3)))
    b = rng.standard_normal(5).astype(np.float32)

    def f(x, w, v, b):
        h = (x @ w).reshape(4, 16) @ v
        t = x.reshape(8, 1, 1, 4).transpose(2, 0, 1, 3).reshape(2, 16) @ v
        return h, t, b * 2.0 + 1.0

    result = fused(f, x, w, v, b)
    results = set(result.function.results)
    views = [g for g in result.groups if is_view(g, results)]
    assert len(views) == 2 and any(len(g.ops) > 1 for g in views)
    assert not any(is_view(p, results) for g in result.groups for p in g.parts)
    steps = fj.jit(f).lower(x, w, v, b).executable().call_plan.steps
    assert len(steps) == len(result.groups) - len(views) == 4  # three matmuls, the update
    for got, want in zip(fj.jit(f)(x, w, v, b), f(x, w, v, b), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_loop_that_runs_on_threads_is_a_kernel_of_its_own_not_a_horizontal_part():
    """On the CPU such a loop alone runs in chunks; beside other loops it made the kernel a
    Numba parfor (W7's input-gradient transpose and the conv bias update: 0.9 s to
    compile instead of 0.3 + 0.15 apart)."""
    from fusejit.codegen.target import CPU
    from fusejit.ir.transforms.fusion import fusion_report

    x = np.arange(128, dtype=np.float32).reshape(16, 8)
    b = np.arange(4, dtype=np.float32)

    def f(x, b):
        return x.T * 2.0, b - 0.5

    with fj.config.override(parallel_threshold=64):
        result = fused(f, x, b)
        assert [g.kind for g in result.groups] == ["loop", "loop"]
        assert any(r.phase == "horizontal" and "runs on threads" in r.reason for r in result.refusals)
        assert "runs on threads" in fusion_report(result)
        steps = fj.jit(f).lower(x, b).executable().call_plan.steps
        assert [CPU.chunked(sp.lowered.kernel) for sp in steps] == [True, False]
        got = fj.jit(f)(x, b)
    np.testing.assert_array_equal(got[0], x.T * 2)
    np.testing.assert_array_equal(got[1], b - 0.5)
    with fj.config.override(parallel_threshold=1 << 18):  # both small: one horizontal kernel
        assert [g.kind for g in fused(f, x, b).groups] == ["horizontal"]


def _cross_entropy(logits, labels):
    """The benchmarks' hand-written mean cross-entropy (bench/workloads.py)."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[:, None], axis=1).mean()


def test_a_mean_loss_over_the_rows_joins_the_row_kernel_that_computes_its_rows():
    """The loss (a mean over the batch of one value per row) is summed by the softmax's row
    kernel as it finishes each row, instead of by a kernel of its own reading the
    log-probabilities back (W5, W7: 0.3 s less to compile)."""
    from fusejit.ir.transforms.fusion import fusion_report

    rng = np.random.default_rng(7)
    logits = rng.standard_normal((32, 10)).astype(np.float32)
    labels = rng.integers(0, 10, 32)
    step = fj.value_and_grad(_cross_entropy)
    result = fused(step, logits, labels)
    assert [g.kind for g in result.groups] == ["row"]
    (group,) = result.groups
    assert result.function.results[0] in group.outputs
    value, grad = fj.jit(step)(logits, labels)
    unfused_value, unfused_grad = fj.jit(step, fuse=False)(logits, labels)
    want_value, want_grad = step(logits, labels)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(value, unfused_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, unfused_grad, rtol=1e-5, atol=1e-7)
    with fj.config.override(parallel_threshold=64):  # rows on threads: the loss apart
        apart = fused(step, logits, labels)
        assert len(apart.groups) == 2
        assert "cannot also total values over its rows" in fusion_report(apart)
        np.testing.assert_allclose(fj.jit(step)(logits, labels)[0], want_value, rtol=1e-6)


def test_a_total_over_rows_read_back_by_every_row_stays_a_kernel_of_its_own():
    """A row kernel knows its total only after its last row: a value computed from the total
    for every element cannot be in it."""
    x = np.random.default_rng(8).standard_normal((16, 8)).astype(np.float32)

    def f(x):
        e = fnp.exp(x - x.max(axis=1, keepdims=True))
        s = e.sum(axis=1, keepdims=True)
        return e / s * fnp.log(s).mean()

    result = fused(f, x)
    assert len(result.groups) >= 2
    assert_every_group_lowers(result)
    np.testing.assert_allclose(fj.jit(f)(x), f(x), rtol=1e-5, atol=1e-7)
