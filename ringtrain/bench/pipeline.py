"""``python -m ringtrain bench pipeline``: pipelining step time on the ringtrain backend against gloo, in one job.

    mpiexec -n 4 python -m ringtrain bench pipeline --schedule 1f1b --micro-batches 8 --json pipeline_n4.json

Each rank is one pipeline position (P = the world, no replicas); the GPT is
cut as ``train --pipeline-stages`` cuts it (pipeline/split.py), and both
variants run ``torch.distributed.pipelining``'s schedule on the same stages,
seeded alike, with AdamW: one over a group of the ringtrain backend, one over
gloo's (``ddp_peer.init_groups``). The variants are timed in turn within each
repetition, and the slowest rank's median step time is reported with
``vs_gloo``, ringtrain's over gloo's from the same run. As a check that both
ran the same training, ``max_param_diff`` is the largest difference between
the two variants' stage parameters at the end (point-to-point moves bits
unchanged, so it should be 0). The tied embedding's gradient sum, the same
for both, is left out: this measures the schedule's traffic.
"""
import argparse

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from mpi4py import MPI

from ..model import GPT, GPTConfig
from ..pipeline.layout import Layout
from ..pipeline.split import block_counts, build_stages
from ..results import add_link_argument, metadata, write_result
from ..timing import time_steps
from ..train.threads import set_torch_threads
from .ddp_peer import init_groups

BACKENDS = ("gloo", "ringtrain")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=256, help="GPT width (default 256)")
    p.add_argument("--layers", type=int, default=8, help="GPT layers (default 8)")
    p.add_argument("--context", type=int, default=128, help="sequence length (default 128)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step (default 8)")
    p.add_argument("--micro-batches", type=int, default=8, help="micro-batches per step (default 8)")
    p.add_argument("--schedule", choices=("gpipe", "1f1b", "interleaved"), default="1f1b",
                   help="torch.distributed.pipelining's schedule (default 1f1b)")
    p.add_argument("--stages-per-rank", type=int, default=2, help="interleaved: stages per rank (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per repetition (default 5)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; medians are reported (default 5)")
    add_link_argument(p)
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


class _Pipelined:
    """This rank's stages of the GPT under ``schedule`` on ``group``."""

    def __init__(self, cfg: GPTConfig, group, layout: Layout, args):
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B
        torch.manual_seed(0)
        gpt = GPT(cfg)
        counts = block_counts(gpt, layout.stages)
        self.stages = build_stages(gpt, counts, layout.mine)
        self.first, self.last = 0 in layout.mine, layout.stages - 1 in layout.mine
        built = [PipelineStage(s, i, layout.stages, torch.device("cpu"), group=group)
                 for i, s in zip(layout.mine, self.stages)]
        m, vocab = args.micro_batches, cfg.vocab_size

        def loss(logits, y):
            return F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)) / m

        if args.schedule == "interleaved":
            self.schedule = ScheduleInterleaved1F1B(built, n_microbatches=m, loss_fn=loss, scale_grads=False)
        else:
            kind = ScheduleGPipe if args.schedule == "gpipe" else Schedule1F1B
            self.schedule = kind(built[0], n_microbatches=m, loss_fn=loss, scale_grads=False)
        self.params = [p for s in self.stages for p in s.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=1e-3)

    def step(self, x, y):
        self.schedule.step(*((x,) if self.first else ()), target=y if self.last else None)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])


def main(args) -> int:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if world < 2:
        raise SystemExit("bench pipeline: run it under mpiexec with 2 ranks or more (one stage each)")
    per_rank = args.stages_per_rank if args.schedule == "interleaved" else 1
    if args.batch_size % args.micro_batches or args.layers < world * per_rank:
        raise SystemExit(f"bench pipeline: --micro-batches {args.micro_batches} must divide --batch-size "
                         f"{args.batch_size}, and --layers {args.layers} must be at least {world * per_rank}")
    threads = set_torch_threads(comm)
    meta = metadata(comm, args, link=args.link, torch_threads=threads)
    cfg = GPTConfig(width=args.width, layers=args.layers, heads=max(1, args.width // 64), context=args.context)
    g = torch.Generator().manual_seed(1)  # one batch: every stage's rank sees the same
    x = torch.randint(0, 256, (args.batch_size, args.context), generator=g)
    y = torch.randint(0, 256, (args.batch_size, args.context), generator=g)
    groups = init_groups(comm, ringtrain=True)
    layout = Layout(world, 1, per_rank, rank)
    variants = {b: _Pipelined(cfg, groups[b], layout, args) for b in BACKENDS}
    times = {b: [] for b in BACKENDS}
    for _ in range(args.repeat):
        for b, v in variants.items():
            times[b].append(time_steps(v, x, y, args.steps, comm))
    diff = comm.allreduce(float((variants["gloo"].flat() - variants["ringtrain"].flat()).abs().max()), op=MPI.MAX)
    med = {b: float(np.median(t)) for b, t in times.items()}
    rows = [{"variant": f"pipeline-{b}", "step_ms": 1e3 * med[b], "vs_gloo": med[b] / med["gloo"],
             "step_ms_reps": [1e3 * s for s in times[b]]} for b in BACKENDS]
    if rank == 0:
        nparams = sum(p.numel() for p in GPT(cfg).parameters())
        print(f"# ringtrain bench pipeline: {args.schedule} over {world} ranks ({world * per_rank} stages) x "
              f"{threads} torch threads, GPT width {args.width}, {args.layers} layers, {nparams:,} parameters, "
              f"{args.batch_size}x{args.context} tokens in {args.micro_batches} micro-batches; median of "
              f"{args.repeat} x {args.steps} steps")
        print(f"{'variant':>20} {'step_ms':>9} {'vs_gloo':>8}")
        for row in rows:
            print(f"{row['variant']:>20} {row['step_ms']:>9.2f} {row['vs_gloo']:>8.3f}")
        print(f"# max_param_diff between the variants after {args.repeat * (args.steps + 1)} steps: {diff:.3g}")
        if args.json:
            write_result(args.json, "pipeline", {**meta, "parameters": nparams, "schedule": args.schedule,
                                                 "micro_batches": args.micro_batches}, rows=rows, max_param_diff=diff)
            print(f"# wrote {args.json}")
    dist.destroy_process_group()
    return 0
