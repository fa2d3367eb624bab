"""Finding one's way in a traced program: ``fj.named_scope`` paths and the backward /
forward-mode markers in the IR text (parsed back), kernel headers, the fusion report and
the profile; ``FUSEJIT_DEBUG_NANS`` naming the first op that made a NaN or an infinity
(forward or backward, its line and scope; jitted, interpreted and eager); and
``Lowered.compile()`` compiling before the first call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fusejit as fj
import fusejit.nn as nn
import fusejit.numpy as fnp
from fusejit import config
from fusejit.ir.nans import NonFiniteError
from fusejit.runtime.cache import COUNTERS

SOURCE = Path(__file__).read_text(encoding="utf-8").splitlines()


def line_of(marker: str) -> int:
    """The line of this file holding ``marker`` (once)."""
    (line,) = [k + 1 for k, text in enumerate(SOURCE) if marker in text and "line_of(" not in text]
    return line


@pytest.fixture(scope="module", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.getbasetemp() / "fusejit-cache"
    with config.override(cache=True, cache_dir=str(root), backend="cpu"):
        yield


def scoped_loss(w, x):
    with fj.named_scope("block1"):
        with fj.named_scope("dense"):
            h = fnp.tanh(x @ w)  # line: dense
        y = fnp.log(h * h + 1.0)  # line: block1
    return fnp.sum(y)


@fj.named_scope("head")
def decorated(x):
    return fnp.sum(fnp.exp(x))  # line: decorated


W = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
X = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 4)


# ---------------------------------------------------------------------------------------
# Scopes in the IR text


def test_ops_traced_in_nested_scopes_carry_the_path_and_the_text_parses_back():
    fn = fj.make_ir(scoped_loss)(W, X)
    scopes = {op.loc.line: op.loc.scope for op in fn.ops}
    assert scopes[line_of("# line: dense")] == "block1/dense"
    assert scopes[line_of("# line: block1")] == "block1"
    assert "" in scopes.values()  # the sum, outside every scope
    text = str(fn)
    assert f"# test_scopes.py:{line_of('# line: dense')} block1/dense\n" in text
    parsed = fj.ir.parse(text)
    assert str(parsed) == text
    assert [op.loc.scope for op in parsed.ops] == [op.loc.scope for op in fn.ops]


def test_named_scope_as_a_decorator_scopes_every_call():
    fn = fj.make_ir(lambda x: decorated(x) + decorated(2 * x))(X)
    assert {op.loc.scope for op in fn.ops if op.loc.line == line_of("# line: decorated")} == {"head"}
    assert decorated.__name__ == "decorated"


@pytest.mark.parametrize("name", ["", "a b", "x:y", "a#b", "a//b", "/a", "tab\tname", "line\nbreak"])
def test_named_scope_refuses_names_that_would_not_read_back(name):
    with pytest.raises(ValueError, match="named_scope: invalid name"):
        fj.named_scope(name)


def test_named_scope_refuses_a_name_that_is_not_a_string():
    with pytest.raises(TypeError, match="must be a string"):
        fj.named_scope(3)  # type: ignore[arg-type]


def test_nn_layers_open_their_own_scope_and_take_a_name():
    def model(w, x, labels):
        with fj.named_scope("mlp"):
            h = nn.relu(nn.linear(x, w, name="fc1"))
        return nn.cross_entropy(h, labels)

    fn = fj.make_ir(model)(W.T.copy(), X, np.array([0, 2]))
    scopes = {op.loc.scope for op in fn.ops}
    assert {"mlp/fc1", "mlp/relu", "cross_entropy", "cross_entropy/log_softmax"} <= scopes
    with pytest.raises(ValueError, match="invalid name"):
        fj.make_ir(lambda x, w: nn.linear(x, w, name="fc 1"))(X, W.T.copy())


# ---------------------------------------------------------------------------------------
# Backward and forward-mode markers


def test_reverse_sweep_ops_say_bwd_of_their_forward_line_and_scope():
    fn = fj.make_ir(fj.grad(scoped_loss))(W, X)
    forward = [op for op in fn.ops if not op.loc.derived]
    backward = [op for op in fn.ops if op.loc.derived]
    assert forward and backward and all(op.loc.derived == ("bwd",) for op in backward)
    assert fn.ops.index(forward[-1]) < fn.ops.index(backward[0])  # forward sweep first
    dense = line_of("# line: dense")
    assert any(op.loc.line == dense and op.loc.scope == "block1/dense" for op in backward)
    text = str(fn)
    assert f"# bwd of test_scopes.py:{dense} block1/dense\n" in text
    parsed = fj.ir.parse(text)
    assert str(parsed) == text and [op.loc for op in parsed.ops] == [
        type(op.loc)("test_scopes.py", op.loc.line, op.loc.scope, op.loc.derived) for op in fn.ops
    ]


def test_forward_mode_ops_say_jvp_of_and_second_order_ops_say_both():
    jvp = fj.make_ir(lambda w, x: fj.jvp(scoped_loss, (w, x), (w, x)))(W, X)
    assert {op.loc.derived for op in jvp.ops} == {(), ("jvp",)}
    assert "# jvp of test_scopes.py:" in str(jvp)
    second = fj.make_ir(fj.grad(lambda x: fj.grad(decorated)(x).sum()))(X)
    assert ("bwd", "bwd") in {op.loc.derived for op in second.ops}
    assert f"# bwd of bwd of test_scopes.py:{line_of('# line: decorated')} head" in str(second)
    assert str(fj.ir.parse(str(second))) == str(second)


# ---------------------------------------------------------------------------------------
# Kernel headers, the fusion report, the profile


def test_kernel_headers_the_fusion_report_and_the_profile_name_the_scopes():
    lowered = fj.jit(fj.grad(scoped_loss)).lower(W, X)
    dense = line_of("# line: dense")
    report = lowered.fusion_report()
    assert "(matmul; block1/dense" in report and f"# bwd of test_scopes.py:{dense} block1/dense" in report
    fused = lowered.as_text("fused")
    assert "// kernel 0: matmul [block1/dense" in fused and "bwd]" in fused
    fj.ir.parse(fused)
    compiled = lowered.compile()
    scopes = [k.scope for k in compiled.kernels]
    assert any("block1/dense bwd" in s for s in scopes), scopes
    first = compiled.kernels[0]
    assert f"[{first.scope}]" in repr(first) and f"[{first.scope}]" in first.source.splitlines()[0]
    assert f"bwd of test_scopes.py:{dense} block1/dense" in compiled.kernel_source()
    prof = compiled.profile(W, X, repeat=1)
    assert [k.scope for k in prof.kernels] == scopes
    assert "scope" in prof.table() and "block1/dense" in prof.table()
    assert prof.to_dict()["kernels"][0]["scope"] == scopes[0]


# ---------------------------------------------------------------------------------------
# FUSEJIT_DEBUG_NANS


def planted_log(x):
    with fj.named_scope("block1"):
        y = x * 2.0
        z = fnp.log(-y)  # planted: log of a negative
    return fnp.sum(z + 1.0)


def planted_sqrt(x):
    with fj.named_scope("head"):
        r = fnp.sqrt(x)  # planted: its derivative divides by zero at 0
    return fnp.sum(r * 3.0)


@pytest.mark.parametrize("how", ["jit", "interpret", "eager"])
def test_debug_nans_names_a_forward_log_of_a_negative(how):
    run = {
        "jit": fj.jit(planted_log),
        "interpret": fj.jit(planted_log, backend="interpret"),
        "eager": planted_log,
    }[how]
    x = np.array([1.0, 2.0], np.float32)
    with config.override(debug_nans=True), pytest.raises(NonFiniteError) as info:
        run(x)
    e = info.value
    assert e.primitive == "log" and e.kind == "nan" and e.loc.scope == "block1" and not e.loc.derived
    assert e.loc.line == line_of("# planted: log of a negative")
    assert "from finite inputs (forward pass, scope block1" in str(e) and "test_scopes.py" in str(e)
    assert run(x).shape == ()  # off again: NaN is a value


@pytest.mark.parametrize("how", ["jit", "interpret", "eager"])
def test_debug_nans_names_a_backward_division_by_zero(how):
    grad = fj.grad(planted_sqrt)
    run = {"jit": fj.jit(grad), "interpret": fj.jit(grad, backend="interpret"), "eager": grad}[how]
    with config.override(debug_nans=True), pytest.raises(NonFiniteError) as info:
        run(np.array([0.0, 1.0], np.float32))
    e = info.value
    assert e.primitive == "div" and e.kind == "inf" and e.loc.derived == ("bwd",) and e.loc.scope == "head"
    assert e.loc.line == line_of("# planted: its derivative divides by zero")
    assert "div at bwd of " in str(e) and "(backward pass, scope head" in str(e)
    with config.override(debug_nans=True):
        np.testing.assert_allclose(run(np.array([4.0, 1.0], np.float32)), [0.75, 1.5], rtol=1e-6)


def test_debug_nans_blames_the_producer_not_the_op_that_received_the_inf():
    def f(x):
        big = fnp.exp(x * 100.0)  # planted: overflows
        return big / (big + 1.0)

    with config.override(debug_nans=True), pytest.raises(NonFiniteError) as info:
        fj.jit(f)(np.array([0.0, 10.0], np.float32))
    assert info.value.primitive == "exp" and info.value.loc.line == line_of("# planted: overflows")


# ---------------------------------------------------------------------------------------
# Lowered.compile() compiles


def test_lower_compile_compiles_before_the_first_call():
    def f(x):
        return fnp.tanh(x) * 3.0 + 0.25  # a kernel no other test compiles

    before = COUNTERS.numba_compiles + COUNTERS.numba_cache_loads
    compiled = fj.jit(f).lower(np.ones((3, 5), np.float32)).compile()
    assert compiled.compile_times.kernels and COUNTERS.numba_compiles + COUNTERS.numba_cache_loads > before
    after = COUNTERS.numba_compiles + COUNTERS.numba_cache_loads
    np.testing.assert_allclose(compiled(np.ones((3, 5), np.float32)), np.tanh(1.0) * 3 + 0.25, rtol=1e-6)
    assert COUNTERS.numba_compiles + COUNTERS.numba_cache_loads == after


def test_debug_nans_names_a_host_op_that_made_the_nan_under_jit():
    """A LAPACK step runs on the host between kernels: its outputs are checked too."""

    def f(a):
        with fj.named_scope("gp"):
            return fnp.linalg.cholesky(a)

    with config.override(debug_nans=True), pytest.raises(NonFiniteError) as info:
        fj.jit(f)(np.array([[1.0, 2.0], [2.0, 1.0]]))  # indefinite: no Cholesky factor
    e = info.value
    assert e.primitive == "cholesky" and e.kind == "nan" and e.loc.scope == "gp"
    assert "from finite inputs (forward pass, scope gp; host op host_cholesky" in str(e)
