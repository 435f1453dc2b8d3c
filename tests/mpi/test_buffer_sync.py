"""Buffers kept equal: rank 0's BatchNorm statistics everywhere after each synchronize."""
import pytest
import torch
from mpi4py import MPI

import ringtrain
from tests.helpers import all_ranks_agree, identical_across_ranks

WORLD = MPI.COMM_WORLD


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 2))
        self.register_buffer("mask", torch.tensor([True, False, True]))  # any dtype travels

    def forward(self, x):
        return self.body(x)


def stats(net):
    bn = net.body[1]
    return torch.cat([bn.running_mean, bn.running_var, bn.num_batches_tracked.double().reshape(1)]).double().numpy()


@pytest.mark.mpi
@pytest.mark.parametrize("broadcast_buffers", [True, False])
def test_running_statistics_follow_rank_0(broadcast_buffers):
    net = Net()
    reducer = ringtrain.GradientReducer(net, broadcast_buffers=broadcast_buffers)
    mine = torch.randn(4, 6, generator=torch.Generator().manual_seed(WORLD.Get_rank() + 1))
    same = torch.randn(4, 6, generator=torch.Generator().manual_seed(99))
    net(mine).sum().backward()  # each rank updates its statistics from its own batch
    reducer.synchronize()
    net(same).sum().backward()  # the same batch everywhere: equal only if they started equal
    reducer.synchronize()
    reducer.close()
    equal = identical_across_ranks(stats(net))
    if broadcast_buffers or WORLD.Get_size() == 1:
        assert equal and all_ranks_agree(int(net.body[1].num_batches_tracked) == 2)
    else:  # the drift this prevents
        assert not equal


@pytest.mark.mpi
def test_evaluation_forwards_do_not_broadcast():
    """Only forwards that build a graph sync: an eval loop on some ranks alone must not hang the others."""
    net = Net()
    reducer = ringtrain.GradientReducer(net)
    if WORLD.Get_rank() == 0:
        with torch.no_grad():
            net.eval()(torch.randn(4, 6))
    reducer.close()
    assert all_ranks_agree(True)
