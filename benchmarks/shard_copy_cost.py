"""What --elastic --zero 1/2's shard copies cost per step: the copy and swap alone, against the training step.

    mpirun --with-ft ulfm --mca pml ob1 --mca btl tcp,self -n 4 python benchmarks/shard_copy_cost.py \
        --json benchmarks/results/elastic/shard_copy_cost_n4.json

(Open MPI with ULFM and TCP, as --elastic runs; any MPI runs it.)

The model is the trainer's default GPT (4 layers, width 128, context 128:
842,496 parameters) under ZeroOptimizer(AdamW) at stage 1 or 2, batch 8 per
rank. One job times, step by step, the training step (forward, backward, the
reduce-scatter, the optimizer step and the parameters' allgather) and then
``shard_copies.take`` (copy this rank's pieces, send their optimizer state to
the next rank, receive the previous rank's), each the median over steps after
a warm-up, and reports the bytes each rank sends and holds for the copies
beside the optimizer state it holds. The copies' peer is the step they ride on.
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ringtrain import GradientReducer, ZeroOptimizer  # noqa: E402
from ringtrain.elastic import shard_copies  # noqa: E402
from ringtrain.model import GPT, GPTConfig  # noqa: E402
from ringtrain.results import add_link_argument, metadata, write_result  # noqa: E402
from ringtrain.train.memory import usage  # noqa: E402
from ringtrain.train.threads import set_torch_threads  # noqa: E402


def run(stage: int, steps: int, comm: MPI.Comm) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig())
    reducer = GradientReducer(model, comm=comm, zero=stage)
    opt = ZeroOptimizer(reducer, torch.optim.AdamW, model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(comm.Get_rank())
    x = torch.randint(0, 256, (8, 129), generator=g)
    step_s, copy_s, held = [], [], None
    for _ in range(steps):
        comm.Barrier()
        t0 = time.perf_counter()
        model(x[:, :-1], x[:, 1:])[1].backward()  # (logits, loss)
        reducer.synchronize()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        held = shard_copies.take(opt, comm, 0)
        t2 = time.perf_counter()
        step_s.append(t1 - t0)
        copy_s.append(t2 - t1)
    warm = steps // 4
    out = {"stage": stage, "step_ms": 1e3 * float(np.median(step_s[warm:])),
           "copy_ms": 1e3 * float(np.median(copy_s[warm:])), "sent_bytes": held.mine.state.numel(),
           "held_bytes": held.nbytes(), "optimizer_state_bytes": usage(model, reducer, opt)["optimizer_state"]}
    out["copy_vs_step"] = out["copy_ms"] / out["step_ms"]
    reducer.close()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--json")
    add_link_argument(p)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    set_torch_threads(comm)
    rows = [run(stage, args.steps, comm) for stage in (1, 2)]
    # Every rank's figures: the largest copy and hold, and rank 0's times (its step waits for the slowest).
    worst = comm.allreduce(max(r["held_bytes"] for r in rows), op=MPI.MAX)
    meta = metadata(comm, args, link=args.link)  # collective: it counts the hosts
    if comm.Get_rank() == 0:
        print(f"# shard copies, {comm.Get_size()} ranks, default GPT (842,496 parameters), AdamW")
        print(f"{'stage':>5} {'step ms':>9} {'copy ms':>9} {'copy/step':>10} {'sent MB':>8} {'held MB':>8} "
              f"{'opt MB':>7}")
        for r in rows:
            print(f"{r['stage']:>5} {r['step_ms']:>9.2f} {r['copy_ms']:>9.3f} {r['copy_vs_step']:>10.4f} "
                  f"{r['sent_bytes'] / 1e6:>8.2f} {r['held_bytes'] / 1e6:>8.2f} {r['optimizer_state_bytes'] / 1e6:>7.2f}")
        if args.json:
            write_result(args.json, "shard_copy_cost", meta, ranks=comm.Get_size(), rows=rows,
                         largest_held_bytes=worst)


if __name__ == "__main__":
    main()
