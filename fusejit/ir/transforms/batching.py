"""Batching (``vmap``) as a transform ``Function -> Function``.

``batch_function(fn, in_dims, size, out_dims)``
    The function that applies ``fn`` to ``size`` examples at once. Params: ``fn``'s
    params, each with an axis of length ``size`` inserted at ``in_dims[i]`` (``None``:
    the param is shared by every example and keeps its type). Results: ``fn``'s results
    with the example axis at ``out_dims[i]`` (``None``: the result must not depend on
    the example).

Design
------
*One rule per primitive.* The transform walks ``fn``'s ops once. Each value of ``fn``
maps to a value of the new function and a flag: *batched* (it has the example axis) or
not (it is the same for every example). An op none of whose operands is batched is
copied unchanged: it computes the same thing for every example, once. Any other op is
rewritten by its primitive's rule in ``BATCH_RULES``, which emits ops that compute the
op for every example at once and says which outputs are batched. This is JAX's batching
interpreter ("JAX: composable transformations", Frostig et al. 2018; ``jax/_src/
interpreters/batching.py``) applied to IR instead of to a running trace.

*The example axis is axis 0.* JAX lets each value carry its batch dimension anywhere
(``bdim``) to avoid transposes. Here a batched value always has it first: the params'
``in_dims`` are moved there once on entry and the results' ``out_dims`` once on exit,
so every rule is a shift of its attributes by one axis. The transposes this adds are
layout ops that the optimizer folds or fuses.

*Unbatched operands stay unbatched where the op allows it.* An elementwise op needs
equal shapes, so an unbatched operand is broadcast along the example axis (a
``broadcast_in_dim``, recomputed inside fused kernels, never stored). A ``dot_general``
with one batched operand folds the example axis into that operand's free axes (one
larger matrix product); with both batched it gains a batch dimension. Batching never
loops over the examples: the batched function has as many ops as ``fn``, plus layout
ops.

*custom_vjp_call.* Its ``fun``, ``fwd`` and ``bwd`` are batched themselves. The
cotangent ``bwd`` returns for an unbatched operand is summed over the examples: the
operand is shared by all of them, so its cotangent is the sum of theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.dce import eliminate_dead_code

# A rule gets the builder, the op, its operands in the new function, which of them are
# batched (example axis 0) and the number of examples; it emits the batched computation
# and returns each output with whether it is batched.
Batched = tuple[Value, bool]
BatchRule = Callable[[Builder, Op, tuple[Value, ...], tuple[bool, ...], int], Sequence[Batched]]

# The rule table, keyed by primitive: each rule is entered below, next to its definition.
BATCH_RULES: dict[P.Primitive, BatchRule] = {}


class MissingBatchRuleError(NotImplementedError):
    """A primitive with a batched operand has no batching rule."""


class BatchedResultError(ValueError):
    """A result asked to be unbatched (``out_dims`` entry ``None``) depends on the
    example; ``index`` is the result's position."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def batch_function(
    fn: Function,
    in_dims: Sequence[int | None],
    size: int,
    out_dims: Sequence[int | None],
    *,
    name: str | None = None,
) -> Function:
    """``fn`` applied to ``size`` examples at once (see the module docstring).

    ``in_dims[i]``: where param ``i``'s example axis is, from ``0`` to its rank (its
    type gains an axis of length ``size`` there), or ``None`` for a shared param.
    ``out_dims[i]``: where result ``i``'s example axis goes, from ``0`` to its rank, or
    ``None``; an unbatched result with an axis is broadcast along it. Raises
    ``ValueError`` for an axis out of range or a wrong number of entries,
    ``BatchedResultError`` when a result with ``out_dims`` ``None`` depends on the
    example, and ``MissingBatchRuleError`` for a primitive without a rule.
    """
    if len(in_dims) != len(fn.params) or len(out_dims) != len(fn.results):
        raise ValueError(
            f"@{fn.name} has {len(fn.params)} params and {len(fn.results)} results; got "
            f"{len(in_dims)} in_dims and {len(out_dims)} out_dims"
        )
    if size < 0:
        raise ValueError(f"batch size {size} is negative")
    b = Builder()
    params, args = [], []
    for p, d in zip(fn.params, in_dims, strict=True):
        if d is None:
            params.append(p)
            args.append((p, False))
            continue
        _check_dim(d, p.type.ndim, f"in_dims entry {d} of param {p.name or len(params)} ({p.type})")
        param = Value(p.type.with_shape(p.shape[:d] + (size,) + p.shape[d:]), p.name)
        params.append(param)
        args.append((_move_axis(b, param, d, 0), True))
    outs = _batch_body(b, fn, args, size)
    results = []
    for i, ((v, batched), d) in enumerate(zip(outs, out_dims, strict=True)):
        if d is None:
            if batched:
                raise BatchedResultError(
                    f"@{fn.name}: result {i} ({fn.results[i].type}) depends on the example, "
                    "but its out_dims entry is None", i
                )  # fmt: skip
            results.append(v)
            continue
        _check_dim(d, fn.results[i].type.ndim, f"out_dims entry {d} of result {i} ({fn.results[i].type})")
        if not batched:
            v = _broadcast_batch(b, v, size)
        results.append(_move_axis(b, v, 0, d))
    out = b.function(name or f"{fn.name}_batched", tuple(params), tuple(results))
    return eliminate_dead_code(out)


