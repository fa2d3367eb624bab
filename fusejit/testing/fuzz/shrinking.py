"""Known bugs (``classify``, ``kind_of``: how failures are grouped) and shrinking a
failing program while its failure persists (``shrink``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np

from fusejit.testing.fuzz.checking import CONFIGS, Mismatch, Result, check
from fusejit.testing.fuzz.programs import InputSpec, Invalid, Program, Step, evaluate

# ---------------------------------------------------------------------------------------
# Known bugs: a failure matching one is counted under its name, not as a new finding


def _reduction_operands(program: Program) -> Iterator[tuple[str, np.ndarray, str]]:
    """(function, operand value, expression) for each reduction step."""
    try:
        ev = evaluate(program)
    except Invalid:
        return
    for s in program.steps:
        m = re.match(r"fnp\.(\w+)\((\w+), axis=([^,)]*(?:\([^)]*\))?)", s.expr)
        if s.family.startswith("reduce") and m:
            yield m.group(1), np.asarray(ev.env[m.group(2)]), m.group(3)


def _unit_last_axis_reduction(program: Program, result: Result) -> bool:
    if not set(result.failing) & {"fused", "unfused", "fused~unfused"} or set(result.failing) - {"fused", "unfused", "fused~unfused"}:
        return False
    for _fn, v, axis in _reduction_operands(program):
        if v.ndim >= 2 and v.shape[-1] == 1 and axis not in ("None",):
            return True
    return False


def _zero_size_any_all(program: Program, result: Result) -> bool:
    return any(m.category == "raise" for m in result.mismatches) and any(
        fn in ("any", "all") and v.size == 0 for fn, v, _ in _reduction_operands(program)
    )


def _concatenate_empty(program: Program, result: Result) -> bool:
    if not any(m.category == "raise" and "IndexError" in m.detail for m in result.mismatches):
        return False
    try:
        ev = evaluate(program)
    except Invalid:
        return False
    for s in program.steps:
        if s.family in ("concatenate", "stack"):
            parts = re.findall(r"\[([^\[\]]*(?:\[[^\]]*\][^\[\]]*)*)\]", s.expr)
            scope = dict({"fnp": np, "np": np}, **{a: ev.env[a] for a in s.args})
            for p in (parts[0].split(", ") if parts else []):
                try:
                    if np.asarray(eval(p, scope)).size == 0:  # noqa: S307
                        return True
                except Exception:  # noqa: BLE001, S112
                    continue
    return False


KNOWN_BUGS: dict[str, Callable[[Program, Result], bool]] = {
    "unit-last-axis reduction (jit)": _unit_last_axis_reduction,
    "zero-size any/all raises": _zero_size_any_all,
    "concatenate of empty slices raises": _concatenate_empty,
}


def classify(result: Result) -> str | None:
    for name, pred in KNOWN_BUGS.items():
        try:
            if pred(result.program, result):
                return name
        except Exception:  # noqa: BLE001, S112
            continue
    return None


def kind_of(result: Result) -> str:
    """A short signature for grouping failures: which configs, how, which op families."""
    if result.known:
        return f"known: {result.known}"
    cats = sorted({(m.config, m.category) for m in result.mismatches})
    fams = sorted({s.family.split(":")[0] for s in result.program.steps})
    raised = sorted({m.detail.split(":")[0] for m in result.mismatches if m.category == "raise"})
    return f"{' '.join(f'{c}/{k}' for c, k in cats)} | {','.join(raised)} | ops: {','.join(fams)}"


# ---------------------------------------------------------------------------------------
# Shrinking


def _same_failure(result: Result, target: Mismatch) -> bool:
    return any(m.config == target.config and m.category == target.category for m in result.mismatches)


def shrink(result: Result, budget: int = 60, log: Callable[[str], None] | None = None) -> Result:
    """A smaller program with the same failure (same config and category): steps
    removed or bypassed, extra outputs dropped, inputs made C-contiguous and smaller."""
    target = result.mismatches[0]
    configs = tuple(c for c in CONFIGS if c in target.config.replace("-recall", "").split("~"))
    if target.config.startswith("grad"):
        configs = ("fused",)
    best, tries = result, 0

    def attempt(p: Program) -> bool:
        nonlocal best, tries
        if tries >= budget:
            return False
        try:
            evaluate(p)
        except Invalid:
            return False
        tries += 1
        r = check(p, configs, pairs="~" in target.config)
        if r.status == "mismatch" and _same_failure(r, target):
            best = r
            if log:
                log(f"  shrunk to {len(p.steps)} steps")
            return True
        return False

    changed = True
    while changed and tries < budget:
        changed = False
        p = best.program
        candidates: list[Program] = []
        if len(p.outputs) > 1:
            candidates += [replace(p, outputs=(o,)) for o in p.outputs]
        live = _live_steps(p)
        if len(live) != len(p.steps):
            candidates.append(replace(p, steps=live))
        for i in range(len(p.steps) - 1, -1, -1):
            s = p.steps[i]
            # make an earlier value the output (drops everything after it)
            if s.out not in p.outputs:
                candidates.append(replace(p, steps=p.steps[: i + 1], outputs=(s.out,)))
            for a in s.args:  # bypass the step: its uses read one of its operands
                candidates.append(_bypass(p, i, a))
        used = {a for s in p.steps for a in s.args} | set(p.outputs)
        candidates += [_drop_input(p, k) for k in range(len(p.inputs)) if f"x{k}" not in used]
        for k, spec in enumerate(p.inputs):
            if spec.layout != "C":
                candidates.append(_with_input(p, k, replace(spec, layout="C")))
            for ax, n in enumerate(spec.shape):
                for m in (1, n - 1, 2):
                    if 0 < m < n:
                        shape = spec.shape[:ax] + (m,) + spec.shape[ax + 1 :]
                        candidates.append(_with_input(p, k, replace(spec, shape=shape)))
        for c in candidates:
            if c != p and attempt(c):
                changed = True
                break
    return best


def _live_steps(p: Program) -> tuple[Step, ...]:
    need = set(p.outputs)
    keep = []
    for s in reversed(p.steps):
        if s.out in need:
            keep.append(s)
            need |= set(s.args)
    return tuple(reversed(keep))


def _bypass(p: Program, i: int, arg: str) -> Program:
    old = p.steps[i].out
    pat = re.compile(rf"\b{old}\b")
    steps = [*p.steps[:i]]
    for s in p.steps[i + 1 :]:
        steps.append(replace(s, expr=pat.sub(arg, s.expr)))
    outputs = tuple(arg if o == old else o for o in p.outputs)
    return replace(p, steps=tuple(steps), outputs=outputs)


def _drop_input(p: Program, k: int) -> Program:
    """``p`` without its unused input ``k`` (later inputs renumbered)."""

    def rename(text: str) -> str:
        return re.sub(r"\bx(\d+)\b", lambda m: f"x{int(m.group(1)) - (int(m.group(1)) > k)}", text)

    steps = tuple(replace(s, expr=rename(s.expr)) for s in p.steps)
    return replace(p, inputs=p.inputs[:k] + p.inputs[k + 1 :], steps=steps, outputs=tuple(map(rename, p.outputs)))


def _with_input(p: Program, k: int, spec: InputSpec) -> Program:
    return replace(p, inputs=p.inputs[:k] + (spec,) + p.inputs[k + 1 :])
