"""Batching as a function transformation: ``vmap``, and the Jacobians built on it
(``jacfwd``, ``jacrev``, ``hessian``).

``vmap`` traces the function on one example (each mapped argument without its mapped
axis) into IR, batches that IR with ``fusejit.ir.transforms.batching`` and applies the
batched IR to the actual arguments with ``eval_function``, like ``grad`` does with the
gradient IR: inside an enclosing trace (``jit``, ``grad``, another ``vmap``) its ops are
inlined there, outside the reference interpreter runs them. So ``jit(vmap(f))`` compiles
the batched IR, ``vmap(grad(f))`` batches the gradient IR (per-example gradients) and
``grad(vmap(f))`` differentiates the batched IR.

The reference is JAX's ``jax.vmap`` ("JAX: composable transformations", Frostig et al.,
SysML 2018); ``in_axes``, ``out_axes`` and ``axis_size`` mean what they mean there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fusejit.ir.transforms.batching import BatchedResultError, batch_function
from fusejit.ir.types import TensorType
from fusejit.tracer import numpy_api as fnp
from fusejit.tracer.pytree import (
    TreeDef,
    broadcast_prefix,
    tree_flatten,
    tree_flatten_with_path,
    tree_unflatten,
)
from fusejit.tracer.tracing import (
    TracedArray,
    argument_type,
    eval_function,
    sanitize_name,
    trace_function,
    with_weak,
)
from fusejit.tracer.transformations import (
    _argnums,
    _fun_name,
    _positional_names,
    _trace,
    flat_function,
    jvp,
    vjp,
)

_ARRAYS = (TracedArray, np.ndarray, np.generic)


def _is_axis(x: Any) -> bool:
    return x is None or (isinstance(x, int) and not isinstance(x, bool))


def _check_axes_spec(spec: Any, what: str) -> None:
    """``spec`` is an int, None, or a pytree of those (``None`` is an empty container to
    ``tree_flatten``, so the leaves it returns must all be ints)."""
    for leaf in tree_flatten(spec)[0]:
        if not _is_axis(leaf):
            raise TypeError(
                f"vmap {what} must be an int, None, or a pytree of them; got {leaf!r} in {spec!r}"
            )


def vmap(
    fun: Callable[..., Any],
    in_axes: Any = 0,
    out_axes: Any = 0,
    axis_size: int | None = None,
) -> Callable[..., Any]:
    """``fun`` mapped over an axis of its arguments, as ``jax.vmap``: the IR of ``fun``
    on one example is batched by one rule per primitive (never a loop over examples).

    ``in_axes``: for each positional argument, the axis to map (an int, negative from the
    end) or ``None`` (the same value for every example); an int or ``None`` applies to
    all arguments, a tuple (or list) has one entry per positional argument, and each
    entry may be a pytree that is a prefix of its argument's (one axis per subtree).
    Keyword arguments are mapped over their axis 0. Arguments that are not mapped may be
    any Python objects; mapped leaves must be arrays of rank at least 1.
    ``out_axes``: where each output gets the mapped axis (int, ``None``: the output must
    not depend on the mapped axis; or a prefix pytree of the output).
    ``axis_size``: the number of examples; required when no argument is mapped, and if
    given it must agree with the mapped axes.

    The wrapped function returns ``fun``'s output pytree, each leaf with ``fun``'s dtype
    and its shape with the mapped axis (of length ``axis_size``) at its ``out_axes``.

    Raises ``ValueError`` naming the argument when the mapped axes differ in size, an
    axis is out of range, no argument is mapped and ``axis_size`` is missing, ``in_axes``
    or ``out_axes`` does not match the arguments' or output's structure, or an output
    with ``out_axes`` ``None`` depends on the mapped axis; ``TypeError`` for malformed
    ``in_axes``/``out_axes`` or a mapped argument that is not an array.

    Reference: JAX's batching transform, ``jax.vmap`` ("JAX: composable transformations",
    Frostig et al., SysML 2018); the rules are in ``fusejit.ir.transforms.batching``.
    """
    _check_axes_spec(in_axes, "in_axes")
    _check_axes_spec(out_axes, "out_axes")
    if isinstance(in_axes, list):  # a list names the positional arguments, like a tuple
        in_axes = tuple(in_axes)
    if not (_is_axis(in_axes) or type(in_axes) is tuple):
        raise TypeError(
            "vmap in_axes must be an int, None, or a tuple with one entry per positional "
            f"argument; got {in_axes!r}"
        )
    if axis_size is not None and (
        not isinstance(axis_size, int) or isinstance(axis_size, bool) or axis_size < 0
    ):
        raise TypeError(f"vmap axis_size must be a non-negative int, got {axis_size!r}")

    @functools.wraps(fun)
    def vmapped(*args: Any, **kwargs: Any) -> Any:
        return _vmap_call(fun, in_axes, out_axes, axis_size, args, kwargs)

    return vmapped


def _vmap_call(
    fun: Callable[..., Any], in_axes: Any, out_axes: Any, axis_size: int | None, args: tuple, kwargs: dict
) -> Any:
    name = _fun_name(fun)
    if isinstance(in_axes, tuple) and len(in_axes) != len(args):
        raise ValueError(
            f"vmap of {name}: in_axes has {len(in_axes)} entries but {name} was called with "
            f"{len(args)} positional arguments (give one entry per argument, or one int or None for all)"
        )
    arg_axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    names = _positional_names(fun, len(args))
    entries: list[tuple[str, Any, int | None]] = []  # (path, leaf, axis)
    for i, a in enumerate(args):
        leaves, _ = tree_flatten_with_path(a, names[i])
        try:
            axes = broadcast_prefix(arg_axes[i], a, _is_axis, names[i])
        except ValueError as e:
            raise ValueError(
                f"vmap of {name}: in_axes entry {arg_axes[i]!r} does not match argument: {e}"
            ) from None
        entries += [(path, leaf, ax) for (path, leaf), ax in zip(leaves, axes, strict=True)]
    for k in sorted(kwargs):
        entries += [(path, leaf, 0) for path, leaf in tree_flatten_with_path(kwargs[k], k)[0]]
    _, treedef = tree_flatten((tuple(args), dict(kwargs)))

    dynamic, dyn_index, types, weak, in_dims, paths = [], [], [], [], [], []
    mapped: list[tuple[str, int, int, TensorType]] = []  # (path, axis, size, type)
    for j, (path, leaf, axis) in enumerate(entries):
        if axis is None and not isinstance(leaf, _ARRAYS):
            continue  # passed to fun as it is (a Python scalar, a string, a flag)
        typed = argument_type(leaf, path)
        if typed is None:
            raise TypeError(
                f"vmap of {name}: argument {path} is a {type(leaf).__name__}, which cannot be mapped"
            )
        t, w = typed
        if axis is not None and t.ndim == 0:
            raise ValueError(f"vmap of {name}: argument {path} is a scalar, which has no axis to map; "
                             "give it in_axes None")
        if axis is not None:
            ax = axis + t.ndim if axis < 0 else axis
            if not 0 <= ax < t.ndim:
                raise ValueError(
                    f"vmap of {name}: in_axes {axis} of argument {path} is out of range: it has "
                    f"shape {t.shape} (rank {t.ndim}), so the axis must be from {-t.ndim} to {t.ndim - 1}"
                )
            mapped.append((path, ax, t.shape[ax], t))
            t = t.with_shape(t.shape[:ax] + t.shape[ax + 1 :])
            axis = ax
        dynamic.append(leaf)
        dyn_index.append(j)
        types.append(t)
        weak.append(w)
        in_dims.append(axis)
        paths.append(path)
    size = _batch_size(name, mapped, axis_size)
    all_leaves = [leaf for _, leaf, _ in entries]
    fn, (out_tree, out_weak), captured = trace_function(
        flat_function(fun, treedef, all_leaves, dyn_index),
        types,
        name=sanitize_name(name),
        param_names=[sanitize_name(p) for p in paths],
        weak=weak,
    )
    out_paths, out_dims = _out_dims(name, out_axes, out_tree, [r.type for r in fn.results])
    try:
        batched = batch_function(fn, in_dims + [None] * len(captured), size, out_dims, name=f"{fn.name}_vmap")
    except BatchedResultError as e:
        raise ValueError(
            f"vmap of {name}: {_output_named(out_paths[e.index])} depends on the mapped axis, but its "
            "out_axes entry is None (give it an axis, or make it independent of the mapped arguments)"
        ) from None
    outs = eval_function(batched, *dynamic, *captured)
    return tree_unflatten(out_tree, with_weak(outs, out_weak))


def _batch_size(name: str, mapped: list[tuple[str, int, int, TensorType]], axis_size: int | None) -> int:
    sizes = {n for _, _, n, _ in mapped} | ({axis_size} if axis_size is not None else set())
    if len(sizes) > 1:
        lines = [f"  axis_size={axis_size}"] if axis_size is not None else []
        lines += [f"  argument {path}: axis {ax} has size {n} (type {t})" for path, ax, n, t in mapped]
        raise ValueError(f"vmap of {name} got different sizes for the mapped axes:\n" + "\n".join(lines))
    if not sizes:
        raise ValueError(
            f"vmap of {name}: no argument is mapped (every in_axes entry is None), so the "
            "number of examples is unknown: pass axis_size"
        )
    return sizes.pop()


def _out_dims(
    name: str, out_axes: Any, out_tree: TreeDef, out_types: list[TensorType]
) -> tuple[list[str], list[int | None]]:
    """Each output leaf's path (``output[0]['w']``) and non-negative mapped axis."""
    skeleton = tree_unflatten(out_tree, range(out_tree.num_leaves))
    paths = [path for path, _ in tree_flatten_with_path(skeleton, "output")[0]]
    try:
        axes = broadcast_prefix(out_axes, skeleton, _is_axis, "output")
    except ValueError as e:
        raise ValueError(f"vmap of {name}: out_axes {out_axes!r} does not match the output: {e}") from None
    dims: list[int | None] = []
    for path, ax, t in zip(paths, axes, out_types, strict=True):
        if ax is not None:
            d = ax + t.ndim + 1 if ax < 0 else ax
            if not 0 <= d <= t.ndim:
                raise ValueError(
                    f"vmap of {name}: out_axes {ax} of {path} is out of range: one example's "
                    f"output has shape {t.shape}, so the axis must be from {-t.ndim - 1} to {t.ndim}"
                )
            ax = d
        dims.append(ax)
    return paths, dims


