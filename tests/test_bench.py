"""The benchmark itself is correct: every workload, at a tiny size, gives the same results
through fusejit (fused and unfused, with the workload's donation) as NumPy eager, for two
consecutive steps (stateful workloads feed their outputs back), without retracing.
Also the harness's comparison, report formatting and command line. No timing assertions.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusejit as fj

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str, path: Path):  # noqa: ANN202
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


harness = _load("fusejit_bench_harness", ROOT / "bench" / "harness.py")
workloads = harness.load_workloads()

CASES = [case for w in workloads.WORKLOADS for case in w.make("tiny")]


def _steps(fn, case, n: int = 2) -> list:  # noqa: ANN001
    """``n`` consecutive calls from fresh copies of the arguments, each output copied at
    once (a donated buffer may be reused by the next call)."""
    args = harness.copy_args(case.args)
    outs = []
    for _ in range(n):
        out = fn(*args)
        outs.append(harness.tree_to_numpy(out, lambda x: x))
        if case.carry is not None:
            args = case.carry(args, out)
    return outs


def test_every_workload_has_tiny_cases() -> None:
    assert [w.key for w in workloads.WORKLOADS] == [f"W{i}" for i in range(1, 11)]
    assert {c.key for c in CASES} == {w.key for w in workloads.WORKLOADS}
    assert len([c for c in CASES if c.key == "W1"]) == 2  # two gelu sizes


@pytest.mark.parametrize("config", ["unfused", "fused"])
@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_fusejit_matches_numpy_eager(case, config: str) -> None:  # noqa: ANN001
    expected = _steps(case.fn, case)
    jitted = fj.jit(case.fn, fuse=config == "fused", donate_argnums=case.donate_argnums)
    got = _steps(jitted, case)
    for step, (e, g) in enumerate(zip(expected, got, strict=True)):
        check = harness.compare(e, g, case.rtol, case.atol)
        assert check["ok"], f"{case.label} {config} step {step}: {check}"
    info = jitted.cache_info()
    assert info.misses == 1, f"{case.label} retraced between steps: {info}"


def test_numpy_eager_is_real_numpy() -> None:
    """The eager baseline of W1-W4 and W6 is NumPy itself: no tracer, no fusejit arrays."""
    for case in CASES:
        if case.key in ("W5", "W7", "W8", "W9", "W10"):  # training steps: eager means value_and_grad without jit
            continue
        for leaf in harness._leaves(case.fn(*harness.copy_args(case.args))):
            assert type(leaf) in (np.ndarray, np.float32), (case.label, type(leaf))
            assert leaf.dtype == np.float32, (case.label, leaf.dtype)


def test_bytes_moved_of_memory_bound_cases() -> None:
    by_key = {c.key: c for c in workloads.make_adam("full")}
    assert by_key["W4"].bytes_moved == 7 * 4 * (4 << 20)  # read p, m, v, g; write p, m, v
    gelu_4m, gelu_16m = workloads.make_gelu("tiny")
    assert gelu_4m.bytes_moved == 2 * 4 * 1000
    assert all(c.bytes_moved is None for c in CASES if c.key in ("W5", "W6", "W7", "W8", "W9", "W10"))


def test_compare() -> None:
    a = {"w": np.ones(3, np.float32), "b": np.float32(2.0)}
    assert harness.compare(a, {"b": 2.0, "w": np.ones(3)}, 1e-3, 0)["ok"]
    assert not harness.compare(a, {"b": 2.1, "w": np.ones(3)}, 1e-3, 0)["ok"]
    assert not harness.compare([np.ones(3)], [np.ones(4)], 1e-3, 0)["ok"]
    assert not harness.compare([np.ones(3)], [np.ones(3), np.ones(3)], 1e-3, 0)["ok"]
    assert harness.compare([np.array([np.nan, 1.0])], [np.array([np.nan, 1.0])], 0, 0)["ok"]
    bad = harness.compare([np.array([1.0, 1.0])], [np.array([np.nan, 1.0])], 0, 0)
    assert not bad["ok"] and math.isinf(bad["max_abs_err"])


def test_select() -> None:
    assert [w.key for w in workloads.select(["w5", "gelu", "W1"])] == ["W1", "W5"]
    assert len(workloads.select(None)) == 10
    with pytest.raises(SystemExit, match="unknown workload"):
        workloads.select(["W99"])


def _fake_report() -> dict:
    def record(config: str, median: float, **extra) -> dict:  # noqa: ANN003
        return {"config": config, "first_call_s": 0.5, "median_s": median, "p25_s": median * 0.9,
                "p75_s": median * 1.1, "faults_per_call": 3.0, "check": {"ok": True, "max_abs_err": 0.0},
                "speedup": 0.01 / median, **extra}

    case = {"key": "W1", "label": "W1 gelu 4M", "note": "a note", "bytes_moved": 8 << 20, "results": [
        record("numpy", 0.01, gbs=0.8, frac_stream=0.1), record("fused", 0.002, kernels=1, cache_misses=1),
        {"config": "jax", "skipped": "jax not installed"}]}
    run = {"threads": 1, "cpus": [1], "backend": "cpu", "stream_gbs": 8.0, "cases": [case]}
    return {"machine": {"cpu_model": "x"}, "versions": {"numpy": "2"}, "size": "full", "runs": [run, {**run, "threads": 2}]}


def test_format_report() -> None:
    text = harness.format_report(_fake_report())
    assert "W1 gelu 4M" in text and "5.00x" in text and "jax not installed" in text
    assert "1 thread, pinned" in text and "2 threads" in text and "STREAM triad 8.0 GB/s" in text
    assert "5.00x / 5.00x" in text  # the summary: 1 thread / 2 threads


def test_command_line_end_to_end(tmp_path: Path) -> None:
    """``python -m fusejit bench`` with one cheap workload: workers, STREAM, JSON."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fusejit", "bench", "W6", "--size", "tiny", "--quick", "--threads", "1",
         "--configs", "numpy,fused", "--no-plot", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["threads"] == 1 and len(run["cpus"]) == 1 and run["stream_gbs"] > 0
    assert run["env"]["NUMBA_NUM_THREADS"] == "1"
    (case,) = run["cases"]
    assert [r["config"] for r in case["results"]] == ["numpy", "fused"]
    assert all(r["check"]["ok"] and r["median_s"] > 0 for r in case["results"])
    assert "speed-up over NumPy eager" in proc.stdout


