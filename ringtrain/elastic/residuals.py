"""--elastic: which compressor state the survivors keep, and which restarts at zero.

A compressor's state belongs to the rank that holds it: error feedback's
residual, DGC's velocity and accumulation, PowerSGD's residual (its Q is the
same on every rank). A survivor's residual is the part of its own gradients
that compression held back; it stays valid at any world size, so the
survivors keep theirs. What restarts at zero:
- the dead rank's residual, lost with it: the part of its gradients it held
  back never reaches the sum;
- a survivor's state where the node layout changed, under node-aware
  compression: there the residual belongs to a (node, block) cut of the
  bucket that the new layout cuts differently.

(A rank lost before the first round's loop began leaves nothing committed:
the survivors resume from the checkpoint at their size, whose warning says
that per-rank state starts fresh.)

The reduction changes the state in place, so the committed step's is a copy
taken at each commit: one copy of the residuals per step, only under
--elastic with compression.
"""
from mpi4py import MPI


def snapshot(sync, compresses: bool) -> dict | None:
    """This rank's compressor state as of now (a copy); None where nothing compresses.

    >>> snapshot(None, compresses=False) is None
    True
    """
    return sync.state_dict() if compresses else None


def restore(sync, state: dict | None, comm: MPI.Comm) -> str:
    """Load this rank's kept ``state`` into the new round's ``sync``; the words for rank 0's line, counting the
    ranks that kept theirs. Collective."""
    kept = int(state is not None and sync.load_state_dict(state, warn=False) is not False)
    total = comm.allreduce(kept)
    world = comm.Get_size()
    if state is None:
        return ""
    if total == world:
        return "; each survivor keeps its compressor state (the dead rank's part is lost)"
    if total == 0:
        return "; compressor state restarts at zero (node-aware compression: the node layout changed)"
    return (f"; {total} of {world} survivors keep their compressor state, the others' restarts at zero (their "
            "node layout changed)")
