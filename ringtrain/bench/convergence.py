"""``python -m ringtrain bench convergence``: steps/s and loss of real training, per bucket size and compressor.

Each variant trains the same job from the same seed for ``--steps`` steps: the
demo GPT on the default corpus unless told otherwise. Reported per variant:
the median step time (after ``--skip`` warm-up steps; with ``--repeat``, the
median over round-robin repetitions of every variant), steps/s, the training
loss averaged over the last 10 steps, and the validation loss at the end, so
that speed bought with accuracy shows. The peers, in the same run: torch DDP
on gloo, and DDP with torch's PowerSGD communication hook.

``--ddp`` also runs the same DDP on the ringtrain backend (system
``ddp-ringtrain``): ``ringtrain`` bare, ``ringtrain-hook:SPEC`` with
ringtrain's compressor SPEC as its comm hook (``ringtrain.distributed.comm_hook``).
Every DDP row names its ``backend`` and ``hook``; a ringtrain row is also set
beside its gloo peer from the same run (``peer``, ``steps_per_s_vs_peer``,
``val_loss_vs_peer``): the same hook's torch counterpart where there is one
(``powersgd:rank=R``), else uncompressed DDP on gloo.

The variants are ringtrain with no compression at every ``--bucket-sizes``,
then every compressor in ``--compressors`` at ``--bucket-cap-mb``, each once per
``--node-aware`` setting ("auto,off" compares compressing only what crosses
nodes with compressing every hop).
"""
import argparse
import dataclasses
import os

import numpy as np
from mpi4py import MPI

from ..constants import BUCKET_CAP_MB
from .compression import split_specs
from ..compression import get as compression_get
from ..results import add_link_argument, metadata, write_result
from ..train import TrainConfig, train
from ..train.threads import set_torch_threads

DEFAULT_COMPRESSORS = "fp16,ef+int8,powersgd:rank=4,ef+topk:ratio=0.01,onebit"
CURVE_POINTS = 200


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compressors", default=DEFAULT_COMPRESSORS,
                   help=f"compressors to train with, at --bucket-cap-mb (default {DEFAULT_COMPRESSORS})")
    p.add_argument("--bucket-sizes", default="1,5,25",
                   help="bucket caps in MB for the uncompressed runs (default 1,5,25)")
    p.add_argument("--bucket-cap-mb", type=float, default=BUCKET_CAP_MB, help="bucket cap of the compressed runs (default 25)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per variant (default 200)")
    p.add_argument("--skip", type=int, default=5, help="warm-up steps left out of the step time (default 5)")
    p.add_argument("--repeat", type=int, default=1,
                   help="train every variant this many times, round robin; step time is the median (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per rank (default 8, as the demo)")
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--ddp", default="plain,powersgd:rank=4",
                   help="DDP peers, comma-separated: on gloo plain and powersgd:rank=R (torch's hook); on the "
                        "ringtrain backend ringtrain and ringtrain-hook:SPEC (ringtrain's compressor SPEC as the "
                        "comm hook, e.g. ringtrain-hook:ef+int8); 'none' for none")
    p.add_argument("--out-dir", default="runs/bench-convergence", help="each variant's metrics.jsonl goes below")
    p.add_argument("--node-aware", default="auto",
                   help="train's --node-aware settings to run each ringtrain variant with, comma-separated "
                        "(auto, on, off; default auto)")
    p.add_argument("--zero", default="",
                   help="ZeRO stages (1, 2) to also train the uncompressed ringtrain job at, at --bucket-cap-mb, "
                        "comma-separated; each is the system zero1 or zero2 (default: none)")
    p.add_argument("--onebit-adam", type=int, default=0, metavar="WARMUP",
                   help="also train with --optimizer onebit-adam and this --onebit-warmup (the system onebit-adam; "
                        "default 0: not)")
    p.add_argument("--json", metavar="FILE")
    add_link_argument(p)


