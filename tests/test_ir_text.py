"""IR text: the printer's output parses back to the same function, and bad text fails
with an ``IRParseError`` that points at the offending token."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import random_elementwise_programs, random_functions

from fusejit.ir import (
    PRIMITIVES,
    Builder,
    DType,
    Function,
    IRParseError,
    IRRuntimeError,
    SourceLoc,
    TensorType,
    Value,
    parse,
    run_function,
    verify,
)
from fusejit.ir import primitives as P

_SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _all_functions(fn: Function) -> list[Function]:
    """``fn`` and every function its ops refer to, each once."""
    seen, stack = {id(fn): fn}, [fn]
    while stack:
        for op in stack.pop().ops:
            for v in op.attrs.values():
                if isinstance(v, Function) and id(v) not in seen:
                    seen[id(v)] = v
                    stack.append(v)
    return list(seen.values())


# ---------------------------------------------------------------------------------------
# Round trips


@settings(_SETTINGS, max_examples=300)
@given(random_functions())
def test_print_parse_round_trip(fn: Function) -> None:
    text = str(fn)
    parsed = parse(text)
    assert str(parsed) == text
    verify(parsed)


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
@settings(_SETTINGS, max_examples=8)
@given(data=st.data())
def test_round_trip_of_every_primitive(name: str, data: st.DataObject) -> None:
    fn = data.draw(random_functions(must_use=name, max_ops=3))
    assert any(op.prim.name == name for f in _all_functions(fn) for op in f.ops)
    text = str(fn)
    assert str(parse(text)) == text


@_SETTINGS
@given(random_elementwise_programs())
def test_round_trip_of_elementwise_programs(fn: Function) -> None:
    verify(fn)
    assert str(parse(str(fn))) == str(fn)


def _inputs(fn: Function, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for p in fn.params:
        if p.dtype.is_float:
            arrays.append(rng.standard_normal(p.shape).astype(p.dtype.np))
        elif p.dtype.is_int:
            arrays.append(rng.integers(-4, 5, p.shape).astype(p.dtype.np))
        else:
            arrays.append(rng.random(p.shape) < 0.5)
    return arrays


@settings(_SETTINGS, max_examples=60)
@given(random_functions())
def test_the_fused_text_of_any_program_parses_back_to_the_same_function(fn: Function) -> None:
    """Ops recomputed in several kernels are defined once in the fused text (the repeats
    are comments): parsing it gives the function's ops again, each once."""
    from fusejit.runtime.executable import partition

    fused = partition(fn)  # custom_vjp_call inlined, then fused for the CPU
    kept = list({id(op): op for g in fused.groups for op in g.ops}.values())  # dead ops have no kernel
    parsed = verify(parse(str(fused)))
    assert len(parsed.ops) == len(kept) and len(parsed.results) == len(fused.function.results)
    assert sorted(op.prim.name for op in parsed.ops) == sorted(op.prim.name for op in kept)


@settings(_SETTINGS, max_examples=100)
@given(random_functions(), st.integers(0, 2**32 - 1))
def test_parsed_function_verifies_and_runs_like_the_original(fn: Function, seed: int) -> None:
    parsed = verify(parse(str(fn)))
    args = _inputs(fn, seed)
    try:
        expected = run_function(fn, *args)
    except IRRuntimeError as e:
        # Then the parsed function fails the same way (its locs hold only base names).
        with pytest.raises(IRRuntimeError) as got:
            run_function(parsed, *args)
        assert repr(got.value.__cause__) == repr(e.__cause__)
        return
    actual = run_function(parsed, *args)
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_parse_keeps_structure() -> None:
    text = (
        "func @f(%x: f32[2], %y: f32[]) -> (f32[2], f32[], f32[2]) {\n"
        "  %0: f32[2] = custom_vjp_call %x  fun=@g fwd=@g bwd=@b  # dir:odd #name.py:7\n"
        "  %1: f32[]  = constant  value=-0.0\n"
        "  return %0, %1, %x\n"
        "}\n"
        "\n"
        "func @b(%c: f32[2]) -> f32[2] {\n"  # defined before @g: any order is accepted
        "  return %c\n"
        "}\n"
        "\n"
        "func @g(%a: f32[2]) -> f32[2] {\n"
        "  %r: f32[2] = neg %a\n"  # any name after '%' is a value name
        "  return %r\n"
        "}\n"
    )
    fn = parse(text)
    call, const = fn.ops
    assert [p.name for p in fn.params] == ["x", "y"]
    assert call.loc == SourceLoc("dir:odd #name.py", 7) and const.loc is None
    assert call.attrs["fun"] is call.attrs["fwd"] and call.attrs["fun"].name == "g"
    assert call.attrs["bwd"].results == call.attrs["bwd"].params
    assert math.copysign(1.0, const.attrs["value"]) == -1.0
    assert const.attrs["shape"] == () and const.attrs["dtype"] is DType.f32
    assert fn.results[2] is fn.params[0]
    # The printer puts callees in order of first reference and renumbers results.
    assert str(fn).index("func @g") < str(fn).index("func @b")
    assert "%0: f32[2] = neg %a" in str(fn)
    assert str(parse(str(fn))) == str(fn)


