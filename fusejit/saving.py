"""``fj.save`` / ``fj.load``: a pytree of arrays to and from one ``.npz`` file.

The file is an ordinary NumPy archive: one array per leaf (``leaf_0``, ``leaf_1``... in
``tree_flatten`` order) and ``__tree__``, the structure as JSON text (containers, dict
keys, namedtuple names and fields, and each leaf's path, so ``np.load`` alone shows what
is where). Nothing is pickled: object arrays are refused on save, and load reads with
``allow_pickle=False``. Saving writes a temporary file beside the target and renames it
over the target, so a crash never leaves a half-written file under the name.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fusejit.tracer.pytree import TreeDef, tree_flatten_with_path, tree_unflatten

FORMAT = "fusejit.save/1"
_SCALARS = {"bool": bool, "int": int, "float": float}


def save(path: str | os.PathLike, tree: Any) -> None:
    """Writes ``tree`` (nested dict/list/tuple/namedtuple/None of arrays and Python
    scalars) to ``path`` atomically. Dict keys must be strings, ints, floats, bools or
    None (they are stored as JSON). Raises ``TypeError`` for a leaf that is not numeric
    or boolean data."""
    path = Path(path)
    leaves, treedef = tree_flatten_with_path(tree)
    arrays: dict[str, np.ndarray] = {}
    kinds = []
    for i, (where, leaf) in enumerate(leaves):
        array = np.asarray(leaf)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"fj.save: the leaf at {where or 'the root'} is {type(leaf).__name__} "
                            f"of dtype {array.dtype}, not numeric data")
        arrays[f"leaf_{i}"] = array
        kinds.append(type(leaf).__name__ if type(leaf) in (bool, int, float) else "array")
    header = {"format": FORMAT, "tree": _encode(treedef), "leaves": [w for w, _ in leaves], "kinds": kinds}
    text = json.dumps(header)
    arrays["__tree__"] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> Any:
    """The pytree ``save`` wrote to ``path``: arrays as ``numpy.ndarray`` (Python scalar
    leaves come back as Python scalars, namedtuples as namedtuples of the same name and
    fields). Refuses pickled data; raises ``ValueError`` for a file ``save`` did not write."""
    with np.load(path, allow_pickle=False) as archive:
        if "__tree__" not in archive.files:
            raise ValueError(f"fj.load: {path} has no pytree structure (not written by fj.save)")
        header = json.loads(archive["__tree__"].tobytes().decode("utf-8"))
        if header.get("format") != FORMAT:
            raise ValueError(f"fj.load: {path} has format {header.get('format')!r}, expected {FORMAT!r}")
        treedef = _decode(header["tree"])
        leaves = []
        for i, kind in enumerate(header["kinds"]):
            array = archive[f"leaf_{i}"]
            leaves.append(_SCALARS[kind](array.item()) if kind in _SCALARS else array)
    return tree_unflatten(treedef, leaves)


def _encode(t: TreeDef) -> dict:
    node: dict[str, Any] = {"kind": t.kind, "children": [_encode(c) for c in t.children]}
    if t.kind == "dict":
        for k in t.meta:
            if k is not None and type(k) not in (str, int, float, bool):
                raise TypeError(f"fj.save: dict key {k!r} is not a string, number, bool or None")
        node["keys"] = list(t.meta)
    elif t.kind == "namedtuple":
        node["name"], node["fields"] = t.meta.__name__, list(t.meta._fields)
    return node


def _decode(node: dict) -> TreeDef:
    children = tuple(_decode(c) for c in node["children"])
    kind = node["kind"]
    meta: Any = None
    if kind == "dict":
        meta = tuple(node["keys"])
    elif kind == "namedtuple":
        meta = collections.namedtuple(node["name"], node["fields"])  # noqa: PYI024
    elif kind not in ("leaf", "none", "tuple", "list"):
        raise ValueError(f"fj.load: unknown container kind {kind!r}")
    return TreeDef(kind, meta, children)
