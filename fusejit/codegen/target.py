"""Code-generation targets: what differs between the CPU and, next, a GPU.

A ``Target`` is passed to fusion (``supports``) and lowering (``lower``). It holds the
primitives' codegen rules, the strategies it lowers each ``GroupKind`` with, its thread
model (from how many elements a kernel's outer loop runs on threads, and how many threads
that may be, which sizes per-thread scratch), whether floating matmuls are BLAS calls,
and its printer (a ``Kernel`` as source for its compiler). Everything else in
``fusejit.codegen`` is shared; a second target is a second ``Target`` object.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fusejit import config
from fusejit.codegen.cpu import printer as cpu_printer
from fusejit.codegen.kernel import Kernel, Unsupported
from fusejit.codegen.lowering import CODEGEN_RULES, STRATEGIES, LoweredKernel, Strategy, lower_on, supports_on
from fusejit.codegen.rules import CodegenRule
from fusejit.ir.core import Value
from fusejit.ir.primitives import Primitive
from fusejit.ir.transforms.fusion import FusionGroup, GroupKind


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    name: str
    rules: Mapping[Primitive, CodegenRule]
    strategies: Mapping[GroupKind, Strategy]
    parallel_threshold: Callable[[], int]  # elements from which an outer loop runs on threads
    max_threads: Callable[[], int]  # threads a parallel loop may run on
    blas: bool  # floating matmuls as BLAS calls (else loop nests)
    print_module: Callable[[Kernel], str]  # a kernel (and its helpers) as one source module

    def supports(self, group: FusionGroup) -> str | None:
        """None if this target lowers ``group``'s structure, else why not (what fusion
        asks; nothing is lowered)."""
        return supports_on(self, group)

    def lower(self, group: FusionGroup, *, parallel_threshold: int | None = None,
              inplace: dict[Value, Value] | None = None) -> LoweredKernel:
        """``group`` as a kernel; raises ``Unsupported`` naming the reason if it cannot be."""
        return lower_on(self, group, parallel_threshold=parallel_threshold, inplace=inplace)

    def can_lower(self, group: FusionGroup) -> str | None:
        """None if ``group`` lowers, else why not: a whole lowering, for tests that check
        that ``supports`` was right."""
        try:
            self.lower(group)
        except Unsupported as e:
            return str(e) or "unsupported group"
        return None


def _numba_threads() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


# Numba on the CPU: prange loops from ``config parallel_threshold`` elements (see the
# package docstring), BLAS through SciPy for float matmuls.
CPU = Target(
    name="cpu",
    rules=CODEGEN_RULES,
    strategies=STRATEGIES,
    parallel_threshold=lambda: int(config.value("parallel_threshold")),
    max_threads=_numba_threads,
    blas=True,
    print_module=cpu_printer.module_source,
)


def supports(group: FusionGroup) -> str | None:
    """``CPU.supports``."""
    return CPU.supports(group)


def lower_group(group: FusionGroup, **kw: Any) -> LoweredKernel:
    """``CPU.lower``."""
    return CPU.lower(group, **kw)


def can_lower(group: FusionGroup) -> str | None:
    """``CPU.can_lower``."""
    return CPU.can_lower(group)
