"""The closed set of primitives, each declared once with its shape/dtype rule and eager
NumPy implementation.

A ``Primitive`` is an immutable declaration: its name, what it does to its iteration space
(``OpKind``), its attributes, ``abstract_eval`` (types in -> types out) and ``impl``
(NumPy arrays in -> arrays out). Every other layer keeps its own rule table keyed by the
``Primitive`` object (autodiff's ``VJP_RULES``/``JVP_RULES``, codegen's ``CODEGEN_RULES``);
nothing is filled in at import time, and ``tests/test_rules.py`` names every primitive a
table lacks. Named sets of primitives (``RECOMPUTABLE``, ``TRANSCENDENTAL``) are the
vocabulary the cost models share.

IR ops are strict where NumPy is lenient: binary ops need equal shapes and dtypes
(the tracer inserts ``broadcast_in_dim`` and ``convert``), so every rule stays simple.
"""

from __future__ import annotations

import builtins as _builtins  # primitives named abs/max/min/round/slice shadow builtins
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from fusejit.ir.dtypes import DType
from fusejit.ir.types import TensorType


class IRTypeError(ValueError, TypeError):
    """An op applied to operands whose shapes, dtypes or attributes it does not accept."""


class OpKind(enum.Enum):
    """What a primitive does to its iteration space; fusion and codegen dispatch on it."""

    ELEMENTWISE = "elementwise"  # out[i] = f(in1[i], in2[i], ...)
    LAYOUT = "layout"  # moves or broadcasts elements: reshape, transpose, slice, pad, ...
    REDUCTION = "reduction"  # reduces axes: reduce_sum/max/min, argmax/argmin
    CONTRACTION = "contraction"  # dot_general (BLAS)
    INDEXING = "indexing"  # data-dependent addressing, per element: gather
    KERNEL = "kernel"  # lowered by a kernel strategy of its own: scatter_add, cumsum
    SOURCE = "source"  # no inputs: constant, iota
    CALL = "call"  # calls nested functions: custom_vjp_call, scan, while_loop, cond
    # Run by the runtime between kernels on concrete host arrays, never lowered to a
    # kernel (collectives over MPI): fusion gives each its own group, the runtime calls
    # its rule in ``fusejit.runtime.host_ops.HOST_RULES``, no pass evaluates it early.
    HOST = "host"


class AttrKind(enum.Enum):
    INT = "int"
    BOOL = "bool"
    INTS = "ints"  # tuple of ints (shapes, axes, permutations)
    INTS_PAIR = "ints_pair"  # ((lhs ints), (rhs ints)) for dot_general
    DTYPE = "dtype"
    SCALAR = "scalar"  # a Python bool/int/float
    SCALARS = "scalars"  # a scalar, or a flat tuple of scalars (constant data)
    FUNCTION = "function"  # a nested IR Function (custom_vjp_call's rules, a loop body)
    FUNCTIONS = "functions"  # a tuple of nested IR Functions (cond's branches)


@dataclass(frozen=True, slots=True)
class AttrSpec:
    kind: AttrKind
    # The printer omits attributes that the result type already shows (constant/iota's
    # dtype and shape); the parser reads them back from it.
    implied_by_result: bool = False


FLOATS = frozenset({DType.f32, DType.f64})
INTS = frozenset({DType.i32, DType.i64})
NUMERIC = FLOATS | INTS
ANY = NUMERIC | {DType.bool}
BOOL_OR_INT = INTS | {DType.bool}

TypeRule = Callable[..., tuple[TensorType, ...]]
ImplRule = Callable[..., tuple[np.ndarray, ...]]


@dataclass(frozen=True, eq=False, slots=True, kw_only=True)
class Primitive:
    """One IR operation, declared once. Compared and hashed by identity: rule tables are
    keyed by the object."""

    name: str
    kind: OpKind
    arity: int | None  # None: variadic (one or more inputs)
    attrs: Mapping[str, AttrSpec]
    abstract_eval: TypeRule = field(repr=False)
    impl: ImplRule = field(repr=False)
    dtypes: frozenset[DType] = ANY  # accepted dtypes of the (first) data input

    def __post_init__(self) -> None:
        object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    def __repr__(self) -> str:
        return f"Primitive({self.name})"

    def infer(self, in_types: tuple[TensorType, ...], attrs: dict[str, Any]) -> tuple[TensorType, ...]:
        """Checks arity, dtypes and attributes, then applies the shape/dtype rule."""
        if self.arity is not None and len(in_types) != self.arity:
            raise IRTypeError(f"{self.name} takes {self.arity} operands, got {len(in_types)}")
        if self.arity is None and not in_types:
            raise IRTypeError(f"{self.name} takes at least one operand")
        if in_types and in_types[0].dtype not in self.dtypes:
            allowed = ", ".join(sorted(str(d) for d in self.dtypes))
            raise IRTypeError(f"{self.name} does not accept dtype {in_types[0].dtype} (accepts {allowed})")
        if set(attrs) != set(self.attrs):
            raise IRTypeError(
                f"{self.name} takes attributes ({', '.join(self.attrs)}), got ({', '.join(attrs)})"
            )
        for key, spec in self.attrs.items():
            check_attr(self.name, key, spec.kind, attrs[key])
        return self.abstract_eval(in_types, **attrs)


PRIMITIVES: dict[str, Primitive] = {}


def _register(prim: Primitive) -> Primitive:
    assert prim.name not in PRIMITIVES, prim.name
    PRIMITIVES[prim.name] = prim
    return prim


def _host(name: str, arity: int | None, attrs: Mapping[str, AttrSpec], rule: TypeRule, impl: ImplRule,
          dtypes: frozenset[DType] = ANY) -> Primitive:
    """Registers a primitive the runtime runs on host arrays between kernels
    (``OpKind.HOST``: collectives, linear algebra, callbacks)."""
    return _register(Primitive(name=name, kind=OpKind.HOST, arity=arity, attrs=attrs, abstract_eval=rule,
                               impl=impl, dtypes=dtypes))


# ---------------------------------------------------------------------------------------
# Attribute checks


def check_attr(prim: str, key: str, kind: AttrKind, value: Any) -> None:
    def bad(what: str) -> IRTypeError:
        return IRTypeError(f"{prim}: attribute {key}={value!r} must be {what}")

    def is_int(v: Any) -> bool:
        return type(v) is int

    def is_scalar(v: Any) -> bool:
        # Exactly Python scalars: NumPy scalars would print as np.float64(...).
        return type(v) in (bool, int, float)

    def is_ints(v: Any) -> bool:
        return isinstance(v, tuple) and all(is_int(i) for i in v)

    if kind is AttrKind.INT and not is_int(value):
        raise bad("an int")
    if kind is AttrKind.BOOL and type(value) is not bool:
        raise bad("True or False")
    if kind is AttrKind.INTS and not is_ints(value):
        raise bad("a tuple of ints")
    if kind is AttrKind.INTS_PAIR and not (
        isinstance(value, tuple) and len(value) == 2 and all(is_ints(v) for v in value)
    ):
        raise bad("a pair of int tuples")
    if kind is AttrKind.DTYPE and not isinstance(value, DType):
        raise bad("a dtype")
    if kind is AttrKind.SCALAR and not isinstance(value, (bool, int, float)):
        raise bad("a scalar")
    if kind is AttrKind.FUNCTION and type(value).__name__ != "Function":
        raise bad("a function")
    if kind is AttrKind.FUNCTIONS and not (
        isinstance(value, tuple) and all(type(v).__name__ == "Function" for v in value)
    ):
        raise bad("a tuple of functions")
    if kind is AttrKind.SCALARS and not (
        isinstance(value, (bool, int, float))
        or (isinstance(value, tuple) and all(isinstance(v, (bool, int, float)) for v in value))
    ):
        raise bad("a scalar or a tuple of scalars")


