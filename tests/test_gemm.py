"""The CPU kernels' GEMM (``fusejit.codegen.cpu.gemm``): every layout, offset, leading
dimension and accumulation against NumPy, through SciPy's bundled OpenBLAS (CBLAS) and,
for a SciPy built against another BLAS, through Numba's own entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusejit as fj
from fusejit.codegen.cpu import gemm

REPO = Path(__file__).resolve().parent.parent


def check_every_layout(gemm_module) -> None:  # noqa: ANN001 - also run in a subprocess
    rng = np.random.default_rng(0)
    for dtype, fn in ((np.float32, gemm_module.gemm_f32), (np.float64, gemm_module.gemm_f64)):
        for m, n, k in ((5, 7, 3), (4, 6, 9), (3, 3, 0), (1, 8, 1)):
            for a_t in (0, 1):
                for b_t in (0, 1):
                    for accumulate in (0, 1):
                        a2 = rng.standard_normal((k, m) if a_t else (m, k)).astype(dtype)
                        b2 = rng.standard_normal((n, k) if b_t else (k, n)).astype(dtype)
                        c2 = rng.standard_normal((m, n + 2)).astype(dtype)  # rows 2 longer than C's
                        want = (a2.T if a_t else a2) @ (b2.T if b_t else b2) + (c2[:, :n] if accumulate else 0)
                        # Each operand at an offset into its flat array.
                        a = np.concatenate([np.zeros(3, dtype), a2.ravel()])
                        b = np.concatenate([np.zeros(1, dtype), b2.ravel()])
                        c = np.concatenate([np.zeros(2, dtype), c2.ravel()])
                        fn(m, n, k, a, 3, max(a2.shape[1], 1), a_t, b, 1, max(b2.shape[1], 1), b_t, c, 2, n + 2,
                           accumulate)
                        got = c[2:].reshape(m, n + 2)
                        tol = 1e-5 if dtype == np.float32 else 1e-12
                        np.testing.assert_allclose(got[:, :n], want, rtol=tol, atol=tol)
                        np.testing.assert_array_equal(got[:, n:], c2[:, n:])  # the gap is not written
                        assert not c[:2].any()


def test_the_gemm_of_every_layout_offset_and_accumulation_equals_numpy():
    check_every_layout(gemm)


FALLBACK = f"""
import importlib.util
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name == "scipy" else find_spec(name, *a)
import fusejit as fj
from fusejit.codegen.cpu import gemm
importlib.util.find_spec = find_spec
assert not gemm.CBLAS
import sys
sys.path.insert(0, {str(REPO / "tests")!r})
from test_gemm import check_every_layout
check_every_layout(gemm)
print("checked")
"""


@pytest.mark.skipif(not gemm.CBLAS, reason="this SciPy has no bundled OpenBLAS: the test above is the fallback")
def test_without_scipys_bundled_openblas_the_gemm_goes_through_numbas_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)})
    assert done.returncode == 0 and "checked" in done.stdout, done.stderr


def test_matmul_kernels_that_differ_only_in_transpositions_are_one_module():
    """NN, NT and TN products: the transpositions reach the kernel in its sizes, so the
    three kernels have one text, compiled once (Target.gemm_flags_at_run_time)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal((5, 7)).astype(np.float32)
    cases = [(lambda x, y: x @ y, (a, b)), (lambda x, y: x @ y.T, (a, b.T.copy())),
             (lambda x, y: x.T @ y, (a.T.copy(), b))]
    modules = set()
    for fn, args in cases:
        f = fj.jit(fn)
        np.testing.assert_allclose(f(*args), a @ b, rtol=1e-5, atol=1e-5)
        (st,) = f.lower(*args).compile().executable._steps
        modules.add(st.module)
    assert len(modules) == 1


def test_a_matmul_epilogue_large_enough_for_threads_is_its_own_loop_kernel_run_in_chunks():
    """A matmul kernel whose epilogue loop would run on threads would be a parfor (its
    GEMM comes first, so the kernel is not one parallel loop): 0.9-1.5 s more to compile.
    The epilogue then stays out of the matmul kernel, a loop kernel that runs in chunks;
    below the threshold it is fused as before."""
    import fusejit as fj
    import fusejit.numpy as fnp

    rng = np.random.default_rng(3)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((64, 32), (32, 48), (48,)))

    def layer(x, w, b):
        return fnp.tanh(x @ w + b)

    with fj.config.override(parallel_threshold=64 * 48):
        big = fj.jit(layer).lower(x, w, b).compile()
    small = fj.jit(layer).lower(x, w, b).compile()
    assert [k.name.split("_f")[0] for k in small.kernels] == ["matmul"]
    assert [k.name.split("_f")[0] for k in big.kernels] == ["matmul", "loop"]
    assert all("prange(" not in k.source for k in big.kernels)
    assert "chunk, chunks, worker" in big.kernels[1].source
    np.testing.assert_allclose(big(x, w, b), np.tanh(x @ w + b), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(big(x, w, b), small(x, w, b))