# ---------------------------------------------------------------------------------------
# Jacobians and Hessians, on vmap


def _jacobian_inputs(
    fun: Callable[..., Any], argnums: int | Sequence[int], args: tuple, kind: str
) -> tuple[tuple[int, ...], TreeDef, list[TensorType]]:
    """The differentiated argument indices, their structure (a tuple of them) and the
    types of their leaves, which must be floats."""
    name = _fun_name(fun)
    diff = _argnums(argnums, len(args), name)
    names = _positional_names(fun, len(args))
    types = []
    for i in diff:
        for path, leaf in tree_flatten_with_path(args[i], names[i])[0]:
            typed = argument_type(leaf, path)
            if typed is None or not typed[0].dtype.is_float:
                what = type(leaf).__name__ if typed is None else f"an array of {typed[0].dtype.np}"
                raise TypeError(f"{kind} of {name}: argument {path} is {what}; {kind} needs float inputs")
            types.append(typed[0])
    return diff, tree_flatten(tuple(args[i] for i in diff))[1], types


def _basis(types: list[TensorType]) -> list[Any]:
    """The standard basis of the space of ``types``'s leaves taken together, one array
    ``(N,) + shape`` per leaf (N = total size): row k is the k-th unit vector. Built from
    an ``eye`` (iotas inside a trace, not a constant)."""
    total = sum(t.size for t in types)
    eye = fnp.eye(total, dtype=np.bool_)
    out, offset = [], 0
    for t in types:
        block = fnp.reshape(eye[:, offset : offset + t.size], (total,) + t.shape)
        out.append(fnp.astype(block, t.dtype.np))
        offset += t.size
    return out


