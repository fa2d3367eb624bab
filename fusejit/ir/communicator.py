"""The process group the collective primitives run over: one process, or MPI's world.

The collective primitives (``fusejit.ir.collectives``) mean "combine this value across
every process of the job"; their reference rules, which the interpreter runs and the
runtime's host rules reuse, need the job's processes, so the communicator sits with the
IR at the bottom of the layers. It is chosen once per process by ``world()``:

* launched by an MPI launcher with more than one process (``mpiexec``/``mpirun`` of
  MPICH or Open MPI, Slurm's ``srun --mpi=pmi2|pmix``: the environment names a rank and
  size): ``MpiWorld`` over ``mpi4py``'s ``COMM_WORLD``, imported only then (the
  optional ``distributed`` extra);
* otherwise ``SingleProcess``: rank 0 of 1, where every collective is the identity, so
  the same script runs alone.

Every collective first agrees on what it is about to do: the ranks compare a hash of
its description (kind, dtype, shape, attributes: ``psum f32[4,3]``) with one 16-byte
``Allreduce``; if any rank differs, every rank raises ``CollectiveMismatchError``
listing what each rank called, instead of exchanging mismatched buffers (MPICH then
fails with "message truncated", hangs, or reduces bytes of different meaning). The check
runs at every call, not once per description: whether a process has seen a description
before is its own history, so a check skipped on one rank would meet another rank's
check or data and hang or corrupt the exchange. Its cost is one small-message latency
per collective (a few microseconds between the processes of one machine; gradients
travel in one bucket, so it is one more MPI call per training step).
``FUSEJIT_DISTRIBUTED_CHECKS=0`` (the same on every rank) turns it off.

At exit each rank takes part in one last check, "the end of the program": a rank that
leaves while another still calls collectives (diverging control flow, ``sys.exit`` on
one rank) ends the job with both ranks' positions instead of leaving the other blocked.
``STATS`` counts the MPI calls (checks included) and the payload bytes this process sent.

An all-reduce may also be started now and completed later (``allreduce_start``, then
``Pending.wait``: MPI's ``Iallreduce`` and ``Wait``, for a ``psum`` that overlaps the
kernels after it): its agreement check still runs, blocking, before the start, and it
counts as one call (the wait sends nothing).

Failure: ``MpiWorld`` installs a ``sys.excepthook`` that prints the exception with the
rank and calls ``MPI_Abort``: an exception on one rank ends the whole job instead of
leaving the other ranks blocked in their next collective.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusejit import config

# Environment variables that MPI launchers set in every process they start: the job's
# size (MPICH's Hydra and Slurm's PMI-2: PMI_SIZE; Open MPI: OMPI_COMM_WORLD_SIZE;
# MVAPICH: MV2_COMM_WORLD_SIZE) or, for PMIx launchers, a rank.
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_RANK_ONLY_VARIABLES = ("PMIX_RANK",)
# What a rank that exits compares with the others' (module docstring).
EXIT_DESCRIPTION = "the end of the program (this rank exits)"
# Seconds a failing rank waits, its error written, before MPI_Abort (MpiWorld.abort).
ABORT_GRACE_S = 0.5


class CollectiveMismatchError(RuntimeError):
    """The ranks of a job called different collectives (kind, dtype, shape or
    attributes) at the same point of their programs."""


class DistributedSetupError(RuntimeError):
    """The job cannot run its collectives: MPI is missing, or a program compiled for one
    number of processes runs on another."""


@dataclass
class CommStats:
    """What this process sent: MPI calls (agreement checks included) and payload bytes."""

    calls: int = 0
    bytes_sent: int = 0
    checks: int = 0

    def reset(self) -> None:
        self.calls = self.bytes_sent = self.checks = 0


STATS = CommStats()

# Where the collective this thread runs was traced (``psum at train.py:41``), set by the
# runtime around a host op; a mismatch lists it for every rank. None for eager calls.
CALL_SITE = threading.local()


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process as one of several."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return True
    return any(name in os.environ for name in _RANK_ONLY_VARIABLES)


class Pending:
    """An all-reduce started by ``allreduce_start``: ``wait()`` completes it (its buffer
    holds the result only then); a second ``wait()`` does nothing."""

    __slots__ = ("request",)

    def __init__(self, request: Any = None) -> None:
        self.request = request

    def wait(self) -> None:
        request, self.request = self.request, None
        if request is not None:
            request.Wait()


class SingleProcess:
    """Rank 0 of a job of one process: every collective returns its operand."""

    rank = 0
    size = 1

    def allreduce(self, buf: np.ndarray, op: str, what: str) -> None:
        """Combines ``buf`` over the ranks in place (here: leaves it)."""

    def allreduce_start(self, buf: np.ndarray, op: str, what: str) -> Pending:
        """Starts ``allreduce(buf, op, what)``; ``buf`` must stay untouched until the
        returned ``Pending`` is waited for (here: nothing to wait for)."""
        return Pending()

    def allgather(self, x: np.ndarray, out: np.ndarray, what: str) -> None:
        out[...] = x.reshape(out.shape)

    def reduce_scatter(self, x: np.ndarray, out: np.ndarray, what: str) -> None:
        out[...] = x.reshape(out.shape)

    def bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        """Overwrites ``buf`` with the root's (here: leaves it)."""


