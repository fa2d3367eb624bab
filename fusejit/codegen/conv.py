"""Convolution kernels: ``conv`` as direct loops or as im2col plus a GEMM, chosen here.

Both read the operands from memory and write the ``[N, O, *P]`` result; positions are
computed in the *dilated* input (``q = p * stride + k * rhs_dilation - lo``), which holds
an input element where ``q`` is a multiple of ``lhs_dilation`` inside ``[0, dilated
size)`` and a zero elsewhere (padding, holes).

* **Direct** (``conv_direct``): for each (sample, output channel) plane, each input
  channel of its group and each window offset, one weight is multiplied into the
  output plane. The valid output range of every axis is computed from the offset, so the
  innermost loop runs over contiguous output elements without bounds checks (it
  vectorizes); planes run on threads when the work is large. Used for contractions
  (``Cg * prod(K)``) of a few elements and where the target has no BLAS.
* **Direct, gathering** (also ``conv_direct``; a target with ``conv_gather``, a GPU):
  each output element sums its window in a register, so output elements are independent
  and no sum goes through memory (``_lower_gather``).
* **im2col + GEMM**, **im2col into rows** and **shifted GEMMs** (``conv_gemm``,
  ``conv_shifted``): the strategies that unfold the input into a scratch matrix and call
  BLAS, in ``fusejit.codegen.conv_gemm``.

``DIRECT_MAX_CONTRACTION`` and ``SHIFTED_MIN_ROWS`` are where the choices flip (measured
with ``bench/bench_conv.py``).

Either way a pool over the spatial axes of the result (or of an epilogue value: the
max-pool after a relu) runs in the same kernel, on each (sample, channel) plane as soon
as the epilogue has written it, while it is in cache (``_Epilogue.pool_plane``).
"""

from __future__ import annotations

import math

from fusejit.codegen.common import (
    LOOP_OPS,
    Arrays,
    Ctx,
    LoweredKernel,
    Strategy,
    finish,
    loop_nest,
    provider_at,
    reason_of,
)
from fusejit.codegen.conv_gemm import lower_gemm, lower_rows, lower_shifted
from fusejit.codegen.conv_kn2row import lower_kn2row, uses_kn2row
from fusejit.codegen.conv_taps import lower_taps, uses_taps
from fusejit.codegen.elemental import Emitter, Index, linearize
from fusejit.codegen.exprs import (
    ONE,
    ZERO,
    BinaryOp,
    Expr,
    Lit,
    add,
    binary,
    floordiv,
    maximum,
    minimum,
    mod,
    mul,
    select,
    sub,
)
from fusejit.codegen.kernel import KernelBuilder, Unsupported
from fusejit.codegen.pool import Window, pool_element
from fusejit.codegen.rules import CodegenRule
from fusejit.ir import primitives as P
from fusejit.ir.core import Op, Value
from fusejit.ir.primitives import OpKind
from fusejit.ir.transforms.fusion import FusionGroup

