"""Tracing: values that record the ops applied to them into IR.

``trace_function`` calls a Python function on ``TracedArray``s; every operation on them
goes through ``bind``, which appends an op to the innermost active ``Trace`` (stamped
with the user's source line). With no trace active, ``bind`` runs the primitive's NumPy
rule at once: that is eager mode, and it shares every typing rule with tracing.

Traces nest (``grad`` inside ``jit``). A value of an outer trace used inside an inner
one is *captured*: it becomes an extra parameter of the inner function, and the caller
passes the outer value for it (closure conversion).
"""

from __future__ import annotations

import operator
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusejit.config import LIVE as _CONFIG
from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, SourceLoc, Value
from fusejit.ir.dtypes import DType, from_numpy, promote, promote_weak, weak_scalar_dtype
from fusejit.ir.interpreter import run_function
from fusejit.ir.nans import nonfinite_error_at, nonfinite_kind
from fusejit.ir.primitives import IRTypeError, OpKind, Primitive
from fusejit.ir.printer import short_loc
from fusejit.ir.types import TensorType
from fusejit.runtime.devices import DeviceArray
from fusejit.tracer.scopes import current_scope


class ConcretizationError(TypeError):
    """Python needed a concrete value (``if``, ``bool()``, ``int()``) of a traced one."""


class EscapedTracerError(RuntimeError):
    """A traced value was used after the trace that created it had finished."""


# ---------------------------------------------------------------------------------------
# Source locations: the first frame outside fusejit (and NumPy's dispatch machinery).

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUMPY_DIR = os.path.dirname(os.path.abspath(np.__file__))
_internal_files: dict[str, bool] = {}


def _is_internal(filename: str) -> bool:
    internal = _internal_files.get(filename)
    if internal is None:
        path = os.path.abspath(filename)
        internal = path.startswith((_PACKAGE_DIR + os.sep, _NUMPY_DIR + os.sep)) or filename.startswith("<frozen")
        _internal_files[filename] = internal
    return internal


def user_source_loc() -> SourceLoc | None:
    """The file and line of the innermost caller outside fusejit, with the open
    ``fj.named_scope`` path."""
    frame = sys._getframe(1)
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return None
    return SourceLoc(frame.f_code.co_filename, frame.f_lineno, current_scope())


# ---------------------------------------------------------------------------------------
# Traces


