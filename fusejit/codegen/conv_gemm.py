"""Convolution kernels that call BLAS: im2col plus a GEMM, im2col into rows, shifted GEMMs.

``fusejit.codegen.conv`` chooses the strategy and holds what all of them share (the
conv's sizes, ``_Shapes``, and the fused epilogue and pool, ``_Epilogue``); positions are
computed in the dilated input, as it describes.

* **im2col + GEMM** (``conv_gemm``): a chunk of samples is unfolded into a scratch
  matrix ``cols[G, Cg * prod(K), chunk * prod(P)]`` (zeros at padding), one batched GEMM
  per chunk multiplies the weights ``[G, Og, Cg * prod(K)]`` by it into a scratch
  result, which is copied into the output's ``[N, O, P]`` order (through the fused
  epilogue). Chunks keep the scratch within ``GEMM_CHUNK_ELEMENTS`` (it stays in cache,
  and memory does not grow with the batch; chunks are of equal size). Rows of ``cols``
  are filled as zeros, a strided copy, zeros: no bounds check per element; short rows
  (small images) are copied from a zero-padded copy of the chunk's planes (``Padded``).
* **im2col into rows** (also ``conv_gemm``; a kernel gradient's shape, a window larger
  than the output, without lhs dilation: ``uses_window_rows``): there a column of the
  usual layout is a few elements long (one per output position) and the unfolded matrix
  is tall (the window). Instead each output position's windows are a row, ``rows[(i, p),
  (c, k)]``, filled along the window's last axis with copies of input rows (a stride-1
  conv's weight gradient: whole blocks of rows at once), and ``rows @ w^T`` reads the
  second operand (the output gradient) as it is stored, in chunks of the contraction
  that accumulate (``ROWS_MAX_CONTRACTION``; ``lower_rows``). Measured against the
  column layout through the offset table (``bench/bench_conv.py --gradients``, 1 thread,
  float32, interleaved): 1.1-2.4x faster on each of its 15 shapes; in W9's step 0.60,
  0.79 and 0.63x the time (its 604 MFLOP ones at 29-30 GFLOP/s, near the GEMM alone), in
  W8's 0.82 and 0.89x.

* **Shifted GEMMs** (``conv_shifted``): im2col along the last spatial axis only, into a
  scratch ``cols[G, Cg * K_last, ...]`` 1/``prod(K[:-1])`` the size of the full one,
  whose columns lay the chunk's samples out as one tall image: each sample's rows (of
  the last axis's output width), then a gap of zero rows (``max(lo, hi)``) shared by
  the windows of its last rows and of the next sample's first. An output column ``j``
  then reads, at window offset ``k`` along the other axes, the column ``j + shift(k)``:
  one GEMM per such offset, ``packed[k] @ cols[:, shift(k):]`` (a leading dimension
  longer than the row, ``fusejit.codegen.cpu.gemm``), accumulating into the result;
  the gaps' columns are computed and dropped. For unit strides on all axes but the
  last, no lhs dilation; not for a kernel gradient's shape (a window larger than the
  output).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fusejit.codegen.common import (
    Arrays,
    Ctx,
    loop_nest,
)
from fusejit.codegen.elemental import linearize
from fusejit.codegen.exprs import (
    ONE,
    ZERO,
    BinaryOp,
    Expr,
    Lit,
    ThreadId,
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
from fusejit.ir.dtypes import DType

if TYPE_CHECKING:
    from fusejit.codegen.conv import _Epilogue, _Shapes

# Output rows at least this long are filled as zeros, a strided copy, zeros; shorter ones
# (small images) from a zero-padded copy of the planes (``Padded``), or with lhs
# dilation or negative padding through a table of input offsets, in one loop per sample.
FILL_ROW_MIN = 16
# The im2col scratch of one chunk of samples holds at most this many elements. (2**17,
# the L2's 512 KiB, timed 1.1-1.5x faster per conv in a process holding other
# executables, but made W9's step 215 -> 354-385 ms in the benchmark's own processes;
# one suspect: a chunk of one 16x16 sample gives the GEMM rows of 256 floats, a power
# of two.)
GEMM_CHUNK_ELEMENTS = 1 << 19
# The longest contraction of one GEMM of a kernel gradient's conv (``_lower_rows``), which
# accumulates chunks of it. Measured (1 thread, SciPy's OpenBLAS, float32, W9's 288 x 64
# result over 16384 terms): 34 GFLOP/s in chunks of 128-512 terms, 15 in chunks of 1024,
# 13 of 2048.
ROWS_MAX_CONTRACTION = 512
# Its rows are filled with the channels innermost (for each output position and window
# offset, a strided copy across the chunk's channels) where a chunk holds at least
# ``CHANNELS_INNER_MIN`` whole channels and the window's last axis is shorter than
# ``CHANNELS_INNER_MAX_RUN`` (tiny planes: blocks of a few elements cost more in loop
# overhead than they copy). Measured (1 thread, float32, interleaved): W8's 4x4 weight
# gradient (32 channels a chunk) 2.01 ms against 2.28 by blocks; blocks stay ahead on
# W9's 16x16 one (27.5 against 41.9 ms), its 8x8 one (8 channels a chunk: 23.5 against
# 24.8) and W8's 8x8 one (0.230 against 0.233).
CHANNELS_INNER_MIN = 16
CHANNELS_INNER_MAX_RUN = 16


class ChunkLoop:
    """The loop over chunks of samples that each GEMM strategy runs, serial or on threads.

    On threads (more than one, at least two samples, and a conv of at least the target's
    parallel threshold in multiply-adds, as ``_lower_direct``'s loops) every thread needs
    its own scratch: each scratch array holds ``copies`` (the thread count) of its
    per-chunk size, and a chunk works in the copy at ``base`` (``ThreadId`` times the
    size) of the thread that runs it. The work a serial kernel does once per call
    (packing weights, zeroing the unfolded matrix's gaps, the offset table) is then done
    by every chunk in its own copy, so that the loop over chunks is the kernel's only
    statement: it runs in chunks on fusejit's threads (``fusejit.runtime.chunks``), not as
    a parfor. The number of chunks is rounded up to a multiple of the threads (64
    samples in chunks of 22 on 2 threads: 4 chunks of 16), so that the threads share them
    evenly. Chunks of other sizes than the serial kernel's give GEMMs of other widths,
    which the BLAS may sum in another order: the values are the serial kernel's to
    rounding, the same on every call with the same thread count. Measured on W9's four
    shifted-GEMM convs on 2 threads (2 cores): 38.5 ms serial, 21.7 ms on threads."""

    def __init__(self, ctx: Ctx, b: KernelBuilder, s: _Shapes, op: Op, chunk: int) -> None:
        n_total = op.inputs[0].shape[0]
        threads = ctx.target.max_threads()
        work = op.output.type.size * math.prod(op.inputs[1].shape[1:])
        self.parallel = threads > 1 and n_total > 1 and work >= ctx.threshold
        chunks = -(-n_total // chunk)
        if self.parallel:
            chunks = min(n_total, -(-chunks // threads) * threads)
        self.chunk = -(-n_total // chunks)  # chunks of equal size: no short GEMM at the end (64 = 56 + 8)
        self.chunks = -(-n_total // self.chunk)
        self.copies = threads if self.parallel else 1
        self.b, self.s = b, s
        self._tid: Expr | None = None

    def scratch(self, arrays: Arrays, dtype: DType, size: int) -> str:
        """A scratch array of ``size`` elements per chunk (``copies`` of them)."""
        return arrays.scratch(dtype, self.copies * _copy_stride(size) if self.parallel else size)

    @contextmanager
    def each(self) -> Iterator[tuple[Expr, Expr]]:
        """The loop over chunks: yields each chunk's first sample and its sample count."""
        b, s = self.b, self.s
        nb = s.size("chunk", self.chunk)
        with b.each(s.size("chunks", self.chunks), parallel=self.parallel) as j:
            self._tid = b.define(ThreadId()) if self.parallel else None
            n0 = b.let(mul(j, nb)) if nb != ONE else j
            yield n0, (b.let(minimum(nb, sub(s.N, n0))) if nb != ONE else ONE)
        self._tid = None

    def base(self, key: str, size: int) -> Expr:
        """Where this chunk's copy of a scratch array of ``size`` elements per chunk starts."""
        if self._tid is None:
            return ZERO
        return self.b.let(mul(self._tid, self.s.size(("copy", key), _copy_stride(size))))


def _copy_stride(size: int) -> int:
    """Where consecutive threads' copies of a scratch array of ``size`` elements start: a
    multiple of 16 elements, so that no two threads write one 64-byte cache line (W7's
    taps kernel keeps 78-float accumulators: on 2 threads, profiled alternately, 247 us
    side by side, 217-234 us apart; 277-294 us on 1 thread)."""
    return -(-size // 16) * 16


def unit_stride_conv(op: Op) -> bool:
    """Whether ``op``'s windows step one element at a time along every axis of an
    undilated input (unit strides, no lhs dilation) and are no larger than its output (not
    a kernel gradient's shape): the convs the taps and kn2row strategies can take."""
    a = op.attrs
    return (all(v == 1 for v in a["strides"]) and all(v == 1 for v in a["lhs_dilation"])
            and math.prod(op.inputs[1].shape[2:]) <= math.prod(op.output.shape[2:]))


def lower_gemm(ctx: Ctx, op: Op, b: KernelBuilder, arrays: Arrays, epi: _Epilogue, s: _Shapes) -> str:
    lhs, rhs = op.inputs
    out = op.output
    xa, wa = epi.inputs[lhs], epi.inputs[rhs]
    dt = out.dtype
    zero = b.const(0, dt)
    c_total = lhs.shape[1]
    o_total = rhs.shape[0]
    per_sample_cols = math.prod(rhs.shape[1:]) * s.groups * math.prod(out.shape[2:])
    loop = ChunkLoop(ctx, b, s, op, max(1, GEMM_CHUNK_ELEMENTS // max(per_sample_cols, 1)))
    width = loop.chunk * math.prod(out.shape[2:])  # columns of one chunk's matrices
    cols_size, res_size = c_total * math.prod(rhs.shape[2:]) * width, o_total * width
    cols = loop.scratch(arrays, dt, cols_size)
    res = loop.scratch(arrays, dt, res_size)
    ncol = s.size("width", width)
    contraction = s.size("contraction", math.prod(rhs.shape[1:]))

    # Short rows (small images) or dilated inputs: the offset of each (window offset,
    # output position) in an input plane, -1 for padding and holes, computed once (per
    # chunk on threads, in the thread's copy).
    table = pad = None
    table_size = math.prod(rhs.shape[2:]) * math.prod(out.shape[2:])
    if out.shape[-1] < FILL_ROW_MIN or any(d != 1 for d in s.ldil):
        if all(d == 1 for d in s.ldil) and all(lo >= 0 for lo in s.lo):
            pad = Padded(b, arrays, s, op, loop)
        else:
            table = loop.scratch(arrays, DType.i64, table_size)

    def prepare(table_at: Expr) -> None:
        if pad is not None:
            pad.clear()
        if table is not None:
            _offset_table(b, s, table, table_at)

    if not loop.parallel:
        prepare(ZERO)
    with loop.each() as (n0, count):
        cols_at, res_at = loop.base("cols", cols_size), loop.base("res", res_size)
        table_at = loop.base("table", table_size) if table is not None else ZERO
        if loop.parallel:
            prepare(table_at)
        if pad is not None:
            pad.copy_chunk(xa, n0, count)
        # cols[(ci, k), i * PP + p] = x[n0 + i, ci, position(p, k)] or 0
        with b.each(s.C) as ci:

            def offset(k: tuple[Expr, ...]) -> None:
                row = b.let(add(b.let(mul(ci, s.KK)), linearize(b, k, s.K)))
                row_base = b.let(add(b.let(mul(row, ncol)), cols_at))

                def sample(i: Expr) -> None:
                    x_base = b.let(mul(b.let(add(b.let(mul(b.let(add(n0, i)), s.C)), ci)), s.SS))
                    col_base = b.let(add(row_base, b.let(mul(i, s.PP)))) if s.PP != ONE else b.let(add(row_base, i))

                    if pad is not None:
                        pad.fill(cols, col_base, i, ci, k)
                        return
                    if table is None:
                        loop_nest(b, s.P[:-1], lambda outer: _fill_row(b, s, xa, cols, x_base, col_base, outer, k,
                                                                    zero))
                        return
                    # one long loop over the sample's positions, through the offset table
                    k_base = b.let(add(b.let(mul(linearize(b, k, s.K), s.PP)), table_at))
                    with b.each(s.PP) as p:
                        j = b.load(table, b.let(add(k_base, p)))
                        xv = b.load(xa, b.let(add(x_base, maximum(j, ZERO))))
                        b.store(cols, b.let(add(col_base, p)), b.let(select(binary(BinaryOp.GE, j, ZERO), xv, zero)))

                if count == ONE:
                    sample(ZERO)
                else:
                    with b.each(count) as i:
                        sample(i)

            loop_nest(b, s.K, offset)
        # res[g, og, i * PP + p] = w[g, og, :] @ cols[g, :, i * PP + p]
        if loop.parallel:  # in this thread's copies: a GEMM per group at their offsets
            with b.each(s.size("groups", s.groups)) as g:
                offsets = (b.let(mul(b.let(mul(g, s.Og)), contraction)),
                           b.let(add(b.let(mul(b.let(mul(g, contraction)), ncol)), cols_at)),
                           b.let(add(b.let(mul(b.let(mul(g, s.Og)), ncol)), res_at)))
                b.emit(Matmul(wa, cols, res, ONE, s.Og, contraction, ncol, False, False,
                              Strided(offsets, (contraction, ncol, ncol), ZERO)))
        else:
            b.emit(Matmul(wa, cols, res, Lit(s.groups), s.Og, contraction, ncol, False, False))

        # out[n0 + i, o, p] = epilogue(res[o, i * PP + p])
        def source(i: Expr, o: Expr, p: tuple[Expr, ...]) -> Expr:
            plane = b.let(add(b.let(mul(o, ncol)), b.let(mul(i, s.PP)) if s.PP != ONE else i))
            return b.let(add(b.let(add(plane, linearize(b, p, s.P))), res_at))

        _write_result(b, s, epi, res, n0, count, source)
    return "conv_gemm"


def _write_result(b: KernelBuilder, s: _Shapes, epi: _Epilogue, res: str, n0: Expr, count: Expr,
                  source: Callable[[Expr, Expr, tuple[Expr, ...]], Expr]) -> None:
    """``out[n0 + i, o, p] = epilogue(res[source(i, o, p)])`` for the chunk's ``count``
    samples, each plane pooled once written."""
    with b.each(count) as i:
        n = b.let(add(n0, i))
        with b.each(s.O) as o:
            dst = b.let(mul(b.let(add(b.let(mul(n, s.O)), o)), s.PP))

            def copy(p: tuple[Expr, ...]) -> None:
                epi.store((n, o, *p), b.let(add(dst, linearize(b, p, s.P))), b.load(res, source(i, o, p)))

            loop_nest(b, s.P, copy)
            epi.pool_plane(n, o)


def lower_rows(ctx: Ctx, op: Op, b: KernelBuilder, arrays: Arrays, epi: _Epilogue, s: _Shapes) -> str:
    """im2col for a kernel gradient's shape: ``rows[(i, p), (c, k)] = x[n0 + i, ci,
    p * stride + k * rhs_dilation - lo]``, so that along the last window axis a row
    copies a run of an input row (zeros past its ends), and ``res[(i, p), o] = rows @
    w[o, :]^T`` reads the weights (``[O, Cg * prod(K)]``, the output gradient) as they
    are stored. The contraction comes in chunks of ``ROWS_MAX_CONTRACTION`` at most, which
    accumulate into ``res`` (BLAS's beta = 1): a chunk holds whole channels or, for large
    windows, a range of leading window offsets of one channel (a *unit*: a channel and
    offsets along the window's first ``lead`` axes). Each GEMM has every output position
    of the chunk's samples as rows; the samples come in chunks only where one unit of
    all of them overflows ``GEMM_CHUNK_ELEMENTS``.

    Where the window's last axis spans the input's rows (``K[-1] == rhs_dilation[-2] *
    S[-1]``, unit rhs dilation along the last axis: a stride-1 conv's weight gradient),
    the runs of consecutive offsets along the window's second-to-last axis lie end to end
    in ``rows`` and in the input alike, and are copied as one (``_fill_block``). For tiny
    planes the channels are the innermost loop instead (``CHANNELS_INNER_MIN``)."""
    lhs, rhs = op.inputs
    out = op.output
    xa, wa = epi.inputs[lhs], epi.inputs[rhs]
    dt = out.dtype
    zero = b.const(0, dt)
    n_total = lhs.shape[0]
    window = rhs.shape[2:]
    positions = math.prod(out.shape[2:])
    last = s.nsp - 1
    block = last > 0 and s.rdil[last] == 1 and window[last] == s.rdil[last - 1] * lhs.shape[-1]
    lead = next(d for d in range(s.nsp) if d == last or math.prod(window[d:]) <= ROWS_MAX_CONTRACTION)
    unit = math.prod(window[lead:])
    units = rhs.shape[1] * math.prod(window[:lead])  # of one group
    if n_total * positions * unit <= GEMM_CHUNK_ELEMENTS:
        chunk = n_total
        per = max(1, min(units, GEMM_CHUNK_ELEMENTS // (n_total * positions * unit), ROWS_MAX_CONTRACTION // unit))
    else:
        chunk, per = max(1, GEMM_CHUNK_ELEMENTS // (positions * unit)), 1
    rows_of_units = block and lead == last  # units are runs: a chunk of them, one block
    if rows_of_units:  # the chunk's units within one (channel, leading offsets): a divisor
        per = max(d for d in range(1, per + 1) if window[last - 1] % d == 0)
    channels_inner = lead == 0 and per >= CHANNELS_INNER_MIN and window[last] < CHANNELS_INNER_MAX_RUN
    loop = ChunkLoop(ctx, b, s, op, chunk)
    chunk = loop.chunk
    # Fewer output positions than output channels per group: ``res`` holds the result's
    # transpose, ``w @ rows^T`` (measured 1 thread: 9 x 32 over 4096 terms 11 GFLOP/s as
    # ``rows @ w^T``, 16 so; 288 x 64 over 1024 terms 33 and 11).
    transposed = chunk * positions < rhs.shape[0] // s.groups
    # The GEMM sizes are parameters, the last chunk of units a shorter one where ``per``
    # does not divide them (computed in the kernel: the units are the batch's samples in a
    # weight gradient, and a new batch size must not change the code).
    rows_size, res_size = chunk * positions * per * unit, chunk * positions * rhs.shape[0]
    rows = loop.scratch(arrays, dt, rows_size)
    res = loop.scratch(arrays, dt, res_size)
    m = s.size("gemm_rows", chunk * positions)
    row_len, n_unit = s.size("row", per * unit), s.size("unit", unit)  # a row of ``rows``
    leading = s.size("leading", math.prod(window[:lead]))  # units per channel
    contraction = s.size("contraction", rhs.shape[1] * math.prod(window))
    groups = s.size("groups", s.groups)

    def unit_of(n: Expr, g: Expr, at: Expr) -> tuple[Expr, tuple[Expr, ...]]:
        """The input plane's offset of sample ``n`` for unit ``at`` of group ``g``, and the
        unit's offsets along the window's leading axes."""
        c = b.let(floordiv(at, leading))
        ci = b.let(add(b.let(mul(g, s.Cg)), c)) if s.groups > 1 else c
        x_base = b.let(mul(b.let(add(b.let(mul(n, s.C)), ci)), s.SS))
        k_lead, rest_at = [], b.let(mod(at, leading))
        for d in reversed(range(lead)):
            k_lead.append(b.let(mod(rest_at, s.K[d])))
            rest_at = b.let(floordiv(rest_at, s.K[d]))
        return x_base, tuple(reversed(k_lead))

    def output_row(i: Expr, p: tuple[Expr, ...]) -> Expr:
        return b.let(add(b.let(mul(i, s.PP)), linearize(b, p, s.P))) if s.PP != ONE else i

    def unit_chunk(n0: Expr, count: Expr, g: Expr, u0: Expr, u_count: Expr, k_size: Expr, accumulate: Expr,
                   rows_at: Expr, res_at: Expr) -> None:
        """Units ``u0 + u`` (``u < u_count``, ``k_size = u_count * unit``) of group ``g``
        unfolded for the chunk's ``count`` samples (into ``rows`` from ``rows_at``) and
        multiplied into ``res`` (from ``res_at``)."""
        with b.each(count) as i:
            n = b.let(add(n0, i))
            if channels_inner:
                x_base, _ = unit_of(n, g, u0)

                def point(p: tuple[Expr, ...]) -> None:
                    row_base = b.let(add(b.let(mul(output_row(i, p), row_len)), rows_at))

                    def offset(k: tuple[Expr, ...]) -> None:
                        inside, idx = _rows_inside(b, s, p, k)
                        x_at = b.let(add(x_base, linearize(b, tuple(idx), s.S)))
                        out_at = b.let(add(row_base, linearize(b, k, s.K)))
                        stop = b.let(select(inside, u_count, ZERO))
                        with b.loop(stop) as c:
                            b.store(rows, b.let(add(out_at, b.let(mul(c, s.KK)))),
                                    b.load(xa, b.let(add(x_at, b.let(mul(c, s.SS))))))
                        with b.loop(u_count, start=stop) as c:
                            b.store(rows, b.let(add(out_at, b.let(mul(c, s.KK)))), zero)

                    loop_nest(b, s.K, offset)

                loop_nest(b, s.P, point)
            elif rows_of_units:
                x_base, k_lead = unit_of(n, g, u0)

                def position_block(p: tuple[Expr, ...]) -> None:
                    _fill_block(b, s, xa, rows, x_base, b.let(add(b.let(mul(output_row(i, p), row_len)), rows_at)),
                                p, k_lead[:-1],
                                k_lead[-1], u_count, zero)

                loop_nest(b, s.P, position_block)
            else:
                with b.each(u_count) as u:
                    x_base, k_lead = unit_of(n, g, b.let(add(u0, u)))

                    def position(p: tuple[Expr, ...]) -> None:
                        row_base = b.let(add(b.let(add(b.let(mul(output_row(i, p), row_len)), b.let(mul(u, n_unit)))),
                                             rows_at))
                        if block and lead < last:  # blocks of the whole window's second-to-last axis
                            mid = s.K[lead:last - 1]

                            def seg(k_mid: tuple[Expr, ...]) -> None:
                                out_at = b.let(add(row_base, mul(linearize(b, k_mid, mid), mul(s.K[last - 1],
                                                                                                 s.K[last]))))
                                _fill_block(b, s, xa, rows, x_base, out_at, p, (*k_lead, *k_mid), ZERO,
                                            s.K[last - 1], zero)

                            loop_nest(b, mid, seg)
                            return
                        base = s.dilated_position(last, p[last], ZERO)

                        def run(k_mid: tuple[Expr, ...]) -> None:
                            k = (*k_lead, *k_mid)
                            inside, idx = _rows_inside(b, s, p, k)
                            row_out = b.let(add(row_base, mul(linearize(b, k_mid, s.K[lead:last]), s.K[last])))
                            row_in = b.let(add(x_base, mul(linearize(b, tuple(idx), s.S[:last]), s.S[last])))
                            _fill_run(b, xa, rows, row_in, row_out, base, s.rdil[last], s.K[last], s.S[last], zero,
                                      inside)

                        loop_nest(b, s.K[lead:last], run)

                    loop_nest(b, s.P, position)
        # res[(i, p), g * Og + og] (+)= rows[(i, p), :] . w[g * Og + og, u0 * unit:], or its
        # transpose res[g * Og + og, (i, p)]
        w_off = b.let(add(b.let(mul(b.let(mul(g, s.Og)), contraction)), b.let(mul(u0, n_unit))))
        if transposed:
            b.emit(Matmul(wa, rows, res, ONE, s.Og, k_size, m, False, True,
                          Strided((w_off, rows_at, b.let(add(b.let(mul(b.let(mul(g, s.Og)), m)), res_at))),
                                  (contraction, row_len, m), accumulate)))
        else:
            b.emit(Matmul(rows, wa, res, ONE, m, k_size, s.Og, False, True,
                          Strided((rows_at, w_off, b.let(add(b.let(mul(g, s.Og)), res_at))), (row_len, contraction, s.O),
                                  accumulate)))

    with loop.each() as (n0, count):
        rows_at, res_at = loop.base("rows", rows_size), loop.base("res", res_size)
        with b.each(groups) as g:
            n_per, n_units = s.size("per", per), s.size("units", units)
            with b.each(s.size("unit_chunks", -(-units // per))) as ju:
                u0 = b.let(mul(ju, n_per))
                u_count = b.let(minimum(n_per, sub(n_units, u0))) if per > 1 else ONE
                unit_chunk(n0, count, g, u0, u_count, b.let(mul(u_count, n_unit)), binary(BinaryOp.NE, ju, ZERO),
                           rows_at, res_at)

        # out[n0 + i, o, p] = epilogue(res[(i, p), o]), or of res[o, (i, p)]
        def source(i: Expr, o: Expr, p: tuple[Expr, ...]) -> Expr:
            if transposed:
                return b.let(add(b.let(add(b.let(mul(o, m)), output_row(i, p))), res_at))
            return b.let(add(b.let(add(b.let(mul(output_row(i, p), s.O)), o)), res_at))

        _write_result(b, s, epi, res, n0, count, source)
    return "conv_gemm"


def _rows_inside(b: KernelBuilder, s: _Shapes, p: tuple[Expr, ...], k: tuple[Expr, ...]) -> tuple[Expr | None, list[Expr]]:
    """The input positions along the first ``len(k)`` spatial axes at output position
    ``p`` and window offset ``k``, and whether all of them are inside the input (None
    when ``k`` is empty); no lhs dilation."""
    inside: Expr | None = None
    idx = []
    for d in range(len(k)):
        q = s.dilated_position(d, p[d], k[d])
        ok = b.let(binary(BinaryOp.AND, binary(BinaryOp.GE, q, ZERO), binary(BinaryOp.LT, q, s.S[d])))
        inside = ok if inside is None else b.let(binary(BinaryOp.AND, inside, ok))
        idx.append(q)
    return inside, idx


def _fill_block(b: KernelBuilder, s: _Shapes, xa: str, cols: str, x_base: Expr, out_at: Expr, p: tuple[Expr, ...],
                k_pre: tuple[Expr, ...], a: Expr, length: Expr, zero: Expr) -> None:
    """``cols[out_at + (r - a) * K[-1] + t] = x[x_base + q]`` (zero outside the input) for
    window offsets ``(*k_pre, r, t)``, ``a <= r < a + length``, ``t < K[-1]``, at output
    position ``p``, where ``K[-1] == rhs_dilation[-2] * S[-1]`` and unit rhs dilation
    along the last axis: consecutive ``r`` advance the input position by a whole row, as
    far as ``cols`` advances, so the rows inside the input are one contiguous copy (no
    per-row loop of a few elements, which stays scalar), after which each row's ends
    outside the input row (which the copy filled from the neighbouring rows) are zeroed;
    rows outside the input are zeros."""
    last = s.nsp - 1
    d = last - 1
    kl = s.K[last]
    inside, idx = _rows_inside(b, s, p, k_pre)
    # the rows r whose position along axis d lies inside the input
    base_d = s.dilated_position(d, p[d], ZERO)
    st = Lit(s.rdil[d])
    end = b.let(add(a, length))
    lo_r = b.let(minimum(maximum(a, sub(ZERO, floordiv(base_d, st))), end))
    hi_r = b.let(maximum(lo_r, minimum(end, add(floordiv(sub(sub(s.S[d], ONE), base_d), st), ONE))))
    # the offsets t of a row inside the input row
    base = s.dilated_position(last, p[last], ZERO)
    first = b.let(minimum(maximum(ZERO, sub(ZERO, base)), kl))
    stop = b.let(maximum(first, minimum(kl, sub(s.S[last], base))))
    some = binary(BinaryOp.LT, first, stop)
    hi_r = b.let(select(b.let(binary(BinaryOp.AND, inside, some)) if inside is not None else some, hi_r, lo_r))
    with b.loop(b.let(add(out_at, mul(sub(lo_r, a), kl))), start=out_at) as t:
        b.store(cols, t, zero)
    # cols[out_at + (lo_r - a) * kl + first + t] = x[row(lo_r) + base + first + t]
    q_d = b.let(add(base_d, mul(lo_r, st)))
    row_in = b.let(add(x_base, mul(linearize(b, (*idx, q_d), s.S[:last]), s.S[last])))
    src = b.let(add(b.let(add(row_in, base)), first))
    dst = b.let(add(b.let(add(out_at, mul(sub(lo_r, a), kl))), first))
    span = b.let(add(mul(sub(sub(hi_r, lo_r), ONE), kl), sub(stop, first)))
    with b.loop(span) as t:
        b.store(cols, b.let(add(dst, t)), b.load(xa, b.let(add(src, t))))
    with b.loop(hi_r, start=lo_r) as r:
        row_out = b.let(add(out_at, mul(sub(r, a), kl)))
        with b.loop(first) as t:
            b.store(cols, b.let(add(row_out, t)), zero)
        with b.loop(kl, start=stop) as t:
            b.store(cols, b.let(add(row_out, t)), zero)
    with b.loop(b.let(add(out_at, mul(length, kl))), start=b.let(add(out_at, mul(sub(hi_r, a), kl)))) as t:
        b.store(cols, t, zero)


def lower_shifted(ctx: Ctx, op: Op, b: KernelBuilder, arrays: Arrays, epi: _Epilogue, s: _Shapes) -> str:
    lhs, rhs = op.inputs
    out = op.output
    xa, wa = epi.inputs[lhs], epi.inputs[rhs]
    dt = out.dtype
    zero = b.const(0, dt)
    last = s.nsp - 1
    spatial, window, out_spatial = lhs.shape[2:], rhs.shape[2:], out.shape[2:]
    hi = op.attrs["hi"]
    rows = rhs.shape[1] * window[last]  # the contraction of one shifted GEMM: (c, k_last)
    # A sample's block of the tall layout: along each shifted axis its input rows, then a
    # gap of zeros that the windows of its own first and last rows and of the next
    # sample's reach (``max(lo, hi)`` rows), and at least the output's extent.
    ext = [max(spatial[d] + max(s.lo[d], hi[d], 0), out_spatial[d]) for d in range(last)]
    flat = [out_spatial[last] * math.prod(ext[d + 1:]) for d in range(last)]  # tall strides
    block = ext[0] * flat[0]
    lead = sum(max(s.lo[d], 0) * flat[d] for d in range(last))  # zeros the first rows' windows read
    reach = sum((window[d] - 1) * s.rdil[d] * flat[d] for d in range(last))  # read past a column
    loop = ChunkLoop(ctx, b, s, op, max(1, GEMM_CHUNK_ELEMENTS // (lhs.shape[1] * window[last] * block)))
    width = loop.chunk * block  # columns of one chunk's GEMMs
    stride = lead + width + reach  # a row of ``cols``
    cols_size, res_size = lhs.shape[1] * window[last] * stride, rhs.shape[0] * width
    cols = loop.scratch(arrays, dt, cols_size)
    res = loop.scratch(arrays, dt, res_size)
    packed = loop.scratch(arrays, dt, rhs.type.size)
    E = tuple(s.size(("ext", d), n) for d, n in enumerate(ext))
    ncol, n_stride = s.size("width", width), s.size("row", stride)
    n_block, n_lead, n_rows = s.size("block", block), s.size("lead", lead), s.size("rows", rows)
    kl = s.K[last]
    groups = s.size("groups", s.groups)

    def prepare(packed_at: Expr, cols_at: Expr) -> None:
        """Packs the weights and zeroes ``cols`` (its gaps and margins stay zero; each
        chunk overwrites the input rows)."""
        # packed[t, g, c, k_last, og] = w[g * Og + og, c, k]: t the offset along the shifted
        # axes, so that the weights of one shift and group are a [rows, Og] matrix
        with b.each(groups) as g:
            with b.each(s.Og) as og:
                o = b.let(add(b.let(mul(g, s.Og)), og)) if s.groups > 1 else og
                with b.each(s.Cg) as c:

                    def pack(k: tuple[Expr, ...]) -> None:
                        src = b.let(add(b.let(mul(b.let(add(b.let(mul(o, s.Cg)), c)), s.KK)), linearize(b, k, s.K)))
                        t = linearize(b, k[:last], s.K[:last])
                        tg = b.let(add(b.let(mul(t, groups)), g)) if s.groups > 1 else t
                        row = b.let(add(b.let(mul(b.let(add(b.let(mul(tg, s.Cg)), c)), kl)), k[last]))
                        b.store(packed, b.let(add(packed_at, b.let(add(b.let(mul(row, s.Og)), og)))),
                                b.load(wa, src))

                    loop_nest(b, s.K, pack)
        with b.each(s.size("cols", cols_size)) as t:
            b.store(cols, b.let(add(cols_at, t)), zero)

    if not loop.parallel:
        prepare(ZERO, ZERO)
    with loop.each() as (n0, count):
        cols_at, res_at, packed_at = (loop.base(k, n) for k, n in (("cols", cols_size), ("res", res_size),
                                                                    ("packed", rhs.type.size)))
        if loop.parallel:
            prepare(packed_at, cols_at)
        # cols[(ci, k_last), lead + i * block + e . flat + p] = x[n0 + i, ci, e, position(p, k_last)]
        with b.each(s.C) as ci:
            with b.each(kl) as kx:
                row_base = b.let(add(b.let(add(b.let(mul(b.let(add(b.let(mul(ci, kl)), kx)), n_stride)), n_lead)),
                                     cols_at))
                with b.each(count) as i:
                    x_base = b.let(mul(b.let(add(b.let(mul(b.let(add(n0, i)), s.C)), ci)), s.SS))
                    col_base = b.let(add(row_base, b.let(mul(i, n_block))))

                    def row(e: tuple[Expr, ...]) -> None:
                        row_out = b.let(add(col_base, mul(linearize(b, e, E), s.P[last])))
                        row_in = b.let(add(x_base, mul(linearize(b, e, s.S[:last]), s.S[last])))
                        _fill_last(b, s, xa, cols, row_in, row_out, kx, zero)

                    loop_nest(b, s.S[:last], row)
        # res[:, g, :] (+)= cols[g, :, shift(t) + :]^T @ packed[t, g] for each shift t: column
        # j of a shift reads the tall position j + sum_d (k_d * rhs_dilation - lo) * flat[d]
        # (after the ``lead`` zeros: lead - sum_d lo * flat[d] >= 0). The result is
        # [column, O]: this orientation of the GEMMs measured 0.72-0.97x the time of
        # [O, column] on W9's convs (32-128 output channels), the transposed copy into
        # the output included.
        first = s.size("first", lead - sum(s.lo[d] * flat[d] for d in range(last)))
        with b.each(groups) as g:

            def shift(k: tuple[Expr, ...]) -> None:
                t = linearize(b, k[:last], s.K[:last])
                at = b.let(add(first, cols_at))
                for d in range(last):
                    at = b.let(add(at, b.let(mul(k[d], s.size(("step", d), s.rdil[d] * flat[d])))))
                tg = b.let(add(b.let(mul(t, groups)), g)) if s.groups > 1 else t
                a_off = b.let(add(b.let(mul(b.let(mul(g, n_rows)), n_stride)), at))
                b_off = b.let(add(b.let(mul(b.let(mul(tg, n_rows)), s.Og)), packed_at))
                c_off = b.let(add(b.let(mul(g, s.Og)), res_at))
                b.emit(Matmul(cols, packed, res, ONE, ncol, n_rows, s.Og, True, False,
                              Strided((a_off, b_off, c_off), (n_stride, s.Og, s.O), binary(BinaryOp.NE, t, ZERO))))

            loop_nest(b, s.K[:last], shift)

        # out[n0 + i, o, p] = epilogue(res[i * block + p . (flat, 1), o])
        def source(i: Expr, o: Expr, p: tuple[Expr, ...]) -> Expr:
            column = b.let(add(b.let(mul(i, n_block)), linearize(b, p, (*E, s.P[last]))))
            return b.let(add(b.let(add(b.let(mul(column, s.O)), o)), res_at))

        _write_result(b, s, epi, res, n0, count, source)
    return "conv_shifted"


class Padded:
    """The input planes of one chunk of samples copied into scratch with their padding as
    zeros (``xpad[i, c, *E]``, E covering every position the windows reach), for short
    rows (small images) without lhs dilation. A row of ``cols`` is then a copy of
    ``xpad`` at a fixed offset per window offset, with no padding test: the offset table
    costs a load of the offset and a select per element. Measured against the table (1
    thread, interleaved): W7's forward conv 0.61 -> 0.52 ms, W8's 2.11 -> 2.01 ms, W9's
    8x8 forward 27.5 -> 27.1 ms; kernel gradients (rows of 3) were 5-9% slower (they
    unfold into rows instead, ``lower_rows``). The borders are zeroed once per call (once
    per chunk on threads, in the thread's copy: ``base``); each chunk overwrites the
    interiors."""

    def __init__(self, b: KernelBuilder, arrays: Arrays, s: _Shapes, op: Op, loop: ChunkLoop) -> None:
        self.b, self.s, self.loop = b, s, loop
        out_spatial, window = op.output.shape[2:], op.inputs[1].shape[2:]
        spatial = op.inputs[0].shape[2:]
        extents = [max((out_spatial[d] - 1) * s.strides[d] + (window[d] - 1) * s.rdil[d] + 1, s.lo[d] + spatial[d])
                   for d in range(s.nsp)]
        self.extents = extents
        self.E = tuple(s.size(("E", d), n) for d, n in enumerate(extents))
        self.EE = s.size("EE", math.prod(extents))
        self.size = loop.chunk * op.inputs[0].shape[1] * math.prod(extents)
        self.xpad = loop.scratch(arrays, op.output.dtype, self.size)
        self.zero = b.const(0, op.output.dtype)

    def base(self) -> Expr:
        """Where the padded planes of the thread running this chunk start in ``xpad``."""
        return self.loop.base("padded", self.size)

    def clear(self) -> None:
        """Zeroes this thread's copy (its borders stay zero; ``copy_chunk`` fills the rest)."""
        at = self.base()
        with self.b.each(self.s.size("padded", self.size)) as t:
            self.b.store(self.xpad, self.b.let(add(at, t)), self.zero)

    def copy_chunk(self, xa: str, n0: Expr, count: Expr) -> None:
        """``xpad[i, c, q + lo] = x[n0 + i, c, q]`` for the chunk's ``count`` samples."""
        b, s = self.b, self.s
        with b.each(count) as i:
            with b.each(s.C) as c:
                plane = b.let(add(b.let(mul(i, s.C)), c))
                src = b.let(mul(b.let(add(b.let(mul(b.let(add(n0, i)), s.C)), c)), s.SS))
                dst = b.let(add(b.let(mul(plane, self.EE)), self.base()))

                def element(q: tuple[Expr, ...]) -> None:
                    at = linearize(b, tuple(add(q[d], Lit(s.lo[d])) for d in range(s.nsp)), self.E)
                    b.store(self.xpad, b.let(add(dst, at)), b.load(xa, b.let(add(src, linearize(b, q, s.S)))))

                loop_nest(b, s.S, element)

    def fill(self, cols: str, col_base: Expr, i: Expr, c: Expr, k: tuple[Expr, ...]) -> None:
        """``cols[col_base + p] = xpad[i, c, p * stride + k * rhs_dilation]`` over the
        output positions ``p``."""
        b, s = self.b, self.s
        plane = b.let(add(b.let(mul(b.let(add(b.let(mul(i, s.C)), c)), self.EE)), self.base()))

        def point(p: tuple[Expr, ...]) -> None:
            q = tuple(add(mul(p[d], Lit(s.strides[d])), mul(k[d], Lit(s.rdil[d]))) for d in range(s.nsp))
            src = b.let(add(plane, linearize(b, q, self.E)))
            b.store(cols, b.let(add(col_base, linearize(b, p, s.P))), b.load(self.xpad, src))

        loop_nest(b, s.P, point)


def _offset_table(b: KernelBuilder, s: _Shapes, table: str, at: Expr) -> None:
    """``table[at + k * PP + p]``: where output position ``p`` reads an input plane at
    window offset ``k`` (a linear index), or -1 where it reads padding or a hole."""

    def offset(k: tuple[Expr, ...]) -> None:
        k_base = b.let(add(b.let(mul(linearize(b, k, s.K), s.PP)), at))

        def point(p: tuple[Expr, ...]) -> None:
            inside: Expr | None = None
            idx = []
            for d in range(s.nsp):
                jd, ok = s.input_element(d, s.dilated_position(d, p[d], k[d]))
                idx.append(jd)
                inside = ok if inside is None else b.let(binary(BinaryOp.AND, inside, ok))
            at = linearize(b, tuple(idx), s.S)
            b.store(table, b.let(add(k_base, linearize(b, p, s.P))), b.let(select(inside, at, Lit(-1))))

        loop_nest(b, s.P, point)

    loop_nest(b, s.K, offset)


def _fill_row(b: KernelBuilder, s: _Shapes, xa: str, cols: str, x_base: Expr, col_base: Expr,
              outer: tuple[Expr, ...], k: tuple[Expr, ...], zero: Expr) -> None:
    """One row of the im2col matrix along the last spatial axis (no lhs dilation): zeros
    before and after the range of output positions that read the input, and in between a
    strided copy whose index is affine in the loop variable (it vectorizes)."""
    last = s.nsp - 1
    inside: Expr | None = None
    idx = []
    for d in range(last):
        q = s.dilated_position(d, outer[d], k[d])
        ok = b.let(binary(BinaryOp.AND, binary(BinaryOp.GE, q, ZERO), binary(BinaryOp.LT, q, s.S[d])))
        inside = ok if inside is None else b.let(binary(BinaryOp.AND, inside, ok))
        idx.append(q)
    row_out = b.let(add(col_base, mul(linearize(b, outer, s.P[:-1]), s.P[last])))
    row_in = b.let(add(x_base, mul(linearize(b, tuple(idx), s.S[:-1]), s.S[last])))
    _fill_last(b, s, xa, cols, row_in, row_out, k[last], zero, inside)


def _fill_last(b: KernelBuilder, s: _Shapes, xa: str, cols: str, row_in: Expr, row_out: Expr, k: Expr, zero: Expr,
               inside: Expr | None = None) -> None:
    """``cols[row_out + p] = x[row_in + q]`` over the output positions ``p`` of the last
    spatial axis at window offset ``k`` (``q = p * stride + k * rhs_dilation - lo``; no lhs
    dilation), zeros where ``q`` is outside the input row, and zeros throughout where
    ``inside`` (the row's other axes) is false."""
    last = s.nsp - 1
    _fill_run(b, xa, cols, row_in, row_out, s.dilated_position(last, ZERO, k), s.strides[last], s.P[last],
              s.S[last], zero, inside)


def _fill_run(b: KernelBuilder, xa: str, cols: str, row_in: Expr, row_out: Expr, base: Expr, step: int, width: Expr,
              size: Expr, zero: Expr, inside: Expr | None = None) -> None:
    """``cols[row_out + t] = x[row_in + base + t * step]`` for ``t < width``: zeros before
    and after the range where ``base + t * step`` lies in ``[0, size)``, and in between a
    copy whose index is affine in ``t`` (it vectorizes); zeros throughout where ``inside``
    is false."""
    st = Lit(step)
    first = b.let(minimum(maximum(ZERO, sub(ZERO, floordiv(base, st))), width))
    stop = b.let(maximum(first, minimum(width, add(floordiv(sub(sub(size, ONE), base), st), ONE))))
    if inside is not None:
        first = b.let(select(inside, first, width))
        stop = b.let(select(inside, stop, width))
    with b.loop(first) as t:
        b.store(cols, b.let(add(row_out, t)), zero)
    with b.loop(stop, start=first) as t:
        q = b.let(add(mul(t, st), base))
        b.store(cols, b.let(add(row_out, t)), b.load(xa, b.let(add(row_in, q))))
    with b.loop(width, start=stop) as t:
        b.store(cols, b.let(add(row_out, t)), zero)
