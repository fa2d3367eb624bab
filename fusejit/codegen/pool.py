"""Pooling kernels: ``max_pool``, ``avg_pool`` and their derivatives, as loop nests.

A pool is a reduce-window over every axis. Forward kernels (``max_pool``, ``avg_pool``,
``max_pool_gather``) loop over the output and, inside, over the window's offsets (axes
with a window of one have no loop); a position outside the operand (padding) reads the
fill: -inf for max, 0 for the average, and is never chosen. ``max_pool_gather`` and
``max_pool_scatter`` choose the first largest element of each window in row-major window
order (a NaN counts as largest, as for ``np.argmax``): ``gather`` reads the tangent there,
``scatter`` zeroes its output and adds each window's cotangent there. Neither the winner
nor the forward maximum branches on the data, but for a window holding a NaN
(``_first_largest``, ``_window_max``): a mispredicted branch per window cost more than
the rest of the kernel. ``avg_pool_scatter`` is written in gather form: each element
sums the cotangents of the windows that contain it (a range per axis), so no two
iterations write the same element. Where the windows
tile the operand (a CNN's 2x2 pool with stride 2), ``max_pool_scatter`` has each window
zero its own elements and store at its winner instead: one write per element, no reads.

The outermost loop runs on threads when the work is large; for ``max_pool_scatter``
only when that axis is not pooled (window 1, stride 1, no padding), so that no two
threads add into the same element.
"""

from __future__ import annotations

import itertools
import math

from fusejit.codegen.common import Ctx, LoweredKernel, Strategy, finish, loop_nest, reason_of
from fusejit.codegen.elemental import linearize
from fusejit.codegen.exprs import (
    ONE,
    ZERO,
    BinaryOp,
    Expr,
    Lit,
    MathCall,
    add,
    binary,
    floordiv,
    maximum,
    minimum,
    mul,
    select,
    sub,
)
from fusejit.codegen.kernel import KernelBuilder, Unsupported
from fusejit.codegen.rules import CodegenRule
from fusejit.ir import primitives as P
from fusejit.ir.core import Op
from fusejit.ir.dtypes import DType
from fusejit.ir.transforms.fusion import FusionGroup

POOL_PRIMITIVES = (P.max_pool, P.avg_pool, P.max_pool_gather, P.max_pool_scatter, P.avg_pool_scatter)


def _pool_structure(group: FusionGroup) -> Op:
    """The one pooling op of a pool kernel, which reads its operands from memory."""
    if len(group.ops) != 1 or group.ops[0].prim not in POOL_PRIMITIVES:
        raise Unsupported("a pool kernel holds one pooling op")
    (op,) = group.ops
    if any(v not in group.inputs for v in op.inputs) or group.outputs != (op.output,):
        raise Unsupported("a pool kernel reads its operands from memory and writes its result")
    return op


def pool_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: _pool_structure(group))


class Window:
    """Sizes and attributes of one pooling op as kernel expressions."""

    def __init__(self, b: KernelBuilder, op: Op) -> None:
        self.b = b
        a = op.attrs
        self.window, self.strides, self.lo = a["window"], a["strides"], a["lo"]
        in_shape = a["shape"] if op.prim is P.avg_pool_scatter else op.inputs[0].shape
        out_shape = P.pool_output_shape(in_shape, a["window"], a["strides"], a["lo"], a["hi"])
        self.in_shape, self.out_shape = in_shape, out_shape
        self.X = tuple(self.size(("X", i), n) for i, n in enumerate(in_shape))
        self.Y = tuple(self.size(("Y", i), n) for i, n in enumerate(out_shape))

    def size(self, key: object, n: int) -> Expr:
        return self.b.size(("pool", key), n)

    def position(self, i: int, y: Expr, k: Expr) -> Expr:
        """The operand index ``y * stride + k - lo`` along axis ``i``."""
        b = self.b  # the index constructors fold the identities (stride 1, k = 0, lo = 0)
        return b.let(sub(b.let(add(b.let(mul(y, Lit(self.strides[i]))), k)), Lit(self.lo[i])))

    def padded(self, i: int) -> bool:
        """Whether axis ``i`` is pooled (or can reach outside the operand)."""
        return self.window[i] > 1 or self.lo[i] != 0 or self.strides[i] != 1 or self.out_shape[i] != self.in_shape[i]

    def reaches_outside(self, i: int) -> bool:
        """Whether a window along axis ``i`` can cover a position outside the operand
        (padding); a 2x2 pool with stride 2 over an even size never does, and then needs
        no bounds check per element."""
        last = (self.out_shape[i] - 1) * self.strides[i] + self.window[i] - 1 - self.lo[i]
        return self.lo[i] > 0 or last > self.in_shape[i] - 1


