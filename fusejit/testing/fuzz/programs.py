"""Programs: their inputs (``InputSpec``, memory layouts), steps, rendering to Python
source, and their NumPy evaluation (validity, exactness, the longdouble shadow run)."""

from __future__ import annotations

import re
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

DTYPES = ("float32", "float64", "int32", "int64", "bool")
LAYOUTS = ("C", "C", "C", "F", "strided", "reversed", "transposed", "readonly", "broadcast")
MAX_SIZE = 256  # elements per value
LARGE_SIZE = 2**21  # in "large" programs, whose arrays are over the threads threshold
MAX_INT = 2**20  # integer values stay below this, so no configuration can overflow
_VAR = re.compile(r"\b[xv]\d+\b")


# ---------------------------------------------------------------------------------------
# Programs


@dataclass(frozen=True)
class InputSpec:
    """One argument: its shape, dtype, memory layout and the seed of its values."""

    shape: tuple[int, ...]
    dtype: str
    layout: str = "C"
    seed: int = 0
    special: bool = False  # sprinkle nan, +-inf and -0.0 into float values
    smooth: bool = False  # only normally distributed floats (no ties, for finite differences)

    def values(self) -> np.ndarray:
        """The logical values (C-contiguous)."""
        rng = np.random.default_rng(self.seed)
        shape = self.shape
        if self.layout == "broadcast":  # values repeat along the broadcast axis
            shape = tuple(1 if i == self._bcast_axis() else n for i, n in enumerate(shape))
        if self.dtype == "bool":
            out = np.asarray(rng.random(shape) < 0.5)
        elif self.dtype.startswith("int"):
            out = np.asarray(rng.integers(-5, 6, shape)).astype(self.dtype)
        else:
            kind = rng.integers(1, 3) if self.smooth else rng.integers(3)
            if kind == 0:  # half-integers: ties for max/argmax, exact sums
                out = rng.integers(-6, 7, shape) / 2.0
            else:
                out = rng.standard_normal(shape) * (1.0 if kind == 1 else 3.0)
            out = np.array(out, dtype=np.float64)
            if self.special and out.size:
                flat = out.reshape(-1)
                for v in (np.nan, np.inf, -np.inf, -0.0):
                    if rng.random() < 0.5:
                        flat[rng.integers(flat.size)] = v
            out = out.astype(self.dtype)
        out = np.asarray(out)
        return np.broadcast_to(out, self.shape) if self.layout == "broadcast" else out

    def _bcast_axis(self) -> int:
        sizes = [i for i, n in enumerate(self.shape) if n > 1]
        return sizes[0] if sizes else -1

    def make(self) -> np.ndarray:
        """A fresh array with ``values()`` in this spec's layout."""
        return lay_out(self.values(), self.layout)

    def literal(self) -> str:
        """Python that builds this input (values as a literal)."""
        v = self.values()
        if v.size > 64:
            return f"fuzz.{self!r}.make()"
        text = np.array2string(np.ascontiguousarray(v), separator=", ", threshold=10**6, floatmode="unique")
        text = text.replace("nan", "np.nan").replace("inf", "np.inf")
        arr = f"np.array({text}, dtype=np.{'bool_' if self.dtype == 'bool' else self.dtype})"
        if v.ndim == 0:
            item = repr(v.item()).replace("nan", "np.nan").replace("inf", "np.inf")
            arr = f"np.array({item}, dtype=np.{'bool_' if self.dtype == 'bool' else self.dtype})"
        return {
            "F": f"np.asfortranarray({arr})",
            "strided": f"_strided({arr})",
            "reversed": f"np.flip(np.flip({arr}).copy())",
            "transposed": f"np.ascontiguousarray({arr}.T).T",
            "readonly": f"_readonly({arr})",
            "broadcast": f"_readonly({arr})",
        }.get(self.layout, arr)


