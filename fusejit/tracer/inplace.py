"""Functionalized in-place updates: NumPy code that mutates arrays traces into pure IR.

A ``TracedArray`` is a mutable handle on an immutable SSA value. An in-place operation
(``a[i] = v``, ``a[i] += v``, ``a += b``, a ufunc's or a reduction's ``out=``,
``np.copyto``, ``a.fill(v)``, ``np.add.at``) computes the array's new contents with
ordinary primitives and points the handle at the result, so autodiff, fusion and the
optimizer only ever see SSA:

- a basic index (ints, slices, None) is ``select(mask, placed, old)``, where ``placed``
  and ``mask`` put the written values and ``True`` at their positions with ``pad`` (and
  ``reshape``/``pad``/``slice`` for strides); the simplifier turns a write into a fresh
  ``zeros`` buffer into the ``pad`` of the values itself (``simplify._filled_spread``);
- an integer-array index is ``select(hit, gather(values, winner), old)``, where ``winner``
  is, per position, the last update that writes it: NumPy's buffered semantics, in which
  ``a[idx] += v`` with a repeated index keeps the last write instead of accumulating.
  Static indices give ``winner`` at trace time; traced ones compare every position with
  every index (out-of-range traced indices write nothing). ``np.add.at`` accumulates
  instead, with ``scatter_add``;
- a boolean mask is a ``select``, ``a[mask] op= v`` too (``MaskedSelection``); several
  integer arrays are merged into one index of the merged axes (as ``getitem`` does).

Views. A basic index, a transpose or a reshape of a traced array is a *view*: it keeps its
root array and the steps from it. Writing through a view rebuilds the root (each step
puts a new view value back into its base: the inverse transpose or reshape, the select
of a basic index), and a view read after its root changed is recomputed, so aliasing
behaves as in NumPy (``v = a[1:3]; v += 1`` changes ``a``). A reshape that NumPy would
copy (of a transposed or strided view) is a copy here too; that is decided by replaying
the view's steps on a strided stand-in of the root, taken to be C-contiguous, as every
array fusejit creates is. ``broadcast_to`` views are read-only, as in NumPy. Buffers made
inside the traced function (``np.zeros``, ``fnp.zeros``) are traced arrays with known
contents (``fusejit.tracer.numpy_buffers``), which writes keep known while the written
values and indices are. A NumPy array made before the trace cannot hold a traced value;
``acc += traced`` on one rebinds ``acc`` to the traced result (other names for that array
do not see it).

Inputs. A jitted function works on its own copy of each argument, as it returns new
arrays: writing into an argument does not change the caller's array, and ``jit`` warns
once per argument (``InputMutationWarning``) unless the argument is donated
(``donate_argnums``), which lets the compiled code reuse its buffer for the result.
"""

from __future__ import annotations

import builtins
import dis
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.core import SourceLoc, Value
from fusejit.ir.dtypes import DType
from fusejit.tracer import numpy_api as fnp
from fusejit.tracer.tracing import (
    _TRACES,
    KNOWN_MAX_SIZE,
    Trace,
    TracedArray,
    _is_internal,
    _to_value,
    bind,
    current_trace,
    escaped_tracer_error,
    operand_dtype,
    read_only,
    shape_of,
    user_source_loc,
)

Array = Any


class InputMutationWarning(UserWarning):
    """A jitted function writes into an argument that is not donated: the caller's array
    keeps its old contents."""


# ---------------------------------------------------------------------------------------
# View steps: how a view is read from its base and how a new view value goes back.


@dataclass(frozen=True)
class Index:
    """A basic index (an expanded key of ints, slices and None)."""

    key: tuple

    def read(self, base: TracedArray) -> Array:
        return fnp.index_value(base, self.key)

    def write(self, base: TracedArray, new: Array) -> Array:
        return set_basic(base, self.key, new)

    def on_layout(self, layout: np.ndarray) -> np.ndarray:
        return layout[self.key]


@dataclass(frozen=True)
class Transpose:
    perm: tuple[int, ...]

    def read(self, base: TracedArray) -> Array:
        return _with_weak_of(base, bind(P.transpose, base, perm=self.perm))

    def write(self, base: TracedArray, new: Array) -> Array:
        return bind(P.transpose, new, perm=tuple(int(i) for i in np.argsort(self.perm)))

    def on_layout(self, layout: np.ndarray) -> np.ndarray:
        return layout.transpose(self.perm)