def test_attribute_kinds_convert() -> None:
    text = (
        "func @f(%x: f32[2,3], %y: f32[3,4]) -> (f32[2,4], i64[3], f64[2], bool[2]) {\n"
        "  %0: f32[2,4] = dot_general %x, %y  contract=((1),(0)) batch=((),())\n"
        "  %1: i64[3]   = iota  dimension=0\n"
        "  %2: f64[2]   = constant  value=(nan,-inf)\n"
        "  %3: bool[2]  = constant  value=(true,false)\n"
        "  %4: f32[2,3] = pad %x  lo=(0,0) hi=(0,0) value=1e+16\n"
        "  return %0, %1, %2, %3\n"
        "}\n"
    )
    dot, iota, floats, bools, pad = parse(text).ops
    assert dot.attrs == {"contract": ((1,), (0,)), "batch": ((), ())}
    assert iota.attrs == {"dimension": 0, "shape": (3,), "dtype": DType.i64}
    assert math.isnan(floats.attrs["value"][0]) and floats.attrs["value"][1] == -math.inf
    assert bools.attrs["value"] == (True, False)
    assert pad.attrs["value"] == 1e16 and isinstance(pad.attrs["value"], float)


def test_windows_line_endings_and_free_spacing() -> None:
    text = "func @f(%x:f32[2])->f32[2]{\r\n %0:f32[2]=neg %x # a.py:3\r\n return %0}"
    fn = parse(text)
    assert fn.ops[0].loc == SourceLoc("a.py", 3)
    assert str(parse(str(fn))) == str(fn)


# ---------------------------------------------------------------------------------------
# Golden text


def _mlp() -> Function:
    b = Builder()
    x = Value(TensorType(DType.f32, (8, 4)), "x")
    w1 = Value(TensorType(DType.f32, (4, 16)), "w1")
    b1 = Value(TensorType(DType.f32, (16,)), "b1")
    w2 = Value(TensorType(DType.f32, (16, 3)), "w2")
    with b.at(SourceLoc("/home/me/mlp.py", 3)):
        h = b.op(P.dot_general, x, w1, contract=((1,), (0,)), batch=((), ()))
        h = b.op(P.add, h, b.broadcast(b1, (8, 16)))
    with b.at(SourceLoc("/home/me/mlp.py", 4)):
        a = b.op(P.tanh, h)
    with b.at(SourceLoc("/home/me/mlp.py", 5)):
        o = b.op(P.dot_general, a, w2, contract=((1,), (0,)), batch=((), ()))
    s = b.op(P.reduce_sum, o, axes=(0, 1))
    with b.at(SourceLoc("/home/me/mlp.py", 6)):
        loss = b.op(P.mul, s, b.constant(0.5, DType.f32))
    return b.function("mlp_loss", (x, w1, b1, w2), (loss, a))


