"""Generating programs: ``Generator`` draws one random, well-typed program from a seed;
``generate`` picks its kind (gradient, large) and runs it."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fusejit.testing.fuzz.programs import (
    DTYPES,
    LAYOUTS,
    Evaluation,
    InputSpec,
    Invalid,
    Program,
    Step,
    evaluate,
)

SCALARS = {"float": ("0.5", "2.0", "-1.5", "3.0", "0.0", "fnp.inf"), "int": ("2", "3", "-1", "1"), "bool": ("True", "False")}


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

