"""The benchmark workloads W1-W10, each written once in plain NumPy style.

Each entry of ``WORKLOADS`` is a ``Workload`` whose ``make(size)`` returns its ``Case``
list (W1 has two: gelu on 4M and 16M elements). A case holds

* ``fn``: the function every NumPy-style configuration runs. Called on NumPy arrays it
  *is* the NumPy eager baseline (real NumPy: ``np.tanh``, ``x.max(...)``, ``@``);
  ``fj.jit(fn)`` traces the very same code. The training steps (W5, W7) call
  ``fj.value_and_grad``, so their eager baseline is fusejit's eager differentiation.
* ``args``: its arguments (NumPy arrays, pytrees of them, Python scalars).
* ``bytes_moved``: for memory-bound cases, the bytes that must cross the memory bus per
  call (each input read once, each output written once); ``None`` otherwise.
* ``carry``: for stateful steps (Adam, training), how the next call's arguments follow
  from this call's arguments and outputs, so that repeated calls train instead of
  recomputing one step (and donated buffers are never reused after donation).
* ``jax`` / ``torch``: optional builders of the same computation in JAX and PyTorch.
  They import lazily; the harness skips them when the library is missing.

Sizes: ``full`` (the issue's sizes, the default), ``small`` (a quick look) and ``tiny``
(tests: correctness of the benchmark itself, not speed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fusejit as fj
import fusejit.nn  # noqa: F401 - fj.nn is a subpackage: import it so the attribute exists

SIZES = ("tiny", "small", "full")
GELU_C = math.sqrt(2.0 / math.pi)  # a Python float: weak, keeps float32 float32 (NEP 50)
LR = 0.01  # SGD learning rate of the training steps


@dataclass
class Port:
    """A workload rewritten for another library: ``fn(*args)`` with that library's arrays.

    ``carry`` as in ``Case``; ``donate_argnums`` for ``jax.jit``. A PyTorch builder gets a
    ``compiled`` flag and applies ``torch.compile`` itself (to the loss only, for the
    training steps, so that autograd runs the compiled backward)."""

    fn: Callable[..., Any]
    args: tuple
    carry: Callable[[tuple, Any], tuple] | None = None
    donate_argnums: tuple[int, ...] = ()


@dataclass
class Case:
    """One benchmark: a function, its arguments and what the harness needs to judge it."""

    key: str  # "W1"
    name: str  # "gelu 4M"
    fn: Callable[..., Any]
    args: tuple
    bytes_moved: int | None = None
    donate_argnums: tuple[int, ...] = ()
    carry: Callable[[tuple, Any], tuple] | None = None
    jax: Callable[[], Port] | None = None
    torch: Callable[[bool], Port] | None = None  # argument: use torch.compile
    note: str = ""
    rtol: float = 2e-3  # float32 results of different libraries agree to about this
    atol: float = 2e-5

    @property
    def label(self) -> str:
        return f"{self.key} {self.name}"


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    make: Callable[[str], list[Case]] = field(repr=False)


def _count(n: int) -> str:
    """``4194304`` -> ``"4M"``, ``4096`` -> ``"4K"``."""
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(np.float32)


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: use one of {', '.join(SIZES)}")


def _torch_tensors(tree: Any) -> Any:
    """The arrays of ``tree`` as torch tensors on torch's default device (the GPU
    benchmark builds its ports under ``torch.device("cuda")``, so that an optimizer holds
    the tensors the step updates)."""
    import torch

    device = torch.get_default_device()
    return fj.tree_map(lambda a: torch.from_numpy(np.array(a)).to(device) if isinstance(a, np.ndarray) else a, tree)


def _torch_port(fn: Callable[..., Any], args: tuple, compiled: bool,
                carry: Callable[[tuple, Any], tuple] | None = None) -> Port:
    """``fn`` on torch tensors copied from ``args``, through ``torch.compile`` if asked."""
    import torch

    return Port(torch.compile(fn) if compiled else fn, _torch_tensors(args), carry=carry)


def _jax_arrays(tree: Any) -> Any:
    import jax.numpy as jnp

    return fj.tree_map(lambda a: jnp.array(a) if isinstance(a, np.ndarray) else a, tree)


# --------------------------------------------------------------------------------------
# W1 gelu (tanh form)


def gelu_fn(xp: Any) -> Callable[[Any], Any]:
    """The tanh-form GELU with ``xp``'s tanh (``np``, ``jax.numpy`` or ``torch``)."""

    def gelu(x: Any) -> Any:
        return 0.5 * x * (1.0 + xp.tanh(GELU_C * (x + 0.044715 * (x * x * x))))

    return gelu


