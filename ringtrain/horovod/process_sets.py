"""Horovod's process sets: subsets of the job's ranks that run collectives of their own, concurrently.

    even = hvd.add_process_set([0, 2])          # on every rank, in the same order
    if even.included():
        hvd.allreduce(t, process_set=even)       # ranks 0 and 2 only

A set is registered at ``hvd.init(process_sets=[...])`` or by
``add_process_set`` (always allowed: Horovod's "dynamic" mode needs no
switch here). Registration is collective over the job and must happen in the
same order on every rank: it numbers the set (``process_set_id``, 0 being
``global_process_set``) and makes the set's engine communicator, on which its
members' operations run in their own lane (engine.py). An operation on a set
that this rank is not in raises ValueError, as Horovod's does.
"""
from mpi4py import MPI

from . import basics
from .engine import _open_lane, _stop_lane

_sets: dict[int, "ProcessSet"] = {}  # process_set_id -> the registered set (0: the global one)
_next_id = 1


class ProcessSet:
    """Some of the job's ranks (a list of ranks, or an mpi4py communicator whose ranks these are).

    >>> ProcessSet([2, 0]).ranks
    [0, 2]
    """

    def __init__(self, ranks_or_comm):
        self.process_set_id: int | None = None
        self.mpi_comm: MPI.Comm | None = None
        self.ranks: list[int] | None = None
        self._comm: MPI.Comm | None = None  # the engine communicator, on members once registered
        if isinstance(ranks_or_comm, MPI.Comm):
            self.mpi_comm = ranks_or_comm
            return
        try:
            ranks = sorted(ranks_or_comm)
        except TypeError:
            raise ValueError(f"ProcessSet: {ranks_or_comm!r} must be a list of ranks or an mpi4py communicator") \
                from None
        if any(isinstance(r, bool) or not isinstance(r, int) for r in ranks) or len(set(ranks)) != len(ranks):
            raise ValueError(f"ProcessSet: ranks={ranks_or_comm!r} must be distinct integers")
        self.ranks = ranks

    def size(self) -> int | None:
        """The number of ranks in the set; None before ``hvd.init``."""
        if not basics.is_initialized():
            return None
        self._registered()
        return len(self.ranks)

    def rank(self) -> int | None:
        """This process's rank within the set; None before ``hvd.init``; ValueError if it is not in the set.

        Operations still name roots by their rank in the job (``hvd.rank()``), as in Horovod.
        """
        if not basics.is_initialized():
            return None
        if not self.included():
            raise ValueError(f"{self}: this process (rank {basics.rank()}) is not part of the process set")
        return self.ranks.index(basics.rank())

    def included(self) -> bool | None:
        """Whether this process is in the set; None before ``hvd.init``."""
        if not basics.is_initialized():
            return None
        self._registered()
        return basics.rank() in self.ranks

    def _registered(self) -> None:
        if self.process_set_id is None or _sets.get(self.process_set_id) is not self:
            raise ValueError(f"{self} is not registered: pass it to hvd.init(process_sets=...) or "
                             "hvd.add_process_set(), on every rank")

    def _engine_comm(self) -> MPI.Comm:
        """The set's engine communicator; ValueError if unregistered or if this rank is not a member."""
        basics.job()
        if self.process_set_id == 0:
            return basics.job().engine
        if not self.included():
            raise ValueError(f"rank {basics.rank()} is not part of {self}; only its members may run its operations")
        return self._comm

    def __repr__(self) -> str:
        return f"ProcessSet(process_set_id={self.process_set_id}, ranks={self.ranks}, mpi_comm={self.mpi_comm})"


global_process_set = ProcessSet([])
"""Every rank of the job (its ranks are filled in by ``hvd.init``)."""
global_process_set.process_set_id = 0


