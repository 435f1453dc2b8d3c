"""PowerSGD: a rank-r approximation of each gradient matrix, by one step of power iteration.

Given the bucket's layout (``set_layout``, which the gradient reducer calls),
each parameter with two or more dimensions is a matrix M (first dimension x
the rest); without a layout the whole flat input is one near-square matrix,
zero-padded. With Q (cols x r) kept from the previous step (warm start; the
first Q is drawn from ``seed``, so it is the same on every rank):

    P = M Q          allreduce-mean every P at once   (rows x r each)
    P = orth(P)                          (QR: the same on every rank, P being the same)
    Q = M^T P        allreduce-mean every Q at once   (cols x r each)
    M_hat = P Q^T                        the averaged approximation

and M - M_hat is fed back into the next step (error feedback). Both messages
are sums of per-rank terms, so they go through the ordinary allreduce: wire
bytes are (rows + cols) r float32 instead of rows x cols. A matrix that this
would not shrink ``min_ratio`` times, and every vector (biases, norm gains),
travels uncompressed in the first message: low rank only makes sense per
layer, where gradients have that structure; a flattened bucket does not.
"""
import math
from typing import NamedTuple

import numpy as np
import torch
from mpi4py import MPI

from ..checks import number, whole
from ..collectives import allreduce
from .base import Compressor, Path, check_finite, check_size, require_finite
from .params import require


class Matrix(NamedTuple):
    """One compressed parameter: elements ``[lo, hi)`` of the flat input as a rows x cols matrix, at rank r."""
    lo: int
    hi: int
    rows: int
    cols: int
    r: int


