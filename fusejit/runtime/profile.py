"""Per-kernel profiles of compiled functions: ``Compiled.profile``, ``fj.profile`` and
``FUSEJIT_PROFILE=1``.

How a profile is measured (``profile_executable``):

1. The arguments are copied (C-ordered, private), so profiling never consumes a donated
   array or writes over the caller's data.
2. Warm-up: two whole calls and one pass over the kernels.
3. Then ``repeat`` rounds, each one whole call through the executable's ordinary path
   (its generated runner: the time the user pays) followed by one pass
   that calls every kernel in turn from Python, as ``CpuExecutable._run_stepwise`` does,
   with a ``perf_counter_ns`` reading around each kernel. Kernels see the same arena
   views, outputs and constants as in a real call, so they touch the same memory.

A kernel's time therefore includes the ~0.5 us it costs to call a compiled kernel from
Python and the ~0.1 us of the clock: for functions of many tiny kernels the kernels'
total exceeds the whole call's median. For kernels of more than ~50 us the two agree
within a few percent.

Functions with loops and branches (``fj.lax``: ``fusejit.runtime.control``) run their
kernels from drivers, over nested executables whose arguments change every iteration,
so their kernels cannot be called on their own. Their timed pass runs the whole
function instead, through its drivers, with every nested executable calling its
kernels one by one from Python around a clock reading: a loop body's kernel gets one
row whose time is summed over the iterations of one call (``KernelProfile.calls`` says
how many times it ran, ``loop`` which drivers run it), and a branch's kernels only
their times when taken (a kernel that never ran in the measured call has no row).

Profiling off changes nothing on the hot path: ``jit`` wraps a signature's fast-path
runner in ``recording_runner`` only if ``FUSEJIT_PROFILE`` (the ``profile`` setting) is
on when the signature is first called. Then every call keeps a reference to its
arguments (a copy of the donated ones), and at exit each signature is profiled on the
last arguments it was called with.
"""

from __future__ import annotations

import atexit
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.scopes import scope_label
from fusejit.runtime import blas

# Default measurement budget: rounds until about this many seconds are spent, within
# [MIN_REPEAT, MAX_REPEAT].
BUDGET_S = 0.5
MIN_REPEAT = 5
MAX_REPEAT = 200


@dataclass(frozen=True)
class KernelProfile:
    """One kernel's row of a ``Profile``.

    ``index`` is the kernel's position in execution order; ``kind`` its strategy
    (``loop``, ``reduce``, ``row``, ``matmul``, ``scatter``, ``horizontal``); ``ops`` one
    ``"prim at file.py:line"`` string per fused op; ``times_s`` one duration (seconds)
    per measured round; ``bytes_read``/``bytes_written`` the bytes of its inputs and
    outputs in memory (scratch excluded); ``scope`` the ``fj.named_scope`` paths of its
    ops (``conv1/conv2d + relu bwd``, ``fusejit.ir.scopes.scope_label``); ``flops`` the
    floating-point operations of its convolutions and matrix products (``kernel_flops``),
    None for a kernel of neither.

    A kernel of a loop body or a branch (``loop`` names its drivers, outermost first:
    ``scan at rnn.py:12``) runs ``calls`` times per whole call: its ``times_s``, bytes and
    flops are sums over those runs.
    """

    index: int
    name: str
    kind: str
    ops: tuple[str, ...]
    source_lines: tuple[str, ...]
    bytes_read: int
    bytes_written: int
    parallel: bool
    times_s: tuple[float, ...]
    scope: str = ""
    calls: int = 1
    loop: str = ""
    flops: int | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def gflops(self) -> float | None:
        """``flops`` per second of median time, in GFLOP/s (1e9/s); None if not known."""
        t = self.median_s
        return None if self.flops is None else self.flops / t / 1e9 if t > 0 else math.inf

    @property
    def gbs(self) -> float:
        """Bytes read and written per second of median time, in GB/s (1e9 B/s)."""
        t = self.median_s
        return (self.bytes_read + self.bytes_written) / t / 1e9 if t > 0 else math.inf