@dataclass(frozen=True)
class Reshape:
    shape: tuple[int, ...]

    def read(self, base: TracedArray) -> Array:
        return _with_weak_of(base, bind(P.reshape, base, shape=self.shape))

    def write(self, base: TracedArray, new: Array) -> Array:
        return bind(P.reshape, new, shape=shape_of(base))

    def on_layout(self, layout: np.ndarray) -> np.ndarray:
        return np.reshape(layout, self.shape, copy=False)  # ValueError where NumPy copies


@dataclass(frozen=True)
class Broadcast:
    """``broadcast_to``: a read-only view."""

    shape: tuple[int, ...]

    def read(self, base: TracedArray) -> Array:
        return fnp._broadcast(base, self.shape)

    def write(self, base: TracedArray, new: Array) -> Array:
        raise AssertionError("writes through a broadcast view are refused before they start")

    def on_layout(self, layout: np.ndarray) -> np.ndarray:
        return np.broadcast_to(layout, self.shape)


Step = Index | Transpose | Reshape | Broadcast


def _with_weak_of(base: TracedArray, out: TracedArray) -> TracedArray:
    out.weak = base.weak
    return out


class View:
    """A traced array's link to the root array it views: the steps from the root and the
    root's version its value was computed from."""

    __slots__ = ("root", "steps", "version")

    def __init__(self, root: TracedArray, steps: tuple[Step, ...], version: int) -> None:
        self.root = root
        self.steps = steps
        self.version = version

    def read(self) -> tuple[Value, np.ndarray | None]:
        """The view's value (and known contents) computed from the root's current ones
        (recorded into the root's trace, even while an inner trace is active)."""
        with _recording_into(self.root.trace):
            h = _handle(self.root)
            for step in self.steps:
                h = step.read(h)
        self.version = self.root._version
        return h.value, h.known


@contextmanager
def _recording_into(trace: Trace) -> Iterator[None]:
    if current_trace() is trace:
        yield
        return
    _TRACES.traces.append(trace)
    try:
        yield
    finally:
        _TRACES.traces.pop()


def _root_and_steps(a: TracedArray) -> tuple[TracedArray, tuple[Step, ...]]:
    view = a._view
    return (a, ()) if view is None else (view.root, view.steps)


def view_of(base: Array, out: Array, step: Step) -> Array:
    """Makes ``out`` (just computed from ``base`` by ``step``) a view of ``base``'s root,
    unless NumPy would have made a copy (a reshape of a non-contiguous view)."""
    if not isinstance(base, TracedArray) or not isinstance(out, TracedArray) or out is base:
        return out
    root, steps = _root_and_steps(base)
    if isinstance(step, Reshape) and steps and not _stays_a_view(root, steps + (step,)):
        return out
    out._view = View(root, steps + (step,), root._version)
    return out


def _stays_a_view(root: TracedArray, steps: tuple[Step, ...]) -> bool:
    """Whether NumPy can take these steps without a copy from a C-contiguous root: they
    are replayed on a strided stand-in that has no data (nothing reads it)."""
    strides = [1] * root.ndim
    for i in range(root.ndim - 2, -1, -1):
        strides[i] = strides[i + 1] * builtins.max(root.shape[i + 1], 1)
    layout = np.lib.stride_tricks.as_strided(
        np.zeros(1, np.int8), shape=root.shape, strides=tuple(strides), writeable=False
    )
    try:
        for step in steps:
            layout = step.on_layout(layout)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# Writing: the new value of an array, through its views to its root.


def _check_writable(a: TracedArray, what: str) -> None:
    loc = user_source_loc()
    where = f" (at {loc})" if loc else ""
    if not a.trace.active:
        raise escaped_tracer_error(a, f"the destination of {what}")
    trace = current_trace()
    if a.trace is not trace:
        inner = f" inside {trace.name!r}" if trace is not None else ""
        raise TypeError(
            f"{what} writes into a traced value of the enclosing {a.trace.name!r}{inner}{where}: a "
            "transformed function cannot change the arrays it closes over; return the new value instead"
        )
    root, steps = _root_and_steps(a)
    if builtins.any(isinstance(s, Broadcast) for s in steps):
        raise ValueError(f"{what}: assignment destination is read-only (a broadcast_to view){where}")


