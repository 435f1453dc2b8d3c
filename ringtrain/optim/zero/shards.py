"""ZeRO's half of the reducer: each bucket is reduce-scattered, and this rank keeps its averaged chunk.

A bucket's flat buffer is cut into one chunk per rank exactly as the ring
allreduce cuts it (collectives/layout.py), so rank r's chunk after the ring
reduce-scatter holds the same bits the ring allreduce would have left there:
ZeRO changes where the average lives, not its value. The chunks cut through
parameters; ZeroOptimizer steps the pieces of parameters inside this rank's
chunks (optimizer.py).

The used-flags at the end of each bucket (one per parameter, buckets.py) are
copied aside before the ring and summed on their own (one small allreduce per
bucket), since every rank needs all of them and the ring leaves each rank only
its chunk. A codec that sums on the ring (fp16, bf16, int8) encodes every
hop, exactly as the unsharded reducer's compressed ring does. Stage 2 frees
a bucket's full buffer as soon as its chunk is copied out, so between steps a
rank holds gradients only for its shard; stage 1 keeps the buckets, and its
chunks are views of them.
"""
import torch
from mpi4py import MPI

from ...collectives import allreduce, reduce_scatter
from ...collectives.codec_ring import codec_reduce_scatter_mean
from ...collectives.layout import chunk_bounds
from ...compression.compatibility import zero_conflict


class GradientShards:
    """Per bucket: this rank's chunk ``owned[b]`` (in bucket elements), its averaged gradient ``grads[b]`` and
    the summed used-flags ``flags[b]`` (a parameter is used if its flag is > 0)."""

    def __init__(self, buckets: list, comm: MPI.Comm, stage: int, compressors: list | None = None):
        n, r = comm.Get_size(), comm.Get_rank()
        self.comm, self.stage = comm, stage
        self.compressors = compressors or [None] * len(buckets)
        # Every rank's chunk of each bucket. A codec's ring runs over the gradients alone, as the unsharded
        # reducer's does, so its chunks cut that prefix, and the last one takes the flags' tail too.
        self.bounds = []
        for b, codec in zip(buckets, self.compressors):
            count = b.numel if codec is None else b.bounds[-1][1]
            chunks = [chunk_bounds(count, n, i) for i in range(n)]
            chunks[-1] = (chunks[-1][0], b.numel)
            self.bounds.append(chunks)
        self.owned = [chunks[r] for chunks in self.bounds]
        # Stage 1 keeps the full buckets, so its chunk is a view (nothing copied, nothing more held);
        # stage 2 copies the chunk out, then frees the bucket.
        self.grads = [b.allocate()[lo:hi] if stage == 1 else torch.zeros(hi - lo, dtype=b.params[0].dtype)
                      for b, (lo, hi) in zip(buckets, self.owned)]
        self.flags = [torch.zeros(len(b.params), dtype=b.params[0].dtype) for b in buckets]

    def reduce_scatter(self, bucket) -> None:
        """Average ``bucket`` into this rank's chunk (on the communication thread). Collective."""
        i = bucket.index
        self.flags[i].copy_(bucket.flags)  # before the ring turns them into partial sums
        codec = self.compressors[i]
        if codec is None or self.comm.Get_size() == 1:  # one rank sends nothing, so nothing is rounded
            mine = reduce_scatter(bucket.buffer, op="mean", comm=self.comm, check=False)
        else:  # every hop encoded; this rank's chunk as the codec's allreduce would leave it
            grads = bucket.buffer[:bucket.bounds[-1][1]].numpy()
            lo, hi = codec_reduce_scatter_mean(codec, grads, self.comm)
            mine = bucket.buffer[lo:hi]
        if self.stage == 2:
            self.grads[i][:mine.numel()].copy_(mine)
        allreduce(self.flags[i], op="sum", comm=self.comm, check=False)
        if self.stage == 2:
            bucket.buffer = None

    def nbytes(self) -> int:
        """Bytes of the sharded gradients this rank keeps beside the buckets (stage 1's are views of them)."""
        return 0 if self.stage == 1 else sum(g.numel() * g.element_size() for g in self.grads)


def zero_compatible(compressor) -> bool:
    """Whether ZeRO can reduce-scatter through ``compressor`` (None, or a codec whose values sum on the ring)."""
    return zero_conflict(1, compressor) is None

