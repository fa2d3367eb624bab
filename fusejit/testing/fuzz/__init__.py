"""A differential fuzzer: random NumPy-style programs, run every way fusejit can run them.

A program is a short list of steps, each one line of Python over ``fnp`` (for example
``v2 = fnp.sum(v1, axis=(0, 2), keepdims=True)``). Rendered against ``fusejit.numpy`` it
goes through the tracer exactly as user code does; rendered against ``numpy`` it is the
oracle. Every program runs in these configurations:

=============  ===========================================================================
``numpy``      the oracle: the same source with ``fnp`` bound to ``numpy``
``eager``      ``fusejit.numpy`` on concrete arrays (each primitive's NumPy rule)
``interp``     ``fj.make_ir`` (the traced IR) run by ``fusejit.ir.interpreter``
``interp_opt`` ``fj.jit(f, backend="interpret")``: the optimized IR, interpreted
``unfused``    ``fj.jit(f, fuse=False)``
``fused``      ``fj.jit(f)``
=============  ===========================================================================

Each configuration is compared with NumPy (values, dtype, shape), and ``fused`` with
``unfused`` and ``interp`` with ``eager`` pairwise. Integers and booleans must match
exactly. Floats are compared with a tolerance derived from the program, per element:
a *shadow* run (NumPy again, every float in ``longdouble``) measures how ill-conditioned
the element is; three *perturbed* runs (every rounding op's operands and result moved by
a few ulps: what another evaluation order, FMA contraction or a sum's reassociation may
do) measure how far a valid evaluation may land; a floor grows with the op count. NaN
must match NaN, inf must match inf of the same sign, and a finite oracle value must stay
finite (unless the shadow or a perturbed run says the element is unstable). ``fused``
and ``unfused`` are also called a second time, with the inputs in other memory layouts
(the cached executable): same bits, and the first call's results must stay intact.

Discontinuous operations (comparisons, ``floor``, ``%``, ``//``, ``argmax``, casts to
ints or bools) are only applied to *exact* float values: inputs and what bit-exact
operations (layout, slicing, gathers, ``maximum``, ``abs``, ``where``, ...) make of them,
so every configuration takes the same branch. A failing program is shrunk (steps removed
or bypassed, shapes and layouts simplified) while the failure persists, classified (known
bugs are named), and printed as Python source with its seed::

    python -m fusejit.testing.fuzz --count 2000 --seed 0
    python -m fusejit.testing.fuzz --replay 12345          # one program by its seed

A smooth float64 subset is also differentiated: ``fj.jit(fj.grad(loss))`` against
``fj.grad`` (the interpreter) and against central finite differences of the NumPy run.

Modules: ``programs.py`` (``InputSpec``, ``Step``, ``Program``: inputs and their memory
layouts, rendering to source, the NumPy evaluation and the longdouble shadow run),
``generator.py`` (``Generator``, ``generate``: a random program from a seed),
``checking.py`` (running the configurations, ``Tolerance``, ``compare``, ``check``,
``check_grad``), ``shrinking.py`` (known bugs: ``classify``, ``kind_of``; ``shrink``) and
``driver.py`` (``Summary``, ``report``, ``campaign``, ``parallel_campaign``, ``main``).
"""

from __future__ import annotations

from fusejit.testing.fuzz.checking import (
    CONFIGS,
    PAIRS,
    Mismatch,
    Outcome,
    Result,
    Tolerance,
    check,
    check_grad,
    compare,
    loss_source,
    run_config,
    tolerance,
)
from fusejit.testing.fuzz.driver import CHUNK, Summary, campaign, main, parallel_campaign, report
from fusejit.testing.fuzz.generator import SCALARS, Generator, generate
from fusejit.testing.fuzz.programs import (
    DTYPES,
    LARGE_SIZE,
    LAYOUTS,
    MAX_INT,
    MAX_SIZE,
    SHADOW,
    Evaluation,
    InputSpec,
    Invalid,
    Program,
    Step,
    evaluate,
    lay_out,
    shadow_outputs,
)
from fusejit.testing.fuzz.shrinking import KNOWN_BUGS, classify, kind_of, shrink

# (the shrinker's helpers, which tests/fuzz/test_fuzz.py checks one by one)
from fusejit.testing.fuzz.shrinking import _bypass as _bypass
from fusejit.testing.fuzz.shrinking import _drop_input as _drop_input
from fusejit.testing.fuzz.shrinking import _live_steps as _live_steps

__all__ = [
    "CHUNK",
    "CONFIGS",
    "DTYPES",
    "KNOWN_BUGS",
    "LARGE_SIZE",
    "LAYOUTS",
    "MAX_INT",
    "MAX_SIZE",
    "PAIRS",
    "SCALARS",
    "SHADOW",
    "Evaluation",
    "Generator",
    "InputSpec",
    "Invalid",
    "Mismatch",
    "Outcome",
    "Program",
    "Result",
    "Step",
    "Summary",
    "Tolerance",
    "campaign",
    "check",
    "check_grad",
    "classify",
    "compare",
    "evaluate",
    "generate",
    "kind_of",
    "lay_out",
    "loss_source",
    "main",
    "parallel_campaign",
    "report",
    "run_config",
    "shadow_outputs",
    "shrink",
    "tolerance",
]