def make_gelu(size: str) -> list[Case]:
    _check_size(size)
    counts = {"tiny": (1000, 4096), "small": (1 << 18, 1 << 20), "full": (4 << 20, 16 << 20)}[size]
    cases = []
    for n in counts:
        x = _f32(_rng(), n, scale=2.0)

        def jax_port(x: np.ndarray = x) -> Port:
            import jax.numpy as jnp

            return Port(gelu_fn(jnp), (jnp.array(x),))

        def torch_port(compiled: bool, x: np.ndarray = x) -> Port:
            import torch

            return _torch_port(gelu_fn(torch), (x,), compiled)

        cases.append(Case("W1", f"gelu {_count(n)}", gelu_fn(np), (x,), bytes_moved=2 * x.nbytes,
                          jax=jax_port, torch=torch_port))
    return cases


# --------------------------------------------------------------------------------------
# W2 softmax, W3 layernorm (over the last axis)


def softmax(x: Any) -> Any:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _jax_softmax(x: Any) -> Any:
    import jax.numpy as jnp

    e = jnp.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _torch_softmax(x: Any) -> Any:
    import torch

    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def _rows_cols(size: str) -> tuple[int, int]:
    _check_size(size)
    return {"tiny": (8, 32), "small": (512, 1024), "full": (4096, 1024)}[size]


def make_softmax(size: str) -> list[Case]:
    rows, cols = _rows_cols(size)
    x = _f32(_rng(), rows, cols, scale=3.0)
    return [Case("W2", f"softmax [{rows},{cols}]", softmax, (x,), bytes_moved=2 * x.nbytes,
                 jax=lambda: Port(_jax_softmax, _jax_arrays((x,))),
                 torch=lambda compiled: _torch_port(_torch_softmax, (x,), compiled))]


def layernorm_fn(xp: Any, eps: float = 1e-5) -> Callable[..., Any]:
    def layernorm(x: Any, gamma: Any, beta: Any) -> Any:
        mean = x.mean(axis=-1, keepdims=True)
        xc = x - mean
        var = (xc * xc).mean(axis=-1, keepdims=True)
        return xc / xp.sqrt(var + eps) * gamma + beta

    return layernorm


def _torch_layernorm(x: Any, gamma: Any, beta: Any) -> Any:
    import torch

    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)
    return xc / torch.sqrt(var + 1e-5) * gamma + beta


def make_layernorm(size: str) -> list[Case]:
    rows, cols = _rows_cols(size)
    rng = _rng()
    x = _f32(rng, rows, cols, scale=2.0) + np.float32(0.5)
    gamma = 1.0 + _f32(rng, cols, scale=0.1)
    beta = _f32(rng, cols, scale=0.1)
    args = (x, gamma, beta)
    moved = 2 * x.nbytes + gamma.nbytes + beta.nbytes

    def jax_port() -> Port:
        import jax.numpy as jnp

        return Port(layernorm_fn(jnp), _jax_arrays(args))

    return [Case("W3", f"layernorm [{rows},{cols}]", layernorm_fn(np), args, bytes_moved=moved,
                 jax=jax_port, torch=lambda compiled: _torch_port(_torch_layernorm, args, compiled))]


# --------------------------------------------------------------------------------------
# W4 Adam update of one parameter


ADAM = {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8}


