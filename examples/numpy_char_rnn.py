"""A character-level RNN with hand-written backpropagation, written the way NumPy
tutorials write it (Karpathy's min-char-rnn): one-hot inputs written into fresh zero
arrays, ``dy[target] -= 1``, gradients accumulated with ``+=`` into ``zeros_like``
buffers, ``np.clip(..., out=)`` and an in-place Adagrad update. ``fj.jit(train_step)``
runs it unmodified, NumPy import included: inside the trace, the one-hot buffers made with
``np.zeros`` become traced when the traced ``inputs[t]`` indexes them
(``fusejit.tracer.numpy_buffers``).

    python examples/numpy_char_rnn.py
"""

from __future__ import annotations

import numpy as np


def lossFun(inputs, targets, hprev, Wxh, Whh, Why, bh, by):  # noqa: N802, N803 - the tutorial's names
    """inputs, targets are both list of integers; hprev is Hx1 array of initial hidden
    state; returns the loss, gradients on model parameters, and last hidden state."""
    vocab_size = Wxh.shape[1]
    xs, hs, ys, ps = {}, {}, {}, {}
    hs[-1] = np.copy(hprev)
    loss = 0
    # forward pass
    for t in range(len(inputs)):
        xs[t] = np.zeros((vocab_size, 1))  # encode in 1-of-k representation
        xs[t][inputs[t]] = 1
        hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)  # hidden state
        ys[t] = np.dot(Why, hs[t]) + by  # unnormalized log probabilities for next chars
        ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))  # probabilities for next chars
        loss += -np.log(ps[t][targets[t], 0])  # softmax (cross-entropy loss)
    # backward pass: compute gradients going backwards
    dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
    dbh, dby = np.zeros_like(bh), np.zeros_like(by)
    dhnext = np.zeros_like(hs[0])
    for t in reversed(range(len(inputs))):
        dy = np.copy(ps[t])
        dy[targets[t]] -= 1  # backprop into y
        dWhy += np.dot(dy, hs[t].T)
        dby += dy
        dh = np.dot(Why.T, dy) + dhnext  # backprop into h
        dhraw = (1 - hs[t] * hs[t]) * dh  # backprop through tanh nonlinearity
        dbh += dhraw
        dWxh += np.dot(dhraw, xs[t].T)
        dWhh += np.dot(dhraw, hs[t - 1].T)
        dhnext = np.dot(Whh.T, dhraw)
    for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
        np.clip(dparam, -5, 5, out=dparam)  # clip to mitigate exploding gradients
    return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1]


def train_step(inputs, targets, hprev, params, mems, learning_rate):
    """One step of the tutorial's training loop: loss and gradients, then Adagrad, in
    place on ``params`` and ``mems`` (lists of the five parameter arrays)."""
    loss, dWxh, dWhh, dWhy, dbh, dby, hprev = lossFun(inputs, targets, hprev, *params)  # noqa: N806
    for param, dparam, mem in zip(params, [dWxh, dWhh, dWhy, dbh, dby], mems):  # noqa: B905
        mem += dparam * dparam
        param += -learning_rate * dparam / np.sqrt(mem + 1e-8)  # adagrad update
    return loss, hprev, params, mems


def make_problem(hidden_size: int = 100, vocab_size: int = 32, seq_length: int = 25, seed: int = 0):  # noqa: ANN201
    """Random text of ``seq_length + 1`` characters and the tutorial's initial parameters."""
    import numpy

    rng = numpy.random.default_rng(seed)
    text = rng.integers(0, vocab_size, seq_length + 1)
    inputs, targets = text[:-1].astype(numpy.int64), text[1:].astype(numpy.int64)
    params = [
        rng.standard_normal((hidden_size, vocab_size)) * 0.01,  # input to hidden
        rng.standard_normal((hidden_size, hidden_size)) * 0.01,  # hidden to hidden
        rng.standard_normal((vocab_size, hidden_size)) * 0.01,  # hidden to output
        numpy.zeros((hidden_size, 1)),  # hidden bias
        numpy.zeros((vocab_size, 1)),  # output bias
    ]
    mems = [numpy.zeros_like(p) for p in params]
    return inputs, targets, numpy.zeros((hidden_size, 1)), params, mems


def main() -> None:
    import numpy

    import fusejit as fj

    inputs, targets, hprev, params, mems = make_problem()
    step = fj.jit(train_step, donate_argnums=(3, 4))
    loss, h, new_params, new_mems = step(inputs, targets, hprev, [p.copy() for p in params],
                                         [m.copy() for m in mems], 0.1)
    reference = train_step(inputs, targets, hprev, params, mems, 0.1)  # NumPy itself
    print(f"loss {float(loss):.6f} (fj.jit), {float(reference[0]):.6f} (NumPy)")
    print("largest parameter difference:",
          max(float(numpy.max(numpy.abs(a - b))) for a, b in zip(new_params, reference[2], strict=True)))


if __name__ == "__main__":
    main()
