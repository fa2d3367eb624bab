"""A differential fuzzer: random NumPy-style programs, run every way fusejit can run them.

A program is a short list of steps, each one line of Python over ``fnp`` (for example
``v2 = fnp.sum(v1, axis=(0, 2), keepdims=True)``). Rendered against ``fusejit.numpy`` it
goes through the tracer exactly as user code does; rendered against ``numpy`` it is the
oracle. Every program runs in these configurations:

=============  ===========================================================================
``numpy``      the oracle: the same source with ``fnp`` bound to ``numpy``
``eager``      ``fusejit.numpy`` on concrete arrays (each primitive's NumPy rule)
``interp``     ``fj.make_ir`` (the traced IR) run by ``fusejit.ir.interpreter``
``interp_opt`` ``fj.jit(f, backend="interpret")``: the optimized IR, interpreted
``unfused``    ``fj.jit(f, fuse=False)``
``fused``      ``fj.jit(f)``
=============  ===========================================================================

Each configuration is compared with NumPy (values, dtype, shape), and ``fused`` with
``unfused`` and ``interp`` with ``eager`` pairwise. Integers and booleans must match
exactly. Floats are compared with a tolerance derived from the program, per element:
a *shadow* run (NumPy again, every float in ``longdouble``) measures how ill-conditioned
the element is; three *perturbed* runs (every rounding op's operands and result moved by
a few ulps: what another evaluation order, FMA contraction or a sum's reassociation may
do) measure how far a valid evaluation may land; a floor grows with the op count. NaN
must match NaN, inf must match inf of the same sign, and a finite oracle value must stay
finite (unless the shadow or a perturbed run says the element is unstable). ``fused``
and ``unfused`` are also called a second time, with the inputs in other memory layouts
(the cached executable): same bits, and the first call's results must stay intact.

Discontinuous operations (comparisons, ``floor``, ``%``, ``//``, ``argmax``, casts to
ints or bools) are only applied to *exact* float values: inputs and what bit-exact
operations (layout, slicing, gathers, ``maximum``, ``abs``, ``where``, ...) make of them,
so every configuration takes the same branch. A failing program is shrunk (steps removed
or bypassed, shapes and layouts simplified) while the failure persists, classified (known
bugs are named), and printed as Python source with its seed::

    python -m fusejit.testing.fuzz --count 2000 --seed 0
    python -m fusejit.testing.fuzz --replay 12345          # one program by its seed

A smooth float64 subset is also differentiated: ``fj.jit(fj.grad(loss))`` against
``fj.grad`` (the interpreter) and against central finite differences of the NumPy run.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
import traceback
import types
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

CONFIGS = ("eager", "interp", "interp_opt", "unfused", "fused")
PAIRS = (("fused", "unfused"), ("interp", "eager"))
DTYPES = ("float32", "float64", "int32", "int64", "bool")
LAYOUTS = ("C", "C", "C", "F", "strided", "reversed", "transposed", "readonly", "broadcast")
MAX_SIZE = 256  # elements per value
LARGE_SIZE = 2**21  # in "large" programs, whose arrays are over the threads threshold
MAX_INT = 2**20  # integer values stay below this, so no configuration can overflow
SCALARS = {"float": ("0.5", "2.0", "-1.5", "3.0", "0.0", "fnp.inf"), "int": ("2", "3", "-1", "1"), "bool": ("True", "False")}
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


# ---------------------------------------------------------------------------------------
# Generating programs


class Generator:
    """Draws one random, well-typed program from a seed."""

    def __init__(self, seed: int, max_ops: int = 8, grad: bool = False, large: bool = False) -> None:
        self.seed, self.rng, self.max_ops, self.grad = seed, np.random.default_rng(seed), max_ops, grad
        self.large = large and not grad
        self.inputs: list[InputSpec] = []
        self.steps: list[Step] = []
        self.ev: Evaluation | None = None

    # random helpers ---------------------------------------------------------------------
    def choice(self, seq: Any) -> Any:
        seq = list(seq)
        return seq[int(self.rng.integers(len(seq)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def base_shape(self) -> tuple[int, ...]:
        if self.large:  # over config.parallel_threshold (2**18 elements): prange kernels
            return self.choice(((300_000,), (512, 600), (600, 1, 512), (64, 64, 70), (2, 1000, 150)))
        rank = self.choice((0, 1, 1, 2, 2, 2, 3, 3, 4))
        for _ in range(20):
            dims = tuple(self.choice((1, 1, 2, 3, 4, 5, 6)) for _ in range(rank))
            if not self.grad and self.chance(0.06) and rank:
                dims = tuple(0 if i == self.rng.integers(rank) else n for i, n in enumerate(dims))
            if math.prod(dims) <= 96:
                return dims
        return (3,)

    def input_shape(self, base: tuple[int, ...]) -> tuple[int, ...]:
        shape = base[int(self.rng.integers(len(base) + 1)) :] if self.chance(0.3) else base
        return tuple(1 if self.chance(0.2) else n for n in shape)

    def new_input(self, shape: tuple[int, ...], dtype: str | None = None) -> str:
        if dtype is None:
            dtype = "float64" if self.grad else self.choice(("float32", "float32", "float64", "float64", "int32", "int64", "bool"))
        layout = "C" if self.grad else self.choice(LAYOUTS)
        special = (not self.grad) and dtype.startswith("float") and self.chance(0.25)
        self.inputs.append(InputSpec(tuple(shape), dtype, layout, int(self.rng.integers(2**31)), special, self.grad))
        return f"x{len(self.inputs) - 1}"

    # the pool of values -----------------------------------------------------------------
    def names(self) -> list[str]:
        return [f"x{i}" for i in range(len(self.inputs))] + [s.out for s in self.steps]

    def val(self, name: str) -> np.ndarray:
        assert self.ev is not None
        return np.asarray(self.ev.env[name])

    def pick(self, pred: Callable[[str], bool] = lambda n: True) -> str | None:
        cands = [n for n in self.names() if pred(n)]
        if not cands:
            return None
        # Prefer recent values, so programs are chains rather than independent ops.
        weights = np.arange(1, len(cands) + 1, dtype=float) ** 2
        return cands[int(self.rng.choice(len(cands), p=weights / weights.sum()))]

    def is_exact(self, name: str) -> bool:
        assert self.ev is not None
        return self.ev.exact[name] or self.val(name).dtype.kind != "f"

    def kind(self, name: str) -> str:
        k = self.val(name).dtype.kind
        return "float" if k == "f" else "bool" if k == "b" else "int"

    # the program ------------------------------------------------------------------------
    def program(self) -> Program:
        base = self.base_shape()
        for _ in range(int(self.rng.integers(1, 3)) if not self.grad else int(self.rng.integers(1, 3))):
            self.new_input(self.input_shape(base))
        self.ev = evaluate(self._snapshot(()))
        n_ops = int(self.rng.integers(1, self.max_ops + 1))
        tries = 0
        while len(self.steps) < n_ops and tries < 12 * n_ops:
            tries += 1
            n_inputs = len(self.inputs)
            step = self.draw_step(f"v{len(self.steps)}")
            if step is None:
                del self.inputs[n_inputs:]
                continue
            try:
                self.ev = evaluate(self._snapshot((*self.steps, step)))
            except Invalid:
                del self.inputs[n_inputs:]
                self.ev = evaluate(self._snapshot(tuple(self.steps)))
                continue
            self.steps.append(step)
        outputs = [self.steps[-1].out if self.steps else "x0"]
        if len(self.steps) > 2 and self.chance(0.3):
            other = self.choice([s.out for s in self.steps[:-1]])
            outputs.append(other)
        return Program(tuple(self.inputs), tuple(self.steps), tuple(outputs), self.seed, self.grad, self.large)

    def _snapshot(self, steps: tuple[Step, ...]) -> Program:
        return Program(tuple(self.inputs), steps, (), self.seed, large=self.large)

    def draw_step(self, out: str) -> Step | None:
        if self.grad:
            families = (
                (self.elementwise_binary, 5), (self.elementwise_unary, 4), (self.reduction, 3),
                (self.layout, 3), (self.slicing, 2), (self.gather, 1), (self.concat, 1),
                (self.contraction, 2), (self.select, 1),
            )  # fmt: skip
        else:
            families = (
                (self.elementwise_binary, 6), (self.elementwise_unary, 4), (self.comparison, 2),
                (self.reduction, 5), (self.layout, 3), (self.slicing, 3), (self.gather, 2),
                (self.concat, 2), (self.contraction, 2), (self.select, 2), (self.cast, 2),
                (self.constant, 1),
            )  # fmt: skip
        fns, weights = zip(*families, strict=True)
        w = np.array(weights, dtype=float)
        fn = fns[int(self.rng.choice(len(fns), p=w / w.sum()))]
        return fn(out)

    # operand helpers ------------------------------------------------------------------
    def partner(self, a: str, allow_new: bool = True) -> str | None:
        """A value that broadcasts with ``a`` (maybe a new input with a related shape)."""
        sa = self.val(a).shape

        def ok(n: str) -> bool:
            try:
                np.broadcast_shapes(sa, self.val(n).shape)
                return n != a or self.chance(0.3)
            except ValueError:
                return False

        b = self.pick(ok) if self.chance(0.8) else None
        if b is None and allow_new and len(self.inputs) < 4:
            b = self.new_input(self.input_shape(sa), "float64" if self.grad else None)
            self.ev = evaluate(self._snapshot(tuple(self.steps)))
        return b

    def scalar(self, kind: str) -> str:
        if self.grad:  # smooth: no inf, no division by zero
            return self.choice(("0.5", "2.0", "-1.5", "3.0"))
        return self.choice(SCALARS[kind])

    # step families --------------------------------------------------------------------
    def elementwise_binary(self, out: str) -> Step | None:
        a = self.pick()
        if a is None:
            return None
        b = self.partner(a) if self.chance(0.7) else None
        b_expr = b if b is not None else self.scalar(self.kind(a))
        if self.chance(0.1) and self.val(a).ndim:
            b_expr = f"fnp.arange({self.val(a).shape[-1]})"
        if self.grad:
            op = self.choice(("+", "-", "*", "add", "subtract", "multiply", "square", "pow2", "pow3"))
        else:
            op = self.choice((
                "+", "-", "*", "/", "add", "subtract", "multiply", "divide", "maximum", "minimum",
                "%", "//", "pow2", "pow3", "powf", "&", "|", "logical_and", "logical_or", "logical_xor",
            ))  # fmt: skip
        exact_ops = {"maximum", "minimum", "logical_and", "logical_or", "logical_xor", "&", "|"}
        needs = op in ("%", "//")
        if needs and not (self.is_exact(a) and (b is None or self.is_exact(b))):
            return None
        x, y = (a, b_expr) if self.chance(0.8) else (b_expr, a)
        if op in ("+", "-", "*", "/", "%", "//", "&", "|"):
            expr = f"{x} {op} {y}"
        elif op == "square":
            expr = f"fnp.square({a})"
        elif op == "pow2":
            expr = f"{a} ** 2" if self.chance(0.5) else f"fnp.power({a}, 2)"
        elif op == "pow3":
            expr = f"fnp.power({a}, 3)"
        elif op == "powf":
            expr = f"fnp.power(fnp.abs({a}), 0.5)" if self.kind(a) == "float" else f"fnp.power({a}, 2)"
        else:
            expr = f"fnp.{op}({x}, {y})"
        return Step(out, expr, f"binary:{op}", keeps_exact=op in exact_ops, needs_exact=needs)

    def elementwise_unary(self, out: str) -> Step | None:
        a = self.pick()
        if a is None:
            return None
        if self.grad:
            fn = self.choice(("tanh", "sin", "cos", "exp", "negative", "neg"))
            if fn == "exp" and (self.val(a).size == 0 or np.abs(self.val(a)).max() > 5):
                fn = "tanh"
        else:
            fn = self.choice((
                "exp", "log", "tanh", "sqrt", "abs", "neg", "log1p", "expm1", "sin", "cos",
                "floor", "ceil", "rint", "sign", "square", "negative", "isnan", "isfinite",
                "clip", "logical_not", "reciprocal", "absolute", "trunc", "log2", "log10", "exp2", "isinf",
                "round1", "tan",
            ))  # fmt: skip
        discontinuous = {"floor", "ceil", "rint", "sign", "isnan", "isfinite", "logical_not", "trunc", "isinf", "round1"}
        exact = {"abs", "neg", "negative", "clip", "absolute"} | discontinuous
        if fn in discontinuous and not self.is_exact(a):
            return None
        if fn == "neg":
            expr = f"-{a}"
        elif fn == "clip":
            expr = f"fnp.clip({a}, -1, 2)"
        elif fn == "round1":
            expr = f"fnp.round({a}, 1)"
        else:
            expr = f"fnp.{fn}({a})"
        return Step(out, expr, f"unary:{fn}", keeps_exact=fn in exact, needs_exact=fn in discontinuous)

    def comparison(self, out: str) -> Step | None:
        a = self.pick(self.is_exact)
        if a is None:
            return None
        b = self.partner(a)
        if b is not None and not self.is_exact(b):
            b = None
        y = b if b is not None else self.scalar(self.kind(a))
        op = self.choice(("<", "<=", ">", ">=", "==", "!=", "less", "greater_equal", "not_equal"))
        expr = f"({a} {op} {y})" if len(op) <= 2 else f"fnp.{op}({a}, {y})"
        return Step(out, expr, "compare", keeps_exact=True, needs_exact=True)

    def _axes(self, ndim: int) -> str:
        r = self.rng.random()
        if r < 0.2 or ndim == 0:
            return "None" if ndim else self.choice(("None", "()"))
        if r < 0.55:
            ax = int(self.rng.integers(ndim))
            return str(ax - ndim if self.chance(0.3) else ax)
        subset = [i for i in range(ndim) if self.chance(0.5)]
        return str(tuple(subset))

    def reduction(self, out: str) -> Step | None:
        a = self.pick()
        if a is None:
            return None
        v = self.val(a)
        if self.grad:
            fn = self.choice(("sum", "mean", "sum", "var"))
        else:
            # (no prod: fusejit.numpy has none)
            fn = self.choice(("sum", "sum", "mean", "max", "min", "any", "all", "argmax", "argmin", "var", "std"))
        needs = fn in ("any", "all", "argmax", "argmin") and v.dtype.kind == "f"
        if needs and not self.is_exact(a):
            return None
        keep = ", keepdims=True" if self.chance(0.35) else ""
        if fn in ("argmax", "argmin"):
            axis = "None" if v.ndim == 0 or self.chance(0.25) else str(int(self.rng.integers(-v.ndim, v.ndim)))
        else:
            axis = self._axes(v.ndim)
        ddof = ", ddof=1" if fn in ("var", "std") and self.chance(0.2) and not self.grad else ""
        expr = f"fnp.{fn}({a}, axis={axis}{ddof}{keep})"
        return Step(out, expr, f"reduce:{fn}", keeps_exact=fn in ("max", "min", "any", "all"), needs_exact=needs)

    def layout(self, out: str) -> Step | None:
        a = self.pick()
        if a is None:
            return None
        shape = self.val(a).shape
        nd = len(shape)
        op = self.choice(("transpose", "T", "reshape", "reshape", "expand_dims", "squeeze", "broadcast_to",
                          "moveaxis", "swapaxes", "flip", "ravel", "pad", "atleast_2d"))  # fmt: skip
        if op == "transpose" and nd > 1:
            expr = f"fnp.transpose({a}, {tuple(int(i) for i in self.rng.permutation(nd))})"
        elif op == "T":
            expr = f"{a}.T"
        elif op == "reshape":
            expr = f"fnp.reshape({a}, {self._new_shape(shape)})"
        elif op == "expand_dims":
            expr = f"fnp.expand_dims({a}, {int(self.rng.integers(-nd - 1, nd + 1))})"
        elif op == "squeeze":
            ones = [i for i, n in enumerate(shape) if n == 1]
            expr = f"fnp.squeeze({a})" if not ones or self.chance(0.4) else f"fnp.squeeze({a}, axis={self.choice(ones)})"
        elif op == "broadcast_to":
            target = tuple(self.choice((n, 2, 3)) if n == 1 else n for n in shape)
            if self.chance(0.4):
                target = (self.choice((1, 2, 3)),) + target
            expr = f"fnp.broadcast_to({a}, {target})"
        elif op == "moveaxis" and nd > 1:
            expr = f"fnp.moveaxis({a}, {int(self.rng.integers(nd))}, {int(self.rng.integers(-nd, nd))})"
        elif op == "swapaxes" and nd > 1:
            expr = f"fnp.swapaxes({a}, {int(self.rng.integers(nd))}, {int(self.rng.integers(-nd, nd))})"
        elif op == "flip" and nd:
            expr = f"fnp.flip({a}, axis={int(self.rng.integers(nd))})" if self.chance(0.6) else f"fnp.flip({a})"
        elif op == "ravel":
            expr = f"fnp.ravel({a})"
        elif op == "pad" and nd:
            widths = tuple((int(self.rng.integers(3)), int(self.rng.integers(3))) for _ in range(nd))
            expr = f"fnp.pad({a}, {widths}, constant_values={self.scalar(self.kind(a))})"
        elif op == "atleast_2d":
            expr = f"fnp.atleast_2d({a})"
        else:
            return None
        return Step(out, expr, f"layout:{op}", keeps_exact=True)

    def _new_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        size = math.prod(shape)
        if size == 0:
            return self.choice(((0,), (0, 3), (2, 0), (-1,)))
        dims, rest = [], size
        for p in (2, 3, 5, 7, 2, 3, 2):
            while rest % p == 0 and self.chance(0.5):
                dims.append(p)
                rest //= p
        dims.append(rest)
        dims = [d for d in dims if d != 1] or [1]
        for _ in range(int(self.rng.integers(0, 2))):
            dims.insert(int(self.rng.integers(len(dims) + 1)), 1)
        dims = [int(d) for d in self.rng.permutation(dims)][:5]
        if math.prod(dims) != size:
            return (size,)
        if self.chance(0.3):
            dims[int(self.rng.integers(len(dims)))] = -1
        return tuple(dims)

    def _slice(self, n: int) -> str:
        r = self.rng.random()
        if r < 0.15:
            return ":"
        if r < 0.3:
            return "::-1"
        if r < 0.4 and n:
            i = int(self.rng.integers(n))
            return f"{i}:{i}"  # empty
        if r < 0.5 and n:
            return str(int(self.rng.integers(-n, n)))  # an integer index drops the axis
        start = self.choice(("", str(int(self.rng.integers(-n - 1, n + 2)))))
        stop = self.choice(("", str(int(self.rng.integers(-n - 1, n + 2)))))
        step = self.choice(("", "", "2", "-1", "-2", "3"))
        return f"{start}:{stop}" + (f":{step}" if step else "")

    def slicing(self, out: str) -> Step | None:
        a = self.pick(lambda n: self.val(n).ndim > 0)
        if a is None:
            return None
        shape = self.val(a).shape
        parts = [self._slice(n) for n in shape[: int(self.rng.integers(1, len(shape) + 1))]]
        if self.chance(0.15):
            parts.insert(int(self.rng.integers(len(parts) + 1)), "None")
        if self.chance(0.15) and len(parts) < len(shape):
            parts = ["...", *parts[1:]] if self.chance(0.5) else [*parts, "..."]
        return Step(out, f"{a}[{', '.join(parts)}]", "slice", keeps_exact=True)

    def gather(self, out: str) -> Step | None:
        a = self.pick(lambda n: self.val(n).ndim > 0 and self.val(n).size > 0)
        if a is None:
            return None
        shape = self.val(a).shape
        ax = int(self.rng.integers(len(shape)))
        n = shape[ax]
        k = int(self.rng.integers(1, 5))
        idx = [int(i) for i in self.rng.integers(-n, n, k)]
        r = self.rng.random()
        if r < 0.35:
            expr = f"fnp.take({a}, {idx}, axis={ax})"
        elif r < 0.6:
            expr = f"{a}[{', '.join([':'] * ax + [str(idx)])}]"
        elif r < 0.8 and not self.grad:
            # a traced index: argmax along the axis, then take_along_axis
            if self.val(a).dtype.kind == "f" and not self.is_exact(a):
                src = self.pick(lambda m: self.val(m).shape == shape and self.is_exact(m))
                if src is None:
                    return None
            else:
                src = a
            expr = f"fnp.take_along_axis({a}, fnp.argmax({src}, axis={ax}, keepdims=True), axis={ax})"
        else:
            expr = f"fnp.take({a}, {self.choice(idx)}, axis={ax})"
        return Step(out, expr, "gather", keeps_exact=True)

    def concat(self, out: str) -> Step | None:
        a = self.pick(lambda n: self.val(n).ndim > 0)
        if a is None:
            return None
        shape = self.val(a).shape
        ax = int(self.rng.integers(len(shape)))
        if self.chance(0.5):
            same = self.pick(lambda n: self.val(n).shape == shape and n != a)
            b = same or f"fnp.flip({a}, axis={ax})"
            expr = f"fnp.stack([{a}, {b}], axis={int(self.rng.integers(-len(shape) - 1, len(shape) + 1))})"
            return Step(out, expr, "stack", keeps_exact=True)

        def fits(n: str) -> bool:
            s = self.val(n).shape
            return len(s) == len(shape) and all(x == y for i, (x, y) in enumerate(zip(s, shape, strict=True)) if i != ax)

        parts = [a]
        other = self.pick(fits)
        parts.append(other if other is not None and self.chance(0.6) else
                     f"{a}[{', '.join([':'] * ax + [self.choice(('::-1', '1:', ':1', '0:0', '::2'))])}]")  # fmt: skip
        if self.chance(0.2):
            parts.append(a)
        return Step(out, f"fnp.concatenate([{', '.join(parts)}], axis={ax if self.chance(0.7) else ax - len(shape)})",
                    "concatenate", keeps_exact=True)  # fmt: skip

    def contraction(self, out: str) -> Step | None:
        a = self.pick(lambda n: 1 <= self.val(n).ndim <= 3 and self.val(n).dtype.kind in "fi")
        if a is None:
            return None
        sa = self.val(a).shape
        dt = "float64" if self.grad else self.choice((self.val(a).dtype.name, "float32", "float64"))
        m = self.choice((1, 2, 3, 4))
        if self.chance(0.5):  # matmul
            if len(sa) == 1:
                sb = self.choice(((sa[0],), (sa[0], m)))
            elif len(sa) == 2:
                sb = self.choice(((sa[1],), (sa[1], m)))
            else:
                sb = self.choice(((sa[2], m), (sa[0], sa[2], m), (1, sa[2], m)))
            b = self.pick(lambda n: self.val(n).shape == sb and self.val(n).dtype.kind in "fi") or self.new_input(sb, dt)
            expr = f"{a} @ {b}" if self.chance(0.5) else f"fnp.matmul({a}, {b})"
            return Step(out, expr, "matmul")
        if len(sa) == 1:
            specs = [("i,i->", (sa[0],)), ("i,j->ij", (m,)), ("i->", None)]
        elif len(sa) == 2:
            specs = [("ij,jk->ik", (sa[1], m)), ("ij,kj->ik", (m, sa[1])), ("ij,ij->i", sa), ("ij->ji", None),
                     ("ij->j", None)]  # fmt: skip
        else:
            specs = [("ijk,ikl->ijl", (sa[0], sa[2], m)), ("ijk,k->ij", (sa[2],)), ("ijk->kj", None),
                     ("ijk,ijk->j", sa)]  # fmt: skip
        spec, sb = self.choice(specs)
        if sb is None:
            return Step(out, f"fnp.einsum({spec!r}, {a})", "einsum")
        b = self.pick(lambda n: self.val(n).shape == tuple(sb) and self.val(n).dtype.kind in "fi")
        b = b or self.new_input(tuple(sb), dt)
        return Step(out, f"fnp.einsum({spec!r}, {a}, {b})", "einsum")

    def select(self, out: str) -> Step | None:
        a = self.pick()
        if a is None:
            return None
        sa = self.val(a).shape
        cond = self.pick(lambda n: self.val(n).dtype.kind == "b" and _broadcasts(self.val(n).shape, sa))
        if cond is None:
            c = self.pick(lambda n: self.is_exact(n) and _broadcasts(self.val(n).shape, sa) and self.val(n).dtype.kind != "b")
            if c is None:
                return None
            cond = f"{c} > {self.scalar(self.kind(c))}"
        b = self.partner(a)
        y = b if b is not None and self.chance(0.7) else self.scalar(self.kind(a))
        x, y = (a, y) if self.chance(0.5) else (y, a)
        return Step(out, f"fnp.where({cond}, {x}, {y})", "where", keeps_exact=True, needs_exact=not cond.isidentifier())

    def cast(self, out: str) -> Step | None:
        a = self.pick()
        if a is None:
            return None
        target = self.choice(DTYPES)
        src = self.val(a).dtype.kind
        needs = src == "f" and target in ("int32", "int64", "bool")
        if needs and not self.is_exact(a):
            return None
        expr = f"{a}.astype(fnp.{'bool_' if target == 'bool' else target})"
        if self.chance(0.3):
            expr = f"fnp.astype({a}, fnp.{'bool_' if target == 'bool' else target})"
        return Step(out, expr, f"cast:{target}", keeps_exact=True, needs_exact=needs)

    def constant(self, out: str) -> Step | None:
        a = self.pick()
        if a is None:
            return None
        v = self.val(a)
        r = self.rng.random()
        if r < 0.3:
            expr = f"{a} + fnp.ones_like({a})" if v.dtype.kind != "b" else f"fnp.zeros_like({a})"
        elif r < 0.6:
            expr = f"fnp.full_like({a}, {self.scalar(self.kind(a))})"
        else:
            dt = self.choice(("float32", "float64", "int32"))
            expr = f"{a} * fnp.full({v.shape}, {self.choice(('2', '0.5', '-1'))}, dtype=fnp.{dt})"
        return Step(out, expr, "constant", keeps_exact="full_like" in expr or "zeros_like" in expr)


def _broadcasts(s1: tuple[int, ...], s2: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(s1, s2) == tuple(s2)
    except ValueError:
        return False


def generate(seed: int, max_ops: int = 8, grad_fraction: float = 0.1, large_fraction: float = 0.03) -> Program:
    """The program of ``seed`` (the same seed always gives the same program)."""
    grad = np.random.default_rng([seed, 7]).random() < grad_fraction
    large = np.random.default_rng([seed, 11]).random() < large_fraction
    return Generator(seed, max_ops, grad, large).program()


# ---------------------------------------------------------------------------------------
# Running and comparing


@dataclass
class Outcome:
    """One configuration's run: its outputs, or the exception it raised."""

    outputs: tuple[np.ndarray, ...] | None = None
    error: BaseException | None = None
    seconds: float = 0.0
    recall: str | None = None  # what went wrong calling the compiled function again

    def describe_error(self) -> str:
        e = self.error
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


