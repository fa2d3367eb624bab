"""Hypothesis strategies that build random, valid IR functions.

``random_functions()``
    Functions that may use every primitive in ``PRIMITIVES``, on every dtype, with 0-d
    and 0-size shapes, constants holding nan/inf/-0.0 and tuples, odd parameter,
    function and source-file names, and ``custom_vjp_call`` ops whose nested functions
    have zero, one or two results (and may themselves call nested functions). Meant for
    tests of the printer, parser, verifier and anything that must accept *all* IR.
    ``must_use="gather"`` makes every drawn function contain at least one ``gather``.

``random_elementwise_programs()``
    Smaller, "model-like" functions for fusion and code generation tests: one float
    dtype (f32 or f64), one to three parameters whose shapes broadcast NumPy-style
    against each other, no zero-size axes, and a chain of elementwise math (with the
    ``broadcast_in_dim``s the tracer would insert), ``select``, reductions and layout
    ops (transpose, reshape, slice, broadcast). Results are the last value and maybe
    one more. Division and ``exp`` can produce inf/nan on some inputs.

Every function a strategy returns passes ``fusejit.ir.verify``; it is built only with
``fusejit.ir.Builder``, so the builder's type rules hold by construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import hypothesis.strategies as st
import numpy as np

from fusejit.ir import DType, Function, SourceLoc, TensorType, Value
from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.host_callbacks import register_callback

ALL_DTYPES = tuple(DType)
INT_DTYPES = frozenset({DType.i32, DType.i64})
# Printable but awkward: colons, '#', '%', '@', spaces, tabs, unicode, an empty name.
# (No newlines: the printer writes file names raw, so one would break the line.)
ODD_FILE_NAMES = (
    "train.py", "model.py", "C:\\work\\x.py", "a b#c.py", "x:y:z.py", "ünïcødé.py",
    "%0 = add %x", "@f(1)", "", " lead.py", "trail.py ", "dir/sub/deep.py", "tab\tname.py", "x:",
)  # fmt: skip
PARAM_NAMES = (None, "x", "x", "w", "arg0", "arg1", "y_", "0bad", "é", "return", "func")
FUNCTION_NAMES = ("f", "f", "fun", "fwd", "bwd", "<lambda>", "main", "fn", "fn_1", "f_1")

# fj.named_scope paths and derivative markers (bwd of, jvp of) print after/before the line.
SCOPES = ("", "", "conv1", "block1/conv", "a.b-c/<lambda>[0]", "ünï/x_1")
DERIVED = ((), (), ("bwd",), ("jvp",), ("jvp", "bwd"), ("bwd", "bwd"))

_locs = st.one_of(
    st.none(),
    st.builds(SourceLoc, st.sampled_from(ODD_FILE_NAMES), st.integers(0, 10_000), st.sampled_from(SCOPES),
              st.sampled_from(DERIVED)),
)


def scalars(dtype: DType) -> st.SearchStrategy:
    """Python scalars that are exact attribute values of ``dtype`` (floats include nan,
    +-inf and -0.0; ints include the dtype's extremes)."""
    if dtype is DType.bool:
        return st.booleans()
    if dtype in INT_DTYPES:
        lo, hi = int(np.iinfo(dtype.np).min), int(np.iinfo(dtype.np).max)
        return st.one_of(st.integers(-5, 5), st.sampled_from([lo, hi]))
    special = st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.5, 1e-30])
    width = 32 if dtype is DType.f32 else 64
    return st.one_of(special, st.floats(width=width)).map(lambda v: P.constant_value(v, dtype))


