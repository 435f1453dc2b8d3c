"""The alpha-beta-gamma cost model of gradient averaging, and the step time it implies.

A message of S bytes between two nodes costs alpha + S beta: alpha the latency
of one message, beta the seconds per byte of a link, 8 / (rate x efficiency),
where efficiency is what the allreduce sweep measured of the nominal rate.
Over n nodes (the textbook volumes, per node's link):

    ring                2 (n-1) alpha + 2 (n-1)/n S beta
    recursive_doubling  ceil(log2 n) (alpha + S beta)
    ps                  2 (n-1) (alpha + S beta)           (everything through rank 0's link)
    mpi                 2 ceil(log2 n) alpha + 2 (n-1)/n S beta   (MPICH's large-message algorithm)

A compressor c sends ratio_c S bytes and spends gamma_c seconds per input byte
encoding and decoding. Compressors whose payloads add up (fp16, bf16, int8,
PowerSGD) ride the ring; the others are allgathered, so each node receives
(n-1) ratio_c S bytes:

    ring-summable   gamma_c S + messages_c 2 (n-1) alpha + 2 (n-1)/n ratio_c S beta
    allgathered     gamma_c S + (n-1) alpha + (n-1) ratio_c S beta

Two levels: n nodes of k ranks each, with an intra-node (shared memory)
alpha_i + S beta_i per message. The node-aware ring ("hierarchical") is an
intra-node reduce-scatter and allgather around k parallel cross-node rings that
share the node's link; flat algorithms run over all nk ranks, and the link hop
is the slowest of the ring:

    hierarchical        2 (k-1) alpha_i + 2 (k-1)/k S beta_i + 2 (n-1) alpha + 2 (n-1)/n S beta
    ring over nk        2 (nk-1) alpha + 2 (nk-1)/(nk) S beta
    mpi over nk         2 (k-1)/k S beta_i + 2 ceil(log2 n) alpha + 2 (n-1)/n S beta   (MPICH: intra
                        reduce, leaders' allreduce, intra broadcast, one after another)

Compressed node-aware (compression across nodes only), each rank compresses
its block of S/k, the intra-node phases run uncompressed, and the cross-node
phase is the formula above for n nodes; flat, every rank compresses all of S
and an allgathered payload reaches each node from all (n-1)k remote ranks.

A training step is then a pipeline (``step_time``): forward, then backward
releasing the buckets in order with its share of the compute, each bucket's
allreduce starting when both it is ready and the previous one has finished,
and ``overlap`` (fitted to the training sweep) says how much of that ideal
overlap the machine's CPUs let happen.
"""
import json
import math
from dataclasses import asdict, dataclass, field

from ..rates import parse_rate  # noqa: F401  (plan.parse_rate and plan.costmodel.parse_rate, as before)

ALGORITHMS = ("ring", "recursive_doubling", "ps", "mpi")
TWO_LEVEL_ALGORITHMS = ("hierarchical", "ring", "mpi")
BACKWARD_SHARE = 2 / 3  # backward does about twice forward's work
ONEBIT_ADAM = "onebit-adam"  # an optimizer, planned as the compressor of its momentum (plan/fit.py)


@dataclass
class Compression:
    ratio: float                 # wire bytes / float32 bytes
    gamma: float                 # seconds per input byte, encode + decode, as measured in the sweep
    messages: int = 1            # ring allreduces per call (PowerSGD sends P, then Q)
    summable: bool = True        # rides the ring; False: allgathered