@dataclass
class Profile:
    """Per-kernel times of one compiled function; ``str()`` is a table sorted by time.

    ``call_times_s`` are the whole calls (one per round, seconds); ``kernels`` are in
    execution order (``sorted_kernels()`` by median time); ``trace`` holds the raw
    timestamps ``(round, kernel index or -1 for the whole pass, start ns, end ns)`` for
    ``to_chrome_trace``.
    """

    function: str
    kernels: list[KernelProfile]
    call_times_s: list[float]
    repeat: int
    trace: list[tuple[int, int, int, int]] = field(default_factory=list, repr=False)
    calls_trace: list[tuple[int, int, int]] = field(default_factory=list, repr=False)

    @property
    def call_median_s(self) -> float:
        """Median of the whole calls (seconds)."""
        return statistics.median(self.call_times_s) if self.call_times_s else math.nan

    @property
    def kernel_total_s(self) -> float:
        """Sum of the kernels' median times (seconds)."""
        return sum(k.median_s for k in self.kernels)

    @property
    def bytes_moved(self) -> int:
        return sum(k.bytes_read + k.bytes_written for k in self.kernels)

    def share(self, kernel: KernelProfile) -> float:
        """The kernel's median time as a fraction of the whole call's median."""
        call = self.call_median_s
        return kernel.median_s / call if call > 0 else math.nan

    def sorted_kernels(self) -> list[KernelProfile]:
        return sorted(self.kernels, key=lambda k: -k.median_s)

    def __str__(self) -> str:
        return self.table()

    def table(self, top: int | None = None) -> str:
        """The profile as text: a summary line, then one row per kernel, slowest first
        (the ``top`` slowest only, if given)."""
        call, total = self.call_median_s, self.kernel_total_s
        head = [
            f"profile of @{self.function}: {len(self.kernels)} kernels, {self.repeat} rounds; "
            f"whole call median {fmt_time(call)}, kernels {fmt_time(total)} "
            f"({total / call * 100:.0f}% of the call), {fmt_bytes(self.bytes_moved)} moved per call"
            if call > 0 else f"profile of @{self.function}: {len(self.kernels)} kernels"
        ]
        looped = any(k.loop for k in self.kernels)
        counted = any(k.flops is not None for k in self.kernels)
        cols = ("#", "kernel", "kind", "scope", "median", "share", "read", "written", "GB/s", "ops (source lines)")
        if counted:  # convolutions and matrix products: their arithmetic rate
            cols = cols[:9] + ("GFLOP/s",) + cols[9:]
        if looped:  # where the kernel runs, and how often per call
            cols = cols[:4] + ("runs", "in") + cols[4:]
        rows = []
        kernels = self.sorted_kernels()
        for k in kernels[:top] if top else kernels:
            names = list(dict.fromkeys(op.split(" at ")[0] for op in k.ops))
            what = f"{len(k.ops)}: " + ",".join(names[:4]) + (",..." if len(names) > 4 else "")
            if k.source_lines:
                what += "  @ " + ", ".join(_short_lines(k.source_lines))
            scope = k.scope if len(k.scope) <= 40 else k.scope[:37] + "..."
            row = (str(k.index), k.name, k.kind + ("||" if k.parallel else ""), scope, fmt_time(k.median_s),
                   f"{self.share(k) * 100:.1f}%", fmt_bytes(k.bytes_read), fmt_bytes(k.bytes_written),
                   f"{k.gbs:.1f}", what)
            if counted:
                row = row[:9] + ("-" if k.gflops is None else f"{k.gflops:.1f}",) + row[9:]
            rows.append(row[:4] + (str(k.calls), k.loop or "-") + row[4:] if looped else row)
        left = [i for i, c in enumerate(cols) if c in ("kernel", "kind", "scope", "in", "ops (source lines)")]
        lines = head + [format_table(cols, rows, left=left)]
        if top and len(kernels) > top:
            lines.append(f"... {len(kernels) - top} faster kernels not shown")
        lines.append("(# is the execution order; || a parallel kernel; each kernel's time includes ~1-3 us "
                     "of calling it from Python, which the whole call does not pay)")
        if looped:
            lines.append("(runs: times the kernel ran in one call, its time and bytes summed over them; in: the "
                         "loops and branches that run it)")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The profile as JSON-ready data (times in seconds)."""
        return {
            "function": self.function,
            "repeat": self.repeat,
            "call_median_s": self.call_median_s,
            "kernel_total_s": self.kernel_total_s,
            "kernels": [
                {"index": k.index, "name": k.name, "kind": k.kind, "scope": k.scope, "ops": list(k.ops),
                 "bytes_read": k.bytes_read, "bytes_written": k.bytes_written, "median_s": k.median_s,
                 "share": self.share(k), "gbs": k.gbs, "calls": k.calls, "loop": k.loop, "flops": k.flops,
                 "gflops": k.gflops}
                for k in self.kernels
            ],
        }

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Writes the measured rounds as a Chrome trace (the JSON object format with
        ``traceEvents`` of complete ``"X"`` events, microseconds), which
        ``chrome://tracing`` and https://ui.perfetto.dev open. Thread 1 shows the passes
        over the kernels, one event per kernel (its ops, bytes and GB/s in ``args``);
        thread 2 the whole calls. Returns the path written; raises ``OSError`` if it
        cannot be written."""
        path = Path(path)
        t0 = min([s for _, _, s, _ in self.trace] + [s for _, s, _ in self.calls_trace], default=0)

        def us(ns: int) -> float:
            return (ns - t0) / 1e3

        events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": f"fusejit @{self.function}"}},
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": {"name": "kernels one by one"}},
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": 2, "args": {"name": "whole calls"}},
        ]
        for r, start, end in self.calls_trace:
            events.append({"name": f"@{self.function}", "cat": "call", "ph": "X", "pid": 1, "tid": 2,
                           "ts": us(start), "dur": (end - start) / 1e3, "args": {"round": r}})
        for r, k, start, end in self.trace:
            if k < 0:
                events.append({"name": f"@{self.function} (kernels one by one)", "cat": "pass", "ph": "X",
                               "pid": 1, "tid": 1, "ts": us(start), "dur": (end - start) / 1e3, "args": {"round": r}})
                continue
            kp = self.kernels[k]
            dur_s = (end - start) / 1e9
            events.append({
                "name": kp.name, "cat": kp.kind, "ph": "X", "pid": 1, "tid": 1, "ts": us(start),
                "dur": (end - start) / 1e3,
                "args": {"round": r, "index": kp.index, "scope": kp.scope, "ops": list(kp.ops),
                         "bytes_read": kp.bytes_read, "bytes_written": kp.bytes_written,
                         "GB/s": round((kp.bytes_read + kp.bytes_written) / dur_s / 1e9, 3) if dur_s > 0 else None},
            })
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms",
                                    "otherData": {"function": self.function, "rounds": self.repeat}}),
                        encoding="utf-8")
        return path


