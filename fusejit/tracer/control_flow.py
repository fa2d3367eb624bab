"""Loops and branches with JAX's signatures: ``scan``, ``fori_loop``, ``while_loop``,
``cond``, ``switch`` (``fj.lax``).

Each traces its Python functions once, on values of the carry's and slices' types, into
nested IR functions held by one ``scan``/``while_loop``/``cond`` op
(``fusejit.ir.control_flow``). Traced values a body closes over become the op's leading
"consts" operands. Outside any trace the op runs at once through the reference
interpreter, so the functions work eagerly too. Python ``for`` loops over traced values
still unroll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.core import Function, Value
from fusejit.ir.dtypes import DType, promote_weak
from fusejit.ir.types import TensorType
from fusejit.tracer import numpy_api as fnp
from fusejit.tracer.pytree import TreeDef, tree_flatten, tree_flatten_with_path, tree_unflatten
from fusejit.tracer.tracing import (
    TracedArray,
    argument_type,
    bind,
    eval_function,
    shape_of,
    trace_function,
    with_weak,
)

__all__ = ["cond", "fori_loop", "scan", "switch", "while_loop"]


def _leaf_types(tree: Any, what: str) -> tuple[list[Any], TreeDef, list[TensorType], list[bool], list[str]]:
    """Leaves, structure, IR types, weak flags and paths of a pytree argument."""
    with_paths, treedef = tree_flatten_with_path(tree, what)
    types, weak = [], []
    for path, leaf in with_paths:
        typed = argument_type(leaf, path)
        if typed is None:
            raise TypeError(f"{path} is a {type(leaf).__name__}, not an array or a scalar")
        types.append(typed[0])
        weak.append(typed[1])
    return [leaf for _, leaf in with_paths], treedef, types, weak, [p for p, _ in with_paths]


def _operand(leaf: Any, t: TensorType) -> Any:
    """A leaf as an operand of exactly type ``t`` (a weakly typed leaf may take another
    dtype, see ``_promote_weak``)."""
    if isinstance(leaf, TracedArray):
        return leaf if leaf.value.dtype == t.dtype else fnp.astype(leaf, t.dtype.np)
    return np.asarray(leaf, dtype=t.dtype.np)


def _promote_weak(
    types: list[TensorType], weak: list[bool], results: Sequence[Value], same_tree: bool
) -> list[TensorType] | None:
    """The carry types with each weakly typed component (a Python scalar) that the body
    turns into a stronger dtype of the same shape given that dtype, as JAX re-traces a
    loop with promoted weak carries; None if nothing changes."""
    if not same_tree:
        return None
    new = list(types)
    for k, (t, w, r) in enumerate(zip(types, weak, results, strict=True)):
        if w and r.shape == t.shape and r.dtype != t.dtype and promote_weak(r.dtype, t.dtype) == r.dtype:
            new[k] = r.type
    return None if new == types else new


def _cast_weak(leaf: Any, t: TensorType) -> Any:
    """A weakly typed result (a Python scalar, a weak tracer) takes the carry's dtype, as
    JAX's weak types do; anything else is returned as is and checked by the caller."""
    typed = argument_type(leaf, "")
    if typed is not None and typed[1] and typed[0].shape == t.shape and typed[0].dtype != t.dtype:
        return fnp.astype(leaf, t.dtype.np)
    return leaf


def _check_same(
    fn_name: str,
    what: str,
    paths: Sequence[str],
    expected: Sequence[TensorType],
    got: Sequence[TensorType],
    got_tree: TreeDef,
    expected_tree: TreeDef,
) -> None:
    if got_tree != expected_tree:
        raise TypeError(
            f"{fn_name}: {what} output and input must have the same structure; the input "
            f"is {expected_tree} but the output is {got_tree}"
        )
    for path, e, g in zip(paths, expected, got, strict=True):
        if e != g:
            raise TypeError(
                f"{fn_name}: {what} output and input must have identical types; the input "
                f"component {path} has type {e} but the corresponding output component has "
                f"type {g}"
            )


