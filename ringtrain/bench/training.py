"""``python -m ringtrain bench training``: step time of the GradientReducer against torch DDP on gloo and on ringtrain.

One process group, one model architecture, one batch; the variants are timed
in turn within each repetition, and the median step time is reported:

- ``compute``: forward, backward and optimizer step with no communication (the floor);
- ``bucket=N``: the GradientReducer with ``bucket_cap_mb=N``, overlapping with backward;
- ``no-bucket``: one bucket holding every gradient, so its allreduce starts after backward;
- with ``--poll-sleep-us A,B``, each reducer variant once per sleep between the
  communication thread's polls (``sleep=0us`` spins inside MPI);
- ``ddp``: torch DistributedDataParallel on gloo (TCP on loopback), 25 MB buckets
  unless ``--ddp-bucket-cap-mb`` says otherwise;
- ``ddp-ringtrain``: the same DDP on the ringtrain backend (ringtrain.distributed),
  its buckets averaged on the group's communication thread; ``vs_ddp`` is its
  step time over gloo's, from the same run.

The breakdown of a variant is ``comm = allreduce of all gradients, timed alone``,
``exposed = step - compute`` and ``hidden = comm - exposed`` (the overlap).
"""
import argparse

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from ..collectives import allreduce
from ..model import GPT, GPTConfig
from ..reducer import GradientReducer
from ..results import add_link_argument, metadata, write_result
from ..train.threads import set_torch_threads
from ..timing import median_call, time_steps
from .ddp_peer import init_groups

