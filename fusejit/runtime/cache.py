"""Generated modules: content-addressed source files, loaded as Python modules, compiled
by Numba with its on-disk cache next to them.

Layout: ``<cache dir>/<version key>/fj_<sha256 of the source>.py``, and Numba's
``__pycache__/fj_*.nbi|nbc`` beside them (or under ``NUMBA_CACHE_DIR`` when that is set). The version key hashes fusejit's, Numba's,
llvmlite's, NumPy's and Python's versions, the math library's source hash and the CPU
(name and features), so a cached machine-code entry is only ever reused where it was
made. The source hash is the module name: identical kernels from different functions,
batch sizes or processes are one module, compiled once.

Files are written atomically (a temporary file hard-linked to its final name, so a file
that exists is complete and never rewritten: Numba's cache index keys on its mtime).
Modules are loaded with ``importlib`` (``spec_from_file_location`` and a ``sys.modules``
entry, which Numba's cache needs to find the module again in a later process).

``FUSEJIT_CACHE=0`` keeps everything in memory: modules go to a per-process temporary
directory and compile without ``cache=True``. A cache directory that cannot be created
or written falls back to that with one warning; a corrupted Numba cache entry is
discarded and recompiled (``compile_dispatcher``).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from fusejit import config
from fusejit.version import __version__


class CacheWarning(UserWarning):
    """The on-disk cache could not be used; compiled code stays in memory."""


@dataclass
class Counters:
    """Process-wide counts, for tests and benchmarks (``fusejit.runtime.cache.COUNTERS``).

    ``numba_compiles``: (function, signature) pairs Numba compiled from scratch;
    ``numba_cache_loads``: pairs loaded from Numba's disk cache; ``modules_written``:
    source files this process wrote; ``modules_loaded``: modules executed;
    ``cache_repairs``: corrupted cache entries discarded and recompiled.
    """

    numba_compiles: int = 0
    numba_cache_loads: int = 0
    modules_written: int = 0
    modules_loaded: int = 0
    cache_repairs: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


COUNTERS = Counters()
_lock = threading.RLock()
_warned: set[str] = set()
_memory_dir: Path | None = None


def _version_key() -> str:
    import llvmlite
    import numba
    import numpy
    from llvmlite import binding as llvm

    from fusejit.codegen.cpu import mathlib

    try:
        cpu = llvm.get_host_cpu_name() + ":" + llvm.get_host_cpu_features().flatten()
    except Exception:  # pragma: no cover - LLVM without host queries
        cpu = platform.machine()
    parts = [
        __version__, numba.__version__, llvmlite.__version__, numpy.__version__,
        platform.python_version(), platform.machine(), cpu, mathlib.SOURCE_HASH,
    ]  # fmt: skip
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return f"v{__version__}-{digest}"


_VERSION_KEY: str | None = None


def version_key() -> str:
    global _VERSION_KEY
    if _VERSION_KEY is None:
        _VERSION_KEY = _version_key()
    return _VERSION_KEY


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fusejit"


def _warn_once(key: str, message: str) -> None:
    """Warns once per ``key``, at the user's line that led here (the first frame outside
    fusejit, however deep in the compile path the cache was reached)."""
    if key not in _warned:
        _warned.add(key)
        package = str(Path(__file__).resolve().parents[1])
        frame, level = sys._getframe(0), 1  # level 1 is this function, as for warnings.warn
        while frame is not None and frame.f_code.co_filename.startswith(package):
            frame, level = frame.f_back, level + 1
        warnings.warn(message, CacheWarning, stacklevel=level)


def _memory_directory() -> Path:
    global _memory_dir
    if _memory_dir is None:
        _memory_dir = Path(tempfile.mkdtemp(prefix="fusejit-"))
        atexit.register(shutil.rmtree, str(_memory_dir), True)
    return _memory_dir


def _usable(directory: Path) -> bool:
    """Whether ``directory`` can be created and written (probe file)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        pycache = directory / "__pycache__"
        pycache.mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=pycache, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
        return True
    except OSError:
        return False


_checked: dict[str, bool] = {}


def module_directory() -> tuple[Path, bool]:
    """Where modules go now, and whether Numba's disk cache is on there."""
    if not config.value("cache"):
        return _memory_directory(), False
    root = Path(config.value("cache_dir") or default_cache_root())
    directory = root / version_key()
    key = str(directory)
    if key not in _checked:
        _checked[key] = _usable(directory)
        if not _checked[key]:
            _warn_once(key, f"fusejit: the cache directory {str(root)!r} is not writable; "
                            "compiled kernels are kept in memory for this process")
    if not _checked[key]:
        return _memory_directory(), False
    return directory, True


def module_name(source: str) -> str:
    return "fj_" + hashlib.sha256(source.encode()).hexdigest()[:32]


def _write_atomic(path: Path, text: str) -> bool:
    """Writes ``text`` to ``path`` unless it exists; True if this call wrote it."""
    if path.exists():
        return False
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            os.link(tmp, path)  # fails if another process won the race: keep theirs
        except FileExistsError:
            return False
        except OSError:
            os.replace(tmp, path)
            tmp = ""
        return True
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def load_module(source: str) -> ModuleType:
    """The module of ``source`` (executed once per process; written once per cache)."""
    name = module_name(source)
    with _lock:
        mod = sys.modules.get(name)
        if mod is not None:
            return mod
        directory, disk = module_directory()
        path = directory / f"{name}.py"
        try:
            if _write_atomic(path, source):
                COUNTERS.modules_written += 1
            elif path.read_bytes() != source.encode("utf-8"):  # damaged (any bytes): replace it
                path.unlink()
                _write_atomic(path, source)
        except OSError as e:
            if not disk:
                raise
            _warn_once(str(directory), f"fusejit: cannot write to the cache ({e}); "
                                       "compiled kernels are kept in memory")
            _checked[str(directory)] = False
            return load_module(source)
        return _exec(name, path, disk)


