"""The optimizer's part of a checkpoint, sharded or not, and loading it at any world size and ZeRO stage.

1-bit Adam's state is per rank (its residuals differ between ranks): each rank
writes its own and, at the same world size, reads it back.

Unsharded, the optimizer's state_dict is replicated (rank 0 writes it).
Sharded (--zero 1 or 2), each rank writes its shard into its own file, with
each piece's place in the flat parameter space (optim/zero/state.py), and
the replicated part records the parameters' names and groups. Loading:

- sharded into sharded: each rank reads the files of the ranks whose chunks
  overlap its own (at the same world size, just its own) and cuts its pieces;
- sharded into unsharded, or ``consolidate``: every shard, joined into an
  ordinary torch state_dict;
- unsharded into sharded: each rank cuts its pieces from the whole.
"""
from mpi4py import MPI

from .. import checkpoint
from ..collectives.layout import chunk_bounds
from .onebit_adam import OneBitAdam
from .zero.state import unsharded_state


def parts(model, optimizer) -> tuple[dict, dict]:
    """(what goes into the replicated file, what goes into this rank's file) for ``optimizer``."""
    if isinstance(optimizer, OneBitAdam):  # its residuals differ between ranks
        return {"optimizer": None}, {"optimizer_rank": optimizer.state_dict()}
    if not hasattr(optimizer, "pieces"):
        return {"optimizer": optimizer.state_dict()}, {}
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return ({"optimizer": None, "zero": {"names": names, "group_order": optimizer.group_order}},
            {"optimizer_shard": optimizer.state_dict()})


def load(path: str, manifest: dict, replicated: dict, model, optimizer, reducer, comm: MPI.Comm) -> None:
    """Put the checkpoint's optimizer state into ``optimizer``, whichever way it was saved. Collective-free."""
    sharded_now = hasattr(optimizer, "pieces")
    if replicated.get("optimizer") is None and replicated.get("zero") is None:  # per rank: 1-bit Adam
        _load_per_rank(path, manifest, optimizer, comm)
        return
    if replicated.get("zero") is None:
        optimizer.load_state_dict(replicated["optimizer"])  # a ZeroOptimizer cuts its pieces from the whole
        return
    old = manifest["world_size"]
    ranks = overlapping_ranks(reducer, old, comm.Get_rank(), comm.Get_size()) if sharded_now else range(old)
    shards = [checkpoint.load_part(path, checkpoint.rank_file(r), manifest)["optimizer_shard"] for r in ranks]
    if sharded_now:
        optimizer.load_state_dict(shards)
        return
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer.load_state_dict(unsharded_state(shards, params, replicated["zero"]["group_order"]))


def _load_per_rank(path: str, manifest: dict, optimizer, comm: MPI.Comm) -> None:
    """1-bit Adam's state: this rank's own at the same world size; at another, rank 0's AdamW state (the same on
    every rank) with the residuals, which were cut for the old parts, starting from zero."""
    if not isinstance(optimizer, OneBitAdam):
        raise ValueError("the checkpoint holds 1-bit Adam's state, and this run uses another optimizer")
    same = manifest["world_size"] == comm.Get_size()
    state = checkpoint.load_part(path, checkpoint.rank_file(comm.Get_rank() if same else 0),
                                 manifest)["optimizer_rank"]
    if not same and "residuals" in state:
        state = {**state, "residuals": None}
        if comm.Get_rank() == 0:
            print(f"ringtrain: warning: 1-bit Adam's error-feedback residuals were saved for "
                  f"{manifest['world_size']} ranks; at {comm.Get_size()} they start from zero", flush=True)
    elif not same and comm.Get_rank() == 0:  # DGC under AdamW: rank 0's velocity and pending updates go on
        print(f"ringtrain: warning: DGC's per-rank velocity was saved for {manifest['world_size']} ranks; at "
              f"{comm.Get_size()} every rank continues from rank 0's", flush=True)
    optimizer.load_state_dict(state)


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
