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
measures it). The driver allocates the stacked outputs once per call and copies each
iteration's outputs into their slice; the carry moves from one body call's results to
the next call's arguments without copies, and the body's runner recycles the buffers of
the carry two iterations back (its output pool), so a large carry is double-buffered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.control_flow import CONTROL_FLOW, branch_index
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.fusion import FusedFunction, FusionGroup
from fusejit.ir.transforms.fusion_control import sub_function
from fusejit.runtime.cpu import KernelInfo
from fusejit.runtime.timings import CompileTimes

Compile = Callable[[Function], Any]  # an optimized-and-compiled nested function


def has_control_flow(fn: Function) -> bool:
    return any(op.prim in CONTROL_FLOW for op in fn.ops)


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
    def set_row(y: np.ndarray, i: int, value: np.ndarray) -> None:
        y[i] = value

    @staticmethod
    def fresh(out: np.ndarray, args: Sequence[Any]) -> np.ndarray:
        return np.array(out, copy=True) if any(np.may_share_memory(out, a) for a in args) else out


class ControlFlowExecutable:
    """Runs ``fn``'s kernels in stretches between its control-flow ops (see the module
    docstring). ``compile_nested(body)`` optimizes, partitions and compiles a nested
    function (supplied by ``fusejit.runtime.executable``, which owns that pipeline);
    ``make_segment(fn, fused)`` compiles a stretch; ``arrays`` makes and indexes the
    backend's arrays (``HostArrays``, or ``fusejit.runtime.devices.DeviceArrays``)."""

    def __init__(
        self,
        fn: Function,
        fused: FusedFunction,
        compile_nested: Compile,
        make_segment: Callable[[Function, FusedFunction], Any],
        arrays: Any = HostArrays,
    ) -> None:
        self.function = fn
        self.arrays = arrays
        self.fused = fused
        self.donated: tuple[int, ...] = ()
        self.compile_times = CompileTimes()
        self._parts: list[_Segment | _Driver] = []
        groups = list(fused.groups)
        later_reads = _reads_after(groups, fn)
        pending: list[FusionGroup] = []
        for k, group in enumerate(groups):
            control = next((op for op in group.ops if op.prim in CONTROL_FLOW), None)
            if control is None:
                pending.append(group)
                continue
            if pending:
                self._parts.append(_segment(fn, pending, later_reads[k] | set(group.inputs), make_segment))
                pending = []
            self._parts.append(_Driver(control, compile_nested, arrays))
        if pending:
            self._parts.append(_segment(fn, pending, set(fn.results), make_segment))
        self.kernels: list[KernelInfo] = [info for st in self._parts for info in st.kernels()]
        for st in self._parts:
            for exe in st.executables():
                times = getattr(exe, "compile_times", None)
                if times is not None:
                    self.compile_times.lower += times.lower
                    self.compile_times.startup = max(self.compile_times.startup, times.startup)
                    self.compile_times.kernels += list(times.kernels)

    def __call__(self, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return self.run(args)

    def run(self, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        args = self.arrays.inputs(args)
        env: dict[Value, np.ndarray] = dict(zip(self.function.params, args, strict=True))
        for st in self._parts:
            st.run(env)
        # A result may be an argument itself (a loop that ran zero times returns its
        # initial carry): results are always fresh arrays, as the other executables'.
        return tuple(self.arrays.fresh(env[r], args) for r in self.function.results)

    def nested_executables(self) -> list[Any]:
        """The executables of the loop bodies and branches, in program order."""
        return [exe for st in self._parts if isinstance(st, _Driver) for exe in st.nested]

    def kernel_source(self) -> str:
        parts = []
        for k, st in enumerate(self._parts):
            for exe in st.executables():
                parts.append(f"# ---- step {k}: {st.describe()}\n{exe.kernel_source()}")
        return "\n\n".join(parts)


def _reads_after(groups: list[FusionGroup], fn: Function) -> list[set[Value]]:
    """For each group index, the values read by later groups or returned."""
    out: list[set[Value]] = [set() for _ in groups]
    acc: set[Value] = set(fn.results)
    for k in range(len(groups) - 1, -1, -1):
        out[k] = set(acc)
        acc.update(groups[k].inputs)
    return out


def _segment(
    fn: Function,
    groups: list[FusionGroup],
    needed: set[Value],
    make_segment: Callable[[Function, FusedFunction], Any],
) -> _Segment:
    ops: dict[int, Op] = {}
    for g in groups:
        for op in g.ops:
            ops.setdefault(id(op), op)
    sub = sub_function(f"{fn.name}_part", list(ops.values()), needed)
    return _Segment(make_segment(sub, FusedFunction(sub, tuple(groups))), sub.params, sub.results)


class _Driver:
    """One control-flow op over compiled nested functions."""

    def __init__(self, op: Op, compile_nested: Compile, arrays: Any) -> None:
        self.op = op
        self.nested = [compile_nested(f) for f in op.functions()]
        self.arrays = arrays

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
                             a["num_carry"], self.arrays)
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
) -> tuple[np.ndarray, ...]:
    consts = args[:num_consts]
    carry = list(args[num_consts : num_consts + num_carry])
    xs = args[num_consts + num_carry :]
    ys = [arrays.empty((length,) + r.shape, r.dtype.np) for r in fn.results[num_carry:]]
    run, row, set_row = body.run, arrays.row, arrays.set_row
    for i in range(length - 1, -1, -1) if reverse else range(length):
        outs = run([*consts, *carry, *(row(x, i) for x in xs)])
        carry = outs[:num_carry]
        for y, o in zip(ys, outs[num_carry:], strict=True):
            set_row(y, i, o)
    return (*carry, *ys)


def _run_while(
    cond: Any, body: Any, args: list[np.ndarray], cond_nconsts: int, body_nconsts: int
) -> tuple[np.ndarray, ...]:
    cond_consts = args[:cond_nconsts]
    body_consts = args[cond_nconsts : cond_nconsts + body_nconsts]
    carry = tuple(args[cond_nconsts + body_nconsts :])
    while bool(cond.run([*cond_consts, *carry])[0]):
        carry = tuple(body.run([*body_consts, *carry]))
    return carry
