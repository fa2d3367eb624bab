"""Bad input gets an error that says what is wrong and where, in the user's terms.

Source lines in messages are the user's own (``file.py:LINE``): the expected numbers are
computed with ``inspect``, never written by hand.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp


def where(fn: Callable[..., Any], text: str) -> str:
    """``path:line`` of the line of ``fn``'s source that contains ``text``."""
    lines, first = inspect.getsourcelines(fn)
    hits = [first + i for i, line in enumerate(lines) if text in line]
    assert len(hits) == 1, f"{text!r} must occur once in {fn.__name__}"
    return f"{inspect.getsourcefile(fn)}:{hits[0]}"


def f32(*shape: int) -> np.ndarray:
    return np.ones(shape, np.float32)


# ---------------------------------------------------------------------------------------
# Shape mismatches: the op, both shapes and the user's line


def add_mismatch(x: Any, y: Any) -> Any:
    z = x * 2
    return z + y


def matmul_mismatch(x: Any, y: Any) -> Any:
    return fnp.tanh(x @ y)


def numpy_protocol_mismatch(x: Any, y: Any) -> Any:
    return np.maximum(x, y)


def concatenate_mismatch(x: Any, y: Any) -> Any:
    return fnp.concatenate([x, y], axis=0)


def helper(a: Any, b: Any) -> Any:
    return a - b


def mismatch_in_a_helper(x: Any, y: Any) -> Any:
    return helper(x, y)


SHAPE_ERRORS = [
    (add_mismatch, "z + y", (4, 4), (3,), r"add: operands could not be broadcast together with shapes \(4, 4\) \(3,\)"),
    (matmul_mismatch, "x @ y", (4, 4), (3, 2), r"matmul: contracted dimensions differ: shapes \(4, 4\) and \(3, 2\)"),
    (numpy_protocol_mismatch, "np.maximum", (2, 3), (2,), r"maximum: operands could not be broadcast together with shapes \(2, 3\) \(2,\)"),
    (concatenate_mismatch, "fnp.concatenate", (2, 3), (2, 4), r"concatenate: shapes \(2, 3\) and \(2, 4\) differ outside axis 0"),
    (mismatch_in_a_helper, "a - b", (3,), (4,), r"subtract: operands could not be broadcast together with shapes \(3,\) \(4,\)"),
]  # fmt: skip


@pytest.mark.parametrize(("fn", "line", "xs", "ys", "message"), SHAPE_ERRORS, ids=[e[0].__name__ for e in SHAPE_ERRORS])
def test_shape_mismatch_names_op_shapes_and_source_line(fn, line, xs, ys, message) -> None:
    site = where(helper if fn is mismatch_in_a_helper else fn, line)
    with pytest.raises(ValueError, match=message) as traced:
        fj.jit(fn)(f32(*xs), f32(*ys))
    assert str(traced.value).endswith(f"(at {site})")


def test_shape_mismatch_in_eager_fnp_names_the_callers_line() -> None:
    def eager(x: Any, y: Any) -> Any:
        return fnp.add(x, y)

    message = r"add: operands could not be broadcast together with shapes \(4, 4\) \(3,\)"
    with pytest.raises(ValueError, match=message) as info:
        eager(f32(4, 4), f32(3))
    assert str(info.value).endswith(f"(at {where(eager, 'fnp.add')})")


def test_shape_errors_are_type_errors_too() -> None:
    """IRTypeError is both a ValueError (like NumPy's broadcast error) and a TypeError."""
    with pytest.raises(TypeError):
        fj.jit(add_mismatch)(f32(2), f32(3))
    assert issubclass(fj.IRTypeError, ValueError)


def bad_reshape(x: Any) -> Any:
    return x.reshape(5, -1)


def bad_axis(x: Any) -> Any:
    return x.sum(axis=2)


def bad_index(x: Any) -> Any:
    return x[3]


@pytest.mark.parametrize(
    ("fn", "line", "error", "message"),
    [
        (bad_reshape, "reshape(5, -1)", ValueError, r"reshape: cannot reshape an array of size 6 into shape \(5, -1\)"),
        (bad_axis, "axis=2", ValueError, r"sum: axis 2 is out of bounds for an array of dimension 2"),
        (bad_index, "x[3]", IndexError, r"index 3 is out of bounds for axis 0 with size 2"),
    ],  # fmt: skip
    ids=["reshape", "axis", "index"],
)
def test_layout_errors_name_the_op_and_line(fn, line, error, message) -> None:
    with pytest.raises(error, match=message) as info:
        fj.jit(fn)(f32(2, 3))
    assert str(info.value).endswith(f"(at {where(fn, line)})")


# ---------------------------------------------------------------------------------------
# Python control flow on traced values


def branch_on_data(x: Any) -> Any:
    if x.sum() > 0:
        return x
    return -x


def loop_on_data(x: Any) -> Any:
    while x.max() < 10:
        x = x * 2
    return x


def int_of_data(x: Any) -> Any:
    return fnp.zeros(int(x[0]))


def float_of_data(x: Any) -> Any:
    return x * float(x.sum())


