"""Differentiation as function transformations: ``grad``, ``value_and_grad``, ``vjp``,
``jvp`` and ``custom_vjp``.

Each call traces the user's function into IR (``trace_function``), transforms the IR
symbolically (``fusejit.ir.transforms.autodiff``) and applies the derivative IR to the
actual arguments with ``eval_function``. Inside an enclosing trace (``jit``, another
``grad``) that inlines the derivative's ops into the enclosing function, keeping their
source lines; outside, the reference interpreter runs them. Hence every composition
works the same way: ``jit(grad(f))`` compiles the gradient IR, ``grad(grad(f))``
differentiates the gradient IR, ``jvp(grad(f))`` is a Hessian-vector product.

Values of an enclosing trace that the function closes over become extra parameters of
the traced function (closure conversion); they are constants for this differentiation,
and the enclosing one differentiates through them.

Arguments are pytrees. Leaves of the differentiated arguments must be float arrays or
Python floats; leaves of the other arguments that are arrays (or traced values) become
parameters, while Python scalars and other objects are passed to the function as they
are (so they can steer Python control flow, as in JAX).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit.ir import primitives as P
from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Value
from fusejit.tracer.pytree import LEAF, TreeDef, tree_flatten, tree_flatten_with_path, tree_unflatten
from fusejit.tracer.tracing import (
    TracedArray,
    argument_type,
    bind,
    eval_function,
    is_tracing,
    sanitize_name,
    shape_of,
    trace_function,
    with_weak,
)

_SCALARS = (bool, int, float)





def _fun_name(fun: Callable[..., Any]) -> str:
    return getattr(fun, "__name__", None) or type(fun).__name__


def _positional_names(fun: Callable[..., Any], n: int) -> list[str]:
    try:
        params = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):
        params = []
    named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [named[i] if i < len(named) else f"args[{i}]" for i in range(n)]


@dataclass(eq=False)
class _Traced:
    """A traced call: the IR, its output structure and the values to apply it to."""

    fn: Function
    out_tree: TreeDef
    out_weak: list[bool]
    dynamic: list[Any]  # the leaves that are parameters, in parameter order
    dynamic_paths: list[str]
    dynamic_weak: list[bool]
    dynamic_arg: list[int]  # the positional argument each dynamic leaf belongs to (-1: kwarg)
    captured: list[TracedArray]
    arg_trees: list[TreeDef]
    arg_leaves: list[list[Any]]  # every leaf of each positional argument

    @property
    def args(self) -> list[Any]:
        return self.dynamic + list(self.captured)


def _trace(
    fun: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    is_dynamic: Callable[[int, str, Any], bool],
) -> _Traced:
    """Traces ``fun(*args, **kwargs)`` with the leaves ``is_dynamic(arg index, path,
    leaf)`` selects as parameters; the other leaves are passed to ``fun`` unchanged."""
    names = _positional_names(fun, len(args))
    path_leaves: list[tuple[str, Any]] = []
    owner: list[int] = []
    arg_trees, arg_leaves = [], []
    for i, a in enumerate(args):
        leaves, tree = tree_flatten_with_path(a, names[i])
        path_leaves += leaves
        owner += [i] * len(leaves)
        arg_trees.append(tree)
        arg_leaves.append([x for _, x in leaves])
    for k in sorted(kwargs):
        leaves, _ = tree_flatten_with_path(kwargs[k], k)
        path_leaves += leaves
        owner += [-1] * len(leaves)
    _, treedef = tree_flatten((tuple(args), dict(kwargs)))

    dyn_index, types, weak = [], [], []
    for j, ((path, leaf), i) in enumerate(zip(path_leaves, owner, strict=True)):
        if is_dynamic(i, path, leaf):
            typed = argument_type(leaf, path)
            if typed is None:
                raise TypeError(f"argument {path}: a {type(leaf).__name__} is not an array or a scalar")
            dyn_index.append(j)
            types.append(typed[0])
            weak.append(typed[1])
    all_leaves = [x for _, x in path_leaves]
    paths = [path_leaves[j][0] for j in dyn_index]
    fn, (out_tree, out_weak), captured = trace_function(
        flat_function(fun, treedef, all_leaves, dyn_index),
        types,
        name=sanitize_name(_fun_name(fun)),
        param_names=[sanitize_name(p) for p in paths],
        weak=weak,
    )
    return _Traced(
        fn, out_tree, out_weak, [all_leaves[j] for j in dyn_index], paths, weak,
        [owner[j] for j in dyn_index], captured, arg_trees, arg_leaves,
    )  # fmt: skip


def flat_function(
    fun: Callable[..., Any], treedef: TreeDef, all_leaves: list[Any], dyn_index: list[int]
) -> Callable[..., Any]:
    """``fun`` called on the pytree ``(args, kwargs)`` that ``treedef`` and ``all_leaves``
    describe, as a function of the leaves at positions ``dyn_index`` alone."""

    def flat_fun(*values: Any) -> Any:
        leaves = list(all_leaves)
        for j, v in zip(dyn_index, values, strict=True):
            leaves[j] = v
        a, kw = tree_unflatten(treedef, leaves)
        return fun(*a, **kw)

    return flat_fun


def _zeros_like_leaf(leaf: Any) -> Any:
    from fusejit.tracer import numpy_api as fnp

    typed = argument_type(leaf, "")
    assert typed is not None
    t = typed[0]
    if is_tracing():
        return fnp.zeros(t.shape, t.dtype.np)
    return np.zeros(t.shape, t.dtype.np)


# ---------------------------------------------------------------------------------------
# grad and value_and_grad


def _argnums(argnums: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    out = []
    for a in nums:
        if not isinstance(a, int) or isinstance(a, bool):
            raise TypeError(f"argnums must be ints, got {a!r}")
        if not -n <= a < n:
            raise TypeError(f"argnums={argnums!r}: {name} was called with {n} positional arguments")
        out.append(a % n)
    if len(set(out)) != len(out):
        raise ValueError(f"argnums={argnums!r} names an argument twice")
    return tuple(out)


def _check_scalar_output(traced: _Traced, name: str, has_aux: bool) -> None:
    tree = traced.out_tree
    if has_aux:
        if tree.kind not in ("tuple", "list") or len(tree.children) != 2 or tree.children[0] != LEAF:
            raise TypeError(
                f"grad of {name} with has_aux=True: the function must return a pair (value, aux) "
                f"with a scalar value, but it returned a pytree {tree}"
            )
    elif tree != LEAF:
        raise TypeError(
            f"grad of {name}: the function returned a pytree {tree}, but grad needs one scalar "
            "output (return (value, aux) with has_aux=True, or use fj.vjp)"
        )
    value = traced.fn.results[0]
    if value.shape != ():
        raise TypeError(
            f"grad of {name}: the output has shape {value.shape} ({value.type}), but grad needs "
            "a scalar output; use fj.vjp for non-scalar outputs (or reduce it, e.g. .sum())"
        )
    if not value.dtype.is_float:
        raise TypeError(f"grad of {name}: the output has dtype {value.dtype}; grad needs a float output")


def _grad_call(
    fun: Callable[..., Any],
    argnums: int | Sequence[int],
    has_aux: bool,
    keep_value: bool,
    args: tuple,
    kwargs: dict[str, Any],
) -> tuple[Any, Any]:
    """(output pytree or None, gradients) of ``fun(*args, **kwargs)``."""
    name = _fun_name(fun)
    diff = _argnums(argnums, len(args), name)

    def is_dynamic(i: int, path: str, leaf: Any) -> bool:
        if i in diff:
            typed = argument_type(leaf, path)
            if typed is None:
                raise TypeError(f"grad of {name}: argument {path} is a {type(leaf).__name__}, not an array")
            if not typed[0].dtype.is_float:
                raise TypeError(
                    f"grad of {name}: argument {path} has dtype {typed[0].dtype.np}; only float "
                    "arguments can be differentiated (leave it out of argnums)"
                )
            return True
        return isinstance(leaf, (TracedArray, np.ndarray, np.generic))

    traced = _trace(fun, args, kwargs, is_dynamic)
    _check_scalar_output(traced, name, has_aux)
    wrt = [k for k, i in enumerate(traced.dynamic_arg) if i in diff]
    keep = keep_value or has_aux
    from fusejit.ir.transforms.autodiff import grad_function  # loaded by the first transform (import time)

    gfn = grad_function(traced.fn, wrt, output=0, keep_outputs=keep)
    outs = eval_function(gfn, *traced.args)
    n_out = len(traced.fn.results) if keep else 0
    out = tree_unflatten(traced.out_tree, with_weak(outs[:n_out], traced.out_weak)) if keep else None
    # The gradients come in parameter order; argnums may ask for another, e.g. (3, 1).
    grads = iter(with_weak(outs[n_out:], [traced.dynamic_weak[k] for k in wrt]))
    by_arg = {
        i: tree_unflatten(traced.arg_trees[i], [next(grads) for _ in traced.arg_leaves[i]]) for i in sorted(diff)
    }
    per_arg = tuple(by_arg[i] for i in diff)
    return out, per_arg if not isinstance(argnums, int) else per_arg[0]


def value_and_grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """``fun``'s value and its gradient w.r.t. the ``argnums`` arguments.

    ``fun`` must return a float scalar (or ``(scalar, aux)`` with ``has_aux``). The
    wrapped function returns ``(value, grad)`` (``((value, aux), grad)`` with
    ``has_aux``); ``grad`` has the structure of the differentiated argument, or is a
    tuple of those when ``argnums`` is a tuple. Each gradient has its argument's dtype.
    """

    @functools.wraps(fun)
    def value_and_grad_fun(*args: Any, **kwargs: Any) -> Any:
        return _grad_call(fun, argnums, has_aux, True, args, kwargs)

    return value_and_grad_fun


def grad(
    fun: Callable[..., Any], argnums: int | Sequence[int] = 0, has_aux: bool = False
) -> Callable[..., Any]:
    """The gradient of the scalar-output ``fun`` w.r.t. the ``argnums`` arguments,
    computed by a symbolic reverse-mode transform of its IR. With ``has_aux``, ``fun``
    returns ``(value, aux)`` and the wrapped function returns ``(grad, aux)``."""

    @functools.wraps(fun)
    def grad_fun(*args: Any, **kwargs: Any) -> Any:
        out, g = _grad_call(fun, argnums, has_aux, False, args, kwargs)
        return (g, out[1]) if has_aux else g

    return grad_fun


# ---------------------------------------------------------------------------------------
# vjp and jvp


def vjp(fun: Callable[..., Any], *primals: Any, has_aux: bool = False) -> tuple[Any, ...]:
    """``(out, vjp_fn)`` (``(out, vjp_fn, aux)`` with ``has_aux``).

    ``vjp_fn(cotangent)`` takes a pytree shaped like ``out`` and returns a tuple with one
    cotangent pytree per primal. The forward part runs now; ``vjp_fn`` runs only the
    backward part, on the values the forward part saved. Integer leaves get zeros.
    """
    name = _fun_name(fun)
    traced = _trace(fun, primals, {}, lambda i, path, leaf: True)
    fn, tree = traced.fn, traced.out_tree
    if has_aux:
        if tree.kind not in ("tuple", "list") or len(tree.children) != 2:
            raise TypeError(f"vjp of {name} with has_aux=True: the function must return a pair (out, aux)")
        main_tree = tree.children[0]
    else:
        main_tree = tree
    n_main = main_tree.num_leaves
    seeds = [i for i in range(n_main) if fn.results[i].dtype.is_float]
    wrt = [k for k, p in enumerate(fn.params[: len(traced.dynamic)]) if p.dtype.is_float]
    from fusejit.ir.transforms.autodiff import reverse_mode  # loaded by the first transform (import time)

    forward, backward = reverse_mode(fn, wrt, cotangents=seeds).split()
    outs = eval_function(forward, *traced.args)
    n_out = len(fn.results)
    values = with_weak(outs[:n_out], traced.out_weak)
    saved = outs[n_out:]
    result_types = [r.type for r in fn.results[:n_main]]

    def vjp_fn(cotangent: Any) -> tuple[Any, ...]:
        leaves, ct_tree = tree_flatten(cotangent)
        if ct_tree != main_tree:
            raise TypeError(
                f"vjp_fn of {name}: the cotangent has structure {ct_tree}, the output has {main_tree}"
            )
        for i in seeds:
            if tuple(shape_of(leaves[i])) != result_types[i].shape:
                raise ValueError(
                    f"vjp_fn of {name}: cotangent {i} has shape {tuple(shape_of(leaves[i]))}, "
                    f"the output has {result_types[i]}"
                )
        grads = eval_function(backward, *saved, *(leaves[i] for i in seeds))
        by_leaf = dict(zip(wrt, with_weak(grads, [traced.dynamic_weak[k] for k in wrt]), strict=True))
        out, k = [], 0
        for tree_i, leaves_i in zip(traced.arg_trees, traced.arg_leaves, strict=True):
            cts = []
            for leaf in leaves_i:
                cts.append(by_leaf[k] if k in by_leaf else _zeros_like_leaf(leaf))
                k += 1
            out.append(tree_unflatten(tree_i, cts))
        return tuple(out)

    if has_aux:
        main = tree_unflatten(main_tree, values[:n_main])
        aux = tree_unflatten(tree.children[1], values[n_main:])
        return main, vjp_fn, aux
    return tree_unflatten(tree, values), vjp_fn


def jvp(fun: Callable[..., Any], primals: Sequence[Any], tangents: Sequence[Any]) -> tuple[Any, Any]:
    """``(fun(*primals), tangent_out)``: the directional derivative of ``fun`` at
    ``primals`` along ``tangents`` (same structure as ``primals``), by forward mode.
    Tangents of integer leaves are ignored; integer outputs get zero tangents."""
    name = _fun_name(fun)
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError(f"jvp of {name}: primals and tangents must be tuples (one entry per argument)")
    primals, tangents = tuple(primals), tuple(tangents)
    p_tree = tree_flatten(primals)[1]
    t_leaves, t_tree = tree_flatten(tangents)
    if p_tree != t_tree:
        raise TypeError(f"jvp of {name}: tangents have structure {t_tree}, primals have {p_tree}")
    traced = _trace(fun, primals, {}, lambda i, path, leaf: True)
    fn = traced.fn
    wrt = [k for k, p in enumerate(fn.params[: len(traced.dynamic)]) if p.dtype.is_float]
    for k in wrt:
        if tuple(shape_of(t_leaves[k])) != fn.params[k].shape:
            raise ValueError(
                f"jvp of {name}: the tangent of {traced.dynamic_paths[k]} has shape "
                f"{tuple(shape_of(t_leaves[k]))}, the primal has {fn.params[k].type}"
            )
    from fusejit.ir.transforms.autodiff import jvp_function  # loaded by the first transform (import time)

    outs = eval_function(jvp_function(fn, wrt), *traced.args, *(t_leaves[k] for k in wrt))
    n = len(fn.results)
    out = tree_unflatten(traced.out_tree, with_weak(outs[:n], traced.out_weak))
    return out, tree_unflatten(traced.out_tree, with_weak(outs[n:], traced.out_weak))


# ---------------------------------------------------------------------------------------
# custom_vjp


class custom_vjp:  # noqa: N801 - JAX's name
    """A function with a user-defined reverse-mode derivative (like ``jax.custom_vjp``).

        @fj.custom_vjp
        def f(x): ...
        def f_fwd(x): return f(x), residuals
        def f_bwd(residuals, ct): return (ct_x,)     # one entry per argument (None: zero)
        f.defvjp(f_fwd, f_bwd)

    Called outside any trace it runs ``fun``. Inside a trace it records one
    ``custom_vjp_call`` op holding ``fun``, ``fwd`` and ``bwd`` traced to IR: reverse mode
    uses ``fwd``/``bwd``, forward mode differentiates ``fun``, and compilation inlines
    ``fun``. Traced values the three functions close over (rather than take as
    arguments) are constants for the custom rule: their cotangent is zero, so pass
    values you differentiate with respect to as arguments.
    """

    def __init__(self, fun: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fun)
        self.fun = fun
        self.fwd: Callable[..., Any] | None = None
        self.bwd: Callable[..., Any] | None = None
        self._tracing_rules = False

    def defvjp(self, fwd: Callable[..., Any], bwd: Callable[..., Any]) -> None:
        """Sets the rule: ``fwd(*args) -> (out, residuals)``, ``bwd(residuals, ct) ->
        tuple`` with one cotangent pytree (or None) per argument."""
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args: Any) -> Any:
        name = _fun_name(self.fun)
        if self.fwd is None or self.bwd is None:
            raise TypeError(f"custom_vjp function {name} has no rule: call {name}.defvjp(fwd, bwd) first")
        if not is_tracing() or self._tracing_rules:
            # Outside traces, and inside its own fwd/bwd (``fwd`` usually calls the
            # function), the function is just itself.
            return self.fun(*args)
        self._tracing_rules = True
        try:
            return self._bind(name, args)
        finally:
            self._tracing_rules = False

    def _bind(self, name: str, args: tuple) -> Any:
        leaves, in_tree = tree_flatten(args)
        names = _positional_names(self.fun, len(args))
        typed = []
        for path, leaf in (pl for i, a in enumerate(args) for pl in tree_flatten_with_path(a, names[i])[0]):
            t = argument_type(leaf, path)
            if t is None:
                raise TypeError(
                    f"custom_vjp {name}: argument {path} is a {type(leaf).__name__}, not an array"
                )
            typed.append(t)
        types = [t for t, _ in typed]
        weak = [w for _, w in typed]

        def flat(f: Callable[..., Any]) -> Callable[..., Any]:
            return lambda *values: f(*tree_unflatten(in_tree, values))

        fun_fn, (out_tree, out_weak), cap_fun = trace_function(
            flat(self.fun), types, name=sanitize_name(name), weak=weak
        )
        fwd_fn, (fwd_tree, _), cap_fwd = trace_function(
            flat(self.fwd), types, name=sanitize_name(f"{name}_fwd"), weak=weak
        )
        n_out = len(fun_fn.results)
        if (
            fwd_tree.kind not in ("tuple", "list")
            or len(fwd_tree.children) != 2
            or fwd_tree.children[0] != out_tree
            or [r.type for r in fwd_fn.results[:n_out]] != [r.type for r in fun_fn.results]
        ):
            raise TypeError(
                f"custom_vjp {name}: fwd must return (output, residuals) with the output of {name} "
                f"({', '.join(str(r.type) for r in fun_fn.results)}), got {fwd_tree}"
            )
        res_tree = fwd_tree.children[1]
        res_types = [r.type for r in fwd_fn.results[n_out:]]
        out_types = [r.type for r in fun_fn.results]
        bwd = self.bwd

        def bwd_flat(*values: Any) -> tuple[Any, ...]:
            from fusejit.tracer import numpy_api as fnp

            res = tree_unflatten(res_tree, values[: len(res_types)])
            ct = tree_unflatten(out_tree, values[len(res_types) :])
            cts = bwd(res, ct)
            if not isinstance(cts, (tuple, list)):
                raise TypeError(f"custom_vjp {name}: bwd must return a tuple (one entry per argument)")
            if len(cts) != len(args):
                raise TypeError(
                    f"custom_vjp {name}: bwd returned {len(cts)} cotangents for {len(args)} arguments"
                )
            flat_cts: list[Any] = []
            for c, a in zip(cts, args, strict=True):
                a_leaves, a_tree = tree_flatten(a)
                c_leaves = [None] * len(a_leaves) if c is None else tree_flatten(c)[0]
                if c is not None and tree_flatten(c)[1] != a_tree:
                    raise TypeError(
                        f"custom_vjp {name}: bwd returned a cotangent of structure {tree_flatten(c)[1]} "
                        f"for an argument of structure {a_tree}"
                    )
                flat_cts += c_leaves
            out = []
            for c, t in zip(flat_cts, types, strict=True):
                if c is None:
                    out.append(fnp.zeros(t.shape, t.dtype.np))
                else:
                    out.append(fnp.broadcast_to(fnp.astype(c, t.dtype.np), t.shape))
            return tuple(out)

        bwd_fn, _, cap_bwd = trace_function(
            bwd_flat, res_types + out_types, name=sanitize_name(f"{name}_bwd")
        )
        fun_fn, fwd_fn, bwd_fn, captured = _close_over(
            fun_fn, fwd_fn, bwd_fn, cap_fun, cap_fwd, cap_bwd, len(leaves), len(res_types)
        )
        outs = bind(P.custom_vjp_call, *leaves, *captured, fun=fun_fn, fwd=fwd_fn, bwd=bwd_fn)
        outs = (outs,) if n_out == 1 else tuple(outs)
        return tree_unflatten(out_tree, with_weak(outs, out_weak))


def _close_over(
    fun: Function,
    fwd: Function,
    bwd: Function,
    cap_fun: list[TracedArray],
    cap_fwd: list[TracedArray],
    cap_bwd: list[TracedArray],
    n_args: int,
    n_res: int,
) -> tuple[Function, Function, Function, list[TracedArray]]:
    """Makes the traced values the three functions captured explicit operands of the
    call: ``fun`` and ``fwd`` take all of them after the arguments, ``fwd`` passes those
    ``bwd`` needs on as extra residuals, and ``bwd`` returns zero cotangents for them."""
    captured: list[TracedArray] = []
    for c in cap_fun + cap_fwd + cap_bwd:
        if not any(c is u for u in captured):
            captured.append(c)
    if not captured:
        return fun, fwd, bwd, captured

    def params_for(fn: Function, caps: list[TracedArray], first: int) -> tuple[Value, ...]:
        own = dict(zip(map(id, caps), fn.params[first:], strict=True))
        return tuple(own.get(id(u)) or Value(u.value.type) for u in captured)

    fun = fun.replace(params=fun.params[:n_args] + params_for(fun, cap_fun, n_args))
    fwd_caps = params_for(fwd, cap_fwd, n_args)
    by_id = dict(zip(map(id, captured), fwd_caps, strict=True))
    fwd = fwd.replace(
        params=fwd.params[:n_args] + fwd_caps,
        results=fwd.results + tuple(by_id[id(u)] for u in cap_bwd),
    )
    n_ct = len(bwd.params) - n_res - len(cap_bwd)
    b = Builder()
    b.ops = list(bwd.ops)
    zeros = tuple(b.full_like(0, Value(u.value.type)) for u in captured)
    bwd = b.function(
        bwd.name,
        bwd.params[:n_res] + bwd.params[n_res + n_ct :] + bwd.params[n_res : n_res + n_ct],
        bwd.results + zeros,
    )
    return fun, fwd, bwd, captured
