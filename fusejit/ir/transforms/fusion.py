"""Fusion: partitioning a function's ops into kernels (fusion groups).

A ``FusionGroup`` is the unit the code generator lowers to one kernel: its ops run in
one loop nest (or, for a horizontal group, several independent nests in one call),
reading ``inputs`` from memory once and writing ``outputs`` once; every other value lives
in registers. ``fuse`` builds the groups in five phases, each a classic XLA fusion:

1. loop and input fusion (``producers`` in the report): walking consumers last-to-first,
   each kernel absorbs its elementwise/layout producers (into a loop, or into a
   reduction's input expression);
2. row fusion (``rows``): a reduction over the innermost axes joins the consumers that
   broadcast its result back over the same rows (softmax, layernorm, cross-entropy) and a
   reduction totalling one value per row over the rows (the mean loss); a loop over the
   result of a reduction over other axes joins that reduction (a bias's update after its
   gradient's column sum);
3. epilogue fusion (``epilogue``): the elementwise consumers of a matmul (or of a conv,
   ``P.TAKES_EPILOGUE``) run right after the BLAS call, on the result in registers; a
   pool reading a conv's result (or its activation) runs on each plane the conv finished;
4. multi-output fusion (``siblings``): sibling kernels with the same iteration space and
   a shared input become one kernel with several outputs;
5. horizontal fusion (``horizontal``): independent loop kernels run in one call (a view,
   ``is_view``, stays a view);
then ``finalize`` fixes each group's outputs and splits a group its target refuses.

Each phase *proposes* merges; a merge is *checked* (the size bound and the cost model in
``COST``, no cycle between kernels, and the backend's structural ``supports(group)``,
which never lowers anything) and then *made*. Every refusal, of every phase, is kept
with its reason for the fusion report.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from fusejit.ir import collectives as C
from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.primitives import OpKind
from fusejit.ir.printer import print_function, short_loc
from fusejit.ir.scopes import scope_label
from fusejit.ir.transforms.dce import has_effect


class GroupKind(enum.StrEnum):
    """What a fusion group is; each kind is lowered by one code-generation strategy."""

    LOOP = "loop"  # elementwise/layout ops over the shape of the outputs
    REDUCE = "reduce"  # reductions over one input space and the producers they read
    ROW = "row"  # reductions over the innermost axes and the ops broadcasting them back
    MATMUL = "matmul"  # one dot_general and an elementwise epilogue
    KERNEL = "kernel"  # one op lowered by its primitive's own kernel (scatter_add, cumsum)
    HORIZONTAL = "horizontal"  # independent loop groups (``parts``) run in one call
    HOST = "host"  # one host op (``OpKind.HOST``), run by the runtime between kernels


@dataclass(frozen=True, slots=True, eq=False)
class FusionGroup:
    """Ops lowered as one kernel; ``inputs`` come from memory, ``outputs`` go to memory.
    An op may appear in several groups when it is cheap enough to recompute."""

    ops: tuple[Op, ...]
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    kind: GroupKind = GroupKind.LOOP
    parts: tuple[FusionGroup, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", GroupKind(self.kind))  # accepts the kind's name

    @property
    def bytes_read(self) -> int:
        return sum(v.type.nbytes for v in self.inputs)

    @property
    def bytes_written(self) -> int:
        return sum(v.type.nbytes for v in self.outputs)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A merge a phase proposed and did not make, and why: ``producer`` and ``consumer``
    are the ops of an edge between the two groups (for sibling and horizontal merges,
    which have none, the first op of each group)."""

    producer: Op
    consumer: Op
    reason: str
    phase: str = "producers"

    def __str__(self) -> str:
        where = f" at {short_loc(self.producer.loc)}" if self.producer.loc else ""
        arrow = "->" if self.phase in ("producers", "rows", "epilogue") else "+"
        return f"[{self.phase}] {self.producer.prim.name}{where} {arrow} {self.consumer.prim.name}: {self.reason}"


@dataclass(frozen=True, slots=True, eq=False)
class FusedFunction:
    """A function and its partition into kernels, in execution order."""

    function: Function
    groups: tuple[FusionGroup, ...]
    refusals: tuple[Refusal, ...] = field(default=())

    def __str__(self) -> str:
        return print_fused(self)


# ---------------------------------------------------------------------------------------
# The cost model, in one place.


@dataclass(frozen=True)
class CostModel:
    # Producers cheap enough to recompute in every kernel that reads them.
    cheap: frozenset[P.Primitive] = P.RECOMPUTABLE
    # Kernel size bounds keep Numba's compile time sane (1,000 statements take seconds).
    max_ops: int = 96
    max_inputs: int = 24


COST = CostModel()

_ABSORBABLE = (OpKind.ELEMENTWISE, OpKind.LAYOUT, OpKind.SOURCE)


