"""``python -m ringtrain bench compression``: every compressor on gradient-shaped data.

Per compressor and size: the wire ratio (payload bytes over float32 bytes),
compress+decompress throughput (float32 GB/s, on one core: rank 0 alone, beside
single-core memcpy timed the same way), the relative L2 error
of what is sent, per step and of the sum over the steps, without and with
error feedback, and the compressed allreduce (mean) time against the
uncompressed ring and MPI_Allreduce timed in the same run.

Gradient-shaped data: a vector cut into "layers" whose scales spread over two
orders of magnitude, heavy-tailed within each, and drifting slowly from step to
step, as gradients do.
"""
import argparse

import numpy as np
from mpi4py import MPI

from .. import compression
from ..compression import ErrorFeedback, PowerSGD
from ..collectives import allreduce, waiting
from ..results import add_link_argument, metadata, write_result
from ..timing import median_seconds, time_collective
from .sizes import format_bytes, parse_bytes

DEFAULT = ("fp16,bf16,int8,int8+lz4,lz4,topk:ratio=0.01,topk:ratio=0.01+lz4,onebit,powersgd:rank=4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compressors", default=DEFAULT, help=f"comma-separated specs (default {DEFAULT})")
    p.add_argument("--sizes", default="1M,16M,64M", help="gradient sizes in bytes of float32 (default 1M,16M,64M)")
    p.add_argument("--steps", type=int, default=20, help="steps for the error measurement (default 20)")
    p.add_argument("--repeat", type=int, default=5, help="timing repetitions, median reported (default 5)")
    p.add_argument("--json", metavar="FILE")
    add_link_argument(p)


def gradients(count: int, steps: int, seed: int, rank: int):
    """``steps`` gradient-like vectors of ``count`` float32 for this rank."""
    rng = np.random.default_rng([seed, rank])
    layers = np.sort(rng.integers(0, count, size=31))
    scale = np.empty(count, np.float32)
    for lo, hi in zip(np.concatenate([[0], layers]), np.concatenate([layers, [count]])):
        scale[lo:hi] = 10 ** rng.uniform(-2, 0)
    base = (rng.standard_t(4, count) * scale).astype(np.float32)
    for _ in range(steps):
        yield base + (0.3 * rng.standard_normal(count) * scale).astype(np.float32)


def main(args) -> int:
    comm = MPI.COMM_WORLD
    rank, n = comm.Get_rank(), comm.Get_size()
    meta = metadata(comm, args, link=args.link)
    # ',' separates specs, except between one spec's key=value parameters.
    specs = split_specs(args.compressors)
    for spec in specs:
        compression.get(spec)  # a bad name stops every rank before any work
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"# ringtrain bench compression: {n} ranks, {MPI.Get_library_version().splitlines()[0].strip()}; "
        f"peers in the same run: uncompressed ring allreduce and MPI_Allreduce")
    say(f"{'compressor':>22} {'size':>6} {'wire':>7} {'codec GB/s':>10} {'step err':>9} {'+ef':>7} "
        f"{'sum err':>8} {'+ef':>7} {'allreduce ms':>12} {'vs ring':>7} {'vs mpi':>7}")
    rows = []
    for size in [parse_bytes(s) for s in args.sizes.split(",")]:
        count = size // 4
        x = next(gradients(count, 1, 0, rank))
        buf = np.zeros(count, np.float32)
        peers = {"ring": lambda: allreduce(buf, op="mean", algorithm="ring", comm=comm, check=False),
                 "mpi": lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)}
        peer_times = {k: float(np.median([time_collective(comm, f, 3, 1) for _ in range(args.repeat)]))
                      for k, f in peers.items()}
        memcpy_GBps = 4 * count / _one_core(comm, lambda: np.copyto(buf, x), args.repeat) / 1e9
        for spec in specs:
            row = _measure(spec, x, count, args, comm)
            row.update(size=size, ring_ms=1e3 * peer_times["ring"], mpi_ms=1e3 * peer_times["mpi"],
                       memcpy_GBps=memcpy_GBps, codec_vs_memcpy=row["codec_GBps"] / memcpy_GBps,
                       vs_ring=peer_times["ring"] / row["allreduce_s"], vs_mpi=peer_times["mpi"] / row["allreduce_s"])
            rows.append(row)
            say(f"{spec:>22} {format_bytes(size):>6} {row['wire_ratio']:>7.4f} {row['codec_GBps']:>10.2f} "
                f"{row['step_error']:>9.3f} {row['step_error_ef']:>7.3f} {row['sum_error']:>8.3f} "
                f"{row['sum_error_ef']:>7.3f} {1e3 * row['allreduce_s']:>12.2f} {row['vs_ring']:>7.2f} "
                f"{row['vs_mpi']:>7.2f}")
        say(f"{'(uncompressed ring)':>22} {format_bytes(size):>6} {1.0:>7.4f} {'':>10} {'':>9} {'':>7} {'':>8} {'':>7} "
            f"{1e3 * peer_times['ring']:>12.2f}   (MPI_Allreduce {1e3 * peer_times['mpi']:.2f} ms)")
        say(f"{'(memcpy, one core)':>22} {format_bytes(size):>6} {'':>7} {memcpy_GBps:>10.2f}")
    if args.json and rank == 0:
        write_result(args.json, "compression", meta, rows=rows)
        say(f"# wrote {args.json}")
    return 0


