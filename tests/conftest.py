"""Shared test set-up.

Multi-rank tests run under ``mpiexec -n N python -m pytest --with-mpi``. Two
guards keep a failure on one rank from hanging the others:

- tests compute everything collectively first and assert only after their last
  collective, or decide collectively with ``all_ranks_agree``;
- a watchdog aborts the whole MPI job, naming the test, if one test runs longer
  than RINGTRAIN_TEST_TIMEOUT seconds (default 120), as a last resort behind the
  ``timeout`` that wraps every mpiexec in tests/run.sh.
"""
import os
import sys
import threading

import pytest

TEST_TIMEOUT = float(os.environ.get("RINGTRAIN_TEST_TIMEOUT", "120"))


@pytest.fixture(autouse=True)
def _watchdog(request):
    if not request.config.getoption("--with-mpi", default=False):
        yield
        return
    from mpi4py import MPI

    def abort():
        sys.stderr.write(f"\nringtrain tests: {request.node.nodeid} ran over {TEST_TIMEOUT:.0f} s on rank "
                         f"{MPI.COMM_WORLD.Get_rank()}; aborting the job so no rank hangs\n")
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(3)

    timer = threading.Timer(TEST_TIMEOUT, abort)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()

