"""IR text: the primary debugging interface.

    func @loss(%x: f32[512,64], %w: f32[64,10]) -> f32[] {
      %0: f32[512,10] = dot_general %x, %w  contract=((1),(0)) batch=((),())  # train.py:12
      %1: f32[512,10] = tanh %0                                               # train.py:13
      %2: f32[]       = reduce_sum %1  axes=(0,1)                             # train.py:14
      return %2
    }

Parameters keep their (validated) names, op results are numbered in body order, the
type column and the source-line comments are aligned. A comment also shows the
``fj.named_scope`` path of the op (``# train.py:12 block1/dense``) and marks derivative
ops (``# bwd of train.py:12``: made by a reverse sweep; ``jvp of``: by forward mode). Attributes print in the order the
primitive declares them, except those the result type already shows. Functions held by
attributes (custom_vjp_call's rules, loop bodies, branches) print after the function that uses them. The text
is stable: printing the parse of a printed function gives the same text.
"""

from __future__ import annotations

import math
import os
import re

from fusejit.ir.core import AttrValue, Function, Op, SourceLoc, Value
from fusejit.ir.dtypes import DType

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_COMMENT_COLUMN_LIMIT = 100


def print_function(fn: Function) -> str:
    """The text of ``fn`` followed by the functions its ops refer to."""
    names = _FunctionNames()
    names.name_of(fn)
    chunks: list[str] = []
    done: set[int] = set()
    while len(done) < len(names.order):
        pending = next(f for f in names.order if id(f) not in done)
        done.add(id(pending))
        chunks.append(_print_one(pending, names))
    return "\n\n".join(chunks) + "\n"


class _FunctionNames:
    """Gives each function a unique, valid ``@name`` in order of first reference."""

    def __init__(self) -> None:
        self.order: list[Function] = []
        self._names: dict[int, str] = {}
        self._taken: set[str] = set()

    def name_of(self, fn: Function) -> str:
        if id(fn) not in self._names:
            base = fn.name if IDENTIFIER.match(fn.name) else "fn"
            name, k = base, 1
            while name in self._taken:
                name, k = f"{base}_{k}", k + 1
            self._taken.add(name)
            self._names[id(fn)] = name
            self.order.append(fn)
        return self._names[id(fn)]


def _print_one(fn: Function, names: _FunctionNames) -> str:
    value_names = _value_names(fn)

    def ref(v: Value) -> str:
        return "%" + value_names[v]

    params = ", ".join(f"{ref(p)}: {p.type}" for p in fn.params)
    result_types = [str(r.type) for r in fn.results]
    results = result_types[0] if len(result_types) == 1 else f"({', '.join(result_types)})"
    lines = [f"func @{names.name_of(fn)}({params}) -> {results} {{"]

    heads = [", ".join(f"{ref(v)}: {v.type}" for v in op.outputs) for op in fn.ops]
    head_width = max((len(h) for h in heads), default=0)
    bodies = []
    for op, head in zip(fn.ops, heads, strict=True):
        operands = ", ".join(ref(v) for v in op.inputs)
        attrs = " ".join(f"{k}={format_attr(v, names)}" for k, v in _printed_attrs(op))
        body = f"  {head.ljust(head_width)} = {op.prim.name}"
        body += f" {operands}" if operands else ""
        body += f"  {attrs}" if attrs else ""
        bodies.append(body)
    comment_column = min(max((len(b) for b in bodies), default=0), _COMMENT_COLUMN_LIMIT) + 2
    for op, body in zip(fn.ops, bodies, strict=True):
        if op.loc is not None:  # a body past the column keeps two spaces before its comment
            pad = body.ljust(comment_column) if len(body) < comment_column else body + "  "
            body = f"{pad}# {short_loc(op.loc)}"
        lines.append(body)
    lines.append(f"  return {', '.join(ref(r) for r in fn.results)}".rstrip())
    lines.append("}")
    return "\n".join(lines)


def short_loc(loc: SourceLoc) -> str:
    """``file.py:12``: how the IR text, kernel headers and the fusion report show a line;
    ``bwd of file.py:12 block1/conv`` for an op of a reverse sweep traced in a scope."""
    scope = f" {loc.scope}" if loc.scope else ""
    return f"{loc.derivation_prefix()}{printable_file(loc.file)}:{int(loc.line)}{scope}"


def printable_file(path: str) -> str:
    """A source file's base name as one printable line (control characters become '?')."""
    return "".join(c if c.isprintable() else "?" for c in os.path.basename(path))


def _value_names(fn: Function) -> dict[Value, str]:
    names: dict[Value, str] = {}
    taken: set[str] = set()
    for i, p in enumerate(fn.params):
        name = p.name if p.name and IDENTIFIER.match(p.name) and not p.name[0].isdigit() else f"arg{i}"
        while name in taken:
            name = f"{name}_"
        taken.add(name)
        names[p] = name
    counter = 0
    for op in fn.ops:
        for v in op.outputs:
            names[v] = str(counter)
            counter += 1
    return names


def _printed_attrs(op: Op) -> list[tuple[str, AttrValue]]:
    return [(k, op.attrs[k]) for k, spec in op.prim.attrs.items() if not spec.implied_by_result]


def format_attr(value: AttrValue, names: _FunctionNames | None = None) -> str:
    """An attribute value as IR text: ``3``, ``1.5``, ``-inf``, ``true``, ``f32``,
    ``(0,1)``, ``((1),(0))``, ``@fn``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, DType):
        return value.value
    if isinstance(value, tuple):
        return "(" + ",".join(format_attr(v, names) for v in value) + ")"
    if isinstance(value, Function):
        assert names is not None, "a function attribute needs the printer's function names"
        return "@" + names.name_of(value)
    raise TypeError(f"cannot print attribute value {value!r}")

