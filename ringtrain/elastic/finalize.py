"""Leaving a process whose job lost a rank: Open MPI's MPI_Finalize may wait for the dead one forever.

Its finalize ends with a fence over every process the job started, and
after a death it sometimes never completes (seen here in 1 of 5 trials of
the Open MPI 5.0.11 wheel; reported upstream as open-mpi/ompi#11404). A
survivor that has finished, its output flushed, gains nothing from it, so
``exit`` leaves without it once the job has shrunk. The command line does
that by itself; a script that calls ``fit(..., elastic=True)`` ends with
``ringtrain.elastic.finalize.exit()``.
"""
import os
import sys

shrunk = False
"""Set by rounds.run_rounds when the job shrank in this process."""


def exit(code: int | str | None = 0) -> None:  # noqa: A001 - sys.exit's name, for sys.exit's use
    """``sys.exit(code)``; once the job has shrunk, the same code without MPI_Finalize."""
    if not shrunk:
        sys.exit(code)
    if not isinstance(code, int):  # sys.exit's convention: a message is printed and the status is 1
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
