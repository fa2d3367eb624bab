"""Reduction kernels: ``reduce`` groups (input fusion into one set of reductions, with an
epilogue in the output space) and ``row`` groups (reductions over trailing axes whose
results are broadcast back over the same rows, several passes per row)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from fusejit.codegen.common import (
    LOOP_OPS,
    Ctx,
    LoweredKernel,
    finish,
    index_like,
    provider_at,
    reason_of,
    root_index,
)
from fusejit.codegen.elemental import Emitter, Index, linearize
from fusejit.codegen.exprs import (
    INDEX,
    ONE,
    ZERO,
    BinaryOp,
    Cast,
    Expr,
    Lit,
    ThreadId,
    Var,
    add,
    binary,
    floordiv,
    minimum,
    mul,
    select,
    sub,
)
from fusejit.codegen.kernel import KernelBuilder, Unsupported
from fusejit.codegen.rules import REDUCTION_RULES
from fusejit.ir import primitives as P
from fusejit.ir.core import Op, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.primitives import OpKind
from fusejit.ir.transforms.fusion import FusionGroup

# ---------------------------------------------------------------------------------------
# Reductions


@dataclass
class _Reductions:
    reduces: list[Op]
    operand_shape: tuple[int, ...]
    axes: tuple[int, ...]
    dependent: set[Value]  # values computed from a reduction result


def reduced_axes(op: Op) -> tuple[int, ...]:
    return tuple(sorted(P.reduction_axes(op)))


def reduce_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: _reduce_outputs(group, _analyze_reductions(group)))


def row_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: _row_structure(group))


def _analyze_reductions(group: FusionGroup) -> _Reductions:
    reduces = [op for op in group.ops if op.prim.kind is OpKind.REDUCTION]
    if not reduces:
        raise Unsupported("a reduce kernel holds a reduction")
    shape = reduces[0].inputs[0].shape
    axes = reduced_axes(reduces[0])
    for op in reduces:
        if op.inputs[0].shape != shape or reduced_axes(op) != axes:
            raise Unsupported("the reductions of one kernel must share their input shape and axes")
    dependent: set[Value] = {op.output for op in reduces}
    for op in group.ops:
        if op.prim.kind is OpKind.REDUCTION:
            if any(v in dependent for v in op.inputs):
                raise Unsupported("a reduction of another reduction's result needs a row kernel")
            continue
        if any(v in dependent for v in op.inputs):
            if op.prim.kind not in LOOP_OPS and op.prim is not P.gather:
                raise Unsupported(f"{op.prim.name} cannot consume a reduction in this kernel")
            _check_reads_in_place(op, dependent, row_axes=None)
            dependent.update(op.outputs)
        elif op.prim.kind not in LOOP_OPS and op.prim is not P.gather:
            raise Unsupported(f"{op.prim.name} cannot be fused into a reduction kernel")
    return _Reductions(reduces, shape, axes, dependent)


def _check_reads_in_place(op: Op, dependent: set[Value], row_axes: int | None) -> None:
    """A reduction's result exists only at the element (in a row kernel, whose rows run
    over its first ``row_axes`` axes: the row) being computed: ``op`` may read values
    computed from it elementwise, through layout ops that keep the linear index, or, in a
    row kernel, broadcast back over the row or gathered along one of the row's own axes."""
    if op.prim.kind is OpKind.ELEMENTWISE:
        return
    if op.prim in (P.reshape, P.transpose, P.broadcast_in_dim) and P.keeps_linear_order(op):
        return
    rows = row_axes is not None
    if rows and op.prim is P.broadcast_in_dim and op.attrs["dims"] == tuple(range(len(op.inputs[0].shape))):
        return
    if (rows and op.prim is P.gather and op.attrs["axis"] >= row_axes
            and op.inputs[0].shape[:row_axes] == op.output.shape[:row_axes] and op.inputs[1] not in dependent):
        return
    raise Unsupported(f"{op.prim.name} reads a reduction's result at another element than the one being computed")


# Float sums add SUM_BLOCK elements into a block total (in vector lanes), then the block
# total into the running total, a float64 one for float32 data: the rounding error grows
# with n / SUM_BLOCK + SUM_BLOCK / lanes rather than with n (the purpose of NumPy's
# pairwise summation), at the speed of the plain loop (bench/bench_backend.py sums).
SUM_BLOCK = 256


