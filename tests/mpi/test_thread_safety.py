"""Collectives from several threads (collectives/comm.py, "Threads").

A communicator per thread (``comm.Dup()``) runs collectives at the same time,
each exact; threads sharing one communicator are serialized, and a call that
met another thread's call is refused on every rank, never answered wrong.

Run at several world sizes: ``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_thread_safety.py``.
Expected values are in closed form from rank, thread and iteration; every
thread only records what it saw, and the test asserts after the last collective.
"""
import sys
import threading
import time

import numpy as np
import pytest
from mpi4py import MPI

import ringtrain
from ringtrain.collectives.comm import guard
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD
# Below the watchdog's 120 s (conftest.py), so a stuck thread is named rather than found by the watchdog.
JOIN_SECONDS = 60.0
# Sizes from one element to 4 MiB: native MPI below RINGTRAIN_RING_MIN_BYTES, and the ring asked for by name.
CASES = [("allreduce", 1, "float64", "auto"), ("allreduce", 7, "int64", "recursive_doubling"),
         ("allreduce", 1000, "float32", "ring"), ("broadcast", 3, "int64", "mpi"),
         ("allreduce", 65_537, "float64", "auto"), ("allreduce", 4099, "int64", "ring"),
         ("reduce_scatter", 10_001, "float32", "ring"), ("broadcast", 300_001, "float32", "chain"),
         ("allreduce", 1 << 19, "float64", "ring"), ("allreduce", 1 << 18, "float32", "recursive_doubling")]
needs_multiple = pytest.mark.skipif(MPI.Query_thread() < MPI.THREAD_MULTIPLE,
                                    reason="collectives from several threads at once need MPI_THREAD_MULTIPLE")


def own_value(rank: int, thread: int, it: int, count: int) -> np.ndarray:
    """What ``rank`` contributes: small integers, so that float32 sums are exact too."""
    return (rank + 1) * (thread + 1) + it + np.arange(count) % 5


def run_case(case, comm, thread: int, it: int) -> bool:
    """One collective on ``comm``; True if the result is the closed form."""
    kind, count, dtype, algorithm = case
    n, r = comm.Get_size(), comm.Get_rank()
    x = own_value(r, thread, it, count).astype(dtype)
    if kind == "broadcast":
        root = (thread + it) % n
        if r != root:
            x[:] = -1
        ringtrain.broadcast(x, root=root, comm=comm, algorithm=algorithm)
        return bool(np.array_equal(x, own_value(root, thread, it, count)))
    # sum over ranks of (r + 1) * (thread + 1) + it + i % 5
    expected = n * (n + 1) // 2 * (thread + 1) + n * (it + np.arange(count) % 5)
    if kind == "reduce_scatter":
        lo, hi = ringtrain.owned_bounds(count, comm)
        ok = np.array_equal(ringtrain.reduce_scatter(x, comm=comm), expected[lo:hi])
        ringtrain.allgather(x, comm=comm)
        return bool(ok and np.array_equal(x, expected))
    ringtrain.allreduce(x, comm=comm, algorithm=algorithm)
    return bool(np.array_equal(x, expected))