first_call = _load("fusejit_bench_first_call", ROOT / "bench" / "bench_first_call.py")


def test_first_call_goals() -> None:
    def case(key: str, cold: float | None, warm: float | None) -> dict:
        return {"key": key, "cold_over_jax": cold, "warm_over_jax": warm}

    assert first_call.goal_met(case("W5", 1.4, 0.9)) == "yes"
    assert first_call.goal_met(case("W5", 1.6, 0.9)) == "missed cold"
    assert first_call.goal_met(case("W7", 2.5, 1.2)) == "missed cold, warm"
    assert first_call.goal_met(case("W1", 2.9, 5.0)) == "yes"  # no goal for W1's warm call
    assert first_call.goal_met(case("W6", 9.0, 9.0)) == "-"
    assert first_call.goal_met(case("W5", None, None)) == "-"
    assert first_call.goal_text("W5") == "cold<=1.5x warm<1x" and first_call.goal_text("W2") == "cold<=3x"


def test_first_call_end_to_end(tmp_path: Path) -> None:
    """``bench/bench_first_call.py`` on the cheapest workload: three fresh pinned processes,
    the warm one loading every kernel the cold one compiled, both matching JAX."""
    pytest.importorskip("jax")
    out = tmp_path / "first_call.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_first_call.py"), "W6", "--size", "tiny", "--reps", "1",
         "--threads", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (run,) = json.loads(out.read_text())["runs"]
    (case,) = run["cases"]
    kinds = case["kinds"]
    assert all(k["reps"] == 1 and k["errors"] == 0 for k in kinds.values())
    assert kinds["cold"]["check_ok"] and kinds["warm"]["check_ok"]
    (cold,), (warm,), (jax,) = (kinds[k]["samples"] for k in ("cold", "warm", "jax"))
    assert all(len(r["cpus"]) == 1 for r in (cold, warm, jax))
    assert set(cold["fusejit"]["origins"]) <= {"compiled", "worker"} and cold["fusejit"]["origins"]
    assert set(warm["fusejit"]["origins"]) == {"disk"}
    assert cold["fusejit"]["cache_dir"] == warm["fusejit"]["cache_dir"]
    assert Path(cold["fusejit"]["file"]).parents[1] != ROOT  # the copy of fusejit/, not the checkout
    assert jax["jax"]["compilation_cache_dir"] is None
    assert "fusejit cold" in proc.stdout and "cold/JAX" in proc.stdout


