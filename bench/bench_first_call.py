"""First calls in fresh processes: fusejit with a cold and a warm disk cache against JAX.

    python bench/bench_first_call.py                        # W1 W2 W3 W5 W7 W10, 1 and 2 threads, 3 reps
    python bench/bench_first_call.py W5 W7 --threads 1 --reps 5
    python bench/bench_first_call.py W1 --size tiny --quick --json out.json

What issue 12 (compile latency) asks about. ``fusejit bench --cold`` times each case's
first call in a worker that already ran the cases before it, so only the first case pays
for starting Numba (or XLA), and never times a warm disk cache. Here every measurement is
its own process, started the way ``harness.py`` starts its workers (the same thread
environment variables for the setting), pinned with ``taskset -c 0`` (1 thread) or
``-c 0,1`` (2 threads). For each case (``workloads.py``) and thread setting:

1. **fusejit cold**: ``fj.jit`` of the case's function (as ``harness.build_runner`` builds
   the "fused" configuration) with an empty ``FUSEJIT_CACHE_DIR``, fusejit's default
   compile settings (synchronous, ``compile_workers`` auto);
2. **fusejit warm**: the same in a new process on the cache directory the cold run filled;
3. **JAX cold**: ``jax.jit`` of the case's JAX port, a new process, no persistent
   compilation cache.

The three run interleaved (cold, warm, JAX; JAX first on odd repetitions), ``--reps``
times; the tables give medians. Each process reports the import time (``import fusejit``,
or ``import jax`` and ``jax.numpy``), the set-up (building the arguments: for JAX this
starts its CPU backend and copies the arrays in), the first call's wall and CPU time
(``process_time``: all its threads; for fusejit also the CPU time of its compile worker
processes, read after stopping them), the second call, and fusejit's compile-time summary
(``cache_info().compile_times[0]``: stages, and each kernel compiled here, by a worker or
loaded from disk). Each first call's result is compared with the JAX process's of the same
repetition (``harness.compare``, the case's tolerances); a mismatch is printed at once and
makes the exit status 1.

``--empty-numba-cache`` also gives the cold run an empty ``NUMBA_CACHE_DIR`` (the warm
run reuses it): fusejit's math library and GEMM helpers are ``njit(cache=True)`` and
otherwise come from Numba's cache beside their sources, warm after any earlier use of
this checkout: without the flag, "cold" is a new function on a used installation; with
it, the first use ever.

Every process imports a copy of ``fusejit/`` taken when the run starts (with Numba's caches
of its helpers), not the checkout: a file edited during the run would otherwise change the
generated kernels between a cold and a warm process, and the warm one would compile them
(seen on a shared checkout). ``--live`` imports the checkout instead.

Results: a table per thread setting and ``bench/results/first_call.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import pickle
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402 - beside this file; stdlib only at import

DEFAULT_WORKLOADS = ["W1", "W2", "W3", "W5", "W7", "W10"]
KINDS = {"cold": "fusejit cold", "warm": "fusejit warm", "jax": "JAX cold"}
# Issue 12's goals: fusejit's cold first call at most this many times JAX's ...
COLD_GOALS = {"W1": 3.0, "W2": 3.0, "W3": 3.0, "W5": 1.5, "W7": 2.0, "W10": 2.0}
# ... and its warm-cache first call (fresh process) faster than JAX's cold one.
WARM_GOALS = {"W5": 1.0, "W7": 1.0}
# Settings that would change what is measured: the run uses fusejit's defaults and a JAX
# without its persistent compilation cache.
UNSET = ("FUSEJIT_CACHE", "FUSEJIT_COMPILE", "FUSEJIT_COMPILE_WORKERS", "FUSEJIT_BACKEND",
         "JAX_COMPILATION_CACHE_DIR", "JAX_ENABLE_COMPILATION_CACHE")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD",
                   help=f"W1 ... W10 (default: {' '.join(DEFAULT_WORKLOADS)})")
    p.add_argument("--workloads", dest="workload_list", nargs="+", metavar="WORKLOAD", default=None,
                   help="the same as the positional names")
    p.add_argument("--threads", default="1,2", help="comma-separated thread settings (default 1,2)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of each measurement (default 3)")
    p.add_argument("--quick", action="store_true", help="one repetition (unless --reps says otherwise)")
    p.add_argument("--size", default="full", choices=("full", "small", "tiny"), help="problem sizes")
    p.add_argument("--empty-numba-cache", action="store_true",
                   help="cold runs also get an empty NUMBA_CACHE_DIR (the module docstring says why)")
    p.add_argument("--live", action="store_true",
                   help="import the checkout's fusejit, not a copy taken at the start (the module docstring says why)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one process may take")
    p.add_argument("--json", type=Path, default=harness.RESULTS_DIR / "first_call.json")
    # Internal: this process is one measurement.
    p.add_argument("--child", nargs=3, metavar=("KIND", "WORKLOAD", "INDEX"), help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.workloads = args.workloads + (args.workload_list or []) or DEFAULT_WORKLOADS
    args.reps = args.reps if args.reps is not None else 1 if args.quick else 3
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child, args.size, args.result)
    return run(args, list(sys.argv[1:] if argv is None else argv))


# ======================================================================================
# Child: one fresh process, one first call


def child_main(kind: str, workload: str, index: str, size: str, result: Path) -> int:
    """Imports fusejit or JAX (timed), builds the case, times its first and second call,
    pickles the first call's result to ``result`` and prints one JSON line."""
    start, cpu = time.perf_counter(), time.process_time()
    if kind == "jax":
        import jax
        import jax.numpy  # noqa: F401 - part of what a JAX user imports
    else:
        import fusejit  # noqa: F401
    report: dict[str, Any] = {"import_s": time.perf_counter() - start, "import_cpu_s": time.process_time() - cpu}
    threads = len(harness.usable_cpus())
    (chosen,) = [w for w in harness.load_workloads().WORKLOADS if w.key == workload]
    case = chosen.make(size)[int(index)]
    import warnings

    warnings.filterwarnings("ignore", message=".*donated buffers.*")  # JAX on CPU
    start = time.perf_counter()
    runner = harness.build_runner("jax" if kind == "jax" else "fused", case, threads)
    report["setup_s"] = time.perf_counter() - start
    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    out = runner.call()
    report.update(first_s=time.perf_counter() - start, first_cpu_s=time.process_time() - cpu)
    first = harness.tree_to_numpy(out, runner.to_numpy)  # before a donated buffer is reused
    start = time.perf_counter()
    runner.call()
    report["second_s"] = time.perf_counter() - start
    report.update(cpus=harness.usable_cpus(), rtol=case.rtol, atol=case.atol, blas=harness.blas_info())
    if kind == "jax":
        report["jax"] = {"version": jax.__version__, "compilation_cache_dir": jax.config.jax_compilation_cache_dir}
    else:
        report["fusejit"] = fusejit_info(runner.jitted)
    with open(result, "wb") as f:
        pickle.dump(first, f)
    print(json.dumps(report, default=str), flush=True)
    return 0


