"""Errors that end a job with one line and an exit code, on every rank at once.

A ``UsageError`` is a mistake in what the user asked for (a flag, a path, a
model factory, a checkpoint that does not fit), not a bug: it is printed as one
line, ``ringtrain: <what> — <what is allowed>``, with no traceback, and the job
exits with code 2 (the shell's and argparse's code for bad usage).

A rank that finds such a mistake alone must not simply leave: its peers would
wait forever in their next collective. ``agree`` settles it the torchtitan
way: one MIN allreduce of "all is well", and if any rank failed, the lowest
failing rank's message is broadcast and every rank raises the same error. An
error raised that way is marked ``agreed``; ``run_or_abort`` exits quietly with
code 2 for those, and aborts the job (still with code 2) for any other.
"""
import numpy as np
from mpi4py import MPI

from .exit_codes import EXIT_DIVERGED, EXIT_USAGE


class OneLineError(Exception):
    """An expected way for a job to end: ``str(e)`` is the message (without ``ringtrain:``), no traceback."""

    exit_code = 1

    def __init__(self, message: str, *, agreed: bool = False):
        super().__init__(message)
        self.agreed = agreed  # True when every rank raises it (see agree)


class UsageError(OneLineError, ValueError):
    """Bad input from the user; exit code 2."""

    exit_code = EXIT_USAGE


class ResourceError(OneLineError):
    """A resource ran out (memory, disk space) or would: exit code 2, like bad input, since a restart
    with the same settings fails the same way. The message names what ran out, where, and what fits."""

    exit_code = EXIT_USAGE


class Diverged(OneLineError):
    """The loss became NaN or inf; exit code 3. Raised on every rank, since the loss is agreed."""

    exit_code = EXIT_DIVERGED


def agree(comm: MPI.Comm, error: BaseException | str | None) -> None:
    """Raise the same UsageError on every rank of ``comm`` if ``error`` is set on any rank. Collective.

    ``error`` is this rank's problem (an exception or its text) or None. The
    message that every rank raises is that of the lowest rank with a problem.

    >>> agree(MPI.COMM_SELF, None)
    """
    ok = np.array([0 if error is not None else 1], dtype=np.int32)
    if comm.Get_size() > 1:
        comm.Allreduce(MPI.IN_PLACE, ok, op=MPI.MIN)
    if ok[0]:
        return
    # Error path only: the lowest failing rank tells the others what went wrong.
    failing = np.array([comm.Get_rank() if error is not None else comm.Get_size()], dtype=np.int32)
    if comm.Get_size() > 1:
        comm.Allreduce(MPI.IN_PLACE, failing, op=MPI.MIN)
    message = str(error) if error is not None else None
    message = comm.bcast(message, root=int(failing[0])) if comm.Get_size() > 1 else message
    raise UsageError(message, agreed=True)


def checked(comm: MPI.Comm, action, *args, **kwargs):
    """``action(*args, **kwargs)`` on every rank; a UsageError on any rank is raised on all of them. Collective."""
    result, error = None, None
    try:
        result = action(*args, **kwargs)
    except UsageError as e:
        error = e
    agree(comm, error)
    return result
