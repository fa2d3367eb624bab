"""Executables: what a compiled function is at run time.

``compile_function`` turns an optimized IR function into an executable: a callable on a
list of NumPy arrays (one per parameter) returning a tuple of arrays. Backends:

* ``"interpret"``: the reference interpreter, op by op (the semantics every other backend
  is tested against);
* ``"cpu"``: fusion groups lowered to Numba kernels called in turn by one generated
  Python runner (``fusejit.runtime.cpu``);
* ``"cuda"``: the same groups as Numba CUDA launches on a GPU, results left there as
  ``DeviceArray``s (``fusejit.runtime.cuda``).

Both expose ``.fused`` (the partition into kernels), ``.kernels`` (``KernelInfo``) and
``.kernel_source()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusejit import config
from fusejit.ir import primitives as P
from fusejit.ir.control_flow import has_control_flow
from fusejit.ir.core import Function
from fusejit.ir.interpreter import run_function
from fusejit.ir.transforms import fusion
from fusejit.ir.transforms.fusion import FusedFunction, one_op_per_group
from fusejit.runtime.timings import CompileTimes

# The CPU runtime and the control-flow drivers are imported where they are used, not with
# this module: they import Numba (through the CPU code generator), which the interpreter
# backend does not need.
if TYPE_CHECKING:
    from fusejit.runtime.cpu import KernelInfo

BACKENDS = ("interpret", "cpu", "cuda")


@dataclass(eq=False)
class InterpretedExecutable:
    """Runs the IR op by op through the primitives' NumPy rules."""

    function: Function
    fused: FusedFunction
    kernels: list[KernelInfo] = field(default_factory=list)

    def __call__(self, args: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        return run_function(self.function, *args)

    def kernel_source(self) -> str:
        return ""


def partition(fn: Function, fuse: bool = True, backend: str = "cpu") -> FusedFunction:
    """The kernels of an optimized ``fn`` on ``backend``, computed without compiling: the
    fusion pass's groups (asking the code generator's structural ``supports``) when
    ``fuse``, else one op per kernel. The interpreter runs ``fn`` itself, op by op; the
    CPU backend inlines ``custom_vjp_call`` (only its ``fun`` runs forward) and
    ``checkpoint`` first."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if backend == "interpret":
        return one_op_per_group(fn)
    if any(op.prim in (P.custom_vjp_call, P.checkpoint) for op in fn.ops):
        from fusejit.ir.transforms.checkpoint import inline_checkpoints
        from fusejit.ir.transforms.inline import inline_calls

        fn = inline_checkpoints(inline_calls(fn))
    if not fuse:
        return one_op_per_group(fn)
    from fusejit.codegen.target import TARGETS

    return fusion.fuse(fn, supports=TARGETS[backend].supports)


def compile_function(
    fused: FusedFunction,
    *,
    backend: str = "interpret",
    donate_argnums: tuple[int, ...] = (),
    stages: Sequence[Any] = (),
    traced: Function | None = None,
    times: CompileTimes | None = None,
    fuse: bool = True,
    nested: bool = False,
) -> Any:
    """Compiles a partition (``partition(fn, fuse, backend)``) for ``backend``: an
    ``InterpretedExecutable``, a ``CpuExecutable``, or with ``config compile =
    "background"`` a ``fusejit.runtime.background.BackgroundExecutable``.

    ``donate_argnums`` are flat parameter indices whose buffers the executable may reuse
    for outputs. ``stages`` and ``traced`` (the pipeline's intermediate functions) are only
    used for ``FUSEJIT_DUMP``. ``times``, when given, receives the lowering and per-kernel
    compile times (the earlier stages' times already in it are dumped with them).
    ``fuse`` says how the nested functions of control-flow ops (loop bodies, branches)
    are partitioned; they are optimized and compiled once, with the function: ``nested``
    (a loop body or a branch) compiles now whatever the compile mode, since its driver
    runs it (in background mode, the driver is what compiles behind the interpreter).
    """
    fn = fused.function
    dump_dir = config.value("dump_dir")

    def dump(exe: Any) -> None:
        if dump_dir:
            from fusejit.runtime.cpu import after_compiling
            from fusejit.runtime.debug import dump_compilation

            # A loop body's kernels compile with its whole function (``compiling_together``).
            after_compiling(lambda: dump_compilation(dump_dir, fn, exe, stages=stages, traced=traced,
                                                     backend=backend, times=times))

    if backend in ("cpu", "cuda") and has_control_flow(fn):
        from fusejit.runtime.control import ControlFlowExecutable
        from fusejit.runtime.cpu import CpuExecutable

        # Loops and branches run as drivers over nested executables (fusejit.runtime.control),
        # one executable per stretch of kernels between them; the stretch after the last loop
        # takes the donated arguments it can.
        kernels, arrays = _kernel_executable(backend)
        if backend == "cpu" and not nested and config.value("compile") == "background":
            from fusejit.runtime.background import BackgroundExecutable

            # The stretches' kernels compile in the workers; the bodies' in the thread.
            return BackgroundExecutable(fused, (), times, on_ready=dump, build=lambda: ControlFlowExecutable(
                fn, fused, lambda f: _compile_nested(f, fuse, backend),
                lambda f, part, donated: CpuExecutable(f, part, donated, workers_only=True), arrays,
                donate_argnums))
        exe = ControlFlowExecutable(fn, fused, lambda f: _compile_nested(f, fuse, backend), kernels, arrays,
                                    donate_argnums)
        if times is not None:
            times.add_executable(exe.compile_times)
        dump(exe)
        return exe
    if backend == "cpu" and not nested and config.value("compile") == "background":
        from fusejit.runtime.background import BackgroundExecutable

        return BackgroundExecutable(fused, donate_argnums, times, on_ready=dump)
    if backend == "interpret":
        exe: Any = InterpretedExecutable(fn, fused)
    elif backend in ("cpu", "cuda"):
        exe = _kernel_executable(backend)[0](fn, fused, donate_argnums)
        if times is not None:
            times.add_executable(exe.compile_times)
    else:
        raise ValueError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    dump(exe)
    return exe


def _kernel_executable(backend: str) -> tuple[Any, Any]:
    """The executable class of a compiled backend and the array operations its control-flow
    drivers use (``numba.cuda`` is imported only for the CUDA backend)."""
    if backend == "cuda":
        from fusejit.runtime.cuda import CudaExecutable
        from fusejit.runtime.devices import DeviceArrays

        return CudaExecutable, DeviceArrays
    from fusejit.runtime.control import HostArrays
    from fusejit.runtime.cpu import CpuExecutable

    return CpuExecutable, HostArrays


def _compile_nested(fn: Function, fuse: bool, backend: str) -> Any:
    """A loop body or branch, optimized, partitioned and compiled for ``backend``."""
    from fusejit.ir.transforms.pipeline import optimize

    optimized, _ = optimize(fn, check=config.value("check_ir"))
    return compile_function(partition(optimized, fuse, backend), backend=backend, fuse=fuse, nested=True)