@dataclass
class CostModel:
    alpha: float                                     # seconds per message
    efficiency: dict = field(default_factory=dict)   # link rate in bit/s (as a string) -> fraction reached
    compressors: dict = field(default_factory=dict)  # spec -> Compression
    loss_penalty: dict = field(default_factory=dict)  # spec -> validation loss vs uncompressed, from training
    overlap: float = 1.0                             # share of the ideal overlap that training reached
    gamma_none: float = 0.0                          # the reducer's own seconds per byte in training
    intra_alpha: float = 0.0                         # seconds per message inside a node (shared memory)
    intra_beta: float = 0.0                          # seconds per byte inside a node
    source: str = ""
    origin: dict = field(default_factory=dict)       # coefficient -> where its value came from

    def efficiency_at(self, rate: float) -> float:
        """Measured efficiency at the nearest measured rate (on a log scale); 0.9 if none was measured."""
        if not self.efficiency:
            return 0.9
        nearest = min(self.efficiency, key=lambda r: abs(math.log(float(r) / rate)))
        return self.efficiency[nearest]

    def beta(self, rate: float) -> float:
        return 8.0 / (rate * self.efficiency_at(rate))

    def intra_time(self, nbytes: float, k: int) -> float:
        """An intra-node reduce-scatter plus allgather of ``nbytes`` over ``k`` ranks."""
        return 2 * (k - 1) * self.intra_alpha + 2 * (k - 1) / k * nbytes * self.intra_beta if k > 1 else 0.0

    def allreduce_time(self, nbytes: float, n: int, rate: float, algorithm: str = "ring", k: int = 1) -> float:
        """One allreduce of ``nbytes`` over ``n`` nodes of ``k`` ranks each."""
        if n * k == 1:
            return 0.0
        if k > 1:
            return self._two_level_time(nbytes, n, rate, algorithm, k)
        a, b, logn = self.alpha, self.beta(rate), math.ceil(math.log2(n))
        if algorithm == "ring":
            return 2 * (n - 1) * a + 2 * (n - 1) / n * nbytes * b
        if algorithm == "recursive_doubling":
            return logn * (a + nbytes * b)
        if algorithm == "ps":
            return 2 * (n - 1) * (a + nbytes * b)
        if algorithm in ("mpi", "hierarchical"):  # one rank per node: hierarchical is the ring across nodes
            return (2 * logn * a if algorithm == "mpi" else 2 * (n - 1) * a) + 2 * (n - 1) / n * nbytes * b
        raise ValueError(f"unknown algorithm {algorithm!r}; the model knows {ALGORITHMS + ('hierarchical',)}")

    def _two_level_time(self, nbytes, n, rate, algorithm, k) -> float:
        if algorithm == "hierarchical":
            return self.intra_time(nbytes, k) + self.allreduce_time(nbytes, n, rate, "ring")
        if algorithm == "ring":
            return self.allreduce_time(nbytes, n * k, rate, "ring")
        if algorithm == "mpi":
            intra = 2 * (k - 1) / k * nbytes * self.intra_beta
            return intra + (self.allreduce_time(nbytes, n, rate, "mpi") if n > 1 else 0.0)
        raise ValueError(f"algorithm {algorithm!r} has no two-level model; the model knows {TWO_LEVEL_ALGORITHMS}")

    def compressed_time(self, nbytes: float, n: int, rate: float, spec: str, contention: float = 1.0,
                        algorithm: str = "ring", k: int = 1, node_aware: bool = False) -> float:
        """One bucket's averaging: wire time plus gamma x bytes, the CPU work (x ``contention``: ranks per core).

        ``spec`` "none" is the uncompressed ``algorithm`` with ``gamma_none``, the
        reducer's own per-byte work in training (copies into and out of buckets).
        ``n`` nodes of ``k`` ranks; ``node_aware`` compresses only across nodes.
        """
        if spec == "none":
            return self.allreduce_time(nbytes, n, rate, algorithm, k) + self.gamma_none * contention * nbytes
        if spec not in self.compressors:
            raise ValueError(f"the cost model has no figures for compressor {spec!r}; it has "
                             f"{sorted(self.compressors)}")
        c = self.compressors[spec]
        if n * k == 1:
            return 0.0
        if node_aware and k > 1:
            work = (c.gamma / k + self.gamma_none) * contention * nbytes
            return work + self.intra_time(nbytes, k) + (self._wire(c, nbytes, n, rate, 1) if n > 1 else 0.0)
        return (c.gamma + self.gamma_none) * contention * nbytes + self._wire(c, nbytes, n * k, rate, k)

    def _wire(self, c: Compression, nbytes: float, ranks: int, rate: float, k: int) -> float:
        """The compressed payload's time on the link over ``ranks`` ranks, ``k`` per node."""
        if c.summable:
            return c.messages * 2 * (ranks - 1) * self.alpha + 2 * (ranks - 1) / ranks * c.ratio * nbytes * self.beta(rate)
        # Allgathered: each node's link brings in the payloads of the (ranks - k) remote ranks.
        return (ranks - 1) * self.alpha + (ranks - k) * c.ratio * nbytes * self.beta(rate)

    def save(self, path: str) -> None:
        data = asdict(self)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)

    @classmethod
    def load(cls, path: str) -> "CostModel":
        with open(path) as f:
            data = json.load(f)
        data["compressors"] = {k: Compression(**v) for k, v in data.get("compressors", {}).items()}
        return cls(**data)


def step_bounds(compute_s: float, bucket_bytes: list, comm_time) -> tuple[float, float]:
    """(no overlap, ideal pipeline) step times when buckets, in the order backward fills them, are averaged.

    ``comm_time(nbytes)`` is one bucket's averaging time, asked once per
    bucket. Backward takes BACKWARD_SHARE of ``compute_s`` and fills the
    buckets at an even rate per byte; ideally each bucket's averaging starts
    when it is full and the previous one is done.
    """
    comms = [comm_time(b) for b in bucket_bytes]
    total = float(sum(bucket_bytes))
    ready = compute_s * (1 - BACKWARD_SHARE)
    finish = 0.0
    for nbytes, seconds in zip(bucket_bytes, comms):
        ready += compute_s * BACKWARD_SHARE * nbytes / total if total else 0.0
        finish = max(finish, ready) + seconds
    return compute_s + sum(comms), max(finish, compute_s)


def blend(serial: float, ideal: float, overlap: float) -> float:
    """The step time at ``overlap``: 0 is no overlap at all, 1 the ideal pipeline.

    Where ranks have no core to spare, communication takes its CPU from
    backward, and the fitted overlap is small (benchmarks/README.md).
    """
    return (1 - overlap) * serial + overlap * ideal


def step_time(compute_s: float, bucket_bytes: list, comm_time, overlap: float = 1.0) -> float:
    """Step time with buckets averaged while backward runs, at ``overlap`` (see ``step_bounds``, ``blend``)."""
    return blend(*step_bounds(compute_s, bucket_bytes, comm_time), overlap)


def even_buckets(total_bytes: float, cap_bytes: float) -> list:
    """Bucket sizes when gradients of ``total_bytes`` arrive evenly and fill buckets of ``cap_bytes``."""
    full = max(0, math.ceil(total_bytes / cap_bytes) - 1)
    return [cap_bytes] * full + [total_bytes - cap_bytes * full]
