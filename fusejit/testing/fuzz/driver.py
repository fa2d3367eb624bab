"""The campaign driver: many programs by seed, their ``Summary``, failure ``report``s, worker
processes (``parallel_campaign``) and the command line (``main``)."""

from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fusejit.testing.fuzz.checking import CONFIGS, PAIRS, Result, check
from fusejit.testing.fuzz.generator import generate
from fusejit.testing.fuzz.shrinking import classify, kind_of, shrink


@dataclass
class Summary:
    programs: int = 0
    seconds: float = 0.0
    status: Counter = field(default_factory=Counter)
    per_config: dict[str, Counter] = field(default_factory=dict)
    kinds: dict[str, list[int]] = field(default_factory=dict)  # failure kind: seeds
    reports: dict[str, str] = field(default_factory=dict)  # failure kind: its first failure
    unsupported: Counter = field(default_factory=Counter)
    families: Counter = field(default_factory=Counter)
    grad_programs: int = 0

    def add(self, result: Result) -> None:
        self.programs += 1
        self.status[result.status] += 1
        self.grad_programs += result.program.grad
        for s in result.program.steps:
            self.families[s.family] += 1
        if result.status == "unsupported":
            self.unsupported[result.note] += 1
        failing = set(result.failing)
        ran = set(result.outcomes)
        ran |= {f"{a}~{b}" for a, b in PAIRS if {a, b} <= ran} | {f"{c}-recall" for c in ("fused", "unfused") if c in ran}
        if result.program.grad and "fused" in ran:
            ran |= {"grad", "grad~eager"}
        for c in (*CONFIGS, *(f"{a}~{b}" for a, b in PAIRS), "unfused-recall", "fused-recall", "grad", "grad~eager"):
            if c in ran or c in failing:
                counts = self.per_config.setdefault(c, Counter())
                counts["fail" if c in failing else "pass"] += 1
        if result.status == "mismatch":
            kind = kind_of(result)
            self.kinds.setdefault(kind, []).append(result.program.seed)
            self.reports.setdefault(kind, report(result))

    def to_json(self) -> dict[str, Any]:
        return {"programs": self.programs, "seconds": self.seconds, "status": self.status,
                "per_config": self.per_config, "kinds": self.kinds, "reports": self.reports,
                "unsupported": self.unsupported, "families": self.families,
                "grad_programs": self.grad_programs}

    def merge(self, other: dict[str, Any]) -> None:
        """Adds a summary (``to_json`` of another process's) to this one; ``seconds``
        stays this campaign's wall time."""
        self.programs += other["programs"]
        self.grad_programs += other["grad_programs"]
        for name in ("status", "unsupported", "families"):
            getattr(self, name).update(other[name])
        for c, counts in other["per_config"].items():
            self.per_config.setdefault(c, Counter()).update(counts)
        for kind, seeds in other["kinds"].items():
            self.kinds.setdefault(kind, []).extend(seeds)
            self.reports.setdefault(kind, other["reports"][kind])

    def text(self) -> str:
        rate = self.programs / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.programs} programs in {self.seconds:.0f} s ({rate:.2f} programs/s); "
            f"{self.grad_programs} with gradient checks",
            "status: " + ", ".join(f"{k} {v}" for k, v in sorted(self.status.items())),
            "by configuration (programs passing / failing):",
        ]
        for c, counts in self.per_config.items():
            lines.append(f"  {c:18} pass {counts['pass']:6}  fail {counts['fail']:6}")
        fams = Counter()
        for name, n in self.families.items():
            fams[name.split(":")[0]] += n
        lines.append("steps by family: " + ", ".join(f"{k} {v}" for k, v in fams.most_common()))
        if self.unsupported:
            lines.append("unsupported (NotImplementedError in eager fnp):")
            lines += [f"  {n:5}  {msg}" for msg, n in self.unsupported.most_common(10)]
        lines.append(f"failure kinds ({len(self.kinds)}):")
        for kind, seeds in sorted(self.kinds.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(seeds):5}  {kind}   (seeds {', '.join(map(str, sorted(seeds)[:5]))})")
        return "\n".join(lines)