def is_float_sum(op: Op) -> bool:
    return REDUCTION_RULES[op.prim].blocked and op.inputs[0].dtype.is_float


def total_dtype(op: Op) -> DType:
    """The accumulator dtype of a reduction: float64 for float sums, else the input's."""
    return DType.f64 if is_float_sum(op) else op.inputs[0].dtype


class Accumulators:
    """The accumulators of a set of reductions over one index space. ``loop`` runs the
    innermost loop over the reduced elements, in blocks when a float sum is among them."""

    def __init__(self, em: Emitter, reduces: list[Op], sum_block: int) -> None:
        self.em = em
        self.sum_block = sum_block  # the target's (``Target.sum_block``)
        self.b = em.b
        self.acc: dict[Value, Var] = {}
        self.best_index: dict[Value, Var] = {}
        self.block: dict[Value, Var] = {}  # float sums: the current block's total
        self.reduces = reduces
        for op in reduces:
            rule = REDUCTION_RULES[op.prim]
            self.acc[op.output] = self.b.define(em.const(rule.init(op.inputs[0].dtype), total_dtype(op)))
            if rule.arg is not None:
                self.best_index[op.output] = self.b.define(Cast(ZERO, INDEX))

    @contextmanager
    def loop(self, length: int, stop: Expr, start: Expr = ZERO) -> Iterator[Var]:
        """``for i in range(start, stop)`` over ``length`` reduced elements (yields ``i``):
        float sums add into a block total in the data's dtype (a vectorizable loop), then
        into the running total; a loop over more than ``SUM_BLOCK`` elements is split into
        blocks of that many (the target's ``sum_block``)."""
        sums = [op for op in self.reduces if is_float_sum(op)]
        if not sums:
            with self.b.loop(stop, start=start) as i:
                yield i
            return
        b = self.b
        if length <= self.sum_block:
            with self._block_totals(sums):
                with b.loop(stop, start=start) as i:
                    yield i
            return
        block = self.sum_block
        count = b.let(floordiv(add(sub(stop, start), Lit(block - 1)), Lit(block)))
        with b.loop(count) as blk:
            lo = b.let(add(start, mul(blk, Lit(block))))
            hi = b.let(minimum(add(lo, Lit(block)), stop))
            with self._block_totals(sums), b.loop(hi, start=lo) as i:
                yield i

    @contextmanager
    def _block_totals(self, sums: list[Op]) -> Iterator[None]:
        for op in sums:
            self.block[op.output] = self.b.define(self.em.const(0, op.inputs[0].dtype))
        yield
        for op in sums:
            total = self.acc[op.output]
            self.b.assign(total, REDUCTION_RULES[op.prim].combine(total, self.block.pop(op.output), DType.f64))

    def update(self, op: Op, x: Expr, position: Expr | None = None) -> None:
        rule = REDUCTION_RULES[op.prim]
        dt = op.inputs[0].dtype
        if rule.arg is None:
            if op.output in self.block:
                acc, acc_dtype = self.block[op.output], dt
            else:
                acc, acc_dtype = self.acc[op.output], total_dtype(op)
            self.b.assign(acc, rule.combine(acc, x, acc_dtype))
            return
        acc = self.acc[op.output]
        better = binary(rule.arg, x, acc)
        if dt.is_float:  # the first NaN wins, like np.argmax
            first_nan = binary(BinaryOp.AND, binary(BinaryOp.NE, x, x), binary(BinaryOp.EQ, acc, acc))
            better = binary(BinaryOp.OR, better, first_nan)
        cond = self.b.let(better)
        self.b.assign(acc, select(cond, x, acc))
        best = self.best_index[op.output]
        self.b.assign(best, select(cond, position if position is not None else ZERO, best))

    def result(self, op: Op) -> Expr:
        """The reduction's value, in its output dtype."""
        if op.output in self.best_index:
            return self.best_index[op.output]
        acc = self.acc[op.output]
        if total_dtype(op) != op.output.dtype:
            return self.b.let(Cast(acc, op.output.dtype))
        return acc


