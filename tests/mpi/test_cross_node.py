"""Compression only across nodes: the reducer's node-aware path, with nodes forced to 1, 2 and 3 ranks.

References: the exact mean of every rank's gradient (float64 MPI_Allreduce),
and the count of elements each rank hands its compressor.
"""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from ringtrain import GradientReducer
from ringtrain.collectives.topology import node_groups
from tests.helpers import all_ranks_agree, identical_across_ranks
from tests.mpi.test_hierarchical import nodes_of

WORLD = MPI.COMM_WORLD
CAP_MB = 0.003  # a few buckets, so blocks and parameters meet in every way


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 24))


def batch(step: int, rows: int):
    g = torch.Generator().manual_seed(1000 * step + WORLD.Get_rank())
    return torch.randn(rows, 16, generator=g)


def averaged(k: int, compression, monkeypatch, steps=1, rows=3, node_aware="auto", count=None):
    """The gradients after ``steps`` reduced steps, and the exact mean of the last step's local gradients."""
    monkeypatch.setenv("RINGTRAIN_NODE_SIZE", str(k))
    m, local = model(), model()
    reducer = GradientReducer(m, bucket_cap_mb=CAP_MB, compression=compression, comm=nodes_of(k),
                              node_aware=node_aware)
    if count is not None:
        for c in reducer.compressors:
            real = c.compress
            c.compress = lambda x, real=real: (count.append(np.asarray(x).size), real(x))[1]
    for step in range(steps):
        m.zero_grad(set_to_none=True)
        local.zero_grad(set_to_none=True)
        x = batch(step, rows)
        m(x).square().sum().backward()
        local(x).square().sum().backward()
        reducer.synchronize()
    got = torch.cat([p.grad.reshape(-1) for p in m.parameters()]).numpy().astype(np.float64)
    exact = torch.cat([p.grad.reshape(-1) for p in local.parameters()]).numpy().astype(np.float64)
    WORLD.Allreduce(MPI.IN_PLACE, exact, op=MPI.SUM)
    reducer.close()
    return got, exact / WORLD.Get_size(), reducer


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_lossless_compressor_node_aware_gives_the_exact_mean(k, monkeypatch):
    got, exact, _ = averaged(k, "lz4", monkeypatch, node_aware="on")
    close = np.allclose(got, exact, rtol=1e-5, atol=1e-6 * np.abs(exact).max())
    assert all_ranks_agree(bool(close)), np.abs(got - exact).max()
    assert identical_across_ranks(got)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
def test_only_what_crosses_nodes_is_compressed(k, monkeypatch):
    """Node-aware, each node compresses every element once (split among its ranks); flat, every rank does."""
    n, count = WORLD.Get_size(), []
    got, exact, reducer = averaged(k, "lz4", monkeypatch, node_aware="on", count=count)
    groups = node_groups(reducer.comm)
    elements = sum(b.bounds[-1][1] for b in reducer.buckets)
    total = np.array([sum(count)], dtype=np.int64)
    WORLD.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
    expected = 0 if groups.nodes == 1 else groups.nodes * elements
    assert all_ranks_agree(int(total[0]) == expected), (int(total[0]), expected, groups.nodes)
    flat = []
    averaged(k, "lz4", monkeypatch, node_aware="off", count=flat)
    assert all_ranks_agree(sum(flat) == (elements if n > 1 else 0)), (sum(flat), elements)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
def test_auto_goes_node_aware_only_on_two_levels(k, monkeypatch):
    _, _, reducer = averaged(k, "fp16", monkeypatch)
    groups = node_groups(reducer.comm) if WORLD.Get_size() > 1 else None
    expected = groups is not None and groups.nodes > 1 and groups.widest > 1
    assert all_ranks_agree(reducer.node_aware == expected), (reducer.node_aware, expected)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("spec, rel", [("fp16", 2.0 ** -9), ("bf16", 2.0 ** -6), ("int8", 2.0 / 127)])
