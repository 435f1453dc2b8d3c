"""The optimizer's part of a checkpoint, for each way an optimizer keeps its state (interface.py's StateLayout).

- replicated (a torch optimizer): rank 0 writes its state_dict; a sharded
  optimizer cuts its pieces from it;
- per rank (1-bit Adam, DGC under AdamW: each rank's residuals or velocity
  differ): each rank writes its own and, at the same world size, reads it
  back; at another, the optimizer says what of rank 0's it keeps;
- sharded (ZeRO): each rank writes its shard, loadable at any world size and
  stage (zero/checkpoint.py).
"""
from mpi4py import MPI

from .. import checkpoint
from .interface import state_layout
from .zero import checkpoint as sharded


def parts(model, optimizer) -> tuple[dict, dict]:
    """(what goes into the replicated file, what goes into this rank's file) for ``optimizer``."""
    layout = state_layout(optimizer)
    if layout == "per_rank":
        return {"optimizer": None}, {"optimizer_rank": optimizer.state_dict()}
    if layout == "sharded":
        return sharded.parts(model, optimizer)
    return {"optimizer": optimizer.state_dict()}, {}


def load(path: str, manifest: dict, replicated: dict, model, optimizer, reducer, comm: MPI.Comm) -> None:
    """Put the checkpoint's optimizer state into ``optimizer``, whichever way it was saved. Collective-free."""
    if replicated.get("zero") is not None:
        sharded.load(path, manifest, replicated, model, optimizer, reducer, comm)
    elif replicated.get("optimizer") is None:  # per rank
        _load_per_rank(path, manifest, optimizer, comm)
    else:
        optimizer.load_state_dict(replicated["optimizer"])  # a ZeroOptimizer cuts its pieces from the whole


def _load_per_rank(path: str, manifest: dict, optimizer, comm: MPI.Comm) -> None:
    """This rank's own state at the same world size; at another, rank 0's, as the optimizer makes it fit."""
    if state_layout(optimizer) != "per_rank":
        raise ValueError("the checkpoint holds 1-bit Adam's (or DGC under AdamW's) per-rank state, and this run "
                         "uses another optimizer")
    saved, world = manifest["world_size"], comm.Get_size()
    state = checkpoint.load_part(path, checkpoint.rank_file(comm.Get_rank() if saved == world else 0),
                                 manifest)["optimizer_rank"]
    if saved != world:
        state, warning = optimizer.resume_state(state, saved, world)
        if warning and comm.Get_rank() == 0:
            print(f"ringtrain: warning: {warning}", flush=True)
    optimizer.load_state_dict(state)