def _handle(a: TracedArray) -> TracedArray:
    """A new handle on ``a``'s current contents, not a view of anything."""
    return TracedArray(a.value, a.trace, a.weak, a.known)


def _known_as(x: Array, dtype: DType) -> np.ndarray | None:
    """``x``'s contents as ``dtype`` (NumPy's unsafe cast, as ``_to_value`` converts), when
    known."""
    known = x.known if isinstance(x, TracedArray) else np.asarray(x)
    if known is None or known.size > KNOWN_MAX_SIZE:  # kept small, as _known_outputs keeps them
        return None
    return read_only(np.asarray(known, dtype=dtype.np))


def assign(a: TracedArray, new: Array, what: str) -> None:
    """Makes ``new`` (an array of ``a``'s shape) the contents of ``a``, and of the root
    array when ``a`` is a view of one."""
    _check_writable(a, what)
    value = _to_value(new, a.trace, a.value.dtype)
    known = _known_as(new, a.value.dtype)
    assert value.shape == a.shape, (value.type, a.value.type)
    view = a._view
    if view is None:
        _commit(a, value, known)
        return
    bases = [_handle(view.root)]
    for step in view.steps[:-1]:
        bases.append(step.read(bases[-1]))
    w: Array = TracedArray(value, a.trace, False, known)
    for step, base in zip(reversed(view.steps), reversed(bases), strict=True):
        w = step.write(base, w)
    root_dtype = view.root.value.dtype
    _commit(view.root, _to_value(w, a.trace, root_dtype), _known_as(w, root_dtype))
    a._value, a._known = value, known
    view.version = view.root._version


def _commit(root: TracedArray, value: Value, known: np.ndarray | None) -> None:
    root._value, root._known = value, known
    root._version += 1
    root.trace.first_writes.setdefault(id(root), user_source_loc())


def first_write(a: TracedArray) -> SourceLoc | None | bool:
    """Where ``a`` (a root array) was first written: a source line, None when the line is
    unknown, False when it never was."""
    if a._version == 0:
        return False
    return a.trace.first_writes.get(id(a))


# ---------------------------------------------------------------------------------------
# The in-place operations


def setitem(a: TracedArray, key: Any, value: Array) -> None:
    """``a[key] = value`` (``value`` cast to ``a``'s dtype as NumPy does: unsafely, except
    that a Python int outside an integer dtype's range raises ``OverflowError``)."""
    if isinstance(value, int) and not isinstance(value, bool) and a.dtype.kind in "iu":
        info = np.iinfo(a.dtype)
        if not info.min <= value <= info.max:
            raise OverflowError(f"Python integer {value} out of bounds for {a.dtype}")
    key = fnp.expand_key(a.ndim, key)
    if _rewrites_itself(a, key, value):
        return
    if isinstance(value, MaskedSelection):
        assign(a, value.merged_into(a, key), "an assignment a[mask] op= value")
        return
    assign(a, updated(a, key, value), "an assignment a[...] = value")


def _rewrites_itself(a: TracedArray, key: tuple, value: Array) -> bool:
    """Whether ``a[key] = value`` writes back the view ``a[key]`` itself: the second half
    of ``a[key] += v``, whose first half (``+=`` on the view) already wrote ``a``."""
    if not isinstance(value, TracedArray) or value._view is None or not fnp.is_basic_key(key):
        return False
    root, steps = _root_and_steps(a)
    return value._view.root is root and value._view.steps == steps + (Index(key),)


def accumulate_at(a: Array, key: Any, value: Array, name: str) -> None:
    """``np.add.at(a, key, value)``: unbuffered, so repeated indices all add up."""
    if not isinstance(a, TracedArray):
        raise cannot_hold(name)
    assign(a, updated(a, fnp.expand_key(a.ndim, key), value, accumulate=True), name)


def fill(a: TracedArray, value: Array) -> None:
    """``a.fill(value)``."""
    assign(a, fnp.full(a.shape, fnp.astype(value, a.dtype, copy=False), a.dtype), "ndarray.fill")


