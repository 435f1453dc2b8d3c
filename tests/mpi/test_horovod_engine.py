"""ringtrain.horovod's engine: asynchronous order, poll, errors and mismatches on every rank, fusion, join,
barrier, and polite waits (process sets: test_horovod_process_sets.py).

Run at several world sizes:
``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_engine.py``.
Each test computes everything collectively and asserts after its last collective.
"""
import os
import re
import threading
import time

import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.horovod.engine import Fusion, _lanes, submit
from ringtrain.horovod.reduction import reduce_
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD
# The target: names or order that differ end with an error on every rank within this many seconds.
MISMATCH_SECONDS = 5.0


@pytest.fixture(autouse=True)
def _init():
    hvd.init()


@pytest.mark.mpi
def test_async_handles_in_submission_order():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    # The other ranks submit only after rank 0 has polled (or after 10 s), so on rank 0 no operation can be
    # done yet: a poll that found one done means the call waited for its peers, and was not async. (An
    # allreduce_async that blocks holds rank 0 until its peers give up waiting: the test fails, never hangs.)
    polled = np.zeros(1, dtype=np.int32)
    if r != 0:
        request, deadline = WORLD.Irecv(polled, source=0, tag=33), time.monotonic() + 10.0
        while not request.Test() and time.monotonic() < deadline:
            time.sleep(0.001)
    handles = [hvd.allreduce_async(torch.tensor([float(r + i)]), name=f"step{i}", op=hvd.Sum) for i in range(20)]
    none_done_alone = r != 0 or n == 1 or not any(hvd.poll(h) for h in handles)
    if r == 0:
        for peer in range(1, n):
            WORLD.Send(np.ones(1, dtype=np.int32), dest=peer, tag=33)
    else:
        request.Wait()  # rank 0's word, however late, is taken
    results = {i: hvd.synchronize(handles[i]).item() for i in reversed(range(20))}  # any order of synchronize
    expected = {i: n * (n - 1) / 2 + n * i for i in range(20)}
    try:
        hvd.poll(handles[0])
        stale_refused = False
    except ValueError:
        stale_refused = True
    assert all_ranks_agree(results == expected and stale_refused and none_done_alone)


@pytest.mark.mpi
def test_error_in_a_body_raises_on_every_rank():
    r = WORLD.Get_rank()

    def body(comm):
        comm.Barrier()  # the collective first: a body refuses its input before, or fails after, on every rank alike
        if comm.Get_rank() == 0:
            raise KeyError("only rank 0 fails")
        return "fine"

    try:
        hvd.synchronize(submit("custom", "failing", {}, body))
        raised = None
    except Exception as e:  # noqa: BLE001
        raised = e
    own = isinstance(raised, KeyError) if r == 0 else isinstance(raised, RuntimeError) and "rank 0" in str(raised)
    after = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()  # the engine goes on
    assert all_ranks_agree(own and after == WORLD.Get_size())


def mismatched(case: str, r: int):
    """What rank ``r`` submits for each mismatch: (name, tensor, op) per operation, in order."""
    ones = torch.ones(4)
    return {"name": [(f"loss.rank{r}", ones, hvd.Sum)],
            "order": [("a", ones, hvd.Sum), ("b", ones, hvd.Sum)][::1 if r % 2 == 0 else -1],
            "shape": [("x", torch.ones(4 + r), hvd.Sum)],
            "dtype": [("x", ones.to(torch.float64 if r % 2 else torch.float32), hvd.Sum)],
            "op": [("x", ones, hvd.Max if r % 2 else hvd.Sum)]}[case]


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", ["name", "order", "shape", "dtype", "op"])
def test_mismatch_raises_on_every_rank_within_5_s(case):
    r = WORLD.Get_rank()
    WORLD.Barrier()
    start = time.perf_counter()
    handles = [hvd.allreduce_async(t, name=name, op=op) for name, t, op in mismatched(case, r)]
    errors = []
    for h in handles:
        try:
            hvd.synchronize(h)
            errors.append(None)
        except hvd.HorovodMismatchError as e:
            errors.append(str(e))
    elapsed = time.perf_counter() - start
    field = {"order": "name", "op": "op", "shape": "shapes", "dtype": "dtypes", "name": "name"}[case]
    # The message names the field and lists rank 1 among the ranks with their values ("ranks 1,3: ...").
    ok = errors[0] is not None and field in errors[0] and re.search(r"ranks? [0-9,]*\b1\b", errors[0]) is not None
    ok = ok and elapsed < MISMATCH_SECONDS
    after = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()  # the engine goes on
    assert all_ranks_agree(ok and after == WORLD.Get_size()), (errors, elapsed)


@pytest.mark.mpi(min_size=2)
def test_argument_refused_on_one_rank_raises_on_every_rank():
    r = WORLD.Get_rank()
    x = torch.ones(3, dtype=torch.bool if r == 0 else torch.float32)
    WORLD.Barrier()
    start = time.perf_counter()
    try:
        hvd.allreduce(x, name="flags")
        raised = None
    except (TypeError, hvd.HorovodMismatchError) as e:
        raised = e
    elapsed = time.perf_counter() - start
    own = isinstance(raised, TypeError) if r == 0 else \
        isinstance(raised, hvd.HorovodMismatchError) and "refused" in str(raised) and "bool" in str(raised)
    after = hvd.allreduce(torch.ones(1), op=hvd.Sum).item()  # the engine goes on
    assert all_ranks_agree(own and elapsed < MISMATCH_SECONDS and after == WORLD.Get_size()), raised


