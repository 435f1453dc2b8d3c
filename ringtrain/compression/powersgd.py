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
from .base import Compressor, check_finite, check_size, require_finite
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
    summable, messages = True, 2  # P and Q, each through the ordinary allreduce
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

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[lo:hi] for lo, hi in self.raw]) if self.raw else torch.zeros(0)

    def _sizes(self):
        return [m.rows * m.r for m in self.matrices], [m.cols * m.r for m in self.matrices]

    def allreduce_mean(self, x, comm: MPI.Comm):
        # torch for the algebra: its matmuls follow the per-rank thread count,
        # where numpy's BLAS would start its own threads in every rank.
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        require_finite(x, self.name)
        n = x.numel()
        self._plan(n)
        corrected = x + self.residual
        views = self._views(corrected)  # one (rows, cols) tensor per Matrix
        p_sizes, q_sizes = self._sizes()
        first = torch.cat([(v @ q).reshape(-1) for v, q in zip(views, self.q)] + [self._raw(corrected)])
        allreduce(first, op="mean", comm=comm, check=False)
        ps = [torch.linalg.qr(p.view(-1, m.r)).Q for p, m in zip(torch.split(first[:sum(p_sizes)], p_sizes),
                                                                   self.matrices)]
        second = torch.cat([(v.T @ p).reshape(-1) for v, p in zip(views, ps)] + [torch.zeros(0)])
        allreduce(second, op="mean", comm=comm, check=False)
        self.q = [q.view(-1, m.r).clone() for q, m in zip(torch.split(second, q_sizes), self.matrices)]
        out = torch.empty(n)
        for m, p, q in zip(self.matrices, ps, self.q):
            out[m.lo:m.hi] = (p @ q.T).view(-1)[:m.hi - m.lo]
        raw_mean = first[sum(p_sizes):]
        at = 0
        for lo, hi in self.raw:
            out[lo:hi] = raw_mean[at:at + hi - lo]
            at += hi - lo
        # Uncompressed parts are sent exactly: they owe nothing to the next step.
        self.residual = corrected - out
        for lo, hi in self.raw:
            self.residual[lo:hi] = 0
        return out.numpy()

    def compress(self, x):
        """One rank's view: P, Q and the uncompressed parts from this rank's gradient alone."""
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        require_finite(x, self.name)
        self._plan(x.numel())
        parts = []
        for v, q in zip(self._views(x), self.q):
            p = torch.linalg.qr(v @ q).Q
            parts += [p.reshape(-1), (v.T @ p).reshape(-1)]
        parts.append(self._raw(x))
        return torch.cat(parts).numpy().view(np.uint8).copy(), x.numel()

    def decompress(self, payload, ctx):
        self._plan(ctx)
        p_sizes, q_sizes = self._sizes()
        raw_count = sum(hi - lo for lo, hi in self.raw)
        values = torch.from_numpy(check_size(payload, 4 * (sum(p_sizes) + sum(q_sizes) + raw_count),
                                             self.name).view(np.float32).copy())
        check_finite(values, self.name, "factors and values")
        out, at = torch.empty(ctx), 0
        for m, ps, qs in zip(self.matrices, p_sizes, q_sizes):
            p, q = values[at:at + ps].view(m.rows, m.r), values[at + ps:at + ps + qs].view(m.cols, m.r)
            out[m.lo:m.hi] = (p @ q.T).view(-1)[:m.hi - m.lo]
            at += ps + qs
        for lo, hi in self.raw:
            out[lo:hi] = values[at:at + hi - lo]
            at += hi - lo
        # Finite factors of a real gradient never overflow their product; forged ones can.
        return check_finite(out, self.name, "reconstructed values").numpy()

    def state_dict(self):
        return {"q": None if self.q is None else [q.clone() for q in self.q],
                "residual": None if self.residual is None else self.residual.clone()}

    def load_state_dict(self, state):
        self.q = None if state["q"] is None else [q.clone() for q in state["q"]]
        self.residual = None if state["residual"] is None else state["residual"].clone()