def _window_element(b: KernelBuilder, w: Window, y: tuple[Expr, ...], k: tuple[Expr, ...]) -> tuple[Expr, Expr | None]:
    """(the operand's linear index of offset ``k`` of the window at output ``y``, clamped
    into range; whether it is in the operand, None: always)."""
    inside: Expr | None = None
    idx = []
    for i in range(len(w.X)):
        q = w.position(i, y[i], k[i])
        if not w.reaches_outside(i):  # an axis not pooled never does
            idx.append(q)
            continue
        ok = b.let(binary(BinaryOp.AND, binary(BinaryOp.GE, q, ZERO), binary(BinaryOp.LT, q, w.X[i])))
        inside = ok if inside is None else b.let(binary(BinaryOp.AND, inside, ok))
        idx.append(b.let(minimum(maximum(q, ZERO), sub(w.X[i], ONE))) if w.X[i] != ONE else ZERO)
    return linearize(b, tuple(idx), w.X), inside


def _read(b: KernelBuilder, xa: str, flat: Expr, inside: Expr | None, fill: Expr) -> Expr:
    """The window element at ``flat`` (``_window_element``), or ``fill`` where it lies in
    the padding."""
    v = b.load(xa, flat)
    return v if inside is None else b.let(select(inside, v, fill))


# Windows of at most this many elements are scanned by straight-line code: each loop costs
# Numba and LLVM ~50 ms to compile, for what LLVM unrolls into the same code anyway (W7's
# 2x2 pool gradient scans its window three times: 0.88-0.98 s to compile, unrolled
# 0.72-0.75 s).
UNROLLED_WINDOW = 4


def _scan_window(b: KernelBuilder, w: Window, y: tuple[Expr, ...], visit, reverse: bool = False) -> None:
    """Calls ``visit(flat, inside)`` (``_window_element``) for each offset of the window
    at output ``y``, in row-major window order (``reverse``: the opposite order)."""
    if math.prod(w.window) <= UNROLLED_WINDOW:
        order = list(itertools.product(*(range(n) for n in w.window)))
        for k in reversed(order) if reverse else order:
            visit(*_window_element(b, w, y, tuple(Lit(ki) for ki in k)))
        return
    offsets = tuple(Lit(k) if k > 1 else ONE for k in w.window)

    def at(k: tuple[Expr, ...]) -> None:
        if reverse:
            k = tuple(b.let(sub(Lit(n - 1), ki)) if n > 1 else ki for n, ki in zip(w.window, k, strict=True))
        visit(*_window_element(b, w, y, k))

    loop_nest(b, offsets, at)