# The contraction length (input channels per group times window elements) up to which
# the direct loops beat im2col + GEMM. Measured (``bench/bench_conv.py``, 1 thread, 3x3
# windows, batch 64, float32): GEMM won at every length tried, from 9 (1 input channel:
# 0.26 ms vs 0.79 ms for 64x1x8x8 -> 32) to 576 (32 ms vs 224 ms), so direct loops are
# left to targets without BLAS and to contractions of a few elements.
DIRECT_MAX_CONTRACTION = 4
# A gathering direct conv (``_lower_gather``) whose contraction (input channels per group
# times window elements) is at least this long, and that feeds no pool, splits each
# output element's sum over a block of threads. (A GPU measure: W7's weight gradient,
# 256 samples x 64 positions for each of 144 weights, took 1.44 ms with a thread per
# weight on an H200.)
GATHER_SPLIT_MIN = 1024
# Shifted GEMMs (``conv_shifted``) are chosen where one of them contracts at least
# ``SHIFTED_MIN_ROWS`` elements (input channels per group times the window's last extent)
# and it has at least ``SHIFTED_MIN_CHANNELS`` output channels per group or the output
# ``SHIFTED_MIN_POSITIONS`` positions per plane. Measured against im2col (``bench/
# bench_conv.py --clock thread``, 3x3 windows, padding 1, batch 64, float32, 1 thread,
# median ratio of interleaved calls; C->O at a side): 32->64 at 16x16 0.67, 64->32 at
# 16x16 0.85, 64->128 and 128->64 at 8x8 0.93, 32->64 at 8x8 0.81, 16->32 at 8x8 0.91,
# 16->16 at 16x16 0.68, 32->64 at 4x4 0.88; but 64->32 at 4x4 1.06 (few GEMM columns per
# output channel, and the gap rows add 1/4 more), 8->32 at 16x16 (24 rows) 1.01, and
# 1-3 input channels (3-9 rows) 1.4-1.7.
SHIFTED_MIN_ROWS = 32
SHIFTED_MIN_CHANNELS = 64
SHIFTED_MIN_POSITIONS = 64


def _conv_structure(group: FusionGroup) -> tuple[Op, Op | None]:
    """The one conv of a conv kernel, which reads its operands from memory, checked with
    its epilogue: elementwise ops on the result (and layout/source ops feeding them), and
    at most one pool over the spatial axes of the result or of an epilogue value (also
    returned, or None)."""
    convs = [op for op in group.ops if op.prim is P.conv]
    if len(convs) != 1:
        raise Unsupported("a conv kernel holds one conv and its elementwise epilogue")
    (op,) = convs
    if any(v not in group.inputs for v in op.inputs):
        raise Unsupported("a conv kernel reads its operands from memory")
    pools = [other for other in group.ops if other.prim in POOL_EPILOGUES]
    if len(pools) > 1:
        raise Unsupported("a conv kernel runs at most one pool")
    pool = pools[0] if pools else None
    dependent = {op.output}
    for other in group.ops:
        if other is op or other is pool:
            continue
        if other.prim.kind not in LOOP_OPS:
            raise Unsupported(f"{other.prim.name} cannot be fused into a conv epilogue")
        if any(v in dependent for v in other.inputs):
            if other.prim.kind is not OpKind.ELEMENTWISE:
                raise Unsupported("a conv epilogue reads the conv's result elementwise only")
            dependent.update(other.outputs)
    if pool is not None:
        _check_pool(op, pool, dependent, group)
    if any(v.shape != op.output.shape for v in group.outputs if pool is None or v is not pool.output):
        raise Unsupported("the outputs of a conv kernel have the conv's shape")
    return op, pool


# Pools a conv kernel runs on each (sample, channel) plane once the plane is finished.
POOL_EPILOGUES = (P.max_pool, P.avg_pool)


def _check_pool(op: Op, pool: Op, dependent: set[Value], group: FusionGroup) -> None:
    """A pool in a conv kernel reads the conv's result or an epilogue value, pools the
    spatial axes only (so that a finished plane holds every window), and its result
    leaves the kernel."""
    if pool.inputs[0] not in dependent or pool.inputs[0].shape != op.output.shape:
        raise Unsupported("a conv kernel's pool reads the conv's result or its epilogue")
    a = pool.attrs
    if any(tuple(a[k][:2]) != want for k, want in
           (("window", (1, 1)), ("strides", (1, 1)), ("lo", (0, 0)), ("hi", (0, 0)))):
        raise Unsupported("a conv kernel's pool windows lie within one (sample, channel) plane")
    if pool.output not in group.outputs or any(pool.output in other.inputs for other in group.ops):
        raise Unsupported("a conv kernel's pool is its last op")


def conv_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: _conv_structure(group))


