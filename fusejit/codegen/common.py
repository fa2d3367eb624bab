"""What every lowering strategy shares: the result type (``LoweredKernel``), array
parameter bookkeeping, loop nests over an index space, kernel names and header lines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fusejit.codegen.constants import lift_constants
from fusejit.codegen.elemental import Emitter, Index, NeedDims, linearize
from fusejit.codegen.exprs import ONE, ZERO, Expr, MathCall, Var, walk
from fusejit.codegen.kernel import Kernel, KernelBuilder, Matmul, Stmt, Unsupported, expressions, statements
from fusejit.codegen.rules import calls_math
from fusejit.ir import primitives as P
from fusejit.ir.core import Op, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.primitives import OpKind
from fusejit.ir.printer import format_attr, short_loc
from fusejit.ir.transforms.fusion import FusionGroup, GroupKind

LOOP_OPS = (OpKind.ELEMENTWISE, OpKind.LAYOUT, OpKind.SOURCE)
# The CPU's defaults (``Target.split_chunks``, ``Target.column_block``): a full
# reduction (no kept axis) large enough for threads is split into this many chunks whose
# partial results are combined serially; column reductions distribute blocks of this many
# columns over threads.
SPLIT_CHUNKS = 64
COLUMN_BLOCK = 256


# A bound on a kernel's size after the math library is inlined: LLVM's time (and memory)
# grows faster than the code, and a branch per concatenated piece copies the producers
# of every piece (1,000 statements compiled in 3-8 s, 5,000 in 41 s). A group over the
# bound is split, one kernel per op (``fusejit.runtime.plan.lower_all``).
MAX_KERNEL_SIZE = 1500
# Statements one inlined math-library call stands for (exp_f64 and log_f64 are 25-40
# lines each, expm1_f64 and pow_f64 more).
MATHLIB_CALL_SIZE = 40
# At most this many copies of a loop kernel's body, one per piece of its split loops
# (``choose_splits``): a 2-d pad on both sides of both axes needs 9.
MAX_PIECES = 16


# ---------------------------------------------------------------------------------------
# Structural support checks (what fusion asks; nothing is lowered)


def reason_of(check: Callable[[], Any]) -> str | None:
    """The message of the ``Unsupported`` that ``check()`` raises, or None: a strategy's
    structural analysis, which its lowering runs first, doubles as its support check."""
    try:
        check()
    except Unsupported as e:
        return str(e) or "unsupported group"
    return None


def common_support(group: FusionGroup) -> str | None:
    """What every kernel needs: ops, outputs they define, operands from the group."""
    if not group.ops:
        return "an empty group"
    if not group.outputs:
        return "a group without outputs"
    defined = {v for op in group.ops for v in op.outputs}
    if any(v not in defined for v in group.outputs):
        return "a group output is not defined by one of its ops"
    inputs = set(group.inputs)
    for op in group.ops:
        if op.prim.kind is OpKind.CALL:
            return f"{op.prim.name} is inlined before code generation"
        if any(v not in defined and v not in inputs for v in op.inputs):
            return f"an operand of {op.prim.name} is neither a group input nor defined in the group"
    return None


def branch_support(group: FusionGroup) -> str | None:
    """Concatenate and pad compute each piece in a branch, which LLVM's loop optimizers
    if-convert or unswitch; with inlined math-library calls in the same kernel their
    compile time explodes (fuzzer seed 6394: sin, exp, tanh and cos of a concatenated
    value, two branches: over 10 minutes in LLVM, 1.9 s without them; earlier, tanh of
    two exps inside a piece). So a kernel holds branches or math-library calls, not both.
    Threefry's 170 integer statements count as such calls: the two words of a random
    key concatenated took LLVM minutes as well."""
    branch = next((op for op in group.ops if op.prim in (P.concatenate, P.pad)), None)
    math = next((op for op in group.ops if calls_math(op) or op.prim is P.threefry2x32), None)
    if branch is not None and math is not None:
        return (f"a kernel holding {branch.prim.name} pieces would also compute {math.prim.name}; "
                "LLVM takes minutes to compile that")
    return None


def kernel_size(block: list[Stmt]) -> int:
    """Statements in ``block``, counting each call of a math-library function as
    ``MATHLIB_CALL_SIZE`` (a loop body counts once: it is compiled once)."""
    return sum(1 + MATHLIB_CALL_SIZE * sum(isinstance(n, MathCall) for e in expressions(s) for n in walk(e))
               for s in statements(block))


@dataclass(frozen=True, slots=True)
class Strategy:
    """How one kind of group becomes a kernel: ``supports(group)`` is the structural check
    fusion asks (None, or why not; it lowers nothing), ``lower(ctx)`` builds the kernel."""

    supports: Callable[[FusionGroup], str | None]
    lower: Callable[[Ctx], LoweredKernel]


@dataclass(frozen=True, slots=True)
class Scratch:
    """Temporary memory a kernel needs for the duration of the call."""

    dtype: DType
    size: int  # elements


@dataclass(eq=False)
class LoweredKernel:
    """A group lowered to a kernel, with what the runtime binds to each parameter.

    ``arrays[k]`` is bound to ``kernel.arrays[k]``: a ``Value`` (its buffer), a
    ``Scratch`` or a constant ``Op`` (materialized once). ``ints[k]`` is passed for
    ``kernel.ints[k]``. ``identity_reads`` are the inputs the kernel reads only at the
    element it writes (they may share a buffer with an output); ``inplace`` maps outputs
    to the input whose array they share (the ``inout`` parameter).
    """

    kernel: Kernel
    group: FusionGroup
    kind: GroupKind
    arrays: list[Any]
    ints: list[int]
    display_name: str
    identity_reads: frozenset[Value] = frozenset()
    inplace: dict[Value, Value] = field(default_factory=dict)

    @property
    def uses_blas(self) -> bool:
        return any(isinstance(s, Matmul) for s in statements(self.kernel.body))


@dataclass
class Ctx:
    """What a strategy lowers: the group, its ops by value, the target, the size from
    which a loop runs on threads, and the outputs to write over an input (donation)."""

    group: FusionGroup
    ops: dict[Value, Op]
    target: Any  # fusejit.codegen.target.Target
    threshold: int
    inplace: dict[Value, Value]

    def arrays(self, b: KernelBuilder) -> Arrays:
        return Arrays(b, self.target.rules)


# ---------------------------------------------------------------------------------------
# Shared pieces


class Arrays:
    """Array parameters of a kernel bound to values, in a fixed order."""

    def __init__(self, b: KernelBuilder, rules: Any) -> None:
        self.b = b
        self.rules = rules  # the target's codegen rules, for the emitters
        self.bound: list[Any] = []
        self.of: dict[Value, str] = {}

    def value(self, v: Value, role: str) -> str:
        if v not in self.of:
            self.of[v] = self.b.array(v.dtype, role)
            self.bound.append(v)
        return self.of[v]

    def scratch(self, dtype: DType, size: int) -> str:
        name = self.b.array(dtype, "scratch")
        self.bound.append(Scratch(dtype, size))
        return name

    def const(self, op: Op) -> str:
        """An array holding a constant op's data (materialized once by the runtime)."""
        for name, bound in zip((a.name for a in self.b.arrays), self.bound, strict=True):
            if bound is op:
                return name
        self.bound.append(op)
        return self.b.array(op.output.dtype, "const")

    def emitter(self, ops: dict[Value, Op], inputs: dict[Value, str], **kw: Any) -> Emitter:
        em = Emitter(self.b, ops, inputs, rules=self.rules, **kw)
        em.const_array = self.const  # type: ignore[method-assign]
        return em