def _node_aware(args) -> list[str]:
    settings = [s.strip() for s in args.node_aware.split(",") if s.strip()]
    bad = [s for s in settings if s not in ("auto", "on", "off")]
    if bad or not settings:
        raise ValueError(f"--node-aware has {args.node_aware!r}; allowed: a comma-separated list of auto, on, off")
    return settings


def _variants(args):
    caps = [float(c) for c in args.bucket_sizes.split(",") if c.strip()]
    # The floor: every rank trains alone (no averaging) at the same time, so the
    # compute shares the CPU exactly as in the other variants.
    settings = _node_aware(args)
    out = [("compute", "none", 0.0, "auto")]
    out += [("ringtrain", "none", cap, na) for cap in caps for na in settings]
    for c in split_specs(args.compressors):  # commas also separate a spec's parameters
        if c == "auto":  # --compression auto --bucket-cap-mb auto
            out += [("ringtrain", "auto", "auto", na) for na in settings]
        elif c and c != "none":
            out += [("ringtrain", c, args.bucket_cap_mb, na) for na in settings]
    for stage in (z.strip() for z in args.zero.split(",") if z.strip()):
        if stage not in ("1", "2"):
            raise ValueError(f"--zero has {stage!r}; allowed: 1, 2")
        out.append((f"zero{stage}", "none", args.bucket_cap_mb, "auto"))
    if args.onebit_adam:
        out.append(("onebit-adam", "none", args.bucket_cap_mb, "auto"))
    for peer in (d for d in split_specs(args.ddp) if d != "none"):
        if peer == "plain":
            out.append(("ddp", "none", BUCKET_CAP_MB, "auto"))
        elif peer.startswith("powersgd"):
            _, _, opt = peer.partition(":rank=")
            out.append(("ddp", f"powersgd:rank={int(opt or 4)}", BUCKET_CAP_MB, "auto"))
        elif peer == "ringtrain":
            out.append(("ddp-ringtrain", "none", BUCKET_CAP_MB, "auto"))
        elif peer.startswith("ringtrain-hook:") and peer.partition(":")[2] not in ("", "none"):
            spec = peer.partition(":")[2]
            compression_get(spec)  # a bad spec raises here, naming itself, before any training
            out.append(("ddp-ringtrain", spec, BUCKET_CAP_MB, "auto"))
        else:
            raise ValueError(f"--ddp has {peer!r}; allowed: plain, powersgd:rank=R, ringtrain, "
                             "ringtrain-hook:SPEC, none")
    return out


def _hook(system, compression) -> tuple[str | None, str]:
    """(backend, hook) of a variant, as its row names them: None for ringtrain's own trainer."""
    if system == "ddp":
        return "gloo", "none" if compression == "none" else f"torch powerSGD_hook rank={compression.partition('=')[2]}"
    if system == "ddp-ringtrain":
        return "ringtrain", "none" if compression == "none" else f"ringtrain comm_hook({compression})"
    return None, "none"