@dataclass(frozen=True)
class Mismatch:
    config: str  # "fused", or a pair "fused~unfused"
    category: str  # raise, shape, dtype, value, nan, inf, finite, count, mutated, grad
    detail: str

    def __str__(self) -> str:
        return f"{self.config}: {self.category}: {self.detail}"


@dataclass
class Result:
    program: Program
    status: str  # "ok", "invalid", "unsupported", "mismatch"
    mismatches: list[Mismatch] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    note: str = ""
    known: str | None = None  # the known bug this failure is classified as

    @property
    def failing(self) -> list[str]:
        return sorted({m.config for m in self.mismatches})


def _runner(config: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    import fusejit as fj
    from fusejit.ir.interpreter import run_function

    def interp(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            return run_function(fj.make_ir(fn)(*args), *args)

        return run

    return {
        "eager": lambda fn: fn,
        "interp": interp,
        "interp_opt": lambda fn: fj.jit(fn, backend="interpret"),
        "unfused": lambda fn: fj.jit(fn, fuse=False),
        "fused": lambda fn: fj.jit(fn),
    }[config]


def run_config(program: Program, config: str) -> Outcome:
    import fusejit.numpy as fnp

    fn = program.function(fnp)
    args = program.make_inputs()
    before = [a.copy() for a in args]
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            run = _runner(config)(fn)
            out = run(*args)
        outputs = tuple(np.asarray(o) for o in out)
    except Exception as e:  # noqa: BLE001 - every failure is a finding
        return Outcome(error=e, seconds=time.perf_counter() - t0)
    for a, b in zip(args, before, strict=True):
        if not np.array_equal(a, b, equal_nan=True):
            return Outcome(error=AssertionError("an input array was modified"), seconds=time.perf_counter() - t0)
    outcome = Outcome(outputs, seconds=time.perf_counter() - t0)
    if config in ("fused", "unfused"):
        outcome.recall = _recall(program, run, outputs)
    return outcome


def _recall(program: Program, run: Callable[..., Any], first: tuple[np.ndarray, ...]) -> str | None:
    """Calls the compiled function again (the cached executable) with the same values in
    other memory layouts: the results must be the same bits, and the first call's results
    must not have been overwritten (no output buffer is reused across calls)."""
    kept = [o.copy() for o in first]
    other = [lay_out(s.values(), "strided" if s.layout == "C" else "C") for s in program.inputs]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            again = tuple(np.asarray(o) for o in run(*other))
    except Exception as e:  # noqa: BLE001
        return f"second call raised {type(e).__name__}: {e}"[:200]
    for k, (a, b, c) in enumerate(zip(first, again, kept, strict=True)):
        if not np.array_equal(a, c, equal_nan=True):
            return f"output {k} of the first call changed after the second call"
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True):
            return f"output {k} differs when the inputs' layouts change: {b.ravel()[:4]} vs {a.ravel()[:4]}"
    return None


@dataclass
class Tolerance:
    """How far a float output may stray from the oracle (per element)."""

    rtol: float  # of each element, and of the largest finite element of the output
    atol: float
    shadow: tuple[np.ndarray, ...] | None  # the longdouble run
    perturbed: tuple[tuple[np.ndarray, ...], ...] = ()  # runs with ulp-level noise


def tolerance(program: Program, ev: Evaluation, runs: int = 3) -> Tolerance:
    n = len(program.steps) + 2
    perturbed = []
    for k in range(runs):
        try:
            pev = evaluate(program, perturb=np.random.default_rng([program.seed, k]))
        except Invalid:
            continue
        perturbed.append(tuple(np.asarray(pev.env[o]) for o in program.outputs))
    return Tolerance(4 * ev.min_eps * n, 0.0, shadow_outputs(program), tuple(perturbed))


def compare(
    ref: np.ndarray, got: np.ndarray, exact: bool, tol: Tolerance, shadow: np.ndarray | None,
    perturbed: tuple[np.ndarray, ...] = (),
) -> tuple[str, str] | None:
    """None when ``got`` matches ``ref``; else (category, detail)."""
    if got.shape != ref.shape:
        return "shape", f"{got.shape} != {ref.shape}"
    if got.dtype != ref.dtype:
        return "dtype", f"{got.dtype} != {ref.dtype}"
    if ref.dtype.kind != "f":
        if not np.array_equal(ref, got):
            bad = np.argwhere(ref != got)
            i = tuple(bad[0]) if len(bad) else ()
            return "value", f"{np.count_nonzero(ref != got)} of {ref.size} differ; at {i}: {got[i]!r} != {ref[i]!r}"
        return None
    r, g = ref.astype(np.float64), got.astype(np.float64)
    stable = np.ones(r.shape, bool)
    if shadow is not None and shadow.shape == r.shape and not exact:
        s = shadow.astype(np.longdouble)
        stable = (np.isnan(s) == np.isnan(r)) & (np.isinf(s) == np.isinf(r))
    for p in perturbed:
        if p.shape == r.shape and not exact:
            stable &= (np.isnan(p) == np.isnan(r)) & (np.isinf(p) == np.isinf(r))
    if exact:
        bad = ~((r == g) | (np.isnan(r) & np.isnan(g)))
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            return "value", f"{int(bad.sum())} of {r.size} differ (exact op); at {i}: {g[i]!r} != {r[i]!r}"
        return None
    checks = (
        ("nan", stable & (np.isnan(r) != np.isnan(g))),
        ("inf", stable & np.isinf(r) & (r != g)),
        ("finite", stable & np.isfinite(r) & ~np.isfinite(g)),
    )
    for cat, bad in checks:
        if bad.any():
            i = tuple(np.argwhere(bad)[0])
            return cat, f"{int(bad.sum())} of {r.size}; at {i}: {g[i]!r}, numpy {r[i]!r}"
    fin = stable & np.isfinite(r) & np.isfinite(g)
    scale = float(np.abs(r[np.isfinite(r)]).max()) if np.isfinite(r).any() else 0.0
    allowed = tol.atol + tol.rtol * (np.abs(r) + scale)
    with np.errstate(all="ignore"):
        if shadow is not None and shadow.shape == r.shape:
            cond = np.abs(r - shadow.astype(np.longdouble)).astype(np.float64)
            allowed = allowed + 8 * np.where(np.isfinite(cond), cond, np.inf)
        for p in perturbed:
            if p.shape == r.shape:
                spread = np.abs(r - p.astype(np.float64))
                allowed = allowed + 4 * np.where(np.isfinite(spread), spread, np.inf)
    with np.errstate(all="ignore"):
        err = np.where(fin, np.abs(r - g), 0.0)
    bad = err > allowed
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        return "value", f"{int(bad.sum())} of {r.size}; at {i}: {g[i]!r}, numpy {r[i]!r} (allowed {allowed[i]:.3g})"
    return None


def check(program: Program, configs: tuple[str, ...] = CONFIGS, pairs: bool = True) -> Result:
    """Runs ``program`` in ``configs`` and compares every one with NumPy."""
    try:
        ev = evaluate(program)
    except Invalid as e:
        return Result(program, "invalid", note=str(e))
    ref = tuple(np.asarray(ev.env[o]) for o in program.outputs)
    exact = tuple(ev.exact[o] for o in program.outputs)
    # The oracle runs the rendered function too (evaluate() runs it step by step).
    fn = program.function(np)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        oracle = tuple(np.asarray(o) for o in fn(*program.make_inputs()))
    result = Result(program, "ok")
    for o, r, e in zip(oracle, ref, exact, strict=True):
        # (inexact results may differ in the last bits: NumPy sums by memory order)
        if o.dtype != r.dtype or o.shape != r.shape or (e and not np.array_equal(o, r, equal_nan=True)):
            return Result(program, "invalid", note="numpy results depend on the input layout")
    tol = tolerance(program, ev)
    shadows = tol.shadow or (None,) * len(ref)
    tol.perturbed = tuple(p for p in tol.perturbed if len(p) == len(ref))
    for config in configs:
        oc = run_config(program, config)
        result.outcomes[config] = oc
        if oc.error is not None:
            if isinstance(oc.error, NotImplementedError) and config == "eager":
                result.status, result.note = "unsupported", oc.describe_error()
                return result
            result.mismatches.append(Mismatch(config, "raise", oc.describe_error()))
            continue
        result.mismatches += _compare_all(config, ref, oc.outputs, exact, tol, shadows)
        if oc.recall is not None:
            result.mismatches.append(Mismatch(f"{config}-recall", "recall", oc.recall))
    if pairs:
        for a, b in PAIRS:
            oa, ob = result.outcomes.get(a), result.outcomes.get(b)
            if oa is None or ob is None or oa.outputs is None or ob.outputs is None:
                continue
            result.mismatches += _compare_all(f"{a}~{b}", ob.outputs, oa.outputs, exact, tol, shadows)
    if program.grad and not result.mismatches and "fused" in configs:
        result.mismatches += check_grad(program)
    if result.mismatches:
        result.status = "mismatch"
    return result


def _compare_all(config: str, ref: tuple, got: tuple, exact: tuple, tol: Tolerance, shadows: tuple) -> list[Mismatch]:
    if len(got) != len(ref):
        return [Mismatch(config, "count", f"{len(got)} outputs, numpy {len(ref)}")]
    out = []
    for k, (r, g, e, s) in enumerate(zip(ref, got, exact, shadows, strict=True)):
        bad = compare(r, g, e, tol, s, tuple(p[k] for p in tol.perturbed))
        if bad is not None:
            out.append(Mismatch(config, bad[0], f"output {k}: {bad[1]}"))
    return out


def loss_source(program: Program) -> str:
    params = ", ".join(f"x{i}" for i in range(len(program.inputs)))
    return program.source() + f"\ndef loss({params}):\n    return fnp.sum(fnp.tanh(program({params})[0]))\n"


def check_grad(program: Program) -> list[Mismatch]:
    """``fj.jit(fj.grad(loss))`` vs ``fj.grad(loss)`` vs central finite differences."""
    import fusejit as fj
    import fusejit.numpy as fnp

    def loss_fn(module: Any) -> Callable[..., Any]:
        ns = {"fnp": module, "np": np}
        exec(compile(loss_source(program), f"<fuzz loss {program.seed}>", "exec"), ns)  # noqa: S102
        return ns["loss"]

    args = [s.values().astype(np.float64) for s in program.inputs]
    argnums = tuple(range(len(args)))
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            g_jit = fj.jit(fj.grad(loss_fn(fnp), argnums=argnums))(*args)
            g_eager = fj.grad(loss_fn(fnp), argnums=argnums)(*args)
    except NotImplementedError:
        return []
    except Exception as e:  # noqa: BLE001
        return [Mismatch("grad", "raise", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])]
    f_np = loss_fn(np)
    with np.errstate(all="ignore"):
        smooth = bool(np.isfinite(f_np(*args)))  # (a nan loss has no finite differences)
    out = []
    for i, x in enumerate(args):
        fd = np.zeros_like(x)
        for j in np.ndindex(x.shape):
            h = 1e-6 * max(1.0, abs(x[j]))
            xp, xm = [a.copy() for a in args], [a.copy() for a in args]
            xp[i][j] += h
            xm[i][j] -= h
            with np.errstate(all="ignore"):
                fd[j] = (f_np(*xp) - f_np(*xm)) / (2 * h)
        gj, ge = np.asarray(g_jit[i]), np.asarray(g_eager[i])
        if gj.shape != x.shape or not np.allclose(gj, ge, rtol=1e-9, atol=1e-9, equal_nan=True):
            out.append(Mismatch("grad~eager", "grad", f"d/dx{i}: jit {gj.ravel()[:4]} vs eager {ge.ravel()[:4]}"))
        scale = 1e-4 * max(1.0, float(np.abs(fd).max()) if fd.size else 1.0)
        if smooth and not np.allclose(ge, fd, rtol=1e-4, atol=scale, equal_nan=True):
            k = int(np.argmax(np.abs(ge - fd)))
            out.append(Mismatch("grad", "grad", f"d/dx{i}[{k}]: symbolic {ge.ravel()[k]!r}, finite differences {fd.ravel()[k]!r}"))
    return out