def _dtype_name(dt: DType) -> str:
    return dt.value


def _shape_name(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"


def kernel_names(kind: str, dtype: DType, shape: tuple[int, ...]) -> tuple[str, str]:
    """(function name: kind, dtype and rank, shared by all shapes; display name with
    the concrete shape)."""
    rank = f"{len(shape)}d"
    return f"{kind}_{_dtype_name(dtype)}_{rank}", f"{kind}_{_dtype_name(dtype)}_{_shape_name(shape)}"


def finish(
    ctx: Ctx,
    b: KernelBuilder,
    arrays: Arrays,
    em: Emitter | None,
    stem: str,
    dtype: DType,
    shape: tuple[int, ...],
    identity: frozenset[Value] = frozenset(),
) -> LoweredKernel:
    """The ``LoweredKernel`` of what ``b`` built, named ``<stem>_<dtype>_<rank>d`` (the
    stem says how it was lowered: ``loop``, ``reduce_rows``, ``matmul_loop``...)."""
    name, display = kernel_names(stem, dtype, shape)
    size = kernel_size(b.block)
    if size > MAX_KERNEL_SIZE:
        raise Unsupported(f"the kernel would be too large to compile quickly ({size} statements after "
                          f"inlining, at most {MAX_KERNEL_SIZE})")
    kernel = Kernel(
        name=name,
        kind=stem,
        arrays=list(b.arrays),
        ints=list(b.ints),
        body=b.finish(),
        parallel=b.parallel,
    )
    bound = list(arrays.bound)
    if ctx.target.constants_as_data:  # kernels that differ only in float constants share a compilation
        kernel = lift_constants(kernel, bound)
    return LoweredKernel(kernel, ctx.group, ctx.group.kind, bound, list(b.int_values), display,
                         identity, dict(ctx.inplace))


def emits_flat(ctx: Ctx, emit: Callable[[Arrays], None]) -> bool:
    """Whether ``emit(arrays)``, a loop emission in flat mode, succeeds: tried on a builder
    that is thrown away, because a rule that needs per-axis indices refuses (``NeedDims``)
    half-way through emitting."""
    try:
        emit(ctx.arrays(KernelBuilder()))
    except NeedDims:
        return False
    return True


def root_index(em: Emitter, b: KernelBuilder, shape_exprs: tuple[Expr, ...], flat_mode: bool,
                parallel: bool, total_key: Any, total: int, sizes: tuple[int, ...] | None = None,
                splits: dict[int, list[int]] | None = None) -> Callable[[Callable[[Index], None]], None]:
    """Runs ``body(index)`` inside a loop (nest) over ``shape_exprs``. With the concrete
    ``sizes``, each loop index is declared to ``em`` with its range, and the loop over an
    axis in ``splits`` (``choose_splits``) runs as one loop per piece between its bounds,
    the body emitted once per piece."""

    def loops(axis: int, parallel_loop: bool) -> Iterator[Var]:
        """The loops over ``axis``, one per piece, each yielding its index."""
        if sizes is None:
            with b.loop(shape_exprs[axis], parallel=parallel_loop) as i:
                yield i
            return
        bounds = [] if parallel_loop else (splits or {}).get(axis, [])
        values = [0, *bounds, sizes[axis]]
        edges = [ZERO, *(b.int_param(("split", total_key, axis, k), v) for k, v in enumerate(bounds)),
                 shape_exprs[axis]]
        for k in range(len(values) - 1):
            with b.loop(edges[k + 1], start=edges[k], parallel=parallel_loop) as i:
                em.enter_root_loop(i, axis, values[k], values[k + 1])
                yield i

    def run(body: Callable[[Index], None]) -> None:
        if all(s == ONE for s in shape_exprs):
            body(Index(shape_exprs, tuple(ZERO for _ in shape_exprs), ZERO))
            return
        if flat_mode:
            nonunit = [k for k, s in enumerate(shape_exprs) if s != ONE]
            if len(nonunit) == 1:  # the linear index is that axis's index
                for i in loops(nonunit[0], parallel):
                    em.root_flat = i
                    body(Index(shape_exprs, None, i))
                return
            with b.loop(b.int_param(total_key, total), parallel=parallel) as i:
                em.root_flat = i
                body(Index(shape_exprs, None, i))
            return
        dims: list[Expr] = []

        def nest(k: int) -> None:
            if k == len(shape_exprs):
                flat = linearize(b, tuple(dims), shape_exprs)
                em.root_flat = flat
                body(Index(shape_exprs, tuple(dims), flat))
                return
            if shape_exprs[k] == ONE:
                dims.append(ZERO)
                nest(k + 1)
                dims.pop()
                return
            first = all(s == ONE for s in shape_exprs[:k])
            for i in loops(k, parallel and first):
                dims.append(i)
                nest(k + 1)
                dims.pop()

        nest(0)

    return run


def choose_splits(points: dict[int, set[int]], sizes: tuple[int, ...], parallel_axis: int | None) -> dict[int, list[int]]:
    """The bounds at which ``root_index`` splits each axis's loop: the recorded ``points``
    (``Emitter.split_points``) inside the axis, innermost axes first while the body is
    emitted at most ``MAX_PIECES`` times; never the parallel loop's axis (one loop
    distributed over threads)."""
    out: dict[int, list[int]] = {}
    pieces = 1
    for axis in sorted(points, reverse=True):
        bounds = sorted(p for p in points[axis] if 0 < p < sizes[axis])
        if axis != parallel_axis and bounds and pieces * (len(bounds) + 1) <= MAX_PIECES:
            out[axis] = bounds
            pieces *= len(bounds) + 1
    return out


def loop_nest(b: KernelBuilder, sizes: tuple[Expr, ...], body: Callable[[tuple[Expr, ...]], None],
              starts: tuple[Expr, ...] | None = None, parallel: bool = False) -> None:
    """``body(indices)`` inside loops over ``sizes`` (from ``starts``); unit sizes from 0
    get no loop; ``parallel``: the outermost loop may run on threads."""
    dims: list[Expr] = []

    def level(k: int) -> None:
        if k == len(sizes):
            body(tuple(dims))
            return
        start = ZERO if starts is None else starts[k]
        if sizes[k] == ONE and start == ZERO:
            dims.append(ZERO)
            level(k + 1)
            dims.pop()
            return
        with b.loop(sizes[k], start=start, parallel=parallel and not dims) as i:
            dims.append(i)
            level(k + 1)
            dims.pop()

    level(0)


def index_like(shape: tuple[int, ...], base: Index, base_shape: tuple[int, ...]) -> Index:
    """An index into a value of ``shape`` whose non-unit axes are those of ``base``'s value
    (a reshape that only inserts or removes unit axes): same linear index."""
    b_nonunit = [k for k, n in enumerate(base_shape) if n != 1]
    v_nonunit = [k for k, n in enumerate(shape) if n != 1]
    if [base_shape[k] for k in b_nonunit] != [shape[k] for k in v_nonunit]:
        raise Unsupported(f"an output of shape {shape} is not in the iteration space {base_shape}")
    sh: list[Expr] = [ONE] * len(shape)
    dims: list[Expr] = [ZERO] * len(shape)
    for vk, bk in zip(v_nonunit, b_nonunit, strict=True):
        sh[vk] = base.shape[bk]
        if base.dims is not None:
            dims[vk] = base.dims[bk]
    return Index(tuple(sh), tuple(dims) if base.dims is not None else None, base.flat)


def provider_at(em: Emitter, value: Expr, flat: Expr, what: str) -> Callable[[Index], Expr]:
    """Provides ``value`` as the element at linear index ``flat`` (an accumulator's result)."""

    def provide(idx: Index) -> Expr:
        if em.flat(idx) != flat:
            raise Unsupported(f"{what} is read at another element than the one being computed")
        return value

    return provide


# ---------------------------------------------------------------------------------------
# Header comments


def describe_ops(group: FusionGroup) -> list[str]:
    """One line per op: ``t2 = mul t0, in1  f32[512,64]  # model.py:3``, for the header
    of a kernel's displayed source (not its module, which two groups with the same code
    share: ``cpu.printer.module_source``).

    Names are local to the group (``in<k>`` inputs, ``t<k>`` op results). File names are
    reduced to printable base names: nothing raw reaches generated source.
    """
    names: dict[Value, str] = {v: f"in{k}" for k, v in enumerate(group.inputs)}
    counter = 0
    lines = []
    for op in group.ops:
        outs = []
        for v in op.outputs:
            names[v] = f"t{counter}"
            counter += 1
            outs.append(names[v])
        args = ", ".join(names.get(v, "?") for v in op.inputs)
        attrs = " ".join(
            f"{k}={format_attr(val)}" for k, val in op.attrs.items()
            if not op.prim.attrs[k].implied_by_result and not hasattr(val, "ops")
        )
        t = op.outputs[0].type
        shape = ",".join(str(n) for n in t.shape)
        line = f"{', '.join(outs)} = {op.prim.name} {args}".rstrip()
        if attrs:
            line += f"  {attrs}"
        line += f"  : {t.dtype}[{shape}]"
        if op.loc is not None:
            line += f"  # {short_loc(op.loc)}"
        lines.append(line)
    return lines
