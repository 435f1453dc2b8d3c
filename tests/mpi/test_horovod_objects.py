"""hvd.broadcast_object and allgather_object: picklable objects through the engine, in order with tensors.

Run at 1-4 ranks: ``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_objects.py``.
"""
import threading

import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.horovod import engine
from tests.helpers import all_ranks_agree
from tests.mpi.horovod_ops_helpers import raised

WORLD = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _init():
    hvd.init()


def payload(rank: int) -> dict:
    """A rank-dependent object of rank-dependent size, with a tensor and a lambda (cloudpickle carries it)."""
    return {"rank": rank, "items": list(range(1000 * rank)), "tensor": torch.full((rank + 1,), rank),
            "f": (lambda v, k=rank: v + k)}


def same(a: dict, b: dict) -> bool:
    return (a["rank"] == b["rank"] and a["items"] == b["items"] and torch.equal(a["tensor"], b["tensor"])
            and a["f"](1) == b["f"](1))


@pytest.mark.mpi
def test_broadcast_object_from_every_root():
    r, n = hvd.rank(), hvd.size()
    ok = True
    for root in range(n):
        mine = payload(r)
        got = hvd.broadcast_object(mine if r == root else None, root_rank=root)
        ok &= (got is mine) if r == root else same(got, payload(root))
    default = hvd.broadcast_object("from zero" if r == 0 else 0)
    assert all_ranks_agree(bool(ok) and default == "from zero")


@pytest.mark.mpi
def test_allgather_object_lists_every_rank_in_order():
    r, n = hvd.rank(), hvd.size()
    got = hvd.allgather_object(payload(r))
    empty = hvd.allgather_object(None)
    ok = len(got) == n and all(same(g, payload(i)) for i, g in enumerate(got))
    assert all_ranks_agree(ok and empty == [None] * n)


@pytest.mark.mpi
def test_objects_stay_in_order_with_pending_operations():
    r, n = hvd.rank(), hvd.size()
    handle = hvd.allgather_async(torch.tensor([r]))
    told = hvd.broadcast_object({"step": 7} if r == 0 else None)
    gathered = engine.synchronize(handle)
    assert all_ranks_agree(told == {"step": 7} and torch.equal(gathered, torch.arange(n)))


@pytest.mark.mpi
def test_unpicklable_object_fails_every_rank():
    r, n = hvd.rank(), hvd.size()
    lock = threading.Lock()                      # pickles with neither pickle nor cloudpickle
    gathered = raised(lambda: hvd.allgather_object(lock if r == n - 1 else r))
    told = raised(lambda: hvd.broadcast_object(lock, root_rank=n - 1))
    if r == n - 1:   # the rank that could not pickle raises pickle's own error
        ok = isinstance(gathered, TypeError) and isinstance(told, TypeError)
    else:            # the others are told which rank it was
        ok = isinstance(gathered, RuntimeError) and str(n - 1) in str(gathered)
        ok &= isinstance(told, RuntimeError) and f"rank {n - 1}" in str(told)
    assert all_ranks_agree(bool(ok) and hvd.allgather_object(r) == list(range(n)))


@pytest.mark.mpi
def test_bad_root_is_refused_on_every_rank():
    error = raised(lambda: hvd.broadcast_object({}, root_rank=hvd.size()))
    assert all_ranks_agree(isinstance(error, ValueError) and "root_rank" in str(error))