def fusejit_info(jitted: Any) -> dict[str, Any]:
    """The first compilation's time summary and kernel origins, fusejit's compile settings,
    and the CPU seconds of its compile workers (stopped here, so that they are counted:
    ``RUSAGE_CHILDREN`` covers only children that were waited for)."""
    import fusejit as fj
    from fusejit.runtime import compile_pool

    times = jitted.cache_info().compile_times[0]
    compile_pool.shutdown()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    origins: dict[str, int] = {}
    for k in times.kernels:
        origins[str(k.origin)] = origins.get(str(k.origin), 0) + 1
    return {"version": fj.__version__, "file": fj.__file__, "summary": times.summary(), "total_s": times.total, "origins": origins,
            "compile": fj.config.value("compile"), "compile_workers": compile_pool.worker_count(),
            "cache_dir": fj.config.value("cache_dir"), "workers_cpu_s": children.ru_utime + children.ru_stime}


# ======================================================================================
# Parent: the schedule of fresh processes


def snapshot_fusejit(tmp: Path) -> tuple[Path, str]:
    """A copy of the checkout's ``fusejit`` package under ``tmp`` (keeping the files' times,
    which Numba's cache index checks, and Numba's cached helpers; no bytecode) and the
    SHA-256 of its Python sources."""
    source = harness.REPO_ROOT / "fusejit"
    shutil.copytree(source, tmp / "fusejit", ignore=shutil.ignore_patterns("*.pyc"))
    digest = hashlib.sha256()
    for path in sorted((tmp / "fusejit").rglob("*.py")):
        digest.update(str(path.relative_to(tmp)).encode() + b"\0" + path.read_bytes())
    return tmp, digest.hexdigest()