# ---------------------------------------------------------------------------------------
# Measuring


def _short_lines(lines: Sequence[str], limit: int = 4) -> list[str]:
    """``a.py:3, a.py:7`` -> ``a.py:3, :7`` (the file named once), at most ``limit``."""
    out, last_file = [], None
    for loc in lines[:limit]:
        file, _, line = loc.rpartition(":")
        out.append(f":{line}" if file == last_file else loc)
        last_file = file
    if len(lines) > limit:
        out.append("...")
    return out


def _where(loc: Any) -> str:
    """``train.py:12`` for a source location (the file's base name)."""
    return f"{Path(loc.file).name}:{loc.line}"


def kernel_flops(ops: Sequence[Any]) -> int | None:
    """The floating-point operations (a multiply-add counts 2) of the convolutions and
    matrix products among ``ops`` (one kernel's fused ops); None if there are none.

    A ``conv`` with result ``[N, O, *P]`` and weights ``[O, C // groups, *K]`` does
    ``2 * N*O*prod(P) * (C // groups)*prod(K)``, padding positions included, as im2col +
    GEMM computes them; a ``dot_general`` ``2*B*M*K*N`` of its batched matrix product.
    Elementwise epilogues are not counted."""
    total, found = 0, False
    for op in ops:
        if op.prim is P.conv:
            total += 2 * math.prod(op.outputs[0].shape) * math.prod(op.inputs[1].shape[1:])
        elif op.prim is P.dot_general:
            _, (b, m, k), _, (_, _, n) = P.dot_general_as_matmul(
                op.inputs[0].shape, op.inputs[1].shape, op.attrs["contract"], op.attrs["batch"])
            total += 2 * b * m * k * n
        else:
            continue
        found = True
    return total if found else None


