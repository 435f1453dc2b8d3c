"""SIGTERM, SIGUSR1 and SIGINT become a request to checkpoint and stop at the next step boundary.

A handler only records the signal: the ranks agree on it at the step boundary
(it rides on the step's loss allreduce), so every rank stops after the same
step even if only one of them was signalled. A second SIGINT interrupts at once.
"""
import signal
import threading

CAUGHT = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class PreemptionSignals:
    """Installs the handlers on construction (main thread only) and restores the old ones on close()."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in CAUGHT:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
