"""Symbolic automatic differentiation: transforms ``Function -> Function``.

The derivative of a function is ordinary IR, printed, verified, optimized, fused and
compiled like any other function; nothing is recorded at run time.

``vjp_function(fn, wrt)``
    Reverse mode. Params: ``fn``'s params, then one cotangent per float result. Results:
    ``fn``'s results, then the cotangent of each ``wrt`` param.
``grad_function(fn, wrt, output=0)``
    Reverse mode seeded with the constant 1 for a scalar result: params are ``fn``'s.
``reverse_mode(...)``
    Both of the above, plus where the forward part ends and which forward values the
    backward part reads (``ReverseMode.saved``); ``ReverseMode.split()`` cuts it into a
    forward function (outputs + saved values) and a backward one (saved values +
    cotangents -> gradients), which is what ``fj.vjp`` runs.
``jvp_function(fn, wrt)``
    Forward mode. Params: ``fn``'s params, then one tangent per ``wrt`` param. Results:
    ``fn``'s results, then one tangent per result.

Design
------
*Reverse sweep.* Reverse mode is a direct sweep: the forward ops are copied unchanged,
then each op, last to first, maps the cotangents of its outputs to cotangents of its
inputs through its primitive's ``vjp`` rule. JAX instead derives reverse mode from forward
mode (linearize, partial-evaluate, transpose); that needs only jvp rules plus transposes
of linear primitives, but three passes and a notion of "linear" values. With a closed set
of ~50 primitives, writing the vjp rule directly is simpler to read and debug: one pass,
one rule per primitive, and the gradient IR looks like what one would write by hand. The
two rule tables are kept honest by gradcheck tests in both modes. Every rule is written
with ``Builder`` in terms of primitives, so the derivative IR is differentiable again
(``grad(grad(f))``, ``jvp(grad(f))``).

*Symbolic zeros.* A missing cotangent (or tangent) is ``None`` and means zero: values that
do not depend on the ``wrt`` params (integer values, constants, outputs of comparisons,
``stop_gradient``, ``floor``...) are never given one, and rules are not run for them, so
no zero buffer is built for a dropped cotangent. A zero is only materialized when a
requested gradient is entirely zero, as a broadcast scalar constant (cheap to fuse), or
where a rule needs a full operand (``select``, ``concatenate``, ``custom_vjp_call``).

*Saved values vs recomputation.* The backward ops read forward values directly: the
op's inputs, and its output where that gives the derivative most cheaply (``exp``,
``tanh``, ``logistic``, ``sqrt``, ``reduce_max``, ``div``); that costs no extra op and
reads a value the forward pass computed anyway. The set of forward values the backward
ops read is explicit (``ReverseMode.saved``); the only values recomputed rather than
saved are constants and iotas and broadcasts of them (``ReverseMode.recomputed``),
which cost nothing to rebuild. Whether to keep a cheap elementwise value live or
recompute it inside a backward kernel is a scheduling decision left to the fusion pass,
which sees forward and backward ops in one function and can duplicate cheap producers
into the kernels that read them.

*Ties.* ``max``/``min`` (elementwise) and ``reduce_max``/``reduce_min`` split the
cotangent evenly between tied operands, as JAX does (NumPy has no gradients; PyTorch's
``amax`` does the same). ``argmax``/``argmin`` have no gradient.

*Source lines.* Every backward op carries the source line (and ``fj.named_scope``) of
the forward op it came from, marked as derived (``SourceLoc.derived``: the text prints
``# bwd of train.py:12``, or ``jvp of`` for a forward-mode op); a seed carries the line
of the op that produced the differentiated result.

*custom_vjp_call.* In reverse mode its ``fwd`` is inlined into the forward sweep (its
extra results are the residuals) and its ``bwd`` into the backward sweep. In forward
mode the jvp of its ``fun`` is inlined. Integer inputs of any op get no gradient.

*Loops and branches* (``scan``, ``cond``, ``while_loop``) also change their forward
sweep (``FORWARD_RULES``: a scan stacks per-step residuals); their rules and design are
in ``autodiff_control``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Op, SourceLoc, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.transforms.dce import eliminate_dead_code

Ct = Value | None  # a cotangent or tangent; None is a symbolic zero
VjpRule = Callable[[Builder, Op, tuple[Ct, ...], tuple[bool, ...]], Sequence[Ct]]
JvpRule = Callable[[Builder, Op, tuple[Ct, ...]], Sequence[Ct]]

# The rule tables, keyed by primitive: each rule is entered below, next to its definition.
VJP_RULES: dict[P.Primitive, VjpRule] = {}
JVP_RULES: dict[P.Primitive, JvpRule] = {}


# Primitives whose forward computation changes in reverse mode: the rule emits the
# forward sweep's version of the op and returns (its outputs, residuals); the op the vjp
# rule then sees has the residuals after its operands (custom_vjp_call, scan, cond).
ForwardRule = Callable[
    [Builder, Op, tuple[Value, ...], tuple[bool, ...]], tuple[tuple[Value, ...], tuple[Value, ...]]
]
FORWARD_RULES: dict[P.Primitive, ForwardRule] = {}


def _define(prim: P.Primitive, vjp: VjpRule, jvp: JvpRule) -> None:
    VJP_RULES[prim], JVP_RULES[prim] = vjp, jvp


class MissingRuleError(NotImplementedError):
    """A primitive on the differentiated path has no vjp/jvp rule."""


def _missing(kind: str, op: Op) -> MissingRuleError:
    where = f" (at {op.loc})" if op.loc else ""
    return MissingRuleError(
        f"primitive {op.prim.name!r} has no {kind} rule{where}: it cannot be differentiated"
    )


def _float_params(fn: Function) -> tuple[int, ...]:
    return tuple(i for i, p in enumerate(fn.params) if p.dtype.is_float)


def _check_wrt(fn: Function, wrt: Sequence[int] | None) -> tuple[int, ...]:
    wrt = _float_params(fn) if wrt is None else tuple(wrt)
    for i in wrt:
        if not 0 <= i < len(fn.params):
            raise IndexError(f"@{fn.name} has {len(fn.params)} parameters; cannot differentiate w.r.t. {i}")
        p = fn.params[i]
        if not p.dtype.is_float:
            raise TypeError(
                f"@{fn.name}: parameter {i} ({p.name or 'unnamed'}: {p.type}) is not a float; "
                "only float values can be differentiated"
            )
    return wrt


# ---------------------------------------------------------------------------------------
# Reverse mode


@dataclass(frozen=True, slots=True)
class ReverseMode:
    """A reverse-mode derivative in one function, and where its parts are.

    ``function``: params are the primal params then the cotangent params; results are
    the primal results (when kept) then one gradient per ``wrt`` param. Its first
    ``num_forward_ops`` ops are the forward computation; the rest are backward ops.
    ``saved`` are the forward values (primal params or forward op outputs) that backward
    ops read: what a split forward pass must keep for the backward pass. Forward
    constants and iotas (and broadcasts and reshapes of them) that the backward ops read
    are not saved but ``recomputed``: they cost nothing to rebuild and would otherwise
    occupy memory between the passes.
    """

    function: Function
    num_primal_params: int
    num_outputs: int
    num_forward_ops: int
    saved: tuple[Value, ...]
    recomputed: tuple[Op, ...] = ()

    @property
    def backward_ops(self) -> tuple[Op, ...]:
        return self.function.ops[self.num_forward_ops :]

    def split(self) -> tuple[Function, Function]:
        """(forward, backward): ``forward(primals) -> outputs + saved`` and
        ``backward(saved + cotangents) -> gradients``."""
        fn, nf = self.function, self.num_forward_ops
        primals = fn.params[: self.num_primal_params]
        cts = fn.params[self.num_primal_params :]
        outputs = fn.results[: self.num_outputs]
        forward = Function(f"{fn.name}_fwd", primals, fn.ops[:nf], outputs + self.saved)
        backward = Function(
            f"{fn.name}_bwd", self.saved + cts, self.recomputed + fn.ops[nf:], fn.results[self.num_outputs :]
        )
        return forward, backward


def reverse_mode(
    fn: Function,
    wrt: Sequence[int] | None = None,
    *,
    cotangents: Sequence[int] | None = None,
    unit_seed: int | None = None,
    keep_outputs: bool = True,
    name: str | None = None,
) -> ReverseMode:
    """Differentiates ``fn`` in reverse mode.

    ``wrt``: indices of the float params to differentiate (default: every float param).
    ``cotangents``: indices of results that get a cotangent param (default: every float
    result, unless ``unit_seed`` is given; then none). ``unit_seed``: index of a float
    scalar result seeded with the constant 1. Results neither seeded nor given a cotangent
    have a zero cotangent. Raises ``TypeError`` for a non-float ``wrt`` or seed and
    ``MissingRuleError`` for a primitive without a vjp rule on the differentiated path.
    """
    wrt = _check_wrt(fn, wrt)
    if cotangents is None:
        cotangents = (
            () if unit_seed is not None else tuple(i for i, r in enumerate(fn.results) if r.dtype.is_float)
        )
    for i in cotangents:
        if not fn.results[i].dtype.is_float:
            raise TypeError(
                f"@{fn.name}: result {i} ({fn.results[i].type}) is not a float; it has no cotangent"
            )
    if unit_seed is not None:
        r = fn.results[unit_seed]
        if r.shape != () or not r.dtype.is_float:
            raise TypeError(
                f"@{fn.name}: result {unit_seed} has type {r.type} (shape {r.shape}); the gradient "
                "needs a float scalar result (use vjp for other outputs)"
            )

    b = Builder()
    rename: dict[Value, Value] = {}  # values of fn -> values of the new function (custom calls)
    active: set[Value] = {fn.params[i] for i in wrt}
    tape: list[Op] = []  # the ops to transpose, in forward order, in terms of new values
    for op in fn.ops:
        inputs = tuple(rename.get(v, v) for v in op.inputs)
        is_active = any(v in active for v in inputs) and VJP_RULES.get(op.prim) is not zero_vjp
        if is_active and op.prim in FORWARD_RULES:
            with b.at(op.loc):
                outputs, residuals = FORWARD_RULES[op.prim](b, op, inputs, tuple(v in active for v in inputs))
            rename.update(zip(op.outputs, outputs, strict=True))
            tape_op = Op(op.prim, inputs + residuals, outputs, op.attrs, op.loc)
        else:
            tape_op = op if inputs == op.inputs else Op(op.prim, inputs, op.outputs, op.attrs, op.loc)
            b.ops.append(tape_op)
        if is_active:
            active.update(v for v in tape_op.outputs if v.dtype.is_float)
            tape.append(tape_op)
    forward_ops = list(b.ops)
    results = tuple(rename.get(r, r) for r in fn.results)

    ct: dict[Value, Value] = {}

    def accumulate(v: Value, c: Value) -> None:
        assert c.type == v.type, f"cotangent {c.type} of a {v.type} value"
        ct[v] = c if v not in ct else b.op(P.add, ct[v], c)

    ct_params: list[Value] = []
    producers = {v: op for op in forward_ops for v in op.outputs}
    for i in cotangents:
        r = results[i]
        param = Value(r.type, f"ct_{i}")
        ct_params.append(param)
        if r in active:
            with b.at(_loc_of(producers.get(r))):
                accumulate(r, param)
    if unit_seed is not None:
        r = results[unit_seed]
        if r in active:
            with b.at(_loc_of(producers.get(r))):
                accumulate(r, b.constant(1, r.dtype))

    for op in reversed(tape):
        cts = tuple(ct.pop(v, None) for v in op.outputs)
        if all(c is None for c in cts):
            continue
        needs = tuple(v in active for v in op.inputs)
        rule = VJP_RULES.get(op.prim)
        if rule is None:
            raise _missing("vjp", op)
        with b.at(op.loc):
            in_cts = tuple(rule(b, op, cts, needs))
            assert len(in_cts) == len(op.inputs), (
                f"{op.prim.name}: vjp rule returned {len(in_cts)} cotangents"
            )
            for v, c, need in zip(op.inputs, in_cts, needs, strict=True):
                if c is not None and need:
                    accumulate(v, c)

    grads = []
    for i in wrt:
        p = fn.params[i]
        grads.append(ct[p] if p in ct else b.full_like(0, p))

    kept = results if keep_outputs else ()
    out = b.function(name or f"{fn.name}_vjp", fn.params + tuple(ct_params), kept + tuple(grads))
    out = eliminate_dead_code(out)
    forward_ids = {id(op) for op in forward_ops}
    num_forward = sum(1 for op in out.ops if id(op) in forward_ids)
    assert all(id(op) in forward_ids for op in out.ops[:num_forward])
    out = out.replace(ops=out.ops[:num_forward] + _derived(out.ops[num_forward:], "bwd"))
    forward_defined = set(fn.params) | {v for op in out.ops[:num_forward] for v in op.outputs}
    # Constants, iotas and broadcasts/reshapes of them are rebuilt, not saved.
    cheap: dict[Value, Op] = {}
    for op in out.ops[:num_forward]:
        if op.prim.kind is P.OpKind.SOURCE or (
            op.prim in (P.broadcast_in_dim, P.reshape) and all(v in cheap for v in op.inputs)
        ):
            cheap.update((v, op) for v in op.outputs)
    read = [v for op in out.ops[num_forward:] for v in op.inputs] + list(out.results[len(kept) :])
    saved: dict[Value, None] = {}
    rebuilt: set[int] = set()
    pending = []
    for v in read:
        if v in cheap:
            pending.append(cheap[v])
        elif v in forward_defined:
            saved.setdefault(v)
    while pending:
        op = pending.pop()
        if id(op) not in rebuilt:
            rebuilt.add(id(op))
            pending.extend(cheap[v] for v in op.inputs)
    recomputed = tuple(op for op in out.ops[:num_forward] if id(op) in rebuilt)
    return ReverseMode(out, len(fn.params), len(kept), num_forward, tuple(saved), recomputed)


def _loc_of(op: Op | None) -> SourceLoc | None:
    return op.loc if op is not None else None


def _derived(ops: Sequence[Op], how: str) -> tuple[Op, ...]:
    """``ops`` with their source locations marked as derived (``bwd of``, ``jvp of``)."""
    return tuple(op if op.loc is None else Op(op.prim, op.inputs, op.outputs, op.attrs, op.loc.derive(how))
                 for op in ops)


def vjp_function(fn: Function, wrt: Sequence[int] | None = None, *, name: str | None = None) -> Function:
    """``fn``'s vector-Jacobian product as one function.

    Params: ``fn``'s params, then one cotangent per float result (same type). Results:
    ``fn``'s results, then the cotangent of each ``wrt`` param (default: every float
    param), of the param's type.
    """
    return reverse_mode(fn, wrt, name=name).function


def grad_function(
    fn: Function,
    wrt: Sequence[int] | None = None,
    *,
    output: int = 0,
    keep_outputs: bool = True,
    name: str | None = None,
) -> Function:
    """The gradient of the scalar result ``output`` of ``fn``, as one function.

    Params: ``fn``'s params (the seed 1 is a constant in the IR). Results: ``fn``'s
    results (when ``keep_outputs``), then one gradient per ``wrt`` param.
    """
    return reverse_mode(
        fn, wrt, unit_seed=output, keep_outputs=keep_outputs, name=name or f"{fn.name}_grad"
    ).function


# ---------------------------------------------------------------------------------------
# Forward mode


def jvp_function(fn: Function, wrt: Sequence[int] | None = None, *, name: str | None = None) -> Function:
    """``fn``'s Jacobian-vector product as one function.

    Params: ``fn``'s params, then one tangent per ``wrt`` param (default: every float
    param), of the param's type. Results: ``fn``'s results, then one tangent per result
    (a broadcast zero for results that do not depend on the tangents, including every
    integer or bool result).
    """
    wrt = _check_wrt(fn, wrt)
    b = Builder()
    tangent_params = tuple(
        Value(fn.params[i].type, f"t_{fn.params[i].name}" if fn.params[i].name else None) for i in wrt
    )
    tan: dict[Value, Value] = {fn.params[i]: t for i, t in zip(wrt, tangent_params, strict=True)}
    for op in fn.ops:
        b.ops.append(op)
        ts = tuple(tan.get(v) for v in op.inputs)
        if all(t is None for t in ts) or JVP_RULES.get(op.prim) is zero_jvp:
            continue
        rule = JVP_RULES.get(op.prim)
        if rule is None:
            raise _missing("jvp", op)
        with b.at(op.loc):
            out_ts = tuple(rule(b, op, ts))
        assert len(out_ts) == len(op.outputs), f"{op.prim.name}: jvp rule returned {len(out_ts)} tangents"
        for v, t in zip(op.outputs, out_ts, strict=True):
            if t is not None and v.dtype.is_float:
                assert t.type == v.type, f"{op.prim.name}: tangent {t.type} of a {v.type} value"
                tan[v] = t
    out_tangents = tuple(tan[r] if r in tan else b.full_like(0, r) for r in fn.results)
    primal = {id(op) for op in fn.ops}
    ops = tuple(op if id(op) in primal else _derived((op,), "jvp")[0] for op in b.ops)
    out = Function(name or f"{fn.name}_jvp", fn.params + tangent_params, ops, fn.results + out_tangents)
    return eliminate_dead_code(out)


# ---------------------------------------------------------------------------------------
# Helpers for rules: short names for the primitives, and None-aware sums.


def _c(b: Builder, value: float, like: Value) -> Value:
    return b.full_like(value, like)


def _add(b: Builder, x: Value, y: Value) -> Value:
    return b.op(P.add, x, y)


def _sub(b: Builder, x: Value, y: Value) -> Value:
    return b.op(P.sub, x, y)


def _mul(b: Builder, x: Value, y: Value) -> Value:
    return b.op(P.mul, x, y)


def _div(b: Builder, x: Value, y: Value) -> Value:
    return b.op(P.div, x, y)


def _neg(b: Builder, x: Value) -> Value:
    return b.op(P.neg, x)


def _add_any(b: Builder, x: Ct, y: Ct) -> Ct:
    if x is None:
        return y
    return x if y is None else _add(b, x, y)


def _or_zeros(b: Builder, t: Ct, like: Value) -> Value:
    return t if t is not None else b.full_like(0, like)


def _keep_axes(ndim: int, axes: Sequence[int]) -> tuple[int, ...]:
    return tuple(i for i in range(ndim) if i not in axes)


# ---------------------------------------------------------------------------------------
# Rules: zero derivative


def zero_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    """Piecewise-constant or integer-valued ops: the cotangent of every input is zero."""
    return (None,) * len(op.inputs)


def zero_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    return (None,) * len(op.outputs)


for _prim in (
    P.sign, P.floor, P.ceil, P.round, P.floor_divide, P.stop_gradient, P.logical_not,
    P.logical_and, P.logical_or, P.shift_left, P.shift_right_arithmetic,
    P.eq, P.ne, P.lt, P.le, P.gt, P.ge, P.argmax, P.argmin, P.iota, P.constant,
):  # fmt: skip
    _define(_prim, zero_vjp, zero_jvp)
_define(P.threefry2x32, zero_vjp, zero_jvp)  # integer random bits
_define(P.debug_callback, zero_vjp, zero_jvp)  # a run-time callback (fj.debug) is not differentiated


# ---------------------------------------------------------------------------------------
# Rules: unary elementwise. ``scale(b, x, z, g)`` multiplies ``g`` by dz/dx at ``x``
# (``z`` is the op's output); a pointwise derivative is its own transpose, so one
# function gives both the vjp (g a cotangent) and the jvp (g a tangent).

UnaryScale = Callable[[Builder, Value, Value, Value], Value]

_UNARY_SCALES: dict[P.Primitive, UnaryScale] = {
    P.neg: lambda b, x, z, g: _neg(b, g),
    P.abs: lambda b, x, z, g: _mul(b, g, b.op(P.sign, x)),
    P.exp: lambda b, x, z, g: _mul(b, g, z),
    P.log: lambda b, x, z, g: _div(b, g, x),
    P.log1p: lambda b, x, z, g: _div(b, g, _add(b, x, _c(b, 1, x))),
    P.expm1: lambda b, x, z, g: _mul(b, g, _add(b, z, _c(b, 1, z))),
    P.sqrt: lambda b, x, z, g: _div(b, g, _mul(b, z, _c(b, 2, z))),
    # d/dx x^-1/2 = -1/2 x^-3/2 = -1/2 * z / x
    P.rsqrt: lambda b, x, z, g: _mul(b, _mul(b, g, _c(b, -0.5, z)), _div(b, z, x)),
    P.tanh: lambda b, x, z, g: _mul(b, g, _sub(b, _c(b, 1, z), _mul(b, z, z))),
    P.logistic: lambda b, x, z, g: _mul(b, g, _mul(b, z, _sub(b, _c(b, 1, z), z))),
    P.sin: lambda b, x, z, g: _mul(b, g, b.op(P.cos, x)),
    P.cos: lambda b, x, z, g: _neg(b, _mul(b, g, b.op(P.sin, x))),
}


def _unary_rules(scale: UnaryScale) -> tuple[VjpRule, JvpRule]:
    def vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
        (g,) = cts
        return (scale(b, op.inputs[0], op.output, g),) if g is not None else (None,)

    def jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
        (t,) = tangents
        return (scale(b, op.inputs[0], op.output, t),) if t is not None else (None,)

    return vjp, jvp


for _prim, _scale in _UNARY_SCALES.items():
    _define(_prim, *_unary_rules(_scale))


def _convert_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (x,), (g,) = op.inputs, cts
    if g is None or not (x.dtype.is_float and op.output.dtype.is_float):
        return (None,)  # to or from an integer type: no gradient
    return (b.convert(g, x.dtype),)


def _convert_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (t,) = tangents
    if t is None or not op.output.dtype.is_float:
        return (None,)
    return (b.convert(t, op.output.dtype),)


_define(P.convert, _convert_vjp, _convert_jvp)


# ---------------------------------------------------------------------------------------
# Rules: binary elementwise


def _add_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    return (g, g)


def _add_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    return (_add_any(b, *tangents),)


def _sub_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    return (g, _neg(b, g) if needs[1] else None)


def _sub_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    tx, ty = tangents
    if ty is None:
        return (tx,)
    return (_neg(b, ty) if tx is None else _sub(b, tx, ty),)


def _mul_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), (x, y) = cts, op.inputs
    return (_mul(b, g, y) if needs[0] else None, _mul(b, g, x) if needs[1] else None)


def _mul_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (tx, ty), (x, y) = tangents, op.inputs
    return (
        _add_any(b, _mul(b, tx, y) if tx is not None else None, _mul(b, x, ty) if ty is not None else None),
    )


def _div_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    # z = x / y: dz/dx = 1 / y, dz/dy = -x / y^2 = -z / y
    (g,), (_, y), z = cts, op.inputs, op.output
    gx = _div(b, g, y)
    return (gx if needs[0] else None, _neg(b, _mul(b, gx, z)) if needs[1] else None)


def _div_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    # dz = (dx - z dy) / y
    (tx, ty), (_, y), z = tangents, op.inputs, op.output
    num = tx
    if ty is not None:
        zty = _mul(b, z, ty)
        num = _neg(b, zty) if tx is None else _sub(b, tx, zty)
    return (_div(b, num, y),)


def _pow_dx(b: Builder, x: Value, y: Value) -> Value:
    """dz/dx of z = x^y: y x^(y-1), and 0 where y == 0 (not 0 * inf at x = 0). The branch
    not taken computes x^0 there, so that its own derivative (grad of grad) is finite too."""
    zero = b.op(P.eq, y, _c(b, 0, y))
    safe = b.op(P.select, zero, _c(b, 1, y), y)
    d = _mul(b, y, b.op(P.pow, x, _sub(b, safe, _c(b, 1, y))))
    return b.op(P.select, zero, _c(b, 0, y), d)


def _pow_dy(b: Builder, x: Value, z: Value) -> Value:
    """dz/dy of z = x^y: z log(x), with log(1) where x == 0 (so 0^y has dz/dy = 0)."""
    safe = b.op(P.select, b.op(P.eq, x, _c(b, 0, x)), _c(b, 1, x), x)
    return _mul(b, z, b.op(P.log, safe))


def _pow_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), (x, y), z = cts, op.inputs, op.output
    return (
        _mul(b, g, _pow_dx(b, x, y)) if needs[0] else None,
        _mul(b, g, _pow_dy(b, x, z)) if needs[1] else None,
    )


def _pow_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (tx, ty), (x, y), z = tangents, op.inputs, op.output
    return (
        _add_any(
            b,
            _mul(b, tx, _pow_dx(b, x, y)) if tx is not None else None,
            _mul(b, ty, _pow_dy(b, x, z)) if ty is not None else None,
        ),
    )


def _extremum_share(b: Builder, g: Value, mine: Value, other: Value, z: Value) -> Value:
    """The part of ``g`` that flows to operand ``mine`` of z = max/min(mine, other):
    all of it where ``mine`` alone is the result, half on a tie, none otherwise."""
    zeros = _c(b, 0, g)
    tie_share = b.op(P.select, b.op(P.eq, mine, other), _mul(b, g, _c(b, 0.5, g)), g)
    return b.op(P.select, b.op(P.eq, mine, z), tie_share, zeros)


def _extremum_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), (x, y), z = cts, op.inputs, op.output
    return (
        _extremum_share(b, g, x, y, z) if needs[0] else None,
        _extremum_share(b, g, y, x, z) if needs[1] else None,
    )


def _extremum_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (tx, ty), (x, y), z = tangents, op.inputs, op.output
    return (
        _add_any(
            b,
            _extremum_share(b, tx, x, y, z) if tx is not None else None,
            _extremum_share(b, ty, y, x, z) if ty is not None else None,
        ),
    )


def _select_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), (pred, _, _) = cts, op.inputs
    zeros = _c(b, 0, g) if needs[1] or needs[2] else None
    return (
        None,
        b.op(P.select, pred, g, zeros) if needs[1] else None,
        b.op(P.select, pred, zeros, g) if needs[2] else None,
    )


def _remainder_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    # z = x - floor(x / y) y: dz/dx = 1, dz/dy = -floor(x / y) (the floor is piecewise constant)
    (g,), (x, y) = cts, op.inputs
    return (g if needs[0] else None, _neg(b, _mul(b, g, b.op(P.floor_divide, x, y))) if needs[1] else None)


def _remainder_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (tx, ty), (x, y) = tangents, op.inputs
    dy = _neg(b, _mul(b, ty, b.op(P.floor_divide, x, y))) if ty is not None else None
    return (_add_any(b, tx, dy),)


def _select_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (_, ta, tb), (pred, a, _) = tangents, op.inputs
    if ta is None and tb is None:
        return (None,)
    return (b.op(P.select, pred, _or_zeros(b, ta, a), _or_zeros(b, tb, a)),)


_define(P.add, _add_vjp, _add_jvp)
_define(P.sub, _sub_vjp, _sub_jvp)
_define(P.mul, _mul_vjp, _mul_jvp)
_define(P.div, _div_vjp, _div_jvp)
_define(P.pow, _pow_vjp, _pow_jvp)
_define(P.max, _extremum_vjp, _extremum_jvp)
_define(P.min, _extremum_vjp, _extremum_jvp)
_define(P.select, _select_vjp, _select_jvp)
_define(P.remainder, _remainder_vjp, _remainder_jvp)


def _atan2_scales(b: Builder, op: Op) -> tuple[Value, Value]:
    """For z = atan2(y, x): (dz/dy, dz/dx) = (x, -y) / (x^2 + y^2)."""
    y, x = op.inputs
    r2 = _add(b, _mul(b, x, x), _mul(b, y, y))
    return _div(b, x, r2), _neg(b, _div(b, y, r2))


def _atan2_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    dy, dx = _atan2_scales(b, op)
    return (_mul(b, g, dy) if needs[0] else None, _mul(b, g, dx) if needs[1] else None)


def _atan2_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    ty, tx = tangents
    dy, dx = _atan2_scales(b, op)
    return (_add_any(b, _mul(b, ty, dy) if ty is not None else None, _mul(b, tx, dx) if tx is not None else None),)


_define(P.atan2, _atan2_vjp, _atan2_jvp)


# ---------------------------------------------------------------------------------------
# Rules: layout. Every layout op is linear, so its jvp applies the op to the tangent.


def _linear_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    """For ops linear in their first input (the others being indices): the op itself."""
    t = tangents[0]
    if t is None:
        return (None,)
    return b.emit(op.prim, (t,) + op.inputs[1:], dict(op.attrs))


def _broadcast_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    # Sum over the axes broadcasting added or stretched (size 1 -> n), then restore x's
    # size-1 axes with a reshape.
    (x,), (g,) = op.inputs, cts
    shape, dims = op.attrs["shape"], op.attrs["dims"]
    summed = [d for d in range(len(shape)) if d not in dims]
    summed += [d for i, d in enumerate(dims) if x.shape[i] == 1 and shape[d] != 1]
    if summed:
        g = b.op(P.reduce_sum, g, axes=tuple(sorted(summed)))
    return (b.reshape(g, x.shape),)


def _reshape_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    return (b.reshape(cts[0], op.inputs[0].shape),)


def _transpose_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    perm = op.attrs["perm"]
    inverse = tuple(sorted(range(len(perm)), key=perm.__getitem__))
    return (b.op(P.transpose, cts[0], perm=inverse),)


def _zero_pad(b: Builder, g: Value, lo: Sequence[int], hi: Sequence[int]) -> Value:
    if not any(lo) and not any(hi):
        return g
    return b.op(P.pad, g, lo=tuple(lo), hi=tuple(hi), value=P.constant_value(0, g.dtype))


def _slice_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    # The transpose of a slice puts g back in place with zeros around it: a pad. A stride
    # s > 1 along an axis first dilates g there (s - 1 zeros after each element) with
    # reshape -> pad on a new size-1 axis -> reshape, trimmed with a slice if the last
    # element's zeros would run past the operand's end.
    (x,), (g,) = op.inputs, cts
    start, stride = op.attrs["start"], op.attrs["stride"]
    if g.type.size == 0:
        return (None,)
    for ax, s in enumerate(stride):
        if s == 1:
            continue
        m = g.shape[ax]
        split = g.shape[: ax + 1] + (1,) + g.shape[ax + 1 :]
        hi = [0] * len(split)
        hi[ax + 1] = s - 1
        g = _zero_pad(b, b.reshape(g, split), [0] * len(split), hi)
        g = b.reshape(g, g.shape[:ax] + (m * s,) + g.shape[ax + 2 :])
        if start[ax] + m * s > x.shape[ax]:
            limit = list(g.shape)
            limit[ax] = (m - 1) * s + 1
            g = b.op(P.slice, g, start=(0,) * g.type.ndim, limit=tuple(limit), stride=(1,) * g.type.ndim)
    hi = [n - s - k for n, s, k in zip(x.shape, start, g.shape, strict=True)]
    return (_zero_pad(b, g, start, hi),)


def _pad_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (x,), (g,) = op.inputs, cts
    lo = op.attrs["lo"]
    if not any(lo) and not any(op.attrs["hi"]):
        return (g,)
    limit = tuple(a + n for a, n in zip(lo, x.shape, strict=True))
    return (b.op(P.slice, g, start=lo, limit=limit, stride=(1,) * len(lo)),)


def _pad_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (t,) = tangents
    if t is None:
        return (None,)
    return (_zero_pad(b, t, op.attrs["lo"], op.attrs["hi"]),)


def _concatenate_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), axis = cts, op.attrs["axis"]
    out: list[Ct] = []
    offset = 0
    for x, need in zip(op.inputs, needs, strict=True):
        n = x.shape[axis]
        if need:
            start = [0] * g.type.ndim
            limit = list(g.shape)
            start[axis], limit[axis] = offset, offset + n
            out.append(b.op(P.slice, g, start=tuple(start), limit=tuple(limit), stride=(1,) * g.type.ndim))
        else:
            out.append(None)
        offset += n
    return out


def _concatenate_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    if all(t is None for t in tangents):
        return (None,)
    parts = tuple(_or_zeros(b, t, x) for t, x in zip(tangents, op.inputs, strict=True))
    return (b.op(P.concatenate, *parts, axis=op.attrs["axis"]),)


_define(P.broadcast_in_dim, _broadcast_vjp, _linear_jvp)
_define(P.reshape, _reshape_vjp, _linear_jvp)
_define(P.transpose, _transpose_vjp, _linear_jvp)
_define(P.slice, _slice_vjp, _linear_jvp)
_define(P.pad, _pad_vjp, _pad_jvp)
_define(P.concatenate, _concatenate_vjp, _concatenate_jvp)


# ---------------------------------------------------------------------------------------
# Rules: reductions


def _reduce_sum_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (x,), (g,) = op.inputs, cts
    return (b.broadcast(g, x.shape, _keep_axes(x.type.ndim, op.attrs["axes"])),)


def _chosen(b: Builder, op: Op) -> tuple[Value, Value]:
    """For z = reduce_max/min(x): (1.0 where x attains z, else 0.0; how many attain it)."""
    (x,), z, axes = op.inputs, op.output, op.attrs["axes"]
    kept = _keep_axes(x.type.ndim, axes)
    mask = b.convert(b.op(P.eq, x, b.broadcast(z, x.shape, kept)), x.dtype)
    return mask, b.op(P.reduce_sum, mask, axes=axes)


def _reduce_chooser_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (x,), (g,) = op.inputs, cts
    mask, count = _chosen(b, op)
    share = b.broadcast(_div(b, g, count), x.shape, _keep_axes(x.type.ndim, op.attrs["axes"]))
    return (_mul(b, mask, share),)


def _reduce_chooser_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (t,) = tangents
    if t is None:
        return (None,)
    mask, count = _chosen(b, op)
    return (_div(b, b.op(P.reduce_sum, _mul(b, t, mask), axes=op.attrs["axes"]), count),)


_define(P.reduce_sum, _reduce_sum_vjp, _linear_jvp)
_define(P.reduce_max, _reduce_chooser_vjp, _reduce_chooser_jvp)
_define(P.reduce_min, _reduce_chooser_vjp, _reduce_chooser_jvp)


# ---------------------------------------------------------------------------------------
# Rules: dot_general. Output axes are (batch, lhs free, rhs free). Each operand's
# cotangent is a dot_general of g with the other operand over the other operand's free
# axes; its result comes out as (batch, own free, own contracted) or (batch, own
# contracted, own free) and is transposed back to the operand's axis order.


def _dot_parts(op: Op) -> tuple[tuple[int, ...], ...]:
    lhs, rhs = op.inputs
    (lc, rc), (lb, rb) = op.attrs["contract"], op.attrs["batch"]
    lfree = tuple(i for i in range(lhs.type.ndim) if i not in lc + lb)
    rfree = tuple(i for i in range(rhs.type.ndim) if i not in rc + rb)
    return lc, rc, lb, rb, lfree, rfree


def _transpose_to(b: Builder, d: Value, position: dict[int, int]) -> Value:
    perm = tuple(position[a] for a in range(len(position)))
    return d if perm == tuple(range(len(perm))) else b.op(P.transpose, d, perm=perm)


def _dot_general_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), (lhs, rhs) = cts, op.inputs
    lc, rc, lb, rb, lfree, rfree = _dot_parts(op)
    nb, nlf = len(lb), len(lfree)
    g_batch = tuple(range(nb))
    g_lfree = tuple(range(nb, nb + nlf))
    g_rfree = tuple(range(nb + nlf, nb + nlf + len(rfree)))
    d_lhs = d_rhs = None
    if needs[0]:
        # (batch, lhs free, rhs contracted in rhs axis order)
        d = b.op(P.dot_general, g, rhs, contract=(g_rfree, rfree), batch=(g_batch, rb))
        rc_order = sorted(rc)
        position = {a: i for i, a in enumerate(lb)}
        position.update({a: nb + j for j, a in enumerate(lfree)})
        position.update({a: nb + nlf + rc_order.index(rc[k]) for k, a in enumerate(lc)})
        d_lhs = _transpose_to(b, d, position)
    if needs[1]:
        # (batch, lhs contracted in lhs axis order, rhs free)
        d = b.op(P.dot_general, lhs, g, contract=(lfree, g_lfree), batch=(lb, g_batch))
        lc_order = sorted(lc)
        position = {a: i for i, a in enumerate(rb)}
        position.update({a: nb + lc_order.index(lc[k]) for k, a in enumerate(rc)})
        position.update({a: nb + len(lc) + j for j, a in enumerate(rfree)})
        d_rhs = _transpose_to(b, d, position)
    return (d_lhs, d_rhs)


def _bilinear_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    """For ops linear in each of two operands (dot_general, conv): op(t1, y) + op(x, t2)."""
    (tl, tr), (lhs, rhs) = tangents, op.inputs
    attrs = dict(op.attrs)
    return (
        _add_any(
            b,
            b.op(op.prim, tl, rhs, **attrs) if tl is not None else None,
            b.op(op.prim, lhs, tr, **attrs) if tr is not None else None,
        ),
    )


_define(P.dot_general, _dot_general_vjp, _bilinear_jvp)


# ---------------------------------------------------------------------------------------
# Rules: indexing. gather and scatter_add are each other's transposes (both normalize
# indices the same way: negative from the end, clamped into range).


def _gather_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), (x, idx), axis = cts, op.inputs, op.attrs["axis"]
    return (b.op(P.scatter_add, g, idx, axis=axis, size=x.shape[axis]), None)


def _scatter_add_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), (_, idx) = cts, op.inputs
    return (b.op(P.gather, g, idx, axis=op.attrs["axis"]), None)


_define(P.gather, _gather_vjp, _linear_jvp)
_define(P.scatter_add, _scatter_add_vjp, _linear_jvp)


def _cumsum_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    """Each input element adds into every later running sum: the cotangent is the running
    sum of the output cotangents from the other end."""
    (g,) = cts
    return (b.op(P.cumsum, g, axis=op.attrs["axis"], reverse=not op.attrs["reverse"]),)


_define(P.cumsum, _cumsum_vjp, _linear_jvp)


# ---------------------------------------------------------------------------------------
# Rules: products. No rule divides by the operand: zeros get their exact derivatives
# (the product of the other factors), and the rules are differentiable again.


def _shifted_scan(b: Builder, x: Value, axis: int, reverse: bool) -> Value:
    """The exclusive running product along ``axis``: the product of the elements before
    each one (after it, when ``reverse``), 1 for the first."""
    n, nd = x.shape[axis], x.type.ndim
    inclusive = b.op(P.cumprod, x, axis=axis, reverse=reverse)
    one = P.constant_value(1, x.dtype)
    at = tuple(1 if i == axis else 0 for i in range(nd))
    none = (0,) * nd
    padded = b.op(P.pad, inclusive, lo=none if reverse else at, hi=at if reverse else none, value=one)
    start = at if reverse else none
    limit = tuple(n + 1 if reverse and i == axis else (n if i == axis else x.shape[i]) for i in range(nd))
    return b.op(P.slice, padded, start=start, limit=limit, stride=(1,) * nd)


def _others_product(b: Builder, op: Op) -> Value:
    """For z = reduce_prod(x, axes): the product of the other elements of each element's
    reduction, x's shape (exclusive running products from both ends of the flattened
    reduced axes)."""
    (x,), axes = op.inputs, op.attrs["axes"]
    kept = _keep_axes(x.type.ndim, axes)
    perm = kept + tuple(axes)
    moved = b.op(P.transpose, x, perm=perm) if perm != tuple(range(len(perm))) else x
    kept_shape = tuple(x.shape[a] for a in kept)
    flat_shape = kept_shape + (math.prod(x.shape[a] for a in axes),)
    flat = b.op(P.reshape, moved, shape=flat_shape) if flat_shape != moved.shape else moved
    last = len(flat_shape) - 1
    others = _mul(b, _shifted_scan(b, flat, last, False), _shifted_scan(b, flat, last, True))
    if flat_shape != moved.shape:
        others = b.op(P.reshape, others, shape=moved.shape)
    if perm != tuple(range(len(perm))):
        others = b.op(P.transpose, others, perm=tuple(perm.index(a) for a in range(len(perm))))
    return others


def _reduce_prod_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (x,), (g,) = op.inputs, cts
    g = b.broadcast(g, x.shape, _keep_axes(x.type.ndim, op.attrs["axes"]))
    return (_mul(b, g, _others_product(b, op)),)


def _reduce_prod_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (t,) = tangents
    if t is None:
        return (None,)
    return (b.op(P.reduce_sum, _mul(b, t, _others_product(b, op)), axes=op.attrs["axes"]),)


def _cumprod_parts(b: Builder, op: Op) -> tuple[Value, Value, Value, Value]:
    """For y = cumprod(x): (before, first, x with its first zero set to 1, x with zeros
    set to 1), where ``before`` marks the elements before the first zero along the axis
    and ``first`` the first zero. Up to the first zero the usual y/x derivative holds;
    the first zero's derivative is the running product with that factor left out; past
    it every derivative is zero."""
    (x,), axis, reverse = op.inputs, op.attrs["axis"], op.attrs["reverse"]
    zero = b.op(P.eq, x, _c(b, 0, x))
    count = b.op(P.cumsum, b.convert(zero, DType.i64), axis=axis, reverse=reverse)
    before = b.op(P.eq, count, b.full_like(0, count))
    first = b.op(P.logical_and, zero, b.op(P.eq, count, b.full_like(1, count)))
    ones = _c(b, 1, x)
    return before, first, b.op(P.select, first, ones, x), b.op(P.select, zero, ones, x)


def _cumprod_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,), y = cts, op.output
    axis, reverse = op.attrs["axis"], op.attrs["reverse"]
    before, first, x_first_one, x_safe = _cumprod_parts(b, op)
    # sum over later outputs k of g_k dy_k/dx_i (the other end of the scan)
    later = b.op(P.cumsum, _mul(b, g, y), axis=axis, reverse=not reverse)
    y_without_first = b.op(P.cumprod, x_first_one, axis=axis, reverse=reverse)
    at_first = b.op(P.cumsum, _mul(b, g, y_without_first), axis=axis, reverse=not reverse)
    zeros = _c(b, 0, g)
    return (b.op(P.select, before, _div(b, later, x_safe), b.op(P.select, first, at_first, zeros)),)


def _cumprod_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (t,), y = tangents, op.output
    if t is None:
        return (None,)
    axis, reverse = op.attrs["axis"], op.attrs["reverse"]
    before, first, x_first_one, x_safe = _cumprod_parts(b, op)
    up_to_zero = _mul(b, y, b.op(P.cumsum, _div(b, t, x_safe), axis=axis, reverse=reverse))
    # from the first zero on, only its own tangent moves the product (times the others)
    t_first = b.op(P.cumsum, b.op(P.select, first, t, _c(b, 0, t)), axis=axis, reverse=reverse)
    from_zero = _mul(b, t_first, b.op(P.cumprod, x_first_one, axis=axis, reverse=reverse))
    return (b.op(P.select, before, up_to_zero, from_zero),)


_define(P.reduce_prod, _reduce_prod_vjp, _reduce_prod_jvp)
_define(P.cumprod, _cumprod_vjp, _cumprod_jvp)


# ---------------------------------------------------------------------------------------
# Rules: convolution and pooling. A conv is bilinear; both of its transposes are convs
# again (JAX's ``_conv_general_dilated_transpose_lhs/rhs``): the input gradient
# convolves the output cotangent with the spatially flipped kernel, input and output
# channels swapped within each group (the forward strides become lhs dilation); the
# kernel gradient convolves the input, batch and channel axes swapped, with the
# cotangent as the window (the forward strides become rhs dilation). Feature groups stay
# feature groups: the group axis moves onto the axis the transposed conv contracts.


def _conv_attrs(op: Op) -> tuple[tuple[int, ...], ...]:
    a = op.attrs
    return a["strides"], a["lo"], a["hi"], a["lhs_dilation"], a["rhs_dilation"]


def _flip_spatial(b: Builder, w: Value) -> Value:
    """``w`` reversed along every axis after the first two (a gather per axis)."""
    for axis in range(2, w.type.ndim):
        n = w.shape[axis]
        if n == 1:
            continue
        ramp = b.op(P.iota, shape=w.shape, dimension=axis, dtype=P.DType.i64)
        idx = b.op(P.sub, b.full_like(n - 1, ramp), ramp)
        w = b.op(P.gather, w, idx, axis=axis)
    return w


def _conv_lhs_transpose(b: Builder, op: Op, g: Value) -> Value:
    lhs, rhs = op.inputs
    strides, lo, _, ldil, rdil = _conv_attrs(op)
    groups = op.attrs["groups"]
    o, cg, *window = rhs.shape
    c = lhs.shape[1]
    # [O, Cg, *K] -> [G, Og, Cg, *K] -> [G, Cg, Og, *K] -> [C, Og, *K], flipped.
    w = b.reshape(rhs, (groups, o // groups, cg, *window))
    w = b.op(P.transpose, w, perm=(0, 2, 1, *range(3, w.type.ndim)))
    w = _flip_spatial(b, b.reshape(w, (c, o // groups, *window)))
    pad_lo, pad_hi = [], []
    for i, n in enumerate(lhs.shape[2:]):
        k = P.dilated_size(window[i], rdil[i])
        before = k - lo[i] - 1
        pad_lo.append(before)
        pad_hi.append(P.dilated_size(n, ldil[i]) + k - 1 - P.dilated_size(g.shape[2 + i], strides[i]) - before)
    return b.op(P.conv, g, w, strides=ldil, lo=tuple(pad_lo), hi=tuple(pad_hi), lhs_dilation=strides,
                rhs_dilation=rdil, groups=groups)


def _conv_rhs_transpose(b: Builder, op: Op, g: Value) -> Value:
    lhs, rhs = op.inputs
    strides, lo, _, ldil, rdil = _conv_attrs(op)
    groups = op.attrs["groups"]
    n, c, *spatial = lhs.shape
    o, cg, *window = rhs.shape
    out_spatial = g.shape[2:]
    nsp = len(spatial)
    # lhs [N, G*Cg, *S] -> [Cg, G*N, *S]; cotangent [N, G*Og, *P] -> [G*Og, N, *P].
    x = b.reshape(lhs, (n, groups, cg, *spatial))
    x = b.reshape(b.op(P.transpose, x, perm=(2, 1, 0, *range(3, 3 + nsp))), (cg, groups * n, *spatial))
    gt = b.reshape(g, (n, groups, o // groups, *out_spatial))
    gt = b.reshape(b.op(P.transpose, gt, perm=(1, 2, 0, *range(3, 3 + nsp))), (o, n, *out_spatial))
    pad_hi = tuple(
        P.dilated_size(out_spatial[i], strides[i]) - P.dilated_size(spatial[i], ldil[i])
        + P.dilated_size(window[i], rdil[i]) - lo[i] - 1
        for i in range(nsp)
    )
    d = b.op(P.conv, x, gt, strides=rdil, lo=lo, hi=pad_hi, lhs_dilation=ldil, rhs_dilation=strides,
             groups=groups)  # [Cg, O, *K]
    return b.op(P.transpose, d, perm=(1, 0, *range(2, 2 + nsp)))


def _conv_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    (g,) = cts
    if g is None or g.type.size == 0:
        return (None, None)
    return (_conv_lhs_transpose(b, op, g) if needs[0] else None,
            _conv_rhs_transpose(b, op, g) if needs[1] else None)


_define(P.conv, _conv_vjp, _bilinear_jvp)


def _pool_attrs(op: Op) -> dict:
    return {k: op.attrs[k] for k in ("window", "strides", "lo", "hi")}


def _max_pool_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    """The cotangent goes to one element per window: its first largest."""
    return (b.op(P.max_pool_scatter, op.inputs[0], cts[0], **_pool_attrs(op)),)


def _max_pool_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    (t,) = tangents
    return (None,) if t is None else (b.op(P.max_pool_gather, op.inputs[0], t, **_pool_attrs(op)),)


def _max_pool_pair_vjp(other: P.Primitive) -> VjpRule:
    """max_pool_gather and max_pool_scatter are linear in their second operand and each
    other's transposes; the positions they use are piecewise constant in the first."""

    def vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
        return (None, b.op(other, op.inputs[0], cts[0], **_pool_attrs(op)))

    return vjp


