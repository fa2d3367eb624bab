"""Where a compilation's time goes: ``CompileTimes``.

One compilation (a cache miss of a jitted function) passes through the stages of
``fusejit.tracer.jit.Lowered``: tracing the Python function, optimizing the IR, fusing it
into kernels, lowering and planning the kernels (kernel IR, source text, buffer plan),
starting Numba (importing it and the code generator, which ``import fusejit`` does not, and
when something is to be compiled, loading its registries: once per process, ~0.5 s and
~0.7 s more), and compiling each kernel with Numba or loading it from the disk cache. ``jitted.cache_info()``
lists one ``CompileTimes`` per miss, ``Compiled.compile_times`` the one of its executable,
and ``FUSEJIT_DUMP`` writes it as ``compile_times.txt``. All times are wall-clock seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class KernelOrigin(StrEnum):
    COMPILED = "compiled"  # Numba compiled it in this call
    DISK = "disk"  # loaded from Numba's on-disk cache
    MEMORY = "memory"  # already compiled in this process (an identical kernel elsewhere)
    WORKER = "worker"  # compiled by a compile worker process, then loaded from the disk cache


@dataclass(frozen=True, slots=True)
class KernelTime:
    name: str  # the kernel's display name (kind, dtype, shape)
    seconds: float
    origin: KernelOrigin


@dataclass
class CompileTimes:
    """Seconds per stage of one compilation; ``kernels`` per kernel, in call order."""

    trace: float = 0.0
    optimize: float = 0.0
    fuse: float = 0.0
    lower: float = 0.0
    startup: float = 0.0  # importing Numba and the code generator, then Numba's registries: once per process
    kernels: list[KernelTime] = field(default_factory=list)
    interpreted_calls: int = 0  # background compilation: calls answered by the interpreter meanwhile

    def add_executable(self, exe_times: CompileTimes) -> None:
        """Takes an executable's lowering, start-up and per-kernel times (the earlier stages
        are this compilation's own; start-up adds to the runtime's import, already here)."""
        self.lower = exe_times.lower
        self.startup += exe_times.startup
        self.kernels = list(exe_times.kernels)

    @property
    def kernel_seconds(self) -> float:
        return sum(k.seconds for k in self.kernels)

    @property
    def total(self) -> float:
        return self.trace + self.optimize + self.fuse + self.lower + self.startup + self.kernel_seconds

    def count(self, origin: KernelOrigin) -> int:
        return sum(k.origin is origin for k in self.kernels)

    def summary(self) -> str:
        """One line: ``2.41 s = trace 0.03 + optimize 0.01 + ... (10 kernels: 8 compiled...)``."""
        origins = ", ".join(f"{self.count(o)} {o}" for o in KernelOrigin if self.count(o))
        background = (f"; in the background, {self.interpreted_calls} calls interpreted meanwhile"
                      if self.interpreted_calls else "")
        return (f"{self.total:.3f} s = trace {self.trace:.3f} + optimize {self.optimize:.3f} + fuse "
                f"{self.fuse:.3f} + lower {self.lower:.3f} + numba start-up {self.startup:.3f} + kernels "
                f"{self.kernel_seconds:.3f} "
                f"({len(self.kernels)} kernels{': ' + origins if origins else ''}{background})")

    def __str__(self) -> str:
        lines = [self.summary()]
        for k in sorted(self.kernels, key=lambda k: -k.seconds):
            lines.append(f"  {k.seconds:8.3f} s  {k.origin:<8}  {k.name}")
        return "\n".join(lines)
