"""Recurrent cells and ``rnn``, the loop over a sequence (one ``fj.lax.scan``).

The cells follow PyTorch's equations and parameter layout exactly (``torch.nn.RNNCell``,
``GRUCell``, ``LSTMCell``), so weights load from and compare against PyTorch:
``{"w_ih": (G*H, I), "w_hh": (G*H, H), "b_ih": (G*H,), "b_hh": (G*H,)}`` with the gate
blocks stacked along the first axis in PyTorch's order (G = 1, 3 or 4). A cell is
``cell(params, state, x) -> state`` on one time step: ``x`` is ``(batch, input_size)``,
a state is ``h`` of shape ``(batch, hidden_size)`` (for the LSTM the pair ``(h, c)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

import fusejit.numpy as fnp
from fusejit.nn.layers import sigmoid
from fusejit.nn.scoping import layer_scope
from fusejit.tracer.control_flow import scan

Array = Any
Cell = Callable[[dict, Any, Array], Any]


def _gates(params: dict, h: Array, x: Array) -> tuple[Array, Array]:
    """``x W_ih^T + b_ih`` and ``h W_hh^T + b_hh``: every gate's pre-activations."""
    gi = fnp.matmul(x, fnp.transpose(params["w_ih"])) + params["b_ih"]
    gh = fnp.matmul(h, fnp.transpose(params["w_hh"])) + params["b_hh"]
    return gi, gh


def _split(g: Array, n: int) -> list[Array]:
    size = g.shape[-1] // n
    return [g[..., k * size : (k + 1) * size] for k in range(n)]


@layer_scope("rnn_cell")
def rnn_cell(params: dict, h: Array, x: Array) -> Array:
    """Elman RNN step, ``torch.nn.RNNCell`` with tanh:
    ``h' = tanh(x W_ih^T + b_ih + h W_hh^T + b_hh)``; weights ``(H, I)`` and ``(H, H)``,
    biases ``(H,)``. ``x``: ``(B, I)``, ``h``: ``(B, H)``; returns ``(B, H)`` in their
    dtype."""
    gi, gh = _gates(params, h, x)
    return fnp.tanh(gi + gh)


@layer_scope("gru_cell")
def gru_cell(params: dict, h: Array, x: Array) -> Array:
    """GRU step, ``torch.nn.GRUCell`` (Cho et al. 2014, as PyTorch computes it)::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Weights ``(3H, I)`` and ``(3H, H)``, biases ``(3H,)``, gate blocks in the order r, z,
    n. ``x``: ``(B, I)``, ``h``: ``(B, H)``; returns ``(B, H)``."""
    gi, gh = _gates(params, h, x)
    i_r, i_z, i_n = _split(gi, 3)
    h_r, h_z, h_n = _split(gh, 3)
    r = sigmoid(i_r + h_r)
    z = sigmoid(i_z + h_z)
    n = fnp.tanh(i_n + r * h_n)
    return (1.0 - z) * n + z * h


@layer_scope("lstm_cell")
def lstm_cell(params: dict, state: tuple[Array, Array], x: Array) -> tuple[Array, Array]:
    """LSTM step, ``torch.nn.LSTMCell`` (Hochreiter and Schmidhuber 1997, with a forget
    gate, as PyTorch computes it)::

        i, f, g, o = sigmoid(.), sigmoid(.), tanh(.), sigmoid(.) of x W_ih^T + b_ih + h W_hh^T + b_hh
        c' = f * c + i * g
        h' = o * tanh(c')

    Weights ``(4H, I)`` and ``(4H, H)``, biases ``(4H,)``, gate blocks in the order i, f,
    g, o. ``state`` is ``(h, c)``, each ``(B, H)``; returns ``(h', c')``."""
    h, c = state
    gi, gh = _gates(params, h, x)
    i, f, g, o = _split(gi + gh, 4)
    c = sigmoid(f) * c + sigmoid(i) * fnp.tanh(g)
    return sigmoid(o) * fnp.tanh(c), c


@layer_scope("rnn")
def rnn(cell: Cell, params: dict, xs: Array, h0: Any, reverse: bool = False) -> tuple[Array, Any]:
    """Runs ``cell`` over the time steps of ``xs`` (``(T, B, I)``, time first as PyTorch's
    default ``batch_first=False``) from the state ``h0``, as one ``fj.lax.scan``: the step
    is traced and compiled once whatever ``T``. Returns ``(hs, state)``: every step's
    ``h`` stacked, ``(T, B, H)``, and the final state (``(h, c)`` for the LSTM), like
    ``torch.nn.RNN``/``GRU``/``LSTM``'s ``(output, h_n)``. ``reverse`` runs from the last
    step to the first (``hs[t]`` still belongs to ``xs[t]``)."""

    def step(state: Any, x: Array) -> tuple[Any, Array]:
        state = cell(params, state, x)
        return state, state[0] if isinstance(state, tuple) else state

    state, hs = scan(step, h0, xs, reverse=reverse)
    return hs, state


def _init_cell(rng: np.random.Generator, input_size: int, hidden_size: int, gates: int, dtype: Any) -> dict:
    """PyTorch's initialisation: every weight and bias ``U(-1/sqrt(H), 1/sqrt(H))``."""
    bound = 1.0 / math.sqrt(hidden_size)

    def u(*shape: int) -> np.ndarray:
        return rng.uniform(-bound, bound, shape).astype(dtype)

    n = gates * hidden_size
    return {"w_ih": u(n, input_size), "w_hh": u(n, hidden_size), "b_ih": u(n), "b_hh": u(n)}


def init_rnn_cell(
    rng: np.random.Generator, input_size: int, hidden_size: int, dtype: Any = np.float32
) -> dict:
    """Parameters of ``rnn_cell`` (PyTorch's layout and initialisation)."""
    return _init_cell(rng, input_size, hidden_size, 1, dtype)


def init_gru_cell(
    rng: np.random.Generator, input_size: int, hidden_size: int, dtype: Any = np.float32
) -> dict:
    """Parameters of ``gru_cell`` (PyTorch's layout and initialisation)."""
    return _init_cell(rng, input_size, hidden_size, 3, dtype)


def init_lstm_cell(
    rng: np.random.Generator, input_size: int, hidden_size: int, dtype: Any = np.float32
) -> dict:
    """Parameters of ``lstm_cell`` (PyTorch's layout and initialisation)."""
    return _init_cell(rng, input_size, hidden_size, 4, dtype)
