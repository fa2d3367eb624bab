"""``fusejit bench``: runs the workloads of ``workloads.py`` in every configuration.

    fusejit bench [W1 ... W10] [--size full|small|tiny] [--quick] [--json F] [--plot F.png]
    python -m fusejit bench ...        python bench/harness.py ...

How a run goes (``bench/README.md`` says how to read the numbers):

1. For each thread setting (default: 1 thread pinned to one core, and all usable cores)
   the parent process starts *workers*: one per library family, so that two threading
   runtimes never share a process (Numba's OpenMP, OpenBLAS, PyTorch's own OpenMP and
   XLA's pool fought each other in one process on 2 cores, slowing tiny PyTorch calls
   from 0.3 ms to 96 ms). ``core`` runs NumPy eager and fusejit unfused/fused, ``jax``
   runs JAX, ``torch`` runs PyTorch eager and ``torch.compile``. Thread counts are
   environment variables read when a library is imported, so every setting gets fresh
   processes; each worker pins itself (``os.sched_setaffinity``) before importing.
2. The core worker measures a STREAM triad (Numba, arrays far larger than cache): the
   machine's bandwidth for this setting; and a float32 GEMM through the BLAS that
   fusejit's kernels call: the machine's GEMM rate for this setting. Every worker then
   reports the BLAS libraries its process loaded (threadpoolctl) and the environment
   variables that force a BLAS kernel (``BLAS_KERNEL_VARS``).
3. Per case, every worker builds its configurations, times the first call (tracing and
   compilation) on its own, checks the result against NumPy eager and warms up. Then the
   parent takes interleaved samples, one configuration after another (A B C A B C ...,
   the starting one rotating each round), with only one worker busy at a time, until the
   case's share of the time budget is spent. Each sample repeats a short call until it
   lasts about 2 ms; page faults are counted around it (``getrusage`` minor faults).
   A fused function with convolutions is then profiled (``Compiled.profile``, a few
   rounds): each conv kernel's time and GFLOP/s against the GEMM rate of step 2.
4. The parent prints the tables, writes JSON (machine, versions, every sample) and a bar
   chart of speed-ups over NumPy eager (when matplotlib is installed).

Nothing here is imported by ``fusejit``; JAX, PyTorch and matplotlib are optional
(``pip install 'fusejit[bench]'``) and their configurations are skipped when missing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# Configuration name -> the label the tables use. NumPy eager is the baseline.
CONFIGS = {
    "numpy": "NumPy eager",
    "unfused": "fusejit unfused",
    "fused": "fusejit fused",
    "jax": "JAX jit",
    "torch": "PyTorch eager",
    "torch.compile": "torch.compile",
}
BASELINE = "numpy"
# Worker processes: one per library family (see the module docstring). The core worker
# always runs: it measures STREAM and describes the cases.
GROUPS = {"core": ("numpy", "unfused", "fused"), "jax": ("jax",), "torch": ("torch", "torch.compile")}
GROUP_PACKAGE = {"jax": "jax", "torch": "torch"}
THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
BUSY_CORES = 0.2  # other processes using more cores than this on average: warn
VERSIONED = ("numpy", "numba", "llvmlite", "scipy", "jax", "jaxlib", "torch", "matplotlib")
# Environment variables that make a BLAS (or PyTorch) run an older or other kernel than the
# one it would pick for this CPU: every matmul-bound ratio changes with them. Also every
# ``MKL_*`` but the thread count. The benchmarks are meant to run with them unset
# (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE fusejit bench ...``).
BLAS_KERNEL_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "ATEN_CPU_CAPABILITY",
                    "DNNL_MAX_CPU_ISA", "ONEDNN_MAX_CPU_ISA")


@dataclass(frozen=True)
class Options:
    """How hard to measure; ``quick`` trades precision for time."""

    warmup: int = 2  # calls after the first (compiling) call, at least ...
    warmup_s: float = 0.05  # ... and for at least this long, so tiny calls get thousands
    min_reps: int = 5  # interleaved rounds per case, at least (3 when a round is long)
    max_reps: int = 200
    case_s: float = 5.0  # time for one case's rounds, at most (less when the budget is short)
    sample_s: float = 0.002  # a sample repeats a short call until it lasts about this long
    stream_mib: int = 512  # per STREAM array (3 arrays)
    stream_reps: int = 8
    gemm_n: int = 1024  # the GEMM rate: float32 [n, n] @ [n, n] ...
    gemm_reps: int = 5  # ... median of this many
    profile_reps: int = 5  # rounds of Compiled.profile for the conv kernels of a fused case

    @staticmethod
    def make(quick: bool, size: str) -> Options:
        opts = Options()
        if quick:
            opts = replace(opts, warmup=1, warmup_s=0.02, min_reps=3, max_reps=50, case_s=1.5, stream_reps=4,
                           gemm_reps=3, profile_reps=3)
        if size != "full":  # small problems: a small STREAM keeps the run short (and approximate)
            opts = replace(opts, stream_mib=64)
        return opts


# ======================================================================================
# Parent: command line, workers, scheduling


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="fusejit bench",
        description="Benchmark workloads W1-W10: NumPy eager vs fusejit unfused vs fusejit fused "
        "(vs JAX jit, PyTorch eager and torch.compile when installed). See bench/README.md.",
    )
    p.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="W1 ... W10 or a word of a title (default: all)")
    p.add_argument("--size", default="full", choices=("full", "small", "tiny"), help="problem sizes (default: full)")
    p.add_argument("--quick", action="store_true", help="fewer warm-ups and repetitions")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "bench.json", help="write the results here")
    p.add_argument("--plot", type=Path, default=RESULTS_DIR / "bench.png", help="bar chart of speed-ups (PNG)")
    p.add_argument("--no-plot", action="store_true", help="skip the chart")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread settings (default: 1 and the number of usable cores)")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument("--budget", type=float, default=270.0,
                   help="seconds for the whole run (default 270); repetitions shrink to fit, down to a minimum")
    p.add_argument("--cold", action="store_true",
                   help="empty fusejit compilation cache (FUSEJIT_CACHE_DIR) per thread setting: first calls "
                   "then include full compilation")
    # Internal: this process is a worker of one group, speaking JSON lines on stdin/stdout.
    p.add_argument("--worker", metavar="GROUP", choices=tuple(GROUPS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if str(REPO_ROOT) not in sys.path:  # benchmark this checkout's fusejit, installed or not
        sys.path.insert(0, str(REPO_ROOT))
    if args.worker:
        return worker_main(args)
    return run(args, list(sys.argv[1:] if argv is None else argv))


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def thread_settings(spec: str | None) -> list[int]:
    cores = len(usable_cpus())
    if spec is None:
        return [1] if cores == 1 else [1, cores]
    settings = [int(s) for s in spec.split(",") if s.strip()]
    if any(n < 1 or n > cores for n in settings):
        raise SystemExit(f"fusejit bench: --threads must be between 1 and {cores} (the usable cores)")
    return settings


def setting_label(threads: int) -> str:
    return "1 thread, pinned" if threads == 1 else f"{threads} threads"


def worker_env(threads: int, cache_dir: str | None) -> dict[str, str]:
    """A worker's environment: every library limited to ``threads`` threads."""
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    if threads == 1:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_ONE_THREAD}".strip()
    env.setdefault("JAX_PLATFORMS", "cpu")  # a CPU benchmark, even on a machine with a GPU
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    if cache_dir:
        env["FUSEJIT_CACHE_DIR"] = cache_dir
    return env


