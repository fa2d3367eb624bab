"""Compiled.profile, fj.profile and FUSEJIT_PROFILE: per-kernel rows, Chrome traces.

The only timing assertion is the one the profile promises about itself: its kernels'
medians add up to the whole call's median within 20% (for kernels long enough that the
~1-3 us of calling each from Python does not matter)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import fusejit as fj
from fusejit.runtime.profile import print_recorded_profiles

RNG = np.random.default_rng(0)


def step(x, w):
    h = np.tanh(x @ w)  # a matmul kernel (with its epilogue)
    centered = h - h.mean(axis=0)  # a reduction, then a loop kernel
    return (centered * centered).sum(axis=1), np.exp(-centered)


def _args() -> tuple[np.ndarray, np.ndarray]:
    # Large enough (~1 ms per kernel) that calling kernels from Python costs little.
    return RNG.standard_normal((2048, 256)).astype(np.float32), RNG.standard_normal((256, 256)).astype(np.float32)


@pytest.fixture(scope="module")
def profiled():
    x, w = _args()
    with fj.config.override(parallel_threshold=1 << 40):  # serial kernels: steadier on shared CPUs
        compiled = fj.jit(step).lower(x, w).compile()
    return compiled, compiled.profile(x, w, repeat=15), (x, w)


def test_profile_rows_add_up_to_the_call(profiled):
    compiled, prof, _ = profiled
    assert len(prof.kernels) == len(compiled.kernels) >= 3
    assert len(prof.call_times_s) == 15 and all(len(k.times_s) == 15 for k in prof.kernels)
    # Two medians of wall-clock times on a shared machine: only a gross mismatch (a kernel
    # missing from the rows, or counted twice) is a bug; 20% failed under load.
    assert prof.kernel_total_s == pytest.approx(prof.call_median_s, rel=0.5)


def test_profile_rows_describe_each_kernel(profiled):
    compiled, prof, _ = profiled
    assert [k.name for k in prof.kernels] == [k.name for k in compiled.kernels]
    kinds = {k.kind for k in prof.kernels}
    assert "matmul" in kinds
    for k in prof.kernels:
        assert k.ops and all(" at test_profile.py:" in op for op in k.ops)
        assert k.source_lines and k.bytes_read > 0 and k.bytes_written > 0
        assert k.gbs > 0 and 0 < prof.share(k) < 2
    assert prof.bytes_moved == sum(k.bytes_in + k.bytes_out for k in compiled.kernels)


def test_profile_prints_a_table_sorted_by_time(profiled):
    _, prof, _ = profiled
    text = str(prof)
    assert text.startswith("profile of @step:")
    for col in ("kernel", "kind", "median", "share", "read", "written", "GB/s", "ops (source lines)"):
        assert col in text
    rows = text.splitlines()[3:3 + len(prof.kernels)]
    order = [int(r.split()[0]) for r in rows]
    assert order == [k.index for k in prof.sorted_kernels()]
    medians = [prof.kernels[i].median_s for i in order]
    assert medians == sorted(medians, reverse=True)
    assert "test_profile.py:" in text
    assert len(prof.table(top=1).splitlines()) < len(text.splitlines())


def test_chrome_trace_is_valid_trace_event_json(profiled, tmp_path):
    _, prof, _ = profiled
    path = prof.to_chrome_trace(tmp_path / "sub" / "trace.json")
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    assert isinstance(events, list) and events
    for e in events:
        assert e["ph"] in ("X", "M") and isinstance(e["name"], str)
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
    kernel_events = [e for e in events if e["ph"] == "X" and e.get("cat") in {k.kind for k in prof.kernels}]
    assert len(kernel_events) == 15 * len(prof.kernels)
    assert {e["name"] for e in kernel_events} == {k.name for k in prof.kernels}
    assert all("ops" in e["args"] and "bytes_read" in e["args"] for e in kernel_events)


def test_profiling_never_touches_the_arguments_even_donated_ones():
    x = RNG.standard_normal((64, 8)).astype(np.float32)
    keep = x.copy()
    jitted = fj.jit(lambda x: x * 2.0 + 1.0, donate_argnums=0)
    prof = jitted.lower(x).compile().profile(x, repeat=3)
    assert len(prof.kernels) == 1
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_allclose(jitted(x), keep * 2 + 1)  # x was not marked as consumed


def test_fj_profile_compiles_and_profiles_a_plain_function():
    x = RNG.standard_normal((16, 4)).astype(np.float32)
    prof = fj.profile(lambda x: np.exp(x).sum(axis=1), x, repeat=2)
    assert prof.kernels and prof.repeat == 2


def test_the_interpreter_backend_has_no_kernels_to_profile():
    x = np.ones(4, np.float32)
    compiled = fj.jit(lambda x: x + 1, backend="interpret").lower(x).compile()
    with pytest.raises(ValueError, match="cpu backend"):
        compiled.profile(x)


def test_fusejit_profile_records_calls_and_prints_at_exit():
    x = RNG.standard_normal((32, 8)).astype(np.float32)

    def traced_fn(x):
        return np.tanh(x).sum(axis=0)

    off = fj.jit(traced_fn)
    off(x)
    assert off._fast and all(r.__name__ != "run_and_record" for r in off._fast.values())
    with fj.config.override(profile=True):
        on = fj.jit(traced_fn)
        on(x)
        on(x)  # the fast path records too
        assert any(r.__name__ == "run_and_record" for r in on._fast.values())
    out = io.StringIO()
    print_recorded_profiles(file=out, repeat=2)
    assert "FUSEJIT_PROFILE" in out.getvalue() and "profile of @traced_fn" in out.getvalue()


def test_loops_and_branches_are_profiled_with_body_kernels_summed_over_iterations(tmp_path):
    """A scan body's kernels run once per step: each has one row with ``calls`` equal to
    the length and its time summed over the steps; the backward scan's body is named as
    such; of a cond only the branch taken has rows; the arguments are left alone."""
    w = (0.3 * RNG.standard_normal((16, 16))).astype(np.float32)
    xs, h0 = RNG.standard_normal((7, 4, 16)).astype(np.float32), np.zeros((4, 16), np.float32)

    def rnn(w, xs, h0):
        h, ys = fj.lax.scan(lambda h, x: (np.tanh(h @ w + x), h.sum()), h0, xs)
        h = fj.lax.cond(h.sum() > -1e9, lambda a: a * 2.0, lambda a: np.exp(np.sin(a)), h)
        return (h**2).sum() + ys.sum()

    keep = xs.copy()
    compiled = fj.jit(fj.grad(rnn)).lower(w, xs, h0).compile()
    prof = compiled.profile(w, xs, h0, repeat=3)
    np.testing.assert_array_equal(xs, keep)
    assert [k.index for k in prof.kernels] == list(range(len(prof.kernels)))
    assert all(len(k.times_s) == 3 and k.median_s > 0 for k in prof.kernels)
    in_scan = [k for k in prof.kernels if k.loop.startswith("scan at")]
    in_bwd = [k for k in prof.kernels if k.loop.startswith("scan at bwd of test_profile.py:")]
    assert in_scan and in_bwd and all(k.calls == 7 for k in in_scan + in_bwd)
    branches = {k.loop.rsplit(" ", 1)[1] for k in prof.kernels if k.loop.startswith("cond at")}
    assert branches == {"1"}  # the true branch (index 1) ran; exp and sin never did
    assert not any("exp" in op for k in prof.kernels for op in k.ops)
    assert {k.calls for k in prof.kernels if not k.loop} == {1}
    text = str(prof)
    assert "runs" in text and "scan at test_profile.py:" in text
    trace = json.loads(prof.to_chrome_trace(tmp_path / "loops.json").read_text())["traceEvents"]
    per_kernel = [e for e in trace if e["ph"] == "X" and e.get("cat") not in ("call", "pass")]
    assert len(per_kernel) == 3 * sum(k.calls for k in prof.kernels)  # one event per run


def test_conv_and_matmul_kernels_count_their_flops():
    """A conv kernel's row counts 2 * (result elements) * (weights per output element): here
    result [2, 4, 6, 6] (stride 2 over 11x11 padded by 1: 6 positions) and weights
    [4, 6 // 2 groups, 3, 3]; a matmul kernel 2*M*K*N; other kernels none."""
    x = RNG.standard_normal((2, 6, 11, 11)).astype(np.float32)
    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    v = RNG.standard_normal((6 * 6, 5)).astype(np.float32)

    def f(x, w, v):
        y = np.exp(fj.nn.conv2d(x, w, stride=2, padding=1, groups=2))
        return (y.reshape(8, 36) @ v).sum()

    prof = fj.profile(f, x, w, v, repeat=2)
    convs = [k for k in prof.kernels if any(op.startswith("conv ") for op in k.ops)]
    matmuls = [k for k in prof.kernels if any(op.startswith("dot_general ") for op in k.ops)]
    assert len(convs) == 1 and len(matmuls) == 1
    (conv,), (matmul,) = convs, matmuls
    assert conv.flops == 2 * (2 * 4 * 6 * 6) * (3 * 3 * 3) == 15552
    assert matmul.flops == 2 * 8 * 36 * 5
    assert conv.gflops == pytest.approx(conv.flops / conv.median_s / 1e9) and conv.gflops > 0
    others = [k for k in prof.kernels if k not in (conv, matmul)]
    assert all(k.flops is None and k.gflops is None for k in others)
    assert "GFLOP/s" in prof.table()
    rows = {r["name"]: r for r in prof.to_dict()["kernels"]}
    assert rows[conv.name]["flops"] == 15552 and rows[conv.name]["gflops"] > 0


def test_a_profile_without_conv_or_matmul_has_no_gflops_column():
    x = RNG.standard_normal((16, 4)).astype(np.float32)
    prof = fj.profile(lambda x: np.exp(x).sum(axis=1), x, repeat=2)
    assert "GFLOP/s" not in prof.table() and all(k.flops is None for k in prof.kernels)