def _kernel_rows(exe: Any) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...], int, int, bool, str, int | None]]:
    rows = []
    for st in exe._steps:
        lk = st.lowered
        g = lk.group
        ops = tuple(f"{op.prim.name}{f' at {_where(op.loc)}' if op.loc else ''}" for op in g.ops)
        lines = tuple(dict.fromkeys(_where(op.loc) for op in g.ops if op.loc))
        parallel = lk.kernel.parallel
        rows.append((lk.display_name, lk.kind, ops, lines, g.bytes_read, g.bytes_written, parallel, scope_label(g.ops),
                     kernel_flops(g.ops)))
    return rows


def _bind_steps(exe: Any, arrays: list[np.ndarray]) -> list[tuple[Any, list[Any]]]:
    """Each kernel's entry point with its argument list, bound as ``_run_stepwise`` binds
    them: parameters, fresh outputs (or the donated parameter they are written into),
    constants and arena views."""
    flat: dict[tuple[str, Any], np.ndarray] = {("param", k): a.ravel() for k, a in enumerate(arrays)}
    for j, (shape, dtype) in enumerate(exe._out_specs):
        k = exe._out_in_param[j]
        flat[("out", j)] = np.empty(shape, dtype).ravel() if k is None else flat[("param", k)]
    for k, c in enumerate(exe._consts):
        flat[("const", k)] = c
    views = exe._views
    bound = []
    for st in exe._steps:
        argv = [views[r[1]] if r[0] == "buf" else flat[r] for r in st.array_refs]
        argv.append(st.sizes)
        bound.append((st.entry_point, argv))
    return bound


def _checked_arguments(exe: Any, args: Sequence[Any], repeat: int | None,
                       name: str | None) -> tuple[str, list[np.ndarray]]:
    """The function's name and private copies of ``args``, checked against the compiled
    parameters (count and shapes) and ``repeat`` (at least 1); ``ValueError`` otherwise."""
    if repeat is not None and repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    fn_name = name or exe.function.name
    params = exe.function.params
    if len(args) != len(params):
        raise ValueError(f"@{fn_name} takes {len(params)} flat arguments, got {len(args)}")
    arrays = _private_copies(args, [p.type for p in params])
    for k, (a, p) in enumerate(zip(arrays, params, strict=True)):
        if a.shape != p.shape:
            raise ValueError(f"argument {k} of @{fn_name}: shape {a.shape}, compiled for {p.shape}")
    return fn_name, arrays


def _private_copies(arrays: Sequence[Any], in_types: Sequence[Any] | None = None) -> list[np.ndarray]:
    out = []
    for k, a in enumerate(arrays):
        dtype = in_types[k].dtype.np if in_types is not None else None
        out.append(np.array(a, dtype=dtype, order="C", copy=True))
    return out