class _Gen:
    """Draws ops into one function body. ``operand`` finds or makes values of the kind
    each op needs, so every primitive can always be emitted."""

    def __init__(self, draw: Callable, depth: int, params: tuple[TensorType, ...] | None) -> None:
        self.draw, self.depth, self.b = draw, depth, Builder()
        self.fixed_params = params is not None  # a nested function's signature is given
        self.params = [Value(t, draw(st.sampled_from(PARAM_NAMES))) for t in params or ()]
        self.pool: list[Value] = list(self.params)

    def shape(self, min_rank: int = 0, max_rank: int = 3, min_dim: int = 0) -> tuple[int, ...]:
        dims = st.integers(min_dim, 3)
        return tuple(self.draw(st.lists(dims, min_size=min_rank, max_size=max_rank)))

    def operand(
        self,
        dtypes: frozenset[DType],
        shape: tuple[int, ...] | None = None,
        where: Callable[[Value], bool] = lambda v: True,
        min_rank: int = 0,
        min_dim: int = 0,
    ) -> Value:
        fits = [
            v for v in self.pool
            if v.dtype in dtypes and (shape is None or v.shape == shape) and v.type.ndim >= min_rank
            and where(v)
        ]  # fmt: skip
        if fits and self.draw(st.integers(0, 3)):
            return self.draw(st.sampled_from(fits))
        dtype = self.draw(st.sampled_from(sorted(dtypes, key=str)))
        if shape is None:
            shape = self.shape(min_rank, min_dim=min_dim)
        source = self.draw(st.sampled_from(["param", "constant", "iota"]))
        if source == "param" and not self.fixed_params:
            v = Value(TensorType(dtype, shape), self.draw(st.sampled_from(PARAM_NAMES)))
            self.params.append(v)
        elif source == "iota" and shape and dtype is not DType.bool:
            v = self.b.op(P.iota, shape=shape, dimension=self.draw(st.integers(0, len(shape) - 1)),
                          dtype=dtype)
        else:
            v = self.constant(dtype, shape)
        self.pool.append(v)
        return v

    def constant(self, dtype: DType, shape: tuple[int, ...]) -> Value:
        size = math.prod(shape)
        if size <= 6 and self.draw(st.booleans()):
            value = tuple(self.draw(st.lists(scalars(dtype), min_size=size, max_size=size)))
        else:
            value = self.draw(scalars(dtype))
        return self.b.op(P.constant, value=value, shape=shape, dtype=dtype)

    def emit(self, prim: P.Primitive) -> None:
        """Appends one ``prim`` op (plus any sources its operands need)."""
        self.b.loc = self.draw(_locs)
        outs = EMITTERS[prim](self, prim)
        self.pool.extend(outs)

    def function(self, name: str, result_types: tuple[TensorType, ...] | None) -> Function:
        if result_types is None:
            n = self.draw(st.integers(0 if self.pool else 1, 3))
            results = [self.draw(st.sampled_from(self.pool)) if self.pool else
                       self.operand(frozenset(ALL_DTYPES)) for _ in range(n)]
        else:
            results = [self.operand(frozenset({t.dtype}), t.shape) for t in result_types]
        return self.b.function(name, tuple(self.params), tuple(results))


