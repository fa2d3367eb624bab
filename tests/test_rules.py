"""Every primitive has a rule in every table that needs one: each layer's own table and
the test tables that generate or check ops. Adding a primitive without its rules fails
here, naming the primitive and the table."""

from __future__ import annotations

import pytest
import strategies
from test_codegen import BINARY, UNARY
from test_primitives import CASES, TESTED_ELSEWHERE

from fusejit.codegen.lowering import CODEGEN_RULES
from fusejit.ir import primitives as P
from fusejit.ir.transforms.autodiff import JVP_RULES, VJP_RULES
from fusejit.ir.transforms.batching import BATCH_RULES
from fusejit.runtime.host_ops import HOST_RULES

ELEMENTWISE = {p for p in P.PRIMITIVES.values() if p.kind is P.OpKind.ELEMENTWISE}

TABLES = {
    # table: (the primitives it has a rule for, the primitives it must cover)
    "autodiff VJP_RULES": (set(VJP_RULES), set(P.PRIMITIVES.values())),
    "autodiff JVP_RULES": (set(JVP_RULES), set(P.PRIMITIVES.values())),
    "batching BATCH_RULES": (set(BATCH_RULES), set(P.PRIMITIVES.values())),
    "codegen CODEGEN_RULES": (set(CODEGEN_RULES), set(P.PRIMITIVES.values())),
    "codegen kernel strategies (CodegenRule.kernel)": (
        {p for p, rule in CODEGEN_RULES.items() if rule.kernel is not None},
        {p for p in P.PRIMITIVES.values() if p.kind is P.OpKind.KERNEL},
    ),
    "tests/test_primitives.py CASES": (
        {P.PRIMITIVES[n] for n in CASES if n in P.PRIMITIVES} | {P.PRIMITIVES[n] for n in TESTED_ELSEWHERE},
        set(P.PRIMITIVES.values()),
    ),
    "tests/strategies.py EMITTERS": (set(strategies.EMITTERS), set(P.PRIMITIVES.values())),
    "runtime HOST_RULES (host ops)": (set(HOST_RULES), {p for p in P.PRIMITIVES.values() if p.kind is P.OpKind.HOST}),
    "tests/test_codegen.py UNARY/BINARY": (
        {P.PRIMITIVES[n] for table in (UNARY, BINARY) for names in table.values() for n in names},
        # select and convert have their own tests there, threefry2x32 in tests/test_random.py
        ELEMENTWISE - {P.select, P.convert, P.threefry2x32},
    ),
}


@pytest.mark.parametrize("table", TABLES)
def test_every_primitive_has_a_rule_in_every_table(table):
    has, needs = TABLES[table]
    missing = sorted(p.name for p in needs - has)
    assert not missing, f"{table} has no rule for: {', '.join(missing)}"


def test_tables_name_only_declared_primitives():
    declared = set(P.PRIMITIVES.values())
    for table, (has, _) in TABLES.items():
        assert has <= declared, f"{table} has rules for undeclared primitives"
    assert set(CASES) <= set(P.PRIMITIVES), "tests/test_primitives.py has cases for undeclared primitives"


def test_primitives_are_immutable_and_keyed_by_identity():
    with pytest.raises(AttributeError):
        P.add.name = "plus"  # type: ignore[misc]
    with pytest.raises(TypeError):
        P.reduce_sum.attrs["axes"] = None  # type: ignore[index]
    assert len({P.max, P.min}) == 2 and P.PRIMITIVES["max"] is P.max


def test_op_attributes_are_read_only():
    from fusejit.ir import Builder, TensorType, Value

    b = Builder()
    x = Value(TensorType(P.DType.f32, (2, 3)), "x")
    y = b.op(P.reduce_sum, x, axes=(1,))
    (op,) = b.ops
    assert op.output is y
    with pytest.raises(TypeError):
        op.attrs["axes"] = (0,)  # type: ignore[index]