def _iteration_shape(op: Op) -> tuple[int, ...]:
    """The index space an op's own loop runs over."""
    if op.prim.kind is OpKind.REDUCTION:
        return op.inputs[0].shape
    if op.prim.kind is OpKind.HOST:  # runs no loop; may have several outputs (slogdet, svd)
        return op.outputs[0].shape
    return op.output.shape


def group_kind_of(op: Op) -> GroupKind:
    """The kind of the group that ``op`` starts (or forms alone)."""
    if op.prim.kind is OpKind.REDUCTION:
        return GroupKind.REDUCE
    if op.prim.kind is OpKind.CONTRACTION:
        return GroupKind.MATMUL
    if op.prim.kind is OpKind.KERNEL:
        return GroupKind.KERNEL
    if op.prim.kind is OpKind.HOST:
        return GroupKind.HOST
    return GroupKind.LOOP


def relabels(op: Op) -> bool:
    """Whether ``op`` only relabels its operand's flat buffer: the same elements in the
    same order and dtype (a reshape, ``stop_gradient``, a convert to the same dtype, a
    transpose or broadcast that only moves or adds axes of length 1)."""
    if not op.inputs or len(op.outputs) != 1:
        return False
    x = op.inputs[0]
    if op.prim in (P.reshape, P.stop_gradient, P.convert):
        return x.dtype == op.output.dtype
    if op.prim is P.broadcast_in_dim or op.prim is P.transpose:
        return x.type.size == op.output.type.size and P.keeps_linear_order(op)
    return False


def _relabel_chain(ops: list[Op]) -> bool:
    """Whether ``ops`` (in program order) relabel one buffer, each the previous one's result."""
    return all(relabels(op) and (k == 0 or op.inputs[0] is ops[k - 1].output) for k, op in enumerate(ops))


def is_view(group: FusionGroup, results: set[Value]) -> bool:
    """Whether ``group`` needs no kernel: a chain of relabels of its one input whose last
    result is its only output and not one of the function's ``results`` (which get arrays
    of their own). Its output is then a view of the input's buffer (``runtime.plan``)."""
    return (len(group.inputs) == 1 and _relabel_chain(list(group.ops)) and group.outputs == (group.ops[-1].output,)
            and group.ops[-1].output not in results)


class _Group:
    """A group under construction."""

    __slots__ = ("kind", "owned", "copies", "shape")

    def __init__(self, root: Op) -> None:
        self.kind = group_kind_of(root)
        self.owned: list[Op] = [root]
        self.copies: list[Op] = []  # cheap ops recomputed here but owned elsewhere
        self.shape = _iteration_shape(root)

    def ops(self) -> list[Op]:
        owned = set(map(id, self.owned))
        return self.owned + [op for op in self.copies if id(op) not in owned]

    def size(self) -> int:
        return len(self.owned) + len(self.copies)