MLP_TEXT = """\
func @mlp_loss(%x: f32[8,4], %w1: f32[4,16], %b1: f32[16], %w2: f32[16,3]) -> (f32[], f32[8,16]) {
  %0: f32[8,16] = dot_general %x, %w1  contract=((1),(0)) batch=((),())  # mlp.py:3
  %1: f32[8,16] = broadcast_in_dim %b1  shape=(8,16) dims=(1)            # mlp.py:3
  %2: f32[8,16] = add %0, %1                                             # mlp.py:3
  %3: f32[8,16] = tanh %2                                                # mlp.py:4
  %4: f32[8,3]  = dot_general %3, %w2  contract=((1),(0)) batch=((),())  # mlp.py:5
  %5: f32[]     = reduce_sum %4  axes=(0,1)
  %6: f32[]     = constant  value=0.5                                    # mlp.py:6
  %7: f32[]     = mul %5, %6                                             # mlp.py:6
  return %7, %3
}
"""


def test_golden_mlp_text() -> None:
    assert str(_mlp()) == MLP_TEXT
    parsed = parse(MLP_TEXT)
    assert str(parsed) == MLP_TEXT
    assert [op.prim.name for op in parsed.ops] == [op.prim.name for op in _mlp().ops]
    assert parsed.ops[5].loc is None and parsed.ops[3].loc == SourceLoc("mlp.py", 4)


def test_golden_edge_shapes_and_calls() -> None:
    text = """\
func @edges(%s: f64[], %e: i32[0,3]) -> (f64[], i32[3], bool[0]) {
  %0: f64[]  = constant  value=inf
  %1: i32[3] = reduce_sum %e  axes=(0)
  %2: bool[0] = constant  value=()
                 = custom_vjp_call %s  fun=@nothing fwd=@nothing bwd=@back
  return %0, %1, %2
}

func @nothing(%x: f64[]) -> () {
  return
}

func @back() -> f64[] {
  %0: f64[] = constant  value=0.0
  return %0
}
"""
    expected = """\
func @edges(%s: f64[], %e: i32[0,3]) -> (f64[], i32[3], bool[0]) {
  %0: f64[]   = constant  value=inf
  %1: i32[3]  = reduce_sum %e  axes=(0)
  %2: bool[0] = constant  value=()
              = custom_vjp_call %s  fun=@nothing fwd=@nothing bwd=@back
  return %0, %1, %2
}

func @nothing(%x: f64[]) -> () {
  return
}

func @back() -> f64[] {
  %0: f64[] = constant  value=0.0
  return %0
}
"""
    fn = parse(text)
    assert str(fn) == expected and str(parse(expected)) == expected
    assert fn.ops[3].outputs == ()


# ---------------------------------------------------------------------------------------
# Errors

_BASE = """\
func @f(%x: f32[2,3]) -> f32[2] {
  %0: f32[2,3] = tanh %x  # a.py:1
  %1: f32[2]   = reduce_sum %0  axes=(1)
  return %1
}
"""
_CALL = """\
func @f(%x: f32[2]) -> f32[2] {
  %0: f32[2] = custom_vjp_call %x  fun=@g fwd=@g bwd=@g
  return %0
}

func @g(%x: f32[2]) -> f32[2] {
  return %x
}
"""

_MUTUAL = _CALL.replace("  return %x\n", "  %0: f32[2] = custom_vjp_call %x  fun=@h fwd=@h bwd=@h\n"
                        "  return %0\n") + """
func @h(%x: f32[2]) -> f32[2] {
  %0: f32[2] = custom_vjp_call %x  fun=@g fwd=@g bwd=@g
  return %0
}
"""


def _edit(old: str, new: str, base: str = _BASE) -> str:
    assert old in base
    return base.replace(old, new, 1)


