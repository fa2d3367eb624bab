"""fj.distributed: collectives as IR primitives run on the host between kernels.

In this process (no MPI launcher) every collective is the identity of a job of one;
the two tests at the end launch ``tests/distributed_worker.py`` with ``mpiexec -n 2``
(bounded in time) to check real communication, derivatives, training and failures."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from distributed_worker import overlap_args, overlap_step

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import distributed as D
from fusejit.ir import primitives as P
from fusejit.tracer.tracing import bind

WORKER = Path(__file__).parent / "distributed_worker.py"
COLLECTIVES = {
    "psum": D.psum,
    "pmean": D.pmean,
    "pmax": D.pmax,
    "all_gather": lambda x: D.all_gather(x, axis=1),
    "psum_scatter": lambda x: D.psum_scatter(x, axis=0),
    "broadcast": D.broadcast,
}


@pytest.mark.parametrize("name", COLLECTIVES)
def test_a_collective_in_one_process_is_the_identity_eagerly_jitted_and_differentiated(name):
    op = COLLECTIVES[name]
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    for fn in (op, fj.jit(op), fj.jit(op, fuse=False), fj.jit(op, backend="interpret")):
        out = fn(x)
        assert out.dtype == np.float32 and out.shape == (2, 3)
        np.testing.assert_array_equal(out, x)
    assert fj.gradcheck(lambda w: fnp.sum(fnp.tanh(op(w * x))), (x.astype(np.float64),))
    assert "mpi4py" not in sys.modules  # imported only under an MPI launcher


def test_a_pytree_is_reduced_with_one_collective_per_dtype():
    tree = {"a": np.ones((2, 3), np.float32), "b": np.float32(2.0), "c": [np.zeros(4, np.float32)],
            "n": np.arange(3)}
    text = fj.make_ir(D.psum)(tree).__str__()
    assert text.count(" psum ") == 2, text  # one bucket of float32 leaves, one of int64
    out = fj.jit(D.psum)(tree)
    assert fj.tree_map(lambda a: (a.shape, a.dtype), out) == fj.tree_map(lambda a: (a.shape, a.dtype), tree)
    split = fj.make_ir(lambda t: D.psum(t, bucket_bytes=24))(tree)
    assert str(split).count(" psum ") == 3, str(split)  # a (24 B), then b and c (4 + 16 B), then n


def _mlp_step(p, x, y):
    def loss(p):
        return fj.nn.cross_entropy(fj.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"], y)

    grads = D.pmean(fj.grad(loss)(p))
    return fj.tree_map(lambda a, g: a - 0.1 * g, p, grads)


def _mlp_args():
    rng = np.random.default_rng(0)
    p = {"w1": rng.standard_normal((4, 8)).astype(np.float32), "b1": np.zeros(8, np.float32),
         "w2": rng.standard_normal((8, 3)).astype(np.float32)}
    return p, rng.standard_normal((6, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2], np.int32)


def test_the_gradients_of_a_step_travel_in_one_bucket_packed_and_unpacked_by_fused_kernels():
    lowered = fj.jit(_mlp_step).lower(*_mlp_args())
    fused = lowered.as_text("fused")
    report = lowered.fusion_report()
    assert fused.count(" psum ") == 1
    assert report.count("(host)") == 1, report
    assert "psum runs on the host between kernels" in report
    compiled = lowered.compile()
    host_steps = compiled.executable.call_plan.host_steps
    (host,) = host_steps
    # Allreduce in place: the bucket's buffer is the psum's output, nothing is copied.
    assert host.in_refs == host.out_refs and host.in_refs[0][0] == "buf"
    # Unpacking runs in the optimizer's kernels: every kernel reading the bucket updates parameters.
    readers = [k for k in compiled.kernels if any(op.startswith("slice") for op in k.ops)]
    assert readers and all(any(op.startswith("sub") for op in k.ops) for k in readers), readers
    # Packing runs in the kernel computing elementwise gradients (matmul and reduction
    # results are materialized first, then copied into the bucket).
    scale = np.linspace(0.5, 1.5, 6, dtype=np.float32)
    two = fj.jit(lambda w, v, x: D.psum(fj.grad(lambda w, v: fnp.sum(fnp.tanh(w * x) * v), argnums=(0, 1))(w, v)))
    compiled_two = two.lower(scale, scale, scale).compile()
    (packer,) = [k for k in compiled_two.kernels if any(op.startswith("concatenate") for op in k.ops)]
    assert any(op.startswith("mul") for op in packer.ops), packer  # the gradients' arithmetic
    np.testing.assert_allclose(compiled(*_mlp_args())["w1"], fj.jit(_mlp_step, backend="interpret")(*_mlp_args())["w1"],
                               rtol=1e-5, atol=1e-6)


def test_host_ops_run_in_program_order_between_kernels():
    def f(x):
        a = D.psum(fnp.exp(x))  # a kernel, then the host op, then kernels reading it
        return fnp.sum(a * 2.0), D.pmax(a + 1.0)

    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    compiled = fj.jit(f).lower(x).compile()
    runner = compiled.executable.runner_source()
    lines = [line.strip() for line in runner.splitlines() if line.strip().startswith(("K", "H"))]
    kinds = [line[0] for line in lines]
    assert kinds.count("H") == 2 and kinds[0] == "K" and kinds[-1] in "KH", runner
    got = compiled(x)
    np.testing.assert_allclose(got[0], np.sum(np.exp(x) * 2), rtol=1e-6)
    np.testing.assert_allclose(got[1], np.exp(x) + 1, rtol=1e-6)
    with fj.config.override(debug_nans=True):  # the general path runs them one by one, too
        np.testing.assert_allclose(fj.jit(f)(x)[1], np.exp(x) + 1, rtol=1e-6)


def test_a_collective_overwrites_its_operand_only_when_nothing_reads_it_afterwards():
    x = np.linspace(-1, 1, 6, dtype=np.float32)

    def plan(f):  # noqa: ANN001, ANN202
        (host,) = fj.jit(f).lower(x).compile().executable.call_plan.host_steps
        return host.in_refs[0] == host.out_refs[0]

    assert plan(lambda x: D.psum(fnp.exp(x)) * 2.0)
    assert not plan(lambda x: D.psum(fnp.exp(x)) + fnp.exp(x))  # exp(x) is read after the psum
    assert not plan(D.psum)  # a parameter is the caller's: copied into the result first
    np.testing.assert_allclose(fj.jit(lambda x: D.psum(fnp.exp(x)) + fnp.exp(x))(x), 2 * np.exp(x), rtol=1e-6)


def _kernel_reads(step, values) -> bool:  # noqa: ANN001
    return any(v in step.lowered.group.inputs for v in values)


def _kernel_writes(step, values) -> bool:  # noqa: ANN001
    return any(v in step.lowered.group.outputs for v in values)


def test_an_overlapped_psum_starts_after_its_producer_and_is_waited_for_before_its_first_reader():
    """Gradients in 5000-byte buckets of a 4-layer MLP (``distributed_worker.overlap_step``):
    each bucket is packed as soon as its last gradient exists and its psum starts right
    after that kernel; the backward kernels of the next buckets run before the first wait,
    which comes right before the update reading the buckets. Values equal the blocking
    step bit for bit."""
    args = overlap_args()
    jitted = fj.jit(overlap_step, static_argnums=(3, 4))
    compiled = jitted.lower(*args, 5000, True).compile()
    plan = compiled.executable.call_plan
    steps = plan.steps
    phases = [h.phase for h in plan.host_steps]
    assert phases == ["start", "start", "run", "wait", "wait"], phases  # (b4 w4 b3 w3), (b2 w2 b1), (w1)
    starts = [h for h in plan.host_steps if h.phase == "start"]
    waits = [h for h in plan.host_steps if h.phase == "wait"]
    assert [w.call for w in waits] == [h.call for h in starts]
    for start, wait in zip(starts, waits, strict=True):
        op = start.call.op
        assert _kernel_writes(steps[start.position - 1], op.inputs), "the start follows the kernel packing the bucket"
        assert _kernel_reads(steps[wait.position], op.outputs), "the wait precedes the kernel reading the result"
        assert not any(_kernel_reads(st, op.outputs) for st in steps[start.position:wait.position])
    # The first bucket's psum is in flight while the kernels of the second one run.
    assert starts[0].position < starts[1].position <= waits[0].position
    runner = compiled.executable.runner_source()
    assert runner.count("(start)") == 2 and runner.count("(wait)") == 2, runner
    blocking = fj.jit(overlap_step, static_argnums=(3, 4)).lower(*args, 5000, False).compile()
    assert [h.phase for h in blocking.executable.call_plan.host_steps] == ["run"] * 3
    expected = fj.tree_leaves(blocking(*args))
    with fj.config.override(debug_nans=True):  # the general path runs the starts and waits one by one
        stepwise = jitted(*args, 5000, True)
    for got in (compiled(*args), stepwise):
        assert all(np.array_equal(a, b) for a, b in zip(fj.tree_leaves(got), expected, strict=True))
    interpreted = fj.jit(overlap_step, static_argnums=(3, 4), backend="interpret")(*args, 5000, True)
    for a, b in zip(fj.tree_leaves(interpreted), expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_exception_between_the_start_and_the_wait_of_a_psum_propagates_and_the_next_call_runs():
    seen = []

    def maybe_fail(h):  # noqa: ANN001, ANN202
        if not seen:
            seen.append(h)
            raise RuntimeError("fails the first call")

    def f(x, z):  # noqa: ANN001, ANN202
        g = D.psum(fnp.exp(x), overlap=True)
        h = fnp.tanh(z)
        fj.debug.callback(maybe_fail, h)  # after the psum in program order: between its start and wait
        return g * fnp.sum(h)

    x, z = np.linspace(-1, 1, 4, dtype=np.float32), np.ones(3, np.float32)
    compiled = fj.jit(f).lower(x, z).compile()
    phases = [(h.call.op.prim.name, h.phase) for h in compiled.executable.call_plan.host_steps]
    assert phases == [("psum", "start"), ("debug_callback", "run"), ("psum", "wait")], phases
    with pytest.raises(RuntimeError, match="fails the first call"):
        compiled(x, z)
    np.testing.assert_allclose(compiled(x, z), np.exp(x) * np.tanh(z).sum(), rtol=1e-6)
    assert " overlap=true " in str(fj.make_ir(f)(x, z))


def test_overlap_does_not_change_what_a_psum_computes_outside_a_kernel_plan():
    tree = {"a": np.ones((2, 3), np.float32), "b": np.arange(4.0)}
    for fn in (lambda t: D.psum(t, overlap=True), fj.jit(lambda t: D.pmean(t, overlap=True), fuse=False),
               fj.jit(lambda t: D.psum(t, overlap=True), backend="interpret")):
        out = fn(tree)
        np.testing.assert_array_equal(out["a"], tree["a"])
        np.testing.assert_array_equal(out["b"], tree["b"])
    assert fj.gradcheck(lambda w: fnp.sum(fnp.tanh(D.psum(w * 2.0, overlap=True))), (np.linspace(-1, 1, 5),))


def test_collectives_batch_under_vmap():
    xs = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(fj.vmap(lambda x: D.all_gather(x, axis=1))(xs), xs)
    np.testing.assert_array_equal(fj.jit(fj.vmap(D.psum))(xs), xs)


def test_ir_text_of_collectives_parses_back():
    fn = fj.make_ir(lambda x: (D.all_gather(x, axis=0), D.broadcast(D.pmax(x), root=0), D.axis_index()))(
        np.ones((2, 2), np.float32))
    text = str(fn)
    assert "all_gather" in text and "axis=0" in text and "size=1" in text and "root=0" in text
    assert str(fj.ir.parse(text)) == text


def test_a_program_traced_for_another_number_of_processes_is_refused():
    with pytest.raises(D.DistributedSetupError, match="traced for 2 processes but the job has 1"):
        bind(P.all_gather, np.ones((2, 2), np.float32), axis=0, size=2)
    with pytest.raises(D.DistributedSetupError, match="root=3 is not a rank of a job of 1"):
        D.broadcast(np.ones(2), root=3)
    with pytest.raises(ValueError, match="axis=2 is not an axis"):
        D.all_gather(np.ones((2, 2)), axis=2)


def test_shard_batches_in_one_process_yields_the_global_batches_of_a_shared_permutation():
    batches = list(D.shard_batches(10, 4, seed=3, epoch=1))
    order = np.random.default_rng([3, 1]).permutation(10)
    assert [b.tolist() for b in batches] == [order[:4].tolist(), order[4:8].tolist()]
    assert [len(b) for b in D.shard_batches(10, 4, seed=3, drop_remainder=False)] == [4, 4, 2]
    with pytest.raises(ValueError, match="batch_size=0"):
        next(D.shard_batches(10, 0, seed=0))
    assert D.rank() == 0 and D.size() == 1 and D.is_main()


# ---------------------------------------------------------------------------------------
# Two processes under mpiexec


def _mpiexec() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _launch(case: str, timeout: float) -> subprocess.CompletedProcess:
    mpiexec = _mpiexec() if importlib.util.find_spec("mpi4py") is not None else None
    if mpiexec is None:
        pytest.skip("needs mpiexec and mpi4py: pip install -e '.[distributed]' (make test installs them)")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([mpiexec, "-n", "2", sys.executable, str(WORKER), case], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and the ranks it started
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n 2 {WORKER.name} {case} did not finish in {timeout} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def test_two_processes_agree_with_single_process_references():
    """Collectives (eager, fused, unfused, interpreted), their gradients and jvps, three
    training steps on 2 ranks equal to 1 process with the doubled batch (one MPI call per
    step, plus its agreement check), and mismatched programs (shapes, collectives) detected at
    their first differing collective, whatever each rank ran before."""
    done = _launch("check", timeout=240)
    assert done.returncode == 0 and "OK 0" in done.stdout and "OK 1" in done.stdout, done.stdout


def test_a_rank_that_raises_aborts_the_job_with_its_rank_and_error():
    done = _launch("abort", timeout=120)
    assert done.returncode != 0, done.stdout
    assert "rank 1 of 2 failed" in done.stdout and "RuntimeError: boom from rank 1" in done.stdout, done.stdout


def test_overlapped_training_steps_on_two_processes_equal_blocking_ones_bit_for_bit():
    """Three SGD steps with the gradients' psums overlapped with the backward pass (one
    bucket, three buckets) equal the blocking steps bit for bit with the same MPI calls
    per step, and a mismatch is detected at an overlapped psum's start."""
    done = _launch("overlap", timeout=240)
    assert done.returncode == 0 and "OK 0" in done.stdout and "OK 1" in done.stdout, done.stdout