class _Partition:
    """Groups of one function and the graph facts the phases query."""

    def __init__(self, fn: Function, supports: Callable[[FusionGroup], str | None] | None) -> None:
        self.fn = fn
        self.position = {id(op): i for i, op in enumerate(fn.ops)}
        self.producer = fn.producers()
        self.users = fn.users()
        self.results = set(fn.results)
        self.home: dict[int, _Group] = {}
        self.readers: dict[int, list[_Group]] = {}  # op -> groups that contain it
        self.refusals: list[Refusal] = []
        self.supports = supports
        # A topological order of the groups (``order_groups``), kept valid across merges:
        # a path between two groups only passes through groups ordered between them, so
        # the cycle check searches that stretch instead of everything downstream.
        self.rank: dict[int, int] = {}

    def order_groups(self, groups: list[_Group]) -> None:
        """Records ``groups`` (in a topological order) as the order merges maintain."""
        self.rank = {id(g): k for k, g in enumerate(groups)}

    # Graph queries ---------------------------------------------------------------------
    def consumers(self, g: _Group) -> list[_Group]:
        """The groups that read a value ``g`` owns from memory (a group holding a copy of
        its producer computes it itself)."""
        out: dict[int, _Group] = {}
        for op in g.owned:
            computed_in = self.readers.get(id(op), ())
            for v in op.outputs:
                for u in self.users.get(v, []):
                    for c in self.readers.get(id(u), ()):
                        if c is not g and all(c is not h for h in computed_in):
                            out[id(c)] = c
        return list(out.values())

    def producers_of(self, g: _Group) -> list[_Group]:
        """The groups owning a value ``g`` reads from memory (the reverse of ``consumers``)."""
        ops = g.ops()
        inside = set(map(id, ops))
        out: dict[int, _Group] = {}
        for op in ops:
            for v in op.inputs:
                p = self.producer.get(v)
                h = self.home.get(id(p)) if p is not None and id(p) not in inside else None
                if h is not None and h is not g:
                    out[id(h)] = h
        return list(out.values())

    def _reach(self, start: _Group, avoid: _Group, step: Callable[[_Group], list[_Group]],
               inside: Callable[[int], bool]) -> list[_Group]:
        """The groups reachable from ``start`` by ``step`` without entering ``avoid``,
        among those whose rank is ``inside`` the stretch (``start`` included)."""
        found, stack, seen = [start], [start], {id(start)}
        while stack:
            for g in step(stack.pop()):
                if g is not avoid and id(g) not in seen and inside(self.rank[id(g)]):
                    seen.add(id(g))
                    found.append(g)
                    stack.append(g)
        return found

    def creates_cycle(self, a: _Group, b: _Group) -> bool:
        """Whether merging ``a`` and ``b`` would make a kernel that both feeds and reads
        another kernel: a path from one to the other through a third group. Only groups
        ranked between the two can be on such a path."""
        lo, hi = (a, b) if self.rank[id(a)] < self.rank[id(b)] else (b, a)
        top = self.rank[id(hi)]
        seen = {id(lo)}
        stack = [c for c in self.consumers(lo) if c is not hi and self.rank[id(c)] < top]
        while stack:
            g = stack.pop()
            if id(g) in seen:
                continue
            seen.add(id(g))
            for c in self.consumers(g):
                if c is hi:
                    return True
                if id(c) not in seen and self.rank[id(c)] < top:
                    stack.append(c)
        return False

    def _reorder_for_merge(self, a: _Group, b: _Group) -> None:
        """Makes ``a`` and ``b`` adjacent in the order, keeping it topological (Pearce and
        Kelly's reordering, "A dynamic topological sort algorithm for directed acyclic
        graphs", 2006, for the edge later -> earlier): the groups the later one depends
        on within the stretch move before both, the groups depending on the earlier one
        after both. Valid because no path joins them through a third group."""
        lo, hi = (a, b) if self.rank[id(a)] < self.rank[id(b)] else (b, a)
        low, top = self.rank[id(lo)], self.rank[id(hi)]
        forward = self._reach(lo, hi, self.consumers, lambda r: r < top)
        backward = self._reach(hi, lo, self.producers_of, lambda r: r > low)
        moved = sorted(backward, key=lambda g: self.rank[id(g)]) + sorted(forward, key=lambda g: self.rank[id(g)])
        for g, r in zip(moved, sorted(self.rank[id(g)] for g in moved), strict=True):
            self.rank[id(g)] = r

    def add(self, g: _Group, op: Op, owned: bool) -> None:
        (g.owned if owned else g.copies).append(op)
        if owned:
            self.home[id(op)] = g
        self.readers.setdefault(id(op), []).append(g)

    def merge(self, into: _Group, other: _Group, kind: str | None = None) -> None:
        if self.rank:
            self._reorder_for_merge(into, other)
            self.rank[id(into)] = min(self.rank[id(into)], self.rank.pop(id(other)))
        for op in other.owned:
            self.readers[id(op)].remove(other)
            self.add(into, op, owned=True)
        for op in other.copies:
            self.readers[id(op)].remove(other)
            if all(op is not c for c in into.copies):
                self.add(into, op, owned=False)
        if kind:
            into.kind = kind

    def within_bounds(self, g: _Group, extra: int = 0) -> bool:
        return g.size() + extra <= COST.max_ops

    def unsupported(self, group: FusionGroup) -> str | None:
        """Why the backend cannot lower ``group`` (a structural check), or None."""
        return None if self.supports is None else self.supports(group)

    def trial(self, g: _Group, kind: GroupKind, shape: tuple[int, ...], owned: list[Op],
              copies: list[Op]) -> FusionGroup:
        """The group ``g`` would become with ``owned`` and ``copies`` added, as ``kind`` over
        ``shape`` (nothing changes)."""
        t = _Group(g.owned[0])
        t.kind, t.shape = kind, shape
        t.owned, t.copies = g.owned + owned, g.copies + copies
        return self.finish(t)

    def finish(self, g: _Group, needed: set[Value] | None = None) -> FusionGroup:
        order = sorted(g.ops(), key=lambda op: self.position[id(op)])
        internal = {v for op in order for v in op.outputs}
        inputs: list[Value] = []
        for op in order:
            for v in op.inputs:
                if v not in internal and v not in inputs:
                    inputs.append(v)
        owned = set(map(id, g.owned))
        member = set(map(id, order))
        outputs = [
            v for op in order if id(op) in owned for v in op.outputs
            if (v in needed if needed is not None else
                v in self.results or any(id(u) not in member for u in self.users.get(v, [])))
        ]
        return FusionGroup(tuple(order), tuple(inputs), tuple(outputs), g.kind)