def split_specs(text: str) -> list[str]:
    """Split on commas that start a new spec (a name), not those between key=value parameters."""
    out = []
    for piece in text.split(","):
        if out and "=" in piece.split("+")[0] and ":" not in piece.split("+")[0]:
            out[-1] += "," + piece
        else:
            out.append(piece.strip())
    return [s for s in out if s]


def _one_core(comm, work, repeat: int) -> float:
    """Median seconds of ``work()`` on rank 0 alone, after one warming call; every rank gets it."""
    seconds = np.array([median_seconds(work, repeat) if comm.Get_rank() == 0 else 0.0])
    # The others wait without spinning: MPICH's busy-wait would take the other
    # core of a small machine, and its memory bandwidth, from the work timed.
    with waiting.polite(0.002):
        waiting.allreduce(comm, seconds.copy(), seconds, MPI.SUM)
    return float(seconds[0])


def _measure(spec, x, count, args, comm) -> dict:
    plain = compression.get(spec)
    payload, ctx = plain.compress(x)
    wire = payload.nbytes / (4 * count)
    # Codec speed of one core: rank 0 compresses then decompresses while the
    # others wait, median of repeats. One compressor, warmed by a first call, as
    # in training, where each bucket keeps its own from step to step.
    c = compression.get(spec)
    codec_s = _one_core(comm, lambda: c.decompress(*c.compress(x)), args.repeat)
    errors = {}
    for feedback in (False, True):
        # A compressor with error feedback built in (onebit) has its "without" column from
        # the bare codec inside; one without gets ef+ for the "with" column.
        c = compression.get(spec)
        if c.feedback and not feedback and isinstance(c, ErrorFeedback):
            c = c.inner
        elif feedback and not c.feedback:
            c = compression.get("ef+" + spec)
        sent_sum = np.zeros(count, np.float64)
        true_sum = np.zeros(count, np.float64)
        step_errors = []
        for g in gradients(count, args.steps, 1, comm.Get_rank()):
            if isinstance(c, PowerSGD):  # its residual lives in allreduce_mean: compress alone has none
                sent = c.allreduce_mean(g, MPI.COMM_SELF) if feedback else c.decompress(*c.compress(g))
            else:
                sent = c.decompress(*c.compress(g))
            step_errors.append(np.linalg.norm(sent - g) / np.linalg.norm(g))
            sent_sum += sent
            true_sum += g
        errors[feedback] = (float(np.mean(step_errors)), float(np.linalg.norm(sent_sum - true_sum) /
                                                             np.linalg.norm(true_sum)))
    reducer = compression.get(spec)
    t = float(np.median([time_collective(comm, lambda: reducer.allreduce_mean(x, comm), 2, 1)
                         for _ in range(args.repeat)]))
    return {"compressor": spec, "wire_ratio": wire, "codec_GBps": 4 * count / codec_s / 1e9,
            "step_error": errors[False][0], "sum_error": errors[False][1], "step_error_ef": errors[True][0],
            "sum_error_ef": errors[True][1], "allreduce_s": t}
