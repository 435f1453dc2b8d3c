"""DDP, FSDP2 and pipelining on the ringtrain backend, against the same on gloo or one process.

Both groups live in one job: the default group is ringtrain's, and gloo's
meets through the MPI-served store. Every model starts from the same seed and
trains on the same per-rank batches; parameters are compared after 10 steps.
"""
import copy

import pytest
import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.helpers import all_ranks_agree
from tests.mpi.backend_setup import start, stop

WORLD = MPI.COMM_WORLD
STEPS = 10


@pytest.fixture(scope="module")
def groups():
    yield start()
    stop()


def mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 4))


def batch(step: int, rank: int):
    g = torch.Generator().manual_seed(step * 100 + rank)
    return torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)


def train(model, steps: int = STEPS, lr: float = 0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for step in range(steps):
        x, y = batch(step, WORLD.Get_rank())
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model


def largest_difference(a, b) -> float:
    """The largest difference between corresponding tensors, relative to the largest value of ``b``."""
    scale = max(q.abs().max().item() for q in b)
    return max((p - q).abs().max().item() for p, q in zip(a, b)) / scale


@pytest.mark.mpi
@pytest.mark.parametrize("buckets", ["one", "several"])
def test_ddp_on_ringtrain_trains_the_parameters_gloo_does(groups, buckets):
    ringtrain_group, gloo_group = groups
    cap = 25 if buckets == "one" else 0.001  # MB: several buckets, overlapping backward
    ours = train(DDP(mlp(), process_group=ringtrain_group, bucket_cap_mb=cap))
    theirs = train(DDP(mlp(), process_group=gloo_group, bucket_cap_mb=cap))
    gap = largest_difference([p.detach() for p in ours.parameters()], [p.detach() for p in theirs.parameters()])
    assert all_ranks_agree(gap <= 1e-6), WORLD.allgather(gap)


@pytest.mark.mpi
def test_ddp_no_sync_and_a_comm_hook_on_ringtrain(groups):
    ringtrain_group, gloo_group = groups
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def accumulate(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(4):
            x, y = batch(step, WORLD.Get_rank())
            with model.no_sync():
                torch.nn.functional.mse_loss(model(x), y).backward()
            x, y = batch(step + 50, WORLD.Get_rank())
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        return [p.detach() for p in model.parameters()]

    ours = DDP(mlp(), process_group=ringtrain_group)
    ours.register_comm_hook(ringtrain_group, default_hooks.allreduce_hook)
    theirs = DDP(mlp(), process_group=gloo_group)
    gap = largest_difference(accumulate(ours), accumulate(theirs))
    assert all_ranks_agree(gap <= 1e-6), WORLD.allgather(gap)


def fsdp_train(mesh, mp=None):
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = mp or MixedPrecisionPolicy()
    model = mlp()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    train(model)
    return [p.full_tensor().detach().float() for p in model.parameters()]


@pytest.mark.mpi
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fsdp2_on_ringtrain_trains_the_parameters_gloo_does(groups, precision):
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy
    ringtrain_group, gloo_group = groups
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
        else MixedPrecisionPolicy()
    ours = fsdp_train(init_device_mesh("cpu", (WORLD.Get_size(),)), mp)
    theirs = fsdp_train(DeviceMesh.from_group(gloo_group, "cpu"), mp)
    gap = largest_difference(ours, theirs)
    assert all_ranks_agree(gap <= 1e-6), WORLD.allgather(gap)


@pytest.mark.mpi(min_size=4)
def test_hsdp_on_a_2x2_mesh_trains_what_one_process_does_on_the_whole_batch(groups):
    from torch.distributed.device_mesh import init_device_mesh
    if WORLD.Get_size() != 4:
        pytest.skip("a 2x2 mesh needs 4 ranks")
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    ours = fsdp_train(mesh)
    # One process, the four ranks' batches at once: the mean of their losses has the averaged gradient.
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for step in range(STEPS):
        opt.zero_grad()
        loss = sum(torch.nn.functional.mse_loss(model(batch(step, r)[0]), batch(step, r)[1]) for r in range(4)) / 4
        loss.backward()
        opt.step()
    gap = largest_difference(ours, [p.detach() for p in model.parameters()])
    assert all_ranks_agree(gap <= 1e-6), WORLD.allgather(gap)


@pytest.mark.mpi
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "interleaved"])
def test_pipelining_on_ringtrain_equals_one_process(groups, schedule):
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
    n, me = WORLD.Get_size(), WORLD.Get_rank()
    per_rank = 2 if schedule == "interleaved" else 1
    stages = n * per_rank
    torch.manual_seed(1)
    layers = [torch.nn.Linear(8, 8) for _ in range(stages)]
    reference = copy.deepcopy(layers)
    g = torch.Generator().manual_seed(7)
    micro = 2 * n  # at least one per stage (1F1B) and a multiple of the ranks (interleaved)
    x, y = torch.randn(2 * micro, 8, generator=g), torch.randn(2 * micro, 8, generator=g)
    mine = [i for i in range(stages) if i % n == me]  # interleaved: rank r holds stages r, r + n, ...
    built = [PipelineStage(layers[i], i, stages, torch.device("cpu")) for i in mine]

    def loss_fn(out, target):
        return torch.nn.functional.mse_loss(out, target, reduction="sum")
    # scale_grads=False: the microbatches' summed losses are the whole batch's, as in the reference.
    if schedule == "interleaved":
        runner = ScheduleInterleaved1F1B(built, n_microbatches=micro, loss_fn=loss_fn, scale_grads=False)
    else:
        runner = (ScheduleGPipe if schedule == "gpipe" else Schedule1F1B)(built[0], n_microbatches=micro,
                                                                          loss_fn=loss_fn, scale_grads=False)
    args = {"target": y} if stages - 1 in mine else {}
    runner.step(x, **args) if me == 0 else runner.step(**args)
    out = x
    for layer in reference:
        out = layer(out)
    loss_fn(out, y).backward()
    gap = max(largest_difference([p.grad for p in layers[i].parameters()], [p.grad for p in reference[i].parameters()])
              for i in mine)
    assert all_ranks_agree(gap <= 1e-6), WORLD.allgather(gap)
