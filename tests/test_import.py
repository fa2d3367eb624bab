"""``import fusejit`` stays cheap (issue 12): Numba, the code generator and the optional
heavy libraries load with the first compilation or the first use, never at import.

Each check runs in a fresh interpreter, since this test process has imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import fusejit as fj

# Modules ``import fusejit`` must not load: Numba (and its CUDA target), the code generator
# and runtime that need it, the IR passes a call runs first (optimization, autodiff, fusion),
# the optional backends, and libraries we interoperate with but never require.
NOT_AT_IMPORT = (
    "numba",
    "numba.cuda",
    "llvmlite",
    "fusejit.codegen",
    "fusejit.ir.transforms.pipeline",
    "fusejit.ir.transforms.autodiff",
    "fusejit.ir.transforms.fusion",
    "fusejit.runtime.executable",
    "fusejit.runtime.cpu",
    "fusejit.runtime.cuda",
    "fusejit.runtime.profile",
    "fusejit.comparison",
    "mpi4py",
    "scipy",
    "matplotlib",
    "torch",
    "jax",
)


def _loaded_after(code: str) -> set[str]:
    """The names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_fusejit_loads_neither_numba_nor_the_code_generator_nor_optional_libraries():
    loaded = _loaded_after("import fusejit")
    assert "fusejit.tracer.jit" in loaded  # the core is there
    assert sorted(loaded & set(NOT_AT_IMPORT)) == []


def test_the_first_compilation_loads_numba_and_counts_it_as_start_up():
    code = """
import numpy as np, fusejit as fj
f = fj.jit(lambda x: x * 2.0)
f(np.ones(3, np.float32))
(times,) = f.cache_info().compile_times
assert times.startup > 0, times
"""
    loaded = _loaded_after(code)
    assert {"numba", "fusejit.codegen", "fusejit.runtime.executable"} <= loaded


LAZY_SUBMODULES = ("augment", "comparison", "debug", "distributed", "lax", "nn", "numpy", "optim", "random",
                   "saving", "scipy")


def test_each_lazy_submodule_is_an_attribute_of_fusejit_before_anyone_imports_it():
    # Attribute access first (PEP 562 ``__getattr__``), then the import system's answer.
    code = (f"import importlib, fusejit\nfor name in {LAZY_SUBMODULES!r}:\n"
            "    assert getattr(fusejit, name) is importlib.import_module('fusejit.' + name), name")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves_and_is_listed_by_dir():
    for name in fj.__all__:
        assert getattr(fj, name) is not None, name
    assert set(fj.__all__) <= set(dir(fj))
    assert fj.profile is fj.comparison.profile and fj.vmap is fj.tracer.vmap.vmap
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        fj.no_such_name  # noqa: B018


def test_lazy_names_load_on_first_use_in_a_fresh_process():
    code = "import fusejit as fj\nfj.nn.linear\nfj.optim\nfj.lax.scan\nfj.vmap\nfj.random"
    loaded = _loaded_after(code)
    assert {"fusejit.nn", "fusejit.optim", "fusejit.lax", "fusejit.tracer.vmap", "fusejit.random"} <= loaded
    assert "numba" not in loaded
