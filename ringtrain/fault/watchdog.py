"""Deadlines for collectives: no rank waits forever for a peer that died or stalled.

The training loop wraps each wait for its peers in ``watchdog.guard(what, step)``.
A background thread wakes five times a second. It answers liveness pings from
other ranks (so a rank busy computing still counts as alive), and checks the
deadline. When a deadline passes, the rank pings every peer; those that do not
answer within PROBE_SECONDS are dead or stalled. It sends that verdict to the
survivors, whose watchdogs then report what they were doing, and every
survivor prints one line naming its collective, its step and the silent ranks.
The lowest surviving rank then aborts the job (exit code 76), which also ends
a stalled rank.

Once a watchdog has decided to abort, the job ends with 76, never with 0: the
decision is taken under the same lock with which a guard ends, so a block
that finished in time is never reported; and from then on the main thread is
held wherever it next meets the watchdog (entering or leaving a guard,
``close``) until the abort ends the process, so it cannot finish the run and
exit 0 after the abort line. A watchdog that was closed first decides
nothing: a late verdict from a peer is that peer's to act on.
"""
import contextlib
import os
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

from ..constants import TAG_PING, TAG_PONG, TAG_VERDICT
from ..trace import NO_TRACE
from .exit_codes import EXIT_TIMEOUT

PROBE_SECONDS = 3.0
GRACE_SECONDS = 2.0  # lets the other survivors print before the abort


class Watchdog:
    """Aborts the MPI job when a guarded wait outlives its deadline."""

    def __init__(self, comm: MPI.Comm, timeout: float, *, probe: bool = True):
        """``probe``: ping the peers when a deadline passes, to name the silent ones. Off where MPI itself
        reports a dead peer (ULFM, --elastic): there a pending wildcard receive fails when any peer dies."""
        self.timeout = timeout
        self.trace = NO_TRACE  # each guard is a "wait: ..." span when the trainer traces
        self._comm = comm.Dup()  # its own communicator: pings never match training messages
        self._rank, self._size = self._comm.Get_rank(), self._comm.Get_size()
        # Pings need a second thread in MPI while the main one waits in a collective.
        self._probing = probe and MPI.Query_thread() == MPI.THREAD_MULTIPLE and self._size > 1
        self._lock = threading.Lock()
        self._current = None  # (what, step, deadline, limit)
        self._aborting = False  # set once, under the lock, when this rank decides to abort
        self._closed = False  # set under the lock by close(): no abort is decided after it
        self._stop = threading.Event()
        if self._probing:
            self._ping = np.zeros(1, np.int32)
            self._ping_req = self._comm.Irecv(self._ping, MPI.ANY_SOURCE, TAG_PING)
            self._verdict = np.zeros(self._size + 1, np.int32)
            self._verdict_req = self._comm.Irecv(self._verdict, MPI.ANY_SOURCE, TAG_VERDICT)
        self._thread = threading.Thread(target=self._run, name="ringtrain-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, what: str, step: int, timeout: float | None = None):
        """Abort the job if the block takes longer than ``timeout`` (default: the watchdog's)."""
        limit = self.timeout if timeout is None else timeout
        with self._lock:
            if not self._aborting:
                self._current = (what, step, time.monotonic() + limit, limit)
        self._hold_if_aborting()
        try:
            with self.trace.span(f"wait: {what}", "watchdog", step=step):
                yield
        finally:
            with self._lock:
                if not self._aborting:
                    self._current = None
            # Leaving a block the watchdog already called late must not let the run go on to finish.
            self._hold_if_aborting()

    def _hold_if_aborting(self) -> None:
        """Block for good if this rank is aborting: the watchdog thread ends the process within seconds."""
        with self._lock:
            aborting = self._aborting
        if aborting:
            time.sleep(PROBE_SECONDS + 2 * GRACE_SECONDS + 5)
            os._exit(EXIT_TIMEOUT)  # the abort itself failed: leave with its code all the same

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._hold_if_aborting()  # an abort under way: the process must not exit 0 after its line
        self._stop.set()
        self._thread.join(timeout=2)
        if self._probing:
            for req in (self._ping_req, self._verdict_req):
                req.Cancel()
                req.Wait()
        self._comm.Free()

    def _run(self):
        while not self._stop.wait(0.2):
            verdict = None
            if self._probing:
                self._answer_pings()
                status = MPI.Status()
                if self._verdict_req.Test(status):
                    verdict = self._verdict[1:1 + self._verdict[0]].tolist(), status.Get_source()
            with self._lock:
                # Decided here, under the lock a guard ends with: a block that ended in time is never called late.
                if self._closed:
                    return
                current = self._current
                late = current is not None and time.monotonic() > current[2]
                self._aborting = verdict is not None or late
            if verdict is not None:
                self._finish(current, verdict[0], f" (reported by rank {verdict[1]})")
            elif late:
                self._finish(current, self._probe() if self._probing else None, "")

    def _answer_pings(self):
        status = MPI.Status()
        while self._ping_req.Test(status):
            self._comm.Isend(np.array([self._rank], np.int32), status.Get_source(), TAG_PONG)
            self._ping_req = self._comm.Irecv(self._ping, MPI.ANY_SOURCE, TAG_PING)

    def _probe(self) -> list[int]:
        """Ranks that do not answer a ping within PROBE_SECONDS; tells the others who they are."""
        peers = [p for p in range(self._size) if p != self._rank]
        pongs = {p: np.zeros(1, np.int32) for p in peers}
        waits = {p: self._comm.Irecv(pongs[p], p, TAG_PONG) for p in peers}
        for p in peers:
            self._comm.Isend(np.array([self._rank], np.int32), p, TAG_PING)  # a dead peer never takes it
        answered, deadline = set(), time.monotonic() + PROBE_SECONDS
        while time.monotonic() < deadline and len(answered) < len(peers):
            self._answer_pings()
            answered |= {p for p, req in waits.items() if p not in answered and req.Test()}
            time.sleep(0.05)
        silent = [p for p in peers if p not in answered]
        verdict = np.array([len(silent), *silent], np.int32)
        for p in answered:
            self._comm.Isend(verdict, p, TAG_VERDICT)
        return silent

    def _finish(self, current: tuple | None, silent: list[int] | None, source: str):
        """Print this rank's line and end the job; ``current`` is the guard that was active when it decided."""
        if current:
            what, step, _, limit = current
            doing = f"{what} at step {step} did not finish within {limit:g} s"
        else:
            doing = "stopping"
        if silent is None:
            who = "(no liveness probe: MPI is not in MPI_THREAD_MULTIPLE mode)"
        elif silent:
            who = f"rank{'s' if len(silent) > 1 else ''} {', '.join(map(str, silent))} did not answer (dead or stalled)"
        else:
            who = "every rank answered, so a peer is slow rather than gone"
        sys.stderr.write(f"ringtrain: rank {self._rank}: {doing}; {who}{source}. "
                         f"Aborting the job (exit code {EXIT_TIMEOUT}).\n")
        sys.stderr.flush()
        survivors = [r for r in range(self._size) if r not in (silent or [])]
        if silent is None or self._rank == min(survivors):
            time.sleep(GRACE_SECONDS)
            self._comm.Abort(EXIT_TIMEOUT)
        # The others wait for that abort: exiting first could let the launcher
        # tear the job down before every survivor's line is out. Under a
        # launcher that does not clean up (mpiexec -disable-auto-cleanup) they
        # then leave by themselves.
        time.sleep(GRACE_SECONDS + 3)
        os._exit(EXIT_TIMEOUT)