class Trace:
    """The function being built by one active trace."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.builder = Builder()
        self.params: list[Value] = []
        self.captured: dict[int, tuple[TracedArray, Value]] = {}
        self.active = True
        # id of a written root array -> the line of its first write (fusejit.tracer.inplace)
        self.first_writes: dict[int, SourceLoc | None] = {}
        # The token of the last op with an effect (a run-time callback, P.EFFECTFUL): the
        # next one takes it as an operand, which keeps them in program order.
        self.effect_token: Value | None = None

    def new_param(self, type_: TensorType, name: str | None, weak: bool = False) -> TracedArray:
        v = Value(type_, name)
        self.params.append(v)
        return TracedArray(v, self, weak)

    def capture(self, outer: TracedArray) -> Value:
        """The parameter standing for a value of an enclosing trace."""
        entry = self.captured.get(id(outer))
        if entry is None:
            entry = (outer, Value(outer.value.type, outer.value.name))
            self.captured[id(outer)] = entry
        return entry[1]


class _TraceStack(threading.local):
    """The active traces of the calling thread, innermost last (``traces``): threads
    tracing at the same time (racing a jitted function's first call) each record into
    their own. Read as ``_TRACES.traces``: a plain attribute, on every ``bind`` and jitted
    call."""

    def __init__(self) -> None:
        self.traces: list[Trace] = []


_TRACES = _TraceStack()


def current_trace() -> Trace | None:
    traces = _TRACES.traces
    return traces[-1] if traces else None


def is_tracing() -> bool:
    return bool(_TRACES.traces)


def _to_value(x: Any, trace: Trace, dtype: DType | None = None) -> Value:
    """``x`` as a value of ``trace``: its own tracer, a captured outer one, or a constant."""
    if isinstance(x, TracedArray):
        if x.trace is trace:
            v = x.value
        elif x.trace.active:
            v = trace.capture(x)
        else:
            raise escaped_tracer_error(x)
        return v if dtype is None else trace.builder.convert(v, dtype)
    check_operand(x)
    arr = np.asarray(x)
    dt = dtype or from_numpy(arr.dtype)
    arr = arr.astype(dt.np)
    if arr.ndim == 0:
        return trace.builder.constant(arr.item(), dt)
    return trace.builder.op(
        P.constant, value=tuple(arr.ravel().tolist()), shape=arr.shape, dtype=dt
    )


def escaped_tracer_error(x: TracedArray, used_as: str | None = None) -> EscapedTracerError:
    """The error for using ``x`` after its trace finished (``used_as``: how it was used)."""
    loc = user_source_loc()
    return EscapedTracerError(
        f"a traced value {x.value.type} of the finished trace of {x.trace.name!r} was used "
        f"later{f' as {used_as}' if used_as else ''}{f' (at {loc})' if loc else ''}; return it "
        "from the traced function instead of storing it (in a global, a list or an attribute)"
    )


def bind(prim: Primitive, *args: Any, **attrs: Any) -> Any:
    """Applies ``prim``: records an op in the innermost trace, or runs it eagerly.

    Inputs are ``TracedArray``s, NumPy arrays or scalars and must already have the types
    the primitive requires (``fusejit.numpy`` does promotion and broadcasting). Returns
    one output, or a tuple for multi-output primitives.
    """
    trace = current_trace()
    loc = user_source_loc()
    if trace is None:
        for a in args:
            if isinstance(a, TracedArray):
                raise escaped_tracer_error(a)
        arrays = [np.asarray(a) for a in args]
        try:
            types = prim.infer(tuple(TensorType(from_numpy(a.dtype), a.shape) for a in arrays), attrs)
        except IRTypeError as e:
            raise IRTypeError(f"{e}{f' (at {loc})' if loc else ''}") from None
        with np.errstate(all="ignore"):
            outs = prim.impl(*arrays, **attrs)
        results = tuple(np.asarray(o, dtype=t.dtype.np) for o, t in zip(outs, types, strict=True))
        if _CONFIG["debug_nans"] and (kind := nonfinite_kind(results)) is not None:
            raise nonfinite_error_at(prim.name, loc, kind, nonfinite_kind(arrays) is None, "eager")
    else:
        with trace.builder.at(loc):
            values = tuple(_to_value(a, trace) for a in args)
            outs = trace.builder.emit(prim, values, attrs)
        weak = bool(args) and all(getattr(a, "weak", False) for a in args)
        knowns = _known_outputs(prim, args, attrs, outs)
        results = tuple(TracedArray(v, trace, weak, k) for v, k in zip(outs, knowns, strict=True))
    return results[0] if len(results) == 1 else results


# Primitives whose outputs are computed at trace time when all their inputs are known:
# not calls (their bodies are traced on their own) and not host ops (collectives differ
# per process; linear algebra and callbacks run when the program does).
_KNOWN_KINDS = frozenset(OpKind) - {OpKind.CALL, OpKind.HOST}
# Known contents stay small: they serve Python's questions about masks, indices and counts
# (`if`, `int()`, a boolean index), not the data a program computes on.
KNOWN_MAX_SIZE = 1 << 16


def _known_outputs(prim: Primitive, args: tuple, attrs: dict, outs: tuple[Value, ...]) -> tuple:
    """The contents of ``prim``'s outputs when every input's is known (a constant, an array
    made from constants by ``fnp.zeros``...), computed by the primitive's reference rule;
    None for each output otherwise."""
    unknown = (None,) * len(outs)
    if prim.kind not in _KNOWN_KINDS or any(v.type.size > KNOWN_MAX_SIZE for v in outs):
        return unknown
    arrays = []
    for a in args:
        known = a.known if isinstance(a, TracedArray) else np.asarray(a)
        if known is None:
            return unknown
        arrays.append(known)
    with np.errstate(all="ignore"):
        results = prim.impl(*arrays, **attrs)
    return tuple(read_only(np.asarray(r, dtype=v.dtype.np)) for r, v in zip(results, outs, strict=True))


def read_only(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a``: known contents are shared between arrays and never
    written. A view, because ``a`` may be the caller's own array (a constant the traced
    function reads), which must stay writable."""
    view = a.view()
    view.flags.writeable = False
    return view


def trace_function(
    fun: Callable[..., Any],
    in_types: Sequence[TensorType],
    *,
    name: str,
    param_names: Sequence[str | None] | None = None,
    weak: Sequence[bool] | None = None,
) -> tuple[Function, Any, list[TracedArray]]:
    """Traces ``fun(*params)`` into a Function.

    Returns the function, the raw (pytree) output with leaves replaced by their result
    indices, and the outer tracers captured by the trace, in the order of the extra
    parameters appended after ``in_types``'s.
    """
    from fusejit.tracer.pytree import tree_flatten

    trace = Trace(name)
    names = list(param_names or [None] * len(in_types))
    weak = list(weak or [False] * len(in_types))
    args = [trace.new_param(t, n, w) for t, n, w in zip(in_types, names, weak, strict=True)]
    _TRACES.traces.append(trace)
    try:
        with traced_buffers():
            out = fun(*args)
        leaves, treedef = tree_flatten(out)
        results = []
        for leaf in leaves:
            if not isinstance(leaf, (TracedArray, np.ndarray, np.generic, bool, int, float)):
                raise TypeError(
                    f"{name} returned a {type(leaf).__name__}; outputs must be arrays or scalars"
                )
            results.append(_to_value(leaf, trace))
    finally:
        _TRACES.traces.pop()
        trace.active = False
    captured = [outer for outer, _ in trace.captured.values()]
    params = tuple(trace.params) + tuple(v for _, v in trace.captured.values())
    fn = trace.builder.function(name, params, tuple(results))
    out_weak = [getattr(leaf, "weak", False) for leaf in leaves]
    return fn, (treedef, out_weak), captured  # type: ignore[return-value]


def eval_function(fn: Function, *args: Any) -> tuple[Any, ...]:
    """Applies ``fn`` to ``args``: inlines its ops into the active trace (keeping their
    source lines), or runs it eagerly through the reference interpreter."""
    trace = current_trace()
    if trace is None:
        return run_function(fn, *(np.asarray(a, dtype=p.dtype.np) for a, p in zip(args, fn.params, strict=True)))
    env: dict[Value, Value] = {
        p: _to_value(a, trace, p.dtype) for p, a in zip(fn.params, args, strict=True)
    }
    for op in fn.ops:
        inputs = tuple(env[v] for v in op.inputs)
        if op.prim in P.EFFECTFUL:  # re-chained after this trace's earlier callbacks
            values = inputs[1:] if op.attrs["token"] else inputs
            outs: tuple[Value, ...] = (_emit_ordered(trace, op.prim, values, op.attrs, op.loc),)
        else:
            outs = trace.builder.emit(op.prim, inputs, dict(op.attrs), op.loc)
        env.update(zip(op.outputs, outs, strict=True))
    return tuple(TracedArray(env[r], trace) for r in fn.results)


def bind_effect(prim: Primitive, *args: Any, **attrs: Any) -> None:
    """Records an op with an effect (``P.EFFECTFUL``: its ``token`` attribute is set here)
    in the innermost trace, after the trace's previous one (its first operand is that
    op's token), so that such ops run in program order. Needs an active trace."""
    trace = current_trace()
    assert trace is not None, "bind_effect records into a trace; run the effect eagerly instead"
    with trace.builder.at(user_source_loc()):
        _emit_ordered(trace, prim, tuple(_to_value(a, trace) for a in args), attrs, None)


def _emit_ordered(trace: Trace, prim: Primitive, values: tuple[Value, ...], attrs: Any,
                  loc: SourceLoc | None) -> Value:
    if trace.effect_token is not None:
        operands, token = (trace.effect_token, *values), True
    elif values:
        operands, token = values, False
    else:  # the first effect, of no value: an op needs an operand, so a constant token
        operands, token = (trace.builder.constant(True, DType.bool),), True
    (trace.effect_token,) = trace.builder.emit(prim, operands, {**attrs, "token": token}, loc)
    return trace.effect_token


def argument_type(leaf: Any, path: str) -> tuple[TensorType, bool] | None:
    """(IR type, weak) of a function argument's leaf: a traced value's own type, a Python
    scalar's default dtype (weak), an array's dtype and shape; None for other objects."""
    if isinstance(leaf, TracedArray):
        return leaf.value.type, leaf.weak
    if isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
        return TensorType(weak_scalar_dtype(leaf), ()), True
    if isinstance(leaf, (np.ndarray, np.generic, DeviceArray)):
        try:
            return TensorType(from_numpy(leaf.dtype), tuple(leaf.shape)), False
        except TypeError as e:
            raise TypeError(f"argument {path}: {e}") from None
    return None


def sanitize_name(path: str) -> str:
    """A pytree path such as ``params['w1'][0]`` as an IR identifier: ``params_w1_0``."""
    name = re.sub(r"\W+", "_", path).strip("_")
    return name if name and not name[0].isdigit() else f"arg_{name}"


def with_weak(values: Sequence[Any], weak: Sequence[bool]) -> list[Any]:
    """``values`` with the weak types ``weak`` (a transformed function's outputs keep the
    weak type of what they stand for: a Python scalar stays weak, as in JAX)."""
    for v, w in zip(values, weak, strict=True):
        if isinstance(v, TracedArray):
            v.weak = w
    return list(values)


# ---------------------------------------------------------------------------------------
# Operand typing shared by fusejit.numpy: dtypes with NEP 50 weak scalars, broadcasting.


def check_operand(x: Any) -> None:
    """``TypeError`` for an operand that is no array and would otherwise fail later with a
    confusing message: None, or a Python list/tuple holding traced values (NumPy would try
    to convert each traced value into an array of its own)."""
    if x is None:
        what = "None, not an array"
        why = "; an argument of a jitted function that is None is an empty pytree, not a value"
    elif isinstance(x, list | tuple) and _holds_tracer(x):
        what = f"a Python {type(x).__name__} holding traced values"
        why = (": build the array with fusejit.numpy.stack inside the function; a list argument of a jitted "
               "function is a pytree of separate values, so pass np.asarray(...) of it instead")
    else:
        return
    loc = user_source_loc()
    raise TypeError(f"an operand is {what}{f' (at {loc})' if loc else ''}{why}")


def _holds_tracer(x: Any) -> bool:
    return isinstance(x, TracedArray) or (isinstance(x, list | tuple) and any(_holds_tracer(e) for e in x))


def operand_dtype(x: Any) -> tuple[DType, bool]:
    """(dtype, is_weak) of an operand: Python scalars and weak tracers are weak."""
    if isinstance(x, TracedArray):
        return x.value.dtype, x.weak
    check_operand(x)
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic):
        return weak_scalar_dtype(x), True
    if isinstance(x, complex):
        raise TypeError("complex numbers are not supported by fusejit")
    return from_numpy(np.asarray(x).dtype), False


