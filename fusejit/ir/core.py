"""The IR's objects: values, ops and functions (typed SSA, immutable).

A ``Function`` has parameters, an ordered body of ``Op``s and results. Each ``Op``
applies one ``Primitive`` to input ``Value``s, defines new output ``Value``s, carries the
primitive's attributes and the user's source line it was traced from. Values compare by
identity: two values are the same only if they are the same object, which is what SSA
means. Passes never mutate a function; they build a new one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from fusejit.ir.types import TensorType

if TYPE_CHECKING:
    from fusejit.ir.primitives import Primitive

AttrValue = Any  # int | float | bool | DType | tuple[AttrValue, ...]


# A scope path (``fj.named_scope``): names of letters, digits and ``_.-<>[]``, joined by
# ``/``. No spaces, ``:`` or ``#``, so that ``# file:line scope`` reads back unambiguously.
SCOPE_PATH = re.compile(r"[\w.\-<>\[\]]+(?:/[\w.\-<>\[\]]+)*\Z")
# How an op was derived from the traced op at its line: by the reverse sweep, or by
# forward mode (``fusejit.ir.transforms.autodiff``).
DERIVATIONS = ("bwd", "jvp")


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """Where in the user's code an op was traced from: ``train.py:12``.

    ``scope`` is the ``fj.named_scope`` path open when it was traced (``block1/conv``,
    empty outside any scope). ``derived`` says how a derivative op came from the op
    traced there, outermost transformation first: ``("bwd",)`` for an op of a reverse
    sweep, ``("jvp", "bwd")`` for the forward-mode derivative of such an op.
    """

    file: str
    line: int
    scope: str = ""
    derived: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.derivation_prefix()}{self.file}:{self.line}{f' {self.scope}' if self.scope else ''}"

    def derivation_prefix(self) -> str:
        """``"bwd of "`` (``"jvp of bwd of "``...) for a derived op, else ``""``."""
        return "".join(f"{d} of " for d in self.derived)

    @property
    def is_backward(self) -> bool:
        """Whether the op belongs to a reverse sweep (of any order)."""
        return "bwd" in self.derived

    def derive(self, how: str) -> SourceLoc:
        """This location for an op derived from this one by ``how`` (``"bwd"``, ``"jvp"``)."""
        assert how in DERIVATIONS, how
        return SourceLoc(self.file, self.line, self.scope, (how, *self.derived))


@dataclass(frozen=True, slots=True, eq=False)
class Value:
    """An SSA value. ``name`` is a hint for the printer (parameters keep theirs)."""

    type: TensorType
    name: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self):  # noqa: ANN201 - DType, kept short for readability at call sites
        return self.type.dtype

    def __repr__(self) -> str:
        return f"Value({self.name or hex(id(self))}: {self.type})"


@dataclass(frozen=True, slots=True, eq=False)
class Op:
    """``outputs = prim(inputs, **attrs)``, traced from ``loc``."""

    prim: Primitive
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    loc: SourceLoc | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.attrs, MappingProxyType):  # a read-only view of a private copy
            object.__setattr__(self, "attrs", MappingProxyType(dict(self.attrs)))

    @property
    def output(self) -> Value:
        """The single output of a single-output op."""
        assert len(self.outputs) == 1, f"{self.prim.name} has {len(self.outputs)} outputs"
        return self.outputs[0]

    def functions(self) -> tuple[Function, ...]:
        """The nested functions the attributes hold (a call's rules, a loop's body, a
        cond's branches), in attribute order."""
        found: list[Function] = []
        for value in self.attrs.values():
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, Function):
                    found.append(v)
        return tuple(found)

    def attr_key(self) -> tuple[tuple[str, AttrValue], ...]:
        """The attributes as a hashable, ordered tuple (for CSE and cache keys)."""
        return tuple(sorted(self.attrs.items()))

    def __repr__(self) -> str:
        return f"Op({self.prim.name}, loc={self.loc})"


@dataclass(frozen=True, slots=True, eq=False)
class Function:
    """A typed SSA function: ``results = body(params)``."""

    name: str
    params: tuple[Value, ...]
    ops: tuple[Op, ...]
    results: tuple[Value, ...]

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def __str__(self) -> str:
        from fusejit.ir.printer import print_function

        return print_function(self)

    def producers(self) -> dict[Value, Op]:
        """Each op-defined value mapped to the op that defines it."""
        return {v: op for op in self.ops for v in op.outputs}

    def users(self) -> dict[Value, list[Op]]:
        """Each value mapped to the ops that read it, in body order."""
        users: dict[Value, list[Op]] = {}
        for op in self.ops:
            for v in op.inputs:
                users.setdefault(v, []).append(op)
        return users

    def replace(self, **changes: Any) -> Function:
        fields = {
            "name": self.name,
            "params": self.params,
            "ops": self.ops,
            "results": self.results,
        }
        fields.update(changes)
        return Function(**fields)
