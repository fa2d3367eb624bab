"""The call plan of an executable (CPU or CUDA), as data: what every kernel reads and writes.

``plan_call`` lowers every fusion group (``lower_all``: a group the code generator
refuses is split into one kernel per op, and a view on flat buffers, a reshape or a
chain of such relabels (``fusion.is_view``), becomes an alias instead of a kernel), then
decides storage:

* parameters are the caller's arrays; results are fresh arrays allocated per call, or a
  donated parameter's buffer (``donate_argnums``), written in place when the kernel reads
  it only at the element it writes;
* constant arrays are materialized once;
* every other value and all kernel scratch live in one arena, planned by value lifetimes
  (``fusejit.runtime.buffers``);
* a host op (``GroupKind.HOST``, ``fusejit.runtime.host_ops``) is a ``HostStepPlan``
  between the kernel steps: refs for its operands and outputs, and an output its rule
  may write over an operand shares that operand's arena buffer when nothing reads it
  later (an in-place ``Allreduce``). A host op that runs in two halves
  (``HostCall.splits``: ``psum(..., overlap=True)``) starts right after the kernel
  producing its operand and is waited for right before the first step reading its
  result (a ``"start"`` and a ``"wait"`` step, on the CPU; elsewhere it runs whole);
  the kernels are first reordered (``_overlap_order``) so that such an op's operand is
  computed as early as its inputs allow and its readers run as late as possible.

A kernel argument is a *ref*: ``("param", k)``, ``("out", j)`` (result ``j``),
``("const", k)`` or ``("buf", key)`` (an arena slice); its sizes are slots of one int64
array (``dims``), arena offsets first.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.codegen.kernel import Unsupported
from fusejit.codegen.lowering import LoweredKernel, Scratch
from fusejit.codegen.target import CPU, Target
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.transforms.fusion import (
    FusedFunction,
    FusionGroup,
    GroupKind,
    group_kind_of,
    is_view,
    make_group,
)
from fusejit.runtime import buffers
from fusejit.runtime.host_ops import HostCall

Ref = tuple[str, Any]


@dataclass(frozen=True, slots=True)
class StepPlan:
    """One kernel call: its lowered kernel, a ref per array parameter and the ``dims``
    slots of its int parameters."""

    lowered: LoweredKernel
    refs: tuple[Ref, ...]
    int_slots: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HostStepPlan:
    """One host op call (``fusejit.runtime.host_ops``): a ref per operand and per output;
    it runs after the first ``position`` kernel steps. ``phase``: ``"run"`` the whole
    op; an op split in two (``HostCall.splits``) has a ``"start"`` step, right after the
    kernel computing its operand, and a later ``"wait"`` step (same call and refs),
    right before the first step reading its result."""

    call: HostCall
    in_refs: tuple[Ref, ...]
    out_refs: tuple[Ref, ...]
    position: int
    phase: str = "run"

    @property
    def shared_outputs(self) -> frozenset[int]:
        """The outputs planned in the buffer of the operand they may overwrite."""
        return frozenset(o for o, i in self.call.rule.inplace if self.out_refs[o] == self.in_refs[i])


@dataclass(frozen=True, slots=True)
class CallPlan:
    steps: tuple[StepPlan, ...]
    arena: buffers.Plan
    buf_slot: Mapping[Hashable, int]  # arena value -> its (start, stop) slots in dims
    buf_dtype: Mapping[Hashable, DType]
    dims: tuple[int, ...]
    consts: tuple[np.ndarray, ...]  # flat, C-ordered
    out_specs: tuple[tuple[tuple[int, ...], Any], ...]  # per result value: shape, NumPy dtype
    out_in_param: tuple[int | None, ...]  # per result value: the donated parameter it is written into
    result_refs: tuple[Ref, ...]  # per function result
    host_steps: tuple[HostStepPlan, ...] = ()  # in program order among ``steps``


def plan_call(fn: Function, fused: FusedFunction, donated: Sequence[int], threshold: int | None = None,
              target: Target = CPU) -> CallPlan:
    """Lowers ``fused`` for ``target`` and plans every call of it (see the module docstring)."""
    items = lower_all(fused, threshold, target)
    params = {p: k for k, p in enumerate(fn.params)}
    result_values = list(dict.fromkeys(r for r in fn.results if r not in params))
    outputs = {v: j for j, v in enumerate(result_values)}
    aliases: dict[Value, Value] = {}
    for item in items:
        if isinstance(item, FusionGroup):
            aliases[item.outputs[0]] = item.inputs[0]

    def root(v: Value) -> Value:
        while v in aliases:
            v = aliases[v]
        return v

    units = [it for it in items if not isinstance(it, FusionGroup)]  # kernels and host calls, in order
    if target is CPU and any(isinstance(u, HostCall) and u.splits for u in units):
        units = _overlap_order(fn, units, root)
    _host_inplace(fn, units, aliases, root)
    in_param = _donations(fn, units, donated, result_values, aliases, root, target)
    consts: list[Op] = []
    const_index: dict[int, int] = {}

    def ref(v: Any) -> Ref:
        if isinstance(v, Op):
            if id(v) not in const_index:
                const_index[id(v)] = len(consts)
                consts.append(v)
            return ("const", const_index[id(v)])
        r = root(v)
        if r in params:
            return ("param", params[r])
        if r in in_param:
            return ("param", in_param[r])
        if r in outputs:
            return ("out", outputs[r])
        return ("buf", r)

    steps: list[buffers.Step] = []
    step_refs: list[list[Ref]] = []
    for s, lk in enumerate(units):
        if isinstance(lk, HostCall):
            step_refs.append([ref(v) for v in lk.op.inputs + lk.op.outputs])
            steps.append(buffers.Step([(root(v), v.type.nbytes) for v in lk.op.outputs if ref(v)[0] == "buf"],
                                      [root(v) for v in lk.op.inputs if ref(v)[0] == "buf"], []))
            continue
        refs = []
        scratch = []
        for k, bound in enumerate(lk.arrays):
            if isinstance(bound, Scratch):
                key = ("scratch", s, k)
                scratch.append((key, bound.size * bound.dtype.itemsize))
                refs.append(("buf", key))
            else:
                refs.append(ref(bound))
        defines = [(root(v), v.type.nbytes) for v in lk.group.outputs if ref(v)[0] == "buf"]
        reads = [root(v) for v in lk.group.inputs if ref(v)[0] == "buf"]
        steps.append(buffers.Step(defines, reads, scratch))
        step_refs.append(refs)
    arena = buffers.plan(steps)
    # The size array: arena slices first, then every kernel's ints.
    buf_dtype: dict[Hashable, DType] = {}
    for refs, lk in zip(step_refs, units, strict=True):
        types = [v.type for v in lk.op.inputs + lk.op.outputs] if isinstance(lk, HostCall) else lk.kernel.arrays
        for r, param in zip(refs, types, strict=True):
            if r[0] == "buf":
                buf_dtype[r[1]] = param.dtype
    dims: list[int] = []
    buf_slot: dict[Hashable, int] = {}
    for key in dict.fromkeys(r[1] for refs in step_refs for r in refs if r[0] == "buf"):
        iv = arena.slots[key]
        buf_slot[key] = len(dims)
        dims += [iv.offset, iv.offset + iv.nbytes]
    plans = []
    host_plans = []
    waits = _waits(units, root) if target is CPU else {}
    split = {w for ws in waits.values() for w in ws}
    for s, (lk, refs) in enumerate(zip(units, step_refs, strict=True)):
        for w in waits.get(s, ()):
            host_plans.append(HostStepPlan(units[w], *_host_refs(units[w], step_refs[w]), len(plans), "wait"))
        if isinstance(lk, HostCall):
            host_plans.append(HostStepPlan(lk, *_host_refs(lk, refs), len(plans), "start" if s in split else "run"))
            continue
        plans.append(StepPlan(lk, tuple(refs), tuple(range(len(dims), len(dims) + len(lk.ints)))))
        dims += lk.ints
    for w in waits.get(len(units), ()):
        host_plans.append(HostStepPlan(units[w], *_host_refs(units[w], step_refs[w]), len(plans), "wait"))
    return CallPlan(
        steps=tuple(plans),
        arena=arena,
        buf_slot=buf_slot,
        buf_dtype=buf_dtype,
        dims=tuple(dims),
        consts=tuple(np.ascontiguousarray(np.asarray(op.prim.impl(**op.attrs)[0])).reshape(-1) for op in consts),
        out_specs=tuple((v.shape, v.dtype.np) for v in result_values),
        out_in_param=tuple(in_param.get(v) for v in result_values),
        result_refs=tuple(("param", params[r]) if r in params else ("out", outputs[r]) for r in fn.results),
        host_steps=tuple(host_plans),
    )


def _overlap_order(fn: Function, units: list[LoweredKernel | HostCall], root: Any) -> list[LoweredKernel | HostCall]:
    """``units`` (in a topological order) reordered for the host ops that run in two
    halves: a list schedule that, among the units whose inputs are ready, runs first
    those that a split op needs (the op itself, and what computes its operand; the op
    earliest in the program first), then those independent of every split op, and last
    those that read a split op's result, each class in its original order. Ops with
    effects keep their order through their tokens (data); collectives may change
    places, as every rank runs the same plan."""
    n = len(units)
    made: dict[Value, int] = {}
    for s, u in enumerate(units):
        for v in u.group.outputs:
            made.setdefault(root(v), s)  # a value recomputed by several units: the first one's
    deps: list[set[int]] = [set() for _ in range(n)]
    for s, u in enumerate(units):
        deps[s].update(t for t in (made.get(root(v)) for v in u.group.inputs) if t is not None and t != s)
    program = {id(op): k for k, op in enumerate(fn.ops)}
    splits = [isinstance(u, HostCall) and u.splits for u in units]
    # The split ops by program order: the first bucket of gradients is the first psum.
    rank_of = {s: r for r, s in enumerate(sorted((s for s in range(n) if splits[s]),
                                                 key=lambda s: program.get(id(units[s].op), s)))}
    feeds = [n] * n  # the earliest (in program order) split op that needs the unit; n: none
    for s in range(n - 1, -1, -1):  # deps point to earlier units
        if splits[s]:
            feeds[s] = min(feeds[s], rank_of[s])
        for t in deps[s]:
            feeds[t] = min(feeds[t], feeds[s])
    after = [False] * n  # reads the result of a split op
    for s in range(n):
        after[s] = any(after[t] or splits[t] for t in deps[s])
    key = [(0, feeds[s], s) if feeds[s] < n else (2 if after[s] else 1, 0, s) for s in range(n)]
    users: list[list[int]] = [[] for _ in range(n)]
    for s in range(n):
        for t in deps[s]:
            users[t].append(s)
    missing = [len(d) for d in deps]
    ready = [key[s] for s in range(n) if not missing[s]]
    heapq.heapify(ready)
    order = []
    while ready:
        s = heapq.heappop(ready)[2]
        order.append(units[s])
        for u in users[s]:
            missing[u] -= 1
            if not missing[u]:
                heapq.heappush(ready, key[u])
    assert len(order) == n, "the units of a fused function depend on each other in a cycle"
    return order


def _waits(units: list[LoweredKernel | HostCall], root: Any) -> dict[int, list[int]]:
    """unit index ``t`` -> the split host ops (``HostCall.splits``; by unit index) to wait
    for right before unit ``t``, the first one reading their outputs (``len(units)``:
    none reads them), for those with at least one kernel between their start and that
    (the others run whole)."""
    waits: dict[int, list[int]] = {}
    for s, u in enumerate(units):
        if not (isinstance(u, HostCall) and u.splits):
            continue
        outs = {root(v) for v in u.op.outputs}
        first = next((t for t in range(s + 1, len(units)) if any(root(v) in outs for v in units[t].group.inputs)),
                     len(units))
        if any(not isinstance(units[t], HostCall) for t in range(s + 1, first)):
            waits.setdefault(first, []).append(s)
    return waits


def _host_refs(call: HostCall, refs: list[Ref]) -> tuple[tuple[Ref, ...], tuple[Ref, ...]]:
    """A host call's refs, as operand refs and output refs."""
    n = len(call.op.inputs)
    return tuple(refs[:n]), tuple(refs[n:])