def result_dtype(*xs: Any) -> DType:
    """The NumPy 2 result dtype of combining ``xs``."""
    typed = [operand_dtype(x) for x in xs]
    strong = [d for d, w in typed if not w]
    weak = [d for d, w in typed if w]
    if not strong:
        return promote(*weak)
    out = promote(*strong)
    for w in weak:
        out = promote_weak(out, w)
    return out


def shape_of(x: Any) -> tuple[int, ...]:
    if isinstance(x, TracedArray):
        return x.value.shape
    check_operand(x)
    return np.shape(x)


def is_weak(*xs: Any) -> bool:
    """Whether an op on ``xs`` has a weakly typed result: all operands are weak and one is
    a traced value (a Python scalar argument of jit). Python scalars alone give a strong
    result, as in NumPy: ``np.add(2, 3.0)`` is an ``np.float64``."""
    return all(operand_dtype(x)[1] for x in xs) and any(isinstance(x, TracedArray) for x in xs)


# ---------------------------------------------------------------------------------------
# The traced array


class TracedArray:
    """An array inside a trace: it has a static shape and dtype but no data.

    It behaves like a NumPy array for everything that does not need the data: Python
    operators, indexing, ``.T``, ``.reshape``, ``.sum`` and NumPy's ufunc and function
    protocols all record IR. Asking for its data (``if x:``, ``float(x)``) raises
    ``ConcretizationError``.

    It is a mutable handle on an immutable SSA value: an in-place update (``x[i] = v``,
    ``x += y``, ``out=x``) records the new contents and points the handle at them; a view
    (``x[1:3]``, ``x.T``) follows its root array's writes (``fusejit.tracer.inplace``).
    """

    __slots__ = ("_value", "_known", "trace", "weak", "_view", "_version")
    __array_priority__ = 1000  # NumPy defers binary operators to us

    def __init__(self, value: Value, trace: Trace, weak: bool = False, known: np.ndarray | None = None) -> None:
        self._value = value
        self._known = known  # the contents, when the trace knows them (read-only)
        self.trace = trace
        self.weak = weak
        self._view: Any = None  # an inplace.View when this array views another one
        self._version = 0  # writes to this array so far (a root's count dates its views)

    @property
    def value(self) -> Value:
        """The IR value of the current contents (a view stale after a write to its root
        is recomputed first)."""
        view = self._view
        if view is not None and view.version != view.root._version:
            self._value, self._known = view.read()
        return self._value

    @property
    def known(self) -> np.ndarray | None:
        """The contents when the trace knows them, read-only; else None. An array computed
        only from constants is known (``fnp.zeros``, a NumPy buffer made inside the traced
        function, and what concrete writes and operations make of them), so Python may ask
        about it (``if``, ``int()``, ``np.asarray``, a boolean index) as about a NumPy
        array; a traced operand or index makes the result unknown."""
        self.value  # noqa: B018 - refreshes a view stale after a write to its root
        return self._known

    # Static facts ----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype.np

    @property
    def ndim(self) -> int:
        return len(self.value.shape)

    @property
    def size(self) -> int:
        return self.value.type.size

    @property
    def itemsize(self) -> int:
        return self.value.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return self.value.type.nbytes

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d traced array")
        return self.shape[0]

    def __repr__(self) -> str:
        """``TracedArray(f32[64,10] tanh at train.py:12 in 'train_step')``: the IR type, the
        op that made the value (or the parameter it is) and its source line."""
        v = self.value
        op = next((op for op in reversed(self.trace.builder.ops) if v in op.outputs), None)
        if op is not None:
            origin = f" {op.prim.name}{f' at {short_loc(op.loc)}' if op.loc is not None else ''}"
        elif v in self.trace.params:
            origin = f" parameter {v.name}" if v.name else " parameter"
        else:
            origin = ""
        return f"TracedArray({v.type}{', weak' if self.weak else ''}{origin} in {self.trace.name!r})"

    # Concretization --------------------------------------------------------------------
    def _concrete(self, what: str) -> ConcretizationError | EscapedTracerError:
        if not self.trace.active:
            return escaped_tracer_error(self)
        loc = user_source_loc()
        return ConcretizationError(
            f"{what} needs a concrete value, but this {self.value.type} value is traced "
            f"inside {self.trace.name!r}{f' (at {loc})' if loc else ''}. Python control flow "
            "cannot depend on traced data: use fnp.where for a data-dependent choice, or mark "
            "the argument static with static_argnums/static_argnames."
        )

    def _known_or_raise(self, what: str) -> np.ndarray:
        known = self.known
        if known is None:
            raise self._concrete(what)
        return known

    def __bool__(self) -> bool:
        return bool(self._known_or_raise("bool() / `if` / `while` on a traced value"))

    def __int__(self) -> int:
        return int(self._known_or_raise("int()"))

    def __float__(self) -> float:
        return float(self._known_or_raise("float()"))

    def __index__(self) -> int:
        return operator.index(self._known_or_raise("using a traced value as an index or size"))

    def __complex__(self) -> complex:
        return complex(self._known_or_raise("complex()"))

    def item(self, *args: Any) -> Any:
        return self._known_or_raise(".item()").item(*args)

    def tolist(self) -> Any:
        return self._known_or_raise(".tolist()").tolist()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        known = self._known_or_raise(
            "converting a traced value to a NumPy array (np.asarray, or storing it into a NumPy "
            "array created before the traced function was called, or by an installed library: "
            "create it inside the function, with fnp.zeros in library code)"
        )
        if copy is False:
            raise ValueError("a known traced array's contents are copied into a NumPy array, never viewed")
        return np.array(known, dtype=dtype, copy=True)

    def __iter__(self):  # noqa: ANN204 - iterating unrolls the first axis, like NumPy
        if not self.shape:
            raise TypeError("iteration over a 0-d traced array")
        return (self[i] for i in range(self.shape[0]))

    def __setitem__(self, key: Any, value: Any) -> None:
        inplace.setitem(self, key, value)

    # In-place operators: NumPy's `a += b` is `np.add(a, b, out=a)`, same-kind casting.
    def __iadd__(self, o: Any) -> Any: return fnp.apply_ufunc(np.add, "__call__", (self, o), {"out": self})
    def __isub__(self, o: Any) -> Any: return fnp.apply_ufunc(np.subtract, "__call__", (self, o), {"out": self})
    def __imul__(self, o: Any) -> Any: return fnp.apply_ufunc(np.multiply, "__call__", (self, o), {"out": self})
    def __itruediv__(self, o: Any) -> Any: return fnp.apply_ufunc(np.divide, "__call__", (self, o), {"out": self})
    def __ifloordiv__(self, o: Any) -> Any: return fnp.apply_ufunc(np.floor_divide, "__call__", (self, o), {"out": self})
    def __imod__(self, o: Any) -> Any: return fnp.apply_ufunc(np.remainder, "__call__", (self, o), {"out": self})
    def __ipow__(self, o: Any) -> Any: return fnp.apply_ufunc(np.power, "__call__", (self, o), {"out": self})
    def __imatmul__(self, o: Any) -> Any: return fnp.apply_ufunc(np.matmul, "__call__", (self, o), {"out": self})
    def __iand__(self, o: Any) -> Any: return fnp.apply_ufunc(np.bitwise_and, "__call__", (self, o), {"out": self})
    def __ior__(self, o: Any) -> Any: return fnp.apply_ufunc(np.bitwise_or, "__call__", (self, o), {"out": self})
    def __ixor__(self, o: Any) -> Any: return fnp.apply_ufunc(np.bitwise_xor, "__call__", (self, o), {"out": self})
    def __ilshift__(self, o: Any) -> Any: return fnp.apply_ufunc(np.left_shift, "__call__", (self, o), {"out": self})
    def __irshift__(self, o: Any) -> Any: return fnp.apply_ufunc(np.right_shift, "__call__", (self, o), {"out": self})

    def fill(self, value: Any) -> None:
        inplace.fill(self, value)

    def sort(self, axis: int = -1, kind: Any = None, order: Any = None) -> None:
        """``ndarray.sort``: sorts in place along ``axis`` (stable, NaNs last)."""
        inplace.assign(self, fnp._ext.sort(self, axis, kind, order), "ndarray.sort")

    def partition(self, kth: Any, axis: int = -1, kind: str = "introselect", order: Any = None) -> None:
        """``ndarray.partition``: partitions in place along ``axis`` (as ``fnp.partition``)."""
        inplace.assign(self, fnp._ext.partition(self, kth, axis, kind, order), "ndarray.partition")

    def put(self, indices: Any, values: Any, mode: str = "raise") -> None:
        """``ndarray.put``: ``numpy.put(self, indices, values, mode)``."""
        fnp._ext.put(self, indices, values, mode)

    def __hash__(self) -> int:
        raise TypeError("traced arrays are unhashable (are you passing one as a static argument?)")

    # Arithmetic: everything delegates to fusejit.numpy ----------------------------------
    def __add__(self, o: Any) -> Any: return fnp.add(self, o)
    def __radd__(self, o: Any) -> Any: return fnp.add(o, self)
    def __sub__(self, o: Any) -> Any: return fnp.subtract(self, o)
    def __rsub__(self, o: Any) -> Any: return fnp.subtract(o, self)
    def __mul__(self, o: Any) -> Any: return fnp.multiply(self, o)
    def __rmul__(self, o: Any) -> Any: return fnp.multiply(o, self)
    def __truediv__(self, o: Any) -> Any: return fnp.true_divide(self, o)
    def __rtruediv__(self, o: Any) -> Any: return fnp.true_divide(o, self)
    def __floordiv__(self, o: Any) -> Any: return fnp.floor_divide(self, o)
    def __rfloordiv__(self, o: Any) -> Any: return fnp.floor_divide(o, self)
    def __mod__(self, o: Any) -> Any: return fnp.remainder(self, o)
    def __rmod__(self, o: Any) -> Any: return fnp.remainder(o, self)
    def __pow__(self, o: Any) -> Any: return fnp.power(self, o)
    def __rpow__(self, o: Any) -> Any: return fnp.power(o, self)
    def __matmul__(self, o: Any) -> Any: return fnp.matmul(self, o)
    def __rmatmul__(self, o: Any) -> Any: return fnp.matmul(o, self)
    def __neg__(self) -> Any: return fnp.negative(self)
    def __pos__(self) -> Any: return fnp.positive(self)
    def __abs__(self) -> Any: return fnp.abs(self)
    def __invert__(self) -> Any: return fnp.invert(self)
    def __and__(self, o: Any) -> Any: return fnp.bitwise_and(self, o)
    def __rand__(self, o: Any) -> Any: return fnp.bitwise_and(o, self)
    def __or__(self, o: Any) -> Any: return fnp.bitwise_or(self, o)
    def __ror__(self, o: Any) -> Any: return fnp.bitwise_or(o, self)
    def __xor__(self, o: Any) -> Any: return fnp.bitwise_xor(self, o)
    def __rxor__(self, o: Any) -> Any: return fnp.bitwise_xor(o, self)
    def __lshift__(self, o: Any) -> Any: return fnp.left_shift(self, o)
    def __rlshift__(self, o: Any) -> Any: return fnp.left_shift(o, self)
    def __rshift__(self, o: Any) -> Any: return fnp.right_shift(self, o)
    def __rrshift__(self, o: Any) -> Any: return fnp.right_shift(o, self)
    def __divmod__(self, o: Any) -> Any: return fnp.divmod(self, o)
    def __rdivmod__(self, o: Any) -> Any: return fnp.divmod(o, self)
    def __eq__(self, o: Any) -> Any: return fnp.equal(self, o)  # type: ignore[override]
    def __ne__(self, o: Any) -> Any: return fnp.not_equal(self, o)  # type: ignore[override]
    def __lt__(self, o: Any) -> Any: return fnp.less(self, o)
    def __le__(self, o: Any) -> Any: return fnp.less_equal(self, o)
    def __gt__(self, o: Any) -> Any: return fnp.greater(self, o)
    def __ge__(self, o: Any) -> Any: return fnp.greater_equal(self, o)

    def __getitem__(self, key: Any) -> Any:
        return fnp.getitem(self, key)

    # Methods ---------------------------------------------------------------------------
    @property
    def T(self) -> Any:  # noqa: N802 - NumPy's name
        return fnp.transpose(self)

    @property
    def mT(self) -> Any:  # noqa: N802 - NumPy's name
        """The last two axes swapped (``ValueError`` below 2-d, as NumPy)."""
        if self.ndim < 2:
            raise ValueError("matrix transpose with ndim < 2 is undefined")
        return fnp._ext.matrix_transpose(self)

    @property
    def real(self) -> Any:
        """The array itself: fusejit's dtypes are real (NumPy's ``x.real is x`` for them)."""
        return self

    @property
    def imag(self) -> Any:
        """Zeros of the array's dtype and shape (its dtypes are real)."""
        return fnp._ext.imag(self)

    def conj(self) -> Any:
        """The array itself, as NumPy's ``x.conj()`` of a real array."""
        return self

    conjugate = conj

    def reshape(self, *shape: Any, order: str = "C") -> Any:
        return fnp.reshape(self, shape[0] if len(shape) == 1 else shape, order=order)

    def transpose(self, *axes: Any) -> Any:
        if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = axes[0]  # x.transpose((1, 0)) as well as x.transpose(1, 0)
        return fnp.transpose(self, None if axes is None or len(axes) == 0 else axes)

    def swapaxes(self, axis1: int, axis2: int) -> Any:
        return fnp.swapaxes(self, axis1, axis2)

    def astype(self, dtype: Any, copy: bool = True) -> Any:
        return fnp.astype(self, dtype, copy=copy)

    def cumsum(self, axis: Any = None, dtype: Any = None) -> Any:
        return fnp.cumsum(self, axis, dtype)

    def cumprod(self, axis: Any = None, dtype: Any = None, out: Any = None) -> Any:
        return fnp._ext.cumprod(self, axis, dtype, out)

    def prod(self, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False,
             initial: Any = None) -> Any:
        return fnp._ext.prod(self, axis, dtype, out, keepdims, initial)

    def sum(self, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
        return fnp.sum(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def mean(self, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
        return fnp.mean(self, axis=axis, dtype=dtype, keepdims=keepdims)

    def var(self, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
        return fnp.var(self, axis=axis, ddof=ddof, keepdims=keepdims)

    def std(self, axis: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
        return fnp.std(self, axis=axis, ddof=ddof, keepdims=keepdims)

    def max(self, axis: Any = None, keepdims: bool = False) -> Any:
        return fnp.max(self, axis=axis, keepdims=keepdims)

    def min(self, axis: Any = None, keepdims: bool = False) -> Any:
        return fnp.min(self, axis=axis, keepdims=keepdims)

    def any(self, axis: Any = None, keepdims: bool = False) -> Any:
        return fnp.any(self, axis=axis, keepdims=keepdims)

    def all(self, axis: Any = None, keepdims: bool = False) -> Any:
        return fnp.all(self, axis=axis, keepdims=keepdims)

    def argmax(self, axis: Any = None) -> Any:
        return fnp.argmax(self, axis=axis)

    def argmin(self, axis: Any = None) -> Any:
        return fnp.argmin(self, axis=axis)

    def clip(self, a_min: Any = None, a_max: Any = None, out: Any = None) -> Any:
        return fnp.clip(self, a_min, a_max, out)

    def ravel(self) -> Any:
        return fnp.ravel(self)

    def copy(self) -> Any:
        return fnp.copy(self)

    def flatten(self) -> Any:
        return fnp.copy(fnp.ravel(self))

    def squeeze(self, axis: Any = None) -> Any:
        return fnp.squeeze(self, axis)

    def take(self, indices: Any, axis: Any = None) -> Any:
        return fnp.take(self, indices, axis=axis)

    def dot(self, other: Any) -> Any:
        return fnp.dot(self, other)

    def round(self, decimals: int = 0, out: Any = None) -> Any:
        return fnp.round(self, decimals, out)

    def argsort(self, axis: Any = -1, kind: Any = None, order: Any = None, *, stable: Any = None) -> Any:
        return fnp._ext.argsort(self, axis, kind, order, stable)

    def argpartition(self, kth: Any, axis: Any = -1, kind: str = "introselect", order: Any = None) -> Any:
        return fnp._ext.argpartition(self, kth, axis, kind, order)

    def diagonal(self, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Any:
        return fnp._ext.diagonal(self, offset, axis1, axis2)

    def repeat(self, repeats: Any, axis: Any = None) -> Any:
        return fnp._ext.repeat(self, repeats, axis)

    def searchsorted(self, v: Any, side: str = "left", sorter: Any = None) -> Any:
        return fnp._ext.searchsorted(self, v, side, sorter)

    def compress(self, condition: Any, axis: Any = None, out: Any = None) -> Any:
        return fnp._ext.compress(condition, self, axis, out)

    def choose(self, choices: Any, out: Any = None, mode: str = "raise") -> Any:
        return fnp._ext.choose(self, choices, out, mode)

    def nonzero(self) -> Any:
        """``numpy.nonzero`` of a known array; refused for a traced one (its shape depends on the data)."""
        return fnp.nonzero(self)

    # NumPy protocols -------------------------------------------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        return fnp.apply_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        return fnp.apply_array_function(func, args, kwargs)


from fusejit.tracer import inplace  # noqa: E402 - so does inplace
from fusejit.tracer import numpy_api as fnp  # noqa: E402 - numpy_api builds on this module
from fusejit.tracer.numpy_buffers import traced_buffers  # noqa: E402 - builds on this module