def store(out: Array, result: Array, name: str, casting: str = "same_kind",
          first_operand: Array = None) -> Array:
    """``result`` written into ``out`` (the ``out=`` of ``name``) under NumPy's ``casting``
    rule (``"exact"``: the dtype must match, as ``numpy.dot`` requires); returns ``out``,
    or ``result`` itself when ``out`` is None."""
    if out is None:
        return result
    src, dst = operand_dtype(result)[0], operand_dtype(out)[0]
    if casting == "exact" and (src != dst or shape_of(result) != shape_of(out)):
        raise fnp._fail(f"{name}: output array is not acceptable (must have the result's dtype {src} "
                        f"and shape {shape_of(result)}, got {dst}{list(shape_of(out))})")
    if casting != "exact" and not np.can_cast(src.np, dst.np, casting=casting):
        raise fnp._fail(f"{name}: cannot cast the output from {src} to {dst} (the out= array) "
                        f"with casting rule {casting!r}")
    shape = fnp.broadcast_shapes(name, shape_of(result), shape_of(out))
    if shape != shape_of(out):
        raise fnp._fail(f"{name}: non-broadcastable output operand with shape {shape_of(out)} doesn't "
                        f"match the broadcast shape {shape}")
    new = fnp._broadcast(fnp.astype(result, dst, copy=False), shape)
    if isinstance(out, TracedArray):
        assign(out, new, f"{name} with out=")
        return out
    if not isinstance(out, np.ndarray):
        raise fnp._fail(f"{name}: out= must be an array, got a {type(out).__name__}")
    if not isinstance(new, TracedArray):
        np.copyto(out, new, casting="unsafe")
        return out
    if first_operand is out and _augmented_assignment():
        return fnp.fresh(new)  # `acc += traced`: Python rebinds acc to what this returns
    raise cannot_hold(name)


def cannot_hold(name: str) -> TypeError:
    loc = user_source_loc()
    return TypeError(
        f"{name}: a NumPy array made before the trace cannot hold a traced value{f' (at {loc})' if loc else ''}; "
        "create the array inside the traced function (np.zeros, np.empty, fnp.copy; in an "
        "installed library's code, fnp.zeros): there it is traced, and writing into it is recorded"
    )


def _user_instructions() -> list[dis.Instruction]:
    """The instructions of the user's innermost frame up to the one it is running (last).
    A specialized instruction that calls Python code directly (3.11's
    ``BINARY_SUBSCR_GETITEM``) leaves the frame's offset on its inline cache, after the
    instruction's own offset: the running one is the last that starts at or before it."""
    frame = sys._getframe(1)
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        return []
    return [ins for ins in dis.get_instructions(frame.f_code) if ins.offset <= frame.f_lasti]


def _augmented_assignment() -> bool:
    """Whether the user's line being run is an augmented assignment (``a += b``)."""
    running = _user_instructions()[-1:]
    return bool(running) and running[0].opname == "BINARY_OP" and running[0].argrepr.endswith("=")


def _target_of_augmented_assignment() -> bool:
    """Whether the user's code is reading ``a[key]`` as the target of ``a[key] op= v``
    (CPython compiles it as ``COPY 2; COPY 2; BINARY_SUBSCR; <v>; BINARY_OP op=; ...;
    STORE_SUBSCR``)."""
    code = [(ins.opname, ins.arg) for ins in _user_instructions()[-3:]]
    return code == [("COPY", 2), ("COPY", 2), ("BINARY_SUBSCR", None)]


