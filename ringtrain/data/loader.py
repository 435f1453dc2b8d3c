"""Micro-batches prepared ahead of the step that needs them: on a thread, or in DataLoader worker processes.

``Prefetcher`` builds micro-step ``s + 1``'s batch on one background thread
while step ``s`` runs; enough when a batch is cheap to make (the byte corpus,
tensors in memory). ``WorkerPrefetcher`` hands the same per-step indices
(ShardedSampler) to a torch DataLoader with ``workers`` processes, each
keeping ``prefetch`` batches ready: for datasets that decode or augment.
Both give exactly the batch ``source.train(step)`` would, so the choice never
changes what is computed.
"""
import threading
from concurrent.futures import ThreadPoolExecutor

import torch


class Prefetcher:
    """Builds the next micro-step's batch on a background thread while the current step runs."""

    def __init__(self, source, first_step: int):
        self._source = source
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ringtrain-data")
        self._lock = threading.Lock()
        self._next = (first_step, self._pool.submit(source.train, first_step))

    def get(self, step: int):
        """The batch for ``step``; starts preparing ``step + 1``."""
        with self._lock:
            ready_step, future = self._next
            batch = future.result() if ready_step == step else self._source.train(step)
            self._next = (step + 1, self._pool.submit(self._source.train, step + 1))
        return batch

    def close(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


class _StepIndices(torch.utils.data.Sampler):
    """The DataLoader's batch sampler: the sampler's indices for micro-steps first, first + 1, ..., last - 1."""

    def __init__(self, sampler, first: int, last: int):
        self.sampler, self.first, self.last = sampler, first, last

    def __iter__(self):
        return (self.sampler.indices(s) for s in range(self.first, self.last))

    def __len__(self):
        return self.last - self.first


class WorkerPrefetcher:
    """Micro-batches from a DataLoader over a DatasetBatches' training set, for micro-steps first..last - 1."""

    def __init__(self, source, first_step: int, last_step: int, *, workers: int, prefetch: int):
        self._source, self._next = source, first_step
        # The default start method (fork on Linux): workers inherit the dataset without pickling it and
        # never call MPI. Each is seeded by torch from the main process's RNG; sampling does not use it.
        self._batches = iter(torch.utils.data.DataLoader(
            source.train_data, batch_sampler=_StepIndices(source.sampler, first_step, last_step),
            collate_fn=source.collate, num_workers=workers, prefetch_factor=prefetch))

    def get(self, step: int):
        """The batch for ``step``; the loader's order is the steps' order, so any other step is built here."""
        if step != self._next:
            return self._source.train(step)
        self._next += 1
        return next(self._batches)

    def close(self):
        # Ends the worker processes now rather than at garbage collection.
        shutdown = getattr(self._batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        self._batches = None