class MpiWorld:
    """Collectives on mpi4py's ``COMM_WORLD`` on contiguous NumPy buffers, blocking but
    for ``allreduce_start``, each preceded by the agreement check (module docstring)."""

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise DistributedSetupError(
                "this process was started by an MPI launcher, but mpi4py is not installed: "
                "pip install 'fusejit[distributed]' (mpi4py and an MPI library)"
            ) from e
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._digests: dict[str, int] = {}  # description -> its hash (the descriptions are few)
        self._lock = threading.Lock()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX}
        _install_abort_hook(self)
        self._pid = os.getpid()  # a forked child inherits the exit handler, not the job
        atexit.register(self._agree_at_exit)

    def _agree(self, what: str) -> None:
        """Raises ``CollectiveMismatchError`` on every rank unless all ranks are about to
        run the collective ``what`` (at every call: module docstring)."""
        if not config.LIVE["distributed_checks"]:
            return
        digest = self._digests.get(what)
        if digest is None:
            digest = self._digests[what] = int.from_bytes(hashlib.blake2b(what.encode(), digest_size=7).digest(),
                                                          "little")
        # max(h) == -max(-h) == h on every rank exactly when all ranks' h are equal.
        both = np.array([digest, -digest], dtype=np.int64)
        self.comm.Allreduce(self.MPI.IN_PLACE, both, op=self.MPI.MAX)
        STATS.calls += 1
        STATS.checks += 1
        if both[0] != digest or -both[1] != digest:
            calls = self.comm.allgather((what, getattr(CALL_SITE, "where", None)))
            listing = "; ".join(f"rank {r}: {c}" + (f" ({w})" if w else "") for r, (c, w) in enumerate(calls))
            raise CollectiveMismatchError(
                f"the ranks called different collectives at the same point of their programs "
                f"(a shape or dtype that depends on the rank, or diverging control flow): {listing}"
            )

    def _agree_at_exit(self) -> None:
        """The last check (module docstring; skipped, like every check, when they are
        off); a mismatch here aborts the job: an exception at exit is only printed."""
        if os.getpid() != self._pid or self.MPI.Is_finalized():  # the script finalized MPI itself
            return
        try:
            with self._lock:
                self._agree(EXIT_DESCRIPTION)
        except CollectiveMismatchError as e:
            sys.stderr.write(f"fusejit.distributed: rank {self.rank} of {self.size} is exiting while another "
                             f"rank still runs collectives; aborting the job\n{type(e).__name__}: {e}\n")
            sys.stderr.flush()
            self.abort(1)

    def _sent(self, nbytes: int) -> None:
        STATS.calls += 1
        STATS.bytes_sent += nbytes

    def allreduce(self, buf: np.ndarray, op: str, what: str) -> None:
        with self._lock:
            self._agree(what)
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self._ops[op])
            self._sent(buf.nbytes)

    def allreduce_start(self, buf: np.ndarray, op: str, what: str) -> Pending:
        # The check blocks (the ranks must agree before MPI reads the buffer); the lock
        # keeps a check and its data call adjacent when threads issue collectives.
        with self._lock:
            self._agree(what)
            request = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self._ops[op])
            self._sent(buf.nbytes)
        return Pending(request)

    def allgather(self, x: np.ndarray, out: np.ndarray, what: str) -> None:
        with self._lock:
            self._agree(what)
            self.comm.Allgather(np.ascontiguousarray(x), out)
            self._sent(x.nbytes)

    def reduce_scatter(self, x: np.ndarray, out: np.ndarray, what: str) -> None:
        with self._lock:
            self._agree(what)
            self.comm.Reduce_scatter_block(np.ascontiguousarray(x), out, op=self.MPI.SUM)
            self._sent(x.nbytes)

    def bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        with self._lock:
            self._agree(what)
            self.comm.Bcast(buf, root=root)
            self._sent(buf.nbytes if self.rank == root else 0)

    def abort(self, code: int = 1) -> None:
        # MPI_Abort has mpiexec kill every rank at once, and what the ranks just wrote to
        # their pipes (the error saying why) was sometimes lost with them: give mpiexec a
        # moment to forward it first (this runs only when the job is ending anyway).
        time.sleep(ABORT_GRACE_S)
        self.comm.Abort(code)


def _install_abort_hook(world: MpiWorld) -> None:
    """An uncaught exception on any rank, in its main thread or another one (a data
    loader's: the main thread may wait for it forever), prints it with the rank and
    aborts the job."""
    previous = sys.excepthook

    def report(kind: type[BaseException], value: BaseException | None, tb: Any, where: str) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(f"fusejit.distributed: rank {world.rank} of {world.size} failed{where}; aborting the "
                         f"job\n{text}")
        sys.stderr.flush()

    def hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        report(kind, value, tb, "")
        if kind is KeyboardInterrupt:
            previous(kind, value, tb)
        world.abort(1)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        name = args.thread.name if args.thread is not None else "a thread"
        report(args.exc_type, args.exc_value, args.exc_traceback, f" in thread {name!r}")
        world.abort(1)

    sys.excepthook = hook
    threading.excepthook = thread_hook


_WORLD: SingleProcess | MpiWorld | None = None
_WORLD_LOCK = threading.Lock()


def world() -> SingleProcess | MpiWorld:
    """This process's communicator, chosen on first use (module docstring); raises
    ``DistributedSetupError`` when an MPI launcher started this process and mpi4py is
    missing."""
    global _WORLD
    if _WORLD is None:
        with _WORLD_LOCK:
            if _WORLD is None:
                _WORLD = MpiWorld() if launched_by_mpi() else SingleProcess()
    return _WORLD


def check_size(prim: str, size: int) -> SingleProcess | MpiWorld:
    """The communicator, after checking that it has the ``size`` processes an op's
    shapes were computed for."""
    w = world()
    if w.size != size:
        raise DistributedSetupError(
            f"{prim} was traced for {size} processes but the job has {w.size}: "
            "trace it after fj.distributed.initialize(), under the same launcher"
        )
    return w
