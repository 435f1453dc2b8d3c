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
from ..interface import AveragingReducer, ReducerOptimizer
from .state import load_shard, shard_state


@dataclass
class Piece:
    """The part of parameter ``param`` (its elements ``start .. start + tensor.numel()``) in this rank's chunk."""
    bucket: int
    index: int          # the parameter's position in its bucket
    param: int          # the parameter's position among the trainable parameters (registration order)
    start: int          # first element of the parameter that the piece holds
    tensor: torch.Tensor
    grad: torch.Tensor  # its slice of the bucket's averaged chunk


class ZeroOptimizer(ReducerOptimizer):
    """``optimizer_class(groups, **defaults)`` over this rank's pieces of ``params`` (tensors or param-group dicts).

    Its ``param_groups`` are the wrapped optimizer's, whose params are this
    rank's pieces: a learning-rate scheduler that sets ``group["lr"]`` sets the
    step's. ``add_param_group`` takes whole parameters, as torch's does; every
    parameter the reducer averages must be in some group by the first step.
    Collective where it communicates: ``step`` (the allgather) and ``clip_grad_norm_``.
    """

    state_layout = "sharded"

    def __init__(self, reducer: AveragingReducer, optimizer_class, params, **defaults):
        if not reducer.zero:
            raise ValueError("ZeroOptimizer needs a GradientReducer made with zero=1 or zero=2")
        self.reducer, self.comm = reducer, reducer.comm
        self.optimizer_class = optimizer_class
        self.optimizer = None  # the wrapped optimizer, made with the first group
        self._position = {id(p): k for k, p in enumerate(reducer.params)}
        self.sizes = [p.numel() for p in reducer.params]
        self.group_order = []  # per group, its parameters' positions among the trainable ones
        self.flat = [self._flatten(b) for b in reducer.buckets]
        self.pieces = []
        super().__init__(params, defaults)  # each group through add_param_group

    def _flatten(self, bucket) -> torch.Tensor:
        """The bucket's parameters moved into one flat buffer (the gradient bucket's layout); each becomes a view."""
        flat = torch.zeros(bucket.numel, dtype=bucket.params[0].dtype)
        with torch.no_grad():
            for p, (lo, hi) in zip(bucket.params, bucket.bounds):
                flat[lo:hi].copy_(p.detach().reshape(-1))
                p.data = flat[lo:hi].view_as(p)
        return flat

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of whole parameters: the wrapped optimizer gets their pieces in this rank's chunks.

        A rank whose chunks hold no element of the group still gets the
        group, empty, so that every rank's param_groups line up.
        """
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        grouped = {k for order in self.group_order for k in order}
        for p in params:
            if id(p) not in self._position:
                raise ValueError("ZeroOptimizer: a parameter in the groups is not one the reducer averages "
                                 "(is it frozen, or from another model?)")
            if self._position[id(p)] in grouped:
                raise ValueError("ZeroOptimizer: a parameter is in more than one group")
        mine = {id(p) for p in params}
        pieces = []
        for b, bucket in enumerate(self.reducer.buckets):  # bucket order, as the chunks are laid out
            lo, hi = self.reducer.shards.owned[b]
            for i, (plo, phi) in enumerate(bucket.bounds):
                a, c = max(lo, plo), min(hi, phi)
                p = bucket.params[i]
                if a < c and id(p) in mine:
                    pieces.append(Piece(b, i, self._position[id(p)], a - plo, self.flat[b][a:c],
                                        self.reducer.shards.grads[b][a - lo:c - lo]))
        group = {**param_group, "params": [piece.tensor for piece in pieces]}
        if self.optimizer is None:
            self.optimizer = self.optimizer_class([group], **self.defaults)
            # One set of groups and state: the wrapped optimizer's, which its step reads.
            self.param_groups, self.state = self.optimizer.param_groups, self.optimizer.state
        else:
            self.optimizer.add_param_group(group)
        self.group_order.append([self._position[id(p)] for p in params])
        self.pieces = sorted(self.pieces + pieces, key=lambda piece: (piece.bucket, piece.index))

    def _attach_grads(self) -> list[torch.Tensor]:
        """Each piece's averaged gradient as its ``.grad``, or None where no rank had one (as torch would)."""
        grads = []
        for piece in self.pieces:
            used = bool(self.reducer.shards.flags[piece.bucket][piece.index] > 0)
            piece.tensor.grad = piece.grad if used else None
            if used:
                grads.append(piece.grad)
        return grads

    def clip_grad_norm_(self, max_norm: float, parameters=None) -> float:
        """Scale the averaged gradients to global norm at most ``max_norm``; returns the norm before. Collective.

        ``parameters`` is not used: this rank holds only its shard's gradients, and the norm is every shard's.
        """
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

    def step(self, closure=None):
        """Step this rank's pieces, then allgather every bucket's parameters. Collective."""
        grouped = sum(len(order) for order in self.group_order)
        if grouped != len(self.sizes):
            raise ValueError(f"ZeroOptimizer: {len(self.sizes) - grouped} trainable parameters are in no group; "
                             "every parameter the reducer averages must be optimised")
        self._attach_grads()
        loss = self.optimizer.step(closure)
        sent = [0]
        if self.comm.Get_size() > 1:
            ring = private(self.comm)
            with traffic.counting(sent):
                for flat, chunks in zip(self.flat, self.reducer.shards.bounds):
                    # Each rank's chunk from its owner: the chunks the reduce-scatter left the averages in.
                    ring_allgather(ring, flat.numpy(), bounds=chunks)
        # Under ZeRO the parameters' allgather is half of averaging the step: its bytes belong in wire_bytes.
        self.reducer.add_wire_bytes(sent[0])
        return loss

    def state_dict(self) -> dict:
        """This rank's shard: per piece, its place in the flat parameter space and its state (state.py)."""
        return shard_state(self)

    def load_state_dict(self, state) -> None:
        """This rank's ``state_dict()``, a list of every rank's (at any world size), or an unsharded optimizer's."""
        load_shard(self, state)
