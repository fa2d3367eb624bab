"""The on-disk cache: reuse across processes, repair of corrupted entries, and the
fallback to memory when the directory cannot be written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import config
from fusejit.codegen.cpu import gemm
from fusejit.codegen.target import CPU
from fusejit.runtime import cache, timings
from fusejit.runtime.cache import COUNTERS, CacheWarning

REPO = Path(__file__).resolve().parent.parent

def dense_relu(x, w, b):
    return fnp.maximum(x @ w + b, 0.0)


def test_compile_times_name_every_stage_and_kernel_and_where_it_came_from(tmp_path):
    x, w, b = np.ones((16, 8), np.float32), np.ones((8, 4), np.float32), np.zeros(4, np.float32)
    with config.override(cache=True, cache_dir=str(tmp_path)):
        f = fj.jit(dense_relu)
        compiled = f.lower(x, w, b).compile()
        f(x, w, b)
    info = f.cache_info()
    (times,) = info.compile_times
    assert times is compiled.compile_times
    assert [k.name for k in times.kernels] == [k.name for k in compiled.kernels]
    assert {k.origin for k in times.kernels} <= set(timings.KernelOrigin)
    assert times.total >= times.kernel_seconds + times.lower + times.trace > 0
    assert "compile " in str(info) and all(k.name in str(times) for k in compiled.kernels)


def test_two_functions_with_the_same_layer_share_its_kernels(tmp_path):
    """The second function's kernels are the first's (content-addressed, shape-generic):
    nothing is compiled again, not even for another batch size."""
    w, b = np.ones((8, 4), np.float32), np.zeros(4, np.float32)
    with config.override(cache=True, cache_dir=str(tmp_path)):
        fj.jit(dense_relu)(np.ones((16, 8), np.float32), w, b)
        other = fj.jit(lambda x, w, b: fnp.maximum(x @ w + b, 0.0))
        other(np.ones((32, 8), np.float32), w, b)
    (times,) = other.cache_info().compile_times
    assert times.kernels and times.count(timings.KernelOrigin.COMPILED) == 0


def test_two_layers_whose_fused_ops_come_in_another_order_share_one_module(tmp_path):
    """The second layer's kernel recomputes the first layer's constant 0.0, which therefore
    comes first among its ops, while its code is the first layer's: one module, compiled
    once (the op listing is not part of a module's text)."""
    rng = np.random.default_rng(3)
    x, w1, w2 = (rng.standard_normal(s).astype(np.float32) for s in ((16, 8), (8, 8), (8, 8)))
    b1, b2 = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)

    def two_layers(x, w1, b1, w2, b2):
        return fnp.maximum(dense_relu(x, w1, b1) @ w2 + b2, 0.0)

    with config.override(cache=True, cache_dir=str(tmp_path)):
        f = fj.jit(two_layers)
        out = f(x, w1, b1, w2, b2)
        steps = f.lower(x, w1, b1, w2, b2).executable().call_plan.steps
    first, second = steps
    assert [op.prim.name for op in first.lowered.group.ops] != [op.prim.name for op in second.lowered.group.ops]
    assert len({cache.module_name(CPU.print_module(sp.lowered.kernel)) for sp in steps}) == 1
    (times,) = f.cache_info().compile_times
    assert [k.origin for k in times.kernels][1] is not timings.KernelOrigin.COMPILED
    h = np.maximum(x @ w1 + b1, 0)
    np.testing.assert_allclose(out, np.maximum(h @ w2 + b2, 0), rtol=1e-5, atol=1e-6)


