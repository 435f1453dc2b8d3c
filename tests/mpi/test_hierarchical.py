"""The node-aware allreduce against MPI_Allreduce, with nodes forced to 1, 2 and 3 ranks (uneven ones too).

RINGTRAIN_NODE_SIZE=K makes nodes of K consecutive ranks, so one machine can
play a cluster of any shape. One communicator per node size is kept for the
module: groups are cached per communicator, and MPI has only so many.
"""
import dataclasses
import os

import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain.collectives import thresholds
from ringtrain.collectives.topology import node_groups
from tests.helpers import all_ranks_agree, identical_across_ranks
from tests.mpi.test_allreduce import as_float64, element_count, random_buffer, reference, within_bound

WORLD = MPI.COMM_WORLD
_COMMS = {}


def nodes_of(k: int) -> MPI.Comm:
    """A communicator over every rank whose nodes are forced to k consecutive ranks."""
    if k not in _COMMS:
        old = os.environ.get("RINGTRAIN_NODE_SIZE")
        os.environ["RINGTRAIN_NODE_SIZE"] = str(k)
        try:
            comm = WORLD.Dup()
            node_groups(comm)  # made now, while the variable says k
        finally:
            if old is None:
                del os.environ["RINGTRAIN_NODE_SIZE"]
            else:
                os.environ["RINGTRAIN_NODE_SIZE"] = old
        _COMMS[k] = comm
    return _COMMS[k]


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
def test_forced_nodes_have_the_shape_asked_for(k):
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    groups = node_groups(nodes_of(k))
    sizes = [min(k, n - start) for start in range(0, n, k)]
    ok = (groups.local.Get_size() == sizes[r // k] and groups.local.Get_rank() == r % k
          and groups.nodes == len(sizes) and groups.width == min(sizes)
          and (groups.core == MPI.COMM_NULL) == (r % k >= min(sizes)))
    assert all_ranks_agree(ok), (k, groups.local.Get_size(), groups.nodes, groups.width)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("size", ["0", "1", "n-1", "n+1", "prime"])
@pytest.mark.parametrize("dtype, op", [(d, op) for d in ("float16", "bfloat16", "float32", "float64", "int32", "int64")
                                       for op in ("sum", "mean") if not (op == "mean" and d.startswith("int"))])
def test_hierarchical_matches_mpi_allreduce(dtype, op, size, k):
    comm, n = nodes_of(k), WORLD.Get_size()
    count = element_count(size, n)
    x = random_buffer(dtype, count, seed=count + 11)
    if dtype.startswith("int"):
        expected = x.copy()
        WORLD.Allreduce(MPI.IN_PLACE, expected, op=MPI.SUM)
        out = ringtrain.allreduce(x, op=op, algorithm="hierarchical", comm=comm)
        correct = bool(np.array_equal(out, expected))
    else:
        expected, magnitude = reference(x, op, WORLD)
        out = ringtrain.allreduce(x, op=op, algorithm="hierarchical", comm=comm)
        correct = within_bound(out, expected, magnitude, dtype, n)
    same_everywhere = identical_across_ranks(as_float64(out))
    assert all_ranks_agree(correct), f"{dtype} {op} count={count} nodes of {k}: outside the bound on some rank"
    assert same_everywhere, f"{dtype} {op} count={count} nodes of {k}: ranks differ bitwise"


@pytest.mark.mpi
def test_a_bad_node_size_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("RINGTRAIN_NODE_SIZE", "two")
    comm = WORLD.Dup()
    try:
        with pytest.raises(ValueError, match="RINGTRAIN_NODE_SIZE='two' is not allowed — a whole number >= 1"):
            node_groups(comm)  # every rank reads the same variable, so every rank raises before any collective
    finally:
        comm.Free()


def _spy(monkeypatch) -> list:
    """Sizes of the buffers that ringtrain.allreduce hands to the node-aware ring."""
    from ringtrain.collectives import api
    calls, real = [], api.hierarchical_allreduce
    monkeypatch.setattr(api, "hierarchical_allreduce", lambda comm, a: (calls.append(a.size), real(comm, a))[1])
    return calls


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2])
def test_auto_takes_the_node_aware_ring_from_1_mib_where_there_are_two_levels(k, monkeypatch):
    calls, comm, n = _spy(monkeypatch), nodes_of(k), WORLD.Get_size()
    big, small = np.ones(1 << 18, np.float32), np.ones(1 << 10, np.float32)  # 1 MiB and 4 KiB
    ringtrain.allreduce(big, comm=comm)
    ringtrain.allreduce(small, comm=comm)
    # Nodes of one rank are a flat ring already; one node has no link to spare.
    expected = [1 << 18] if node_groups(comm).two_level else []
    assert all_ranks_agree(calls == expected and bool(np.all(big == n)) and bool(np.all(small == n))), calls


