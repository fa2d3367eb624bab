"""A recurrent network on real data: a GRU reads each 8x8 handwritten digit row by row.

    python examples/train_rnn.py            # about 97% test accuracy in 30 epochs
    python examples/train_rnn.py --quick    # one epoch, about 55-60% (what the tests run)

Data: the 1,797 8x8 digit images that ship inside scikit-learn (``load_digits``, nothing is
downloaded), split 80/20 with a fixed seed. Each image is a sequence of 8 time steps of 8
pixels (time first, ``(8, batch, 8)``). Model: ``fj.nn.gru_cell`` with 64 hidden units run
by ``fj.nn.rnn`` (one ``fj.lax.scan``: the step is traced, differentiated and compiled
once, not unrolled 8 times), then a linear layer on the last hidden state; loss:
cross-entropy; optimizer: ``fj.optim.adam`` with a cosine-decayed learning rate. The whole
training step (forward scan, backward scan, Adam) is one ``fj.jit`` function.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

import fusejit as fj
from fusejit import nn

HIDDEN = 64


def init_params(rng: np.random.Generator) -> dict:
    return {"gru": nn.init_gru_cell(rng, 8, HIDDEN), "head": nn.init_linear(rng, HIDDEN, 10)}


def model(params: dict, images: np.ndarray) -> np.ndarray:
    """Logits [N, 10] of images [N, 8, 8]: the rows are the time steps."""
    xs = images.transpose(1, 0, 2)  # [8, N, 8], time first
    h0 = np.zeros((images.shape[0], HIDDEN), np.float32)
    _, h = nn.rnn(nn.gru_cell, params["gru"], xs, h0)
    return nn.linear(h, params["head"]["w"], params["head"]["b"])


def make_train_step(base_lr: float, total_steps: int):
    optimizer = fj.optim.adam(fj.optim.cosine_decay(base_lr, total_steps))

    def loss_fn(params, images, labels):
        logits = model(params, images)
        return nn.cross_entropy(logits, labels), logits

    def train_step(params, opt_state, images, labels):
        (loss, logits), grads = fj.value_and_grad(loss_fn, has_aux=True)(params, images, labels)
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, opt_state, loss, nn.accuracy(logits, labels)

    return optimizer, train_step


def eval_step(params, images, labels):
    logits = model(params, images)
    return nn.cross_entropy(logits, labels), nn.accuracy(logits, labels)


def load_data(seed: int):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)  # [1797, 8, 8] in [0, 1]
    labels = digits.target.astype(np.int32)
    return train_test_split(images, labels, test_size=0.2, random_state=seed, stratify=labels)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set (default 30)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam's initial learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="one epoch only (what the tests run)")
    args = p.parse_args(argv)

    x_train, x_test, y_train, y_test = load_data(args.seed)
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = len(x_train) // args.batch_size
    epochs = 1 if args.quick else args.epochs
    steps = epochs * steps_per_epoch
    optimizer, train_step = make_train_step(args.lr, steps)
    params = init_params(rng)
    opt_state = optimizer.init(params)
    step = fj.jit(train_step, donate_argnums=(0, 1))
    evaluate = fj.jit(eval_step)

    start = time.perf_counter()
    done = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        for k in range(min(steps_per_epoch, steps - done)):
            batch = order[k * args.batch_size : (k + 1) * args.batch_size]
            params, opt_state, loss, acc = step(params, opt_state, x_train[batch], y_train[batch])
            done += 1
            if done == 1:
                print(f"first step (trace, differentiate, compile): {time.perf_counter() - start:.1f} s")
        test_loss, test_acc = evaluate(params, x_test, y_test)
        print(
            f"epoch {epoch + 1:2d}: train loss {float(loss):.4f}, test loss {float(test_loss):.4f}, "
            f"test accuracy {100 * float(test_acc):.2f}%"
        )
    print(
        f"test accuracy: {100 * float(test_acc):.2f}% on {len(x_test)} held-out digits "
        f"({done} steps in {time.perf_counter() - start:.1f} s)"
    )
    return float(test_acc)


if __name__ == "__main__":
    main(sys.argv[1:])
