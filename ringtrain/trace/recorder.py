"""Recording a timeline: spans and instants per rank and thread, in Chrome's Trace Event Format.

The file opens in Perfetto (ui.perfetto.dev) and chrome://tracing:

    {"traceEvents": [{"name": "backward", "ph": "X", "ts": 1520.3, "dur": 48211.0,
                      "pid": 0, "tid": "main", "cat": "compute", "args": {"step": 3}}, ...],
     "displayTimeUnit": "ms", "metadata": {...}}

``pid`` is the rank and ``tid`` the thread's name ("main", "ringtrain-comm").
``ts`` is in microseconds on rank 0's clock: at start-up rank 0 exchanges
PING_ROUNDS timestamps with every other rank and keeps, per rank, the offset
measured in the round with the shortest round trip (Cristian's method); half
that round trip bounds the offset's error, and both go into the file's
metadata. Every rank writes its own events to ``FILE.rank<r>``; ``close()``
then has rank 0 merge them into ``FILE`` and remove the parts.

Tracing off is ``NO_TRACE``, whose ``span`` returns one shared no-op context
manager: a call costs an attribute lookup and a function call, nothing is stored.
"""
import contextlib
import json
import os
import threading
import time

import numpy as np
from mpi4py import MPI

PING_ROUNDS = 20
_TAG_CLOCK = 91


class _NoTrace:
    enabled = False

    def span(self, name, cat="", **args):
        return contextlib.nullcontext()

    def instant(self, name, cat="", **args):
        pass

    def complete(self, name, cat, start, end, **args):
        pass

    def close(self):
        pass

    closed = True


NO_TRACE = _NoTrace()


class Tracer:
    """Collects this rank's events; ``close()`` writes them and merges every rank's file on rank 0. Collective."""

    enabled = True

    def __init__(self, path: str, comm: MPI.Comm, *, pid: int | None = None, earlier: tuple | None = None):
        """``pid``: this rank's row in the timeline (its rank of ``comm`` by default; --elastic gives the
        launcher's rank, which stays when the job shrinks). ``earlier``: (events, offset_ns) of this process's
        tracer in a previous membership (elastic/rounds.py), whose events this one continues."""
        self.path, self.comm = path, comm.Dup()
        self.rank = self.comm.Get_rank()
        self.pid = self.rank if pid is None else pid
        self.events = []
        self.closed = False
        self.offset_ns, self.error_ns = _clock_offset(self.comm)
        if earlier is not None:  # onto this membership's rank 0's clock
            events, offset_ns = earlier
            shift = (offset_ns - self.offset_ns) / 1e3
            self.events = [dict(e, ts=e["ts"] + shift) for e in events]

    def now_us(self) -> float:
        """This moment on rank 0's clock, in microseconds."""
        return (time.perf_counter_ns() - self.offset_ns) / 1e3

    @contextlib.contextmanager
    def span(self, name: str, cat: str = "", **args):
        start = time.perf_counter_ns()
        try:
            yield
        finally:
            self.complete(name, cat, start, time.perf_counter_ns(), **args)

    def complete(self, name: str, cat: str, start: int, end: int, **args) -> None:
        """A span from ``start`` to ``end`` (perf_counter_ns values of this rank)."""
        self.events.append({"name": name, "ph": "X", "cat": cat, "ts": (start - self.offset_ns) / 1e3,
                            "dur": (end - start) / 1e3, "pid": self.pid, "tid": _thread(), "args": args})

    def instant(self, name: str, cat: str = "", **args) -> None:
        self.events.append({"name": name, "ph": "i", "s": "t", "cat": cat, "ts": self.now_us(),
                            "pid": self.pid, "tid": _thread(), "args": args})

    def write_part(self) -> str:
        """Write this rank's events to ``path.rank<r>`` and return that name. Not collective: a failed run
        calls it on every rank it can, so the parts survive to be read."""
        meta = [{"name": "process_name", "ph": "M", "pid": self.pid, "args": {"name": f"rank {self.pid}"}},
                {"name": "process_sort_index", "ph": "M", "pid": self.pid, "args": {"sort_index": self.pid}}]
        part = f"{self.path}.rank{self.rank}"
        with open(part, "w") as f:
            json.dump({"events": meta + self.events,
                       "clock": {"offset_us": self.offset_ns / 1e3, "error_us": self.error_ns / 1e3}}, f)
        self.events = []
        return part

    def close(self) -> None:
        """Write this rank's part, then rank 0 merges every part into ``path``. Collective."""
        self.write_part()
        self.comm.Barrier()
        if self.rank == 0:
            merged, clocks = [], {}
            for r in range(self.comm.Get_size()):
                name = f"{self.path}.rank{r}"
                with open(name) as f:
                    data = json.load(f)
                merged += data["events"]
                clocks[str(r)] = data["clock"]
                os.remove(name)
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"traceEvents": merged, "displayTimeUnit": "ms",
                           "metadata": {"clock_offsets_to_rank0": clocks, "ranks": self.comm.Get_size(),
                                        "format": "Chrome Trace Event Format; ts and dur in microseconds"}}, f)
            os.replace(tmp, self.path)
        self.comm.Barrier()
        self.comm.Free()
        self.closed = True


def _thread() -> str:
    t = threading.current_thread()
    return "main" if t is threading.main_thread() else t.name


def _clock_offset(comm: MPI.Comm) -> tuple[int, int]:
    """(this rank's clock minus rank 0's, half the shortest round trip) in ns, by ping-pong with rank 0. Collective."""
    rank, n = comm.Get_rank(), comm.Get_size()
    if n == 1:
        return 0, 0
    stamp = np.zeros(1, dtype=np.int64)
    result = np.zeros(2, dtype=np.int64)
    if rank == 0:
        for peer in range(1, n):
            best = None
            for _ in range(PING_ROUNDS):
                sent = time.perf_counter_ns()
                comm.Send(stamp, peer, _TAG_CLOCK)
                comm.Recv(stamp, peer, _TAG_CLOCK)
                back = time.perf_counter_ns()
                # The peer read its clock halfway through the round trip, give or take half of it.
                offset, half = int(stamp[0]) - (sent + back) // 2, (back - sent) // 2
                if best is None or half < best[1]:
                    best = (offset, half)
            comm.Send(np.array(best, dtype=np.int64), peer, _TAG_CLOCK)
        return 0, 0
    for _ in range(PING_ROUNDS):
        comm.Recv(stamp, 0, _TAG_CLOCK)
        stamp[0] = time.perf_counter_ns()
        comm.Send(stamp, 0, _TAG_CLOCK)
    comm.Recv(result, 0, _TAG_CLOCK)
    return int(result[0]), int(result[1])
