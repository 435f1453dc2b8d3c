"""Bytes on the wire, counted where ringtrain sends them, against each schedule's closed form."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain
from ringtrain import compression
from ringtrain.collectives import traffic
from ringtrain.collectives.layout import chunk_bounds
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD


def ring_elements(count: int) -> int:
    """Elements rank r sends in a ring allreduce: every chunk but its own, then every chunk but r + 1's."""
    n, r = WORLD.Get_size(), WORLD.Get_rank()
    if n == 1:
        return 0
    size = [hi - lo for lo, hi in (chunk_bounds(count, n, c) for c in range(n))]
    return (count - size[r]) + (count - size[(r + 1) % n])


@pytest.mark.mpi
@pytest.mark.parametrize("count", [1, 1000, 100_003])
def test_the_ring_sends_every_chunk_but_one_twice(count):
    sent = [0]
    with traffic.counting(sent):
        ringtrain.allreduce(np.ones(count, np.float32), algorithm="ring")
    assert all_ranks_agree(sent[0] == 4 * ring_elements(count)), (sent[0], 4 * ring_elements(count))


@pytest.mark.mpi
def test_fp16_on_the_ring_sends_half_the_bytes():
    count, sent = 100_003, [0]
    with traffic.counting(sent):
        compression.get("fp16").allreduce_mean(np.ones(count, np.float32), WORLD)
    assert all_ranks_agree(sent[0] == 2 * ring_elements(count)), sent[0]


@pytest.mark.mpi
def test_nothing_counts_outside_a_counting_block():
    sent = [0]
    ringtrain.allreduce(np.ones(1000, np.float32), algorithm="ring")
    with traffic.counting(sent):
        pass
    assert all_ranks_agree(sent[0] == 0)


@pytest.mark.mpi
def test_the_reducer_reports_each_steps_bytes():
    """Small buckets take native MPI_Allreduce, counted at 2 (n-1)/n of each bucket (flags included)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Linear(40, 5))
    reducer = ringtrain.GradientReducer(model, bucket_cap_mb=0.002, node_aware="off")
    n = WORLD.Get_size()
    expected = sum(2 * (n - 1) * b.numel * 4 // n for b in reducer.buckets) if n > 1 else 0
    got = []
    for _ in range(2):  # per step, not accumulated across steps
        model(torch.ones(3, 30)).sum().backward()
        reducer.synchronize()
        got.append(reducer.last_wire_bytes)
    reducer.close()
    assert all_ranks_agree(got == [expected, expected]), (got, expected)
