"""``fj.random``: Threefry-2x32 against its published known answers and against JAX,
bit-identical values eagerly, jitted, fused and unfused and across batch sizes, batching,
the statistics of each distribution, and dropout computed inside the fused kernel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import fusejit as fj
import fusejit.random as fr
from fusejit.ir import primitives as P
from fusejit.tracer.tracing import bind

KEY = fr.key(1234)

# Random123 1.14, examples/kat_vectors: "threefry2x32 20 <ctr> <key> <expected>".
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0)),
]


def _threefry(k0, k1, x0, x1):
    return tuple(bind(P.threefry2x32, k0, k1, x0, x1, word=w) for w in (0, 1))


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_threefry_gives_the_random123_known_answers_eagerly_and_jitted(fuse):
    ctr, key, expected = (np.array(v, np.int64).T for v in zip(*KNOWN_ANSWERS, strict=True))
    args = (key[0], key[1], ctr[0], ctr[1])
    for got in (_threefry(*args), fj.jit(_threefry, fuse=fuse)(*args)):
        np.testing.assert_array_equal(np.stack(got), expected)


def test_threefry_kernel_is_integer_arithmetic_in_one_loop():
    x = np.arange(64, dtype=np.int64)
    compiled = fj.jit(_threefry).lower(x, x, x, x).compile()
    assert len(compiled.kernels) == 1
    source = compiled.kernel_source()
    assert "^" in source and "<<" in source and ">>" in source
    # The two words share the cipher's statements: about 170, not twice that.
    assert source.count(" ^ ") < 40


def _jax():
    return pytest.importorskip("jax")


def test_keys_bits_uniform_randint_and_permutation_equal_jax_bit_for_bit():
    jax = _jax()
    for seed in (0, 42, 2**31 + 5):
        k, jk = fr.key(seed), np.asarray(jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(k, jk)
        np.testing.assert_array_equal(fr.split(k, 5), np.asarray(jax.random.split(jk, 5)))
        np.testing.assert_array_equal(fr.fold_in(k, 77), np.asarray(jax.random.fold_in(jk, 77)))
        np.testing.assert_array_equal(fr.bits(k, (3, 5)), np.asarray(jax.random.bits(jk, (3, 5))))
        np.testing.assert_array_equal(fr.uniform(k, (4, 7)), np.asarray(jax.random.uniform(jk, (4, 7))))
        np.testing.assert_array_equal(fr.randint(k, (50,), -3, 1000),
                                      np.asarray(jax.random.randint(jk, (50,), -3, 1000)))
        for lo, hi in ((0, 65536), (0, 65537), (0, 100_000), (-5, 1_000_003), (0, 2**31 - 1)):  # spans past 2**16
            np.testing.assert_array_equal(fr.randint(k, (40,), lo, hi),
                                          np.asarray(jax.random.randint(jk, (40,), lo, hi)), err_msg=f"{lo}, {hi}")
        np.testing.assert_array_equal(fr.bernoulli(k, 0.3, (40,)), np.asarray(jax.random.bernoulli(jk, 0.3, (40,))))
        for n in (1, 17, 2000):  # 2000 elements take two rounds of shuffling
            np.testing.assert_array_equal(fr.permutation(k, n), np.asarray(jax.random.permutation(jk, n)))
        rows = np.arange(24).reshape(8, 3)
        np.testing.assert_array_equal(fr.permutation(k, rows), np.asarray(jax.random.permutation(jk, rows)))


def test_uniform_with_bounds_is_jax_formula_without_fused_multiply_add():
    """XLA fuses ``u * (hi - lo) + lo`` into one FMA on the CPU; fusejit rounds twice
    (kernels are compiled without contraction, for eager == jit)."""
    jax = _jax()
    jk = jax.random.PRNGKey(7)
    unit = fr.uniform(fr.key(7), (200,))
    ours = fr.uniform(fr.key(7), (200,), minval=-2.0, maxval=3.0)
    np.testing.assert_array_equal(ours, np.maximum(np.float32(-2), unit * np.float32(5) + np.float32(-2)))
    fma = (unit.astype(np.float64) * 5 - 2).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(jax.random.uniform(jk, (200,), minval=-2.0, maxval=3.0)), fma)


def test_normal_agrees_with_jax_to_rounding_and_erfinv_with_scipy():
    jax = _jax()
    ours = fr.normal(KEY, (20000,))
    theirs = np.asarray(jax.random.normal(np.asarray(KEY, np.uint32), (20000,)))
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-6)
    from scipy.special import erfinv

    from fusejit.ir.dtypes import DType

    x = np.linspace(-1, 1, 20001)[1:-1]
    for dt, rtol in ((DType.f32, 1e-6), (DType.f64, 2e-15)):
        np.testing.assert_allclose(fr._erfinv(x.astype(dt.np), dt), erfinv(x.astype(dt.np).astype(np.float64)),
                                   rtol=rtol, atol=rtol)


def _draws(key):
    logits = np.log(np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], np.float32))
    return {
        "split": fr.split(key, 3),
        "fold_in": fr.fold_in(key, 5),
        "bits": fr.bits(key, (6,)),
        "uniform32": fr.uniform(key, (4, 5)),
        "uniform64": fr.uniform(key, (3, 2), np.float64, -1.0, 2.0),
        "normal32": fr.normal(key, (64,)),
        "normal64": fr.normal(key, (2, 9), np.float64),
        "bernoulli": fr.bernoulli(key, 0.25, (30,)),
        "randint": fr.randint(key, (25,), 5, 12),
        "permutation": fr.permutation(key, 9),
        "categorical": fr.categorical(key, logits),
    }


@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_same_key_same_values_eagerly_jitted_fused_and_unfused(fuse):
    eager = _draws(KEY)
    jitted = fj.jit(_draws, fuse=fuse)(KEY)  # all draws in one function: kernels shared
    for name, value in eager.items():
        assert jitted[name].dtype == value.dtype, name
        np.testing.assert_array_equal(jitted[name], value, err_msg=f"{name} fuse={fuse}")


def test_values_do_not_depend_on_the_batch_size():
    for fn in (fr.uniform, fr.normal, fr.bits):
        big = fj.jit(lambda k, fn=fn: fn(k, (8, 3)))(KEY)
        small = fn(KEY, (4, 3))
        np.testing.assert_array_equal(big[:4], small)
    # ... nor with what else shares the kernel: dropout fused into a larger computation.
    x = np.ones((8, 3), np.float32)
    masked = fj.jit(lambda x, k: fj.nn.dropout(x * 2.0, 0.5, k) + 1.0)(x, KEY)
    np.testing.assert_array_equal(masked[:4], fj.nn.dropout(x[:4] * 2.0, 0.5, KEY) + 1.0)


def test_vmap_over_keys_is_a_loop_over_keys():
    keys = fr.split(KEY, 4)
    batched = fj.jit(fj.vmap(lambda k: (fr.normal(k, (5,)), fr.split(k), fr.fold_in(k, 3))))(keys)
    for i, k in enumerate(keys):
        np.testing.assert_array_equal(batched[0][i], fr.normal(k, (5,)))
        np.testing.assert_array_equal(batched[1][i], fr.split(k))
        np.testing.assert_array_equal(batched[2][i], fr.fold_in(k, 3))
    data = np.arange(4)
    folded = fj.vmap(lambda d: fr.uniform(fr.fold_in(KEY, d), (2,)))(data)
    for i in range(4):
        np.testing.assert_array_equal(folded[i], fr.uniform(fr.fold_in(KEY, i), (2,)))


def test_uniform_moments_and_chi_square():
    u = fj.jit(lambda k: fr.uniform(k, (200_000,)))(KEY).astype(np.float64)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 4 * np.sqrt(1 / 12 / u.size)
    assert abs(u.var() - 1 / 12) < 1e-3
    counts = np.bincount((u * 100).astype(int), minlength=100)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_normal_moments_and_chi_square():
    z = fj.jit(lambda k: fr.normal(k, (200_000,)))(fr.key(99)).astype(np.float64)
    assert abs(z.mean()) < 4 / np.sqrt(z.size)
    assert abs(z.var() - 1) < 0.02
    assert abs(stats.skew(z)) < 0.03 and abs(stats.kurtosis(z)) < 0.06
    edges = stats.norm.ppf(np.linspace(0, 1, 51))  # 50 equally likely bins
    counts = np.histogram(z, bins=edges)[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    assert np.abs(z).max() < 6.5


def test_discrete_distributions_have_their_frequencies():
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    draws = fj.jit(lambda k: fr.categorical(k, np.broadcast_to(logits, (40_000, 4))))(KEY)
    counts = np.bincount(draws, minlength=4)
    probs = np.exp(logits.astype(np.float64))
    assert stats.chisquare(counts, 40_000 * probs / probs.sum()).pvalue > 1e-3
    ints = fr.randint(KEY, (30_000,), -2, 5)
    assert ints.min() == -2 and ints.max() == 4
    assert stats.chisquare(np.bincount(ints + 2)).pvalue > 1e-3
    assert abs(fr.bernoulli(KEY, 0.2, (50_000,)).mean() - 0.2) < 0.006
    perm = fr.permutation(KEY, 50)
    assert sorted(perm.tolist()) == list(range(50)) and perm.tolist() != list(range(50))


def test_dropout_mask_never_exists_in_memory():
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)

    def f(x, key):
        return fj.nn.dropout(np.tanh(x), 0.25, key) * 3.0

    lowered = fj.jit(f).lower(x, KEY)
    compiled = lowered.compile()
    # One kernel that reads x and the key and writes only the result.
    assert len(compiled.kernels) == 1, compiled.kernels
    (kernel,) = compiled.kernels
    assert kernel.bytes_out == x.nbytes and kernel.bytes_in == x.nbytes + KEY.nbytes
    assert "threefry2x32" in lowered.as_text("fused")
    out = compiled(x, KEY)
    kept = out != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(out[kept], (np.tanh(x) / 0.75 * 3.0)[kept], rtol=1e-5)
    eager = f(x, KEY)  # the same mask; tanh itself differs in the last place (math library)
    np.testing.assert_array_equal(kept, eager != 0)
    np.testing.assert_allclose(out, eager, rtol=1e-6)


def test_dropout_gradient_is_the_scaled_mask_and_deterministic_is_identity():
    x = np.ones((10, 10), np.float32)
    g = fj.jit(fj.grad(lambda x, k: fj.nn.dropout(x, 0.5, k).sum()))(x, KEY)
    mask = fj.nn.dropout(x, 0.5, KEY) != 0
    np.testing.assert_array_equal(g, np.where(mask, 2.0, 0.0).astype(np.float32))
    assert fj.nn.dropout(x, 0.5, KEY, deterministic=True) is x
    np.testing.assert_array_equal(fj.nn.dropout(x, 1.0, KEY), 0 * x)


def test_keys_are_checked():
    with pytest.raises(TypeError, match="integer"):
        fr.key(1.5)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        fr.uniform(fr.split(KEY, 3), (2,))
    with pytest.raises(ValueError, match="below 2"):
        fr.randint(KEY, (2,), 0, 2**33, np.int64)
    # JAX's uint32 keys are accepted as they are.
    np.testing.assert_array_equal(fr.uniform(np.asarray(KEY, np.uint32), (3,)), fr.uniform(KEY, (3,)))
    # A traced seed makes the same key as a concrete one.
    np.testing.assert_array_equal(fj.jit(fr.key)(np.int64(2**40 + 3)), fr.key(2**40 + 3))