def _second_operand_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    t = tangents[1]
    return (None,) if t is None else b.emit(op.prim, (op.inputs[0], t), dict(op.attrs))


def _avg_pool_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    return (b.op(P.avg_pool_scatter, cts[0], **_pool_attrs(op), shape=op.inputs[0].shape),)


def _avg_pool_scatter_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    return (b.op(P.avg_pool, cts[0], **_pool_attrs(op)),)


_define(P.max_pool, _max_pool_vjp, _max_pool_jvp)
_define(P.max_pool_gather, _max_pool_pair_vjp(P.max_pool_scatter), _second_operand_jvp)
_define(P.max_pool_scatter, _max_pool_pair_vjp(P.max_pool_gather), _second_operand_jvp)
_define(P.avg_pool, _avg_pool_vjp, _linear_jvp)
_define(P.avg_pool_scatter, _avg_pool_scatter_vjp, _linear_jvp)


# ---------------------------------------------------------------------------------------
# Rules: custom_vjp_call. Reverse mode inlines ``fwd`` in the forward sweep (see
# ``reverse_mode``); the op the vjp rule sees has the call's operands followed by the
# residuals ``fwd`` returned after the outputs.


def _custom_vjp_call_forward(
    b: Builder, op: Op, inputs: tuple[Value, ...], active: tuple[bool, ...]
) -> tuple[tuple[Value, ...], tuple[Value, ...]]:
    """Inlines ``fwd``: (the call's outputs, the residuals)."""
    results = b.inline(op.attrs["fwd"], inputs)
    n = len(op.outputs)
    return results[:n], results[n:]