def uses_shifted(op: Op) -> bool:
    """Whether a conv lowered through GEMMs unfolds the last spatial axis only and runs
    one GEMM per window offset along the others (else a full im2col and one GEMM)."""
    lhs, rhs = op.inputs
    a = op.attrs
    last = lhs.type.ndim - 3
    if last < 1 or any(d != 1 for d in a["lhs_dilation"]) or any(st != 1 for st in a["strides"][:last]):
        return False
    if math.prod(rhs.shape[2:]) > math.prod(op.output.shape[2:]):  # a kernel gradient's conv
        return False
    out_channels = rhs.shape[0] // a["groups"]
    return rhs.shape[1] * rhs.shape[-1] >= SHIFTED_MIN_ROWS and (
        out_channels >= SHIFTED_MIN_CHANNELS or math.prod(op.output.shape[2:]) >= SHIFTED_MIN_POSITIONS)


def uses_window_rows(op: Op) -> bool:
    """Whether a conv lowered through a GEMM unfolds each output position's windows into
    a row of the unfolded matrix (``_lower_rows``: a kernel gradient's shape, a window
    larger than the output, without lhs dilation) instead of into a column."""
    window, out = op.inputs[1].shape[2:], op.output.shape[2:]
    return math.prod(window) > math.prod(out) and all(d == 1 for d in op.attrs["lhs_dilation"])


def uses_gemm(op: Op, blas: bool) -> bool:
    """Whether ``op`` is lowered as im2col + GEMM (else as direct loops)."""
    lhs, rhs = op.inputs
    contraction = math.prod(rhs.shape[1:])
    return blas and lhs.dtype.is_float and contraction > DIRECT_MAX_CONTRACTION and op.output.type.size > 0