DDP_ROWS = {"gloo": "ddp", "ringtrain": "ddp-ringtrain"}  # backend -> its row; "ddp" stays gloo's, as it always was


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=512, help="GPT width (default 512)")
    p.add_argument("--layers", type=int, default=4, help="GPT layers (default 4)")
    p.add_argument("--context", type=int, default=32, help="sequence length (default 32)")
    p.add_argument("--batch-size", type=int, default=1, help="sequences per rank (default 1)")
    p.add_argument("--bucket-sizes", default="1,5,25,100", help="bucket caps in MB (default 1,5,25,100)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant per repetition (default 10)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; medians are reported (default 5)")
    p.add_argument("--no-ddp", action="store_true", help="skip the torch DDP peers")
    p.add_argument("--ddp-backends", default="gloo,ringtrain",
                   help="torch.distributed backends to time DDP on, comma-separated: gloo (the row ddp), "
                        "ringtrain (ddp-ringtrain); default gloo,ringtrain")
    p.add_argument("--ddp-bucket-cap-mb", type=float, default=25.0,
                   help="DDP's bucket_cap_mb on every backend (default 25, torch's)")
    p.add_argument("--first-bucket-mb", type=float,
                   help="also run each bucket cap above it with its first bucket capped at this many MB")
    p.add_argument("--poll-sleep-us", default="",
                   help="comma-separated sleeps between the communication thread's polls, in microseconds, "
                        "each run as its own variant (0: spin inside MPI; default: the reducer's default only)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    add_link_argument(p)


def main(args) -> int:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    threads = set_torch_threads(comm)
    meta = metadata(comm, args, link=args.link, torch_threads=threads)
    cfg = GPTConfig(width=args.width, layers=args.layers, heads=max(1, args.width // 64), context=args.context)
    caps = [float(c) for c in args.bucket_sizes.split(",") if c.strip()]
    torch.manual_seed(0)
    x = torch.randint(0, 256, (args.batch_size, args.context))
    y = torch.randint(0, 256, (args.batch_size, args.context))

    backends = [b.strip() for b in args.ddp_backends.split(",") if b.strip()]
    if not backends or set(backends) - set(DDP_ROWS):
        raise SystemExit(f"bench training: --ddp-backends has {args.ddp_backends!r}; allowed: a comma-separated "
                         f"list of {', '.join(DDP_ROWS)}")
    sleeps = [float(v) for v in args.poll_sleep_us.split(",") if v.strip()] or [None]
    variants = {"compute": Plain(cfg)}
    for sleep in sleeps:
        tag = "" if sleep is None else f" sleep={sleep:g}us"
        for cap in caps:
            variants[f"bucket={cap:g}MB{tag}"] = Reduced(cfg, cap, comm, sleep)
            if args.first_bucket_mb and args.first_bucket_mb < cap:
                variants[f"bucket={cap:g}MB,first={args.first_bucket_mb:g}MB{tag}"] = Reduced(
                    cfg, cap, comm, sleep, args.first_bucket_mb)
        variants[f"no-bucket{tag}"] = Reduced(cfg, 1e9, comm, sleep)
    ddp = not args.no_ddp and world > 1
    if ddp:
        groups = init_groups(comm, ringtrain="ringtrain" in backends)
        for backend in backends:
            variants[DDP_ROWS[backend]] = _DDP(cfg, groups[backend], args.ddp_bucket_cap_mb)
    grad_bytes = sum(p.numel() for p in variants["compute"].model.parameters()) * 4
    comm_alone = _time_allreduce(grad_bytes // 4, comm, args.repeat)

    times = {name: [] for name in variants}
    for _ in range(args.repeat):
        for name, v in variants.items():
            times[name].append(time_steps(v, x, y, args.steps, comm))
    med = {name: float(np.median(t)) for name, t in times.items()}
    tokens = world * args.batch_size * args.context
    compute = med["compute"]
    rows = []
    for name, t in med.items():
        exposed = max(0.0, t - compute)
        rows.append({"variant": name, "step_ms": 1e3 * t, "tokens_per_s": tokens / t,
                     "exposed_comm_ms": 1e3 * exposed if name != "compute" else 0.0,
                     "hidden_comm_ms": 1e3 * max(0.0, comm_alone - exposed) if name != "compute" else 0.0,
                     "step_ms_reps": [1e3 * s for s in times[name]]})
    if rank == 0:
        nparams = grad_bytes // 4
        print(f"# ringtrain bench training: {world} ranks x {threads} torch threads, GPT width {args.width}, "
              f"{args.layers} layers, {nparams:,} parameters ({grad_bytes / 1e6:.1f} MB of gradients), "
              f"{args.batch_size}x{args.context} tokens per rank")
        print(f"# allreduce of all gradients alone: {1e3 * comm_alone:.2f} ms = "
              f"{100 * comm_alone / compute:.0f}% of the compute step; median of {args.repeat}")
        print(f"{'variant':>32} {'step_ms':>9} {'tokens/s':>10} {'exposed_ms':>10} {'hidden_ms':>9} "
              f"{'vs_no_bucket':>12} {'vs_ddp':>7}")
        for row in rows:
            suffix = row["variant"].partition(" ")[2]  # the sleep, if several were asked for
            plain = f"no-bucket {suffix}" if suffix else "no-bucket"
            vs_nb = row["step_ms"] / (1e3 * med[plain]) if plain in med else float("nan")
            vs_ddp = row["step_ms"] / (1e3 * med["ddp"]) if "ddp" in med else float("nan")
            row.update(vs_no_bucket=vs_nb, vs_ddp=vs_ddp)
            print(f"{row['variant']:>32} {row['step_ms']:>9.2f} {row['tokens_per_s']:>10,.0f} "
                  f"{row['exposed_comm_ms']:>10.2f} {row['hidden_comm_ms']:>9.2f} {vs_nb:>12.2f} {vs_ddp:>7.2f}")
        if args.json:
            write_result(args.json, "training", {**meta, "parameters": nparams},
                         allreduce_alone_ms=1e3 * comm_alone, rows=rows)
            print(f"# wrote {args.json}")
    for v in variants.values():
        v.close()
    if ddp:
        dist.destroy_process_group()  # every group, gloo's and ringtrain's
    return 0


class Plain:
    """Forward, backward, SGD step; no communication."""

    def __init__(self, cfg):
        torch.manual_seed(0)
        self.model = GPT(cfg)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-4)

    def step(self, x, y):
        _, loss = self.model(x, y)
        loss.backward()
        self.sync()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def sync(self):
        pass

    def close(self):
        pass


class Reduced(Plain):
    def __init__(self, cfg, cap_mb, comm, poll_sleep_us=None, first_bucket_mb=None):
        super().__init__(cfg)
        self.reducer = GradientReducer(self.model, bucket_cap_mb=cap_mb, comm=comm, poll_sleep_us=poll_sleep_us,
                                       first_bucket_mb=first_bucket_mb)

    def sync(self):
        self.reducer.synchronize()

    def close(self):
        self.reducer.close()


class _DDP(Plain):
    """torch DDP on ``group``'s backend, its buckets capped at ``cap_mb`` (torch's first bucket stays 1 MB)."""

    def __init__(self, cfg, group, cap_mb):
        super().__init__(cfg)
        self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, process_group=group, bucket_cap_mb=cap_mb)

    def step(self, x, y):
        _, loss = self.ddp(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)



def _time_allreduce(count, comm, repeat) -> float:
    buf = torch.zeros(count)
    return median_call(comm, lambda: allreduce(buf, op="mean", comm=comm, check=False), repeat)
