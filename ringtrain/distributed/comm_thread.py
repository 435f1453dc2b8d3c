"""Each process group's communication thread: its collectives run in call order, in the background.

``async_op=True`` returns at once with a work object; the collective runs
here, so DDP's buckets overlap backward and FSDP2 prefetches, as on NCCL's
stream. One thread per group keeps the order per group (FIFO, as NCCL and
gloo do) while groups stay independent of each other. The thread waits for
MPI politely (collectives/waiting.py): it spins for the first ``SPIN_S`` of
each collective, so a small one answers at once, then sleeps between polls
(RINGTRAIN_POLL_SLEEP_US, 200 us by default, as the GradientReducer's thread),
so a long one leaves the core to the computation it overlaps; while a caller
blocks in ``Work.wait`` nothing computes beside it, so the thread spins.

A collective that fails on this rank fails its work (``wait`` raises), and
every later one on the group fails at once naming it: after a broken
collective the group's ranks no longer agree on which message is which.

Every collective runs under the group's watchdog (fault/watchdog.py) with
the group's timeout (``init_process_group(timeout=...)``; torch's default is
30 minutes): when one outlives it, the rank pings its peers, every survivor
prints one line naming the collective and the ranks that did not answer, and
the job is aborted with exit code 76, as in ringtrain's own training.
"""
import contextlib
import queue
import threading

import torch
import torch.distributed as dist

from .. import environment
from ..collectives.waiting import polite

SPIN_S = 200e-6  # spin this long before sleeping: a small collective completes without a sleep


def sleep_between_polls() -> float:
    """Seconds between polls after the spin: RINGTRAIN_POLL_SLEEP_US, as for the GradientReducer's thread."""
    return environment.value("RINGTRAIN_POLL_SLEEP_US") * 1e-6


class Work(dist.Work):
    """A collective's handle: ``wait`` raises the collective's error (torch's future-wrapping work drops it)."""

    def __init__(self, future: torch.futures.Future, thread: "CommThread | None" = None):
        super().__init__()
        self._future, self._thread = future, thread
        # Waited on instead of the future: torch's Future.wait holds the GIL while it blocks, so the
        # communication thread, which needs the GIL to finish the collective, would wait for the
        # interpreter's switch interval (5 ms) before it could run.
        self._done = threading.Event()

    def wait(self, timeout=None) -> bool:
        """Block until the collective is done; raise its error. ``timeout`` (a timedelta; 0 or None: none)
        bounds the wait, as torch's works do, and raises RuntimeError when it passes."""
        seconds = timeout.total_seconds() if timeout is not None else 0.0
        if self._thread is not None:
            with self._thread.waited_on():
                done = self._done.wait(seconds if seconds > 0 else None)
        else:
            done = self._done.wait(seconds if seconds > 0 else None)
        if not done:
            raise RuntimeError(f"ringtrain backend: the collective did not finish within {seconds:g} s "
                               "(work.wait's timeout); it is still queued or running")
        self._future.value()  # raises what the collective raised
        return True

    def is_completed(self) -> bool:
        return self._done.is_set()

    def finish(self, result=None, error: BaseException | None = None) -> None:
        """The communication thread's end of it: complete the future, then wake the waiters."""
        if error is None:
            self._future.set_result(result)
        else:
            self._future.set_exception(error)
        self._done.set()

    def is_success(self) -> bool:
        return self.exception() is None

    def exception(self):
        if not self._future.done():
            return None
        try:
            self._future.value()
        except Exception as e:
            return e
        return None

    def get_future(self) -> torch.futures.Future:
        return self._future

    def synchronize(self) -> None:
        self.wait()


class CommThread:
    """The group's FIFO of collectives and the thread that runs them (see the module's docstring)."""

    def __init__(self, name: str, watchdog=None, timeout: float | None = None):
        self.name, self.watchdog, self.timeout = name, watchdog, timeout
        self.calls = 0  # collectives run on this group: the "step" a watchdog line names
        self._waiters, self._waiters_lock = 0, threading.Lock()  # callers blocked in Work.wait (waited_on)
        self.broken: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # The thread's name is the same on every rank: ringtrain's handshake compares callers' names.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, collective, result, what: str = "a collective") -> "torch.distributed.Work":
        """Queue ``collective()``; its work completes with ``result`` (the output tensors)."""
        work = Work(torch.futures.Future(), self)
        self._queue.put((collective, result, work, what))
        return work

    @contextlib.contextmanager
    def waited_on(self):
        """While a caller blocks in ``wait``, this thread spins instead of sleeping between polls.

        MPICH advances a nonblocking collective only when it is tested, so a
        collective of several rounds polled every 200 us takes several sleeps
        (a 1 MiB all_reduce: 2.0 ms against MPI_Allreduce's 0.24 ms). Nobody
        computes beside a caller that waits, so the core is free to spin.
        """
        with self._waiters_lock:
            self._waiters += 1
        try:
            yield
        finally:
            with self._waiters_lock:
                self._waiters -= 1

    def _urgent(self) -> bool:
        return self._waiters > 0

    def close(self, timeout: float | None = None) -> bool:
        """Finish what is queued, then stop the thread and its watchdog; False if it is still busy after ``timeout``."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        if self.watchdog is not None:
            self.watchdog.close()
            self.watchdog = None
        return True

    def _run(self) -> None:
        with polite(sleep_between_polls(), urgent=self._urgent, spin=SPIN_S):
            while True:
                item = self._queue.get()
                if item is None:
                    return
                collective, result, work, what = item
                if self.broken is not None:
                    work.finish(error=RuntimeError(
                        f"ringtrain backend: an earlier collective on this group failed ({self.broken}); "
                        "the group cannot be used any more"))
                    continue
                self.calls += 1
                try:
                    if self.watchdog is None:
                        collective()
                    else:
                        with self.watchdog.guard(f"{what} on {self.name}", self.calls, self.timeout):
                            collective()
                except BaseException as e:  # to the work: wait() raises it in the caller
                    self.broken = e
                    work.finish(error=e)
                    continue
                work.finish(result=result)
