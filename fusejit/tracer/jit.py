"""``fj.jit``: trace once per signature, optimize, compile, cache, run.

A signature is the pytree structure of the dynamic arguments, each leaf's shape and
dtype (Python scalars are weakly typed), and the static arguments' values. A call whose
signature was seen before does no tracing and no IR work: it flattens the arguments,
looks the executable up and runs it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import threading
import time
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusejit import config
from fusejit.ir.core import Function
from fusejit.ir.types import TensorType
from fusejit.runtime.devices import DeviceArray
from fusejit.runtime.timings import CompileTimes
from fusejit.tracer.inplace import InputMutationWarning, first_write
from fusejit.tracer.pytree import LEAF, TreeDef, tree_flatten, tree_flatten_with_path, tree_unflatten
from fusejit.tracer.tracing import (
    _TRACES,
    TracedArray,
    argument_type,
    escaped_tracer_error,
    is_tracing,
    sanitize_name,
    trace_function,
)
from fusejit.version import __version__

if TYPE_CHECKING:  # imported when a call first optimizes, not by ``import fusejit`` (issue 12)
    from fusejit.ir.transforms.fusion import FusedFunction
    from fusejit.ir.transforms.pipeline import Stage

_SCALAR_TYPES = (bool, int, float)
_CONFIG = config.LIVE  # read directly on the hot path


# Argument types executables take as they are (anything else becomes a NumPy array).
_EXECUTABLE_ARRAYS = (np.ndarray, DeviceArray)


def _leaf_signature(leaf: Any) -> Any:
    """What of a leaf the compiled code depends on: shape and dtype, or the scalar type."""
    kind = type(leaf)
    if kind is np.ndarray:
        return (leaf.shape, leaf.dtype)
    if kind in _SCALAR_TYPES:
        return kind
    if isinstance(leaf, np.generic):
        return ((), leaf.dtype)
    if isinstance(leaf, np.ndarray) or kind is DeviceArray:  # subclasses: np.memmap, np.matrix, ...
        return (leaf.shape, leaf.dtype)
    return None  # not an argument type: _leaf_type raises when this signature is traced


def _describe_signature(sig: Any) -> str:
    if isinstance(sig, type):
        return f"Python {sig.__name__}"
    shape, dtype = sig
    return f"{dtype}{list(shape)}"


def _leaf_type(path: str, leaf: Any) -> tuple[TensorType, bool]:
    """The IR type of an argument leaf and whether it is weakly typed."""
    if isinstance(leaf, TracedArray):
        raise escaped_tracer_error(leaf, f"argument {path}")
    typed = argument_type(leaf, path)
    if typed is None:
        raise TypeError(
            f"argument {path}: a {type(leaf).__name__} is not an array or scalar; "
            "pass arrays, or mark the argument static with static_argnums/static_argnames"
        )
    return typed


class RetraceWarning(UserWarning):
    """A jitted function was traced more than ``config retrace_limit`` times."""


def _compile_logger() -> logging.Logger:
    """The ``fusejit.compile`` logger, printing to stderr unless the application set up
    logging itself."""
    logger = logging.getLogger("fusejit.compile")
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger


@dataclass
class CacheInfo:
    """Hits and misses of a jitted function's cache, why each miss retraced, and where
    each miss's compilation spent its time (``compile_times[k]``, filled in as the stages
    run: a ``fusejit.runtime.timings.CompileTimes``)."""

    hits: int = 0
    misses: int = 0
    reasons: list[str] = field(default_factory=list)
    compile_times: list[CompileTimes] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"hits={self.hits} misses={self.misses}"]
        for i, r in enumerate(self.reasons):
            lines.append(f"  miss {i + 1}: {r}")
            if i < len(self.compile_times):
                lines.append(f"    compile {self.compile_times[i].summary()}")
        return "\n".join(lines)


@dataclass(eq=False)
class _Signature:
    """A traced signature, kept to explain later misses."""

    treedef: TreeDef
    leaves: dict[str, Any]  # pytree path -> _leaf_signature
    static: dict[str, tuple[Any, str]]  # parameter name -> (value, "position" or "name")


@dataclass(eq=False)
class Compiled:
    """A compiled executable with the output structure of the function it came from."""

    lowered: Lowered
    executable: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        dynamic, _, _ = self.lowered.jitted._split(args, kwargs)
        leaves, _ = tree_flatten(dynamic)
        return self.lowered._run(self.executable, leaves)

    def kernel_source(self) -> str:
        return self.executable.kernel_source()

    def profile(self, *args: Any, repeat: int | None = None, **kwargs: Any) -> Any:
        """Times each kernel on these arguments (same structure as a call; copied, never
        modified): a ``fusejit.runtime.profile.Profile`` with, per kernel, its kind, fused
        ops and source lines, median time, bytes read and written, GB/s and share of the
        whole call's median. ``repeat``: measured rounds (default: about 0.5 s worth, 5 to
        200). Raises ``ValueError`` on the ``interpret`` backend or for arguments of
        another signature."""
        from fusejit.runtime.profile import profile_executable

        dynamic, _, _ = self.lowered.jitted._split(args, kwargs)
        leaves, _ = tree_flatten(dynamic)
        if len(leaves) != len(self.lowered.in_types):
            raise ValueError(f"profile: {len(leaves)} array arguments, compiled for {len(self.lowered.in_types)}")
        name = getattr(self.lowered.jitted, "__name__", None) or self.lowered.traced.name
        return profile_executable(self.executable, leaves, repeat=repeat, name=name)

    @property
    def kernels(self) -> list[Any]:
        return list(self.executable.kernels)

    @property
    def compile_times(self) -> CompileTimes:
        """Seconds per stage and per kernel of this compilation."""
        return self.lowered.times


@dataclass(eq=False)
class Lowered:
    """A traced and optimized function, not yet compiled (``jitted.lower(...)``)."""

    jitted: Jitted
    traced: Function
    out_tree: TreeDef
    in_types: tuple[TensorType, ...]
    donated: tuple[int, ...] = ()  # flat indices of leaves whose buffers may be reused
    _optimized: tuple[Function, list[Stage]] | None = None
    _fused: FusedFunction | None = None
    _executable: Any = None
    times: CompileTimes = field(default_factory=CompileTimes)  # filled in stage by stage

    @property
    def optimized(self) -> Function:
        if self._optimized is None:
            start = time.perf_counter()  # the first call of a process also loads the passes
            from fusejit.ir.transforms.pipeline import optimize

            self._optimized = optimize(self.traced, check=config.value("check_ir"))
            self.times.optimize = time.perf_counter() - start
        return self._optimized[0]

    @property
    def stages(self) -> list[Stage]:
        self.optimized  # noqa: B018 - computes the stages
        assert self._optimized is not None
        return self._optimized[1]

    @property
    def fused(self) -> FusedFunction:
        """The partition into kernels (fused, or one op per kernel), computed without
        compiling anything."""
        if self._fused is None:
            optimized = self.optimized
            # The runtime loads the code generator and Numba (~0.4 s): the first compilation
            # imports it, not ``import fusejit`` (issue 12), and counts it as start-up.
            start = time.perf_counter()
            from fusejit.runtime.executable import partition

            self.times.startup += time.perf_counter() - start
            start = time.perf_counter()
            self._fused = partition(optimized, backend=self.jitted.backend, fuse=self.jitted.fuse)
            self.times.fuse = time.perf_counter() - start
        return self._fused

    def executable(self) -> Any:
        if self._executable is None:
            with self.jitted._miss_lock:  # one compilation when threads call at once
                if self._executable is None:
                    fused = self.fused  # first: it times the runtime's import as start-up
                    from fusejit.runtime.executable import compile_function

                    self._executable = compile_function(
                        fused,
                        backend=self.jitted.backend,
                        donate_argnums=self.donated,
                        stages=self.stages,
                        traced=self.traced,
                        times=self.times,
                        fuse=self.jitted.fuse,
                    )
        return self._executable

    def as_text(self, stage: str = "optimized") -> str:
        """The IR at ``stage``: ``"traced"``, ``"optimized"`` or ``"fused"``."""
        if stage == "traced":
            return str(self.traced)
        if stage == "optimized":
            return str(self.optimized)
        if stage == "fused":
            return str(self.fused)
        raise ValueError(f"unknown stage {stage!r}: use 'traced', 'optimized' or 'fused'")

    def fusion_report(self) -> str:
        """Every kernel with its ops and source lines, the bytes it reads and writes, and
        every producer -> consumer edge left unfused with the rule that refused it."""
        from fusejit.ir.transforms.fusion import fusion_report

        return fusion_report(self.fused)

    def describe(self) -> str:
        """One line: the function, its signature, why it was traced and where the
        compilation's time went (``FUSEJIT_LOG_COMPILES``)."""
        params = ", ".join(f"{p.name or f'arg{k}'}: {p.type}" for k, p in enumerate(self.traced.params))
        reasons = self.jitted._info.reasons
        k = next((i for i, t in enumerate(self.jitted._info.compile_times) if t is self.times), None)
        why = f" [{reasons[k]}]" if k is not None and k < len(reasons) else ""
        return f"{self.traced.name}({params}){why} in {self.times.summary()}"

    def compile(self) -> Compiled:
        return Compiled(self, self.executable())

    def _fast_runner(self) -> Callable[[tuple], Any]:
        """``run(args)`` for positional ndarray arguments of this signature (the leaves in
        order); looks the executable's runner up on every call (``FUSEJIT_DEBUG_NANS``
        can change it)."""
        exe = self.executable()
        out_tree = self.out_tree
        if not hasattr(exe, "run"):
            run = lambda args: tree_unflatten(out_tree, exe(args))  # noqa: E731
        elif out_tree == LEAF:
            run = lambda args: exe.run(args)[0]  # noqa: E731
        else:
            run = lambda args: tree_unflatten(out_tree, exe.run(args))  # noqa: E731
        if _CONFIG["profile"]:  # FUSEJIT_PROFILE: decided here, so off costs nothing per call
            from fusejit.runtime.profile import recording_runner

            return recording_runner(self, run)
        return run

    def _run(self, executable: Any, leaves: Sequence[Any]) -> Any:
        arrays = [
            leaf if type(leaf) in _EXECUTABLE_ARRAYS else np.asarray(leaf, dtype=t.dtype.np)
            for leaf, t in zip(leaves, self.in_types, strict=True)
        ]
        if _CONFIG["profile"]:
            from fusejit.runtime.profile import record_call

            record_call(self, arrays)
        return tree_unflatten(self.out_tree, executable(arrays))