def adam_fn(xp: Any) -> Callable[..., Any]:
    """One Adam step (as ``fj.optim.adam``): returns ``(p, m, v, count)``; ``count`` is a
    0-d float32 array, so the bias corrections change each step without retracing."""
    lr, b1, b2, eps = ADAM["lr"], ADAM["b1"], ADAM["b2"], ADAM["eps"]

    def adam(p: Any, m: Any, v: Any, g: Any, count: Any) -> Any:
        count = count + 1.0
        step_size = lr * xp.sqrt(1.0 - b2**count) / (1.0 - b1**count)
        eps_hat = eps * xp.sqrt(1.0 - b2**count)
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * (g * g)
        p = p - step_size * m / (xp.sqrt(v) + eps_hat)
        return p, m, v, count

    return adam


def _adam_carry(args: tuple, out: Any) -> tuple:
    p, m, v, count = out
    return (p, m, v, args[3], count)


def _torch_adam(p: Any, m: Any, v: Any, g: Any, count: Any) -> Any:
    """PyTorch's own single-tensor Adam (``torch.optim.Adam(capturable=True)``'s update):
    in place, which is what donating p, m, v amounts to in the other libraries."""
    import torch

    lr, b1, b2, eps = ADAM["lr"], ADAM["b1"], ADAM["b2"], ADAM["eps"]
    with torch.no_grad():
        count.add_(1.0)
        m.lerp_(g, 1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        step_size_neg = -lr / (1.0 - b1**count)
        denom = (v.sqrt() / (torch.sqrt(1.0 - b2**count) * step_size_neg)).add_(eps / step_size_neg)
        p.addcdiv_(m, denom)
    return p, m, v, count


def make_adam(size: str) -> list[Case]:
    _check_size(size)
    n = {"tiny": 1000, "small": 1 << 18, "full": 4 << 20}[size]
    rng = _rng()
    p = _f32(rng, n)
    m = _f32(rng, n, scale=0.1)
    v = np.abs(_f32(rng, n, scale=0.1)) + np.float32(1e-3)
    g = _f32(rng, n, scale=0.1)
    count = np.zeros((), np.float32)
    args = (p, m, v, g, count)
    moved = 7 * p.nbytes  # read p, m, v, g; write p, m, v

    def jax_port() -> Port:
        import jax.numpy as jnp

        return Port(adam_fn(jnp), _jax_arrays(args), carry=_adam_carry, donate_argnums=(0, 1, 2))

    return [Case("W4", f"adam {_count(n)}", adam_fn(np), args, bytes_moved=moved, donate_argnums=(0, 1, 2),
                 carry=_adam_carry, jax=jax_port, torch=lambda compiled: _torch_port(_torch_adam, args, compiled, _adam_carry),
                 note="fusejit/JAX donate p, m, v; PyTorch updates in place (torch.optim's Adam)")]


# --------------------------------------------------------------------------------------
# Training steps: shared pieces


def cross_entropy_fn(xp: Any) -> Callable[[Any, Any], Any]:
    """Mean softmax cross-entropy of ``logits`` [batch, classes] and integer ``labels``."""

    def cross_entropy(logits: Any, labels: Any) -> Any:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        return -xp.take_along_axis(log_probs, labels[:, None], axis=1).mean()

    return cross_entropy


def _torch_cross_entropy(logits: Any, labels: Any) -> Any:
    shifted = logits - logits.amax(dim=1, keepdim=True)
    log_probs = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
    return -log_probs.gather(1, labels[:, None]).mean()


def sgd_step_fn(loss: Callable[..., Any]) -> Callable[..., Any]:
    """``step(params, x, labels) -> (params, loss)``: value_and_grad, then plain SGD."""

    def train_step(params: Any, x: Any, labels: Any) -> Any:
        value, grads = fj.value_and_grad(loss)(params, x, labels)
        return fj.tree_map(lambda p, g: p - LR * g, params, grads), value

    train_step.__name__ = f"{loss.__name__}_train_step"
    return train_step


def _train_carry(args: tuple, out: Any) -> tuple:
    return (out[0], args[1], args[2])


def _jax_train_port(loss: Callable[..., Any], args: tuple) -> Port:
    import jax

    def train_step(params: Any, x: Any, labels: Any) -> Any:
        value, grads = jax.value_and_grad(loss)(params, x, labels)
        return jax.tree_util.tree_map(lambda p, g: p - LR * g, params, grads), value

    return Port(train_step, _jax_arrays(args), carry=_train_carry)


def _torch_train_port(loss: Callable[..., Any], args: tuple, compiled: bool) -> Port:
    """Autograd through ``loss`` (``torch.compile``d when asked: forward and backward
    graphs), then SGD in place; ``params`` is a dict of leaf tensors."""
    import torch

    params, x, labels = _torch_tensors(args)
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    loss_fn = torch.compile(loss) if compiled else loss

    def train_step(params: Any, x: Any, labels: Any) -> Any:
        value = loss_fn(params, x, labels)
        grads = torch.autograd.grad(value, list(params.values()))
        with torch.no_grad():
            for p, g in zip(params.values(), grads, strict=True):
                p.sub_(g, alpha=LR)
        return params, value.detach()

    return Port(train_step, (params, x, labels), carry=_train_carry)


# --------------------------------------------------------------------------------------
# W5 MLP training step: 64-256-256-10, relu, cross-entropy


def mlp_loss_fn(xp: Any) -> Callable[..., Any]:
    cross_entropy = cross_entropy_fn(xp)

    def mlp_loss(params: Any, x: Any, labels: Any) -> Any:
        h = xp.maximum(x @ params["w1"] + params["b1"], 0.0)
        h = xp.maximum(h @ params["w2"] + params["b2"], 0.0)
        return cross_entropy(h @ params["w3"] + params["b3"], labels)

    return mlp_loss


def _torch_mlp_loss(params: Any, x: Any, labels: Any) -> Any:
    h = (x @ params["w1"] + params["b1"]).relu()
    h = (h @ params["w2"] + params["b2"]).relu()
    return _torch_cross_entropy(h @ params["w3"] + params["b3"], labels)


def make_mlp(size: str) -> list[Case]:
    _check_size(size)
    batch = {"tiny": 8, "small": 128, "full": 512}[size]
    sizes = (64, 256, 256, 10)
    rng = _rng()
    params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True), start=1):
        params[f"w{i}"] = _f32(rng, fan_in, fan_out, scale=math.sqrt(2.0 / fan_in))
        params[f"b{i}"] = np.zeros(fan_out, np.float32)
    x = _f32(rng, batch, sizes[0])
    labels = rng.integers(0, sizes[-1], batch)
    args = (params, x, labels)
    return [Case("W5", f"MLP step b{batch}", sgd_step_fn(mlp_loss_fn(np)), args, carry=_train_carry,
                 jax=lambda: _jax_train_port(mlp_loss_fn(_jnp()), args),
                 torch=lambda compiled: _torch_train_port(_torch_mlp_loss, args, compiled),
                 note="64-256-256-10 relu, cross-entropy, grad, SGD; eager = value_and_grad without jit")]