class MaskedSelection:
    """``a[mask]``, with a traced boolean ``mask``, read as the target of an augmented
    assignment (``a[a < 0] *= 0.01``). Its shape would depend on the data, so it is kept
    as the whole of ``a``: the in-place operator (with an operand that broadcasts against
    one selected element: a scalar, or the axes after the mask's) updates every element,
    with NumPy's casting, and the assignment back, ``a[mask] = selection``, selects the
    updated elements where ``mask`` is True. Any other use raises the data-dependent-shape
    error, as reading ``a[mask]`` does."""

    __slots__ = ("mask", "full")

    def __init__(self, a: TracedArray, key: tuple) -> None:
        mask, shape = key[0], shape_of(a)
        if not all(k == builtins.slice(None) for k in key[1:]) or shape[: mask.ndim] != mask.shape:
            raise fnp._boolean_mask_error()
        self.mask = mask
        self.full = fnp.fresh(a)

    def _update(self, ufunc: np.ufunc, operand: Array) -> MaskedSelection:
        oshape = shape_of(operand)
        if math.prod(oshape) == 1:
            operand = fnp.reshape(operand, ()) if oshape else operand
        elif len(oshape) > self.full.ndim - self.mask.ndim:  # it would depend on the count
            raise fnp._boolean_mask_error()
        fnp.apply_ufunc(ufunc, "__call__", (self.full, operand), {"out": self.full})
        return self

    def merged_into(self, a: TracedArray, key: tuple) -> Array:
        """``a`` with the updated elements where the mask is True (``key``: the same mask)."""
        if key[0] is not self.mask:
            raise fnp._boolean_mask_error()
        spread = fnp.reshape(self.mask, self.mask.shape + (1,) * (a.ndim - self.mask.ndim))
        return fnp.where(spread, self.full, a)

    def __iadd__(self, o: Any) -> Any: return self._update(np.add, o)
    def __isub__(self, o: Any) -> Any: return self._update(np.subtract, o)
    def __imul__(self, o: Any) -> Any: return self._update(np.multiply, o)
    def __itruediv__(self, o: Any) -> Any: return self._update(np.divide, o)
    def __ifloordiv__(self, o: Any) -> Any: return self._update(np.floor_divide, o)
    def __imod__(self, o: Any) -> Any: return self._update(np.remainder, o)
    def __ipow__(self, o: Any) -> Any: return self._update(np.power, o)
    def __iand__(self, o: Any) -> Any: return self._update(np.bitwise_and, o)
    def __ior__(self, o: Any) -> Any: return self._update(np.bitwise_or, o)
    def __ixor__(self, o: Any) -> Any: return self._update(np.bitwise_xor, o)
    def __ilshift__(self, o: Any) -> Any: return self._update(np.left_shift, o)
    def __irshift__(self, o: Any) -> Any: return self._update(np.right_shift, o)

    def __getattr__(self, name: str) -> Any:
        raise fnp._boolean_mask_error()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise fnp._boolean_mask_error()

    __array__ = __array_ufunc__ = __array_function__ = __len__ = __iter__ = __bool__ = _refuse
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _refuse
    __neg__ = __abs__ = __lt__ = __le__ = __gt__ = __ge__ = __getitem__ = __setitem__ = _refuse


def masked_selection(a: Array, key: tuple) -> MaskedSelection | None:
    """The target of ``a[mask] op= v`` for a traced boolean mask (None for anything else)."""
    if (isinstance(a, TracedArray) and key and isinstance(key[0], TracedArray) and key[0].dtype == np.bool_
            and _target_of_augmented_assignment()):
        return MaskedSelection(a, key)
    return None


# ---------------------------------------------------------------------------------------
# The new value of an array after a write (pure: builds ops, changes no handle)


def updated(x: Array, key: tuple, value: Array, accumulate: bool = False) -> Array:
    """``x`` with ``x[key]`` replaced by ``value`` (``accumulate``: increased by it, every
    repeated index counting), for an expanded key."""
    if builtins.any(_is_mask(k) for k in key):
        return _masked(x, key, value, accumulate)
    arrays = [i for i, k in enumerate(key) if fnp.is_array_index(k)]
    lanes = _lane_update(x, key, value, accumulate)
    if lanes is not None:
        return lanes
    if len(arrays) > 1:
        merged, merged_key, perm, moved_shape = fnp.merge_array_indices(x, key)
        new = fnp.reshape(updated(merged, merged_key, value, accumulate), moved_shape)
        return fnp.transpose(new, tuple(int(i) for i in np.argsort(perm)))
    target = shape_of(fnp.index_value(x, key))  # also checks the key (bounds, types)
    value = _fitted(value, fnp._dtype_of(x), target)
    if not arrays:
        return set_basic(x, key, value, accumulate)
    pos = arrays[0]
    idx = key[pos] if isinstance(key[pos], TracedArray) else np.asarray(key[pos], dtype=np.int64)
    sub_key = key[:pos] + (builtins.slice(None),) + key[pos + 1 :]
    sub = fnp.index_value(x, sub_key)
    ax = builtins.sum(1 for k in key[:pos] if not _is_int(k))
    k = len(shape_of(idx))
    integers = [i for i, kk in enumerate(key) if _is_int(kk)] + [pos]
    if sorted(integers) != list(range(min(integers), max(integers) + 1)) and ax:
        value = fnp.moveaxis(value, list(range(k)), list(range(ax, ax + k)))  # NumPy put them in front
    vshape = shape_of(value)
    m = math.prod(shape_of(idx))
    value = fnp.reshape(value, vshape[:ax] + (m,) + vshape[ax + k :])
    new_sub = _set_along(sub, ax, fnp.reshape(idx, (m,)), value, accumulate)
    return set_basic(x, sub_key, new_sub)


