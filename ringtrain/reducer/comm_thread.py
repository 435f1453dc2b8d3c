"""The one thread that makes the reducer's MPI calls.

Buckets are averaged strictly in index order on every rank, whatever order
their gradients arrive in: MPI collectives on one communicator must be called
in the same order everywhere, and this is what keeps a rank whose bucket 2 is
ready before bucket 1 from deadlocking with one where it is the other way round.

The thread waits for MPI politely (collectives/waiting.py): it tests its
requests and sleeps ``poll_sleep`` seconds between tests, so that backward,
running beside it, keeps the core; 0 waits inside MPI (spinning). Once the
main thread blocks in ``wait()`` nobody needs the core any more, and the
thread spins until the step's last bucket is done: a sleep then would only
add latency.
"""
import threading
import time

from ..collectives import traffic, waiting
from ..compression.base import NonFiniteInput
from ..fault.errors import Diverged


class CommThread:
    """Runs ``reduce(bucket_index)`` for 0..n-1 each step, as buckets are marked ready."""

    def __init__(self, nbuckets: int, reduce, poll_sleep: float = 0.0):
        self._n, self._reduce, self._poll_sleep = nbuckets, reduce, poll_sleep
        self._cv = threading.Condition()
        self._ready = [False] * nbuckets
        self._step_open = False
        self._done = threading.Event()
        self._done.set()
        self._main_waiting = False  # the main thread is blocked in wait(): spin, do not sleep
        self._error = None
        self._closing = False
        self.busy_seconds = 0.0  # time spent inside reduce() this step
        self.sent = [0]  # bytes sent this step (collectives/traffic.py)
        self._thread = threading.Thread(target=self._run, name="ringtrain-comm", daemon=True)
        self._thread.start()

    def mark_ready(self, index: int) -> None:
        with self._cv:
            if not self._step_open:
                self._step_open = True
                self._main_waiting = False
                self._done.clear()
                self.busy_seconds = 0.0
                self.sent[0] = 0
            self._ready[index] = True
            self._cv.notify()

    def wait(self) -> None:
        """Block until every bucket of this step is reduced; re-raise the thread's error if any."""
        self._main_waiting = True
        self._done.wait()
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, NonFiniteInput):
                # Only this rank knows (its peers wait inside the collective): a one-line
                # error that run_or_abort turns into a job abort with exit code 3.
                raise Diverged(f"the gradient has NaN or inf values on this rank, so the compressed average "
                               f"stopped ({error}) — lower --lr, set --grad-clip, or check the data") from None
            raise RuntimeError(f"gradient averaging failed on the communication thread: {error}") from error

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout=5)

    def _run(self):
        with waiting.polite(self._poll_sleep, urgent=lambda: self._main_waiting), traffic.counting(self.sent):
            self._loop()

    def _loop(self):
        while True:
            for i in range(self._n):
                with self._cv:
                    while not self._ready[i] and not self._closing:
                        self._cv.wait()
                    if self._closing:
                        return
                t0 = time.perf_counter()
                try:
                    if self._error is None:
                        self._reduce(i)
                except BaseException as e:  # reported to the main thread by wait()
                    self._error = e
                self.busy_seconds += time.perf_counter() - t0
            with self._cv:
                self._ready = [False] * self._n
                self._step_open = False
            self._done.set()
