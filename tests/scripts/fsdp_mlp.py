"""FSDP2 on the ringtrain backend: a 2-layer MLP sharded over every rank, against one process.

    sbatch --ntasks=3 slurm/torch.sbatch tests/scripts/fsdp_mlp.py
    # rank 0 prints: 3 ranks, FSDP2 step 5: loss 0.412 (step 1: 0.693), parameters identical on every rank,
    #                max difference from one process 2.4e-08

Each rank trains on its own batch; FSDP2 averages the gradients (reduce-scatter),
so the sharded model must follow one plain model that every rank trains on all
ranks' batches together. With 3 ranks the shards are uneven, and the last
layer's one-row weight leaves two ranks an empty shard.
"""
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import ringtrain.distributed  # noqa: F401  registers the "ringtrain" backend

STEPS, BATCH = 5, 8


def mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)  # the same initial weights on every rank and in the reference
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(BATCH, 16, generator=torch.Generator().manual_seed(1000 * step + rank))
    return x, torch.sin(x.sum(1, keepdim=True))


def train(model, opt, batches) -> list[float]:
    losses = []
    for x, y in batches:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


dist.init_process_group("ringtrain")
rank, world = dist.get_rank(), dist.get_world_size()
model = mlp()
for layer in (model[0], model[2]):
    fully_shard(layer, mesh=init_device_mesh("cpu", (world,)))
fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
losses = train(model, torch.optim.SGD(model.parameters(), lr=0.1), [batch(rank, s) for s in range(STEPS)])
loss = torch.tensor(losses)
dist.all_reduce(loss, op=dist.ReduceOp.AVG)  # the mean over all ranks' batches, as the reference sees it

# The reference: one process, one model, every rank's batch at each step (equal sizes: the mean of means).
reference = mlp()
together = [tuple(torch.cat(t) for t in zip(*(batch(r, s) for r in range(world)))) for s in range(STEPS)]
reference_losses = train(reference, torch.optim.SGD(reference.parameters(), lr=0.1), together)

full = torch.cat([p.full_tensor().flatten() for p in model.parameters()])  # gathers the shards
everyone = [torch.empty_like(full) for _ in range(world)]
dist.all_gather(everyone, full)
identical = all(torch.equal(other, full) for other in everyone)
difference = (full - torch.cat([p.flatten() for p in reference.parameters()])).abs().max().item()
loss_difference = max(abs(a - b) for a, b in zip(loss.tolist(), reference_losses))
if rank == 0:
    print(f"{world} ranks, FSDP2 step {STEPS}: loss {loss[-1]:.6f} (step 1: {loss[0]:.6f}), parameters "
          f"{'identical' if identical else 'DIFFERENT'} on every rank, max difference from one process "
          f"{difference:.1e} (loss {loss_difference:.1e})")
dist.destroy_process_group()