def range_of_data(n: Any) -> Any:
    return sum(range(n))


def item_of_data(x: Any) -> Any:
    return x.sum().item()


CONCRETIZATION = [
    (branch_on_data, "if x.sum() > 0", r"bool\(\) / `if` / `while` on a traced value", "bool[]"),
    (loop_on_data, "while x.max() < 10", r"bool\(\) / `if` / `while` on a traced value", "bool[]"),
    (int_of_data, "int(x[0])", r"int\(\)", "f32[]"),
    (float_of_data, "float(x.sum())", r"float\(\)", "f32[]"),
    (range_of_data, "range(n)", "using a traced value as an index or size", "i64[]"),
    (item_of_data, ".item()", r"\.item\(\)", "f32[]"),
]


@pytest.mark.parametrize(("fn", "line", "what", "type_text"), CONCRETIZATION, ids=[c[0].__name__ for c in CONCRETIZATION])
def test_python_needing_a_concrete_value_says_it_is_traced(fn, line, what, type_text) -> None:
    arg = 3 if fn is range_of_data else f32(3)
    with pytest.raises(fj.ConcretizationError) as info:
        fj.jit(fn)(arg)
    message = str(info.value)
    assert re.match(what, message), message
    assert f"this {type_text} value is traced inside {fn.__name__!r} (at {where(fn, line)})" in message
    assert "static_argnums/static_argnames" in message and "fnp.where" in message
    assert isinstance(info.value, TypeError)


def test_marking_the_argument_static_fixes_python_control_flow() -> None:
    assert fj.jit(range_of_data, static_argnums=0)(4) == 6


# ---------------------------------------------------------------------------------------
# NumPy functions without a rule


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda x: np.unwrap(x), "numpy.unwrap"),
        (lambda x: np.linalg.eigvals(x[None] * x[:, None]), "numpy.linalg.eigvals"),
        (lambda x: np.ptp(x), "numpy.ptp"),
        (lambda x: np.copysign(x, x), "numpy.copysign"),
        (lambda x: np.add.accumulate(x), "numpy.add.accumulate"),
        (lambda x: np.exp(x, where=x > 0), "numpy.exp with arguments ['where']"),
        (lambda x: fnp.unwrap(x), "numpy.unwrap is not supported by fusejit.numpy"),
    ],
    ids=["unwrap", "linalg.eigvals", "ptp", "copysign", "ufunc.accumulate", "ufunc kwargs", "fnp attribute"],
)
def test_numpy_function_without_a_rule_names_it(call, name) -> None:
    with pytest.raises(NotImplementedError, match=re.escape(name)):
        fj.jit(call)(f32(3))


def test_missing_fnp_names_still_fail_like_missing_attributes_for_private_names() -> None:
    with pytest.raises(AttributeError):
        fnp._no_such_thing  # noqa: B018


def test_out_argument_that_is_a_numpy_array_made_before_the_trace_cannot_receive_a_traced_value() -> None:
    acc = np.zeros(3, np.float32)

    def f(x: Any) -> Any:
        np.add(x, x, out=acc)
        return acc

    with pytest.raises(TypeError, match=r"numpy\.add: a NumPy array made before the trace cannot hold") as info:
        fj.jit(f)(f32(3))
    assert f"(at {where(f, 'np.add(x, x, out=acc)')})" in str(info.value)
    assert "create the array inside the traced function" in str(info.value)


# ---------------------------------------------------------------------------------------
# Arguments jit cannot take


@pytest.mark.parametrize(
    ("params", "path", "what"),
    [
        ({"w": f32(2), "name": "relu"}, "params['name']", "a str is not an array or scalar"),
        ({"w": [f32(2), object()]}, "params['w'][1]", "a object is not an array or scalar"),
        ({"w": np.ones(3, np.uint8)}, "params['w']", "dtype uint8 is not supported by fusejit"),
        ({"w": np.float16(1.0)}, "params['w']", "dtype float16 is not supported by fusejit"),
        ({"w": np.ones(2, np.complex64)}, "params['w']", "dtype complex64 is not supported by fusejit"),
    ],
    ids=["str", "object", "uint8", "float16", "complex"],
)
def test_non_array_leaf_names_its_pytree_path(params: Any, path: str, what: str) -> None:
    def f(params: Any) -> Any:
        return 0.0

    with pytest.raises(TypeError, match=re.escape(f"argument {path}: {what}")) as info:
        fj.jit(f)(params)
    if "not an array" in what:
        assert "static_argnums/static_argnames" in str(info.value)


def test_non_array_leaf_of_a_keyword_argument_names_its_path() -> None:
    def f(x: Any, **options: Any) -> Any:
        return x

    with pytest.raises(TypeError, match=re.escape("argument mode[1]: a str is not an array or scalar")):
        fj.jit(f)(f32(2), mode=(1.0, "fast"))