def _blocks(stacked: Any, pieces: list[tuple[int, tuple[int, ...]]], axis: int) -> list[Any]:
    """``stacked`` cut along ``axis`` (0 or -1) into consecutive pieces, one per
    ``(length, shape)`` entry, each reshaped to its shape."""
    out, offset = [], 0
    for n, shape in pieces:
        key = (slice(offset, offset + n),) if axis == 0 else (Ellipsis, slice(offset, offset + n))
        out.append(fnp.reshape(stacked[key], shape))
        offset += n
    return out


def _jacobian_tree(
    argnums: int | Sequence[int], in_tree: TreeDef, out_tree: TreeDef, blocks: list[list[Any]]
) -> Any:
    """``blocks[o][i]`` (output leaf o, input leaf i) as the output pytree of input
    pytrees: one input pytree per output leaf (a tuple of them for tuple ``argnums``)."""
    arg_tree = in_tree.children[0] if isinstance(argnums, int) else in_tree
    return tree_unflatten(out_tree, [tree_unflatten(arg_tree, row) for row in blocks])


def _with_args(
    fun: Callable[..., Any], args: tuple, kwargs: dict, diff: tuple[int, ...]
) -> Callable[..., Any]:
    """``fun`` as a function of the differentiated arguments alone."""

    def partial(*values: Any) -> Any:
        full = list(args)
        for i, v in zip(diff, values, strict=True):
            full[i] = v
        return fun(*full, **kwargs)

    return partial