# ---------------------------------------------------------------------------------------
# Known bugs: a failure matching one is counted under its name, not as a new finding


def _reduction_operands(program: Program) -> Iterator[tuple[str, np.ndarray, str]]:
    """(function, operand value, expression) for each reduction step."""
    try:
        ev = evaluate(program)
    except Invalid:
        return
    for s in program.steps:
        m = re.match(r"fnp\.(\w+)\((\w+), axis=([^,)]*(?:\([^)]*\))?)", s.expr)
        if s.family.startswith("reduce") and m:
            yield m.group(1), np.asarray(ev.env[m.group(2)]), m.group(3)


def _unit_last_axis_reduction(program: Program, result: Result) -> bool:
    if not set(result.failing) & {"fused", "unfused", "fused~unfused"} or set(result.failing) - {"fused", "unfused", "fused~unfused"}:
        return False
    for _fn, v, axis in _reduction_operands(program):
        if v.ndim >= 2 and v.shape[-1] == 1 and axis not in ("None",):
            return True
    return False


def _zero_size_any_all(program: Program, result: Result) -> bool:
    return any(m.category == "raise" for m in result.mismatches) and any(
        fn in ("any", "all") and v.size == 0 for fn, v, _ in _reduction_operands(program)
    )


def _concatenate_empty(program: Program, result: Result) -> bool:
    if not any(m.category == "raise" and "IndexError" in m.detail for m in result.mismatches):
        return False
    try:
        ev = evaluate(program)
    except Invalid:
        return False
    for s in program.steps:
        if s.family in ("concatenate", "stack"):
            parts = re.findall(r"\[([^\[\]]*(?:\[[^\]]*\][^\[\]]*)*)\]", s.expr)
            scope = dict({"fnp": np, "np": np}, **{a: ev.env[a] for a in s.args})
            for p in (parts[0].split(", ") if parts else []):
                try:
                    if np.asarray(eval(p, scope)).size == 0:  # noqa: S307
                        return True
                except Exception:  # noqa: BLE001, S112
                    continue
    return False


