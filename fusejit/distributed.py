"""Data-parallel training over MPI: ``fj.distributed``.

Launch the same script on N processes (``mpiexec -n N python train.py``); each process
is a *rank* with its own share of the data and its own copy of the parameters, and the
collectives below combine values across the ranks, inside ``jit``/``grad`` or eagerly,
as JAX's ``psum`` under ``shard_map``/``pmap`` does over one named axis (here: every
process). Started without an MPI launcher the script is one process of rank 0, where
every collective is the identity.

    fj.distributed.initialize()
    params = fj.distributed.broadcast_params(init(rng))         # everyone starts from rank 0's
    for idx in fj.distributed.shard_batches(n, batch_size=256, seed=0, epoch=e):
        params, state, loss = step(params, state, x[idx], y[idx])   # step calls pmean(grads)

Inside a step, ``pmean(grads)`` on the gradients' pytree packs every leaf (per dtype)
into one flat bucket, all-reduces it with one MPI call, and splits it again: fusion puts
the packing into the kernels that produce the gradients and the unpacking into the
optimizer's kernels, so a step sends one message whatever the number of parameters.

The collectives are IR primitives (``fusejit.ir.collectives``): differentiable (the
transpose of ``psum`` is ``psum``, of ``all_gather`` ``psum_scatter``), printed and parsed
like any op, and run by the runtime between kernels with MPI on the host buffers
(``fusejit.runtime.host_ops``). mpi4py is imported only when the process was started by
an MPI launcher (``pip install 'fusejit[distributed]'`` installs it with MPICH).

Every rank must run the same collectives in the same order: under MPI, give
``fj.compare`` and ``Compiled.profile`` an explicit ``repeat`` (by default they choose
it from timings, which differ between ranks).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

import fusejit.numpy as fnp
from fusejit.ir import collectives as C
from fusejit.ir import communicator
from fusejit.ir.communicator import CollectiveMismatchError, CommStats, DistributedSetupError
from fusejit.tracer.pytree import tree_flatten, tree_map, tree_unflatten
from fusejit.tracer.tracing import TracedArray, bind

__all__ = [
    "CollectiveMismatchError",
    "CommStats",
    "DistributedSetupError",
    "all_gather",
    "axis_index",
    "broadcast",
    "broadcast_params",
    "initialize",
    "is_main",
    "pmax",
    "pmean",
    "psum",
    "psum_scatter",
    "rank",
    "shard_batches",
    "size",
    "stats",
]


def initialize() -> None:
    """Joins the job: MPI's world when started by an MPI launcher (``mpiexec``, ``srun``),
    else a job of one process. Collectives call it themselves; call it first to fail
    early (``DistributedSetupError`` when the launcher is MPI's and mpi4py is missing)
    and to install the handler that aborts the whole job when any rank raises."""
    communicator.world()


def rank() -> int:
    """This process's rank, from 0 to ``size() - 1``."""
    return communicator.world().rank


def size() -> int:
    """The number of processes of the job."""
    return communicator.world().size


def is_main() -> bool:
    """Whether this is rank 0 (the one that prints, plots and saves)."""
    return rank() == 0


def stats() -> CommStats:
    """This process's MPI calls and bytes sent so far (``.reset()`` to start over)."""
    return communicator.STATS


# ---------------------------------------------------------------------------------------
# Collectives (pytrees of arrays; inside jit/grad they record IR ops)


def _array(x: Any) -> Any:
    return x if isinstance(x, (TracedArray, np.ndarray)) else np.asarray(x)


def _packed(prim: Any, tree: Any, bucket_bytes: int | None, **attrs: Any) -> Any:
    """``prim`` (elementwise across ranks) applied to every leaf of ``tree`` with one op
    per bucket: leaves of one dtype, flattened and concatenated in the order the trace
    computed them (arguments first, in pytree order), up to ``bucket_bytes`` per bucket
    (None: no limit). In a backward pass the last layer's gradients come first: the first
    bucket is complete, and an overlapped psum of it can start, while the rest of the
    backward pass still runs (PyTorch DDP's buckets follow the reverse order of the
    parameters for the same reason). ``attrs``: the primitive's (psum's ``overlap``)."""
    if bucket_bytes is not None and (isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int | np.integer)
                                     or bucket_bytes < 1):
        raise ValueError(f"bucket_bytes must be a positive number of bytes or None, not {bucket_bytes!r}")
    leaves, treedef = tree_flatten(tree)
    arrays = [_array(a) for a in leaves]
    out: list[Any] = [None] * len(arrays)
    buckets: dict[Any, list[list[int]]] = {}  # dtype -> buckets of leaf indices
    filled: dict[Any, int] = {}  # dtype -> bytes in its last bucket
    for i in _by_production(arrays):
        a = arrays[i]
        dtype = np.dtype(a.dtype)
        nbytes = int(np.prod(a.shape)) * dtype.itemsize
        groups = buckets.setdefault(dtype, [[]])
        if groups[-1] and bucket_bytes is not None and filled[dtype] + nbytes > bucket_bytes:
            groups.append([])
            filled[dtype] = 0
        groups[-1].append(i)
        filled[dtype] = filled.get(dtype, 0) + nbytes
    for groups in buckets.values():
        for members in groups:
            if len(members) == 1:
                out[members[0]] = bind(prim, arrays[members[0]], **attrs)
                continue
            flat = bind(prim, fnp.concatenate([fnp.reshape(arrays[i], (-1,)) for i in members]), **attrs)
            start = 0
            for i in members:
                n = int(np.prod(arrays[i].shape))
                out[i] = fnp.reshape(flat[start:start + n], arrays[i].shape)
                start += n
    return tree_unflatten(treedef, out)


