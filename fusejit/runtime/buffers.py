"""The buffer plan: where every intermediate value of an executable lives.

Intermediate values (defined by one kernel, read by later ones, not returned) and the
scratch memory kernels ask for live in one byte arena, allocated once per executable and
reused by every call, so the steady state allocates nothing but the outputs. Offsets
come from value lifetimes: a buffer whose value is dead is reused by a later value of
the same (64-byte rounded) size; a value defined by step ``s`` never shares memory with
a value still read at ``s``. Values that are views of others (a reshape needs no kernel
on flat buffers) share their source's buffer and extend its lifetime.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

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
    free: dict[int, list[int]] = {}
    top = 0

    def take(nbytes: int) -> int:
        nonlocal top
        rounded = _round(nbytes)
        if free.get(rounded):
            return free[rounded].pop()
        offset = top
        top += rounded
        return offset

    for s, step in enumerate(steps):
        for k, n in step.scratch:
            result.slots[k] = Interval(take(n), n, s, s)
        for k, _ in step.defines:
            r = root(k)
            if r in result.slots or first_def.get(r) != s:
                continue
            result.slots[r] = Interval(take(size[r]), size[r], s, last_use[r])
        for k, n in step.scratch:
            free.setdefault(_round(n), []).append(result.slots[k].offset)
        for r, last in last_use.items():
            if last == s and r in result.slots:
                free.setdefault(_round(result.slots[r].nbytes), []).append(result.slots[r].offset)
    for k in aliases:
        r = root(k)
        if r in result.slots:
            result.slots[k] = result.slots[r]
    result.arena_bytes = top
    return result