def child_env(threads: int, kind: str, cache_dir: Path | None, numba_cache: Path | None,
              snapshot: Path | None) -> dict[str, str]:
    env = harness.worker_env(threads, str(cache_dir) if cache_dir else None)
    if snapshot is not None:  # ahead of the checkout (and of the editable install's finder)
        env["PYTHONPATH"] = os.pathsep.join((str(snapshot), env["PYTHONPATH"]))
    for var in UNSET:
        env.pop(var, None)
    if kind == "jax":
        env.pop("FUSEJIT_CACHE_DIR", None)  # workloads.py imports fusejit, which then never compiles
    if numba_cache is not None:
        env["NUMBA_CACHE_DIR"] = str(numba_cache)
    return env


def run_child(kind: str, key: str, index: int, threads: int, args: argparse.Namespace, workdir: Path,
              cache_dir: Path | None, numba_cache: Path | None, snapshot: Path | None) -> dict[str, Any]:
    """One measurement in a fresh, pinned process; its report plus the wall and CPU time
    of the whole process tree (this process runs one child at a time, so the change of
    its ``RUSAGE_CHILDREN`` is that child's, with the workers it waited for)."""
    cpus = ",".join(str(c) for c in harness.usable_cpus()[:threads])
    result = workdir / f"{kind}.pkl"
    command = ["taskset", "-c", cpus, sys.executable, str(Path(__file__).resolve()), "--child", kind, key,
               str(index), "--size", args.size, "--result", str(result)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env=child_env(threads, kind, cache_dir, numba_cache, snapshot), cwd=harness.REPO_ROOT,
                              capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "error": f"timed out after {args.timeout:.0f} s"}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record: dict[str, Any] = {"kind": kind, "process_wall_s": time.perf_counter() - start,
                              "process_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        record["error"] = f"exit {proc.returncode}: " + " | ".join(tail)[-400:]
        return record
    record.update(json.loads(lines[-1]))
    with open(result, "rb") as f:
        record["out"] = pickle.load(f)
    result.unlink()
    return record


def run(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    if shutil.which("taskset") is None:
        raise SystemExit("bench_first_call: needs taskset (util-linux) to pin each process")
    settings = harness.thread_settings(args.threads)
    chosen = harness.load_workloads().select(args.workloads)  # unknown names stop here
    # (workload key, index in its make(size), label); the cases themselves live in the children.
    cases = [(w.key, i, c.label) for w in chosen for i, c in enumerate(w.make(args.size))]
    machine = harness.machine_info()
    print(f"bench_first_call: {', '.join(label for _, _, label in cases)} at size {args.size}; thread settings "
          f"{settings}; {args.reps} repetition(s); load average {machine['load_average']}", flush=True)
    runs, failures = [], []
    with tempfile.TemporaryDirectory(prefix="fusejit-first-call-") as tmp:
        snapshot, source_sha = (None, None) if args.live else snapshot_fusejit(Path(tmp) / "snapshot")
        for threads in settings:
            records: dict[str, dict[str, list[dict[str, Any]]]] = {label: {k: [] for k in KINDS} for *_, label in cases}
            cpu_before = harness.cpu_seconds()
            for rep in range(args.reps):
                for key, index, label in cases:
                    workdir = Path(tmp) / f"t{threads}-{key}-{index}-r{rep}"
                    cache, numba_cache = workdir / "cache", (workdir / "numba" if args.empty_numba_cache else None)
                    cache.mkdir(parents=True)
                    order = ["cold", "warm", "jax"] if rep % 2 == 0 else ["jax", "cold", "warm"]
                    got = {kind: run_child(kind, key, index, threads, args, workdir,
                                           cache if kind != "jax" else None, numba_cache, snapshot)
                           for kind in order}
                    shutil.rmtree(workdir)
                    for kind in ("cold", "warm"):
                        check_against_jax(got[kind], got["jax"], f"[{threads}t rep {rep + 1}] {label} {KINDS[kind]}",
                                          failures)
                    for kind, record in got.items():
                        record.pop("out", None)
                        if "error" in record:
                            failures.append(f"[{threads}t rep {rep + 1}] {label} {KINDS[kind]}: {record['error']}")
                            harness._progress(f"ERROR: {failures[-1]}")
                        records[label][kind].append(record)
                    harness._progress(f"[{harness.setting_label(threads)}, rep {rep + 1}/{args.reps}] {label}: " + "  ".join(
                        f"{kind} {harness.fmt_time(got[kind].get('first_s'))}" for kind in KINDS))
            runs.append({"threads": threads, "cases": [summarize(key, label, records[label]) for key, _, label in cases],
                         "other_cores": harness.other_cores(cpu_before, harness.cpu_seconds())})
    report = {"command": " ".join(["bench/bench_first_call.py", *argv]), "size": args.size, "reps": args.reps,
              "empty_numba_cache": args.empty_numba_cache, "fusejit_snapshot_sha256": source_sha, "machine": machine, "load_average_after": os.getloadavg(),
              "versions": harness.package_versions(), "git": harness.git_info(),
              "wall_s": time.perf_counter() - started, "failures": failures, "runs": runs}
    print()
    print(format_report(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nJSON: {args.json}\ntotal time {report['wall_s']:.0f} s")
    return 1 if failures else 0


def check_against_jax(record: dict[str, Any], reference: dict[str, Any], what: str, failures: list[str]) -> None:
    """Compares a fusejit first call's result with JAX's (``record["check"]``); reports a
    mismatch at once."""
    if "out" not in record or "out" not in reference:
        return
    record["check"] = harness.compare(reference["out"], record["out"], record["rtol"], record["atol"])
    if not record["check"]["ok"]:
        failures.append(f"{what}: MISMATCH against JAX: {record['check']}")
        harness._progress(f"MISMATCH: {failures[-1]}")


def _median(records: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in records if r.get(field) is not None]
    return statistics.median(values) if values else None


def summarize(key: str, label: str, records: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the repetitions for each kind of process, and the ratios to JAX."""
    kinds = {}
    for kind, recs in records.items():
        ok = [r for r in recs if "error" not in r]
        medians = {f: _median(ok, f) for f in ("import_s", "setup_s", "first_s", "first_cpu_s", "second_s",
                                                "process_wall_s", "process_cpu_s")}
        workers = [r["fusejit"]["workers_cpu_s"] for r in ok if "fusejit" in r]
        medians["workers_cpu_s"] = statistics.median(workers) if workers else None
        checks = [r["check"] for r in ok if "check" in r]
        kinds[kind] = {**medians, "reps": len(ok), "errors": len(recs) - len(ok),
                       "check_ok": all(c["ok"] for c in checks) if checks else None,
                       "max_abs_err": max((c["max_abs_err"] for c in checks), default=None),
                       "summary": _median_summary(ok), "samples": recs}
    jax_first = kinds["jax"]["first_s"]
    ratios = {kind: kinds[kind]["first_s"] / jax_first if jax_first and kinds[kind]["first_s"] else None
              for kind in ("cold", "warm")}
    return {"key": key, "label": label, "kinds": kinds, "cold_over_jax": ratios["cold"],
            "warm_over_jax": ratios["warm"]}


def _median_summary(records: list[dict[str, Any]]) -> str | None:
    """The compile-time summary of the repetition whose first call was the median one."""
    timed = sorted((r for r in records if "fusejit" in r), key=lambda r: r["first_s"])
    return timed[(len(timed) - 1) // 2]["fusejit"]["summary"] if timed else None


# ======================================================================================
# Formatting


def goal_text(key: str) -> str:
    parts = [f"cold<={COLD_GOALS[key]:g}x"] if key in COLD_GOALS else []
    parts += [f"warm<{WARM_GOALS[key]:g}x"] if key in WARM_GOALS else []
    return " ".join(parts) or "-"


def goal_met(case: dict[str, Any]) -> str:
    """``yes``, or which goals the medians missed; ``-`` without goals or ratios."""
    missed, judged = [], False
    for kind, goals, fits in (("cold", COLD_GOALS, float.__le__), ("warm", WARM_GOALS, float.__lt__)):
        ratio = case[f"{kind}_over_jax"]
        if case["key"] in goals and ratio is not None:
            judged = True
            if not fits(ratio, goals[case["key"]]):
                missed.append(kind)
    return ("missed " + ", ".join(missed) if missed else "yes") if judged else "-"


def _check_text(kinds: dict[str, Any]) -> str:
    texts = []
    for kind in ("cold", "warm"):
        k = kinds[kind]
        if k["check_ok"] is False:
            texts.append(f"{kind} DIFF {k['max_abs_err']:.2g}")
        if k["errors"]:
            texts.append(f"{kind} {k['errors']} failed")
    if kinds["jax"]["errors"]:
        texts.append(f"jax {kinds['jax']['errors']} failed")
    if texts:
        return "; ".join(texts)
    return "ok" if kinds["cold"]["check_ok"] and kinds["warm"]["check_ok"] else "-"


def _ratio(x: float | None) -> str:
    return f"{x:.2f}x" if x is not None else "-"


def format_run(run: dict[str, Any]) -> str:
    """One thread setting: the first-call table, the per-process details and fusejit's
    compile-time summaries."""
    t = harness.fmt_time
    head = f"== {harness.setting_label(run['threads'])}: first call in a fresh process (median of the repetitions)"
    others = run.get("other_cores") or 0.0
    if others > harness.BUSY_CORES:
        head += (f"\n   WARNING: other processes used {others:.2f} cores on average during this setting: "
                 "these times are inflated and noisy")
    rows = [(c["label"], goal_text(c["key"]), *(t(c["kinds"][k]["first_s"]) for k in KINDS),
             _ratio(c["cold_over_jax"]), _ratio(c["warm_over_jax"]), goal_met(c), _check_text(c["kinds"]))
            for c in run["cases"]]
    main = harness._table(("case", "goal", *KINDS.values(), "cold/JAX", "warm/JAX", "met", "check"), rows)
    detail_rows = []
    for c in run["cases"]:
        for i, (kind, name) in enumerate(KINDS.items()):
            k = c["kinds"][kind]
            cpu = (k["first_cpu_s"] or 0.0) + (k["workers_cpu_s"] or 0.0) if k["first_cpu_s"] is not None else None
            detail_rows.append((c["label"] if i == 0 else "", name, t(k["import_s"]), t(k["setup_s"]), t(k["first_s"]),
                                t(cpu), t(k["second_s"]), t(k["process_wall_s"]), t(k["process_cpu_s"]), str(k["reps"])))
    details = harness._table(("case", "process", "import", "set-up", "first call", "first CPU", "second call",
                              "process", "process CPU", "reps"), detail_rows)
    summaries = [f"  {c['label']}, {name}: {c['kinds'][kind]['summary']}" for c in run["cases"]
                 for kind, name in (("cold", "cold"), ("warm", "warm")) if c["kinds"][kind]["summary"]]
    return "\n".join([head, main, "", details, "fusejit compile times (the median repetition):", *summaries])


def format_report(report: dict[str, Any]) -> str:
    m, v = report["machine"], report["versions"]
    versions = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    head = [f"machine: {m.get('cpu_model')}, {m.get('cpu_count')} CPUs{' (VM)' if m.get('hypervisor') else ''}; "
            f"load average before {_loads(m.get('load_average'))}, after {_loads(report.get('load_average_after'))}",
            f"versions: {versions}",
            "first call: tracing, compiling (or loading) and one run, after import and set-up; \"first CPU\" "
            "adds fusejit's compile workers; \"process\" is the whole process, start to exit"]
    sha = report.get("fusejit_snapshot_sha256")
    head.append(f"fusejit: a copy of the checkout's package taken at the start (sources sha256 {sha[:12]})" if sha
                else "fusejit: the live checkout (--live)")
    if report.get("empty_numba_cache"):
        head.append("cold runs had an empty NUMBA_CACHE_DIR too (fusejit's math library and GEMM helpers compiled)")
    blas = _first_blas(report)
    if blas:
        head.append(f"BLAS: {blas}")
    parts = ["\n".join(head), *map(format_run, report["runs"])]
    if report.get("failures"):
        parts.append("FAILURES:\n" + "\n".join(f"  {f}" for f in report["failures"]))
    return "\n\n".join(parts)


def _loads(values: Sequence[float] | None) -> str:
    return " ".join(f"{x:.2f}" for x in values) if values else "?"


def _first_blas(report: dict[str, Any]) -> str:
    """The BLAS libraries a fusejit process of each setting loaded, with thread counts."""
    texts = []
    for run in report["runs"]:
        for case in run["cases"]:
            sample = next((r for r in case["kinds"]["cold"]["samples"] if r.get("blas")), None)
            if sample:
                libs = ", ".join(f"{b['internal_api']} {b['version']} ({b['file']}) {b['num_threads']} threads"
                                 for b in sample["blas"] if b.get("internal_api") != "openmp")
                texts.append(f"[{run['threads']}t] {libs}")
                break
    return "; ".join(texts)


if __name__ == "__main__":
    sys.exit(main())