class _Shapes:
    """The conv's sizes as kernel expressions (int parameters, ``ONE`` for unit sizes)."""

    def __init__(self, b: KernelBuilder, op: Op) -> None:
        lhs, rhs = op.inputs
        a = op.attrs
        self.b = b
        self.nsp = lhs.type.ndim - 2
        self.groups = a["groups"]
        self.strides = a["strides"]
        self.lo = a["lo"]
        self.ldil = a["lhs_dilation"]
        self.rdil = a["rhs_dilation"]
        self.window = rhs.shape[2:]
        n, c, *spatial = lhs.shape
        o, cg = rhs.shape[:2]
        self.N, self.C, self.O, self.Cg = (self.size(k, v) for k, v in (("N", n), ("C", c), ("O", o), ("Cg", cg)))
        self.Og = self.size("Og", o // self.groups)
        self.S = tuple(self.size(("S", i), v) for i, v in enumerate(spatial))
        self.Sd = tuple(self.size(("Sd", i), P.dilated_size(v, self.ldil[i])) for i, v in enumerate(spatial))
        self.P = tuple(self.size(("P", i), v) for i, v in enumerate(op.output.shape[2:]))
        self.K = tuple(self.size(("K", i), v) for i, v in enumerate(self.window))
        self.SS = self.size("SS", math.prod(spatial))
        self.PP = self.size("PP", math.prod(op.output.shape[2:]))
        self.KK = self.size("KK", math.prod(self.window))

    def size(self, key: object, n: int) -> Expr:
        return self.b.size(("conv", key), n)

    def dilated_position(self, i: int, p: Expr, k: Expr) -> Expr:
        """``p * stride + k * rhs_dilation - lo`` along spatial axis ``i``."""
        b = self.b  # the index constructors fold the identities (stride 1, k = 0, lo = 0)
        q = b.let(add(b.let(mul(p, Lit(self.strides[i]))), b.let(mul(k, Lit(self.rdil[i])))))
        return b.let(sub(q, Lit(self.lo[i])))

    def input_element(self, i: int, q: Expr, clamp: bool = True) -> tuple[Expr, Expr]:
        """The input index along axis ``i`` at dilated position ``q`` (clamped into range
        unless ``q`` is known to be inside) and the condition that an element (not padding
        or a hole) is there."""
        b = self.b
        inside = b.let(binary(BinaryOp.AND, binary(BinaryOp.GE, q, ZERO), binary(BinaryOp.LT, q, self.Sd[i])))
        d = self.ldil[i]
        if d != 1:
            inside = b.let(binary(BinaryOp.AND, inside, binary(BinaryOp.EQ, mod(q, Lit(d)), ZERO)))
            q = b.let(floordiv(q, Lit(d)))
        if not clamp:
            return q, inside
        last = sub(self.S[i], ONE)
        return b.let(minimum(maximum(q, ZERO), last)) if self.S[i] != ONE else ZERO, inside


def lower_conv(ctx: Ctx) -> LoweredKernel:
    op, pool = _conv_structure(ctx.group)
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    epi = _Epilogue(ctx, b, arrays, op, pool)
    lower = _lower_gather if ctx.target.conv_gather else _lower_direct
    if uses_gemm(op, ctx.target.blas and ctx.target.gemm_in_loops):
        lower = lower_shifted if uses_shifted(op) else lower_rows if uses_window_rows(op) else lower_gemm
        if uses_taps(op):  # a short contraction: GEMMs run it slowly (it vectorizes as taps)
            lower = lower_taps
        elif uses_kn2row(op):  # a GEMM per sample, its result in cache: near the BLAS's peak
            lower = lower_kn2row
    stem = lower(ctx, op, b, arrays, epi, _Shapes(b, op))
    return finish(ctx, b, arrays, epi.em, stem, op.output.dtype, op.output.shape)


class _Epilogue:
    """Writes the group's outputs at one element of the conv's result: the result itself,
    or the elementwise ops fused after it (bias, activation), read from registers; and
    the pool's output on each finished plane (``pool_plane``)."""

    def __init__(self, ctx: Ctx, b: KernelBuilder, arrays: Arrays, op: Op, pool: Op | None) -> None:
        group = ctx.group
        self.b, self.d, self.pool = b, op.output, pool
        inputs = {v: arrays.value(v, "in") for v in group.inputs}
        # ``outs``: the values of the result's shape written at each element.
        self.outs: dict[Value, str] = {v: arrays.value(v, "out") for v in group.outputs
                                       if pool is None or v is not pool.output}
        if pool is not None:
            self.pool_out = arrays.value(pool.output, "out")
            self.window = Window(b, pool)
            if pool.inputs[0] not in self.outs:  # the pooled value stays in the kernel
                self.outs[pool.inputs[0]] = arrays.scratch(pool.inputs[0].dtype, pool.inputs[0].type.size)
        self.em: Emitter = arrays.emitter(ctx.ops, inputs)
        self.inputs = inputs
        self.shape = self.em.shape_of(self.d)
        self.plain = group.outputs == (self.d,)  # no epilogue: the result is the output

    def accumulator(self, arrays: Arrays) -> str:
        """An array of the result's size to accumulate in: the result's own output, else
        another output of its dtype (each element is read before it is overwritten), else
        scratch."""
        if self.d in self.outs:
            return self.outs[self.d]
        same = [v for v in self.outs if v.dtype == self.d.dtype]
        return self.outs[same[0]] if same else arrays.scratch(self.d.dtype, self.d.type.size)

    def store(self, dims: tuple[Expr, ...], flat: Expr, value: Expr) -> None:
        if self.plain:
            self.b.store(self.outs[self.d], flat, value)
            return
        self.em.provided[self.d] = provider_at(self.em, value, flat, "conv")
        idx = Index(self.shape, dims, flat)
        values = [(v, self.em.at(v, idx)) for v in self.outs]  # every read before any write
        for v, e in values:
            self.b.store(self.outs[v], flat, e)

    def pool_plane(self, n: Expr, o: Expr) -> None:
        """The pool's outputs over plane (``n``, ``o``), whose every element ``store``
        has written (the pool's windows lie within a plane)."""
        pool = self.pool
        if pool is None:
            return
        w, src = self.window, self.outs[pool.inputs[0]]
        loop_nest(self.b, w.Y[2:], lambda y: pool_element(self.b, w, pool.prim, src, self.pool_out, (n, o, *y),
                                                          pool.output.dtype))


def _lower_direct(ctx: Ctx, op: Op, b: KernelBuilder, arrays: Arrays, epi: _Epilogue, s: _Shapes) -> str:
    lhs, rhs = op.inputs
    out = op.output
    xa, wa = epi.inputs[lhs], epi.inputs[rhs]
    oa = epi.accumulator(arrays)
    dt = out.dtype
    zero = b.const(0, dt)
    planes = math.prod(out.shape[:2])
    work = out.type.size * math.prod(rhs.shape[1:])
    parallel = work >= ctx.threshold and planes > 1
    n_planes = s.size("planes", planes)

    with b.each(n_planes, parallel=parallel) as plane:
        n = b.let(floordiv(plane, s.O)) if s.O != ONE else plane
        o = b.let(mod(plane, s.O)) if s.O != ONE else ZERO
        g = b.let(floordiv(o, s.Og)) if s.groups > 1 else ZERO
        out_base = b.let(mul(plane, s.PP)) if s.PP != ONE else plane
        with b.each(s.PP) as p:
            b.store(oa, b.let(add(out_base, p)), zero)
        with b.each(s.Cg) as c:
            ci = b.let(add(b.let(mul(g, s.Cg)), c)) if s.groups > 1 else c
            x_base = b.let(mul(b.let(add(b.let(mul(n, s.C)), ci)), s.SS))
            w_base = b.let(mul(b.let(add(b.let(mul(o, s.Cg)), c)), s.KK))

            def offset(k: tuple[Expr, ...]) -> None:
                wv = b.load(wa, b.let(add(w_base, linearize(b, k, s.K))))
                # Output positions whose dilated input position is inside the input.
                starts, stops = [], []
                for i in range(s.nsp):
                    base = s.dilated_position(i, ZERO, k[i])  # position of output 0
                    st = Lit(s.strides[i])
                    # first p with base + p*st >= 0; last with base + p*st <= Sd - 1
                    first = b.let(maximum(ZERO, sub(ZERO, floordiv(base, st))))
                    stop = b.let(minimum(s.P[i], add(floordiv(sub(sub(s.Sd[i], ONE), base), st), ONE)))
                    starts.append(first)
                    stops.append(stop)

                def point(p: tuple[Expr, ...]) -> None:
                    at = b.let(add(out_base, linearize(b, p, s.P)))
                    inside: Expr | None = None
                    idx = []
                    for i in range(s.nsp):
                        q = s.dilated_position(i, p[i], k[i])
                        if s.ldil[i] == 1:
                            idx.append(q)
                            continue
                        j, ok = s.input_element(i, q, clamp=False)
                        idx.append(j)
                        inside = ok if inside is None else b.let(binary(BinaryOp.AND, inside, ok))
                    xv = b.load(xa, b.let(add(x_base, linearize(b, tuple(idx), s.S))))
                    if inside is not None:
                        xv = b.let(select(inside, xv, zero))
                    cur = b.load(oa, at)
                    b.store(oa, at, b.let(add(cur, b.let(mul(xv, wv)))))

                loop_nest(b, tuple(stops), point, tuple(starts))

            loop_nest(b, s.K, offset)
        if not (epi.plain and oa == epi.outs[out]):

            def finish_point(p: tuple[Expr, ...]) -> None:
                at = b.let(add(out_base, linearize(b, p, s.P)))
                epi.store((n, o, *p), at, b.load(oa, at))

            loop_nest(b, s.P, finish_point)
        epi.pool_plane(n, o)
    return "conv_direct"


def _lower_gather(ctx: Ctx, op: Op, b: KernelBuilder, arrays: Arrays, epi: _Epilogue, s: _Shapes) -> str:
    """Direct loops that gather: each output element sums its window over the input
    channels of its group in a register, then the epilogue stores it. Output elements are
    independent (no accumulation in memory, no atomic adds): a GPU runs one per thread,
    a block of threads per plane when a pool reads the finished plane, or, for a long
    contraction (``GATHER_SPLIT_MIN``: a weight gradient sums over the batch and the
    image), a block per element whose threads split the input channels (then a block
    sum). (``_lower_direct`` scatters each weight into a plane instead: contiguous inner
    loops that a CPU vectorizes, but on a GPU one thread per input channel adding
    atomically.)"""
    out = op.output
    planes = math.prod(out.shape[:2])
    if epi.pool is None and math.prod(op.inputs[1].shape[1:]) >= GATHER_SPLIT_MIN:
        with b.each(s.size("outputs", out.type.size), parallel=True) as element:
            plane = b.let(floordiv(element, s.PP)) if s.PP != ONE else element
            flat = b.let(mod(element, s.PP)) if s.PP != ONE else ZERO
            _gather_element(b, epi, s, op, plane, flat, element)
        return "conv_direct"
    with b.each(s.size("planes", planes), parallel=planes > 1) as plane:
        out_base = b.let(mul(plane, s.PP)) if s.PP != ONE else plane
        with b.each(s.PP) as flat:
            n, o = _gather_element(b, epi, s, op, plane, flat, b.let(add(out_base, flat)))
        epi.pool_plane(n, o)
    return "conv_direct"


def _gather_element(b: KernelBuilder, epi: _Epilogue, s: _Shapes, op: Op, plane: Expr, flat: Expr,
                    at: Expr) -> tuple[Expr, Expr]:
    """Output element ``flat`` of ``plane`` (flat index ``at``) summed in a register over
    its window and input channels, and stored through the epilogue; returns the plane's
    (sample, output channel)."""
    lhs, rhs = op.inputs
    xa, wa = epi.inputs[lhs], epi.inputs[rhs]
    zero = b.const(0, op.output.dtype)
    n = b.let(floordiv(plane, s.O)) if s.O != ONE else plane
    o = b.let(mod(plane, s.O)) if s.O != ONE else ZERO
    g = b.let(floordiv(o, s.Og)) if s.groups > 1 else ZERO
    p, rest = [], flat
    for i in reversed(range(s.nsp)):  # the output position of ``flat`` in the plane
        p.append(b.let(mod(rest, s.P[i])) if s.P[i] != ONE else ZERO)
        rest = b.let(floordiv(rest, s.P[i])) if s.P[i] != ONE else rest
    p.reverse()
    acc = b.define(zero)
    with b.each(s.Cg) as c:
        ci = b.let(add(b.let(mul(g, s.Cg)), c)) if s.groups > 1 else c
        x_base = b.let(mul(b.let(add(b.let(mul(n, s.C)), ci)), s.SS))
        w_base = b.let(mul(b.let(add(b.let(mul(o, s.Cg)), c)), s.KK))

        def offset(k: tuple[Expr, ...]) -> None:
            idx, inside = [], None
            for i in range(s.nsp):
                j, ok = s.input_element(i, s.dilated_position(i, p[i], k[i]))
                idx.append(j)
                inside = ok if inside is None else b.let(binary(BinaryOp.AND, inside, ok))
            xv = b.load(xa, b.let(add(x_base, linearize(b, tuple(idx), s.S))))
            if inside is not None:
                xv = b.let(select(inside, xv, zero))
            wv = b.load(wa, b.let(add(w_base, linearize(b, k, s.K))))
            b.assign(acc, add(acc, mul(xv, wv)))

        loop_nest(b, s.K, offset)
    epi.store((n, o, *p), at, acc)
    return n, o


KERNEL_RULES = {P.conv: CodegenRule("kernel", kernel=Strategy(conv_support, lower_conv))}
