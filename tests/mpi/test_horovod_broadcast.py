"""hvd.broadcast and broadcast_: the root's tensor everywhere, against closed forms from rank and size.

Run at 1-4 ranks: ``mpiexec -n N python -m pytest --with-mpi tests/mpi/test_horovod_broadcast.py``.
"""
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.horovod import engine
from tests.helpers import all_ranks_agree
from tests.mpi.horovod_ops_helpers import DTYPES, coded, raised

WORLD = MPI.COMM_WORLD


@pytest.fixture(autouse=True)
def _init():
    hvd.init()


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(3,), (2, 5), (4, 1, 3)])
def test_every_root_every_dtype(dtype, shape):
    r, n = hvd.rank(), hvd.size()
    ok = True
    for root in range(n):
        mine = coded(list(range(r, r + shape[0])), int(torch.tensor(shape[1:]).prod()), dtype).reshape(shape)
        before = mine.clone()
        got = hvd.broadcast(mine, root_rank=root)
        expected = coded(list(range(root, root + shape[0])), int(torch.tensor(shape[1:]).prod()), dtype)
        ok &= torch.equal(got, expected.reshape(shape)) and torch.equal(mine, before)
    assert all_ranks_agree(bool(ok))


@pytest.mark.mpi
@pytest.mark.parametrize("count", [0, 1, 3, 5, 300_001])   # odd byte counts go as bytes; 1.2 MB by the chain
def test_in_place_overwrites_and_returns_the_input(count):
    r, n = hvd.rank(), hvd.size()
    root = n - 1
    t = torch.arange(count, dtype=torch.float32) + 1000 * r
    flags = torch.tensor([r % 2] * count, dtype=torch.bool)
    same = hvd.broadcast_(t, root_rank=root)
    engine.synchronize(hvd.broadcast_async_(flags, root))
    ok = same is t and torch.equal(t, torch.arange(count, dtype=torch.float32) + 1000 * root)
    assert all_ranks_agree(ok and torch.equal(flags, torch.tensor([root % 2] * count, dtype=torch.bool)))


@pytest.mark.mpi
def test_in_place_into_a_non_contiguous_view():
    r, n = hvd.rank(), hvd.size()
    base = torch.full((4, 6), float(r))
    view = base[:, ::2]                       # every other column, written through
    hvd.broadcast_(view, root_rank=0)
    expected = torch.full((4, 6), float(r))
    expected[:, ::2] = 0.0
    assert all_ranks_agree(torch.equal(base, expected))


@pytest.mark.mpi
def test_async_out_of_place_leaves_the_input():
    r, n = hvd.rank(), hvd.size()
    t = torch.tensor([r, r + 1])
    got = engine.synchronize(hvd.broadcast_async(t, root_rank=n // 2))
    ok = torch.equal(got, torch.tensor([n // 2, n // 2 + 1]))
    assert all_ranks_agree(ok and torch.equal(t, torch.tensor([r, r + 1])))


@pytest.mark.mpi
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gradient_is_the_average_on_the_root_and_zero_elsewhere(dtype):
    r, n = hvd.rank(), hvd.size()
    ok = True
    for root in range(n):
        x = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
        hvd.broadcast(x, root_rank=root).backward(torch.full((2, 3), float(r + 1), dtype=dtype))
        expected = torch.full((2, 3), (n + 1) / 2 if r == root else 0.0, dtype=dtype)
        ok &= torch.equal(x.grad, expected)
    assert all_ranks_agree(bool(ok))


@pytest.mark.mpi
@pytest.mark.parametrize("root", [-1, "size", True, 1.0])
def test_bad_root_is_refused_on_every_rank(root):
    n = hvd.size()
    root = n if root == "size" else root
    error = raised(lambda: hvd.broadcast(torch.ones(2), root_rank=root))
    assert all_ranks_agree(isinstance(error, ValueError) and "root_rank" in str(error))
    assert all_ranks_agree(torch.equal(hvd.broadcast(torch.ones(1) * hvd.rank(), 0), torch.zeros(1)))


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("case", ["root", "dtype", "shape"])
def test_disagreement_raises_runtime_error_on_every_rank(case):
    r = hvd.rank()
    t = torch.ones(3, dtype=torch.int64 if case == "dtype" and r else torch.float32)
    if case == "shape":
        t = torch.ones(3 + r)
    error = raised(lambda: hvd.broadcast(t, root_rank=r if case == "root" else 0))
    assert all_ranks_agree(isinstance(error, RuntimeError))
