"""Grouping parameters into flat gradient buckets.

Buckets are filled in reverse registration order, because backward produces
gradients roughly from the last layer to the first: the first bucket fills
first and its allreduce can start while backward is still running. A bucket
holds one dtype and closes when it reaches ``cap_bytes`` (a parameter larger
than the cap gets a bucket of its own). The first bucket closes at
``first_cap_bytes`` if that is smaller, as DDP's does at 1 MB, so that
communication starts as soon as the last layers have their gradients.
"""
import hashlib
from dataclasses import dataclass

import torch


@dataclass
class Bucket:
    """One flat gradient buffer and the parameters whose gradients live in it."""
    index: int
    params: list
    bounds: list  # (lo, hi) element range of each parameter in ``buffer``
    buffer: torch.Tensor | None  # None between steps under ZeRO-2, which frees it once reduce-scattered
    waiting: set | None = None  # ids of parameters still owing a gradient this step; None: none in yet
    submitted: bool = False     # handed to the communication thread this step

    @property
    def numel(self) -> int:
        """Elements of the buffer: the gradients, then one used-flag per parameter."""
        return self.bounds[-1][1] + len(self.params)

    def allocate(self) -> torch.Tensor:
        """The buffer, made anew if it was freed (uninitialised: every element is written before it is read)."""
        if self.buffer is None:
            self.buffer = torch.empty(self.numel, dtype=self.params[0].dtype)
        return self.buffer

    def view(self, i: int) -> torch.Tensor:
        lo, hi = self.bounds[i]
        return self.allocate()[lo:hi].view_as(self.params[i])

    @property
    def flags(self) -> torch.Tensor:
        """One element per parameter after the gradients: 1 if it got a gradient on this rank.

        They are averaged with the gradients, so afterwards a flag is 0 only if
        no rank had a gradient for that parameter: no extra message needed.
        """
        return self.allocate()[self.bounds[-1][1]:]


def assign_buckets(params: list, cap_bytes: int, first_cap_bytes: int | None = None) -> list[Bucket]:
    """Buckets for ``params`` (in registration order), each at most ``cap_bytes`` unless one parameter is larger.

    >>> ps = [torch.nn.Parameter(torch.zeros(n)) for n in (4, 4, 4)]
    >>> [len(b.params) for b in assign_buckets(ps, cap_bytes=32)]
    [2, 1]
    >>> [len(b.params) for b in assign_buckets(ps, cap_bytes=32, first_cap_bytes=16)]
    [1, 2]
    """
    return [_make(i, group) for i, group in enumerate(group_params(params, cap_bytes, first_cap_bytes))]


def group_sizes(nbytes: list[int], cap_bytes: int, dtypes: list | None = None,
                first_cap_bytes: int | None = None) -> list[list[int]]:
    """Which parameters (by index) go into each bucket, from their byte sizes alone.

    Last registered first, as backward produces them; a bucket closes when the
    next parameter would take it past ``cap_bytes`` or has another dtype. The
    cost model and the planner call this with sizes only, no tensors.

    >>> group_sizes([4, 4, 8], 8)
    [[2], [1, 0]]
    """
    groups, current, size, dtype = [], [], 0, None
    first = cap_bytes if first_cap_bytes is None else min(cap_bytes, first_cap_bytes)
    for i in reversed(range(len(nbytes))):
        kind = dtypes[i] if dtypes is not None else None
        if current and (kind != dtype or size + nbytes[i] > (cap_bytes if groups else first)):
            groups.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes[i]
        dtype = kind
    if current:
        groups.append(current)
    return groups


def bucket_bytes(nbytes: list[int], cap_bytes: int, first_cap_bytes: int | None = None) -> list[int]:
    """The byte size of each bucket the reducer would make (same dtype throughout)."""
    return [sum(nbytes[i] for i in group) for group in group_sizes(nbytes, cap_bytes, None, first_cap_bytes)]


def group_params(params: list, cap_bytes: int, first_cap_bytes: int | None = None) -> list[list]:
    """The parameters of each bucket, without allocating any (see group_sizes)."""
    groups = group_sizes([p.numel() * p.element_size() for p in params], cap_bytes, [p.dtype for p in params],
                         first_cap_bytes)
    return [[params[i] for i in group] for group in groups]


def _make(index: int, params: list) -> Bucket:
    bounds, lo = [], 0
    for p in params:
        bounds.append((lo, lo + p.numel()))
        lo += p.numel()
    # The buffer is made when first used: under ZeRO-2 never for longer than a step.
    return Bucket(index, params, bounds, None)


def layout_fingerprint(buckets: list[Bucket]) -> tuple[int, int, str]:
    """(total elements, 62-bit hash, description) of the bucket layout, for a cross-rank check."""
    text = ";".join(f"{b.params[0].dtype}:" + ",".join(str(tuple(p.shape)) for p in b.params) for b in buckets)
    digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2
    total = sum(b.numel for b in buckets)
    nparams = sum(len(b.params) for b in buckets)
    return total, digest, f"{nparams} parameters, {total} elements in {len(buckets)} buckets"
