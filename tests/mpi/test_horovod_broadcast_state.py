"""broadcast_parameters and broadcast_optimizer_state: every rank ends with the root's values.

The root is the last rank, so that rank 0's values are not the answer by
accident; what each rank should end with is checked against the root's values
as mpi4py's own bcast carries them, or against the closed form of the root's
rank-dependent settings.
"""
import numpy as np
import pytest
import torch
from mpi4py import MPI

import ringtrain.horovod as hvd
from ringtrain.collectives.comm import CollectiveMismatchError
from tests.helpers import all_ranks_agree

WORLD = MPI.COMM_WORLD
ROOT = WORLD.Get_size() - 1


class WithBuffers(torch.nn.Module):
    """Parameters, a float buffer, an integer buffer and a bool mask: every dtype a state_dict carries."""

    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = torch.nn.Linear(5, 3)
        self.norm = torch.nn.BatchNorm1d(3)
        self.register_buffer("mask", torch.rand(4) > 0.5)
        self.bf16 = torch.nn.Parameter(torch.randn(6).to(torch.bfloat16))


def as_bytes(model):
    return {k: v.detach().clone().reshape(-1).view(torch.uint8).numpy() for k, v in model.state_dict().items()}


@pytest.fixture(autouse=True)
def horovod():
    hvd.init()


@pytest.mark.mpi
@pytest.mark.parametrize("form", ["state_dict", "named_parameters", "parameters"])
def test_broadcast_parameters_gives_every_rank_the_roots(form):
    model = WithBuffers(seed=WORLD.Get_rank())
    model.norm.num_batches_tracked += WORLD.Get_rank()
    expected = WORLD.bcast(as_bytes(model), root=ROOT)  # the root's bytes, as mpi4py carries them
    params = {"state_dict": lambda: model.state_dict(), "named_parameters": lambda: list(model.named_parameters()),
              "parameters": lambda: list(model.parameters())}[form]()
    hvd.broadcast_parameters(params, root_rank=ROOT)
    got = as_bytes(model)
    names = expected if form == "state_dict" else [k for k, _ in model.named_parameters()]
    assert all_ranks_agree(all(np.array_equal(got[k], expected[k]) for k in names))


@pytest.mark.mpi
def test_broadcast_parameters_refuses_what_it_cannot_send():
    ok = True
    for params, root in ((torch.zeros(2), 0), ([torch.zeros(1)], WORLD.Get_size()), ({"a": 1.5}, 0)):
        try:
            hvd.broadcast_parameters(params, root_rank=root)
            ok = False
        except ValueError:
            pass
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_different_layouts_raise_on_every_rank():
    mismatch = WORLD.Get_size() > 1
    t = torch.zeros(3 + (WORLD.Get_rank() == ROOT and mismatch))
    try:
        hvd.broadcast_parameters([t], root_rank=ROOT)
        raised = False
    except CollectiveMismatchError:
        raised = True
    assert all_ranks_agree(raised == mismatch)


def adam_for(rank, params):
    return torch.optim.Adam(params, lr=0.01 * (rank + 1), betas=(0.8 + 0.01 * rank, 0.99), weight_decay=0.1 * rank,
                            amsgrad=rank % 2 == 1)


def optimizer_values(opt):
    """Every state tensor's bytes, and every hyperparameter, in order."""
    sd = opt.state_dict()
    tensors = [v.reshape(-1).view(torch.uint8).numpy().copy() for s in sd["state"].values() for v in s.values()
               if torch.is_tensor(v)]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return tensors, groups


@pytest.mark.mpi
@pytest.mark.parametrize("distributed", [False, True])
def test_broadcast_optimizer_state_gives_every_rank_the_roots(distributed):
    r = WORLD.Get_rank()
    model = torch.nn.Linear(4, 2)
    hvd.broadcast_parameters(model.state_dict(), root_rank=ROOT)
    opt = adam_for(r, model.parameters())
    if distributed:
        opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    # Only the root has stepped (the user's Adam's own step, on gradients set by hand, not by a backward that a
    # DistributedOptimizer would average): the others start without state.
    if r == ROOT:
        torch.manual_seed(7)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        torch.optim.Adam.step(opt)
    weights = [p.detach().clone() for p in model.parameters()]
    expected = WORLD.bcast(optimizer_values(opt), root=ROOT)
    hvd.broadcast_optimizer_state(opt, root_rank=ROOT)
    tensors, groups = optimizer_values(opt)
    ok = len(tensors) == len(expected[0]) and all(np.array_equal(a, b) for a, b in zip(tensors, expected[0]))
    ok &= groups == expected[1]
    # The closed form of the root's settings, with their Python types.
    g = opt.param_groups[0]
    ok &= g["lr"] == 0.01 * (ROOT + 1) and g["betas"] == (0.8 + 0.01 * ROOT, 0.99) and type(g["betas"]) is tuple
    ok &= g["amsgrad"] is (ROOT % 2 == 1)
    # The step that created the state on the other ranks left the weights alone (as did the broadcast).
    ok &= all(torch.equal(p, w) for p, w in zip(model.parameters(), weights))
    # The state works: one more (averaged) step on every rank.
    opt.zero_grad()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert all_ranks_agree(ok)


@pytest.mark.mpi
def test_broadcast_optimizer_state_of_a_fresh_stateless_optimizer():
    """SGD without momentum has no state: only its hyperparameters travel; gradients are left as zeros."""
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1 * (WORLD.Get_rank() + 1))
    hvd.broadcast_optimizer_state(opt, root_rank=ROOT)
    ok = opt.param_groups[0]["lr"] == 0.1 * (ROOT + 1) and not opt.state
    ok &= all(p.grad is not None and not p.grad.any() for p in model.parameters())
    try:
        hvd.broadcast_optimizer_state(torch.optim.LBFGS(model.parameters()), root_rank=ROOT)
        ok = False
    except ValueError:
        pass
    assert all_ranks_agree(ok)
