"""``python -m ringtrain bench memory``: per-rank memory of sharded training (ZeRO) against unsharded and torch's
ZeroRedundancyOptimizer, per model size, in one job.

    mpiexec -n 4 python -m ringtrain bench memory --widths 256,512,1024 --json memory_n4.json

For each GPT width, each variant builds the model, trains ``--steps`` steps
of AdamW (batch 1 x context) and reports, per rank, the bytes of parameters,
gradients held after the step's averaging, and optimizer state, and the peak
resident set size above what the process held before the variant began:

- ``unsharded``: GradientReducer and torch's AdamW on every rank;
- ``zero1`` / ``zero2``: GradientReducer(zero=1|2) and ZeroOptimizer(AdamW);
- ``zero3``: FSDP2 over the ringtrain backend, one group per block, as ``train --zero 3`` shards it, and AdamW
  on the shards;
- ``torch-zero``: DDP on gloo with torch's ZeroRedundancyOptimizer(AdamW), the peer.

The peak is measured in one process by resetting Linux's high-water mark
(``/proc/self/clear_refs``) before each variant; large allocations are made
to go straight back to the system when freed (glibc's mmap threshold fixed at
64 KiB), so one variant's freed memory cannot hide the next one's. The step
time is the median; the largest rank's figures are reported.
"""
import argparse
import ctypes
import gc
import time

import numpy as np
import torch
from mpi4py import MPI

from ..model import GPT, GPTConfig
from ..reducer import GradientReducer, ZeroOptimizer
from ..results import metadata, write_result
from ..timing import slowest
from ..train.memory import state_bytes, usage
from ..train.threads import set_torch_threads

VARIANTS = ("unsharded", "zero1", "zero2", "zero3", "torch-zero")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", default="256,512,1024", help="GPT widths, comma-separated (default 256,512,1024)")
    p.add_argument("--layers", type=int, default=8, help="GPT layers (default 8)")
    p.add_argument("--context", type=int, default=32, help="sequence length (default 32)")
    p.add_argument("--steps", type=int, default=3, help="training steps per variant (default 3)")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="bucket cap, MB (default 25)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux 4.0 and later)


def main(args) -> int:
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"bench memory: --variants has {unknown}; allowed: {', '.join(VARIANTS)}")
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    # M_MMAP_THRESHOLD = 64 KiB, which also stops glibc from raising it as memory is freed.
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)
    threads = set_torch_threads(comm)
    meta = metadata(comm, args, torch_threads=threads)
    if "torch-zero" in variants:
        from .ddp_peer import init_gloo
        init_gloo(comm)
    rows = []
    if rank == 0:
        print(f"# ringtrain bench memory: {world} ranks, GPT {args.layers} layers, AdamW, largest rank's figures "
              f"(MB); peak = peak RSS above the process's before the variant")
        print(f"{'width':>6} {'parameters':>12} {'variant':>11} {'params_MB':>9} {'state_MB':>9} {'grads_MB':>9} "
              f"{'peak_MB':>9} {'step_ms':>9}", flush=True)
    # A throwaway run first: torch's and MPI's one-time allocations must not count against the first variant.
    _measure(variants[0], widths[0], args, comm)
    for width in widths:
        for variant in variants:
            rows.append(_measure(variant, width, args, comm))
            if rank == 0:
                r = rows[-1]
                print(f"{width:>6} {r['parameters']:>12,} {variant:>11} {r['params_held_mb']:>9.1f} "
                      f"{r['state_mb']:>9.1f} {r['grads_mb']:>9.1f} {r['peak_mb']:>9.1f} {r['step_ms']:>9.0f}",
                      flush=True)
    for row in rows:
        base = next(r for r in rows if r["width"] == row["width"] and r["variant"] == "unsharded")
        row["peak_vs_unsharded_mb"] = row["peak_mb"] - base["peak_mb"]
        row["step_vs_unsharded"] = row["step_ms"] / base["step_ms"]
    import torch.distributed as dist
    if dist.is_initialized():  # gloo's for the peer, or the ringtrain backend that zero3 started
        dist.destroy_process_group()
    if rank == 0 and args.json:
        write_result(args.json, "memory", meta, rows=rows)
        print(f"# wrote {args.json}")
    return 0


def _measure(variant: str, width: int, args, comm) -> dict:
    gc.collect()
    start_kib = _status_kib("VmRSS")
    _reset_peak()
    torch.manual_seed(0)
    model = GPT(GPTConfig(width=width, layers=args.layers, heads=max(1, width // 64), context=args.context))
    sync, ddp, optimizer = _build(variant, model, args.bucket_cap_mb)
    inner = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer keeps its shard's optimizer there
    x = torch.randint(0, 256, (1, args.context), generator=torch.Generator().manual_seed(comm.Get_rank()))
    times, grads = [], 0
    for _ in range(args.steps):
        t0 = time.perf_counter()
        (ddp or model)(x, x)[1].backward()
        if sync is not None:
            sync.synchronize()
        grads = usage(model, sync, inner)["gradients"]  # held once averaged, before the step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    state = state_bytes(inner)
    held = usage(model, sync, inner)["parameters"]  # this rank's shards under ZeRO-3
    peak_kib = _status_kib("VmHWM") - start_kib
    figures = np.array([state, grads, peak_kib * 1024, held], dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, figures, op=MPI.MAX)  # the largest rank's
    step = slowest(comm, float(np.median(times)))
    if sync is not None:
        sync.close()
    nparams = sum(p.numel() for p in model.parameters())
    del model, sync, ddp, optimizer, inner
    gc.collect()
    return {"width": width, "layers": args.layers, "parameters": nparams, "world": comm.Get_size(),
            "variant": variant, "parameters_mb": 4 * nparams / 1e6, "state_mb": figures[0] / 1e6,
            "grads_mb": figures[1] / 1e6, "peak_mb": figures[2] / 1e6, "params_held_mb": figures[3] / 1e6,
            "step_ms": 1e3 * step}


def _build(variant: str, model, cap_mb: float):
    """(reducer or None, DDP wrapper or None, optimizer) for ``variant``."""
    params = list(model.parameters())
    if variant == "torch-zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer
        ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=cap_mb)
        return None, ddp, ZeroRedundancyOptimizer(params, optimizer_class=torch.optim.AdamW, lr=1e-4)
    if variant == "zero3":
        from ..train.fully_sharded import FullyShardedSync
        sync = FullyShardedSync(model, MPI.COMM_WORLD)
        return sync, None, torch.optim.AdamW(list(model.parameters()), lr=1e-4)  # the shards, after fully_shard
    zero = {"unsharded": 0, "zero1": 1, "zero2": 2}[variant]
    reducer = GradientReducer(model, bucket_cap_mb=cap_mb, zero=zero)
    if zero:
        return reducer, None, ZeroOptimizer(reducer, torch.optim.AdamW, params, lr=1e-4)
    return reducer, None, torch.optim.AdamW(params, lr=1e-4)