def _check_dim(d: int, ndim: int, what: str) -> None:
    if type(d) is not int or not 0 <= d <= ndim:
        raise ValueError(f"{what}: must be an int from 0 to {ndim}")


def _batch_body(b: Builder, fn: Function, args: Sequence[Batched], size: int) -> list[Batched]:
    """Appends ``fn``'s ops, batched, to ``b``; ``args`` are its params' values in the new
    function (batched ones with the example axis first). Returns its results likewise."""
    env: dict[Value, Batched] = dict(zip(fn.params, args, strict=True))
    for op in fn.ops:
        ins = tuple(env[v][0] for v in op.inputs)
        flags = tuple(env[v][1] for v in op.inputs)
        rule = BATCH_RULES.get(op.prim)
        if rule is None:
            where = f" (at {op.loc})" if op.loc else ""
            raise MissingBatchRuleError(f"primitive {op.prim.name!r} has no batching rule{where}")
        if not any(flags):
            rule = keep_unbatched
        with b.at(op.loc):
            outs = tuple(rule(b, op, ins, flags, size))
        assert len(outs) == len(op.outputs), f"{op.prim.name}: batching rule returned {len(outs)} outputs"
        for v, (new, batched) in zip(op.outputs, outs, strict=True):
            expected = (size,) + v.shape if batched else v.shape
            assert new.type == v.type.with_shape(expected), f"{op.prim.name}: batched {new.type} of {v.type}"
            env[v] = (new, batched)
    return [env[r] for r in fn.results]


# ---------------------------------------------------------------------------------------
# Helpers for rules


def _broadcast_batch(b: Builder, x: Value, size: int) -> Value:
    """``x`` repeated along a new leading example axis (a broadcast, never stored)."""
    return b.broadcast(x, (size,) + x.shape, tuple(range(1, x.type.ndim + 1)))