def report(result: Result) -> str:
    """A failure, printed: seed, mismatches, the program source and a reproducer."""
    lines = [f"=== seed {result.program.seed}: {kind_of(result)}"]
    lines += [f"  {m}" for m in result.mismatches[:6]]
    lines.append(result.program.reproducer())
    return "\n".join(lines)


def campaign(
    count: int,
    seed: int = 0,
    *,
    max_ops: int = 8,
    grad_fraction: float = 0.1,
    large_fraction: float = 0.03,
    shrink_budget: int = 30,
    time_limit: float | None = None,
    log: Callable[[str], None] | None = print,
    verbose: bool = False,
) -> Summary:
    """Generates and checks ``count`` programs (seeds ``seed``, ``seed + 1``, ...);
    new failure kinds are shrunk and reported through ``log``."""
    summary = Summary()
    t0 = time.perf_counter()
    shrunk_kinds: set[str] = set()
    for i in range(count):
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
        program = generate(seed + i, max_ops=max_ops, grad_fraction=grad_fraction, large_fraction=large_fraction)
        try:
            result = check(program)
        except Exception:  # noqa: BLE001 - the fuzzer itself must keep going
            result = Result(program, "fuzzer-error", note=traceback.format_exc(limit=3))
            if log:
                log(f"fuzzer error on seed {program.seed}:\n{result.note}")
        if log:
            sys.stdout.flush()
        if result.status == "mismatch":
            result.known = classify(result)
            kind = kind_of(result)
            if shrink_budget and kind not in shrunk_kinds and result.known is None:
                shrunk_kinds.add(kind)
                small = shrink(result, shrink_budget)
                small = check(small.program)  # every configuration, on the small program
                small.known = classify(small)
                if log:
                    log(report(small))
            elif log and verbose:
                log(report(result))
        summary.add(result)
        summary.seconds = time.perf_counter() - t0
        if log and (i + 1) % 50 == 0:
            log(f"[{i + 1}/{count}] {summary.programs / summary.seconds:.2f} programs/s, "
                f"status {dict(summary.status)}")  # fmt: skip
    summary.seconds = time.perf_counter() - t0
    return summary


# Programs per worker process: each chunk runs in a fresh interpreter, because Numba keeps
# every compiled kernel of a process in memory (about 1 GB after a thousand programs).
CHUNK = 200