class Jitted:
    """A function wrapped by ``fj.jit``."""

    def __init__(
        self,
        fun: Callable[..., Any],
        *,
        static_argnums: int | Sequence[int] = (),
        static_argnames: str | Sequence[str] = (),
        donate_argnums: int | Sequence[int] = (),
        backend: str | None = None,
        fuse: bool = True,
    ) -> None:
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.fuse = fuse
        self._backend = backend
        try:
            self._params = list(inspect.signature(fun).parameters.values())
        except (TypeError, ValueError):
            self._params = []
        positional = [p.name for p in self._params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        nums = {static_argnums} if isinstance(static_argnums, int) else set(static_argnums)
        names = {static_argnames} if isinstance(static_argnames, str) else set(static_argnames)
        nums = {n % len(positional) if n < 0 and positional else n for n in nums}
        # A static parameter is static whether it is passed by position or by name.
        names |= {positional[n] for n in nums if n < len(positional)}
        nums |= {positional.index(n) for n in names if n in positional}
        self.static_argnums = frozenset(nums)
        self.static_argnames = frozenset(names)
        donate = {donate_argnums} if isinstance(donate_argnums, int) else set(donate_argnums)
        self.donate_argnums = frozenset(donate)
        self._positional = positional
        self._cache: dict[Any, Lowered] = {}
        # Misses trace and compile under this lock: threads making the same first call at
        # once each compiled it (found by trying it). Re-entrant for a function that calls
        # itself while tracing.
        self._miss_lock = threading.RLock()
        self._fast: dict[Any, Callable[[tuple], Any]] = {}  # see __call__
        self._info = CacheInfo()
        self._last: _Signature | None = None
        self._warned_inputs: set[str] = set()  # arguments whose mutation was warned about

    @property
    def backend(self) -> str:
        return self._backend or config.value("backend")

    def __repr__(self) -> str:
        return f"<jitted {getattr(self.fun, '__qualname__', self.fun)}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        return self if obj is None else functools.partial(self, obj)

    # The hot path --------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Fast path: positional plain ndarrays whose shapes and dtypes were seen before go
        # straight to the executable (no pytree flattening, no signature objects).
        if self._fast and not kwargs and not _TRACES.traces and not _CONFIG["disable_jit"]:
            try:
                if len(args) == 1:  # the common case, without building a tuple of tuples
                    a = args[0]
                    run = self._fast.get((a.shape, a.dtype, type(a)))
                else:
                    run = self._fast.get(tuple([(a.shape, a.dtype, type(a)) for a in args]))
            except AttributeError:  # a Python scalar or another leaf: the general path
                run = None
            if run is not None:
                self._info.hits += 1
                return run(args)
        if is_tracing() or config.value("disable_jit"):
            return self.fun(*args, **kwargs)
        dynamic, static_key, treedef_leaves = self._split(args, kwargs)
        leaves, treedef = tree_flatten(dynamic)
        key = (treedef, static_key, tuple(map(_leaf_signature, leaves)))
        lowered = self._cache.get(key)
        if lowered is None:
            with self._miss_lock:
                lowered = self._cache.get(key)
                if lowered is None:  # not compiled by another thread meanwhile
                    fingerprint = self._expect_compilation(key)
                    lowered = self._lower(args, kwargs)
                    self._info.misses += 1
                    self._warn_if_retraced_too_often()
                    lowered.executable()
                    self._cache[key] = lowered
                    if fingerprint is not None:
                        from fusejit.runtime import compile_pool

                        compile_pool.finished_call(fingerprint)
                    if config.value("log_compiles"):
                        _compile_logger().info("fusejit: compiled %s", lowered.describe())
                else:
                    self._info.hits += 1
        else:
            self._info.hits += 1
        if not kwargs and not static_key and all(type(a) in _EXECUTABLE_ARRAYS for a in args):
            fast_key = tuple((a.shape, a.dtype, type(a)) for a in args)
            self._fast[fast_key[0] if len(args) == 1 else fast_key] = lowered._fast_runner()
        return lowered._run(lowered.executable(), leaves)

    def _expect_compilation(self, key: Any) -> str | None:
        """On the CPU, lets the compile workers start while this call traces, if it will
        likely compile (``compile_pool.expect_compilation``); returns the call's
        fingerprint (None where the function has no code to hash)."""
        if self.backend != "cpu":
            return None
        digest = hashlib.sha256(f"{__version__}|{self.fuse}|{key!r}".encode())
        if not _hash_code(digest, self.fun, set()):
            return None
        from fusejit.runtime import compile_pool

        fingerprint = digest.hexdigest()[:32]
        compile_pool.expect_compilation(fingerprint)
        return fingerprint

    def _split(self, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, Any, None]:
        """(dynamic pytree, hashable static key, None). The static key holds ``(position or
        name, type, value)`` per static argument: the type keeps ``1`` and ``1.0`` apart,
        which compare equal but trace differently."""
        if not self.static_argnums and not self.static_argnames:
            return (args, kwargs), (), None
        static = tuple((i, type(a), a) for i, a in enumerate(args) if i in self.static_argnums)
        static += tuple(
            sorted(((k, type(v), v) for k, v in kwargs.items() if k in self.static_argnames), key=_first)
        )
        try:
            hash(static)
        except TypeError:
            bad, _, value = next(item for item in static if not _hashable(item[2]))
            raise TypeError(
                f"static argument {self._static_name(bad)} of {self.__name__} is unhashable "
                f"({type(value).__name__}); static arguments must be hashable "
                "(use a tuple instead of a list), or make the argument non-static"
            ) from None
        dyn_args = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        dyn_kwargs = {k: v for k, v in kwargs.items() if k not in self.static_argnames}
        return (dyn_args, dyn_kwargs), static, None

    def _param_name(self, key: int | str) -> str:
        """The parameter an argument position (or keyword) binds to."""
        if isinstance(key, str):
            return key
        return self._positional[key] if key < len(self._positional) else f"args[{key}]"

    def _static_name(self, key: int | str) -> str:
        """A static argument as the user knows it: ``n (position 1)`` or ``n``."""
        return key if isinstance(key, str) else f"{self._param_name(key)} (position {key})"

    # Tracing -------------------------------------------------------------------------
    def _arg_name(self, dyn_index: int) -> str:
        positions = (i for i in range(dyn_index + len(self.static_argnums) + 1) if i not in self.static_argnums)
        i = list(positions)[dyn_index]
        return self._positional[i] if i < len(self._positional) else f"args[{i}]"

    def _paths(
        self, args: tuple, kwargs: dict[str, Any]
    ) -> tuple[list[tuple[str, Any]], TreeDef, Any, tuple[int, ...]]:
        """Leaves with their paths, the tree structure, the static key and the flat
        indices of the donated leaves."""
        (dyn_args, dyn_kwargs), static, _ = self._split(args, kwargs)
        leaves: list[tuple[str, Any]] = []
        donated: list[int] = []
        positions = [i for i in range(len(args)) if i not in self.static_argnums]
        for j, a in enumerate(dyn_args):
            arg_leaves = tree_flatten_with_path(a, self._arg_name(j))[0]
            if positions[j] in self.donate_argnums:
                donated += range(len(leaves), len(leaves) + len(arg_leaves))
            leaves += arg_leaves
        for k in sorted(dyn_kwargs):
            leaves += tree_flatten_with_path(dyn_kwargs[k], k)[0]
        _, treedef = tree_flatten((dyn_args, dyn_kwargs))
        return leaves, treedef, static, tuple(donated)

    def _lower(self, args: tuple, kwargs: dict[str, Any]) -> Lowered:
        path_leaves, treedef, static, donated = self._paths(args, kwargs)
        signature = _Signature(
            treedef,
            {p: _leaf_signature(x) for p, x in path_leaves},
            {
                self._param_name(k): (v, "name" if isinstance(k, str) else "position")
                for k, _, v in static
            },
        )
        typed = [_leaf_type(p, x) for p, x in path_leaves]  # raises for leaves of no IR type
        reason = self._why_retrace(signature)
        in_types = tuple(t for t, _ in typed)
        static_items = {k: v for k, _, v in static}

        def flat_fun(*leaf_values: Any) -> Any:
            dyn_args, dyn_kwargs = tree_unflatten(treedef, leaf_values)
            it = iter(dyn_args)
            n = len(dyn_args) + sum(1 for k in static_items if isinstance(k, int))
            call_args = [static_items[i] if i in static_items else next(it) for i in range(n)]
            call_kwargs = dict(dyn_kwargs)
            call_kwargs.update({k: v for k, v in static_items.items() if isinstance(k, str)})
            out = self.fun(*call_args, **call_kwargs)
            self._warn_about_mutated_inputs(leaf_values, [p for p, _ in path_leaves], donated)
            return out

        name = sanitize_name(getattr(self.fun, "__name__", "fn"))
        start = time.perf_counter()
        fn, (out_tree, _), captured = trace_function(
            flat_fun,
            in_types,
            name=name,
            param_names=[sanitize_name(p) for p, _ in path_leaves],
            weak=[w for _, w in typed],
        )
        assert not captured, "a top-level trace captures no outer values"
        # Recorded only once tracing succeeded: each reason belongs to a counted miss.
        lowered = Lowered(self, fn, out_tree, in_types, donated)
        lowered.times.trace = time.perf_counter() - start
        self._info.reasons.append(reason)
        self._info.compile_times.append(lowered.times)
        self._last = signature
        return lowered

    def _warn_if_retraced_too_often(self) -> None:
        """Like torch's recompile limit: a function traced more than ``config
        retrace_limit`` times probably gets a new shape or static value on most calls."""
        limit = int(config.value("retrace_limit"))
        if self._info.misses == limit + 1:
            recent = "; ".join(self._info.reasons[-3:])
            warnings.warn(
                f"{getattr(self, '__name__', 'a jitted function')} was traced {self._info.misses} times "
                f"(FUSEJIT_RETRACE_LIMIT={limit}); each new shape, dtype or static value compiles "
                f"again. Latest reasons: {recent}. Pad batches to a few sizes, or pass changing "
                "Python values as arrays instead of static arguments.",
                RetraceWarning,
                stacklevel=3,
            )

    def _warn_about_mutated_inputs(self, params: Sequence[Any], paths: list[str], donated: tuple[int, ...]) -> None:
        """Warns, once per argument, that writing into an argument that is not donated
        leaves the caller's array as it was."""
        for i, (param, path) in enumerate(zip(params, paths, strict=True)):
            where = first_write(param)
            if where is False or i in donated or path in self._warned_inputs:
                continue
            self._warned_inputs.add(path)
            warnings.warn(
                f"{getattr(self, '__name__', 'the jitted function')} writes into its argument {path}{f' (at {where})' if where else ''}, "
                "which is not donated: the caller's array is not changed (jit works on its own copy "
                "and returns new arrays). Return the updated array, and pass donate_argnums to let "
                "the compiled code reuse the argument's buffer for it.",
                InputMutationWarning,
                stacklevel=4,
            )

    def _why_retrace(self, new: _Signature) -> str:
        old = self._last
        if old is None:
            return "first call"
        reasons = []
        for path, sig in new.leaves.items():
            if path not in old.leaves:
                reasons.append(f"new argument {path}")
            elif old.leaves[path] != sig:
                reasons.append(_describe_change(path, sig, old.leaves[path]))
        reasons += [f"argument {path} is no longer passed" for path in old.leaves if path not in new.leaves]
        if not reasons and old.treedef != new.treedef:
            reasons.append(f"argument structure {new.treedef} was {old.treedef}")
        for name, (value, how) in new.static.items():
            if name not in old.static:
                reasons.append(f"new static argument {name}: {value!r}")
                continue
            was, was_how = old.static[name]
            if (type(was), was) != (type(value), value):
                reasons.append(f"static argument {name}: {value!r} was {was!r}")
            elif how != was_how:
                reasons.append(f"static argument {name}: passed by {how}, was passed by {was_how}")
        reasons += [f"static argument {name} is no longer passed" for name in old.static if name not in new.static]
        return "; ".join(reasons) or "a signature seen before the last miss"

    # Public helpers ------------------------------------------------------------------
    def lower(self, *args: Any, **kwargs: Any) -> Lowered:
        """Traces and optimizes for these arguments without running (cached)."""
        dynamic, static_key, _ = self._split(args, kwargs)
        leaves, treedef = tree_flatten(dynamic)
        key = (treedef, static_key, tuple(map(_leaf_signature, leaves)))
        with self._miss_lock:
            if key not in self._cache:
                self._cache[key] = self._lower(args, kwargs)
                self._info.misses += 1
            return self._cache[key]

    def cache_info(self) -> CacheInfo:
        return CacheInfo(self._info.hits, self._info.misses, list(self._info.reasons),
                         list(self._info.compile_times))

    def clear_cache(self) -> None:
        self._cache.clear()
        self._fast.clear()
        self._last = None


def _describe_change(path: str, sig: Any, was: Any) -> str:
    if isinstance(sig, tuple) and isinstance(was, tuple):
        parts = []
        if sig[0] != was[0]:
            parts.append(f"shape {sig[0]} was {was[0]}")
        if sig[1] != was[1]:
            parts.append(f"dtype {sig[1]} was {was[1]}")
        return f"argument {path}: " + ", ".join(parts)
    return f"argument {path}: {_describe_signature(sig)} was {_describe_signature(was)}"


def _hash_code(digest: Any, fun: Any, seen: set[int]) -> bool:
    """Adds ``fun``'s code to ``digest``: its bytecode, names and constants, and those of the
    functions its closure holds (the loss a training step closes over); False if it has
    no code (a builtin, a callable object)."""
    code = getattr(fun, "__code__", None)
    if code is None or id(code) in seen:
        return code is not None
    seen.add(id(code))
    digest.update(f"{fun.__module__}.{fun.__qualname__}|{code.co_names}".encode())
    stack = [code]
    while stack:
        c = stack.pop()
        digest.update(c.co_code)
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                stack.append(const)
            else:
                digest.update(repr(const).encode())
    for cell in getattr(fun, "__closure__", None) or ():
        with contextlib.suppress(ValueError):  # an empty cell
            _hash_code(digest, cell.cell_contents, seen)
    return True


def _first(item: tuple) -> Any:
    return item[0]


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def jit(
    fun: Callable[..., Any] | None = None,
    *,
    static_argnums: int | Sequence[int] = (),
    static_argnames: str | Sequence[str] = (),
    donate_argnums: int | Sequence[int] = (),
    backend: str | None = None,
    fuse: bool = True,
) -> Any:
    """Compiles ``fun`` per signature of its arguments; usable bare or with options."""
    options = dict(
        static_argnums=static_argnums,
        static_argnames=static_argnames,
        donate_argnums=donate_argnums,
        backend=backend,
        fuse=fuse,
    )
    if fun is None:
        return lambda f: Jitted(f, **options)
    return Jitted(fun, **options)


def make_ir(fun: Callable[..., Any], *, static_argnums: int | Sequence[int] = (),
            static_argnames: str | Sequence[str] = ()) -> Callable[..., Function]:
    """``make_ir(f)(*args)``: the traced IR function of ``f`` (like ``jax.make_jaxpr``)."""

    def traced(*args: Any, **kwargs: Any) -> Function:
        jitted = Jitted(fun, static_argnums=static_argnums, static_argnames=static_argnames)
        return jitted._lower(args, kwargs).traced

    return traced
