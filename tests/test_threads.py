"""Thread policies of the CPU runtime (fusejit/runtime/blas.py, threads.py): GEMMs that
are too small to gain from BLAS threads run on one, and Numba's OpenMP pool is started
with sleeping idle threads unless the user chose a wait policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusejit as fj
from fusejit import config
from fusejit.runtime import blas

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fusejit-cache")
    with config.override(cache=True, cache_dir=str(root), backend="cpu"):
        yield root


@pytest.fixture
def many_blas_threads(monkeypatch: pytest.MonkeyPatch) -> int:
    """Pretends SciPy's OpenBLAS defaults to 4 threads, so that 'its default' and 'one'
    differ on any machine."""
    if blas._library() is None:
        pytest.skip("SciPy's OpenBLAS is not found")
    monkeypatch.setitem(blas._state, "default", 4)
    return 4


def test_small_gemms_run_on_one_blas_thread_without_parallel_kernels(many_blas_threads, cache_dir):
    # A conv step of small GEMMs and no parallel kernel ran 12x slower on two BLAS threads
    # than on one when another process kept a core busy (the module docstring).
    assert blas.threads_for(2 * 32 * 576 * 896) == 1
    assert blas.threads_for(blas.SMALL_GEMM_FLOPS) == many_blas_threads
    with config.override(blas_threads="3"):
        assert blas.threads_for(2 * 32 * 576 * 896) == 3
    x = np.ones((64, 32), np.float32)
    w = np.ones((32, 16), np.float32)
    compiled = fj.jit(lambda x, w: x @ w).lower(x, w).compile()
    assert compiled.executable._blas_threads == 1
    np.testing.assert_allclose(compiled(x, w), x @ w)


SCRIPT = """
import ctypes, json, os
import numba
import numpy as np
import fusejit as fj

f = fj.jit(lambda x: x * 2.0 + 1.0)
x = np.ones(4096, np.float32)
compiled = f.lower(x).compile()
y = compiled(x)
layer = numba.threading_layer()
if layer == "omp":
    # Verbose: also GOMP_SPINCOUNT, which tells 'PASSIVE' (0) from the default (300000).
    ctypes.CDLL("libgomp.so.1").omp_display_env(1)
print(json.dumps({"layer": layer, "ok": bool((y == 3.0).all()),
                  "policy_after": os.environ.get("OMP_WAIT_POLICY")}))
"""


def run_fresh(cache_dir: Path, **env_vars: str) -> tuple[dict, str]:
    env = dict(os.environ, FUSEJIT_CACHE_DIR=str(cache_dir), FUSEJIT_CACHE="1", FUSEJIT_BACKEND="cpu",
               FUSEJIT_PARALLEL_THRESHOLD="1", NUMBA_NUM_THREADS="2", PYTHONPATH=str(REPO),
               FUSEJIT_PARALLEL_CHUNKS="0")  # a parfor: its loop runs on Numba's pool
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR"):
        env.pop(k, None)
    env.update(env_vars)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_numba_threads_sleep_when_idle_unless_the_user_chose_a_policy(cache_dir):
    result, shown = run_fresh(cache_dir)
    if result["layer"] != "omp":
        pytest.skip(f"Numba runs the {result['layer']} threading layer here (its threads block, not spin)")
    assert result["ok"]
    assert "GOMP_SPINCOUNT = '0'" in shown, shown
    assert result["policy_after"] is None  # later OpenMP runtimes keep their own default
    result, shown = run_fresh(cache_dir, OMP_WAIT_POLICY="ACTIVE")
    assert result["ok"] and result["policy_after"] == "ACTIVE"
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in shown and "GOMP_SPINCOUNT = '0'" not in shown, shown


def test_the_blas_is_warmed_up_once_before_the_first_gemm_kernel(monkeypatch, cache_dir):
    """One large-result GEMM per process before any kernel's (``blas.warm_up``: until one
    has run, SciPy's OpenBLAS ran every GEMM about 3.5x slower here)."""
    if blas._library() is None:
        pytest.skip("not SciPy's OpenBLAS")
    calls = []
    real = blas.warm_up
    monkeypatch.setattr(blas, "warm_up", lambda: (calls.append(blas._state["warmed"]), real()))
    monkeypatch.setitem(blas._state, "warmed", False)
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    fj.jit(lambda a: a - 1.0)(a)  # no GEMM: no warm-up
    assert calls == []
    fj.jit(lambda a, b: a @ b)(a, b)
    fj.jit(lambda a, b: (a @ b) * 2.0)(a, b)
    assert calls == [False, True] and blas._state["warmed"]  # the GEMM ran at the first only
