"""Scan kernels: ``cumsum`` and ``cumprod``, a running sum or product along one axis.

The operand is viewed as ``[outer, n, inner]`` (the axes before, at and after the scanned
one). For each outer index, the first row along the axis is copied, then row ``k`` is
row ``k - 1`` of the output plus (times) row ``k`` of the operand (from the other end when
``reverse``): the inner loop runs over contiguous elements with no dependence between
them (it vectorizes), and float sums and products accumulate in order, exactly as NumPy's
``add.accumulate`` and ``multiply.accumulate``. Outer indices are independent and run on threads when the array is
large.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from fusejit.codegen.common import Ctx, LoweredKernel, Strategy, finish, reason_of
from fusejit.codegen.elemental import linearize
from fusejit.codegen.exprs import ONE, Expr, add, minimum, mul, sub
from fusejit.codegen.kernel import KernelBuilder, Unsupported
from fusejit.codegen.rules import CodegenRule
from fusejit.ir import primitives as P
from fusejit.ir.core import Op
from fusejit.ir.transforms.fusion import FusionGroup

_COMBINE: dict[P.Primitive, Callable[[Expr, Expr], Expr]] = {P.cumsum: add, P.cumprod: mul}


def _scan_structure(group: FusionGroup) -> Op:
    """The one cumsum or cumprod of a scan kernel, which reads its operand from memory."""
    if len(group.ops) != 1 or group.ops[0].prim not in _COMBINE:
        raise Unsupported("a scan kernel holds one cumsum or cumprod")
    (op,) = group.ops
    if op.inputs[0] not in group.inputs or group.outputs != (op.output,):
        raise Unsupported("a scan kernel reads its operand from memory and writes its result")
    return op


def scan_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: _scan_structure(group))


def lower_cumsum(ctx: Ctx) -> LoweredKernel:
    """A cumsum or cumprod (the same loops, another combining operator)."""
    op = _scan_structure(ctx.group)
    combine = _COMBINE[op.prim]
    (x,), out = op.inputs, op.output
    axis, reverse = op.attrs["axis"], op.attrs["reverse"]
    shape = x.shape
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    src, dst = arrays.value(x, "in"), arrays.value(out, "out")

    outer = b.size("outer", math.prod(shape[:axis]))
    n = b.size("n", shape[axis])
    inner = b.size("inner", math.prod(shape[axis + 1 :]))
    space = (outer, n, inner)
    parallel = math.prod(shape) >= ctx.threshold and outer != ONE

    def rows(o: Expr, first: bool) -> None:
        """The first row along the axis (a loop of at most one iteration: none when the
        axis is empty), or every later one."""
        count = (ONE if n == ONE else minimum(n, ONE)) if first else b.let(sub(n, ONE))
        with b.loop(count) as j:
            k = j if first else add(j, ONE)
            if reverse:
                k = b.let(sub(sub(n, ONE), k))
            prev = None if first else b.let(add(k, ONE) if reverse else sub(k, ONE))

            with b.each(inner) as i:
                at = linearize(b, (o, k, i), space)
                x_k = b.load(src, at)
                if prev is None:
                    b.store(dst, at, x_k)
                else:
                    before = b.load(dst, linearize(b, (o, prev, i), space))
                    b.store(dst, at, b.let(combine(before, x_k)))

    with b.each(outer, parallel) as o:
        rows(o, first=True)
        if n != ONE:
            rows(o, first=False)
    return finish(ctx, b, arrays, None, op.prim.name, x.dtype, shape)


_SCAN = CodegenRule("kernel", kernel=Strategy(scan_support, lower_cumsum))
KERNEL_RULES = {P.cumsum: _SCAN, P.cumprod: _SCAN}
