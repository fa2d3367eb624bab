"""Running functions that hold control flow (``scan``, ``while_loop``, ``cond``).

The fusion groups of such a function are cut at its control-flow ops: each maximal
stretch of other groups becomes a sub-function compiled as one ``CpuExecutable`` (its
kernels fused and compiled as usual), and each control-flow op runs as a driver over
nested executables of its bodies, compiled once when the driver is built, so a scan's
body is optimized, fused and compiled once whatever its length and never retraced.

Why a Python driver rather than the whole loop in one Numba function: a body executable
is an ordinary compiled function (its kernels reuse the disk cache and every strategy,
BLAS included), and one call of a generated runner costs a few microseconds against the
tens to thousands a recurrent step's matrix products take (``bench/bench_scan.py``
measures it). The driver allocates the stacked outputs once per call and a CPU body writes
each iteration's outputs straight into their slice (``CpuExecutable.writes_into``; other
bodies' outputs are copied there); the carry moves from one body call's results to
the next call's arguments without copies, and a CPU body writes it into two arrays the
driver allocates per call, in turn (the carry is double-buffered; other bodies return a
new carry per iteration).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.control_flow import CONTROL_FLOW, branch_index
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.fusion import FusedFunction, FusionGroup
from fusejit.ir.transforms.fusion_control import sub_function
from fusejit.runtime import donation
from fusejit.runtime.cpu import KernelInfo, compiling_together
from fusejit.runtime.timings import CompileTimes

Compile = Callable[[Function], Any]  # an optimized-and-compiled nested function


@dataclass(frozen=True, slots=True)
class _Segment:
    """A compiled stretch of kernels: reads ``params``, defines ``results``."""

    executable: Any
    params: tuple[Value, ...]
    results: tuple[Value, ...]

    def run(self, env: dict[Value, np.ndarray]) -> None:
        outs = self.executable.run([env[v] for v in self.params])
        env.update(zip(self.results, outs, strict=True))

    def executables(self) -> list[Any]:
        return [self.executable]

    def kernels(self) -> list[KernelInfo]:
        return list(self.executable.kernels)

    def describe(self) -> str:
        return f"{len(self.executable.kernels)} kernels"


class HostArrays:
    """How the drivers make and index arrays on the CPU backend: NumPy arrays."""

    @staticmethod
    def inputs(args: Sequence[Any]) -> list[Any]:
        return list(args)

    @staticmethod
    def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    @staticmethod
    def row(x: np.ndarray, i: int) -> np.ndarray:
        return x[i, ...]  # a C-ordered view (a 0-d array for a vector), never a NumPy scalar

    @staticmethod
    def rows(x: np.ndarray) -> list[np.ndarray]:
        """Every ``row(x, i)``, made at once (``list`` makes the views in C; it would give
        NumPy scalars for a vector)."""
        return list(x) if x.ndim > 1 else [x[i, ...] for i in range(len(x))]

    @staticmethod
    def set_row(y: np.ndarray, i: int, value: np.ndarray) -> None:
        y[i] = value

    @staticmethod
    def fresh(out: np.ndarray, args: Sequence[Any]) -> np.ndarray:
        return np.array(out, copy=True) if any(np.may_share_memory(out, a) for a in args) else out


class _StackedPool:
    """A scan's stacked outputs, reused by its next call once nothing holds them any more
    (the residuals a forward scan stacks for the backward one are dropped when the call
    ends): a new array of half a megabyte page-faults on first touch (glibc maps it anew
    and the kernel zeroes every page), which cost W10's GRU step 1,300 faults a call, as
    much as its elementwise kernels. NumPy arrays only: a row view keeps its array
    referenced, so an array the caller still holds, or a view of, is never reused. The
    price: the last two arrays per output stay allocated between calls, as the runner's
    pool of large outputs."""

    def __init__(self, arrays: Any, count: int) -> None:
        self.arrays = arrays
        self.recycle = arrays is HostArrays
        self.slots: list[list[Any]] = [[None, None] for _ in range(count)]  # the last two per output

    def take(self, k: int, shape: tuple[int, ...], dtype: Any) -> Any:
        if not self.recycle:
            return self.arrays.empty(shape, dtype)
        q = self.slots[k]
        for a in q:
            # Three references: the pool's, the loop variable's and getrefcount's argument.
            if a is not None and sys.getrefcount(a) <= 3 and a.shape == shape:
                return a
        a = self.arrays.empty(shape, dtype)
        q[1], q[0] = q[0], a
        return a


class ControlFlowExecutable:
    """Runs ``fn``'s kernels in stretches between its control-flow ops (see the module
    docstring). ``compile_nested(body)`` optimizes, partitions and compiles a nested
    function (supplied by ``fusejit.runtime.executable``, which owns that pipeline);
    ``make_segment(fn, fused, donated)`` compiles a stretch whose params at the indices
    ``donated`` it may overwrite; ``arrays`` makes and indexes the backend's arrays
    (``HostArrays``, or ``fusejit.runtime.devices.DeviceArrays``).

    ``donate_argnums``: the stretch after the last loop (a training step's parameter
    update) writes its results over the donated arguments it reads. An argument that a
    loop or branch reads, or that the function returns, is not donated: a loop that runs
    zero times passes its argument through, and overwriting it would change a result.
    ``donated`` says which were."""

    def __init__(
        self,
        fn: Function,
        fused: FusedFunction,
        compile_nested: Compile,
        make_segment: Callable[[Function, FusedFunction, tuple[int, ...]], Any],
        arrays: Any = HostArrays,
        donate_argnums: Sequence[int] = (),
    ) -> None:
        self.function = fn
        self.arrays = arrays
        self.fused = fused
        control_inputs = {v for op in fn.ops if op.prim in CONTROL_FLOW for v in op.inputs}
        self.donated: tuple[int, ...] = tuple(sorted(
            k for k in set(donate_argnums) if arrays is HostArrays  # NumPy's aliasing checks below
            and fn.params[k] not in control_inputs and fn.params[k] not in fn.results))
        self._parts: list[_Segment | _Driver] = []
        groups = list(fused.groups)
        later_reads = _reads_after(groups, fn)
        last = {fn.params[k] for k in self.donated}
        pending: list[FusionGroup] = []
        with compiling_together():
            for k, group in enumerate(groups):
                control = next((op for op in group.ops if op.prim in CONTROL_FLOW), None)
                if control is None:
                    pending.append(group)
                    continue
                if pending:
                    self._parts.append(_segment(fn, pending, later_reads[k] | set(group.inputs), make_segment, ()))
                    pending = []
                self._parts.append(_Driver(control, compile_nested, arrays))
            if pending:
                self._parts.append(_segment(fn, pending, set(fn.results), make_segment, last))
        if not (pending and any(p in last for p in self._parts[-1].params)):
            self.donated = ()  # no stretch after the last loop reads them: nothing to overwrite
        self._passed_through = _passed_through(fn)
        self.kernels: list[KernelInfo] = [info for st in self._parts for info in st.kernels()]

    @property
    def compile_times(self) -> CompileTimes:
        """The stretches' and bodies' lowering and kernel times (a loop nested in a body
        compiles with the outermost function, so they are summed when asked for)."""
        total = CompileTimes()
        for st in self._parts:
            for exe in st.executables():
                times = getattr(exe, "compile_times", None)
                if times is not None:
                    total.lower += times.lower
                    total.startup = max(total.startup, times.startup)
                    total.kernels += list(times.kernels)
        return total

    def __call__(self, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return self.run(args)

    def run(self, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        if donation.consumed:  # the drivers read their arguments without the runners' check
            donation.check_not_consumed(args)
        args = self.arrays.inputs(args)
        kept = args
        if self.donated:
            # A donated array must be ours to overwrite: one that shares memory with another
            # argument (the caller passed it twice) is copied first, as the runner does.
            args = [np.array(a, copy=True) if k in self.donated and any(
                j != k and np.may_share_memory(a, b) for j, b in enumerate(args)) else a
                for k, a in enumerate(args)]
            kept = [a for k, a in enumerate(args) if k not in self.donated]
        env: dict[Value, np.ndarray] = dict(zip(self.function.params, args, strict=True))
        for st in self._parts:
            st.run(env)
        # A result may be an argument itself (a loop that ran zero times returns its
        # initial carry): results are always fresh arrays, as the other executables'
        # (except those written over a donated argument, which is what donation is for).
        return tuple(self.arrays.fresh(env[r], kept) if through else env[r]
                     for r, through in zip(self.function.results, self._passed_through, strict=True))

    def nested_executables(self) -> list[Any]:
        """The executables of the loop bodies and branches, in program order."""
        return [exe for st in self._parts if isinstance(st, _Driver) for exe in st.nested]

    def kernel_source(self) -> str:
        return self._each_part("kernel_source")

    def runner_source(self) -> str:
        """The generated runners of the stretches and bodies (the drivers between them are
        this class's Python), in program order."""
        return self._each_part("runner_source")

    def _each_part(self, method: str) -> str:
        parts = []
        for k, st in enumerate(self._parts):
            for exe in st.executables():
                text = getattr(exe, method, None)
                if text is not None:
                    parts.append(f"# ---- step {k}: {st.describe()}\n{text()}")
        return "\n\n".join(parts)


def _reads_after(groups: list[FusionGroup], fn: Function) -> list[set[Value]]:
    """For each group index, the values read by later groups or returned."""
    out: list[set[Value]] = [set() for _ in groups]
    acc: set[Value] = set(fn.results)
    for k in range(len(groups) - 1, -1, -1):
        out[k] = set(acc)
        acc.update(groups[k].inputs)
    return out


def _passed_through(fn: Function) -> tuple[bool, ...]:
    """Per result of ``fn``, whether it can be an argument's own array: a parameter, a
    ``while_loop``'s result (it returns its inputs when it runs zero times) or the carry
    of a scan of length 0. Every other result is new: stretches and branches copy the
    parameters they return, and stacked outputs are new arrays."""
    producer = fn.producers()

    def through(v: Value) -> bool:
        op = producer.get(v)
        if op is None:
            return True  # a parameter
        if op.prim is P.while_loop:
            return True
        return op.prim is P.scan and op.attrs["length"] == 0 and op.outputs.index(v) < op.attrs["num_carry"]

    return tuple(through(r) for r in fn.results)


def _segment(
    fn: Function,
    groups: list[FusionGroup],
    needed: set[Value],
    make_segment: Callable[[Function, FusedFunction, tuple[int, ...]], Any],
    donated: set[Value] | tuple[()],
) -> _Segment:
    """The stretch of ``groups`` as a compiled function of what it reads; its params in
    ``donated`` (arguments of the whole function) it may overwrite."""
    ops: dict[int, Op] = {}
    for g in groups:
        for op in g.ops:
            ops.setdefault(id(op), op)
    sub = sub_function(f"{fn.name}_part", list(ops.values()), needed)
    mine = tuple(k for k, p in enumerate(sub.params) if p in donated)
    return _Segment(make_segment(sub, FusedFunction(sub, tuple(groups)), mine), sub.params, sub.results)


class _Driver:
    """One control-flow op over compiled nested functions."""

    def __init__(self, op: Op, compile_nested: Compile, arrays: Any) -> None:
        self.op = op
        self.nested = [compile_nested(f) for f in op.functions()]
        self.arrays = arrays
        self.stacked = _StackedPool(arrays, len(op.outputs))

    def executables(self) -> list[Any]:
        return self.nested

    def kernels(self) -> list[KernelInfo]:
        return [info for exe in self.nested for info in exe.kernels]

    def describe(self) -> str:
        where = f" at {self.op.loc}" if self.op.loc else ""
        return f"{self.op.prim.name}{where}"

    def run(self, env: dict[Value, np.ndarray]) -> None:
        args = [env[v] for v in self.op.inputs]
        op = self.op
        if op.prim is P.scan:
            a = op.attrs
            outs = _run_scan(self.nested[0], a["body"], args, a["length"], a["reverse"], a["num_consts"],
                             a["num_carry"], self.arrays, self.stacked.take)
        elif op.prim is P.while_loop:
            outs = _run_while(
                self.nested[0], self.nested[1], args, op.attrs["cond_nconsts"], op.attrs["body_nconsts"]
            )
        else:
            outs = self.nested[branch_index(int(args[0]), len(self.nested))].run(args[1:])
        env.update(zip(op.outputs, outs, strict=True))


def _run_scan(
    body: Any,
    fn: Function,
    args: list[np.ndarray],
    length: int,
    reverse: bool,
    num_consts: int,
    num_carry: int,
    arrays: Any,
    stacked: Callable[[int, tuple[int, ...], Any], Any],
) -> tuple[np.ndarray, ...]:
    """Runs a scan's body ``length`` times; ``stacked(k, shape, dtype)`` gives the array
    for stacked output ``k`` (``_StackedPool.take``)."""
    consts = args[:num_consts]
    carry = args[num_consts : num_consts + num_carry]
    xs = args[num_consts + num_carry :]
    ys = [stacked(k, (length,) + r.shape, r.dtype.np) for k, r in enumerate(fn.results[num_carry:])]
    run, set_row = body.run, arrays.set_row
    # A body that can write its results into given arrays (a CPU executable) writes each
    # y into its row of the stacked output: no copy and no new array per iteration.
    writes = getattr(body, "writes_into", ())
    direct = writes[num_carry:] or (False,) * len(ys)
    copied = [k for k, d in enumerate(direct) if not d]
    # Each iteration's slices of the xs, and the arrays its results go to (None: the body
    # makes a new one), as tuples made before the loop: the iterations only pick them (a
    # call per row and iteration, then a list per iteration, cost microseconds a step).
    x_rows = [_rows(arrays, x, length) for x in xs]
    xs_at = list(zip(*x_rows, strict=True)) if x_rows else [()] * length
    # The carry is double-buffered: the n-th iteration run writes its carry into buffer
    # n % 2, which the previous one read from and no one holds (a new array per
    # iteration cost 1-3.5 us each in W10's GRU bodies, the 196 kB of a weight gradient
    # most). The last buffers written are the scan's results, new to every call.
    carry_into = [(None,) * num_carry] * 2
    buffered = length > 1 and any(writes[:num_carry])
    if buffered:
        carry_into = [tuple(arrays.empty(r.shape, r.dtype.np) if w else None
                            for r, w in zip(fn.results[:num_carry], writes[:num_carry], strict=True)) for _ in range(2)]
    y_at = [()] * length
    if len(copied) < len(ys):
        no_row = (None,) * length  # a copied output's
        y_at = list(zip(*(_rows(arrays, y, length) if d else no_row for y, d in zip(ys, direct, strict=True)),
                        strict=True))
    into_at = None
    if len(copied) < len(ys) or buffered:
        into_at = [carry_into[(length - 1 - i if reverse else i) % 2] + y_at[i] for i in range(length)]
    for i in range(length - 1, -1, -1) if reverse else range(length):
        outs = run((*consts, *carry, *xs_at[i])) if into_at is None else run((*consts, *carry, *xs_at[i]), into_at[i])
        carry = outs[:num_carry]
        for k in copied:
            set_row(ys[k], i, outs[num_carry + k])
    return (*carry, *ys)


def _rows(arrays: Any, x: Any, length: int) -> list[Any]:
    rows = getattr(arrays, "rows", None)
    return rows(x) if rows is not None else [arrays.row(x, i) for i in range(length)]


def _run_while(
    cond: Any, body: Any, args: list[np.ndarray], cond_nconsts: int, body_nconsts: int
) -> tuple[np.ndarray, ...]:
    cond_consts = args[:cond_nconsts]
    body_consts = args[cond_nconsts : cond_nconsts + body_nconsts]
    carry = tuple(args[cond_nconsts + body_nconsts :])
    while bool(cond.run([*cond_consts, *carry])[0]):
        carry = tuple(body.run([*body_consts, *carry]))
    return carry
