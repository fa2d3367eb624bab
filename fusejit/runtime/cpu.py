"""The CPU executable: kernels compiled by Numba, called from generated code.

Built once per signature:

1. the call plan (``fusejit.runtime.plan``): every group lowered, the storage of every
   value (parameters, results, donated buffers, constants, one arena allocated once: the
   steady state allocates outputs only), as data;
2. every kernel compiled (or loaded from the disk cache): from its LLVM IR
   (``fusejit.runtime.llvm_kernels``) where ``fusejit.codegen.cpu.llvm_printer`` spells it,
   else as a Numba module;
3. calls go through a Python function generated for this executable (``_runner``: ravel
   the arguments, allocate the outputs, call each kernel's compiled entry point with
   the flat arrays and its sizes, and between them, in program order, each host op's
   rule (``H0((inputs,), (outputs,))``, ``fusejit.runtime.host_ops``), return). Its text
   is what ``runner_source()`` and ``FUSEJIT_DUMP`` show.

A kernel is called through its overload's entry point, the C wrapper Numba compiled for
its one signature: that skips the dispatcher's type resolution (0.53 us a call instead
of 0.85 us; ``bench/bench_backend.py calls``). An earlier design called the kernels from
one generated njit function, 0.3 us a kernel cheaper per call, but Numba took 1.5 s on
average to compile one (4.7 s for 13 kernels: type inference of its array views and
re-optimizing the linked kernels), which a first call cannot afford.
``FUSEJIT_DEBUG_NANS=1`` runs the kernels one by one and checks each one's outputs for
NaN/inf.

Threads: every call that runs more than one kernel over the shared arena holds the
executable's lock around its kernels (a kernel holds the GIL anyway, so threads lose no
parallelism); outputs are fresh per call, so nothing else is shared.
"""

from __future__ import annotations

import contextvars
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusejit import config
from fusejit.codegen.cpu import llvm_printer
from fusejit.codegen.kernel import Matmul, statements
from fusejit.codegen.lowering import LoweredKernel, describe_ops
from fusejit.codegen.target import CPU
from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Value
from fusejit.ir.dtypes import DType, from_numpy
from fusejit.ir.nans import first_nonfinite, nonfinite_error, nonfinite_kind
from fusejit.ir.scopes import scope_label
from fusejit.ir.transforms.fusion import FusedFunction
from fusejit.runtime import blas, chunks, compile_pool, donation, llvm_kernels, threads
from fusejit.runtime.cache import (
    COUNTERS,
    compile_dispatchers,
    load_module,
    module_directory,
    module_name,
    start_numba,
)
from fusejit.runtime.donation import DonationError as DonationError  # re-exported
from fusejit.runtime.host_ops import finish, host_runner
from fusejit.runtime.plan import plan_call
from fusejit.runtime.timings import CompileTimes, KernelOrigin, KernelTime

# Outputs at least this large are recycled once the caller drops them: a fresh large
# array page-faults on first touch (glibc mmaps it), which halved an elementwise op's
# bandwidth over 64 MiB outputs.
RECYCLE_MIN_BYTES = 1 << 20


class _Progress:
    """``fusejit: compiling f: kernel 7 of 30`` on a terminal's stderr, once a
    compilation has taken more than ``PROGRESS_AFTER`` seconds."""

    PROGRESS_AFTER = 2.0

    def __init__(self, name: str, total: int) -> None:
        self.name, self.total, self.count = name, total, 0
        self.start = time.perf_counter()
        self.shown = False
        self.tty = sys.stderr is not None and sys.stderr.isatty()

    def step(self, t: KernelTime) -> KernelTime:
        self.count += 1
        if self.tty and time.perf_counter() - self.start > self.PROGRESS_AFTER:
            sys.stderr.write(f"\rfusejit: compiling {self.name}: kernel {self.count} of {self.total}")
            sys.stderr.flush()
            self.shown = True
        return t

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


@dataclass(frozen=True, slots=True)
class KernelInfo:
    """One kernel of an executable, as ``Compiled.kernels`` reports it."""

    name: str
    ops: tuple[str, ...]
    bytes_in: int
    bytes_out: int
    source: str = field(default="", repr=False)  # the kernel's module: print(info.source)
    scope: str = ""  # the fj.named_scope paths of its ops (fusejit.ir.scopes.scope_label)

    def __repr__(self) -> str:
        names = [op.split(" at ")[0] for op in self.ops]  # entries read "tanh at train.py:12"
        shown = ", ".join(names[:4]) + (f", ... ({len(names)} ops)" if len(names) > 4 else "")
        scope = f" [{self.scope}]" if self.scope else ""
        return f"<kernel {self.name}{scope}: {shown}; reads {self.bytes_in} B, writes {self.bytes_out} B>"