def _reduce_outputs(group: FusionGroup, red: _Reductions) -> tuple[list[Value], list[Value]]:
    """The outputs in the reductions' input space (side) and in their output space (main)."""
    side = [v for v in group.outputs if v not in red.dependent]
    main = [v for v in group.outputs if v in red.dependent]
    for v in side:
        if v.shape != red.operand_shape:
            raise Unsupported("an output of a reduction kernel is neither in its input nor in its output space")
    return side, main


def lower_reduce(ctx: Ctx) -> LoweredKernel:
    group = ctx.group
    red = _analyze_reductions(group)
    in_shape, axes = red.operand_shape, red.axes
    out_shape = tuple(n for k, n in enumerate(in_shape) if k not in axes)
    side, main = _reduce_outputs(group, red)
    has_arg = any(REDUCTION_RULES[op.prim].arg is not None for op in red.reduces)
    total = math.prod(in_shape)
    kept = [k for k in range(len(in_shape)) if k not in axes]
    # Unit axes take no loop, so the innermost loop runs over the last axis longer than 1.
    longer = [k for k, n in enumerate(in_shape) if n != 1]
    innermost_reduced = not longer or longer[-1] in axes
    dtype = red.reduces[0].inputs[0].dtype
    if not axes:
        strategy = "rows"
    elif innermost_reduced or has_arg or all(in_shape[k] == 1 for k in kept):
        strategy = "rows"
        if math.prod(out_shape) == 1 and total >= ctx.threshold and not has_arg:
            strategy = "all"
    else:
        strategy = "cols"
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    ops = ctx.ops
    inputs = {v: arrays.value(v, "in") for v in group.inputs}
    outs = {v: arrays.value(v, "out") for v in group.outputs}
    em = arrays.emitter(ops, inputs)
    operand = red.reduces[0].inputs[0]
    in_exprs = em.shape_of(operand)
    out_exprs = tuple(in_exprs[k] for k in kept)
    parallel = total >= ctx.threshold
    kind = {"rows": "reduce_rows", "cols": "reduce_cols", "all": "reduce_all"}[strategy]

    def store_outputs(out_idx: Index) -> None:
        flat = em.flat(out_idx)
        for v in main:
            b.store(outs[v], flat, em.at(v, index_like(v.shape, out_idx, out_shape)))

    def visit(acc: Accumulators, in_idx: Index, position: Expr | None) -> None:
        for op in red.reduces:
            acc.update(op, em.at(op.inputs[0], in_idx), position)
        if side:
            flat = em.flat(in_idx)
            for v in side:
                b.store(outs[v], flat, em.at(v, in_idx))

    if not axes:  # a reduction over no axes folds each element into the identity
        for op in red.reduces:
            em.provided[op.output] = partial(_fold_into_identity, em, op)

        def identity(idx: Index) -> None:
            store_outputs(idx)
            for v in side:
                b.store(outs[v], em.flat(idx), em.at(v, idx))

        root_index(em, b, in_exprs, False, parallel, ("total",), total)(identity)
    elif strategy == "rows":
        axis_of_arg = axes[-1]

        def outer(out_idx: Index) -> None:
            acc = Accumulators(em, red.reduces, ctx.target.sum_block)
            dims: dict[int, Expr] = {k: d for k, d in zip(kept, out_idx.dims or (), strict=False)}

            looped = [j for j, k in enumerate(axes) if in_exprs[k] != ONE]

            def inner(j: int) -> None:
                if j == len(axes):
                    all_dims = tuple(dims[k] for k in range(len(in_shape)))
                    visit(acc, Index(in_exprs, all_dims), dims[axis_of_arg])
                    return
                k = axes[j]
                if in_exprs[k] == ONE:
                    dims[k] = ZERO
                    inner(j + 1)
                    return
                loop = partial(acc.loop, in_shape[k]) if j == looped[-1] else b.loop
                with loop(in_exprs[k]) as i:
                    dims[k] = i
                    inner(j + 1)

            inner(0)
            flat = em.flat(out_idx)
            for op in red.reduces:
                em.provided[op.output] = provider_at(em, acc.result(op), flat, op.prim.name)
            store_outputs(out_idx)

        root_index(em, b, out_exprs, False, parallel, ("total",), math.prod(out_shape))(outer)
    elif strategy == "all":
        chunks = ctx.target.split_chunks()
        chunk = b.int_param(("chunk",), -(-total // chunks))
        n = b.int_param(("total",), total)
        parts = {op.output: arrays.scratch(total_dtype(op), chunks) for op in red.reduces}
        with b.loop(Lit(chunks), parallel=True) as c:
            lo = b.let(mul(c, chunk))
            hi = b.let(minimum(add(lo, chunk), n))
            acc = Accumulators(em, red.reduces, ctx.target.sum_block)
            with acc.loop(-(-total // chunks), hi, start=lo) as f:
                visit(acc, Index(in_exprs, None, f), None)
            for op in red.reduces:
                b.store(parts[op.output], c, acc.acc[op.output])
        total_acc = Accumulators(em, red.reduces, ctx.target.sum_block)
        with b.loop(Lit(chunks)) as c:
            for op in red.reduces:
                total_acc.update(op, b.load(parts[op.output], c))
        out_idx = Index(out_exprs, tuple(ZERO for _ in out_exprs), ZERO)
        for op in red.reduces:
            em.provided[op.output] = provider_at(em, total_acc.result(op), ZERO, op.prim.name)
        store_outputs(out_idx)
    else:  # cols: accumulate into arrays in the input's memory order
        # (one accumulator per column: float32 sums add into float64 columns)
        acc_arrays: dict[Value, str] = {}
        for op in red.reduces:
            v = op.output
            own = v in outs and total_dtype(op) == v.dtype
            acc_arrays[v] = outs[v] if own else arrays.scratch(total_dtype(op), math.prod(out_shape))
        n_out = b.int_param(("out_total",), math.prod(out_shape))
        with b.loop(n_out, parallel=parallel) as f:
            for op in red.reduces:
                init = REDUCTION_RULES[op.prim].init(op.inputs[0].dtype)
                b.store(acc_arrays[op.output], f, em.const(init, total_dtype(op)))
        last = len(in_shape) - 1
        dims: list[Expr] = []
        blocked = parallel and axes[0] == 0 and len(in_shape) > 1
        outer_parallel = parallel and not blocked and 0 not in axes and in_exprs[0] != ONE

        def nest(k: int, lo: Expr | None, hi: Expr | None) -> None:
            if k == len(in_shape):
                in_idx = Index(in_exprs, tuple(dims))
                out_flat = linearize(b, tuple(dims[j] for j in kept), out_exprs)
                for op in red.reduces:
                    arr = acc_arrays[op.output]
                    x = em.at(op.inputs[0], in_idx)
                    cur = b.load(arr, out_flat)
                    b.store(arr, out_flat, REDUCTION_RULES[op.prim].combine(cur, x, total_dtype(op)))
                for v in side:
                    b.store(outs[v], em.flat(in_idx), em.at(v, in_idx))
                return
            if in_exprs[k] == ONE:
                dims.append(ZERO)
                nest(k + 1, lo, hi)
                dims.pop()
                return
            if k == last and lo is not None and hi is not None:
                ctxm = b.loop(hi, start=lo)
            else:
                ctxm = b.loop(in_exprs[k], parallel=outer_parallel and k == 0)
            with ctxm as i:
                dims.append(i)
                nest(k + 1, lo, hi)
                dims.pop()

        if blocked:
            width = in_exprs[last]
            block = ctx.target.column_block
            nb = b.let(floordiv(add(width, Lit(block - 1)), Lit(block)))
            with b.loop(nb, parallel=True) as blk:
                lo = b.let(mul(blk, Lit(block)))
                hi = b.let(minimum(add(lo, Lit(block)), width))
                nest(0, lo, hi)
        else:
            nest(0, None, None)
        # Outputs other than the accumulated ones: a loop over the output space reading
        # the accumulators (any element of them: they are complete).
        epilogue_outputs = [v for v in main if not (v in acc_arrays and acc_arrays[v] == outs.get(v))]
        if epilogue_outputs:
            epi_inputs = dict(inputs)
            epi_inputs.update(acc_arrays)
            em2 = arrays.emitter(ops, epi_inputs)
            for op in red.reduces:
                if total_dtype(op) != op.output.dtype:  # a float64 column total of float32 data
                    em2.provided[op.output] = _converted_load(em2, acc_arrays[op.output], op.output.dtype)

            def epilogue(idx: Index) -> None:
                flat = em2.flat(idx)
                for v in epilogue_outputs:
                    b.store(outs[v], flat, em2.at(v, index_like(v.shape, idx, out_shape)))

            out_size = math.prod(out_shape)
            root_index(em2, b, out_exprs, False, out_size >= ctx.threshold, ("out_total",), out_size)(epilogue)
    return finish(ctx, b, arrays, em, kind, dtype, in_shape)


def _fold_into_identity(em: Emitter, op: Op, idx: Index) -> Expr:
    """One element reduced on its own: ``identity + x`` (NumPy's sum of -0.0 is +0.0)."""
    x = em.at(op.inputs[0], idx)
    rule, dt = REDUCTION_RULES[op.prim], op.inputs[0].dtype
    if rule.arg is not None:
        return x
    return em.b.let(rule.combine(em.const(rule.init(dt), dt), x, dt))


def _converted_load(em: Emitter, array: str, dtype: DType) -> Callable[[Index], Expr]:
    def provide(idx: Index) -> Expr:
        return em.b.let(Cast(em.b.load(array, em.flat(idx)), dtype))

    return provide


# ---------------------------------------------------------------------------------------
# Row kernels: reductions over trailing axes and their broadcast consumers


@dataclass(frozen=True, slots=True)
class _RowStructure:
    reduces: tuple[Op, ...]  # over the trailing ``axes`` of ``shape``, once per row
    shape: tuple[int, ...]
    axes: tuple[int, ...]
    # Reductions over every axis of a value with one element per row (a mean loss over a
    # batch; rows, not a single one): summed over the rows as they are computed, known
    # after the last row.
    totals: tuple[Op, ...]
    after: frozenset[Value]  # the totals' results and the values computed from them


def _row_structure(group: FusionGroup) -> _RowStructure:
    """The reductions of a row kernel (their input shape and their trailing axes) and its
    totals over the rows, checked with what reads them."""
    everything = [op for op in group.ops if op.prim.kind is OpKind.REDUCTION]
    if not everything:
        raise Unsupported("a row kernel holds a reduction")
    shape = max((op.inputs[0].shape for op in everything), key=math.prod)
    axes = next(reduced_axes(op) for op in everything if op.inputs[0].shape == shape)
    rank = len(shape)
    if not axes or axes != tuple(range(rank - len(axes), rank)):
        raise Unsupported("a row kernel reduces trailing axes")
    row_shape = shape[:rank - len(axes)]
    reduces, totals = [], []
    for op in everything:
        if op.inputs[0].shape == shape and reduced_axes(op) == axes:
            reduces.append(op)
        elif (_nonunit(op.inputs[0].shape) == _nonunit(row_shape) and math.prod(row_shape) > 1
              and reduced_axes(op) == tuple(range(len(op.inputs[0].shape)))
              and REDUCTION_RULES[op.prim].arg is None):
            totals.append(op)
        else:
            raise Unsupported("the reductions of a row kernel must share their input shape and axes, "
                              "or total one value per row over the rows")
    dependent = {op.output for op in reduces}
    after = {op.output for op in totals}
    for op in group.ops:
        if op.prim.kind not in LOOP_OPS and op.prim is not P.gather and op.prim.kind is not OpKind.REDUCTION:
            raise Unsupported(f"{op.prim.name} cannot be fused into a row kernel")
        if op.prim.kind is OpKind.REDUCTION:
            if any(v in after for v in op.inputs):
                raise Unsupported("a row kernel's total over the rows is known only after the last row")
            continue
        if any(v in after for v in op.inputs):
            if op.output.type.size != 1 or any(v in dependent and v not in after for v in op.inputs):
                raise Unsupported("a row kernel's total over the rows is known only after the last row: "
                                  "only single values are computed from it")
            after.update(op.outputs)
        elif any(v in dependent for v in op.inputs):
            _check_reads_in_place(op, dependent, row_axes=len(row_shape))
            dependent.update(op.outputs)
    return _RowStructure(tuple(reduces), shape, axes, tuple(totals), frozenset(after))


def _nonunit(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def row_totals(group: FusionGroup) -> bool:
    """Whether ``group`` (a row group its strategy lowers) totals values over its rows,
    which it then runs in order, on one thread."""
    return bool(_row_structure(group).totals)


def lower_row(ctx: Ctx) -> LoweredKernel:
    group = ctx.group
    rs = _row_structure(group)
    reduces, shape, axes, totals, after = rs.reduces, rs.shape, rs.axes, rs.totals, rs.after
    rank = len(shape)
    nrow = rank - len(axes)
    row_shape = shape[:nrow]
    # Passes: a reduction runs after the reductions its operand depends on (the totals run
    # once per row, after every pass).
    level: dict[Value, int] = {}
    for op in group.ops:
        if any(v in after for v in op.outputs):
            continue
        deps = [level[v] for v in op.inputs if v in level]
        lv = max(deps, default=0)
        if op.prim.kind is OpKind.REDUCTION:
            lv += 1
        if deps or op.prim.kind is OpKind.REDUCTION:
            for v in op.outputs:
                level[v] = lv
    n_pass = max(level[op.output] for op in reduces)
    stashed = _row_stash_candidates(group, ctx.ops, shape, level, n_pass)
    full_outputs = [v for v in group.outputs if v.shape == shape and v not in after]
    row_outputs = [v for v in group.outputs if v.shape != shape and v not in after]
    total_outputs = [v for v in group.outputs if v in after]
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    inputs = {v: arrays.value(v, "in") for v in group.inputs}
    outs = {v: arrays.value(v, "out") for v in group.outputs}
    em = arrays.emitter(ctx.ops, inputs)
    exprs = em.shape_of(reduces[0].inputs[0])
    row_exprs = exprs[:nrow]
    total = math.prod(shape)
    # Totals add the rows up in order: one thread (fusion asks for none past the threshold).
    parallel = total >= ctx.threshold and math.prod(row_shape) > 1 and not totals
    row_len = b.int_param(("row_len",), math.prod(shape[nrow:])) if math.prod(shape[nrow:]) != 1 else ONE
    threads = ctx.target.max_threads()
    rows_of_scratch = threads if parallel else 1
    stash_arrays = {v: arrays.scratch(v.dtype, rows_of_scratch * math.prod(shape[nrow:])) for v in stashed}

    def row_body(row: Index) -> None:
        row_flat = em.flat(row)
        q = em.dims(row)

        def over_row(fn: Callable[[Index], None], acc: Accumulators | None = None) -> None:
            """Calls ``fn`` at every element of the row; ``acc`` runs the innermost loop."""
            dims = list(q)
            innermost = max((k for k in range(nrow, rank) if exprs[k] != ONE), default=None)

            def nest(k: int) -> None:
                if k == rank:
                    idx = Index(exprs, tuple(dims))
                    fn(Index(exprs, tuple(dims), em.flat(idx)))
                    return
                if exprs[k] == ONE:
                    dims.append(ZERO)
                    nest(k + 1)
                    dims.pop()
                    return
                loop = partial(acc.loop, shape[k]) if acc is not None and k == innermost else b.loop
                with loop(exprs[k]) as j:
                    dims.append(j)
                    nest(k + 1)
                    dims.pop()

            nest(nrow)

        base: Expr = ZERO  # serial: one row (asking for the thread needs a threading layer)
        if stashed and parallel:  # this thread's row of scratch
            tid = b.define(ThreadId())
            base = b.let(mul(tid, row_len))

        def in_row(idx: Index) -> Expr:
            assert idx.dims is not None
            return linearize(b, idx.dims[nrow:], exprs[nrow:])

        for p in range(1, n_pass + 1):
            now = [op for op in reduces if level[op.output] == p]
            stash_now = [v for v, first in stashed.items() if first == p]
            acc = Accumulators(em, now, ctx.target.sum_block)

            def visit(idx: Index, acc: Accumulators = acc, now: list[Op] = now, stash_now: list = stash_now) -> None:
                for op in now:
                    acc.update(op, em.at(op.inputs[0], idx), idx.dims[rank - 1] if idx.dims else None)
                for v in stash_now:
                    b.store(stash_arrays[v], b.let(add(base, in_row(idx))), em.at(v, idx))

            over_row(visit, acc)
            for op in now:
                em.provided[op.output] = provider_at(em, acc.result(op), row_flat, op.prim.name)
            for v in stash_now:
                em.provided[v] = _stash_provider(em, b, stash_arrays[v], base, q, in_row)
        for v in row_outputs:
            idx = index_like(v.shape, row, row_shape)
            b.store(outs[v], row_flat, em.at(v, idx))
        if full_outputs:
            over_row(lambda idx: [b.store(outs[v], em.flat(idx), em.at(v, idx)) for v in full_outputs])
        for op in totals:
            over_rows.update(op, em.at(op.inputs[0], index_like(op.inputs[0].shape, row, row_shape)))

    over_rows = Accumulators(em, list(totals), ctx.target.sum_block)
    root_index(em, b, row_exprs, False, parallel, ("rows",), math.prod(row_shape))(row_body)
    for op in totals:
        em.provided[op.output] = provider_at(em, over_rows.result(op), ZERO, op.prim.name)
    for v in total_outputs:
        exprs_v = em.shape_of(v)
        b.store(outs[v], ZERO, em.at(v, Index(exprs_v, tuple(ZERO for _ in exprs_v), ZERO)))
    return finish(ctx, b, arrays, em, "row", reduces[0].inputs[0].dtype, shape)


def _row_stash_candidates(group: FusionGroup, ops: dict[Value, Op], shape: tuple[int, ...],
                          level: dict[Value, int], n_pass: int) -> dict[Value, int]:
    """Full-row values needed by more than one pass whose computation holds an expensive
    op, mapped to the pass that computes them first (and stores them in a per-thread row
    of scratch that later passes read)."""
    members = {id(op) for op in group.ops}
    passes: dict[Value, set[int]] = {}

    def mark(v: Value, p: int) -> None:
        op = ops.get(v)
        if op is None or id(op) not in members or op.prim.kind is OpKind.REDUCTION:
            return
        if p in passes.setdefault(v, set()):
            return
        passes[v].add(p)
        for u in op.inputs:
            mark(u, p)

    for op in group.ops:
        if op.prim.kind is OpKind.REDUCTION and op.output in level:  # not a total over the rows
            mark(op.inputs[0], level[op.output])
    for v in group.outputs:
        if v.shape == shape:
            mark(v, n_pass + 1)

    # Values costly enough (a transcendental on the way) that a row kernel stores them for
    # later passes instead of recomputing them (softmax computes exp once, not twice).
    def expensive(v: Value, seen: set[int]) -> bool:
        op = ops.get(v)
        if op is None or id(op) not in members or op.prim.kind is OpKind.REDUCTION or id(op) in seen:
            return False
        seen.add(id(op))
        return op.prim in P.TRANSCENDENTAL or any(expensive(u, seen) for u in op.inputs)

    chosen: dict[Value, int] = {}
    for v, ps in passes.items():
        if v.shape == shape and len(ps) > 1 and min(ps) <= n_pass and expensive(v, set()):
            chosen[v] = min(ps)
    # A value whose every later use goes through a chosen value needs no stash of its own.
    return {v: p for v, p in chosen.items() if not _only_through(v, chosen, group, ops)}


def _only_through(v: Value, chosen: dict[Value, int], group: FusionGroup, ops: dict[Value, Op]) -> bool:
    users = [op for op in group.ops if v in op.inputs]
    later = [op for op in users if op.prim.kind is not OpKind.REDUCTION]
    return bool(later) and v not in group.outputs and all(
        any(o in chosen for o in op.outputs) for op in later
    ) and not any(op.prim.kind is OpKind.REDUCTION for op in users)


def _stash_provider(em: Emitter, b: KernelBuilder, array: str, base: Expr, q: tuple[Expr, ...],
                    in_row: Callable[[Index], Expr]) -> Callable[[Index], Expr | None]:
    """Reads a stashed value when asked for an element of the current row."""

    def provide(idx: Index) -> Expr | None:
        if idx.dims is None or tuple(idx.dims[: len(q)]) != tuple(q):
            return None  # another row: compute it
        return b.load(array, add(base, in_row(idx)))

    return provide