def test_summable_codecs_across_nodes_stay_within_one_rounding_per_node(spec, rel, k, monkeypatch):
    """Each node's block sum is rounded at most once per cross-node hop: error <= nodes x rel x max|node sum| / n."""
    got, exact, reducer = averaged(k, spec, monkeypatch, node_aware="on")
    nodes = node_groups(reducer.comm).nodes if WORLD.Get_size() > 1 else 1
    # A loose envelope from the per-rank magnitudes: max |node sum| <= ranks per node x max |gradient|.
    bound = nodes * rel * np.abs(exact).max() * WORLD.Get_size()
    err = np.abs(got - exact).max()
    assert all_ranks_agree(bool(err <= bound)), (err, bound)
    assert identical_across_ranks(got)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [1, 2, 3])
def test_powersgd_gets_whole_parameters_and_is_exact_on_low_rank_gradients(k, monkeypatch):
    """One sample per rank makes each weight's gradient rank one, so any node's sum has rank <= 4: exact at rank 4."""
    got, exact, _ = averaged(k, "powersgd:rank=4,min_ratio=1", monkeypatch, rows=1, node_aware="on")
    ok = np.linalg.norm(got - exact) <= 1e-4 * np.linalg.norm(exact)
    assert all_ranks_agree(bool(ok)), np.linalg.norm(got - exact) / np.linalg.norm(exact)
    assert identical_across_ranks(got)


@pytest.mark.mpi
@pytest.mark.parametrize("k", [2, 3])
def test_error_feedback_keeps_each_blocks_cross_node_error(k, monkeypatch):
    """Over several steps the node-aware ef+int8 mean tracks the exact mean (what is dropped comes back)."""
    got, exact, reducer = averaged(k, "ef+int8", monkeypatch, steps=3, node_aware="on")
    assert identical_across_ranks(got)
    residuals = [c.residual for c in reducer.compressors]
    groups = node_groups(reducer.comm) if WORLD.Get_size() > 1 else None
    if groups is not None and groups.nodes > 1 and groups.local.Get_rank() < groups.width:
        blocks = [b[groups.local.Get_rank()] for b in reducer._blocks]
        sizes_match = all(r is not None and r.size == hi - lo for r, (lo, hi) in zip(residuals, blocks) if hi > lo)
    else:  # nothing crossed a link from this rank: nothing to remember
        sizes_match = all(r is None for r in residuals)
    assert all_ranks_agree(sizes_match)
    assert all_ranks_agree(bool(np.abs(got - exact).max() <= 0.05 * np.abs(exact).max()))


@pytest.mark.mpi
@pytest.mark.parametrize("node_aware", ["on", "off"])
def test_compression_state_loads_only_into_the_same_node_layout(node_aware, monkeypatch, capsys):
    _, _, trained = averaged(2, "ef+int8", monkeypatch, steps=2, node_aware="on")
    saved = trained.state_dict()
    fresh = GradientReducer(model(), bucket_cap_mb=CAP_MB, compression="ef+int8", comm=nodes_of(2),
                            node_aware=node_aware)
    fresh.load_state_dict(saved)
    fresh.close()
    loaded = [c.residual for c in fresh.compressors]
    wanted = [s["residual"] for s in saved["compression"]]
    matches = saved["blocks"] == fresh.state_dict()["blocks"]
    if matches:  # the same cut: every residual back, bit for bit
        ok = all((a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b.numpy()))
                 for a, b in zip(loaded, wanted))
    else:  # another cut: nothing loaded, and rank 0 says so
        ok = all(r is None for r in loaded)
        if WORLD.Get_rank() == 0:
            ok &= "error-feedback residuals start from zero" in capsys.readouterr().err
    # node_aware="on" forces the blocks on any layout, even one node; one rank has none either way.
    assert all_ranks_agree(ok and matches == (node_aware == "on" or WORLD.Get_size() == 1)), (matches, saved["blocks"])
