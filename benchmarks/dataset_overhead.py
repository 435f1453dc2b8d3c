"""What the Dataset path costs per step: the GPT demo on the byte corpus, against the same model fed the same
corpus through a map-style dataset (ShardedSampler, __getitem__ per sample, default_collate), in one job.

    mpiexec -n 2 python benchmarks/dataset_overhead.py --json benchmarks/results/dataset/dataset_overhead.json

Each round trains once per variant, in an order that rotates between rounds so
drift hits every variant alike; a variant's step time is the median over steps
after the first few, and the overhead is the ratio of the medians over rounds.
``dataset+workers`` adds one DataLoader worker process per rank.
"""
import argparse
import os
import sys
import tempfile

import numpy as np
import torch
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ringtrain.data import open_tokens  # noqa: E402
from ringtrain.results import add_link_argument, metadata, write_result  # noqa: E402
from ringtrain.train import Task, TrainConfig, train  # noqa: E402
from ringtrain.train.model_factory import build_task  # noqa: E402


class CorpusWindows(torch.utils.data.Dataset):
    """Sample i: the byte window starting at i * context, as (x, y) with y shifted by one."""

    def __init__(self, tokens: np.ndarray, context: int):
        self.tokens, self.context = tokens, context

    def __len__(self):
        return (len(self.tokens) - 1) // self.context

    def __getitem__(self, i):
        w = torch.from_numpy(self.tokens[i * self.context:i * self.context + self.context + 1].astype(np.int64))
        return w[:-1], w[1:]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--skip", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--json")
    add_link_argument(p)
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    where = comm.bcast(tempfile.mkdtemp(prefix="ringtrain-dataset-") if rank == 0 else None, root=0)
    base = dict(steps=args.steps, eval_every=0, sample_tokens=0, log_every=args.steps)
    tokens = open_tokens(None, comm).tokens
    variants = ("corpus", "dataset", "dataset+workers")
    medians = {v: [] for v in variants}
    for r in range(args.rounds):
        for variant in variants[r % 3:] + variants[:r % 3]:
            cfg = TrainConfig(**base, out_dir=os.path.join(where, f"{variant}{r}"),
                              loader_workers=1 if variant == "dataset+workers" else 0)
            gpt = build_task(TrainConfig(**base, out_dir=where))  # the same seed, the same weights
            task = None if variant == "corpus" else Task(gpt.model, gpt.loss_fn,
                                                         train_data=CorpusWindows(tokens, cfg.context))
            result = train(cfg, task=task)
            medians[variant].append(float(np.median(result["step_seconds"][args.skip:])))
    meta = metadata(comm, args, link=args.link)  # collective: it counts the hosts
    if rank == 0:
        step = {v: float(np.median(m)) for v, m in medians.items()}
        out = {"ranks": comm.Get_size(), "steps": args.steps, "rounds": args.rounds,
               "step_ms": {v: 1e3 * s for v, s in step.items()},
               "overhead_vs_corpus": {v: step[v] / step["corpus"] - 1 for v in variants[1:]},
               "rounds_ms": {v: [1e3 * s for s in m] for v, m in medians.items()}}
        print(f"# dataset path overhead, {comm.Get_size()} ranks, GPT demo model, median of {args.rounds} rounds")
        print(f"{'variant':>16} {'step_ms':>8} {'vs_corpus':>9}")
        for v in variants:
            print(f"{v:>16} {1e3 * step[v]:>8.1f} {step[v] / step['corpus']:>9.3f}")
        if args.json:
            write_result(args.json, "dataset_overhead", meta, **out)


if __name__ == "__main__":
    main()