def _host_inplace(fn: Function, units: list[LoweredKernel | HostCall], aliases: dict[Value, Value],
                  root: Any) -> None:
    """Each host output its rule may write over an operand (``HostRule.inplace``) takes
    the operand's buffer when that is an arena buffer nothing reads afterwards: an alias,
    as a reshape's (an in-place Allreduce then copies nothing)."""
    params = set(fn.params)
    results = {root(r) for r in fn.results}
    for s, unit in enumerate(units):
        if not isinstance(unit, HostCall):
            continue
        op = unit.op
        for o, i in unit.rule.inplace:
            x, y = op.inputs[i], op.outputs[o]
            rx = root(x)
            if rx in params or rx in results or y in results or x.type.nbytes != y.type.nbytes:
                continue
            if sum(root(v) is rx for v in op.inputs) != 1:
                continue
            if not any(root(v) is rx for later in units[s + 1:] for v in later.group.inputs):
                aliases[y] = x


def _donations(fn: Function, kernels: list[LoweredKernel | HostCall], donated: Sequence[int], result_values: list[Value],
               aliases: dict[Value, Value], root: Any, target: Target) -> dict[Value, int]:
    """Which result takes the buffer of which donated parameter (of its dtype and size,
    once the kernels before the one writing the result no longer read it); a loop
    kernel reading the parameter only at the element it writes is lowered again to write
    in place (``kernels`` is updated)."""
    params = {p: k for k, p in enumerate(fn.params)}
    defined_at: dict[Value, int] = {}
    last_read: dict[Value, int] = {}
    for s, lk in enumerate(kernels):
        for v in lk.group.outputs:
            defined_at[v] = s
        for v in lk.group.inputs:
            last_read[root(v)] = s
    for r in fn.results:
        last_read[root(r)] = len(kernels)
    in_param: dict[Value, int] = {}
    free = [fn.params[k] for k in sorted(set(donated)) if k < len(fn.params)]
    producers = fn.producers()
    for v in result_values:
        if v not in defined_at or v in aliases:
            continue
        s = defined_at[v]
        # Prefer the parameter the result is computed from most directly (``p - lr * g``
        # goes into ``p``'s buffer), then the order of donate_argnums.
        near = _distances(v, producers)
        for p in sorted(free, key=lambda p: near.get(p, len(near) + 1)):
            if p.dtype != v.dtype or p.type.size != v.type.size or p in fn.results:
                continue
            last = last_read.get(p, -1)
            if last < s:
                in_param[v] = params[p]
                free.remove(p)
                break
            if last == s and kernels[s].kind is GroupKind.LOOP and p in kernels[s].identity_reads:
                try:
                    kernels[s] = target.lower(kernels[s].group, inplace={**kernels[s].inplace, v: p})
                except Unsupported:
                    continue
                in_param[v] = params[p]
                free.remove(p)
                break
    return in_param