def _elementwise(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(prim.dtypes)
    others = [g.operand(frozenset({x.dtype}), x.shape) for _ in range((prim.arity or 1) - 1)]
    return (g.b.op(prim, x, *others),)


def _select(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(P.ANY)
    pred = g.operand(frozenset({DType.bool}), x.shape)
    return (g.b.op(prim, pred, x, g.operand(frozenset({x.dtype}), x.shape)),)


def _convert(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    return (g.b.op(prim, g.operand(P.ANY), dtype=g.draw(st.sampled_from(ALL_DTYPES))),)


def _broadcast_in_dim(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(P.ANY)
    rank = x.type.ndim + g.draw(st.integers(0, 2))
    dims = tuple(sorted(g.draw(st.permutations(range(rank)))[: x.type.ndim]))
    shape = [g.draw(st.integers(0, 3)) for _ in range(rank)]
    for i, d in enumerate(dims):
        if x.shape[i] != 1:
            shape[d] = x.shape[i]
    return (g.b.op(prim, x, shape=tuple(shape), dims=dims),)


def _reshape_target(g: _Gen, size: int) -> tuple[int, ...]:
    if size == 0:
        shape = list(g.shape())
        shape.insert(g.draw(st.integers(0, len(shape))), 0)
        return tuple(shape)
    factors, n, p = [], size, 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    shape = [1] * g.draw(st.integers(1 if factors else 0, 3))
    for f in factors:
        shape[g.draw(st.integers(0, len(shape) - 1))] *= f
    return tuple(shape)


def _reshape(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(P.ANY)
    return (g.b.op(prim, x, shape=_reshape_target(g, x.type.size)),)


def _transpose(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(P.ANY)
    return (g.b.op(prim, x, perm=tuple(g.draw(st.permutations(range(x.type.ndim))))),)


def _slice(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(P.ANY)
    start = tuple(g.draw(st.integers(0, n)) for n in x.shape)
    limit = tuple(g.draw(st.integers(s, n)) for s, n in zip(start, x.shape, strict=True))
    stride = tuple(g.draw(st.integers(1, 3)) for _ in x.shape)
    return (g.b.op(prim, x, start=start, limit=limit, stride=stride),)


def _concatenate(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(P.ANY, min_rank=1)
    axis = g.draw(st.integers(0, x.type.ndim - 1))
    others = []
    for _ in range(g.draw(st.integers(0, 2))):
        shape = x.shape[:axis] + (g.draw(st.integers(0, 3)),) + x.shape[axis + 1 :]
        others.append(g.operand(frozenset({x.dtype}), shape))
    return (g.b.op(prim, x, *others, axis=axis),)


def _pad(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(P.ANY)
    lo = tuple(g.draw(st.integers(0, 2)) for _ in x.shape)
    hi = tuple(g.draw(st.integers(0, 2)) for _ in x.shape)
    return (g.b.op(prim, x, lo=lo, hi=hi, value=g.draw(scalars(x.dtype))),)


def _reduce(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(prim.dtypes)
    # Only reduce_sum and reduce_prod have an identity: the others never reduce a zero-size axis.
    allowed = [a for a in range(x.type.ndim) if prim in (P.reduce_sum, P.reduce_prod) or x.shape[a]]
    axes = g.draw(st.permutations(allowed))[: g.draw(st.integers(0, len(allowed)))]
    return (g.b.op(prim, x, axes=tuple(axes)),)


def _arg_reduce(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(prim.dtypes, where=lambda v: any(v.shape), min_rank=1, min_dim=1)
    axis = g.draw(st.sampled_from([a for a, n in enumerate(x.shape) if n]))
    return (g.b.op(prim, x, axis=axis),)


def _dot_general(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    lhs = g.operand(prim.dtypes)
    laxes = g.draw(st.permutations(range(lhs.type.ndim)))
    nb = g.draw(st.integers(0, len(laxes)))
    nc = g.draw(st.integers(0, len(laxes) - nb))
    lb, lc = tuple(laxes[:nb]), tuple(laxes[nb : nb + nc])
    rank = nb + nc + g.draw(st.integers(0, 2))
    raxes = g.draw(st.permutations(range(rank)))
    rb, rc = tuple(raxes[:nb]), tuple(raxes[nb : nb + nc])
    shape = [g.draw(st.integers(0, 3)) for _ in range(rank)]
    for la, ra in zip(lb + lc, rb + rc, strict=True):
        shape[ra] = lhs.shape[la]
    rhs = g.operand(frozenset({lhs.dtype}), tuple(shape))
    return (g.b.op(prim, lhs, rhs, contract=(lc, rc), batch=(lb, rb)),)


def _gather(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(prim.dtypes, min_rank=1)
    axis = g.draw(st.integers(0, x.type.ndim - 1))
    n = g.draw(st.integers(0, 3)) if x.shape[axis] else 0
    idx = g.operand(INT_DTYPES, x.shape[:axis] + (n,) + x.shape[axis + 1 :])
    return (g.b.op(prim, x, idx, axis=axis),)


def _scatter_add(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    upd = g.operand(prim.dtypes, min_rank=1)
    axis = g.draw(st.integers(0, upd.type.ndim - 1))
    idx = g.operand(INT_DTYPES, upd.shape)
    size = g.draw(st.integers(1 if upd.shape[axis] else 0, 4))
    return (g.b.op(prim, upd, idx, axis=axis, size=size),)


def _cumsum(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(prim.dtypes, min_rank=1)
    axis = g.draw(st.integers(0, x.type.ndim - 1))
    return (g.b.op(prim, x, axis=axis, reverse=g.draw(st.booleans())),)


def _conv(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    groups = g.draw(st.integers(1, 2))
    rank = g.draw(st.integers(3, 4))
    lhs = g.operand(prim.dtypes, where=lambda v: v.type.ndim == rank and v.shape[1] % groups == 0)
    if lhs.type.ndim != rank or lhs.shape[1] % groups:
        lhs = g.operand(frozenset({lhs.dtype}), (g.draw(st.integers(0, 2)), groups * g.draw(st.integers(0, 2)))
                        + tuple(g.draw(st.integers(0, 3)) for _ in range(rank - 2)))
    nsp = rank - 2
    window = tuple(g.draw(st.integers(1, 3)) for _ in range(nsp))
    rhs = g.operand(frozenset({lhs.dtype}), (groups * g.draw(st.integers(0, 2)), lhs.shape[1] // groups) + window)
    ints = st.lists(st.integers(-1, 2), min_size=nsp, max_size=nsp).map(tuple)
    positive = st.lists(st.integers(1, 2), min_size=nsp, max_size=nsp).map(tuple)
    return (g.b.op(prim, lhs, rhs, strides=g.draw(positive), lo=g.draw(ints), hi=g.draw(ints),
                   lhs_dilation=g.draw(positive), rhs_dilation=g.draw(positive), groups=groups),)


def _pool_attrs(g: _Gen, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    n = len(shape)
    return {
        "window": tuple(g.draw(st.integers(1, 3)) for _ in range(n)),
        "strides": tuple(g.draw(st.integers(1, 2)) for _ in range(n)),
        "lo": tuple(g.draw(st.integers(-1, 1)) for _ in range(n)),
        "hi": tuple(g.draw(st.integers(-1, 1)) for _ in range(n)),
    }


def _pool(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(prim.dtypes)
    attrs = _pool_attrs(g, x.shape)
    if prim is P.avg_pool_scatter:
        out = P.pool_output_shape(x.shape, **attrs)
        return (g.b.op(prim, g.operand(frozenset({x.dtype}), out), **attrs, shape=x.shape),)
    if prim is P.max_pool_gather:
        return (g.b.op(prim, x, g.operand(frozenset({x.dtype}), x.shape), **attrs),)
    if prim is P.max_pool_scatter:
        out = P.pool_output_shape(x.shape, **attrs)
        return (g.b.op(prim, x, g.operand(frozenset({x.dtype}), out), **attrs),)
    return (g.b.op(prim, x, **attrs),)


def _iota(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    shape = g.shape(min_rank=1)
    dtype = g.draw(st.sampled_from(sorted(P.NUMERIC, key=str)))
    dimension = g.draw(st.integers(0, len(shape) - 1))
    return (g.b.op(prim, shape=shape, dimension=dimension, dtype=dtype),)


def _threefry(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    x = g.operand(prim.dtypes)
    others = [g.operand(prim.dtypes, x.shape) for _ in range(3)]
    return (g.b.op(prim, x, *others, word=g.draw(st.integers(0, 1))),)


def _constant(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    return (g.constant(g.draw(st.sampled_from(ALL_DTYPES)), g.shape()),)


def _types(g: _Gen, max_size: int) -> tuple[TensorType, ...]:
    kinds = st.tuples(st.sampled_from(ALL_DTYPES), st.lists(st.integers(0, 3), max_size=2))
    return tuple(TensorType(d, tuple(s)) for d, s in g.draw(st.lists(kinds, max_size=max_size)))


def _nested(g: _Gen, params: tuple[TensorType, ...], results: tuple[TensorType, ...]) -> Function:
    inner = _Gen(g.draw, g.depth + 1, params)
    # Deeper functions may only call nested functions (custom_vjp_call, loops, branches)
    # twice removed, to stay small.
    prims = [p for p in P.PRIMITIVES.values() if p.kind is not P.OpKind.CALL or inner.depth < 2]
    for _ in range(g.draw(st.integers(0, 3))):
        inner.emit(g.draw(st.sampled_from(prims)))
    return inner.function(g.draw(st.sampled_from(FUNCTION_NAMES)), results)


def _custom_vjp_call(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    inputs = [g.operand(P.ANY) for _ in range(g.draw(st.integers(1, 2)))]
    in_types = tuple(v.type for v in inputs)
    out_types = _types(g, 2)  # zero outputs prints an op line that starts with '='
    fun = _nested(g, in_types, out_types)
    if g.draw(st.booleans()):
        fwd, residuals = fun, ()  # one function object referenced twice: printed once
    else:
        residuals = _types(g, 2)
        fwd = _nested(g, in_types, out_types + residuals)
    bwd = _nested(g, residuals + out_types, in_types)
    return g.b.emit(prim, tuple(inputs), {"fun": fun, "fwd": fwd, "bwd": bwd})


def _checkpoint(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    inputs = [g.operand(P.ANY) for _ in range(g.draw(st.integers(1, 2)))]
    body = _nested(g, tuple(v.type for v in inputs), _types(g, 2))
    return g.b.emit(prim, tuple(inputs), {"body": body, "prevent_cse": g.draw(st.booleans())})


def _scan(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    consts = [g.operand(P.ANY) for _ in range(g.draw(st.integers(0, 1)))]
    carry = [g.operand(P.ANY) for _ in range(g.draw(st.integers(0 if consts else 1, 2)))]
    xs = [g.operand(P.ANY, min_rank=1) for _ in range(g.draw(st.integers(0, 1)))]
    length = xs[0].shape[0] if xs else g.draw(st.integers(0, 2))
    xs += [g.operand(P.ANY, shape=(length,) + g.shape(max_rank=1)) for _ in range(g.draw(st.integers(0, 1)))]
    slices = tuple(v.type.with_shape(v.shape[1:]) for v in xs)
    carry_types = tuple(v.type for v in carry)
    body = _nested(g, tuple(v.type for v in consts) + carry_types + slices, carry_types + _types(g, 1))
    return g.b.emit(prim, (*consts, *carry, *xs), {"body": body, "length": length, "reverse": g.draw(st.booleans()),
                                                   "num_consts": len(consts), "num_carry": len(carry)})


def _cond(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    index = g.operand(frozenset({DType.i32}), shape=())
    operands = [g.operand(P.ANY) for _ in range(g.draw(st.integers(0, 2)))]
    in_types, out_types = tuple(v.type for v in operands), _types(g, 2)
    branches = tuple(_nested(g, in_types, out_types) for _ in range(g.draw(st.integers(1, 3))))
    return g.b.emit(prim, (index, *operands), {"branches": branches})


def _while_loop(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    """A loop that ends: the carry starts with a counter the body increments and the
    cond compares with a small bound."""
    cond_consts = [g.operand(P.ANY) for _ in range(g.draw(st.integers(0, 1)))]
    body_consts = [g.operand(P.ANY) for _ in range(g.draw(st.integers(0, 1)))]
    counter = g.b.constant(g.draw(st.integers(-1, 3)), DType.i32)
    carry = [counter] + [g.operand(P.ANY) for _ in range(g.draw(st.integers(0, 2)))]
    carry_types = tuple(v.type for v in carry)

    def counting(fn: Function, n_consts: int, result: Callable[[Builder, Value], tuple[Value, ...]]) -> Function:
        b = Builder()
        b.ops = list(fn.ops)
        return b.function(fn.name, fn.params, result(b, fn.params[n_consts]) + fn.results)

    nc, nb = len(cond_consts), len(body_consts)
    cond = counting(_nested(g, tuple(v.type for v in cond_consts) + carry_types, ()), nc,
                    lambda b, i: (b.op(P.lt, i, b.constant(g.draw(st.integers(0, 3)), DType.i32)),))
    body = counting(_nested(g, tuple(v.type for v in body_consts) + carry_types, carry_types[1:]), nb,
                    lambda b, i: (b.op(P.add, i, b.constant(1, DType.i32)),))
    return g.b.emit(prim, (*cond_consts, *body_consts, *carry),
                    {"cond": cond, "body": body, "cond_nconsts": nc, "body_nconsts": nb})


def _collective(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    """Collectives over the one process a test runs in (size 1, root 0): identities,
    so drawn functions still run."""
    if prim is P.axis_index:
        return (g.b.op(prim),)
    if prim in (P.all_gather, P.psum_scatter):
        x = g.operand(prim.dtypes, min_rank=1)
        return (g.b.op(prim, x, axis=g.draw(st.integers(0, x.type.ndim - 1)), size=1),)
    x = g.operand(prim.dtypes)
    if prim is P.psum:  # overlapped or not: the runtime may split it into a start and a wait
        return (g.b.op(prim, x, overlap=g.draw(st.booleans())),)
    return (g.b.op(prim, x, root=0) if prim is P.pbroadcast else g.b.op(prim, x),)


_NO_CALLBACK = register_callback(lambda values: None)


def _debug_callback(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    """A callback (doing nothing) of 1-2 values, after a token or not."""
    values = [g.operand(prim.dtypes) for _ in range(g.draw(st.integers(1, 2)))]
    token = g.draw(st.booleans())
    if token:
        values.insert(0, g.operand(frozenset({DType.bool}), ()))
    return (g.b.op(prim, *values, callback=_NO_CALLBACK, token=token, batch=()),)


def _linalg(g: _Gen, prim: P.Primitive) -> tuple[Value, ...]:
    """A linear-algebra op over 0-2 leading axes and matrices of order 0-3 (any values:
    where LAPACK fails the result is NaN; qr's matrices are not wide: it has no
    derivative for those)."""
    dtypes = frozenset({g.draw(st.sampled_from(sorted(prim.dtypes, key=str)))})
    batch = g.shape(max_rank=2)
    n = g.draw(st.integers(0, 3))
    cols = g.draw(st.integers(0, 3)) if prim is P.svd else g.draw(st.integers(0, n)) if prim is P.qr else n
    a = g.operand(dtypes, batch + (n, cols))
    if prim in (P.solve, P.triangular_solve):
        rhs = g.operand(dtypes, batch + (n, g.draw(st.integers(0, 3))))
        attrs = {} if prim is P.solve else {"lower": g.draw(st.booleans()), "transpose_a": g.draw(st.booleans())}
        return (g.b.op(prim, a, rhs, **attrs),)
    return tuple(g.b.emit(prim, (a,), {}))


# How to draw an op of each primitive (``tests/test_rules.py`` checks none is missing).
EMITTERS: dict[P.Primitive, Callable[[_Gen, P.Primitive], tuple[Value, ...]]] = {
    **{p: _elementwise for p in P.UNARY_ELEMENTWISE + P.BINARY_ELEMENTWISE},
    P.select: _select, P.convert: _convert, P.broadcast_in_dim: _broadcast_in_dim,
    P.reshape: _reshape, P.transpose: _transpose, P.slice: _slice, P.concatenate: _concatenate,
    P.pad: _pad, P.reduce_sum: _reduce, P.reduce_max: _reduce, P.reduce_min: _reduce,
    P.reduce_prod: _reduce, P.cumprod: _cumsum,
    P.argmax: _arg_reduce, P.argmin: _arg_reduce, P.dot_general: _dot_general, P.gather: _gather,
    P.scatter_add: _scatter_add, P.cumsum: _cumsum, P.iota: _iota, P.constant: _constant,
    P.custom_vjp_call: _custom_vjp_call, P.conv: _conv, P.max_pool: _pool, P.avg_pool: _pool,
    P.max_pool_gather: _pool, P.max_pool_scatter: _pool, P.avg_pool_scatter: _pool,
    P.threefry2x32: _threefry, P.scan: _scan, P.cond: _cond, P.while_loop: _while_loop,
    P.checkpoint: _checkpoint,
    **{p: _collective for p in P.COLLECTIVES},
    P.debug_callback: _debug_callback,
    **{p: _linalg for p in P.LINALG},
}  # fmt: skip


@st.composite
def random_functions(draw: Callable, must_use: str | None = None, max_ops: int = 8) -> Function:
    """Valid functions over the whole primitive set (see the module docstring).

    ``max_ops`` bounds the ops drawn for the top-level body (sources that operands need
    and nested functions come on top); ``must_use`` names a primitive that every drawn
    function contains at top level.
    """
    g = _Gen(draw, 0, None)
    for _ in range(draw(st.integers(0, 3))):
        t = TensorType(draw(st.sampled_from(ALL_DTYPES)), g.shape())
        g.params.append(Value(t, draw(st.sampled_from(PARAM_NAMES))))
    g.pool = list(g.params)
    prims = sorted(P.PRIMITIVES.values(), key=lambda p: p.name)
    names = [draw(st.sampled_from(prims)) for _ in range(draw(st.integers(1, max_ops)))]
    if must_use is not None:
        names.insert(draw(st.integers(0, len(names))), P.PRIMITIVES[must_use])
    for prim in names:
        g.emit(prim)
    return g.function(draw(st.sampled_from(FUNCTION_NAMES)), None)


_SAFE_UNARY = (P.neg, P.abs, P.exp, P.tanh, P.logistic, P.sin, P.cos)
_BINARY = (P.add, P.sub, P.mul, P.div, P.max, P.min)


@st.composite
def random_elementwise_programs(
    draw: Callable, max_ops: int = 8, dtypes: tuple[DType, ...] = (DType.f32, DType.f64)
) -> Function:
    """Model-like float functions for fusion/codegen tests (see the module docstring).

    Parameters are named ``x0, x1, ...``; the ops made in step ``k`` (an op and the
    broadcasts or constant it needs) carry ``SourceLoc("prog.py", k)``.
    """
    dtype = draw(st.sampled_from(dtypes))
    b = Builder()
    base = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    params = []
    for i in range(draw(st.integers(1, 3))):
        rank = draw(st.integers(0, len(base)))
        shape = tuple(n if draw(st.integers(0, 3)) else 1 for n in base[len(base) - rank :])
        params.append(Value(TensorType(dtype, shape), f"x{i}"))
    pool = list(params)

    def broadcastable(x: Value, y: Value) -> bool:
        return all(a == c or 1 in (a, c) for a, c in zip(x.shape[::-1], y.shape[::-1], strict=False))

    def aligned(x: Value, y: Value) -> tuple[Value, Value]:
        # The tracer's NumPy broadcasting: right-align, stretch 1s, add leading axes.
        rank = max(x.type.ndim, y.type.ndim)
        x_dims, y_dims = ((1,) * (rank - v.type.ndim) + v.shape for v in (x, y))
        shape = tuple(max(a, c) for a, c in zip(x_dims, y_dims, strict=True))
        return b.broadcast(x, shape), b.broadcast(y, shape)

    for line in range(1, draw(st.integers(1, max_ops)) + 1):
        b.loc = SourceLoc("prog.py", line)
        x = draw(st.sampled_from(pool))
        kind = draw(st.sampled_from(
            ["unary", "binary", "binary", "select", "scalar", "reduce", "transpose", "reshape",
             "slice", "broadcast"]))  # fmt: skip
        if kind == "unary":
            out = b.op(draw(st.sampled_from(_SAFE_UNARY)), x)
        elif kind in ("binary", "select"):
            y = draw(st.sampled_from([v for v in pool if broadcastable(x, v)]))
            xb, yb = aligned(x, y)
            if kind == "binary":
                out = b.op(draw(st.sampled_from(_BINARY)), xb, yb)
            else:
                out = b.op(P.select, b.op(P.gt, xb, yb), xb, yb)
        elif kind == "scalar":
            out = b.op(P.mul, x, b.full_like(draw(st.sampled_from([0.5, 2.0, -1.0])), x))
        elif kind == "reduce" and x.type.ndim:
            axes = draw(st.permutations(range(x.type.ndim)))[: draw(st.integers(1, x.type.ndim))]
            reduce = draw(st.sampled_from([P.reduce_sum, P.reduce_max]))
            out = b.op(reduce, x, axes=tuple(sorted(axes)))
        elif kind == "transpose" and x.type.ndim > 1:
            out = b.op(P.transpose, x, perm=tuple(draw(st.permutations(range(x.type.ndim)))))
        elif kind == "reshape":
            out = b.op(P.reshape, x, shape=(x.type.size,) if x.type.ndim != 1 else (1, x.type.size))
        elif kind == "slice" and x.type.ndim:
            start = tuple(draw(st.integers(0, n - 1)) for n in x.shape)
            limit = tuple(draw(st.integers(s + 1, n)) for s, n in zip(start, x.shape, strict=True))
            stride = tuple(draw(st.integers(1, 2)) for _ in x.shape)
            out = b.op(P.slice, x, start=start, limit=limit, stride=stride)
        else:  # broadcast: a new leading axis
            out = b.op(P.broadcast_in_dim, x, shape=(draw(st.integers(1, 3)),) + x.shape,
                       dims=tuple(range(1, x.type.ndim + 1)))
        pool.append(out)
    results = [pool[-1]]
    if len(pool) > 2 and draw(st.booleans()):
        results.append(draw(st.sampled_from(pool[len(params) : -1] or pool[:-1])))
    return b.function("program", tuple(params), tuple(results))