def _jnp() -> Any:
    import jax.numpy as jnp

    return jnp


# --------------------------------------------------------------------------------------
# W7 small CNN training step on 8x8 images


def cnn_loss(params: Any, x: Any, labels: Any) -> Any:
    """conv 3x3 1->16 (pad 1), relu, 2x2 max-pool, linear 256->10, cross-entropy."""
    h = fj.nn.conv2d(x, params["conv_w"], params["conv_b"], padding=1)  # one conv primitive
    h = fj.nn.max_pool2d(np.maximum(h, 0.0), 2)
    logits = fj.nn.linear(h.reshape(h.shape[0], -1), params["fc_w"], params["fc_b"])
    return cross_entropy_fn(np)(logits, labels)


def _jax_cnn_loss(params: Any, x: Any, labels: Any) -> Any:
    import jax
    import jax.numpy as jnp

    h = jax.lax.conv_general_dilated(x, params["conv_w"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    h = jnp.maximum(h + params["conv_b"].reshape(1, -1, 1, 1), 0.0)
    n, c, hh, ww = h.shape
    h = h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
    logits = h.reshape(n, -1) @ params["fc_w"].T + params["fc_b"]
    return cross_entropy_fn(jnp)(logits, labels)


def _torch_cnn_loss(params: Any, x: Any, labels: Any) -> Any:
    import torch.nn.functional as F  # noqa: N812

    h = F.conv2d(x, params["conv_w"], params["conv_b"], padding=1).relu()
    h = F.max_pool2d(h, 2)
    logits = F.linear(h.flatten(1), params["fc_w"], params["fc_b"])
    return _torch_cross_entropy(logits, labels)


def make_cnn(size: str) -> list[Case]:
    _check_size(size)
    batch = {"tiny": 4, "small": 64, "full": 256}[size]
    rng = _rng()
    params = {
        "conv_w": _f32(rng, 16, 1, 3, 3, scale=math.sqrt(2.0 / 9)),
        "conv_b": np.zeros(16, np.float32),
        "fc_w": _f32(rng, 10, 256, scale=math.sqrt(1.0 / 256)),
        "fc_b": np.zeros(10, np.float32),
    }
    x = _f32(rng, batch, 1, 8, 8)
    labels = rng.integers(0, 10, batch)
    args = (params, x, labels)
    return [Case("W7", f"CNN step b{batch}", sgd_step_fn(cnn_loss), args, carry=_train_carry,
                 jax=lambda: _jax_train_port(_jax_cnn_loss, args),
                 torch=lambda compiled: _torch_train_port(_torch_cnn_loss, args, compiled),
                 note="8x8 images, conv 3x3 1->16 (the conv primitive), max-pool, linear; "
                      "eager = value_and_grad without jit")]


# --------------------------------------------------------------------------------------
# W8 the demo's digits CNN (Adam) and W9 a CIFAR-shaped CNN (SGD with momentum)


def _fj_conv(x: Any, w: Any, b: Any) -> Any:
    return fj.nn.conv2d(x, w, b, padding=1)


def _fj_pool(h: Any) -> Any:
    return fj.nn.max_pool2d(h, 2)


def _jax_conv(x: Any, w: Any, b: Any) -> Any:
    import jax

    h = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return h + b.reshape(1, -1, 1, 1)


def _jax_pool(h: Any) -> Any:
    n, c, hh, ww = h.shape
    return h.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))


