"""Run by ``tests/test_distributed.py`` under ``mpiexec -n 2``: every rank checks its
collectives, their derivatives and a few training steps against single-process
references computed from every rank's data, then prints ``OK <rank>``.

    mpiexec -n 2 python tests/distributed_worker.py check    # the checks
    mpiexec -n 2 python tests/distributed_worker.py abort    # rank 1 raises mid-job
    mpiexec -n 2 python tests/distributed_worker.py exit     # rank 1 leaves early (sys.exit(0))
    mpiexec -n 2 python tests/distributed_worker.py thread   # a thread of rank 1 raises
    mpiexec -n 2 python tests/distributed_worker.py overlap  # overlapped psums equal blocking ones
    mpiexec -n 2 python tests/distributed_worker.py midflight  # rank 1 raises while a psum is in flight
"""

from __future__ import annotations

import sys
import threading

import numpy as np

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import distributed as D


def collectives(n: int, r: int) -> dict:
    """name -> (the collective on this rank's value, its reference on the stacked values
    of every rank, as rank ``r`` sees it)."""
    return {
        "psum": (D.psum, lambda s: fnp.sum(s, axis=0)),
        "pmean": (D.pmean, lambda s: fnp.mean(s, axis=0)),
        "pmax": (D.pmax, lambda s: fnp.max(s, axis=0)),
        "all_gather": (lambda x: D.all_gather(x, axis=1), lambda s: fnp.concatenate([s[k] for k in range(n)], axis=1)),
        "psum_scatter": (lambda x: D.psum_scatter(x, axis=1), lambda s: fnp.sum(s, axis=0)[:, 2 * r:2 * r + 2]),
        "broadcast": (lambda x: D.broadcast(x, root=1), lambda s: s[1]),
    }


def check_values(n: int, r: int, xs: np.ndarray) -> None:
    for name, (op, ref) in collectives(n, r).items():
        expected = np.asarray(ref(xs))
        for how, fn in (("eager", op), ("jit", fj.jit(op)), ("unfused", fj.jit(op, fuse=False)),
                        ("interpreted", fj.jit(op, backend="interpret"))):
            got = fn(xs[r])
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6, err_msg=f"{name} {how} on rank {r}")
            assert got.dtype == expected.dtype, (name, how, got.dtype)
    # An operand read after the collective keeps its value (no in-place Allreduce over it).
    got = fj.jit(lambda x: (D.psum(fnp.exp(x)) * 2.0, D.psum(fnp.tanh(x)) + fnp.tanh(x)))(xs[r])
    np.testing.assert_allclose(got[0], 2 * np.exp(xs).sum(0), rtol=1e-5)
    np.testing.assert_allclose(got[1], np.tanh(xs).sum(0) + np.tanh(xs[r]), rtol=1e-5, atol=1e-6)


def check_derivatives(n: int, r: int, xs: np.ndarray) -> None:
    """The objective is the sum of every rank's: rank r's gradient must equal the
    gradient of the summed reference with respect to rank r's copy of ``w``; its jvp, the
    reference's jvp of rank r's term with every rank's tangent."""
    vs = np.random.default_rng(7).standard_normal((n,) + np.asarray(collectives(n, 0)["all_gather"][1](xs)).shape)
    w = np.linspace(0.5, 1.5, xs[0].size, dtype=np.float32).reshape(xs[0].shape)
    ws = np.stack([w * (1 + 0.1 * k) for k in range(n)]).astype(np.float32)
    ts = np.random.default_rng(8).standard_normal(ws.shape).astype(np.float32)
    for name, (op, _) in collectives(n, r).items():
        def term(out, k):  # noqa: ANN001, ANN202
            v = vs[k][tuple(slice(0, m) for m in out.shape)].astype(np.float32)
            return fnp.sum(fnp.tanh(out) * v)

        def mine(w, op=op):  # noqa: ANN001, ANN202
            return term(op(w * xs[r]), r)

        def reference(ws, k, name=name):  # noqa: ANN001, ANN202
            _, ref = collectives(n, k)[name]
            return term(ref(ws * xs), k)

        def total(ws):  # noqa: ANN001, ANN202
            return sum(reference(ws, k) for k in range(n))

        grad = fj.jit(fj.grad(mine))(ws[r])
        np.testing.assert_allclose(grad, fj.grad(total)(ws)[r], rtol=2e-5, atol=1e-6, err_msg=f"grad of {name}")
        _, tangent = fj.jvp(mine, (ws[r],), (ts[r],))
        _, expected = fj.jvp(lambda ws: reference(ws, r), (ws,), (ts,))  # noqa: B023
        np.testing.assert_allclose(tangent, expected, rtol=2e-5, atol=1e-6, err_msg=f"jvp of {name}")


