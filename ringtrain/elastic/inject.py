"""Faults on purpose, for the elastic tests and trials:
``RINGTRAIN_KILL=RANK:STEP:PHASE[:DELAY_MS[:HOW]][,...]``.

The process whose launcher rank is RANK fails DELAY_MS milliseconds
(default 0) after it enters PHASE of step STEP: one of the trace's span
names (``data``, ``forward``, ``backward``, ``synchronize``, ``optimizer``,
``copies`` under ZeRO, ``checkpoint``, ``eval``). HOW it fails:
  kill   (the default) SIGKILL, as a lost node would vanish;
  stall  the training thread sleeps for good, while the process lives and
         its watchdog answers pings (a hung data read, a wedged device);
  stop   SIGSTOP: the whole process freezes and answers nothing.
A delay lands the kill inside the phase, with its messages in flight.
Several faults, comma-separated, make successive failures (4 -> 3 -> 2).
Unset (always, outside tests), nothing is wrapped.
"""
import os
import signal
import sys
import threading
import time

from ..fault.abort import launcher_rank

VARIABLE = "RINGTRAIN_KILL"


HOWS = ("kill", "stall", "stop")


def armed() -> tuple[int, str, float, str] | None:
    """(step, phase, delay in seconds, how) if this process is to fail, else None. Raises ValueError on a bad
    value."""
    text = os.environ.get(VARIABLE)
    for spec in (text.split(",") if text else []):
        parts = spec.split(":")
        if len(parts) not in (3, 4, 5) or (len(parts) == 5 and parts[4] not in HOWS):
            raise ValueError(f"{VARIABLE}={text!r}: give RANK:STEP:PHASE[:DELAY_MS[:HOW]], comma-separated, HOW "
                             f"one of {', '.join(HOWS)}")
        if int(parts[0]) == launcher_rank():
            delay = float(parts[3]) / 1e3 if len(parts) >= 4 else 0.0
            return int(parts[1]), parts[2], delay, parts[4] if len(parts) == 5 else "kill"
    return None


class KillingTracer:
    """Wraps a tracer: entering span ``phase`` at ``step`` fails this process (``how``) after ``delay`` seconds."""

    def __init__(self, tracer, step: int, phase: str, delay: float, how: str = "kill"):
        self._tracer, self._step, self._phase, self._delay, self._how = tracer, step, phase, delay, how

    def __getattr__(self, name):
        return getattr(self._tracer, name)

    def span(self, name, cat="", **args):
        if name == self._phase and args.get("step") == self._step:
            self._kill()
        return self._tracer.span(name, cat, **args)

    def _kill(self):
        # When it died, for the trials' count of the seconds a failure costs (benchmarks/elastic_trials.py).
        verb = {"kill": "dies", "stall": "stalls", "stop": "freezes"}[self._how]
        sys.stderr.write(f"ringtrain: {VARIABLE}: rank {launcher_rank()} {verb} {self._delay:g} s into "
                         f"{self._phase} of step {self._step}, at {time.time() + self._delay:.3f}\n")
        sys.stderr.flush()
        if self._how == "stall":  # this thread only: the watchdog's goes on answering
            time.sleep(self._delay)
            while True:
                time.sleep(3600)
        sig = signal.SIGKILL if self._how == "kill" else signal.SIGSTOP
        if self._delay <= 0:
            os.kill(os.getpid(), sig)
            return  # (a stopped process goes on here if it is ever continued)
        threading.Timer(self._delay, os.kill, (os.getpid(), sig)).start()


def wrap(tracer):
    """``tracer``, wrapped to kill this process where RINGTRAIN_KILL says; as it is elsewhere."""
    target = armed()
    return tracer if target is None else KillingTracer(tracer, *target)
