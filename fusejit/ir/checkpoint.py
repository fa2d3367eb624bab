"""Rematerialization: the ``checkpoint`` primitive, a call whose nested function's
intermediates are recomputed in the backward pass instead of saved.

``checkpoint``: operands ``args...``; attributes ``body``, a function ``body(args...) ->
results...``, and ``prevent_cse``; results: ``body``'s. It computes exactly what ``body``
computes; only its derivative differs. Reverse mode (``fusejit.ir.transforms.checkpoint``)
saves the operands alone and runs ``body`` again in the backward sweep, inside a second
``checkpoint`` op marked ``prevent_cse``, so that no pass merges the recomputation with
the forward computation it repeats (JAX's ``remat_p`` and its ``prevent_cse``; Chen et
al. 2016, "Training deep nets with sublinear memory cost"; Griewank & Walther,
"Evaluating Derivatives", 2nd ed. 2008, ch. 12). The optimization pipeline inlines a
``checkpoint`` without ``prevent_cse`` with the other calls, before common-subexpression
elimination, and one with it right after, so fusion and code generation only ever see
ordinary ops.

Declared in its own module (registered in ``PRIMITIVES`` when ``primitives`` imports it)
like the control-flow primitives, whose nested-function conventions it shares.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusejit.ir.primitives import AttrKind, AttrSpec, IRTypeError, OpKind, Primitive, _register
from fusejit.ir.types import TensorType

__all__ = ["checkpoint"]


def _checkpoint_rule(
    in_types: tuple[TensorType, ...], body: Any, prevent_cse: bool
) -> tuple[TensorType, ...]:
    params = tuple(p.type for p in body.params)
    if params != in_types:
        raise IRTypeError(
            f"checkpoint: body @{body.name} takes ({', '.join(map(str, params))}), but the "
            f"operands are ({', '.join(map(str, in_types))})"
        )
    return tuple(r.type for r in body.results)


def _checkpoint_impl(*operands: np.ndarray, body: Any, prevent_cse: bool) -> tuple[np.ndarray, ...]:
    from fusejit.ir.interpreter import run_function

    return run_function(body, *operands)


checkpoint = _register(
    Primitive(
        name="checkpoint",
        kind=OpKind.CALL,
        arity=None,
        attrs={"body": AttrSpec(AttrKind.FUNCTION), "prevent_cse": AttrSpec(AttrKind.BOOL)},
        abstract_eval=_checkpoint_rule,
        impl=_checkpoint_impl,
    )
)