def _refusal(part: _Partition, p: Op, g: _Group) -> str | None:
    """Why producer ``p`` cannot be fused into group ``g`` (None if it can)."""
    if g.kind is GroupKind.MATMUL:
        return "a matmul kernel reads its operands from memory"
    if g.kind is GroupKind.KERNEL:
        return f"{g.owned[0].prim.name}'s own kernel reads its operands from memory"
    if g.kind is GroupKind.HOST or p.prim.kind is OpKind.HOST:
        host = g.owned[0] if g.kind is GroupKind.HOST else p
        return f"{host.prim.name} runs on the host between kernels, on buffers in memory"
    if p.prim.kind not in _ABSORBABLE and p.prim is not P.gather:
        return {
            OpKind.REDUCTION: "a reduction's result is materialized (row fusion may still join it)",
            OpKind.CONTRACTION: "a matmul's result is materialized (epilogue fusion may join it)",
        }.get(p.prim.kind, f"{p.prim.name} is lowered on its own")
    if not part.within_bounds(g, 1):
        return f"kernel size bound ({COST.max_ops} ops) reached"
    return None


def _absorb_producers(part: _Partition, g: _Group) -> None:
    """Phase 1 for one group: pull in producers until none qualifies."""
    work = [v for op in g.ops() for v in op.inputs]
    while work:
        v = work.pop()
        p = part.producer.get(v)
        if p is None or any(p is op for op in g.ops()):
            continue
        consumer = next((op for op in g.ops() if v in op.inputs), g.owned[0])
        reason = _refusal(part, p, g)
        if reason is None:
            users = part.users.get(v, [])
            # Only owned users count: a recomputed (copied) user also runs in other
            # kernels, which then need this value too.
            owned_ids = set(map(id, g.owned))
            all_inside = all(id(u) in owned_ids for u in users) and v not in part.results
            owner = part.home.get(id(p))
            owned = all_inside and owner is None
            if owned or p.prim in COST.cheap:
                reason = part.unsupported(part.trial(g, g.kind, g.shape, [p] if owned else [], [] if owned else [p]))
                if reason is None:
                    part.add(g, p, owned=owned)
            else:
                reason = (
                    f"{p.prim.name} is not cheap enough to recompute for its "
                    f"{len(users)} users in different kernels"
                    if owner is None else "already fused into another kernel"
                )
        if reason is not None:
            part.refusals.append(Refusal(p, consumer, reason))
            continue
        work.extend(p.inputs)


def _reduces_innermost(g: _Group) -> bool:
    """Whether every reduction of ``g`` reduces trailing axes of ``g.shape`` (rows)."""
    for op in g.owned:
        if op.prim.kind is OpKind.REDUCTION:
            axes = P.reduction_axes(op)
            if op.inputs[0].shape != g.shape or axes != tuple(range(len(g.shape) - len(axes), len(g.shape))):
                return False
    return True


def _rows_shape(g: _Group) -> tuple[int, ...] | None:
    """The shape of ``g``'s rows: its iteration shape without the reduced axes."""
    for op in g.owned:
        if op.prim.kind is OpKind.REDUCTION:
            return op.output.shape
    return None


def _totals_rows_of(g: _Group, pg: _Group) -> bool:
    """Whether ``g`` reduces one value per row of the row kernel ``pg`` over all its rows:
    its reductions cover every axis of its shape, whose axes longer than 1 are ``pg``'s
    rows'."""
    rows = _rows_shape(pg)
    if rows is None or math.prod(rows) <= 1 or [n for n in g.shape if n != 1] != [n for n in rows if n != 1]:
        return False
    reduces = [op for op in g.owned if op.prim.kind is OpKind.REDUCTION]
    return bool(reduces) and all(op.inputs[0].shape == g.shape
                                 and sorted(P.reduction_axes(op)) == list(range(len(g.shape))) for op in reduces)


def _row_capable(g: _Group) -> bool:
    return g.kind is GroupKind.LOOP or (g.kind in (GroupKind.REDUCE, GroupKind.ROW) and _reduces_innermost(g))