def start(target, count: int, prefix: str) -> list[threading.Thread]:
    """``count`` threads named ``prefix-i``: the same names on every rank, as the handshake compares them."""
    threads = [threading.Thread(target=target, args=(i,), name=f"{prefix}-{i}", daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    return threads


def join_or_abort(threads: list[threading.Thread]) -> None:
    """Join every thread; if one is stuck on some rank, say which and abort the job (it would hang at exit)."""
    deadline = time.monotonic() + JOIN_SECONDS  # for all of them together
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if not all_ranks_agree(not stuck):
        sys.stderr.write(f"\ntest_thread_safety: threads still inside a collective after {JOIN_SECONDS:.0f} s on "
                         f"rank {WORLD.Get_rank()}: {stuck or 'none here'}; aborting the job\n")
        sys.stderr.flush()
        WORLD.Abort(4)


@pytest.mark.mpi
@needs_multiple
def test_a_communicator_per_thread_runs_collectives_at_once_exactly():
    threads, iterations = 8, 30
    # Made on the main thread in the same order on every rank: Dup is collective on WORLD.
    comms = [WORLD.Dup() for _ in range(threads)]
    wrong: list[list[str]] = [[] for _ in range(threads)]

    def work(t: int) -> None:
        for it in range(iterations):
            case = CASES[(3 * t + it) % len(CASES)]
            try:
                if not run_case(case, comms[t], t, it):
                    wrong[t].append(f"iteration {it}: {case} gave a wrong result")
            except Exception as e:  # recorded, so that this thread goes on with its peers
                wrong[t].append(f"iteration {it}: {case} raised {type(e).__name__}: {e}")

    join_or_abort(start(work, threads, "dup"))
    for c in comms:
        c.Free()
    failures = [w for ws in wrong for w in ws]
    assert all_ranks_agree(not failures), failures[:5]


# (count, algorithm) per thread. Threads 2k and 2k+1 pass the same arguments, so only the thread
# names tell their calls apart; between pairs the sizes differ too. Two threads of one size is the
# reported bug; without the lock its ring messages interleave (wrong sums, "Message truncated").
SHARED = {"two threads, as reported": ([(70_000, "ring")] * 2, 150),
          "six threads, three sizes": ([(1, "auto")] * 2 + [(3000, "ring")] * 2 + [(70_000, "ring")] * 2, 60)}


@pytest.mark.mpi
@needs_multiple
@pytest.mark.parametrize("threads", SHARED)
def test_threads_sharing_a_communicator_get_the_exact_result_or_a_refusal(threads):
    # Thread t contributes 8**t on every rank: a call paired with other threads' calls would sum
    # to n * 8**t only if every one were thread t's (base-8 digits, at most n < 8 each, do not carry).
    args, iterations = SHARED[threads]
    shared = WORLD.Dup()
    n = shared.Get_size()
    outcomes = np.zeros((len(args), 4), dtype=np.int64)  # right, refused, wrong, other error

    def work(t: int) -> None:
        count, algorithm = args[t]
        for _ in range(iterations):
            x = np.full(count, 8.0**t)
            try:
                ringtrain.allreduce(x, algorithm=algorithm, comm=shared)
                outcomes[t, 0 if np.all(x == n * 8.0**t) else 2] += 1
            except ringtrain.ConcurrentCollectiveError as e:
                outcomes[t, 1] += 1
                if "comm.Dup()" not in str(e):
                    outcomes[t, 3] += 1
            except Exception:
                outcomes[t, 3] += 1

    join_or_abort(start(work, len(args), "shared"))
    # Every refused call was refused on every rank: the same count everywhere.
    refused = outcomes[:, 1].sum(keepdims=True)
    lo, hi = refused.copy(), refused.copy()
    WORLD.Allreduce(MPI.IN_PLACE, lo, op=MPI.MIN)
    WORLD.Allreduce(MPI.IN_PLACE, hi, op=MPI.MAX)
    shared.Free()
    ok = outcomes[:, 2:].sum() == 0 and outcomes[:, :2].sum() == len(args) * iterations and lo[0] == hi[0]
    assert all_ranks_agree(bool(ok)), f"per thread (right, refused, wrong, other): {outcomes.tolist()}"


def held_by_a(comm, seconds: float = 0.5) -> None:
    """Return once another thread holds ``comm``'s collective lock (or after ``seconds``, whatever holds it)."""
    lock, deadline = guard(comm).lock, time.monotonic() + seconds
    while time.monotonic() < deadline and lock.acquire(blocking=False):
        lock.release()
        time.sleep(0.01)


@pytest.mark.mpi(min_size=2)
@needs_multiple
def test_a_second_thread_waits_while_the_first_is_inside_a_collective():
    # Rank 0's thread "a" enters first and waits inside (the others come 2 s later); its "b" calls
    # once a holds the lock. Unserialized, b's handshake would meet the others' second collective
    # (a's MPI_Allreduce) and mix or truncate. Serialized, every rank runs a's call, then b's.
    comm = WORLD.Dup()
    r, n = comm.Get_rank(), comm.Get_size()
    results, finished = {}, []

    def call(value: float):
        def run():
            x = np.full(4, value)
            try:
                ringtrain.allreduce(x, comm=comm)
                results[value] = bool(np.all(x == n * value))
            except Exception as e:
                results[value] = f"{type(e).__name__}: {e}"
            finished.append(value)
        return run

    a = threading.Thread(target=call(1.0), name="a", daemon=True)
    b = threading.Thread(target=call(10.0), name="b", daemon=True)
    if r == 0:
        a.start()
        held_by_a(comm)
        b.start()
    else:
        time.sleep(2.0)
        a.start()
        a.join(JOIN_SECONDS)
        b.start()
    join_or_abort([a, b])
    comm.Free()
    assert all_ranks_agree(results == {1.0: True, 10.0: True} and finished == [1.0, 10.0]), (results, finished)


@pytest.mark.mpi(min_size=2)
def test_a_call_from_differently_named_threads_is_refused_on_every_rank_naming_them():
    comm = WORLD.Dup()
    r = comm.Get_rank()
    seen = {}

    def call():
        try:
            ringtrain.allreduce(np.ones(4), comm=comm)
        except ringtrain.CollectiveMismatchError as e:
            seen["error"] = e

    # One thread per rank, but named differently on rank 0: MPI pairs them, the names disagree.
    t = threading.Thread(target=call, name="first" if r == 0 else "second")
    t.start()
    t.join(JOIN_SECONDS)
    x = np.ones(4)
    ringtrain.allreduce(x, comm=comm)  # the communicator is fine afterwards
    comm.Free()
    error = seen.get("error")
    ok = (isinstance(error, ringtrain.ConcurrentCollectiveError)
          and "rank 0: thread 'first', shape (4,) float64, op=sum, algorithm=mpi" in str(error)
          and "thread 'second'" in str(error) and "comm.Dup()" in str(error)
          and bool(np.all(x == WORLD.Get_size())))
    assert all_ranks_agree(ok), repr(error)


def test_the_error_is_a_mismatch_error_exported_at_the_top():
    assert issubclass(ringtrain.ConcurrentCollectiveError, ringtrain.CollectiveMismatchError)
    assert ringtrain.collectives.ConcurrentCollectiveError is ringtrain.ConcurrentCollectiveError