def lay_out(v: np.ndarray, layout: str) -> np.ndarray:
    """A fresh array with the values ``v`` in memory ``layout``."""
    if layout == "broadcast" and 0 in v.strides:
        return v  # a read-only view with a zero stride
    if layout == "F" and v.ndim:  # (np.asfortranarray makes 0-d arrays 1-d)
        return np.asfortranarray(v)
    if layout == "strided" and v.ndim:
        big = np.zeros(tuple(2 * n for n in v.shape), v.dtype)
        view = big[tuple(slice(None, None, 2) for _ in v.shape)]
        view[...] = v
        return view
    if layout == "reversed" and v.ndim:
        return np.flip(np.flip(v).copy())
    if layout == "transposed" and v.ndim > 1:
        return np.ascontiguousarray(v.T).T
    out = np.array(v, copy=True)
    if layout in ("readonly", "broadcast"):
        out.flags.writeable = False
    return out


@dataclass(frozen=True)
class Step:
    """``out = expr``. ``keeps_exact``: the result is bit-exact in every configuration
    when the operands are; ``needs_exact``: a discontinuous op, valid on exact operands only."""

    out: str
    expr: str
    family: str
    keeps_exact: bool = False
    needs_exact: bool = False

    @property
    def args(self) -> list[str]:
        return sorted(set(_VAR.findall(self.expr)))


@dataclass(frozen=True)
class Program:
    inputs: tuple[InputSpec, ...]
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    seed: int = 0
    grad: bool = False  # also check the gradient of a scalar loss of the first output
    large: bool = False  # arrays big enough for multi-threaded kernels

    def source(self, name: str = "program") -> str:
        params = ", ".join(f"x{i}" for i in range(len(self.inputs)))
        lines = [f"def {name}({params}):"]
        lines += [f"    {s.out} = {s.expr}" for s in self.steps]
        lines.append(f"    return ({', '.join(self.outputs)},)")
        return "\n".join(lines) + "\n"

    def function(self, module: Any, name: str = "program") -> Callable[..., tuple]:
        """The program as a Python function with ``fnp`` bound to ``module``."""
        namespace = {"fnp": module, "np": np}
        code = compile(self.source(name), f"<fuzz program {self.seed}>", "exec")
        exec(code, namespace)  # noqa: S102 - the fuzzer runs the code it generates
        return namespace[name]

    def make_inputs(self) -> list[np.ndarray]:
        return [spec.make() for spec in self.inputs]

    def reproducer(self) -> str:
        """A self-contained script: imports, the inputs, the function, the comparison."""
        helpers = ""
        if any(s.layout in ("strided", "readonly", "broadcast") for s in self.inputs):
            helpers = (
                "def _strided(a):\n"
                "    big = np.zeros(tuple(2 * n for n in a.shape), a.dtype)\n"
                "    view = big[tuple(slice(None, None, 2) for _ in a.shape)]\n"
                "    view[...] = a\n    return view\n\n"
                "def _readonly(a):\n    a = np.array(a)\n    a.flags.writeable = False\n    return a\n\n"
            )
        inputs = "\n".join(f"x{i} = {s.literal()}" for i, s in enumerate(self.inputs))
        args = ", ".join(f"x{i}" for i in range(len(self.inputs)))
        return (
            "import numpy as np\nimport fusejit as fj\nimport fusejit.numpy as fnp\n"
            "from fusejit.testing import fuzz\n\n"
            f"{helpers}{self.source()}\n{inputs}\n"
            f"print('fused  ', fj.jit(program)({args}))\n"
            f"print('unfused', fj.jit(program, fuse=False)({args}))\n"
            f"print('eager  ', program({args}))\n"
            f"fnp = np  # the oracle: the same function over NumPy\nprint('numpy  ', program({args}))\n"
        )


# ---------------------------------------------------------------------------------------
# Evaluating a program with NumPy: validity, exactness


class Invalid(Exception):
    """The program is not well defined (NumPy rejects it, or an integer op misbehaves)."""


@dataclass
class Evaluation:
    """The NumPy run of a program: each variable's value and exactness, and the
    machine epsilon of its least precise float."""

    env: dict[str, np.ndarray]
    exact: dict[str, bool]
    min_eps: float


def _float_args(env: dict[str, Any], args: list[str]) -> list[str]:
    return [a for a in args if np.asarray(env[a]).dtype.kind == "f"]


