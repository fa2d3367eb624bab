"""A two-layer network with hand-written backpropagation, written the way NumPy tutorials
write it (CS231n's "Putting it together: minimal neural network case study"): in-place
gradient edits (``dscores[range(N), y] -= 1``, ``dhidden[hidden_layer <= 0] = 0``) and an
in-place SGD update of the parameters. ``fj.jit(train_step)`` runs it unmodified.

    python examples/numpy_mlp.py
"""

from __future__ import annotations

import numpy as np


def train_step(X, y, W, b, W2, b2, reg, step_size):  # noqa: N803 - the tutorial's names
    num_examples = X.shape[0]
    # forward pass
    hidden_layer = np.maximum(0, np.dot(X, W) + b)  # ReLU activation
    scores = np.dot(hidden_layer, W2) + b2
    exp_scores = np.exp(scores)
    probs = exp_scores / np.sum(exp_scores, axis=1, keepdims=True)
    # the loss: average cross-entropy and regularization
    correct_logprobs = -np.log(probs[range(num_examples), y])
    data_loss = np.sum(correct_logprobs) / num_examples
    reg_loss = 0.5 * reg * np.sum(W * W) + 0.5 * reg * np.sum(W2 * W2)
    loss = data_loss + reg_loss
    # gradient on the scores
    dscores = probs
    dscores[range(num_examples), y] -= 1
    dscores /= num_examples
    # backpropagate into W2 and b2, then into the hidden layer, the ReLU, W and b
    dW2 = np.dot(hidden_layer.T, dscores)
    db2 = np.sum(dscores, axis=0, keepdims=True)
    dhidden = np.dot(dscores, W2.T)
    dhidden[hidden_layer <= 0] = 0
    dW = np.dot(X.T, dhidden)
    db = np.sum(dhidden, axis=0, keepdims=True)
    dW2 += reg * W2
    dW += reg * W
    # parameter update
    W += -step_size * dW
    b += -step_size * db
    W2 += -step_size * dW2
    b2 += -step_size * db2
    return loss, W, b, W2, b2


def make_problem(n_per_class: int = 100, classes: int = 3, hidden: int = 100, seed: int = 0):  # noqa: ANN201
    """The tutorial's spiral data set and initial parameters (float64, as NumPy's default)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n_per_class * classes, 2))  # noqa: N806
    y = np.zeros(n_per_class * classes, dtype=np.int64)
    for j in range(classes):
        ix = range(n_per_class * j, n_per_class * (j + 1))
        r = np.linspace(0.0, 1, n_per_class)
        t = np.linspace(j * 4, (j + 1) * 4, n_per_class) + rng.standard_normal(n_per_class) * 0.2
        X[ix] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[ix] = j
    params = (
        0.01 * rng.standard_normal((2, hidden)), np.zeros((1, hidden)),
        0.01 * rng.standard_normal((hidden, classes)), np.zeros((1, classes)),
    )  # fmt: skip
    return X, y, params


def main() -> None:
    import fusejit as fj

    X, y, params = make_problem()  # noqa: N806
    step = fj.jit(train_step, donate_argnums=(2, 3, 4, 5))
    reference = [p.copy() for p in params]
    jitted = [p.copy() for p in params]
    for i in range(200):
        loss_np, *reference = train_step(X, y, *reference, 1e-3, 1.0)
        loss_fj, *jitted = step(X, y, *jitted, 1e-3, 1.0)
        if i % 50 == 0:
            print(f"iteration {i}: loss {loss_np:.6f} (NumPy) {float(loss_fj):.6f} (fj.jit)")
    print("largest parameter difference:", max(float(np.max(np.abs(a - b))) for a, b in zip(reference, jitted, strict=True)))


if __name__ == "__main__":
    main()
