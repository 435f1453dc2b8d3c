"""A task: what a run trains (the model), on what (datasets), judged how (loss and metrics).

The trainer takes one Task. ``--model module:function`` may return a Task, or
the older ``(model, loss_fn)`` pair, which trains on the byte corpus (``--data``).

A batch is whatever ``collate_fn`` makes of a list of samples (torch's
``default_collate`` unless given). The loss and every metric are called as
``fn(model, *batch)`` when the batch is a tuple or list, ``fn(model, batch)``
otherwise, and return the mean over the batch's samples: a (B, T) token batch
from the byte corpus is ``(x, y)``, so ``loss_fn(model, x, y)``.

>>> import torch
>>> net = torch.nn.Linear(2, 1)
>>> data = [(torch.ones(2), torch.zeros(1))] * 4
>>> task = Task(net, lambda m, x, y: torch.nn.functional.mse_loss(m(x), y), train_data=data)
>>> as_task((net, task.loss_fn), "example").train_data is None     # the pair: the byte corpus
True
"""
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..fault.errors import UsageError


class TaskError(TypeError):
    """A Task built from the wrong things; ``--model`` reports it as a usage error (exit code 2)."""


@dataclass
class Task:
    model: torch.nn.Module
    """The model to train; rank 0's initial weights and buffers are copied to every rank."""
    loss_fn: Callable[..., torch.Tensor]
    """loss_fn(model, *batch) -> the batch's mean loss (a scalar tensor)."""
    train_data: Any = None
    """A map-style dataset (__len__ and __getitem__); None: the byte corpus given by --data."""
    val_data: Any = None
    """A map-style dataset for validation; None: none (the byte corpus holds out its own)."""
    collate_fn: Callable[[list], Any] | None = None
    """Makes a batch from a list of samples; default: torch's default_collate."""
    metrics: dict[str, Callable[..., Any]] = field(default_factory=dict)
    """Extra validation metrics, name -> fn(model, *batch) -> the batch's mean (e.g. accuracy)."""

    def __post_init__(self):
        if not isinstance(self.model, torch.nn.Module):
            raise TaskError(f"Task.model is a {type(self.model).__name__}: it must be a torch.nn.Module")
        if not callable(self.loss_fn):
            raise TaskError(f"Task.loss_fn is a {type(self.loss_fn).__name__}: it must be callable "
                            "as loss_fn(model, *batch)")
        for name in ("train_data", "val_data"):
            _check_dataset(name, getattr(self, name))
        if self.val_data is not None and self.train_data is None:
            raise TaskError("Task.val_data is given without train_data: the byte corpus holds out its own "
                            "validation text; give train_data too, or neither")
        if self.collate_fn is not None and not callable(self.collate_fn):
            raise TaskError(f"Task.collate_fn is a {type(self.collate_fn).__name__}: it must be callable or None")
        if not isinstance(self.metrics, dict) or not all(isinstance(k, str) and callable(v)
                                                         for k, v in self.metrics.items()):
            raise TaskError("Task.metrics must be a dict of name -> fn(model, *batch)")
        if "loss" in self.metrics:
            raise TaskError("Task.metrics has 'loss': the loss is always reported; name the metric otherwise")


def _check_dataset(name: str, data) -> None:
    if data is None:
        return
    if isinstance(data, torch.utils.data.IterableDataset) or not (hasattr(data, "__len__")
                                                                  and hasattr(data, "__getitem__")):
        raise TaskError(f"Task.{name} is a {type(data).__name__}: give a map-style dataset (with __len__ and "
                        "__getitem__), which ranks can shard deterministically and resume mid-epoch; "
                        "an iterable dataset cannot be")
    if len(data) == 0:
        raise TaskError(f"Task.{name} is empty")


def as_task(built, name: str) -> Task:
    """``built`` (a Task, or a (model, loss_fn) pair) as a Task; UsageError naming ``name`` otherwise."""
    if isinstance(built, Task):
        return built
    if (isinstance(built, tuple) and len(built) == 2 and isinstance(built[0], torch.nn.Module)
            and callable(built[1])):
        return Task(built[0], built[1])
    raise UsageError(f"--model {name}: it returned {_describe(built)} — it must return a ringtrain.Task "
                     "(model, loss_fn, datasets, ...) or a (torch.nn.Module, loss_fn) pair")


def _describe(value) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def call(fn, model, batch):
    """``fn(model, *batch)`` for a tuple or list batch, ``fn(model, batch)`` otherwise."""
    return fn(model, *batch) if isinstance(batch, (tuple, list)) else fn(model, batch)
