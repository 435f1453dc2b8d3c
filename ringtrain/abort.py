"""Run a rank's main function so that an uncaught exception ends the whole job.

Without this, a rank that raises exits while its peers wait forever inside a
collective. Like ``python -m mpi4py``, print the traceback with the rank, then
call MPI_Abort, which makes the launcher kill every rank and return non-zero.
"""
import sys
import time
import traceback


def run_or_abort(main, *args) -> int:
    """Return ``main(*args)``; on an uncaught exception, abort the MPI job.

    ``SystemExit`` passes through (a clean, collective exit is the caller's
    business); anything else aborts with exit code 1.
    """
    try:
        return main(*args)
    except SystemExit:
        raise
    except BaseException:
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank() if MPI.Is_initialized() and not MPI.Is_finalized() else "?"
        sys.stderr.write(f"ringtrain: uncaught exception on rank {rank}, aborting the job:\n")
        traceback.print_exc()
        sys.stderr.flush()
        if MPI.Is_initialized() and not MPI.Is_finalized():
            # The launcher forwards our stderr asynchronously, and Abort makes
            # it kill every process, its forwarders included: give the message
            # a moment to get out, or the job may end with nothing said.
            time.sleep(0.5)
            MPI.COMM_WORLD.Abort(1)
        raise
