"""``python -m ringtrain consolidate CHECKPOINT OUT``: one ordinary checkpoint from a sharded (--zero) one.

Every rank's optimizer shard is joined into the unsharded optimizer's
state_dict (optim/zero/checkpoint.py); the model, step and config are kept, with
--zero 0. The result is an ordinary, atomic and checksummed checkpoint
directory under OUT: load it for inference (its ``replicated.pt`` holds the
model's state_dict), or resume unsharded training from it with ``--resume``.
A training run also reads sharded checkpoints directly, at any world size and
ZeRO stage; this is for everything else.
"""
import os

from mpi4py import MPI

from .. import checkpoint
from ..fault.errors import UsageError
from ..optim.zero.checkpoint import consolidated


def add_arguments(p) -> None:
    p.add_argument("checkpoint", help="a step-* directory written with --zero 1 or 2")
    p.add_argument("out", help="the directory to write the consolidated step-* checkpoint into")


def main(args) -> int:
    try:
        manifest = checkpoint.loadable(args.checkpoint)
    except checkpoint.CheckpointError as e:
        raise UsageError(f"consolidate {args.checkpoint}: this checkpoint cannot be loaded: {e} — give an intact "
                         "step-* directory") from None
    replicated = checkpoint.load_part(args.checkpoint, "replicated.pt", manifest)
    if replicated.get("zero") is None:
        raise UsageError(f"consolidate {args.checkpoint}: it is not sharded (written without --zero) — it is "
                         "already an ordinary checkpoint")
    ordinary = consolidated(args.checkpoint, manifest, replicated)
    first = checkpoint.load_part(args.checkpoint, checkpoint.rank_file(0), manifest)
    own = {k: v for k, v in first.items() if k != "optimizer_shard"}
    path = checkpoint.save(os.path.abspath(args.out), int(replicated["step"]), ordinary, own, MPI.COMM_SELF,
                           lineage=manifest.get("lineage", ""))
    print(f"consolidated {manifest['world_size']} shards of step {replicated['step']} into {path}")
    return 0