def main(args) -> int:
    from .ddp_peer import init_groups, train_ddp
    comm = MPI.COMM_WORLD
    rank, world = comm.Get_rank(), comm.Get_size()
    meta = metadata(comm, args, link=args.link)
    if args.skip >= args.steps:
        raise SystemExit(f"--skip ({args.skip}) must be less than --steps ({args.steps})")
    try:
        variants = [v for v in _variants(args) if not v[0].startswith("ddp") or world > 1]  # DDP needs 2 ranks to mean anything
    except ValueError as e:
        raise SystemExit(f"bench convergence: {e}") from None
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
    runs = {v: [] for v in variants}
    # Started at the first DDP variant; with ringtrain's among them, its group is the default and gloo's beside it.
    groups = None
    # Round robin: drift of a shared machine spreads over every variant alike.
    for (system, compression, cap, node_aware) in [v for _ in range(args.repeat) for v in variants]:
        name = f"{system} {compression} {cap}MB" if cap == "auto" else f"{system} {compression} {cap:g}MB"
        if node_aware != "auto":
            name += f" node-aware-{node_aware}"
        out_dir = os.path.join(args.out_dir, name.replace(" ", "_").replace(":", "-"))
        cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, width=args.width, layers=args.layers,
                          context=args.context, compression=compression if system == "ringtrain" else "none",
                          bucket_cap_mb=cap or BUCKET_CAP_MB, node_aware=node_aware, eval_every=0, log_every=args.steps, sample_tokens=0,
                          out_dir=out_dir if system != "compute" else os.path.join(out_dir, f"rank{rank}"))
        if rank == 0:
            print(f"# {name}", flush=True)
        if system == "ringtrain":
            result = train(cfg)
        elif system == "onebit-adam":
            result = train(dataclasses.replace(cfg, optimizer="onebit-adam", onebit_warmup=args.onebit_adam))
        elif system.startswith("zero"):
            result = train(dataclasses.replace(cfg, zero=int(system[len("zero"):])))
        elif system == "compute":
            # Alone on COMM_SELF a rank would take every core of the node:
            # hold it to the thread count it gets among the job's ranks.
            saved = os.environ.get("OMP_NUM_THREADS")
            os.environ["OMP_NUM_THREADS"] = str(set_torch_threads(comm))
            try:
                result = train(cfg, comm=MPI.COMM_SELF)
            finally:
                if saved is None:
                    del os.environ["OMP_NUM_THREADS"]
                else:
                    os.environ["OMP_NUM_THREADS"] = saved
            # The slowest rank's step times: what a synchronous step would wait for.
            slowest = np.array(result["step_seconds"])
            comm.Allreduce(MPI.IN_PLACE, slowest, op=MPI.MAX)
            result["step_seconds"] = list(slowest)
        else:
            if groups is None:
                groups = init_groups(comm, ringtrain=any(v[0] == "ddp-ringtrain" for v in variants))
            if system == "ddp":
                powersgd_rank = int(compression.partition("=")[2]) if compression != "none" else 0
                result = train_ddp(cfg, comm, powersgd_rank=powersgd_rank, group=groups["gloo"])
            else:
                result = train_ddp(cfg, comm, group=groups["ringtrain"],
                                   comm_hook=None if compression == "none" else compression)
        model = result.pop("model")  # keep only numbers: a run per variant and repetition adds up
        for heavy in ("optimizer", "sync"):
            result.pop(heavy, None)
        param_bytes = [p.numel() * p.element_size() for p in model.parameters() if p.requires_grad]
        runs[(system, compression, cap, node_aware)].append(result)
    if groups is not None:
        import torch.distributed as dist
        dist.destroy_process_group()
    rows = [_row(*variant, results, args.skip) for variant, results in runs.items()]
    if rank == 0:
        _report(rows, args, meta, param_bytes)
    return 0


def _row(system, compression, cap, node_aware, results, skip) -> dict:
    """One variant's row: losses from its first run (every run computes the same bits), step time the median
    over its runs' medians."""
    result = results[0]
    if cap == "auto":
        compression = f"auto={result['tuned'].get('optimizer', result['tuned']['compression'])}"
        cap = result["tuned"]["bucket_cap_mb"]
    seconds = np.array(result["step_seconds"])
    losses = np.array(result["losses"])
    wall = np.cumsum(seconds)
    keep = np.unique(np.linspace(0, len(losses) - 1, min(CURVE_POINTS, len(losses))).astype(int))
    per_run = [float(np.median(np.array(r["step_seconds"])[skip:])) for r in results]
    step_s = float(np.median(per_run))
    backend, hook = _hook(system, compression)
    return {"system": system, "compression": compression, "bucket_cap_mb": cap, "node_aware": node_aware,
            "backend": backend, "hook": hook, "step_ms": 1e3 * step_s,
            "steps_per_s": 1.0 / step_s, "step_ms_runs": [1e3 * s for s in per_run],
            "final_loss": float(losses[-10:].mean()), "val_loss": result["val_loss"],
            "wall_s": float(wall[-1]), "curve": [[float(wall[i]), float(losses[i])] for i in keep]}


