"""Handing an operation to the engine when this rank may have refused its own arguments.

A rank that finds its arguments wrong (a root outside the process set, splits
that do not fit, a scalar where rows are needed) cannot just raise: its peers
would wait in the operation for ever. So it submits anyway, with the reason in
``describe["refused"]`` and a body that only raises:

- where every rank refused for the same reason, the descriptions agree, every
  body raises, and every rank gets the same error (ValueError, as Horovod
  raises for arguments it checks before enqueueing);
- where only some did, the descriptions differ: the engine raises its
  mismatch error (a RuntimeError) on the ranks that were fine, naming the
  field and each rank's reason, and the refusing ranks raise their own error.

The refusing rank raises at the call, even for ``*_async``: it waits for the
engine to settle the operation first, so that nothing of it is left pending.
"""
import operator

from mpi4py import MPI

from . import engine
from .basics import job


def submit(kind: str, name, describe: dict, body, process_set, problem: str | None = None,
           error: type = ValueError) -> int:
    """``engine.submit`` with this rank's refusal (``problem``, a sentence) folded in; see the module doc.

    Returns the handle where ``problem`` is None; raises ``error(problem)`` otherwise.
    """
    described = dict(describe, refused=problem or "")
    if problem is None:
        return engine.submit(kind, name, described, body, process_set)

    def refuse(comm):
        raise error(problem)

    handle = engine.submit(kind, name, described, refuse, process_set)
    try:
        engine.synchronize(handle)
    except Exception:  # noqa: BLE001  (the peers' account of it; this rank raises its own reason below)
        pass
    raise error(problem)


def root_problem(what: str, root_rank, comm: MPI.Comm) -> str | None:
    """Why ``root_rank`` (a job rank, as Horovod counts roots) cannot be the root on ``comm``, or None."""
    n = job().comm.Get_size()
    if as_rank(root_rank) is None or not 0 <= root_rank < n:
        return f"{what}: root_rank={root_rank!r} is not a rank of the job (0..{n - 1})"
    if set_rank(comm, root_rank) is None:
        return (f"{what}: root_rank={root_rank} is not in the process set, whose job ranks are "
                f"{member_ranks(comm)}")
    return None


def as_rank(value) -> int | None:
    """``value`` as an int if it is an integer (numpy's too, not bool), else None.

    >>> as_rank(2), as_rank(True), as_rank(1.0)
    (2, None, None)
    """
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def set_rank(comm: MPI.Comm, job_rank: int) -> int | None:
    """The rank on ``comm`` (a process set's communicator) of job rank ``job_rank``; None if not a member.

    Horovod counts ranks in the job everywhere, roots of process-set
    operations included; MPI counts them on the communicator.
    """
    whole, part = job().comm.Get_group(), comm.Get_group()
    try:
        r = MPI.Group.Translate_ranks(whole, [job_rank], part)[0]
    finally:
        whole.Free()
        part.Free()
    return None if r == MPI.UNDEFINED else r


def member_ranks(comm: MPI.Comm) -> list[int]:
    """The job ranks of ``comm``'s members, in ``comm``'s order."""
    whole, part = job().comm.Get_group(), comm.Get_group()
    try:
        return list(MPI.Group.Translate_ranks(part, list(range(part.Get_size())), whole))
    finally:
        whole.Free()
        part.Free()
