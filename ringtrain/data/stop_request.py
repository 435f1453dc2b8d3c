"""A signal during the start-up read of a corpus stops the read between chunks, instead of minutes later.

PreemptionSignals (fault/signals.py) only records a signal, for the ranks to
agree on at the next step boundary; while rank 0 builds or checks the token
cache there is no step boundary for as long as reading takes, and the other
ranks wait in a broadcast. Inside ``StopRequest`` a handler sits in front of
the installed one: it passes the signal on (so PreemptionSignals records it as
usual) and notes it, and the reading loop's ``check()``, called between files
and between 1 MiB chunks, raises ``Stopped``.

>>> with StopRequest() as stop:
...     stop.check()          # no signal: returns
"""
import signal
import threading

from ..fault.signals import CAUGHT


class Stopped(Exception):
    """A signal asked the read to stop; ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """Notes SIGTERM, SIGUSR1 and SIGINT within the block (main thread only; elsewhere nothing is installed)."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in CAUGHT:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # an ignored signal stays ignored
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum
        previous = self._previous.get(signum)
        if callable(previous):  # PreemptionSignals' handler; a second SIGINT still interrupts at once
            previous(signum, frame)

    def check(self) -> None:
        """Raise Stopped if a signal came since the block began."""
        if self.received is not None:
            raise Stopped(self.received)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False