def profile_executable(exe: Any, args: Sequence[Any], *, repeat: int | None = None,
                       name: str | None = None) -> Profile:
    """Profiles a CPU executable on ``args`` (one array per flat parameter, of the traced
    shapes and dtypes; they are copied, never modified). ``repeat`` is the number of
    measured rounds (default: as many as fit in about ``BUDGET_S`` seconds, 5 to 200).

    Raises ``ValueError`` for an executable that has no kernels to time (the
    ``interpret`` backend) or for a ``repeat`` below 1.
    """
    if hasattr(exe, "nested_executables"):  # fusejit.runtime.control: kernels run from loop drivers
        return _profile_control_flow(exe, args, repeat, name)
    if not hasattr(exe, "_steps"):
        raise ValueError(f"profile needs the cpu backend's executable, not {type(exe).__name__} "
                         "(jit(..., backend='cpu'))")
    fn_name, arrays = _checked_arguments(exe, args, repeat, name)
    donated = bool(exe.donated)

    def whole_call() -> tuple[int, int]:
        call_args = [a.copy() for a in arrays] if donated else arrays
        start = time.perf_counter_ns()
        exe.run(call_args)
        return start, time.perf_counter_ns()

    rows = _kernel_rows(exe)
    n = len(rows)
    samples: list[list[int]] = [[] for _ in range(n)]
    trace: list[tuple[int, int, int, int]] = []
    calls: list[tuple[int, int, int]] = []
    call_times: list[float] = []
    with exe._lock:
        # Kernel calls from Python share the executable's arena: hold its lock (an RLock,
        # so the whole calls made inside may take it too).
        step_args = [a.copy() for a in arrays] if donated else arrays
        bound = _bind_steps(exe, step_args)
        threads = exe._blas_threads

        def one_pass(r: int, record: bool) -> int:
            blas.use(threads)
            clock = time.perf_counter_ns
            pass_start = clock()
            for k, (dispatcher, argv) in enumerate(bound):
                t0 = clock()
                dispatcher(*argv)
                t1 = clock()
                if record:
                    samples[k].append(t1 - t0)
                    trace.append((r, k, t0, t1))
            pass_end = clock()
            if record:
                trace.append((r, -1, pass_start, pass_end))
            return pass_end - pass_start

        rounds = _timed_rounds(whole_call, one_pass, repeat, calls, call_times)
    kernels = [
        KernelProfile(k, nm, kind, ops, lines, br, bw, par, tuple(t / 1e9 for t in samples[k]), scope, flops=flops)
        for k, (nm, kind, ops, lines, br, bw, par, scope, flops) in enumerate(rows)
    ]
    return Profile(fn_name, kernels, call_times, rounds, trace, calls)


def _timed_rounds(whole_call: Callable[[], tuple[int, int]], timed_pass: Callable[[int, bool], int],
                  repeat: int | None, calls: list[tuple[int, int, int]], call_times: list[float]) -> int:
    """Warms up (two calls and an unrecorded timed pass), then runs ``repeat`` rounds (by
    default as many as fit in about ``BUDGET_S``), each a whole call, appended to ``calls``
    and ``call_times``, then a recorded pass that times each kernel. Returns the rounds."""
    t_start = time.perf_counter()
    with np.errstate(all="ignore"):
        whole_call()
        whole_call()
        timed_pass(-1, False)
        rounds = repeat
        if rounds is None:
            start, end = whole_call()
            per_round = (end - start) / 1e9 + timed_pass(-1, False) / 1e9
            spent = time.perf_counter() - t_start
            rounds = int(min(MAX_REPEAT, max(MIN_REPEAT, (BUDGET_S - spent) / max(per_round, 1e-7))))
        for r in range(rounds):
            start, end = whole_call()
            calls.append((r, start, end))
            call_times.append((end - start) / 1e9)
            timed_pass(r, True)
    return rounds


# ---------------------------------------------------------------------------------------
# Functions with loops and branches: kernels timed while the drivers run them

# A Chrome trace of a long loop would hold one event per iteration and kernel: beyond this
# many events the later rounds are measured but not traced.
MAX_TRACE_EVENTS = 200_000


