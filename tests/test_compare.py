"""fj.compare: NumPy eager vs jit(fuse=False) vs jit on a small function; the table is
complete and the results are checked. Nothing here asserts that anything is fast."""

from __future__ import annotations

import numpy as np
import pytest

import fusejit as fj
from fusejit.comparison import EAGER, FUSED, UNFUSED, check_agreement

RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 32)).astype(np.float32)
W = RNG.standard_normal((32, 16)).astype(np.float32)


def small(x, w):
    h = np.tanh(x @ w)
    return (h * h).sum(axis=1), h.mean()


def test_compare_runs_three_variants_that_agree_and_prints_a_complete_table():
    c = fj.compare(small, X, W, repeat=3)
    assert [v.label for v in c.variants] == [EAGER, UNFUSED, FUSED]
    assert c.agree
    for v in c.variants:
        assert len(v.times_s) == 3 and all(t > 0 for t in v.times_s)
        assert v.first_call_s > 0 and v.median_s > 0 and v.spread >= 0
    assert c[UNFUSED].agrees and c[FUSED].agrees
    assert c[FUSED].kernels <= c[UNFUSED].kernels
    assert c[FUSED].bytes_per_call <= c[UNFUSED].bytes_per_call
    assert c[EAGER].ops == c.traced_ops > 0
    text = str(c)
    for word in ("first call", "median", "spread", "vs eager", "kernels", "bytes/call", EAGER, UNFUSED, FUSED):
        assert word in text
    assert text.count("agree") == 2 and "reference" in text
    assert c.speedup(EAGER) == pytest.approx(1.0)
    assert set(c.to_dict()["variants"][0]) >= {"label", "median_s", "speedup", "kernels", "bytes_per_call"}


def test_other_versions_get_their_own_rows_and_their_results_are_checked():
    def boom(x, w):
        raise RuntimeError("not today")

    c = fj.compare(small, X, W, repeat=2, others={
        "NumPy again": lambda x, w: small(x.astype(np.float64), w.astype(np.float64)),
        "off by one": lambda x, w: tuple(np.asarray(o) + 1 for o in small(x, w)),
        "broken": boom,
    })
    assert c["NumPy again"].agrees
    assert c["off by one"].agrees is False
    assert "RuntimeError: not today" in c["broken"].error
    assert not c.agree
    text = str(c)
    assert "DIFFER" in text and "error: RuntimeError" in text


def test_a_jitted_function_keeps_its_static_arguments():
    def scaled(x, n):
        return x * n + 1.0

    c = fj.compare(fj.jit(scaled, static_argnums=1), X, 3, repeat=2)
    assert c.agree and c[FUSED].kernels == 1


def test_check_agreement_reports_shape_and_value_mismatches():
    a = np.ones((3, 2), np.float32)
    assert check_agreement([a], [a + 1e-7])[0]
    ok, worst, why = check_agreement([a], [a * 2])
    assert not ok and worst == pytest.approx(1.0) and "output 0" in why
    assert "shape" in check_agreement([a], [a.T])[2]
    assert not check_agreement([a], [a, a])[0]
    assert not check_agreement([np.arange(3)], [np.arange(3) + 1])[0]


def test_repeat_below_one_is_refused():
    with pytest.raises(ValueError, match="repeat"):
        fj.compare(small, X, W, repeat=0)