def test_a_rank_that_raises_while_its_psum_is_in_flight_aborts_the_job():
    done = _launch("midflight", timeout=120)
    assert done.returncode != 0, done.stdout
    assert "rank 1 of 2 failed" in done.stdout, done.stdout
    assert "RuntimeError: boom from rank 1 while its psum is in flight" in done.stdout, done.stdout


def test_a_thread_that_raises_on_a_rank_aborts_the_job_with_its_rank_and_error():
    done = _launch("thread", timeout=120)
    assert done.returncode != 0, done.stdout
    assert "rank 1 of 2 failed in thread 'loader'" in done.stdout, done.stdout
    assert "RuntimeError: boom in rank 1's loader" in done.stdout, done.stdout


def test_a_rank_that_exits_while_another_calls_a_collective_ends_the_job_with_both_calls():
    done = _launch("exit", timeout=120)
    assert done.returncode != 0, done.stdout
    assert "rank 0: psum f64[3]; rank 1: the end of the program (this rank exits)" in done.stdout, done.stdout
    assert "rank 0 was not stopped" not in done.stdout, done.stdout


@pytest.mark.parametrize("bad", [0, -5, 1.5, "100", True])
def test_a_bucket_size_that_is_not_a_positive_int_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="bucket_bytes must be a positive number of bytes"):
        D.psum({"a": np.ones(3)}, bucket_bytes=bad)