def conv_net_loss_fn(xp: Any, conv: Callable[..., Any], pool: Callable[..., Any], layers: int) -> Callable[..., Any]:
    """``layers`` x (conv 3x3 pad 1, relu, 2x2 max-pool), then linear, cross-entropy."""
    cross_entropy = cross_entropy_fn(xp)

    def conv_net_loss(params: Any, x: Any, labels: Any) -> Any:
        h = x
        for i in range(layers):
            h = pool(xp.maximum(conv(h, params[f"conv{i}_w"], params[f"conv{i}_b"]), 0.0))
        logits = h.reshape(h.shape[0], -1) @ params["fc_w"].T + params["fc_b"]
        return cross_entropy(logits, labels)

    return conv_net_loss


def _conv_net_params(rng: np.random.Generator, channels: tuple[int, ...], flat: int) -> dict[str, np.ndarray]:
    params = {}
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        params[f"conv{i}_w"] = _f32(rng, cout, cin, 3, 3, scale=math.sqrt(2.0 / (9 * cin)))
        params[f"conv{i}_b"] = np.zeros(cout, np.float32)
    params["fc_w"] = _f32(rng, 10, flat, scale=math.sqrt(1.0 / flat))
    params["fc_b"] = np.zeros(10, np.float32)
    return params


def adam_step_fn(loss: Callable[..., Any], value_and_grad: Any, tree_map: Any, xp: Any,
                 lr: float = 1e-3) -> Callable[..., Any]:
    """``step((params, m, v, t), x, labels) -> (state, loss)``: value_and_grad, then Adam."""

    def train_step(state: Any, x: Any, labels: Any) -> Any:
        params, m, v, t = state
        value, grads = value_and_grad(loss)(params, x, labels)
        t = t + 1.0
        m = tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
        v = tree_map(lambda v, g: 0.999 * v + 0.001 * (g * g), v, grads)
        c1, c2 = 1.0 - 0.9**t, 1.0 - 0.999**t
        params = tree_map(lambda p, m, v: p - lr * (m / c1) / (xp.sqrt(v / c2) + 1e-8), params, m, v)
        return (params, m, v, t), value

    return train_step