ERRORS = [
    # (id, text, line, column, part of the message)
    ("empty", "", 1, 1, "expected 'func', found end of input"),
    ("garbage", "func @f() -> f32[] { $ }", 1, 22, "found '$'"),
    ("not_func", "fun @f() -> f32[] {}", 1, 1, "expected 'func'"),
    ("unknown_op", _edit("tanh", "tanx"), 2, 18, "unknown primitive 'tanx'"),
    ("bad_dtype", _edit("%x: f32", "%x: f16"), 1, 13, "unknown dtype 'f16'"),
    ("negative_dim", _edit("%x: f32[2,3]", "%x: f32[-2,3]"), 1, 17, "out of range"),
    ("float_dim", _edit("%x: f32[2,3]", "%x: f32[2.0,3]"), 1, 17, "expected a dimension"),
    ("missing_bracket", _edit("f32[2]   =", "f32[2   ="), 3, 15, "expected ','"),
    ("missing_brace", _BASE[: -len("}\n")], 5, 1, "expected '}', found end of input"),
    ("undefined", _edit("reduce_sum %0", "reduce_sum %9"), 3, 29, "%9 is not defined"),
    ("use_before_def", _edit("tanh %x", "tanh %1"), 2, 23, "%1 is not defined"),
    ("self_use", _edit("tanh %x", "tanh %0"), 2, 23, "%0 is not defined"),
    ("redefine", _edit("%1: f32[2]", "%0: f32[2]"), 3, 3, "%0 is already defined"),
    ("redefine_param", _edit("%0: f32[2,3] = tanh", "%x: f32[2,3] = tanh"), 2, 3,
     "%x is already defined"),
    ("duplicate_param", _edit("(%x: f32[2,3])", "(%x: f32[2,3], %x: f32[])"), 1, 23,
     "%x is already defined"),
    ("wrong_attr", _edit("axes=(1)", "axis=(1)"), 3, 33, "reduce_sum has no attribute 'axis'"),
    ("attr_twice", _edit("axes=(1)", "axes=(1) axes=(1)"), 3, 42, "axes is given twice"),
    ("missing_attr", _edit("  axes=(1)", ""), 3, 18, "reduce_sum needs attribute axes"),
    ("attr_not_tuple", _edit("axes=(1)", "axes=1"), 3, 38, "must be a tuple of ints"),
    ("attr_bad_value", _edit("axes=(1)", "axes=(x)"), 3, 39, "expected an attribute value"),
    ("attr_trailing_comma", _edit("axes=(1)", "axes=(1,)"), 3, 41, "expected an attribute value"),
    ("type_mismatch", _edit("%1: f32[2]  ", "%1: f32[3]  "), 3, 18,
     "reduce_sum declares result types (f32[3]) but its operands and attributes give (f32[2])"),
    ("dtype_rejected", _edit("%x: f32[2,3]", "%x: i32[2,3]"), 2, 18,
     "tanh does not accept dtype i32"),
    ("too_many_operands", _edit("tanh %x", "tanh %x, %x"), 2, 27, "too many operands: tanh takes 1"),
    ("too_few_operands", _edit("tanh %x", "add %x"), 2, 18, "add takes 2 operands, got 1"),
    ("return_type", _edit("return %1", "return %0"), 4, 10, "does not match the declared"),
    ("return_count", _edit("return %1", "return"), 5, 1, "returns 0 values but declares 1"),
    ("bad_location", _edit("# a.py:1", "# a.py"), 2, 27, "expected a source location"),
    ("stray_comment", _edit("  return", "  # a.py:3\n  return"), 4, 3, "found a comment"),
    ("trailing_junk", _BASE + "}", 6, 1, "expected 'func', found '}'"),
    ("implied_attr", _edit("tanh %x", "constant  value=1.0 shape=(2,3)"), 2, 38,
     "constant's shape is given by the result type"),
    ("implied_needs_one_result",
     _edit("%0: f32[2,3] = tanh %x", "%0: f32[2,3], %9: f32[] = constant  value=1.0"), 2, 29,
     "constant has exactly one result"),
    ("deep_tuple", _edit("axes=(1)", "axes=" + "(" * 5000), 3, 70, "nest more than 32 deep"),
    ("huge_int", _edit("axes=(1)", "axes=(" + "9" * 5000 + ")"), 3, 39, "too long"),
    ("unknown_function", _edit("bwd=@g", "bwd=@h", _CALL), 2, 54, "function @h is not defined"),
    ("self_reference", _edit("return %x\n}\n", "%0: f32[2] = custom_vjp_call %x  fun=@g fwd=@g "
                             "bwd=@g\n  return %0\n}\n", _CALL), 7, 40, "@g -> @g"),
    ("mutual_reference", _MUTUAL, 12, 40, "functions refer to each other: @g -> @h -> @g"),
    ("defined_twice", _CALL + "\nfunc @g(%y: f32[]) -> f32[] {\n  return %y\n}\n", 10, 6,
     "function @g is defined twice"),
    ("unreferenced", _BASE + "\nfunc @h() -> () {\n  return\n}\n", 7, 6, "never referenced"),
    ("function_in_wrong_attr", _edit("axes=(1)", "axes=@f"), 3, 38, "must be a tuple of ints"),
    ("not_a_function", _edit("fun=@g", "fun=(1)", _CALL), 2, 40, "must be a function"),
    ("call_types", _CALL.replace("@g(%x: f32[2]) -> f32[2]", "@g(%x: f32[3]) -> f32[3]"), 2, 16,
     "operand types differ from fun's or fwd's parameters"),
]


