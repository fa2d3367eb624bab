"""The optimization pipeline: the passes run on every traced function, in order.

Each pass is a pure ``Function -> Function``. With ``check_ir`` on (the tests turn it
on), the verifier runs after every pass; each stage can be dumped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fusejit.ir.core import Function
from fusejit.ir.transforms.checkpoint import inline_checkpoints
from fusejit.ir.transforms.control_simplify import select_cheap_branches
from fusejit.ir.transforms.dce import eliminate_dead_code
from fusejit.ir.transforms.inline import inline_calls
from fusejit.ir.transforms.loop_invariants import hoist_scan_invariants
from fusejit.ir.transforms.simplify import (
    canonicalize_layout,
    eliminate_common_subexpressions,
    fold_constants,
    fold_transposed_matmuls,
    simplify_algebra,
)
from fusejit.ir.verifier import verify

Pass = Callable[[Function], Function]

PIPELINE: list[tuple[str, Pass]] = [
    ("inline_calls", inline_calls),
    ("simplify_algebra", simplify_algebra),
    ("canonicalize_layout", canonicalize_layout),
    ("fold_constants", fold_constants),
    ("select_cheap_branches", select_cheap_branches),  # after folding: a constant index picks its branch
    ("eliminate_common_subexpressions", eliminate_common_subexpressions),
    # A backward sweep's recomputation (fj.checkpoint) joins the function only now, so that
    # CSE cannot merge it back into the forward computation it repeats.
    ("inline_checkpoints", inline_checkpoints),
    # Before the second round, which folds the hoisted ops' transposes into their products.
    ("hoist_scan_invariants", hoist_scan_invariants),
    # Folding and merging expose new identities (x * (2 * 0.5)); one more round gets them.
    ("simplify_algebra", simplify_algebra),
    ("canonicalize_layout", canonicalize_layout),
    ("fold_transposed_matmuls", fold_transposed_matmuls),
    ("eliminate_dead_code", eliminate_dead_code),
]


@dataclass(frozen=True, slots=True)
class Stage:
    """One pass's output, stamped with the pass that made it and how long it took."""

    pass_name: str
    function: Function
    seconds: float


def optimize(fn: Function, *, check: bool = False) -> tuple[Function, list[Stage]]:
    """Runs ``PIPELINE`` over ``fn``; returns the result and every intermediate stage."""
    stages = []
    for name, run in PIPELINE:
        start = time.perf_counter()
        fn = run(fn)
        stages.append(Stage(name, fn, time.perf_counter() - start))
        if check:
            verify(fn)
    return fn, stages
