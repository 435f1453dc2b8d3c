"""The batches a run trains on: the byte corpus for a model without datasets, or the task's datasets.

Both sources answer the same three questions: ``train(step)`` (this rank's
micro-batch for a micro-step, a pure function of seed and step),
``held_out()`` (this rank's validation batches with their sample counts) and
``describe()``; and both have ``steps_per_epoch`` (None for the corpus, whose
windows are drawn afresh every step) and ``fingerprint`` (what the corpus's
bytes are, which checkpoints record; None for a task's datasets).
"""
import dataclasses

from mpi4py import MPI

from ..data import Batches, DatasetBatches, Prefetcher, WorkerPrefetcher, open_tokens
from ..fault.errors import UsageError
from . import state
from .config import TrainConfig
from .task import Task


def open_source(cfg: TrainConfig, task: Task, comm: MPI.Comm, shard: tuple[int, int] | None = None):
    """The task's batch source for this rank. Collective (the corpus is read on rank 0).

    ``shard``: (which, of how many) share of the data this rank reads, if not
    its rank of ``comm``'s: under pipeline stages every stage of a replica
    reads that replica's share.
    A resume on the byte corpus is refused here, on every rank, if the data
    is not what the checkpoint was trained on (state.check_data).
    """
    rank, world = shard or (comm.Get_rank(), comm.Get_size())
    if task.train_data is None:
        for name in ("epochs", "loader_workers"):
            if getattr(cfg, name):
                raise UsageError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: it applies to a task with "
                                 "datasets; this model trains on the byte corpus (windows drawn afresh every "
                                 "step, on a background thread) — leave it at 0, or return a ringtrain.Task "
                                 "with train_data")
        tokens = open_tokens(cfg.data, comm)
        batches = Batches(tokens.tokens, context=cfg.context, batch=cfg.batch_size, seed=cfg.seed, rank=rank,
                          world=world, eval_windows=cfg.eval_windows, source=tokens.source,
                          fingerprint=tokens.fingerprint)
        state.check_data(cfg, tokens.fingerprint, comm)
        return batches
    if cfg.data is not None:
        raise UsageError(f"--data {cfg.data}: this task brings its own datasets — leave --data out")
    return DatasetBatches(task.train_data, task.val_data, batch=cfg.batch_size, seed=cfg.seed, rank=rank,
                          world=world, drop_last=cfg.last_batch == "drop", collate_fn=task.collate_fn)


def with_epochs(cfg: TrainConfig, source) -> TrainConfig:
    """``cfg`` with --steps set from --epochs (rounded up to whole optimizer steps), or ``cfg`` itself."""
    if not cfg.epochs:
        return cfg
    micro_steps = cfg.epochs * source.steps_per_epoch
    return dataclasses.replace(cfg, steps=-(-micro_steps // cfg.accumulate))


def prefetcher(cfg: TrainConfig, source, first_step: int, last_step: int):
    """What the loop takes micro-batches from, for optimizer steps first_step .. last_step - 1."""
    first, last = first_step * cfg.accumulate, last_step * cfg.accumulate
    if cfg.loader_workers:
        return WorkerPrefetcher(source, first, last, workers=cfg.loader_workers, prefetch=cfg.prefetch)
    return Prefetcher(source, first)
