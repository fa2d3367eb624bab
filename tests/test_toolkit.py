"""The training toolkit of issue 14: ``fj.nn`` additions (one_hot, logsumexp, embedding,
multi-head attention, relu's derivative), ``fj.optim`` schedules, clipping, ``chain``
and the two Adams (against hand-computed values and optax), and ``fj.save``/``fj.load``."""

from __future__ import annotations

import collections
import math
import os

import numpy as np
import pytest

import fusejit as fj
from fusejit import nn, optim

RNG = np.random.default_rng(14)


# ---------------------------------------------------------------------------------------
# fj.nn


def test_one_hot_and_logsumexp_match_numpy():
    labels = np.array([[0, 2], [1, 5]])
    expected = (labels[..., None] == np.arange(3)).astype(np.float32)
    np.testing.assert_array_equal(nn.one_hot(labels, 3), expected)
    np.testing.assert_array_equal(fj.jit(lambda y: nn.one_hot(y, 3))(labels), expected)
    x = RNG.standard_normal((3, 4)).astype(np.float32) * 30
    ref = np.log(np.exp(x.astype(np.float64)).sum(axis=1))
    np.testing.assert_allclose(fj.jit(lambda x: nn.logsumexp(x, axis=1))(x), ref, rtol=1e-6)
    np.testing.assert_allclose(nn.logsumexp(x), np.log(np.exp(x.astype(np.float64)).sum()), rtol=1e-6)
    assert nn.logsumexp(x, axis=0, keepdims=True).shape == (1, 4)
    big = np.array([1e4, 1e4], np.float32)
    np.testing.assert_allclose(fj.jit(nn.logsumexp)(big), 1e4 + math.log(2), rtol=1e-6)
    assert nn.logsumexp(np.array([-np.inf, -np.inf], np.float32)) == -np.inf
    # The gradient is the softmax.
    g = fj.jit(fj.grad(lambda x: nn.logsumexp(x, axis=1).sum()))(x)
    np.testing.assert_allclose(g, np.exp(x - ref[:, None].astype(np.float32)), rtol=1e-4, atol=1e-6)


def test_relu_derivative_is_zero_at_zero():
    x = np.array([-1.0, 0.0, 0.0, 2.0, np.nan], np.float32)
    g = fj.grad(lambda x: nn.relu(x).sum())(x[:4])
    np.testing.assert_array_equal(g, [0, 0, 0, 1])
    np.testing.assert_array_equal(fj.jit(fj.grad(lambda x: nn.relu(x).sum()))(x[:4]), [0, 0, 0, 1])
    out = nn.relu(x)
    np.testing.assert_array_equal(out[:4], [0, 0, 0, 2])
    assert np.isnan(out[4])
    assert fj.gradcheck(lambda x: (nn.relu(x) ** 2).sum(), (np.array([0.0, 1.5, -2.0]),))


def test_embedding_gathers_rows_and_scatters_gradients():
    table = RNG.standard_normal((6, 3)).astype(np.float32)
    ids = np.array([[1, 4], [1, 0]])
    np.testing.assert_array_equal(fj.jit(nn.embedding)(ids, table), table[ids])
    g = fj.jit(fj.grad(lambda t, i: nn.embedding(i, t).sum(), argnums=0))(table, ids)
    expected = np.zeros_like(table)
    np.add.at(expected, ids, 1.0)
    np.testing.assert_array_equal(g, expected)