def check_training(n: int, r: int) -> None:
    """Three SGD steps of an MLP: n ranks with batch 8/n each equal one process with
    batch 8, and each distributed step sends one message (its gradients' bucket)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.integers(0, 3, 32).astype(np.int32)
    params = {"w1": rng.standard_normal((5, 16)).astype(np.float32) * 0.5, "b1": np.zeros(16, np.float32),
              "w2": rng.standard_normal((16, 3)).astype(np.float32) * 0.5, "b2": np.zeros(3, np.float32)}
    params = D.broadcast_params(params)

    def loss(p, x, y):  # noqa: ANN001, ANN202
        h = fj.nn.relu(x @ p["w1"] + p["b1"])
        return fj.nn.cross_entropy(h @ p["w2"] + p["b2"], y)

    def step(p, x, y, distributed):  # noqa: ANN001, ANN202
        g = fj.grad(loss)(p, x, y)
        if distributed:
            g = D.pmean(g)
        return fj.tree_map(lambda a, b: a - 0.5 * b, p, g)

    jitted = fj.jit(step, static_argnums=3)
    mine, alone = params, params
    order = np.random.default_rng([11, 0]).permutation(len(x))
    calls = []
    for s, idx in enumerate(D.shard_batches(len(x), 8, seed=11)):
        if s == 3:
            break
        before = (D.stats().calls, D.stats().checks)
        mine = jitted(mine, x[idx], y[idx], True)
        calls.append((D.stats().calls - before[0], D.stats().checks - before[1]))
        whole = order[8 * s:8 * s + 8]
        alone = jitted(alone, x[whole], y[whole], False)
    for k in params:
        np.testing.assert_allclose(mine[k], alone[k], rtol=1e-5, atol=1e-6, err_msg=f"{k} after 3 steps")
    assert calls[1:] == [(2, 1), (2, 1)], f"MPI calls (checks) per step: {calls}"  # the bucket and its check
    report = jitted.lower(params, x[:8 // n], y[:8 // n], True).fusion_report()
    assert report.count("(host)") == 1, report


def overlap_step(p, x, y, bucket_bytes, overlap):  # noqa: ANN001, ANN201
    """An SGD step of a 4-layer MLP whose gradients are averaged over the ranks."""
    def loss(p):  # noqa: ANN001, ANN202
        h = x
        for i in range(1, 5):
            h = h @ p[f"w{i}"] + p[f"b{i}"]
            h = fj.nn.relu(h) if i < 4 else h
        return fj.nn.cross_entropy(h, y)

    g = D.pmean(fj.grad(loss)(p), bucket_bytes=bucket_bytes, overlap=overlap)
    return fj.tree_map(lambda a, b: a - 0.5 * b, p, g)


def overlap_args(seed: int = 4) -> tuple[dict, np.ndarray, np.ndarray]:
    """Parameters (w1 12x32, w2 and w3 32x32, w4 32x5, biases), 32 examples and labels.
    With 5000-byte buckets the gradients travel in three: (b4 w4 b3 w3), (b2 w2 b1), (w1)."""
    rng = np.random.default_rng(seed)
    sizes = (12, 32, 32, 32, 5)
    params = {}
    for i in range(1, 5):
        params[f"w{i}"] = (rng.standard_normal((sizes[i - 1], sizes[i])) * 0.4).astype(np.float32)
        params[f"b{i}"] = (rng.standard_normal(sizes[i]) * 0.1).astype(np.float32)
    return params, rng.standard_normal((32, 12)).astype(np.float32), rng.integers(0, 5, 32).astype(np.int32)


def check_overlap(n: int, r: int) -> None:
    """Three steps with the gradients' psums overlapped with the backward pass equal the
    blocking ones bit for bit, in one bucket and in three (two of them split into a start
    and a wait), with the same MPI calls per step; mismatched shapes are still detected
    at the start of an overlapped psum."""
    params, x, y = overlap_args()
    params = D.broadcast_params(params)
    jitted = fj.jit(overlap_step, static_argnums=(3, 4))
    for bucket_bytes, buckets, split in ((None, 1, 0), (5000, 3, 2)):
        host_steps = jitted.lower(params, x[:8 // n], y[:8 // n], bucket_bytes, True).compile().executable.call_plan.host_steps
        phases = [h.phase for h in host_steps]
        assert (phases.count("run") + phases.count("start"), phases.count("wait")) == (buckets, split), phases
        blocking, overlapped = params, params
        calls = {False: [], True: []}
        for s, idx in enumerate(D.shard_batches(len(x), 8, seed=12)):
            if s == 3:
                break
            for overlap in (False, True):
                before = (D.stats().calls, D.stats().checks, D.stats().bytes_sent)
                out = jitted(blocking if not overlap else overlapped, x[idx], y[idx], bucket_bytes, overlap)
                calls[overlap].append((D.stats().calls - before[0], D.stats().checks - before[1],
                                       D.stats().bytes_sent - before[2]))
                blocking, overlapped = (blocking, out) if overlap else (out, overlapped)
        for k in params:
            np.testing.assert_array_equal(overlapped[k], blocking[k], err_msg=f"{k}, {buckets} bucket(s)")
        assert calls[True] == calls[False] and calls[True][0][:2] == (2 * buckets, buckets), calls

    def split(x, z):  # noqa: ANN001, ANN202 - the psum's start, the tanh kernel, then its wait
        return D.psum(fnp.exp(x), overlap=True) * fnp.sum(fnp.tanh(z))

    z = np.ones(3, np.float32)
    step = fj.jit(split)
    expect_mismatch(lambda: step(np.ones(r + 2, np.float32), z), [f"psum f32[{k + 2}]" for k in range(n)],
                    "while executing host op psum")
    np.testing.assert_allclose(step(np.zeros(2, np.float32), z), np.full(2, n * 3 * np.tanh(1.0)), rtol=1e-6)
    # Programs that differ only in overlap: rank 0 starts an Iallreduce where rank 1 calls
    # a blocking Allreduce of the same bucket (MPI would fail with "message truncated").
    blocking = fj.jit(lambda x, z: D.psum(fnp.exp(x)) * fnp.sum(fnp.tanh(z)))
    expect_mismatch(lambda: (step if r == 0 else blocking)(np.zeros(2, np.float32), z),
                    ["psum f32[2] started=1", "psum f32[2] (psum at"][:n])
    np.testing.assert_allclose(step(np.zeros(2, np.float32), z), np.full(2, n * 3 * np.tanh(1.0)), rtol=1e-6)


def midflight(r: int) -> None:
    """Rank 1 raises from a callback run between an overlapped psum's start and its wait."""
    def fail(h: np.ndarray) -> None:
        if r == 1:
            raise RuntimeError("boom from rank 1 while its psum is in flight")

    def f(x, z):  # noqa: ANN001, ANN202
        g = D.psum(fnp.exp(x), overlap=True)
        h = fnp.tanh(z) * 3.0
        fj.debug.callback(fail, h)
        return g * fnp.sum(h)

    step = fj.jit(f)
    compiled = step.lower(np.ones(4, np.float32), np.ones(3, np.float32)).compile()
    phases = [(h.call.op.prim.name, h.phase) for h in compiled.executable.call_plan.host_steps]
    assert phases == [("psum", "start"), ("debug_callback", "run"), ("psum", "wait")], phases
    step(np.ones(4, np.float32), np.ones(3, np.float32))
    D.psum(np.ones(3))  # rank 0 waits here until rank 1's failure ends the job