def _init_process_sets(process_sets) -> None:
    """Start from the global set alone, then register ``hvd.init``'s sets in list order.

    "dynamic" (Horovod's switch that allows add_process_set later) changes nothing: it is always allowed here.
    """
    _reset(basics.size())
    _open_lane(0, basics.job().engine)
    if process_sets is None:
        return
    if isinstance(process_sets, str):
        if process_sets != "dynamic":
            raise ValueError(f"hvd.init: process_sets={process_sets!r} must be a list of ProcessSet or 'dynamic'")
        return
    for ps in process_sets:
        if not isinstance(ps, ProcessSet):
            raise ValueError(f"hvd.init: process_sets holds {ps!r}; expected ProcessSet objects")
        add_process_set(ps)


def _shutdown_process_sets() -> None:
    """Unregister every set but the global one, and free their communicators (hvd.shutdown)."""
    _reset(0)


def _reset(size: int) -> None:
    """Forget every set but the global one, whose ranks become the job's."""
    global _next_id
    for ps in list(_sets.values()):
        if ps.process_set_id:
            _free(ps)
    _sets.clear()
    _sets[0] = global_process_set
    global_process_set.ranks = list(range(size))
    _next_id = 1


def add_process_set(process_set) -> ProcessSet:
    """Register ``process_set`` (a ProcessSet or a list of ranks) and return it. Collective over the job.

    Every rank calls it with the same ranks, in the same order of calls.

    >>> import ringtrain.horovod as hvd
    >>> hvd.init(MPI.COMM_SELF); hvd.add_process_set([0])
    Traceback (most recent call last):
    ...
    ValueError: add_process_set: a process set with ranks [0] is registered already (process_set_id 0)
    >>> hvd.shutdown()
    """
    global _next_id
    job = basics.job()
    if not isinstance(process_set, ProcessSet):
        process_set = ProcessSet(process_set)
    if process_set.process_set_id is not None:
        raise ValueError(f"add_process_set: {process_set} is registered already")
    if process_set.mpi_comm is not None:
        # Each rank may hold a different communicator (one of a Split's): its members make the set, and its
        # duplicate (collective over them) is the set's engine communicator.
        group = process_set.mpi_comm.Get_group()
        members = group.Translate_ranks(list(range(group.Get_size())), job.comm.Get_group())
        if any(r == MPI.UNDEFINED for r in members):
            raise ValueError(f"add_process_set: {process_set.mpi_comm} has processes outside the job")
        process_set.ranks = sorted(members)
        process_set._comm = process_set.mpi_comm.Dup()
    else:
        size = job.comm.Get_size()
        if not all(0 <= r < size for r in process_set.ranks):
            raise ValueError(f"add_process_set: ranks={process_set.ranks} must lie in 0..{size - 1}")
        for ps in _sets.values():
            # Only against sets made from ranks: those are alike on every rank, so every rank refuses alike.
            if ps.mpi_comm is None and ps.ranks == process_set.ranks:
                raise ValueError(f"add_process_set: a process set with ranks {process_set.ranks} is registered "
                                 f"already (process_set_id {ps.process_set_id})")
        member = job.comm.Get_rank() in process_set.ranks
        # Collective over the job, in the same order on every rank. On job.state, the main thread's
        # communicator: a Split on job.comm could meet the reducer thread's collectives.
        split = job.state.Split(0 if member else MPI.UNDEFINED, job.comm.Get_rank())
        process_set._comm = split if member else None
    if process_set._comm is not None:
        _open_lane(_next_id, process_set._comm)
    process_set.process_set_id = _next_id
    _sets[_next_id] = process_set
    _next_id += 1
    return process_set


def remove_process_set(process_set: ProcessSet) -> bool:
    """Unregister ``process_set`` after its queued operations ran; False for the global set or an unknown one.

    Collective over the job, like ``add_process_set``.
    """
    basics.job()
    ps_id = process_set.process_set_id
    if not ps_id or _sets.get(ps_id) is not process_set:
        return False
    _free(process_set)
    del _sets[ps_id]
    return True


def _free(ps: ProcessSet) -> None:
    _stop_lane(ps.process_set_id)
    if ps._comm is not None:
        ps._comm.Free()
    # Invalidated as Horovod invalidates a removed set: it no longer names any ranks.
    ps._comm = ps.ranks = ps.mpi_comm = None
    ps.process_set_id = None