def test_compile_workers_compile_uncached_kernels_into_the_shared_cache(tmp_path):
    """With a worker, kernels the cache lacks are compiled in parallel (some by the worker,
    loaded from the disk cache here) and the results are those of compiling here."""
    from fusejit.runtime import compile_pool

    def step(w1, w2, x):  # constants no other test uses: kernels no process has compiled
        h = fnp.tanh(x @ w1 * 1.2345)
        return fnp.exp(h @ w2 - 0.6789).sum(axis=1), (h * h * 2.3456).mean(axis=0)

    rng = np.random.default_rng(0)
    args = (rng.standard_normal((6, 5), np.float32), rng.standard_normal((5, 3), np.float32),
            rng.standard_normal((4, 6), np.float32))
    try:
        # Numba modules: kernels printed as LLVM IR go to workers only in large numbers.
        with config.override(cache=True, cache_dir=str(tmp_path), compile_workers="1", llvm_kernels=False):
            compile_pool.start_workers(wait=True)  # a starting worker takes no kernel
            f = fj.jit(step)
            pooled = f(*args)
    finally:
        compile_pool.shutdown()
    for a, b in zip(fj.jit(step, backend="interpret")(*args), pooled, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
    (times,) = f.cache_info().compile_times
    origins = [k.origin for k in times.kernels]
    assert timings.KernelOrigin.WORKER in origins or timings.KernelOrigin.DISK in origins, times
    assert list(tmp_path.rglob("*.nobj")) or list(tmp_path.rglob("*.nbi")), "the worker wrote the cache"


def test_threads_racing_cold_first_calls_share_one_compile_worker_without_hanging(tmp_path):
    """Four threads compile four functions at once through one worker: each request gets
    its own reply (two threads reading one worker's pipe once deadlocked)."""
    from fusejit.runtime import compile_pool

    def make(c: float):  # several kernels each, none cached: every call feeds the worker
        def f(x):
            a = fnp.tanh(x @ x.T) * c
            b = fnp.sort(a, axis=0).sum(axis=1)
            d = (a @ a).max(axis=0) + b
            return fnp.exp(d - d.max()).cumsum() + fnp.sort(d)

        return f

    xs = [np.full((3 + k, 3), 0.1 * (k + 1), np.float32) for k in range(4)]
    fns = [make(0.4321 + k) for k in range(4)]
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def work(k: int) -> None:
        barrier.wait()
        results[k] = fj.jit(fns[k])(xs[k])

    try:
        with config.override(cache=True, cache_dir=str(tmp_path), compile_workers="1", llvm_kernels=False):
            threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            assert not any(t.is_alive() for t in threads), "a first call hung"
    finally:
        compile_pool.shutdown()
    for k in range(4):
        for a, b in zip(fns[k](xs[k]), results[k], strict=True):
            np.testing.assert_allclose(b, a, rtol=2e-6, atol=1e-6)


def test_background_compilation_answers_on_the_interpreter_then_switches_to_the_kernels(tmp_path):
    from fusejit.runtime import compile_pool

    def step(w, x):  # constants no other test uses
        h = fnp.tanh(x @ w * 1.4142)
        return (h * h).sum(axis=1) - 0.5772

    rng = np.random.default_rng(1)
    w, x = rng.standard_normal((5, 3), np.float32), rng.standard_normal((4, 5), np.float32)
    try:
        with config.override(cache=True, cache_dir=str(tmp_path), compile="background", compile_workers="1"):
            f = fj.jit(step)
            early = f(w, x)  # a worker is still starting: the interpreter answers
            exe = f.lower(w, x).executable()
            assert exe.interpreted_calls >= 1
            exe.wait(timeout=600)
            late = f(w, x)
    finally:
        compile_pool.shutdown()
    assert exe.ready and exe.interpreted_calls >= 1
    np.testing.assert_allclose(late, early, rtol=2e-6, atol=1e-6)
    (times,) = f.cache_info().compile_times
    assert times.interpreted_calls == exe.interpreted_calls and "interpreted meanwhile" in str(f.cache_info())
    assert times.kernels and times.count(timings.KernelOrigin.COMPILED) == 0  # all by the worker
    assert [k.name for k in exe.kernels] == [k.name for k in times.kernels]


def test_a_worker_answers_an_error_for_a_kernel_it_cannot_compile(tmp_path, monkeypatch, capsys):
    """The caller then compiles that kernel itself (``compile_in_parallel``)."""
    import io

    from fusejit.runtime import compile_worker

    request = {"source": "x = (", "kernel": "k", "arrays": ["float32"], "chunked": False, "cache_dir": str(tmp_path)}
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(request) + "\n"))
    compile_worker.main()
    reply = json.loads(capsys.readouterr().out)
    assert reply["ok"] is False and "SyntaxError" in reply["error"]


