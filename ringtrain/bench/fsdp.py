"""``python -m ringtrain bench fsdp``: FSDP2 step time on the ringtrain backend against FSDP2 on gloo.

Both backends live in one job (``ddp_peer.init_groups``): ringtrain's group is
the default, gloo's a ``new_group`` of the same ranks. Each variant is the same
GPT, seeded alike, with ``fully_shard`` on every block and on the root over a
1-D DeviceMesh of its group, AdamW, and the same batch; the variants are timed
in turn within each repetition (so a machine's drift falls on both), and the
slowest rank's median step time is reported with ``vs_gloo``, ringtrain's over
gloo's from the same run. ``--hsdp R`` shards over R ranks and replicates
across the rest instead (a 2-D mesh: replicate x shard).

Every step runs forward, backward (FSDP2's reduce-scatter of each block's
gradients overlapping the earlier blocks' backward) and the optimizer step,
whose next forward all-gathers the parameters again (prefetched by FSDP2).
As a check that both ran the same training, ``max_param_diff`` is the largest
difference between the two variants' parameters after every timed step.
"""
import argparse

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from ..model import GPT, GPTConfig
from ..results import add_link_argument, metadata, write_result
from ..timing import time_steps
from ..train.threads import set_torch_threads
from .ddp_peer import init_groups

BACKENDS = ("gloo", "ringtrain")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=int, default=256, help="GPT width (default 256)")
    p.add_argument("--layers", type=int, default=4, help="GPT layers (default 4)")
    p.add_argument("--context", type=int, default=128, help="sequence length (default 128)")
    p.add_argument("--batch-size", type=int, default=2, help="sequences per rank (default 2)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per repetition (default 5)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; medians are reported (default 5)")
    p.add_argument("--hsdp", type=int, default=0, metavar="R",
                   help="shard over R ranks and replicate across world/R (a 2-D mesh); default 0: shard over all")
    p.add_argument("--bf16", action="store_true", help="FSDP2 mixed precision: bf16 parameters, fp32 reduce")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    add_link_argument(p)


def mesh_of(group: dist.ProcessGroup, world: int, hsdp: int):
    """A 1-D mesh over ``group``, or HSDP's 2-D (replicate, shard) mesh with shard groups of ``hsdp`` ranks."""
    from torch.distributed.device_mesh import DeviceMesh
    if not hsdp:
        return DeviceMesh.from_group(group, "cpu")
    ranks = torch.arange(world).reshape(world // hsdp, hsdp)
    backend = dist.get_backend(group)
    # Each rank creates every subgroup, in the same order (new_group is collective over the whole world).
    shard = [dist.new_group(row.tolist(), backend=backend) for row in ranks]
    replicate = [dist.new_group(col.tolist(), backend=backend) for col in ranks.T]
    me = dist.get_rank()
    row, col = me // hsdp, me % hsdp
    return DeviceMesh.from_group([replicate[col], shard[row]], "cpu", mesh=ranks,
                                 mesh_dim_names=("replicate", "shard"))


class _Sharded:
    """The GPT under FSDP2 on ``group``: every block, then the root."""

    def __init__(self, cfg: GPTConfig, group, world: int, hsdp: int, bf16: bool):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        torch.manual_seed(0)
        self.model = GPT(cfg)
        mesh = mesh_of(group, world, hsdp)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 \
            else MixedPrecisionPolicy()
        for block in self.model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(self.model, mesh=mesh, mp_policy=policy)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3)

    def step(self, x, y):
        _, loss = self.model(x, y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def full_parameters(self) -> torch.Tensor:
        """Every parameter, unsharded, flat (collective over the variant's group)."""
        return torch.cat([p.full_tensor().detach().reshape(-1).float() for p in self.model.parameters()])



def main(args) -> int:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    if world < 2:
        raise SystemExit("bench fsdp: run it under mpiexec with 2 ranks or more")
    if args.hsdp < 0 or (args.hsdp and world % args.hsdp):
        raise SystemExit(f"bench fsdp: --hsdp {args.hsdp}: must divide the world size {world} (0: no replication)")
    threads = set_torch_threads(comm)
    meta = metadata(comm, args, link=args.link, torch_threads=threads)
    cfg = GPTConfig(width=args.width, layers=args.layers, heads=max(1, args.width // 64), context=args.context)
    torch.manual_seed(1 + rank)  # each rank its own batch, as in data-parallel training
    x = torch.randint(0, 256, (args.batch_size, args.context))
    y = torch.randint(0, 256, (args.batch_size, args.context))
    groups = init_groups(comm, ringtrain=True)
    variants = {b: _Sharded(cfg, groups[b], world, args.hsdp, args.bf16) for b in BACKENDS}
    times = {b: [] for b in BACKENDS}
    for _ in range(args.repeat):
        for b, v in variants.items():
            times[b].append(time_steps(v, x, y, args.steps, comm))
    # Both did the same steps from the same start: their parameters must agree (to summation order).
    diff = float((variants["gloo"].full_parameters() - variants["ringtrain"].full_parameters()).abs().max())
    med = {b: float(np.median(t)) for b, t in times.items()}
    rows = [{"variant": f"fsdp-{b}", "step_ms": 1e3 * med[b], "vs_gloo": med[b] / med["gloo"],
             "step_ms_reps": [1e3 * s for s in times[b]]} for b in BACKENDS]
    if rank == 0:
        nparams = sum(p.numel() for p in GPT(cfg).parameters())
        shape = f"HSDP {world // args.hsdp} x {args.hsdp}" if args.hsdp else f"FSDP2 over {world}"
        print(f"# ringtrain bench fsdp: {shape} ranks x {threads} torch threads, GPT width {args.width}, "
              f"{args.layers} layers, {nparams:,} parameters, {args.batch_size}x{args.context} tokens per rank"
              f"{', bf16 parameters' if args.bf16 else ''}; median of {args.repeat} x {args.steps} steps")
        print(f"{'variant':>16} {'step_ms':>9} {'vs_gloo':>8}")
        for row in rows:
            print(f"{row['variant']:>16} {row['step_ms']:>9.2f} {row['vs_gloo']:>8.3f}")
        print(f"# max_param_diff between the variants after {args.repeat * (args.steps + 1)} steps: {diff:.3g}")
        if args.json:
            write_result(args.json, "fsdp", {**meta, "parameters": nparams}, rows=rows, max_param_diff=diff)
            print(f"# wrote {args.json}")
    dist.destroy_process_group()
    return 0
