"""fusejit: a JIT tracing compiler for NumPy-style Python with XLA-style fusion.

    import fusejit as fj
    import fusejit.numpy as fnp

    @fj.jit
    def loss(w, x, y):
        return fnp.mean((fnp.tanh(x @ w) - y) ** 2)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The core a traced call needs is imported now; Numba and the code generator load with the
# first compilation (``fusejit.runtime.executable``, imported by ``Lowered``).
from fusejit import config, ir
from fusejit.ir import IRParseError, IRTypeError
from fusejit.runtime.devices import CudaUnavailableError, DeviceArray, devices
from fusejit.tracer.device_put import device_put
from fusejit.tracer.jit import CacheInfo, Compiled, Jitted, Lowered, jit, make_ir
from fusejit.tracer.numpy_api import stop_gradient
from fusejit.tracer.pytree import tree_flatten, tree_flatten_with_path, tree_leaves, tree_map, tree_unflatten
from fusejit.tracer.scopes import named_scope
from fusejit.tracer.tracing import ConcretizationError, EscapedTracerError
from fusejit.tracer.transformations import custom_vjp, grad, jvp, value_and_grad, vjp
from fusejit.version import __version__ as __version__

# The rest loads on first use (PEP 562), so that ``import fusejit`` costs about what
# ``import numba`` does (issue 12): the library on top (fj.nn, fj.optim, ...) and the
# tools a call does not need. Submodules by name; other names by their home module.
_LAZY_SUBMODULES = frozenset({
    "augment", "comparison", "debug", "distributed", "lax", "nn", "numpy", "optim", "random", "saving", "scipy",
})
_LAZY_NAMES = {
    "checkpoint": "fusejit.tracer.checkpoint",
    "Comparison": "fusejit.comparison",
    "compare": "fusejit.comparison",
    "profile": "fusejit.comparison",
    "Profile": "fusejit.runtime.profile",
    "load": "fusejit.saving",
    "save": "fusejit.saving",
    "GradcheckError": "fusejit.tracer.gradcheck",
    "gradcheck": "fusejit.tracer.gradcheck",
    "hessian": "fusejit.tracer.vmap",
    "jacfwd": "fusejit.tracer.vmap",
    "jacrev": "fusejit.tracer.vmap",
    "vmap": "fusejit.tracer.vmap",
}

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from fusejit import augment, debug, distributed, lax, nn, optim, random
    from fusejit import comparison as comparison
    from fusejit import numpy as numpy
    from fusejit import saving as saving
    from fusejit import scipy as scipy
    from fusejit.comparison import Comparison, compare, profile
    from fusejit.runtime.profile import Profile
    from fusejit.saving import load, save
    from fusejit.tracer.checkpoint import checkpoint
    from fusejit.tracer.gradcheck import GradcheckError, gradcheck
    from fusejit.tracer.vmap import hessian, jacfwd, jacrev, vmap


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        value = importlib.import_module(f"fusejit.{name}")
    elif name in _LAZY_NAMES:
        value = getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    else:
        raise AttributeError(f"module 'fusejit' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY_SUBMODULES | set(_LAZY_NAMES))

def compile_ir(fn: ir.Function, *, backend: str | None = None, fuse: bool = True):  # noqa: ANN201
    """Compiles an IR function (for example one from ``fj.ir.parse``); the result is
    called with one NumPy array per parameter and returns a tuple of arrays."""
    from fusejit.ir.transforms.pipeline import optimize
    from fusejit.runtime.executable import compile_function, partition

    ir.verify(fn)
    optimized, _ = optimize(fn, check=config.value("check_ir"))
    backend = backend or config.value("backend")
    executable = compile_function(partition(optimized, fuse, backend), backend=backend, fuse=fuse)

    def run(*args: object) -> tuple:
        import numpy as np

        return executable([np.asarray(a, dtype=p.dtype.np) for a, p in zip(args, fn.params, strict=True)])

    run.executable = executable  # type: ignore[attr-defined]
    return run


__all__ = [
    "augment",
    "debug",
    "distributed",
    "lax",
    "nn",
    "optim",
    "random",
    "CacheInfo",
    "Comparison",
    "Compiled",
    "ConcretizationError",
    "CudaUnavailableError",
    "DeviceArray",
    "EscapedTracerError",
    "GradcheckError",
    "IRParseError",
    "IRTypeError",
    "Jitted",
    "Lowered",
    "Profile",
    "checkpoint",
    "compare",
    "compile_ir",
    "config",
    "custom_vjp",
    "device_put",
    "devices",
    "grad",
    "gradcheck",
    "hessian",
    "ir",
    "jacfwd",
    "jacrev",
    "jit",
    "jvp",
    "load",
    "make_ir",
    "named_scope",
    "profile",
    "save",
    "stop_gradient",
    "tree_flatten",
    "tree_flatten_with_path",
    "tree_leaves",
    "tree_map",
    "tree_unflatten",
    "value_and_grad",
    "vjp",
    "vmap",
]
