"""Peak memory of a training step: fusejit fused and unfused against PyTorch eager and JAX.

    python bench/bench_memory.py                      # W7 W8 W9, 1 thread, 3 repetitions
    python bench/bench_memory.py W9 --threads 2 --reps 1 --json out.json

What issue 11 asks about: the peak memory of W9's step, as RSS growth over the imports, at
most PyTorch eager's, and fusion never above the unfused configuration's. Each
measurement is its own process (started as ``harness.py`` starts its workers, pinned to
the setting's CPUs): it imports its library and the workloads, builds the case's
arguments (``harness.build_runner``), and then reads the resident set size three times:

1. ``base``: after the imports and the arguments (fusejit's imports include Numba and its
   CPU target, which fusejit loads at its first compilation; JAX's its CPU backend);
2. ``first``: the peak during the first call, over ``base`` (for fusejit and JAX it
   includes compiling, with an empty fusejit cache: Numba and LLVM at work; fusejit's
   compile workers are other processes, not counted);
3. ``steady``: the peak during ``--steps`` further calls, over ``base``, the Linux peak
   (``VmHWM``) reset after the first call through ``/proc/self/clear_refs``: what a
   training loop holds once compiled (its buffers, the library's caches and code), the
   issue's number. For fusejit it is measured again in a second process on the cache the
   first one filled (``warm``), as every run after the first loads its kernels: a
   process that compiled keeps Numba's and LLVM's compiler state (tens of MiB).

Megabytes are MiB. Run with the BLAS variables unset (``env -u OPENBLAS_CORETYPE -u
OPENBLAS_L2_SIZE``) as the other benchmarks are; they do not change memory much.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402 - beside this file; stdlib only at import

CONFIGS = ("fused", "unfused", "torch", "jax")
MIB = 1 << 20


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` size (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Resets the peak RSS to the current one (Linux 4.0+); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure(key: str, config: str, threads: int, steps: int) -> dict[str, Any]:
    """In this process: the RSS after set-up, and the peaks of the first call and of
    ``steps`` more, for ``config`` of ``key``'s first case."""
    workloads = harness.load_workloads()
    (case, *_) = {w.key: w for w in workloads.WORKLOADS}[key].make("full")
    runner = harness.build_runner(config, case, threads)
    if config in ("fused", "unfused"):  # what fusejit imports at its first compilation
        from fusejit.runtime.cache import start_numba

        start_numba(compiling=True)
    if not _reset_peak():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)")
    base = _status_bytes("VmRSS")
    runner.call()
    first = _status_bytes("VmHWM") - base
    _reset_peak()
    for _ in range(steps):
        runner.call()
    return {"base": base, "first": first, "steady": _status_bytes("VmHWM") - base, "label": case.name}


def run_one(key: str, config: str, threads: int, steps: int) -> dict[str, Any] | None:
    """``measure`` in a fresh process pinned to the setting's CPUs, with an empty fusejit
    cache, and for fusejit again on the cache it filled (its ``warm`` entry); None if the
    configuration cannot run here, with the reason printed."""
    cpus = harness.usable_cpus()[:threads]
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, __file__, "--child", key, config,
           str(threads), str(steps)]
    results = []
    with tempfile.TemporaryDirectory() as cache:
        env = harness.worker_env(threads, cache)
        for _ in range(2 if config in ("fused", "unfused") else 1):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(f"  {key} {config}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return None
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if "skip" in results[0]:
        print(f"  {key} {config}: skipped ({results[0]['skip']})")
        return None
    return {**results[0], "warm": results[-1]["steady"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workloads", nargs="*", default=["W7", "W8", "W9"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="calls after the first (default 5)")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--json", type=Path)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        key, config, threads, steps = args.child
        try:
            print(json.dumps(measure(key, config, int(threads), int(steps))))
        except harness.Skip as e:
            print(json.dumps({"skip": str(e)}))
        return 0
    configs = args.configs.split(",")
    rows, report = [], {"threads": args.threads, "steps": args.steps, "machine": harness.machine_info(),
                        "versions": harness.package_versions(), "git": harness.git_info(), "cases": {}}
    for key in args.workloads:
        per: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
        for _ in range(args.reps):
            for config in configs:  # interleaved
                got = run_one(key, config, args.threads, args.steps)
                if got is not None:
                    per[config].append(got)
        label = next((r[0]["label"] for r in per.values() if r), key)
        report["cases"][key] = {c: r for c, r in per.items()}
        for config, results in per.items():
            if not results:
                continue
            med = {k: statistics.median(r[k] for r in results) for k in ("base", "first", "steady", "warm")}
            rows.append((label if config == configs[0] else "", config, f"{med['base'] / MIB:.0f}",
                         f"{med['first'] / MIB:.1f}", f"{med['steady'] / MIB:.1f}", f"{med['warm'] / MIB:.1f}",
                         str(len(results))))
    cols = ("case", "configuration", "RSS after set-up MiB", "first call peak +MiB", "steady peak +MiB",
            "warm-cache steady +MiB", "reps")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print(f"peak RSS over the RSS after set-up, {args.threads} thread(s), medians; 'steady': the peak over "
          f"{args.steps} calls after the first")
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
