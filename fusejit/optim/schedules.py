"""Learning-rate schedules: functions of the step count, as in optax.

A schedule maps the number of updates made so far (a scalar array kept in the
optimizer's state, or a Python number) to a learning rate: the k-th update uses
``schedule(k)``, k from 0. Schedules are traceable, so a jitted update computes its
learning rate inside the step and one compiled step serves every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import fusejit.numpy as fnp

Schedule = Callable[[Any], Any]


def constant(value: float) -> Schedule:
    """``value`` at every step."""
    value = float(value)

    def schedule(count: Any) -> Any:
        return value

    return schedule


def step_decay(init_value: float, step_size: int, gamma: float) -> Schedule:
    """``init_value * gamma ** (count // step_size)`` (``torch.optim.lr_scheduler.StepLR``,
    optax's ``exponential_decay`` with ``staircase=True``)."""
    if step_size <= 0:
        raise ValueError(f"step_decay: step_size must be positive, got {step_size}")

    def schedule(count: Any) -> Any:
        return init_value * fnp.power(float(gamma), fnp.floor_divide(fnp.asarray(count), step_size))

    return schedule


def exponential_decay(init_value: float, rate: float) -> Schedule:
    """``init_value * rate ** count`` (``torch.optim.lr_scheduler.ExponentialLR``)."""

    def schedule(count: Any) -> Any:
        return init_value * fnp.power(float(rate), fnp.asarray(count))

    return schedule


def cosine_decay(init_value: float, decay_steps: int, alpha: float = 0.0, warmup_steps: int = 0) -> Schedule:
    """Linear warmup from 0 to ``init_value`` over ``warmup_steps``, then a cosine from
    ``init_value`` down to ``alpha * init_value`` at step ``decay_steps`` (which counts the
    warmup), constant after: optax's ``warmup_cosine_decay_schedule(0, init_value,
    warmup_steps, decay_steps, alpha * init_value)``; with no warmup, optax's
    ``cosine_decay_schedule(init_value, decay_steps, alpha)``."""
    if decay_steps <= warmup_steps or warmup_steps < 0:
        raise ValueError(f"cosine_decay: need 0 <= warmup_steps < decay_steps, got {warmup_steps}, {decay_steps}")
    span = decay_steps - warmup_steps

    def schedule(count: Any) -> Any:
        count = fnp.asarray(count)
        progress = fnp.minimum(fnp.maximum(count - warmup_steps, 0), span) / span
        cosine = 0.5 * (1.0 + fnp.cos(math.pi * progress))
        decayed = init_value * ((1.0 - alpha) * cosine + alpha)
        if warmup_steps == 0:
            return decayed
        return fnp.where(count < warmup_steps, init_value * (count / warmup_steps), decayed)

    return schedule


def value_at(lr: float | Schedule, count: Any) -> Any:
    """The learning rate of the update made after ``count`` updates."""
    return lr(count) if callable(lr) else lr
