"""``fj.compare``: a function as NumPy eager, ``jit(fuse=False)`` and ``jit``, side by side.

How a comparison is measured (``bench/harness.py`` does the same across processes for
the built-in workloads; this is the in-process version for the user's own function):

1. **First call.** Each variant is called once and timed on its own: for the ``jit``
   variants that is tracing, optimizing, compiling (or loading kernels from the on-disk
   cache) and running. The results are checked against NumPy eager's, leaf by leaf.
2. **Warm-up.** Each variant is called at least twice more and for at least
   ``WARMUP_S`` seconds (the first calls warm caches and the branch predictor), which
   also estimates its time per call.
3. **Samples.** ``repeat`` rounds; each round takes one sample of every variant, one
   after another, the starting variant rotating from round to round (A B C, B C A, ...)
   so that drift of the machine (another process, frequency changes) spreads over all
   of them. A sample repeats the call until it lasts about ``SAMPLE_S`` seconds and
   records the time per call. The table shows each variant's median, the spread
   (interquartile range over median) and the speed-up over NumPy eager (ratio of
   medians).

Nothing here asserts that anything is fast: the numbers are measurements of this
machine at this moment, with their spread.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusejit.runtime.profile import Profile, fmt_bytes, fmt_time, format_table
from fusejit.tracer.jit import Jitted, jit
from fusejit.tracer.pytree import tree_flatten

WARMUP_S = 0.05  # warm-up: at least this long per variant (and at least 2 calls)
SAMPLE_S = 1e-3  # one sample repeats a call until it lasts about this long
BUDGET_S = 2.0  # default repeat: as many rounds as fit in about this many seconds ...
MIN_ROUNDS, MAX_ROUNDS = 5, 100  # ... within these bounds

EAGER = "NumPy eager"
UNFUSED = "fusejit unfused"
FUSED = "fusejit fused"


@dataclass
class Variant:
    """One row of a ``Comparison``: a way of running the function.

    Times are seconds per call. ``kernels`` and ``bytes_per_call`` are the compiled
    kernels' count and the bytes their inputs and outputs occupy (what one call moves
    through memory, scratch excluded); for NumPy eager, ``ops`` is the number of traced
    IR ops (about one NumPy call each) and ``bytes_per_call`` the bytes those ops read
    and write. ``agrees`` is None for the reference (NumPy eager) and for a variant that
    failed (``error`` says why).
    """

    label: str
    first_call_s: float = math.nan
    times_s: list[float] = field(default_factory=list)
    kernels: int | None = None
    ops: int | None = None
    bytes_per_call: int | None = None
    agrees: bool | None = None
    max_abs_err: float = 0.0
    mismatch: str = ""
    error: str = ""

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s) if self.times_s else math.nan

    @property
    def spread(self) -> float:
        """Interquartile range over median (0.05 is 5%)."""
        if len(self.times_s) < 2:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return (q3 - q1) / self.median_s if self.median_s > 0 else math.nan


@dataclass
class Comparison:
    """The result of ``fj.compare``; ``str()`` is the table. ``variants`` are in the
    order NumPy eager, fusejit unfused, fusejit fused, then the user's ``others``."""

    function: str
    variants: list[Variant]
    rounds: int
    traced_ops: int
    optimized_ops: int
    kernels_compiled: int = 0
    kernels_loaded: int = 0

    def __getitem__(self, label: str) -> Variant:
        for v in self.variants:
            if v.label == label:
                return v
        raise KeyError(f"no variant {label!r}; variants: {', '.join(v.label for v in self.variants)}")

    @property
    def agree(self) -> bool:
        """True when every variant that ran matches NumPy eager (and none failed)."""
        return all(v.agrees is not False and not v.error for v in self.variants)

    def speedup(self, label: str) -> float:
        """NumPy eager's median time over ``label``'s (above 1: faster than eager)."""
        base, other = self[EAGER].median_s, self[label].median_s
        return base / other if other > 0 else math.nan

    def __str__(self) -> str:
        head = (f"fj.compare: {self.function} ({self.traced_ops} traced ops, {self.optimized_ops} after "
                f"optimization); medians of {self.rounds} interleaved rounds")
        cols = ("variant", "first call", "median", "spread", "vs eager", "kernels", "bytes/call", "results")
        rows = []
        for v in self.variants:
            if v.error and not v.times_s:
                rows.append((v.label, "-", "-", "-", "-", "-", "-", f"error: {v.error}"[:80]))
                continue
            if v.label == EAGER:
                kernels = f"{v.ops} ops" if v.ops is not None else "-"
                bytes_text = f"~{fmt_bytes(v.bytes_per_call)}" if v.bytes_per_call is not None else "-"
                check = "reference"
            else:
                kernels = str(v.kernels) if v.kernels is not None else "-"
                bytes_text = fmt_bytes(v.bytes_per_call)
                check = "agree" if v.agrees else f"DIFFER: {v.mismatch}"
                if v.agrees and v.max_abs_err:
                    check += f" (max |diff| {v.max_abs_err:.1e})"
            rows.append((v.label, fmt_time(v.first_call_s), fmt_time(v.median_s), f"{v.spread * 100:.0f}%",
                         f"{self.speedup(v.label):.2f}x", kernels, bytes_text, check))
        lines = [head, format_table(cols, rows, left=(0, 7))]
        lines.append("first call: tracing, optimizing and compiling the kernels (this time: "
                     f"{self.kernels_compiled} compiled, {self.kernels_loaded} loaded from the on-disk cache), "
                     "then running; vs eager: ratio of medians")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The comparison as JSON-ready data (times in seconds)."""
        return {
            "function": self.function, "rounds": self.rounds, "traced_ops": self.traced_ops,
            "optimized_ops": self.optimized_ops,
            "variants": [
                {"label": v.label, "first_call_s": v.first_call_s, "median_s": v.median_s, "spread": v.spread,
                 "speedup": self.speedup(v.label), "kernels": v.kernels, "ops": v.ops,
                 "bytes_per_call": v.bytes_per_call, "agrees": v.agrees, "max_abs_err": v.max_abs_err,
                 "error": v.error}
                for v in self.variants
            ],
        }

    def plot(self, ax: Any) -> Any:
        """Draws the medians as horizontal bars (milliseconds, labelled with the
        speed-up over NumPy eager) on a matplotlib ``Axes``; returns it."""
        shown = [v for v in self.variants if v.times_s]
        medians = [v.median_s * 1e3 for v in shown]
        colors = {EAGER: "#9e9e9e", UNFUSED: "#64b5f6", FUSED: "#1565c0"}
        ax.barh([v.label for v in shown], medians, color=[colors.get(v.label, "#ffb74d") for v in shown])
        ax.invert_yaxis()
        ax.set_xlabel("median time per call (ms)")
        ax.set_title(f"{self.function}: one call")
        for y, (v, m) in enumerate(zip(shown, medians, strict=True)):
            ax.text(m, y, f"  {fmt_time(v.median_s)}  ({self.speedup(v.label):.1f}x)", va="center", fontsize=8)
        ax.set_xlim(0, max(medians) * 1.45)
        return ax


# ---------------------------------------------------------------------------------------
# Checking results


def _leaves(tree: Any) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in tree_flatten(tree)[0]]


def _default_rtol(dtype: np.dtype) -> float:
    if dtype == np.float64 or dtype == np.complex128:
        return 1e-9
    if np.issubdtype(dtype, np.inexact):
        return 1e-4
    return 0.0


def check_agreement(reference: Any, result: Any, rtol: float | None = None,
                    atol: float | None = None) -> tuple[bool, float, str]:
    """Whether ``result`` matches ``reference`` leaf by leaf: the same number of leaves
    and shapes; integers and booleans equal; floats within ``atol + rtol * |reference|``
    (defaults: ``rtol`` 1e-4 for float32, 1e-9 for float64; ``atol`` is ``rtol`` times
    the leaf's largest magnitude, so near-zero entries of a large leaf are judged on its
    scale); NaN where the reference has NaN. Returns ``(ok, largest absolute difference,
    what differs)``."""
    ref, got = _leaves(reference), _leaves(result)
    if len(ref) != len(got):
        return False, math.inf, f"{len(got)} outputs, expected {len(ref)}"
    worst, ok, why = 0.0, True, ""
    for i, (b, a) in enumerate(zip(ref, got, strict=True)):
        if a.shape != b.shape:
            return False, math.inf, f"output {i}: shape {a.shape}, expected {b.shape}"
        if a.size == 0:
            continue
        r = _default_rtol(b.dtype) if rtol is None else rtol
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(a64) & np.isnan(b64)
        err = np.where(both_nan, 0.0, np.abs(a64 - b64))
        err = np.where(np.isnan(err), math.inf, err)
        finite = np.abs(b64[np.isfinite(b64)])
        scale = float(finite.max()) if finite.size else 0.0
        tol = (r * scale if atol is None else atol) + r * np.abs(np.where(both_nan, 0.0, b64))
        bad = err > tol
        worst = max(worst, float(err.max()))
        if bad.any() and ok:
            ok = False
            k = np.unravel_index(int(np.argmax(bad)), bad.shape) if bad.ndim else ()
            why = f"output {i}{list(k) if k else ''}: {a[k]!r} vs {b[k]!r}"
    return ok, worst, why


# ---------------------------------------------------------------------------------------
# Measuring


def _sync(out: Any) -> Any:
    """Waits for asynchronous results (JAX arrays have ``block_until_ready``)."""
    for leaf in tree_flatten(out)[0]:
        wait = getattr(leaf, "block_until_ready", None)
        if wait is not None:
            wait()
    return out


def _ir_bytes(fn: Any) -> int:
    """Bytes every op of an IR function reads and writes, added up."""
    return sum(v.type.nbytes for op in fn.ops for v in (*op.inputs, *op.outputs))


def compare(
    fun: Callable[..., Any],
    *args: Any,
    repeat: int | None = None,
    others: Mapping[str, Callable[..., Any]] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    **kwargs: Any,
) -> Comparison:
    """Runs ``fun(*args, **kwargs)`` as NumPy eager (``fun`` itself, not jitted),
    ``fj.jit(fun, fuse=False)`` and ``fj.jit(fun)``, checks that the results agree and
    times them (see the module docstring for how); returns a printable ``Comparison``.

    ``fun`` may be a plain function or an ``fj.jit``-wrapped one (then its
    ``static_argnums``/``static_argnames`` are kept; ``donate_argnums`` is not, since
    every variant is called many times on the same arguments). ``repeat`` is the number of
    interleaved rounds (default: as many as fit in about 2 s, 5 to 100). ``others`` adds
    rows: label -> a callable taking the same ``*args, **kwargs`` (for example a
    ``jax.jit`` version; convert arguments inside it if your library needs its own
    arrays); its results are checked too (leaves through ``np.asarray``), and an
    exception it raises is shown in its row. ``rtol``/``atol``: see
    ``check_agreement``. ``repeat``, ``others``, ``rtol`` and ``atol`` are therefore not
    passed on to ``fun``.

    Raises what ``fun`` raises eagerly or under ``jit``; ``ValueError`` if ``repeat`` is
    below 1.
    """
    from fusejit.runtime.cache import COUNTERS

    if repeat is not None and repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    options: dict[str, Any] = {}
    raw = fun
    if isinstance(fun, Jitted):
        raw = fun.fun
        options = {"static_argnums": tuple(fun.static_argnums), "static_argnames": tuple(fun.static_argnames)}
    name = getattr(raw, "__name__", None) or type(raw).__name__
    unfused = jit(raw, fuse=False, **options)
    fused = jit(raw, **options)
    calls: list[tuple[Variant, Callable[..., Any]]] = [
        (Variant(EAGER), raw), (Variant(UNFUSED), unfused), (Variant(FUSED), fused),
    ]
    calls += [(Variant(label), f) for label, f in (others or {}).items()]

    # 1. First calls, and the results checked against eager's.
    before = COUNTERS.snapshot()
    reference: Any = None
    for k, (variant, f) in enumerate(calls):
        start = time.perf_counter()
        try:
            out = _sync(f(*args, **kwargs))
        except Exception as e:
            if k < 3:
                raise
            variant.error = f"{type(e).__name__}: {e}"
            continue
        variant.first_call_s = time.perf_counter() - start
        if k == 0:
            reference = [np.array(x, copy=True) for x in _leaves(out)]
        else:
            variant.agrees, variant.max_abs_err, variant.mismatch = check_agreement(reference, out, rtol, atol)
    after = COUNTERS.snapshot()
    lowered = fused.lower(*args, **kwargs)  # cached by the first call: no new trace
    for variant, jitted in ((calls[1][0], unfused), (calls[2][0], fused)):
        kernels = jitted.lower(*args, **kwargs).compile().kernels
        variant.kernels = len(kernels)
        variant.bytes_per_call = sum(k.bytes_in + k.bytes_out for k in kernels)
    calls[0][0].ops = len(lowered.traced.ops)
    calls[0][0].bytes_per_call = _ir_bytes(lowered.traced)

    # 2. Warm-up, and how many calls make one sample.
    live = [(v, f) for v, f in calls if not v.error]
    numbers: list[int] = []
    per_call: list[float] = []
    for _, f in live:
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < WARMUP_S:
            _sync(f(*args, **kwargs))
            n += 1
        estimate = (time.perf_counter() - start) / n
        per_call.append(estimate)
        numbers.append(max(1, math.ceil(SAMPLE_S / max(estimate, 1e-9))))
    round_s = sum(t * n for t, n in zip(per_call, numbers, strict=True))
    rounds = repeat or int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S / max(round_s, 1e-9))))

    # 3. Interleaved samples.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(rounds):
            for j in range(len(live)):
                i = (r + j) % len(live)
                (variant, f), number = live[i], numbers[i]
                start = time.perf_counter()
                for _ in range(number):
                    _sync(f(*args, **kwargs))
                variant.times_s.append((time.perf_counter() - start) / number)
            if gc_was_enabled:
                gc.collect(0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return Comparison(
        name, [v for v, _ in calls], rounds, len(lowered.traced.ops), len(lowered.optimized.ops),
        kernels_compiled=after["numba_compiles"] - before["numba_compiles"],
        kernels_loaded=after["numba_cache_loads"] - before["numba_cache_loads"],
    )


def profile(fun: Any, *args: Any, repeat: int | None = None, **kwargs: Any) -> Profile:
    """``fj.profile(fun, *args, **kwargs)``: the per-kernel profile of ``fun`` (a plain or
    ``fj.jit``-wrapped function) on these arguments; compiles it first if needed. Same as
    ``fj.jit(fun).lower(*args, **kwargs).compile().profile(*args, **kwargs)``."""
    jitted = fun if isinstance(fun, Jitted) else jit(fun)
    return jitted.lower(*args, **kwargs).compile().profile(*args, repeat=repeat, **kwargs)
