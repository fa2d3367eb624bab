"""Small models the fusion and backend tests share: the mission's fusion patterns."""

from __future__ import annotations

import math

import fusejit as fj
import fusejit.nn as nn
import fusejit.numpy as fnp


def gelu(x):
    return 0.5 * x * (1.0 + fnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layernorm(x, gamma, beta):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / fnp.sqrt(var + 1e-5) * gamma + beta


def adam_step(p, m, v, g):
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    return p - 0.001 * m / (fnp.sqrt(v) + 1e-8), m, v


def mlp_train_step(params, x, labels):
    """Forward, backward and SGD update of an MLP given as a list of linear layers."""

    def loss(params):
        h = x
        for i, p in enumerate(params):
            h = nn.linear(h, p["w"], p["b"])
            h = nn.relu(h) if i < len(params) - 1 else h
        return nn.cross_entropy(h, labels)

    value, grads = fj.value_and_grad(loss)(params)
    return value, fj.tree_map(lambda p, g: p - 0.1 * g, params, grads)
