"""--elastic --zero 1/2: each rank's optimizer shard is also kept on the next rank, so a dead rank's shard lives on.

Under ZeRO-1/2 a rank alone holds the optimizer state (AdamW's moments) of
the elements in its chunks, and it alone computed their new values before
the parameters' allgather. So at each step, after the optimizer step and the
allgather and before the step's commit, each rank copies its pieces (their
parameter values and optimizer state, placed in the flat parameter space as
optim/zero/state.py places them), keeps the copy, and sends the state part to
the next rank of the ring, receiving the previous rank's: one Sendrecv of 1/N
of the optimizer state. The previous rank's parameter values need no
message: the allgather has just put them here, and they are copied from the
parameters. The commit makes both copies the committed step's. A step that
fails before its commit leaves the copies of the step before, which is where
the survivors go on from.

After a death each survivor offers its own copy and, where the previous rank
died, that rank's. Together they cover the flat parameter space unless a
rank and the next one died in the same recovery. Then (``recover``):
- every survivor gathers the offered parameter values and writes them into
  its model, which is the committed step's again everywhere (the failed
  step's allgather may have changed part of it on some ranks);
- the smaller ring's optimizer, already built, gets the state of its new
  pieces from whichever survivor holds them, in one alltoall: no rank holds
  more than its new shard and its copies at any time.

Each rank holds two copies, its own and the previous rank's: 2/N of the
parameters and optimizer state. Where the copies do not cover the space, the
survivors go back to the newest checkpoint instead (train/survivors.py).
"""
import dataclasses
import math

import torch
from mpi4py import MPI

from ..collectives.comm import private
from ..constants import TAG_SHARD_DATA, TAG_SHARD_LAYOUT
from ..optim.zero.state import FORMAT, load_shard, per_element
from . import ulfm


@dataclasses.dataclass
class Copy:
    """One rank's pieces. ``layout`` has per piece ``(param, start, numel, dtype, [(name, dtype, shape), ...],
    plain)``: the parameter's dtype, then its optimizer state's tensors, and its state that is not a tensor.
    ``values`` holds the pieces' parameter values and ``state`` the state's tensors, as bytes end to end."""
    owner: int
    """The rank whose pieces these are, as a rank of the launch (COMM_WORLD)."""
    layout: list
    values: torch.Tensor
    state: torch.Tensor

    def pieces(self):
        """``(param, start, numel, value, state)`` per piece; its tensors are views of the buffers."""
        at = held = 0
        for param, start, numel, dtype, entries, plain in self.layout:
            value = self.values[at:at + numel * dtype.itemsize].view(dtype)
            at += _padded(numel * dtype.itemsize)
            state = dict(plain)
            for name, kind, shape in entries:
                size = math.prod(shape) * kind.itemsize
                state[name] = self.state[held:held + size].view(kind).reshape(shape)
                held += _padded(size)
            yield param, start, numel, value, state

    def ranges(self) -> list[tuple[int, int, int]]:
        return [(param, start, numel) for param, start, numel, *_ in self.layout]


@dataclasses.dataclass
class ShardCopies:
    """What this rank holds of the step ``step``: its own pieces, and the previous rank's (None alone)."""
    step: int
    mine: Copy
    previous: Copy | None

    def offered(self, alive: set[int]) -> list[Copy]:
        """What this survivor brings to a recovery: its own copy, and the previous rank's if that rank is dead."""
        theirs = self.previous is not None and self.previous.owner not in alive
        return [self.mine, self.previous] if theirs else [self.mine]

    def nbytes(self) -> int:
        return sum(c.values.numel() + c.state.numel() for c in (self.mine, self.previous) if c is not None)


ALIGN = 16
"""Bytes each tensor's place in a buffer is rounded up to, so that any dtype can be viewed at its offset."""


