"""SIGTERM, SIGUSR1 and SIGINT become a request to checkpoint and stop at the next step boundary.

A handler only records the signal: the ranks agree on it at the step boundary
(it rides on the step's loss allreduce), so every rank stops after the same
step even if only one of them was signalled. A second SIGINT interrupts at
once (KeyboardInterrupt, exit code 130), except inside ``deferred()``, the
writing of a checkpoint: there it only sets ``hurried``, and the caller stops
once the checkpoint is safe.
"""
import contextlib
import signal
import threading

import numpy as np
from mpi4py import MPI

from .exit_codes import EXIT_PREEMPTED

CAUGHT = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionSignals:
    """Installs the handlers on construction (main thread only) and restores the old ones on close()."""

    def __init__(self):
        self.received: int | None = None
        self.hurried = False  # a second SIGINT came while deferred
        self._deferring = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in CAUGHT:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            if self._deferring:
                self.hurried = True
                return
            raise KeyboardInterrupt
        self.received = signum

    @contextlib.contextmanager
    def deferred(self):
        """Within the block a second SIGINT sets ``hurried`` instead of interrupting."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


class Preempted(SystemExit):
    """Raised on every rank after the checkpoint that a signal (or --stop-after) asked for."""

    def __init__(self, step: int, reason: str):
        super().__init__(EXIT_PREEMPTED)
        self.step, self.reason = step, reason


def agree_at_step_end(comm, local_loss: float, signum: int | None, timed_due: bool) -> tuple[float, str | None, bool]:
    """One SUM allreduce: the mean loss, the signal any rank received (by name), a timed checkpoint due.

    The training step's loss allreduce carries the signals too, so every rank
    learns of one rank's signal at the same step, for free.
    """
    buf = np.array([local_loss, float(signum is not None), float(signum or 0), float(timed_due)])
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    signalled = None
    if buf[1] > 0:
        mean = buf[2] / buf[1]  # the signal number, if every signalled rank got the same one
        signalled = signal.Signals(int(mean)).name if mean == int(mean) and int(mean) in CAUGHT else "signals"
    return float(buf[0]) / comm.Get_size(), signalled, buf[3] > 0
