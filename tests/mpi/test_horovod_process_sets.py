"""ringtrain.horovod's process sets: reductions within a set, lanes that run concurrently, sets given to init
by ranks or by communicator, membership, removal, and shutdown then init.

Run at several world sizes:
``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_process_sets.py``.
Each test computes everything collectively and asserts after its last collective.
"""
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _init():
    hvd.init()


@pytest.mark.mpi(min_size=2)  # at one rank the even set is the job's, which Horovod refuses to add twice
def test_process_sets_reduce_within_their_ranks():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    evens = [s for s in range(n) if s % 2 == 0]
    odds = [s for s in range(n) if s % 2 == 1]
    even, odd = hvd.add_process_set(evens), hvd.add_process_set(odds)
    mine, ranks = (even, evens) if r % 2 == 0 else (odd, odds)
    other = odd if r % 2 == 0 else even
    summed = hvd.allreduce(torch.tensor([float(r)]), op=hvd.Sum, process_set=mine).item()
    averaged = hvd.allreduce(torch.tensor([float(r)]), process_set=mine).item()
    hvd.barrier(process_set=mine)
    shape = (mine.size(), mine.rank(), mine.included(), other.included(), hvd.global_process_set.size())
    try:
        hvd.allreduce(torch.ones(1), process_set=other)
        refused = False
    except ValueError:
        refused = True
    try:
        hvd.add_process_set(evens)
        duplicate_refused = False
    except ValueError:
        duplicate_refused = True
    removed = (hvd.remove_process_set(odd), hvd.remove_process_set(even), hvd.remove_process_set(even),
               hvd.remove_process_set(hvd.global_process_set))
    try:
        hvd.allreduce(torch.ones(1), process_set=mine)
        removed_refused = False
    except ValueError:
        removed_refused = True
    ok = summed == sum(ranks) and averaged == sum(ranks) / len(ranks) and refused and duplicate_refused
    ok = ok and shape == (len(ranks), ranks.index(r), True, False, n) and removed_refused
    assert all_ranks_agree(ok and removed == (True, True, False, False))


@pytest.mark.mpi(min_size=3)  # at two ranks the pair is the job
def test_process_sets_run_concurrently():
    # Ranks 0 and 1 queue on the pair's set and on the job's in opposite orders: each set has its own lane.
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    pair = hvd.add_process_set([0, 1])
    if r < 2:
        calls = [("pair", pair), ("all", hvd.global_process_set)][::1 if r == 0 else -1]
        handles = {k: hvd.allreduce_async(torch.tensor([r + 1.0]), name=k, op=hvd.Sum, process_set=ps)
                   for k, ps in calls}
        got = {k: hvd.synchronize(h).item() for k, h in handles.items()}
        ok = got == {"pair": 3.0, "all": n * (n + 1) / 2}
    else:
        ok = hvd.allreduce(torch.tensor([r + 1.0]), name="all", op=hvd.Sum).item() == n * (n + 1) / 2
    hvd.remove_process_set(pair)
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_process_set_from_a_communicator_and_shutdown_then_init():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    hvd.shutdown()
    try:
        hvd.allreduce(torch.ones(1))
        refused_while_down = False
    except ValueError:
        refused_while_down = True
    split = WORLD.Split(r % 2, r)
    halves = hvd.ProcessSet(split)
    first = hvd.ProcessSet([0]) if n > 1 else None  # at one rank, the job's set
    hvd.init(process_sets=[halves] + ([first] if first else []))
    ranks = [s for s in range(n) if s % 2 == r % 2]
    summed = hvd.allreduce(torch.tensor([float(r)]), op=hvd.Sum, process_set=halves).item()
    ok = refused_while_down and halves.ranks == ranks and summed == sum(ranks) and halves.process_set_id == 1
    if first is not None:
        ok = ok and first.process_set_id == 2 and first.included() == (r == 0)
        if r == 0:
            ok = ok and hvd.allreduce(torch.tensor([5.0]), process_set=first).item() == 5.0
    hvd.shutdown()
    split.Free()
    hvd.init(process_sets="dynamic")  # Horovod's switch for add_process_set: accepted, and always on here
    again = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()
    assert all_ranks_agree(ok and again == n and hvd.global_process_set.ranks == list(range(n)))