class WorkerDied(Exception):
    pass


class Worker:
    """A worker subprocess of one group; ``request`` sends a message and waits for the reply."""

    def __init__(self, group: str, args: argparse.Namespace, threads: int, cache_dir: str | None) -> None:
        self.group = group
        self.configs = [c for c in GROUPS[group] if c in args.configs]
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", group, "--threads", str(threads),
                   "--size", args.size, *(["--quick"] if args.quick else []), *args.workloads]
        self.proc = subprocess.Popen(command, env=worker_env(threads, cache_dir), cwd=REPO_ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.dead = ""

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        if self.dead:
            raise WorkerDied(self.dead)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.dead = f"the {self.group} worker died (exit {self.proc.poll()}) during {op!r}"
            raise WorkerDied(self.dead)
        reply = json.loads(line)
        if "fatal" in reply:
            raise RuntimeError(f"{self.group} worker: {reply['fatal']}")
        return reply

    def close(self) -> None:
        if not self.dead and self.proc.poll() is None:
            try:
                self.request("quit")
            except (WorkerDied, RuntimeError):
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """The whole benchmark: every thread setting, then the report."""
    started = time.perf_counter()
    settings = thread_settings(args.threads)
    load_workloads().select(args.workloads)  # unknown names stop here, before any worker starts
    machine = machine_info()  # before the workers start: the load average is the others'
    groups = ["core"]
    for group in ("jax", "torch"):
        if any(c in args.configs for c in GROUPS[group]):
            groups.append(group)
    print(f"fusejit bench: {' '.join(args.workloads) or 'all workloads'} at size {args.size}"
          f"{' (quick)' if args.quick else ''}; thread settings {settings}; configurations "
          f"{', '.join(args.configs)}; budget {args.budget:.0f} s", flush=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="fusejit-bench-") as tmp:
        for i, threads in enumerate(settings):
            left = args.budget - (time.perf_counter() - started)
            deadline = time.perf_counter() + max(left / (len(settings) - i), 10.0)
            cache_dir = str(Path(tmp) / f"cache{threads}") if args.cold else None
            runs.append(run_setting(args, threads, groups, deadline, cache_dir))
    report = {
        "command": " ".join(["fusejit bench", *argv]),
        "size": args.size,
        "quick": args.quick,
        "cold_cache": args.cold,
        "machine": machine,
        "versions": {**package_versions(), **runs[0].get("versions", {})},
        "git": git_info(),
        "wall_s": time.perf_counter() - started,
        "runs": runs,
    }
    print()
    print(format_report(report))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"\nJSON: {args.json}")
    if not args.no_plot:
        print(plot(report, args.plot))
    print(f"total time {report['wall_s']:.0f} s")
    return 0 if all(run.get("cases") for run in runs) else 1


