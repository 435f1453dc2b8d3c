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