def _row_fusion(part: _Partition, groups: list[_Group]) -> None:
    """Phase 2: kernels over the same rows merge into one row kernel: reductions over
    the innermost axes, the elementwise ops before them and the consumers that broadcast
    their results back over the rows (softmax, layernorm). A merge that would form a
    cycle is retried after the others, since merging a reduction first can remove it."""
    for g in reversed(list(groups)):
        if g not in groups or not _row_capable(g):
            continue
        merged_any = True
        while merged_any:
            merged_any = False
            producers = {}
            for v in part.finish(g).inputs:
                op = part.producer.get(v)
                pg = part.home.get(id(op)) if op is not None else None
                if pg is None or pg is g or not _row_capable(pg):
                    continue
                # Same rows, a per-row epilogue (g runs over pg's reduced shape), or a
                # total of one value per row over the rows (a mean loss over a batch).
                if (pg.shape == g.shape or (g.kind is GroupKind.LOOP and _rows_shape(pg) == g.shape)
                        or _totals_rows_of(g, pg)):
                    producers[id(pg)] = pg
            for pg in producers.values():
                has_reduction = any(op.prim.kind is OpKind.REDUCTION for op in g.owned + pg.owned)
                kind = GroupKind.ROW if has_reduction else GroupKind.LOOP
                shape = pg.shape if len(pg.shape) > len(g.shape) or _totals_rows_of(g, pg) else g.shape
                if _try_merge(part, g, pg, kind, groups, "rows", shape):
                    merged_any = True
                    break


def _reduce_epilogue_fusion(part: _Partition, groups: list[_Group]) -> None:
    """Phase 2, for reductions over other than the innermost axes (a bias gradient, a
    column sum): a loop kernel over the reduction's result (the bias's SGD update) joins the
    reduce kernel, which computes it from the totals it just finished, instead of a kernel
    of its own reading them back (a horizontal one with the other updates: W5's three bias
    updates took 0.33 s to compile)."""
    for pg in [g for g in groups if g.kind is GroupKind.REDUCE and not _reduces_innermost(g)]:
        out_shape = _rows_shape(pg)
        for c in part.consumers(pg):
            if c.kind is GroupKind.LOOP and c.shape == out_shape and c in groups:
                _try_merge(part, pg, c, GroupKind.REDUCE, groups, "rows", pg.shape)


def _try_merge(part: _Partition, a: _Group, b: _Group, kind: GroupKind, groups: list[_Group],
               phase: str, shape: tuple[int, ...] | None = None) -> bool:
    """Merges ``b`` into ``a`` (iterating over ``shape``, by default ``a``'s) if that
    stays bounded, acyclic and supported; else records why not."""
    reason = None
    if not part.within_bounds(a, b.size()):
        reason = f"kernel size bound ({COST.max_ops} ops) reached"
    elif part.creates_cycle(a, b):
        reason = "another kernel would both read one and feed the other"
    else:
        copies = [op for op in b.copies if all(op is not c for c in a.copies)]
        reason = part.unsupported(part.trial(a, kind, shape or a.shape, b.owned, copies))
    if reason is not None:
        part.refusals.append(Refusal(*_edge(part, b, a), reason, phase))
        return False
    part.merge(a, b, kind)
    a.shape = shape or a.shape
    groups.remove(b)
    return True


def _edge(part: _Partition, producer: _Group, consumer: _Group) -> tuple[Op, Op]:
    """An op of ``producer`` and an op of ``consumer`` reading it (for sibling merges,
    which have no such edge, the first op of each)."""
    owned = set(map(id, producer.owned))
    for op in consumer.ops():
        for v in op.inputs:
            p = part.producer.get(v)
            if p is not None and id(p) in owned:
                return p, op
    return producer.owned[0], consumer.owned[0]


def _takes_epilogue(g: _Group) -> bool:
    """A matmul, or a kernel of its own whose primitive runs an elementwise epilogue
    (``P.TAKES_EPILOGUE``: conv)."""
    return g.kind is GroupKind.MATMUL or (g.kind is GroupKind.KERNEL and g.owned[0].prim in P.TAKES_EPILOGUE)


def _epilogue_fusion(part: _Partition, groups: list[_Group]) -> None:
    """Phase 3: a matmul (or a conv) and the loop kernel consuming its result become one
    kernel."""
    for m in [g for g in groups if _takes_epilogue(g)]:
        root = m.owned[0]
        (out,) = root.outputs
        consumers = {id(part.home[id(u)]): part.home[id(u)] for u in part.users.get(out, [])}
        loops = [c for c in consumers.values() if c.kind is GroupKind.LOOP and c.shape == out.shape]
        for c in consumers.values():
            if c.kind is not GroupKind.LOOP or c.shape != out.shape:
                reason = f"an epilogue is a loop over the product's shape, not a {c.kind} kernel"
            elif len(loops) > 1:
                reason = f"the product is read by {len(loops)} loop kernels; an epilogue joins a lone one"
            else:
                continue
            part.refusals.append(Refusal(*_edge(part, m, c), reason, "epilogue"))
        host = m
        if len(loops) == 1 and len(m.owned) == 1:
            loop = loops[0]
            if _try_merge(part, loop, m, m.kind, groups, "epilogue"):
                # The matmul (conv) runs first; keep it as the group's first owned op.
                loop.owned.sort(key=lambda op: op is not root)
                host = loop
        if root.prim is P.conv:
            _pool_epilogue(part, host, groups)


