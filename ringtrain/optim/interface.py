"""What ringtrain's optimizers and the GradientReducer ask of each other, and what the trainer asks of an optimizer.

An optimizer that steps beside the reducer either averages something of its
own (1-bit Adam's momentum) or steps what the reducer left sharded (ZeRO).
It asks the reducer only for what ``AveragingReducer`` declares. The
training loop, the memory report and checkpoints ask any optimizer (a plain
``torch.optim.AdamW`` too) through the three functions at the end, which a
``ReducerOptimizer`` answers for itself:

    >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    >>> state_layout(opt), state_nbytes(opt)
    ('replicated', 0)
"""
from typing import ClassVar, Iterable, Literal, Protocol

import torch
from mpi4py import MPI

StateLayout = Literal["replicated", "per_rank", "sharded"]
"""Where a checkpoint keeps an optimizer's state: once (rank 0 writes it, every rank's is the same), per rank
(each rank's own, as 1-bit Adam's residuals), or sharded (each rank's piece of the whole, as ZeRO's)."""


class AveragingReducer(Protocol):
    """What an optimizer may ask of the GradientReducer it steps beside."""

    comm: MPI.Comm
    zero: int
    """0: every rank holds the averaged gradients; 1 or 2: only ``shards``, this rank's chunks of them."""
    compression_spec: str
    buckets: list
    """The flat gradient buckets (reducer/buckets.py), in the order they are averaged."""
    shards: object
    """ZeRO's GradientShards (optim/zero/shards.py), or None."""

    @property
    def params(self) -> list[torch.Tensor]:
        """The parameters it averages (those that require grad), in the model's registration order."""

    def keep_local_gradients(self) -> None:
        """From the next ``synchronize`` on, leave each rank's own gradients: the optimizer averages."""

    def add_wire_bytes(self, nbytes: int) -> None:
        """Count bytes the optimizer sent averaging this step into the step's ``last_wire_bytes``."""


class ReducerOptimizer(torch.optim.Optimizer):
    """A torch optimizer that steps beside a GradientReducer: what the trainer and checkpoints ask of it.

    Subclasses are ordinary torch optimizers (LR schedulers, ``add_param_group``,
    ``zero_grad``, ``state_dict``), and say here what is not ordinary about them.
    """

    state_layout: ClassVar[StateLayout] = "replicated"

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds."""
        return _tensor_bytes(self.state)

    def clip_grad_norm_(self, max_norm: float, parameters: Iterable[torch.Tensor] | None = None) -> float:
        """Scale the gradients to total norm at most ``max_norm``; returns the norm before.

        ``parameters``: the model's, in its order (torch sums their norms in
        that order); None: those of the groups. By default torch's own
        clipping: every rank holds the same averaged gradients, so every rank
        clips alike.
        """
        if parameters is None:
            parameters = [p for group in self.param_groups for p in group["params"]]
        return float(torch.nn.utils.clip_grad_norm_(parameters, max_norm))

    def resume_state(self, state: dict, saved_world: int, world: int) -> tuple[dict, str | None]:
        """Per-rank state saved at ``saved_world`` ranks, to load at ``world``; and a warning for rank 0, if any.

        Only ``state_layout == "per_rank"`` optimizers are asked, and only when the world sizes differ.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no per-rank state")


def state_layout(optimizer: torch.optim.Optimizer) -> StateLayout:
    """How a checkpoint keeps ``optimizer``'s state (a plain torch optimizer's: replicated)."""
    return optimizer.state_layout if isinstance(optimizer, ReducerOptimizer) else "replicated"


def state_nbytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state this rank holds."""
    return optimizer.state_nbytes() if isinstance(optimizer, ReducerOptimizer) else _tensor_bytes(optimizer.state)


def clip_grad_norm(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor], max_norm: float) -> float:
    """Clip the gradients ``optimizer`` is about to step to total norm ``max_norm``; returns the norm before.

    Collective for a sharded optimizer (the norm is summed over every shard).
    """
    if isinstance(optimizer, ReducerOptimizer):
        return optimizer.clip_grad_norm_(max_norm, parameters)
    norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    # ZeRO-3's gradients are DTensor shards: their norm is one too, summed over the shards (collective).
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def local_nbytes(t: torch.Tensor | None) -> int:
    """Bytes ``t`` takes on this rank: a DTensor's (ZeRO-3's) own shard, not the whole it stands for."""
    if t is None:
        return 0
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def _tensor_bytes(state: dict) -> int:
    return sum(local_nbytes(t) for s in state.values() for t in s.values() if torch.is_tensor(t))