def lower_all(fused: FusedFunction, threshold: int | None = None,
              target: Target = CPU) -> list[FusionGroup | LoweredKernel | HostCall]:
    """Each group lowered (or kept as an alias group, or a host call); refused groups
    split per op."""
    fn = fused.function
    results = set(fn.results)
    users = fn.users()
    out: list[FusionGroup | LoweredKernel] = []
    for group in fused.groups:
        if group.kind is GroupKind.HOST:
            out.append(HostCall(group))
            continue
        if is_view(group, results):  # no kernel: an alias of its input's buffer
            out.append(group)
            continue
        try:
            out.append(target.lower(group, parallel_threshold=threshold))
        except Unsupported:
            if len(group.ops) == 1 and group.kind is not GroupKind.HORIZONTAL:
                raise
            parts = group.parts if group.kind is GroupKind.HORIZONTAL and group.parts else None
            if parts:
                subgroups = list(parts)
            else:  # one kernel per op (an op recomputed in several groups is computed again)
                needed = set(results) | set(group.outputs)
                subgroups = [make_group([op], needed, users, group_kind_of(op)) for op in group.ops]
            out += lower_all(FusedFunction(fn, tuple(subgroups)), threshold, target)
    return out


def _distances(v: Value, producers: dict[Value, Op], limit: int = 64) -> dict[Value, int]:
    """How many ops separate ``v`` from each value it is computed from (breadth first)."""
    seen = {v: 0}
    frontier = [v]
    while frontier and len(seen) < limit:
        nxt = []
        for u in frontier:
            op = producers.get(u)
            for w in op.inputs if op is not None else ():
                if w not in seen:
                    seen[w] = seen[u] + 1
                    nxt.append(w)
        frontier = nxt
    return seen
