"""Code generation: a fusion group -> a kernel in the kernel IR -> a target's source.

Modules: ``exprs.py`` (typed scalar expressions: variables, constants, operators, loads,
math-library calls), ``kernel.py`` (the kernel IR: statements, loop nests over flat
buffers, ``Matmul``; the builder with CSE and loop-invariant hoisting on the nodes),
``elemental.py`` (the elemental emitter: index expressions in, element expressions out),
``rules.py`` (the rule of every primitive: ``CODEGEN_RULES``, keyed by primitive),
``lowering.py`` (``STRATEGIES``: one per ``GroupKind``, each a structural ``supports``
check, which fusion asks, and a ``lower``, in ``loops.py``, ``reductions.py`` and
``contraction.py``, sharing ``common.py``; ``lower_on`` dispatches), ``target.py`` (a
``Target``: rules, strategies, thread model, BLAS, printer; ``CPU`` is the first) and
``cpu/`` (the CPU printer, which alone spells Numba, its vectorizable math library and
the decorator of generated functions). A CUDA target reuses everything but ``cpu/``: it
prints the same kernels, mapping ``parallel`` loops, ``Matmul``, ``ThreadId`` and the math
calls to its own.

Kernels work on flat C-ordered buffers; every size and offset is an int64 argument, while
rank, dtypes, which axes are 1 (the broadcasting pattern) and the layout decisions are in
the source, so a new batch size reuses the compiled kernel; on the CPU, float constants
other than 0, ±1, ±2 and ±0.5 are data too (``constants.py``: a mean's divisor changes
with the batch size). Transcendentals call the
vectorizable ``fusejit.codegen.cpu.mathlib``; float32 stays float32 (typed ``np.float32``
constants, accumulators in the input dtype, int32 arithmetic wrapped back from Numba's
int64); ``error_model='numpy'``; no fast-math flags (float sums vectorize through the
math library's one reassociable add, ``accumulate``).

Threads: the outermost loop of a kernel runs on threads only when its iteration
space has at least ``config parallel_threshold`` elements (default 2**18 = 262,144;
measured in ``bench/bench_backend.py prange``: below ~2**14 elements a serial loop wins,
and every prange adds ~0.5 s of compile time, so only large kernels get one). On the CPU
a kernel whose parallel loop is its last statement runs it in chunks on fusejit's threads
(serial Numba code, ``fusejit.runtime.chunks``); others are ``prange`` loops. A new batch
size that crosses the threshold therefore compiles a new (parallel) kernel.

Legality contract (what ``supports(group)`` accepts; anything else gets a reason string).
Every group: non-empty ops in a valid order; every operand is a group input or defined
by an earlier op of the group; every output is defined by an op of the group; no
``custom_vjp_call`` (inlined before code generation); no ``concatenate``/``pad`` piece
computed from math-library calls in the group (branches stop LLVM's vectorizer). "Loop
ops" below are ELEMENTWISE, LAYOUT and SOURCE ops and ``gather``; a loop op may appear in
several groups (it is recomputed). Lowering refuses a supported group only when its
kernel would exceed ``MAX_KERNEL_SIZE`` statements; the runtime then splits it.

``loop``
    Only loop ops. All outputs have one shape, the iteration space. Values inside are never
    materialized: an op used at several indices (through transposes, slices, gathers) is
    recomputed at each. Outputs may include values that ops of the group also read.
    A pad or concatenate read at a loop index is read without a per-element test: on
    the CPU the loop over that axis is split where its pieces begin (one loop per piece,
    the body emitted once per piece, at most ``MAX_PIECES`` times; never the loop that
    runs on threads), and a piece the loop's range leaves out is not emitted at all.
``horizontal``
    ``parts`` are ``loop`` groups (any shapes) run one after another in one kernel.
``reduce``
    One or more ``reduce_sum/max/min``/``argmax/argmin`` with the same operand shape and
    axes, plus loop ops. Ops that do not depend on a reduction are producers (input
    fusion, read at the input index). Ops that depend on one form the epilogue: loop ops
    in the output space that read reduction results only at the element being written
    (elementwise, or layout ops that keep the linear index such as a keepdims reshape).
    Outputs: values of the output space (shape, or the same shape up to unit axes), or
    producer values of exactly the input shape (stored while reducing). Reductions
    along the innermost axis accumulate in registers (``reduce_rows``); others accumulate
    in the output array in memory order (``reduce_cols``, vectorized over the innermost
    kept axis); full reductions over >= threshold elements split into 64 chunks
    (``reduce_all``). argmax/argmin always use ``reduce_rows``.
``row``
    Reductions (sum/max/min/argmax/argmin) over the same trailing axes of the same operand
    shape ``S``, and loop ops, where a reduction may read other reductions' results
    (softmax, layernorm, log-softmax). One kernel: an outer loop over rows, then one pass
    over the row per level of dependent reductions, then one pass writing the full-row
    outputs. A full-row value needed by several passes whose computation holds a
    transcendental (softmax's ``exp``) is computed once, kept in a per-thread row of
    scratch, and read back by the later passes. Reduction results may be read only at the current row (through
    ``broadcast_in_dim`` over the row axes, or a keepdims reshape + broadcast). Outputs:
    shape ``S`` or the row shape ``S[:-k]`` (up to unit axes).
``matmul``
    Exactly one ``dot_general`` whose operands are group inputs (never fused producers),
    plus loop ops forming an epilogue in the product's shape; ops that depend on the
    product are ELEMENTWISE (so it is read only at the element written). All outputs have
    the product's shape. Floats: one BLAS GEMM per batch (SciPy's BLAS through ``cpu.gemm``, in
    a serial function; operands used as views when their axes are in
    ``[batch, free, contract]`` or ``[batch, contract, free]`` order with contract axes
    increasing, else copied to scratch), then the epilogue as a loop after the GEMM in the
    same function (threaded when large; the GEMM stays outside the threaded loop), in place
    over the product when an output has its dtype.
    Integers: a loop nest (BLAS has no integer GEMM).
``indexing`` with a ``scatter_add``
    One ``scatter_add`` whose result is the only output, plus loop ops feeding its
    operands. Lowered as a zero fill and a serial accumulation loop.
"""

from __future__ import annotations

from fusejit.codegen.kernel import Kernel, Unsupported
from fusejit.codegen.lowering import STRATEGIES, LoweredKernel, Strategy
from fusejit.codegen.target import CPU, Target, can_lower, lower_group, supports

__all__ = ["CPU", "STRATEGIES", "Kernel", "LoweredKernel", "Strategy", "Target", "Unsupported", "can_lower",
           "lower_group", "supports"]
