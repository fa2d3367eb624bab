"""Contraction and scatter kernels: a dot_general through BLAS (or loops for integers)
with its elementwise epilogue, and scatter_add's serial accumulation."""

from __future__ import annotations

import math

from fusejit.codegen.common import (
    LOOP_OPS,
    Arrays,
    Ctx,
    LoweredKernel,
    Strategy,
    emits_flat,
    finish,
    provider_at,
    reason_of,
    root_index,
)
from fusejit.codegen.elemental import Index, linearize
from fusejit.codegen.exprs import ONE, ZERO, Binary, BinaryOp, Expr, add
from fusejit.codegen.kernel import KernelBuilder, Matmul, Unsupported
from fusejit.codegen.rules import CodegenRule, clamped_index
from fusejit.ir import primitives as P
from fusejit.ir.core import Op, Value
from fusejit.ir.primitives import OpKind
from fusejit.ir.transforms.fusion import FusionGroup

# ---------------------------------------------------------------------------------------
# Matmul kernels: one dot_general through BLAS, then an elementwise epilogue


def matmul_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: _matmul_structure(group))


def _matmul_structure(group: FusionGroup) -> Op:
    """The one dot_general of a matmul kernel, checked with its epilogue."""
    dots = [op for op in group.ops if op.prim is P.dot_general]
    if len(dots) != 1:
        raise Unsupported("a matmul kernel holds one dot_general and elementwise ops")
    (dot,) = dots
    d = dot.output
    for v in dot.inputs:
        if v not in group.inputs:
            raise Unsupported("a matmul kernel reads its operands from memory")
    dependent = {d}
    for op in group.ops:
        if op is dot:
            continue
        if op.prim.kind not in LOOP_OPS and op.prim is not P.gather:
            raise Unsupported(f"{op.prim.name} cannot be fused into a matmul epilogue")
        if any(v in dependent for v in op.inputs):
            if op.prim.kind is not OpKind.ELEMENTWISE:
                raise Unsupported("a matmul epilogue reads the product elementwise only")
            dependent.update(op.outputs)
    for v in group.outputs:
        if v.shape != d.shape:
            raise Unsupported("the outputs of a matmul kernel have the product's shape")
    return dot


def lower_matmul(ctx: Ctx) -> LoweredKernel:
    group = ctx.group
    dot = _matmul_structure(group)
    lhs, rhs = dot.inputs
    d = dot.output
    contract, batch = dot.attrs["contract"], dot.attrs["batch"]
    lperm, (B, M, K), rperm, (_, _, N) = P.dot_general_as_matmul(lhs.shape, rhs.shape, contract, batch)
    if not (d.dtype.is_float and ctx.target.blas) or 2 * B * M * K * N < ctx.target.blas_min_flops():
        return _lower_contraction_loop(ctx, dot)
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    inputs = {v: arrays.value(v, "in") for v in group.inputs}
    outs = {v: arrays.value(v, "out") for v in group.outputs}
    em = arrays.emitter(ctx.ops, inputs)
    sizes: dict[str, Expr] = {k: (ONE if n == 1 else b.int_param(("mm", k), n)) for k, n in (("B", B), ("M", M), ("K", K), ("N", N))}
    (lc, rc), (lb, rb) = contract, batch
    nb = len(lb)

    def operand(v: Value, perm: tuple[int, ...], first: tuple[int, ...], second: tuple[int, ...],
                contract_axes: tuple[int, ...], bdims: tuple[int, ...]) -> tuple[str, bool]:
        """The array holding ``v`` as ``[B, first, second]`` (False) or ``[B, second, first]``
        (True) in memory, copied to scratch in ``perm`` order when neither view exists.
        The contracted axes must be in increasing order for both operands to linearize
        K the same way."""
        rest = tuple(range(nb, len(v.shape)))
        if bdims == tuple(range(nb)) and tuple(sorted(contract_axes)) == contract_axes:
            if first + second == rest:
                return inputs[v], False
            if second + first == rest:
                return inputs[v], True
        scratch = arrays.scratch(v.dtype, math.prod(v.shape))
        exprs = em.shape_of(v)
        canon = tuple(exprs[p] for p in perm)
        dims: list[Expr] = [ZERO] * len(perm)

        def nest(k: int) -> None:
            if k == len(perm):
                src = Index(exprs, tuple(dims))
                dst = linearize(b, tuple(dims[p] for p in perm), canon)
                b.store(scratch, dst, em.at(v, src))
                return
            if canon[k] == ONE:
                dims[perm[k]] = ZERO
                nest(k + 1)
                return
            with b.loop(canon[k]) as i:
                dims[perm[k]] = i
                nest(k + 1)

        nest(0)
        return scratch, False

    lfree = tuple(i for i in range(len(lhs.shape)) if i not in lc + lb)
    rfree = tuple(i for i in range(len(rhs.shape)) if i not in rc + rb)
    # lhs as [B, M, K] (or [B, K, M]); rhs as [B, K, N] (or [B, N, K]).
    a_arr, a_t = operand(lhs, lperm, lfree, lc, lc, lb)
    b_arr, b_t = operand(rhs, rperm, rc, rfree, rc, rb)
    if d in outs:
        c_arr = outs[d]
    else:
        same = [v for v in group.outputs if v.dtype == d.dtype]
        c_arr = outs[same[0]] if same else arrays.scratch(d.dtype, math.prod(d.shape))
    flags: tuple[bool | Expr, bool | Expr] = (a_t, b_t)
    if ctx.target.gemm_flags_at_run_time:
        flags = (b.int_param(("mm", "lhs_t"), a_t), b.int_param(("mm", "rhs_t"), b_t))
    b.emit(Matmul(a_arr, b_arr, c_arr, sizes["B"], sizes["M"], sizes["K"], sizes["N"], *flags))
    if any(v is not d for v in group.outputs):
        _emit_epilogue(ctx, d, c_arr, arrays)
    return finish(ctx, b, arrays, em, "matmul", d.dtype, (M, K, N) if B == 1 else (B, M, K, N))


