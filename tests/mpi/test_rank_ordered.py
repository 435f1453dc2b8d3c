"""The node-aware allgather and reduce-scatter in rank order: MPI's results on every node shape, and torch's
layout through the backend, against gloo."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
from mpi4py import MPI

from ringtrain.collectives import rank_ordered
from ringtrain.collectives.rank_ordered import node_aware_allgather, node_aware_reduce_scatter, node_grid
from tests.helpers import all_ranks_agree
from tests.mpi.test_hierarchical import nodes_of

WORLD = MPI.COMM_WORLD


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("piece", [0, 1, 7, 4099])
@pytest.mark.parametrize("copy", [False, True])
def test_equals_mpi_allgather_or_declines_where_nodes_differ(k, piece, copy, monkeypatch):
    """``copy``: the path for ranks placed on nodes in any order, taken here on consecutive ones too."""
    if copy:
        monkeypatch.setattr(rank_ordered, "_in_blocks", lambda groups, flat, nodes, width, k, me:
                            rank_ordered._through_rows(groups, flat, node_grid(comm), k, me))
    comm = nodes_of(k)
    n, me = comm.Get_size(), comm.Get_rank()
    grid = node_grid(comm)
    mine = np.random.default_rng([piece, me]).integers(0, 256, piece, dtype=np.uint8)
    expected = np.empty(n * piece, dtype=np.uint8)
    comm.Allgather(mine, expected)
    if grid is None:  # one node, nodes of one rank, or nodes of different sizes
        nodes = -(-n // k)
        assert all_ranks_agree(nodes < 2 or k < 2 or n % k != 0)
        return
    flat = np.zeros(n * piece, dtype=np.uint8)
    flat[me * piece:(me + 1) * piece] = mine
    node_aware_allgather(comm, flat, grid)
    assert all_ranks_agree(bool(np.array_equal(flat, expected)) and sorted(grid.reshape(-1)) == list(range(n)))


@pytest.mark.mpi
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("piece", [1, 5, 3001])
def test_reduce_scatter_equals_mpi_reduce_scatter_block(k, dtype, piece):
    """Whole numbers, so that every summation order gives the same bits as MPI's."""
    comm = nodes_of(k)
    n, me = comm.Get_size(), comm.Get_rank()
    grid = node_grid(comm)
    x = np.random.default_rng([piece, me]).integers(-1000, 1000, n * piece).astype(dtype)
    expected = np.empty(piece, dtype=dtype)
    comm.Reduce_scatter_block(x, expected, MPI.SUM)
    got = node_aware_reduce_scatter(comm, x.copy(), grid).copy() if grid is not None else expected
    assert all_ranks_agree(got.dtype == dtype and bool(np.array_equal(got, expected)))


@pytest.mark.mpi(min_size=4)
def test_torch_gathers_and_reduce_scatters_take_it_at_two_by_two(monkeypatch):
    """Forced nodes of 2 on a fresh ringtrain group: every dtype's gather equals gloo's, bit for bit, and so do
    the float sums of whole numbers (AVG within rounding: it divides once, where gloo may divide otherwise)."""
    import tests.mpi.backend_setup as setup
    _, gloo = setup.start()
    try:
        _gathers_and_reduce_scatters(gloo, monkeypatch)
    finally:
        setup.stop()  # later modules start torch.distributed their own way


def _gathers_and_reduce_scatters(gloo, monkeypatch):
    monkeypatch.setenv("RINGTRAIN_NODE_SIZE", "2")
    ours = dist.new_group(backend="ringtrain")  # its node groups are learnt at its first large gather
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    results = []
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.bool):
        count = (1 << 20) // torch.tensor([], dtype=dtype).element_size() + 3  # over 1 MiB: the node-aware path
        g = torch.Generator().manual_seed(me)
        x = (torch.rand(count, generator=g) * 100).to(dtype)
        a, b = torch.empty(n * count, dtype=dtype), torch.empty(n * count, dtype=dtype)
        dist.all_gather_single(a, x, group=ours)
        dist.all_gather_single(b, x, group=gloo)
        results.append(bool(torch.equal(a, b)))
    for op in (dist.ReduceOp.SUM, dist.ReduceOp.AVG):
        for dtype in (torch.float32, torch.float64):
            count = (1 << 20) // torch.tensor([], dtype=dtype).element_size() + 5
            x = torch.randint(-50, 50, (n * count,), generator=torch.Generator().manual_seed(me)).to(dtype)
            a, b = torch.empty(count, dtype=dtype), torch.empty(count, dtype=dtype)
            dist.reduce_scatter_single(a, x, op=op, group=ours)
            dist.reduce_scatter_single(b, x, op=op, group=gloo)
            results.append(bool(torch.equal(a, b)) if op == dist.ReduceOp.SUM else bool(torch.allclose(a, b)))
    grid = getattr(ours, "_grid", None)  # the backend's group object is ours (extended_api)
    used = isinstance(grid, np.ndarray) and grid.shape == (n // 2, 2)
    assert all_ranks_agree(all(results) and (used or n % 2 != 0))
