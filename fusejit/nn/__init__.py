"""``fj.nn``: layers, activations, losses and initialisers over ``fusejit.numpy``.

Everything here is ordinary traceable code: under ``jit`` it becomes IR and fuses; on
NumPy arrays it runs eagerly. Layouts follow PyTorch: ``linear`` weights are
``(out_features, in_features)``, ``conv2d`` takes NCHW inputs and OIHW weights.
Parameters are plain pytrees (dicts of arrays).
"""

from __future__ import annotations

from fusejit.nn.conv import avg_pool1d, avg_pool2d, conv1d, conv2d, max_pool1d, max_pool2d
from fusejit.nn.functional import (
    dropout,
    embedding,
    init_embedding,
    init_multi_head_attention,
    logsumexp,
    multi_head_attention,
    one_hot,
)
from fusejit.nn.init import (
    Conv2d,
    Linear,
    glorot_uniform,
    he_normal,
    init_conv2d,
    init_linear,
    init_mlp,
    init_model,
    param_count,
)
from fusejit.nn.layers import (
    accuracy,
    cross_entropy,
    gelu,
    linear,
    log_softmax,
    mse,
    relu,
    sigmoid,
    softmax,
    tanh,
)
from fusejit.nn.normalization import batch_norm, batch_norm_state, layer_norm
from fusejit.nn.recurrent import (
    gru_cell,
    init_gru_cell,
    init_lstm_cell,
    init_rnn_cell,
    lstm_cell,
    rnn,
    rnn_cell,
)

__all__ = [
    "dropout",
    "embedding",
    "init_embedding",
    "init_multi_head_attention",
    "logsumexp",
    "multi_head_attention",
    "one_hot",
    "Conv2d",
    "Linear",
    "accuracy",
    "avg_pool1d",
    "avg_pool2d",
    "batch_norm",
    "batch_norm_state",
    "conv1d",
    "conv2d",
    "cross_entropy",
    "gelu",
    "gru_cell",
    "init_gru_cell",
    "init_lstm_cell",
    "init_rnn_cell",
    "lstm_cell",
    "rnn",
    "rnn_cell",
    "glorot_uniform",
    "he_normal",
    "init_conv2d",
    "init_linear",
    "init_mlp",
    "init_model",
    "layer_norm",
    "linear",
    "log_softmax",
    "max_pool1d",
    "max_pool2d",
    "mse",
    "param_count",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]
