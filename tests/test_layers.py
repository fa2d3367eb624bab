"""The import graph follows the data flow: ``ir`` <- ``codegen`` <- ``runtime`` <-
``tracer`` <- the library on top. A module imports (at module level or inside a function)
only from its own layer or the ones below it; ``config`` and ``version`` are leaves
everyone may read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "fusejit"
LEAVES = {"fusejit.config", "fusejit.version"}
RANK = {"ir": 0, "codegen": 1, "runtime": 2, "tracer": 3}
TOP = 4  # nn, optim, augment, comparison, testing, the command line, the package itself


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK.get(parts[1], TOP) if len(parts) > 1 else TOP


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "fusejit":  # from fusejit import config: the names are modules
                found.update(f"fusejit.{a.name}" for a in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "fusejit" or m.startswith("fusejit.")}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_imports_a_layer_above_its_own(path):
    name = ".".join(("fusejit", *path.relative_to(PACKAGE).with_suffix("").parts))
    if name in LEAVES:
        assert not imports(path), f"{name} is a leaf"
        return
    own = layer(name)
    upward = sorted(m for m in imports(path)
                    if m not in LEAVES and m.rsplit(".", 1)[0] not in LEAVES and layer(m) > own)
    assert not upward, f"{name} (layer {own}) imports from above: {upward}"