def run_setting(args: argparse.Namespace, threads: int, groups: list[str], deadline: float,
                cache_dir: str | None) -> dict[str, Any]:
    """One thread setting: starts the workers, measures every case, stops the workers."""
    opts = Options.make(args.quick, args.size)
    label = setting_label(threads)
    skipped: dict[str, str] = {}
    for group in groups[1:]:
        if importlib.util.find_spec(GROUP_PACKAGE[group]) is None:
            skipped.update({c: f"{GROUP_PACKAGE[group]} not installed" for c in GROUPS[group]})
    workers = [Worker(g, args, threads, cache_dir) for g in groups
               if g == "core" or not all(c in skipped for c in GROUPS[g])]
    core = workers[0]
    run_info: dict[str, Any] = {"threads": threads, "cases": []}
    cpu_before = cpu_seconds()
    try:
        info = core.request("info")
        run_info.update({k: info[k] for k in ("cpus", "env", "backend", "fusejit_cache", "versions")})
        for worker in workers[1:]:  # every worker has started up before anything is timed
            worker.request("info")
        stream = core.request("stream")
        run_info.update(stream=stream, stream_gbs=stream["gbs"])
        gemm = core.request("gemm")
        run_info.update(gemm=gemm, gemm_gflops=gemm["gflops"])
        blas = {w.group: w.request("blas") for w in workers}  # after the GEMM: SciPy's OpenBLAS is loaded
        libraries = {group: reply["libraries"] for group, reply in blas.items()}
        run_info.update(blas=None if all(v is None for v in libraries.values()) else libraries,
                        blas_env=blas["core"]["env"])
        _progress(f"[{label}] CPUs {info['cpus']}; STREAM triad {stream['gbs']:.1f} GB/s "
                  f"({stream['array_mib']} MiB arrays); GEMM {gemm['gflops']:.1f} GFLOP/s ({gemm['library']}); "
                  f"fusejit backend {info['backend']}")
        if format_blas(run_info):
            _progress(f"[{label}] {format_blas(run_info)}")
        cases = info["cases"]
        for i, case in enumerate(cases):
            case_start = time.perf_counter()
            left = deadline - case_start
            case_s = min(opts.case_s, max(0.3, 0.6 * left / (len(cases) - i)))
            result = measure_case(i, case, workers, args.configs, skipped, opts, case_s)
            for record in result["results"]:
                if record.get("gbs"):
                    record["frac_stream"] = record["gbs"] / stream["gbs"]
            for row in result.get("conv", {}).get("kernels", []):
                row["of_gemm"] = row["gflops"] / gemm["gflops"] if row.get("gflops") and gemm["gflops"] else None
            run_info["cases"].append(result)
            timings = "  ".join(f"{r['config']} {fmt_time(r.get('median_s'))}" for r in result["results"])
            _progress(f"[{label}] {result['label']}: {timings}  ({time.perf_counter() - case_start:.1f} s)")
    except (WorkerDied, RuntimeError) as e:
        _progress(f"[{label}] stopped: {e}")
        run_info["error"] = str(e)
    finally:
        for worker in workers:
            worker.close()
        run_info["other_cores"] = other_cores(cpu_before, cpu_seconds())
    run_info.setdefault("options", opts.__dict__)
    return run_info