def _custom_vjp_call_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    n = len(op.attrs["fun"].params)
    residuals = op.inputs[n:]
    full_cts = tuple(_or_zeros(b, c, v) for c, v in zip(cts, op.outputs, strict=True))
    in_cts = b.inline(op.attrs["bwd"], residuals + full_cts)
    return tuple(c if need else None for c, need in zip(in_cts, needs[:n], strict=True)) + (None,) * len(
        residuals
    )


def _custom_vjp_call_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    """Forward mode differentiates ``fun`` itself (the custom rule is reverse-only)."""
    fun = op.attrs["fun"]
    wrt = tuple(i for i, t in enumerate(tangents) if t is not None and fun.params[i].dtype.is_float)
    inner = jvp_function(fun, wrt)
    outs = b.inline(inner, op.inputs + tuple(tangents[i] for i in wrt))  # type: ignore[operator]
    m = len(fun.results)
    return tuple(t if v.dtype.is_float else None for t, v in zip(outs[m:], op.outputs, strict=True))


_define(P.custom_vjp_call, _custom_vjp_call_vjp, _custom_vjp_call_jvp)
FORWARD_RULES[P.custom_vjp_call] = _custom_vjp_call_forward

# The rules of scan, while_loop and cond, those of the collectives (psum, all_gather,
# ...), those of linear algebra (cholesky, solve, svd, ...) and that of checkpoint live in
# their own modules, which fill the tables.
from fusejit.ir.transforms import autodiff_collectives, autodiff_control, autodiff_linalg  # noqa: E402, F401
from fusejit.ir.transforms import checkpoint as _checkpoint  # noqa: E402, F401
