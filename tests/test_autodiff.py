"""Symbolic autodiff checked against finite differences (``fj.gradcheck``, which checks
reverse mode, forward mode and every gradient element of small inputs).

Table-driven: every differentiable primitive through ``fusejit.numpy`` (or ``bind`` for
the primitives it does not expose) over broadcasting shapes; then composite models and
second derivatives. See ``test_autodiff_api.py`` for the API, compositions and IR.
"""

from __future__ import annotations

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit.ir import primitives as P
from fusejit.tracer.tracing import bind

RNG = np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _reseed() -> None:
    """Each test draws the same inputs however the tests are ordered or distributed."""
    global RNG
    RNG = np.random.default_rng(1234)


def normal(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def positive(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape)


def apart(*shape: int) -> np.ndarray:
    """Distinct values at least 0.05 apart (no ties for max/min/abs/clip kinks)."""
    n = int(np.prod(shape))
    return RNG.permutation(np.linspace(-2.0, 2.0, n) + 0.013).reshape(shape)


# ---------------------------------------------------------------------------------------
# Unary elementwise

UNARY = {
    "exp": (fnp.exp, normal),
    "log": (fnp.log, positive),
    "log1p": (fnp.log1p, positive),
    "expm1": (fnp.expm1, normal),
    "sqrt": (fnp.sqrt, positive),
    "rsqrt": (lambda x: bind(P.rsqrt, x), positive),
    "tanh": (fnp.tanh, normal),
    "logistic": (lambda x: bind(P.logistic, x), normal),
    "sin": (fnp.sin, normal),
    "cos": (fnp.cos, normal),
    "abs": (fnp.abs, apart),
    "negative": (fnp.negative, normal),
    "square": (fnp.square, normal),
    "reciprocal": (fnp.reciprocal, positive),
    "log2": (fnp.log2, positive),
    "tan": (fnp.tan, lambda *s: RNG.uniform(-1, 1, s)),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("shape", [(), (3,), (2, 3)])
def test_unary(name: str, shape: tuple[int, ...]) -> None:
    fn, sample = UNARY[name]
    assert fj.gradcheck(fn, (sample(*shape),))


# ---------------------------------------------------------------------------------------
# Binary elementwise over broadcasting shapes

SHAPES = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (4, 1)), ((), (3,)), ((3, 1), (1, 4))]

