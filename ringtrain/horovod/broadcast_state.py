"""Horovod's broadcast_parameters and broadcast_optimizer_state: every rank takes the root's values.

    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

Both run on the main thread on the job's ``state`` communicator. The
tensors' layout (names, shapes, dtypes) is agreed first in one small
allreduce (ringtrain's handshake), so ranks with different models raise
CollectiveMismatchError (a ValueError) on every rank instead of
stalling; then each tensor travels as its raw bytes in one MPI_Bcast, so
any dtype (bool masks, bfloat16, integer counters) arrives bit for bit.
"""
import zlib

import torch
from mpi4py import MPI

from ..collectives.comm import handshake
from .basics import job
from .named_parameters import whole_job


def broadcast_parameters(params, root_rank: int, process_set=None) -> None:
    """Overwrite, in place, every rank's tensors with ``root_rank``'s. Collective.

    ``params``: a dict of tensors (``model.state_dict()``; sorted by name, as
    Horovod does), or a list of tensors or of ``(name, tensor)`` tuples
    (``model.parameters()``, ``model.named_parameters()``); None entries are
    skipped. ValueError for another type, a bad root or a value that is not a
    tensor; CollectiveMismatchError where ranks pass different layouts.

    >>> broadcast_parameters(model.state_dict(), root_rank=0)   # doctest: +SKIP
    """
    if isinstance(params, dict):
        named = sorted(params.items(), key=lambda item: str(item[0]))
    elif isinstance(params, (list, tuple)) or hasattr(params, "__next__"):
        named = [p if isinstance(p, tuple) else (None, p) for p in params]
    else:
        raise ValueError(f"broadcast_parameters: params of type {type(params).__name__} is not allowed — a dict "
                         "(model.state_dict()) or a list of tensors or of (name, tensor) tuples")
    comm = _state_comm(root_rank, process_set, "broadcast_parameters")
    _broadcast_tensors(comm, [(name, t) for name, t in named if t is not None], root_rank, "broadcast_parameters")


def _state_comm(root_rank, process_set, what: str) -> MPI.Comm:
    comm = job().state
    if not whole_job(process_set):
        raise ValueError(f"{what}: process_set={process_set!r} is not allowed — the whole job only")
    if isinstance(root_rank, bool) or not isinstance(root_rank, int) or not 0 <= root_rank < comm.Get_size():
        raise ValueError(f"{what}: root_rank={root_rank!r} is not allowed — a rank from 0 to {comm.Get_size() - 1}")
    return comm


