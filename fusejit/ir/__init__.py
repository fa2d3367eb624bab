"""The typed SSA IR: types, values, ops, primitives, printer, parser, verifier and
transforms. This package imports nothing from the rest of fusejit."""

from __future__ import annotations

from fusejit.ir.builder import Builder
from fusejit.ir.core import Function, Op, SourceLoc, Value
from fusejit.ir.dtypes import DType
from fusejit.ir.interpreter import IRRuntimeError, run_function
from fusejit.ir.parser import IRParseError, parse
from fusejit.ir.primitives import PRIMITIVES, IRTypeError, Primitive
from fusejit.ir.types import TensorType
from fusejit.ir.verifier import VerificationError, verify

__all__ = [
    "Builder",
    "DType",
    "Function",
    "IRParseError",
    "IRRuntimeError",
    "IRTypeError",
    "Op",
    "PRIMITIVES",
    "Primitive",
    "SourceLoc",
    "TensorType",
    "Value",
    "VerificationError",
    "parse",
    "run_function",
    "verify",
]