@pytest.mark.mpi
def test_auto_learns_the_topology_on_its_first_large_call(monkeypatch):
    calls, n = _spy(monkeypatch), WORLD.Get_size()
    monkeypatch.setenv("RINGTRAIN_NODE_SIZE", "2")
    comm = WORLD.Dup()  # no groups yet: the first call of 1 MiB or more makes them, after the handshake
    x = np.ones(1 << 18, np.float32)
    ringtrain.allreduce(x, comm=comm)
    two_level = node_groups(comm).two_level
    assert all_ranks_agree(calls == ([1 << 18] if two_level else []) and bool(np.all(x == n)))
    assert two_level == (n > 2)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("size", ["0", "1", "n-1", "n+1", "prime"])
def test_hierarchical_reduce_scatter_owns_disjoint_pieces_that_allgather_makes_whole(size, k):
    comm, n = nodes_of(k), WORLD.Get_size()
    count = element_count(size, n)
    x = random_buffer("float64", count, seed=count + 5)
    expected, magnitude = reference(x, "sum", WORLD)
    piece = ringtrain.reduce_scatter(x, algorithm="hierarchical", comm=comm)
    lo, hi = ringtrain.owned_bounds(count, comm, algorithm="hierarchical")
    # Every element is owned by exactly one rank.
    owners = np.zeros(count, dtype=np.int64)
    owners[lo:hi] = 1
    WORLD.Allreduce(MPI.IN_PLACE, owners, op=MPI.SUM)
    owned_right = piece.size == hi - lo and within_bound(piece, expected[lo:hi], magnitude[lo:hi], "float64", n)
    ringtrain.allgather(x, algorithm="hierarchical", comm=comm)
    assert all_ranks_agree(owned_right and bool(np.all(owners == 1))), (count, k, lo, hi)
    assert all_ranks_agree(within_bound(x, expected, magnitude, "float64", n))
    assert identical_across_ranks(x)


@pytest.mark.mpi
def test_an_unknown_scatter_algorithm_is_refused_on_every_rank():
    with pytest.raises((ValueError, ringtrain.CollectiveMismatchError), match="algorithm='tree'|refused"):
        ringtrain.reduce_scatter(np.ones(8), algorithm="tree")
    with pytest.raises(ValueError, match=r"algorithm='tree' is not supported; use one of \('ring', 'hierarchical'\)"):
        ringtrain.owned_bounds(8, algorithm="tree")


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("ring_min, hierarchical_min", [(16 << 20, 1 << 20), (0, 1 << 20), (1 << 10, 1 << 14),
                                                        (1 << 14, 1 << 10), (1 << 20, 0)])
def test_auto_runs_what_the_one_table_chooses(ring_min, hierarchical_min, k, monkeypatch):
    from ringtrain.collectives import api
    table = dataclasses.replace(thresholds.THRESHOLDS, ring_min_bytes=ring_min, hierarchical_min_bytes=hierarchical_min)
    monkeypatch.setattr(thresholds, "THRESHOLDS", table)
    ran = []
    for name in ("ring_reduce_scatter", "hierarchical_allreduce"):
        real = getattr(api, name)
        monkeypatch.setattr(api, name, lambda *a, real=real, name=name: (ran.append(name), real(*a))[1])
    comm, n = nodes_of(k), WORLD.Get_size()
    two_level = node_groups(comm).two_level
    runs, choices, sums = [], [], True
    for nbytes in (4, 1 << 12, 1 << 16):
        ran.clear()
        x = np.ones(nbytes // 4, np.float32)
        ringtrain.allreduce(x, comm=comm)
        runs.append({"ring_reduce_scatter": "ring", "hierarchical_allreduce": "hierarchical"}.get(
            ran[0] if ran else None, "mpi"))
        choices.append(ringtrain.choose_algorithm(nbytes, n, two_level=two_level))
        sums &= bool(np.all(x == n))
    assert all_ranks_agree(runs == choices and sums), (runs, choices)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("node_aware", ["auto", "off", "on"])
def test_the_reducers_auto_is_node_aware_unless_told_flat(node_aware, k, monkeypatch):
    # auto: allreduce's auto (NODE_AWARE_AUTO); off: FLAT_AUTO, the choice by size alone; on: always.
    monkeypatch.setenv("RINGTRAIN_NODE_SIZE", str(k))  # the reducer learns the nodes of its own duplicate
    calls, comm, n = _spy(monkeypatch), nodes_of(k), WORLD.Get_size()
    model = torch.nn.Linear(512, 512)  # one bucket of 1 MiB and more: where the topology decides
    reducer = ringtrain.GradientReducer(model, comm=comm, node_aware=node_aware)
    try:
        model(torch.ones(2, 512)).sum().backward()
        reducer.synchronize()
    finally:
        reducer.close()
    two_level = node_groups(comm).two_level
    hierarchical = n > 1 and (node_aware == "on" or (node_aware == "auto" and two_level))
    assert all_ranks_agree(bool(calls) == hierarchical), (calls, two_level)