def _materialize(
    b: Builder, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> tuple[Value, ...]:
    """Every operand with the example axis: unbatched ones broadcast along it."""
    return tuple(x if bx else _broadcast_batch(b, x, size) for x, bx in zip(args, batched, strict=True))


def _move_axis(b: Builder, x: Value, src: int, dst: int) -> Value:
    if src == dst:
        return x
    order = [a for a in range(x.type.ndim) if a != src]
    order.insert(dst, src)
    return b.op(P.transpose, x, perm=tuple(order))


def _shift(axes: Sequence[int]) -> tuple[int, ...]:
    """Axes of an unbatched operand as axes of its batched version."""
    return tuple(a + 1 for a in axes)


def _all_batched(outs: Sequence[Value]) -> list[Batched]:
    return [(v, True) for v in outs]


def keep_unbatched(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    """An op whose operands are all unbatched (sources have none) computes the same for
    every example: it is kept once, unchanged."""
    if args != op.inputs:
        return [(v, False) for v in b.emit(op.prim, args, dict(op.attrs))]
    b.ops.append(op)
    return [(v, False) for v in op.outputs]


def _with_attrs(new_attrs: Callable[[dict, int], dict]) -> BatchRule:
    """The rule of a one-operand op for which the example axis is a new leading axis it
    leaves alone: the same primitive with attributes ``new_attrs(attrs, size)``."""

    def rule(
        b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
    ) -> Sequence[Batched]:
        return _all_batched(b.emit(op.prim, args, new_attrs(dict(op.attrs), size)))

    return rule


# ---------------------------------------------------------------------------------------
# Rules: elementwise ops need operands of one shape, so unbatched operands are broadcast.


def _elementwise_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    return _all_batched(b.emit(op.prim, _materialize(b, args, batched, size), dict(op.attrs)))


for _prim in P.UNARY_ELEMENTWISE + P.BINARY_ELEMENTWISE + (P.select, P.convert):
    BATCH_RULES[_prim] = _elementwise_rule
# Random bits: a batched key or counter is one more elementwise operand; the bits of an
# example depend only on its own key and counters, as in the unbatched function.
BATCH_RULES[P.threefry2x32] = _elementwise_rule


# ---------------------------------------------------------------------------------------
# Rules: layout and reductions (one operand, or all operands batched): the example axis
# is a new leading axis the op leaves alone.


def _concatenate_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    parts = _materialize(b, args, batched, size)
    return [(b.op(P.concatenate, *parts, axis=op.attrs["axis"] + 1), True)]


BATCH_RULES[P.concatenate] = _concatenate_rule
BATCH_RULES[P.broadcast_in_dim] = _with_attrs(
    lambda a, n: {"shape": (n,) + a["shape"], "dims": (0,) + _shift(a["dims"])}
)
BATCH_RULES[P.reshape] = _with_attrs(lambda a, n: {"shape": (n,) + a["shape"]})
BATCH_RULES[P.transpose] = _with_attrs(lambda a, n: {"perm": (0,) + _shift(a["perm"])})
BATCH_RULES[P.slice] = _with_attrs(
    lambda a, n: {"start": (0,) + a["start"], "limit": (n,) + a["limit"], "stride": (1,) + a["stride"]}
)
BATCH_RULES[P.pad] = _with_attrs(lambda a, n: {**a, "lo": (0,) + a["lo"], "hi": (0,) + a["hi"]})
for _prim in (P.reduce_sum, P.reduce_max, P.reduce_min, P.reduce_prod):
    BATCH_RULES[_prim] = _with_attrs(lambda a, n: {"axes": _shift(a["axes"])})
BATCH_RULES[P.argmax] = _with_attrs(lambda a, n: {"axis": a["axis"] + 1})
BATCH_RULES[P.argmin] = _with_attrs(lambda a, n: {"axis": a["axis"] + 1})
BATCH_RULES[P.cumsum] = _with_attrs(lambda a, n: {**a, "axis": a["axis"] + 1})
BATCH_RULES[P.cumprod] = _with_attrs(lambda a, n: {**a, "axis": a["axis"] + 1})


# ---------------------------------------------------------------------------------------
# Rules: dot_general. Its output axes are (batch, lhs free, rhs free).


def _dot_general_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    lhs, rhs = args
    (lc, rc), (lb, rb) = op.attrs["contract"], op.attrs["batch"]
    if all(batched):
        # Both operands per example: the example axis is one more batch dimension,
        # the first, so the output has it first too.
        out = b.op(
            P.dot_general,
            lhs,
            rhs,
            contract=(_shift(lc), _shift(rc)),
            batch=((0,) + _shift(lb), (0,) + _shift(rb)),
        )
        return [(out, True)]
    if batched[0]:
        # One operand per example: its example axis is a free axis (one larger matrix
        # product); as the lhs's first free axis it lands right after the batch axes.
        out = b.op(P.dot_general, lhs, rhs, contract=(_shift(lc), rc), batch=(_shift(lb), rb))
        at = len(lb)
    else:
        out = b.op(P.dot_general, lhs, rhs, contract=(lc, _shift(rc)), batch=(lb, _shift(rb)))
        at = len(lb) + lhs.type.ndim - len(lc) - len(lb)  # after the lhs free axes
    return [(_move_axis(b, out, at, 0), True)]


BATCH_RULES[P.dot_general] = _dot_general_rule


# ---------------------------------------------------------------------------------------
# Rules: indexing. gather and scatter_add need indices shaped like the data off the
# indexed axis.


def _gather_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    (x, idx), axis = args, op.attrs["axis"]
    if batched[0]:
        if not batched[1]:
            idx = _broadcast_batch(b, idx, size)
        return [(b.op(P.gather, x, idx, axis=axis + 1), True)]
    # Shared data, indices per example: the examples' indices are laid side by side
    # along the indexed axis, gathered from the data once, and split again.
    n, shape = idx.shape[1 + axis], idx.shape[1:]
    side_by_side = _move_axis(b, idx, 0, axis)
    side_by_side = b.reshape(side_by_side, shape[:axis] + (size * n,) + shape[axis + 1 :])
    out = b.op(P.gather, x, side_by_side, axis=axis)
    out = b.reshape(out, shape[:axis] + (size, n) + shape[axis + 1 :])
    return [(_move_axis(b, out, axis, 0), True)]


def _scatter_add_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    # Each example scatters into its own output, so both operands need the example axis.
    upd, idx = _materialize(b, args, batched, size)
    return [(b.op(P.scatter_add, upd, idx, axis=op.attrs["axis"] + 1, size=op.attrs["size"]), True)]


BATCH_RULES[P.gather] = _gather_rule
BATCH_RULES[P.scatter_add] = _scatter_add_rule


# ---------------------------------------------------------------------------------------
# Rules: convolution and pooling. Examples of a conv's lhs alone fold into its batch
# axis; examples of the kernel become feature groups (each example's kernel reads its
# own copy of the input channels), which is also how both batched operands go.


def _conv_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    lhs, rhs = args
    attrs = dict(op.attrs)
    if not batched[1]:
        n, *rest = lhs.shape[1:]
        out = b.op(P.conv, b.reshape(lhs, (size * n, *rest)), rhs, **attrs)
        return [(b.reshape(out, (size, n) + out.shape[1:]), True)]
    groups = attrs["groups"]
    if size == 0:  # no examples: no kernels to turn into groups
        spatial = {k: attrs[k] for k in ("strides", "lo", "hi", "lhs_dilation", "rhs_dilation")}
        shape = P.conv_output_shape(lhs.shape[1:] if batched[0] else lhs.shape, rhs.shape[1:], **spatial)
        return [(b.constant(0, lhs.dtype, (0, *shape)), True)]
    if not batched[0]:
        lhs = _broadcast_batch(b, lhs, size)
    _, n, c, *spatial = lhs.shape
    _, o, cg, *window = rhs.shape
    # lhs [B, N, C, *S] -> [N, B*C, *S]; rhs [B, O, Cg, *K] -> [B*O, Cg, *K], B*groups groups.
    x = b.reshape(_move_axis(b, lhs, 0, 1), (n, size * c, *spatial))
    w = b.reshape(rhs, (size * o, cg, *window))
    out = b.op(P.conv, x, w, **{**attrs, "groups": size * groups})
    out = b.reshape(out, (n, size, o) + out.shape[2:])
    return [(_move_axis(b, out, 1, 0), True)]


def _pool_attrs_batched(a: dict, n: int) -> dict:
    return {**a, "window": (1,) + a["window"], "strides": (1,) + a["strides"], "lo": (0,) + a["lo"],
            "hi": (0,) + a["hi"]}


def _pool_pair_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    # The positions depend on the first operand: each example needs both.
    x, t = _materialize(b, args, batched, size)
    return [(b.op(op.prim, x, t, **_pool_attrs_batched(dict(op.attrs), size)), True)]


BATCH_RULES[P.conv] = _conv_rule
BATCH_RULES[P.max_pool] = _with_attrs(_pool_attrs_batched)
BATCH_RULES[P.avg_pool] = _with_attrs(_pool_attrs_batched)
BATCH_RULES[P.avg_pool_scatter] = _with_attrs(
    lambda a, n: {**_pool_attrs_batched(a, n), "shape": (n,) + a["shape"]}
)
BATCH_RULES[P.max_pool_gather] = _pool_pair_rule
BATCH_RULES[P.max_pool_scatter] = _pool_pair_rule

# Sources have no operands: they are never batched (the driver keeps them unchanged).
BATCH_RULES[P.constant] = keep_unbatched
BATCH_RULES[P.iota] = keep_unbatched


# ---------------------------------------------------------------------------------------
# Rules: custom_vjp_call. Its three functions are batched on the same operands; an output
# is batched if ``fun`` or ``fwd`` makes it so.


def _batch_nested(
    fn: Function,
    in_batched: Sequence[bool],
    size: int,
    out_batched: Sequence[bool] | None = None,
    *,
    sum_unbatched: bool = False,
) -> tuple[Function, list[bool]]:
    """``fn`` batched with the example axis first on the ``in_batched`` params. With
    ``out_batched``, each result is made batched (broadcast) or unbatched as it says; a
    batched result asked to be unbatched is summed over the examples when
    ``sum_unbatched`` (cotangents of shared operands), else it is an error."""
    b = Builder()
    params = tuple(
        Value(p.type.with_shape((size,) + p.shape), p.name) if bp else p
        for p, bp in zip(fn.params, in_batched, strict=True)
    )
    outs = _batch_body(b, fn, list(zip(params, in_batched, strict=True)), size)
    if out_batched is None:
        return b.function(fn.name, params, tuple(v for v, _ in outs)), [bv for _, bv in outs]
    results = []
    for (v, bv), want in zip(outs, out_batched, strict=True):
        if want and not bv:
            v = _broadcast_batch(b, v, size)
        elif bv and not want:
            assert sum_unbatched, f"@{fn.name}: a result depends on the example"
            v = b.op(P.reduce_sum, v, axes=(0,))
        results.append(v)
    return b.function(fn.name, params, tuple(results)), list(out_batched)


def _custom_vjp_call_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    fun, fwd, bwd = op.attrs["fun"], op.attrs["fwd"], op.attrs["bwd"]
    n = len(fun.results)
    fun_b, fun_flags = _batch_nested(fun, batched, size)
    fwd_b, fwd_flags = _batch_nested(fwd, batched, size)
    out_flags = [x or y for x, y in zip(fun_flags, fwd_flags[:n], strict=True)]
    res_flags = fwd_flags[n:]
    if out_flags != fun_flags:
        fun_b, _ = _batch_nested(fun, batched, size, out_flags)
    if out_flags != fwd_flags[:n]:
        fwd_b, _ = _batch_nested(fwd, batched, size, out_flags + res_flags)
    bwd_b, _ = _batch_nested(bwd, res_flags + out_flags, size, batched, sum_unbatched=True)
    outs = b.emit(P.custom_vjp_call, args, {"fun": fun_b, "fwd": fwd_b, "bwd": bwd_b})
    return list(zip(outs, out_flags, strict=True))


BATCH_RULES[P.custom_vjp_call] = _custom_vjp_call_rule

# Collectives: psum, pmax and pbroadcast act elementwise across processes, so the
# example axis passes through; all_gather and psum_scatter shift their axis past it.
for _prim in (P.psum, P.pmax, P.pbroadcast):
    BATCH_RULES[_prim] = _with_attrs(lambda a, n: dict(a))
for _prim in (P.all_gather, P.psum_scatter):
    BATCH_RULES[_prim] = _with_attrs(lambda a, n: {**a, "axis": a["axis"] + 1})
BATCH_RULES[P.axis_index] = keep_unbatched


def _debug_callback_rule(
    b: Builder, op: Op, args: tuple[Value, ...], batched: tuple[bool, ...], size: int
) -> Sequence[Batched]:
    """Every value operand gets the example axis and ``batch`` the size: the callback runs
    once per example, as ``jax.debug.callback`` does (the token is never batched)."""
    k = 1 if op.attrs["token"] else 0
    values = _materialize(b, args[k:], batched[k:], size)
    attrs = {**op.attrs, "batch": (size, *op.attrs["batch"])}
    return [(v, False) for v in b.emit(op.prim, args[:k] + values, attrs)]


BATCH_RULES[P.debug_callback] = _debug_callback_rule

# Linear algebra works on the last two axes and is batched over leading ones: the example
# axis is one more leading axis (unbatched operands are broadcast along it).
for _prim in P.LINALG:
    BATCH_RULES[_prim] = _elementwise_rule

# The rules of scan, while_loop and cond live in their own module, which fills the table;
# that of checkpoint lives with its other transforms.
from fusejit.ir.transforms import batching_control  # noqa: E402, F401
from fusejit.ir.transforms import checkpoint as _checkpoint  # noqa: E402, F401
