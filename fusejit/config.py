"""fusejit's settings: each declared once with its default, environment variable and help.

Read a setting as ``config.value("dump_dir")``; change it with ``fj.config.update(name,
value)`` or temporarily with ``with fj.config.override(name=value):``. Environment
variables are read when fusejit is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str


def _flag(text: str) -> bool:
    return text.strip().lower() not in ("", "0", "false", "no", "off")


def _optional_path(text: str) -> str | None:
    return text or None


SETTINGS = {
    s.name: s
    for s in (
        Setting("disable_jit", "FUSEJIT_DISABLE_JIT", False, _flag, "jit runs functions eagerly (for pdb and print)."),
        Setting("dump_dir", "FUSEJIT_DUMP", None, _optional_path, "Write each compilation's IR stages and kernels here."),
        Setting("cache", "FUSEJIT_CACHE", True, _flag, "Keep compiled kernels in the on-disk cache."),
        Setting("cache_dir", "FUSEJIT_CACHE_DIR", None, _optional_path, "The on-disk cache (default: the user cache dir)."),
        Setting("debug_nans", "FUSEJIT_DEBUG_NANS", False, _flag, "Check each kernel's outputs for NaN/inf."),
        Setting("backend", "FUSEJIT_BACKEND", "cpu", str, "Default backend: cpu, cuda or interpret (the reference interpreter)."),
        Setting("check_ir", "FUSEJIT_CHECK_IR", False, _flag, "Verify the IR after every pass."),
        Setting("parallel_threshold", "FUSEJIT_PARALLEL_THRESHOLD", 1 << 18, int, "CPU kernels over at least this many elements use threads (prange)."),
        Setting("parallel_chunks", "FUSEJIT_PARALLEL_CHUNKS", True, _flag, "A CPU kernel whose parallel loop comes last runs it in chunks on fusejit's threads (serial Numba code, faster to compile); off: a Numba parfor."),
        Setting("llvm_kernels", "FUSEJIT_LLVM_KERNELS", True, _flag, "CPU kernels are printed as LLVM IR and compiled without Numba's front end where the LLVM printer spells them (faster to compile); off: every kernel is a Numba module."),
        Setting("profile", "FUSEJIT_PROFILE", False, _flag, "Print the per-kernel profile of every jitted function at exit."),
        Setting("log_compiles", "FUSEJIT_LOG_COMPILES", False, _flag, "Log one line per compilation: function, signature, reason, time per stage, kernels."),
        Setting("retrace_limit", "FUSEJIT_RETRACE_LIMIT", 8, int, "Warn (RetraceWarning) when a jitted function is traced more often than this."),
        Setting("compile", "FUSEJIT_COMPILE", "sync", str, "sync: a call waits for its kernels; background: calls run on the interpreter until they are compiled."),
        Setting("compile_workers", "FUSEJIT_COMPILE_WORKERS", "auto", str, "Worker processes compiling uncached kernels in parallel: auto (CPUs - 1, at most 4) or a number; 0 for none."),
        Setting("distributed_checks", "FUSEJIT_DISTRIBUTED_CHECKS", True, _flag, "Before each MPI collective the ranks compare what they call (one 16-byte Allreduce): mismatches raise instead of hanging. Set it alike on every rank."),
        Setting("cuda_replay", "FUSEJIT_CUDA_REPLAY", True, _flag, "A CUDA executable's later calls replay its first call's launches through the driver (off: every launch goes through Numba's dispatcher)."),
        Setting("cuda_blas_min_flops", "FUSEJIT_CUDA_BLAS_MIN_FLOPS", 1 << 20, int, "CUDA float matmuls of at least this many flops call cuBLAS (through CuPy), their epilogue launched after; smaller ones are loop nests with the epilogue fused."),
        Setting("blas_threads", "FUSEJIT_BLAS_THREADS", "auto", str, "BLAS threads for GEMMs: auto (1 unless a GEMM does 2**31 flops) or a number."),
    )
}  # fmt: skip

_values: dict[str, Any] = {}
# A read-only live view of the values, for hot paths that cannot afford ``value()``'s lookup.
LIVE: Mapping[str, Any] = MappingProxyType(_values)


def _load_environment() -> None:
    for s in SETTINGS.values():
        raw = os.environ.get(s.env)
        _values[s.name] = s.default if raw is None else s.parse(raw)


def _setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise KeyError(f"unknown fusejit setting {name!r}; known: {', '.join(SETTINGS)}") from None


def value(name: str) -> Any:
    return _values[_setting(name).name]


def update(name: str, new_value: Any) -> None:
    """Sets a setting for the rest of the process (``fj.config.update``)."""
    setting = _setting(name)
    _values[setting.name] = setting.parse(new_value) if isinstance(new_value, str) and setting.parse is _flag else new_value


@contextmanager
def override(**changes: Any) -> Iterator[None]:
    """Temporarily changes settings inside a ``with`` block."""
    saved = {name: value(name) for name in changes}
    try:
        for name, v in changes.items():
            update(name, v)
        yield
    finally:
        _values.update(saved)


def describe() -> str:
    """A table of every setting, its environment variable, value and help."""
    return "\n".join(f"{s.name:12} {s.env:20} {value(s.name)!r:10} {s.help}" for s in SETTINGS.values())


_load_environment()