def _padded(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def _bytes(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``tensors`` copied end to end into one byte buffer, each from an offset that is a multiple of ALIGN."""
    parts = []
    for t in tensors:
        raw = t.detach().reshape(-1).view(torch.uint8)
        parts += [raw, torch.zeros(_padded(raw.numel()) - raw.numel(), dtype=torch.uint8)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)


def pack(opt, owner: int) -> Copy:
    """ZeroOptimizer ``opt``'s pieces, their values and state copied into two buffers. Not collective."""
    layout, values, tensors = [], [], []
    for piece in opt.pieces:
        state = opt.state.get(piece.tensor, {})
        # Sorted by name, so the layout is the same step after step. AdamW's step is a tensor it increments in
        # place: it is copied like the moments.
        named = sorted((k, v) for k, v in state.items() if torch.is_tensor(v))
        plain = {k: v for k, v in state.items() if not torch.is_tensor(v)}
        layout.append((piece.param, piece.start, piece.tensor.numel(), piece.tensor.dtype,
                       [(k, v.dtype, tuple(v.shape)) for k, v in named], plain))
        values.append(piece.tensor)
        tensors += [v for _, v in named]
    return Copy(owner, layout, _bytes(values), _bytes(tensors))


def take(opt, comm: MPI.Comm, step: int) -> ShardCopies:
    """Pack this rank's pieces and swap copies around the ring: the copies of ``step``, to keep once the step
    is committed. Collective; called after the optimizer step's allgather.

    Only the optimizer state travels: the previous rank's parameter values are in this rank's parameters
    already, as the allgather left them, and are copied from there.
    """
    mine = pack(opt, MPI.COMM_WORLD.Get_rank())
    n, r = comm.Get_size(), comm.Get_rank()
    if n == 1:
        return ShardCopies(step, mine, None)
    ring = private(comm)
    after, before = (r + 1) % n, (r - 1) % n
    # The layout is plain Python, a few kB: pickled. The state is not.
    owner, layout = ring.sendrecv((mine.owner, mine.layout), dest=after, sendtag=TAG_SHARD_LAYOUT, source=before,
                                  recvtag=TAG_SHARD_LAYOUT)
    size = sum(_padded(math.prod(shape) * kind.itemsize) for *_, entries, _ in layout for _, kind, shape in entries)
    state = torch.empty(size, dtype=torch.uint8)
    ring.Sendrecv(mine.state.numpy(), dest=after, sendtag=TAG_SHARD_DATA, recvbuf=state.numpy(), source=before,
                  recvtag=TAG_SHARD_DATA)
    params = opt.reducer.params
    values = _bytes([params[param].detach().reshape(-1)[start:start + numel] for param, start, numel, *_ in layout])
    return ShardCopies(step, mine, Copy(owner, layout, values, state))


def covers(ranges: list[tuple[int, int, int]], sizes: list[int]) -> bool:
    """Whether ``ranges`` (param, start, numel) cover every element of parameters of ``sizes`` exactly once.

    >>> covers([(0, 0, 2), (0, 2, 3), (1, 0, 4)], [5, 4]), covers([(0, 0, 2), (1, 0, 4)], [5, 4])
    (True, False)
    """
    spans = {}
    for param, start, numel in ranges:
        spans.setdefault(param, []).append((start, numel))
    for param, size in enumerate(sizes):
        at = 0
        for start, numel in sorted(spans.get(param, [])):
            if start != at:
                return False
            at += numel
        if at != size:
            return False
    return len(spans.keys() - set(range(len(sizes)))) == 0


def recover(held: ShardCopies | None, step: int, opt, comm: MPI.Comm) -> str:
    """Load step ``step`` into ``opt`` (the survivors' new ZeroOptimizer) and its parameters from the copies the
    survivors hold; "" if done, else why not, changing nothing. Collective, and every survivor returns the same."""
    params = opt.reducer.params  # the trainable parameters, in the order the pieces number them
    alive = set(ulfm.as_launched(comm))
    offered = held.offered(alive) if held is not None else []
    everyone = comm.allgather((held.step if held is not None else None, [r for c in offered for r in c.ranges()]))
    if any(s is None for s, _ in everyone):
        return "the failure came before the first shard copies were committed"
    if {s for s, _ in everyone} != {step}:  # a bug, were it to happen: the checkpoint is safer than mixing steps
        return f"the shard copies are of steps {sorted({s for s, _ in everyone})}, not of step {step}"
    if not covers([r for _, ranges in everyone for r in ranges], [p.numel() for p in params]):
        return "a rank and the next died together, taking both copies of an optimizer shard"
    # The parameters, whole on every rank: each survivor's offered values to all (clones, so that pickling
    # sends each piece and not the whole buffer it is a view of).
    values = [(param, start, value.clone()) for c in offered for param, start, _, value, _ in c.pieces()]
    with torch.no_grad():
        for part in comm.allgather(values):
            for param, start, value in part:
                params[param].data.view(-1)[start:start + value.numel()].copy_(value)
    # The optimizer state, each new piece's from whoever holds it.
    wanted = {}
    for rank, ranges in enumerate(comm.allgather([(p.param, p.start, p.tensor.numel()) for p in opt.pieces])):
        for param, start, numel in ranges:
            wanted.setdefault(param, []).append((rank, start, numel))
    outgoing = [[] for _ in range(comm.Get_size())]
    for c in offered:
        for param, start, numel, _, state in c.pieces():
            for rank, lo, count in wanted.get(param, []):
                a, b = max(start, lo), min(start + numel, lo + count)
                if a < b:  # per-element state cut to the overlap; per-parameter state (AdamW's step) whole
                    cut = {k: (v[a - start:b - start] if per_element(v, numel) else v) for k, v in state.items()}
                    cut = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in cut.items()}
                    outgoing[rank].append({"param": param, "start": a, "numel": b - a, "state": cut})
    pieces = [piece for part in comm.alltoall(outgoing) for piece in part]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    load_shard(opt, {"format": FORMAT, "sizes": list(opt.sizes), "pieces": pieces, "groups": groups})
    return ""