# Pooling ops a conv kernel runs on its finished planes (``codegen/conv.py``).
_POOL_EPILOGUES = (P.max_pool, P.avg_pool)


def _pool_epilogue(part: _Partition, host: _Group, groups: list[_Group]) -> None:
    """A conv kernel also takes a pooling kernel that reads one of its results (the conv's,
    or its activation's): the pool then reads each plane just written, from the cache,
    instead of the whole result from memory in a kernel of its own. The target's
    ``supports`` decides which pools (over the spatial axes only) it lowers."""
    pools: dict[int, _Group] = {}
    for op in list(host.owned):
        for v in op.outputs:
            for u in part.users.get(v, []):
                g = part.home[id(u)]
                if (g is not host and g.kind is GroupKind.KERNEL and len(g.owned) == 1
                        and g.owned[0].prim in _POOL_EPILOGUES and g.owned[0].inputs[0] is v):
                    pools.setdefault(id(g), g)
    for g in pools.values():
        _try_merge(part, host, g, host.kind, groups, "epilogue")


def _reduced_axes(g: _Group) -> set[tuple[int, ...] | None]:
    return {op.attrs.get("axes") for op in g.owned if op.prim.kind is OpKind.REDUCTION}


def _sibling_fusion(part: _Partition, groups: list[_Group]) -> None:
    """Phase 4: kernels over the same iteration space (and, for reductions, the same
    axes) that read a common input merge. Only groups sharing an input are compared."""
    for kind in (GroupKind.LOOP, GroupKind.REDUCE):
        candidates = [g for g in groups if g.kind == kind]
        readers: dict[Value, list[_Group]] = {}
        for g in candidates:
            for v in part.finish(g).inputs:
                readers.setdefault(v, []).append(g)
        live = set(map(id, candidates))
        for a in candidates:
            if id(a) not in live:
                continue
            partners = dict.fromkeys(
                b for v in part.finish(a).inputs for b in readers.get(v, ())
                if b is not a and id(b) in live and b.shape == a.shape
            )
            for b in partners:
                if id(b) in live and (kind is GroupKind.LOOP or _reduced_axes(a) == _reduced_axes(b)):
                    if _try_merge(part, a, b, kind, groups, "siblings"):
                        live.discard(id(b))


def fuse(fn: Function, supports: Callable[[FusionGroup], str | None] | None = None) -> FusedFunction:
    """Partitions ``fn`` into fusion groups (see the module docstring).

    ``supports(group)`` returns None if the backend can lower a candidate group, or why
    not, from the group's structure alone; no phase keeps a merge it refuses. Guarantees: every op is owned by exactly one
    group; groups are convex (no path leaves a group and re-enters it) and listed in a
    valid execution order; a group's outputs are exactly the values it owns that other
    groups or the function's results need. A control-flow op (scan, while_loop, cond) is a
    group of its own, and no group spans one (``fusion_control``).
    """
    if any(op.prim in P.CONTROL_FLOW for op in fn.ops):
        from fusejit.ir.transforms.fusion_control import fuse_around_control_flow

        return fuse_around_control_flow(fn, lambda stretch: fuse(stretch, supports))
    part = _Partition(fn, supports)
    groups: list[_Group] = []
    for op in reversed(fn.ops):
        if id(op) in part.home:
            continue
        g = _Group(op)
        part.home[id(op)] = g
        part.readers.setdefault(id(op), []).append(g)
        groups.append(g)
        _absorb_producers(part, g)
    groups.reverse()  # by root position: a topological order (a group's root is its last op)
    part.order_groups(groups)
    _row_fusion(part, groups)
    _reduce_epilogue_fusion(part, groups)
    _epilogue_fusion(part, groups)
    _sibling_fusion(part, groups)
    finished = _finalize(part, groups)
    finished = _horizontal_fusion(finished, part)
    kernels_of: dict[int, set[int]] = {}
    for k, g in enumerate(finished):
        for op in g.ops:
            kernels_of.setdefault(id(op), set()).add(k)
    refusals = [r for r in part.refusals
                if not kernels_of.get(id(r.producer), set()) & kernels_of.get(id(r.consumer), set())]
    return FusedFunction(fn, tuple(finished), tuple(refusals))


