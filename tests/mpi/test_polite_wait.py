"""Polite waiting: the same bits as waiting inside MPI, on every path the reducer's thread takes, and a core left free."""
import threading
import time

import numpy as np
import pytest
from mpi4py import MPI

import ringtrain
from ringtrain import compression
from ringtrain.collectives import waiting
from tests.helpers import all_ranks_agree
from tests.mpi.test_hierarchical import nodes_of

WORLD = MPI.COMM_WORLD


def mine(count=300_007, seed=0):
    return np.random.default_rng([seed, WORLD.Get_rank()]).standard_normal(count).astype(np.float32)


def both(run):
    """``run()`` spinning and politely; both results (each a fresh computation)."""
    spun = run()
    with waiting.polite(50e-6):
        polite = run()
    return spun, polite


@pytest.mark.mpi
@pytest.mark.parametrize("algorithm, k", [("ring", None), ("mpi", None), ("hierarchical", 2), ("hierarchical", 3)])
def test_allreduce_is_bitwise_the_same_waiting_politely(algorithm, k):
    comm = WORLD if k is None else nodes_of(k)
    spun, polite = both(lambda: ringtrain.allreduce(mine(), op="mean", algorithm=algorithm, comm=comm))
    assert all_ranks_agree(bool(np.array_equal(spun, polite)))


@pytest.mark.mpi
@pytest.mark.parametrize("spec", ["fp16", "int8", "topk:ratio=0.01", "powersgd:rank=2"])
def test_compressed_means_are_bitwise_the_same_waiting_politely(spec):
    spun, polite = both(lambda: compression.get(spec).allreduce_mean(mine(), WORLD))
    assert all_ranks_agree(bool(np.array_equal(spun, polite)))


@pytest.mark.mpi
def test_the_setting_is_per_thread_and_restored():
    seen = {}
    with waiting.polite(1e-3):
        other = threading.Thread(target=lambda: seen.setdefault("other", waiting.sleep_between_polls()))
        other.start()
        other.join()
        seen["here"] = waiting.sleep_between_polls()
    assert seen == {"other": 0.0, "here": 1e-3} and waiting.sleep_between_polls() == 0.0
    with pytest.raises(ValueError, match="must be >= 0 seconds"):
        with waiting.polite(float("nan")):
            pass


def wait_for_peer(delay: float, sleep: float, urgent=None):
    """Rank 0 receives what rank 1 sends after ``delay`` s, waiting politely: (CPU seconds, wall seconds, got it)."""
    comm, rank = WORLD.Dup(), WORLD.Get_rank()
    buf = np.zeros(1024, np.float32)
    cpu = wall = 0.0
    if rank == 0:
        with waiting.polite(sleep, urgent=urgent):
            t0, c0 = time.perf_counter(), time.thread_time()
            waiting.recv(comm, buf, 1, 5)
            cpu, wall = time.thread_time() - c0, time.perf_counter() - t0
    elif rank == 1:
        time.sleep(delay)
        comm.Send(np.ones(1024, np.float32), 0, 5)
    comm.Free()
    return cpu, wall, rank != 0 or buf[0] == 1


@pytest.mark.mpi(min_size=2)
def test_a_polite_wait_leaves_the_core_to_others():
    """Rank 0 waits 0.5 s for rank 1's message: politely it burns a small part of that on its CPU clock."""
    cpu, _, got = wait_for_peer(0.5, 200e-6)
    assert all_ranks_agree(cpu < 0.15 and got), cpu


@pytest.mark.mpi(min_size=2)
def test_an_urgent_wait_spins_instead_of_sleeping():
    """The reducer's main thread blocked in synchronize makes the wait urgent: no 2 s sleep after the first poll."""
    _, wall, got = wait_for_peer(0.05, 2.0, urgent=lambda: True)
    assert all_ranks_agree(wall < 1.0 and got), wall


@pytest.mark.mpi
@pytest.mark.parametrize("sleep", [0.0, 50e-6])
def test_requests_whose_wait_failed_are_kept_never_freed(sleep, monkeypatch):
    monkeypatch.setattr(waiting, "_ABANDONED", [])
    comm = MPI.COMM_SELF.Dup()
    comm.Set_errhandler(MPI.ERRORS_RETURN)
    small, big = np.empty(2), np.ones(8)
    requests = [comm.Irecv(small, 0, 5), comm.Isend(big, 0, 5)]  # the message does not fit: the wait fails
    failed = False
    with waiting.polite(sleep):
        try:
            waiting.wait_all(requests)
        except MPI.Exception:
            failed = True
    kept = [r for r in waiting._ABANDONED if any(r is q for q in requests)]
    comm.Free()
    assert all_ranks_agree(failed and len(kept) == 2)
