"""Host ops: primitives the runtime runs between kernels, on concrete host arrays.

Some primitives are not kernels: a collective over MPI, a print or a Python callback,
a LAPACK call. Their primitive is declared with ``kind=OpKind.HOST``; then

* fusion gives each such op a group of its own (``GroupKind.HOST``; the fusion report
  says "<op> runs on the host between kernels" for every edge to it), and nothing is
  lowered for it (``codegen.lowering.host_support``);
* the call plan (``fusejit.runtime.plan``) gives its inputs and outputs buffers like any
  kernel's (arena, parameters, results), and the CPU runner calls its rule in program
  order, between the kernels before and after it;
* no pass evaluates it at compile time (constant folding skips ``OpKind.HOST``);
* the interpreter runs the primitive's ``impl``, as for any op: keep the two in step
  (the collectives' ``impl`` and rule call the same function).

Adding one is one entry in ``HOST_RULES``::

    HOST_RULES[P.my_op] = HostRule(lambda inputs, attrs: (np.linalg.inv(inputs[0]),))

``HostRule.run(inputs, attrs)`` gets one array per operand, of the operand's IR shape
and dtype (C-ordered; treat them as read-only), and the op's attributes; it returns one
array per output (any memory: the runtime copies it into the output's buffer, in the
output's dtype). ``inplace=((o, i),)`` lets it write output ``o`` over operand ``i``
instead: it then gets, as operand ``i``, an array it may overwrite (the output's own
buffer when the plan could place the output in the operand's dead buffer, else a copy
of the operand made in the output's buffer) and returns that same array: MPI's in-place
``Allreduce`` works so, with no copy in the steady state. An exception from a rule gets
a note naming the op and its source line and propagates unchanged.

A rule with ``start`` may also run in two halves, for an op that asks to
(``collectives.overlapped``: ``psum(..., overlap=True)``): the plan puts its start right
after the kernel producing its operand and its wait right before the first kernel
reading its result (``HostStepPlan.phase``), and the kernels in between run
while MPI works. ``start(inputs, attrs)`` gets the operands as ``run`` does (``inplace``
applies the same way) and returns a ``communicator.Pending`` whose ``wait()`` leaves the
outputs in the arrays it was given (the in-place outputs; a split rule has no other).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.ir import collectives as C
from fusejit.ir import communicator
from fusejit.ir import primitives as P
from fusejit.ir.core import Op
from fusejit.ir.host_callbacks import run_callback
from fusejit.ir.transforms.fusion import FusionGroup, GroupKind

HostFn = Callable[[tuple[np.ndarray, ...], Mapping[str, Any]], Sequence[np.ndarray]]
StartFn = Callable[[tuple[np.ndarray, ...], Mapping[str, Any]], communicator.Pending]


@dataclass(frozen=True, slots=True)
class HostRule:
    """How the runtime runs one host primitive (module docstring)."""

    run: HostFn
    inplace: tuple[tuple[int, int], ...] = ()  # (output, operand) pairs that may share a buffer
    start: StartFn | None = None  # the first half of ``run``, for an overlapped op (module docstring)


HOST_RULES: dict[P.Primitive, HostRule] = {
    P.psum: HostRule(lambda xs, a: (C.allreduce_into(xs[0], "sum", "psum"),), inplace=((0, 0),),
                     start=lambda xs, a: C.allreduce_start(xs[0], "sum", "psum")),
    P.pmax: HostRule(lambda xs, a: (C.allreduce_into(xs[0], "max", "pmax"),), inplace=((0, 0),)),
    P.all_gather: HostRule(lambda xs, a: (C.gather_along(xs[0], a["axis"], a["size"]),)),
    P.psum_scatter: HostRule(lambda xs, a: (C.scatter_sum_along(xs[0], a["axis"], a["size"]),)),
    P.pbroadcast: HostRule(lambda xs, a: (C.broadcast_into(xs[0], a["root"]),), inplace=((0, 0),)),
    P.axis_index: HostRule(lambda xs, a: (C.rank_value(),)),
    P.debug_callback: HostRule(lambda xs, a: run_callback(xs, a["callback"], a["token"], a["batch"])),  # fj.debug
    # LAPACK (fusejit.ir.linalg): the rule is the primitive's impl, as the interpreter runs it
    **{p: HostRule(lambda xs, a, p=p: p.impl(*xs, **a)) for p in P.LINALG},
}


@dataclass(frozen=True, slots=True, eq=False)
class HostCall:
    """A host group in a call plan, in program order among the kernels."""

    group: FusionGroup

    @property
    def op(self) -> Op:
        return self.group.ops[0]

    @property
    def kind(self) -> GroupKind:
        return GroupKind.HOST

    @property
    def rule(self) -> HostRule:
        rule = HOST_RULES.get(self.op.prim)
        if rule is None:
            raise NotImplementedError(f"host op {self.op.prim.name} has no rule in fusejit.runtime.host_ops.HOST_RULES")
        return rule

    @property
    def display_name(self) -> str:
        return f"host_{self.op.prim.name}"

    @property
    def splits(self) -> bool:
        """Whether the op asks to run in two halves and its rule can (module docstring)."""
        return C.overlapped(self.op) and self.rule.start is not None


def host_runner(call: HostCall, shared: frozenset[int] = frozenset(),
                split: bool = False) -> Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], Any]:
    """A function ``run(inputs, outputs)`` that runs ``call``'s rule on flat ``inputs``
    and leaves its results in the flat ``outputs`` (buffers from the call plan).
    ``shared``: the outputs the plan placed in their operand's buffer (the same memory:
    nothing is copied for them). ``split``: ``run`` only starts the op (the rule's
    ``start``) and returns the ``communicator.Pending`` to wait for before the outputs
    are read."""
    op, rule = call.op, call.rule
    in_shapes = tuple(v.shape for v in op.inputs)
    out_shapes = tuple(v.shape for v in op.outputs)
    copies = tuple((o, i) for o, i in rule.inplace if o not in shared)
    run_rule, attrs, inplace = (rule.start if split else rule.run), op.attrs, rule.inplace
    where = f"while executing host op {op.prim.name}{f' at {op.loc}' if op.loc else ''}"
    site = f"{op.prim.name} at {op.loc}" if op.loc else None
    call_site = communicator.CALL_SITE

    def prepare(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> tuple[list, list]:
        args = [a.reshape(s) for a, s in zip(inputs, in_shapes, strict=True)]
        dests = [a.reshape(s) for a, s in zip(outputs, out_shapes, strict=True)]
        for o, i in copies:
            np.copyto(dests[o], args[i])
        for o, i in inplace:
            args[i] = dests[o]
        return args, dests

    def rule_on(args: list[np.ndarray]) -> Any:
        call_site.where = site  # named by a collective's mismatch error (communicator.CALL_SITE)
        try:
            return run_rule(tuple(args), attrs)
        except Exception as e:
            e.add_note(where)
            raise
        finally:
            call_site.where = None

    def start(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> communicator.Pending:
        return rule_on(prepare(inputs, outputs)[0])

    def run(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        args, dests = prepare(inputs, outputs)
        results = rule_on(args)
        if len(results) != len(dests):
            raise RuntimeError(f"host rule of {op.prim.name} returned {len(results)} arrays for {len(dests)} "
                               "outputs")
        for o, (r, d) in enumerate(zip(results, dests, strict=True)):
            if not (inplace and any(o == k and r is d for k, _ in inplace)):
                np.copyto(d, np.asarray(r).reshape(d.shape), casting="unsafe")

    return start if split else run


def finish(pending: Sequence[communicator.Pending | None]) -> None:
    """Waits for every started host op of ``pending`` (None: not started): a call that
    stops early, on an exception, must not leave MPI writing into buffers the next call
    reuses; every rank that passed a start's agreement check has started it too, so the
    waits complete (a rank that died instead aborts the job: MpiWorld)."""
    for p in pending:
        if p is not None:
            p.wait()