def _check_shape(prim: str, shape: tuple[int, ...]) -> None:
    if any(n < 0 for n in shape):
        raise IRTypeError(f"{prim}: shape {shape} has a negative dimension")


def _check_axes(prim: str, axes: tuple[int, ...], ndim: int, what: str = "axes") -> None:
    if any(not 0 <= a < ndim for a in axes) or len(set(axes)) != len(axes):
        raise IRTypeError(f"{prim}: {what}={axes} are not distinct axes of a rank-{ndim} operand")


# ---------------------------------------------------------------------------------------
# Elementwise


def _same_types(name: str, in_types: tuple[TensorType, ...]) -> TensorType:
    first = in_types[0]
    for t in in_types[1:]:
        if t.shape != first.shape:
            raise IRTypeError(f"{name}: operand shapes {first.shape} and {t.shape} differ")
        if t.dtype != first.dtype:
            raise IRTypeError(f"{name}: operand dtypes {first.dtype} and {t.dtype} differ")
    return first


def _elementwise(
    name: str,
    arity: int,
    np_fn: Callable[..., np.ndarray],
    dtypes: frozenset[DType],
    out_dtype: DType | None = None,
) -> Primitive:
    def rule(in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
        t = _same_types(name, in_types)
        return (t if out_dtype is None else t.with_dtype(out_dtype),)

    def impl(*xs: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np_fn(*xs),)

    return _register(Primitive(name=name, kind=OpKind.ELEMENTWISE, arity=arity, attrs={}, abstract_eval=rule, impl=impl, dtypes=dtypes))


def _logistic(x: np.ndarray) -> np.ndarray:
    one = x.dtype.type(1)
    return one / (one + np.exp(-x))


def _rsqrt(x: np.ndarray) -> np.ndarray:
    return x.dtype.type(1) / np.sqrt(x)


neg = _elementwise("neg", 1, np.negative, NUMERIC)
abs = _elementwise("abs", 1, np.abs, NUMERIC)  # noqa: A001 - the primitive's name
sign = _elementwise("sign", 1, np.sign, NUMERIC)
exp = _elementwise("exp", 1, np.exp, FLOATS)
log = _elementwise("log", 1, np.log, FLOATS)
log1p = _elementwise("log1p", 1, np.log1p, FLOATS)
expm1 = _elementwise("expm1", 1, np.expm1, FLOATS)
sqrt = _elementwise("sqrt", 1, np.sqrt, FLOATS)
rsqrt = _elementwise("rsqrt", 1, _rsqrt, FLOATS)
tanh = _elementwise("tanh", 1, np.tanh, FLOATS)
logistic = _elementwise("logistic", 1, _logistic, FLOATS)
sin = _elementwise("sin", 1, np.sin, FLOATS)
cos = _elementwise("cos", 1, np.cos, FLOATS)
floor = _elementwise("floor", 1, np.floor, FLOATS)
ceil = _elementwise("ceil", 1, np.ceil, FLOATS)
round = _elementwise("round", 1, np.rint, FLOATS)  # noqa: A001 - half to even, like np.round
stop_gradient = _elementwise("stop_gradient", 1, lambda x: x, ANY)
logical_not = _elementwise("not", 1, lambda x: np.logical_not(x) if x.dtype == bool else np.invert(x), BOOL_OR_INT)

add = _elementwise("add", 2, np.add, NUMERIC)
sub = _elementwise("sub", 2, np.subtract, NUMERIC)
mul = _elementwise("mul", 2, np.multiply, NUMERIC)
div = _elementwise("div", 2, np.divide, FLOATS)
pow = _elementwise("pow", 2, np.power, FLOATS)  # noqa: A001
# The angle of the point (x, y) = (second, first operand), in [-pi, pi]: np.arctan2.
atan2 = _elementwise("atan2", 2, np.arctan2, FLOATS)
# NumPy's floor division and remainder (the divisor's sign), for ints and floats alike.
floor_divide = _elementwise("floor_divide", 2, np.floor_divide, NUMERIC)
remainder = _elementwise("remainder", 2, np.remainder, NUMERIC)
max = _elementwise("max", 2, np.maximum, NUMERIC)  # noqa: A001
min = _elementwise("min", 2, np.minimum, NUMERIC)  # noqa: A001
eq = _elementwise("eq", 2, np.equal, ANY, DType.bool)
ne = _elementwise("ne", 2, np.not_equal, ANY, DType.bool)
lt = _elementwise("lt", 2, np.less, NUMERIC, DType.bool)
le = _elementwise("le", 2, np.less_equal, NUMERIC, DType.bool)
gt = _elementwise("gt", 2, np.greater, NUMERIC, DType.bool)
ge = _elementwise("ge", 2, np.greater_equal, NUMERIC, DType.bool)
logical_and = _elementwise("and", 2, np.bitwise_and, BOOL_OR_INT)
logical_or = _elementwise("or", 2, np.bitwise_or, BOOL_OR_INT)
# Bit shifts of integers by a count of the same dtype, as NumPy 2 defines them for every
# count: a count outside [0, bit width) (negative ones included) shifts every bit out, so
# shift_left gives 0 and shift_right_arithmetic the sign (0 or -1). C and LLVM leave such
# shifts undefined: backends must select these results explicitly.
shift_left = _elementwise("shift_left", 2, np.left_shift, INTS)
shift_right_arithmetic = _elementwise("shift_right_arithmetic", 2, np.right_shift, INTS)


def _select_rule(in_types: tuple[TensorType, ...]) -> tuple[TensorType, ...]:
    pred, on_true, on_false = in_types
    if pred.dtype is not DType.bool:
        raise IRTypeError(f"select: predicate must be bool, got {pred.dtype}")
    t = _same_types("select", (on_true, on_false))
    if pred.shape != t.shape:
        raise IRTypeError(f"select: predicate shape {pred.shape} and operand shape {t.shape} differ")
    return (t,)


select = _register(
    Primitive(
        name="select",
        kind=OpKind.ELEMENTWISE,
        arity=3,
        attrs={},
        abstract_eval=_select_rule,
        impl=lambda p, a, b: (np.where(p, a, b),),
        dtypes=frozenset({DType.bool}),
    )
)


def _convert_rule(in_types: tuple[TensorType, ...], dtype: DType) -> tuple[TensorType, ...]:
    return (in_types[0].with_dtype(dtype),)


convert = _register(
    Primitive(
        name="convert",
        kind=OpKind.ELEMENTWISE,
        arity=1,
        attrs={"dtype": AttrSpec(AttrKind.DTYPE)},
        abstract_eval=_convert_rule,
        impl=lambda x, dtype: (x.astype(dtype.np),),
    )
)

UNARY_ELEMENTWISE = (
    neg, abs, sign, exp, log, log1p, expm1, sqrt, rsqrt, tanh, logistic, sin, cos,
    floor, ceil, round, stop_gradient, logical_not,
)  # fmt: skip
BINARY_ELEMENTWISE = (
    add, sub, mul, div, pow, floor_divide, remainder, max, min, eq, ne, lt, le, gt, ge,
    logical_and, logical_or, atan2, shift_left, shift_right_arithmetic,
)  # fmt: skip

# ---------------------------------------------------------------------------------------
# Layout


def _broadcast_rule(
    in_types: tuple[TensorType, ...], shape: tuple[int, ...], dims: tuple[int, ...]
) -> tuple[TensorType, ...]:
    (x,) = in_types
    _check_shape("broadcast_in_dim", shape)
    if len(dims) != x.ndim or any(not 0 <= d < len(shape) for d in dims) or list(dims) != sorted(set(dims)):
        raise IRTypeError(
            f"broadcast_in_dim: dims={dims} must be increasing axes of {shape}, one per operand axis"
        )
    for i, d in enumerate(dims):
        if x.shape[i] not in (1, shape[d]):
            raise IRTypeError(f"broadcast_in_dim: cannot broadcast shape {x.shape} to {shape}")
    return (x.with_shape(shape),)


def _broadcast_impl(x: np.ndarray, shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[np.ndarray]:
    expanded = [1] * len(shape)
    for i, d in enumerate(dims):
        expanded[d] = x.shape[i]
    return (np.broadcast_to(x.reshape(expanded), shape),)


broadcast_in_dim = _register(
    Primitive(
        name="broadcast_in_dim",
        kind=OpKind.LAYOUT,
        arity=1,
        attrs={"shape": AttrSpec(AttrKind.INTS), "dims": AttrSpec(AttrKind.INTS)},
        abstract_eval=_broadcast_rule,
        impl=_broadcast_impl,
    )
)


def _reshape_rule(in_types: tuple[TensorType, ...], shape: tuple[int, ...]) -> tuple[TensorType, ...]:
    (x,) = in_types
    if any(s < 0 for s in shape) or math.prod(shape) != x.size:
        raise IRTypeError(f"reshape: cannot reshape {x.shape} ({x.size} elements) to {shape}")
    return (x.with_shape(shape),)


reshape = _register(
    Primitive(
        name="reshape",
        kind=OpKind.LAYOUT,
        arity=1,
        attrs={"shape": AttrSpec(AttrKind.INTS)},
        abstract_eval=_reshape_rule,
        impl=lambda x, shape: (x.reshape(shape),),
    )
)


def _transpose_rule(in_types: tuple[TensorType, ...], perm: tuple[int, ...]) -> tuple[TensorType, ...]:
    (x,) = in_types
    if sorted(perm) != list(range(x.ndim)):
        raise IRTypeError(f"transpose: perm={perm} is not a permutation of {x.ndim} axes")
    return (x.with_shape(tuple(x.shape[p] for p in perm)),)


transpose = _register(
    Primitive(
        name="transpose",
        kind=OpKind.LAYOUT,
        arity=1,
        attrs={"perm": AttrSpec(AttrKind.INTS)},
        abstract_eval=_transpose_rule,
        impl=lambda x, perm: (np.transpose(x, perm),),
    )
)


def _slice_rule(
    in_types: tuple[TensorType, ...],
    start: tuple[int, ...],
    limit: tuple[int, ...],
    stride: tuple[int, ...],
) -> tuple[TensorType, ...]:
    (x,) = in_types
    if not len(start) == len(limit) == len(stride) == x.ndim:
        raise IRTypeError(f"slice: start/limit/stride need one entry per axis of {x.shape}")
    out = []
    for s, lim, st, n in zip(start, limit, stride, x.shape, strict=True):
        if not (0 <= s <= lim <= n and st >= 1):
            raise IRTypeError(f"slice: {s}:{lim}:{st} is not a valid slice of an axis of size {n}")
        out.append(len(range(s, lim, st)))
    return (x.with_shape(tuple(out)),)


slice = _register(  # noqa: A001
    Primitive(
        name="slice",
        kind=OpKind.LAYOUT,
        arity=1,
        attrs={n: AttrSpec(AttrKind.INTS) for n in ("start", "limit", "stride")},
        abstract_eval=_slice_rule,
        impl=lambda x, start, limit, stride: (
            x[tuple(_builtins.slice(*a) for a in zip(start, limit, stride, strict=True))],
        ),
    )
)


def _concatenate_rule(in_types: tuple[TensorType, ...], axis: int) -> tuple[TensorType, ...]:
    first = in_types[0]
    _check_axes("concatenate", (axis,), first.ndim, "axis")
    for t in in_types[1:]:
        if t.dtype != first.dtype:
            raise IRTypeError(f"concatenate: operand dtypes {first.dtype} and {t.dtype} differ")
        if t.ndim != first.ndim or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if i != axis
        ):
            raise IRTypeError(
                f"concatenate: shapes {first.shape} and {t.shape} differ outside axis {axis}"
            )
    size = sum(t.shape[axis] for t in in_types)
    return (first.with_shape(first.shape[:axis] + (size,) + first.shape[axis + 1 :]),)


concatenate = _register(
    Primitive(
        name="concatenate",
        kind=OpKind.LAYOUT,
        arity=None,
        attrs={"axis": AttrSpec(AttrKind.INT)},
        abstract_eval=_concatenate_rule,
        impl=lambda *xs, axis: (np.concatenate(xs, axis=axis),),
    )
)


def _pad_rule(
    in_types: tuple[TensorType, ...], lo: tuple[int, ...], hi: tuple[int, ...], value: Any
) -> tuple[TensorType, ...]:
    (x,) = in_types
    if len(lo) != x.ndim or len(hi) != x.ndim or any(p < 0 for p in lo + hi):
        raise IRTypeError(f"pad: lo={lo} and hi={hi} need one non-negative entry per axis of {x.shape}")
    return (x.with_shape(tuple(n + a + b for n, a, b in zip(x.shape, lo, hi, strict=True))),)


pad = _register(
    Primitive(
        name="pad",
        kind=OpKind.LAYOUT,
        arity=1,
        attrs={"lo": AttrSpec(AttrKind.INTS), "hi": AttrSpec(AttrKind.INTS), "value": AttrSpec(AttrKind.SCALAR)},
        abstract_eval=_pad_rule,
        impl=lambda x, lo, hi, value: (
            np.pad(x, list(zip(lo, hi, strict=True)), constant_values=x.dtype.type(value))
            if x.ndim else x.copy(),
        ),
    )
)

LAYOUT_PRIMITIVES = (broadcast_in_dim, reshape, transpose, slice, concatenate, pad)

# ---------------------------------------------------------------------------------------
# Reductions


def _reduce(name: str, np_fn: Callable[..., np.ndarray], dtypes: frozenset[DType]) -> Primitive:
    def rule(in_types: tuple[TensorType, ...], axes: tuple[int, ...]) -> tuple[TensorType, ...]:
        (x,) = in_types
        _check_axes(name, axes, x.ndim)
        if name not in ("reduce_sum", "reduce_prod") and any(x.shape[a] == 0 for a in axes):
            raise IRTypeError(f"{name}: zero-size axis in {x.shape} has no identity")
        return (x.with_shape(tuple(n for i, n in enumerate(x.shape) if i not in axes)),)

    def impl(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray]:
        return (np.asarray(np_fn(x, axis=axes)).astype(x.dtype, copy=False),)

    return _register(Primitive(name=name, kind=OpKind.REDUCTION, arity=1, attrs={"axes": AttrSpec(AttrKind.INTS)}, abstract_eval=rule, impl=impl, dtypes=dtypes))


reduce_sum = _reduce("reduce_sum", np.sum, NUMERIC)
reduce_max = _reduce("reduce_max", np.max, NUMERIC)
reduce_min = _reduce("reduce_min", np.min, NUMERIC)
reduce_prod = _reduce("reduce_prod", np.prod, NUMERIC)  # in the operand's dtype; empty: 1


def _arg_reduce(name: str, np_fn: Callable[..., np.ndarray]) -> Primitive:
    def rule(in_types: tuple[TensorType, ...], axis: int) -> tuple[TensorType, ...]:
        (x,) = in_types
        _check_axes(name, (axis,), x.ndim, "axis")
        if x.shape[axis] == 0:
            raise IRTypeError(f"{name}: axis {axis} of {x.shape} is empty")
        return (TensorType(DType.i64, x.shape[:axis] + x.shape[axis + 1 :]),)

    def impl(x: np.ndarray, axis: int) -> tuple[np.ndarray]:
        return (np.asarray(np_fn(x, axis=axis)).astype(np.int64, copy=False),)

    return _register(Primitive(name=name, kind=OpKind.REDUCTION, arity=1, attrs={"axis": AttrSpec(AttrKind.INT)}, abstract_eval=rule, impl=impl, dtypes=NUMERIC))


argmax = _arg_reduce("argmax", np.argmax)
argmin = _arg_reduce("argmin", np.argmin)

# ---------------------------------------------------------------------------------------
# Contraction


def _dot_general_rule(
    in_types: tuple[TensorType, ...],
    contract: tuple[tuple[int, ...], tuple[int, ...]],
    batch: tuple[tuple[int, ...], tuple[int, ...]],
) -> tuple[TensorType, ...]:
    lhs, rhs = in_types
    if lhs.dtype != rhs.dtype:
        raise IRTypeError(f"dot_general: operand dtypes {lhs.dtype} and {rhs.dtype} differ")
    (lc, rc), (lb, rb) = contract, batch
    _check_axes("dot_general", lc + lb, lhs.ndim, "lhs contract+batch axes")
    _check_axes("dot_general", rc + rb, rhs.ndim, "rhs contract+batch axes")
    if len(lc) != len(rc) or len(lb) != len(rb):
        raise IRTypeError(f"dot_general: contract={contract} batch={batch} are not paired")
    for a, b in zip(lc + lb, rc + rb, strict=True):
        if lhs.shape[a] != rhs.shape[b]:
            raise IRTypeError(
                f"dot_general: shapes {lhs.shape} and {rhs.shape} disagree on paired axes {a} and {b}"
            )
    lfree = [n for i, n in enumerate(lhs.shape) if i not in lc + lb]
    rfree = [n for i, n in enumerate(rhs.shape) if i not in rc + rb]
    batch_shape = [lhs.shape[a] for a in lb]
    return (TensorType(lhs.dtype, tuple(batch_shape + lfree + rfree)),)


def dot_general_as_matmul(
    lhs_shape: tuple[int, ...],
    rhs_shape: tuple[int, ...],
    contract: tuple[tuple[int, ...], tuple[int, ...]],
    batch: tuple[tuple[int, ...], tuple[int, ...]],
) -> tuple[tuple[int, ...], tuple[int, int, int], tuple[int, ...], tuple[int, int, int]]:
    """How to compute a dot_general as one batched matmul ``[B,M,K] @ [B,K,N]``.

    Returns (lhs permutation, lhs 3-d shape, rhs permutation, rhs 3-d shape): transpose
    each operand to batch, free, contracted order (lhs) or batch, contracted, free (rhs)
    and reshape. The matmul's ``[B,M,N]`` result reshapes to the dot_general's shape.
    """
    (lc, rc), (lb, rb) = contract, batch
    lfree = tuple(i for i in range(len(lhs_shape)) if i not in lc + lb)
    rfree = tuple(i for i in range(len(rhs_shape)) if i not in rc + rb)
    bsize = math.prod(lhs_shape[a] for a in lb)
    k = math.prod(lhs_shape[a] for a in lc)
    m = math.prod(lhs_shape[a] for a in lfree)
    n = math.prod(rhs_shape[a] for a in rfree)
    return lb + lfree + lc, (bsize, m, k), rb + rc + rfree, (bsize, k, n)


def _dot_general_impl(
    lhs: np.ndarray,
    rhs: np.ndarray,
    contract: tuple[tuple[int, ...], tuple[int, ...]],
    batch: tuple[tuple[int, ...], tuple[int, ...]],
) -> tuple[np.ndarray]:
    (out,) = _dot_general_rule(
        (TensorType(DType.f64, lhs.shape), TensorType(DType.f64, rhs.shape)), contract, batch
    )
    lperm, lshape, rperm, rshape = dot_general_as_matmul(lhs.shape, rhs.shape, contract, batch)
    a = np.transpose(lhs, lperm).reshape(lshape)
    b = np.transpose(rhs, rperm).reshape(rshape)
    return (np.matmul(a, b).reshape(out.shape),)


dot_general = _register(
    Primitive(
        name="dot_general",
        kind=OpKind.CONTRACTION,
        arity=2,
        attrs={"contract": AttrSpec(AttrKind.INTS_PAIR), "batch": AttrSpec(AttrKind.INTS_PAIR)},
        abstract_eval=_dot_general_rule,
        impl=_dot_general_impl,
        dtypes=NUMERIC,
    )
)

# ---------------------------------------------------------------------------------------
# Indexing: gather along one axis (take_along_axis) and its transpose, scatter_add.
# Negative indices count from the end; indices out of range are clamped (like JAX), so
# that compiled kernels never read out of bounds.


def _normalize_indices(idx: np.ndarray, n: int) -> np.ndarray:
    return np.clip(np.where(idx < 0, idx + n, idx), 0, _builtins.max(n - 1, 0))


def _gather_rule(in_types: tuple[TensorType, ...], axis: int) -> tuple[TensorType, ...]:
    x, idx = in_types
    _check_axes("gather", (axis,), x.ndim, "axis")
    if not idx.dtype.is_int:
        raise IRTypeError(f"gather: indices must be integers, got {idx.dtype}")
    if idx.ndim != x.ndim or any(
        a != b for i, (a, b) in enumerate(zip(x.shape, idx.shape, strict=True)) if i != axis
    ):
        raise IRTypeError(f"gather: indices shape {idx.shape} must match operand {x.shape} off axis {axis}")
    if x.shape[axis] == 0 and idx.shape[axis] > 0:
        raise IRTypeError(f"gather: cannot index the empty axis {axis} of {x.shape}")
    return (x.with_shape(idx.shape),)


gather = _register(
    Primitive(
        name="gather",
        kind=OpKind.INDEXING,
        arity=2,
        attrs={"axis": AttrSpec(AttrKind.INT)},
        abstract_eval=_gather_rule,
        impl=lambda x, idx, axis: (
            np.take_along_axis(x, _normalize_indices(idx, x.shape[axis]), axis=axis),
        ),
        dtypes=NUMERIC | {DType.bool},
    )
)


def _scatter_add_rule(in_types: tuple[TensorType, ...], axis: int, size: int) -> tuple[TensorType, ...]:
    upd, idx = in_types
    _check_axes("scatter_add", (axis,), upd.ndim, "axis")
    if not idx.dtype.is_int:
        raise IRTypeError(f"scatter_add: indices must be integers, got {idx.dtype}")
    if idx.shape != upd.shape:
        raise IRTypeError(f"scatter_add: indices shape {idx.shape} and updates {upd.shape} differ")
    if size < 0 or (size == 0 and upd.shape[axis] > 0):
        raise IRTypeError(f"scatter_add: size={size} cannot hold the updates along axis {axis}")
    return (upd.with_shape(upd.shape[:axis] + (size,) + upd.shape[axis + 1 :]),)


def _scatter_add_impl(upd: np.ndarray, idx: np.ndarray, axis: int, size: int) -> tuple[np.ndarray]:
    out = np.zeros(upd.shape[:axis] + (size,) + upd.shape[axis + 1 :], upd.dtype)
    where = list(np.indices(idx.shape, sparse=True))
    where[axis] = _normalize_indices(idx, size)
    np.add.at(out, tuple(where), upd)
    return (out,)


scatter_add = _register(
    Primitive(
        name="scatter_add",
        kind=OpKind.KERNEL,
        arity=2,
        attrs={"axis": AttrSpec(AttrKind.INT), "size": AttrSpec(AttrKind.INT)},
        abstract_eval=_scatter_add_rule,
        impl=_scatter_add_impl,
        dtypes=NUMERIC,
    )
)



def _cumsum_rule(in_types: tuple[TensorType, ...], axis: int, reverse: bool) -> tuple[TensorType, ...]:
    (x,) = in_types
    _check_axes("cumsum", (axis,), x.ndim, "axis")
    return (x,)


def _scan_primitive(name: str, np_fn: Callable[..., np.ndarray]) -> Primitive:
    """An inclusive scan along ``axis``, in the operand's dtype, from the last element when
    ``reverse`` (JAX's ``lax.cumsum``): float sums and products accumulate in order, as
    NumPy's ``add.accumulate``/``multiply.accumulate``; one kernel of its own each."""

    def impl(x: np.ndarray, axis: int, reverse: bool) -> tuple[np.ndarray]:
        if reverse:
            return (np.flip(np_fn(np.flip(x, axis), axis=axis, dtype=x.dtype), axis),)
        return (np_fn(x, axis=axis, dtype=x.dtype),)

    return _register(
        Primitive(
            name=name,
            kind=OpKind.KERNEL,
            arity=1,
            attrs={"axis": AttrSpec(AttrKind.INT), "reverse": AttrSpec(AttrKind.BOOL)},
            abstract_eval=_cumsum_rule,
            impl=impl,
            dtypes=NUMERIC,
        )
    )


cumsum = _scan_primitive("cumsum", np.cumsum)
cumprod = _scan_primitive("cumprod", np.cumprod)

# ---------------------------------------------------------------------------------------
# Convolution and pooling (windowed ops), each lowered by its own kernel
# (``fusejit.codegen.conv``, ``fusejit.codegen.pool``).
#
# ``conv`` is JAX's ``conv_general_dilated`` in NC<spatial> / OI<spatial> layout (PyTorch's
# NCHW/OIHW): lhs ``[N, C, *S]``, rhs ``[O, C // groups, *K]``, result ``[N, O, *P]``. Along
# spatial axis ``i`` the lhs is dilated (``lhs_dilation[i] - 1`` zeros between elements),
# padded with ``lo[i]``/``hi[i]`` zeros (negative: cropped), and each output position ``p``
# reads positions ``p * strides[i] + k * rhs_dilation[i]`` of that, ``k < K[i]``. It is a
# cross-correlation (no kernel flip). Output channel ``o`` reads input channels of group
# ``o // (O // groups)``.
#
# The pools are reduce-window ops over *every* axis (window 1 on the batch and channel
# axes for NCHW pooling): ``max_pool`` pads with -inf, ``avg_pool`` with zeros that count
# in the average (PyTorch's default). Their derivatives are ops of their own: the
# max-pool cotangent goes to one position per window, the *first* largest element in
# row-major window order (``max_pool_scatter``), the max-pool tangent is read from that
# position (``max_pool_gather``: the two are each other's transposes), and the average's
# transpose spreads each window's cotangent over it (``avg_pool_scatter``). A window
# entirely in the padding has no position: it adds nothing, and gathers 0.


def dilated_size(n: int, dilation: int) -> int:
    """Elements of an axis of ``n`` elements with ``dilation - 1`` zeros between them."""
    return 0 if n == 0 else 1 + dilation * (n - 1)


def window_count(n: int, window: int, stride: int) -> int:
    """Positions of a window of ``window`` elements sliding by ``stride`` over ``n``."""
    return 0 if n < window else (n - window) // stride + 1


def _check_spatial(prim: str, nsp: int, **attrs: tuple[int, ...]) -> None:
    for key, value in attrs.items():
        if len(value) != nsp:
            raise IRTypeError(f"{prim}: {key}={value} needs one entry per spatial axis ({nsp})")
        if key in ("strides", "lhs_dilation", "rhs_dilation", "window") and any(v < 1 for v in value):
            raise IRTypeError(f"{prim}: {key}={value} must be positive")


def conv_output_shape(lhs: tuple[int, ...], rhs: tuple[int, ...], strides: tuple[int, ...],
                      lo: tuple[int, ...], hi: tuple[int, ...], lhs_dilation: tuple[int, ...],
                      rhs_dilation: tuple[int, ...]) -> tuple[int, ...]:
    spatial = []
    for i, n in enumerate(lhs[2:]):
        padded = dilated_size(n, lhs_dilation[i]) + lo[i] + hi[i]
        spatial.append(window_count(padded, dilated_size(rhs[2 + i], rhs_dilation[i]), strides[i]))
    return (lhs[0], rhs[0], *spatial)


def _conv_rule(in_types: tuple[TensorType, ...], strides: tuple[int, ...], lo: tuple[int, ...],
               hi: tuple[int, ...], lhs_dilation: tuple[int, ...], rhs_dilation: tuple[int, ...],
               groups: int) -> tuple[TensorType, ...]:
    lhs, rhs = in_types
    if lhs.dtype != rhs.dtype:
        raise IRTypeError(f"conv: operand dtypes {lhs.dtype} and {rhs.dtype} differ")
    if lhs.ndim < 3 or rhs.ndim != lhs.ndim:
        raise IRTypeError(f"conv: operands {lhs.shape} and {rhs.shape} must be [N, C, *spatial] and "
                          "[O, C/groups, *window] with at least one spatial axis")
    nsp = lhs.ndim - 2
    _check_spatial("conv", nsp, strides=strides, lo=lo, hi=hi, lhs_dilation=lhs_dilation,
                   rhs_dilation=rhs_dilation)
    if groups < 1 or lhs.shape[1] != rhs.shape[1] * groups or rhs.shape[0] % groups:
        raise IRTypeError(f"conv: {groups} groups do not divide {lhs.shape[1]} input channels into "
                          f"groups of {rhs.shape[1]} and {rhs.shape[0]} output channels")
    if any(k < 1 for k in rhs.shape[2:]):
        raise IRTypeError(f"conv: window {rhs.shape[2:]} must not be empty")
    return (lhs.with_shape(conv_output_shape(lhs.shape, rhs.shape, strides, lo, hi, lhs_dilation,
                                             rhs_dilation)),)


def _window_view(x: np.ndarray, lo: tuple[int, ...], hi: tuple[int, ...], fill: Any) -> np.ndarray:
    """``x`` padded with ``fill`` (negative amounts crop)."""
    if x.ndim == 0:
        return x
    x = np.pad(x, [(_builtins.max(a, 0), _builtins.max(b, 0)) for a, b in zip(lo, hi, strict=True)],
               constant_values=fill)
    return x[tuple(_builtins.slice(-_builtins.min(a, 0), n + _builtins.min(b, 0))
                   for a, b, n in zip(lo, hi, x.shape, strict=True))]


def _conv_impl(lhs: np.ndarray, rhs: np.ndarray, strides: tuple[int, ...], lo: tuple[int, ...],
               hi: tuple[int, ...], lhs_dilation: tuple[int, ...], rhs_dilation: tuple[int, ...],
               groups: int) -> tuple[np.ndarray]:
    out_shape = conv_output_shape(lhs.shape, rhs.shape, strides, lo, hi, lhs_dilation, rhs_dilation)
    n, c = lhs.shape[:2]
    o, cg = rhs.shape[:2]
    dilated = np.zeros((n, c, *(dilated_size(s, d) for s, d in zip(lhs.shape[2:], lhs_dilation, strict=True))),
                       lhs.dtype)
    dilated[(Ellipsis, *(_builtins.slice(None, None, d) for d in lhs_dilation))] = lhs
    x = _window_view(dilated, (0, 0, *lo), (0, 0, *hi), 0)
    x = x.reshape(n, groups, cg, *x.shape[2:])
    w = rhs.reshape(groups, o // groups, cg, *rhs.shape[2:])
    out = np.zeros((n, groups, o // groups, *out_shape[2:]), lhs.dtype)
    for k in np.ndindex(*rhs.shape[2:]):
        taps = tuple(_builtins.slice(k[i] * rhs_dilation[i], k[i] * rhs_dilation[i] + (p - 1) * strides[i] + 1,
                                     strides[i]) if p else _builtins.slice(0, 0)
                     for i, p in enumerate(out_shape[2:]))
        patch = x[(Ellipsis, *taps)]  # [n, groups, cg, *P]
        out += np.einsum("ngc...,goc->ngo...", patch, w[(Ellipsis, *k)]).astype(lhs.dtype, copy=False)
    return (out.reshape(out_shape),)


conv = _register(
    Primitive(
        name="conv",
        kind=OpKind.KERNEL,
        arity=2,
        attrs={
            "strides": AttrSpec(AttrKind.INTS),
            "lo": AttrSpec(AttrKind.INTS),
            "hi": AttrSpec(AttrKind.INTS),
            "lhs_dilation": AttrSpec(AttrKind.INTS),
            "rhs_dilation": AttrSpec(AttrKind.INTS),
            "groups": AttrSpec(AttrKind.INT),
        },
        abstract_eval=_conv_rule,
        impl=_conv_impl,
        dtypes=FLOATS,
    )
)


def pool_output_shape(shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
                      lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(window_count(n + a + b, k, s) for n, k, s, a, b in zip(shape, window, strides, lo, hi, strict=True))


def _check_pool(prim: str, shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...],
                lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[int, ...]:
    _check_spatial(prim, len(shape), window=window, strides=strides, lo=lo, hi=hi)
    return pool_output_shape(shape, window, strides, lo, hi)


def _pool_rule(in_types: tuple[TensorType, ...], window: tuple[int, ...], strides: tuple[int, ...],
               lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[TensorType, ...]:
    (x,) = in_types
    return (x.with_shape(_check_pool("pool", x.shape, window, strides, lo, hi)),)


def _windows_of(x: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...], lo: tuple[int, ...],
                hi: tuple[int, ...], fill: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """``[*out, *window]``: every window of the padded ``x`` (a copy), and the out shape."""
    out = pool_output_shape(x.shape, window, strides, lo, hi)
    padded = _window_view(x, lo, hi, fill)
    views = np.empty(out + window, x.dtype)
    for k in np.ndindex(*window):
        views[(Ellipsis, *k)] = padded[tuple(_builtins.slice(k[i], k[i] + (p - 1) * strides[i] + 1, strides[i])
                                             if p else _builtins.slice(0, 0) for i, p in enumerate(out))]
    return views, out


def _max_pool_impl(x: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...], lo: tuple[int, ...],
                   hi: tuple[int, ...]) -> tuple[np.ndarray]:
    views, out = _windows_of(x, window, strides, lo, hi, -np.inf)
    return (np.max(views.reshape(out + (math.prod(window),)), axis=-1, initial=-np.inf),)


def _avg_pool_impl(x: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...], lo: tuple[int, ...],
                   hi: tuple[int, ...]) -> tuple[np.ndarray]:
    views, out = _windows_of(x, window, strides, lo, hi, 0)
    total = np.sum(views.reshape(out + (math.prod(window),)), axis=-1, dtype=x.dtype)
    return (total / x.dtype.type(math.prod(window)),)


_POOL_ATTRS = {k: AttrSpec(AttrKind.INTS) for k in ("window", "strides", "lo", "hi")}

max_pool = _register(Primitive(name="max_pool", kind=OpKind.KERNEL, arity=1, attrs=_POOL_ATTRS,
                               abstract_eval=_pool_rule, impl=_max_pool_impl, dtypes=FLOATS))
avg_pool = _register(Primitive(name="avg_pool", kind=OpKind.KERNEL, arity=1, attrs=_POOL_ATTRS,
                               abstract_eval=_pool_rule, impl=_avg_pool_impl, dtypes=FLOATS))


def max_pool_positions(x: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...], lo: tuple[int, ...],
                       hi: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """For every window: the flat index into ``x`` of its first largest element (a NaN
    counts as largest), and whether it has one (False: the window is all padding)."""
    flat = np.arange(x.size, dtype=np.int64).reshape(x.shape)
    views, out = _windows_of(x, window, strides, lo, hi, -np.inf)
    where, _ = _windows_of(flat, window, strides, lo, hi, -1)
    views, where = views.reshape(out + (math.prod(window),)), where.reshape(out + (math.prod(window),))
    real = where >= 0
    nan = np.isnan(views) & real
    top = np.max(np.where(real, views, -np.inf), axis=-1, initial=-np.inf, keepdims=True)
    chosen = np.where(nan.any(axis=-1, keepdims=True), nan, real & (views == top))
    first = np.argmax(chosen, axis=-1)[..., None] if chosen.shape[-1] else np.zeros(out + (1,), np.int64)
    has = np.take_along_axis(chosen, first, axis=-1)[..., 0] if chosen.shape[-1] else np.zeros(out, bool)
    pos = np.take_along_axis(where, first, axis=-1)[..., 0] if chosen.shape[-1] else np.zeros(out, np.int64)
    return np.where(has, pos, 0), has


def _max_pool_pair_rule(prim: str) -> TypeRule:
    def rule(in_types: tuple[TensorType, ...], window: tuple[int, ...], strides: tuple[int, ...],
             lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[TensorType, ...]:
        x, t = in_types
        if t.dtype != x.dtype:
            raise IRTypeError(f"{prim}: operand dtypes {x.dtype} and {t.dtype} differ")
        out = _check_pool(prim, x.shape, window, strides, lo, hi)
        expected = x.shape if prim == "max_pool_gather" else out
        if t.shape != expected:
            raise IRTypeError(f"{prim}: second operand {t.shape} must have shape {expected}")
        return (x.with_shape(out if prim == "max_pool_gather" else x.shape),)

    return rule


def _max_pool_gather_impl(x: np.ndarray, t: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...],
                          lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[np.ndarray]:
    pos, valid = max_pool_positions(x, window, strides, lo, hi)
    picked = t.reshape(-1)[np.where(valid, pos, 0)] if t.size else np.zeros(pos.shape, t.dtype)
    return (np.where(valid, picked, t.dtype.type(0)).astype(t.dtype),)


def _max_pool_scatter_impl(x: np.ndarray, g: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...],
                           lo: tuple[int, ...], hi: tuple[int, ...]) -> tuple[np.ndarray]:
    pos, valid = max_pool_positions(x, window, strides, lo, hi)
    out = np.zeros(x.size, x.dtype)
    np.add.at(out, pos[valid], g[valid])
    return (out.reshape(x.shape),)


# The tangent at each window's chosen position (``[*out]``), and the cotangent of a
# max_pool added at those positions (``x``'s shape).
max_pool_gather = _register(Primitive(name="max_pool_gather", kind=OpKind.KERNEL, arity=2, attrs=_POOL_ATTRS,
                                      abstract_eval=_max_pool_pair_rule("max_pool_gather"),
                                      impl=_max_pool_gather_impl, dtypes=FLOATS))
max_pool_scatter = _register(Primitive(name="max_pool_scatter", kind=OpKind.KERNEL, arity=2, attrs=_POOL_ATTRS,
                                       abstract_eval=_max_pool_pair_rule("max_pool_scatter"),
                                       impl=_max_pool_scatter_impl, dtypes=FLOATS))


def _avg_pool_scatter_rule(in_types: tuple[TensorType, ...], window: tuple[int, ...], strides: tuple[int, ...],
                           lo: tuple[int, ...], hi: tuple[int, ...], shape: tuple[int, ...]) -> tuple[TensorType, ...]:
    (g,) = in_types
    _check_shape("avg_pool_scatter", shape)
    out = _check_pool("avg_pool_scatter", shape, window, strides, lo, hi)
    if g.shape != out:
        raise IRTypeError(f"avg_pool_scatter: cotangent {g.shape} is not the pooled shape {out} of {shape}")
    return (g.with_shape(shape),)


def _avg_pool_scatter_impl(g: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...],
                           lo: tuple[int, ...], hi: tuple[int, ...], shape: tuple[int, ...]) -> tuple[np.ndarray]:
    flat = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)
    where, out = _windows_of(flat, window, strides, lo, hi, -1)
    share = np.broadcast_to((g / g.dtype.type(math.prod(window)))[(Ellipsis,) + (None,) * len(window)], where.shape)
    result = np.zeros(math.prod(shape), g.dtype)
    np.add.at(result, where[where >= 0], share[where >= 0])
    return (result.reshape(shape),)


# The transpose of avg_pool: each window's cotangent, divided by the window's size, added
# to every element of ``shape`` in the window.
avg_pool_scatter = _register(
    Primitive(name="avg_pool_scatter", kind=OpKind.KERNEL, arity=1,
              attrs={**_POOL_ATTRS, "shape": AttrSpec(AttrKind.INTS)},
              abstract_eval=_avg_pool_scatter_rule, impl=_avg_pool_scatter_impl, dtypes=FLOATS)
)

# ---------------------------------------------------------------------------------------
# Sources


def _iota_rule(
    in_types: tuple[TensorType, ...], shape: tuple[int, ...], dimension: int, dtype: DType
) -> tuple[TensorType, ...]:
    _check_shape("iota", shape)
    _check_axes("iota", (dimension,), len(shape), "dimension")
    if dtype is DType.bool:
        raise IRTypeError("iota: dtype must be numeric")
    return (TensorType(dtype, shape),)


def _iota_impl(shape: tuple[int, ...], dimension: int, dtype: DType) -> tuple[np.ndarray]:
    ramp = np.arange(shape[dimension], dtype=dtype.np)
    view = [1] * len(shape)
    view[dimension] = shape[dimension]
    return (np.broadcast_to(ramp.reshape(view), shape),)


iota = _register(
    Primitive(
        name="iota",
        kind=OpKind.SOURCE,
        arity=0,
        attrs={
            "dimension": AttrSpec(AttrKind.INT),
            "shape": AttrSpec(AttrKind.INTS, implied_by_result=True),
            "dtype": AttrSpec(AttrKind.DTYPE, implied_by_result=True),
        },
        abstract_eval=_iota_rule,
        impl=_iota_impl,
    )
)


def _constant_rule(
    in_types: tuple[TensorType, ...], value: Any, shape: tuple[int, ...], dtype: DType
) -> tuple[TensorType, ...]:
    _check_shape("constant", shape)
    values = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple) and len(value) != math.prod(shape):
        raise IRTypeError(f"constant: {len(value)} values do not fill shape {shape}")
    for v in values:
        if not _represents(v, dtype):
            raise IRTypeError(f"constant: {v!r} is not a {dtype} value")
    return (TensorType(dtype, shape),)


def _represents(v: Any, dtype: DType) -> bool:
    """Whether Python scalar ``v`` is exactly a value of ``dtype`` (bools for bool, ints
    in range for ints, floats that survive rounding to the dtype for floats)."""
    if dtype.is_bool:
        return type(v) is bool
    if dtype.is_int:
        info = np.iinfo(dtype.np)
        return type(v) is int and info.min <= v <= info.max
    if type(v) is not float:
        return False
    return math.isnan(v) or float(dtype.np.type(v)) == v


def _constant_impl(value: Any, shape: tuple[int, ...], dtype: DType) -> tuple[np.ndarray]:
    if isinstance(value, tuple):
        return (np.array(value, dtype=dtype.np).reshape(shape),)
    return (np.full(shape, value, dtype=dtype.np),)


constant = _register(
    Primitive(
        name="constant",
        kind=OpKind.SOURCE,
        arity=0,
        attrs={
            "value": AttrSpec(AttrKind.SCALARS),
            "shape": AttrSpec(AttrKind.INTS, implied_by_result=True),
            "dtype": AttrSpec(AttrKind.DTYPE, implied_by_result=True),
        },
        abstract_eval=_constant_rule,
        impl=_constant_impl,
    )
)


def constant_value(value: Any, dtype: DType) -> Any:
    """A Python scalar normalized to ``dtype`` as an attribute value (exactly
    representable: a float32 constant holds the float32-rounded number)."""
    scalar = dtype.np.type(value).item()
    return bool(scalar) if dtype.is_bool else scalar


# ---------------------------------------------------------------------------------------
# Random bits: the Threefry-2x32 block cipher (20 rounds; Salmon et al., "Parallel random
# numbers: as easy as 1, 2, 3", SC 2011; JAX's generator). Elementwise: each element of
# the output enciphers its own counter ``(x0, x1)`` under its own key ``(k0, k1)``, so a
# fused kernel computes random bits from the key and the element's index and no array
# of bits need exist. Words are 32-bit unsigned numbers held in int64 (operands are
# taken modulo 2**32); ``word`` picks the first (0) or second (1) output word.

THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
THREEFRY_PARITY = 0x1BD11BDA


def threefry2x32_words(k0: Any, k1: Any, x0: Any, x1: Any, *, add: Callable[[Any, Any], Any],
                       rotl: Callable[[Any, int], Any], xor: Callable[[Any, Any], Any],
                       const: Callable[[int], Any]) -> tuple[Any, Any]:
    """The cipher, written once over abstract 32-bit word operations (NumPy ``uint32``
    arrays here, kernel expressions in the codegen rule): the two output words."""
    ks = (k0, k1, xor(xor(k0, k1), const(THREEFRY_PARITY)))
    x0, x1 = add(x0, ks[0]), add(x1, ks[1])
    for i in range(5):
        for r in THREEFRY_ROTATIONS[i % 2]:
            x0 = add(x0, x1)
            x1 = xor(rotl(x1, r), x0)
        x0 = add(x0, ks[(i + 1) % 3])
        x1 = add(x1, add(ks[(i + 2) % 3], const(i + 1)))
    return x0, x1


def _threefry_rule(in_types: tuple[TensorType, ...], word: int) -> tuple[TensorType, ...]:
    if word not in (0, 1):
        raise IRTypeError(f"threefry2x32: word={word} must be 0 or 1")
    return (_same_types("threefry2x32", in_types),)


def _threefry_impl(k0: np.ndarray, k1: np.ndarray, x0: np.ndarray, x1: np.ndarray, word: int) -> tuple[np.ndarray]:
    u32 = np.uint32

    def rotl(x: np.ndarray, r: int) -> np.ndarray:
        return (x << u32(r)) | (x >> u32(32 - r))

    with np.errstate(over="ignore"):  # additions wrap around modulo 2**32
        words = threefry2x32_words(
            *(np.asarray(a).astype(u32) for a in (k0, k1, x0, x1)),
            add=np.add, rotl=rotl, xor=np.bitwise_xor, const=u32,
        )
    return (np.asarray(words[word]).astype(np.int64),)


threefry2x32 = _register(
    Primitive(
        name="threefry2x32",
        kind=OpKind.ELEMENTWISE,
        arity=4,  # key words k0, k1, counter words x0, x1
        attrs={"word": AttrSpec(AttrKind.INT)},
        abstract_eval=_threefry_rule,
        impl=_threefry_impl,
        dtypes=frozenset({DType.i64}),
    )
)


# ---------------------------------------------------------------------------------------
# A call with a user-defined derivative (fj.custom_vjp). ``fun`` computes the outputs;
# ``fwd`` computes the outputs followed by residuals; ``bwd`` maps residuals followed by
# output cotangents to one cotangent per input. The simplifier inlines ``fun`` once
# differentiation is done, so backends never see this op.


def _custom_vjp_rule(in_types: tuple[TensorType, ...], fun: Any, fwd: Any, bwd: Any) -> tuple[TensorType, ...]:
    if tuple(p.type for p in fun.params) != in_types or tuple(p.type for p in fwd.params) != in_types:
        raise IRTypeError("custom_vjp_call: operand types differ from fun's or fwd's parameters")
    residuals = tuple(r.type for r in fwd.results[len(fun.results) :])
    if tuple(p.type for p in bwd.params) != residuals + tuple(r.type for r in fun.results):
        raise IRTypeError("custom_vjp_call: bwd must take fwd's residuals, then one cotangent per output")
    if tuple(r.type for r in fwd.results[: len(fun.results)]) != tuple(r.type for r in fun.results):
        raise IRTypeError("custom_vjp_call: fwd must return the function's outputs first")
    if tuple(r.type for r in bwd.results) != in_types:
        raise IRTypeError("custom_vjp_call: bwd must return one cotangent per operand")
    return tuple(r.type for r in fun.results)


def _custom_vjp_impl(*xs: np.ndarray, fun: Any, fwd: Any, bwd: Any) -> tuple[np.ndarray, ...]:
    from fusejit.ir.interpreter import run_function

    return run_function(fun, *xs)


custom_vjp_call = _register(
    Primitive(
        name="custom_vjp_call",
        kind=OpKind.CALL,
        arity=None,
        attrs={n: AttrSpec(AttrKind.FUNCTION) for n in ("fun", "fwd", "bwd")},
        abstract_eval=_custom_vjp_rule,
        impl=_custom_vjp_impl,
    )
)


# ---------------------------------------------------------------------------------------
# Named sets: the vocabulary the cost models of fusion and code generation share.

# Cheap enough to recompute in every kernel that reads them: index arithmetic and trivial
# arithmetic. Everything else (transcendentals, division, reductions, matmul) is computed
# once and, if several kernels need it, stored.
# Kernels of their own that run the elementwise consumers of their result (bias,
# activation) as an epilogue, like a matmul's.
TAKES_EPILOGUE = frozenset({conv})
RECOMPUTABLE = frozenset({constant, iota, broadcast_in_dim, reshape, transpose, slice, convert, neg})
# Calls into the math library: tens of instructions per element.
TRANSCENDENTAL = frozenset({exp, log, log1p, expm1, tanh, logistic, sin, cos, pow, atan2})


def reduction_axes(op: Any) -> tuple[int, ...]:
    """The axes a reduction op reduces, as its attributes give them: ``axes``, or the one
    ``axis`` of ``argmax``/``argmin``."""
    return tuple(op.attrs["axes"]) if "axes" in op.attrs else (op.attrs["axis"],)


def keeps_linear_order(op: Any) -> bool:
    """Whether a layout op (reshape, transpose, broadcast_in_dim) leaves every element at
    its linear index: it only inserts, removes or moves axes of length 1."""
    x = op.inputs[0]
    if op.prim is transpose:
        moved = [p for p in op.attrs["perm"] if x.shape[p] != 1]
        return moved == sorted(moved)
    return [n for n in x.shape if n != 1] == [n for n in op.output.shape if n != 1]


# Rematerialization (fj.checkpoint): a call recomputed in the backward pass, inlined before fusion.
from fusejit.ir.checkpoint import checkpoint  # noqa: E402, F401

# Collectives over the processes of a job (psum, all_gather, ...), run on the host.
from fusejit.ir.collectives import (  # noqa: E402, F401
    COLLECTIVES,
    all_gather,
    axis_index,
    pbroadcast,
    pmax,
    psum,
    psum_scatter,
)

# Structured control flow (scan, while_loop, cond) is declared in its own module, which
# registers it in PRIMITIVES; imported last because it builds on the declarations above.
from fusejit.ir.control_flow import CONTROL_FLOW, cond, scan, while_loop  # noqa: E402, F401

# Run-time callbacks into Python (fj.debug.print/callback), run on the host, never dead code.
from fusejit.ir.host_callbacks import EFFECTFUL, debug_callback  # noqa: E402, F401

# Linear algebra (cholesky, solves, slogdet, eigh, svd, qr) through LAPACK, run on the host.
from fusejit.ir.linalg import LINALG, cholesky, eigh, qr, slogdet, solve, svd, triangular_solve  # noqa: E402, F401