BINARY = {
    "add": (fnp.add, normal, normal),
    "subtract": (fnp.subtract, normal, normal),
    "multiply": (fnp.multiply, normal, normal),
    "divide": (fnp.divide, normal, positive),
    "power": (fnp.power, positive, normal),
    "maximum": (fnp.maximum, apart, lambda *s: apart(*s) + 0.021),
    "minimum": (fnp.minimum, apart, lambda *s: apart(*s) + 0.021),
    "where": (lambda x, y: fnp.where(x > y, x * 2.0, y), apart, lambda *s: apart(*s) + 0.021),
    "arctan-ish": (lambda x, y: x * y / (1.0 + x * x), normal, normal),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
def test_binary_broadcasting(name: str, shapes: tuple) -> None:
    fn, sx, sy = BINARY[name]
    assert fj.gradcheck(fn, (sx(*shapes[0]), sy(*shapes[1])))


def test_power_with_constant_exponents_and_zero_base() -> None:
    assert fj.gradcheck(lambda x: x**3 + x**0.5 + x**-1.5, (positive(4),))
    # d/dx x^2 at 0 is 0, and 0^y has a finite dy derivative (x == 0 guarded)
    g = fj.grad(lambda x, y: fnp.sum(x**y), argnums=(0, 1))(np.array([0.0, 1.0]), np.array([2.0, 2.0]))
    np.testing.assert_allclose(g[0], [0.0, 2.0])
    np.testing.assert_allclose(g[1], [0.0, 0.0])


def test_max_min_split_ties_evenly_like_jax() -> None:
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([1.0, 5.0, 0.0])
    gx, gy = fj.grad(lambda x, y: fnp.sum(fnp.maximum(x, y)), argnums=(0, 1))(x, y)
    np.testing.assert_allclose(gx, [0.5, 0.0, 1.0])
    np.testing.assert_allclose(gy, [0.5, 1.0, 0.0])
    g = fj.grad(lambda x: fnp.max(x))(np.array([3.0, 1.0, 3.0, 3.0]))
    np.testing.assert_allclose(g, [1 / 3, 0.0, 1 / 3, 1 / 3])
    g = fj.grad(lambda x: fnp.sum(fnp.min(x, axis=1)))(np.array([[1.0, 1.0], [0.0, 2.0]]))
    np.testing.assert_allclose(g, [[0.5, 0.5], [1.0, 0.0]])
    _, t = fj.jvp(lambda x: fnp.max(x), (np.array([3.0, 1.0, 3.0]),), (np.array([1.0, 5.0, 2.0]),))
    np.testing.assert_allclose(t, 1.5)


# ---------------------------------------------------------------------------------------
# Reductions, layout, contraction, indexing

ONE_ARG = {
    "sum": (lambda x: fnp.sum(x, axis=1, keepdims=True), (3, 4)),
    "sum_all": (lambda x: fnp.sum(x), (2, 3, 2)),
    "mean": (lambda x: fnp.mean(x, axis=0), (3, 4)),
    "var": (lambda x: fnp.var(x, axis=1), (3, 4)),
    "std": (lambda x: fnp.std(x), (3, 4)),
    "max": (lambda x: fnp.max(x, axis=1), (3, 4)),
    "min_axes": (lambda x: fnp.min(x, axis=(0, 2), keepdims=True), (3, 4, 2)),
    "reshape": (lambda x: x.reshape(4, 3) * 1.5, (3, 4)),
    "transpose": (lambda x: x.transpose(2, 0, 1), (3, 4, 2)),
    "T": (lambda x: x.T @ x, (3, 4)),
    "slice": (lambda x: x[1:3, 1:], (4, 5)),
    "slice_strided": (lambda x: x[1:6:3, ::2], (7, 6)),
    "slice_strided_end": (lambda x: x[::3], (7,)),
    "slice_strided_exact": (lambda x: x[1::2], (7,)),
    "index_int": (lambda x: x[1, :, 0], (3, 2, 2)),
    "reverse": (lambda x: x[::-1, 1], (5, 2)),
    "pad": (lambda x: fnp.pad(x, ((1, 2), (0, 1)), constant_values=3.0), (2, 3)),
    "broadcast_to": (lambda x: fnp.broadcast_to(x, (2, 3, 4)), (3, 1)),
    "expand_squeeze": (lambda x: fnp.squeeze(fnp.expand_dims(x, 1) * 2.0, 1), (3, 2)),
    "take": (lambda x: fnp.take(x, np.array([0, 2, 2, -1]), axis=1), (3, 4)),
    "take_along_axis": (lambda x: fnp.take_along_axis(x, np.array([[0], [3], [1]]), axis=1), (3, 4)),
    "fancy_index": (lambda x: x[np.array([[1, 1], [0, 2]])], (3, 2)),
    "scatter_add": (
        lambda x: bind(P.scatter_add, x, np.array([[0, 1, 1], [2, 0, -1]]), axis=1, size=3),
        (2, 3),
    ),
    "gather": (lambda x: bind(P.gather, x, np.array([[0, 5], [-1, 1]]), axis=1), (2, 3)),
    "cumsum": (lambda x: bind(P.cumsum, x, axis=1, reverse=False) * fnp.arange(4.0), (3, 4)),
    "cumsum_reverse": (lambda x: bind(P.cumsum, x, axis=0, reverse=True) ** 2, (3, 4)),
    "astype_f32_f64": (lambda x: x.astype(np.float32).astype(np.float64) * 2, (3,)),
    "astype_int": (lambda x: x * x.astype(np.int64), (3,)),
    "clip": (lambda x: fnp.clip(x, -0.5, 0.5) * x, (6,)),
    "floor_sign_round": (lambda x: x * (fnp.floor(x) + fnp.sign(x) + fnp.round(x) + fnp.ceil(x)), (5,)),
    "argmax": (lambda x: fnp.take_along_axis(x, fnp.argmax(x, axis=1)[:, None], axis=1), (3, 4)),
    "comparison": (lambda x: fnp.where((x > 0) & (x < 1), x, -x), (6,)),
}


@pytest.mark.parametrize("name", sorted(ONE_ARG))
def test_one_argument(name: str) -> None:
    fn, shape = ONE_ARG[name]
    kwargs = {"eps": 1e-2, "rtol": 1e-3} if name == "astype_f32_f64" else {}  # float32 round trip
    assert fj.gradcheck(fn, (apart(*shape),), **kwargs)


TWO_ARGS = {
    "matmul": (lambda a, b: a @ b, (3, 4), (4, 2)),
    "matmul_batched": (lambda a, b: a @ b, (2, 3, 4), (2, 4, 5)),
    "matmul_broadcast_batch": (lambda a, b: a @ b, (2, 3, 4), (4, 5)),
    "matvec": (lambda a, b: a @ b, (3, 4), (4,)),
    "vecmat": (lambda a, b: a @ b, (4,), (4, 3)),
    "dot": (lambda a, b: fnp.dot(a, b), (4,), (4,)),
    "outer": (lambda a, b: fnp.outer(a, b), (3,), (2,)),
    "einsum_bmm_t": (lambda a, b: fnp.einsum("bij,bkj->bki", a, b), (2, 3, 4), (2, 5, 4)),
    "einsum_perm": (lambda a, b: fnp.einsum("ijk,jl->lki", a, b), (2, 3, 4), (3, 5)),
    "einsum_batch_middle": (lambda a, b: fnp.einsum("ibj,jbk->bik", a, b), (2, 3, 4), (4, 3, 2)),
    "concatenate": (lambda a, b: fnp.concatenate([a, b, a], axis=1), (2, 3), (2, 1)),
    "stack": (lambda a, b: fnp.stack([a, b], axis=1), (2, 3), (2, 3)),
}


@pytest.mark.parametrize("name", sorted(TWO_ARGS))
def test_two_arguments(name: str) -> None:
    fn, sa, sb = TWO_ARGS[name]
    assert fj.gradcheck(fn, (normal(*sa), normal(*sb)))


def test_integer_arguments_are_passed_through() -> None:
    labels = np.array([2, 0, 1])
    assert fj.gradcheck(lambda x, i: fnp.take_along_axis(x, i[:, None], axis=1) * 2.0, (normal(3, 4), labels))


# ---------------------------------------------------------------------------------------
# Composite models


def log_softmax(z):
    z = z - fnp.max(z, axis=-1, keepdims=True)
    return z - fnp.log(fnp.sum(fnp.exp(z), axis=-1, keepdims=True))


def softmax(z):
    e = fnp.exp(z - fnp.max(z, axis=-1, keepdims=True))
    return e / fnp.sum(e, axis=-1, keepdims=True)


def mlp_loss(params, x, labels):
    h = fnp.tanh(x @ params["w1"] + params["b1"])
    logits = h @ params["w2"] + params["b2"]
    return -fnp.mean(fnp.take_along_axis(log_softmax(logits), labels[:, None], axis=1))


def mlp_params():
    return {"w1": normal(4, 5) * 0.5, "b1": normal(5) * 0.1, "w2": normal(5, 3) * 0.5, "b2": normal(3) * 0.1}


def test_mlp_softmax_cross_entropy() -> None:
    x, labels = normal(6, 4), np.array([0, 2, 1, 1, 0, 2])
    assert fj.gradcheck(mlp_loss, (mlp_params(), x, labels))


def test_layernorm() -> None:
    def layernorm(x, gamma, beta):
        mu = fnp.mean(x, axis=-1, keepdims=True)
        var = fnp.var(x, axis=-1, keepdims=True)
        return (x - mu) / fnp.sqrt(var + 1e-5) * gamma + beta

    assert fj.gradcheck(layernorm, (normal(3, 5), normal(5), normal(5)))


def test_softmax() -> None:
    assert fj.gradcheck(lambda z: softmax(z), (normal(3, 4),))
    assert fj.gradcheck(lambda z: log_softmax(z), (normal(2, 5),))


def test_attention() -> None:
    def attention(q, k, v):
        scores = q @ fnp.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
        return softmax(scores) @ v

    assert fj.gradcheck(attention, (normal(2, 4, 3), normal(2, 5, 3), normal(2, 5, 2)))


def test_unrolled_rnn() -> None:
    def rnn(params, xs):
        h = fnp.zeros((2, 3))
        for t in range(5):
            h = fnp.tanh(xs[t] @ params["wx"] + h @ params["wh"] + params["b"])
        return fnp.sum(h * h)

    params = {"wx": normal(4, 3) * 0.5, "wh": normal(3, 3) * 0.5, "b": normal(3) * 0.1}
    assert fj.gradcheck(rnn, (params, normal(5, 2, 4)))


# ---------------------------------------------------------------------------------------
# Second derivatives: grad(grad(f)) against closed forms, and gradcheck of grad(f), which
# checks grad(grad(f)) (reverse over reverse) and jvp(grad(f)) (forward over reverse).

SCALAR_SECOND = {
    "sin_cubed": (lambda x: fnp.sin(x) ** 3, lambda x: 6 * np.sin(x) * np.cos(x) ** 2 - 3 * np.sin(x) ** 3),
    "x_exp": (lambda x: x * fnp.exp(x), lambda x: (x + 2) * np.exp(x)),
    "tanh": (lambda x: fnp.tanh(x), lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2)),
    "log1p_sq": (lambda x: fnp.log(1.0 + x * x), lambda x: (2 - 2 * x * x) / (1 + x * x) ** 2),
    "rational": (lambda x: x**3 / (1.0 + x), lambda x: 2 * x * (x * x + 3 * x + 3) / (1 + x) ** 3),
    "sqrt": (lambda x: fnp.sqrt(x), lambda x: -0.25 * x**-1.5),
}