def test_unsupported_dtype_inside_traced_code_names_the_dtype() -> None:
    with pytest.raises(TypeError, match="dtype uint8 is not supported by fusejit"):
        fj.jit(lambda x: x + np.ones(3, np.uint8))(f32(3))
    with pytest.raises(TypeError, match="dtype float16 is not supported by fusejit"):
        fj.jit(lambda x: x.astype(np.float16))(f32(3))


@pytest.mark.parametrize(("value", "kind"), [([1, 2], "list"), ({"a": 1}, "dict"), (np.ones(2), "ndarray")])
def test_unhashable_static_argument(value: Any, kind: str) -> None:
    def scale(x: Any, factors: Any) -> Any:
        return x * len(factors)

    f = fj.jit(scale, static_argnums=1)
    message = f"static argument factors (position 1) of scale is unhashable ({kind}); static arguments must be hashable"
    with pytest.raises(TypeError, match=re.escape(message)):
        f(f32(2), value)
    g = fj.jit(scale, static_argnames="factors")
    with pytest.raises(TypeError, match=re.escape(f"static argument factors of scale is unhashable ({kind})")):
        g(f32(2), factors=value)


# ---------------------------------------------------------------------------------------
# Escaped tracers, mutation, data-dependent shapes


def test_escaped_tracer_used_eagerly() -> None:
    leaked = []

    @fj.jit
    def keep(x: Any) -> Any:
        leaked.append(x)
        return x

    keep(f32(3))
    for use in (lambda t: t + 1, lambda t: np.sin(t), lambda t: fnp.sum(t), lambda t: bool(t.sum())):
        with pytest.raises(fj.EscapedTracerError, match=r"traced value f32\[3\] of the finished trace of 'keep' was used later"):
            use(leaked[0])


def test_escaped_tracer_used_in_a_later_trace() -> None:
    leaked = []
    fj.jit(lambda x: leaked.append(x) or x)(f32(3))

    def later(y: Any) -> Any:
        return y + leaked[0]

    with pytest.raises(fj.EscapedTracerError, match="return it from the traced function") as info:
        fj.jit(later)(f32(3))
    assert f"(at {where(later, 'y + leaked[0]')})" in str(info.value)
    with pytest.raises(fj.EscapedTracerError, match="used later as argument x"):
        fj.jit(lambda x: x)(leaked[0])


def test_storing_a_traced_value_into_a_numpy_array_made_before_the_trace() -> None:
    buf = np.zeros(3, np.float32)

    def f(x: Any) -> Any:
        buf[:] = x
        return buf

    with pytest.raises(fj.ConcretizationError, match=r"storing it into a NumPy array created before the traced "
                                                     r"function was called") as info:
        fj.jit(f)(f32(3))
    assert f"(at {where(f, 'buf[:] = x')})" in str(info.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: x[x > 0], "boolean mask indexing (its shape depends on the data)"),
        (lambda x: x[True], "indexing with a boolean"),
        (lambda x: fnp.where(x > 0), "numpy.where with one traced argument (its shape depends on the data)"),
        (lambda x: np.where(x > 0), "numpy.where with one traced argument"),
        (lambda x: x.reshape(1, 3)[np.array([0]), None, np.array([1])], "several integer arrays and None"),
        (lambda x: x.nonzero(), "numpy.nonzero of a traced array (its shape depends on the data)"),
        (lambda x: np.compress(x > 0, x), "numpy.compress with a traced condition (its shape depends on the data)"),
    ],
    ids=["mask", "bool scalar", "fnp.where", "np.where", "two arrays", "nonzero", "compress"],
)
def test_data_dependent_shapes_are_not_implemented(call: Any, message: str) -> None:
    with pytest.raises(NotImplementedError, match=re.escape(message)):
        fj.jit(call)(f32(3))


def test_traced_values_cannot_be_static_or_hashed() -> None:
    with pytest.raises(TypeError, match="traced arrays are unhashable"):
        fj.jit(lambda x: {x: 1})(f32(2))


def test_jit_of_a_function_returning_a_non_array() -> None:
    with pytest.raises(TypeError, match="returned a str; outputs must be arrays or scalars"):
        fj.jit(lambda x: (x, "done"))(f32(2))


def _matmul_by(w: Any, x: Any) -> Any:
    return x @ w


def _add_to(w: Any, x: Any) -> Any:
    return w + x


@pytest.mark.parametrize("fn", [_matmul_by, _add_to])
def test_a_none_operand_says_it_is_none_and_where(fn) -> None:
    """A None argument is an empty pytree: an op on it names None, not 'a scalar' or dtype object."""
    with pytest.raises(TypeError, match=r"an operand is None, not an array \(at " + re.escape(where(fn, "return "))):
        fj.jit(fn)(f32(4, 2), None)


@pytest.mark.parametrize("fn", [_matmul_by, _add_to])
def test_a_list_of_traced_values_as_an_operand_says_how_to_build_the_array(fn) -> None:
    """A list argument is a pytree of scalars; an op on the list must not fail as a concretization."""
    with pytest.raises(TypeError, match=r"a Python list holding traced values .*fusejit.numpy.stack.*np.asarray"):
        fj.jit(fn)(f32(4, 2), [[1.0] * 4] * 8)
