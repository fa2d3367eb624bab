"""Targets: fusion and lowering ask the ``Target`` what it supports and how it lowers."""

from __future__ import annotations

import dataclasses

import numpy as np

import fusejit as fj
import fusejit.nn as nn
from fusejit.codegen import CPU, STRATEGIES
from fusejit.ir.transforms.fusion import GroupKind, fuse


def optimized(f, *args):
    return fj.jit(f, backend="interpret").lower(*args).optimized


def test_fusion_makes_only_the_group_kinds_the_target_has_strategies_for():
    fn = optimized(lambda x: nn.softmax(x), np.ones((8, 16), np.float32))
    assert [g.kind for g in fuse(fn, supports=CPU.supports).groups] == [GroupKind.ROW]
    no_rows = dataclasses.replace(CPU, name="no-rows",
                                  strategies={k: s for k, s in STRATEGIES.items() if k is not GroupKind.ROW})
    fused = fuse(fn, supports=no_rows.supports)
    assert GroupKind.ROW not in [g.kind for g in fused.groups]
    assert any("no-rows target has no strategy for 'row' groups" in r.reason for r in fused.refusals)
    assert all(no_rows.can_lower(g) is None for g in fused.groups)


def test_a_target_without_blas_lowers_float_matmuls_as_loop_nests():
    fn = optimized(lambda a, b: a @ b, np.ones((3, 4), np.float32), np.ones((4, 5), np.float32))
    (group,) = fuse(fn, supports=CPU.supports).groups
    assert CPU.lower(group).uses_blas
    lowered = dataclasses.replace(CPU, name="no-blas", blas=False).lower(group)
    assert not lowered.uses_blas and lowered.kernel.name.startswith("matmul_loop_f32")
