"""The verifier rejects every broken invariant, naming the function, the op (index,
primitive, source line) and what is wrong. Bad functions are built directly from
``Op``/``Value``, since the builder and the parser refuse to make them."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from strategies import random_functions

from fusejit.ir import (
    Builder,
    DType,
    Function,
    Op,
    Primitive,
    SourceLoc,
    TensorType,
    Value,
    VerificationError,
    verify,
)
from fusejit.ir import primitives as P

F32 = TensorType(DType.f32, (2, 3))
LOC = SourceLoc("model.py", 7)


def _value(t: TensorType = F32, name: str | None = None) -> Value:
    return Value(t, name)


def _fn(
    params: tuple[Value, ...], ops: list[Op], results: tuple[Value, ...], name: str = "f"
) -> Function:
    return Function(name, params, tuple(ops), results)


def _rejects(fn: Function, *fragments: str) -> str:
    with pytest.raises(VerificationError) as info:
        verify(fn)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_valid_function_is_returned_unchanged() -> None:
    x = _value(name="x")
    y = _value()
    fn = _fn((x,), [Op(P.neg, (x,), (y,), {}, LOC)], (y, x))
    assert verify(fn) is fn


@settings(deadline=None, max_examples=50, suppress_health_check=[HealthCheck.too_slow])
@given(random_functions())
def test_random_functions_verify(fn: Function) -> None:
    assert verify(fn) is fn


# Definitions and uses ------------------------------------------------------------------


def test_use_before_definition() -> None:
    x, a, b = _value(name="x"), _value(), _value()
    ops = [Op(P.neg, (b,), (a,), {}, LOC), Op(P.neg, (x,), (b,), {})]
    _rejects(_fn((x,), ops, (a,)),
             "@f: op 0 (neg at model.py:7): operand 0 is used before it is defined")


def test_use_of_a_value_defined_nowhere() -> None:
    x, stranger, out = _value(name="x"), _value(), _value()
    ops = [Op(P.neg, (x,), (_value(),), {}), Op(P.add, (x, stranger), (out,), {}, LOC)]
    _rejects(_fn((x,), ops, (out,)),
             "op 1 (add at model.py:7): operand 1 is used before it is defined")


def test_op_reading_its_own_output() -> None:
    a = _value()
    _rejects(_fn((), [Op(P.neg, (a,), (a,), {})], (a,)), "op 0 (neg): operand 0 is used before")


def test_redefinition_by_two_ops() -> None:
    x, a = _value(name="x"), _value()
    ops = [Op(P.neg, (x,), (a,), {}), Op(P.abs, (x,), (a,), {}, LOC)]
    _rejects(_fn((x,), ops, (a,)), "@f: op 1 (abs at model.py:7) redefines a value")


def test_redefinition_of_a_parameter() -> None:
    x = _value(name="x")
    _rejects(_fn((x,), [Op(P.neg, (x,), (x,), {})], (x,)), "op 0 (neg) redefines a value")
    _rejects(_fn((x, x), [], (x,)), "@f: parameter 1 redefines a value")


def test_undefined_result() -> None:
    x = _value(name="x")
    _rejects(_fn((x,), [], (x, _value())), "@f: result 1 is not defined in the function")


# Types and attributes --------------------------------------------------------------------


def test_result_type_differs_from_inferred() -> None:
    x = _value(name="x")
    out = _value(TensorType(DType.f64, (2, 3)))
    _rejects(_fn((x,), [Op(P.add, (x, x), (out,), {}, LOC)], (out,)),
             "op 0 (add at model.py:7): result types f64[2,3] differ from the inferred f32[2,3]")


def test_wrong_number_of_results() -> None:
    x = _value(name="x")
    outs = (_value(), _value())
    _rejects(_fn((x,), [Op(P.neg, (x,), outs, {}, LOC)], outs),
             "result types f32[2,3], f32[2,3] differ from the inferred f32[2,3]")


def test_operand_types_rejected_by_the_rule() -> None:
    x, i = _value(name="x"), _value(TensorType(DType.i32, (2, 3)), "i")
    _rejects(_fn((x, i), [Op(P.add, (x, i), (_value(),), {}, LOC)], ()),
             "op 0 (add at model.py:7): add: operand dtypes f32 and i32 differ")
    _rejects(_fn((i,), [Op(P.exp, (i,), (_value(),), {})], ()), "exp does not accept dtype i32")
    _rejects(_fn((x,), [Op(P.add, (x,), (_value(),), {})], ()), "add takes 2 operands, got 1")


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ({"axes": (5,)}, "reduce_sum: axes=(5,) are not distinct axes of a rank-2 operand"),
        ({"axes": (0, 0)}, "are not distinct axes"),
        ({"axes": "0"}, "reduce_sum: attribute axes='0' must be a tuple of ints"),
        ({"axes": (True,)}, "must be a tuple of ints"),
        ({}, "reduce_sum takes attributes (axes), got ()"),
        ({"axes": (0,), "keepdims": True}, "takes attributes (axes), got (axes, keepdims)"),
    ],
)
def test_bad_attributes(attrs: dict, fragment: str) -> None:
    x, out = _value(name="x"), _value(TensorType(DType.f32, (3,)))
    message = _rejects(_fn((x,), [Op(P.reduce_sum, (x,), (out,), attrs, LOC)], (out,)), fragment)
    assert message.startswith("@f: op 0 (reduce_sum at model.py:7): ")


def test_bad_implied_attribute() -> None:
    out = _value(TensorType(DType.f32, (2,)))
    attrs = {"value": 1.0, "shape": (2,), "dtype": "f32"}
    _rejects(_fn((), [Op(P.constant, (), (out,), attrs)], (out,)),
             "op 0 (constant): constant: attribute dtype='f32' must be a dtype")


# Primitives ------------------------------------------------------------------------------


def test_unknown_primitive() -> None:
    frob = Primitive(name="frobnicate", kind=P.OpKind.ELEMENTWISE, arity=1, attrs={},
                     abstract_eval=lambda ts: ts, impl=lambda x: (x,))
    x, out = _value(name="x"), _value()
    _rejects(_fn((x,), [Op(frob, (x,), (out,), {}, LOC)], (out,)),
             "@f: op 0 (frobnicate at model.py:7): unknown primitive")


def test_unregistered_lookalike_of_a_registered_primitive() -> None:
    # Rules are looked up on the primitive object, so a copy named "neg" would bypass
    # every rule registered on the real one.
    fake_neg = Primitive(name="neg", kind=P.OpKind.ELEMENTWISE, arity=1, attrs={},
                         abstract_eval=P.neg.abstract_eval, impl=P.neg.impl)
    x, out = _value(name="x"), _value()
    _rejects(_fn((x,), [Op(fake_neg, (x,), (out,), {})], (out,)), "op 0 (neg): unknown primitive")


# Nested functions ------------------------------------------------------------------------


def test_nested_functions_are_verified() -> None:
    p, r, stranger = _value(name="p"), _value(), _value()
    # inner's signature fits the call, so only its body is wrong.
    inner = _fn((p,), [Op(P.neg, (stranger,), (r,), {}, SourceLoc("layer.py", 3))], (r,), "inner")
    ok = Function("ok", (p,), (), (p,))
    x = _value(name="x")
    b = Builder()
    (out,) = b.emit(P.custom_vjp_call, (x,), {"fun": ok, "fwd": ok, "bwd": ok})
    good = b.function("outer", (x,), (out,))
    assert verify(good) is good
    call = Op(P.custom_vjp_call, (x,), (_value(),), {"fun": ok, "fwd": ok, "bwd": inner}, LOC)
    message = _rejects(_fn((x,), [call], call.outputs, "outer"))
    assert message == "@inner: op 0 (neg at layer.py:3): operand 0 is used before it is defined"