def parallel_campaign(count: int, seed: int, jobs: int, argv: list[str], *,
                      time_limit: float | None = None, log: Callable[[str], None] = print) -> Summary:
    """``campaign`` over ``jobs`` worker processes: seeds ``seed .. seed + count - 1`` in
    chunks of ``CHUNK``, each a ``python -m fusejit.testing.fuzz`` run with the options in
    ``argv``; their output is relayed and their summaries merged. Unless
    ``FUSEJIT_CACHE_DIR`` is set, the workers share a temporary kernel cache, removed at
    the end: thousands of random kernels do not belong in the user's cache. (Fewer than
    ``jobs * CHUNK`` programs are split evenly over the workers.)"""
    import concurrent.futures
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    env = dict(os.environ)
    private_cache = None if env.get("FUSEJIT_CACHE_DIR") else tempfile.mkdtemp(prefix="fusejit-fuzz-cache-")
    if private_cache:
        env["FUSEJIT_CACHE_DIR"] = private_cache
    summary = Summary()
    t0 = time.perf_counter()
    size = max(1, min(CHUNK, -(-count // jobs)))
    chunks = [(s, min(size, seed + count - s)) for s in range(seed, seed + count, size)]

    def run_chunk(start: int, n: int) -> tuple[str, dict[str, Any] | None]:
        left = None if time_limit is None else time_limit - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            return "", None
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/summary.json"
            cmd = [sys.executable, "-m", "fusejit.testing.fuzz", *argv, "--count", str(n), "--seed", str(start),
                   "--jobs", "1", "--summary-json", path, "--worker"]
            if left is not None:
                cmd += ["--time-limit", str(left)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)  # noqa: S603 - our own command
            try:
                with open(path, encoding="utf-8") as f:
                    return done.stdout + done.stderr, json.load(f)
            except (OSError, ValueError):
                return done.stdout + done.stderr, None

    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(run_chunk, s, n) for s, n in chunks]
            for (start, n), future in zip(chunks, futures, strict=True):
                output, part = future.result()
                if part is None:
                    if output:
                        log(f"worker for seeds {start}..{start + n - 1} failed:\n{output}")
                        summary.status["fuzzer-error"] += 1
                    continue
                summary.merge(part)
                summary.seconds = time.perf_counter() - t0
                reports = "\n".join(line for line in output.splitlines() if not re.match(r"\[\d+/\d+\] ", line))
                if reports.strip():
                    log(reports.strip())
                log(f"[{summary.programs}/{count}] {summary.programs / summary.seconds:.2f} programs/s, "
                    f"status {dict(summary.status)}")  # fmt: skip
    finally:
        if private_cache:
            shutil.rmtree(private_cache, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    package_doc = sys.modules[__package__].__doc__  # (the fuzzer's description is the package's docstring)
    parser = argparse.ArgumentParser(prog="python -m fusejit.testing.fuzz", description=package_doc.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="programs to run")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the first program")
    parser.add_argument("--max-ops", type=int, default=8, help="most steps in a program")
    parser.add_argument("--grad-fraction", type=float, default=0.1, help="share of programs with gradient checks")
    parser.add_argument("--large-fraction", type=float, default=0.03, help="share of programs over the threads threshold")
    parser.add_argument("--shrink-budget", type=int, default=30, help="re-runs per shrink (0: no shrinking)")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--replay", type=_seed, default=None,
                        help="run (and print) the program of one seed; give the campaign's --max-ops, "
                             "--grad-fraction and --large-fraction if it changed them")
    parser.add_argument("--verbose", action="store_true", help="report every failure, not the first of a kind")
    parser.add_argument("--jobs", type=int, default=1,
                        help=f"worker processes, each a fresh interpreter for every {CHUNK} programs")
    parser.add_argument("--summary-json", default=None, help="also write the summary to this file, as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # a chunk of --jobs: no summary text
    ns = parser.parse_args(argv)
    if ns.replay is not None:
        program = generate(ns.replay, ns.max_ops, ns.grad_fraction, ns.large_fraction)
        result = check(program)
        result.known = classify(result)
        for k, spec in enumerate(program.inputs):
            print(f"# x{k}: {spec.dtype}{list(spec.shape)}, {spec.layout} layout"
                  f"{', with nan/inf/-0.0' if spec.special else ''}")
        print(program.source())
        compared = ", ".join(result.outcomes) or "none"
        print(f"compared with NumPy: {compared}" + (" (and gradients)" if program.grad else ""))
        print(f"status: {result.status}" + (f" ({result.note})" if result.note else ""))
        for m in result.mismatches:
            print(f"  {m}")
        if result.status == "mismatch" and ns.shrink_budget:
            print(report(check(shrink(result, ns.shrink_budget).program)))
        return 0 if result.status != "mismatch" else 1
    if ns.jobs > 1:
        options = [f"--max-ops={ns.max_ops}", f"--grad-fraction={ns.grad_fraction}",
                   f"--large-fraction={ns.large_fraction}", f"--shrink-budget={ns.shrink_budget}"]
        options += ["--verbose"] if ns.verbose else []
        summary = parallel_campaign(ns.count, ns.seed, ns.jobs, options, time_limit=ns.time_limit)
    else:
        summary = campaign(ns.count, ns.seed, max_ops=ns.max_ops, grad_fraction=ns.grad_fraction,
                           large_fraction=ns.large_fraction, shrink_budget=ns.shrink_budget,
                           time_limit=ns.time_limit, verbose=ns.verbose)  # fmt: skip
    if ns.summary_json:
        import json

        with open(ns.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.to_json(), f)
    if not ns.worker:  # (a parallel campaign prints the merged total)
        print(summary.text())
    new = [k for k in summary.kinds if not k.startswith("known:")]
    return 1 if new or summary.status["fuzzer-error"] else 0
