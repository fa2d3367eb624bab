"""fj.nn's recurrent cells against PyTorch's equations (and PyTorch itself when it is
installed), their gradients, and the GRU example on the digits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import fusejit as fj
from fusejit import nn

RNG = np.random.default_rng(0)
T, B, IN, H = 4, 3, 5, 6


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(kind, p, xs, state):
    """torch.nn.RNN/GRU/LSTM's documented equations, step by step in NumPy."""
    hs = []
    for x in xs:
        gi, gh = (
            x @ p["w_ih"].T + p["b_ih"],
            (state[0] if kind == "lstm" else state) @ p["w_hh"].T + p["b_hh"],
        )
        if kind == "rnn":
            state = np.tanh(gi + gh)
        elif kind == "gru":
            (ir, iz, in_), (hr, hz, hn) = np.split(gi, 3, axis=-1), np.split(gh, 3, axis=-1)
            r, z = sigmoid(ir + hr), sigmoid(iz + hz)
            state = (1 - z) * np.tanh(in_ + r * hn) + z * state
        else:
            i, f, g, o = np.split(gi + gh, 4, axis=-1)
            c = sigmoid(f) * state[1] + sigmoid(i) * np.tanh(g)
            state = (sigmoid(o) * np.tanh(c), c)
        hs.append(state[0] if kind == "lstm" else state)
    return np.stack(hs), state


CELLS = {
    "rnn": (nn.rnn_cell, nn.init_rnn_cell),
    "gru": (nn.gru_cell, nn.init_gru_cell),
    "lstm": (nn.lstm_cell, nn.init_lstm_cell),
}


def case(kind, dtype=np.float64):
    cell, init = CELLS[kind]
    p = init(RNG, IN, H, dtype)
    xs = RNG.standard_normal((T, B, IN)).astype(dtype)
    h0 = RNG.standard_normal((B, H)).astype(dtype)
    state = (h0, RNG.standard_normal((B, H)).astype(dtype)) if kind == "lstm" else h0
    return cell, p, xs, state


@pytest.mark.parametrize("kind", CELLS)
def test_cells_follow_pytorchs_equations_eagerly_and_jitted(kind):
    cell, p, xs, state = case(kind)
    hs_ref, state_ref = reference(kind, p, xs, state)
    for run in (nn.rnn, fj.jit(nn.rnn, static_argnums=0)):
        hs, final = run(cell, p, xs, state)
        np.testing.assert_allclose(hs, hs_ref, rtol=1e-12, atol=1e-12)
        for a, e in zip(fj.tree_leaves(final), fj.tree_leaves(state_ref), strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-12)
    hs_rev, _ = nn.rnn(cell, p, xs, state, reverse=True)
    np.testing.assert_allclose(hs_rev[::-1], reference(kind, p, xs[::-1], state)[0], rtol=1e-12)


@pytest.mark.parametrize("kind", CELLS)
def test_cells_equal_pytorchs_modules_with_the_same_weights(kind):
    torch = pytest.importorskip("torch")
    cell, p, xs, state = case(kind, np.float32)
    module = {"rnn": torch.nn.RNN, "gru": torch.nn.GRU, "lstm": torch.nn.LSTM}[kind](IN, H)
    with torch.no_grad():
        for ours, theirs in (
            ("w_ih", "weight_ih_l0"),
            ("w_hh", "weight_hh_l0"),
            ("b_ih", "bias_ih_l0"),
            ("b_hh", "bias_hh_l0"),
        ):
            getattr(module, theirs).copy_(torch.from_numpy(p[ours]))
        t_state = (
            tuple(torch.from_numpy(s)[None] for s in state)
            if kind == "lstm"
            else torch.from_numpy(state)[None]
        )
        expected, _ = module(torch.from_numpy(xs), t_state)
    hs, _ = fj.jit(nn.rnn, static_argnums=0)(cell, p, xs, state)
    np.testing.assert_allclose(hs, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gradients_through_the_sequence_match_finite_differences(kind):
    cell, p, xs, state = case(kind)

    def loss(p, xs, state):
        hs, _ = nn.rnn(cell, p, xs, state)
        return (hs * hs).sum()

    assert fj.gradcheck(loss, (p, xs, state))


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="needs scikit-learn (the demo extra)")
def test_the_gru_example_learns_the_digits_in_one_epoch(capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    try:
        import train_rnn
    finally:
        sys.path.pop(0)
    accuracy = train_rnn.main(["--quick"])
    assert accuracy > 0.3  # chance is 0.1; one epoch reaches about 0.55
    assert "test accuracy:" in capsys.readouterr().out