SCRIPT = """
import json
import numpy as np
import fusejit as fj
import fusejit.numpy as fnp
from fusejit.runtime.cache import COUNTERS

f = fj.jit(lambda x, y: (fnp.tanh(x @ y) + 1.0, fnp.sum(fnp.exp(x), axis=0)))
x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
y = np.ones((4, 2), np.float32)
a, b = f(x, y)
a, b = f(x, y)  # the second call runs the executable's runner again
import sys
print(json.dumps({"counters": COUNTERS.snapshot(), "a": a.tolist(), "b": b.tolist(),
                  "registries": "numba.np.arraymath" in sys.modules, "scipy_linalg": "scipy.linalg" in sys.modules}))
"""


# Kernels printed as Numba modules (llvm_kernels off) and as LLVM IR: each has its own files.
MACHINE_CODE = {"numba": ("*.nbi", "*.nbc"), "llvm": ("*.nobj",)}


def run_fresh_process(cache_dir: Path, printer: str = "numba") -> dict:
    env = dict(os.environ, FUSEJIT_CACHE_DIR=str(cache_dir), FUSEJIT_CACHE="1", FUSEJIT_BACKEND="cpu",
               PYTHONPATH=str(REPO), FUSEJIT_LLVM_KERNELS=str(int(printer == "llvm")))
    env.pop("NUMBA_CACHE_DIR", None)  # Numba's entries go beside the modules, under cache_dir
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("printer", ["numba", "llvm"])
def test_second_process_compiles_nothing_and_corrupted_entries_are_repaired(tmp_path, printer):
    first = run_fresh_process(tmp_path, printer)
    assert first["counters"]["numba_compiles"] > 0
    assert (first["counters"]["modules_written"] > 0) is (printer == "numba")
    second = run_fresh_process(tmp_path, printer)
    assert second["counters"]["numba_compiles"] == 0
    assert second["counters"]["modules_written"] == 0
    assert second["counters"]["numba_cache_loads"] > 0
    assert second["a"] == first["a"] and second["b"] == first["b"]
    # Loading from the disk cache skips Numba's registries (most of a warm first call), and
    # with SciPy's bundled OpenBLAS the GEMM does not import scipy.linalg either; kernels
    # compiled from LLVM IR never need the registries (the math library comes from
    # Numba's cache, filled at installation).
    assert first["registries"] is (printer == "numba") and not second["registries"]
    assert second["scipy_linalg"] is not gemm.CBLAS
    # Damage every cached machine-code entry: the next process discards and recompiles.
    damaged = [path for pattern in MACHINE_CODE[printer] for path in tmp_path.rglob(pattern)]
    assert damaged
    for path in damaged:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2] + b"\x00garbage")
    third = run_fresh_process(tmp_path, printer)
    assert third["counters"]["cache_repairs"] >= 1
    assert third["a"] == first["a"] and third["b"] == first["b"]
    fourth = run_fresh_process(tmp_path, printer)  # and the repaired entries are cached again
    assert fourth["counters"]["numba_compiles"] == 0 and fourth["counters"]["cache_repairs"] == 0
    assert third["registries"] is (printer == "numba") and not fourth["registries"]