def _leaf_executables(exe: Any, drivers: str = "") -> list[tuple[Any, str]]:
    """The CPU executables whose kernels ``exe`` runs, in program order, each with the
    drivers that run it (``scan at a.py:3 / cond at a.py:5 branch 1``; empty for a
    stretch of the function itself)."""
    if not hasattr(exe, "nested_executables"):
        if not hasattr(exe, "_steps"):
            raise ValueError(f"profile needs the cpu backend's executables, not {type(exe).__name__} "
                             "(jit(..., backend='cpu'))")
        return [(exe, drivers)]
    out = []
    for part in exe._parts:
        if not hasattr(part, "nested"):  # a compiled stretch between the drivers
            out += _leaf_executables(part.executable, drivers)
            continue
        op = part.op
        label = f"{op.prim.name}{f' at {op.loc.derivation_prefix()}{_where(op.loc)}' if op.loc else ''}"
        roles = {"while_loop": ["cond", "body"], "cond": [f"branch {k}" for k in range(len(part.nested))]}
        for sub, role in zip(part.nested, roles.get(op.prim.name, [""] * len(part.nested)), strict=True):
            inner = f"{label} {role}" if role else label
            out += _leaf_executables(sub, f"{drivers} / {inner}" if drivers else inner)
    return out


def _profile_control_flow(exe: Any, args: Sequence[Any], repeat: int | None, name: str | None) -> Profile:
    """``profile_executable`` for a ``fusejit.runtime.control.ControlFlowExecutable`` (see
    the module docstring): whole calls through the fast path, then per round one call in
    which every nested executable runs its kernels one by one, each timed."""
    fn_name, arrays = _checked_arguments(exe, args, repeat, name)
    leaves = _leaf_executables(exe)
    rows = [(row, drivers) for leaf, drivers in leaves for row in _kernel_rows(leaf)]
    n = len(rows)
    samples: list[list[int]] = [[] for _ in range(n)]
    runs = [0] * n  # times each kernel ran in the last timed call
    raw_trace: list[tuple[int, int, int, int]] = []
    calls: list[tuple[int, int, int]] = []
    call_times: list[float] = []

    def whole_call() -> tuple[int, int]:
        call_args = [a.copy() for a in arrays] if exe.donated else arrays
        start = time.perf_counter_ns()
        exe.run(call_args)
        return start, time.perf_counter_ns()

    def timed_call(r: int, record: bool) -> int:
        """One call with every kernel timed; returns its duration (ns)."""
        clock = time.perf_counter_ns
        spent, count = [0] * n, [0] * n
        patched: list[tuple[Any, str, Any]] = []

        def timed(entry: Any, k: int) -> Any:
            def run_timed(*argv: Any) -> None:
                t0 = clock()
                entry(*argv)
                t1 = clock()
                spent[k] += t1 - t0
                count[k] += 1
                if record and len(raw_trace) < MAX_TRACE_EVENTS:
                    raw_trace.append((r, k, t0, t1))

            return run_timed

        k = 0
        for leaf, _ in leaves:
            # The general path (_call_generic) calls each step's entry point from Python;
            # the fast runner bound them when it was generated, so it is left untouched.
            patched.append((leaf, "run", leaf.run))
            leaf.run = leaf._call_generic
            for st in leaf._steps:
                patched.append((st, "entry_point", st.entry_point))
                st.entry_point = timed(st.entry_point, k)
                k += 1
        call_args = [a.copy() for a in arrays] if exe.donated else arrays
        try:
            start = clock()
            exe.run(call_args)
            end = clock()
        finally:
            for obj, attr, value in reversed(patched):
                setattr(obj, attr, value)
        if record:
            raw_trace.append((r, -1, start, end))
            for k in range(n):
                samples[k].append(spent[k])
        runs[:] = count
        return end - start

    locks = [leaf._lock for leaf, _ in leaves]
    for lock in locks:  # no other thread calls these executables while their steps are patched
        lock.acquire()
    try:
        rounds = _timed_rounds(whole_call, timed_call, repeat, calls, call_times)
    finally:
        for lock in reversed(locks):
            lock.release()
    # Rows for the kernels that ran (a branch not taken has none), renumbered in order.
    ran = [k for k in range(n) if runs[k]]
    new_index = {k: i for i, k in enumerate(ran)}
    kernels = []
    for i, k in enumerate(ran):
        (nm, kind, ops, lines, br, bw, par, scope, flops), drivers = rows[k]
        kernels.append(KernelProfile(i, nm, kind, ops, lines, br * runs[k], bw * runs[k], par,
                                     tuple(t / 1e9 for t in samples[k]), scope, runs[k], drivers,
                                     None if flops is None else flops * runs[k]))
    trace = [(r, new_index[k] if k >= 0 else -1, s, e) for r, k, s, e in raw_trace if k < 0 or k in new_index]
    return Profile(fn_name, kernels, call_times, rounds, trace, calls)


