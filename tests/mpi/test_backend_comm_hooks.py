"""ringtrain's compression as DDP comm hooks: the averages a reference loop computes, and exact resume.

The reference trains the plain model and averages its flat gradient, in DDP's
bucket layout (one bucket, parameters in registration order), with a
compressor of the same spec called directly: so after 10 steps the
parameters must match bit for bit. The compressors' own arithmetic is tested
against closed forms elsewhere (tests/mpi/test_compressed_allreduce.py).
"""
import pytest
import torch
import torch.distributed as dist
from mpi4py import MPI
from torch.nn.parallel import DistributedDataParallel as DDP

import ringtrain
from tests.helpers import all_ranks_agree
from tests.mpi.backend_setup import start, stop

WORLD = MPI.COMM_WORLD
SPECS = ["fp16", "ef+int8", "powersgd:rank=2", "ef+topk:ratio=0.1", "dgc:ratio=0.1,momentum=0.9,warmup=0"]


@pytest.fixture(scope="module", autouse=True)
def groups():
    yield start()
    stop()


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4))


def step(model, opt, i: int) -> None:
    g = torch.Generator().manual_seed(i * 100 + WORLD.Get_rank())
    x, y = torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


def ddp_with_hook(spec):
    # One bucket; find_unused_parameters=True keeps DDP from rebuilding it after the first step, so its
    # layout stays registration order throughout (comm_hooks.py: what an exact resume needs).
    model = DDP(mlp(), bucket_cap_mb=100, find_unused_parameters=True)
    state, hook = ringtrain.distributed.comm_hook(spec, node_aware=False)
    model.register_comm_hook(state, hook)
    return model, state


@pytest.mark.mpi
@pytest.mark.parametrize("spec", SPECS)
def test_a_comm_hook_averages_as_its_compressor_does(spec):
    ours, state = ddp_with_hook(spec)
    opt = torch.optim.SGD(ours.parameters(), lr=0.05)
    for i in range(10):
        step(ours, opt, i)
        opt.step()
    model = mlp()
    params = list(model.parameters())
    layout = state.buckets[0][0]
    compressor = ringtrain.compression.get(spec)
    bounds = [sum(p.numel() for p in params[:k]) for k in range(len(params) + 1)]
    compressor.set_layout([(bounds[k], bounds[k + 1], tuple(p.shape)) for k, p in enumerate(params)])
    ref_opt = torch.optim.SGD(params, lr=0.05)
    for i in range(10):
        step(model, ref_opt, i)
        flat = torch.cat([p.grad.reshape(-1) for p in params]).numpy()
        mean = torch.from_numpy(compressor.allreduce_mean(flat, MPI.COMM_WORLD))
        for k, p in enumerate(params):
            p.grad.copy_(mean[bounds[k]:bounds[k + 1]].reshape(p.shape))
        ref_opt.step()
    same = layout == tuple(p.numel() for p in params) and \
        all(torch.equal(p, q) for p, q in zip(ours.module.parameters(), params))
    assert all_ranks_agree(same)


@pytest.mark.mpi
@pytest.mark.parametrize("spec", ["ef+int8", "powersgd:rank=2"])
def test_a_comm_hook_resumes_bit_for_bit_from_its_state_dict(spec):
    def run(steps, saved=None):
        model, state = ddp_with_hook(spec)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        first = 0
        if saved is not None:
            model.module.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
            state.load_state_dict(saved["hook"])
            first = saved["step"]
        for i in range(first, steps):
            step(model, opt, i)
            opt.step()
        return model, {"model": model.module.state_dict(), "opt": opt.state_dict(), "hook": state.state_dict(),
                       "step": steps}

    whole, _ = run(8)
    _, saved = run(4)
    resumed, _ = run(8, saved)
    same = all(torch.equal(p, q) for p, q in zip(whole.module.parameters(), resumed.module.parameters()))
    assert all_ranks_agree(same)


@pytest.mark.mpi
def test_a_comm_hook_is_refused_on_another_backend_and_for_no_compression():
    _, gloo = dist.group.WORLD, dist.new_group(backend="gloo")
    errors = []
    try:
        ringtrain.distributed.comm_hook("none")
    except ValueError as e:
        errors.append(str(e))
    state, hook = ringtrain.distributed.comm_hook("fp16", gloo)
    try:
        state.group()
    except TypeError as e:
        errors.append(str(e))
    assert all_ranks_agree(len(errors) == 2 and "compresses nothing" in errors[0] and "gloo" in errors[1]), errors