def _finalize(part: _Partition, groups: list[_Group]) -> list[FusionGroup]:
    """Orders groups topologically and drops groups nobody needs (their ops were all
    recomputed where they were used).

    A group's outputs are only known now: a kernel recomputing a cheap op reads that op's
    operands, which the op's owner must then store. When that gives the owner outputs its
    kernel cannot write (another iteration space), the kernels that recompute an op
    whose result the owner stores anyway read it instead; a group still unsupported
    after that is split, one kernel per op, and the report says why."""
    while True:
        needed = set(part.fn.results)
        for g in groups:
            needed |= set(part.finish(g).inputs)
        live = [g for g in groups  # a run-time callback is needed for its effect
                if any(any(v in needed for v in op.outputs) or has_effect(op) for op in g.owned)]
        if len(live) < len(groups):
            groups = live
            continue
        changed = False
        for g in groups:
            reason = part.unsupported(part.finish(g, needed))
            if reason is None:
                continue
            stored = {v for op in g.owned for v in op.outputs if v in needed}
            for h in groups:
                keep = [c for c in h.copies if part.home.get(id(c)) is not g or not set(c.outputs) & stored]
                if len(keep) < len(h.copies):
                    for c in h.copies:
                        if all(c is not k for k in keep):
                            part.readers[id(c)].remove(h)
                    h.copies, changed = keep, True
            if not changed and len(g.owned) + len(g.copies) > 1:
                part.refusals.append(Refusal(g.owned[0], g.owned[-1], f"{reason}; split into one kernel per op",
                                             "finalize"))
                groups = _split(part, groups, g)
                changed = True
            if changed:
                break
        if not changed:
            break
    by_position = sorted(groups, key=lambda g: min(part.position[id(op)] for op in g.owned))
    return _topological([part.finish(g, needed) for g in by_position])


def _split(part: _Partition, groups: list[_Group], g: _Group) -> list[_Group]:
    """``groups`` with ``g`` replaced by one group per op it holds: the ops it owns, and
    the ops it recomputes whose owner is gone (every reader recomputed them)."""
    live = set(map(id, groups))
    singles = []
    for op in g.owned + g.copies:
        part.readers[id(op)].remove(g)
        home = part.home.get(id(op))
        if home is not g and home is not None and id(home) in live:
            continue  # a copy of an op another kernel stores: read from memory
        single = _Group(op)
        part.home[id(op)] = single
        part.readers[id(op)].append(single)
        singles.append(single)
    i = groups.index(g)
    return groups[:i] + singles + groups[i + 1:]


_HORIZONTAL_TRIES = 4


def _horizontal_fusion(groups: list[FusionGroup], part: _Partition) -> list[FusionGroup]:
    """Phase 5: loop kernels that do not depend on each other (optimizer updates) run in
    one call. Groups with no path between them can share a call wherever a topological
    order puts it. (Reduce kernels, bias gradients, are not proposed: a horizontal kernel
    of reductions is a strategy the code generator does not have.) Only groups needed by
    the same overlapped collectives (``collectives.overlapped``) share a call: one needed
    by the first gradient bucket's psum must not wait for the kernels of the next bucket,
    which would start that psum later."""
    # A value recomputed by several groups may be an output of more than one: its first
    # producer is the one a reader depends on (groups come in a topological order).
    producer: dict[int, int] = {}
    for i, g in enumerate(groups):
        for v in g.outputs:
            producer.setdefault(id(v), i)
    ancestors: list[int] = []  # bit j of ancestors[i]: group i (transitively) reads group j
    for g in groups:
        bits = 0
        for v in g.inputs:
            j = producer.get(id(v))
            if j is not None:
                bits |= ancestors[j] | (1 << j)
        ancestors.append(bits)
    feeds = [0] * len(groups)  # bit j: group j, an overlapped collective, (transitively) reads group i
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        mine = feeds[i] | (1 << i if g.kind is GroupKind.HOST and C.overlapped(g.ops[0]) else 0)
        for v in g.inputs:
            j = producer.get(id(v))
            if j is not None and j != i:
                feeds[j] |= mine
    buckets: list[list[int]] = []
    bucket_of: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        # A view needs no kernel at all; in a horizontal kernel it would be a copy.
        if g.kind is not GroupKind.LOOP or is_view(g, part.results):
            continue
        # Only the latest few buckets are tried: it bounds the work on very wide graphs.
        for bucket in buckets[-_HORIZONTAL_TRIES:]:
            independent = all(not (ancestors[i] >> j) & 1 for j in bucket) and feeds[bucket[0]] == feeds[i]
            if independent:  # members come earlier, so none of them can read group i
                reason = part.unsupported(_horizontal([groups[j] for j in bucket + [i]]))
                if reason is None:
                    bucket.append(i)
                    bucket_of[i] = bucket
                    break
                part.refusals.append(Refusal(groups[bucket[0]].ops[0], g.ops[0], reason, "horizontal"))
        else:
            buckets.append([i])
            bucket_of[i] = buckets[-1]
    merged: dict[int, FusionGroup] = {}
    for bucket in buckets:
        merged[id(bucket)] = groups[bucket[0]] if len(bucket) == 1 else _horizontal([groups[j] for j in bucket])
    # Emit in a topological order: each merged group once all of its members' inputs exist.
    units: list[FusionGroup] = []
    seen: set[int] = set()
    for i, g in enumerate(groups):
        bucket = bucket_of.get(i)
        unit = g if bucket is None else merged[id(bucket)]
        if id(unit) not in seen:
            seen.add(id(unit))
            units.append(unit)
    return _topological(units)


