"""ZeroOptimizer: any torch optimizer, stepping only this rank's shard of the parameters (ZeRO stages 1 and 2).

    reducer = ringtrain.GradientReducer(model, zero=1)      # or zero=2: gradients sharded too
    optimizer = ringtrain.ZeroOptimizer(reducer, torch.optim.AdamW, model.parameters(), lr=1e-3)
    loss.backward(); reducer.synchronize()                  # each rank holds its averaged chunks
    optimizer.clip_grad_norm_(1.0)                          # the global norm, from every shard
    optimizer.step()                                        # steps the shard, allgathers the parameters

The parameters are moved into one flat buffer per bucket, laid out as the
gradient bucket is, and each parameter becomes a view of its slice. This
rank's chunk of a bucket holds pieces of one or more parameters; each piece
is a view of the flat buffer, handed to the wrapped optimizer in its
parameter's group. So the optimizer keeps state (AdamW's two moments, SGD's
momentum) for 1/N of the elements, updates them in place, and one ring
allgather per bucket gives every rank the whole updated model.

Elementwise optimizers (AdamW, Adam, SGD with or without momentum) compute on
a piece exactly what they compute on the same elements of the whole
parameter, and the ring's chunks hold exactly the ring allreduce's average:
without clipping, training is bitwise identical to unsharded training whose
buckets take the ring. Clipping uses the global norm (one allreduce of the
shards' sums of squares, in float64), which rounds differently from torch's
per-parameter norms: within 1e-6 relative.

The state is saved per piece with its place in the flat parameter space (the
trainable parameters in registration order, each flattened), so it can be cut
again for any number of ranks (state.py).
"""
from dataclasses import dataclass

import torch

from ...collectives import allreduce, traffic
from ...collectives.comm import private
from ...collectives.ring import ring_allgather


@dataclass
class Piece:
    """The part of parameter ``param`` (its elements ``start .. start + tensor.numel()``) in this rank's chunk."""
    bucket: int
    index: int          # the parameter's position in its bucket
    param: int          # the parameter's position among the trainable parameters (registration order)
    start: int          # first element of the parameter that the piece holds
    tensor: torch.Tensor
    grad: torch.Tensor  # its slice of the bucket's averaged chunk


class ZeroOptimizer:
    """``optimizer_class(groups, **defaults)`` over this rank's pieces of ``params`` (tensors or param-group dicts).

    Collective where it communicates: ``step`` (the allgather) and ``clip_grad_norm_``.
    """

    def __init__(self, reducer, optimizer_class, params, **defaults):
        if not getattr(reducer, "zero", 0):
            raise ValueError("ZeroOptimizer needs a GradientReducer made with zero=1 or zero=2")
        self.reducer, self.comm = reducer, reducer.comm
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        trainable = reducer._params
        position = {id(p): k for k, p in enumerate(trainable)}
        group_of = {}
        for g, group in enumerate(groups):
            for p in group["params"]:
                if id(p) not in position:
                    raise ValueError("ZeroOptimizer: a parameter in the groups is not one the reducer averages "
                                     "(is it frozen, or from another model?)")
                group_of[id(p)] = g
        missing = [k for k, p in enumerate(trainable) if id(p) not in group_of]
        if missing:
            raise ValueError(f"ZeroOptimizer: {len(missing)} trainable parameters are in no group; every "
                             "parameter the reducer averages must be optimised")
        self.group_order = [[position[id(p)] for p in group["params"]] for group in groups]
        self.flat = [self._flatten(b) for b in reducer.buckets]
        self.pieces, inner_groups = [], [{**g, "params": []} for g in groups]
        for b, bucket in enumerate(reducer.buckets):
            lo, hi = reducer.shards.owned[b]
            for i, (plo, phi) in enumerate(bucket.bounds):
                a, c = max(lo, plo), min(hi, phi)
                if a >= c:
                    continue
                p = bucket.params[i]
                piece = Piece(b, i, position[id(p)], a - plo, self.flat[b][a:c], reducer.shards.grads[b][a - lo:c - lo])
                self.pieces.append(piece)
                inner_groups[group_of[id(p)]]["params"].append(piece.tensor)
        # A rank whose chunks hold no element of some group still keeps the group, empty, so that every
        # rank's param_groups line up (the trainer sets the learning rate per group).
        self.optimizer = optimizer_class(inner_groups, **defaults) if self.pieces else None
        self._empty_groups = inner_groups
        self.sizes = [p.numel() for p in trainable]

    def _flatten(self, bucket) -> torch.Tensor:
        """The bucket's parameters moved into one flat buffer (the gradient bucket's layout); each becomes a view."""
        flat = torch.zeros(bucket.numel, dtype=bucket.params[0].dtype)
        with torch.no_grad():
            for p, (lo, hi) in zip(bucket.params, bucket.bounds):
                flat[lo:hi].copy_(p.detach().reshape(-1))
                p.data = flat[lo:hi].view_as(p)
        return flat

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups if self.optimizer is not None else self._empty_groups

    def _attach_grads(self) -> list[torch.Tensor]:
        """Each piece's averaged gradient as its ``.grad``, or None where no rank had one (as torch would)."""
        grads = []
        for piece in self.pieces:
            used = bool(self.reducer.shards.flags[piece.bucket][piece.index] > 0)
            piece.tensor.grad = piece.grad if used else None
            if used:
                grads.append(piece.grad)
        return grads

    def clip_grad_norm_(self, max_norm: float) -> float:
        """Scale the averaged gradients to global norm at most ``max_norm``; returns the norm before. Collective."""
        grads = self._attach_grads()
        total = torch.zeros(1, dtype=torch.float64)
        for g in grads:
            total += g.double().pow(2).sum()
        allreduce(total, op="sum", comm=self.comm, check=False)
        norm = float(total.sqrt())
        # As torch.nn.utils.clip_grad_norm_: a float32 factor, clamped to 1, multiplied in place.
        factor = torch.clamp(torch.tensor(max_norm / (norm + 1e-6), dtype=torch.float32), max=1.0)
        for g in grads:
            g.mul_(factor)
        return norm

    def step(self) -> None:
        """Step this rank's pieces, then allgather every bucket's parameters. Collective."""
        self._attach_grads()
        if self.optimizer is not None:
            self.optimizer.step()
        sent = [0]
        if self.comm.Get_size() > 1:
            ring = private(self.comm)
            with traffic.counting(sent):
                for flat, chunks in zip(self.flat, self.reducer.shards.bounds):
                    # Each rank's chunk from its owner: the chunks the reduce-scatter left the averages in.
                    ring_allgather(ring, flat.numpy(), bounds=chunks)
        # Under ZeRO the parameters' allgather is half of averaging the step: its bytes belong in wire_bytes.
        self.reducer.last_wire_bytes += sent[0]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for piece in self.pieces:
            piece.tensor.grad = None

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds."""
        if self.optimizer is None:
            return 0
        return sum(t.numel() * t.element_size() for s in self.optimizer.state.values() for t in s.values()
                   if torch.is_tensor(t))

    def state_dict(self) -> dict:
        """This rank's shard: per piece, its place in the flat parameter space and its state."""
        from .state import shard_state
        return shard_state(self)

    def load_state_dict(self, state) -> None:
        """A list of every rank's ``state_dict()`` (at any world size), or an unsharded optimizer's state_dict."""
        from .state import load_shard
        load_shard(self, state)