# ---------------------------------------------------------------------------------------
# scan


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
) -> tuple[Any, Any]:
    """Loops ``f(carry, x) -> (carry, y)`` over the leading axis of ``xs`` (``jax.lax.scan``).

    ``init`` and ``xs`` are pytrees of arrays/scalars; every leaf of ``xs`` has the same
    leading length (``length``, required when ``xs`` is None). Returns ``(carry, ys)``:
    the final carry and ``f``'s ``y`` outputs stacked along a new leading axis (shape
    ``(length, *y.shape)``, ``y``'s dtype). With ``reverse`` the slices are visited from
    last to first (``ys[i]`` still belongs to ``xs[i]``). ``f`` is traced once into one
    ``scan`` op; it must return the carry with the structure and types of ``init``
    (Python scalars and weakly typed values take the carry's dtype).

    ``unroll=k`` (``True``: the whole length) runs ``k`` steps per iteration of the
    loop, as ``jax.lax.scan``: the body is traced once and its IR copied ``k`` times into
    the loop body, which then walks ``xs`` in blocks of ``k`` (a second scan of the
    original body takes the ``length % k`` steps left). The results are those of
    ``unroll=1``, step for step; the compiled loop makes ``k`` times fewer driver calls
    and fusion sees ``k`` consecutive steps (it pays when a step is a few small kernels,
    where a driver call costs more than the step).

    Raises ``TypeError`` naming the carry component whose type or structure changes, or
    when ``f`` does not return a pair; ``ValueError`` for mismatched or missing lengths.
    """
    if not (isinstance(unroll, bool) or (isinstance(unroll, int) and unroll >= 1)):
        raise ValueError(f"scan: unroll={unroll!r} must be a positive int or a bool")
    name = getattr(f, "__name__", "f")
    return _scan(f, init, xs, length, reverse, f"scan body {name}", lambda path: path, unroll)


def _unrolled_scan(
    body: Function, consts: list[Any], carry: list[Any], xs: list[Any], n: int, reverse: bool, k: int
) -> tuple[Any, ...]:
    """The outputs of ``scan(body)`` over ``n`` steps computed ``k`` steps per iteration:
    a scan over ``n // k`` blocks of ``k`` slices whose body applies ``body`` to each
    slice of its block in turn (in the scan's direction) and stacks the ``y``s by slice
    index, then a scan of ``body`` over the ``n % k`` slices left. The steps run in the
    order and on the values of one scan of ``n`` steps: forward, the blocks come first;
    in reverse, the steps left (the last slices) do."""
    nc, nk = len(consts), len(carry)
    ny = len(body.results) - nk
    blocks, rest = divmod(n, k)
    order = range(k - 1, -1, -1) if reverse else range(k)

    def block_body(*values: Any) -> tuple[Any, ...]:
        cs, state, block = values[:nc], list(values[nc : nc + nk]), values[nc + nk :]
        ys: list[Any] = [None] * k
        for j in order:
            outs = eval_function(body, *cs, *state, *(x[j] for x in block))
            state, ys[j] = list(outs[:nk]), outs[nk:]
        return (*state, *(fnp.stack([ys[j][m] for j in range(k)]) for m in range(ny)))

    params = [p.type for p in body.params]
    block_types = [t.with_shape((k,) + t.shape) for t in params[nc + nk :]]
    unrolled, captured = _trace(
        block_body, params[:nc] + params[nc : nc + nk] + block_types, [False] * len(params),
        f"{body.name}_unrolled{k}",
    )
    assert not captured, "the unrolled body takes the consts as parameters"
    # ``_trace`` puts captured values first: with none, the params are in the order given.
    head = [fnp.reshape(x[: blocks * k], (blocks, k) + tuple(x.shape[1:])) for x in xs]
    tail = [x[blocks * k :] for x in xs]

    def run_blocks(state: list[Any]) -> tuple[Any, ...]:
        return _bind(P.scan, consts + state + head, body=unrolled, length=blocks, reverse=reverse,
                     num_consts=nc, num_carry=nk)

    def run_rest(state: list[Any]) -> tuple[Any, ...]:
        return _bind(P.scan, consts + state + tail, body=body, length=rest, reverse=reverse,
                     num_consts=nc, num_carry=nk)

    if not rest:
        outs = run_blocks(carry)
        return (*outs[:nk], *(fnp.reshape(y, (n,) + tuple(y.shape[2:])) for y in outs[nk:]))
    first, second = (run_rest, run_blocks) if reverse else (run_blocks, run_rest)
    a = first(carry)
    b = second(list(a[:nk]))
    block_ys, rest_ys = (b[nk:], a[nk:]) if reverse else (a[nk:], b[nk:])
    ys = [
        fnp.concatenate([fnp.reshape(y, (blocks * k,) + tuple(y.shape[2:])), r])
        for y, r in zip(block_ys, rest_ys, strict=True)
    ]
    return (*b[:nk], *ys)