KNOWN_BUGS: dict[str, Callable[[Program, Result], bool]] = {
    "unit-last-axis reduction (jit)": _unit_last_axis_reduction,
    "zero-size any/all raises": _zero_size_any_all,
    "concatenate of empty slices raises": _concatenate_empty,
}


def classify(result: Result) -> str | None:
    for name, pred in KNOWN_BUGS.items():
        try:
            if pred(result.program, result):
                return name
        except Exception:  # noqa: BLE001, S112
            continue
    return None


def kind_of(result: Result) -> str:
    """A short signature for grouping failures: which configs, how, which op families."""
    if result.known:
        return f"known: {result.known}"
    cats = sorted({(m.config, m.category) for m in result.mismatches})
    fams = sorted({s.family.split(":")[0] for s in result.program.steps})
    raised = sorted({m.detail.split(":")[0] for m in result.mismatches if m.category == "raise"})
    return f"{' '.join(f'{c}/{k}' for c, k in cats)} | {','.join(raised)} | ops: {','.join(fams)}"


# ---------------------------------------------------------------------------------------
# Shrinking


def _same_failure(result: Result, target: Mismatch) -> bool:
    return any(m.config == target.config and m.category == target.category for m in result.mismatches)


def shrink(result: Result, budget: int = 60, log: Callable[[str], None] | None = None) -> Result:
    """A smaller program with the same failure (same config and category): steps
    removed or bypassed, extra outputs dropped, inputs made C-contiguous and smaller."""
    target = result.mismatches[0]
    configs = tuple(c for c in CONFIGS if c in target.config.replace("-recall", "").split("~"))
    if target.config.startswith("grad"):
        configs = ("fused",)
    best, tries = result, 0

    def attempt(p: Program) -> bool:
        nonlocal best, tries
        if tries >= budget:
            return False
        try:
            evaluate(p)
        except Invalid:
            return False
        tries += 1
        r = check(p, configs, pairs="~" in target.config)
        if r.status == "mismatch" and _same_failure(r, target):
            best = r
            if log:
                log(f"  shrunk to {len(p.steps)} steps")
            return True
        return False

    changed = True
    while changed and tries < budget:
        changed = False
        p = best.program
        candidates: list[Program] = []
        if len(p.outputs) > 1:
            candidates += [replace(p, outputs=(o,)) for o in p.outputs]
        live = _live_steps(p)
        if len(live) != len(p.steps):
            candidates.append(replace(p, steps=live))
        for i in range(len(p.steps) - 1, -1, -1):
            s = p.steps[i]
            # make an earlier value the output (drops everything after it)
            if s.out not in p.outputs:
                candidates.append(replace(p, steps=p.steps[: i + 1], outputs=(s.out,)))
            for a in s.args:  # bypass the step: its uses read one of its operands
                candidates.append(_bypass(p, i, a))
        used = {a for s in p.steps for a in s.args} | set(p.outputs)
        candidates += [_drop_input(p, k) for k in range(len(p.inputs)) if f"x{k}" not in used]
        for k, spec in enumerate(p.inputs):
            if spec.layout != "C":
                candidates.append(_with_input(p, k, replace(spec, layout="C")))
            for ax, n in enumerate(spec.shape):
                for m in (1, n - 1, 2):
                    if 0 < m < n:
                        shape = spec.shape[:ax] + (m,) + spec.shape[ax + 1 :]
                        candidates.append(_with_input(p, k, replace(spec, shape=shape)))
        for c in candidates:
            if c != p and attempt(c):
                changed = True
                break
    return best


