"""Pytrees: nested dict / list / tuple / namedtuple / None containers of leaves.

``tree_flatten`` returns the leaves and a hashable ``TreeDef`` that ``tree_unflatten``
rebuilds the container from; dict keys are visited in sorted order, like JAX.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TreeDef:
    """The shape of a pytree without its leaves. ``kind`` is ``"leaf"``, ``"none"``,
    ``"tuple"``, ``"list"``, ``"dict"`` or ``"namedtuple"``; ``meta`` holds dict keys or
    the namedtuple class."""

    kind: str
    meta: Any
    children: tuple[TreeDef, ...]

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)

    def __str__(self) -> str:
        if self.kind == "leaf":
            return "*"
        if self.kind == "none":
            return "None"
        inner = ", ".join(map(str, self.children))
        if self.kind == "dict":
            inner = ", ".join(f"{k!r}: {c}" for k, c in zip(self.meta, self.children, strict=True))
            return "{" + inner + "}"
        if self.kind == "list":
            return f"[{inner}]"
        if self.kind == "namedtuple":
            return f"{self.meta.__name__}({inner})"
        return f"({inner}{',' if len(self.children) == 1 else ''})"


LEAF = TreeDef("leaf", None, ())


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _children(x: Any) -> tuple[str, Any, list[tuple[str, Any]]] | None:
    """(kind, meta, [(path step, child)]) for a container, None for a leaf."""
    if x is None:
        return "none", None, []
    if _is_namedtuple(x):
        return "namedtuple", type(x), [(f".{f}", getattr(x, f)) for f in x._fields]
    if isinstance(x, tuple):
        return "tuple", None, [(f"[{i}]", c) for i, c in enumerate(x)]
    if isinstance(x, list):
        return "list", None, [(f"[{i}]", c) for i, c in enumerate(x)]
    if isinstance(x, dict):
        try:
            keys = tuple(sorted(x))
        except TypeError:
            keys = tuple(x)
        return "dict", keys, [(f"[{k!r}]", x[k]) for k in keys]
    return None


def tree_flatten_with_path(tree: Any, prefix: str = "") -> tuple[list[tuple[str, Any]], TreeDef]:
    """Leaves with their paths (``params['w'][0]``) and the tree's structure."""
    leaves: list[tuple[str, Any]] = []

    def walk(x: Any, path: str) -> TreeDef:
        node = _children(x)
        if node is None:
            leaves.append((path, x))
            return LEAF
        kind, meta, kids = node
        return TreeDef(kind, meta, tuple(walk(c, path + step) for step, c in kids))

    treedef = walk(tree, prefix)
    return leaves, treedef


def tree_flatten(tree: Any) -> tuple[list[Any], TreeDef]:
    """The leaves of ``tree`` in order, and its structure."""
    leaves: list[Any] = []

    def walk(x: Any) -> TreeDef:
        node = _children(x)
        if node is None:
            leaves.append(x)
            return LEAF
        kind, meta, kids = node
        return TreeDef(kind, meta, tuple(walk(c) for _, c in kids))

    return leaves, walk(tree)


def tree_unflatten(treedef: TreeDef, leaves: Any) -> Any:
    """Rebuilds the container ``treedef`` describes from ``leaves`` (an iterable)."""
    it = iter(leaves)
    out = _build(treedef, it)
    if next(it, _END) is not _END:
        raise ValueError(f"too many leaves for tree structure {treedef}")
    return out


_END = object()


def _build(t: TreeDef, it: Iterator[Any]) -> Any:
    if t.kind == "leaf":
        leaf = next(it, _END)
        if leaf is _END:
            raise ValueError("too few leaves for the tree structure")
        return leaf
    if t.kind == "none":
        return None
    kids = [_build(c, it) for c in t.children]
    if t.kind == "tuple":
        return tuple(kids)
    if t.kind == "list":
        return kids
    if t.kind == "dict":
        return dict(zip(t.meta, kids, strict=True))
    return t.meta(*kids)


def tree_map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:
    """Applies ``fn`` to corresponding leaves of ``tree`` and ``rest`` (same structure)."""
    leaves, treedef = tree_flatten(tree)
    others = []
    for r in rest:
        r_leaves, r_def = tree_flatten(r)
        if r_def != treedef:
            raise ValueError(f"tree_map: structures differ: {treedef} vs {r_def}")
        others.append(r_leaves)
    return tree_unflatten(treedef, [fn(*xs) for xs in zip(leaves, *others, strict=True)])


def tree_leaves(tree: Any) -> list[Any]:
    return tree_flatten(tree)[0]


def broadcast_prefix(
    prefix: Any, tree: Any, is_prefix_leaf: Callable[[Any], bool], path: str = ""
) -> list[Any]:
    """One entry of ``prefix`` per leaf of ``tree``, in ``tree_flatten`` order.

    ``prefix`` is a tree whose structure is a prefix of ``tree``'s: where ``prefix`` has
    a leaf (``is_prefix_leaf``, which may accept containers such as ``None``), that leaf
    stands for every leaf of ``tree`` below it. Raises ``ValueError`` naming the path
    (``path`` is prepended) where ``prefix`` has a container that ``tree`` lacks.
    """
    if is_prefix_leaf(prefix):
        return [prefix] * len(tree_flatten(tree)[0])
    mine, theirs = _children(prefix), _children(tree)
    if mine is None or theirs is None or mine[:2] != theirs[:2] or len(mine[2]) != len(theirs[2]):
        _, want = tree_flatten(prefix)
        _, got = tree_flatten(tree)
        raise ValueError(f"{path or 'the value'} has structure {got}; {want} is not a prefix of it")
    out: list[Any] = []
    for (step, p), (_, t) in zip(mine[2], theirs[2], strict=True):
        out += broadcast_prefix(p, t, is_prefix_leaf, path + step)
    return out