def _first_largest(b: KernelBuilder, w: Window, xa: str, y: tuple[Expr, ...], dt: DType) -> Expr:
    """The flat position of the first largest element of the window at ``y`` (a NaN
    counts as largest, as for ``np.argmax``); -1 if the window holds no element.

    Without branches on the data: one pass takes the window's maximum ignoring NaNs; a
    second pass, in reverse window order, moves one position to every element equal to
    the maximum and another to every NaN, so each ends on the first such element; the
    first NaN wins if there is one. Elements equal to the maximum compare equal whatever
    their sign of zero, as the ``>`` of a sequential scan sees them.

    The sequential scan (keep the running best, replace it when ``v > best``) needs a
    select of floats per element, which x86 compiles to a branch: on a ReLU output (half
    zeros) it mispredicted on about every other window. Measured (a jitted call on
    [256,16,8,8] float32, 1 thread, same process), the 2x2 tiled scatter of W7: ReLU
    outputs 1.55 -> 0.50 ms, normal values 1.60 -> 0.44 ms, all zeros 0.62 -> 0.42 ms;
    3x3 stride 2 padding 1: 3.6 -> 2.2 ms. The maximum is ``_running_max``, except
    where padding is read through a select: there it became a branch (3.7 ms against
    ``maxnum``'s 2.2), while in the tiled scatter it saves 0.54 -> 0.47 ms. A forward
    second pass that takes only the first hit (``where < 0``) branched again; one
    position moved to elements that are NaN or equal the maximum in a window without
    NaN (a flag folded in the first pass) was ~10% slower than two positions.
    """
    fill = b.const(-math.inf, dt)
    top = b.define(fill)

    padded = any(w.reaches_outside(i) for i in range(len(w.X)))

    def scan(flat: Expr, inside: Expr | None) -> None:
        v = _read(b, xa, flat, inside, fill)  # padding: -inf, never NaN
        b.assign(top, MathCall("maxnum", (top, v), dt) if padded else _running_max(top, v))

    _scan_window(b, w, y, scan)
    if padded:
        where = b.define(Lit(-1))
    else:  # the last element is in the operand and wins if no other does: no test of it
        where = b.define(_window_element(b, w, y, tuple(Lit(n - 1) for n in w.window))[0])
    nan_at = b.define(Lit(-1))

    def take(flat: Expr, inside: Expr | None) -> None:
        v = _read(b, xa, flat, inside, fill)
        for var, hit in ((where, binary(BinaryOp.EQ, v, top)), (nan_at, binary(BinaryOp.NE, v, v))):
            if inside is not None and var is where:  # padding is -inf: it may equal the maximum
                hit = binary(BinaryOp.AND, inside, hit)
            b.assign(var, select(b.let(hit), flat, var))

    _scan_window(b, w, y, take, reverse=True)
    return b.let(select(binary(BinaryOp.GE, nan_at, ZERO), nan_at, where))


def lower_pool(ctx: Ctx) -> LoweredKernel:
    op = _pool_structure(ctx.group)
    if op.prim is P.avg_pool_scatter:
        return _lower_avg_scatter(ctx, op)
    if op.prim is P.max_pool_scatter:
        return _lower_max_scatter(ctx, op)
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    xa = arrays.value(op.inputs[0], "in")
    ta = arrays.value(op.inputs[1], "in") if op.prim is P.max_pool_gather else None
    oa = arrays.value(op.output, "out")
    w = Window(b, op)
    dt = op.output.dtype
    parallel = op.output.type.size * math.prod(w.window) >= ctx.threshold

    def element(y: tuple[Expr, ...]) -> None:
        if op.prim is P.max_pool_gather:
            where = _first_largest(b, w, xa, y, dt)
            found = b.let(binary(BinaryOp.GE, where, ZERO))
            tv = b.load(ta, b.let(maximum(where, ZERO)))
            b.store(oa, linearize(b, y, w.Y), b.let(select(found, tv, b.const(0, dt))))
            return
        pool_element(b, w, op.prim, xa, oa, y, dt)

    loop_nest(b, w.Y, element, parallel=parallel)
    return finish(ctx, b, arrays, None, op.prim.name, dt, op.output.shape)


def pool_element(b: KernelBuilder, w: Window, prim: P.Primitive, xa: str, oa: str, y: tuple[Expr, ...],
                 dt: DType) -> None:
    """Writes element ``y`` of a ``max_pool`` or ``avg_pool`` (``prim``) of ``xa`` into
    ``oa`` (also run by conv kernels on the planes they finish, ``codegen/conv.py``)."""
    if prim is P.max_pool:
        b.store(oa, linearize(b, y, w.Y), _window_max(b, w, xa, y, dt))
        return
    acc = b.define(b.const(0, dt))

    def visit(flat: Expr, inside: Expr | None) -> None:
        b.assign(acc, binary(BinaryOp.ADD, acc, _read(b, xa, flat, inside, b.const(0, dt))))

    _scan_window(b, w, y, visit)
    b.store(oa, linearize(b, y, w.Y), b.let(binary(BinaryOp.DIV, acc, b.const(math.prod(w.window), dt))))


