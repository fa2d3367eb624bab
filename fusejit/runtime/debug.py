"""``FUSEJIT_DUMP=<dir>``: every compilation's IR stages and kernel sources as files.

Each compilation gets a directory ``<dir>/<NNN>_<function name>/`` holding
``00_traced.ir``, one ``NN_<pass>.ir`` per pipeline stage (stamped with the pass and its
time), ``NN_fused.ir`` (the partition into kernels), ``kernels/<kernel>.py`` (each
kernel's source as ``Compiled.kernel_source()`` shows it, and ``kernels/<kernel>.ll``, the
LLVM IR a CPU kernel is compiled from when the LLVM printer spells it), ``runner.py`` (the Python
function every call runs) and ``compile_times.txt`` (seconds per stage and per kernel,
``fusejit.runtime.timings``).
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusejit.ir.core import Function
from fusejit.ir.transforms.fusion import fusion_report

_counter = itertools.count()
_lock = threading.Lock()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] or "fn"


def dump_compilation(
    root: str, fn: Function, exe: Any, *, stages: Sequence[Any] = (), traced: Function | None = None,
    backend: str = "cpu", times: Any = None,
) -> Path:
    """Writes one compilation's files; returns its directory."""
    with _lock:
        n = next(_counter)
        base = Path(root)
        base.mkdir(parents=True, exist_ok=True)
        while True:
            directory = base / f"{n:03d}_{_safe(fn.name)}"
            try:
                directory.mkdir()
                break
            except FileExistsError:
                n = next(_counter)
    files: list[tuple[str, str]] = []
    k = 0
    if traced is not None:
        files.append((f"{k:02d}_traced.ir", f"// stage: traced\n{traced}"))
        k += 1
    for stage in stages:
        header = f"// stage: {stage.pass_name} ({stage.seconds * 1e3:.2f} ms)\n"
        files.append((f"{k:02d}_{_safe(stage.pass_name)}.ir", header + str(stage.function)))
        k += 1
    if not stages:
        files.append((f"{k:02d}_optimized.ir", f"// stage: optimized\n{fn}"))
        k += 1
    files.append((f"{k:02d}_fused.ir", f"// stage: fused ({backend} backend)\n{exe.fused}"))
    files.append(("fusion_report.txt", fusion_report(exe.fused)))
    if times is not None:
        files.append(("compile_times.txt", f"{times}\n"))
    for path, text in files:
        (directory / path).write_text(text, encoding="utf-8")
    kernels = getattr(exe, "kernels", [])
    if kernels:
        kdir = directory / "kernels"
        kdir.mkdir(exist_ok=True)
        llvm = exe.llvm_sources() if hasattr(exe, "llvm_sources") else [""] * len(kernels)
        for i, (info, text) in enumerate(zip(kernels, llvm, strict=True)):
            (kdir / f"{i:02d}_{_safe(info.name)}.py").write_text(info.source, encoding="utf-8")
            if text:  # what it was compiled from (fusejit/codegen/cpu/llvm_printer.py)
                (kdir / f"{i:02d}_{_safe(info.name)}.ll").write_text(text, encoding="utf-8")
    runner = getattr(exe, "runner_source", None)
    if runner is not None:
        (directory / "runner.py").write_text(runner(), encoding="utf-8")
    return directory