@pytest.mark.parametrize("name", sorted(SCALAR_SECOND))
def test_grad_of_grad_scalar(name: str) -> None:
    f, d2 = SCALAR_SECOND[name]
    for x in (0.3, 1.7):
        np.testing.assert_allclose(fj.grad(fj.grad(f))(x), d2(x), rtol=1e-10)
    assert fj.gradcheck(fj.grad(f), (0.7,))


def rosenbrock(x):
    return fnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def logsumexp(x):
    m = fnp.max(x)
    return m + fnp.log(fnp.sum(fnp.exp(x - m)))


VECTOR_SECOND = {
    "rosenbrock": rosenbrock,
    "logsumexp": logsumexp,
    "softmax_ce": lambda x: -log_softmax(x.reshape(2, 3))[0, 1] - log_softmax(x.reshape(2, 3))[1, 2],
    "norm_tanh": lambda x: fnp.sqrt(fnp.sum(fnp.tanh(x) ** 2) + 1.0),
    "quartic_pad": lambda x: fnp.sum(fnp.pad(x, (1, 1)) ** 4 * fnp.concatenate([x, x[:2]])),
}


@pytest.mark.parametrize("name", sorted(VECTOR_SECOND))
def test_hessian_vector_products(name: str) -> None:
    f = VECTOR_SECOND[name]
    x, v = RNG.uniform(-1, 1, 6), normal(6)
    g, hv = fj.jvp(fj.grad(f), (x,), (v,))
    np.testing.assert_allclose(g, fj.grad(f)(x), rtol=1e-12, atol=1e-12)
    eps = 1e-6
    fd = (fj.grad(f)(x + eps * v) - fj.grad(f)(x - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, fd, rtol=1e-5, atol=1e-5)
    # reverse over reverse: the Hessian row by row equals the forward-over-reverse products
    hessian = np.stack([fj.grad(lambda y, i=i: fj.grad(f)(y)[i])(x) for i in range(6)])
    np.testing.assert_allclose(hessian @ v, hv, rtol=1e-9, atol=1e-9)
    assert fj.gradcheck(fj.grad(f), (x,))


def test_second_derivative_of_mlp_loss() -> None:
    x, labels = normal(3, 4), np.array([0, 2, 1])
    w1 = mlp_params()["w1"]

    def loss_w1(w):
        return mlp_loss(dict(mlp_params_fixed, w1=w), x, labels)

    mlp_params_fixed = mlp_params()
    assert fj.gradcheck(fj.grad(loss_w1), (w1,))