def _window_max(b: KernelBuilder, w: Window, xa: str, y: tuple[Expr, ...], dt: DType) -> Expr:
    """The largest element of the window at ``y``, as the math library's ``maximum``
    folds it from -inf (NaN if any is NaN, -0 < +0; padding reads -inf).

    ``maximum`` of one float on x86 branches on the sign of an operand (to order -0 and
    +0), which mispredicts on data of both signs. So the window is folded by
    ``_running_max`` (no branch, NaN skipped, the first of tied zeros kept), while the
    sum of its zeros (its other elements added as -0, a NaN as itself) gives a maximum
    of zero its sign (-0 only if every zero is -0) and tells whether it holds a NaN:
    only then is it folded again with ``maximum``, on a branch of its own. Measured (a
    jitted call on [256,16,8,8] float32, 1 thread, same process), 2x2 pool: normal
    values 1.16 -> 0.27 ms, ReLU outputs 0.40 -> 0.29 ms; 3x3 stride 2 padding 1:
    normal values 1.68 -> 0.82 ms, ReLU outputs 0.85 -> 0.81 ms. Refolding every
    window with a zero maximum instead made ReLU outputs with many all-zero windows 2.4x
    slower; noting NaNs in a flag of their own, or in a sum of ``v - v``, was 10-25%
    slower."""
    fill = b.const(-math.inf, dt)
    neg_zero = b.const(-0.0, dt)
    zero = b.const(0, dt)
    top = b.define(fill)
    zeros = b.define(neg_zero)

    def fast(flat: Expr, inside: Expr | None) -> None:
        v = _read(b, xa, flat, inside, fill)
        b.assign(top, _running_max(top, v))
        nonzero = binary(BinaryOp.OR, binary(BinaryOp.LT, v, zero), binary(BinaryOp.GT, v, zero))  # not NaN
        b.assign(zeros, binary(BinaryOp.ADD, zeros, b.let(select(nonzero, neg_zero, v))))

    _scan_window(b, w, y, fast)

    def exact() -> Expr:
        acc = b.define(fill)

        def visit(flat: Expr, inside: Expr | None) -> None:
            b.assign(acc, MathCall("maximum", (acc, _read(b, xa, flat, inside, fill)), dt))

        _scan_window(b, w, y, visit)
        return acc

    signed = b.let(select(binary(BinaryOp.EQ, top, zero), zeros, top))
    return b.branch(binary(BinaryOp.EQ, zeros, zeros), lambda: signed, exact)


def _running_max(top: Expr, v: Expr) -> Expr:
    """``top`` raised to ``v`` if ``v`` is larger: a NaN ``v`` is skipped and a tie keeps
    ``top``. For a running maximum that starts at -inf (never NaN) this is ``maxnum``, in
    one x86 instruction (``maxss``, which the select of a compare of its own operands
    becomes) where ``maxnum`` takes three."""
    return select(binary(BinaryOp.GT, v, top), v, top)


def tiles(w: Window) -> bool:
    """Whether the windows tile the operand: along every pooled axis they start at 0,
    step by their size and stay inside, so that each element lies in at most one window
    (the 2x2 pool with stride 2 over even sizes of a CNN)."""
    return all(not w.padded(i) or (w.strides[i] == w.window[i] and w.lo[i] == 0 and not w.reaches_outside(i))
               for i in range(len(w.X)))


def _lower_max_scatter(ctx: Ctx, op: Op) -> LoweredKernel:
    x, g = op.inputs
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    xa, ga, oa = arrays.value(x, "in"), arrays.value(g, "in"), arrays.value(op.output, "out")
    w = Window(b, op)
    dt = op.output.dtype
    zero = b.const(0, dt)
    if tiles(w):
        _tiled_max_scatter(ctx, b, w, xa, ga, oa, dt)
        return finish(ctx, b, arrays, None, "max_pool_scatter", dt, x.shape)
    with b.loop(w.size("total", x.type.size)) as f:
        b.store(oa, f, zero)
    first_free = bool(w.X) and not w.padded(0) and w.Y[0] != ONE
    parallel = first_free and g.type.size * math.prod(w.window) >= ctx.threshold

    def element(y: tuple[Expr, ...]) -> None:
        where = _first_largest(b, w, xa, y, dt)
        found = b.let(binary(BinaryOp.GE, where, ZERO))
        # A window with no element adds 0 at its first clamped position (in its own slice
        # along the first axis: never another thread's).
        home = tuple(b.let(minimum(maximum(w.position(i, y[i], ZERO), ZERO), sub(w.X[i], ONE)))
                     if w.X[i] != ONE else ZERO for i in range(len(w.X)))
        target = b.let(select(found, where, linearize(b, home, w.X)))
        gv = b.load(ga, linearize(b, y, w.Y))
        cur = b.load(oa, target)
        b.store(oa, target, b.let(binary(BinaryOp.ADD, cur, b.let(select(found, gv, zero)))))

    loop_nest(b, w.Y, element, parallel=parallel)
    return finish(ctx, b, arrays, None, "max_pool_scatter", dt, x.shape)