def _scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any,
    length: int | None,
    reverse: bool,
    what: str,
    relabel: Callable[[str], str],
    unroll: int | bool = 1,
) -> tuple[Any, Any]:
    """``scan``; errors about the carry name ``what`` and the carry's ``relabel``ed paths."""
    init_leaves, init_tree, carry_types, carry_weak, carry_paths = _leaf_types(init, "init")
    carry_paths = [relabel(p) for p in carry_paths]
    xs_leaves, xs_tree, xs_types, _, xs_paths = _leaf_types(xs, "xs")
    lengths = {int(length)} if length is not None else set()
    for path, t in zip(xs_paths, xs_types, strict=True):
        if t.ndim == 0:
            raise ValueError(f"scan: {path} is a scalar; every leaf of xs needs a leading axis to scan over")
        lengths.add(t.shape[0])
    if len(lengths) != 1:
        if not lengths:
            raise ValueError("scan: xs has no leaves; pass length=")
        shown = ", ".join(f"{p}: {t.shape[0]}" for p, t in zip(xs_paths, xs_types, strict=True))
        raise ValueError(
            f"scan: the leading axes differ ({shown}{'' if length is None else f', length={length}'})"
        )
    (n,) = lengths
    slice_types = [t.with_shape(t.shape[1:]) for t in xs_types]
    nk = len(init_leaves)
    name = getattr(f, "__name__", "f")
    trees: dict[str, TreeDef] = {}

    def body(*values: Any) -> tuple[Any, ...]:
        out = f(tree_unflatten(init_tree, values[:nk]), tree_unflatten(xs_tree, values[nk:]))
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"{what} must return a pair (carry, y), got {type(out).__name__}")
        c_leaves, trees["carry"] = tree_flatten(out[0])
        if trees["carry"] == init_tree:
            c_leaves = [_cast_weak(c, t) for c, t in zip(c_leaves, carry_types, strict=True)]
        y_leaves, trees["y"] = tree_flatten(out[1])
        return (*c_leaves, *y_leaves)

    for _ in range(2):  # once more if a weakly typed carry must take the body's dtype
        fn, captured = _trace(
            body, carry_types + slice_types, carry_weak + [False] * len(slice_types), f"{name}_scan_body"
        )
        promoted = _promote_weak(carry_types, carry_weak, fn.results[:nk], trees["carry"] == init_tree)
        if promoted is None:
            break
        carry_types = promoted
    _check_same(
        what,
        "the carry",
        carry_paths,
        carry_types,
        [r.type for r in fn.results[:nk]],
        trees["carry"],
        init_tree,
    )
    consts, carry = captured, _operands(init_leaves, carry_types)
    xs_ops = _operands(xs_leaves, xs_types)
    k = n if unroll is True else min(int(unroll), n)
    if k > 1:
        outs = _unrolled_scan(fn, consts, carry, xs_ops, n, bool(reverse), k)
    else:
        outs = _bind(
            P.scan, consts + carry + xs_ops, body=fn, length=n, reverse=bool(reverse), num_consts=len(consts),
            num_carry=nk,
        )
    return tree_unflatten(init_tree, with_weak(outs[:nk], carry_weak)), tree_unflatten(trees["y"], outs[nk:])


# ---------------------------------------------------------------------------------------
# while_loop and fori_loop