def _check_float_outputs(kind: str, fun: Callable[..., Any], dtypes: list[Any]) -> None:
    for d in dtypes:
        if not np.issubdtype(d, np.floating):
            raise TypeError(
                f"{kind} of {_fun_name(fun)}: an output has dtype {d}; {kind} needs float outputs"
            )


def jacfwd(fun: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """The Jacobian of ``fun`` w.r.t. the ``argnums`` arguments by forward mode, as
    ``jax.jacfwd``: ``vmap`` of ``jvp`` over the standard basis of the inputs (one
    batched forward pass, one column per input element).

    For an output leaf of shape ``S`` and an input leaf of shape ``T`` the Jacobian block
    has shape ``S + T`` and the output's dtype. The result is the output pytree with each
    leaf replaced by the pytree of the differentiated argument (a tuple of them for a
    tuple ``argnums``). Raises ``TypeError`` for non-float inputs or outputs.
    """

    @functools.wraps(fun)
    def jacfwd_fun(*args: Any, **kwargs: Any) -> Any:
        diff, in_tree, in_types = _jacobian_inputs(fun, argnums, args, "jacfwd")

        def pushforward(args: tuple, kwargs: dict, tangents: list[Any]) -> Any:
            primals = [args[i] for i in diff]
            return jvp(_with_args(fun, args, kwargs, diff), primals, list(tree_unflatten(in_tree, tangents)))[
                1
            ]

        columns = vmap(pushforward, in_axes=(None, None, 0), out_axes=-1)(args, kwargs, _basis(in_types))
        out_leaves, out_tree = tree_flatten(columns)
        _check_float_outputs("jacfwd", fun, [np.dtype(x.dtype) for x in out_leaves])
        blocks = [
            _blocks(c, [(t.size, tuple(c.shape[:-1]) + t.shape) for t in in_types], -1) for c in out_leaves
        ]
        return _jacobian_tree(argnums, in_tree, out_tree, blocks)

    return jacfwd_fun


def jacrev(fun: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """The Jacobian of ``fun`` w.r.t. the ``argnums`` arguments by reverse mode, as
    ``jax.jacrev``: ``vmap`` of the vjp over the standard basis of the outputs (the
    forward pass once, one batched backward pass, one row per output element).

    Shapes, dtypes, structure and errors as ``jacfwd``; each block has the input's dtype.
    """

    @functools.wraps(fun)
    def jacrev_fun(*args: Any, **kwargs: Any) -> Any:
        diff, in_tree, in_types = _jacobian_inputs(fun, argnums, args, "jacrev")
        shape_only = _trace(fun, args, kwargs, lambda i, path, leaf: isinstance(leaf, _ARRAYS) or i in diff)
        out_types = [r.type for r in shape_only.fn.results]
        out_tree = shape_only.out_tree
        _check_float_outputs("jacrev", fun, [t.dtype.np for t in out_types])

        def pullback(args: tuple, kwargs: dict, cotangents: list[Any]) -> Any:
            _, vjp_fn = vjp(_with_args(fun, args, kwargs, diff), *(args[i] for i in diff))
            return vjp_fn(tree_unflatten(out_tree, cotangents))

        rows = tree_flatten(vmap(pullback, in_axes=(None, None, 0))(args, kwargs, _basis(out_types)))[0]
        per_input = [
            _blocks(r, [(s.size, s.shape + t.shape) for s in out_types], 0)
            for r, t in zip(rows, in_types, strict=True)
        ]
        blocks = [list(row) for row in zip(*per_input, strict=True)] if per_input else [[] for _ in out_types]
        return _jacobian_tree(argnums, in_tree, out_tree, blocks)

    return jacrev_fun


def hessian(fun: Callable[..., Any], argnums: int | Sequence[int] = 0) -> Callable[..., Any]:
    """The Hessian of the scalar-output ``fun``, as ``jax.hessian``: ``jacfwd`` of
    ``jacrev`` (forward over reverse). For inputs of shapes ``T1`` and ``T2`` the block is
    ``T1 + T2``; the structure nests the argument pytree twice."""
    return jacfwd(jacrev(fun, argnums), argnums)


__all__ = ["hessian", "jacfwd", "jacrev", "vmap"]


def _output_named(path: str) -> str:
    return "the output" if path == "output" else f"output {path}"