def _lane_update(x: Array, key: tuple, value: Array, accumulate: bool) -> Array | None:
    """``x[range(n), idx] = value`` (one position per lane of another axis, as in
    ``dscores[range(N), y] -= 1``) as an elementwise ``select(iota == idx, value, x)``
    instead of a general update; None for other keys (``fnp.lane_index``)."""
    shape = shape_of(x)
    lanes = fnp.lane_index(shape, key)
    if lanes is None:
        return None
    lane, other = lanes
    value = _fitted(value, fnp._dtype_of(x), shape_of(fnp.index_value(x, key)))
    rest = [i for i in range(len(shape)) if i not in lanes]
    front = 0 if builtins.abs(lane - other) > 1 else builtins.min(lanes)  # where NumPy put the lanes
    value = fnp.expand_dims(fnp.moveaxis(value, front, 0), 1)  # axes: lane, other, rest
    value = fnp.transpose(value, tuple(int(i) for i in np.argsort([lane, other] + rest)))
    idx = fnp.astype(key[other], np.int64, copy=False)
    idx = fnp.where(fnp.less(idx, 0), fnp.add(idx, shape[other]), idx)
    along = [1] * len(shape)
    along[lane] = shape[lane]
    hit = fnp.equal(bind(P.iota, shape=shape, dimension=other, dtype=DType.i64), fnp.reshape(idx, tuple(along)))
    if accumulate:
        return fnp.add(x, fnp.where(hit, value, 0))
    return fnp.where(hit, value, x)


def _is_int(k: Any) -> bool:
    return isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_))


def _is_mask(k: Any) -> bool:
    return isinstance(k, (bool, np.bool_)) or (fnp.is_array_index(k) and fnp._dtype_of(
        k if isinstance(k, TracedArray) else np.asarray(k)).is_bool)


def _fitted(value: Array, dtype: DType, shape: tuple[int, ...]) -> Array:
    """``value`` cast (unsafely, as NumPy's assignment does) and broadcast to ``shape``."""
    vshape = shape_of(value)
    try:
        fits = np.broadcast_shapes(vshape, shape) == shape
    except ValueError:
        fits = False
    if not fits:
        raise fnp._fail(f"could not broadcast input array from shape {vshape} into shape {shape}")
    return fnp._broadcast(fnp.astype(value, dtype, copy=False), shape)


def _masked(x: Array, key: tuple, value: Array, accumulate: bool) -> Array:
    """A write through a boolean mask: a static mask is the integer indices of its True
    elements; a traced one selects, for values that do not depend on its count."""
    if builtins.any(isinstance(k, (bool, np.bool_)) for k in key):
        raise NotImplementedError("assignment with a scalar boolean index")
    mask = key[0]
    shape, mshape = shape_of(x), shape_of(key[0])
    if not (_is_mask(mask) and all(k == builtins.slice(None) for k in key[1:])):
        raise NotImplementedError("assignment through a traced boolean mask that is not the first index")
    if shape[: len(mshape)] != mshape:
        raise fnp._index_error(f"boolean index of shape {mshape} does not match the indexed array's {shape}")
    rest, vshape = shape[len(mshape) :], shape_of(value)
    if len(vshape) == len(rest) + 1 and vshape[0] == 1:
        value = fnp.reshape(value, vshape[1:])
    elif len(vshape) > len(rest):
        raise NotImplementedError(
            f"a[mask] = values of shape {vshape} with a traced mask: the values may not depend on how "
            "many elements the mask selects (write a scalar, or one row for every selected row)"
        )
    full = _fitted(value, fnp._dtype_of(x), shape)
    if accumulate:
        full = fnp.add(x, full)
    return fnp.where(fnp.reshape(mask, mshape + (1,) * len(rest)), full, x)