def _tiled_max_scatter(ctx: Ctx, b: KernelBuilder, w: Window, xa: str, ga: str, oa: str, dt: DType) -> None:
    """``max_pool_scatter`` for windows that tile the operand (``tiles``): each window
    zeroes the elements it covers and stores its cotangent at its first largest, so the
    output is written once and never read. The general kernel zeroes the whole output
    in a pass of its own, then loads, adds and stores at each window's winner. Measured
    (relu outputs, 1 thread, same process): [256,16,8,8] 2.32 -> 1.37 ms, [64,32,32,32]
    18.6 -> 12.5 ms, [64,64,4,4] 0.34 -> 0.31 ms. (Choosing each element's value with a
    select against the window's maximum instead, which reads the window twice, was
    faster on 32x32 planes, 10.5 ms, and slower on 8x8 and 4x4 ones.) Elements no window
    covers (a remainder row) are zeroed first; windows never share an element, so any
    axis may run on threads."""
    zero = b.const(0, dt)
    if any(w.padded(i) and w.out_shape[i] * w.strides[i] != w.in_shape[i] for i in range(len(w.X))):
        with b.loop(w.size("total", math.prod(w.in_shape))) as f:
            b.store(oa, f, zero)
    parallel = math.prod(w.in_shape) >= ctx.threshold

    def element(y: tuple[Expr, ...]) -> None:
        where = _first_largest(b, w, xa, y, dt)  # never -1: a tiling window holds an element
        _scan_window(b, w, y, lambda flat, inside: b.store(oa, flat, zero))
        # 0 + g, as the general kernel's zeroed output plus g: a -0.0 cotangent stores +0.0.
        b.store(oa, where, binary(BinaryOp.ADD, zero, b.load(ga, linearize(b, y, w.Y))))

    loop_nest(b, w.Y, element, parallel=parallel)


def _lower_avg_scatter(ctx: Ctx, op: Op) -> LoweredKernel:
    (g,) = op.inputs
    out = op.output
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    ga, oa = arrays.value(g, "in"), arrays.value(out, "out")
    w = Window(b, op)
    dt = out.dtype
    parallel = out.type.size * math.prod(w.window) >= ctx.threshold

    def element(h: tuple[Expr, ...]) -> None:
        acc = b.define(b.const(0, dt))
        starts, stops = [], []
        for i in range(len(w.X)):
            if not w.padded(i):
                starts.append(h[i])
                stops.append(b.let(add(h[i], ONE)))
                continue
            # windows y with y * s - lo <= h < y * s - lo + k
            top = b.let(add(h[i], Lit(w.lo[i])))
            st = Lit(w.strides[i])
            starts.append(b.let(maximum(ZERO, sub(ZERO, floordiv(sub(Lit(w.window[i] - 1), top), st)))))
            stops.append(b.let(minimum(w.Y[i], add(floordiv(top, st), ONE))))

        def visit(y: tuple[Expr, ...]) -> None:
            b.assign(acc, binary(BinaryOp.ADD, acc, b.load(ga, linearize(b, y, w.Y))))

        loop_nest(b, tuple(stops), visit, starts=tuple(starts))
        scale = b.const(math.prod(w.window), dt)
        b.store(oa, linearize(b, h, w.X), b.let(binary(BinaryOp.DIV, acc, scale)))

    loop_nest(b, w.X, element, parallel=parallel)
    return finish(ctx, b, arrays, None, "avg_pool_scatter", dt, out.shape)


KERNEL_RULES = {p: CodegenRule("kernel", kernel=Strategy(pool_support, lower_pool)) for p in POOL_PRIMITIVES}
