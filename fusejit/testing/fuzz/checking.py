"""Running and comparing: each configuration's run of a program, the tolerance derived
from the program, ``compare`` (one output against the oracle), ``check`` (every
configuration and pair) and ``check_grad`` (the gradient checks)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fusejit.testing.fuzz.programs import Evaluation, Invalid, Program, evaluate, lay_out, shadow_outputs

CONFIGS = ("eager", "interp", "interp_opt", "unfused", "fused")
PAIRS = (("fused", "unfused"), ("interp", "eager"))


@dataclass
class Outcome:
    """One configuration's run: its outputs, or the exception it raised."""

    outputs: tuple[np.ndarray, ...] | None = None
    error: BaseException | None = None
    seconds: float = 0.0
    recall: str | None = None  # what went wrong calling the compiled function again

    def describe_error(self) -> str:
        e = self.error
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


@dataclass(frozen=True)
class Mismatch:
    config: str  # "fused", or a pair "fused~unfused"
    category: str  # raise, shape, dtype, value, nan, inf, finite, count, mutated, grad
    detail: str

    def __str__(self) -> str:
        return f"{self.config}: {self.category}: {self.detail}"


@dataclass
class Result:
    program: Program
    status: str  # "ok", "invalid", "unsupported", "mismatch"
    mismatches: list[Mismatch] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    note: str = ""
    known: str | None = None  # the known bug this failure is classified as

    @property
    def failing(self) -> list[str]:
        return sorted({m.config for m in self.mismatches})


