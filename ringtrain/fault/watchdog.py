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

Under --elastic (``evict``) the job need not end: ULFM lets the others go on
without a rank once that rank is gone. So when a deadline passes, the pings
also ask each peer whether it is waiting in a guard. A peer that answers but
waits in none is stalled (in its data, its forward, its backward); one that
does not answer is frozen whole. The lowest rank still waiting decides: it
tells the first kind to leave, and the lowest waiting rank on a frozen one's
machine ends it with SIGKILL (eviction.py); the others' pending collective
then fails, and they shrink and go on (elastic/rounds.py). If nobody is
stalled, a frozen peer has no waiting rank on its machine, or the guard
still has not ended EVICT_SECONDS later, the job aborts as above.
"""
import contextlib
import os
import signal
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

from ..constants import TAG_PING, TAG_PONG, TAG_VERDICT
from ..trace import NO_TRACE
from . import eviction
from .exit_codes import EXIT_TIMEOUT

PROBE_SECONDS = 3.0
GRACE_SECONDS = 2.0  # lets the other survivors print before the abort
EVICT_SECONDS = 10.0  # for an evicted rank to be gone and MPI to say so
LEAVE = -1  # a verdict's count that tells its receiver it is evicted
_UNFINISHED = []  # sends still under way when their watchdog closed (rare): kept, never freed (see _send)


class Watchdog:
    """Aborts the MPI job when a guarded wait outlives its deadline."""

    def __init__(self, comm: MPI.Comm, timeout: float, *, probe: bool = True, evict: bool = False):
        """``probe``: ping the peers when a deadline passes, to name the silent ones. ``evict`` (--elastic,
        under ULFM): end a stalled rank instead of the job. Collective when ``evict``."""
        self.timeout = timeout
        self.trace = NO_TRACE  # each guard is a "wait: ..." span when the trainer traces
        self._comm = comm.Dup()  # its own communicator: pings never match training messages
        self._rank, self._size = self._comm.Get_rank(), self._comm.Get_size()
        # Pings need a second thread in MPI while the main one waits in a collective.
        self._probing = (probe or evict) and MPI.Query_thread() == MPI.THREAD_MULTIPLE and self._size > 1
        self._evict = evict and self._probing
        self._sends = []  # kept until done (_send)
        self._unanswered = []  # pong receives from peers that did not answer
        self.evicted = []  # the ranks this one evicted, as ranks of the launch (COMM_WORLD)
        self._evicting = None  # the guard, with its deadline moved on, while an evicted rank goes
        self._unprobed = "MPI is not in MPI_THREAD_MULTIPLE mode"  # why there is no probe, when there is none
        if self._evict:  # where each rank runs, to end a frozen one; which launch rank it is, to name it
            self._places = self._comm.allgather(eviction.here(MPI.COMM_WORLD.Get_rank()))
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
        self._thread.join(timeout=PROBE_SECONDS + 1)  # a probe under way ends within PROBE_SECONDS
        if self._thread.is_alive():
            return  # still using the communicator (a wait inside MPI): left as it is, not freed under it
        if self._probing or self._evict:
            for req in (self._ping_req, self._verdict_req, *self._unanswered):
                try:
                    req.Cancel()
                    req.Wait()
                except MPI.Exception:
                    if not self._evict:
                        raise  # under ULFM a receive from a dead peer fails: nothing to wait for
            deadline = time.monotonic() + 1.0
            while self._pending_sends() and time.monotonic() < deadline:
                time.sleep(0.01)
            _UNFINISHED.extend(self._sends)  # never freed: see _send
        self._comm.Free()

    def _run(self):
        while not self._stop.wait(0.2):
            verdict = None
            if self._probing:
                try:
                    self._answer_pings()
                    status = MPI.Status()
                    if self._verdict_req.Test(status):
                        verdict = self._verdict[1:1 + max(self._verdict[0], 0)].tolist(), status.Get_source()
                        if self._verdict[0] == LEAVE:
                            self._leave(verdict[1])
                except MPI.Exception:
                    self._stop_probing()
            with self._lock:
                # Decided here, under the lock a guard ends with: a block that ended in time is never called late.
                if self._closed:
                    return
                current = self._current
                late = current is not None and time.monotonic() > current[2]
                evicting = late and self._probing and self._evict and current is not self._evicting
                self._aborting = verdict is not None or (late and not evicting)
            if verdict is not None:
                self._finish(current, verdict[0], f" (reported by rank {verdict[1]})")
            elif evicting:
                self._evict_stalled(current)
            elif late:
                self._finish(current, self._silent(), "")

    def _silent(self) -> list[int] | None:
        """The ranks that do not answer a ping, told to the others; None without a probe."""
        pinged = self._pings(tell=True)
        return None if pinged is None else pinged[0]

    def _pings(self, tell: bool) -> tuple[list[int], list[int]] | None:
        """``_probe(tell)``; None without a probe, or where MPI failed during it (under ULFM: a peer died)."""
        if not self._probing:
            return None
        try:
            return self._probe(tell)
        except MPI.Exception:
            self._stop_probing()
            return None

    def _stop_probing(self) -> None:
        """An MPI error in the pings: raised, except under --elastic, where ULFM reports a peer's death so (a
        wildcard receive fails). There the main thread's wait fails too and ends the round; the deadlines still
        hold, only the pings stop."""
        if not self._evict:
            raise
        self._probing, self._unprobed = False, "a peer died, as MPI reported"

    def _send(self, values: list[int], dest: int, tag: int) -> None:
        # The request is kept until it completes (its few bytes go eagerly, so at once): under ULFM, a send
        # to a peer that died fails, and Open MPI aborts the job if that send's request was freed.
        self._pending_sends()
        self._sends.append(self._comm.Isend(np.array(values, np.int32), dest, tag))

    def _pending_sends(self) -> bool:
        """Drop the sends that completed (or failed: a dead peer's); whether any is left."""
        left = []
        for req in self._sends:
            try:
                if not req.Test():
                    left.append(req)
            except MPI.Exception:
                pass  # its peer is dead: nothing more to do with it
        self._sends = left
        return bool(left)

    def _answer_pings(self):
        status = MPI.Status()
        while self._ping_req.Test(status):
            with self._lock:  # the step this rank waits in a guard at; -1: it waits in none
                waiting = -1 if self._current is None else self._current[1]
            self._send([self._rank, waiting], status.Get_source(), TAG_PONG)
            self._ping_req = self._comm.Irecv(self._ping, MPI.ANY_SOURCE, TAG_PING)

    def _probe(self, tell: bool = True) -> tuple[list[int], list[int]]:
        """(ranks that do not answer a ping within PROBE_SECONDS, ranks that answer but wait in no guard);
        ``tell``: send the silent ones' list to the others."""
        peers = [p for p in range(self._size) if p != self._rank]
        pongs = {p: np.zeros(2, np.int32) for p in peers}
        waits, answered = {}, set()
        try:
            for p in peers:
                waits[p] = self._comm.Irecv(pongs[p], p, TAG_PONG)
                self._send([self._rank], p, TAG_PING)  # a dead peer never takes it
            deadline = time.monotonic() + PROBE_SECONDS
            while time.monotonic() < deadline and len(answered) < len(peers):
                self._answer_pings()
                answered |= {p for p, req in waits.items() if p not in answered and req.Test()}
                time.sleep(0.05)
        finally:  # also when MPI fails here: a receive still posted must never be freed under MPI
            self._unanswered += [req for p, req in waits.items() if p not in answered]  # cancelled at close
        silent = [p for p in peers if p not in answered]
        for p in answered if tell else ():
            self._send([len(silent), *silent], p, TAG_VERDICT)
        return silent, sorted(p for p in answered if pongs[p][1] < 0)

    def _evict_stalled(self, current: tuple) -> None:
        """--elastic: end the stalled ranks, so that the others' collective fails and they go on without them
        (eviction.py); abort the job where that cannot be done. The lowest waiting rank decides."""
        what, step, _, limit = current
        silent, idle = self._pings(tell=False) or (None, None)
        plan = eviction.plan(self._rank, self._places, silent, idle) if silent is not None else None
        abort = plan is not None and plan.actor and (not plan.stalled or bool(plan.unreachable))
        with self._lock:
            if self._closed or self._current is not current:
                return  # the wait ended during the pings: a slow peer, not a stalled one
            self._aborting = abort
            if not abort:  # the evicted must be gone, and MPI must say so, within EVICT_SECONDS; else abort
                self._current = self._evicting = (what, step, time.monotonic() + EVICT_SECONDS, limit)
        if abort:
            far = plan.unreachable
            self._finish(current, silent, "" if not far else f"; {', '.join(map(str, far))} on a machine where no "
                                                              "rank waits, so nothing here can evict them")
            return
        if plan is None:
            return
        for p in plan.mine:  # frozen whole (it answers nothing), on this rank's machine: end it from here
            eviction.end(self._places[p])
        if not plan.actor:
            return
        self.evicted = [self._places[p].launched for p in plan.stalled]
        n = len(plan.stalled)
        sys.stderr.write(f"ringtrain: rank {self._rank}: {what} at step {step} did not finish within {limit:g} s; "
                         f"rank{'s' if n > 1 else ''} {', '.join(map(str, plan.stalled))} stalled; evicting "
                         f"{'them' if n > 1 else 'it'}, and the others go on (--elastic).\n")
        sys.stderr.flush()
        for p in idle:
            self._send([LEAVE], p, TAG_VERDICT)

    def _leave(self, source: int) -> None:
        """Evicted by ``source`` (--elastic): end this process as a lost node would end, so that the others go
        on without it."""
        sys.stderr.write(f"ringtrain: rank {self._rank}: evicted by rank {source}, which waited for this rank "
                         "beyond its deadline; leaving the job.\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def _finish(self, current: tuple | None, silent: list[int] | None, source: str):
        """Print this rank's line and end the job; ``current`` is the guard that was active when it decided."""
        if current:
            what, step, _, limit = current
            doing = f"{what} at step {step} did not finish within {limit:g} s"
        else:
            doing = "stopping"
        if silent is None:
            who = f"(no liveness probe: {self._unprobed})"
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