def momentum_step_fn(loss: Callable[..., Any], value_and_grad: Any, tree_map: Any,
                     lr: float = LR) -> Callable[..., Any]:
    """``step((params, velocity), x, labels) -> (state, loss)``: SGD with momentum 0.9."""

    def train_step(state: Any, x: Any, labels: Any) -> Any:
        params, velocity = state
        value, grads = value_and_grad(loss)(params, x, labels)
        velocity = tree_map(lambda u, g: 0.9 * u + g, velocity, grads)
        return (tree_map(lambda p, u: p - lr * u, params, velocity), velocity), value

    return train_step


def _jax_tools() -> tuple[Any, Any, Any]:
    import jax

    return jax.value_and_grad, jax.tree_util.tree_map, _jnp()


def _torch_conv_net_loss(layers: int) -> Callable[..., Any]:
    def loss(params: Any, x: Any, labels: Any) -> Any:
        import torch.nn.functional as F  # noqa: N812

        h = x
        for i in range(layers):
            h = F.max_pool2d(F.conv2d(h, params[f"conv{i}_w"], params[f"conv{i}_b"], padding=1).relu(), 2)
        return _torch_cross_entropy(F.linear(h.flatten(1), params["fc_w"], params["fc_b"]), labels)

    return loss


def _torch_optim_port(loss: Callable[..., Any], params: Any, x: Any, labels: Any, compiled: bool,
                      optimizer: str) -> Port:
    """Autograd through ``loss`` and a ``torch.optim`` step (Adam, or SGD with momentum)."""
    import torch

    tparams, tx, tlabels = _torch_tensors((params, x, labels))
    tparams = {k: v.requires_grad_(True) for k, v in tparams.items()}
    loss_fn = torch.compile(loss) if compiled else loss
    if optimizer == "adam":
        opt = torch.optim.Adam(list(tparams.values()), lr=1e-3)
    else:
        opt = torch.optim.SGD(list(tparams.values()), lr=LR, momentum=0.9)

    def train_step(state: Any, x: Any, labels: Any) -> Any:
        """Returns the optimizer state in the NumPy version's structure (for the check)."""
        params = state[0]
        opt.zero_grad(set_to_none=True)
        value = loss_fn(params, x, labels)
        value.backward()
        opt.step()
        slots = {k: opt.state[p] for k, p in params.items()}
        if optimizer == "adam":
            step = next(iter(slots.values()))["step"]
            state = (params, {k: s["exp_avg"] for k, s in slots.items()},
                     {k: s["exp_avg_sq"] for k, s in slots.items()}, step)
        else:
            state = (params, {k: s["momentum_buffer"] for k, s in slots.items()})
        return state, value.detach()

    return Port(train_step, ((tparams,), tx, tlabels), carry=_train_carry)

def make_digits_cnn(size: str) -> list[Case]:
    _check_size(size)
    batch = {"tiny": 4, "small": 64, "full": 64}[size]
    rng = _rng()
    params = _conv_net_params(rng, (1, 32, 64), 64 * 2 * 2)
    zeros = fj.tree_map(np.zeros_like, params)
    state = (params, zeros, fj.tree_map(np.zeros_like, params), np.zeros((), np.float32))
    args = (state, _f32(rng, batch, 1, 8, 8), rng.integers(0, 10, batch))
    loss = conv_net_loss_fn(np, _fj_conv, _fj_pool, 2)

    def jax_port() -> Port:
        vg, tm, jnp = _jax_tools()
        return Port(adam_step_fn(conv_net_loss_fn(jnp, _jax_conv, _jax_pool, 2), vg, tm, jnp), _jax_arrays(args),
                    carry=_train_carry)

    return [Case("W8", f"digits CNN step b{batch}", adam_step_fn(loss, fj.value_and_grad, fj.tree_map, np), args,
                 carry=_train_carry, jax=jax_port,
                 torch=lambda compiled: _torch_optim_port(_torch_conv_net_loss(2), params, args[1], args[2], compiled,
                                                          "adam"),
                 note="the demo's model: 8x8x1, conv 1->32->64 (relu, max-pool each), linear 256->10, Adam")]


