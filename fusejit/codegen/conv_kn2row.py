"""Convolutions as one GEMM per sample over the window's offsets, then a shifted sum (kn2row).

Vasudevan, Anderson and Gregg, "Parallel Multi Channel Convolution using General Matrix
Multiplication" (2017): a conv of unit strides is, for each window offset ``k``, a 1x1
conv (a GEMM) shifted by ``k``. So for each sample ``n``

    T[(g, k, og), q] = sum_cg w[g*Og + og, cg, k] * x[n, g*Cg + cg, q]

is one GEMM per group, ``[prod(K) * Og, Cg] @ [Cg, Q]``, reading the sample's planes as
they are stored (no unfolded matrix), with the weights packed once per chunk of samples
(``packed[(g, k, og), cg]``); and the output is the sum over the offsets of ``T``'s
planes, each read at its shift:

    out[n, g*Og + og, p] = sum_k T[(g, k, og), p + k * rhs_dilation - lo]

(zero where ``p + k * rhs_dilation - lo`` falls outside the input), summed as the
epilogue and the pool write each output element. The per-sample GEMMs are small (their
result, ``T``, stays in the L2 cache) and OpenBLAS runs them near its peak: measured (1
thread, float32) 98 GFLOP/s for ``[288, 64] @ [64, 256]``, against 68 for one
``[288, 64] @ [64, 16384]`` over the whole batch. The window's offsets are unrolled in the
kernel's text. For unit strides and no lhs dilation; the loop over chunks of samples runs
on threads (``ChunkLoop``). ``uses_kn2row`` says where it is chosen.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from fusejit.codegen.common import Arrays, Ctx, loop_nest
from fusejit.codegen.conv_gemm import ChunkLoop, unit_stride_conv
from fusejit.codegen.elemental import linearize
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
from fusejit.codegen.kernel import KernelBuilder, Matmul, Strided
from fusejit.ir.core import Op

if TYPE_CHECKING:
    from fusejit.codegen.conv import _Epilogue, _Shapes

# Samples per chunk: the weights are packed once per chunk (a pack per sample cost as much
# as a quarter of the GEMMs on 8x8 planes).
KN2ROW_CHUNK = 16
# Chosen for at least ``KN2ROW_MIN_CHANNELS`` input channels per group (the GEMMs'
# contraction), at least as many as output channels per group (the shifted sum reads
# ``prod(K)`` planes of ``T`` per output element: its cost against the GEMM's falls with
# the contraction), and planes of at least ``KN2ROW_MIN_POSITIONS`` output positions.
# Measured (``bench/bench_conv.py --strategies shifted,gemm,kn2row --clock thread``, 3x3
# windows, padding 1, float32, 1 thread; kn2row's time over the faster other strategy's):
# 64 -> 32 channels at 16x16 0.74 and at 4x4 0.55, 128 -> 64 at 8x8 0.85, 16 -> 16 at
# 16x16 0.84 (the input gradients of W8's and W9's convs); but 32 -> 64 at 16x16 1.16,
# 64 -> 128 at 8x8 1.20, 16 -> 32 at 8x8 1.21, and 1-8 input channels 1.7-5.6.
KN2ROW_MIN_CHANNELS = 16
KN2ROW_MIN_POSITIONS = 16


def uses_kn2row(op: Op) -> bool:
    """Whether ``op`` (a float conv that ``uses_gemm``) runs as kn2row: a
    ``unit_stride_conv`` with channels and positions as above."""
    rhs = op.inputs[1]
    in_channels, out_channels = rhs.shape[1], rhs.shape[0] // op.attrs["groups"]
    return (in_channels >= max(KN2ROW_MIN_CHANNELS, out_channels)
            and math.prod(op.output.shape[2:]) >= KN2ROW_MIN_POSITIONS and unit_stride_conv(op))


def lower_kn2row(ctx: Ctx, op: Op, b: KernelBuilder, arrays: Arrays, epi: _Epilogue, s: _Shapes) -> str:
    lhs, rhs = op.inputs
    xa, wa = epi.inputs[lhs], epi.inputs[rhs]
    dt = op.output.dtype
    zero = b.const(0, dt)
    window = rhs.shape[2:]
    offsets = list(itertools.product(*(range(size) for size in window)))
    in_positions = math.prod(lhs.shape[2:])
    rows = len(offsets) * rhs.shape[0]  # of T: (group, offset, output channel)
    loop = ChunkLoop(ctx, b, s, op, KN2ROW_CHUNK)
    packed = loop.scratch(arrays, dt, rows * rhs.shape[1])
    t = loop.scratch(arrays, dt, rows * in_positions)
    groups = s.size("groups", s.groups)
    n_rows = s.size("rows", len(offsets) * (rhs.shape[0] // s.groups))  # T's rows of one group

    def pack(at: Expr) -> None:
        """packed[at + ((g * KK + k) * Og + og) * Cg + cg] = w[g * Og + og, cg, k]."""
        with b.each(groups) as g:
            with b.each(s.Og) as og:
                o = b.let(add(b.let(mul(g, s.Og)), og)) if s.groups > 1 else og
                with b.each(s.Cg) as cg:
                    src = b.let(mul(b.let(add(b.let(mul(o, s.Cg)), cg)), s.KK))
                    for i in range(len(offsets)):
                        row = b.let(add(b.let(mul(b.let(add(b.let(mul(g, s.KK)), Lit(i))), s.Og)), og))
                        b.store(packed, b.let(add(at, b.let(add(b.let(mul(row, s.Cg)), cg)))),
                                b.load(wa, b.let(add(src, Lit(i)))))

    if not loop.parallel:
        pack(ZERO)
    with loop.each() as (n0, count):
        packed_at = loop.base("packed", rows * rhs.shape[1])
        t_at = loop.base("t", rows * in_positions)
        if loop.parallel:
            pack(packed_at)
        with b.each(count) as i:
            n = b.let(add(n0, i))
            # T[g] = packed[g] @ x[n, g*Cg:(g+1)*Cg, :]
            with b.each(groups) as g:
                a_off = b.let(add(packed_at, b.let(mul(b.let(mul(g, n_rows)), s.Cg))))
                x_off = b.let(mul(b.let(add(b.let(mul(n, s.C)), b.let(mul(g, s.Cg)))), s.SS))
                t_off = b.let(add(t_at, b.let(mul(b.let(mul(g, n_rows)), s.SS))))
                b.emit(Matmul(packed, xa, t, ONE, n_rows, s.Cg, s.SS, False, False,
                              Strided((a_off, x_off, t_off), (s.Cg, s.SS, s.SS), ZERO)))
            with b.each(s.O) as o:
                g = b.let(floordiv(o, s.Og)) if s.groups > 1 else ZERO
                og = b.let(mod(o, s.Og)) if s.groups > 1 else o
                out_base = b.let(mul(b.let(add(b.let(mul(n, s.O)), o)), s.PP))
                # T's plane of (g, k, og) starts at t_at + ((g * KK + k) * Og + og) * SS
                plane0 = b.let(add(t_at, b.let(mul(b.let(add(b.let(mul(b.let(mul(g, s.KK)), s.Og)), og)), s.SS))))
                plane_step = b.let(mul(s.Og, s.SS))  # from one offset's plane to the next

                def point(p: tuple[Expr, ...]) -> None:
                    total: Expr | None = None
                    for i, k in enumerate(offsets):
                        inside: Expr | None = None
                        q: list[Expr] = []
                        for d in range(s.nsp):
                            qd = s.dilated_position(d, p[d], Lit(k[d]))
                            ok = b.let(binary(BinaryOp.AND, binary(BinaryOp.GE, qd, ZERO),
                                              binary(BinaryOp.LT, qd, s.S[d])))
                            inside = ok if inside is None else b.let(binary(BinaryOp.AND, inside, ok))
                            q.append(b.let(minimum(maximum(qd, ZERO), sub(s.S[d], ONE))))
                        at = b.let(add(b.let(add(plane0, b.let(mul(Lit(i), plane_step)))), linearize(b, tuple(q), s.S)))
                        term = b.let(select(inside, b.load(t, at), zero))
                        total = term if total is None else b.let(add(total, term))
                    assert total is not None
                    epi.store((n, o, *p), b.let(add(out_base, linearize(b, p, s.P))), total)

                loop_nest(b, s.P, point)
                epi.pool_plane(n, o)
    return "conv_kn2row"
