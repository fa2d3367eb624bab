"""Derivatives of structured control flow: the vjp and jvp rules of ``scan``, ``cond`` and
``while_loop`` (entered into ``autodiff``'s tables when it is imported).

*Forward mode* differentiates the nested functions (``jvp_function``) and runs them in
one op of the same primitive whose carry (or operands) holds the primal values followed
by their tangents. Which carry components have a tangent is a fixpoint: a component
does when its initial value has one or when the body makes it depend on one.

*Reverse mode of scan* (as JAX's ``scan`` transpose, written directly): the body's own
reverse-mode derivative (``reverse_mode``) is split into a forward part, which returns
the values its backward part reads (``ReverseMode.saved``), and that backward part. In
the forward sweep the scan runs the forward part and stacks, per iteration, the saved
values that change from one iteration to the next. Saved values that do not change are
not stacked: the scan's consts and xs are read from the operands, and values computed
from the consts alone (a transposed weight) are computed once, before the loop
(loop-invariant hoisting). The backward sweep is a scan in the opposite direction whose
carry is the carry's cotangent plus one accumulator per differentiated const, and whose
slices are the stacked residuals and the cotangents of the stacked outputs; it returns
the cotangents of the xs stacked.

*Reverse mode of cond*: each branch is split likewise; the forward cond returns the
outputs and, for every branch's saved values, either the values (the branch taken) or
zeros, so all branches return the same types; the backward cond runs the taken branch's
backward part on them.

*while_loop* has no reverse mode: its trip count is known only at run time, so the
iterations' values cannot be saved in buffers planned ahead; the error says to use
``scan`` or ``fori_loop`` with static bounds (as JAX does).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.autodiff import (
    FORWARD_RULES,
    VJP_RULES,
    Ct,
    _define,
    jvp_function,
    reverse_mode,
    zero_vjp,
)


class NotReverseDifferentiableError(NotImplementedError):
    """A primitive that has no reverse-mode derivative (while_loop) is on the path of a
    reverse-mode derivative."""


# ---------------------------------------------------------------------------------------
# Shared analysis


def _dependence(fn: Function, active: Sequence[bool]) -> list[bool]:
    """Which results of ``fn`` depend (differentiably) on the ``active`` params."""
    live = {p for p, a in zip(fn.params, active, strict=True) if a}
    for op in fn.ops:
        if VJP_RULES.get(op.prim) is zero_vjp or not any(v in live for v in op.inputs):
            continue
        live.update(v for v in op.outputs if v.dtype.is_float)
    return [r in live for r in fn.results]


def _carry_fixpoint(
    body: Function, active: list[bool], first_carry: int, num_carry: int, result_of_carry: int = 0
) -> list[bool]:
    """``active`` (per body param) with every carry component whose next value depends on
    an active param made active, until nothing changes."""
    active = list(active)
    while True:
        dep = _dependence(body, active)
        grow = [k for k in range(num_carry) if dep[result_of_carry + k] and not active[first_carry + k]]
        if not grow:
            return active
        for k in grow:
            active[first_carry + k] = True


def _float_active(values: Sequence[Value], flags: Sequence[bool]) -> list[bool]:
    return [bool(f) and v.dtype.is_float for v, f in zip(values, flags, strict=True)]


def _function(name: str, params: Sequence[Value], b: Builder, results: Sequence[Value]) -> Function:
    return b.function(name, tuple(params), tuple(results))


def _fresh(values: Sequence[Value]) -> list[Value]:
    return [Value(v.type, v.name) for v in values]


def _zeros(b: Builder, like: Value) -> Value:
    return b.full_like(0, like)


# ---------------------------------------------------------------------------------------
# scan: forward mode


def _scan_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    body: Function = op.attrs["body"]
    nc, nk = op.attrs["num_consts"], op.attrs["num_carry"]
    nx = len(op.inputs) - nc - nk
    ny = len(body.results) - nk
    active = _carry_fixpoint(body, _float_active(body.params, [t is not None for t in tangents]), nc, nk)
    wrt = [i for i, a in enumerate(active) if a]
    jf = jvp_function(body, wrt, name=f"{body.name}_jvp")
    groups = [range(nc), range(nc, nc + nk), range(nc + nk, nc + nk + nx)]
    # New body: per group, primals then the tangents of its active members.
    nb = Builder()
    primal = _fresh(body.params)
    tan = {i: Value(body.params[i].type) for i in wrt}
    params = [v for g in groups for v in [primal[i] for i in g] + [tan[i] for i in g if i in tan]]
    outs = nb.inline(jf, primal + [tan[i] for i in wrt])
    res, res_t = outs[: len(body.results)], outs[len(body.results) :]
    carry_t = [res_t[k] for k in range(nk) if active[nc + k]]
    y_float = [j for j in range(ny) if body.results[nk + j].dtype.is_float]
    new_body = _function(
        f"{body.name}_jvp",
        params,
        nb,
        list(res[:nk]) + carry_t + list(res[nk:]) + [res_t[nk + j] for j in y_float],
    )
    operands = []
    for g in groups:
        operands += [op.inputs[i] for i in g]
        operands += [
            tangents[i] if tangents[i] is not None else _zeros(b, op.inputs[i]) for i in g if i in tan
        ]
    n_ct = sum(1 for i in groups[0] if i in tan)
    outs = b.emit(
        P.scan,
        tuple(operands),
        {**op.attrs, "body": new_body, "num_consts": nc + n_ct, "num_carry": nk + len(carry_t)},
    )
    carry_tans = iter(outs[nk : nk + len(carry_t)])
    out_t: list[Ct] = [next(carry_tans) if active[nc + k] else None for k in range(nk)]
    y_tans = iter(outs[nk + len(carry_t) + ny :])
    out_t += [next(y_tans) if j in y_float else None for j in range(ny)]
    return out_t


# ---------------------------------------------------------------------------------------
# scan: reverse mode


@dataclass(frozen=True)
class _ScanVjp:
    """How one scan is differentiated in reverse mode (see the module docstring)."""

    active: tuple[bool, ...]  # per body param
    forward: Function  # body params -> body results + stacked saved values
    backward: Function  # saved + cotangents -> one gradient per active param
    cot_results: tuple[int, ...]  # body results given a cotangent
    saved: tuple[tuple[str, int], ...]  # per saved value: ("const"|"xs"|"hoist"|"stack", index)
    hoisted: tuple[Op, ...]  # body ops computing the hoisted values from the consts, in order
    hoisted_values: tuple[Value, ...]


@functools.lru_cache(maxsize=256)
def _scan_vjp_plan(body: Function, num_consts: int, num_carry: int, in_active: tuple[bool, ...]) -> _ScanVjp:
    nc, nk = num_consts, num_carry
    active = _carry_fixpoint(body, _float_active(body.params, in_active), nc, nk)
    wrt = [i for i, a in enumerate(active) if a]
    dep = _dependence(body, active)
    cot = tuple(
        [k for k in range(nk) if active[nc + k]]
        + [j for j in range(nk, len(body.results)) if dep[j] and body.results[j].dtype.is_float]
    )
    rm = reverse_mode(body, wrt, cotangents=cot, keep_outputs=True, name=f"{body.name}_vjp")
    forward, backward = rm.split()
    params = {p: i for i, p in enumerate(body.params)}
    invariant = set(body.params[:nc])
    for o in forward.ops:
        if all(v in invariant for v in o.inputs) and o.prim not in P.CONTROL_FLOW:
            invariant.update(o.outputs)
    saved: list[tuple[str, int]] = []
    stacked: list[Value] = []
    hoisted: list[Value] = []
    for v in rm.saved:
        i = params.get(v)
        if i is not None and i < nc:
            saved.append(("const", i))
        elif i is not None and i >= nc + nk:
            saved.append(("xs", i - nc - nk))
        elif i is None and v in invariant:
            saved.append(("hoist", len(hoisted)))
            hoisted.append(v)
        else:
            saved.append(("stack", len(stacked)))
            stacked.append(v)
    needed: set[Value] = set(hoisted)
    hoist_ops: list[Op] = []
    for o in reversed(forward.ops):
        if any(v in needed for v in o.outputs):
            hoist_ops.append(o)
            needed.update(o.inputs)
    forward = forward.replace(results=forward.results[: len(body.results)] + tuple(stacked))
    return _ScanVjp(
        tuple(active), forward, backward, cot, tuple(saved), tuple(reversed(hoist_ops)), tuple(hoisted)
    )


def _scan_forward(
    b: Builder, op: Op, inputs: tuple[Value, ...], in_active: tuple[bool, ...]
) -> tuple[tuple[Value, ...], tuple[Value, ...]]:
    body: Function = op.attrs["body"]
    nc = op.attrs["num_consts"]
    plan = _scan_vjp_plan(body, nc, op.attrs["num_carry"], in_active)
    outs = b.emit(P.scan, inputs, {**op.attrs, "body": plan.forward})
    n = len(body.results)
    env = dict(zip(body.params[:nc], inputs[:nc], strict=True))
    for o in plan.hoisted:
        results = b.emit(o.prim, tuple(env[v] for v in o.inputs), dict(o.attrs), o.loc)
        env.update(zip(o.outputs, results, strict=True))
    return outs[:n], tuple(env[v] for v in plan.hoisted_values) + outs[n:]


def _scan_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    body: Function = op.attrs["body"]
    nc, nk, length = op.attrs["num_consts"], op.attrs["num_carry"], op.attrs["length"]
    n_in = len(body.params)
    plan = _scan_vjp_plan(body, nc, nk, needs[:n_in])
    operands, residuals = op.inputs[:n_in], op.inputs[n_in:]
    nh = len(plan.hoisted_values)
    hoisted, stacked = residuals[:nh], residuals[nh:]
    active = plan.active
    act_carry = [k for k in range(nk) if active[nc + k]]
    act_consts = [i for i in range(nc) if active[i]]
    act_xs = [i for i in range(nc + nk, n_in) if active[i]]
    const_refs = sorted({i for kind, i in plan.saved if kind == "const"})
    xs_refs = sorted({i for kind, i in plan.saved if kind == "xs"})
    y_cots = [j for j in plan.cot_results if j >= nk]
    y_given = [j for j in y_cots if cts[j] is not None]

    nb = Builder()
    p_consts = [Value(operands[i].type) for i in const_refs]
    p_hoist = [Value(v.type) for v in hoisted]
    p_ct_carry = [Value(body.params[nc + k].type) for k in act_carry]
    p_acc = [Value(operands[i].type) for i in act_consts]
    p_stack = [Value(v.type.with_shape(v.shape[1:])) for v in stacked]
    p_xs = [Value(body.params[nc + nk + i].type) for i in xs_refs]
    p_ct_y = [Value(op.outputs[j].type.with_shape(op.outputs[j].shape[1:])) for j in y_given]
    by_kind = {
        "const": dict(zip(const_refs, p_consts, strict=True)),
        "hoist": dict(enumerate(p_hoist)),
        "stack": dict(enumerate(p_stack)),
        "xs": dict(zip(xs_refs, p_xs, strict=True)),
    }
    saved_args = [by_kind[kind][i] for kind, i in plan.saved]
    ct_args = []
    carry_ct = dict(zip(act_carry, p_ct_carry, strict=True))
    given = dict(zip(y_given, p_ct_y, strict=True))
    for j in plan.cot_results:
        if j < nk:
            ct_args.append(carry_ct[j])
        else:
            ct_args.append(given[j] if j in given else _zeros(nb, body.results[j]))
    grads = dict(
        zip(
            [i for i, a in enumerate(active) if a],
            nb.inline(plan.backward, saved_args + ct_args),
            strict=True,
        )
    )
    new_acc = [nb.op(P.add, acc, grads[i]) for acc, i in zip(p_acc, act_consts, strict=True)]
    bwd_body = _function(
        f"{body.name}_bwd",
        p_consts + p_hoist + p_ct_carry + p_acc + p_stack + p_xs + p_ct_y,
        nb,
        [grads[nc + k] for k in act_carry] + new_acc + [grads[i] for i in act_xs],
    )
    init = [cts[k] if cts[k] is not None else _zeros(b, op.outputs[k]) for k in act_carry]
    init += [_zeros(b, operands[i]) for i in act_consts]
    xs = list(stacked) + [operands[nc + nk + i] for i in xs_refs] + [cts[j] for j in y_given]
    outs = b.emit(
        P.scan,
        tuple([operands[i] for i in const_refs] + list(hoisted) + init + xs),
        {
            "body": bwd_body,
            "length": length,
            "reverse": not op.attrs["reverse"],
            "num_consts": len(const_refs) + nh,
            "num_carry": len(init),
        },
    )
    result: list[Ct] = [None] * len(op.inputs)
    for k, v in zip(act_carry, outs, strict=False):
        result[nc + k] = v
    for i, v in zip(act_consts, outs[len(act_carry) :], strict=False):
        result[i] = v
    for i, v in zip(act_xs, outs[len(init) :], strict=True):
        result[i] = v
    return [c if k < n_in and needs[k] else None for k, c in enumerate(result)]


# ---------------------------------------------------------------------------------------
# cond


def _cond_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    branches: tuple[Function, ...] = op.attrs["branches"]
    operands = op.inputs[1:]
    wrt = [i for i, t in enumerate(tangents[1:]) if t is not None and operands[i].dtype.is_float]
    results = branches[0].results
    floats = [j for j, r in enumerate(results) if r.dtype.is_float]
    new = []
    for br in branches:
        jf = jvp_function(br, wrt, name=f"{br.name}_jvp")
        new.append(
            jf.replace(
                results=jf.results[: len(results)] + tuple(jf.results[len(results) + j] for j in floats)
            )
        )
    outs = b.emit(
        P.cond, (op.inputs[0], *operands, *(tangents[1 + i] for i in wrt)), {"branches": tuple(new)}
    )
    tans = iter(outs[len(results) :])
    return [next(tans) if j in floats else None for j in range(len(results))]


@functools.lru_cache(maxsize=256)
def _cond_vjp_plan(
    branches: tuple[Function, ...], in_active: tuple[bool, ...]
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[Function, ...], tuple[Function, ...]]:
    """(wrt, results with cotangents, forward branches, backward branches)."""
    first = branches[0]
    wrt = tuple(
        i for i, (p, a) in enumerate(zip(first.params, in_active, strict=True)) if a and p.dtype.is_float
    )
    cot = tuple(j for j, r in enumerate(first.results) if r.dtype.is_float)
    splits = [reverse_mode(br, wrt, cotangents=cot, name=f"{br.name}_vjp").split() for br in branches]
    all_saved = [v for fwd, _ in splits for v in fwd.results[len(first.results) :]]
    fwds, bwds = [], []
    offset = 0
    for (fwd, bwd), br in zip(splits, branches, strict=True):
        own = fwd.results[len(first.results) :]
        fb = Builder()
        params = _fresh(fwd.params)
        outs = fb.inline(fwd, params)
        mine = iter(outs[len(first.results) :])
        saved = [
            next(mine) if offset <= k < offset + len(own) else _zeros(fb, v) for k, v in enumerate(all_saved)
        ]
        fwds.append(_function(f"{br.name}_fwd", params, fb, list(outs[: len(first.results)]) + saved))
        bb = Builder()
        saved_params = [Value(v.type) for v in all_saved]
        ct_params = [Value(first.results[j].type) for j in cot]
        grads = bb.inline(bwd, saved_params[offset : offset + len(own)] + ct_params)
        bwds.append(_function(f"{br.name}_bwd", saved_params + ct_params, bb, grads))
        offset += len(own)
    return wrt, cot, tuple(fwds), tuple(bwds)


def _cond_forward(
    b: Builder, op: Op, inputs: tuple[Value, ...], in_active: tuple[bool, ...]
) -> tuple[tuple[Value, ...], tuple[Value, ...]]:
    _, _, fwds, _ = _cond_vjp_plan(op.attrs["branches"], in_active[1:])
    outs = b.emit(P.cond, inputs, {"branches": fwds})
    n = len(op.outputs)
    return outs[:n], outs[n:]


def _cond_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    branches = op.attrs["branches"]
    n_in = 1 + len(branches[0].params)
    wrt, cot, _, bwds = _cond_vjp_plan(branches, needs[1:n_in])
    full = [cts[j] if cts[j] is not None else _zeros(b, op.outputs[j]) for j in cot]
    grads = b.emit(P.cond, (op.inputs[0], *op.inputs[n_in:], *full), {"branches": bwds})
    result: list[Ct] = [None] * len(op.inputs)
    for i, g in zip(wrt, grads, strict=True):
        result[1 + i] = g if needs[1 + i] else None
    return result


# ---------------------------------------------------------------------------------------
# while_loop


def _while_jvp(b: Builder, op: Op, tangents: tuple[Ct, ...]) -> Sequence[Ct]:
    cond, body = op.attrs["cond"], op.attrs["body"]
    cn, bn = op.attrs["cond_nconsts"], op.attrs["body_nconsts"]
    nk = len(op.outputs)
    body_t = tangents[cn:]
    active = _carry_fixpoint(body, _float_active(body.params, [t is not None for t in body_t]), bn, nk)
    wrt = [i for i, a in enumerate(active) if a]
    jf = jvp_function(body, wrt, name=f"{body.name}_jvp")
    tan = {i: Value(body.params[i].type) for i in wrt}
    primal = _fresh(body.params)
    nb = Builder()
    outs = nb.inline(jf, primal + [tan[i] for i in wrt])
    act_carry = [k for k in range(nk) if active[bn + k]]
    const_t = [tan[i] for i in range(bn) if i in tan]
    new_body = _function(
        f"{body.name}_jvp",
        primal[:bn] + const_t + primal[bn:] + [tan[bn + k] for k in act_carry],
        nb,
        list(outs[:nk]) + [outs[nk + k] for k in act_carry],
    )
    cb = Builder()
    c_params = _fresh(cond.params)
    (pred,) = cb.inline(cond, c_params)
    new_cond = _function(
        cond.name, c_params + [Value(body.params[bn + k].type) for k in act_carry], cb, [pred]
    )
    operands = list(op.inputs[: cn + bn])
    operands += [body_t[i] for i in range(bn) if i in tan]
    operands += list(op.inputs[cn + bn :])
    operands += [
        body_t[bn + k] if body_t[bn + k] is not None else _zeros(b, op.inputs[cn + bn + k]) for k in act_carry
    ]
    outs = b.emit(
        P.while_loop,
        tuple(operands),
        {"cond": new_cond, "body": new_body, "cond_nconsts": cn, "body_nconsts": bn + len(const_t)},
    )
    tans = dict(zip(act_carry, outs[nk:], strict=True))
    return [tans.get(k) for k in range(nk)]


def _while_vjp(b: Builder, op: Op, cts: tuple[Ct, ...], needs: tuple[bool, ...]) -> Sequence[Ct]:
    where = f" (at {op.loc})" if op.loc else ""
    raise NotReverseDifferentiableError(
        f"while_loop{where} cannot be differentiated in reverse mode: its trip count is known only when "
        "it runs. Use fj.lax.scan, or fj.lax.fori_loop with Python int bounds (a scan), or forward mode "
        "(fj.jvp, fj.jacfwd)"
    )


_define(P.scan, _scan_vjp, _scan_jvp)
_define(P.cond, _cond_vjp, _cond_jvp)
_define(P.while_loop, _while_vjp, _while_jvp)
FORWARD_RULES[P.scan] = _scan_forward
FORWARD_RULES[P.cond] = _cond_forward