def _runner(config: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    import fusejit as fj
    from fusejit.ir.interpreter import run_function

    def interp(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            return run_function(fj.make_ir(fn)(*args), *args)

        return run

    return {
        "eager": lambda fn: fn,
        "interp": interp,
        "interp_opt": lambda fn: fj.jit(fn, backend="interpret"),
        "unfused": lambda fn: fj.jit(fn, fuse=False),
        "fused": lambda fn: fj.jit(fn),
        "cuda": lambda fn: fj.jit(fn, backend="cuda"),  # not in CONFIGS: asked for by name
    }[config]


def run_config(program: Program, config: str) -> Outcome:
    import fusejit.numpy as fnp

    fn = program.function(fnp)
    args = program.make_inputs()
    before = [a.copy() for a in args]
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            run = _runner(config)(fn)
            out = run(*args)
        outputs = tuple(np.asarray(o) for o in out)
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        return Outcome(error=e, seconds=time.perf_counter() - t0)
    for a, b in zip(args, before, strict=True):
        if not np.array_equal(a, b, equal_nan=True):
            return Outcome(error=AssertionError("an input array was modified"), seconds=time.perf_counter() - t0)
    outcome = Outcome(outputs, seconds=time.perf_counter() - t0)
    if config in ("fused", "unfused"):
        outcome.recall = _recall(program, run, outputs)
    return outcome


def _recall(program: Program, run: Callable[..., Any], first: tuple[np.ndarray, ...]) -> str | None:
    """Calls the compiled function again (the cached executable) with the same values in
    other memory layouts: the results must be the same bits, and the first call's results
    must not have been overwritten (no output buffer is reused across calls)."""
    kept = [o.copy() for o in first]
    other = [lay_out(s.values(), "strided" if s.layout == "C" else "C") for s in program.inputs]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            again = tuple(np.asarray(o) for o in run(*other))
    except Exception as e:  # noqa: BLE001
        return f"second call raised {type(e).__name__}: {e}"[:200]
    for k, (a, b, c) in enumerate(zip(first, again, kept, strict=True)):
        if not np.array_equal(a, c, equal_nan=True):
            return f"output {k} of the first call changed after the second call"
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True):
            return f"output {k} differs when the inputs' layouts change: {b.ravel()[:4]} vs {a.ravel()[:4]}"
    return None


@dataclass
class Tolerance:
    """How far a float output may stray from the oracle (per element)."""

    rtol: float  # of each element, and of the largest finite element of the output
    atol: float
    shadow: tuple[np.ndarray, ...] | None  # the longdouble run
    perturbed: tuple[tuple[np.ndarray, ...], ...] = ()  # runs with ulp-level noise


def tolerance(program: Program, ev: Evaluation, runs: int = 3) -> Tolerance:
    n = len(program.steps) + 2
    perturbed = []
    for k in range(runs):
        try:
            pev = evaluate(program, perturb=np.random.default_rng([program.seed, k]))
        except Invalid:
            continue
        perturbed.append(tuple(np.asarray(pev.env[o]) for o in program.outputs))
    return Tolerance(4 * ev.min_eps * n, 0.0, shadow_outputs(program), tuple(perturbed))


def compare(
    ref: np.ndarray, got: np.ndarray, exact: bool, tol: Tolerance, shadow: np.ndarray | None,
    perturbed: tuple[np.ndarray, ...] = (),
) -> tuple[str, str] | None:
    """None when ``got`` matches ``ref``; else (category, detail)."""
    if got.shape != ref.shape:
        return "shape", f"{got.shape} != {ref.shape}"
    if got.dtype != ref.dtype:
        return "dtype", f"{got.dtype} != {ref.dtype}"
    if ref.dtype.kind != "f":
        if not np.array_equal(ref, got):
            bad = np.argwhere(ref != got)
            i = tuple(bad[0]) if len(bad) else ()
            return "value", f"{np.count_nonzero(ref != got)} of {ref.size} differ; at {i}: {got[i]!r} != {ref[i]!r}"
        return None
    r, g = ref.astype(np.float64), got.astype(np.float64)
    stable = np.ones(r.shape, bool)
    if shadow is not None and shadow.shape == r.shape and not exact:
        s = shadow.astype(np.longdouble)
        stable = (np.isnan(s) == np.isnan(r)) & (np.isinf(s) == np.isinf(r))
    for p in perturbed:
        if p.shape == r.shape and not exact:
            stable &= (np.isnan(p) == np.isnan(r)) & (np.isinf(p) == np.isinf(r))
    if exact:
        bad = ~((r == g) | (np.isnan(r) & np.isnan(g)))
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            return "value", f"{int(bad.sum())} of {r.size} differ (exact op); at {i}: {g[i]!r} != {r[i]!r}"
        return None
    checks = (
        ("nan", stable & (np.isnan(r) != np.isnan(g))),
        ("inf", stable & np.isinf(r) & (r != g)),
        ("finite", stable & np.isfinite(r) & ~np.isfinite(g)),
    )
    for cat, bad in checks:
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            return cat, f"{int(bad.sum())} of {r.size}; at {i}: {g[i]!r}, numpy {r[i]!r}"
    fin = stable & np.isfinite(r) & np.isfinite(g)
    scale = float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else 0.0
    allowed = tol.atol + tol.rtol * (np.abs(r) + scale)
    with np.errstate(all="ignore"):
        if shadow is not None and shadow.shape == r.shape:
            cond = np.abs(r - shadow.astype(np.longdouble)).astype(np.float64)
            allowed = allowed + 8 * np.where(np.isfinite(cond), cond, np.inf)
        for p in perturbed:
            if p.shape == r.shape:
                spread = np.abs(r - p.astype(np.float64))
                allowed = allowed + 4 * np.where(np.isfinite(spread), spread, np.inf)
    with np.errstate(all="ignore"):
        err = np.where(fin, np.abs(r - g), 0.0)
    bad = err > allowed
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        return "value", f"{int(bad.sum())} of {r.size}; at {i}: {g[i]!r}, numpy {r[i]!r} (allowed {allowed[i]:.3g})"
    return None


def check(program: Program, configs: tuple[str, ...] = CONFIGS, pairs: bool = True) -> Result:
    """Runs ``program`` in ``configs`` and compares every one with NumPy."""
    try:
        ev = evaluate(program)
    except Invalid as e:
        return Result(program, "invalid", note=str(e))
    ref = tuple(np.asarray(ev.env[o]) for o in program.outputs)
    exact = tuple(ev.exact[o] for o in program.outputs)
    # The oracle runs the rendered function too (evaluate() runs it step by step).
    fn = program.function(np)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        oracle = tuple(np.asarray(o) for o in fn(*program.make_inputs()))
    result = Result(program, "ok")
    for o, r, e in zip(oracle, ref, exact, strict=True):
        # (inexact results may differ in the last bits: NumPy sums by memory order)
        if o.dtype != r.dtype or o.shape != r.shape or (e and not np.array_equal(o, r, equal_nan=True)):
            return Result(program, "invalid", note="numpy results depend on the input layout")
    tol = tolerance(program, ev)
    shadows = tol.shadow or (None,) * len(ref)
    tol.perturbed = tuple(p for p in tol.perturbed if len(p) == len(ref))
    for config in configs:
        oc = run_config(program, config)
        result.outcomes[config] = oc
        if oc.error is not None:
            if isinstance(oc.error, NotImplementedError) and config == "eager":
                result.status, result.note = "unsupported", oc.describe_error()
                return result
            result.mismatches.append(Mismatch(config, "raise", oc.describe_error()))
            continue
        result.mismatches += _compare_all(config, ref, oc.outputs, exact, tol, shadows)
        if oc.recall is not None:
            result.mismatches.append(Mismatch(f"{config}-recall", "recall", oc.recall))
    if pairs:
        for a, b in PAIRS:
            oa, ob = result.outcomes.get(a), result.outcomes.get(b)
            if oa is None or ob is None or oa.outputs is None or ob.outputs is None:
                continue
            result.mismatches += _compare_all(f"{a}~{b}", ob.outputs, oa.outputs, exact, tol, shadows)
    if program.grad and not result.mismatches and "fused" in configs:
        result.mismatches += check_grad(program)
    if result.mismatches:
        result.status = "mismatch"
    return result


def _compare_all(config: str, ref: tuple, got: tuple, exact: tuple, tol: Tolerance, shadows: tuple) -> list[Mismatch]:
    if len(got) != len(ref):
        return [Mismatch(config, "count", f"{len(got)} outputs, numpy {len(ref)}")]
    out = []
    for k, (r, g, e, s) in enumerate(zip(ref, got, exact, shadows, strict=True)):
        bad = compare(r, g, e, tol, s, tuple(p[k] for p in tol.perturbed))
        if bad is not None:
            out.append(Mismatch(config, bad[0], f"output {k}: {bad[1]}"))
    return out


def loss_source(program: Program) -> str:
    params = ", ".join(f"x{i}" for i in range(len(program.inputs)))
    return program.source() + f"\ndef loss({params}):\n    return fnp.sum(fnp.tanh(program({params})[0]))\n"


def check_grad(program: Program) -> list[Mismatch]:
    """``fj.jit(fj.grad(loss))`` vs ``fj.grad(loss)`` vs central finite differences."""
    import fusejit as fj
    import fusejit.numpy as fnp

    def loss_fn(module: Any) -> Callable[..., Any]:
        ns = {"fnp": module, "np": np}
        exec(compile(loss_source(program), f"<fuzz loss {program.seed}>", "exec"), ns)  # noqa: S102
        return ns["loss"]

    args = [s.values().astype(np.float64) for s in program.inputs]
    argnums = tuple(range(len(args)))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            g_jit = fj.jit(fj.grad(loss_fn(fnp), argnums=argnums))(*args)
            g_eager = fj.grad(loss_fn(fnp), argnums=argnums)(*args)
    except NotImplementedError:
        return []
    except Exception as e:  # noqa: BLE001
        return [Mismatch("grad", "raise", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])]
    f_np = loss_fn(np)
    with np.errstate(all="ignore"):
        smooth = bool(np.isfinite(f_np(*args)))  # (a nan loss has no finite differences)
    out = []
    for i, x in enumerate(args):
        fd = np.zeros_like(x)
        for j in np.ndindex(x.shape):
            h = 1e-6 * max(1.0, abs(x[j]))
            xp, xm = [a.copy() for a in args], [a.copy() for a in args]
            xp[i][j] += h
            xm[i][j] -= h
            with np.errstate(all="ignore"):
                fd[j] = (f_np(*xp) - f_np(*xm)) / (2 * h)
        gj, ge = np.asarray(g_jit[i]), np.asarray(g_eager[i])
        if gj.shape != x.shape or not np.allclose(gj, ge, rtol=1e-9, atol=1e-9, equal_nan=True):
            out.append(Mismatch("grad~eager", "grad", f"d/dx{i}: jit {gj.ravel()[:4]} vs eager {ge.ravel()[:4]}"))
        scale = 1e-4 * max(1.0, float(np.abs(fd).max()) if fd.size else 1.0)
        if smooth and not np.allclose(ge, fd, rtol=1e-4, atol=scale, equal_nan=True):
            k = int(np.argmax(np.abs(ge - fd)))
            out.append(Mismatch("grad", "grad", f"d/dx{i}[{k}]: symbolic {ge.ravel()[k]!r}, finite differences {fd.ravel()[k]!r}"))
    return out