DAMAGE = {
    "invalid utf-8": lambda data: b"\xff\xfe\xc3(" + data[4:],
    "empty": lambda data: b"",
    "random bytes": lambda data: np.random.default_rng(len(data)).bytes(max(len(data), 16)),
    "truncated": lambda data: data[: len(data) // 3],
}


@pytest.mark.parametrize("printer", ["numba", "llvm"])
def test_any_damage_to_any_cache_file_is_a_miss(tmp_path, printer):
    """Every file of a populated cache (module sources, Numba's index and machine code,
    compiled LLVM kernels, entry markers) damaged in each way: a fresh process still
    computes the same values."""
    populated = tmp_path / "populated"
    first = run_fresh_process(populated, printer)
    files = [p for p in populated.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} >= ({".py", ".nbi", ".nbc"} if printer == "numba" else {".nobj"})
    for kind, damage in DAMAGE.items():
        copy = tmp_path / kind.replace(" ", "-")
        shutil.copytree(populated, copy)
        for path in copy.rglob("*"):
            if path.is_file():
                path.write_bytes(damage(path.read_bytes()))
        again = run_fresh_process(copy, printer)
        assert again["a"] == first["a"] and again["b"] == first["b"], kind


def test_unwritable_cache_directory_falls_back_to_memory_with_one_warning(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with config.override(cache=True, cache_dir=str(blocker / "cache"), backend="cpu"), \
            warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        x = np.linspace(-1, 1, 10, dtype=np.float32)
        a = fj.jit(lambda x: fnp.cos(x) * 2.0)(x)
        b = fj.jit(lambda x: fnp.sin(x) - 1.0)(x)
    np.testing.assert_allclose(a, np.cos(x) * 2, rtol=1e-6)
    np.testing.assert_allclose(b, np.sin(x) - 1, rtol=1e-6)
    (warning,) = [w for w in seen if issubclass(w.category, CacheWarning)]
    assert warning.filename == __file__  # the user's line, not the compile path's


def test_a_damaged_module_file_is_rewritten(tmp_path):
    with config.override(cache=True, cache_dir=str(tmp_path)):
        source = "# fusejit test module\nVALUE = 41 + 1\n"
        name = cache.module_name(source)
        directory, disk = cache.module_directory()
        assert disk
        (directory / f"{name}.py").write_text("VALUE = 0  # truncated by a crash\n")
        assert cache.load_module(source).VALUE == 42
        assert (directory / f"{name}.py").read_text() == source


def test_version_key_names_the_versions_and_the_machine():
    key = cache.version_key()
    assert key.startswith(f"v{fj.__version__}-") and len(key) > 10
    assert COUNTERS.snapshot().keys() >= {"numba_compiles", "numba_cache_loads", "cache_repairs"}


def test_a_function_with_a_loop_compiles_its_stretches_and_bodies_as_one_batch(tmp_path, monkeypatch):
    """The kernels of the stretches around a scan and of its body go to the workers as one
    batch: compiled executable by executable, the caller waited at each one's end for the
    worker's last kernel. Every body and stretch is dumped once its kernels are loaded."""
    from fusejit.runtime import compile_pool

    batches: list[int] = []
    original = compile_pool.compile_in_parallel

    def counting(jobs, here, root):
        batches.append(len(jobs))
        return original(jobs, here, root)

    monkeypatch.setattr(compile_pool, "compile_in_parallel", counting)

    def model(w, xs):  # constants no other test uses: kernels no process has compiled
        h0 = fnp.tanh(xs[0] @ w * 1.6180)

        def cell(h, x):
            h = fnp.tanh(x @ w + h * 0.3183)
            return h, fnp.exp(h - 0.2718)

        h, ys = fj.lax.scan(cell, h0, xs)
        return (ys * 1.2599).sum(axis=0) + fnp.sort(h, axis=1)

    rng = np.random.default_rng(2)
    w, xs = rng.standard_normal((5, 5), np.float32), rng.standard_normal((7, 3, 5), np.float32)
    try:
        with config.override(cache=True, cache_dir=str(tmp_path / "cache"), compile_workers="1", llvm_kernels=False,
                             dump_dir=str(tmp_path / "dump")):
            f = fj.jit(model)
            got = f(w, xs)
    finally:
        compile_pool.shutdown()
    np.testing.assert_allclose(got, fj.jit(model, backend="interpret")(w, xs), rtol=2e-6, atol=1e-6)
    assert len(batches) == 1 and batches[0] >= 3, batches
    (times,) = f.cache_info().compile_times
    assert len(times.kernels) == len(f.lower(w, xs).compile().kernels) >= 3
    (body,) = (tmp_path / "dump").glob("*_cell_scan_body")  # dumped at the batch's end, with its runner
    assert "def run(" in (body / "runner.py").read_text()
    (whole,) = (tmp_path / "dump").glob("*_model")
    assert all(k.name in (whole / "compile_times.txt").read_text() for k in times.kernels)
    assert (whole / "runner.py").read_text().count("def run(") >= 3  # each stretch's and the body's


SWAP_SCRIPT = """
import json
import numpy as np
import fusejit as fj
from fusejit.runtime.cache import COUNTERS

x = np.linspace(0, 1, 5).astype(np.float32)
a, b = fj.jit(lambda x: np.tanh(x) + x)(x), fj.jit(lambda x: np.exp(x) * x)(x)
print(json.dumps({"a": a.tolist(), "b": b.tolist(), "repairs": COUNTERS.cache_repairs}))
"""


@pytest.mark.parametrize("printer", ["numba", "llvm"])
def test_two_kernels_cache_entries_swapped_are_misses_not_each_others_code(tmp_path, printer):
    """Two kernels of the same name in different modules, their Numba entries exchanged
    (modification times kept, so Numba's index takes them), or two compiled LLVM kernels'
    files: each is discarded and compiled again instead of running as the other kernel."""
    env = dict(os.environ, FUSEJIT_CACHE_DIR=str(tmp_path), FUSEJIT_CACHE="1", FUSEJIT_COMPILE_WORKERS="0",
               PYTHONPATH=str(REPO), FUSEJIT_LLVM_KERNELS=str(int(printer == "llvm")))
    env.pop("NUMBA_CACHE_DIR", None)

    def run() -> dict:
        done = subprocess.run([sys.executable, "-c", SWAP_SCRIPT], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])

    first = run()
    by_name: dict[str, list[Path]] = {}
    for path in tmp_path.rglob("*.nbc"):  # fj_<module hash>.<kernel>-<line>.py311.<n>.nbc
        by_name.setdefault(path.name.split(".", 1)[1], []).append(path)
    by_name["llvm"] = sorted(tmp_path.rglob("*.nobj"))  # fjl_<key>.nobj
    a, b = next(paths for paths in by_name.values() if len(paths) == 2)
    stat_a, stat_b = a.stat(), b.stat()
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    os.utime(a, ns=(stat_a.st_atime_ns, stat_a.st_mtime_ns))
    os.utime(b, ns=(stat_b.st_atime_ns, stat_b.st_mtime_ns))
    second = run()
    assert second["a"] == first["a"] and second["b"] == first["b"]
    assert second["repairs"] >= 1


def test_the_interpreter_backend_never_imports_numba(tmp_path):
    """Loops included: the reference interpreter runs them itself, without the CPU runtime."""
    script = ("import sys, numpy as np, fusejit as fj\n"
              "f = fj.jit(lambda x: fj.lax.scan(lambda c, x: (c + x, np.tanh(c * x)), 0.0, x))\n"
              "c, ys = f(np.arange(4.0))\n"
              "print(float(c), 'numba' in sys.modules)\n")
    env = dict(os.environ, FUSEJIT_BACKEND="interpret", FUSEJIT_CACHE_DIR=str(tmp_path), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6.0", "False"]
