"""Reading IR text back: ``parse(print_function(f))`` rebuilds ``f``.

The grammar is exactly what ``printer.py`` writes (whitespace and line breaks between
tokens are free; a ``#`` comment is only allowed after an op, on the op's line)::

    module    := function+
    function  := 'func' @NAME '(' [param (',' param)*] ')' '->' results '{'
                     op* 'return' [%NAME (',' %NAME)*] '}'
    param     := %NAME ':' type
    results   := type | '(' [type (',' type)*] ')'
    type      := DTYPE '[' [INT (',' INT)*] ']'
    op        := [%NAME ':' type (',' %NAME ':' type)*] '=' PRIMITIVE [%NAME (',' %NAME)*]
                     (ATTR '=' value)* ['#' FILE ':' LINE]
    value     := INT | FLOAT | 'nan' | 'inf' | '-inf' | 'true' | 'false' | DTYPE | @NAME
               | '(' [value (',' value)*] ')'

The first function is the one returned; the later ones are the functions that ``@NAME``
attributes refer to, in any order. Every op is checked with its primitive's ``infer``
against the result types the text declares. Any malformed input raises ``IRParseError``
(and nothing else) pointing at the offending token; nothing in the text is evaluated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fusejit.ir.core import AttrValue, Function, Op, SourceLoc, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.primitives import PRIMITIVES, AttrKind, Primitive, check_attr
from fusejit.ir.types import TensorType

_TOKEN = re.compile(
    r"""(?P<ws>[ \t\r\n]+)
      | (?P<comment>\#[^\n]*)
      | (?P<num>-inf(?![A-Za-z0-9_]) | -?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<value>%[A-Za-z0-9_]+)
      | (?P<func>@[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>->|[(){}\[\]:,=])
      | (?P<error>.)""",
    re.VERBOSE | re.DOTALL,
)
_INT = re.compile(r"-?[0-9]+")
_DTYPES = {d.value: d for d in DType}
_NAMED_FLOATS = {"nan": float("nan"), "inf": float("inf")}
_MAX_DEPTH = 32  # tuple nesting; attributes need 2, the limit keeps recursion bounded
_MAX_INT_DIGITS = 4000  # below Python's int/str conversion limit, so int() cannot fail
_MAX_DIM = 2**63 - 1  # shapes must fit the int64 sizes compiled code uses
_IMPLIED = {"shape": lambda t: t.shape, "dtype": lambda t: t.dtype}


class IRParseError(ValueError):
    """Malformed IR text. ``line`` and ``column`` (1-based) locate the offending token;
    the message shows that source line with a caret under the column."""

    def __init__(self, reason: str, line: int, column: int, source_line: str) -> None:
        caret = "".join("\t" if c == "\t" else " " for c in source_line[: column - 1]) + "^"
        super().__init__(f"line {line}, column {column}: {reason}\n{source_line}\n{caret}")
        self.reason, self.line, self.column = reason, line, column


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # a group name of _TOKEN, or "eof"
    text: str
    pos: int  # offset in the text
    line: int
    column: int

    def describe(self) -> str:
        if self.kind == "eof":
            return "end of input"
        return "a comment" if self.kind == "comment" else repr(self.text[:40])


@dataclass(frozen=True, slots=True)
class _FnRef:
    """An ``@name`` attribute, resolved once every function has been read."""

    name: str
    token: _Token

    def __repr__(self) -> str:
        return f"@{self.name}"


@dataclass(slots=True)
class _PendingOp:
    """An op as read: names resolved, but not yet type checked (it may call functions
    that are defined further down the text)."""

    prim: Primitive
    token: _Token  # the primitive's name, where errors about the whole op point
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: dict[str, tuple[_Token, AttrValue]]
    loc: SourceLoc | None


@dataclass(slots=True)
class _Block:
    name: str
    token: _Token
    params: tuple[Value, ...]
    ops: list[_PendingOp]
    results: tuple[Value, ...]
    calls: list[_FnRef] = field(default_factory=list)


def parse(text: str) -> Function:
    """The function printed in ``text``, with the functions its attributes refer to.

    Guarantees: the result passes ``verify``; printing it gives ``text`` back whenever
    ``text`` was written by the printer. Raises ``IRParseError`` for any other input.
    """
    return _Parser(text).module()


def _tokenize(text: str) -> list[_Token]:
    tokens, line, line_start = [], 1, 0
    for m in _TOKEN.finditer(text):
        kind, pos = m.lastgroup or "error", m.start()
        if kind == "ws":
            newlines = m.group().count("\n")
            if newlines:
                line += newlines
                line_start = m.start() + m.group().rfind("\n") + 1
            continue
        tokens.append(_Token(kind, m.group(), pos, line, pos - line_start + 1))
    tokens.append(_Token("eof", "", len(text), line, len(text) - line_start + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    # Tokens -------------------------------------------------------------------------

    def error(self, token: _Token, reason: str) -> IRParseError:
        start = self.text.rfind("\n", 0, token.pos) + 1
        end = self.text.find("\n", token.pos)
        source_line = self.text[start : end if end >= 0 else len(self.text)]
        return IRParseError(reason, token.line, token.column, source_line)

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += token.kind != "eof"
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.text == text and token.kind in ("punct", "name")

    def expect(self, kind: str, what: str, text: str | None = None) -> _Token:
        token = self.peek()
        if token.kind != kind or (text is not None and token.text != text):
            raise self.error(token, f"expected {what}, found {token.describe()}")
        return self.take()

    def punct(self, text: str) -> _Token:
        return self.expect("punct", repr(text), text)

    def integer(self, what: str) -> int:
        token = self.take()
        if token.kind != "num" or not _INT.fullmatch(token.text):
            raise self.error(token, f"expected {what}, found {token.describe()}")
        return self.int_literal(token)

    def int_literal(self, token: _Token) -> int:
        if len(token.text) > _MAX_INT_DIGITS:
            raise self.error(token, "integer literal is too long")
        return int(token.text)

    # Structure ----------------------------------------------------------------------

    def module(self) -> Function:
        blocks: dict[str, _Block] = {}
        while True:
            block = self.function()
            if block.name in blocks:
                raise self.error(block.token, f"function @{block.name} is defined twice")
            blocks[block.name] = block
            if self.peek().kind == "eof":
                break
        return _Resolver(self, blocks).run()

    def function(self) -> _Block:
        self.expect("name", "'func'", "func")
        token = self.expect("func", "a function name such as @main")
        scope: dict[str, Value] = {}
        params = []
        self.punct("(")
        while not self.at(")"):
            if params:
                self.punct(",")
            name = self.expect("value", "a parameter such as %x")
            self.punct(":")
            params.append(self.define(scope, name, Value(self.type(), name.text[1:])))
        self.punct(")")
        self.punct("->")
        if self.at("("):
            self.take()
            declared = [] if self.at(")") else [self.type()]
            while not self.at(")"):
                self.punct(",")
                declared.append(self.type())
            self.take()
        else:
            declared = [self.type()]
        self.punct("{")
        block = _Block(token.text[1:], token, tuple(params), [], ())
        while not self.at("return"):
            block.ops.append(self.op(scope, block))
        self.take()
        results: list[Value] = []
        if self.peek().kind == "value":
            results.append(self.result(scope, declared, results))
            while self.at(","):
                self.take()
                results.append(self.result(scope, declared, results))
        if len(results) != len(declared):
            raise self.error(self.peek(), f"@{block.name} returns {len(results)} values "
                                          f"but declares {len(declared)}")
        self.punct("}")
        block.results = tuple(results)
        return block

    def type(self) -> TensorType:
        token = self.expect("name", "a type such as f32[2,3]")
        if token.text not in _DTYPES:
            raise self.error(token, f"unknown dtype {token.text!r} (known: {', '.join(_DTYPES)})")
        self.punct("[")
        shape: list[int] = []
        while not self.at("]"):
            if shape:
                self.punct(",")
            dim_token = self.peek()
            dim = self.integer("a dimension")
            if not 0 <= dim <= _MAX_DIM:
                raise self.error(dim_token, f"dimension {dim} is out of range")
            shape.append(dim)
        self.take()
        return TensorType(_DTYPES[token.text], tuple(shape))

    def define(self, scope: dict[str, Value], token: _Token, value: Value) -> Value:
        if token.text[1:] in scope:
            raise self.error(token, f"{token.text} is already defined (SSA names are defined once)")
        scope[token.text[1:]] = value
        return value

    def use(self, scope: dict[str, Value], token: _Token) -> Value:
        if token.text[1:] not in scope:
            raise self.error(token, f"{token.text} is not defined before this use")
        return scope[token.text[1:]]

    def op(self, scope: dict[str, Value], block: _Block) -> _PendingOp:
        outputs: list[tuple[_Token, Value]] = []
        while not self.at("="):
            if outputs:
                self.punct(",")
            name = self.expect("value", "an op result such as %0, or 'return'")
            if name.text[1:] in scope or any(t.text == name.text for t, _ in outputs):
                raise self.error(name, f"{name.text} is already defined (SSA names are defined once)")
            self.punct(":")
            outputs.append((name, Value(self.type())))
        self.take()
        token = self.expect("name", "a primitive name")
        prim = PRIMITIVES.get(token.text)
        if prim is None:
            raise self.error(token, f"unknown primitive {token.text!r}")
        inputs: list[Value] = []
        # An operand is a %name not followed by ':' (that would start the next op).
        if self.peek().kind == "value" and self.tokens[self.i + 1].text != ":":
            inputs.append(self.operand(scope, prim, inputs))
            while self.at(","):
                self.take()
                inputs.append(self.operand(scope, prim, inputs))
        if len(inputs) < (1 if prim.arity is None else prim.arity):
            raise self.error(token, f"{prim.name} takes {prim.arity or 'at least 1'} operands, "
                                    f"got {len(inputs)}")
        attrs: dict[str, tuple[_Token, AttrValue]] = {}
        while self.peek().kind == "name" and not self.at("return"):
            attrs.update([self.attr(prim, attrs, block)])
        missing = [k for k, s in prim.attrs.items() if k not in attrs and not s.implied_by_result]
        if missing:
            raise self.error(token, f"{prim.name} needs attribute {missing[0]}")
        loc = None
        comment = self.peek()
        if comment.kind == "comment" and comment.line == self.tokens[self.i - 1].line:
            loc = self.location(self.take())
        for name, value in outputs:
            self.define(scope, name, value)
        return _PendingOp(prim, token, tuple(inputs), tuple(v for _, v in outputs), attrs, loc)

    def operand(self, scope: dict[str, Value], prim: Primitive, inputs: list[Value]) -> Value:
        token = self.expect("value", "an operand such as %0")
        if prim.arity is not None and len(inputs) == prim.arity:
            raise self.error(token, f"{prim.name} takes {prim.arity} operands")
        return self.use(scope, token)

    def result(self, scope: dict[str, Value], declared: list[TensorType], results: list[Value]) -> Value:
        token = self.expect("value", "a result such as %0")
        value = self.use(scope, token)
        if len(results) >= len(declared) or value.type != declared[len(results)]:
            raise self.error(token, f"return value {token.text}: {value.type} does not match "
                                    f"the declared results {_types(declared)}")
        return value

    def attr(self, prim: Primitive, attrs: dict, block: _Block) -> tuple[str, Any]:
        key = self.take()
        spec = prim.attrs.get(key.text)
        if spec is None:
            raise self.error(key, f"{prim.name} has no attribute {key.text!r} "
                                  f"(it takes {', '.join(prim.attrs) or 'none'})")
        if spec.implied_by_result:
            raise self.error(key, f"{prim.name}'s {key.text} is given by the result type")
        if key.text in attrs:
            raise self.error(key, f"attribute {key.text} is given twice")
        self.punct("=")
        token = self.peek()
        value = self.value(0)
        if spec.kind is AttrKind.FUNCTION:
            if not isinstance(value, _FnRef):
                raise self.error(token, f"{prim.name}: attribute {key.text} must be a function "
                                        f"such as @f, found {token.describe()}")
            block.calls.append(value)
        else:
            try:
                check_attr(prim.name, key.text, spec.kind, value)
            except (TypeError, ValueError) as e:
                raise self.error(token, str(e)) from None
        return key.text, (token, value)

    def value(self, depth: int) -> AttrValue:
        token = self.take()
        if token.kind == "num":
            if _INT.fullmatch(token.text):
                return self.int_literal(token)
            return float(token.text)  # the token regex admits only float literals
        if token.kind == "name":
            if token.text in ("true", "false"):
                return token.text == "true"
            if token.text in _NAMED_FLOATS:
                return _NAMED_FLOATS[token.text]
            if token.text in _DTYPES:
                return _DTYPES[token.text]
        if token.kind == "func":
            return _FnRef(token.text[1:], token)
        if token.text == "(" and token.kind == "punct":
            if depth >= _MAX_DEPTH:
                raise self.error(token, f"tuples nest more than {_MAX_DEPTH} deep")
            items = [] if self.at(")") else [self.value(depth + 1)]
            while not self.at(")"):
                self.punct(",")
                items.append(self.value(depth + 1))
            self.take()
            return tuple(items)
        raise self.error(token, f"expected an attribute value, found {token.describe()}")

    def location(self, comment: _Token) -> SourceLoc:
        # '# file:line'; the file name may itself hold ':' (C:\x.py), so split at the last.
        body = comment.text[2:] if comment.text.startswith("# ") else comment.text[1:]
        file, colon, line = body.rpartition(":")
        line = line.rstrip(" \t\r")
        if not colon or not re.fullmatch(r"-?[0-9]{1,18}", line):
            raise self.error(comment, "expected a source location such as '# train.py:12'")
        return SourceLoc(file, int(line))


class _Resolver:
    """Builds the functions callees first, checking every op with its primitive."""

    def __init__(self, parser: _Parser, blocks: dict[str, _Block]) -> None:
        self.parser, self.blocks = parser, blocks
        self.built: dict[str, Function] = {}

    def run(self) -> Function:
        main = next(iter(self.blocks.values()))
        for block in self.callees_first(main):
            self.built[block.name] = self.build(block)
        for block in self.blocks.values():
            if block.name not in self.built:
                raise self.parser.error(block.token, f"function @{block.name} is never referenced "
                                                     f"from @{main.name}")
        return self.built[main.name]

    def callees_first(self, main: _Block) -> list[_Block]:
        # Iterative depth-first search: a long chain of functions must not hit the
        # recursion limit. `path` holds the functions being visited (grey).
        order: list[_Block] = []
        done: set[str] = set()
        stack = [(main, iter(main.calls))]
        path = [main.name]
        while stack:
            block, calls = stack[-1]
            ref = next(calls, None)
            if ref is None:
                stack.pop()
                path.pop()
                done.add(block.name)
                order.append(block)
                continue
            callee = self.blocks.get(ref.name)
            if callee is None:
                raise self.parser.error(ref.token, f"function @{ref.name} is not defined")
            if ref.name in path:
                cycle = " -> ".join(f"@{n}" for n in path[path.index(ref.name) :] + [ref.name])
                raise self.parser.error(ref.token, f"functions refer to each other: {cycle}")
            if ref.name not in done:
                stack.append((callee, iter(callee.calls)))
                path.append(ref.name)
        return order

    def build(self, block: _Block) -> Function:
        ops = []
        for pending in block.ops:
            prim, declared = pending.prim, tuple(v.type for v in pending.outputs)
            attrs: dict[str, AttrValue] = {}
            for key, spec in prim.attrs.items():
                if spec.implied_by_result:
                    if len(declared) != 1 or key not in _IMPLIED:
                        raise self.parser.error(pending.token, f"{prim.name} has exactly one result")
                    attrs[key] = _IMPLIED[key](declared[0])
                else:
                    value = pending.attrs[key][1]
                    attrs[key] = self.built[value.name] if isinstance(value, _FnRef) else value
            try:
                inferred = prim.infer(tuple(v.type for v in pending.inputs), attrs)
            # Text chooses every attribute, so a rule may meet values its author did not
            # foresee; whatever it raises, the cause is bad text.
            except (ValueError, TypeError, ArithmeticError, LookupError) as e:
                raise self.parser.error(pending.token, str(e)) from None
            if inferred != declared:
                raise self.parser.error(
                    pending.token, f"{prim.name} declares result types {_types(declared)} "
                                   f"but its operands and attributes give {_types(inferred)}")
            ops.append(Op(prim, pending.inputs, pending.outputs, attrs, pending.loc))
        return Function(block.name, block.params, tuple(ops), block.results)


def _types(types: tuple[TensorType, ...] | list[TensorType]) -> str:
    return "(" + ", ".join(map(str, types)) + ")"
