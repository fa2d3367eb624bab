"""Reading IR text back: ``parse(print_function(f))`` rebuilds ``f``.

The grammar is what ``printer.py`` writes. Spaces, line breaks and ``// notes`` (the
headers of dumped stages) between tokens are free, except that a source-line comment
must be on its op's line::

    module    := function+
    function  := 'func' @NAME '(' [param (',' param)*] ')' '->' results '{'
                     op* 'return' [%NAME (',' %NAME)*] '}'
    param     := %NAME ':' type
    results   := type | '(' [type (',' type)*] ')'
    type      := DTYPE '[' [INT (',' INT)*] ']'
    op        := [%NAME ':' type (',' %NAME ':' type)*] '=' PRIMITIVE [%NAME (',' %NAME)*]
                     (ATTR '=' value)* ['#' ('bwd of ' | 'jvp of ')* FILE ':' LINE [SCOPE]]
    value     := INT | FLOAT | 'nan' | 'inf' | '-inf' | 'true' | 'false' | DTYPE | @NAME
               | '(' [value (',' value)*] ')'

The first function is the one returned; the others are those that ``@NAME`` attributes
refer to, in any order. Attributes the result type implies (constant's shape) are taken
from it. Every op is checked by its primitive's ``infer`` against the types the text
declares; ops that call functions are checked once all functions are read, the others
at once, so most errors are reported in text order.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from fusejit.ir.core import DERIVATIONS, SCOPE_PATH, AttrValue, Function, Op, SourceLoc, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.primitives import PRIMITIVES, AttrKind, Primitive, check_attr
from fusejit.ir.types import TensorType

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\n]+ | //[^\n]*)
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
_LOC_LINE = re.compile(r"-?[0-9]{1,18}")
_DERIVED_PREFIXES = tuple(f"{d} of " for d in DERIVATIONS)
_DTYPES = {d.value: d for d in DType}
_NAMED = {"true": True, "false": False, "nan": float("nan"), "inf": float("inf"), **_DTYPES}
_IMPLIED = {"shape": lambda t: t.shape, "dtype": lambda t: t.dtype}
_MAX_DEPTH = 32  # tuple nesting; attributes need 2, the limit keeps recursion bounded
_MAX_INT_DIGITS = 4000  # under Python's int/str conversion limit, so int() cannot fail
_MAX_DIM = 2**63 - 1  # compiled code indexes with int64
_T = TypeVar("_T")


class IRParseError(ValueError):
    """Malformed IR text. ``line`` and ``column`` (1-based) locate the offending token,
    ``reason`` says what was expected or found; the message adds the source line and a
    caret under the column."""

    def __init__(self, reason: str, line: int, column: int, source_line: str) -> None:
        shown, at = source_line, column - 1
        if len(shown) > 160:  # say, a big constant's line: show the part around the column
            start = max(0, at - 80)
            shown = f"{'...' if start else ''}{shown[start : start + 160]}"
            shown += "..." if start + 160 < len(source_line) else ""
            at += 3 - start if start else 0
        caret = "".join("\t" if c == "\t" else " " for c in shown[:at]) + "^"
        super().__init__(f"line {line}, column {column}: {reason}\n{shown}\n{caret}")
        self.reason, self.line, self.column = reason, line, column


def parse(text: str) -> Function:
    """The first function in ``text``, with the functions its attributes refer to.

    Guarantees: the result passes ``verify``; ``str(parse(str(f))) == str(f)``. Any other
    input raises ``IRParseError`` (never another exception); nothing is evaluated, and the
    time taken is linear in the length of ``text``.
    """
    return _Parser(text).module()


class _Token(NamedTuple):  # a tuple: made once per token, it must be cheap to build
    kind: str  # a group name of _TOKEN, or "eof"
    text: str
    pos: int
    line: int
    column: int

    def describe(self) -> str:
        if self.kind in ("eof", "comment"):
            return "end of input" if self.kind == "eof" else "a comment"
        return repr(self.text if len(self.text) < 40 else self.text[:37] + "...")


@dataclass(frozen=True, slots=True)
class _FnRef:
    """An ``@name`` attribute, resolved once every function has been read."""

    name: str
    token: _Token

    def __repr__(self) -> str:  # shows in check_attr's messages
        return f"@{self.name}"


@dataclass(frozen=True, slots=True)
class _PendingOp:
    """An op as read, before its types are checked. Ops that call functions wait in
    this form until all functions are read."""

    prim: Primitive
    token: _Token  # the primitive's name: errors about the whole op point here
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: dict[str, AttrValue | _FnRef]
    loc: SourceLoc | None


@dataclass(slots=True)
class _Block:
    name: str
    token: _Token
    params: tuple[Value, ...]
    ops: list[Op | _PendingOp] = field(default_factory=list)
    results: tuple[Value, ...] = ()
    calls: list[_FnRef] = field(default_factory=list)


def _tokenize(text: str) -> list[_Token]:
    tokens, line, line_start = [], 1, 0
    for m in _TOKEN.finditer(text):
        kind, pos, s = m.lastgroup or "error", m.start(), m.group()
        if kind == "space":
            if (newlines := s.count("\n")) > 0:
                line += newlines
                line_start = pos + s.rfind("\n") + 1
            continue
        tokens.append(_Token(kind, s, pos, line, pos - line_start + 1))
    tokens.append(_Token("eof", "", len(text), line, len(text) - line_start + 1))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    # Tokens ---------------------------------------------------------------------------

    def error(self, token: _Token, reason: str) -> IRParseError:
        start = self.text.rfind("\n", 0, token.pos) + 1
        end = self.text.find("\n", token.pos)
        line = self.text[start : end if end >= 0 else len(self.text)]
        return IRParseError(reason, token.line, token.column, line)

    def peek(self, ahead: int = 0) -> _Token:
        # In range: callers look ahead only past a non-eof token, behind only after one.
        return self.tokens[self.i + ahead]

    def take(self) -> _Token:
        token = self.peek()
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

    def listed(self, item: Callable[[], _T], close: str) -> list[_T]:
        """``[item (',' item)*] close``, the opening bracket already read."""
        items: list[_T] = []
        while not self.at(close):
            if items:
                self.expect("punct", f"',' or {close!r}", ",")
            items.append(item())
        self.take()
        return items

    def comma_separated(self, item: Callable[[], _T]) -> list[_T]:
        items = [item()]
        while self.at(","):
            self.take()
            items.append(item())
        return items

    def integer(self, token: _Token, what: str) -> int:
        if token.kind != "num" or not _INT.fullmatch(token.text):
            raise self.error(token, f"expected {what}, found {token.describe()}")
        if len(token.text) > _MAX_INT_DIGITS:
            raise self.error(token, "integer literal is too long")
        return int(token.text)

    # Functions ------------------------------------------------------------------------

    def module(self) -> Function:
        blocks: dict[str, _Block] = {}
        while not blocks or self.peek().kind != "eof":
            block = self.function()
            if block.name in blocks:
                raise self.error(block.token, f"function @{block.name} is defined twice")
            blocks[block.name] = block
        main = next(iter(blocks.values()))
        built: dict[str, Function] = {}
        for block in self.callees_first(main, blocks):
            ops = [op if isinstance(op, Op) else self.finish(op, built) for op in block.ops]
            built[block.name] = Function(block.name, block.params, tuple(ops), block.results)
        for block in blocks.values():
            if block.name not in built:
                raise self.error(block.token, f"function @{block.name} is never referenced")
        return built[main.name]

    def function(self) -> _Block:
        self.expect("name", "'func'", "func")
        token = self.expect("func", "a function name such as @main")
        scope: dict[str, Value] = {}

        def param() -> Value:
            name = self.expect("value", "a parameter such as %x")
            self.punct(":")
            return self.define(scope, name, Value(self.type(), name.text[1:]))

        self.punct("(")
        block = _Block(token.text[1:], token, tuple(self.listed(param, ")")))
        self.punct("->")
        if self.at("("):
            self.take()
            declared = self.listed(self.type, ")")
        else:
            declared = [self.type()]
        self.punct("{")
        while not self.at("return"):
            block.ops.append(self.op(scope, block))
        self.take()
        results: list[Value] = []

        def result() -> Value:
            token = self.expect("value", "a result such as %0")
            value = self.use(scope, token)
            if len(results) >= len(declared) or value.type != declared[len(results)]:
                raise self.error(token, f"return value {token.text}: {value.type} does not "
                                        f"match the declared results {_types(declared)}")
            results.append(value)
            return value

        if self.peek().kind == "value":
            self.comma_separated(result)
        if len(results) != len(declared):
            raise self.error(self.peek(), f"@{block.name} returns {len(results)} values but "
                                          f"declares {len(declared)}")
        self.punct("}")
        block.results = tuple(results)
        return block

    def callees_first(self, main: _Block, blocks: dict[str, _Block]) -> list[_Block]:
        # Iterative depth-first search, so that a long chain of calls cannot exhaust the
        # recursion limit; `path` holds the functions being visited, to find cycles.
        order: list[_Block] = []
        stack, path, done = [(main, iter(main.calls))], [main.name], set()
        while stack:
            block, calls = stack[-1]
            if (ref := next(calls, None)) is None:
                stack.pop()
                path.pop()
                done.add(block.name)
                order.append(block)
            elif ref.name not in blocks:
                raise self.error(ref.token, f"function @{ref.name} is not defined")
            elif ref.name in path:
                cycle = path[path.index(ref.name) :] + [ref.name]
                raise self.error(ref.token, "functions refer to each other: "
                                            + " -> ".join(f"@{n}" for n in cycle))
            elif ref.name not in done:
                stack.append((blocks[ref.name], iter(blocks[ref.name].calls)))
                path.append(ref.name)
        return order

    # Ops ------------------------------------------------------------------------------

    def type(self) -> TensorType:
        token = self.expect("name", "a type such as f32[2,3]")
        if token.text not in _DTYPES:
            raise self.error(token, f"unknown dtype {token.text!r} (known: {', '.join(_DTYPES)})")
        self.punct("[")

        def dim() -> int:
            token = self.take()
            if not 0 <= (n := self.integer(token, "a dimension")) <= _MAX_DIM:
                raise self.error(token, f"dimension {n} is out of range")
            return n

        return TensorType(_DTYPES[token.text], tuple(self.listed(dim, "]")))

    def define(self, scope: dict[str, Value], token: _Token, value: Value) -> Value:
        if token.text[1:] in scope:
            raise self.error(token, f"{token.text} is already defined (SSA defines names once)")
        scope[token.text[1:]] = value
        return value

    def use(self, scope: dict[str, Value], token: _Token) -> Value:
        if token.text[1:] not in scope:
            raise self.error(token, f"{token.text} is not defined before this use")
        return scope[token.text[1:]]

    def op(self, scope: dict[str, Value], block: _Block) -> Op | _PendingOp:
        def output() -> tuple[_Token, Value]:
            name = self.expect("value", "an op result such as %0, or 'return'")
            if name.text[1:] in scope or any(t.text == name.text for t, _ in outputs):
                raise self.error(name, f"{name.text} is already defined (SSA defines names once)")
            self.punct(":")
            return name, Value(self.type())

        outputs: list[tuple[_Token, Value]] = []
        if not self.at("="):
            outputs = self.comma_separated(output)
        self.punct("=")
        token = self.expect("name", "a primitive name")
        if (prim := PRIMITIVES.get(token.text)) is None:
            raise self.error(token, f"unknown primitive {token.text!r}")

        def operand() -> Value:
            name = self.expect("value", "an operand such as %0")
            if prim.arity is not None and len(inputs) == prim.arity:
                raise self.error(name, f"too many operands: {prim.name} takes {prim.arity}")
            inputs.append(self.use(scope, name))
            return inputs[-1]

        inputs: list[Value] = []
        # An operand is a %name not followed by ':', which would start the next op.
        if self.peek().kind == "value" and self.peek(1).text != ":":
            self.comma_separated(operand)
        if len(inputs) < (prim.arity if prim.arity is not None else 1):
            raise self.error(token, f"{prim.name} takes {prim.arity or 'at least 1'} operands, "
                                    f"got {len(inputs)}")
        attrs: dict[str, AttrValue | _FnRef] = {}
        while self.peek().kind == "name" and not self.at("return"):
            self.attr(prim, attrs, block)
        missing = [k for k, s in prim.attrs.items() if k not in attrs and not s.implied_by_result]
        if missing:
            raise self.error(token, f"{prim.name} needs attribute {missing[0]}")
        loc = None
        if self.peek().kind == "comment" and self.peek().line == self.peek(-1).line:
            loc = self.location(self.take())
        for name, value in outputs:
            self.define(scope, name, value)
        op = _PendingOp(prim, token, tuple(inputs), tuple(v for _, v in outputs), attrs, loc)
        calls = any(isinstance(v, _FnRef) or (isinstance(v, tuple) and v and isinstance(v[0], _FnRef))
                    for v in attrs.values())
        return op if calls else self.finish(op, {})

    def attr(self, prim: Primitive, attrs: dict[str, AttrValue | _FnRef], block: _Block) -> None:
        key = self.take()
        if (spec := prim.attrs.get(key.text)) is None:
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
        elif spec.kind is AttrKind.FUNCTIONS:
            if not isinstance(value, tuple) or not all(isinstance(v, _FnRef) for v in value):
                raise self.error(token, f"{prim.name}: attribute {key.text} must be a tuple of "
                                        f"functions such as (@f,@g), found {token.describe()}")
            block.calls.extend(value)
        else:
            try:
                check_attr(prim.name, key.text, spec.kind, value)
            except (TypeError, ValueError) as e:
                raise self.error(token, str(e)) from None
        attrs[key.text] = value

    def value(self, depth: int) -> AttrValue | _FnRef:
        token = self.take()
        if token.kind == "num":
            # The token pattern admits only valid float literals, so float() cannot fail.
            return self.integer(token, "") if _INT.fullmatch(token.text) else float(token.text)
        if token.kind == "name" and token.text in _NAMED:
            return _NAMED[token.text]
        if token.kind == "func":
            return _FnRef(token.text[1:], token)
        if token.kind == "punct" and token.text == "(":
            if depth >= _MAX_DEPTH:
                raise self.error(token, f"tuples nest more than {_MAX_DEPTH} deep")
            return tuple(self.listed(lambda: self.value(depth + 1), ")"))
        raise self.error(token, f"expected an attribute value, found {token.describe()}")

    def location(self, comment: _Token) -> SourceLoc:
        # '# [bwd of |jvp of ]*file:line[ scope]'. File names may hold ':' (C:\x.py:3) and
        # scopes may not, so split at the last one; a '\r' of a Windows line ending may trail.
        body = comment.text[2:] if comment.text.startswith("# ") else comment.text[1:]
        derived = []
        while body[:7] in _DERIVED_PREFIXES:
            derived.append(body[:3])
            body = body[7:]
        file, colon, rest = body.rstrip(" \t\r").rpartition(":")
        line, _, scope = rest.partition(" ")
        if not colon or not _LOC_LINE.fullmatch(line) or (scope and not SCOPE_PATH.match(scope)):
            raise self.error(comment, "expected a source location such as '# train.py:12' or "
                                      "'# bwd of train.py:12 block1/conv'")
        return SourceLoc(file, int(line), scope, tuple(derived))

    def finish(self, op: _PendingOp, functions: dict[str, Function]) -> Op:
        """The checked op: implied attributes filled in, result types as inferred."""
        declared = tuple(v.type for v in op.outputs)
        attrs: dict[str, AttrValue] = {}
        for key, spec in op.prim.attrs.items():  # in declared order, as the printer prints
            if spec.implied_by_result:
                if len(declared) != 1 or key not in _IMPLIED:
                    raise self.error(op.token, f"{op.prim.name} has exactly one result")
                attrs[key] = _IMPLIED[key](declared[0])
            else:
                value = op.attrs[key]
                if isinstance(value, _FnRef):
                    value = functions[value.name]
                elif spec.kind is AttrKind.FUNCTIONS:
                    value = tuple(functions[v.name] for v in value)
                attrs[key] = value
        try:
            inferred = op.prim.infer(tuple(v.type for v in op.inputs), attrs)
        # The text chooses every attribute, so a rule may meet values its author did not
        # foresee; whatever it raises, the cause is bad text.
        except (ValueError, TypeError, ArithmeticError, LookupError) as e:
            raise self.error(op.token, str(e)) from None
        if inferred != declared:
            raise self.error(op.token, f"{op.prim.name} declares result types {_types(declared)} "
                                       f"but its operands and attributes give {_types(inferred)}")
        return Op(op.prim, op.inputs, op.outputs, attrs, op.loc)


def _types(types: tuple[TensorType, ...] | list[TensorType]) -> str:
    return "(" + ", ".join(map(str, types)) + ")"