def test_bench_records_blas_and_conv_kernels(tmp_path: Path) -> None:
    """W7 at tiny size, fused only: the setting's record holds the measured GEMM rate, the
    BLAS libraries its workers loaded (threadpoolctl) and the BLAS variables set; the case
    holds a row per conv kernel (forward and weight gradient: batch 4, 16 output channels,
    8x8, 3x3 window over 1 input channel), also printed after the setting's table."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "fusejit", "bench", "W7", "--size", "tiny", "--quick", "--threads", "1",
         "--configs", "fused", "--no-plot", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"} | {"OPENBLAS_L2_SIZE": "262144"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(out.read_text())["runs"]
    assert run["gemm"]["threads"] == 1 and run["gemm_gflops"] > 0
    assert run["blas_env"]["OPENBLAS_L2_SIZE"] == "262144" and "OPENBLAS_CORETYPE" not in run["blas_env"]
    assert "OPENBLAS_L2_SIZE=262144" in proc.stdout
    if importlib.util.find_spec("threadpoolctl") is None:
        assert run["blas"] is None
    else:
        libraries = run["blas"]["core"]
        assert any(lib["internal_api"] == "openblas" and lib["package"] == "scipy" for lib in libraries)
        assert all({"version", "num_threads", "architecture", "file"} <= set(lib) for lib in libraries)
        assert "BLAS: openblas" in proc.stdout
    (case,) = run["cases"]
    conv = case["conv"]
    assert conv["config"] == "fused" and conv["repeat"] >= 1 and conv["call_median_s"] > 0
    rows = conv["kernels"]
    assert [r["pass"] for r in rows] == ["fwd", "bwd"]
    assert all(r["name"].startswith("conv_") for r in rows)
    assert [r["flops"] for r in rows] == [2 * (4 * 16 * 8 * 8) * (1 * 3 * 3)] * 2
    for r in rows:
        assert r["median_s"] > 0 and r["gflops"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
        assert r["of_gemm"] == pytest.approx(r["gflops"] / run["gemm_gflops"])
    assert "conv kernels (fusejit fused" in proc.stdout and rows[0]["name"] in proc.stdout


def test_format_blas_and_conv_pass() -> None:
    run = {"blas": {"core": [
        {"internal_api": "openblas", "version": "0.3.30.0.1", "architecture": "Haswell", "package": "scipy"},
        {"internal_api": "openmp", "version": None, "architecture": None, "package": "torch"}],
        "torch": [{"internal_api": "mkl", "version": "2024.2", "architecture": "AVX512", "package": "torch"}]},
        "blas_env": {}}
    assert harness.format_blas(run) == "BLAS: openblas 0.3.30 Haswell (scipy), mkl 2024.2 AVX512 (torch)"
    forced = harness.format_blas({**run, "blas_env": {"OPENBLAS_CORETYPE": "Haswell"}})
    assert "FORCED by OPENBLAS_CORETYPE=Haswell" in forced
    assert forced.endswith("(rerun with env -u OPENBLAS_CORETYPE ...)")
    assert harness.format_blas({"blas": None, "blas_env": {}}) == ""  # no threadpoolctl: nothing printed
    assert harness.format_blas({"blas": None, "blas_env": {"MKL_CBWR": "AVX"}}).startswith("BLAS kernel FORCED by MKL_CBWR")
    assert harness.conv_pass("conv2d + max_pool2d") == "fwd"
    assert harness.conv_pass("block1/conv2d bwd") == "bwd"
    assert harness.conv_pass("conv2d bwd + relu") == "bwd"