def measure_case(index: int, case: dict[str, Any], workers: list[Worker], configs: list[str],
                 skipped: dict[str, str], opts: Options, case_s: float) -> dict[str, Any]:
    """Sets every configuration of case ``index`` up, then samples them interleaved."""
    records = {c: {"config": c} for c in configs}
    for config, why in skipped.items():
        if config in records:
            records[config]["skipped"] = why
    ready: list[tuple[Worker, str]] = []
    for worker in workers:
        if not worker.configs:
            continue
        try:
            reply = worker.request("setup", case=index, configs=worker.configs)
        except WorkerDied as e:
            for c in worker.configs:
                records[c]["error"] = str(e)
            continue
        for config, record in reply["records"].items():
            records[config].update(record)
            if "estimate_s" in record:
                ready.append((worker, config))
    numbers = {c: max(1, math.ceil(opts.sample_s / records[c]["estimate_s"])) for _, c in ready}
    round_s = sum(numbers[c] * records[c]["estimate_s"] for _, c in ready)
    min_reps = opts.min_reps if opts.min_reps * round_s <= 2 * case_s else min(3, opts.min_reps)
    reps = int(min(opts.max_reps, max(min_reps, case_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {c: [] for _, c in ready}
    faults = dict.fromkeys(samples, 0)
    for rep in range(reps):
        k = rep % max(len(ready), 1)
        for worker, config in ready[k:] + ready[:k]:  # interleaved, rotating who goes first
            if worker.dead:
                continue
            if "error" in records[config]:
                continue
            try:
                reply = worker.request("sample", config=config, number=numbers[config])
            except WorkerDied as e:
                records[config]["error"] = str(e)
                continue
            if "error" in reply:  # this configuration failed on a later call: no more samples
                records[config]["error"] = reply["error"]
                continue
            samples[config].append(reply["elapsed_s"] / numbers[config])
            faults[config] += reply["faults"]
    for worker in workers:
        if worker.configs and not worker.dead:
            try:
                for config, extra in worker.request("finish", case=index)["records"].items():
                    records[config].update(extra)
            except WorkerDied:
                pass
    for config, values in samples.items():
        if not values or "error" in records[config]:
            continue
        s = sorted(values)
        q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
        records[config].update(median_s=statistics.median(s), p25_s=q[0], p75_s=q[2], min_s=s[0],
                               reps=len(s), number=numbers[config], samples_s=s,
                               faults_per_call=faults[config] / (len(s) * numbers[config]))
        if case["bytes_moved"]:
            records[config]["gbs"] = case["bytes_moved"] / records[config]["median_s"] / 1e9
    base = records.get(BASELINE, {}).get("median_s")
    for record in records.values():
        if base and record.get("median_s"):
            record["speedup"] = base / record["median_s"]
    conv = records.get("fused", {}).pop("conv", None)
    return {**case, "results": [records[c] for c in configs], **({"conv": conv} if conv else {})}


def cpu_seconds() -> tuple[float, float, float]:
    """(wall clock, CPU seconds all processes used, CPU seconds this process and its
    finished workers used), to tell how busy *other* processes kept the machine."""
    import resource

    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle, iowait
    except (OSError, ValueError):
        busy = math.nan
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return time.perf_counter(), busy, own


def other_cores(before: tuple[float, float, float], after: tuple[float, float, float]) -> float | None:
    """The average number of cores used by other processes (and stolen) between two
    ``cpu_seconds()`` readings; ``None`` without /proc/stat."""
    wall = after[0] - before[0]
    value = ((after[1] - before[1]) - (after[2] - before[2])) / wall if wall > 0 else math.nan
    return None if math.isnan(value) else max(value, 0.0)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def machine_info() -> dict[str, Any]:
    """CPU model, cores, caches, memory, OS: read from /proc and sysfs."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(),
                            "load_average": os.getloadavg()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else platform.processor()
        flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "") + " "
        info["simd"] = [f for f in ("avx2", "avx512f", "amx_tile") if f" {f} " in flags]
        info["hypervisor"] = " hypervisor " in flags
    except OSError:
        info["cpu_model"] = platform.processor()
    try:
        info["memory_gib"] = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    caches = {}
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            kind = {"Data": "d", "Instruction": "i"}.get((index / "type").read_text().strip(), "")
            caches[f"L{(index / 'level').read_text().strip()}{kind}"] = (index / "size").read_text().strip()
        except OSError:
            continue
    info["caches"] = caches
    return info


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_info() -> dict[str, Any]:
    """The commit benchmarked and whether tracked files had local changes (read-only git)."""
    try:
        def git(*a: str) -> str:
            return subprocess.run(["git", *a], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10).stdout

        return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


# ======================================================================================
# Formatting: tables, summary, chart


def fmt_time(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale or unit == "us":
            value = seconds / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError


def _fmt_count(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.0f}" if x >= 10 or x == 0 else f"{x:.1f}"


def format_run(run: dict[str, Any]) -> str:
    """One thread setting's table: a row per (case, configuration)."""
    stream = run.get("stream_gbs")
    head = f"== {setting_label(run['threads'])} (CPUs {run.get('cpus')}); fusejit backend: {run.get('backend')}"
    if stream:
        head += f"; STREAM triad {stream:.1f} GB/s"
    if run.get("gemm_gflops"):
        best = run.get("gemm", {}).get("best_gflops")
        head += f"; GEMM {run['gemm_gflops']:.1f} GFLOP/s" + (f" (best {best:.1f})" if best else "")
    if format_blas(run):
        head += f"\n   {format_blas(run)}"
    if run.get("error"):
        head += f"\n   stopped early: {run['error']}"
    others = run.get("other_cores") or 0.0
    if others > BUSY_CORES:
        head += (f"\n   WARNING: other processes used {others:.2f} cores on average during this setting "
                 "(or the hypervisor stole them): these times are inflated and noisy")
    cols = ("case", "configuration", "first call", "median", "spread", "vs NumPy", "faults/call", "GB/s",
            "of STREAM", "kernels", "check")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for case in run["cases"]:
        if case.get("note"):
            notes.append(f"{case['label']}: {case['note']}")
        for i, r in enumerate(case["results"]):
            label = case["label"] if i == 0 else ""
            if "median_s" not in r:
                rows.append((label, CONFIGS[r["config"]], r.get("skipped") or ("error: " + r.get("error", "?"))[:70]))
                continue
            spread = (r["p75_s"] - r["p25_s"]) / r["median_s"] * 100 if r["median_s"] else 0.0
            speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
            gbs = f"{r['gbs']:.1f}" if r.get("gbs") else "-"
            frac = f"{r['frac_stream'] * 100:.0f}%" if r.get("frac_stream") else "-"
            kernels = str(r["kernels"]) if r.get("kernels") is not None else "-"
            if r.get("cache_misses", 1) > 1:
                kernels += f" ({r['cache_misses']} traces!)"
            check = r.get("check", {})
            check_text = "ok" if check.get("ok") else f"DIFF {check.get('max_abs_err', '?'):.2g}" if check else "-"
            rows.append((label, CONFIGS[r["config"]], fmt_time(r["first_call_s"]), fmt_time(r["median_s"]),
                         f"{spread:.0f}%", speed, _fmt_count(r.get("faults_per_call")), gbs, frac, kernels, check_text))
    lines = [head, _table(cols, rows)]
    if notes:
        lines += ["notes:"] + [f"  {n}" for n in notes]
    conv = format_conv(run)
    if conv:
        lines += ["", conv]
    return "\n".join(lines)


def format_blas(run: dict[str, Any]) -> str:
    """``BLAS: openblas 0.3.30 Haswell (scipy), ...`` for the BLAS libraries the setting's
    workers loaded (OpenMP runtimes left out), and the variables that forced a kernel;
    without a record of the libraries (threadpoolctl not installed) only the latter."""
    libraries = run.get("blas")
    texts: list[str] = []
    for lib in (lib for libs in (libraries or {}).values() for lib in libs or ()):
        if lib.get("internal_api") in (None, "openmp"):
            continue
        version = ".".join(str(lib.get("version") or "?").split(".")[:3])
        text = " ".join(x for x in (lib["internal_api"], version, lib.get("architecture")) if x)
        text += f" ({lib.get('package') or lib.get('file')})"
        if text not in texts:
            texts.append(text)
    env = run.get("blas_env") or {}
    forced = (f"kernel FORCED by {', '.join(f'{k}={v}' for k, v in env.items())} (rerun with "
              f"env {' '.join(f'-u {k}' for k in env)} ...)") if env else ""
    if libraries is None:
        return f"BLAS {forced}" if forced else ""
    return f"BLAS: {', '.join(texts) or 'none found'}" + (f"; {forced}" if forced else "")


def format_conv(run: dict[str, Any]) -> str:
    """The conv kernels of the fused configurations (``conv_kernels``): a row per kernel,
    and per case with several the sum; empty when no case has one."""
    rows: list[tuple[str, ...]] = []
    gemm = run.get("gemm_gflops")
    for case in run["cases"]:
        conv = case.get("conv")
        if not conv:
            continue
        if conv.get("error"):
            rows.append((case["label"], "", "profile failed: " + conv["error"][:90]))
            continue
        kernels = conv["kernels"]
        for i, k in enumerate(kernels):
            rows.append((case["label"] if i == 0 else "", k["name"] + ("||" if k.get("parallel") else ""), k["pass"],
                         fmt_time(k["median_s"]), f"{k['share'] * 100:.1f}%", _fmt_flops(k.get("flops")),
                         f"{k['gflops']:.2f}" if k.get("gflops") else "-",
                         f"{k['of_gemm'] * 100:.1f}%" if k.get("of_gemm") else "-"))
        if len(kernels) > 1:
            total_s = sum(k["median_s"] for k in kernels)
            flops = sum(k.get("flops") or 0 for k in kernels)
            rate = flops / total_s / 1e9 if total_s > 0 else None
            rows.append(("", f"(all {len(kernels)}; step {fmt_time(conv['call_median_s'])})", "",
                         fmt_time(total_s), f"{total_s / conv['call_median_s'] * 100:.1f}%", _fmt_flops(flops),
                         f"{rate:.2f}" if rate else "-", f"{rate / gemm * 100:.1f}%" if rate and gemm else "-"))
    if not rows:
        return ""
    title = "conv kernels (fusejit fused, Compiled.profile"
    if gemm:
        title += f"; GEMM {gemm:.1f} GFLOP/s on {_threads(run.get('gemm', {}).get('threads'))} measured in this run"
    # The executables' GEMMs may run on fewer BLAS threads (fusejit/runtime/blas.py) than the reference.
    blas_threads = {case["conv"].get("blas_threads") for case in run["cases"] if case.get("conv")}
    if len(blas_threads) == 1 and None not in blas_threads:
        title += f"; the kernels' GEMMs on {_threads(blas_threads.pop())}"
    title += ")"
    cols = ("case", "kernel", "pass", "median", "of step", "flops", "GFLOP/s", "of GEMM")
    return title + "\n" + _table(cols, rows, left=(0, 1, 2))


def _threads(n: int | None) -> str:
    return "? threads" if n is None else f"{n} thread{'s' if n != 1 else ''}"


def _fmt_flops(flops: float | None) -> str:
    if not flops:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if flops >= scale:
            return f"{flops / scale:.3g} {unit}"
    return f"{flops:.0f}"


def _table(cols: Sequence[str], rows: list[tuple[str, ...]], left: Sequence[int] = (0, 1)) -> str:
    widths = [len(c) for c in cols]
    for row in rows:
        if len(row) == len(cols):
            widths = [max(w, len(x)) for w, x in zip(widths, row, strict=True)]
    left_aligned = set(left)

    def line(row: Sequence[str]) -> str:
        if len(row) != len(cols):  # a skipped/failed configuration: free text after the names
            return "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2]]).rstrip()
        cells = [x.ljust(w) if i in left_aligned else x.rjust(w)
                 for i, (x, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])


def format_summary(report: dict[str, Any]) -> str:
    """Speed-ups over NumPy eager, one column per configuration, ``1 thread / N threads``."""
    runs = report["runs"]
    configs = [c for c in CONFIGS if c != BASELINE and any(
        r["config"] == c for run in runs for case in run["cases"] for r in case["results"])]
    labels = []
    for run in runs:
        for case in run["cases"]:
            if case["label"] not in labels:
                labels.append(case["label"])
    rows = []
    for label in labels:
        row = [label]
        for config in configs:
            values = []
            for run in runs:
                case = next((c for c in run["cases"] if c["label"] == label), None)
                r = next((r for r in case["results"] if r["config"] == config), None) if case else None
                values.append(f"{r['speedup']:.2f}x" if r and r.get("speedup") else "-")
            row.append(" / ".join(values))
        rows.append(tuple(row))
    settings = " / ".join(setting_label(run["threads"]).split(",")[0] for run in runs)
    title = f"== speed-up over NumPy eager (median time ratio, >1 is faster; {settings})"
    return title + "\n" + _table(("case", *(CONFIGS[c] for c in configs)), rows)


def format_report(report: dict[str, Any]) -> str:
    m = report["machine"]
    v = report["versions"]
    versions = ", ".join(f"{k} {x}" for k, x in v.items() if x)
    head = [f"machine: {m.get('cpu_model')}, {m.get('cpu_count')} CPUs, caches {m.get('caches')}, "
            f"{m.get('memory_gib')} GiB{' (VM)' if m.get('hypervisor') else ''}", f"versions: {versions}"]
    missing = [k for k in ("jax", "torch") if not v.get(k)]
    if missing:
        head.append(f"not installed (skipped): {', '.join(missing)}  -- pip install 'fusejit[bench]'")
    return "\n\n".join(["\n".join(head), *map(format_run, report["runs"]), format_summary(report)])


def plot(report: dict[str, Any], path: Path) -> str:
    """A bar chart of speed-ups over NumPy eager per case, one panel per thread setting."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot: matplotlib is not installed, no chart (pip install 'fusejit[bench]')"
    runs = [run for run in report["runs"] if run["cases"]]
    if not runs:
        return "plot: no results to plot"
    fig, axes = plt.subplots(len(runs), 1, figsize=(13, 4.2 * len(runs)), squeeze=False)
    for ax, run in zip(axes[:, 0], runs, strict=True):
        labels = [c["label"] for c in run["cases"]]
        configs = [c for c in CONFIGS if any(r["config"] == c for case in run["cases"] for r in case["results"])]
        width = 0.8 / max(len(configs), 1)
        for k, config in enumerate(configs):
            values = []
            for case in run["cases"]:
                r = next((r for r in case["results"] if r["config"] == config), None)
                values.append(r["speedup"] if r and r.get("speedup") else 0.0)
            xs = [i + (k - (len(configs) - 1) / 2) * width for i in range(len(labels))]
            bars = ax.bar(xs, values, width, label=CONFIGS[config])
            for bar, value in zip(bars, values, strict=True):
                if value:
                    ax.annotate(f"{value:.2g}", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                                va="bottom", fontsize=6)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(labels)), labels, rotation=15, fontsize=8)
        ax.set_ylabel("speed-up over NumPy eager")
        ax.set_title(f"{setting_label(run['threads'])}; fusejit backend {run.get('backend')}")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"fusejit bench ({report['machine'].get('cpu_model')}, size {report['size']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot: {path}"


# ======================================================================================
# Worker: one group of configurations in its own process


def load_workloads() -> Any:
    """``workloads.py`` beside this file, as a module (``bench/`` is not a package)."""
    name = "fusejit_bench_workloads"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH_DIR / "workloads.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class Skip(Exception):
    """A configuration that cannot run here (library not installed, no port)."""


@dataclass(eq=False)
class Runner:
    """One configuration of one case, with its own copy of the arguments."""

    config: str
    fn: Callable[..., Any]
    args: tuple
    carry: Callable[[tuple, Any], tuple] | None
    sync: Callable[[Any], Any] | None = None  # waits for asynchronous results (JAX)
    to_numpy: Callable[[Any], Any] = field(default=lambda x: x)
    jitted: Any = None  # the fj.jit object: kernel counts and cache_info

    def call(self) -> Any:
        out = self.fn(*self.args)
        if self.sync is not None:
            out = self.sync(out)
        if self.carry is not None:
            self.args = self.carry(self.args, out)
        return out

    def loop(self, number: int) -> None:
        """``number`` calls with as little Python around them as possible."""
        if self.carry is None and self.sync is None:
            fn, args = self.fn, self.args
            for _ in range(number):
                fn(*args)
        else:
            for _ in range(number):
                self.call()


def tree_to_numpy(tree: Any, leaf: Callable[[Any], Any]) -> Any:
    """A copy of a pytree of any library's arrays as NumPy arrays."""
    import numpy as np

    if isinstance(tree, dict):
        return {k: tree_to_numpy(v, leaf) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        return [tree_to_numpy(x, leaf) for x in tree]
    return np.array(leaf(tree), copy=True)


def _leaves(tree: Any) -> list[Any]:
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _leaves(tree[k])]
    if isinstance(tree, (tuple, list)):
        return [x for t in tree for x in _leaves(t)]
    return [tree]


def compare(reference: Any, result: Any, rtol: float, atol: float) -> dict[str, Any]:
    """Whether ``result`` matches ``reference`` leaf by leaf (dict keys sorted): equal
    shapes, NaN where the reference has NaN, ``|a - b| <= atol + rtol |b|`` elsewhere;
    also the largest absolute difference."""
    import numpy as np

    ref, got = _leaves(reference), _leaves(result)
    if len(ref) != len(got):
        return {"ok": False, "max_abs_err": math.inf, "why": f"{len(got)} outputs, expected {len(ref)}"}
    ok, worst = True, 0.0
    for i, (a, b) in enumerate(zip(got, ref, strict=True)):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return {"ok": False, "max_abs_err": math.inf, "why": f"output {i}: shape {a.shape}, expected {b.shape}"}
        both_nan = np.isnan(a) & np.isnan(b)
        err = np.where(both_nan, 0.0, np.abs(a - b))
        err = np.where(np.isnan(err), math.inf, err)
        if err.size:
            worst = max(worst, float(err.max()))
            ok &= bool(np.all(err <= atol + rtol * np.abs(np.where(both_nan, 0.0, b))))
    return {"ok": ok, "max_abs_err": worst}


def copy_args(args: Any) -> Any:
    """A deep copy of the NumPy arrays in a pytree (donation may consume the originals)."""
    import numpy as np

    if isinstance(args, dict):
        return {k: copy_args(v) for k, v in args.items()}
    if isinstance(args, (tuple, list)):
        return type(args)(copy_args(v) for v in args)
    return args.copy() if isinstance(args, (np.ndarray, np.generic)) else args


def build_runner(config: str, case: Any, threads: int) -> Runner:
    """A ready-to-call runner of ``case`` in ``config``; raises ``Skip`` when impossible."""
    if config == "numpy":
        return Runner(config, case.fn, copy_args(case.args), case.carry)
    if config in ("fused", "unfused"):
        import fusejit as fj

        jitted = fj.jit(case.fn, fuse=config == "fused", donate_argnums=case.donate_argnums)
        return Runner(config, jitted, copy_args(case.args), case.carry, jitted=jitted)
    if config == "jax":
        if case.jax is None:
            raise Skip("no JAX version")
        try:
            import jax
        except ImportError:
            raise Skip("JAX not installed") from None
        port = case.jax()
        fn = jax.jit(port.fn, donate_argnums=port.donate_argnums)
        return Runner(config, fn, port.args, port.carry, sync=jax.block_until_ready)
    if config in ("torch", "torch.compile"):
        if case.torch is None:
            raise Skip("no PyTorch version")
        try:
            import torch
        except ImportError:
            raise Skip("PyTorch not installed") from None
        torch.set_num_threads(threads)
        port = case.torch(config == "torch.compile")
        return Runner(config, port.fn, port.args, port.carry, to_numpy=lambda t: t.detach().numpy())
    raise ValueError(f"unknown configuration {config!r}")


def stream_triad(threads: int, opts: Options) -> dict[str, Any]:
    """The machine's memory bandwidth for this setting: the best of ``stream_reps`` STREAM
    triads ``a = b + s*c`` over float64 arrays of ``stream_mib`` MiB each, counted as STREAM
    counts (3 arrays per pass, no write-allocate traffic); serial Numba, and with more
    than one thread also parallel (``prange``), whichever is faster."""
    import numba
    import numpy as np

    from fusejit.runtime import threads as fusejit_threads

    # The triad's prange would launch Numba's pool first, with spinning idle threads;
    # fusejit's kernels need it started as fusejit starts it (runtime/threads.py).
    fusejit_threads.start()
    n = opts.stream_mib * 2**20 // 8
    a, b, c = np.empty(n), np.full(n, 1.0), np.full(n, 2.0)
    info: dict[str, Any] = {"array_mib": opts.stream_mib, "reps": opts.stream_reps}
    for parallel in (False, True) if threads > 1 else (False,):
        kernel = _triad_kernel(numba, parallel)
        kernel(a[:1024], b[:1024], c[:1024], 3.0)  # compiles
        best = math.inf
        for _ in range(opts.stream_reps):
            start = time.perf_counter()
            kernel(a, b, c, 3.0)
            best = min(best, time.perf_counter() - start)
        assert a[0] == 7.0 and a[-1] == 7.0
        info["parallel_gbs" if parallel else "serial_gbs"] = 3 * a.nbytes / best / 1e9
    info["gbs"] = max(info.get("serial_gbs", 0.0), info.get("parallel_gbs", 0.0))
    if threads > 1:
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:
            pass
    return info


def _triad_kernel(numba: Any, parallel: bool) -> Callable[..., Any]:
    def triad(a: Any, b: Any, c: Any, s: float) -> None:
        for i in numba.prange(a.shape[0]):
            a[i] = b[i] + s * c[i]

    return numba.njit(parallel=parallel, fastmath=True, error_model="numpy")(triad)


def gemm_gflops(threads: int, opts: Options) -> dict[str, Any]:
    """The machine's float32 GEMM rate for this setting: the median of ``gemm_reps``
    products ``[n, n] @ [n, n]`` (``n = gemm_n``, after one unmeasured) on ``threads``
    threads, through SciPy's bundled OpenBLAS ``cblas_sgemm``, the GEMM that fusejit's
    conv and matmul kernels call (``fusejit.codegen.cpu.gemm.openblas``); NumPy's
    ``matmul`` where that library is missing. The library's thread count is restored.
    ``gflops`` is of the median, the reference the conv kernels' medians are compared
    with (a loaded machine slows both alike); ``best_gflops`` of the fastest."""
    import ctypes

    import numpy as np

    from fusejit.codegen.cpu.gemm import openblas

    n = opts.gemm_n
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), np.float32), rng.standard_normal((n, n), np.float32)
    c = np.empty((n, n), np.float32)
    lib = openblas()
    if lib is not None:
        sgemm = lib.scipy_cblas_sgemm
        i, f, ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
        sgemm.argtypes = [i, i, i, i, i, i, f, ptr, i, ptr, i, f, ptr, i]
        sgemm.restype = None
        before = int(lib.scipy_openblas_get_num_threads())
        lib.scipy_openblas_set_num_threads(threads)

        def product() -> None:  # row-major (101), neither operand transposed (111)
            sgemm(101, 111, 111, n, n, n, 1.0, a.ctypes.data, n, b.ctypes.data, n, 0.0, c.ctypes.data, n)
    else:
        def product() -> None:
            np.matmul(a, b, out=c)
    times = []
    try:
        for _ in range(opts.gemm_reps + 1):
            start = time.perf_counter()
            product()
            times.append(time.perf_counter() - start)
    finally:
        if lib is not None:
            lib.scipy_openblas_set_num_threads(before)
    assert np.allclose(c[:2, :2], a[:2] @ b[:, :2], rtol=1e-3, atol=1e-2)
    median = statistics.median(times[1:])
    return {"gflops": 2 * n**3 / median / 1e9, "best_gflops": 2 * n**3 / min(times[1:]) / 1e9, "n": n,
            "reps": opts.gemm_reps, "median_s": median, "threads": threads, "library": "scipy_openblas sgemm" if lib is not None else "numpy matmul"}


def blas_info() -> list[dict[str, Any]] | None:
    """The BLAS and OpenMP libraries this process has loaded, with their versions, thread
    counts and the kernel each picked (``architecture``), from threadpoolctl; ``package``
    is the Python package that ships the library (``scipy`` for ``scipy.libs/``).
    None when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("internal_api", "version", "num_threads", "threading_layer", "architecture")
    out = []
    for lib in threadpool_info():
        path = Path(lib.get("filepath") or "")
        folder = path.parent.parent if path.parent.name == "lib" else path.parent  # torch/lib/...
        out.append({k: lib.get(k) for k in keys} | {"file": path.name, "package": folder.name.removesuffix(".libs")})
    return out


def torch_blas() -> dict[str, Any]:
    """PyTorch's own BLAS, linked into it (threadpoolctl cannot see a static MKL): the
    version its build reports and ATen's CPU capability (the kernels it dispatches to)."""
    import re

    import torch

    found = re.search(r"Math Kernel Library Version ([\w.]+)", torch.__config__.show())
    return {"internal_api": "mkl" if torch.backends.mkl.is_available() else None,
            "version": found.group(1) if found else None, "num_threads": torch.get_num_threads(),
            "threading_layer": None, "architecture": torch.backends.cpu.get_cpu_capability(),
            "file": "(linked into torch)", "package": "torch"}


def blas_kernel_env() -> dict[str, str]:
    """The variables of ``BLAS_KERNEL_VARS`` (and ``MKL_*`` but ``MKL_NUM_THREADS``) set
    in this process's environment."""
    return {k: v for k, v in sorted(os.environ.items())
            if k in BLAS_KERNEL_VARS or (k.startswith("MKL_") and k not in THREAD_VARS)}


def conv_pass(scope: str) -> str:
    """``bwd`` for a kernel whose conv scopes are all of a reverse sweep (``conv2d bwd``),
    else ``fwd`` (``conv2d + max_pool2d``)."""
    labels = [label for label in scope.split(" + ") if label]
    convs = [label for label in labels if "conv" in label] or labels
    return "bwd" if convs and all(label.endswith(" bwd") for label in convs) else "fwd"


def conv_kernels(case: Any, runner: Runner, repeat: int) -> dict[str, Any] | None:
    """Each conv kernel of a fused case: its time (``Compiled.profile``, ``repeat``
    rounds), flops and GFLOP/s; None for a function without convolutions."""
    lowered = runner.jitted.lower(*case.args)
    if not any(op.prim.name == "conv" for group in lowered.fused.groups for op in group.ops):
        return None
    compiled = lowered.compile()
    profile = compiled.profile(*case.args, repeat=repeat)
    rows = [{"index": k.index, "name": k.name, "pass": conv_pass(k.scope), "scope": k.scope,
             "parallel": k.parallel, "median_s": k.median_s, "share": profile.share(k), "flops": k.flops,
             "gflops": k.gflops}
            for k in profile.kernels if any(op.split(" at ")[0] == "conv" for op in k.ops)]
    return {"config": "fused", "repeat": profile.repeat, "call_median_s": profile.call_median_s,
            "blas_threads": getattr(compiled.executable, "_blas_threads", None), "kernels": rows}


class WorkerState:
    """What a worker keeps between messages: the cases and the current case's runners."""

    def __init__(self, args: argparse.Namespace, threads: int) -> None:
        self.args = args
        self.threads = threads
        self.opts = Options.make(args.quick, args.size)
        self.cases = [case for w in load_workloads().select(args.workloads) for case in w.make(args.size)]
        self.runners: dict[str, Runner] = {}

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg["op"]
        if op == "info":
            return self.info()
        if op == "stream":
            return stream_triad(self.threads, self.opts)
        if op == "gemm":
            return gemm_gflops(self.threads, self.opts)
        if op == "blas":
            return self.blas()
        if op == "setup":
            return {"records": self.setup(self.cases[msg["case"]], msg["configs"])}
        if op == "sample":
            return self.sample(self.runners[msg["config"]], msg["number"])
        if op == "finish":
            return {"records": self.finish(self.cases[msg["case"]])}
        raise ValueError(f"unknown message {op!r}")

    def info(self) -> dict[str, Any]:
        import fusejit as fj

        return {
            "cpus": usable_cpus(),
            "env": {k: os.environ.get(k) for k in (*THREAD_VARS, "XLA_FLAGS", "OMP_WAIT_POLICY",
                                                   "NUMBA_THREADING_LAYER", "FUSEJIT_BACKEND", "FUSEJIT_CACHE_DIR")},
            "backend": fj.config.value("backend"),
            "fusejit_cache": fj.config.value("cache"),
            "versions": {"fusejit": fj.__version__},
            "cases": [{"key": c.key, "label": c.label, "note": c.note, "bytes_moved": c.bytes_moved}
                      for c in self.cases],
        }

    def blas(self) -> dict[str, Any]:
        """The BLAS libraries (``blas_info``) once this group's libraries are imported, and
        the environment variables that force a BLAS kernel."""
        group = self.args.worker
        if group == "core":
            from fusejit.codegen.cpu.gemm import openblas

            openblas()  # loads the OpenBLAS that the kernels call
        if group in GROUP_PACKAGE and importlib.util.find_spec(GROUP_PACKAGE[group]) is not None:
            importlib.import_module(GROUP_PACKAGE[group])
        libraries = blas_info()
        if libraries is not None and group == "torch" and "torch" in sys.modules:
            libraries.append(torch_blas())
        return {"libraries": libraries, "env": blas_kernel_env()}

    def setup(self, case: Any, configs: list[str]) -> dict[str, dict[str, Any]]:
        """Builds each configuration, times its first call, checks it against NumPy eager
        and warms it up; the estimate of one call's time sizes the samples."""
        records: dict[str, dict[str, Any]] = {}
        reference = None
        if BASELINE not in configs:
            reference = tree_to_numpy(case.fn(*copy_args(case.args)), lambda x: x)
        for config in configs:
            record: dict[str, Any] = {}
            records[config] = record
            try:
                runner = build_runner(config, case, self.threads)
                gc.collect()
                start = time.perf_counter()
                out = runner.call()
                record["first_call_s"] = time.perf_counter() - start
                first = tree_to_numpy(out, runner.to_numpy)  # before the next call reuses donated buffers
                if config == BASELINE:
                    reference = first
                if reference is not None:
                    record["check"] = compare(reference, first, case.rtol, case.atol)
                times: list[float] = []
                warm_start = time.perf_counter()
                while len(times) < self.opts.warmup or (
                        time.perf_counter() - warm_start < self.opts.warmup_s and len(times) < 100_000):
                    t0 = time.perf_counter()
                    runner.call()
                    times.append(time.perf_counter() - t0)
                record["estimate_s"] = max(statistics.median(times), 1e-8)
                if runner.jitted is not None:
                    record["kernels"] = len(runner.jitted.lower(*case.args).fused.groups)
                self.runners[config] = runner
            except Skip as e:
                record["skipped"] = str(e)
            except Exception as e:  # noqa: BLE001 - one failing configuration must not end the run
                record["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
                _progress(f"    {case.label}, {CONFIGS[config]} failed: {record['error']}")
        gc.collect()
        gc.disable()  # no collections inside samples: gc runs between cases (finish)
        return records

    def sample(self, runner: Runner, number: int) -> dict[str, Any]:
        import resource

        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        try:
            runner.loop(number)
        except Exception as e:  # noqa: BLE001 - reported as this configuration's error
            return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        elapsed = time.perf_counter() - t0
        return {"elapsed_s": elapsed, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0}

    def finish(self, case: Any) -> dict[str, dict[str, Any]]:
        records = {}
        for config, runner in self.runners.items():
            if runner.jitted is not None:
                info = runner.jitted.cache_info()
                records[config] = {"cache_misses": info.misses, "cache_reasons": info.reasons}
            if config == "fused":
                try:
                    conv = conv_kernels(case, runner, self.opts.profile_reps)
                except Exception as e:  # noqa: BLE001 - the timings stand without the profile
                    conv = {"config": config, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300], "kernels": []}
                if conv is not None:
                    records[config]["conv"] = conv
        self.runners.clear()
        gc.enable()
        gc.collect()
        return records


def worker_main(args: argparse.Namespace) -> int:
    """Serves the parent: one JSON message per line on stdin, one reply per line on the
    original stdout. Anything else the libraries print goes to stderr."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    threads = int(args.threads)
    if hasattr(os, "sched_setaffinity"):  # before any library starts its threads
        os.sched_setaffinity(0, usable_cpus()[-threads:])  # the last cores: cpu 0 takes more interrupts
    import warnings

    warnings.filterwarnings("ignore", message=".*donated buffers.*")  # JAX on CPU
    try:
        state = WorkerState(args, threads)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which stops this setting
        state, fatal = None, f"{type(e).__name__}: {e}"
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "quit":
            break
        if state is None:
            reply = {"fatal": fatal}
        else:
            try:
                reply = state.handle(msg)
            except Exception as e:  # noqa: BLE001
                reply = {"fatal": f"{msg['op']}: {type(e).__name__}: {e}"}
        replies.write(json.dumps(reply, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