def _live_steps(p: Program) -> tuple[Step, ...]:
    need = set(p.outputs)
    keep = []
    for s in reversed(p.steps):
        if s.out in need:
            keep.append(s)
            need |= set(s.args)
    return tuple(reversed(keep))


def _bypass(p: Program, i: int, arg: str) -> Program:
    old = p.steps[i].out
    pat = re.compile(rf"\b{old}\b")
    steps = [*p.steps[:i]]
    for s in p.steps[i + 1 :]:
        steps.append(replace(s, expr=pat.sub(arg, s.expr)))
    outputs = tuple(arg if o == old else o for o in p.outputs)
    return replace(p, steps=tuple(steps), outputs=outputs)


def _drop_input(p: Program, k: int) -> Program:
    """``p`` without its unused input ``k`` (later inputs renumbered)."""

    def rename(text: str) -> str:
        return re.sub(r"\bx(\d+)\b", lambda m: f"x{int(m.group(1)) - (int(m.group(1)) > k)}", text)

    steps = tuple(replace(s, expr=rename(s.expr)) for s in p.steps)
    return replace(p, inputs=p.inputs[:k] + p.inputs[k + 1 :], steps=steps, outputs=tuple(map(rename, p.outputs)))


def _with_input(p: Program, k: int, spec: InputSpec) -> Program:
    return replace(p, inputs=p.inputs[:k] + (spec,) + p.inputs[k + 1 :])


