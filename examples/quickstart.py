"""fusejit in one screen: jit a small MLP loss, look at its IR, run it, differentiate it."""

from __future__ import annotations

import numpy as np

import fusejit as fj
import fusejit.numpy as fnp


def loss(params, x, labels):
    h = np.tanh(x @ params["w1"] + params["b1"])  # plain NumPy code traces
    logits = h @ params["w2"]
    logits = logits - logits.max(axis=1, keepdims=True)
    log_probs = logits - fnp.log(fnp.exp(logits).sum(axis=1, keepdims=True))
    return -fnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()


def main() -> None:
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.standard_normal((64, 32)).astype(np.float32) * 0.1,
        "b1": np.zeros(32, np.float32),
        "w2": rng.standard_normal((32, 10)).astype(np.float32) * 0.1,
    }
    x = rng.standard_normal((128, 64)).astype(np.float32)
    labels = rng.integers(0, 10, 128)

    jitted = fj.jit(loss)
    print(jitted.lower(params, x, labels).as_text())
    print("loss (jit):  ", jitted(params, x, labels))
    print("loss (NumPy):", loss(params, x, labels))

    step = fj.jit(fj.value_and_grad(loss))
    lowered = step.lower(params, x, labels)
    print(f"value_and_grad: {len(lowered.traced)} traced ops, {len(lowered.optimized)} optimized, "
          f"{len(lowered.fused.groups)} kernels")
    lr = 0.5
    for i in range(5):
        value, grads = step(params, x, labels)
        params = fj.tree_map(lambda p, g: p - lr * g, params, grads)
        print(f"step {i}: loss {float(value):.4f}")
    print(step.cache_info())


if __name__ == "__main__":
    main()