def _by_production(arrays: list[Any]) -> list[int]:
    """The indices of ``arrays`` in the order their trace computed them (arguments and
    concrete arrays first, in pytree order)."""
    position: dict[int, int] = {}
    for a in arrays:
        if isinstance(a, TracedArray) and not position:
            position = {id(v): k for k, op in enumerate(a.trace.builder.ops) for v in op.outputs}
    return sorted(range(len(arrays)), key=lambda i: position.get(id(arrays[i].value), -1)
                  if isinstance(arrays[i], TracedArray) else -1)


def psum(x: Any, *, bucket_bytes: int | None = None, overlap: bool = False) -> Any:
    """The sum over the ranks of every leaf of the pytree ``x`` (numeric arrays or
    scalars), same shapes and dtypes. Leaves of one dtype travel in one message (several
    when ``bucket_bytes`` bounds a message's size). Derivative: ``psum`` of the cotangent
    (the objective is the sum of every rank's). Raises ``CollectiveMismatchError`` when
    the ranks pass different shapes or dtypes.

    ``overlap=True`` (inside ``jit``; Horovod's and PyTorch DDP's behaviour) overlaps
    the communication with the computation: each bucket's MPI call (``Iallreduce``)
    starts as soon as the kernel computing the bucket has run and is waited for only
    before the first kernel reading its result, and the kernels in between (the rest of
    the backward pass: buckets take the leaves in the order they are computed) run
    meanwhile. Same values and the same MPI calls per step (one per bucket, plus its
    agreement check). It pays when a bucket's all-reduce takes a while, there is
    computation left to hide it behind (several buckets, ``bucket_bytes``, of a large
    model) and MPI moves the data in the background: MPICH does so only inside MPI calls
    unless launched with ``MPICH_ASYNC_PROGRESS=1`` (a progress thread per rank, which
    wants a core of its own). Eagerly and in the interpreter it is the ordinary psum."""
    return _packed(C.psum, x, bucket_bytes, overlap=bool(overlap))


def pmean(x: Any, *, bucket_bytes: int | None = None, overlap: bool = False) -> Any:
    """``psum(x) / size()``: the mean over the ranks (float leaves; integer leaves give
    floats, as NumPy's division does); ``bucket_bytes`` and ``overlap`` as ``psum``'s."""
    n = size()
    total = psum(x, bucket_bytes=bucket_bytes, overlap=overlap)
    return total if n == 1 else tree_map(lambda s: s / n, total)


