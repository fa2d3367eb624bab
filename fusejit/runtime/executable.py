"""Executables: what a compiled function is at run time.

``compile_function`` turns an optimized IR function into an ``Executable``: a callable on
flat NumPy arrays. The ``"interpret"`` backend runs the IR through the reference
interpreter (the semantics every other backend is tested against).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fusejit.ir.core import Function
from fusejit.ir.interpreter import run_function
from fusejit.ir.transforms.fusion import FusedFunction, one_op_per_group


@dataclass(frozen=True, slots=True)
class KernelInfo:
    """One kernel of an executable, as ``Compiled.kernels`` reports it."""

    name: str
    ops: tuple[str, ...]
    bytes_in: int
    bytes_out: int
    source: str = ""


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


def compile_function(
    fn: Function,
    *,
    backend: str = "interpret",
    fuse: bool = True,
    donate_argnums: tuple[int, ...] = (),
) -> InterpretedExecutable:
    """Compiles an optimized function for ``backend``."""
    if backend == "interpret":
        return InterpretedExecutable(fn, one_op_per_group(fn))
    raise ValueError(f"unknown backend {backend!r} (known: interpret)")
