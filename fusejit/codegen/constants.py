"""Float constants as kernel data, so that kernels differing only in such numbers share one
compilation (issue 12).

A mean over a batch divides by the batch's element count and its gradient multiplies by
the reciprocal: constants that change with every batch size. Written into a kernel's
source they make a new module, and a Numba compilation of 0.2-1 s, for each batch size,
although the sizes themselves are already int parameters. ``lift_constants`` moves such
constants out of the source: the kernel reads them from one constant array per dtype
(materialized once per executable, like any constant array), at the top of its body,
before any loop, so that loops see a scalar as they saw the literal. The same holds for a
learning rate or an epsilon written into two functions.

What stays in the source:

* integer and boolean constants (index arithmetic, masks, comparisons with ``iota``);
* the float values code generation or LLVM simplify with: 0 and the reduction identities
  (the infinities, NaN), 1 and -1, 2 (``x*2`` is ``x+x``) and 0.5 (``x/2`` is exact as a
  multiplication), and their negatives; a mean over one or two elements keeps its divisor.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from fusejit.codegen.exprs import Binary, Cast, Const, Expr, Lit, Load, MathCall, Select, Unary, Var
from fusejit.codegen.kernel import ArrayParam, Assign, If, Kernel, Let, Loop, Stmt, Store, nodes
from fusejit.ir import primitives as P
from fusejit.ir.core import Op, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.types import TensorType

KEPT_VALUES = frozenset({0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5})  # -0.0 == 0.0: kept as well


def kept_in_source(c: Const) -> bool:
    """Whether ``c`` stays a literal of the kernel's source (see the module doc)."""
    if not c.dtype.is_float:
        return True
    v = float(c.value)
    return not math.isfinite(v) or v in KEPT_VALUES


def lift_constants(kernel: Kernel, bound: list[Any]) -> Kernel:
    """``kernel`` reading its lifted float constants from constant arrays appended to its
    array parameters; the constant ops that fill them are appended to ``bound`` (what the
    runtime binds to each array parameter). Returns ``kernel`` itself if nothing lifts."""
    lifted = [c for c in dict.fromkeys(n for n in nodes(kernel.body) if isinstance(n, Const))
              if not kept_in_source(c)]
    if not lifted:
        return kernel
    arrays = list(kernel.arrays)
    taken = {a.name for a in arrays}
    names: dict[Const, Var] = {}
    loads: list[Stmt] = []
    for dtype in dict.fromkeys(c.dtype for c in lifted):
        values = [c for c in lifted if c.dtype is dtype]
        k = len(arrays)
        while f"a{k}" in taken:
            k += 1
        array = f"a{k}"
        taken.add(array)
        arrays.append(ArrayParam(array, dtype, "const"))
        bound.append(_constant_op(tuple(c.value for c in values), dtype))
        for j, c in enumerate(values):
            var = Var(f"k{len(names)}", dtype)  # "k": no builder name starts with it
            names[c] = var
            loads.append(Let(var, Load(array, Lit(j), dtype), 0))
    body = loads + [_stmt(s, names) for s in kernel.body]
    return replace(kernel, arrays=arrays, body=body)


def _constant_op(values: tuple[Any, ...], dtype: DType) -> Op:
    shape = (len(values),)
    return Op(P.constant, (), (Value(TensorType(dtype, shape)),), {"value": values, "shape": shape, "dtype": dtype})


def _expr(e: Expr, names: dict[Const, Var]) -> Expr:
    if isinstance(e, Const):
        return names.get(e, e)
    if isinstance(e, Unary | Cast):
        return replace(e, x=_expr(e.x, names))
    if isinstance(e, Binary):
        return replace(e, a=_expr(e.a, names), b=_expr(e.b, names))
    if isinstance(e, Select):
        return replace(e, cond=_expr(e.cond, names), then=_expr(e.then, names), orelse=_expr(e.orelse, names))
    if isinstance(e, Load):
        return replace(e, index=_expr(e.index, names))
    if isinstance(e, MathCall):
        return replace(e, args=tuple(_expr(a, names) for a in e.args))
    return e  # Var, Lit, ThreadId


def _stmt(s: Stmt, names: dict[Const, Var]) -> Stmt:
    # Matmul statements hold only index expressions (sizes), never a float.
    if isinstance(s, Let | Assign):
        return replace(s, expr=_expr(s.expr, names))
    if isinstance(s, Store):
        return replace(s, index=_expr(s.index, names), value=_expr(s.value, names))
    if isinstance(s, If):
        return replace(s, cond=_expr(s.cond, names), then=[_stmt(t, names) for t in s.then],
                       orelse=[_stmt(t, names) for t in s.orelse])
    if isinstance(s, Loop):
        return replace(s, body=[_stmt(t, names) for t in s.body])
    return s