def expect_mismatch(run, calls: list[str], note: str | None = None) -> None:  # noqa: ANN001
    """``run()`` raises ``CollectiveMismatchError`` listing ``calls[k]`` for rank k."""
    try:
        run()
    except D.CollectiveMismatchError as e:
        text = str(e) + "".join(getattr(e, "__notes__", []))
        for k, call in enumerate(calls):
            assert f"rank {k}: {call}" in text, text
        assert note is None or note in text, text
    else:
        raise AssertionError(f"the ranks' calls {calls} were not detected as mismatched")


def check_mismatch(n: int, r: int) -> None:
    """Mismatched programs fail at their first differing collective, on every rank, with
    what each rank called, whatever each rank ran before; afterwards the ranks go on."""
    step = fj.jit(lambda x: D.psum(x * 2.0))
    expect_mismatch(lambda: step(np.ones(r + 2, np.float32)), [f"psum f32[{k + 2}]" for k in range(n)],
                    "while executing host op psum")
    # Both shapes were run (and agreed) by both ranks before: the ranks still compare.
    step(np.ones(2, np.float32))
    step(np.ones(3, np.float32))
    expect_mismatch(lambda: step(np.ones(r + 2, np.float32)), [f"psum f32[{k + 2}]" for k in range(n)])
    # Diverging control flow: rank 0 runs one more step, rank 1 goes on to a pmax. A jitted
    # collective is listed with the line it was traced from.
    x = np.full(4, float(r + 1), np.float32)
    expect_mismatch(lambda: step(x) if r == 0 else D.pmax(x), [f"psum f32[4] (psum at {__file__}:", "pmax f32[4]"][:n])
    np.testing.assert_array_equal(step(x), np.full(4, 2.0 * sum(range(1, n + 1)), np.float32))


def main(case: str) -> int:
    D.initialize()
    n, r = D.size(), D.rank()
    assert n == 2, f"run under mpiexec -n 2, not {n} processes"
    if case == "abort":
        if r == 1:
            raise RuntimeError("boom from rank 1")
        D.psum(np.ones(3))  # rank 0 waits here until rank 1's failure ends the job
        return 0
    if case == "thread":
        if r == 1:
            fed = threading.Event()

            def loader() -> None:
                raise RuntimeError("boom in rank 1's loader")  # fed is never set

            threading.Thread(target=loader, name="loader").start()
            fed.wait()  # rank 1 would wait here forever
        D.psum(np.ones(3))
        return 0
    if case == "midflight":
        midflight(r)
        return 0
    if case == "overlap":
        check_overlap(n, r)
        print(f"OK {r}", flush=True)
        return 0
    if case == "exit":
        if r == 1:
            return 0  # a normal exit, while rank 0 still calls collectives
        D.psum(np.ones(3))  # meets rank 1's check at exit: both end with the mismatch
        print("rank 0 was not stopped", flush=True)
        return 0
    xs = np.random.default_rng(5).standard_normal((n, 3, 4)).astype(np.float32)
    check_values(n, r, xs)
    check_derivatives(n, r, xs)
    check_training(n, r)
    check_mismatch(n, r)
    print(f"OK {r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