def _gemm_flops(lk: LoweredKernel) -> int:
    """2*B*M*K*N of a matmul kernel's dot_general; for another kernel calling BLAS (a
    conv as im2col + GEMM), of its largest GEMM statement whose sizes are parameters (a
    size the kernel computes, such as the last chunk of a weight gradient's contraction,
    is at most one of the others)."""
    dot = next((op for op in lk.group.ops if op.prim is P.dot_general), None)
    if dot is None:
        value = dict(zip((v.name for v in lk.kernel.ints), lk.ints, strict=True))

        def size(e: Any) -> int | None:
            return value.get(e.name) if hasattr(e, "name") else int(e.value)

        flops = [0]
        for s in statements(lk.kernel.body):
            if isinstance(s, Matmul):
                dims = (size(s.batch), size(s.m), size(s.k), size(s.n))
                if None not in dims:
                    flops.append(2 * math.prod(dims))
        return max(flops)
    _, (b, m, k), _, (_, _, n) = P.dot_general_as_matmul(
        dot.inputs[0].shape, dot.inputs[1].shape, dot.attrs["contract"], dot.attrs["batch"])
    return 2 * b * m * k * n


# ---------------------------------------------------------------------------------------
# The executable


@dataclass
class _Step:
    lowered: LoweredKernel
    module: str
    source: str
    dispatcher: Any
    entry_point: Any  # callable with the kernel's arguments (a native_calls.NativeKernel, or chunked)
    array_refs: list[tuple[str, Any]]  # per kernel array: storage reference
    sizes: np.ndarray  # its ints (int64), the kernel's argument after its arrays
    chunked: bool = False  # its parallel loop runs in chunks on fusejit's threads (runtime/chunks.py)
    llvm: str | None = None  # its cache name when compiled from LLVM IR (runtime/llvm_kernels.py), else Numba

    def on_disk(self, directory: Any) -> bool:
        """Whether the disk cache (``directory``) has this kernel's compiled code or module."""
        if self.llvm is not None:
            return llvm_kernels.on_disk(self.llvm)
        return (directory / f"{self.module}.py").exists()

    def in_memory(self) -> bool:
        return self.llvm in llvm_kernels.loaded() if self.llvm is not None else self.module in sys.modules