def while_loop(cond_fun: Callable[[Any], Any], body_fun: Callable[[Any], Any], init_val: Any) -> Any:
    """Repeats ``val = body_fun(val)`` while ``cond_fun(val)`` is true (``jax.lax.while_loop``).

    ``cond_fun`` must return a boolean scalar; ``body_fun`` the carry with the structure
    and types of ``init_val``. Both are traced once into one ``while_loop`` op.
    Differentiable in forward mode only: reverse mode raises an error suggesting
    ``scan`` or ``fori_loop`` with static bounds (the trip count is unknown).

    Raises ``TypeError`` naming the carry component whose type changes, or when
    ``cond_fun`` does not return a boolean scalar.
    """
    leaves, tree, types, weak, paths = _leaf_types(init_val, "init_val")
    cond_name = getattr(cond_fun, "__name__", "cond_fun")
    body_name = getattr(body_fun, "__name__", "body_fun")
    trees: dict[str, TreeDef] = {}

    def cond_flat(*values: Any) -> Any:
        pred = cond_fun(tree_unflatten(tree, values))
        if shape_of(pred) != () or argument_type(pred, "")[0].dtype != DType.bool:
            shown = argument_type(pred, "")
            raise TypeError(
                f"while_loop: {cond_name} must return a boolean scalar, got "
                f"{shown[0] if shown else type(pred).__name__}"
            )
        return fnp.asarray(pred)

    def body_flat(*values: Any) -> tuple[Any, ...]:
        out, trees["body"] = tree_flatten(body_fun(tree_unflatten(tree, values)))
        if trees["body"] == tree:
            out = [_cast_weak(c, t) for c, t in zip(out, types, strict=True)]
        return tuple(out)

    for _ in range(2):  # once more if a weakly typed carry must take the body's dtype
        body_fn, body_caps = _trace(body_flat, types, weak, f"{body_name}_while_body")
        promoted = _promote_weak(types, weak, body_fn.results, trees["body"] == tree)
        if promoted is None:
            break
        types = promoted
    cond_fn, cond_caps = _trace(cond_flat, types, weak, f"{cond_name}_while_cond")
    _check_same(
        f"while_loop body {body_name}",
        "the carry",
        paths,
        types,
        [r.type for r in body_fn.results],
        trees["body"],
        tree,
    )
    outs = _bind(
        P.while_loop,
        cond_caps + body_caps + _operands(leaves, types),
        cond=cond_fn,
        body=body_fn,
        cond_nconsts=len(cond_caps),
        body_nconsts=len(body_caps),
    )
    return tree_unflatten(tree, with_weak(outs, weak))