def _horizontal(parts: list[FusionGroup]) -> FusionGroup:
    return FusionGroup(
        tuple(op for g in parts for op in g.ops),
        tuple(dict.fromkeys(v for g in parts for v in g.inputs)),
        tuple(v for g in parts for v in g.outputs),
        GroupKind.HORIZONTAL,
        tuple(parts),
    )


def _topological(units: list[FusionGroup]) -> list[FusionGroup]:
    """``units`` in an order where each runs after the units producing its inputs (stable:
    already-ordered units keep their order). A cycle between kernels is a fusion bug."""
    producer = {id(v): u for u in units for v in u.outputs}
    order: list[FusionGroup] = []
    state: dict[int, str] = {}

    def visit(u: FusionGroup) -> None:
        if state.get(id(u)) == "done":
            return
        assert state.get(id(u)) != "visiting", "fusion produced a cycle between kernels"
        state[id(u)] = "visiting"
        for v in u.inputs:
            dep = producer.get(id(v))
            if dep is not None and dep is not u:
                visit(dep)
        state[id(u)] = "done"
        order.append(u)

    for u in units:
        visit(u)
    return order


def make_group(ops: list[Op], fn_results: set[Value], users: dict[Value, list[Op]], kind: GroupKind) -> FusionGroup:
    """The group of ``ops``: inputs defined outside it, outputs needed outside it."""
    inside = {v for op in ops for v in op.outputs}
    member = set(map(id, ops))
    inputs: list[Value] = []
    for op in ops:
        for v in op.inputs:
            if v not in inside and v not in inputs:
                inputs.append(v)
    outputs = [
        v
        for op in ops
        for v in op.outputs
        if v in fn_results or any(id(u) not in member for u in users.get(v, []))
    ]
    return FusionGroup(tuple(ops), tuple(inputs), tuple(outputs), kind)


def one_op_per_group(fn: Function) -> FusedFunction:
    """The unfused partition: every op is its own kernel."""
    users = fn.users()
    results = set(fn.results)
    return FusedFunction(fn, tuple(make_group([op], results, users, group_kind_of(op)) for op in fn.ops))


def print_fused(fused: FusedFunction) -> str:
    """The function's text with each kernel's ops under a ``// kernel`` header. An op
    recomputed in several kernels is defined in the first and shown as a
    ``// recomputed:`` comment in the others, so the text parses back (``fj.ir.parse``)."""
    text = print_function(fused.function).splitlines()
    n = len(fused.function.ops)
    line_of = {id(op): line for op, line in zip(fused.function.ops, text[1 : 1 + n], strict=True)}
    out = [text[0]]
    printed: set[int] = set()
    for k, group in enumerate(fused.groups):
        label = scope_label(group.ops)
        out.append(
            f"  // kernel {k}: {group.kind}{f' [{label}]' if label else ''}, {len(group.ops)} ops, "
            f"reads {group.bytes_read} B, writes {group.bytes_written} B"
        )
        for op in group.ops:
            line = line_of[id(op)]
            out.append(f"  // recomputed: {line.strip()}" if id(op) in printed else line)
            printed.add(id(op))
    out.extend(text[1 + n :])
    return "\n".join(out) + "\n"


def fusion_report(fused: FusedFunction) -> str:
    """Every kernel with its scopes (``fusejit.ir.scopes``), ops and source lines, bytes
    moved, and every producer -> consumer edge left unfused with the rule that refused it."""
    lines = [f"fusion report for @{fused.function.name}: {len(fused.function.ops)} ops in "
             f"{len(fused.groups)} kernels"]
    for k, g in enumerate(fused.groups):
        label = scope_label(g.ops)
        lines.append(f"kernel {k} ({g.kind}{f'; {label}' if label else ''}): reads {g.bytes_read} B, "
                     f"writes {g.bytes_written} B")
        for op in g.ops:
            lines.append(f"    {op.prim.name:18} {op.output.type if len(op.outputs) == 1 else ''}"
                         f"{f'  # {short_loc(op.loc)}' if op.loc else ''}")
    unique = list(dict.fromkeys(str(r) for r in fused.refusals))
    lines.append(f"unfused edges: {len(unique)}")
    lines += [f"    {r}" for r in unique]
    return "\n".join(lines) + "\n"
