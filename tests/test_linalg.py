"""``fusejit.numpy.linalg`` and ``fusejit.scipy.linalg.solve_triangular``: values against
NumPy/SciPy (float32 and float64, batched, zero-size), gradients by finite differences
(first order for every function, second order for the solves, determinants and
decompositions), jit == eager, NumPy's own ``np.linalg`` calls dispatching on traced
values, vmap, and the errors for operands that are not square matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import fusejit as fj
import fusejit.numpy as fnp
import fusejit.scipy as fsp
from fusejit import config
from fusejit.ir import IRTypeError
from fusejit.ir import primitives as P
from fusejit.ir.transforms.fusion import GroupKind


@pytest.fixture(scope="module", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "fusejit-cache"
    with config.override(cache=True, cache_dir=str(root), backend="cpu"):
        yield


RNG = np.random.default_rng(7)


def general(shape, seed=0):
    """Well-conditioned square matrices: noise plus n times the identity."""
    rng = np.random.default_rng(seed)
    n = shape[-1]
    return rng.standard_normal(shape) + n * np.eye(n)


def spd(shape, seed=0):
    """Symmetric positive-definite matrices with well-separated eigenvalues."""
    a = np.random.default_rng(seed).standard_normal(shape)
    n = shape[-1]
    return a @ np.swapaxes(a, -1, -2) + np.diag(np.arange(1.0, n + 1)) * n


def rect(shape, seed=0):
    """Matrices with well-separated singular values."""
    a = np.random.default_rng(seed).standard_normal(shape)
    k = min(shape[-2:])
    u, _, vh = np.linalg.svd(a, full_matrices=False)
    return (u * np.arange(k, 0, -1.0)) @ vh if k else a


def tol(dtype):
    return {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-10, "atol": 1e-10}


# name: (fusejit function, NumPy function, matrix maker)
VALUE_CASES = {
    "inv": (fnp.linalg.inv, np.linalg.inv, general),
    "det": (fnp.linalg.det, np.linalg.det, general),
    "slogdet": (lambda a: tuple(fnp.linalg.slogdet(a)), lambda a: tuple(np.linalg.slogdet(a)), general),
    "cholesky": (fnp.linalg.cholesky, np.linalg.cholesky, spd),
    "cholesky_upper": (
        lambda a: fnp.linalg.cholesky(a, upper=True),
        lambda a: np.linalg.cholesky(a, upper=True),
        spd,
    ),
    "eigvalsh": (fnp.linalg.eigvalsh, np.linalg.eigvalsh, spd),
    "eigh_U": (lambda a: fnp.linalg.eigh(a, "U").eigenvalues, lambda a: np.linalg.eigh(a, "U")[0], spd),
    "svd_values": (
        lambda a: fnp.linalg.svd(a, compute_uv=False),
        lambda a: np.linalg.svd(a, compute_uv=False),
        general,
    ),
    "pinv": (fnp.linalg.pinv, np.linalg.pinv, general),
    "matrix_power_3": (
        lambda a: fnp.linalg.matrix_power(a, 3),
        lambda a: np.linalg.matrix_power(a, 3),
        general,
    ),
    "matrix_power_-2": (
        lambda a: fnp.linalg.matrix_power(a, -2),
        lambda a: np.linalg.matrix_power(a, -2),
        general,
    ),
    "matrix_power_0": (
        lambda a: fnp.linalg.matrix_power(a, 0),
        lambda a: np.linalg.matrix_power(a, 0),
        general,
    ),
}
SHAPES = [(3, 3), (2, 4, 4), (2, 1, 3, 3), (1, 1)]
ZERO_SIZE = [(0, 3, 3), (2, 0, 0)]


def assert_close(actual, expected, dtype):
    actual = actual if isinstance(actual, tuple) else (actual,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for x, y in zip(actual, expected, strict=True):
        x = np.asarray(x)
        assert x.shape == np.shape(y) and x.dtype == np.asarray(y).dtype, (x.shape, x.dtype, np.shape(y))
        np.testing.assert_allclose(x, y, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", VALUE_CASES)
def test_values_dtypes_and_shapes_match_numpy_batched_and_zero_size(name, dtype):
    ours, numpys, make = VALUE_CASES[name]
    for shape in SHAPES + ZERO_SIZE:
        if 0 in shape[-2:] and name in ("matrix_power_-2",):
            continue
        a = make(shape).astype(dtype)
        assert_close(ours(a), numpys(a), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_solve_matches_numpy_for_vectors_matrices_and_broadcast_batches(dtype):
    a = general((2, 3, 3)).astype(dtype)
    for b_shape in [(3,), (3, 2), (2, 3, 1), (1, 3, 4), (3, 0)]:
        b = RNG.standard_normal(b_shape).astype(dtype)
        assert_close(fnp.linalg.solve(a, b), np.linalg.solve(a, b), dtype)
    ints = np.array([[2, 1], [1, 3]])
    assert_close(
        fnp.linalg.solve(ints, np.array([1, 2])), np.linalg.solve(ints, np.array([1, 2])), np.float64
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lower", "trans", "unit"), [(True, 0, False), (False, 1, False), (True, "T", True), (False, "N", True)]
)
def test_solve_triangular_matches_scipy_reading_only_its_triangle(lower, trans, unit, dtype):
    a = general((3, 3)).astype(dtype)
    for b in [RNG.standard_normal(3).astype(dtype), RNG.standard_normal((3, 2)).astype(dtype)]:
        expected = scipy.linalg.solve_triangular(a, b, trans=trans, lower=lower, unit_diagonal=unit)
        ours = fsp.linalg.solve_triangular(a, b, trans=trans, lower=lower, unit_diagonal=unit)
        assert_close(ours, expected.astype(dtype), dtype)
    batched = general((2, 3, 3)).astype(dtype)
    b = RNG.standard_normal((2, 3, 2)).astype(dtype)
    expected = np.stack(
        [
            scipy.linalg.solve_triangular(m, c, trans=trans, lower=lower, unit_diagonal=unit)
            for m, c in zip(batched, b, strict=True)
        ]
    )
    assert_close(
        fsp.linalg.solve_triangular(batched, b, trans=trans, lower=lower, unit_diagonal=unit),
        expected.astype(dtype),
        dtype,
    )


VECTOR_ORDS = [None, 2, 1, np.inf, -np.inf, 0, 3, 0.5, -1]
MATRIX_ORDS = [None, "fro", "nuc", 1, -1, 2, -2, np.inf, -np.inf]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norm_matches_numpy_for_every_order_axis_and_keepdims(dtype):
    x = RNG.standard_normal((2, 3, 4)).astype(dtype)
    for ord in VECTOR_ORDS:
        for axis in (0, -1):
            for keepdims in (False, True):
                assert_close(
                    fnp.linalg.norm(x, ord, axis, keepdims), np.linalg.norm(x, ord, axis, keepdims), dtype
                )
        assert_close(fnp.linalg.norm(x[0, 0], ord), np.linalg.norm(x[0, 0], ord), dtype)
    for ord in MATRIX_ORDS:
        for axis in ((1, 2), (2, 0)):
            for keepdims in (False, True):
                assert_close(
                    fnp.linalg.norm(x, ord, axis, keepdims), np.linalg.norm(x, ord, axis, keepdims), dtype
                )
        assert_close(fnp.linalg.norm(x[0], ord), np.linalg.norm(x[0], ord), dtype)
    assert_close(fnp.linalg.norm(x), np.linalg.norm(x), dtype)
    assert_close(fnp.linalg.norm(x, keepdims=True), np.linalg.norm(x, keepdims=True), dtype)
    assert_close(fnp.linalg.norm(np.arange(4)), np.linalg.norm(np.arange(4)), np.float64)


def test_eigh_and_svd_factors_reconstruct_the_matrix_like_numpys():
    a = spd((2, 4, 4))
    w, v = fnp.linalg.eigh(a)
    np.testing.assert_allclose(v @ (w[..., None] * np.swapaxes(v, -1, -2)), a, atol=1e-10)
    np.testing.assert_allclose(np.abs(v), np.abs(np.linalg.eigh(a)[1]), atol=1e-10)
    for shape in [(2, 4, 3), (3, 5), (4, 4)]:
        m = rect(shape)
        u, s, vh = fnp.linalg.svd(m, full_matrices=False)
        nu, ns, nvh = np.linalg.svd(m, full_matrices=False)
        np.testing.assert_allclose(s, ns, atol=1e-10)
        np.testing.assert_allclose((u * s[..., None, :]) @ vh, m, atol=1e-10)
        np.testing.assert_allclose(np.abs(u), np.abs(nu), atol=1e-10)
        np.testing.assert_allclose(np.abs(vh), np.abs(nvh), atol=1e-10)
    u, s, vh = fnp.linalg.svd(np.zeros((2, 3, 0)), full_matrices=False)
    assert (u.shape, s.shape, vh.shape) == ((2, 3, 0), (2, 0), (2, 0, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_qr_matches_numpy_in_every_supported_mode_batched_and_zero_size(dtype):
    for shape in [(4, 3), (3, 4), (2, 3, 3), (2, 1, 5, 2), (0, 3), (3, 0), (2, 0, 0), (0, 3, 2)]:
        a = RNG.standard_normal(shape).astype(dtype)
        assert_close(tuple(fnp.linalg.qr(a)), tuple(np.linalg.qr(a)), dtype)
        assert_close(fnp.linalg.qr(a, mode="r"), np.linalg.qr(a, mode="r"), dtype)
    wide = RNG.standard_normal((2, 4)).astype(dtype)
    assert_close(tuple(fnp.linalg.qr(wide, "complete")), tuple(np.linalg.qr(wide, "complete")), dtype)
    with pytest.raises(NotImplementedError, match="mode='reduced'"):
        fnp.linalg.qr(np.ones((3, 2)), "complete")
    with pytest.raises(NotImplementedError, match="'raw'"):
        fnp.linalg.qr(np.ones((3, 2)), "raw")


def test_qr_of_a_wide_matrix_has_no_derivative_and_says_so():
    with pytest.raises(NotImplementedError, match="qr: no derivative for a wide 2x3 matrix"):
        fj.grad(lambda a: fnp.sum(fnp.linalg.qr(a).R))(np.ones((2, 3)))


def test_failures_give_nan_where_numpy_raises_and_leave_the_rest_of_the_batch_right():
    a = np.stack([general((3, 3)), np.ones((3, 3))])
    x = fnp.linalg.inv(a)
    np.testing.assert_allclose(x[0], np.linalg.inv(a[0]), rtol=1e-10)
    assert np.isnan(x[1]).all()
    lo = fnp.linalg.cholesky(np.stack([spd((3, 3)), -np.eye(3)]))
    np.testing.assert_allclose(lo[0], np.linalg.cholesky(spd((3, 3))), rtol=1e-10)
    assert np.isnan(lo[1]).all()
    assert fnp.linalg.det(np.ones((3, 3))) == 0.0


@pytest.mark.parametrize(
    "fn",
    [
        fnp.linalg.inv,
        fnp.linalg.det,
        fnp.linalg.slogdet,
        fnp.linalg.cholesky,
        fnp.linalg.eigh,
        fnp.linalg.eigvalsh,
        lambda a: fnp.linalg.matrix_power(a, 2),
        lambda a: fnp.linalg.solve(a, np.ones(3)),
        lambda a: fsp.linalg.solve_triangular(a, np.ones(3)),
    ],
)
def test_operands_that_are_not_square_matrices_raise_naming_the_function_and_line(fn):
    for bad in (np.ones((3, 2)), np.ones(3)):
        with pytest.raises(IRTypeError, match=r"(square|two-dimensional).*test_linalg.py:\d+") as info:
            fn(bad)
        assert info.value.args[0].split(":")[0] in {
            "inv",
            "det",
            "slogdet",
            "cholesky",
            "eigh",
            "eigvalsh",
            "matrix_power",
            "solve",
            "solve_triangular",
        }
    with pytest.raises(IRTypeError, match="inv: last 2 dimensions of a must be square"):
        fj.jit(fnp.linalg.inv)(np.ones((2, 3)))


def test_svd_with_full_matrices_of_a_non_square_matrix_is_refused_clearly():
    with pytest.raises(NotImplementedError, match="full_matrices=False"):
        fnp.linalg.svd(np.ones((3, 2)))
    assert len(fnp.linalg.svd(np.eye(2))) == 3  # square: the full SVD is the thin one


# ---------------------------------------------------------------------------------------
# Gradients

A3 = general((3, 3), seed=1)
S3 = spd((3, 3), seed=2)
B32 = RNG.standard_normal((3, 2))
W3 = RNG.standard_normal((3, 3))
W32 = RNG.standard_normal((3, 2))

GRAD_CASES = {
    "inv": (lambda a: fnp.sum(fnp.linalg.inv(a) * W3), (A3,)),
    "solve": (lambda a, b: fnp.sum(fnp.linalg.solve(a, b) * W32), (A3, B32)),
    "det": (fnp.linalg.det, (A3,)),
    "slogdet": (lambda a: fnp.linalg.slogdet(a).logabsdet, (A3,)),
    "cholesky": (lambda a: fnp.sum(fnp.linalg.cholesky(a) * W3), (S3,)),
    "solve_triangular": (
        lambda a, b: fnp.sum(fsp.linalg.solve_triangular(a, b, lower=True) * W32),
        (A3, B32),
    ),
    "solve_triangular_T": (lambda a, b: fnp.sum(fsp.linalg.solve_triangular(a, b, trans=1) * W32), (A3, B32)),
    "eigh": (lambda a: fnp.sum(fnp.linalg.eigh(a)[1] ** 2 * W3) + fnp.sum(fnp.linalg.eigh(a)[0] ** 2), (S3,)),
    "eigvalsh": (lambda a: fnp.sum(fnp.linalg.eigvalsh(a, "U") * np.array([1.0, -2.0, 0.5])), (S3,)),
    "svd_tall": (
        lambda a: fnp.sum(
            (lambda u, s, vh: (u[:, :1] * vh[:1, :]) * W32 + s[0] ** 2 * W32)(
                *fnp.linalg.svd(a, full_matrices=False)
            )
        ),
        (rect((3, 2), seed=3),),
    ),
    "svd_wide": (
        lambda a: fnp.sum(
            (lambda u, s, vh: (u[:, 1:] * vh[1:, :]) * W32.T + s[1] ** 2 * W32.T)(
                *fnp.linalg.svd(a, full_matrices=False)
            )
        ),
        (rect((2, 3), seed=4),),
    ),
    "pinv": (lambda a: fnp.sum(fnp.linalg.pinv(a) * W32.T), (rect((3, 2), seed=5),)),
    "qr_tall": (
        lambda a: fnp.sum((lambda q, r: q * W32 + fnp.sum(r * W32[:2]))(*fnp.linalg.qr(a))),
        (rect((3, 2), seed=9),),
    ),
    "qr_square": (lambda a: fnp.sum(fnp.linalg.qr(a).Q * W3) + fnp.sum(fnp.linalg.qr(a, "r") ** 2), (A3,)),
    "matrix_power": (lambda a: fnp.sum(fnp.linalg.matrix_power(a, -3) * W3), (A3,)),
    "norm_2": (lambda a: fnp.linalg.norm(a, 2), (rect((3, 3), seed=6),)),
    "norm_nuc": (lambda a: fnp.linalg.norm(a, "nuc"), (rect((3, 2), seed=6),)),
    "norm_fro_inf_1": (
        lambda a: fnp.linalg.norm(a) + fnp.linalg.norm(a, np.inf) + fnp.linalg.norm(a, 1),
        (A3,),
    ),
    "norm_vector_p": (
        lambda x: fnp.linalg.norm(x, 3) + fnp.linalg.norm(x, 0.5),
        (np.array([0.5, -1.5, 2.0]),),
    ),
}


@pytest.mark.parametrize("name", GRAD_CASES)
def test_first_order_gradients_match_finite_differences(name):
    fn, args = GRAD_CASES[name]
    assert fj.gradcheck(fn, args)


@pytest.mark.parametrize(
    "name",
    [
        "inv",
        "solve",
        "det",
        "slogdet",
        "cholesky",
        "solve_triangular",
        "eigh",
        "svd_tall",
        "svd_wide",
        "qr_tall",
        "qr_square",
        "pinv",
        "matrix_power",
        "norm_2",
    ],
)
def test_second_order_gradients_match_finite_differences(name):
    fn, args = GRAD_CASES[name]
    assert fj.gradcheck(fj.grad(fn), args, atol=1e-4, rtol=1e-3)


def test_gradients_of_batched_decompositions_match_finite_differences():
    a = spd((2, 3, 3), seed=8)
    assert fj.gradcheck(
        lambda a: fnp.sum(fnp.linalg.slogdet(a).logabsdet) + fnp.sum(fnp.linalg.cholesky(a)), (a,)
    )


@pytest.mark.parametrize("ord", [None, 2, "fro", 1, 3])
def test_norm_gradient_at_zero_is_zero_not_nan(ord):
    x = np.zeros((3, 3)) if ord in ("fro", 1) else np.zeros(3)
    g = fj.grad(lambda x: fnp.linalg.norm(x, ord))(x)
    assert np.array_equal(g, np.zeros_like(x))


# ---------------------------------------------------------------------------------------
# jit, NumPy dispatch, vmap, fusion


def everything(a, s, b):
    sign, logdet = fnp.linalg.slogdet(a)
    w, v = fnp.linalg.eigh(s)
    return (
        fnp.linalg.inv(a),
        fnp.linalg.solve(a, b),
        fnp.linalg.det(a),
        sign,
        logdet,
        fnp.linalg.cholesky(s),
        w,
        v,
        fnp.linalg.svd(a, compute_uv=False),
        fnp.linalg.pinv(a),
        fnp.linalg.norm(a, "nuc", (-2, -1)),
        fnp.linalg.matrix_power(a, -2),
        fsp.linalg.solve_triangular(s, b, lower=True),
        *fnp.linalg.qr(b),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_jit_matches_eager_and_runs_each_decomposition_on_the_host(dtype):
    a, s, b = (
        general((2, 3, 3)).astype(dtype),
        spd((2, 3, 3)).astype(dtype),
        B32[None].repeat(2, 0).astype(dtype),
    )
    jitted = fj.jit(everything)
    for x, y in zip(jitted(a, s, b), everything(a, s, b), strict=True):
        assert np.asarray(x).dtype == y.dtype
        np.testing.assert_allclose(x, y, **tol(dtype))
    groups = jitted.lower(a, s, b).fused.groups
    host = sorted(g.ops[0].prim.name for g in groups if g.kind is GroupKind.HOST)
    assert set(host) == {"solve", "slogdet", "cholesky", "eigh", "svd", "triangular_solve", "qr"}
    assert all(len(g.ops) == 1 for g in groups if g.kind is GroupKind.HOST)


def test_numpys_own_linalg_functions_dispatch_on_traced_values():
    a, s = general((3, 3)), spd((3, 3))

    def numpy_code(a, s):
        return (
            np.linalg.inv(a),
            np.linalg.det(a),
            np.linalg.solve(a, s[0]),
            np.linalg.cholesky(s),
            np.linalg.norm(a),
            np.linalg.eigvalsh(s),
            np.linalg.slogdet(a)[1],
            np.linalg.matrix_power(a, 2),
            np.linalg.pinv(a),
            np.linalg.svd(a, compute_uv=False),
            np.linalg.qr(a).R,
        )

    for x, y in zip(fj.jit(numpy_code, backend="interpret")(a, s), numpy_code(a, s), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-10, atol=1e-12)
    g = fj.grad(lambda a: np.linalg.det(a))(a)
    np.testing.assert_allclose(g, np.linalg.det(a) * np.linalg.inv(a).T, rtol=1e-10)


def test_vmap_of_linear_algebra_equals_the_batched_call():
    a = general((4, 3, 3))
    b = RNG.standard_normal((3, 2))
    out = fj.vmap(lambda a: (fnp.linalg.solve(a, b), fnp.linalg.det(a)))(a)
    np.testing.assert_allclose(out[0], np.linalg.solve(a, b), rtol=1e-10)
    np.testing.assert_allclose(out[1], np.linalg.det(a), rtol=1e-10)


def test_linalg_primitives_are_host_ops_over_floats():
    for p in P.LINALG:
        assert p.kind is P.OpKind.HOST and p.dtypes == P.FLOATS
    with pytest.raises(IRTypeError, match="solve: b of shape"):
        fnp.linalg.solve(np.eye(3), np.ones((2, 2)))


# ---------------------------------------------------------------------------------------
# The rest of numpy.linalg (NumPy 2's array-API names), composed from the above

NP2 = hasattr(np.linalg, "matrix_norm")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_composed_numpy_linalg_functions_match_numpy(dtype):
    x = RNG.standard_normal((2, 3, 4)).astype(dtype)
    sq = general((2, 3, 3)).astype(dtype)
    v = RNG.standard_normal((2, 3)).astype(dtype)
    cases = [
        lambda m, x, sq, v: m.linalg.cond(sq),
        lambda m, x, sq, v: m.linalg.cond(x),
        lambda m, x, sq, v: m.linalg.cond(sq, -2),
        lambda m, x, sq, v: m.linalg.cond(sq, "fro"),
        lambda m, x, sq, v: m.linalg.cond(sq, 1),
        lambda m, x, sq, v: m.linalg.matrix_rank(x),
        lambda m, x, sq, v: m.linalg.matrix_rank(m.ones((3, 3), dtype) * sq[0, 0, 0]),
        lambda m, x, sq, v: m.linalg.matrix_rank(v[0] * 0),
        lambda m, x, sq, v: m.linalg.matrix_rank(sq, tol=0.5),
        lambda m, x, sq, v: m.linalg.multi_dot([v[0], sq[0], sq[1], v[1]]),
        lambda m, x, sq, v: m.linalg.multi_dot([x[0], x[1].T, sq[0]]),
    ]
    if NP2:
        cases += [
            lambda m, x, sq, v: m.linalg.matrix_transpose(x),
            lambda m, x, sq, v: m.linalg.svdvals(x),
            lambda m, x, sq, v: m.linalg.vector_norm(x),
            lambda m, x, sq, v: m.linalg.vector_norm(x, axis=(0, 2), keepdims=True, ord=1),
            lambda m, x, sq, v: m.linalg.vector_norm(x, axis=-1, ord=np.inf),
            lambda m, x, sq, v: m.linalg.matrix_norm(x, ord="nuc"),
            lambda m, x, sq, v: m.linalg.matrix_norm(x, keepdims=True),
            lambda m, x, sq, v: m.linalg.outer(v[0], v[1]),
            lambda m, x, sq, v: m.linalg.cross(v, v[::-1]),
            lambda m, x, sq, v: m.linalg.diagonal(x, offset=1),
            lambda m, x, sq, v: m.linalg.trace(x, offset=-1),
            lambda m, x, sq, v: m.linalg.matmul(x, m.swapaxes(x, -1, -2)),
            lambda m, x, sq, v: m.linalg.tensordot(x, m.transpose(x, (1, 2, 0)), axes=2),
            lambda m, x, sq, v: m.linalg.vecdot(x, x[:1]),
        ]
    for case in cases:
        expected = case(np, x, sq, v)
        assert_close(case(fnp, x, sq, v), expected, dtype)
        # NumPy's own functions, dispatched on traced values (one jit: the interpreter)
        dispatched = fj.jit(lambda *args, case=case: case(np, *args), backend="interpret")(x, sq, v)
        assert_close(dispatched, expected, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tensorinv_and_tensorsolve_match_numpy(dtype):
    t = general((6, 6)).astype(dtype)
    b = RNG.standard_normal((2, 3)).astype(dtype)
    cases = [
        lambda m, t, b: m.linalg.tensorinv(m.reshape(t, (2, 3, 6))),
        lambda m, t, b: m.linalg.tensorinv(m.reshape(t, (6, 2, 3)), ind=1),
        lambda m, t, b: m.linalg.tensorsolve(m.reshape(t, (2, 3, 6)), b),
        lambda m, t, b: m.linalg.tensorsolve(m.reshape(t, (2, 3, 2, 3)), b, axes=(0,)),
    ]
    for case in cases:
        expected = case(np, t, b)
        assert_close(case(fnp, t, b), expected, dtype)
        assert_close(
            fj.jit(lambda *args, case=case: case(np, *args), backend="interpret")(t, b), expected, dtype
        )
    with pytest.raises(IRTypeError, match="tensorinv: a of shape"):
        fnp.linalg.tensorinv(np.ones((2, 3)), ind=1)


def test_numpy_linalg_names_without_a_rule_are_attribute_errors_naming_them():
    assert not hasattr(fnp.linalg, "eig")
    with pytest.raises(AttributeError, match="numpy.linalg.eigvals is not supported by fusejit.numpy.linalg"):
        fnp.linalg.eigvals  # noqa: B018
    with pytest.raises(NotImplementedError, match="numpy.linalg.eig has no fusejit rule"):
        fj.jit(lambda a: np.linalg.eig(a))(np.eye(2))
    assert fnp.linalg.LinAlgError is np.linalg.LinAlgError
