"""Validation: the task's loss and metrics over the held-out data, each rank evaluating its share.

Each rank sums ``count * batch mean`` per batch and the sample counts; one
allreduce of those sums gives every rank the same mean over all samples, so
ranks holding a sample more or less weigh in correctly. The byte corpus's
cache can be cut under a running job: a rank that cannot read its windows
says so to the others first (fault.agree), as a training step does.
"""
import numpy as np
import torch
from mpi4py import MPI

from ..fault import UsageError, agree
from .task import Task, call


@torch.no_grad()
def validate(task: Task, source, comm: MPI.Comm, fully_sharded: bool = False) -> dict[str, float] | None:
    """``{"loss": ..., <metric>: ...}`` over ``source.held_out()``; None when there is no held-out data. Collective.

    ``fully_sharded`` (ZeRO-3, whose forward is collective): every rank runs as
    many forwards as the rank with the most batches, the extra ones on a batch
    already seen, weighed 0; and the parameters are sharded again after (the
    root group stays gathered after a forward that no backward follows).
    """
    names = ["loss", *task.metrics]
    fns = [task.loss_fn, *task.metrics.values()]
    sums = np.zeros(len(names) + 1)  # per name, then the sample count
    checked = getattr(source, "fingerprint", None) is not None
    model = task.model
    was_training = model.training
    model.eval()
    error = None
    try:
        batches = source.held_out()
        if fully_sharded:  # every rank reads its batches, and says whether it could, before the first forward
            batches, error = read_agreed(batches, comm, checked)
            batches = _in_lockstep(batches, comm) if error is None else []
        for count, batch in batches:
            for i, fn in enumerate(fns):
                sums[i] += float(call(fn, model, batch)) * count
            sums[-1] += count
    except UsageError as e:
        if not checked:
            raise
        error = f"rank {comm.Get_rank()}, validation: {e}"
    finally:
        model.train(was_training)
        if fully_sharded:
            model.reshard()
    if checked:
        agree(comm, error)
    comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    if sums[-1] == 0:
        return None
    return {name: float(total / sums[-1]) for name, total in zip(names, sums)}


def read_agreed(batches, comm: MPI.Comm, checked: bool) -> tuple[list, str | None]:
    """(the batches as a list, the error any rank met reading its own, or None). Collective where ``checked``."""
    error = None
    try:
        batches = list(batches)
    except UsageError as e:
        if not checked:
            raise
        batches, error = [], f"rank {comm.Get_rank()}, validation: {e}"
    if checked:
        every = [e for e in comm.allgather(error) if e]
        error = every[0] if every else None
    return batches, error


def _in_lockstep(mine: list, comm: MPI.Comm) -> list:
    """``mine`` padded with weight-0 repeats to the most batches any rank has. Collective.

    Rank 0 always holds the most (ranks take every world-th sample or window,
    from their rank on); a rank with none borrows rank 0's first.
    """
    counts = np.array([len(mine), -len(mine)])
    comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.MAX)  # the most, and minus the fewest, in one call
    most, fewest = int(counts[0]), -int(counts[1])
    if most == 0:
        return mine
    spare = mine[0][1] if mine else None
    if fewest == 0:
        borrowed = comm.bcast(spare if comm.Get_rank() == 0 else None, root=0)
        spare = spare if mine else borrowed
    return mine + [(0, spare)] * (most - len(mine))


def describe(values: dict[str, float]) -> str:
    """``1.2345 | accuracy 0.9123``: the loss, then each metric by name."""
    return " | ".join([f"{values['loss']:.4f}"] + [f"{name} {value:.4f}" for name, value in values.items()
                                                   if name != "loss"])