def evaluate(program: Program, module: Any = np, perturb: np.random.Generator | None = None) -> Evaluation:
    """Runs ``program`` step by step with NumPy; raises ``Invalid`` when a step fails,
    makes an unsupported value, overflows an integer, or applies a discontinuous op to
    an inexact float.

    With ``perturb``, the float operands and results of every rounding step (not the
    bit-exact or discontinuous ones) get random relative noise of a few ulps: the spread
    of such runs estimates how far another valid evaluation order may land (a sum's
    operands perturbed by eps each move it by about eps * sum |x|, its error bound)."""
    env: dict[str, Any] = {}
    exact: dict[str, bool] = {}
    for i, spec in enumerate(program.inputs):
        env[f"x{i}"] = spec.values()
        exact[f"x{i}"] = True
    min_eps = float(np.finfo(np.float64).eps)
    ns = {"fnp": module, "np": np}
    for step in program.steps:
        args = step.args
        if any(a not in env for a in args):
            raise Invalid(f"{step.out} uses an undefined variable")
        if step.needs_exact and not all(exact[a] for a in _float_args(env, args)):
            raise Invalid(f"{step.out}: discontinuous op on an inexact float")
        noisy = perturb is not None and not (step.keeps_exact or step.needs_exact)
        scope = dict(ns, **{a: _noise(env[a], perturb) if noisy else env[a] for a in args})
        out = _eval_checked(step.expr, scope)
        if noisy:
            out = _noise(out, perturb)
        if out.dtype.name not in DTYPES:
            raise Invalid(f"{step.out}: dtype {out.dtype}")
        if out.size > (LARGE_SIZE if program.large else MAX_SIZE) or out.ndim > 5:
            raise Invalid(f"{step.out}: too big {out.shape}")
        if out.dtype.kind in "iu" and out.size and np.abs(out).max() >= MAX_INT:
            raise Invalid(f"{step.out}: integer values too large")
        env[step.out] = out
        all_exact = all(exact[a] for a in args)
        exact[step.out] = all_exact and (step.keeps_exact or out.dtype.kind in "biu")
        for a in [*args, step.out]:
            v = np.asarray(env[a])
            if v.dtype.kind == "f":
                min_eps = max(min_eps, float(np.finfo(v.dtype).eps))
    for o in program.outputs:
        if o not in env:
            raise Invalid(f"output {o} undefined")
    return Evaluation(env, exact, min_eps)


def _noise(v: Any, rng: np.random.Generator | None) -> Any:
    v = np.asarray(v)
    if rng is None or v.dtype.kind != "f" or not v.size:
        return v
    eps = np.finfo(v.dtype).eps
    with np.errstate(all="ignore"):
        return (v * (1 + rng.uniform(-4 * eps, 4 * eps, v.shape))).astype(v.dtype)


def _eval_checked(expr: str, scope: dict[str, Any]) -> np.ndarray:
    """NumPy's value of ``expr``: floating-point errors are fine for float results
    (inf and nan are values) but make integer results (division by zero, invalid casts)
    invalid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with np.errstate(all="raise"):
                return np.asarray(eval(expr, scope))  # noqa: S307
        except FloatingPointError:
            pass
        except Exception as e:
            raise Invalid(f"{expr}: {type(e).__name__}: {e}") from None
        with np.errstate(all="ignore"):
            out = np.asarray(eval(expr, scope))  # noqa: S307
    if out.dtype.kind != "f":
        raise Invalid(f"{expr}: floating-point error in an integer result")
    return out


def _shadow_module() -> types.SimpleNamespace:
    """NumPy with float32/float64 spelled as longdouble (for the shadow run)."""
    ns = types.SimpleNamespace(**{k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    ns.float32 = ns.float64 = np.longdouble
    return ns


SHADOW = _shadow_module()


def shadow_outputs(program: Program) -> tuple[np.ndarray, ...] | None:
    """The outputs with every float input in longdouble (None when that fails)."""
    fn = program.function(SHADOW)
    args = [v.astype(np.longdouble) if v.dtype.kind == "f" else v for v in (s.values() for s in program.inputs)]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return tuple(np.asarray(o) for o in fn(*args))
    except Exception:
        return None
