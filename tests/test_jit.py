"""``fj.jit``: the signature cache, static arguments, pytrees, lowering and IR entry
points, and the switches that turn jit off.

Unless a test passes ``backend=``, it runs on whichever backend is the default.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
import warnings
from collections import namedtuple
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fusejit as fj
import fusejit.numpy as fnp
from fusejit import config
from fusejit.ir.transforms import pipeline
from fusejit.runtime import executable
from fusejit.tracer import jit as jit_module
from fusejit.tracer import numpy_api, tracing

ROOT = Path(__file__).resolve().parents[1]
Params = namedtuple("Params", ["w", "b"])


def f32(*shape: int) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 7


class Counted:
    """A function that counts how often Python runs it (each run is a trace)."""

    def __init__(self, fun: Any) -> None:
        functools.update_wrapper(self, fun)  # keeps the signature: jit reads parameter names
        self.fun, self.calls = fun, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fun(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# The cache


def test_same_signature_hits_the_cache_without_tracing() -> None:
    fun = Counted(lambda x, y: x * y + 1)
    f = fj.jit(fun)
    x = f32(4, 4)
    for scale in (1, 2, 3):
        np.testing.assert_allclose(f(x, x * scale), x * x * scale + 1)
    assert fun.calls == 1
    info = f.cache_info()
    assert (info.hits, info.misses, info.reasons) == (2, 1, ["first call"])


def test_cache_hit_does_no_tracing_and_no_ir_work(monkeypatch: pytest.MonkeyPatch) -> None:
    f = fj.jit(lambda x: fnp.tanh(x) * 2)
    x = f32(3)
    expected = f(x)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit traced, optimized or compiled")

    monkeypatch.setattr(jit_module, "trace_function", forbidden)
    # Lowered imports these when it first optimizes and compiles (not at ``import fusejit``).
    monkeypatch.setattr(pipeline, "optimize", forbidden)
    monkeypatch.setattr(executable, "compile_function", forbidden)
    monkeypatch.setattr(numpy_api, "bind", forbidden)  # what every fnp function records with
    monkeypatch.setattr(tracing, "trace_function", forbidden)
    np.testing.assert_array_equal(f(x), expected)
    np.testing.assert_array_equal(f(x + 1), np.tanh(x + 1) * 2)
    assert f.cache_info().hits == 2


def test_retrace_reasons_name_the_argument_and_what_changed() -> None:
    f = fj.jit(lambda x, y: x + y)
    f(f32(4, 4), f32(4))
    f(f32(5, 4), f32(4))
    f(f32(5, 4).astype(np.float64), f32(4))
    f(f32(5, 4).astype(np.float64), f32(1, 4).astype(np.int32))
    f(f32(5, 4).astype(np.float64), 1.0)
    f(f32(5, 4).astype(np.float64), 1)
    f(f32(5, 4).astype(np.float64), np.float32(1))
    f(f32(4, 4), f32(4))  # seen before: a hit
    info = f.cache_info()
    assert info.reasons == [
        "first call",
        "argument x: shape (5, 4) was (4, 4)",
        "argument x: dtype float64 was float32",
        "argument y: shape (1, 4) was (4,), dtype int32 was float32",
        "argument y: Python float was int32[1, 4]",
        "argument y: Python int was Python float",
        "argument y: float32[] was Python int",
    ]
    assert (info.hits, info.misses) == (1, 7)
    assert "miss 2: argument x: shape (5, 4) was (4, 4)" in str(info)


def test_retrace_reasons_for_pytree_structure_changes() -> None:
    f = fj.jit(lambda params, xs: params["w"] * sum(xs))
    f({"w": f32(2)}, [f32(2)])
    f({"w": f32(2)}, [f32(2), f32(2)])
    f({"w": f32(2), "b": f32(2)}, [f32(2)])
    f({"w": f32(2), "b": f32(2)}, (f32(2),))
    assert f.cache_info().reasons == [
        "first call",
        "new argument xs[1]",
        "new argument params['b']; argument xs[1] is no longer passed",
        "argument structure (({'b': *, 'w': *}, (*,)), {}) was (({'b': *, 'w': *}, [*]), {})",
    ]


def test_python_scalar_arguments_are_weak_and_their_values_do_not_retrace() -> None:
    fun = Counted(lambda x, s: x * s)
    f = fj.jit(fun)
    x = f32(3)
    out = f(x, 2.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(f(x, 3.5), x * 3.5)
    np.testing.assert_allclose(f(x, -1.0), -x)
    assert fun.calls == 1 and f.cache_info().hits == 2
    assert f(x, 2).dtype == np.float32  # an int scalar is a new signature, still weak
    assert f(x.astype(np.int32), 2).dtype == np.int32
    assert f(x.astype(np.int32), 2.5).dtype == np.float64
    assert f(x, True).dtype == np.float32


def test_numpy_scalar_arguments_are_strong() -> None:
    f = fj.jit(lambda x, s: x * s)
    assert f(f32(3), np.float64(2.0)).dtype == np.float64
    assert f(f32(3), np.float32(2.0)).dtype == np.float32
    assert f(f32(3).astype(np.int32), np.int64(2)).dtype == np.int64


def test_clear_cache_retraces() -> None:
    fun = Counted(lambda x: x + 1)
    f = fj.jit(fun)
    f(f32(2))
    f.clear_cache()
    f(f32(2))
    assert fun.calls == 2
    assert f.cache_info().reasons == ["first call", "first call"]


def test_failed_trace_is_not_cached_and_not_counted() -> None:
    f = fj.jit(lambda x, y: x + y)
    with pytest.raises(ValueError, match="add: operands could not be broadcast"):
        f(f32(3), f32(4))
    assert f.cache_info().misses == 0 and f.cache_info().reasons == []
    np.testing.assert_allclose(f(f32(3), f32(3)), 2 * f32(3))
    assert f.cache_info().reasons == ["first call"]


# ---------------------------------------------------------------------------------------
# Static arguments


def power_sum(x: Any, n: int, *, axis: int = 0) -> Any:
    out = x
    for _ in range(n - 1):  # Python control flow on a static argument unrolls
        out = out * x
    return out.sum(axis=axis)


def test_static_argnums_retrace_per_value() -> None:
    fun = Counted(power_sum)
    f = fj.jit(fun, static_argnums=1)
    x = f32(2, 3)
    np.testing.assert_allclose(f(x, 2), (x**2).sum(0), rtol=1e-6)
    np.testing.assert_allclose(f(x, 3), (x**3).sum(0), rtol=1e-6)
    np.testing.assert_allclose(f(x, 2), (x**2).sum(0), rtol=1e-6)
    assert fun.calls == 2
    assert f.cache_info().reasons == ["first call", "static argument n: 3 was 2"]
    assert f.cache_info().hits == 1


def test_static_positional_argument_passed_by_name_is_static() -> None:
    f = fj.jit(power_sum, static_argnums=1)
    x = f32(2, 3)
    np.testing.assert_allclose(f(x, n=3), (x**3).sum(0), rtol=1e-6)
    np.testing.assert_allclose(f(x, 3), (x**3).sum(0), rtol=1e-6)
    assert f.cache_info().reasons[-1] == "static argument n: passed by position, was passed by name"
    np.testing.assert_allclose(f(x=x, n=3), (x**3).sum(0), rtol=1e-6)


def test_static_argnames_and_keyword_only_static_arguments() -> None:
    fun = Counted(power_sum)
    f = fj.jit(fun, static_argnames=("n", "axis"))
    x = f32(2, 3)
    np.testing.assert_allclose(f(x, 2, axis=1), (x**2).sum(1), rtol=1e-6)
    np.testing.assert_allclose(f(x, n=2, axis=1), (x**2).sum(1), rtol=1e-6)
    np.testing.assert_allclose(f(x, n=2, axis=0), (x**2).sum(0), rtol=1e-6)
    assert f.cache_info().reasons[-1] == "static argument axis: 0 was 1"
    # by position or by name, n is the same static parameter
    assert f.static_argnums == frozenset({1}) and f.static_argnames == frozenset({"n", "axis"})


def test_negative_static_argnums_count_from_the_end() -> None:
    f = fj.jit(lambda x, n: x * n, static_argnums=-1)
    assert f.static_argnums == frozenset({1})
    assert f(f32(2), 3).dtype == np.float32


def test_static_values_that_compare_equal_but_differ_in_type_retrace() -> None:
    f = fj.jit(lambda x, s: x * s, static_argnums=1)
    i = np.arange(3, dtype=np.int32)
    assert f(i, 2).dtype == np.int32
    assert f(i, 2.0).dtype == np.float64  # 2 == 2.0, but a float promotes differently
    assert f.cache_info().reasons[-1] == "static argument s: 2.0 was 2"


def test_hashable_static_containers_are_fine() -> None:
    f = fj.jit(lambda x, shape: x.reshape(shape), static_argnums=1)
    assert f(f32(6), (2, 3)).shape == (2, 3)
    assert f(f32(6), (3, 2)).shape == (3, 2)


# ---------------------------------------------------------------------------------------
# Keyword arguments and pytrees


def test_keyword_arguments_are_dynamic_unless_static() -> None:
    f = fj.jit(lambda x, y=None, scale=1.0: x * scale if y is None else (x + y) * scale)
    x = f32(3)
    np.testing.assert_allclose(f(x), x)
    np.testing.assert_allclose(f(x, y=x), 2 * x)
    np.testing.assert_allclose(f(x, scale=3.0, y=x), 6 * x, rtol=1e-6)
    np.testing.assert_allclose(f(y=x, x=x, scale=3.0), 6 * x, rtol=1e-6)
    assert f.cache_info().reasons[1] == "new argument y"


def test_pytrees_of_every_kind_in_and_out() -> None:
    def model(params: dict, batch: tuple, extras: list, nothing: None, p: Params) -> Any:
        h = batch[0] @ params["layers"][0]["w"] + params["layers"][0]["b"]
        h = h * extras[0] + p.w @ p.b
        return {"out": h, "pair": (h.sum(), None), "p": Params(w=h.T, b=p.b), "list": [h[0]]}

    params = {"layers": [{"w": f32(3, 2), "b": f32(2)}]}
    batch = (f32(4, 3), f32(4))
    p = Params(w=f32(2, 2), b=f32(2))
    out = fj.jit(model)(params, batch, [2.0], None, p)
    h = (batch[0] @ params["layers"][0]["w"] + params["layers"][0]["b"]) * 2.0 + p.w @ p.b
    assert set(out) == {"out", "pair", "p", "list"}
    np.testing.assert_allclose(out["out"], h, rtol=1e-6)
    assert out["pair"][1] is None and isinstance(out["pair"], tuple)
    assert type(out["p"]) is Params and isinstance(out["list"], list)
    np.testing.assert_allclose(out["p"].w, h.T, rtol=1e-6)
    assert out["out"].dtype == np.float32


def test_namedtuple_arguments_keep_their_type_inside() -> None:
    seen = []

    def f(p: Params) -> Any:
        seen.append(type(p))
        return p.w * p.b

    fj.jit(f)(Params(w=f32(2), b=f32(2)))
    assert seen == [Params]


def test_none_leaves_are_structure_not_data() -> None:
    f = fj.jit(lambda x, maybe: x if maybe is None else x + maybe)
    np.testing.assert_allclose(f(f32(2), None), f32(2))
    np.testing.assert_allclose(f(f32(2), f32(2)), 2 * f32(2))
    assert f.cache_info().misses == 2


def test_outputs_are_numpy_arrays_even_for_scalars_and_passthrough() -> None:
    f = fj.jit(lambda x: (x, 1.5, x.sum()))
    x = f32(3)
    a, b, c = f(x)
    assert all(type(v) is np.ndarray for v in (a, b, c))
    assert b.dtype == np.float64 and b.shape == () and c.shape == ()
    a[0] = 100.0  # results are the caller's own arrays
    assert x[0] == 0.0


# ---------------------------------------------------------------------------------------
# Lowering and IR entry points


def loss(w: Any, x: Any) -> Any:
    h = fnp.tanh(x @ w)
    return fnp.mean(h * h)


def test_lower_as_text_shows_each_stage() -> None:
    w, x = f32(3, 2), f32(4, 3)
    lowered = fj.jit(loss).lower(w, x)
    traced = lowered.as_text("traced")
    assert traced.startswith("func @loss(%w: f32[3,2], %x: f32[4,3]) -> f32[] {")
    assert "dot_general %x, %w" in traced and "tanh" in traced and "reduce_sum" in traced
    assert f"# test_jit.py:{loss.__code__.co_firstlineno + 1}" in traced
    assert lowered.as_text() == lowered.as_text("optimized")
    assert "func @loss" in lowered.as_text("optimized")
    assert "func @loss" in lowered.as_text("fused")
    with pytest.raises(ValueError, match="unknown stage 'jaxpr'"):
        lowered.as_text("jaxpr")


def test_every_stage_parses_back_even_with_ops_recomputed_in_several_kernels() -> None:
    """A broadcast constant feeding several kernels is recomputed in each: the fused text
    defines it once and shows the repeats as comments."""
    from fusejit.ir.interpreter import run_function

    def loss(w1, w2, x):
        h = fnp.maximum(x @ w1, 0.0)
        z = h @ w2
        return (z - fnp.log(fnp.exp(z).sum(axis=1, keepdims=True))).mean()

    def step(w1, w2, x):  # the constants of relu's gradient feed several kernels
        g1, g2 = fj.grad(loss, argnums=(0, 1))(w1, w2, x)
        return w1 - 0.1 * g1, w2 - 0.1 * g2

    args = (f32(3, 4), f32(4, 2), f32(5, 3))
    lowered = fj.jit(step).lower(*args)
    fused = lowered.as_text("fused")
    assert "// recomputed:" in fused
    for stage in ("traced", "optimized", "fused"):
        parsed = fj.ir.parse(lowered.as_text(stage))
        for got, want in zip(run_function(parsed, *args), run_function(lowered.optimized, *args), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_the_fused_stage_and_fusion_report_compile_nothing() -> None:
    from fusejit.runtime.cache import COUNTERS

    before = COUNTERS.numba_compiles + COUNTERS.numba_cache_loads
    lowered = fj.jit(lambda x: fnp.exp(x) @ x.T + 1.0).lower(f32(5, 4))
    assert "// kernel 1: matmul" in lowered.as_text("fused")
    assert "unfused edges" in lowered.fusion_report()
    assert lowered._executable is None
    assert COUNTERS.numba_compiles + COUNTERS.numba_cache_loads == before


def test_lower_shares_the_cache_and_compile_runs() -> None:
    fun = Counted(loss)
    f = fj.jit(fun)
    w, x = f32(3, 2), f32(4, 3)
    compiled = f.lower(w, x).compile()
    expected = np.mean(np.tanh(x @ w) ** 2)
    np.testing.assert_allclose(compiled(w, x), expected, rtol=1e-6)
    np.testing.assert_allclose(f(w, x), expected, rtol=1e-6)
    assert fun.calls == 1


def test_make_ir_returns_the_traced_function() -> None:
    fn = fj.make_ir(loss)(f32(3, 2), f32(4, 3))
    assert isinstance(fn, fj.ir.Function)
    assert fj.ir.verify(fn) is fn
    assert [p.type for p in fn.params] == [fj.ir.TensorType(fj.ir.DType.f32, (3, 2)), fj.ir.TensorType(fj.ir.DType.f32, (4, 3))]
    assert str(fn).startswith("func @loss(%w: f32[3,2], %x: f32[4,3]) -> f32[] {")


def test_make_ir_with_static_arguments_and_pytree_parameter_names() -> None:
    fn = fj.make_ir(power_sum, static_argnums=1)(f32(2, 3), 3)
    assert sum(op.prim.name == "mul" for op in fn.ops) == 2
    fn = fj.make_ir(lambda params: params["w"][0] + params["b"])({"w": [f32(2)], "b": f32(2)})
    assert [p.name for p in fn.params] == ["params_b", "params_w_0"]


def test_printed_ir_parses_and_compiles() -> None:
    w, x = f32(3, 2), f32(4, 3)
    text = str(fj.make_ir(loss)(w, x))
    parsed = fj.ir.parse(text)
    assert str(parsed) == text
    fj.ir.verify(parsed)
    run = fj.compile_ir(parsed)
    (out,) = run(w, x)
    np.testing.assert_allclose(out, np.mean(np.tanh(x @ w) ** 2), rtol=1e-6)


def test_compile_ir_of_handwritten_text() -> None:
    text = textwrap.dedent("""\
        func @axpy(%a: f32[], %x: f32[3], %y: f32[3]) -> f32[3] {
          %0: f32[3] = broadcast_in_dim %a  shape=(3) dims=()
          %1: f32[3] = mul %0, %x
          %2: f32[3] = add %1, %y
          return %2
        }
        """)
    (out,) = fj.compile_ir(fj.ir.parse(text), backend="interpret")(2.0, f32(3), np.ones(3))
    np.testing.assert_allclose(out, 2 * f32(3) + 1)
    assert out.dtype == np.float32


# ---------------------------------------------------------------------------------------
# Nesting and turning jit off


def test_jit_inside_jit_is_inlined() -> None:
    inner_fun = Counted(lambda x: fnp.exp(x) + 1)
    inner = fj.jit(inner_fun)

    @fj.jit
    def outer(x: Any) -> Any:
        return inner(x) * inner(2 * x)

    x = f32(3)
    np.testing.assert_allclose(outer(x), (np.exp(x) + 1) * (np.exp(2 * x) + 1), rtol=1e-6)
    assert inner.cache_info().misses == 0, "the inner function is not compiled on its own"
    assert inner_fun.calls == 2  # traced once per call site, as part of outer
    ir = outer.lower(x).as_text("traced")
    assert ir.count("exp") == 2


def test_config_update_disable_jit_runs_eagerly(capsys: pytest.CaptureFixture) -> None:
    @fj.jit
    def f(x: Any) -> Any:
        print("inside:", type(x).__name__, x.tolist())
        return x * 2

    try:
        fj.config.update("disable_jit", True)
        np.testing.assert_allclose(f(f32(3)), 2 * f32(3))
    finally:
        fj.config.update("disable_jit", False)
    assert capsys.readouterr().out == f"inside: ndarray {f32(3).tolist()}\n"
    assert f.cache_info().misses == 0
    with pytest.raises(fj.ConcretizationError, match=r"\.tolist\(\) needs a concrete value"):
        f(f32(3))  # jit is back on: the data is not known while tracing
    assert f.cache_info().misses == 0


def test_config_override_is_scoped() -> None:
    f = fj.jit(lambda x: type(x).__name__)
    with fj.config.override(disable_jit=True):
        assert f(f32(1)) == "ndarray"
    assert fj.config.value("disable_jit") is False


def test_environment_variable_disables_jit() -> None:
    script = textwrap.dedent("""\
        import numpy as np
        import fusejit as fj

        @fj.jit
        def f(x):
            print("inside", type(x).__name__, float(x.sum()))
            return x + 1

        print("result", f(np.ones(3)).tolist(), "misses", f.cache_info().misses)
        """)
    env = dict(os.environ, FUSEJIT_DISABLE_JIT="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["inside ndarray 3.0", "result [2.0, 2.0, 2.0] misses 0"]


def test_jitted_function_keeps_the_wrapped_name_and_doc() -> None:
    f = fj.jit(power_sum)
    assert f.__name__ == "power_sum" and f.__wrapped__ is power_sum
    assert repr(f) == "<jitted power_sum>"


def test_jit_decorator_with_options() -> None:
    @fj.jit(static_argnames="n", backend="interpret")
    def f(x: Any, n: int) -> Any:
        return x * n

    assert f.backend == "interpret"
    np.testing.assert_allclose(f(f32(2), n=3), 3 * f32(2))


def test_compile_log_has_one_line_per_compilation_with_reason_and_times(caplog) -> None:
    f = fj.jit(lambda x, w: fnp.tanh(x @ w).sum())
    w = f32(4, 3)
    with config.override(log_compiles=True), caplog.at_level("INFO", logger="fusejit.compile"):
        f(f32(5, 4), w)
        f(f32(5, 4), w)  # a hit: no line
        f(f32(6, 4), w)
    lines = [r.getMessage() for r in caplog.records if r.name == "fusejit.compile"]
    assert len(lines) == 2
    assert lines[0].startswith("fusejit: compiled lambda(x: f32[5,4], w: f32[4,3]) [first call] in ")
    assert "[argument x: shape (6, 4) was (5, 4)]" in lines[1] and "kernels" in lines[1]


def test_a_function_traced_more_than_the_retrace_limit_warns_once() -> None:
    from fusejit.tracer.jit import RetraceWarning

    f = fj.jit(lambda x: x * 2.0)
    with config.override(retrace_limit=2), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 6):
            f(f32(n))
    retraces = [w for w in caught if issubclass(w.category, RetraceWarning)]
    assert len(retraces) == 1 and "traced 3 times" in str(retraces[0].message)
    assert "argument x: shape (3,) was (2,)" in str(retraces[0].message)


def test_repr_of_a_traced_value_names_its_type_op_and_line() -> None:
    seen = []

    def f(x):
        y = fnp.tanh(x)
        seen.append((repr(x), repr(y)))
        return y

    fj.jit(f)(f32(3))
    x_repr, y_repr = seen[0]
    assert x_repr == "TracedArray(f32[3] parameter x in 'f')"
    assert y_repr.startswith("TracedArray(f32[3] tanh at test_jit.py:") and y_repr.endswith(" in 'f')")


def test_compiled_kernels_print_one_line_each_and_keep_the_source_on_demand() -> None:
    compiled = fj.jit(lambda x, w: fnp.tanh(x @ w + 1.0).sum(axis=1)).lower(f32(4, 3), f32(3, 5)).compile()
    text = repr(compiled.kernels)
    assert text.count("<kernel ") == len(compiled.kernels) == 2 and "\n" not in text and "def " not in text
    assert "<kernel matmul_f32_4x3x5: dot_general; reads 108 B, writes 80 B>" in text
    assert all("@kernel_jit" in k.source for k in compiled.kernels)
