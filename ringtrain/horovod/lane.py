"""A lane: one process set's queue of operations and the thread that runs them in submission order.

Each operation goes through three steps on every rank of the set:

1. agreement (agreement.py): one small MAX allreduce on the lane's control
   communicator; operations that differ raise HorovodMismatchError on every
   rank, naming what differs;
2. the body, on the set's engine communicator (where the tensors travel), or
   for allreduces queued back to back one fused reduction (fusion.py);
3. one MAX allreduce of a failure flag, so that an error on one rank is an
   error on every rank (the others raise a RuntimeError naming it).

The agreement and the flag use a duplicate of the engine communicator: the
body's collectives never pair with them, even when a body fails on one rank
before its collectives (that rank then waits at the flag, and aborts the job
after FAILED_PEER_SECONDS if the others stay inside theirs).

join: a rank whose next operation is ``join`` has no operation of its own. It
keeps taking part in the agreement rounds as "joined"; when the others agree
on an allreduce it learns the description from the lowest active rank and
runs the same collective with a neutral contribution (``JOINED_BODIES``), and
when every rank has joined, each ``join`` returns the last rank to join.
"""
import collections
import threading

from mpi4py import MPI

from ..collectives import waiting
from .agreement import WINDOW, agree, any_rank, chain, mismatch_message
from .fusion import Fusion, batch, fused_body

# How long a rank whose body failed waits for the others at the failure flag before it aborts the job.
FAILED_PEER_SECONDS = 120.0
# While nobody waits on a result, the engine's waits inside ringtrain's collectives test and sleep this long.
POLL_SLEEP_SECONDS = 2e-4

JOINED_BODIES: dict = {}
"""kind -> make(describe) -> body(comm), or a Fusion: what a joined rank runs when the others run that kind."""


class HorovodInternalError(RuntimeError):
    """Horovod's name for a collective that failed; scripts catch it, so the mismatch below is one."""


class HorovodMismatchError(HorovodInternalError):
    """The ranks called different operations: raised on every rank."""


class Operation:
    """One submitted operation and, once done, its result or error."""

    __slots__ = ("handle", "kind", "name", "describe", "body", "sig", "lane", "fusion", "done", "result", "error")

    def __init__(self, handle, kind, name, describe, body, sig, lane, fusion: Fusion | None = None):
        self.handle, self.kind, self.name, self.describe, self.body = handle, kind, name, describe, body
        self.sig, self.lane, self.fusion = sig, lane, fusion
        self.done = threading.Event()
        self.result = self.error = None

    def finish(self, result, error) -> None:
        self.result, self.error = result, error
        self.done.set()

    def what(self) -> str:
        return f"{self.kind} {self.name!r}" if self.name is not None else self.kind


