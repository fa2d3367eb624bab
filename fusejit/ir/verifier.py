"""The IR verifier: a plain function that every pass's output must satisfy."""

from __future__ import annotations

from fusejit.ir.core import Function, Value
from fusejit.ir.primitives import PRIMITIVES, IRTypeError


class VerificationError(ValueError):
    """The function breaks an IR invariant; the message names the op and source line."""


def verify(fn: Function) -> Function:
    """See ``_verify_one``; nested functions are verified once each, however often they
    are referenced."""
    done: set[int] = set()
    pending = [fn]
    while pending:
        f = pending.pop()
        if id(f) in done:
            continue
        done.add(id(f))
        pending.extend(_verify_one(f))
    return fn


def _verify_one(fn: Function) -> list[Function]:
    """Checks that ``fn`` is well-formed typed SSA.

    Guarantees on success: every value is defined exactly once (a parameter or one op's
    output) before it is used; every op's primitive is registered, its attributes are
    valid, and its outputs have exactly the types its shape/dtype rule infers; every
    result is defined. Returns the nested functions (call rules, loop bodies, branches)
    to verify.
    """
    nested: list[Function] = []
    defined: set[Value] = set()

    def define(v: Value, what: str) -> None:
        if v in defined:
            raise VerificationError(f"@{fn.name}: {what} redefines a value (SSA allows one definition)")
        defined.add(v)

    for i, p in enumerate(fn.params):
        define(p, f"parameter {i}")
    for index, op in enumerate(fn.ops):
        where = f"@{fn.name}: op {index} ({op.prim.name}{f' at {op.loc}' if op.loc else ''})"
        if PRIMITIVES.get(op.prim.name) is not op.prim:
            raise VerificationError(f"{where}: unknown primitive")
        for k, v in enumerate(op.inputs):
            if v not in defined:
                raise VerificationError(f"{where}: operand {k} is used before it is defined")
        try:
            expected = op.prim.infer(tuple(v.type for v in op.inputs), dict(op.attrs))
        except IRTypeError as e:
            raise VerificationError(f"{where}: {e}") from None
        actual = tuple(v.type for v in op.outputs)
        if actual != expected:
            raise VerificationError(
                f"{where}: result types {', '.join(map(str, actual))} differ from the inferred "
                f"{', '.join(map(str, expected))}"
            )
        for v in op.outputs:
            define(v, where)
        nested += op.functions()
    for k, r in enumerate(fn.results):
        if r not in defined:
            raise VerificationError(f"@{fn.name}: result {k} is not defined in the function")
    return nested