@pytest.mark.parametrize(("text", "line", "column", "message"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_parse_errors(text: str, line: int, column: int, message: str) -> None:
    with pytest.raises(IRParseError) as info:
        parse(text)
    e = info.value
    assert (e.line, e.column) == (line, column), str(e)
    assert message in e.reason, str(e)
    assert str(e).startswith(f"line {line}, column {column}: {e.reason}\n")


def test_error_shows_line_and_caret() -> None:
    with pytest.raises(IRParseError) as info:
        parse(_edit("tanh", "tanx"))
    assert str(info.value) == (
        "line 2, column 18: unknown primitive 'tanx'\n"
        "  %0: f32[2,3] = tanx %x  # a.py:1\n"
        "                 ^"
    )
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------
# Fuzzing: whatever the text, parse returns a valid function or raises IRParseError.

_SNIPPETS = [
    ",", "(", ")", "()", "[", "]", "{", "}", "=", ":", "->", "-", "%", "%0", "%x", "@f", "@g",
    "#", "# a.py:1", "\n", " ", "func", "return", "add", "constant", "custom_vjp_call",
    "f32", "i64[]", "bool", "nan", "-inf", "1e5", "-0.0", "1.5", "0", "7", "9" * 30, "true",
    "axes=(0)", "value=", "fun=@fn", "\x00", "é", "$",
]  # fmt: skip


@st.composite
def _mutations(draw: st.DrawFn, text: str) -> str:
    n = len(text)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, n))
        kind = draw(st.sampled_from(["truncate", "delete", "insert", "replace", "lines"]))
        if kind == "truncate":
            text = text[:i]
        elif kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)) :]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(_SNIPPETS) | st.text(max_size=3)) + text[i:]
        elif kind == "replace":
            text = text[:i] + draw(st.sampled_from(_SNIPPETS)) + text[i + 1 :]
        else:
            lines = text.split("\n")
            j, k = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[j], lines[k] = lines[k], lines[j]
            if draw(st.booleans()):
                lines.insert(j, lines[k])
            text = "\n".join(lines)
        n = len(text)
    return text


def _parse_or_error(text: str) -> None:
    try:
        fn = parse(text)
    except IRParseError as e:
        assert 1 <= e.line <= text.count("\n") + 1
        assert 1 <= e.column <= len(text.split("\n")[e.line - 1]) + 1
    else:
        verify(fn)
        assert str(parse(str(fn))) == str(fn)


@settings(_SETTINGS, max_examples=600)
@given(random_functions(max_ops=4), st.data())
def test_mutated_text_parses_or_raises_parse_error(fn: Function, data: st.DataObject) -> None:
    _parse_or_error(data.draw(_mutations(str(fn))))


@settings(_SETTINGS, max_examples=400)
@given(st.text() | st.lists(st.sampled_from(_SNIPPETS)).map(" ".join))
def test_random_text_raises_parse_error(text: str) -> None:
    _parse_or_error(text)


def test_every_truncation_of_a_valid_text() -> None:
    text = MLP_TEXT
    for i in range(len(text)):
        _parse_or_error(text[:i])


# ---------------------------------------------------------------------------------------
# Speed


def _long_chain(n_ops: int) -> Function:
    b = Builder()
    x = Value(TensorType(DType.f32, (4, 8)), "x")
    v = x
    for i in range(n_ops):
        with b.at(SourceLoc("model.py", i + 1)):
            v = b.op(P.tanh, v) if i % 2 else b.op(P.add, v, x)
    return b.function("long", (x,), (v,))


def test_a_10000_op_function_round_trips() -> None:
    # Its speed is measured in bench/bench_frontend.py, not asserted here.
    text = str(_long_chain(10_000))
    fn = parse(text)
    assert len(fn.ops) == 10_000 and str(fn) == text
