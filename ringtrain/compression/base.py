"""The compressor interface.

``compress(x)`` takes a flat float32 array and returns ``(payload, ctx)``: the
payload is the bytes that cross the wire (a uint8 array), ``ctx`` what
``decompress(payload, ctx)`` needs besides it (the element count, shapes).
``wire_bytes`` of a call is ``payload.nbytes``, exactly. Compressors keep their
state (error-feedback residuals, PowerSGD's Q, RNG) and expose it through
``state_dict`` / ``load_state_dict`` so a checkpoint restores it bit for bit.

``allreduce_mean(x, comm)`` averages ``x`` over ranks through the compressor,
by the one ``path`` the compressor declares (``Path``): GATHERED, the default,
gathers every rank's payload (sizes first, so payloads of varying size need no
pickling) and averages the decompressed contributions in rank order, so every
rank computes the same bits; RING_CODEC encodes every hop of the ring
(ring_codec.py); LOW_RANK_ALLREDUCE sums low-rank factors with the ordinary
allreduce (PowerSGD).

A compressor object given to the reducer is a prototype: each bucket gets
``fresh()``, a copy with its own state.
"""
import copy
import enum

import numpy as np
import torch
from mpi4py import MPI

from ..collectives import waiting


class Path(enum.Enum):
    """How a compressor's ``allreduce_mean`` moves data: what the reducer, ZeRO and the cost model go by."""

    GATHERED = "gathered"
    """Every rank's payload is allgathered and each decoded (``gather_mean``): any codec, lossless or not."""
    RING_CODEC = "ring codec"
    """Encoded values are summed hop by hop on the ring (ring_codec.RingCodec): fp16, bf16, int8."""
    LOW_RANK_ALLREDUCE = "low-rank allreduce"
    """Low-rank factors are summed by the ordinary float32 allreduce (PowerSGD)."""


class Compressor:
    """Identity by default: the payload is the float32 bytes.

    >>> c = Compressor()
    >>> c.decompress(*c.compress(np.ones(3, np.float32)))
    array([1., 1., 1.], dtype=float32)
    """

    name = "none"
    params: dict = {}
    """Each parameter's rule (ringtrain.checks.Rule), by name: the spec parser and the constructor use them."""
    path = Path.GATHERED
    """How ``allreduce_mean`` moves data (``Path``); only GATHERED compressors may keep the default."""
    messages = 1
    """Collective messages per ``allreduce_mean`` (PowerSGD sends P, then Q): each pays the latency."""
    feedback = False
    """True if error feedback is part of it (an ``ef+`` chain, onebit, PowerSGD's own residual)."""
    layered = False
    """True if it needs whole parameters (``set_layout``): node-aware blocks are then cut at parameter ends."""

    def compress(self, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        require_finite(x, self.name)
        return x.view(np.uint8).copy(), x.size

    def decompress(self, payload: np.ndarray, ctx) -> np.ndarray:
        out = check_size(payload, 4 * ctx, self.name).view(np.float32).copy()
        return check_finite(out, self.name, "values")

    def wire_bytes(self, count: int) -> int | None:
        """Bytes of the payload ``compress`` returns for ``count`` float32 inputs; None if it depends on the data."""
        return 4 * count

    def set_layout(self, segments) -> None:
        """``(lo, hi, shape)`` of each parameter in the flat input; only layer-aware compressors use it."""

    def fresh(self) -> "Compressor":
        """A compressor configured as this one, with state of its own: the reducer gives one to each bucket.

        A deep copy, so give the reducer an unused compressor (its state, if any, is copied too);
        override it where a copy is not the right thing.
        """
        return copy.deepcopy(self)

    def before_gather(self, comm: MPI.Comm) -> None:
        """Called by ``gather_mean`` before ``compress``, with the communicator (DGC's clipping scales with its
        size); nothing by default. Not collective."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def allreduce_mean(self, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
        """The mean over ranks of ``decompress(compress(x))``; returns a new float32 array."""
        return gather_mean(self, x, comm)


def check_size(payload: np.ndarray, expected: int, name: str) -> np.ndarray:
    if payload.dtype != np.uint8 or payload.ndim != 1:
        raise ValueError(f"{name}: a payload must be a 1-D uint8 array, got {payload.dtype} with shape {payload.shape}")
    if payload.size != expected:
        raise ValueError(f"{name}: the payload has {payload.size} bytes; {expected} were expected for this input")
    return payload


# The exponent bits of a 16-bit float that mark inf and NaN (all ones).
_EXPONENT_ALL_ONES = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def all_finite(values) -> bool:
    # numpy, not torch: torch.isfinite runs about 10x slower on one core here
    # (10 ms for 16 MiB), more than some codecs themselves.
    t = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    if t.numel() == 0:
        return True
    t = t.detach()
    if t.dtype in _EXPONENT_ALL_ONES:  # numpy has no bfloat16; the bits tell
        magnitude = np.bitwise_and(t.contiguous().view(torch.int16).numpy().view(np.uint16), 0x7FFF)
        return int(magnitude.max()) < _EXPONENT_ALL_ONES[t.dtype]
    return bool(np.isfinite(t.numpy()).all())


class NonFiniteInput(ValueError):
    """A compressor was given NaN or inf: the gradient has diverged on this rank."""


def require_finite(x, name: str) -> None:
    """Refuse NaN or inf on the sending side, so that a decoder may treat any non-finite value as corruption."""
    if not all_finite(x):
        raise NonFiniteInput(f"{name}: the input has NaN or inf values, which compression cannot carry "
                             "(has the loss diverged?)")


def check_finite(values, name: str, what: str):
    """``values`` if all finite; else ValueError: the encoder never sends non-finite values, so it is corruption."""
    if not all_finite(values):
        raise ValueError(f"{name}: corrupted payload: its {what} are not all finite")
    return values


def check_scales(scales, name: str):
    """Scales are max or mean magnitudes: finite and >= 0, or the payload is corrupt."""
    check_finite(scales, name, "scales")
    if scales.size and scales.min() < 0:
        raise ValueError(f"{name}: corrupted payload: a scale is negative")
    return scales


def gather_mean(compressor, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
    """Allgather every rank's payload (varying sizes allowed) and average the decompressed results."""
    compressor.before_gather(comm)
    payload, ctx = compressor.compress(x)
    n, me = comm.Get_size(), comm.Get_rank()
    if n == 1:
        return compressor.decompress(payload, ctx)
    # Sizes first, with the buffer interface: no pickling even for varying sizes.
    sizes = np.zeros(n, dtype=np.int64)
    waiting.allgather(comm, np.array([payload.size], dtype=np.int64), sizes)
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    frames = np.empty(int(sizes.sum()), dtype=np.uint8)
    waiting.allgather(comm, payload, [frames, sizes, displs, MPI.BYTE])
    total = np.zeros(x.size, dtype=np.float32)
    for r in range(n):  # rank order: every rank adds in the same order, so the bits agree
        # This rank's own frame is its payload, byte for byte: handed back as the object compress returned,
        # a compressor that kept its decoding (ErrorFeedback) knows it by identity and does not decode it twice.
        frame = payload if r == me else frames[displs[r]:displs[r] + sizes[r]]
        total += compressor.decompress(frame, ctx)
    total /= n
    return total
