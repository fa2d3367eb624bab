"""Convolutions of a short contraction as taps over a padded plane, without a GEMM.

Where a conv contracts a few elements per output (a first layer: 1-3 input channels by a
3x3 window), im2col + GEMM spends its time moving the unfolded matrix and the GEMM's
result through memory: BLAS runs a contraction of 9 at a fraction of its rate (W7's
forward conv, 1 -> 16 channels on 8x8 images: 10.6 GFLOP/s, 43% of the training step).
Here each sample's planes are copied once into a zero-padded scratch (``Padded``, the
padded extents ``E``), and each output plane is accumulated in a per-thread row of
scratch laid out on the padded grid: output position ``p`` at ``p . strides(E)``, so that
window offset ``k`` of input channel ``c`` reads the padded plane at the constant offset
``c * EE + k . strides(E)`` from it. Each input channel is then one loop over the plane,
``acc[q] += sum_k w[o, c, k] * xpad[offset(c, k) + q]`` with the window's offsets
unrolled in the kernel's text (its weights loaded before the loop), contiguous in every
array (it vectorizes), over the positions of the padded grid between the first output
position and the last (the columns between rows are computed and dropped). The result's
plane is then read from ``acc`` at the output positions through the epilogue and the
pool. (A loop per window offset instead, ``acc[q] += w * xpad[...]``, loaded and stored
``acc`` for each multiply-add: 14 GFLOP/s on W7's shape, slower than the GEMM.)

For unit strides, no lhs dilation and no negative padding; the loop over samples runs
on threads (``ChunkLoop``: one sample per chunk, each thread with its own padded planes
and accumulator). ``uses_taps`` says where GEMMs take over.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

from fusejit.codegen.common import Arrays, Ctx, loop_nest
from fusejit.codegen.conv_gemm import ChunkLoop, Padded, unit_stride_conv
from fusejit.codegen.elemental import linearize
from fusejit.codegen.exprs import ONE, ZERO, Expr, Lit, add, floordiv, mul
from fusejit.codegen.kernel import KernelBuilder
from fusejit.ir.core import Op

if TYPE_CHECKING:
    from fusejit.codegen.conv import _Epilogue, _Shapes

# Taps are chosen for a contraction (input channels per group times window elements) of
# at most ``TAPS_MAX_CONTRACTION``, or of at most ``TAPS_MAX_CONTRACTION_LARGE`` over
# planes of at least ``TAPS_MIN_POSITIONS`` output positions. Measured (``bench/
# bench_conv.py --strategies shifted,gemm,taps --clock thread``, 3x3 windows, padding 1,
# float32, 1 thread; taps' time over the faster GEMM strategy's): 1 -> 16 channels at
# 8x8, batch 256 (W7) 0.78; 1 -> 32 at 8x8 0.87; 3 -> 32 at 32x32 (W9) 0.85; 4 -> 16,
# 8 -> 32, 16 -> 16 at 16x16 0.68, 0.94, 0.77; but 2 -> 32 at 8x8 1.13, 16 -> 32 at 8x8
# 1.45, and 32 or more input channels 1.05-2.6 (the GEMMs' register blocking wins).
TAPS_MAX_CONTRACTION = 9
TAPS_MAX_CONTRACTION_LARGE = 144
TAPS_MIN_POSITIONS = 256


def uses_taps(op: Op) -> bool:
    """Whether ``op`` (a float conv that ``uses_gemm``) runs as taps over padded planes: a
    short contraction (see above), a ``unit_stride_conv``, no negative padding."""
    contraction, positions = math.prod(op.inputs[1].shape[1:]), math.prod(op.output.shape[2:])
    short = contraction <= TAPS_MAX_CONTRACTION or (
        contraction <= TAPS_MAX_CONTRACTION_LARGE and positions >= TAPS_MIN_POSITIONS)
    return short and unit_stride_conv(op) and all(v >= 0 for v in op.attrs["lo"])


def lower_taps(ctx: Ctx, op: Op, b: KernelBuilder, arrays: Arrays, epi: _Epilogue, s: _Shapes) -> str:
    rhs = op.inputs[1]
    xa, wa = epi.inputs[op.inputs[0]], epi.inputs[rhs]
    dt = op.output.dtype
    loop = ChunkLoop(ctx, b, s, op, 1)
    pad = Padded(b, arrays, s, op, loop)
    flat = [math.prod(pad.extents[d + 1:]) for d in range(s.nsp)]  # the padded grid's strides
    span = sum((n - 1) * f for n, f in zip(op.output.shape[2:], flat, strict=True)) + 1  # first to last output
    acc = loop.scratch(arrays, dt, span)
    n_span = s.size("span", span)
    E = pad.E

    def linear(k: tuple[int, ...]) -> int:
        """A window offset's place in a weight's window (row-major)."""
        return sum(kd * math.prod(rhs.shape[2 + d + 1:]) for d, kd in enumerate(k))

    if not loop.parallel:
        pad.clear()
    with loop.each() as (n, _):
        acc_at = loop.base("acc", span)
        if loop.parallel:
            pad.clear()
        pad.copy_chunk(xa, n, ONE)
        planes = pad.base()  # this thread's padded planes of sample n
        with b.each(s.O) as o:
            g = b.let(mul(b.let(floordiv(o, s.Og)), s.Cg)) if s.groups > 1 else None

            def channel(c: Expr, first: bool) -> None:
                """acc (=, or += after the first channel) the taps of input channel c."""
                ci = b.let(add(g, c)) if g is not None else c
                w_base = b.let(mul(b.let(add(b.let(mul(o, s.Cg)), c)), s.KK))
                plane = b.let(add(planes, b.let(mul(ci, pad.EE))))
                taps = []
                for k in itertools.product(*(range(size) for size in rhs.shape[2:])):
                    wv = b.load(wa, b.let(add(w_base, Lit(linear(k)))))
                    at = b.let(add(plane, linearize(b, tuple(Lit(k[d] * s.rdil[d]) for d in range(s.nsp)), E)))
                    taps.append((wv, at))
                with b.each(n_span) as q:
                    cell = b.let(add(acc_at, q))
                    total = None if first else b.load(acc, cell)
                    for wv, at in taps:
                        term = b.let(mul(wv, b.load(pad.xpad, b.let(add(at, q)))))
                        total = term if total is None else b.let(add(total, term))
                    b.store(acc, cell, total)

            channel(ZERO, True)
            if rhs.shape[1] > 1:
                with b.loop(s.Cg, start=ONE) as c:
                    channel(c, False)
            out_base = b.let(mul(b.let(add(b.let(mul(n, s.O)), o)), s.PP))

            def point(p: tuple[Expr, ...]) -> None:
                value = b.load(acc, b.let(add(acc_at, linearize(b, p, E))))
                epi.store((n, o, *p), b.let(add(out_base, linearize(b, p, s.P))), value)

            loop_nest(b, s.P, point)
            epi.pool_plane(n, o)
    return "conv_taps"