def hold_the_engine():
    """Queue an operation that waits for the returned event, so that what is submitted next queues behind it."""
    go = threading.Event()
    return go, submit("hold", None, {}, lambda comm: go.wait(30))


@pytest.mark.mpi
@pytest.mark.parametrize("odd_one", [None, 5])
def test_queued_allreduces_fuse_up_to_a_differing_name(odd_one):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    sizes = []  # the number of buffers in each fused reduction, in order

    def reduce(comm, buffers):
        sizes.append(len(buffers))
        reduce_(comm, buffers, hvd.Sum)

    go, held = hold_the_engine()
    handles = []
    for i in range(10):
        name = f"t{i}" + (f".rank{r}" if i == odd_one and n > 1 else "")
        x = torch.full((3,), float(r + i))
        handles.append(submit("allreduce", name, {"i": i}, None, fusion=Fusion(("test",), [x], reduce, x)))
    go.set()
    hvd.synchronize(held)
    results = []
    for h in handles:
        try:
            results.append(hvd.synchronize(h)[0].item())
        except hvd.HorovodMismatchError:
            results.append(None)
    expected = [n * (n - 1) / 2 + n * i for i in range(10)]
    if odd_one is not None and n > 1:
        # The five before the differing name run as one; it fails on every rank; the four after it run as one.
        expected[odd_one] = None
        ok = sizes == [5, 4]
    else:
        ok = sizes == [10]
    assert all_ranks_agree(ok and results == expected), (sizes, results)


@pytest.mark.mpi
def test_duplicate_pending_name_refused_on_the_spot():
    first = hvd.allreduce_async(torch.ones(2), name="twice")
    try:
        hvd.allreduce_async(torch.ones(2), name="twice")
        refused = False
    except ValueError:
        refused = True
    value = hvd.synchronize(first)
    reused = hvd.allreduce(torch.ones(2), name="twice")  # once synchronized, the name is free again
    assert all_ranks_agree(refused and value.tolist() == [1.0, 1.0] and reused.tolist() == [1.0, 1.0])


@pytest.mark.mpi
def test_join_serves_the_others_allreduces():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.tensor([r + 1.0, -(r + 1.0)], dtype=torch.float64)
    results = []
    if r == 0:
        last = hvd.join()
    else:
        for op in (hvd.Sum, hvd.Average, hvd.Min, hvd.Max):
            results.append(hvd.allreduce(x, op=op).tolist())
        results.append(hvd.grouped_allreduce([x.long(), x], op=hvd.Sum)[0].tolist())
        handles = [hvd.allreduce_async(x * i, op=hvd.Sum) for i in range(4)]  # some may fuse
        results.append([hvd.synchronize(h).tolist() for h in handles])
        hvd.barrier()
        last = hvd.join()
    active = range(1, n)
    total = sum(s + 1.0 for s in active)
    expected = [[total, -total], [total / n, -total / n],  # Average divides by every rank, the joined too
                [2.0, -float(n)], [float(n), -2.0], [int(total), -int(total)],
                [[total * i, -total * i] for i in range(4)]] if n > 1 else []
    last_everywhere = WORLD.allgather(last)
    assert all_ranks_agree((r == 0 or results == expected) and last_everywhere == [n - 1] * n)


@pytest.mark.mpi(min_size=2)
def test_join_refuses_operations_without_a_joined_part():
    r = WORLD.Get_rank()
    if r == 0:
        hvd.join()
        ok = True
    else:
        try:
            hvd.synchronize(submit("gather_like", None, {"n": 1}, lambda comm: comm.allgather(r)))
            ok = False
        except RuntimeError as e:
            ok = "join" in str(e)
        hvd.join()
    assert all_ranks_agree(ok)


@pytest.mark.mpi(min_size=2)
def test_barrier_waits_for_the_slowest_rank():
    r = WORLD.Get_rank()
    WORLD.Barrier()
    start = time.perf_counter()
    if r == 0:
        time.sleep(0.5)
    hvd.barrier()
    waited = time.perf_counter() - start
    assert all_ranks_agree(waited >= 0.45)


def thread_cpu_seconds(thread) -> float:
    """CPU time (user + system) that ``thread`` has used, from /proc."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.mpi(min_size=2)
@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads per-thread CPU time from /proc")
def test_engine_waits_politely_for_a_late_rank():
    # Rank 0 is a second late; meanwhile the others' engine threads wait polling and sleeping, not spinning.
    r = WORLD.Get_rank()
    hvd.barrier()  # starts the engine's thread
    thread = _lanes[0].thread
    WORLD.Barrier()
    before = thread_cpu_seconds(thread)
    if r == 0:
        time.sleep(1.0)
    handle = hvd.allreduce_async(torch.ones(1), name="late")
    if r != 0:
        time.sleep(1.1)  # nobody synchronizes yet: the engine has no reason to spin
    hvd.synchronize(handle)
    used = thread_cpu_seconds(thread) - before
    assert all_ranks_agree(r == 0 or used < 0.15), used
