"""int8 with one float32 scale per segment: about a quarter of the float32 bytes.

``allreduce_mean`` runs inside the ring (collectives/codec_ring.py) with scales shared by
all ranks: one MAX allreduce of every segment's largest |x| (a 512th of the
data), then a partial sum over h ranks crosses each hop as int8 with scale
h * max / 127, so it never overflows; each hop rounds once. Stochastic
rounding applies on the wire as well.

Each segment of ``segment`` elements is scaled by ``max|x| / 127`` and rounded
to int8, to nearest or, with ``stochastic=True``, up or down with the
probabilities that make the rounding unbiased (E[decode] = x). Payload: the
scales (float32), then the int8 values.
"""
import numpy as np
import torch
from mpi4py import MPI

from ..checks import flag, whole
from ..collectives import waiting
from .base import check_scales, check_size, require_finite
from .params import require
from .ring_codec import RingCodec


_LARGEST_SCALE = float(np.finfo(np.float32).max) / 127  # the encoder's scale is max|x| / 127


class Int8(RingCodec):
    name = "int8"
    params = {"segment": whole(1), "stochastic": flag(), "seed": whole(0, 2**63 - 1)}

    def __init__(self, segment: int = 512, stochastic: bool = False, seed: int = 0):
        require(self.name, self.params, segment=segment, stochastic=stochastic, seed=seed)
        self.segment, self.stochastic = int(segment), bool(stochastic)
        self._rng = np.random.default_rng(seed)

    def _layout(self, count: int) -> int:
        return -(-count // self.segment)

    def wire_bytes(self, count: int) -> int:
        return 4 * self._layout(count) + count  # the scales, then one byte per value

    def _rows(self, x: torch.Tensor, nseg: int) -> torch.Tensor:
        """x as (nseg, segment): a view, or a zero-padded copy when the last segment is short."""
        if x.numel() == nseg * self.segment:
            return x.view(nseg, self.segment)
        rows = torch.zeros(nseg * self.segment)
        rows[:x.numel()] = x
        return rows.view(nseg, self.segment)

    def _scratch(self, size: int) -> torch.Tensor:
        """A float32 buffer kept between calls: a fresh one of tens of MB costs a page fault per 4 KiB, every
        call, which took longer than all the arithmetic (a 16 MiB compress went from 14.7 to a few ms)."""
        if getattr(self, "_spare", None) is None or self._spare.numel() < size:
            self._spare = torch.empty(size)
        return self._spare[:size]

    def compress(self, x: np.ndarray):
        # torch, in place where it can: every pass over the data costs about
        # as much time as the bytes it saves on a fast link.
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        n = x.numel()
        nseg = self._layout(n)
        payload = np.empty(4 * nseg + n, dtype=np.uint8)
        rows = self._rows(x, nseg)
        work = self._scratch(nseg * self.segment).view(nseg, self.segment)
        scales = torch.from_numpy(payload[:4 * nseg].view(np.float32))
        # max |x| per segment; NaN propagates (torch.aminmax's reduction over rows is five times slower here).
        torch.amax(torch.abs(rows, out=work), dim=1, out=scales)
        require_finite(scales, self.name)  # a NaN or inf anywhere reaches its segment's scale
        scales /= 127.0
        rows = torch.mul(rows, torch.where(scales > 0, 1.0 / scales, torch.zeros(()))[:, None], out=work)
        if self.stochastic:
            # floor(v + u), u ~ U[0, 1): rounds up with probability frac(v), so unbiased.
            rows += torch.from_numpy(self._rng.random(rows.shape, dtype=np.float32))
            rows.floor_()
        else:
            rows.round_()
        # |v| <= 127 by the choice of scale, so no clamp is needed before the cast.
        torch.from_numpy(payload[4 * nseg:].view(np.int8)).copy_(rows.view(-1)[:n])
        return payload, n

    def decompress(self, payload, ctx) -> np.ndarray:
        nseg = self._layout(ctx)
        check_size(payload, 4 * nseg + ctx, self.name)
        scales = torch.from_numpy(check_scales(payload[:4 * nseg].view(np.float32), self.name))
        q = torch.from_numpy(payload[4 * nseg:].view(np.int8))
        if ctx and int(q.min()) < -127:  # the encoder's values lie in [-127, 127]
            raise ValueError(f"{self.name}: corrupted payload: a value is -128, outside the encoder's [-127, 127]")
        if nseg and float(scales.max()) > _LARGEST_SCALE:  # 127 x a larger scale overflows float32
            raise ValueError(f"{self.name}: corrupted payload: a scale exceeds float32's largest value / 127")
        out = torch.empty(nseg * self.segment)
        out[:ctx] = q
        out[ctx:] = 0
        out = out.view(nseg, self.segment)
        out *= scales[:, None]
        return out.view(-1)[:ctx].numpy()

    # --- the ring codec: scales shared across ranks ---------------------------
    wire_dtype = np.int8

    def prepare(self, x: np.ndarray, comm) -> None:
        nseg = self._layout(x.size)
        t = torch.from_numpy(x)
        full = x.size // self.segment
        # Segment maxima without copying the full segments (views), the short tail apart.
        low, high = torch.aminmax(t[:full * self.segment].view(full, self.segment), dim=1)
        shared = np.empty(nseg, dtype=np.float32)
        torch.maximum(high, -low, out=torch.from_numpy(shared[:full]))
        if nseg > full:
            shared[full] = np.abs(x[full * self.segment:]).max()
        require_finite(shared, self.name)  # before the MAX: one rank's NaN would vanish into it
        waiting.allreduce(comm, MPI.IN_PLACE, shared, MPI.MAX)
        step = torch.from_numpy(shared / 127.0)
        # Per element, once, in buffers kept between calls (fresh tens-of-MB
        # tensors cost page faults on every call): the hops then only slice.
        if getattr(self, "_step", None) is None or self._step.numel() < x.size:
            self._step, self._inverse, self._work = (torch.empty(x.size) for _ in range(3))
        self._step[:full * self.segment].view(full, self.segment).copy_(step[:full, None].expand(full, self.segment))
        self._step[full * self.segment:x.size] = step[full:] if nseg > full else 0
        torch.reciprocal(self._step[:x.size], out=self._inverse[:x.size])
        self._inverse[:x.size].nan_to_num_(posinf=0.0)

    def encode(self, values: np.ndarray, lo: int, hi: int, summed: int, out: np.ndarray) -> None:
        v = self._work[:hi - lo]
        torch.mul(torch.from_numpy(values), self._inverse[lo:hi], out=v)
        if summed != 1:
            v /= summed
        if self.stochastic:
            v += torch.from_numpy(self._rng.random(v.shape, dtype=np.float32))
            v.floor_()
        else:
            v.round_()
        torch.from_numpy(out).copy_(v.clamp_(-127, 127))

    def decode(self, wire: np.ndarray, lo: int, hi: int, summed: int, out: np.ndarray) -> np.ndarray:
        o = torch.from_numpy(out)
        torch.mul(torch.from_numpy(wire), self._step[lo:hi], out=o)
        if summed != 1:
            o *= summed
        return out

    def state_dict(self) -> dict:
        return {"rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
