"""The buffer plan: where every intermediate value of an executable lives.

Intermediate values (defined by one kernel, read by later ones, not returned) and the
scratch memory kernels ask for live in one byte arena, allocated once per executable and
reused by every call, so the steady state allocates nothing but the outputs. Offsets
come from value lifetimes: a value defined by step ``s`` never shares memory with a
value still read at ``s``, and a kernel's scratch lives for its step. Values that are
views of others (a reshape needs no kernel on flat buffers) share their source's buffer
and extend its lifetime.

Offsets are assigned greedily by size (Pisarchyk and Lee, "Efficient Memory Management
for Deep Neural Net Inference", 2020, the "greedy by size" offset calculation of
TensorFlow Lite's arena planner): the largest buffer first, each at the lowest offset
where it fits between the buffers already placed whose lifetimes overlap its own (the
smallest such gap that holds it). The earlier plan reused only a dead buffer of exactly
the same (64-byte rounded) size; W9's step (a CIFAR CNN, many sizes of activations and
conv scratch) needed a 90.5 MiB arena with it and 41 MiB with this.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

ALIGN = 64


def _round(n: int) -> int:
    return max(ALIGN, -(-n // ALIGN) * ALIGN)


@dataclass(frozen=True, slots=True)
class Interval:
    """A buffer ``[offset, offset + nbytes)`` in the arena, live from step ``first`` to
    step ``last`` (inclusive)."""

    offset: int
    nbytes: int
    first: int
    last: int


@dataclass
class BufferPlan:
    """Arena offsets of every planned key (a value, or ``(step, k)`` for scratch)."""

    slots: dict[Hashable, Interval] = field(default_factory=dict)
    arena_bytes: int = 0

    def overlapping_live_pairs(self) -> list[tuple[Hashable, Hashable]]:
        """Pairs of keys that share memory while both are live (should be none)."""
        items = list(self.slots.items())
        bad = []
        for i, (ka, a) in enumerate(items):
            for kb, b in items[i + 1 :]:
                share = a.offset < b.offset + b.nbytes and b.offset < a.offset + a.nbytes
                live = a.first <= b.last and b.first <= a.last
                if share and live and a.nbytes and b.nbytes and a is not b:
                    bad.append((ka, kb))
        return bad


@dataclass
class Step:
    """One kernel call: buffers it defines, buffers it reads, scratch it needs."""

    defines: list[tuple[Hashable, int]]  # (key, nbytes)
    reads: list[Hashable]
    scratch: list[tuple[Hashable, int]]


def plan(steps: list[Step], aliases: dict[Hashable, Hashable] | None = None) -> BufferPlan:
    """Offsets for every defined key and scratch buffer of ``steps``. ``aliases`` maps a
    key to the key whose buffer it shares (its lifetime extends the source's)."""
    aliases = aliases or {}

    def root(k: Hashable) -> Hashable:
        while k in aliases:
            k = aliases[k]
        return k

    last_use: dict[Hashable, int] = {}
    first_def: dict[Hashable, int] = {}
    size: dict[Hashable, int] = {}
    for s, step in enumerate(steps):
        for k, n in step.defines:
            first_def.setdefault(root(k), s)
            size[root(k)] = n
            last_use[root(k)] = max(last_use.get(root(k), s), s)
        for k in step.reads:
            r = root(k)
            if r in first_def:
                last_use[r] = max(last_use.get(r, s), s)
    result = BufferPlan()
    wanted: list[tuple[Hashable, int, int, int]] = []  # key, bytes, first step, last step
    for s, step in enumerate(steps):
        wanted += [(k, n, s, s) for k, n in step.scratch]
        wanted += [(root(k), size[root(k)], s, last_use[root(k)]) for k, _ in step.defines if first_def.get(root(k)) == s]
    # Arrays of the placed buffers: one vectorized pass per buffer over those placed before
    # it (a few thousand buffers in an unrolled program: a Python loop over pairs took seconds).
    order = sorted(range(len(wanted)), key=lambda i: (-_round(wanted[i][1]), wanted[i][2]))
    starts, stops, firsts, lasts = (np.zeros(len(wanted), np.int64) for _ in range(4))
    count = 0
    for i in order:
        key, nbytes, first, last = wanted[i]
        if key in result.slots:  # a value defined twice in one step
            continue
        live = (firsts[:count] <= last) & (lasts[:count] >= first)
        offset = _lowest_fit(starts[:count][live], stops[:count][live], _round(nbytes))
        result.slots[key] = Interval(offset, nbytes, first, last)
        starts[count], stops[count], firsts[count], lasts[count] = offset, offset + _round(nbytes), first, last
        count += 1
    result.arena_bytes = int(stops[:count].max()) if count else 0
    for k in aliases:
        r = root(k)
        if r in result.slots:
            result.slots[k] = result.slots[r]
    return result


def _lowest_fit(starts: np.ndarray, stops: np.ndarray, nbytes: int) -> int:
    """The offset of the smallest gap of at least ``nbytes`` between the buffers
    ``[starts, stops)`` (those live beside the one to place), or past the last of them."""
    if not len(starts):
        return 0
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], np.maximum.accumulate(stops[order])  # the end of all before
    gaps = starts - np.concatenate(([0], ends[:-1]))
    fits = np.flatnonzero(gaps >= nbytes)
    if not len(fits):
        return int(ends[-1])
    best = fits[np.argmin(gaps[fits])]
    return int(ends[best - 1]) if best else 0
