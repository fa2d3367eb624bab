"""Compiling, caching and loading kernels printed as LLVM IR (``fusejit.codegen.cpu.llvm_printer``).

A kernel's LLVM text goes to Numba's code generator as one more library: the math-library
functions it declares are renamed to the symbols of their Numba-compiled versions (loaded
from Numba's disk cache, or compiled once per installation) and linked in, then the
library is optimized (the same LLVM passes and target machine as every Numba function:
the math library inlines and loops vectorize) and compiled by Numba's JIT. No Numba type
inference or lowering runs, and a process that compiles only such kernels never loads
Numba's typing registries.

Cache: ``<cache dir>/<version key>/fjl_<key>.nobj`` holds the library's object code and
the bitcode Numba keeps for linking (``serialize_using_object_code``), pickled behind a
checksum: an entry that is damaged, truncated or of another kernel is a miss, removed and
compiled again (``COUNTERS.cache_repairs``). The key hashes the kernel's Numba-dialect
source (which names every operation and constant), its arrays' dtypes, whether it is
chunked, and the hashes of this printer, the math library and the GEMM module: the text is
only printed on a miss. Compilations and loads count in ``COUNTERS.numba_compiles`` and
``numba_cache_loads`` like Numba's own (``FUSEJIT_CACHE=0``: compiled in memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from fusejit.codegen.cpu import gemm, llvm_printer, mathlib
from fusejit.runtime.cache import COUNTERS, _lock, compile_dispatchers, module_directory, start_numba
from fusejit.runtime.timings import KernelOrigin

_MAGIC = b"fusejit-llvm-kernel-1\n"
_loaded: dict[str, Any] = {}  # cache name -> its finalized library (kept alive: the code is in it)


def cache_name(source: str, dtypes: Sequence[str], chunked: bool) -> str:
    """The cache name of the kernel whose Numba-dialect module is ``source``."""
    key = "|".join([source, ",".join(dtypes), str(chunked), llvm_printer.SOURCE_HASH, mathlib.SOURCE_HASH,
                    gemm.SOURCE_HASH])
    return "fjl_" + hashlib.sha256(key.encode()).hexdigest()[:32]


def loaded() -> dict[str, Any]:
    """The kernels this process has loaded or compiled, by cache name."""
    return _loaded


def on_disk(name: str) -> bool:
    directory, disk = module_directory()
    return disk and (directory / f"{name}.nobj").exists()


def load(name: str, text: Callable[[], str]) -> tuple[int, Any, KernelOrigin]:
    """The address of kernel ``name``'s function, the library that holds its code, and
    where it came from: this process, the disk cache, or compiled here from ``text()``
    (and written to the cache)."""
    with _lock:
        if name in _loaded:
            return _address(_loaded[name], name), _loaded[name], KernelOrigin.MEMORY
        directory, disk = module_directory()
        path = directory / f"{name}.nobj"
        library = _read(path, name) if disk else None
        origin = KernelOrigin.DISK
        if library is None:
            library = _compile(text(), name)
            origin = KernelOrigin.COMPILED
            if disk:
                _write(path, library)
        _loaded[name] = library
        return _address(library, name), library, origin


def compile_to_disk(name: str, text: str) -> bool:
    """Compiles kernel ``name`` into the disk cache unless it is there; whether it compiled."""
    return load(name, lambda: text)[2] is KernelOrigin.COMPILED


def _address(library: Any, name: str) -> int:
    address = library.get_pointer_to_function(name)
    if not address:  # pragma: no cover - the printer always defines it
        raise RuntimeError(f"no machine code for kernel {name}")
    return address


def _codegen() -> Any:
    from numba.core.registry import cpu_target

    start_numba(compiling=False)
    return cpu_target.target_context.codegen()


def _compile(text: str, name: str) -> Any:
    from llvmlite import binding as llvm
    from numba.core.compiler_lock import global_compiler_lock

    codegen = _codegen()
    with global_compiler_lock:
        library = codegen.create_library(name)
        library.enable_object_caching()
        module = llvm.parse_assembly(text)
        for fn in module.functions:
            if fn.name == llvm_printer.KERNEL_SYMBOL:
                fn.name = name
            elif fn.name.startswith(llvm_printer.MATH_PREFIX):
                overload = _math_overload(fn.name[len(llvm_printer.MATH_PREFIX):])
                fn.name = overload.fndesc.llvm_func_name
                library.add_linking_library(overload.library)
        module.triple, module.data_layout = codegen._tm.triple, codegen._data_layout
        module.verify()
        # Linked in as it is: Numba's per-function passes (``add_llvm_module``) prepare its
        # own lowering's output for inlining, and on this IR only cost time (7-11% of W5's,
        # W7's and W10's kernels' compilation; the machine code is the same: bit-identical
        # results); ``finalize`` then runs Numba's module pipeline (O3, vectorizers).
        library._final_module.link_in(module)
        library.finalize()
    COUNTERS.numba_compiles += 1
    return library


def _math_overload(function: str) -> Any:
    """The compiled math-library function ``exp_f32`` (its overload for its float type),
    loaded from Numba's disk cache or compiled."""
    from numba.core import types
    from numba.core.dispatcher import Dispatcher

    dispatcher = getattr(mathlib, function, None)
    if function.startswith("_") or not function.endswith(("_f32", "_f64")) or not isinstance(dispatcher, Dispatcher):
        raise ValueError(f"not a math-library function: {function!r}")
    dtype = types.float32 if function.endswith("_f32") else types.float64
    signature = (dtype,) * dispatcher.py_func.__code__.co_argcount
    compile_dispatchers(dispatcher, signature)
    return dispatcher.overloads[signature]


def warm_math_library() -> int:
    """Compiles (or loads) every math-library function into Numba's disk cache, as the
    LLVM kernels link them; ``make`` does it once at installation, so that a first call
    compiles only its kernels (and never loads Numba's registries). Returns how many were
    compiled here."""
    from numba.core.dispatcher import Dispatcher

    before = COUNTERS.numba_compiles
    for name, value in vars(mathlib).items():
        if isinstance(value, Dispatcher) and not name.startswith("_") and name.endswith(("_f32", "_f64")):
            _math_overload(name)
    return COUNTERS.numba_compiles - before


def _read(path: Any, name: str) -> Any:
    """The library cached at ``path``, or None (absent, or damaged: then removed)."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    try:
        digest, payload = blob[len(_MAGIC):len(_MAGIC) + 32], blob[len(_MAGIC) + 32:]
        if not blob.startswith(_MAGIC) or hashlib.sha256(payload).digest() != digest:
            raise ValueError("checksum")
        state = pickle.loads(payload)
        if state[0] != name:
            raise ValueError("another kernel's entry")
        library = _codegen().unserialize_library(state)
        _address(library, name)
        COUNTERS.numba_cache_loads += 1
        return library
    except Exception:  # a damaged entry is a miss
        with contextlib.suppress(OSError):
            path.unlink()
        COUNTERS.cache_repairs += 1
        return None


def _write(path: Any, library: Any) -> None:
    payload = pickle.dumps(library.serialize_using_object_code(), protocol=pickle.HIGHEST_PROTOCOL)
    blob = _MAGIC + hashlib.sha256(payload).digest() + payload
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".nobj")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
