"""In-place NumPy code under ``fj.jit``: the hand-written-backprop character RNN and MLP
of ``examples/`` (tutorial code that mutates arrays) against NumPy running the same code,
and against a mutation-free version of the same model differentiated by ``fj.grad``.

    python bench/bench_inplace.py [--repeat N]

Each row: the median time of one training step (loss, gradients, parameter update) over
``--repeat`` interleaved rounds, and its speed relative to NumPy.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

import numpy_char_rnn  # noqa: E402
import numpy_mlp  # noqa: E402

import fusejit as fj  # noqa: E402
import fusejit.numpy as fnp  # noqa: E402
from fusejit.tracer.inplace import InputMutationWarning  # noqa: E402

# ---------------------------------------------------------------------------------------
# The same models without mutation, differentiated by fj.grad


def rnn_loss(params: list[Any], inputs: Any, targets: Any, hprev: Any) -> Any:
    wxh, whh, why, bh, by = params
    onehot = fnp.astype(fnp.equal(inputs[:, None], fnp.arange(wxh.shape[1])), np.float64)
    h, loss = hprev, 0.0
    for t in range(inputs.shape[0]):
        h = fnp.tanh(wxh @ onehot[t][:, None] + whh @ h + bh)
        logp = fj.nn.log_softmax(why @ h + by, axis=0)
        loss = loss - fnp.take(logp[:, 0], targets[t])
    return loss, h


def rnn_step_grad(inputs: Any, targets: Any, hprev: Any, params: list[Any], mems: list[Any], lr: float) -> Any:
    (loss, h), grads = fj.value_and_grad(rnn_loss, has_aux=True)(params, inputs, targets, hprev)
    grads = [fnp.clip(g, -5, 5) for g in grads]
    mems = [m + g * g for m, g in zip(mems, grads, strict=True)]
    params = [p - lr * g / fnp.sqrt(m + 1e-8) for p, g, m in zip(params, grads, mems, strict=True)]
    return loss, h, params, mems


def mlp_loss(params: tuple[Any, ...], X: Any, y: Any, reg: float) -> Any:  # noqa: N803
    W, b, W2, b2 = params  # noqa: N806
    hidden = fnp.maximum(0, X @ W + b)
    scores = hidden @ W2 + b2
    logp = fj.nn.log_softmax(scores, axis=1)
    data_loss = -fnp.mean(fnp.take_along_axis(logp, y[:, None], axis=1))
    return data_loss + 0.5 * reg * fnp.sum(W * W) + 0.5 * reg * fnp.sum(W2 * W2)


def mlp_step_grad(X: Any, y: Any, W: Any, b: Any, W2: Any, b2: Any, reg: float, step_size: float) -> Any:  # noqa: N803
    loss, grads = fj.value_and_grad(mlp_loss)((W, b, W2, b2), X, y, reg)
    return (loss,) + tuple(p - step_size * g for p, g in zip((W, b, W2, b2), grads, strict=True))


# ---------------------------------------------------------------------------------------


def _median_times(variants: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    for run in variants.values():
        run()  # compile / warm up
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def _table(title: str, medians: dict[str, float]) -> str:
    base = medians["NumPy (the same in-place code)"]
    lines = [title, f"{'variant':<40} {'median':>10} {'vs NumPy':>9}"]
    for name, t in medians.items():
        lines.append(f"{name:<40} {t * 1e3:>8.3f}ms {base / t:>8.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()

    inputs, targets, hprev, params, mems = numpy_char_rnn.make_problem()
    numpy_step = numpy_char_rnn.train_step
    jit_step = fj.jit(numpy_char_rnn.train_step)
    grad_step = fj.jit(rnn_step_grad)
    want = numpy_step(inputs, targets, hprev, [p.copy() for p in params], [m.copy() for m in mems], 0.1)
    for got in (jit_step(inputs, targets, hprev, params, mems, 0.1), grad_step(inputs, targets, hprev, params, mems, 0.1)):
        diff = max(float(np.max(np.abs(g - w))) for g, w in zip(fj.tree_leaves(got), fj.tree_leaves(want), strict=True))
        assert diff < 1e-9, diff
    print(_table(
        "char-RNN (hidden 100, vocabulary 32, 25 steps, float64): one training step",
        _median_times({
            "NumPy (the same in-place code)": lambda: numpy_step(inputs, targets, hprev, params, mems, 0.1),
            "fj.jit (in-place code, unmodified)": lambda: jit_step(inputs, targets, hprev, params, mems, 0.1),
            "fj.jit(fj.value_and_grad) (no mutation)": lambda: grad_step(inputs, targets, hprev, params, mems, 0.1),
        }, args.repeat),
    ))  # fmt: skip

    X, y, p = numpy_mlp.make_problem()  # noqa: N806
    jit_mlp = fj.jit(numpy_mlp.train_step)
    grad_mlp = fj.jit(mlp_step_grad)
    want = numpy_mlp.train_step(X, y, *[q.copy() for q in p], 1e-3, 1.0)
    for got in (jit_mlp(X, y, *p, 1e-3, 1.0), grad_mlp(X, y, *p, 1e-3, 1.0)):
        diff = max(float(np.max(np.abs(g - w))) for g, w in zip(got, want, strict=True))
        assert diff < 1e-9, diff
    print()
    print(_table(
        "MLP (300 x 2 spiral data, hidden 100, 3 classes, float64): one training step",
        _median_times({
            "NumPy (the same in-place code)": lambda: numpy_mlp.train_step(X, y, *p, 1e-3, 1.0),
            "fj.jit (in-place code, unmodified)": lambda: jit_mlp(X, y, *p, 1e-3, 1.0),
            "fj.jit(fj.value_and_grad) (no mutation)": lambda: grad_mlp(X, y, *p, 1e-3, 1.0),
        }, args.repeat),
    ))  # fmt: skip


if __name__ == "__main__":
    warnings.simplefilter("ignore", InputMutationWarning)  # the steps return what they update
    main()
