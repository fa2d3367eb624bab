"""NaN hunting (``FUSEJIT_DEBUG_NANS=1``): which op first made a NaN or an infinity.

Every executor checks what it runs at its own grain (a compiled kernel's outputs, each op
of the reference interpreter, each eager operation); once a check fails, the culprit is
found by re-running the ops one by one on the reference rules (``first_nonfinite``): the
first op whose float outputs are not all finite while its float inputs are. That op's
source location says whether it belongs to the forward or the backward pass (an op of a
reverse sweep is marked ``bwd of``) and the ``fj.named_scope`` it was traced in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fusejit.ir.core import Op, SourceLoc, Value


class NonFiniteError(FloatingPointError):
    """An op produced a NaN or an infinity under ``FUSEJIT_DEBUG_NANS``. ``primitive``
    names it and ``loc`` is its source location (the line, the pass, the scope); both are
    None when no single op could be blamed. ``kind`` is ``"nan"`` or ``"inf"``."""

    def __init__(self, message: str, primitive: str | None, loc: SourceLoc | None, kind: str) -> None:
        super().__init__(message)
        self.primitive, self.loc, self.kind = primitive, loc, kind


def nonfinite_kind(arrays: Iterable[np.ndarray]) -> str | None:
    """``"nan"`` if a float array holds a NaN, else ``"inf"`` if one holds an infinity,
    else None (integer and bool arrays are always finite)."""
    kind = None
    for a in arrays:
        if a.dtype.kind != "f" or not a.size or np.isfinite(a).all():
            continue
        if np.isnan(a).any():
            return "nan"
        kind = "inf"
    return kind


def first_nonfinite(ops: Sequence[Op], env: dict[Value, np.ndarray]) -> tuple[Op, str, bool] | None:
    """Runs ``ops`` one by one on the primitives' NumPy rules, ``env`` holding their
    inputs from outside (it receives every op's outputs). Returns ``(op, kind,
    from_finite)`` for the first op whose inputs are all finite and outputs are not,
    else for the first op with a non-finite output, else None."""
    first: tuple[Op, str, bool] | None = None
    with np.errstate(all="ignore"):
        for op in ops:
            outs = op.prim.impl(*(env[v] for v in op.inputs), **op.attrs)
            for v, o in zip(op.outputs, outs, strict=True):
                env[v] = np.asarray(o, dtype=v.dtype.np)
            kind = nonfinite_kind(env[v] for v in op.outputs)
            if kind is not None:
                from_finite = nonfinite_kind(env[v] for v in op.inputs) is None
                if from_finite:
                    return op, kind, True
                first = first or (op, kind, False)
    return first


def nonfinite_error(op: Op | None, kind: str, from_finite: bool, context: str) -> NonFiniteError:
    """The error naming ``op`` (None: no single op could be blamed) and where it ran
    (``context``: "kernel loop_f32_8 of @f", "eager"): ``log at /src/train.py:12 produced
    nan from finite inputs (forward pass, scope block1/conv; kernel loop_f32_8 of @f)``;
    an op of a reverse sweep is ``at bwd of /src/train.py:12`` (backward pass)."""
    if op is None:
        return NonFiniteError(f"FUSEJIT_DEBUG_NANS: {kind} in the outputs of {context}", None, None, kind)
    return nonfinite_error_at(op.prim.name, op.loc, kind, from_finite, context)


def nonfinite_error_at(
    primitive: str, loc: SourceLoc | None, kind: str, from_finite: bool, context: str
) -> NonFiniteError:
    """``nonfinite_error`` for an operation that is not an IR op (one run eagerly)."""
    where = f" at {loc.derivation_prefix()}{loc.file}:{loc.line}" if loc is not None else ""
    if loc is None or not loc.derived:
        part = "forward pass"
    else:
        part = "backward pass" if loc.is_backward else "forward-mode derivative"
    scope = f", scope {loc.scope}" if loc is not None and loc.scope else ""
    inputs = "from finite inputs" if from_finite else "from inputs that were already not finite"
    message = f"FUSEJIT_DEBUG_NANS: {primitive}{where} produced {kind} {inputs} ({part}{scope}; {context})"
    return NonFiniteError(message, primitive, loc, kind)
