"""The Numba CPU backend against the reference interpreter, primitive by primitive.

Compile time dominates, so cases share kernels: elementwise rules run as one multi-output
loop kernel per dtype (built by hand), layout/reduction/indexing cases vary shapes of one
rank and pattern (kernels are shape-generic: a new shape of the same pattern compiles
nothing), and the disk cache lives in one session directory.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fusejit import config
from fusejit.codegen import can_lower, lower_group
from fusejit.codegen.cpu.printer import module_source
from fusejit.ir import Builder, DType, Function, SourceLoc, TensorType, Value
from fusejit.ir import primitives as P
from fusejit.ir.interpreter import run_function
from fusejit.ir.transforms.fusion import FusedFunction, FusionGroup, make_group
from fusejit.runtime.cpu import CpuExecutable

RNG = np.random.default_rng(1)
F32, F64, I32, I64, BOOL = DType.f32, DType.f64, DType.i32, DType.i64, DType.bool


@pytest.fixture(scope="module", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "fusejit-cache"
    with config.override(cache=True, cache_dir=str(root)):
        yield


# ---------------------------------------------------------------------------------------
# Helpers


def data(dtype: DType, shape: tuple[int, ...], special: bool = True, positive: bool = False) -> np.ndarray:
    """Random values of ``dtype``; floats include nan, +-inf and -0.0 when ``special``."""
    n = int(np.prod(shape))
    if dtype is BOOL:
        return RNG.random(shape) < 0.5
    if dtype.is_int:
        return RNG.integers(-20, 20, size=shape).astype(dtype.np)
    x = RNG.standard_normal(n) * 3
    if positive:
        x = np.abs(x) + 0.1
    if special and n >= 8:
        x[:4] = [np.nan, np.inf, -np.inf, -0.0]
    return x.astype(dtype.np).reshape(shape)


def noncontiguous(a: np.ndarray) -> np.ndarray:
    """The same values in a strided (not C-contiguous) view."""
    big = np.zeros(a.shape + (2,), a.dtype)
    big[..., 0] = a
    out = big[..., 0]
    assert not out.flags.c_contiguous or out.size <= 1
    return out


def check(fn: Function, args: list[np.ndarray], groups: list[FusionGroup] | None = None) -> CpuExecutable:
    """Compiles ``fn`` (one kernel per op, or the given groups) and compares every result
    with the interpreter: floats to a few ulp (nan where nan), the rest exactly."""
    fused = FusedFunction(fn, tuple(groups)) if groups is not None else None
    if fused is None:
        from fusejit.ir.transforms.fusion import one_op_per_group

        fused = one_op_per_group(fn)
    exe = CpuExecutable(fn, fused)
    got = exe(args)
    want = run_function(fn, *args)
    assert len(got) == len(want)
    for g, w, r in zip(got, want, fn.results, strict=True):
        assert isinstance(g, np.ndarray)
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        if r.dtype.is_float:
            tol = 2e-6 if r.dtype is F32 else 1e-13
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, equal_nan=True)
        else:
            np.testing.assert_array_equal(g, w)
    return exe


def one_group(fn: Function, kind: str) -> list[FusionGroup]:
    """All of ``fn``'s ops as one group of ``kind``."""
    return [make_group(list(fn.ops), set(fn.results), fn.users(), kind)]


def build(param_types: list[tuple[DType, tuple[int, ...]]], body: Callable[..., object]) -> Function:
    b = Builder()
    b.loc = SourceLoc("test\nfile.py", 7)
    params = [Value(TensorType(dt, shape), f"p{k}") for k, (dt, shape) in enumerate(param_types)]
    out = body(b, *params)
    results = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return Function("f", tuple(params), tuple(b.ops), results)


# ---------------------------------------------------------------------------------------
# Elementwise: all rules of a dtype in one multi-output loop kernel


