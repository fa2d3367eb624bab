"""Loop kernels: elementwise/layout groups over the shape of their outputs, tried first
as one flat loop over the linear index and, when a rule needs per-axis indices, as a loop
nest; horizontal groups run several such loops in one kernel."""

from __future__ import annotations

import math

from fusejit.codegen.common import (
    LOOP_OPS,
    MAX_KERNEL_SIZE,
    Arrays,
    Ctx,
    LoweredKernel,
    choose_splits,
    emits_flat,
    finish,
    index_like,
    kernel_size,
    reason_of,
    root_index,
)
from fusejit.codegen.elemental import Emitter, Index, NeedDims
from fusejit.codegen.kernel import KernelBuilder, Unsupported
from fusejit.ir import primitives as P
from fusejit.ir.core import Value
from fusejit.ir.transforms.fusion import FusionGroup, GroupKind

# ---------------------------------------------------------------------------------------
# Loop kernels (and horizontal groups of them)


def loop_support(group: FusionGroup) -> str | None:
    return reason_of(lambda: loop_outputs_space(group))


def horizontal_support(group: FusionGroup) -> str | None:
    if not group.parts:
        return "a horizontal group lists its parts"
    for part in group.parts:
        if part.kind is not GroupKind.LOOP:
            return "a horizontal kernel holds loop kernels only"
        reason = loop_support(part)
        if reason is not None:
            return reason
    return None


def loop_outputs_space(group: FusionGroup) -> tuple[int, ...]:
    """The iteration space: the outputs' shape (outputs may differ in unit axes only, which
    leaves every element's linear index the same)."""
    shape = max((v.shape for v in group.outputs), key=len)
    for v in group.outputs:
        if [n for n in v.shape if n != 1] != [n for n in shape if n != 1]:
            raise Unsupported(f"loop kernel outputs have different shapes {shape} and {v.shape}")
    for op in group.ops:
        if op.prim.kind not in LOOP_OPS and op.prim is not P.gather:
            raise Unsupported(f"{op.prim.name} cannot be fused into a loop kernel")
    return shape


def emit_loop_body(ctx: Ctx, b: KernelBuilder, arrays: Arrays, group: FusionGroup, flat_mode: bool,
                   part: int = 0, splits: dict[int, list[int]] | None = None) -> tuple[Emitter, dict[int, list[int]]]:
    """Emits ``group``'s loop with its loops split at ``splits``; returns the emitter
    and the splits that would remove the branches it still has (``choose_splits``)."""
    shape = loop_outputs_space(group)
    total = math.prod(shape)
    ops = {v: op for op in group.ops for v in op.outputs}
    inputs = {v: arrays.value(v, "in") for v in group.inputs}
    outs: dict[Value, str] = {}
    for v in group.outputs:
        if v in ctx.inplace:
            src = ctx.inplace[v]
            if src not in inputs or src.dtype != v.dtype or src.shape != v.shape:
                raise Unsupported("an in-place output must have its input's dtype and shape")
            outs[v] = inputs[src]
        else:
            outs[v] = arrays.value(v, "out")
    em = arrays.emitter(ops, inputs, allow_delinearize=not flat_mode)
    base = next(v for v in group.outputs if v.shape == shape)
    shape_exprs = tuple(em.size(base, k) for k in range(len(shape)))
    parallel = total >= ctx.threshold

    def body(idx: Index) -> None:
        flat = em.flat(idx)
        # Every element is computed before any is stored: an output written over an input
        # (donation) must not be seen by a later read of that input.
        elems = [em.at(v, idx if v.shape == shape else index_like(v.shape, idx, shape)) for v in group.outputs]
        for v, e in zip(group.outputs, elems, strict=True):
            b.store(outs[v], flat, e)

    root_index(em, b, shape_exprs, flat_mode, parallel, ("total", part), total, shape, splits)(body)
    if not ctx.target.split_loops:
        return em, {}
    parallel_axis = next((k for k, n in enumerate(shape) if n != 1), None) if parallel else None
    return em, choose_splits(em.split_points, shape, parallel_axis)


def lower_loop(ctx: Ctx) -> LoweredKernel:
    group = ctx.group
    shape = loop_outputs_space(group)
    for flat_mode in (True, False):
        splits: dict[int, list[int]] = {}
        # Emitted once, and again with its loops split where pad or concatenate pieces
        # begin, unless that copies the body past the size bound.
        for attempt in range(2):
            b = KernelBuilder()
            arrays = ctx.arrays(b)
            try:
                em, more = emit_loop_body(ctx, b, arrays, group, flat_mode, splits=splits)
            except NeedDims:
                break
            if attempt == 0 and more:
                unsplit, splits = (b, arrays, em), more
                continue
            if attempt == 1 and kernel_size(b.block) > MAX_KERNEL_SIZE:
                b, arrays, em = unsplit
            return _finish_loop(ctx, b, arrays, em, shape)
    raise AssertionError("a loop nest always has the dims it needs")  # pragma: no cover


def _finish_loop(ctx: Ctx, b: KernelBuilder, arrays: Arrays, em: Emitter, shape: tuple[int, ...]) -> LoweredKernel:
    identity = frozenset(v for v, ok in em.identity_reads.items() if ok)
    for src in ctx.inplace.values():
        if src not in identity:
            raise Unsupported("an in-place output's input is read at other elements")
    # Roles: an input sharing an output's array is "inout".
    for src in ctx.inplace.values():
        b.set_role(arrays.of[src], "inout")
    return finish(ctx, b, arrays, em, "loop", ctx.group.outputs[0].dtype, shape, identity=identity)


def _flat_parts(ctx: Ctx) -> list[bool]:
    """Per part of a horizontal group: whether it runs as one flat loop, as ``lower_loop``
    tries first (no rule needs per-axis indices). A loop nest costs Numba and LLVM one
    loop per axis to compile, and its index arithmetic, for the same machine work: W7's
    two reshape copies compiled in 0.23 s instead of 0.46, W10's SGD update of six
    parameters (three matrices) in 0.71 s instead of 0.82."""
    return [emits_flat(ctx, lambda trial, k=k, part=part: emit_loop_body(
        _part_ctx(ctx, part), trial.b, trial, part, flat_mode=True, part=k)) for k, part in enumerate(ctx.group.parts)]


def _part_ctx(ctx: Ctx, part: FusionGroup) -> Ctx:
    return Ctx(part, ctx.ops, ctx.target, ctx.threshold, {})


def lower_horizontal(ctx: Ctx) -> LoweredKernel:
    """Independent loop groups run one after another in one kernel, each as one flat loop
    where its rules allow (``_flat_parts``), else as a loop nest (emitted again with split
    loops when a part has pad or concatenate pieces, as ``lower_loop``)."""
    flat = _flat_parts(ctx)
    splits: list[dict[int, list[int]]] = [{} for _ in ctx.group.parts]
    for attempt in range(2):
        b = KernelBuilder()
        arrays = ctx.arrays(b)
        more = [emit_loop_body(_part_ctx(ctx, part), b, arrays, part, flat_mode=flat[k], part=k,
                               splits=splits[k])[1] for k, part in enumerate(ctx.group.parts)]
        if attempt == 0:
            if not any(more):
                break
            unsplit, splits = (b, arrays), more
        elif kernel_size(b.block) > MAX_KERNEL_SIZE:
            b, arrays = unsplit
    first = ctx.group.parts[0].outputs[0]
    return finish(ctx, b, arrays, None, "horizontal", first.dtype, first.shape)