class PowerSGD(Compressor):
    name = "powersgd"
    params = {"rank": whole(1), "seed": whole(0, 2**63 - 1), "min_ratio": number(1)}
    path, messages = Path.LOW_RANK_ALLREDUCE, 2  # P and Q, each through the ordinary allreduce
    feedback = True  # its own residual, kept inside allreduce_mean
    layered = True  # one matrix per parameter

    def __init__(self, rank: int = 4, seed: int = 0, min_ratio: float = 2.0):
        require(self.name, self.params, rank=rank, seed=seed, min_ratio=min_ratio)
        self.rank, self.seed, self.min_ratio = int(rank), int(seed), float(min_ratio)
        self.layout = None        # [(lo, hi, shape)] of the parameters in the flat input
        self._plan_for = None     # the element count the plan below was made for
        self.matrices: list[Matrix] = []   # the compressed parameters
        self.raw: list[tuple[int, int]] = []   # (lo, hi) of those sent whole
        self.q: list[torch.Tensor] | None = None
        self.residual: torch.Tensor | None = None

    @staticmethod
    def matrix_shape(n: int) -> tuple[int, int]:
        cols = max(1, math.isqrt(max(n - 1, 0)) + 1) if n > 1 else 1
        return -(-n // cols), cols

    def set_layout(self, segments) -> None:
        """``segments``: ``(lo, hi, shape)`` of each parameter in the flat input, in order."""
        self.layout = [(int(lo), int(hi), tuple(shape)) for lo, hi, shape in segments]
        self._plan_for = None

    def _split(self, n: int) -> tuple[list[Matrix], list[tuple[int, int]]]:
        """Which parts of an input of ``n`` elements are compressed (as matrices) and which travel whole."""
        if self.layout is None:
            rows, cols = self.matrix_shape(n)
            return [Matrix(0, n, rows, cols, min(self.rank, rows, cols))], []
        if self.layout[-1][1] != n:
            raise ValueError(f"powersgd: the layout covers {self.layout[-1][1]} elements, the input has {n}")
        matrices, raw = [], []
        for lo, hi, shape in self.layout:
            rows = shape[0] if len(shape) >= 2 else 0
            cols = (hi - lo) // rows if rows else 0
            r = min(self.rank, rows, cols)
            if rows and (rows + cols) * r * self.min_ratio <= rows * cols:
                matrices.append(Matrix(lo, hi, rows, cols, r))
            else:
                raw.append((lo, hi))
        return matrices, raw

    def _plan(self, n: int) -> None:
        if self._plan_for == n:
            return
        self.matrices, self.raw = self._split(n)
        if self.q is None or [tuple(q.shape) for q in self.q] != [(m.cols, m.r) for m in self.matrices]:
            generator = torch.Generator().manual_seed(self.seed)
            self.q = [torch.randn(m.cols, m.r, generator=generator) for m in self.matrices]
        if self.residual is None or self.residual.numel() != n:
            self.residual = torch.zeros(n)
        self._corrected = torch.empty(n)  # the input plus the residual, kept: fresh pages fault per 4 KiB
        self._raw_count = sum(hi - lo for lo, hi in self.raw)
        self._shapes: dict[tuple[int, int], list[int]] = {}  # (rows, r): the matrices of that shape, batched in QR
        for i, m in enumerate(self.matrices):
            self._shapes.setdefault((m.rows, m.r), []).append(i)
        self._plan_for = n

    def _views(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for m in self.matrices:
            if m.hi - m.lo == m.rows * m.cols:
                out.append(x[m.lo:m.hi].view(m.rows, m.cols))
            else:  # the layout-less near-square matrix, zero-padded
                padded = torch.zeros(m.rows * m.cols)
                padded[:m.hi - m.lo] = x[m.lo:m.hi]
                out.append(padded.view(m.rows, m.cols))
        return out

    def wire_bytes(self, count: int) -> int:
        # From the split alone: asking must not reset Q or the residual.
        matrices, raw = self._split(count)
        return 4 * (sum((m.rows + m.cols) * m.r for m in matrices) + sum(hi - lo for lo, hi in raw))

    def _sizes(self):
        return [m.rows * m.r for m in self.matrices], [m.cols * m.r for m in self.matrices]

    # Each product is written transposed (r x rows, r x cols): on one core MKL
    # computes Q^T M^T and P^T M several times faster than M Q and M^T P,
    # which walk a row-major M against its grain (measured: 5.7 and 29 ms
    # against 2.4 and 2.5 ms for a 2048 x 2048 float32 matrix at rank 4).

    def _first(self, x: torch.Tensor, views, out: torch.Tensor) -> None:
        """P^T = Q^T M^T of every matrix, into ``out`` one after another, then the uncompressed parts of ``x``."""
        at = 0
        for v, q, m in zip(views, self.q, self.matrices):
            torch.mm(q.T, v.T, out=out[at:at + m.rows * m.r].view(m.r, m.rows))
            at += m.rows * m.r
        for lo, hi in self.raw:
            out[at:at + hi - lo] = x[lo:hi]
            at += hi - lo

    def _orthogonalise(self, pts: torch.Tensor) -> list[torch.Tensor]:
        """P = orth(P) for each P^T in ``pts`` (flat, one after another): one batched QR per shape."""
        blocks = torch.split(pts, self._sizes()[0])
        ps: list[torch.Tensor | None] = [None] * len(self.matrices)
        for (rows, r), members in self._shapes.items():
            stacked = torch.stack([blocks[i].view(r, rows) for i in members]).transpose(1, 2)
            for i, p in zip(members, torch.linalg.qr(stacked).Q):
                ps[i] = p
        return ps

    def _second(self, views, ps, out: torch.Tensor) -> None:
        """Q^T = P^T M of every matrix, into ``out`` one after another."""
        at = 0
        for v, p, m in zip(views, ps, self.matrices):
            torch.mm(p.T, v, out=out[at:at + m.cols * m.r].view(m.r, m.cols))
            at += m.cols * m.r

    def _product(self, ps, qts, raw: torch.Tensor, out: torch.Tensor) -> None:
        """M_hat = P Q^T of every matrix, and the uncompressed parts, into the flat ``out``."""
        for m, p, qt in zip(self.matrices, ps, qts):
            if m.hi - m.lo == m.rows * m.cols:
                torch.mm(p, qt, out=out[m.lo:m.hi].view(m.rows, m.cols))
            else:
                out[m.lo:m.hi] = (p @ qt).view(-1)[:m.hi - m.lo]
        at = 0
        for lo, hi in self.raw:
            out[lo:hi] = raw[at:at + hi - lo]
            at += hi - lo

    def allreduce_mean(self, x, comm: MPI.Comm):
        # torch for the algebra: its matmuls follow the per-rank thread count,
        # where numpy's BLAS would start its own threads in every rank.
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        require_finite(x, self.name)
        n = x.numel()
        self._plan(n)
        p_sizes, q_sizes = self._sizes()
        corrected = torch.add(x, self.residual, out=self._corrected)
        views = self._views(corrected)  # one (rows, cols) tensor per Matrix
        first = torch.empty(sum(p_sizes) + self._raw_count)
        self._first(corrected, views, first)
        allreduce(first, op="mean", comm=comm, check=False)
        ps = self._orthogonalise(first[:sum(p_sizes)])
        second = torch.empty(sum(q_sizes))
        self._second(views, ps, second)
        allreduce(second, op="mean", comm=comm, check=False)
        qts = [qt.view(m.r, m.cols) for qt, m in zip(torch.split(second, q_sizes), self.matrices)]
        self.q = [qt.T for qt in qts]  # views of ``second``, which nothing else keeps
        out = torch.empty(n)
        self._product(ps, qts, first[sum(p_sizes):], out)
        torch.sub(corrected, out, out=self.residual)
        # Uncompressed parts are sent exactly: they owe nothing to the next step.
        for lo, hi in self.raw:
            self.residual[lo:hi] = 0
        return out.numpy()

    def compress(self, x):
        """One rank's view: P, Q^T and the uncompressed parts from this rank's gradient alone."""
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        require_finite(x, self.name)
        self._plan(x.numel())
        p_sizes, q_sizes = self._sizes()
        views = self._views(x)
        first = torch.empty(sum(p_sizes) + self._raw_count)
        self._first(x, views, first)
        ps = self._orthogonalise(first[:sum(p_sizes)])
        payload = torch.empty(sum(p_sizes) + sum(q_sizes) + self._raw_count)
        at = 0
        for p, m in zip(ps, self.matrices):
            payload[at:at + m.rows * m.r].view(m.rows, m.r).copy_(p)
            at += m.rows * m.r
        self._second(views, ps, payload[at:at + sum(q_sizes)])
        payload[at + sum(q_sizes):] = first[sum(p_sizes):]
        return payload.numpy().view(np.uint8), x.numel()

    def decompress(self, payload, ctx):
        self._plan(ctx)
        p_sizes, q_sizes = self._sizes()
        values = torch.from_numpy(check_size(payload, 4 * (sum(p_sizes) + sum(q_sizes) + self._raw_count),
                                             self.name).view(np.float32).copy())
        check_finite(values, self.name, "factors and values")
        ps = [p.view(m.rows, m.r) for p, m in zip(torch.split(values[:sum(p_sizes)], p_sizes), self.matrices)]
        at = sum(p_sizes)
        qts = [qt.view(m.r, m.cols) for qt, m in zip(torch.split(values[at:at + sum(q_sizes)], q_sizes),
                                                     self.matrices)]
        out = torch.empty(ctx)
        self._product(ps, qts, values[at + sum(q_sizes):], out)
        # Finite factors of a real gradient never overflow their product; forged ones can.
        return check_finite(out, self.name, "reconstructed values").numpy()

    def state_dict(self):
        return {"q": None if self.q is None else [q.clone() for q in self.q],
                "residual": None if self.residual is None else self.residual.clone()}

    def load_state_dict(self, state):
        self.q = None if state["q"] is None else [q.clone() for q in state["q"]]
        self.residual = None if state["residual"] is None else state["residual"].clone()