def _report(rows, args, meta, param_bytes) -> None:
    base = next((r for r in rows if r["system"] == "ringtrain" and r["compression"] == "none"
                 and r["bucket_cap_mb"] == args.bucket_cap_mb and r["node_aware"] == "auto"), rows[0])
    ddp = next((r for r in rows if r["system"] == "ddp" and r["compression"] == "none"), None)
    print(f"# ringtrain bench convergence: {meta['world_size']} ranks, GPT width {args.width}, {args.layers} layers, batch "
          f"{args.batch_size}x{args.context} per rank, {args.steps} steps; step time = median after {args.skip}")
    print(f"{'system':>13} {'compression':>18} {'bucket':>6} {'node':>4} {'step_ms':>8} {'steps/s':>7} {'speedup':>7} "
          f"{'final_loss':>10} {'val_loss':>8} {'val_vs_none':>11} {'vs_ddp':>6}")
    for r in rows:
        r["speedup_vs_none"] = r["steps_per_s"] / base["steps_per_s"]
        r["val_loss_vs_none"] = r["val_loss"] / base["val_loss"] - 1.0
        r["speedup_vs_ddp"] = r["steps_per_s"] / ddp["steps_per_s"] if ddp else None
        vs_ddp = f"{r['speedup_vs_ddp']:>6.2f}" if ddp else f"{'-':>6}"
        print(f"{r['system']:>13} {r['compression']:>18} {r['bucket_cap_mb']:>6g} {r['node_aware']:>4} {r['step_ms']:>8.1f} "
              f"{r['steps_per_s']:>7.2f} {r['speedup_vs_none']:>7.2f} {r['final_loss']:>10.4f} "
              f"{r['val_loss']:>8.4f} {100 * r['val_loss_vs_none']:>+10.1f}% {vs_ddp}")
    _beside_peers(rows)
    if args.json:
        write_result(args.json, "convergence", meta, param_bytes=param_bytes, rows=rows)
        print(f"# wrote {args.json}")


def _beside_peers(rows) -> None:
    """Each DDP-on-ringtrain row against its gloo peer from this run: torch's own hook of the same kind where
    there is one (PowerSGD at the same rank), else uncompressed DDP on gloo. Adds ``peer``,
    ``steps_per_s_vs_peer`` and ``val_loss_vs_peer`` (relative difference) to the row, and prints them."""
    gloo = {r["compression"]: r for r in rows if r["system"] == "ddp"}
    ours = [r for r in rows if r["system"] == "ddp-ringtrain"]
    if not ours or not gloo:
        return
    print(f"{'ddp-ringtrain hook':>40} {'gloo peer':>32} {'steps/s':>7} {'peer':>7} {'ratio':>5} "
          f"{'val_loss':>8} {'peer':>8} {'diff':>6}")
    for r in ours:
        peer = gloo.get(r["compression"]) or gloo.get("none")
        if peer is None:
            continue
        r["peer"] = f"ddp gloo, hook {peer['hook']}"
        r["steps_per_s_vs_peer"] = r["steps_per_s"] / peer["steps_per_s"]
        r["val_loss_vs_peer"] = r["val_loss"] / peer["val_loss"] - 1.0
        print(f"{r['hook']:>40} {peer['hook']:>32} {r['steps_per_s']:>7.2f} {peer['steps_per_s']:>7.2f} "
              f"{r['steps_per_s_vs_peer']:>5.2f} {r['val_loss']:>8.4f} {peer['val_loss']:>8.4f} "
              f"{100 * r['val_loss_vs_peer']:>+5.1f}%")