def fori_loop(lower: Any, upper: Any, body_fun: Callable[[Any, Any], Any], init_val: Any) -> Any:
    """``val = body_fun(i, val)`` for ``i`` in ``range(lower, upper)`` (``jax.lax.fori_loop``).

    With Python/NumPy integer bounds it is a ``scan`` of ``upper - lower`` steps (so
    reverse-mode differentiable); with traced bounds a ``while_loop``. ``i`` has the
    bounds' integer dtype, weakly typed when both are Python ints (so ``x * i`` keeps a
    float32 ``x`` float32, as in JAX). Raises ``TypeError`` for non-integer bounds or a
    carry whose types change.
    """
    dtype = _bound_dtype(lower, upper)
    name = f"fori_loop body {getattr(body_fun, '__name__', 'body_fun')}"
    if not isinstance(lower, TracedArray) and not isinstance(upper, TracedArray):
        python_ints = type(lower) is int and type(upper) is int
        start = int(lower) if python_ints else np.asarray(lower, dtype)

        def step(carry: tuple[Any, Any], _: Any) -> tuple[tuple[Any, Any], None]:
            i, val = carry
            return (i + 1, body_fun(i, val)), None

        (_, val), _ = _scan(
            step,
            (start, init_val),
            None,
            max(int(upper) - int(lower), 0),
            False,
            name,
            lambda path: path.replace("init[1]", "init_val", 1).replace("init[0]", "i", 1),
        )
        return val

    def cond_fun(carry: tuple[Any, Any, Any]) -> Any:
        return carry[0] < carry[1]

    def body(carry: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
        i, hi, val = carry
        return i + np.asarray(1, dtype), hi, body_fun(i, val)

    start = (fnp.astype(lower, dtype), fnp.astype(upper, dtype), init_val)
    return while_loop(cond_fun, body, start)[2]


def _bound_dtype(lower: Any, upper: Any) -> np.dtype:
    dtypes = []
    for b, what in ((lower, "lower"), (upper, "upper")):
        typed = argument_type(b, what)
        if typed is None or typed[0].dtype not in P.INTS or typed[0].shape != ():
            raise TypeError(f"fori_loop: {what}={b!r} must be an integer scalar")
        dtypes.append(typed[0].dtype.np)
    return np.promote_types(*dtypes)


# ---------------------------------------------------------------------------------------
# cond and switch


def cond(pred: Any, true_fun: Callable[..., Any], false_fun: Callable[..., Any], *operands: Any) -> Any:
    """``true_fun(*operands)`` if ``pred`` else ``false_fun(*operands)`` (``jax.lax.cond``).

    ``pred`` is a boolean (or numeric: nonzero is true) scalar, possibly traced. Both
    functions are traced into one ``cond`` op and must return the same structure and
    types. Raises ``TypeError`` when ``pred`` is not a scalar or the branches differ.
    """
    typed = argument_type(pred, "pred")
    if typed is None or typed[0].shape != ():
        raise TypeError(f"cond: pred must be a scalar, got {typed[0] if typed else type(pred).__name__}")
    index = (
        fnp.astype(fnp.not_equal(pred, 0), np.int32)
        if typed[0].dtype != DType.bool
        else fnp.astype(pred, np.int32)
    )
    return _switch(index, (false_fun, true_fun), operands, "cond", ["false_fun", "true_fun"])


def switch(index: Any, branches: Sequence[Callable[..., Any]], *operands: Any) -> Any:
    """``branches[index](*operands)`` (``jax.lax.switch``); ``index`` is an integer scalar,
    possibly traced, clamped into ``[0, len(branches) - 1]``. All branches are traced into
    one ``cond`` op and must return the same structure and types. Raises ``TypeError``
    for a non-integer index or branches that differ, ``ValueError`` for no branches."""
    if not branches:
        raise ValueError("switch: branches is empty")
    typed = argument_type(index, "index")
    if typed is None or typed[0].shape != () or typed[0].dtype not in P.INTS:
        raise TypeError(
            f"switch: index must be an integer scalar, got {typed[0] if typed else type(index).__name__}"
        )
    if isinstance(index, TracedArray):
        # Clamped in int64 first, so that an out-of-range int64 does not wrap in int32.
        index = fnp.clip(index, 0, len(branches) - 1)
    else:
        index = min(max(int(index), 0), len(branches) - 1)
    labels = [f"branches[{k}] ({getattr(b, '__name__', type(b).__name__)})" for k, b in enumerate(branches)]
    return _switch(fnp.astype(index, np.int32), tuple(branches), operands, "switch", labels)


def _switch(
    index: Any,
    branches: tuple[Callable[..., Any], ...],
    operands: tuple[Any, ...],
    what: str,
    names: list[str],
) -> Any:
    leaves, tree, types, weak, _ = _leaf_types(operands, "operands")
    traced: list[tuple[Function, list[TracedArray]]] = []
    out_trees: list[TreeDef] = []
    for k, branch in enumerate(branches):

        def flat(*values: Any, branch: Callable[..., Any] = branch) -> tuple[Any, ...]:
            out, out_tree = tree_flatten(branch(*tree_unflatten(tree, values)))
            out_trees.append(out_tree)
            return tuple(out)

        traced.append(_trace(flat, types, weak, f"{getattr(branch, '__name__', 'branch')}_{what}_branch{k}"))
    for k in range(1, len(branches)):
        first, fn = traced[0][0], traced[k][0]
        if out_trees[k] != out_trees[0]:
            raise TypeError(
                f"{what}: {names[0]} and {names[k]} return different structures: "
                f"{out_trees[0]} and {out_trees[k]}"
            )
        a, b = [r.type for r in first.results], [r.type for r in fn.results]
        if a != b:
            i = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
            raise TypeError(
                f"{what}: {names[0]} and {names[k]} must return identical types; output {i} "
                f"is {a[i]} in {names[0]} and {b[i]} in {names[k]}"
            )
    # Every branch takes the values any branch captured, after the operands' consts.
    captured: list[TracedArray] = []
    for _, caps in traced:
        for c in caps:
            if not any(c is u for u in captured):
                captured.append(c)
    fns = []
    for fn, caps in traced:
        own = dict(zip(map(id, caps), fn.params[: len(caps)], strict=True))
        params = tuple(own.get(id(u)) or Value(u.value.type) for u in captured)
        fns.append(fn.replace(params=params + fn.params[len(caps) :]))
    outs = _bind(P.cond, [index, *captured, *_operands(leaves, types)], branches=tuple(fns))
    return tree_unflatten(out_trees[0], outs)


# ---------------------------------------------------------------------------------------
# Helpers


def _trace(
    fun: Callable[..., Any], types: list[TensorType], weak: list[bool], name: str
) -> tuple[Function, list[TracedArray]]:
    """``fun`` traced on flat values of ``types``; returns the function with the outer
    traced values it captured as its *leading* parameters (consts), and those values."""
    fn, _, captured = trace_function(fun, types, name=_identifier(name), weak=weak)
    n = len(types)
    return fn.replace(params=fn.params[n:] + fn.params[:n]), captured


def _identifier(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"f_{cleaned}"


def _operands(leaves: list[Any], types: list[TensorType]) -> list[Any]:
    return [_operand(x, t) for x, t in zip(leaves, types, strict=True)]


def _bind(prim: P.Primitive, operands: list[Any], **attrs: Any) -> tuple[Any, ...]:
    outs = bind(prim, *operands, **attrs)
    return outs if isinstance(outs, tuple) else (outs,)