class Lane:
    """The FIFO of one process set and its daemon thread (the same thread name on every rank of the set)."""

    def __init__(self, comm: MPI.Comm, thread_name: str):
        """Collective over ``comm``: made when the set is registered, where every member is, and not at its
        first operation, which a rank that never submits one would never reach (its peers would wait in the
        Dup, where no stall warning can be given)."""
        self.comm = comm
        """The set's engine communicator: bodies talk on it."""
        self.control = comm.Dup()
        """Its duplicate, for the agreement rounds and failure flags."""
        self.names: set = set()
        """Names submitted and not yet synchronized: a second one is refused, as Horovod refuses it."""
        self.waiters = 0
        """Callers blocked in synchronize on this lane: then nobody needs the core, and waits spin."""
        self._queue: collections.deque = collections.deque()
        self._ready = threading.Condition()
        self._stopping = False
        self._taken: list = []  # the operations the thread has taken from the queue and not yet finished
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self.thread.start()

    def put(self, op: Operation) -> None:
        with self._ready:
            self._queue.append(op)
            self._ready.notify()

    def stop(self, timeout: float = 30.0) -> bool:
        """Run what is queued, then end the thread; False if it did not end within ``timeout`` seconds."""
        with self._ready:
            self._stopping = True
            self._ready.notify()
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _urgent(self) -> bool:
        return self.waiters > 0

    def _next(self) -> Operation | None:
        with self._ready:
            while not self._queue and not self._stopping:
                self._ready.wait()
            return self._queue.popleft() if self._queue else None

    def _run(self) -> None:
        control = self.control
        try:
            with waiting.polite(POLL_SLEEP_SECONDS, urgent=self._urgent, spin=POLL_SLEEP_SECONDS):
                while (op := self._next()) is not None:
                    self._taken = [op]
                    try:
                        if op.kind == "join":
                            self._join(control, op)
                        else:
                            self._run_one(control, op)
                    except BaseException as e:  # noqa: BLE001  (an MPI or pickling error: the caller must not wait)
                        for taken in self._taken:
                            if not taken.done.is_set():
                                taken.finish(None, e)
        finally:
            control.Free()

    def _run_one(self, control: MPI.Comm, op: Operation) -> None:
        with self._ready:  # appends from submit must not meet the look at the queue
            ops = batch(op, self._queue, WINDOW)
        verdict = agree(control, chain([o.sig for o in ops]), False, self._urgent, op.what())
        if not verdict.agreed:
            described = control.allgather((op.kind, op.name, op.describe))
            op.finish(None, HorovodMismatchError(mismatch_message(op.kind, op.name, described)))
            return
        ops = self._taken = ops[:verdict.count]
        with self._ready:
            for _ in ops[1:]:
                self._queue.popleft()  # only this thread takes from the queue: these are ops[1:]
        if not verdict.all_active:
            # Some ranks have joined: they run the same collective with neutral data, built from these descriptions.
            mine = control.Get_rank() == verdict.first_active
            control.bcast([(o.kind, o.name, o.describe) for o in ops] if mine else None, root=verdict.first_active)
            if op.kind not in JOINED_BODIES:  # a fused batch is of one kind
                for o in ops:
                    o.finish(None, RuntimeError(f"{o.what()}: not supported while some ranks have called join(); "
                                                f"only {', '.join(sorted(JOINED_BODIES))} are"))
                return
        if op.fusion is None:
            result, error = self._execute(control, op.body, op.what())
            op.finish(result, error)
            return
        what = op.what() if len(ops) == 1 else f"{op.what()} and {len(ops) - 1} fused"
        _, error = self._execute(control, fused_body([o.fusion for o in ops]), what)
        for o in ops:
            o.finish(None if error is not None else o.fusion.result, error)

    def _join(self, control: MPI.Comm, op: Operation) -> None:
        first = True
        while True:
            verdict = agree(control, None, first, self._urgent, "join")
            first = False
            if not verdict.any_active:  # every rank has joined
                op.finish(verdict.joining, None)
                return
            if not verdict.agreed:  # the active ranks disagree: take part in their gather, then go on
                control.allgather(None)
                continue
            described = control.bcast(None, root=verdict.first_active)
            make = JOINED_BODIES.get(described[0][0])
            if make is None:  # the active ranks refuse it too
                continue
            parts = [make(describe) for _, _, describe in described]
            body = fused_body(parts) if isinstance(parts[0], Fusion) else parts[0]
            self._execute(control, body, f"{described[0][0]} {described[0][1]!r} (joined)")

    def _execute(self, control: MPI.Comm, body, what: str):
        """Run ``body``, then agree on whether it failed anywhere; returns (result, error)."""
        result = error = None
        try:
            result = body(self.comm)
        except BaseException as e:  # noqa: BLE001  (handed to synchronize, and told to the other ranks)
            error = e
        deadline = FAILED_PEER_SECONDS if error is not None else None
        if any_rank(control, error is not None, self._urgent, f"the end of {what}", deadline):
            told = control.allgather(None if error is None else f"{type(error).__name__}: {error}")
            if error is None:
                failed = "; ".join(f"rank {r}: {t}" for r, t in enumerate(told) if t is not None)
                error = RuntimeError(f"{what} failed on another rank ({failed})")
            result = None
        return result, error
