"""Faults on purpose, for the elastic tests and trials: ``RINGTRAIN_KILL=RANK:STEP:PHASE[:DELAY_MS][,...]``.

The process whose launcher rank is RANK kills itself with SIGKILL, as a
lost node would vanish, DELAY_MS milliseconds (default 0) after it enters
PHASE of step STEP: one of the trace's span names (``data``, ``forward``,
``backward``, ``synchronize``, ``optimizer``, ``checkpoint``, ``eval``).
A delay lands the kill inside the phase, with its messages in flight.
Several kills, comma-separated, make successive failures (4 -> 3 -> 2).
Unset (always, outside tests), nothing is wrapped.
"""
import os
import signal
import sys
import threading
import time

from ..fault.abort import launcher_rank

VARIABLE = "RINGTRAIN_KILL"


def armed() -> tuple[int, str, float] | None:
    """(step, phase, delay in seconds) if this process is to die, else None. Raises ValueError on a bad value."""
    text = os.environ.get(VARIABLE)
    for spec in (text.split(",") if text else []):
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"{VARIABLE}={text!r}: give RANK:STEP:PHASE[:DELAY_MS], comma-separated")
        if int(parts[0]) == launcher_rank():
            return int(parts[1]), parts[2], (float(parts[3]) if len(parts) == 4 else 0.0) / 1e3
    return None


class KillingTracer:
    """Wraps a tracer: entering span ``phase`` at ``step`` kills this process after ``delay`` seconds."""

    def __init__(self, tracer, step: int, phase: str, delay: float):
        self._tracer, self._step, self._phase, self._delay = tracer, step, phase, delay

    def __getattr__(self, name):
        return getattr(self._tracer, name)

    def span(self, name, cat="", **args):
        if name == self._phase and args.get("step") == self._step:
            self._kill()
        return self._tracer.span(name, cat, **args)

    def _kill(self):
        # When it died, for the trials' count of the seconds a failure costs (benchmarks/elastic_trials.py).
        sys.stderr.write(f"ringtrain: {VARIABLE}: rank {launcher_rank()} dies {self._delay:g} s into "
                         f"{self._phase} of step {self._step}, at {time.time() + self._delay:.3f}\n")
        sys.stderr.flush()
        if self._delay <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Timer(self._delay, os.kill, (os.getpid(), signal.SIGKILL)).start()


def wrap(tracer):
    """``tracer``, wrapped to kill this process where RINGTRAIN_KILL says; as it is elsewhere."""
    target = armed()
    return tracer if target is None else KillingTracer(tracer, *target)