def _emit_epilogue(ctx: Ctx, d: Value, c_arr: str, arrays: Arrays) -> None:
    """The elementwise ops after the product, as a loop over its elements in the matmul
    kernel itself (read from ``c_arr``), after the GEMM. A large epilogue's loop is
    parallel, which makes the kernel a parallel one whose GEMM still runs serially,
    outside the parallel loop. (An earlier design made the epilogue a helper function:
    Numba then compiled two functions per matmul kernel, 0.15-0.25 s more each.)"""
    group = ctx.group
    ops = {v: op for op in group.ops if op.prim is not P.dot_general for v in op.outputs}
    outputs = tuple(v for v in group.outputs if v is not d)
    total = math.prod(d.shape)

    def emit(b: KernelBuilder, into: Arrays, product: str, flat_mode: bool) -> None:
        outs = {v: into.value(v, "out") for v in outputs}
        in_names = {v: into.value(v, "in") for v in group.inputs if v is not d}
        in_names[d] = product
        em = into.emitter(ops, in_names, allow_delinearize=not flat_mode)
        exprs = tuple(em.size(d, k) for k in range(len(d.shape)))

        def body(idx: Index) -> None:
            flat = em.flat(idx)
            values = [(v, em.at(v, idx)) for v in outputs]  # every read before any write
            for v, e in values:
                b.store(outs[v], flat, e)

        root_index(em, b, exprs, flat_mode, total >= ctx.threshold, ("total",), total)(body)

    flat_mode = emits_flat(ctx, lambda trial: emit(trial.b, trial, trial.value(d, "in"), True))
    emit(arrays.b, arrays, c_arr, flat_mode)


