"""``fj.debug.print`` and ``fj.debug.callback``: run-time values from inside ``jit``,
``grad``, ``vmap`` and ``fj.lax.scan``, in program order, never dropped as dead code,
not differentiated, and fused around (the ``debug_callback`` primitive)."""

from __future__ import annotations

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import config
from fusejit.ir import primitives as P


@pytest.fixture(scope="module", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "fusejit-cache"
    with config.override(cache=True, cache_dir=str(root), backend="cpu"):
        yield


X = np.array([0.5, -1.0, 2.0], np.float32)


def chain(x, show=True):
    """Exact arithmetic (no approximated transcendental), so that prints compare exactly."""
    y = x * 2.0 + 0.5
    if show:
        fj.debug.print("y={}", y)
    z = y * y + 1.0
    if show:
        fj.debug.print("sum z={s:.4f} first={}", z[0], s=fnp.sum(z))
    return z * 3.0


def expected_chain_lines(x):
    y = x * np.float32(2.0) + np.float32(0.5)
    z = y * y + np.float32(1.0)
    return [f"y={y}", f"sum z={np.sum(z):.4f} first={z[0]}"]


def printed(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("fuse", [True, False])
def test_debug_print_inside_jit_prints_the_values_in_program_order_on_every_call(capsys, fuse):
    jitted = fj.jit(chain, static_argnums=1, fuse=fuse)
    out = jitted(X)
    np.testing.assert_allclose(out, chain(X, False), rtol=1e-6)
    want = expected_chain_lines(X)
    assert len(printed(capsys)) == 2  # the eager reference above printed nothing
    jitted(X)
    jitted(X + 1)
    lines = printed(capsys)
    assert lines[:2] == want and lines[2:] == expected_chain_lines(X + 1)


def test_debug_print_does_not_split_the_kernels_around_it():
    plain = fj.jit(chain, static_argnums=1).lower(X, False).compile()
    shown = fj.jit(chain, static_argnums=1).lower(X, True).compile()
    assert len(shown.kernels) == len(plain.kernels) == 1  # the printed values are extra outputs
    fused = shown.lowered.fused
    assert [g.kind for g in fused.groups].count("host") == 2


def test_eager_debug_print_prints_at_once(capsys):
    chain(X)
    assert printed(capsys) == expected_chain_lines(X)


def test_debug_print_under_grad_prints_forward_values_and_leaves_gradients_unchanged(capsys):
    def loss(x, show):
        return fnp.sum(chain(x, show) ** 2)

    want = fj.grad(loss)(X, False)
    got = fj.jit(fj.grad(loss), static_argnums=1)(X, True)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(got, fj.jit(fj.grad(loss), static_argnums=1)(X, False))
    assert printed(capsys) == expected_chain_lines(X)
    np.testing.assert_allclose(fj.grad(loss)(X, True), want, rtol=1e-6)  # eager grad: interpreted
    assert printed(capsys) == expected_chain_lines(X)
    assert fj.gradcheck(lambda x: loss(x, True), (X.astype(np.float64),))
    capsys.readouterr()


def test_callbacks_keep_program_order_across_a_grad_inlined_into_jit(capsys):
    def inner(x):
        fj.debug.print("b {}", fnp.sum(x))
        return fnp.sum(fnp.sin(x))

    @fj.jit
    def step(x):
        fj.debug.print("a {}", x[0])
        g = fj.grad(inner)(x)
        fj.debug.print("c {}", g[0])
        return g

    step(X)
    assert [line.split()[0] for line in printed(capsys)] == ["a", "b", "c"]
    ops = [op for op in step.lower(X).optimized.ops if op.prim is P.debug_callback]
    assert [op.attrs["token"] for op in ops] == [False, True, True]
    assert ops[1].inputs[0] is ops[0].output and ops[2].inputs[0] is ops[1].output


def test_debug_callback_gets_numpy_arrays_and_is_never_dead_code():
    seen = []

    @fj.jit
    def f(x):
        fj.debug.callback(lambda a, scale: seen.append((a, scale)), x * 2.0, scale=10)
        return x + 1.0

    text = f.lower(X).as_text("optimized")
    assert "debug_callback" in text and str(fj.ir.parse(text)) == text
    f(X)
    f(X)
    assert len(seen) == 2
    a, scale = seen[0]
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and scale == 10
    np.testing.assert_array_equal(a, X * 2)
    assert a is not seen[1][0]  # a copy: the runtime reuses its buffers


def test_debug_print_under_vmap_prints_once_per_example(capsys):
    def f(x):
        fj.debug.print("row sum {:.1f}", fnp.sum(x))
        return x * 2

    xs = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(fj.jit(fj.vmap(f))(xs), xs * 2)
    assert printed(capsys) == ["row sum 1.0", "row sum 5.0", "row sum 9.0"]


def test_debug_print_in_a_scan_body_prints_every_iteration(capsys):
    def body(carry, x, show=True):
        if show:
            fj.debug.print("carry {} x {}", carry, x)
        return carry + x, carry * x

    xs = np.arange(1, 4, dtype=np.float32)
    carry, ys = fj.jit(lambda xs: fj.lax.scan(body, np.float32(0), xs))(xs)
    assert carry == 6 and list(ys) == [0, 2, 9]
    lines = ["carry 0.0 x 1.0", "carry 1.0 x 2.0", "carry 3.0 x 3.0"]
    assert printed(capsys) == lines

    def loss(xs, show):
        carry, ys = fj.lax.scan(lambda c, x: body(c, x, show), np.float32(0), xs)
        return carry * fnp.sum(ys)

    grad = fj.jit(fj.grad(loss), static_argnums=1)
    np.testing.assert_array_equal(grad(xs, True), grad(xs, False))
    assert printed(capsys) == lines  # the forward scan prints; its backward scan does not


def test_debug_calls_check_their_arguments():
    with pytest.raises(TypeError, match="format must be a string"):
        fj.debug.print(3, X)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be callable"):
        fj.jit(lambda x: fj.debug.callback("f", x) or x)(X)  # type: ignore[arg-type]


def test_a_print_format_asking_for_a_missing_argument_fails_where_it_is_called():
    def f(x):
        fj.debug.print("{} {}", x)
        return x * 2

    with pytest.raises(ValueError, match=r"asks for an argument that is not given \(1 positional") as info:
        fj.jit(f)(np.ones(2))
    assert "test_debugging.py:" in str(info.value)
