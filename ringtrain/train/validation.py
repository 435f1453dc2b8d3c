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
def validate(task: Task, source, comm: MPI.Comm) -> dict[str, float] | None:
    """``{"loss": ..., <metric>: ...}`` over ``source.held_out()``; None when there is no held-out data. Collective."""
    names = ["loss", *task.metrics]
    fns = [task.loss_fn, *task.metrics.values()]
    sums = np.zeros(len(names) + 1)  # per name, then the sample count
    model = task.model
    was_training = model.training
    model.eval()
    error = None
    try:
        for count, batch in source.held_out():
            for i, fn in enumerate(fns):
                sums[i] += float(call(fn, model, batch)) * count
            sums[-1] += count
    except UsageError as e:
        if getattr(source, "fingerprint", None) is None:
            raise
        error = f"rank {comm.Get_rank()}, validation: {e}"
    finally:
        model.train(was_training)
    if getattr(source, "fingerprint", None) is not None:
        agree(comm, error)
    comm.Allreduce(MPI.IN_PLACE, sums, op=MPI.SUM)
    if sums[-1] == 0:
        return None
    return {name: float(total / sums[-1]) for name, total in zip(names, sums)}


def describe(values: dict[str, float]) -> str:
    """``1.2345 | accuracy 0.9123``: the loss, then each metric by name."""
    return " | ".join([f"{values['loss']:.4f}"] + [f"{name} {value:.4f}" for name, value in values.items()
                                                   if name != "loss"])