# ---------------------------------------------------------------------------------------
# The campaign


@dataclass
class Summary:
    programs: int = 0
    seconds: float = 0.0
    status: Counter = field(default_factory=Counter)
    per_config: dict[str, Counter] = field(default_factory=dict)
    kinds: dict[str, list[int]] = field(default_factory=dict)  # failure kind: seeds
    reports: dict[str, str] = field(default_factory=dict)  # failure kind: its first failure
    unsupported: Counter = field(default_factory=Counter)
    families: Counter = field(default_factory=Counter)
    grad_programs: int = 0

    def add(self, result: Result) -> None:
        self.programs += 1
        self.status[result.status] += 1
        self.grad_programs += result.program.grad
        for s in result.program.steps:
            self.families[s.family] += 1
        if result.status == "unsupported":
            self.unsupported[result.note] += 1
        failing = set(result.failing)
        ran = set(result.outcomes)
        ran |= {f"{a}~{b}" for a, b in PAIRS if {a, b} <= ran} | {f"{c}-recall" for c in ("fused", "unfused") if c in ran}
        if result.program.grad and "fused" in ran:
            ran |= {"grad", "grad~eager"}
        for c in (*CONFIGS, *(f"{a}~{b}" for a, b in PAIRS), "unfused-recall", "fused-recall", "grad", "grad~eager"):
            if c in ran or c in failing:
                counts = self.per_config.setdefault(c, Counter())
                counts["fail" if c in failing else "pass"] += 1
        if result.status == "mismatch":
            kind = kind_of(result)
            self.kinds.setdefault(kind, []).append(result.program.seed)
            self.reports.setdefault(kind, report(result))

    def to_json(self) -> dict[str, Any]:
        return {"programs": self.programs, "seconds": self.seconds, "status": self.status,
                "per_config": self.per_config, "kinds": self.kinds, "reports": self.reports,
                "unsupported": self.unsupported, "families": self.families,
                "grad_programs": self.grad_programs}

    def merge(self, other: dict[str, Any]) -> None:
        """Adds a summary (``to_json`` of another process's) to this one; ``seconds``
        stays this campaign's wall time."""
        self.programs += other["programs"]
        self.grad_programs += other["grad_programs"]
        for name in ("status", "unsupported", "families"):
            getattr(self, name).update(other[name])
        for c, counts in other["per_config"].items():
            self.per_config.setdefault(c, Counter()).update(counts)
        for kind, seeds in other["kinds"].items():
            self.kinds.setdefault(kind, []).extend(seeds)
            self.reports.setdefault(kind, other["reports"][kind])

    def text(self) -> str:
        rate = self.programs / self.seconds if self.seconds else 0.0
        lines = [
            f"{self.programs} programs in {self.seconds:.0f} s ({rate:.2f} programs/s); "
            f"{self.grad_programs} with gradient checks",
            "status: " + ", ".join(f"{k} {v}" for k, v in sorted(self.status.items())),
            "by configuration (programs passing / failing):",
        ]
        for c, counts in self.per_config.items():
            lines.append(f"  {c:18} pass {counts['pass']:6}  fail {counts['fail']:6}")
        fams = Counter()
        for name, n in self.families.items():
            fams[name.split(":")[0]] += n
        lines.append("steps by family: " + ", ".join(f"{k} {v}" for k, v in fams.most_common()))
        if self.unsupported:
            lines.append("unsupported (NotImplementedError in eager fnp):")
            lines += [f"  {n:5}  {msg}" for msg, n in self.unsupported.most_common(10)]
        lines.append(f"failure kinds ({len(self.kinds)}):")
        for kind, seeds in sorted(self.kinds.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"  {len(seeds):5}  {kind}   (seeds {', '.join(map(str, sorted(seeds)[:5]))})")
        return "\n".join(lines)