def make_cifar_cnn(size: str) -> list[Case]:
    _check_size(size)
    batch = {"tiny": 2, "small": 16, "full": 64}[size]
    side = {"tiny": 8, "small": 32, "full": 32}[size]
    rng = _rng()
    params = _conv_net_params(rng, (3, 32, 64, 128), 128 * (side // 8) ** 2)
    state = (params, fj.tree_map(np.zeros_like, params))
    args = (state, _f32(rng, batch, 3, side, side), rng.integers(0, 10, batch))
    loss = conv_net_loss_fn(np, _fj_conv, _fj_pool, 3)

    def jax_port() -> Port:
        vg, tm, jnp = _jax_tools()
        return Port(momentum_step_fn(conv_net_loss_fn(jnp, _jax_conv, _jax_pool, 3), vg, tm), _jax_arrays(args),
                    carry=_train_carry)

    return [Case("W9", f"CIFAR CNN step b{batch}", momentum_step_fn(loss, fj.value_and_grad, fj.tree_map), args,
                 carry=_train_carry, jax=jax_port, rtol=1e-2, atol=1e-4,
                 torch=lambda compiled: _torch_optim_port(_torch_conv_net_loss(3), params, args[1], args[2], compiled,
                                                          "sgd"),
                 note=f"{side}x{side}x3, conv 3->32->64->128 (relu, max-pool each), linear, SGD momentum 0.9")]


# --------------------------------------------------------------------------------------
# W10 GRU training step: a recurrent network over T steps, one scan (not unrolled)

GRU_INPUT = 32


def gru_loss_fn(xp: Any, scan: Callable[..., Any]) -> Callable[..., Any]:
    """Cross-entropy of a linear head on the last hidden state of a GRU (PyTorch's gate
    equations) run over ``xs`` [T, batch, input] by ``scan`` (``fj.lax.scan`` or
    ``jax.lax.scan``), with ``xp``'s math."""

    def sigmoid(x: Any) -> Any:
        return 1.0 / (1.0 + xp.exp(-x))

    def loss(params: Any, xs: Any, labels: Any) -> Any:
        hidden = params["w_hh"].shape[1]

        def step(h: Any, x: Any) -> Any:
            gi = x @ params["w_ih"].T + params["b_ih"]
            gh = h @ params["w_hh"].T + params["b_hh"]
            r = sigmoid(gi[:, :hidden] + gh[:, :hidden])
            z = sigmoid(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
            n = xp.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
            return (1.0 - z) * n + z * h, None

        h, _ = scan(step, xp.zeros((xs.shape[1], hidden), xs.dtype), xs)
        return cross_entropy_fn(xp)(h @ params["fc_w"].T + params["fc_b"], labels)

    loss.__name__ = "gru_loss"
    return loss


def _torch_gru_loss(params: Any, xs: Any, labels: Any) -> Any:
    """The same model through ``torch.nn.GRU`` (its fused kernels), weights from ``params``."""
    import torch

    hidden = params["w_hh"].shape[1]
    gru = _torch_gru_module(xs.shape[2], hidden)
    weights = {"weight_ih_l0": params["w_ih"], "weight_hh_l0": params["w_hh"], "bias_ih_l0": params["b_ih"],
               "bias_hh_l0": params["b_hh"]}
    _, h = torch.func.functional_call(gru, weights, (xs,))
    return _torch_cross_entropy(h[0] @ params["fc_w"].T + params["fc_b"], labels)


_TORCH_GRUS: dict[tuple[int, int], Any] = {}


def _torch_gru_module(inputs: int, hidden: int) -> Any:
    import torch

    if (inputs, hidden) not in _TORCH_GRUS:
        _TORCH_GRUS[inputs, hidden] = torch.nn.GRU(inputs, hidden)
    return _TORCH_GRUS[inputs, hidden]


def make_gru(size: str) -> list[Case]:
    _check_size(size)
    batch, hidden = {"tiny": (4, 8), "small": (64, 128), "full": (64, 128)}[size]
    lengths = {"tiny": (3,), "small": (16,), "full": (16, 128)}[size]
    cases = []
    for steps in lengths:
        rng = _rng()
        bound = 1.0 / math.sqrt(hidden)  # PyTorch's initialisation
        params = {name: rng.uniform(-bound, bound, shape).astype(np.float32) for name, shape in (
            ("w_ih", (3 * hidden, GRU_INPUT)), ("w_hh", (3 * hidden, hidden)), ("b_ih", (3 * hidden,)),
            ("b_hh", (3 * hidden,)), ("fc_w", (10, hidden)), ("fc_b", (10,)))}
        xs = _f32(rng, steps, batch, GRU_INPUT)
        args = (params, xs, rng.integers(0, 10, batch))

        def jax_port(args: tuple = args) -> Port:
            import jax

            return _jax_train_port(gru_loss_fn(_jnp(), jax.lax.scan), args)

        cases.append(Case("W10", f"GRU step T{steps}", sgd_step_fn(gru_loss_fn(np, fj.lax.scan)), args,
                          carry=_train_carry, jax=jax_port,
                          torch=lambda compiled, args=args: _torch_train_port(_torch_gru_loss, args, compiled),
                          note=f"GRU {GRU_INPUT}->{hidden} over T={steps} (one scan), linear head, cross-entropy, "
                               "SGD; torch: nn.GRU"))
    return cases


# --------------------------------------------------------------------------------------
# W6 per-call overhead


def small_fn(x: Any) -> Any:
    return x * 2 + 1


def make_overhead(size: str) -> list[Case]:
    _check_size(size)
    x = np.arange(16, dtype=np.float32)  # 16 elements at every size: this measures dispatch
    return [Case("W6", "x*2+1 on 16", small_fn, (x,), jax=lambda: Port(small_fn, _jax_arrays((x,))),
                 torch=lambda compiled: _torch_port(small_fn, (x,), compiled),
                 note="per-call overhead: dispatch, argument checks, output allocation")]


WORKLOADS = [
    Workload("W1", "gelu (tanh form), 4M and 16M elements", make_gelu),
    Workload("W2", "softmax over the last axis of [4096,1024]", make_softmax),
    Workload("W3", "layernorm over the last axis of [4096,1024] with gamma/beta", make_layernorm),
    Workload("W4", "Adam update of one 4M parameter (donated p, m, v)", make_adam),
    Workload("W5", "MLP training step, batch 512, 64-256-256-10", make_mlp),
    Workload("W6", "per-call overhead of x*2+1 on 16 elements", make_overhead),
    Workload("W7", "small CNN training step, 8x8 images, batch 256", make_cnn),
    Workload("W8", "the demo's digits CNN training step (Adam), batch 64", make_digits_cnn),
    Workload("W9", "CIFAR-shaped CNN training step (SGD with momentum), batch 64", make_cifar_cnn),
    Workload("W10", "GRU training step, hidden 128, batch 64, T 16 and 128 (fj.lax.scan)", make_gru),
]


def select(names: list[str] | None) -> list[Workload]:
    """The workloads named by key (``W1``, ``w5``) or by a word of their title (``gelu``)."""
    if not names:
        return list(WORKLOADS)
    chosen = []
    for name in names:
        hits = [w for w in WORKLOADS if name.upper() == w.key or name.lower() in w.title.lower()]
        if not hits:
            known = ", ".join(f"{w.key} ({w.title})" for w in WORKLOADS)
            raise SystemExit(f"fusejit bench: unknown workload {name!r}; known: {known}")
        chosen += [w for w in hits if w not in chosen]
    return sorted(chosen, key=WORKLOADS.index)
