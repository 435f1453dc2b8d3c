"""DistributedOptimizer's arguments checked as Horovod checks them: the parameter names, ``groups``, the process set.

Local checks, made before anything collective, so a bad argument given to
every rank raises ValueError on every rank with nothing left pending.
"""
import torch

from .basics import size


def named_parameters_of(param_groups: list, named_parameters) -> dict:
    """``{parameter: name}`` for every parameter of ``param_groups``, from ``named_parameters`` or made up.

    Without names each parameter is called ``allreduce.noname.<group>.<index>``
    (Horovod's names). With names: every item must be a ``(name, tensor)``
    tuple, no name may repeat, and every parameter of the optimizer must be
    named; ValueError otherwise (names of tensors the optimizer lacks are let be).

    >>> w = torch.nn.Parameter(torch.zeros(1))
    >>> list(named_parameters_of([{"params": [w]}], None).values())
    ['allreduce.noname.0.0']
    >>> named_parameters_of([{"params": [w]}], [("w", w), ("w", w)])
    Traceback (most recent call last):
    ...
    ValueError: named_parameters: each name must be unique; repeated: w
    """
    if named_parameters is None:
        return {p: f"allreduce.noname.{i}.{j}" for i, group in enumerate(param_groups)
                for j, p in enumerate(group["params"])}
    named = list(named_parameters)
    if not all(isinstance(item, tuple) and len(item) == 2 for item in named):
        raise ValueError("named_parameters must be a sequence of (name, parameter) tuples, as "
                         "model.named_parameters() gives")
    seen, repeated = set(), set()
    for name, _ in named:
        (repeated if name in seen else seen).add(name)
    if repeated:
        names = ", ".join(sorted(map(str, repeated)))
        raise ValueError(f"named_parameters: each name must be unique; repeated: {names}")
    named_ids = {id(p) for _, p in named}
    missing = [p for group in param_groups for p in group["params"] if id(p) not in named_ids]
    if missing:
        shapes = ", ".join(str(tuple(p.shape)) for p in missing[:5])
        raise ValueError(f"named_parameters: {len(missing)} of the optimizer's parameters have no name (shapes "
                         f"{shapes}{', ...' if len(missing) > 5 else ''}); pass model.named_parameters() of the "
                         "whole model")
    return {p: name for name, p in named}


def check_groups(groups) -> None:
    """Horovod's rule: None, a whole number > 0, or a list of lists of tensors, none of them twice.

    >>> check_groups(0)
    Traceback (most recent call last):
    ...
    ValueError: groups=0 is not allowed — a whole number > 0 or a list of lists of torch.Tensor
    """
    if groups is None:
        return
    if isinstance(groups, list):
        seen = set()
        for group in groups:
            for p in group:
                if not isinstance(p, torch.Tensor):
                    raise ValueError(f"groups must hold lists of torch.Tensor; found a {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError(f"groups: a tensor of shape {tuple(p.shape)} appears twice; each parameter "
                                     "belongs to one group at most")
                seen.add(id(p))
        return
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"groups={groups!r} is not allowed — a whole number > 0 or a list of lists of torch.Tensor")


def whole_job(process_set) -> bool:
    """Whether ``process_set`` is the whole job: None, Horovod's global set (id 0), or a set of every rank."""
    if process_set is None or getattr(process_set, "process_set_id", None) == 0:
        return True
    ranks = getattr(process_set, "ranks", None)
    return ranks is not None and sorted(ranks) == list(range(size()))