def _attention_reference(q, k, v, p, heads, mask=None):
    def proj(x, n):
        return x @ p["w" + n].T + p["b" + n]

    b, lq, d = q.shape
    dh = d // heads

    def split(x):
        return x.reshape(x.shape[0], x.shape[1], heads, dh).transpose(0, 2, 1, 3)

    qh, kh, vh = split(proj(q, "q")), split(proj(k, "k")), split(proj(v, "v"))
    s = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(dh)
    if mask is not None:
        s = np.where(mask, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = (w @ vh).transpose(0, 2, 1, 3).reshape(b, lq, d)
    return out @ p["wo"].T + p["bo"]


def test_multi_head_attention_matches_numpy_and_fuses_into_few_kernels():
    params = nn.init_multi_head_attention(np.random.default_rng(0), 16)
    params = {k: v + RNG.standard_normal(v.shape).astype(np.float32) * 0.1 for k, v in params.items()}
    q = RNG.standard_normal((2, 5, 16)).astype(np.float32)
    kv = RNG.standard_normal((2, 7, 16)).astype(np.float32)
    causal = np.tril(np.ones((5, 7), bool))
    fn = fj.jit(lambda q, k, v, p, m: nn.multi_head_attention(q, k, v, p, 4, mask=m))
    out = fn(q, kv, kv, params, causal)
    ref = _attention_reference(q.astype(np.float64), kv, kv, params, 4, causal)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(nn.multi_head_attention(q, kv, kv, params, 4), _attention_reference(q, kv, kv, params, 4),
                               rtol=1e-4, atol=1e-5)
    compiled = fn.lower(q, kv, kv, params, causal).compile()
    # 4 projections + 2 batched products are matrix kernels; the masked softmax and
    # the head shuffles fuse around them.
    assert len(compiled.kernels) <= 10, [k.name for k in compiled.kernels]
    grads = fj.jit(fj.grad(lambda p: nn.multi_head_attention(q, kv, kv, p, 4).sum()))(params)
    assert set(grads) == set(params) and all(np.isfinite(g).all() for g in grads.values())


def test_nn_dropout_rejects_bad_rates():
    with pytest.raises(ValueError, match="rate"):
        nn.dropout(np.ones(3, np.float32), 1.5, fj.random.key(0))


# ---------------------------------------------------------------------------------------
# fj.optim


def test_schedules_follow_their_formulas():
    counts = np.arange(12, dtype=np.float32)
    cases = {
        optim.constant(0.3): np.full(12, 0.3),
        optim.step_decay(1.0, 4, 0.5): 0.5 ** (counts // 4),
        optim.exponential_decay(2.0, 0.9): 2.0 * 0.9**counts,
        optim.cosine_decay(1.0, 10, alpha=0.1): 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.minimum(counts, 10) / 10)),
        optim.cosine_decay(1.0, 10, warmup_steps=4): np.where(
            counts < 4, counts / 4, 0.5 * (1 + np.cos(np.pi * np.clip(counts - 4, 0, 6) / 6))),
    }
    for schedule, expected in cases.items():
        eager = np.array([schedule(np.float32(c)) for c in counts], np.float64)
        jitted = np.array([fj.jit(schedule)(np.float32(c)) for c in counts[:3]], np.float64)
        np.testing.assert_allclose(eager, expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(jitted, expected[:3], rtol=1e-6, atol=1e-7)


def _adam_reference(params, grads_of, steps, lr_of, l2=0.0, decoupled=0.0, clip=None):
    """torch.optim.Adam / AdamW, by hand in float64."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, steps + 1):
        lr = lr_of(t - 1)
        g = grads_of(p, t)
        if clip is not None:
            norm = math.sqrt(sum(float((x**2).sum()) for x in g.values()))
            if norm >= clip:
                g = {k: x * clip / norm for k, x in g.items()}
        for k in p:
            gk = g[k] + l2 * p[k]
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.999 * v[k] + 0.001 * gk * gk
            denom = np.sqrt(v[k] / (1 - 0.999**t)) + 1e-8
            p[k] = p[k] * (1 - lr * decoupled) - lr / (1 - 0.9**t) * m[k] / denom
    return p


def _grads_of(p, t):
    return {k: np.sin(x * t + 1.0) * (3.0 if k == "a" else 1.0) for k, x in p.items()}


PARAMS = {"a": RNG.standard_normal(4), "b": RNG.standard_normal((2, 3))}


@pytest.mark.parametrize("variant", ["adam_l2", "adamw", "chain_clip_schedule"])
def test_adam_variants_match_hand_computed_torch_updates_for_3_steps(variant):
    schedule = optim.cosine_decay(0.05, 5, warmup_steps=1)
    if variant == "adam_l2":
        opt, ref = optim.adam(0.05, weight_decay=0.1), dict(lr_of=lambda k: 0.05, l2=0.1)
    elif variant == "adamw":
        opt, ref = optim.adamw(0.05, weight_decay=0.1), dict(lr_of=lambda k: 0.05, decoupled=0.1)
    else:
        opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(schedule, weight_decay=0.1))
        ref = dict(lr_of=lambda k: float(schedule(np.float64(k))), decoupled=0.1, clip=1.0)
    expected = _adam_reference(PARAMS, _grads_of, 3, **ref)
    step = fj.jit(opt.update)
    pe = pj = PARAMS
    se = sj = opt.init(PARAMS)
    for t in range(1, 4):
        pe, se = opt.update(_grads_of(pe, t), se, pe)
        pj, sj = step(_grads_of(pj, t), sj, pj)
    for k in PARAMS:
        np.testing.assert_allclose(pe[k], expected[k], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(pj[k], expected[k], rtol=1e-9, atol=1e-12)


def test_adam_variants_match_optax():
    optax = pytest.importorskip("optax")
    import jax.numpy as jnp

    sched = optax.warmup_cosine_decay_schedule(0.0, 0.05, 1, 5, 0.0)
    pairs = [
        (optim.adam(0.05, weight_decay=0.1), optax.chain(optax.add_decayed_weights(0.1), optax.adam(0.05))),
        (optim.adamw(0.05, weight_decay=0.1), optax.adamw(0.05, weight_decay=0.1)),
        (optim.chain(optim.clip_by_global_norm(1.0), optim.adam(optim.cosine_decay(0.05, 5, warmup_steps=1))),
         optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))),
        (optim.adam(optim.step_decay(0.05, 2, 0.5)),
         optax.adam(optax.exponential_decay(0.05, 2, 0.5, staircase=True))),
        (optim.sgd(optim.exponential_decay(0.1, 0.7)), optax.sgd(optax.exponential_decay(0.1, 1, 0.7))),
    ]
    params = {k: v.astype(np.float32) for k, v in PARAMS.items()}
    for ours, theirs in pairs:
        p, s = params, ours.init(params)
        q, qs = {k: jnp.asarray(v) for k, v in params.items()}, theirs.init({k: jnp.asarray(v) for k, v in params.items()})
        step = fj.jit(ours.update)
        for t in range(1, 4):
            p, s = step(_grads_of(p, t), s, p)
            updates, qs = theirs.update({k: jnp.asarray(v) for k, v in _grads_of(q, t).items()}, qs, q)
            q = optax.apply_updates(q, updates)
        for k in params:
            np.testing.assert_allclose(p[k], np.asarray(q[k]), rtol=2e-5, atol=2e-6)


def test_clip_by_global_norm_scales_only_large_gradients():
    clip = optim.clip_by_global_norm(2.0)
    small = {"x": np.array([1.0, 1.0], np.float32)}
    big = {"x": np.array([3.0, 4.0], np.float32), "y": [np.zeros(2, np.float32)]}
    out, _ = fj.jit(clip.update)(small, (), small)
    np.testing.assert_array_equal(out["x"], small["x"])
    out, _ = clip.update(big, (), big)
    np.testing.assert_allclose(out["x"], [1.2, 1.6], rtol=1e-6)
    np.testing.assert_allclose(optim.global_norm(out), 2.0, rtol=1e-6)
    with pytest.raises(TypeError, match="last"):
        optim.chain(optim.adam(0.1), clip)


# ---------------------------------------------------------------------------------------
# Saving and loading


def test_save_and_load_round_trip_a_pytree(tmp_path):
    Point = collections.namedtuple("Point", "x y")
    tree = {
        "layers": [{"w": RNG.standard_normal((2, 3)).astype(np.float32), "b": np.arange(3)}, None],
        "step": 7,
        "scale": 0.5,
        "flags": np.array([True, False]),
        "point": Point(np.float64(1.5), np.zeros((0, 2), np.int32)),
    }
    path = tmp_path / "params.npz"
    fj.save(path, tree)
    back = fj.load(path)
    leaves, treedef = fj.tree_flatten_with_path(tree)
    back_leaves, back_def = fj.tree_flatten_with_path(back)
    assert [p for p, _ in leaves] == [p for p, _ in back_leaves]
    assert str(treedef) == str(back_def)
    for (_, a), (_, b) in zip(leaves, back_leaves, strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(a).dtype == np.asarray(b).dtype
    assert back["step"] == 7 and type(back["step"]) is int and type(back["point"]).__name__ == "Point"
    assert os.listdir(tmp_path) == ["params.npz"]  # the temporary file was renamed


def test_save_is_atomic_and_load_refuses_pickles(tmp_path):
    path = tmp_path / "p.npz"
    fj.save(path, {"w": np.ones(2)})
    with pytest.raises(TypeError, match="not numeric"):
        fj.save(path, {"w": np.ones(2), "bad": "text"})
    np.testing.assert_array_equal(fj.load(path)["w"], np.ones(2))  # the old file is intact
    assert os.listdir(tmp_path) == ["p.npz"]
    np.savez(tmp_path / "pickled.npz", __tree__=np.frombuffer(b"{}", np.uint8), leaf_0=np.array([{"a": 1}], object))
    with pytest.raises(ValueError):
        fj.load(tmp_path / "pickled.npz")
    np.savez(tmp_path / "plain.npz", w=np.ones(2))
    with pytest.raises(ValueError, match="not written by fj.save"):
        fj.load(tmp_path / "plain.npz")


def test_tree_flatten_with_path_names_each_leaf():
    leaves, _ = fj.tree_flatten_with_path({"b": [1, 2], "a": {"w": 3}})
    assert leaves == [("['a']['w']", 3), ("['b'][0]", 1), ("['b'][1]", 2)]