def set_basic(x: Array, key: tuple, value: Array, accumulate: bool = False) -> Array:
    """``x`` with ``x[key] = value`` for a basic key (``value`` has ``x[key]``'s shape):
    the values placed by pads, then selected over ``x`` (added, with ``accumulate``)."""
    shape = shape_of(x)
    ranges: list[range] = []
    for k in key:
        if k is None:
            continue
        n = shape[len(ranges)]
        if isinstance(k, builtins.slice):
            ranges.append(range(*k.indices(n)))
        else:
            ranges.append(range(int(k) % n, int(k) % n + 1))
    ranges += [range(n) for n in shape[len(ranges) :]]
    value = fnp.reshape(value, tuple(len(r) for r in ranges))
    if builtins.any(len(r) == 0 for r in ranges):
        return x
    if all(r == range(n) for r, n in zip(ranges, shape, strict=True)):
        return fnp.add(x, value) if accumulate else value
    for ax, r in enumerate(ranges):
        if r.step < 0:  # write the reversed values forward
            value = fnp._slice_or_reverse(value, ax, len(r) - 1, -1, -1)
            ranges[ax] = r[::-1]
    placed = _spread(value, ranges, shape, 0)
    if accumulate:
        return fnp.add(x, placed)
    mask = _spread(fnp.full(shape_of(value), True, np.bool_), ranges, shape, False)
    return fnp.where(mask, placed, x)


def _spread(t: Array, ranges: list[range], shape: tuple[int, ...], fill: Any) -> Array:
    """``t`` (one entry per element of ``ranges``, positive steps) placed at those
    positions of an array of ``shape``, ``fill`` elsewhere: a strided axis is interleaved
    with fill (reshape, pad, reshape, slice), then one pad places the block."""
    value = P.constant_value(fill, fnp._dtype_of(t))
    for ax, r in enumerate(ranges):
        if r.step == 1 or len(r) == 1:
            continue
        s = shape_of(t)
        t = bind(P.reshape, t, shape=s[: ax + 1] + (1,) + s[ax + 1 :])
        hi = [0] * (len(s) + 1)
        hi[ax + 1] = r.step - 1
        t = bind(P.pad, t, lo=(0,) * (len(s) + 1), hi=tuple(hi), value=value)
        t = bind(P.reshape, t, shape=s[:ax] + (len(r) * r.step,) + s[ax + 1 :])
        limit = list(shape_of(t))
        limit[ax] = (len(r) - 1) * r.step + 1
        t = bind(P.slice, t, start=(0,) * len(s), limit=tuple(limit), stride=(1,) * len(s))
    lo = tuple(r.start for r in ranges)
    hi = tuple(n - (r[-1] + 1) for r, n in zip(ranges, shape, strict=True))
    return t if builtins.max(lo + hi) == 0 else bind(P.pad, t, lo=lo, hi=hi, value=value)


def _set_along(s: Array, ax: int, idx: Array, value: Array, accumulate: bool) -> Array:
    """``s`` with ``s[..., idx, ...] = value`` along axis ``ax`` for a 1-d integer index:
    the last update of each position wins (``accumulate``: all of them add up)."""
    n, m = shape_of(s)[ax], shape_of(idx)[0]
    if m == 0:
        return s
    static = not isinstance(idx, TracedArray)
    if static:
        idx = np.asarray(idx, dtype=np.int64)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise fnp._index_error(f"index {int(idx[bad][0])} is out of bounds for axis {ax} with size {n}")
        idx = np.where(idx < 0, idx + n, idx)
    else:
        idx = fnp.where(fnp.less(idx, 0), fnp.add(idx, n), idx)
    lanes = (1,) * ax + (n,) + (1,) * (len(shape_of(s)) - ax - 1)
    if accumulate:
        spread_idx = fnp._broadcast(fnp.reshape(idx, lanes[:ax] + (m,) + lanes[ax + 1 :]), shape_of(value))
        return fnp.add(s, bind(P.scatter_add, value, fnp.astype(spread_idx, np.int64, copy=False), axis=ax, size=n))
    if static:
        winner = np.full(n, -1, np.int64)
        np.maximum.at(winner, idx, np.arange(m))
        hit, source = winner >= 0, np.maximum(winner, 0)
    elif m == 1:
        hit, source = fnp.equal(fnp.arange(n), idx), None
    else:
        matches = fnp.equal(fnp.reshape(fnp.arange(n), (n, 1)), fnp.reshape(idx, (1, m)))
        winner = fnp.max(fnp.where(matches, fnp.arange(m), -1), axis=1)
        hit, source = fnp.greater_equal(winner, 0), fnp.maximum(winner, 0)
    placed = value if source is None else fnp.take(value, source, axis=ax)
    return fnp.where(fnp.reshape(hit, lanes), placed, s)