def report(result: Result) -> str:
    """A failure, printed: seed, mismatches, the program source and a reproducer."""
    lines = [f"=== seed {result.program.seed}: {kind_of(result)}"]
    lines += [f"  {m}" for m in result.mismatches[:6]]
    lines.append(result.program.reproducer())
    return "\n".join(lines)


def campaign(
    count: int,
    seed: int = 0,
    *,
    max_ops: int = 8,
    grad_fraction: float = 0.1,
    large_fraction: float = 0.03,
    shrink_budget: int = 30,
    time_limit: float | None = None,
    log: Callable[[str], None] | None = print,
    verbose: bool = False,
) -> Summary:
    """Generates and checks ``count`` programs (seeds ``seed``, ``seed + 1``, ...);
    new failure kinds are shrunk and reported through ``log``."""
    summary = Summary()
    t0 = time.perf_counter()
    shrunk_kinds: set[str] = set()
    for i in range(count):
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
        program = generate(seed + i, max_ops=max_ops, grad_fraction=grad_fraction, large_fraction=large_fraction)
        try:
            result = check(program)
        except Exception:  # noqa: BLE001 - the fuzzer itself must keep going
            result = Result(program, "fuzzer-error", note=traceback.format_exc(limit=3))
            if log:
                log(f"fuzzer error on seed {program.seed}:\n{result.note}")
        if log:
            sys.stdout.flush()
        if result.status == "mismatch":
            result.known = classify(result)
            kind = kind_of(result)
            if shrink_budget and kind not in shrunk_kinds and result.known is None:
                shrunk_kinds.add(kind)
                small = shrink(result, shrink_budget)
                small = check(small.program)  # every configuration, on the small program
                small.known = classify(small)
                if log:
                    log(report(small))
            elif log and verbose:
                log(report(result))
        summary.add(result)
        summary.seconds = time.perf_counter() - t0
        if log and (i + 1) % 50 == 0:
            log(f"[{i + 1}/{count}] {summary.programs / summary.seconds:.2f} programs/s, "
                f"status {dict(summary.status)}")  # fmt: skip
    summary.seconds = time.perf_counter() - t0
    return summary