class CpuExecutable:
    """Runs a function's kernels, each compiled by Numba, from one generated runner (see
the module doc); ``call_plan`` is what it runs, as data."""

    def __init__(self, fn: Function, fused: FusedFunction, donate_argnums: Sequence[int] = (),
                 threshold: int | None = None, *, workers_only: bool = False) -> None:
        self.function = fn
        self.fused = fused
        self.donated = tuple(sorted(set(donate_argnums)))
        self.compile_times = CompileTimes()
        start = time.perf_counter()
        call = plan_call(fn, fused, self.donated, threshold)
        self.call_plan = call
        self.plan = call.arena
        self._dims = np.array(call.dims, dtype=np.int64)
        self._steps = []
        llvm = config.value("llvm_kernels")
        for sp in call.steps:
            kernel = sp.lowered.kernel
            source = CPU.print_module(kernel)
            chunked = CPU.chunked(kernel)
            name = (llvm_kernels.cache_name(source, [a.dtype.np.name for a in kernel.arrays], chunked)
                    if llvm and llvm_printer.unsupported(kernel) is None else None)
            self._steps.append(_Step(sp.lowered, module_name(source), source, None, None, list(sp.refs),
                                     self._dims[list(sp.int_slots)], chunked, name))
        self.compile_times.lower = time.perf_counter() - start
        self._consts = list(call.consts)
        self._buf_slot = dict(call.buf_slot)
        self._buf_name = {key: f"b{k}" for k, key in enumerate(call.buf_slot)}
        self._buf_dtype = dict(call.buf_dtype)
        self._arena = np.zeros(max(call.arena.arena_bytes, 1), dtype=np.uint8)
        self.arena_allocations = 1
        self._out_specs = list(call.out_specs)
        self._out_in_param = list(call.out_in_param)
        self._result_refs = list(call.result_refs)
        # The host ops (fusejit.runtime.host_ops) by the number of kernels run before them,
        # each with its runner, built once for the generated runner and the general path.
        # A split op's wait step (HostStepPlan.phase) names the start step whose pending
        # call it completes, instead of a runner.
        self._hosts: dict[int, list[tuple[int, Any, Any]]] = {}
        started: dict[int, int] = {}  # id(call) -> its start step
        for h, hs in enumerate(call.host_steps):
            if hs.phase == "wait":
                entry = (started[id(hs.call)], hs, None)
            else:
                entry = (h, hs, host_runner(hs.call, hs.shared_outputs, split=hs.phase == "start"))
                started[id(hs.call)] = h
            self._hosts.setdefault(hs.position, []).append(entry)
        self._into_slot = _into_slots(self._result_refs, self._out_in_param)
        # Per result: whether a call given ``into`` (an array or None per result: a loop
        # driver's row of a stacked output) leaves the result there rather than in a new
        # array, so that a scan's stacked outputs are written in place, not copied.
        direct = set(self._into_slot.values())
        self.writes_into = tuple(r in direct or kind == "param" for r, (kind, _) in enumerate(self._result_refs))
        self.kernels = [kernel_info(st.lowered, st.module, st.source,
                                    f"compiled from its LLVM IR ({st.llvm}), not this module" if st.llvm else "")
                        for st in self._steps]
        gemms = [_gemm_flops(st.lowered) for st in self._steps if st.lowered.uses_blas]
        self._blas_threads = blas.threads_for(max(gemms)) if gemms else None
        if any(st.lowered.kernel.parallel and not st.chunked for st in self._steps):
            threads.start()  # before Numba would launch its threads with spinning waits
        self._lock = threading.RLock()
        self.run: Any = None
        self._compile(workers_only)

    def _ref_name(self, r: tuple[str, Any]) -> str:
        """The name of a kernel argument in the runner."""
        kind, key = r
        if kind == "param":
            return f"x{key}"
        if kind == "out":
            j = self._out_in_param[key]
            return f"x{j}" if j is not None else f"y{key}"
        if kind == "const":
            return f"cc{key}"
        return self._buf_name[key]

    def _compile(self, workers_only: bool = False) -> None:
        """Loads every kernel (``compile_executables``), now or, inside ``compiling_together``
        (and not ``workers_only``), when that block ends."""
        together = _TOGETHER.get()
        if together is not None and not workers_only:
            together.executables.append(self)
        else:
            compile_executables([self], workers_only)

    def _parallel_jobs(self, seen: set[str]) -> tuple[list[compile_pool.CompileJob], list[int]]:
        """The kernels (one per distinct module, none of ``seen``, which this adds them to)
        that neither this process nor the disk cache has, as jobs for the compile workers,
        with their step indices."""
        directory, _ = module_directory()
        jobs, steps = [], []
        for k, st in enumerate(self._steps):
            key = st.llvm or st.module
            if key in seen or st.in_memory() or st.on_disk(directory):
                continue
            seen.add(key)
            kernel = st.lowered.kernel
            jobs.append(compile_pool.CompileJob(st.source, kernel.name, tuple(a.dtype.np.name for a in kernel.arrays),
                                                st.chunked, st.llvm or ""))
            steps.append(k)
        return jobs, steps

    def _finish(self, startup: float, times: dict[int, KernelTime]) -> None:
        """Records the kernels' load times and builds the runner, once every kernel is loaded."""
        self.compile_times.startup = startup
        self.compile_times.kernels = [times[k] for k in range(len(self._steps))]
        self._views = {}
        for key, slot in self._buf_slot.items():
            dtype = self._buf_dtype[key].np
            self._views[key] = self._arena[self._dims[slot]:self._dims[slot + 1]].view(dtype)
        runner = self._runner()
        self.run = self._call_generic if config.value("debug_nans") else runner

    def _load(self, k: int, origin: KernelOrigin | None = None) -> KernelTime:
        """Loads step ``k``'s kernel, compiling it unless this process or the disk cache
        has it; ``origin`` overrides where the timing says it came from."""
        from fusejit.runtime import native_calls  # imports Numba

        st = self._steps[k]
        start, compiles = time.perf_counter(), COUNTERS.numba_compiles
        if st.llvm is not None:
            sig = native_calls.kernel_signature([a.dtype.np for a in st.lowered.kernel.arrays], st.chunked)
            address, library, found = llvm_kernels.load(st.llvm, lambda: llvm_printer.module_text(st.lowered.kernel))
            if origin is not None and found is KernelOrigin.DISK:
                found = origin
            st.entry_point = native_calls.bind_address(address, library, sig, st.chunked)
            if st.chunked:
                st.entry_point = chunks.chunked(st.entry_point, CPU.max_threads())
            return KernelTime(st.lowered.display_name, time.perf_counter() - start, found)
        st.dispatcher = getattr(load_module(st.source), st.lowered.kernel.name)
        sig = native_calls.kernel_signature([a.dtype.np for a in st.lowered.kernel.arrays], st.chunked)
        found = KernelOrigin.MEMORY if sig in st.dispatcher.overloads else (origin or KernelOrigin.DISK)
        compile_dispatchers(st.dispatcher, sig)
        if COUNTERS.numba_compiles != compiles:
            found = KernelOrigin.COMPILED
        st.entry_point = native_calls.bind(st.dispatcher, sig, st.chunked)
        if st.chunked:  # called with the kernel's own arguments, like the others
            st.entry_point = chunks.chunked(st.entry_point, CPU.max_threads())
        return KernelTime(st.lowered.display_name, time.perf_counter() - start, found)

    # Calls ----------------------------------------------------------------------------
    def __call__(self, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Runs the function on one array per parameter (of the traced shapes and dtypes)."""
        return self.run(args)

    def _runner(self) -> Any:
        """A Python function ``run(args, into=NO_INTO)`` specialized to this executable
        (its source kept for ``runner_source()``): it flattens the arguments (``ravel`` is
        a view of a C-ordered array, else a C-ordered copy), allocates the outputs (or takes
        the C-ordered arrays ``into`` gives, one or None per result: ``writes_into``), calls
        each kernel in turn and returns the results."""
        from fusejit.runtime import native_calls

        fn = self.function
        ns: dict[str, Any] = {"empty": np.empty, "copy": _copy_into, "consumed": donation.consumed,
                              "check": donation.check_not_consumed,
                              "CONFIG": config.LIVE, "generic": self._call_generic,
                              "BLAS": blas._state, "use_blas": blas.use, "T": self._blas_threads}
        n = len(fn.params)
        ns["NO_INTO"] = (None,) * len(fn.results)
        lines = ["def run(args, into=NO_INTO):", "    if consumed:", "        check(args)",
                 "    if CONFIG['debug_nans']:", "        return generic(args, into)"]
        if self._blas_threads is not None:
            lines += ["    if BLAS['current'] != T:", "        use_blas(T)"]
        if n:
            lines.append(f"    {''.join(f'a{k}, ' for k in range(n))}= args")
        if self.donated:
            # A donated array is overwritten in place only if it owns its memory (or is
            # the output of an earlier donating call, a view of a consumed array), is
            # writable and C-ordered, and no other argument is it or a view of it;
            # anything else takes the general path, which copies it first.
            conds = []
            for k in self.donated:
                conds += [f"(a{k}.base is None or id(a{k}.base) in consumed)", f"a{k}.flags.writeable",
                          f"a{k}.flags.c_contiguous"]
                conds += [f"a{j} is not a{k} and a{j}.base is not a{k}" for j in range(n) if j != k]
            lines += [f"    if not ({' and '.join(conds)}):", "        return generic(args, into)"]
        lines += [f"    x{k} = a{k}.ravel()" for k in range(n)]
        outs = []
        ns["refs"] = sys.getrefcount
        for j, (shape, dtype) in enumerate(self._out_specs):
            if self._out_in_param[j] is None:
                ns[f"S{j}"], ns[f"D{j}"] = shape, dtype
                if math.prod(shape) * np.dtype(dtype).itemsize >= RECYCLE_MIN_BYTES:
                    # Reuse one of the last two outputs if the caller has let go of it: three
                    # references (the pool, the local name, getrefcount's argument) mean
                    # nothing else, not even a view, holds it.
                    ns[f"P{j}"] = [None, None]
                    alloc = [
                        f"q = P{j}", f"o{j} = q[0]",
                        f"if o{j} is None or refs(o{j}) > 3:",
                        f"    o{j} = q[1]",
                        f"    if o{j} is None or refs(o{j}) > 3:",
                        f"        o{j} = empty(S{j}, D{j})",
                        "        q[1] = q[0]",
                        f"        q[0] = o{j}",
                    ]
                else:
                    alloc = [f"o{j} = empty(S{j}, D{j})"]
                if j in self._into_slot:
                    lines += [f"    o{j} = into[{self._into_slot[j]}]", f"    if o{j} is None:"]
                    lines += [f"        {line}" for line in alloc]
                else:
                    lines += [f"    {line}" for line in alloc]
                lines.append(f"    y{j} = o{j}" if len(shape) == 1 else f"    y{j} = o{j}.ravel()")
                outs.append(f"y{j}")
        for k, c in enumerate(self._consts):
            ns[f"cc{k}"] = c
        for key, name in self._buf_name.items():
            ns[name] = self._views[key]
        # Kernels called one by one share the arena, and another thread may run between
        # two calls: the lock keeps calls whole (each kernel holds the GIL anyway, so
        # threads lose no parallelism).
        shared = self.plan.arena_bytes > 0 and len(self._steps) + len(self.call_plan.host_steps) > 1
        ns["LOCK"] = self._lock
        if shared:
            lines.append("    with LOCK:")
        indent = "        " if shared else "    "
        started = [f"R{h}" for h, hs in enumerate(self.call_plan.host_steps) if hs.phase == "start"]
        if started:  # a call stopped by an exception waits for what it started (host_ops.finish)
            ns["finish"] = finish
            lines += [f"{indent}{' = '.join(started)} = None", f"{indent}try:"]
            indent += "    "
        for k, st in enumerate(self._steps):
            lines += self._host_lines(ns, k, indent)
            ns[f"Z{k}"] = st.sizes
            args = ", ".join([self._ref_name(r) for r in st.array_refs] + [f"Z{k}"])
            if isinstance(st.entry_point, native_calls.NativeKernel):  # its trampoline, called directly
                ns[f"K{k}"], ns[f"A{k}"] = st.entry_point.trampoline, st.entry_point.address
                lines.append(f"{indent}K{k}(A{k}, ({args},))  # {st.lowered.display_name}")
            else:
                ns[f"K{k}"] = st.entry_point
                lines.append(f"{indent}K{k}({args})  # {st.lowered.display_name}")
        lines += self._host_lines(ns, len(self._steps), indent)
        if started:
            indent = indent[:-4]
            lines += [f"{indent}except BaseException:", f"{indent}    finish(({''.join(r + ', ' for r in started)}))",
                      f"{indent}    raise"]
        results = []
        for r, (kind, k) in enumerate(self._result_refs):
            if kind == "param":
                results.append(f"copy(into[{r}], a{k})")
            elif self._out_in_param[k] is None:
                results.append(f"o{k}")
            else:  # a new array object on the donated buffer: the donated one is consumed
                ns[f"S{k}"] = self._out_specs[k][0]
                results.append(f"a{self._out_in_param[k]}.reshape(S{k})")
        ns["consume"] = self._consume_one
        for k in self.donated:
            lines.append(f"    consume(a{k}, {k})")
        lines.append(f"    return ({''.join(r + ', ' for r in results)})")
        self._runner_source = "\n".join(lines) + "\n"
        exec(compile(self._runner_source, "<fusejit runner>", "exec"), ns)  # noqa: S102 - our own text
        return ns["run"]

    def _host_lines(self, ns: dict[str, Any], position: int, indent: str) -> list[str]:
        """The runner's calls of the host ops (``fusejit.runtime.host_ops``) that run
        after the first ``position`` kernels: ``H0((inputs,), (outputs,))``; a split one
        ``R0 = H0(...)`` at its start step, ``R0.wait()`` at its wait step."""
        lines = []
        for h, hs, run in self._hosts.get(position, ()):
            if hs.phase == "wait":
                lines.append(f"{indent}R{h}.wait()  # {hs.call.display_name} (wait)")
                continue
            ns[f"H{h}"] = run
            ins, outs = ("".join(f"{self._ref_name(r)}, " for r in refs) for refs in (hs.in_refs, hs.out_refs))
            start = hs.phase == "start"
            lines.append(f"{indent}{f'R{h} = ' * start}H{h}(({ins}), ({outs}))  # {hs.call.display_name}"
                         + " (start)" * start)
        return lines

    def _call_generic(self, args: Sequence[np.ndarray],
                      into: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, ...]:
        """The general path: donation, and FUSEJIT_DEBUG_NANS (kernels one by one)."""
        with self._lock:
            return self._call_generic_unlocked(args, into)

    def _call_generic_unlocked(self, args: Sequence[np.ndarray],
                               into: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, ...]:
        blas.use(self._blas_threads)
        if donation.consumed:
            donation.check_not_consumed(args)
        arrays = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in args]
        if self.donated:
            arrays = self._prepare_donated(args, arrays)
        into = into or (None,) * len(self._result_refs)
        outs: list[np.ndarray | None] = []
        for j, ((shape, dtype), k) in enumerate(zip(self._out_specs, self._out_in_param, strict=True)):
            given = into[self._into_slot[j]] if j in self._into_slot else None
            outs.append(None if k is not None else given if given is not None else np.empty(shape, dtype))
        self._run_stepwise(arrays, outs)
        results = []
        for r, (kind, k) in enumerate(self._result_refs):
            if kind == "param":
                results.append(_copy_into(into[r], arrays[k]))
            elif outs[k] is None:
                results.append(arrays[self._out_in_param[k]].reshape(self._out_specs[k][0]))
            else:
                results.append(outs[k])
        for k in self.donated:
            self._consume_one(args[k], k)
        return tuple(results)

    def _prepare_donated(self, args: Sequence[np.ndarray], arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A donated array that shares memory with another argument (or is read-only) is
        copied first: its buffer must be ours to overwrite."""
        for k in self.donated:
            a = arrays[k]
            if a is not args[k]:
                continue  # already a private copy
            clash = not a.flags.writeable or any(
                j != k and np.may_share_memory(a, arrays[j]) for j in range(len(arrays))
            )
            if clash:
                arrays[k] = a.copy()
        return arrays

    def _consume_one(self, a: np.ndarray, k: int) -> None:
        donation.mark_consumed(a, (
            f"argument {k} of @{self.function.name} was donated (donate_argnums) and its "
            "buffer may have been reused by the call; pass a fresh array instead"))

    def _run_stepwise(self, arrays: list[np.ndarray], outs: list[np.ndarray | None]) -> None:
        """Each kernel called from Python (with FUSEJIT_DEBUG_NANS, its outputs checked)."""
        flat = {("param", k): a.ravel() for k, a in enumerate(arrays)}
        for j, o in enumerate(outs):
            k = self._out_in_param[j]
            flat[("out", j)] = o.ravel() if o is not None else flat[("param", k)]
        for k, c in enumerate(self._consts):
            flat[("const", k)] = c
        views = self._views
        check = config.value("debug_nans")

        started: dict[int, tuple[Any, list[np.ndarray], bool]] = {}  # split host ops: pending, outputs, inputs finite

        def checked(hs: Any, outs: list[np.ndarray], finite_inputs: bool) -> None:
            kind = nonfinite_kind(outs) if check else None
            if kind is not None:  # a host op (LAPACK, a collective) made it, or passed it on
                raise nonfinite_error(hs.call.op, kind, finite_inputs,
                                      f"host op {hs.call.display_name} of @{self.function.name}")

        def run_hosts(position: int) -> None:
            for h, hs, run in self._hosts.get(position, ()):
                if hs.phase == "wait":
                    pending, outs, finite_inputs = started.pop(h)
                    pending.wait()
                    checked(hs, outs, finite_inputs)
                    continue
                ins, outs = [[views[r[1]] if r[0] == "buf" else flat[r] for r in refs]
                             for refs in (hs.in_refs, hs.out_refs)]
                finite_inputs = check and nonfinite_kind(ins) is None  # before an in-place rule
                if hs.phase == "start":
                    started[h] = (run(ins, outs), outs, finite_inputs)
                    continue
                run(ins, outs)
                checked(hs, outs, finite_inputs)

        try:
            for k, st in enumerate(self._steps):
                run_hosts(k)
                st.entry_point(*[views[r[1]] if r[0] == "buf" else flat[r] for r in st.array_refs], st.sizes)
                if check:
                    self._check_finite(st, flat)
            run_hosts(len(self._steps))
        finally:
            finish([pending for pending, _, _ in started.values()])

    def _check_finite(self, st: _Step, flat: dict[Any, np.ndarray]) -> None:
        def view(r: tuple[str, Any], dtype: Any) -> np.ndarray:
            return self._views[r[1]] if r[0] == "buf" else flat[r]

        for v, r in self._output_refs(st):
            out = view(r, v.dtype)
            if v.dtype.is_float and out.size and not np.isfinite(out).all():
                self._raise_nan(st, view)

    def _output_refs(self, st: _Step) -> list[tuple[Value, tuple[str, Any]]]:
        out = []
        for bound, r, param in zip(st.lowered.arrays, st.array_refs, st.lowered.kernel.arrays, strict=True):
            if isinstance(bound, Value) and param.role in ("out", "inout") and bound in st.lowered.group.outputs:
                out.append((bound, r))
        for v, src in st.lowered.inplace.items():
            idx = st.lowered.arrays.index(src)
            out.append((v, st.array_refs[idx]))
        return out

    def _raise_nan(self, st: _Step, view: Any) -> None:
        """Names the first op of the kernel that made a NaN/inf from finite operands
        (the kernel's ops re-run one by one on the reference rules)."""
        group = st.lowered.group
        env: dict[Value, np.ndarray] = {}
        for bound, r in zip(st.lowered.arrays, st.array_refs, strict=True):
            if isinstance(bound, Value) and bound in group.inputs:
                env[bound] = view(r, bound.dtype).reshape(bound.shape)
        found = first_nonfinite(group.ops, env)
        context = f"kernel {st.lowered.display_name} of @{self.function.name}"
        raise nonfinite_error(*(found or (None, "nan or inf", False)), context)

    # Introspection --------------------------------------------------------------------
    def kernel_source(self) -> str:
        parts = [k.source for k in self.kernels]
        parts.append("# ---- runner (calls the kernels above in order)\n" + self._runner_source)
        return "\n\n".join(parts)

    def llvm_sources(self) -> list[str]:
        """Per kernel, the LLVM IR it is compiled from (``llvm_kernels``), or "" for a
        Numba module (printed again: what ``FUSEJIT_DUMP`` writes)."""
        return [llvm_printer.module_text(st.lowered.kernel) if st.llvm else "" for st in self._steps]

    def runner_source(self) -> str:
        """The generated Python function every call runs (``K0``... are the kernels)."""
        return self._runner_source


# ---------------------------------------------------------------------------------------
# Compiling executables' kernels

@dataclass
class _Together:
    """The executables built inside ``compiling_together``, whose kernels wait for its end,
    and what to run once they are compiled (``after_compiling``)."""

    executables: list[CpuExecutable] = field(default_factory=list)
    then: list[Callable[[], None]] = field(default_factory=list)


_TOGETHER: contextvars.ContextVar[_Together | None] = contextvars.ContextVar("together", default=None)


@contextmanager
def compiling_together() -> Iterator[None]:
    """Defers the kernels of the ``CpuExecutable``s built inside the block (in this thread)
    to its end, where they compile as one batch (``compile_executables``): a function with
    loops is several executables (the stretches between the loops and the bodies), and
    compiled one at a time, each would wait at ``compile_in_parallel``'s end for the
    kernel a worker is still compiling instead of going on with the next one's kernels.
    Nested blocks join the outermost one; an exception in the block compiles nothing."""
    if _TOGETHER.get() is not None:
        yield
        return
    together = _Together()
    token = _TOGETHER.set(together)
    try:
        yield
    finally:
        _TOGETHER.reset(token)
    compile_executables(together.executables)
    for callback in together.then:
        callback()


def after_compiling(callback: Callable[[], None]) -> None:
    """Calls ``callback`` once the executables built so far can run: at the end of the
    ``compiling_together`` block, or now outside one."""
    together = _TOGETHER.get()
    if together is None:
        callback()
    else:
        together.then.append(callback)


def compile_executables(exes: Sequence[CpuExecutable], workers_only: bool = False) -> None:
    """Loads every kernel of ``exes`` (compiling it unless this process or the disk cache
    has it) and makes them callable. Kernels the disk cache lacks are compiled in parallel
    by worker processes when there are at least two of them (``fusejit.runtime.
    compile_pool``), or all by the workers when ``workers_only`` (a background
    compilation, which leaves this process's GIL to the caller)."""
    directory, disk = module_directory()
    jobs: list[compile_pool.CompileJob] = []
    owners: list[tuple[CpuExecutable, int]] = []  # per job: its executable and step
    if disk and compile_pool.worker_count() > 0:
        seen: set[str] = set()
        for exe in exes:
            exe_jobs, steps = exe._parallel_jobs(seen)
            jobs += exe_jobs
            owners += [(exe, k) for k in steps]
        if not jobs or not (workers_only or compile_pool.worth_workers(jobs)):
            jobs, owners = [], []
        # The LLVM IR of the kernels handed to workers (printed only for them).
        jobs = [dataclasses.replace(job, llvm_text=llvm_printer.module_text(exe._steps[k].lowered.kernel))
                if job.llvm else job for job, (exe, k) in zip(jobs, owners, strict=True)]
    if jobs:
        compile_pool.start_workers()  # they start up while this process starts Numba
    # Numba's registries only if something is to be compiled here (else they load lazily,
    # should a cache entry turn out to be missing or damaged).
    # (Kernels compiled from LLVM IR need none.)
    uncached = any(st.llvm is None and not st.in_memory() and not (disk and st.on_disk(directory))
                   for exe in exes for st in exe._steps)
    startup = start_numba(compiling=uncached and not workers_only)
    progress = _Progress(exes[0].function.name if exes else "", sum(len(exe._steps) for exe in exes))
    times: dict[int, dict[int, KernelTime]] = {id(exe): {} for exe in exes}

    def load(exe: CpuExecutable, k: int, origin: KernelOrigin | None = None) -> None:
        times[id(exe)][k] = progress.step(exe._load(k, origin))

    by_workers: set[tuple[int, int]] = set()
    if jobs:
        root = str(directory.parent)
        here = None if workers_only else (lambda j: load(*owners[j]))
        done = compile_pool.compile_in_parallel(jobs, here, root)
        by_workers = {(id(owners[j][0]), owners[j][1]) for j in done}
    for exe in exes:
        for k in range(len(exe._steps)):
            if k not in times[id(exe)]:
                load(exe, k, KernelOrigin.WORKER if (id(exe), k) in by_workers else None)
    progress.done()
    for exe in exes:
        exe._finish(startup, times[id(exe)])


def _into_slots(result_refs: Sequence[tuple[str, Any]], out_in_param: Sequence[int | None]) -> dict[int, int]:
    """Per output that a call may write into a caller's array: the result it is. Not an
    output written into a donated argument, nor a second result of the same value (the
    caller copies those)."""
    slots: dict[int, int] = {}
    for r, (kind, j) in enumerate(result_refs):
        if kind == "out" and out_in_param[j] is None:
            slots.setdefault(j, r)
    return slots


def _copy_into(dest: np.ndarray | None, a: np.ndarray) -> np.ndarray:
    """A result that is an argument: a copy of it, in ``dest`` when given."""
    if dest is None:
        return np.array(a, copy=True)
    np.copyto(dest, a.reshape(dest.shape))
    return dest


def op_dtype(arr: np.ndarray) -> DType:
    return from_numpy(arr.dtype)


def kernel_info(lk: LoweredKernel, module: str, source: str, note: str = "") -> KernelInfo:
    """What ``Compiled.kernels`` reports of a lowered kernel whose module (of either
    target) is ``source``, named ``module`` (``note``: a line for its header)."""
    g = lk.group
    ops = tuple(f"{op.prim.name}{f' at {op.loc}' if op.loc else ''}" for op in g.ops)
    return KernelInfo(lk.display_name, ops, g.bytes_read, g.bytes_written, display_source(lk, module, source, note),
                      scope_label(g.ops))


def display_source(lk: LoweredKernel, module: str, source: str, note: str = "") -> str:
    """The kernel's module source under a header naming the concrete ops, shapes and
    source lines (the module on disk leaves those out so every batch size shares it)."""
    g = lk.group
    label = scope_label(g.ops)
    head = [f"# {lk.display_name}{f' [{label}]' if label else ''}: {len(g.ops)} ops, reads {g.bytes_read} B, "
            f"writes {g.bytes_written} B (module {module})"]
    head += [f"#   {line}" for line in describe_ops(g)]
    head += [f"# {note}"] if note else []
    body = source.split("\n")
    start = next(i for i, line in enumerate(body) if not line.startswith("#"))
    return "\n".join(head + body[start:])
