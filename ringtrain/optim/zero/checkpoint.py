"""ZeRO's part of a checkpoint: each rank's shard, loaded at any world size and stage, or joined into one.

Each rank writes its shard into its own file, with each piece's place in the
flat parameter space (state.py), and the replicated part records the
parameters' names and groups. Loading:

- sharded into sharded: each rank reads the files of the ranks whose chunks
  overlap its own (at the same world size, just its own) and cuts its pieces;
- sharded into unsharded, or ``consolidate``: every shard, joined into an
  ordinary torch state_dict;
- unsharded into sharded: each rank cuts its pieces from the whole (the
  optimizer's ``load_state_dict`` takes it as it is).
"""
from mpi4py import MPI

from ... import checkpoint
from ...collectives.layout import chunk_bounds
from ..interface import state_layout
from .state import unsharded_state


def parts(model, optimizer) -> tuple[dict, dict]:
    """(what goes into the replicated file, what goes into this rank's file) for a ZeroOptimizer."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return ({"optimizer": None, "zero": {"names": names, "group_order": optimizer.group_order}},
            {"optimizer_shard": optimizer.state_dict()})


def load(path: str, manifest: dict, replicated: dict, model, optimizer, reducer, comm: MPI.Comm) -> None:
    """Put a sharded checkpoint's optimizer state into ``optimizer``, sharded or not. Collective-free."""
    sharded_now = state_layout(optimizer) == "sharded"
    old = manifest["world_size"]
    ranks = overlapping_ranks(reducer, old, comm.Get_rank(), comm.Get_size()) if sharded_now else range(old)
    shards = [checkpoint.load_part(path, checkpoint.rank_file(r), manifest)["optimizer_shard"] for r in ranks]
    if sharded_now:
        optimizer.load_state_dict(shards)
        return
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.load_state_dict(unsharded_state(shards, params, replicated["zero"]["group_order"]))


def overlapping_ranks(reducer, old_world: int, rank: int, world: int) -> list[int]:
    """The ranks of a ``old_world``-rank run whose chunks overlap this rank's (the bucket layout is the same)."""
    found = set()
    for bucket in reducer.buckets:
        lo, hi = chunk_bounds(bucket.numel, world, rank)
        for r in range(old_world):
            a, b = chunk_bounds(bucket.numel, old_world, r)
            if max(lo, a) < min(hi, b):
                found.add(r)
    return sorted(found) or [0]


def consolidated(path: str, manifest: dict, replicated: dict) -> dict:
    """The replicated part of an ordinary (unsharded) checkpoint made from sharded checkpoint ``path``."""
    zero = replicated["zero"]
    shards = [checkpoint.load_part(path, checkpoint.rank_file(r), manifest)["optimizer_shard"]
              for r in range(manifest["world_size"])]
    params = [replicated["model"][name] for name in zero["names"]]  # only their shapes are used
    out = {k: v for k, v in replicated.items() if k != "zero"}
    out["optimizer"] = unsharded_state(shards, params, zero["group_order"])
    out["config"] = {**replicated["config"], "zero": 0}
    return out
