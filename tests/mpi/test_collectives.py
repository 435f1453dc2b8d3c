"""reduce_scatter, allgather and broadcast in closed form, and the mismatch handshake."""
import threading

import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.collectives.comm import handshake
from ringtrain.collectives.signature import SIGNATURE
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD
COUNTS = [0, 1, 5, 100_003]


@pytest.mark.mpi
@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "float16"])
def test_reduce_scatter_leaves_each_rank_its_summed_chunk(dtype, count):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = (np.arange(count) % 11 * (r + 1)).astype(dtype)
    mine = ringtrain.reduce_scatter(x)
    lo, hi = ringtrain.chunk_bounds(count, n, r)
    expected = (np.arange(lo, hi) % 11 * (n * (n + 1) // 2)).astype(dtype)
    view_ok = mine.size == 0 or np.shares_memory(mine, x)
    assert all_ranks_agree(view_ok and np.array_equal(mine, expected))


@pytest.mark.mpi
def test_reduce_scatter_mean_of_bfloat16_tensor():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = torch.full((1000,), float(r), dtype=torch.bfloat16)
    mine = ringtrain.reduce_scatter(x, op="mean")
    lo, hi = ringtrain.chunk_bounds(1000, n, r)
    expected = torch.full((hi - lo,), (n - 1) / 2).to(torch.bfloat16)
    assert all_ranks_agree(torch.equal(mine, expected))


@pytest.mark.mpi
@pytest.mark.parametrize("count", COUNTS)
def test_allgather_copies_every_chunk_from_its_owner(count):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    x = np.full(count, -1.0)
    lo, hi = ringtrain.chunk_bounds(count, n, r)
    x[lo:hi] = r
    ringtrain.allgather(x)
    owner = np.concatenate([np.full(b - a, i, float) for i in range(n)
                            for a, b in [ringtrain.chunk_bounds(count, n, i)]])
    assert all_ranks_agree(np.array_equal(x, owner))


@pytest.mark.mpi
@pytest.mark.parametrize("algorithm", ["chain", "mpi", "auto"])
@pytest.mark.parametrize("count", [0, 1, 3_000_001])
def test_broadcast_from_every_root(algorithm, count):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    results = []
    for root in range(n):
        x = np.arange(count, dtype=np.float32) * (r + 1)
        ringtrain.broadcast(x, root=root, algorithm=algorithm)
        results.append(np.array_equal(x, np.arange(count, dtype=np.float32) * (root + 1)))
    assert all_ranks_agree(all(results))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("algorithm", ["ring", "mpi", "auto"])
def test_count_mismatch_raises_on_every_rank_and_names_the_ranks(algorithm):
    r = WORLD.Get_rank()
    x = np.zeros(10 + (r == 0), np.float32)
    with pytest.raises(ringtrain.CollectiveMismatchError) as info:
        ringtrain.allreduce(x, algorithm=algorithm)
    message = str(info.value)
    assert "rank 0: shape (11,) float32" in message
    assert "shape (10,) float32" in message


@pytest.mark.mpi(min_size=2)
def test_dtype_mismatch_raises_on_every_rank():
    r = WORLD.Get_rank()
    x = np.zeros(10, np.float64 if r == WORLD.Get_size() - 1 else np.float32)
    with pytest.raises(ringtrain.CollectiveMismatchError, match=r"float64.*|.*float32"):
        ringtrain.allreduce(x)


@pytest.mark.mpi(min_size=2)
def test_option_mismatch_raises_on_every_rank():
    r = WORLD.Get_rank()
    with pytest.raises(ringtrain.CollectiveMismatchError, match="op=mean"):
        ringtrain.allreduce(np.zeros(10), op="mean" if r == 0 else "sum")
    with pytest.raises(ringtrain.CollectiveMismatchError, match="root=1"):
        ringtrain.broadcast(np.zeros(10), root=1 if r == 0 else 0)


@pytest.mark.mpi
def test_the_collective_still_works_after_a_mismatch():
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    if n > 1:
        with pytest.raises(ringtrain.CollectiveMismatchError):
            ringtrain.allreduce(np.zeros(3 + r))
    x = np.ones(3)
    ringtrain.allreduce(x)
    assert all_ranks_agree(bool(np.all(x == n)))


@pytest.mark.mpi
@pytest.mark.parametrize("operation", ["allreduce", "reduce_scatter", "allgather", "broadcast"])
def test_a_buffer_refused_on_rank_0_makes_every_rank_raise(operation):
    r = WORLD.Get_rank()
    x = np.ones(100)
    if r == 0:
        x.flags.writeable = False
    try:
        getattr(ringtrain, operation)(x)
        raised = None
    except (TypeError, ValueError) as e:
        raised = e
    if r == 0:
        ok = isinstance(raised, ValueError) and "read-only" in str(raised)
    else:  # the others learn of rank 0's refusal in the handshake, and raise too
        ok = (isinstance(raised, ringtrain.CollectiveMismatchError)
              and "rank 0: an argument it refused (x: the array is read-only" in str(raised))
    # The handshake above was the last collective, and every rank took part: safe to agree now.
    assert all_ranks_agree(ok)


def _from_thread(name: str, call):
    """Run ``call`` on a thread called ``name``, and raise what it raised."""
    raised = []
    worker = threading.Thread(target=lambda: _catch(call, raised), name=name)
    worker.start()
    worker.join()
    if raised:
        raise raised[0]


def _catch(call, raised: list) -> None:
    try:
        call()
    except Exception as e:  # re-raised on the calling thread
        raised.append(e)


# Each field of the handshake, and a call that differs in it on the last rank (``d``) and nowhere else.
MISMATCHES = {
    "count": lambda d: ringtrain.allreduce(np.zeros(10 + d)),
    # Their codes were equal before the fields had slots: ring reduce-scatter met ring allgather.
    "collective": lambda d: (ringtrain.allgather if d else ringtrain.reduce_scatter)(np.zeros(10)),
    "dtype": lambda d: ringtrain.allreduce(np.zeros(10, np.float64 if d else np.float32)),
    "op": lambda d: ringtrain.allreduce(np.zeros(10), op="mean" if d else "sum"),
    "algorithm": lambda d: ringtrain.allreduce(np.zeros(10), algorithm="recursive_doubling" if d else "ring"),
    "root": lambda d: ringtrain.broadcast(np.zeros(10), root=d % WORLD.Get_size()),
    "thread": lambda d: _from_thread("other" if d else threading.current_thread().name,
                                     lambda: ringtrain.allreduce(np.zeros(10))),
}


@pytest.mark.mpi
@pytest.mark.parametrize("field", list(MISMATCHES))
def test_a_mismatch_in_each_field_raises_on_every_rank(field):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    try:
        MISMATCHES[field](int(r == n - 1))
        raised = None
    except ringtrain.CollectiveMismatchError as e:
        raised = e
    # One rank alone has nobody to disagree with.
    expected = ringtrain.ConcurrentCollectiveError if field == "thread" else ringtrain.CollectiveMismatchError
    ok = isinstance(raised, expected) if n > 1 else raised is None
    if field == "collective" and n > 1:  # each rank's part of the message names its call
        ok &= "reduce_scatter, shape (10,) float64, op=sum" in str(raised) and "allgather, shape (10,)" in str(raised)
    assert all_ranks_agree(ok), repr(raised)


@pytest.mark.mpi
@pytest.mark.parametrize("slot", SIGNATURE.slots, ids=lambda slot: slot.name)
def test_every_value_of_every_slot_is_told_apart_from_the_first(slot):
    # The enumerated slots exhaustively; the wide ones (root, thread) at their edges.
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    values = slot.values or (0, 1, (1 << slot.width) - 1)
    caught = []
    for value in values[1:]:
        mine = value if r == n - 1 else values[0]
        try:
            handshake(WORLD, "test", 10, SIGNATURE.pack(**{slot.name: mine}), lambda: f"{slot.name}={mine}")
            caught.append(False)
        except ringtrain.CollectiveMismatchError:
            caught.append(True)
    assert all_ranks_agree(caught == [n > 1] * (len(values) - 1)), caught