UNARY = {
    "float": ["neg", "abs", "sign", "exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "tanh",
              "logistic", "sin", "cos", "floor", "ceil", "round", "stop_gradient"],
    "int": ["neg", "abs", "sign", "not", "stop_gradient"],
    "bool": ["not", "stop_gradient"],
}  # fmt: skip
BINARY = {
    "float": ["add", "sub", "mul", "div", "pow", "floor_divide", "remainder", "max", "min", "eq", "ne", "lt",
              "le", "gt", "ge", "atan2"],
    "int": ["add", "sub", "mul", "floor_divide", "remainder", "max", "min", "eq", "ne", "lt", "le", "gt", "ge",
            "and", "or", "shift_left", "shift_right_arithmetic"],
    "bool": ["eq", "ne", "and", "or"],
}  # fmt: skip


def _family(dt: DType) -> str:
    return "bool" if dt is BOOL else "int" if dt.is_int else "float"


@pytest.mark.parametrize("dt", [F32, F64, I32, I64, BOOL], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_elementwise_rules_of_a_dtype_in_one_kernel(dt, layout):
    fam = _family(dt)

    def body(b, x, y):
        outs = [b.op(P.PRIMITIVES[name], x) for name in UNARY[fam]]
        outs += [b.op(P.PRIMITIVES[name], x, y) for name in BINARY[fam]]
        pred = b.op(P.lt, x, y) if dt is not BOOL else x
        outs.append(b.op(P.select, pred, x, y))
        if fam == "float":  # pow with constant exponents is strength-reduced
            for e in (2.0, 3.0, -1.0, 1.0, 0.5):
                outs.append(b.op(P.pow, x, b.full_like(e, x)))
            outs.append(b.op(P.mul, x, b.full_like(0.1, x)))  # stays in dt (typed constant)
        return outs

    shape = (6, 5)
    fn = build([(dt, shape), (dt, shape)], body)
    x, y = data(dt, shape), data(dt, shape)
    if fam == "int":  # the extremes wrap like NumPy
        x[0, 0], y[0, 0] = np.iinfo(dt.np).max, 1
    if layout == "transposed":
        x, y = noncontiguous(x), noncontiguous(y)
    exe = check(fn, [x, y], one_group(fn, "loop"))
    assert len(exe.kernels) == 1
    # Other shapes of the same pattern reuse the kernel: check a few more, incl. 0-size.
    for other in [(3, 9), (0, 5), (2, 0)]:
        fn2 = build([(dt, other), (dt, other)], body)
        check(fn2, [data(dt, other), data(dt, other)], one_group(fn2, "loop"))


@pytest.mark.parametrize("shape", [(), (1,), (1, 1), (4,)])
def test_elementwise_scalars_and_unit_axes(shape):
    fn = build([(F32, shape), (F32, shape)],
               lambda b, x, y: [b.op(P.tanh, b.op(P.add, x, y)), b.op(P.exp, x)])
    check(fn, [data(F32, shape, special=False), data(F32, shape, special=False)])


def test_convert_between_every_pair_of_dtypes():
    dtypes = [F32, F64, I32, I64, BOOL]
    for src in dtypes:
        shape = (3, 4)

        def body(b, x, src=src):
            return [b.op(P.convert, x, dtype=dst) for dst in dtypes]

        fn = build([(src, shape)], body)
        x = data(src, shape, special=False)
        if src.is_float:
            x = np.round(x * 4) / 4  # exactly representable, in range for every int
            x[0, 0] = -0.0
        check(fn, [x], one_group(fn, "loop"))


def test_one_op_per_kernel_chain_matches():
    def body(b, x, w):
        t = b.op(P.mul, x, b.broadcast(w, (5, 4)))
        return b.op(P.logistic, b.op(P.sub, t, b.full_like(1.5, t)))

    fn = build([(F32, (5, 4)), (F32, (4,))], body)
    exe = check(fn, [data(F32, (5, 4)), data(F32, (4,))])
    assert len(exe.kernels) >= 4


# ---------------------------------------------------------------------------------------
# Layout, sources and gather: one kernel per op (fuse=False semantics)


LAYOUT_CASES = [
    ("broadcast_row", (4,), lambda b, x: b.op(P.broadcast_in_dim, x, shape=(3, 4), dims=(1,))),
    ("broadcast_col", (3,), lambda b, x: b.op(P.broadcast_in_dim, x, shape=(3, 4), dims=(0,))),
    ("broadcast_unit", (3, 1), lambda b, x: b.op(P.broadcast_in_dim, x, shape=(2, 3, 5), dims=(1, 2))),
    ("broadcast_scalar", (), lambda b, x: b.op(P.broadcast_in_dim, x, shape=(2, 3), dims=())),
    ("reshape_split", (6, 4), lambda b, x: b.op(P.reshape, x, shape=(3, 8))),
    ("reshape_unit", (6, 4), lambda b, x: b.op(P.reshape, x, shape=(6, 1, 4))),
    ("reshape_0d", (1, 1), lambda b, x: b.op(P.reshape, x, shape=())),
    ("transpose", (2, 3, 4), lambda b, x: b.op(P.transpose, x, perm=(2, 0, 1))),
    ("transpose_unit", (1, 5), lambda b, x: b.op(P.transpose, x, perm=(1, 0))),
    ("slice", (7, 9), lambda b, x: b.op(P.slice, x, start=(1, 2), limit=(6, 9), stride=(2, 3))),
    ("slice_row", (7, 9), lambda b, x: b.op(P.slice, x, start=(3, 0), limit=(4, 9), stride=(1, 1))),
    ("pad", (3, 4), lambda b, x: b.op(P.pad, x, lo=(1, 0), hi=(2, 3), value=-1.5)),
    ("pad_empty", (0, 4), lambda b, x: b.op(P.pad, x, lo=(1, 0), hi=(1, 0), value=2.0)),
    ("iota", (2, 2), lambda b, x: b.op(P.iota, shape=(3, 5), dimension=1, dtype=x.dtype)),
    ("constant_tuple", (2,), lambda b, x: b.op(P.add, b.op(P.constant, value=tuple(
        P.constant_value(v, x.dtype) for v in (1, 2, 3, 4, 5, 6)), shape=(2, 3), dtype=x.dtype),
        b.op(P.broadcast_in_dim, b.op(P.slice, x, start=(0,), limit=(1,), stride=(1,)), shape=(2, 3), dims=(1,)))),
    ("constant_special", (3,), lambda b, x: b.op(P.add, x, b.broadcast(b.constant(
        float("nan") if x.dtype.is_float else 7, x.dtype), (3,)))),
]  # fmt: skip


@pytest.mark.parametrize("dt", [F32, I64], ids=str)
@pytest.mark.parametrize("name,shape,body", LAYOUT_CASES, ids=[c[0] for c in LAYOUT_CASES])
def test_layout_and_source_ops(name, shape, body, dt):
    if name == "constant_tuple" and dt is BOOL:
        pytest.skip("no arithmetic on bool")
    fn = build([(dt, shape)], body)
    x = data(dt, shape)
    check(fn, [x])
    if x.size > 1:  # a strided view passed as the argument
        check(fn, [noncontiguous(x)])


@pytest.mark.parametrize("dt", [F32, BOOL], ids=str)
def test_concatenate_along_each_axis_including_empty_parts(dt):
    for axis, shapes in [(0, [(2, 3), (0, 3), (4, 3)]), (1, [(2, 1), (2, 5), (2, 2)])]:
        fn = build([(dt, s) for s in shapes], lambda b, *xs, axis=axis: b.op(P.concatenate, *xs, axis=axis))
        check(fn, [data(dt, s) for s in shapes])


@pytest.mark.parametrize("dt", [F64, I32], ids=str)
def test_gather_with_negative_and_out_of_range_indices(dt):
    for axis, xshape, ishape in [(0, (5,), (7,)), (1, (3, 4), (3, 6)), (0, (4, 2), (3, 2))]:
        fn = build([(dt, xshape), (I32, ishape)], lambda b, x, i, axis=axis: b.op(P.gather, x, i, axis=axis))
        idx = RNG.integers(-8, 9, size=ishape).astype(np.int32)
        check(fn, [data(dt, xshape), idx])


# ---------------------------------------------------------------------------------------
# Reductions: every reduction of a dtype and axis pattern in one kernel


REDUCE_PATTERNS = [
    ((6, 7), (1,)),  # rows: innermost axis
    ((6, 7), (0,)),  # columns: accumulate in memory order
    ((3, 4, 5), (1,)),  # a middle axis
    ((6, 7), (0, 1)),  # everything
]


@pytest.mark.parametrize("dt", [F32, F64, I32, I64], ids=str)
@pytest.mark.parametrize("shape,axes", REDUCE_PATTERNS, ids=["rows", "cols", "middle", "all"])
def test_reductions(dt, shape, axes):
    def body(b, x):
        outs = [b.op(P.PRIMITIVES[n], x, axes=axes) for n in ("reduce_sum", "reduce_max", "reduce_min")]
        if len(axes) == 1:
            outs += [b.op(P.argmax, x, axis=axes[0]), b.op(P.argmin, x, axis=axes[0])]
        return outs

    fn = build([(dt, shape)], body)
    x = data(dt, shape, special=False)
    if dt.is_float:
        x.flat[3] = np.nan  # max/min/argmax propagate nan like NumPy
        x.flat[5] = np.inf
    outs = [v for v in fn.results]
    groups = [make_group([op], set(outs), fn.users(), "reduce") for op in fn.ops]
    check(fn, [x], groups)
    check(fn, [noncontiguous(x)], groups)


def test_reduction_edge_cases():
    cases = [
        ((4, 0), (1,), "reduce_sum"),  # empty rows sum to 0
        ((0, 3), (0,), "reduce_sum"),
        ((4, 5), (), "reduce_max"),  # no axes: the identity
        ((1, 5), (0,), "reduce_max"),  # a unit axis
        ((), (), "reduce_sum"),
    ]
    for shape, axes, name in cases:
        fn = build([(F32, shape)], lambda b, x, axes=axes, name=name: b.op(P.PRIMITIVES[name], x, axes=axes))
        check(fn, [data(F32, shape, special=False)])


def test_parallel_kernels_match(monkeypatch):
    """Above the threshold loops become prange (kept small here: a prange compiles slowly)."""
    with config.override(parallel_threshold=64):
        fn = build([(F32, (40, 30))], lambda b, x: [
            b.op(P.reduce_sum, b.op(P.exp, x), axes=(0, 1)),  # split into chunks
            b.op(P.reduce_max, x, axes=(0,)),  # column blocks
        ])
        x = data(F32, (40, 30), special=False)
        exe = check(fn, [x], one_group(fn, "reduce"))
        assert "prange" in exe.kernel_source()


# ---------------------------------------------------------------------------------------
# Contraction and scatter


DOT_CASES = [
    ("mm", (5, 4), (4, 3), ((1,), (0,)), ((), ())),
    ("lhs_t", (4, 5), (4, 3), ((0,), (0,)), ((), ())),
    ("rhs_t", (5, 4), (3, 4), ((1,), (1,)), ((), ())),
    ("batch", (2, 5, 4), (2, 4, 3), ((2,), (1,)), ((0,), (0,))),
    ("batch_last", (5, 2, 4), (4, 3, 2), ((2,), (0,)), ((1,), (2,))),  # copied to scratch
    ("vec", (4,), (4, 3), ((0,), (0,)), ((), ())),
    ("k0", (5, 0), (0, 3), ((1,), (0,)), ((), ())),
    ("two_contract", (2, 3, 4), (3, 4, 5), ((1, 2), (0, 1)), ((), ())),
]


@pytest.mark.parametrize("dt", [F32, F64, I32], ids=str)
@pytest.mark.parametrize("name,ls,rs,contract,batch", DOT_CASES, ids=[c[0] for c in DOT_CASES])
def test_dot_general(name, ls, rs, contract, batch, dt):
    if dt is F64 and name not in ("mm", "batch_last"):
        pytest.skip("f64 shares every path with f32")
    fn = build([(dt, ls), (dt, rs)], lambda b, x, y: b.op(P.dot_general, x, y, contract=contract, batch=batch))
    x, y = data(dt, ls, special=False), data(dt, rs, special=False)
    exe = CpuExecutable(fn, FusedFunction(fn, tuple(one_group(fn, "matmul"))))
    (got,) = exe([x, y])
    (want,) = run_function(fn, x, y)
    tol = 1e-5 if dt is F32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dt", [F32, I64], ids=str)
def test_scatter_add_accumulates_duplicates_and_clamps(dt):
    for axis, ushape, size in [(0, (7,), 4), (1, (3, 6), 5), (0, (5, 2), 3)]:
        fn = build([(dt, ushape), (I64, ushape)],
                   lambda b, u, i, axis=axis, size=size: b.op(P.scatter_add, u, i, axis=axis, size=size))
        idx = RNG.integers(-size - 2, size + 2, size=ushape)
        check(fn, [data(dt, ushape, special=False), idx])


# ---------------------------------------------------------------------------------------
# Generated source: readable, typed, and free of raw user strings


def test_kernel_source_is_typed_readable_and_sanitized():
    def body(b, x):
        y = b.op(P.mul, x, b.full_like(0.5, x))
        return b.op(P.add, y, b.full_like(float("nan"), x))

    fn = build([(F32, (8, 8))], body)
    group = one_group(fn, "loop")[0]
    lk = lower_group(group)
    src = module_source(lk.kernel)
    assert "np.float32(0.5)" in src and "np.float32('nan')" in src
    assert "def loop_f32_2d(" in src and lk.display_name == "loop_f32_8x8"
    assert "test" not in src and "file.py" not in src  # no source lines in the shared module
    exe = CpuExecutable(fn, FusedFunction(fn, (group,)))
    shown = exe.kernel_source()
    assert "# test?file.py:7" in shown  # the newline of the odd file name is neutralized
    assert all(line.startswith(("#", " ", "import", "from", "@", "def", "c", "")) for line in shown.splitlines())
    (info,) = exe.kernels
    assert info.name == "loop_f32_8x8" and info.bytes_in == 256 and info.bytes_out == 256
    assert len(info.ops) == len(fn.ops)


def test_can_lower_gives_reasons():
    def body(b, x, w):
        return b.op(P.exp, b.op(P.dot_general, b.op(P.exp, x), w, contract=((1,), (0,)), batch=((), ())))

    fn = build([(F32, (4, 4)), (F32, (4, 4))], body)
    assert can_lower(one_group(fn, "matmul")[0]) == "a matmul kernel reads its operands from memory"
    fn2 = build([(F32, (4, 4))], lambda b, x: [b.op(P.exp, x), b.op(P.reshape, x, shape=(16,))])
    assert "different shapes" in can_lower(one_group(fn2, "loop")[0])
    fn3 = build([(F32, (4, 6))], lambda b, x: b.op(P.reduce_sum, b.op(P.transpose, b.op(
        P.broadcast_in_dim, b.op(P.reduce_max, x, axes=(1,)), shape=(4, 4), dims=(0,)), perm=(1, 0)), axes=(1,)))
    assert can_lower(one_group(fn3, "row")[0]) is not None
