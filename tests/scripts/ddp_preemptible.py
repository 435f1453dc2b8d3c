"""DDP that a time limit does not lose: on USR1 it checkpoints and exits 75; run again, it resumes.

What slurm/torch.sbatch asks of a script that wants to be requeued:

    sbatch slurm/torch.sbatch tests/scripts/ddp_preemptible.py --steps 400 --checkpoint ckpt.pt

1. Catch USR1 and only note it: the signal arrives in the middle of a step,
   and on each rank at a slightly different moment.
2. After each step, agree on it (an allreduce MAX of the flag), so that every
   rank stops after the same step.
3. Save (rank 0, to a temporary name, then rename: a job killed while writing
   leaves the old checkpoint whole), wait for it on every rank, exit with 75.
4. At the start, resume from the checkpoint if there is one. The batches here
   depend only on (step, rank), so the resumed run takes the batches an
   uninterrupted one would.
"""
import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

import ringtrain.distributed  # noqa: F401  registers the "ringtrain" backend

STOPPED_FOR_REQUEUE = 75  # torch.sbatch requeues the job on this exit code

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=400)
parser.add_argument("--checkpoint", required=True, help="a file on storage that every node sees")
parser.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step, to stand for real work")
args = parser.parse_args()

asked_to_stop = torch.zeros(1)
signal.signal(signal.SIGUSR1, lambda *_: asked_to_stop.fill_(1))

dist.init_process_group("ringtrain")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
start = 0
if os.path.exists(args.checkpoint):
    state = torch.load(args.checkpoint)
    model.module.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    start = state["step"]
    if rank == 0:
        print(f"resumed from the checkpoint at step {start}", flush=True)

target = torch.linspace(-1, 1, 16)
for step in range(start, args.steps):
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(world * step + rank))
    loss = torch.nn.functional.mse_loss(model(x).squeeze(1), x @ target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    time.sleep(args.step_seconds)
    if rank == 0 and (step + 1) % 10 == 0:
        print(f"step {step + 1}/{args.steps}: loss {loss.item():.6f}", flush=True)
    stop = asked_to_stop.clone()
    dist.all_reduce(stop, op=dist.ReduceOp.MAX)
    if stop.item():
        if rank == 0:
            state = {"model": model.module.state_dict(), "optimizer": opt.state_dict(), "step": step + 1}
            torch.save(state, args.checkpoint + ".tmp")
            os.replace(args.checkpoint + ".tmp", args.checkpoint)
            print(f"USR1: checkpointed at step {step + 1}, exiting with {STOPPED_FOR_REQUEUE}", flush=True)
        dist.barrier()
        dist.destroy_process_group()
        sys.exit(STOPPED_FOR_REQUEUE)
if rank == 0:
    print(f"{world} ranks, step {args.steps}: loss {loss.item():.6f}", flush=True)
dist.destroy_process_group()
