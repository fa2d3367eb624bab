"""The differential fuzzer (``fusejit.testing.fuzz``): its parts, and a bounded run.

The bounded run checks a fixed set of programs (fixed seeds) in every configuration; it
must find no failure that is not a known, classified bug. ``make fuzz`` runs many more.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusejit.testing import fuzz
from fusejit.testing.fuzz import (
    InputSpec,
    Invalid,
    Mismatch,
    Program,
    Result,
    Step,
    Tolerance,
    check,
    compare,
    evaluate,
    generate,
)

BOUNDED_SEED = 20_000
BOUNDED_COUNT = 50  # programs per chunk; the chunks run on separate test workers
BOUNDED_CHUNKS = 5


def test_the_same_seed_gives_the_same_program():
    for seed in range(20):
        assert generate(seed).source() == generate(seed).source()
        assert generate(seed).inputs == generate(seed).inputs


def test_generated_programs_are_valid_numpy_and_use_every_family():
    families = set()
    for seed in range(300):
        program = generate(seed)
        ev = evaluate(program)  # raises Invalid for an ill-defined program
        assert all(o in ev.env for o in program.outputs)
        families |= {s.family.split(":")[0] for s in program.steps}
    expected = {"binary", "unary", "compare", "reduce", "layout", "slice", "gather", "concatenate", "stack",
                "matmul", "einsum", "where", "cast", "constant"}  # fmt: skip
    assert expected <= families


def test_inputs_have_the_layout_they_name_and_the_same_values():
    cases = {
        "F": lambda a: a.flags.f_contiguous and not a.flags.c_contiguous,
        "strided": lambda a: not a.flags.c_contiguous,
        "reversed": lambda a: any(s < 0 for s in a.strides),
        "transposed": lambda a: not a.flags.c_contiguous,
        "readonly": lambda a: not a.flags.writeable,
        "broadcast": lambda a: 0 in a.strides and not a.flags.writeable,
    }
    for layout, holds in cases.items():
        spec = InputSpec((3, 4), "float32", layout, seed=5)
        a = spec.make()
        assert holds(a), layout
        np.testing.assert_array_equal(a, spec.values())


def test_a_discontinuous_op_on_an_inexact_float_is_invalid():
    spec = InputSpec((4,), "float32", seed=1)
    ok = Program((spec,), (Step("v0", "fnp.floor(x0)", "unary:floor", True, True),), ("v0",))
    evaluate(ok)
    bad = Program((spec,), (Step("v0", "fnp.exp(x0)", "unary:exp"),
                            Step("v1", "fnp.floor(v0)", "unary:floor", True, True)), ("v1",))  # fmt: skip
    with pytest.raises(Invalid):
        evaluate(bad)


def test_integer_division_by_zero_is_invalid():
    spec = InputSpec((3,), "int32", seed=1)
    with pytest.raises(Invalid):
        evaluate(Program((spec,), (Step("v0", "x0 // 0", "binary://", needs_exact=True),), ("v0",)))


def test_compare_exact_integers_and_nan_inf_positions():
    tol = Tolerance(1e-6, 1e-6, None)
    ints = np.array([1, 2, 3], np.int32)
    assert compare(ints, ints.copy(), True, tol, None) is None
    assert compare(ints, np.array([1, 2, 4], np.int32), True, tol, None)[0] == "value"
    assert compare(ints, ints.astype(np.int64), True, tol, None)[0] == "dtype"
    assert compare(ints, ints[:2], True, tol, None)[0] == "shape"
    f = np.array([1.0, np.nan, np.inf, 2.0], np.float32)
    assert compare(f, f.copy(), False, tol, None) is None
    assert compare(f, np.array([1.0, 0.0, np.inf, 2.0], np.float32), False, tol, None)[0] == "nan"
    assert compare(f, np.array([1.0, np.nan, -np.inf, 2.0], np.float32), False, tol, None)[0] == "inf"
    assert compare(f, np.array([1.0, np.nan, np.inf, np.inf], np.float32), False, tol, None)[0] == "finite"
    assert compare(f, np.array([1.0, np.nan, np.inf, 2.5], np.float32), False, tol, None)[0] == "value"
    assert compare(f, np.array([1.0, np.nan, np.inf, 2.0000002], np.float32), False, tol, None) is None


def test_the_shadow_run_widens_the_tolerance_where_numpy_itself_is_inexact():
    # 1 + 1e-8 - 1 in float32 is 0, the true value is 1e-8: a difference of 1e-8 is fine.
    ref, shadow = np.array([0.0], np.float32), np.array([1e-8], np.longdouble)
    got = np.array([1e-8], np.float32)
    assert compare(ref, got, False, Tolerance(1e-7, 0.0, None), shadow) is None
    assert compare(ref, got, False, Tolerance(1e-7, 0.0, None), None)[0] == "value"


def test_a_program_renders_as_python_and_runs_as_numpy():
    program = generate(3)
    src = program.source()
    assert src.startswith("def program(")
    fn = program.function(np)
    out = fn(*program.make_inputs())
    ev = evaluate(program)
    for o, name in zip(out, program.outputs, strict=True):
        np.testing.assert_array_equal(np.asarray(o), ev.env[name])
    script = program.reproducer()
    compile(script, "<reproducer>", "exec")  # the reproducer is valid Python
    assert "import fusejit.numpy as fnp" in script


def test_the_shrinker_removes_dead_and_bypassed_steps():
    spec = InputSpec((2, 3), "float64", seed=0)
    steps = (
        Step("v0", "fnp.exp(x0)", "unary:exp"),
        Step("v1", "fnp.tanh(x0)", "unary:tanh"),
        Step("v2", "fnp.sum(v0, axis=0)", "reduce:sum"),
    )
    program = Program((spec,), steps, ("v2",))
    assert [s.out for s in fuzz._live_steps(program)] == ["v0", "v2"]
    bypassed = fuzz._bypass(program, 0, "x0")
    assert bypassed.steps[-1].expr == "fnp.sum(x0, axis=0)"
    two = Program((spec, spec), (Step("v0", "x1 * 2.0", "binary:*"),), ("v0",))
    dropped = fuzz._drop_input(two, 0)
    assert len(dropped.inputs) == 1 and dropped.steps[0].expr == "x0 * 2.0"


def test_shrink_keeps_the_failure(monkeypatch):
    # A fake backend that is wrong whenever the program has a `tanh`: shrinking must end
    # at a program with just that step.
    real = fuzz.run_config

    def fake(program, config):
        out = real(program, "eager")
        if config == "fused" and any("tanh" in s.expr for s in program.steps) and out.outputs:
            out.outputs = tuple(o + 1 if o.dtype.kind == "f" else o for o in out.outputs)
        return out

    monkeypatch.setattr(fuzz.checking, "run_config", fake)  # where check() looks it up
    spec = InputSpec((3, 2), "float64", "F", seed=0)
    steps = (
        Step("v0", "fnp.exp(x0)", "unary:exp"),
        Step("v1", "fnp.tanh(v0)", "unary:tanh"),
        Step("v2", "v1 * 2.0", "binary:*"),
        Step("v3", "fnp.sum(v2, axis=1)", "reduce:sum"),
    )
    result = check(Program((spec,), steps, ("v3", "v0")), ("fused",), pairs=False)
    assert result.status == "mismatch"
    small = fuzz.shrink(result, budget=40)
    assert len(small.program.steps) == 1 and "tanh" in small.program.steps[0].expr
    assert small.program.inputs[0].layout == "C"
    assert all(n <= 2 for n in small.program.inputs[0].shape)


def test_known_bugs_are_classified_by_their_shape():
    spec = InputSpec((3, 1), "float32", seed=0)
    program = Program((spec,), (Step("v0", "fnp.sum(x0, axis=0)", "reduce:sum"),), ("v0",))
    result = Result(program, "mismatch", [Mismatch("fused", "value", "output 0")])
    assert fuzz.classify(result) == "unit-last-axis reduction (jit)"
    other = Result(program, "mismatch", [Mismatch("eager", "value", "output 0")])
    assert fuzz.classify(other) is None


def test_the_gradient_check_runs_on_a_smooth_program():
    spec = InputSpec((2, 3), "float64", seed=4)
    steps = (Step("v0", "fnp.tanh(x0) * x0", "binary:*"), Step("v1", "fnp.sum(v0, axis=1)", "reduce:sum"))
    assert fuzz.check_grad(Program((spec,), steps, ("v1",), grad=True)) == []


@pytest.mark.parametrize("chunk", range(BOUNDED_CHUNKS))
def test_bounded_run_finds_no_new_failure(chunk):
    """A fixed set of programs through every configuration (deterministic by seed)."""
    seed = BOUNDED_SEED + chunk * BOUNDED_COUNT
    summary = fuzz.campaign(BOUNDED_COUNT, seed, max_ops=6, shrink_budget=0, log=None)
    print(summary.text())
    assert summary.programs == BOUNDED_COUNT
    assert summary.status["fuzzer-error"] == 0
    new = {k: seeds for k, seeds in summary.kinds.items() if not k.startswith("known:")}
    details = "\n\n".join(summary.reports[k] for k in new)
    assert not new, f"new failure kinds {new}:\n{details}"


def test_a_parallel_campaign_merges_its_workers_summaries(monkeypatch, tmp_path):
    """``make fuzz`` runs chunks in worker processes: the merged summary counts every
    program once, by configuration, as one process would."""
    monkeypatch.setattr(fuzz.driver, "CHUNK", 2)
    monkeypatch.setenv("FUSEJIT_CACHE_DIR", str(tmp_path))
    logged = []
    merged = fuzz.parallel_campaign(4, BOUNDED_SEED, 2, ["--max-ops=3", "--shrink-budget=0"], log=logged.append)
    single = fuzz.campaign(4, BOUNDED_SEED, max_ops=3, shrink_budget=0, log=None)
    assert merged.programs == 4 and merged.status == single.status
    assert merged.per_config == single.per_config and merged.families == single.families
    assert [line.split("]")[0] for line in logged if line.startswith("[")] == ["[2/4", "[4/4"]