def _exec(name: str, path: Path, disk: bool) -> ModuleType:
    from fusejit.codegen import cpu, cuda

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    cpu.DISK_CACHE = cuda.DISK_CACHE = disk
    try:
        spec.loader.exec_module(mod)
    except RuntimeError as e:  # Numba found no writable place for its cache
        if not disk or "cache" not in str(e):
            del sys.modules[name]
            raise
        _warn_once("numba-locator", f"fusejit: Numba cannot cache here ({e}); compiling in memory")
        cpu.DISK_CACHE = cuda.DISK_CACHE = False
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        cpu.DISK_CACHE = cuda.DISK_CACHE = False
    COUNTERS.modules_loaded += 1
    return mod


# ---------------------------------------------------------------------------------------
# Compiling dispatchers, with counters and repair of corrupted cache entries


def _state(dispatcher: Any) -> tuple[int, int]:
    return len(dispatcher.overloads), sum(dispatcher.stats.cache_hits.values())


def _reachable(main: Any, generated_only: bool) -> list[Any]:
    """``main`` and the dispatchers its module refers to (kernel helpers, and with
    ``generated_only=False`` the math library)."""
    from numba.core.dispatcher import Dispatcher

    found = {id(main): main}
    for obj in main.py_func.__globals__.values():
        if isinstance(obj, Dispatcher) and (not generated_only or obj.py_func.__module__.startswith("fj_")):
            found[id(obj)] = obj
    return list(found.values())


_numba_started = False  # the NRT, which every kernel needs, compiled or loaded
_registries_loaded = False  # Numba's typing and lowering registries, which compiling needs


def start_numba(compiling: bool = True) -> float:
    """Starts Numba in this process (once) for loading kernels: the NRT, and with
    ``compiling`` Numba's typing and target registries, which compiling needs but loading a
    kernel from the disk cache does not (``_load_cached``); returns the seconds it took.
    The registries take ~0.7 s, most of a warm first call: they import all of Numba's
    NumPy and CPython implementations, and SciPy's BLAS through ``scipy.linalg``."""
    global _numba_started, _registries_loaded
    if _registries_loaded or (_numba_started and not compiling):
        return 0.0
    from numba.core.registry import cpu_target
    from numba.core.runtime import rtsys

    start = time.perf_counter()
    with _lock:
        if compiling:
            cpu_target.target_context.refresh()
            cpu_target.typing_context.refresh()
            _registries_loaded = True
        else:
            rtsys.initialize(cpu_target.target_context)
        _numba_started = True
    return time.perf_counter() - start


class CacheEntryMismatch(RuntimeError):
    """A Numba cache entry that belongs to another function: discarded and compiled again."""


def _load_cached(dispatcher: Any, signature: tuple[Any, ...]) -> bool:
    """Whether ``dispatcher`` has ``signature``'s machine code now: already, or loaded from
    Numba's disk cache without the registries, as Numba's own ``compile`` does after
    loading them (Numba's private API, ``numba.core.dispatcher.Dispatcher.compile``: the
    cache's load without its refresh of the registries, then the cache-hit branch)."""
    from numba.core.compiler_lock import global_compiler_lock

    if tuple(signature) in dispatcher.overloads:
        return True
    cache = getattr(dispatcher, "_cache", None)
    if not hasattr(cache, "_load_overload"):  # a NullCache: no disk cache
        return False
    start_numba(compiling=False)
    with global_compiler_lock:
        cres = cache._load_overload(signature, dispatcher.targetctx)
        if cres is None or cres.objectmode:
            return False
        # Numba trusts its index: an entry of another function put in this one's place (two
        # kernels' files swapped) would load and run as this one.
        py = dispatcher.py_func
        if (cres.fndesc.modname, cres.fndesc.qualname, tuple(cres.signature.args)) != (
                py.__module__, py.__qualname__, tuple(signature)):
            raise CacheEntryMismatch(f"the cached entry of {py.__module__}.{py.__qualname__} is another function's")
        dispatcher._cache_hits[signature] += 1
        dispatcher.targetctx.insert_user_function(cres.entry_point, cres.fndesc, [cres.library])
        dispatcher.add_overload(cres)
    return True


def compile_dispatchers(main: Any, signature: tuple[Any, ...]) -> None:
    """Compiles ``main`` for ``signature`` (which compiles or loads the helpers it calls),
    counting compilations and cache loads. A corrupted cache entry (unpickling errors and
    the like) is discarded and compiled again: first the entries of generated modules,
    then, if that was not enough, every dispatcher involved."""
    with _lock:
        before_overloads, before_hits = _state(main)
        for attempt in range(3):
            try:
                if attempt > 0 or not _load_cached(main, signature):
                    start_numba(compiling=True)
                    main.compile(signature)
                break
            except Exception:
                if attempt == 2:
                    raise
                for d in _reachable(main, generated_only=attempt == 0):
                    if d is not main and d.overloads:
                        continue  # compiled in this process already: its cache is not read
                    with contextlib.suppress(Exception):
                        d._cache.flush()  # Numba's private API: the only way to drop a bad entry
                COUNTERS.cache_repairs += 1
        after_overloads, after_hits = _state(main)
        loads = after_hits - before_hits
        COUNTERS.numba_cache_loads += loads
        COUNTERS.numba_compiles += max(after_overloads - before_overloads - loads, 0)
