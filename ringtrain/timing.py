"""OSU-style timing of a collective: warm-up, barrier, timed loop, slowest rank wins."""
import time

import numpy as np
from mpi4py import MPI


def time_collective(comm: MPI.Comm, call, iters: int, warmup: int, mark=None) -> float:
    """Seconds per call of ``call()``, as the maximum over ranks of each rank's average.

    The maximum is what a training step waits for: the collective is only done
    when its slowest rank is. ``mark()``, if given, runs after the warm-up and
    the barrier, just before the clock starts (a byte counter's start).
    """
    for _ in range(warmup):
        call()
    comm.Barrier()
    if mark is not None:
        mark()
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    return slowest(comm, (time.perf_counter() - t0) / iters)


def slowest(comm: MPI.Comm, seconds: float) -> float:
    """The largest of every rank's ``seconds``. Collective."""
    buf = np.array([seconds])
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.MAX)
    return float(buf[0])


def median_call(comm: MPI.Comm, call, repeat: int) -> float:
    """One warm-up call, then the slowest rank's median over ``repeat`` single calls, each after a barrier."""
    call()
    samples = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return slowest(comm, float(np.median(samples)))


def iterations(nbytes: int, budget: int = 128 << 20, minimum: int = 5) -> int:
    """Timed iterations for a message size: about ``budget`` bytes moved per timing, ``minimum`` to 2000 calls.

    Slow links want a smaller budget: 128 MiB takes 11 s at 100 Mbit/s.
    """
    return int(min(2000, max(minimum, budget // max(nbytes, 1))))


def median_seconds(work, repeat: int) -> float:
    """One warm-up call of ``work()``, then the median seconds of ``repeat`` calls, on this rank alone."""
    work()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def memcpy_bandwidth(nbytes: int, repeats: int = 7) -> float:
    """Single-core numpy copy bandwidth in GB/s (bytes copied per second, median of repeats)."""
    src = np.ones(nbytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    # The warm-up call faults the pages in before timing.
    return src.nbytes / median_seconds(lambda: np.copyto(dst, src), repeats) / 1e9


def time_steps(variant, x, y, steps: int, comm: MPI.Comm) -> float:
    """One warm-up ``variant.step(x, y)``, a barrier, then the slowest rank's mean over ``steps`` steps. Collective."""
    variant.step(x, y)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        variant.step(x, y)
    return slowest(comm, (time.perf_counter() - t0) / steps)