# Programs per worker process: each chunk runs in a fresh interpreter, because Numba keeps
# every compiled kernel of a process in memory (about 1 GB after a thousand programs).
CHUNK = 200


def parallel_campaign(count: int, seed: int, jobs: int, argv: list[str], *,
                      time_limit: float | None = None, log: Callable[[str], None] = print) -> Summary:
    """``campaign`` over ``jobs`` worker processes: seeds ``seed .. seed + count - 1`` in
    chunks of ``CHUNK``, each a ``python -m fusejit.testing.fuzz`` run with the options in
    ``argv``; their output is relayed and their summaries merged. Unless
    ``FUSEJIT_CACHE_DIR`` is set, the workers share a temporary kernel cache, removed at
    the end: thousands of random kernels do not belong in the user's cache."""
    import concurrent.futures
    import json
    import os
    import shutil
    import subprocess
    import tempfile

    env = dict(os.environ)
    private_cache = None if env.get("FUSEJIT_CACHE_DIR") else tempfile.mkdtemp(prefix="fusejit-fuzz-cache-")
    if private_cache:
        env["FUSEJIT_CACHE_DIR"] = private_cache
    summary = Summary()
    t0 = time.perf_counter()
    chunks = [(s, min(CHUNK, seed + count - s)) for s in range(seed, seed + count, CHUNK)]

    def run_chunk(start: int, n: int) -> tuple[str, dict[str, Any] | None]:
        left = None if time_limit is None else time_limit - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            return "", None
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/summary.json"
            cmd = [sys.executable, "-m", "fusejit.testing.fuzz", *argv, "--count", str(n), "--seed", str(start),
                   "--jobs", "1", "--summary-json", path]
            if left is not None:
                cmd += ["--time-limit", str(left)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)  # noqa: S603 - our own command
            try:
                with open(path, encoding="utf-8") as f:
                    return done.stdout + done.stderr, json.load(f)
            except (OSError, ValueError):
                return done.stdout + done.stderr, None

    try:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(run_chunk, s, n) for s, n in chunks]
            for (start, n), future in zip(chunks, futures, strict=True):
                output, part = future.result()
                if part is None:
                    if output:
                        log(f"worker for seeds {start}..{start + n - 1} failed:\n{output}")
                        summary.status["fuzzer-error"] += 1
                    continue
                summary.merge(part)
                summary.seconds = time.perf_counter() - t0
                reports = "\n".join(line for line in output.splitlines() if not re.match(r"\[\d+/\d+\] ", line))
                if reports.strip():
                    log(reports.strip())
                log(f"[{summary.programs}/{count}] {summary.programs / summary.seconds:.2f} programs/s, "
                    f"status {dict(summary.status)}")  # fmt: skip
    finally:
        if private_cache:
            shutil.rmtree(private_cache, ignore_errors=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusejit.testing.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200, help="programs to run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first program")
    parser.add_argument("--max-ops", type=int, default=8)
    parser.add_argument("--grad-fraction", type=float, default=0.1, help="share of programs with gradient checks")
    parser.add_argument("--large-fraction", type=float, default=0.03, help="share of programs over the threads threshold")
    parser.add_argument("--shrink-budget", type=int, default=30, help="re-runs per shrink (0: no shrinking)")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--replay", type=int, default=None, help="run (and print) the program of one seed")
    parser.add_argument("--verbose", action="store_true", help="report every failure, not the first of a kind")
    parser.add_argument("--jobs", type=int, default=1, help=f"worker processes ({CHUNK} programs each in turn)")
    parser.add_argument("--summary-json", default=None, help="also write the summary to this file, as JSON")
    ns = parser.parse_args(argv)
    if ns.replay is not None:
        program = generate(ns.replay, ns.max_ops, ns.grad_fraction, ns.large_fraction)
        result = check(program)
        result.known = classify(result)
        print(program.source())
        print(f"status: {result.status} {result.note}")
        for m in result.mismatches:
            print(f"  {m}")
        if result.status == "mismatch" and ns.shrink_budget:
            print(report(check(shrink(result, ns.shrink_budget).program)))
        return 0 if result.status != "mismatch" else 1
    if ns.jobs > 1:
        options = [f"--max-ops={ns.max_ops}", f"--grad-fraction={ns.grad_fraction}",
                   f"--large-fraction={ns.large_fraction}", f"--shrink-budget={ns.shrink_budget}"]
        options += ["--verbose"] if ns.verbose else []
        summary = parallel_campaign(ns.count, ns.seed, ns.jobs, options, time_limit=ns.time_limit)
    else:
        summary = campaign(ns.count, ns.seed, max_ops=ns.max_ops, grad_fraction=ns.grad_fraction,
                           large_fraction=ns.large_fraction, shrink_budget=ns.shrink_budget,
                           time_limit=ns.time_limit, verbose=ns.verbose)  # fmt: skip
    if ns.summary_json:
        import json

        with open(ns.summary_json, "w", encoding="utf-8") as f:
            json.dump(summary.to_json(), f)  # (for a parallel campaign, which prints the total)
    else:
        print(summary.text())
    new = [k for k in summary.kinds if not k.startswith("known:")]
    return 1 if new or summary.status["fuzzer-error"] else 0


if __name__ == "__main__":
    sys.exit(main())
