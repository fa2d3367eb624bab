"""Loop-invariant code motion for ``scan``: work a body does identically in every
iteration is done once, before the loop.

A scan body's value is *invariant* when it is one of the scan's consts or an op's output
whose inputs are all invariant. The reverse-mode rule already computes the invariants of
a backward sweep before it (``autodiff_control``); this pass does it for every scan, a
forward one included (a weight normalized, masked or exponentiated inside the step of a
recurrent network is computed once per call, not once per step).

What moves: invariant ops that compute (elementwise, reductions, matrix products,
gathers), with the layout and source ops they read (copied: they may have other readers
in the body). What stays, as XLA's while-loop invariant code motion leaves it by default:

* layout and source ops whose readers stay (a transposed weight read by a matrix product
  folds into the product's operand order; a broadcast bias is read in place by the fused
  kernel; hoisted, each would become an array stored once and read every iteration);
* an elementwise op whose result is larger than everything it reads, a broadcast scalar
  or bias made into a full array (*size-inflating*: the body computes it in registers);
* effects (``debug.print`` must print every iteration), host ops (collectives), calls and
  nested loops (their bodies are treated when this pass reaches them);
* everything in a scan of length 0, which must compute nothing.

Each hoisted value a body still reads becomes a new const of the scan. Guarantees: the
same results (the ops and their inputs are unchanged; only where they run); bodies of
nested scans are treated first, so a value invariant in two nested loops leaves both.
"""

from __future__ import annotations

import math

from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Op, Value
from fusejit.ir.transforms.dce import eliminate_dead_code, has_effect

# Kinds of ops that compute: worth running once instead of once per iteration.
COMPUTE = frozenset({P.OpKind.ELEMENTWISE, P.OpKind.REDUCTION, P.OpKind.CONTRACTION, P.OpKind.INDEXING,
                     P.OpKind.KERNEL})
# Moved only as inputs of a moved op: on their own they cost nothing or fold into a reader.
CARRIED = frozenset({P.OpKind.LAYOUT, P.OpKind.SOURCE})


def hoist_scan_invariants(fn: Function) -> Function:
    """``fn`` with each ``scan``'s invariant computations moved before it (module doc)."""
    if not any(op.prim is P.scan for op in fn.ops):
        return fn
    ops: list[Op] = []
    changed = False
    for op in fn.ops:
        if op.prim is not P.scan or op.attrs["length"] == 0:
            ops.append(op)
            continue
        new_ops = _hoist(op)
        changed = changed or new_ops[-1] is not op
        ops += new_ops
    return fn.replace(ops=tuple(ops)) if changed else fn


def _hoist(op: Op) -> list[Op]:
    """The ops replacing one scan ``op``: the hoisted copies, then the scan with the
    values they compute as new consts (``[op]`` when nothing moves)."""
    body = hoist_scan_invariants(op.attrs["body"])  # inner loops first
    nc = op.attrs["num_consts"]
    invariant: set[Value] = set(body.params[:nc])
    # Per invariant value, the most elements of a value it was computed from that was not
    # a broadcast or a constant (a size-inflating op makes more than that).
    source_size: dict[Value, int] = {p: math.prod(p.shape) for p in body.params[:nc]}
    moving: list[Op] = []
    for o in body.ops:
        if not all(v in invariant for v in o.inputs) or o.prim.kind not in COMPUTE | CARRIED or has_effect(o):
            continue
        invariant.update(o.outputs)
        biggest = max((source_size[v] for v in o.inputs), default=1)
        # A matrix product is worth computing once even when its result is the larger.
        inflating = o.prim.kind is not P.OpKind.CONTRACTION and any(math.prod(v.shape) > biggest for v in o.outputs)
        for v in o.outputs:
            size = math.prod(v.shape)
            source_size[v] = (1 if not o.inputs else biggest if inflating or o.prim is P.broadcast_in_dim
                              else min(size, biggest) if o.prim.kind in CARRIED else size)
        if o.prim.kind in COMPUTE and not inflating:
            moving.append(o)
    if not moving:
        return [op] if body is op.attrs["body"] else [_with_body(op, body, (), ())]
    # The layout and source ops the moving ops read, transitively: they are copied too.
    producer = body.producers()
    needed: set[int] = {id(o) for o in moving}
    stack = [v for o in moving for v in o.inputs]
    while stack:
        v = stack.pop()
        p = producer.get(v)
        if p is not None and id(p) not in needed:
            needed.add(id(p))
            stack += p.inputs
    copied = [o for o in body.ops if id(o) in needed]
    # Outside, the consts' params are the scan's const operands; every copied op gets
    # fresh outputs (the body may be shared by other scans).
    outside: dict[Value, Value] = dict(zip(body.params[:nc], op.inputs[:nc], strict=True))
    hoisted_ops = []
    for o in copied:
        outs = tuple(Value(v.type, v.name) for v in o.outputs)
        hoisted_ops.append(Op(o.prim, tuple(outside[v] for v in o.inputs), outs, o.attrs, o.loc))
        outside.update(zip(o.outputs, outs, strict=True))
    # Inside, the moved ops' outputs that something left in the body reads (or returns)
    # become new params after the consts.
    moved = {id(o) for o in moving}
    read = {v for o in body.ops if id(o) not in moved for v in o.inputs} | set(body.results)
    passed = [v for o in moving for v in o.outputs if v in read]
    return [*hoisted_ops, _with_body(op, body, passed, tuple(outside[v] for v in passed), moved)]


def _with_body(op: Op, body: Function, passed: list[Value] | tuple[()], operands: tuple[Value, ...],
               moved: set[int] | None = None) -> Op:
    """The scan ``op`` running ``body`` without the ``moved`` ops, whose ``passed``
    outputs it takes as new consts (``operands`` outside)."""
    nc = op.attrs["num_consts"]
    if passed:
        rename = {v: Value(v.type, v.name) for v in passed}
        kept = []
        for o in body.ops:
            if moved is not None and id(o) in moved:
                continue
            ins = tuple(rename.get(v, v) for v in o.inputs)
            kept.append(o if ins == o.inputs else Op(o.prim, ins, o.outputs, o.attrs, o.loc))
        body = eliminate_dead_code(Function(
            body.name, body.params[:nc] + tuple(rename[v] for v in passed) + body.params[nc:], tuple(kept),
            tuple(rename.get(v, v) for v in body.results)))
    inputs = op.inputs[:nc] + operands + op.inputs[nc:]
    attrs = {**op.attrs, "body": body, "num_consts": nc + len(passed)}
    return Op(op.prim, inputs, op.outputs, attrs, op.loc)