def pmax(x: Any, *, bucket_bytes: int | None = None) -> Any:
    """The elementwise maximum over the ranks of every leaf of ``x``. Derivative: the
    cotangent goes to the ranks holding the maximum, split evenly between ties."""
    return _packed(C.pmax, x, bucket_bytes)


def all_gather(x: Any, axis: int = 0) -> Any:
    """Every rank's leaf concatenated along ``axis`` in rank order: shape ``x.shape``
    with ``axis`` ``size()`` times longer. Derivative: ``psum_scatter``."""
    def one(a: Any) -> Any:
        a = _array(a)
        return bind(C.all_gather, a, axis=_axis(axis, a.ndim, "all_gather"), size=size())

    return tree_map(one, x)


def psum_scatter(x: Any, axis: int = 0) -> Any:
    """The sum over the ranks split into ``size()`` blocks along ``axis`` (whose length
    must divide evenly); rank ``r`` gets block ``r`` (MPI's ``Reduce_scatter_block``).
    Derivative: ``all_gather``."""
    def one(a: Any) -> Any:
        a = _array(a)
        return bind(C.psum_scatter, a, axis=_axis(axis, a.ndim, "psum_scatter"), size=size())

    return tree_map(one, x)


def broadcast(x: Any, root: int = 0) -> Any:
    """Rank ``root``'s value of every leaf of ``x``, on every rank (shapes and dtypes
    must agree). Derivative: the sum of every rank's cotangent, on ``root``; zero on the
    others."""
    if type(root) is not int or root < 0:
        raise ValueError(f"broadcast: root={root!r} must be a rank (an int from 0)")
    return tree_map(lambda a: bind(C.pbroadcast, _array(a), root=root), x)


def axis_index() -> Any:
    """This process's rank as an ``int32`` scalar array (a value inside ``jit``)."""
    return bind(C.axis_index)


def _axis(axis: int, ndim: int, what: str) -> int:
    if type(axis) is not int or not -ndim <= axis < ndim:
        raise ValueError(f"{what}: axis={axis!r} is not an axis of a rank-{ndim} array")
    return axis % ndim


# ---------------------------------------------------------------------------------------
# Set-up helpers


def broadcast_params(params: Any, root: int = 0) -> Any:
    """``params`` (a pytree of arrays) as rank ``root`` has them, on every rank: call it
    once after initializing, so every rank starts from the same parameters whatever its
    own random state. Outside a launcher it returns copies of ``params``."""
    return tree_map(np.asarray, broadcast(tree_map(np.asarray, params), root))


def shard_batches(num_examples: int, batch_size: int, *, seed: int, epoch: int = 0,
                  drop_remainder: bool = True) -> Iterator[np.ndarray]:
    """This rank's example indices for each step of one epoch.

    Every rank draws the same permutation of ``range(num_examples)`` from ``seed`` and
    ``epoch`` (``numpy.random.default_rng([seed, epoch])``) and cuts it into global
    batches of ``batch_size``; rank ``r`` takes the ``r``-th of ``size()`` equal
    contiguous parts of each. So N ranks with ``batch_size`` B see, step by step, the
    examples one process sees with batch B: with ``pmean`` of the gradients of a mean
    loss the runs agree up to summation order. Yields int64 arrays of ``batch_size //
    size()`` indices; a last partial batch is dropped unless ``drop_remainder`` is
    False (then it is split as evenly as possible). Raises ``ValueError`` when
    ``batch_size`` is not a multiple of ``size()``.
    """
    n = size()
    if batch_size < 1 or batch_size % n:
        raise ValueError(f"shard_batches: batch_size={batch_size} must be a positive multiple of the "
                         f"{n} processes of the job")
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
    me = rank()
    for start in range(0, num_examples, batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < batch_size:
            if drop_remainder or len(batch) < n:
                return
            yield np.array_split(batch, n)[me]
            return
        share = batch_size // n
        yield batch[me * share:(me + 1) * share]
