"""``python -m ringtrain bench horovod``: ringtrain.horovod's DistributedOptimizer against the GradientReducer.

The same GPT as ``bench training``, the same batch, the same SGD; three
variants timed in turn within each repetition, so that a change in the
machine's load touches all of them alike:

- ``compute``: forward, backward and step with no communication (the floor);
- ``reducer``: GradientReducer on the model, ``synchronize()`` before the step;
- ``hvd``: a Horovod loop, ``hvd.DistributedOptimizer(...).step()`` (its own
  GradientReducer over the optimizer's parameters, hooks on the parameters
  instead of the forward).

``vs_reducer`` is a variant's median step time over the reducer's, from the
same run; the target for ``hvd`` is 1.05 or less. ``ratio_reps`` is that ratio
in each repetition, whose spread says how far to trust the median.
"""
import argparse

import numpy as np
import torch
from mpi4py import MPI

from .. import horovod as hvd
from ..model import GPTConfig
from ..results import add_link_argument, metadata, write_result
from ..timing import time_steps
from .training import Plain, Reduced
from ..train.threads import set_torch_threads


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=512, help="GPT width (default 512)")
    p.add_argument("--layers", type=int, default=4, help="GPT layers (default 4)")
    p.add_argument("--context", type=int, default=32, help="sequence length (default 32)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per rank (default 1)")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="the reducer's bucket cap in MB, both "
                   "variants (default 25, the reducer's and DistributedOptimizer's)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant per repetition (default 10)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; medians are reported (default 5)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    add_link_argument(p)


class _Horovod(Plain):
    """A Horovod script's loop: broadcast the weights, wrap the optimizer, step (which synchronizes)."""

    def __init__(self, cfg, cap_mb):
        super().__init__(cfg)
        hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
        groups = None
        if cap_mb != 25.0:  # groups=k is how a Horovod user sizes fusion; k buckets of the cap's size
            total = sum(p.numel() * p.element_size() for p in self.model.parameters())
            groups = max(1, round(total / (cap_mb * 1e6)))
        self.opt = hvd.DistributedOptimizer(self.opt, named_parameters=self.model.named_parameters(), groups=groups)


def main(args) -> int:
    comm = MPI.COMM_WORLD
    hvd.init(comm)
    rank, world = comm.Get_rank(), comm.Get_size()
    threads = set_torch_threads(comm)
    meta = metadata(comm, args, link=args.link, torch_threads=threads)
    cfg = GPTConfig(width=args.width, layers=args.layers, heads=max(1, args.width // 64), context=args.context)
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, args.context))
    y = torch.randint(0, 256, (args.batch_size, args.context))
    variants = {"compute": Plain(cfg), "reducer": Reduced(cfg, args.bucket_cap_mb, comm),
                "hvd": _Horovod(cfg, args.bucket_cap_mb)}
    times = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, v in variants.items():
            times[name].append(time_steps(v, x, y, args.steps, comm))
    med = {name: float(np.median(t)) for name, t in times.items()}
    ratio_reps = [h / r for h, r in zip(times["hvd"], times["reducer"])]
    tokens = world * args.batch_size * args.context
    rows = [{"variant": name, "step_ms": 1e3 * t, "tokens_per_s": tokens / t, "vs_reducer": t / med["reducer"],
             "step_ms_reps": [1e3 * s for s in times[name]]} for name, t in med.items()]
    if rank == 0:
        nparams = sum(p.numel() for p in variants["compute"].model.parameters())
        print(f"# ringtrain bench horovod: {world} ranks x {threads} torch threads, GPT width {args.width}, "
              f"{args.layers} layers, {nparams:,} parameters, {args.batch_size}x{args.context} tokens per rank, "
              f"buckets of {args.bucket_cap_mb:g} MB; median of {args.repeat} x {args.steps} steps")
        print(f"{'variant':>8} {'step_ms':>9} {'tokens/s':>10} {'vs_reducer':>10}")
        for row in rows:
            print(f"{row['variant']:>8} {row['step_ms']:>9.2f} {row['tokens_per_s']:>10,.0f} "
                  f"{row['vs_reducer']:>10.3f}")
        print(f"# hvd / reducer per repetition: {' '.join(f'{r:.3f}' for r in ratio_reps)} "
              f"(median {np.median(ratio_reps):.3f}; target <= 1.05)")
        if args.json:
            write_result(args.json, "horovod", {**meta, "parameters": nparams}, rows=rows,
                         hvd_vs_reducer=float(np.median(ratio_reps)), hvd_vs_reducer_reps=ratio_reps)
            print(f"# wrote {args.json}")
    variants["reducer"].reducer.close()
    return 0

