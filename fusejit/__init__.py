"""fusejit: a JIT tracing compiler for NumPy-style Python with XLA-style fusion.

    import fusejit as fj
    import fusejit.numpy as fnp

    @fj.jit
    def loss(w, x, y):
        return fnp.mean((fnp.tanh(x @ w) - y) ** 2)
"""

from __future__ import annotations

# The library on top, importable as fj.nn, fj.optim and fj.augment (after the core).
from fusejit import augment, config, debug, distributed, ir, lax, nn, optim, random  # noqa: E402
from fusejit.comparison import Comparison, compare, profile
from fusejit.ir import IRParseError, IRTypeError
from fusejit.runtime.devices import CudaUnavailableError, DeviceArray, devices
from fusejit.runtime.profile import Profile
from fusejit.saving import load, save
from fusejit.tracer.device_put import device_put
from fusejit.tracer.gradcheck import GradcheckError, gradcheck
from fusejit.tracer.jit import CacheInfo, Compiled, Jitted, Lowered, jit, make_ir
from fusejit.tracer.numpy_api import stop_gradient
from fusejit.tracer.pytree import tree_flatten, tree_flatten_with_path, tree_leaves, tree_map, tree_unflatten
from fusejit.tracer.scopes import named_scope
from fusejit.tracer.tracing import ConcretizationError, EscapedTracerError
from fusejit.tracer.transformations import custom_vjp, grad, jvp, value_and_grad, vjp
from fusejit.tracer.vmap import hessian, jacfwd, jacrev, vmap
from fusejit.version import __version__ as __version__


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