def _lower_contraction_loop(ctx: Ctx, dot: Op) -> LoweredKernel:
    """An integer dot_general as loops (BLAS has no integer GEMM), epilogue inline."""
    group = ctx.group
    lhs, rhs = dot.inputs
    d = dot.output
    (lc, rc), (lb, rb) = dot.attrs["contract"], dot.attrs["batch"]
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    inputs = {v: arrays.value(v, "in") for v in group.inputs}
    outs = {v: arrays.value(v, "out") for v in group.outputs}
    em = arrays.emitter(ctx.ops, inputs)
    lfree = [i for i in range(len(lhs.shape)) if i not in lc + lb]
    rfree = [i for i in range(len(rhs.shape)) if i not in rc + rb]
    lx, rx = em.shape_of(lhs), em.shape_of(rhs)
    out_exprs = tuple([lx[a] for a in lb] + [lx[a] for a in lfree] + [rx[a] for a in rfree])

    def body(out_idx: Index) -> None:
        od = em.dims(out_idx)
        ld: list[Expr] = [ZERO] * len(lhs.shape)
        rd: list[Expr] = [ZERO] * len(rhs.shape)
        pos = 0
        for a, c in zip(lb, rb, strict=True):
            ld[a] = rd[c] = od[pos]
            pos += 1
        for a in lfree:
            ld[a] = od[pos]
            pos += 1
        for a in rfree:
            rd[a] = od[pos]
            pos += 1
        acc = b.define(em.const(0, d.dtype))

        def nest(k: int) -> None:
            if k == len(lc):
                x = em.at(lhs, Index(lx, tuple(ld)))
                y = em.at(rhs, Index(rx, tuple(rd)))
                b.assign(acc, add(acc, Binary(BinaryOp.MUL, x, y, d.dtype)))
                return
            if lx[lc[k]] == ONE:
                ld[lc[k]] = rd[rc[k]] = ZERO
                nest(k + 1)
                return
            with b.loop(lx[lc[k]]) as i:
                ld[lc[k]] = rd[rc[k]] = i
                nest(k + 1)

        nest(0)
        flat = em.flat(out_idx)
        em.provided[d] = provider_at(em, acc, flat, "dot_general")
        for v in group.outputs:
            b.store(outs[v], flat, em.at(v, out_idx))

    root_index(em, b, out_exprs, False, False, ("total",), math.prod(d.shape))(body)
    return finish(ctx, b, arrays, em, "matmul_loop", d.dtype, d.shape)


# ---------------------------------------------------------------------------------------
# scatter_add: a serial accumulation loop


def scatter_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: _scatter_structure(group))


def _scatter_structure(group: FusionGroup) -> Op:
    """The one scatter_add of an indexing kernel, checked with its producers."""
    scatters = [o for o in group.ops if o.prim is P.scatter_add]
    if len(scatters) != 1:
        raise Unsupported("an indexing kernel holds one scatter_add and its producers")
    (op,) = scatters
    if group.outputs != (op.output,):
        raise Unsupported("an indexing kernel has the scatter_add result as its only output")
    for o in group.ops:
        if o is not op and o.prim.kind not in LOOP_OPS and o.prim is not P.gather:
            raise Unsupported(f"{o.prim.name} cannot feed a scatter_add in one kernel")
    return op


def lower_scatter(ctx: Ctx) -> LoweredKernel:
    group = ctx.group
    op = _scatter_structure(group)
    out = op.output
    upd, ind = op.inputs
    axis = op.attrs["axis"]
    b = KernelBuilder()
    arrays = ctx.arrays(b)
    inputs = {v: arrays.value(v, "in") for v in group.inputs}
    o_arr = arrays.value(out, "out")
    em = arrays.emitter(ctx.ops, inputs)
    n_out = b.int_param(("out_total",), out.type.size) if out.type.size != 1 else ONE
    with b.loop(n_out) as f:
        b.store(o_arr, f, em.const(0, out.dtype))
    u_exprs = em.shape_of(upd)
    n = em.size(out, axis)
    o_exprs = u_exprs[:axis] + (n,) + u_exprs[axis + 1 :]

    def body(idx: Index) -> None:
        dims = em.dims(idx)
        u = em.at(upd, idx)
        j = clamped_index(b, em.at(ind, idx), n)
        target = linearize(b, dims[:axis] + (j,) + dims[axis + 1 :], o_exprs)
        cur = b.load(o_arr, target)
        b.store(o_arr, target, Binary(BinaryOp.ADD, cur, u, out.dtype))

    root_index(em, b, u_exprs, False, False, ("total",), upd.type.size)(body)
    return finish(ctx, b, arrays, em, "scatter_add", out.dtype, upd.shape)


KERNEL_RULES = {P.scatter_add: CodegenRule("kernel", kernel=Strategy(scatter_support, lower_scatter))}
