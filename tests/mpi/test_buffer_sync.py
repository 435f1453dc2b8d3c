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
    counted = all_ranks_agree(int(net.body[1].num_batches_tracked) == 2)
    if broadcast_buffers or WORLD.Get_size() == 1:
        assert equal and counted
    else:  # the drift this prevents
        assert not equal


class Recorder:
    """Stands in for the reducer's buffer broadcast: counts the calls, and passes them on only when told to."""

    def __init__(self, sync):
        self.sync, self.calls, self.passing = sync, 0, False

    def __call__(self):
        self.calls += 1
        if self.passing:  # recording alone never communicates, so a stray call on one rank cannot hang
            self.sync()


@pytest.mark.mpi(min_size=2)  # one rank alone has nothing to broadcast to
def test_evaluation_forwards_do_not_broadcast():
    """Only forwards that build a graph sync: an eval loop on some ranks alone must not hang the others."""
    net = Net()
    reducer = ringtrain.GradientReducer(net)
    recorder = reducer._sync_buffers = Recorder(reducer._sync_buffers)
    if WORLD.Get_rank() == 0:
        with torch.no_grad():
            net.eval()(torch.randn(4, 6))
        net.train()
    during_evaluation = recorder.calls
    # A training step on every rank does broadcast once: the recorder stands where the broadcast is made.
    recorder.passing = True
    net(torch.randn(4, 6)).sum().backward()
    reducer.synchronize()
    reducer.close()
    in_training = recorder.calls - during_evaluation
    equal = identical_across_ranks(stats(net))
    evaluation_silent = all_ranks_agree(during_evaluation == 0)
    training_broadcast = all_ranks_agree(in_training == 1)
    assert evaluation_silent, "an evaluation forward on rank 0 alone broadcast the buffers"
    assert training_broadcast and equal