def _broadcast_tensors(comm: MPI.Comm, named: list, root: int, what: str) -> None:
    """Agree on the layout, then one MPI_Bcast of raw bytes per tensor. Collective."""
    def entry(name, t):
        if not isinstance(t, torch.Tensor):
            return f"{name}:not a tensor"
        return f"{name}:{tuple(t.shape)}:{t.dtype}" + ("" if t.device.type == "cpu" else f":{t.device}")
    layout = [entry(name, t) for name, t in named]
    text = ";".join(layout)
    nbytes = sum(t.numel() * t.element_size() for _, t in named if isinstance(t, torch.Tensor))
    # Every rank checks its own list before the first Bcast: ranks that differ all raise here, together.
    handshake(comm, what, nbytes, zlib.crc32(text.encode()), lambda: f"{len(named)} tensors, {nbytes} bytes "
              f"({text[:300]})")
    bad = [e for e in layout if e.endswith(":not a tensor") or ":cpu" not in e and e.count(":") > 2]
    if bad:  # the same on every rank after the handshake, so every rank raises
        raise ValueError(f"{what}: only CPU tensors can be broadcast here; got {', '.join(bad[:5])}")
    with torch.no_grad():
        for _, t in named:
            t = t.detach()
            flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)
            comm.Bcast(flat.view(torch.uint8).numpy(), root=root)
            if flat.data_ptr() != t.data_ptr():
                t.copy_(flat.view_as(t))


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int, model=None,
                              process_set=None) -> None:
    """Make every rank's optimizer state and hyperparameters ``root_rank``'s. Collective.

    As Horovod does, an optimizer with no state yet gets it first: each
    parameter that needs a gradient and has none gets zeros, and the user's
    optimizer steps once (without averaging, so ranks need not agree on it);
    here the weights are then put back as they were, so that step moves nothing.
    Then the root's state (tensors bit for bit, other values exact) and every
    group's hyperparameters (lr, betas, momentum, ...; their Python types kept)
    replace each rank's, in its own ``param_groups``. Works on a
    DistributedOptimizer as on a plain optimizer. ``model`` is accepted and
    unused. LBFGS is refused with ValueError, as in Horovod.

    >>> broadcast_optimizer_state(optimizer, root_rank=0)   # doctest: +SKIP
    """
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError("broadcast_optimizer_state: torch.optim.LBFGS's state (nested lists) is not supported, "
                         "as in Horovod; broadcast_object(optimizer.state_dict()) and load_state_dict instead")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"broadcast_optimizer_state: optimizer={optimizer!r} is not allowed — a "
                         "torch.optim.Optimizer")
    comm = _state_comm(root_rank, process_set, "broadcast_optimizer_state")
    if not optimizer.state:
        _create_state(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # The root's non-tensor values as they are (pickled: exact types); its tensors as (shape, dtype) to receive.
    mine = [{key: _spec(value) for key, value in optimizer.state[p].items()} if p in optimizer.state else None
            for p in params]
    groups = [{key: value for key, value in group.items() if key != "params"} for group in optimizer.param_groups]
    shape = [len(group["params"]) for group in optimizer.param_groups]
    root_state, root_groups, root_shape = comm.bcast((mine, groups, shape), root=root_rank)
    same = comm.allreduce(int(root_shape == shape), op=MPI.MIN)
    if not same:
        raise ValueError(f"broadcast_optimizer_state: the optimizers differ: rank {root_rank} has param groups of "
                         f"{root_shape} parameters, this rank {shape}")
    named = []
    for i, (p, entries) in enumerate(zip(params, root_state)):
        if entries is None:
            optimizer.state.pop(p, None)
            continue
        own, state = optimizer.state.get(p, {}), {}
        for key, value in entries.items():
            if isinstance(value, _TensorSpec):
                # A tensor of the root's shape and dtype receives in place (the root's own tensors send).
                state[key] = own[key] if _fits(own.get(key), value) else value.empty()
                named.append((f"{i}.{key}", state[key]))
            else:
                state[key] = value
        optimizer.state[p] = state
    for group, values in zip(optimizer.param_groups, root_groups):
        group.update(values)
    _broadcast_tensors(comm, named, root_rank, "broadcast_optimizer_state")


class _TensorSpec:
    """A tensor's shape and dtype, sent in its place; the bytes follow by MPI_Bcast."""

    def __init__(self, t: torch.Tensor):
        self.shape, self.dtype = tuple(t.shape), t.dtype

    def empty(self) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype)


def _spec(value):
    return _TensorSpec(value) if isinstance(value, torch.Tensor) else value


def _fits(t, spec: _TensorSpec) -> bool:
    return isinstance(t, torch.Tensor) and tuple(t.shape) == spec.shape and t.dtype == spec.dtype


def _create_state(optimizer: torch.optim.Optimizer) -> None:
    """One step of the user's optimizer on zero gradients, which creates its state; the weights are kept."""
    from .optimizer import HorovodOptimizer  # noqa: PLC0415  (the optimizer imports this package's basics)
    sparse = isinstance(optimizer, torch.optim.SparseAdam)
    kept = []
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    p.grad = torch.zeros_like(p).to_sparse() if sparse else torch.zeros_like(p)
                    kept.append((p, p.detach().clone()))
    # The user's optimizer's own step: a DistributedOptimizer's would average, which only some ranks may reach.
    step = super(HorovodOptimizer, optimizer).step if isinstance(optimizer, HorovodOptimizer) else optimizer.step
    step()
    with torch.no_grad():
        for p, value in kept:
            p.copy_(value)