# ---------------------------------------------------------------------------------------
# FUSEJIT_PROFILE=1: the last arguments of every compiled signature, profiled at exit

_recorded: dict[int, tuple[Any, list[np.ndarray]]] = {}
_record_lock = threading.Lock()
_hook_registered = False


def record_call(lowered: Any, arrays: Sequence[Any]) -> None:
    """Keeps ``arrays`` (the flat arguments of a call of ``lowered``) to profile at exit.
    Donated arrays are copied first: the call may overwrite them."""
    global _hook_registered
    donated = set(getattr(lowered, "donated", ()))
    kept = [np.array(a, copy=True) if k in donated else a for k, a in enumerate(arrays)]
    with _record_lock:
        _recorded[id(lowered)] = (lowered, kept)
        if not _hook_registered:
            atexit.register(print_recorded_profiles)
            _hook_registered = True


def recording_runner(lowered: Any, run: Any) -> Any:
    """``run`` (a fast-path runner taking the positional arrays) that records its
    arguments first; only built when profiling is on."""

    def run_and_record(args: tuple) -> Any:
        record_call(lowered, args)
        return run(args)

    return run_and_record


def print_recorded_profiles(file: Any = None, repeat: int | None = None) -> None:
    """Prints (to stderr by default) the profile of every signature called while
    ``FUSEJIT_PROFILE`` was on, slowest function first; registered with ``atexit``."""
    file = file or sys.stderr
    with _record_lock:
        items = list(_recorded.values())
        _recorded.clear()
    profiles = []
    for lowered, arrays in items:
        name = getattr(lowered.jitted, "__name__", None) or lowered.traced.name
        try:
            exe = lowered.executable()
            profiles.append(profile_executable(exe, arrays, repeat=repeat, name=name))
        except Exception as e:  # noqa: BLE001 - at exit, report and go on with the others
            print(f"FUSEJIT_PROFILE: @{name} could not be profiled ({type(e).__name__}: {e})", file=file)
    for p in sorted(profiles, key=lambda p: -p.call_median_s):
        print(f"FUSEJIT_PROFILE\n{p}\n", file=file)


# ---------------------------------------------------------------------------------------
# Formatting (shared with fusejit.compare)


def fmt_time(seconds: float | None) -> str:
    """``1.23 ms``, ``45.6 us``, ``2.01 s`` (three significant digits); ``-`` if unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(seconds) >= scale or unit == "ns":
            value = seconds / scale
            return f"{value:.3g} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"
    raise AssertionError


def fmt_bytes(n: float | None) -> str:
    """``512 B``, ``1.5 kB``, ``38.2 MB`` (powers of 1000)."""
    if n is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def format_table(cols: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> str:
    """Columns padded to their widest cell; columns in ``left`` left-aligned, the others
    right-aligned; a rule under the header."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def line(row: Sequence[str]) -> str:
        cells = [x.ljust(w) if i in left else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(cells).rstrip()

    return "\n".join([line(cols), line(["-" * w for w in widths]), *map(line, rows)])
