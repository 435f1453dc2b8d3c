"""``python -m ringtrain bench allreduce``: ringtrain's algorithms against in-place MPI_Allreduce.

Prints one row per (size, algorithm) in the nccl-tests layout, each algorithm's
busbw as a ratio to MPI_Allreduce timed in the same run, and writes every row to
JSON with ``--json``. Algorithms are interleaved within each repetition so that
drift on a shared machine hits all of them alike; the time reported is the
median over repetitions.

busbw follows nccl-tests: ``algbw * 2 (n - 1) / n``, the bytes each rank must
move per unit time, comparable across world sizes.

``--count-iface IFACE`` also reads each node's interface counters around every
timed loop (link_counter.py) and reports the bytes the busiest node sent per
operation (``link_bytes``), and their ratio to the two-level bound 2(N-1)/N of
the buffer, N the number of nodes (``vs_bound``).
"""
import argparse

import numpy as np
from mpi4py import MPI

from .._version import __version__
from ..collectives import allreduce
from ..collectives.thresholds import THRESHOLDS
from ..results import add_link_argument, metadata, write_result
from ..timing import iterations, memcpy_bandwidth, time_collective
from .link_counter import LinkCounter, two_level_bound
from .options import add_sweep_arguments, check_sweep, chosen
from .sizes import format_bytes, sweep

PEER = "MPI_Allreduce"
ALGORITHMS = ("ring", "recursive_doubling", "ps", "mpi", "hierarchical", "auto", "auto+check")
DTYPES = ("float16", "float32", "float64", "int32", "int64")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sweep_arguments(p, min_bytes="4", max_bytes="256M", iter_bytes="128M", min_iters=5)
    p.add_argument("--dtype", choices=DTYPES, default="float32")
    p.add_argument("--op", choices=("sum", "mean"), default="sum")
    p.add_argument("--algorithms", default="ring,recursive_doubling,ps,auto,auto+check",
                   help=f"comma-separated, from {','.join(ALGORITHMS)}; {PEER} is always run as the peer")
    p.add_argument("--count-iface", metavar="IFACE",
                   help="report the bytes each node sends over IFACE per operation (e.g. eth0 in the simulated "
                        "cluster; only meaningful on an interface that carries nothing else)")
    p.add_argument("--json", metavar="FILE", help="write rows and metadata as JSON")
    add_link_argument(p)


def main(args) -> int:
    algorithms = chosen(args.algorithms, ALGORITHMS, "--algorithms", "bench allreduce")
    check_sweep(args, "bench allreduce")
    comm = MPI.COMM_WORLD
    n, rank = comm.Get_size(), comm.Get_rank()
    meta = metadata(comm, args, link=args.link)
    dtype = np.dtype(args.dtype)
    sizes = sweep(args.min_bytes, args.max_bytes, args.step_factor, dtype.itemsize)
    say = print if rank == 0 else (lambda *a, **k: None)
    counter = LinkCounter(comm, args.count_iface) if args.count_iface else None

    say(f"# ringtrain {__version__} bench allreduce: {n} ranks, {MPI.Get_library_version().splitlines()[0].strip()}")
    say(f"# in place, {args.dtype}, op={args.op}, median of {args.repeat}; peer: {PEER}(MPI_IN_PLACE) "
        f"in the same run; auto switches to ring at {format_bytes(THRESHOLDS.ring_min_bytes)}")
    header = (f"{'size':>10} {'count':>10} {'type':>8} {'redop':>5} {'algorithm':>18} "
              f"{'time_us':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6} {'vs_mpi':>6}"
              + (f" {'link_bytes':>11} {'vs_bound':>8}" if counter else ""))
    say(header)
    rows = []
    for nbytes in sizes:
        rows += _measure_size(comm, nbytes, dtype, args, algorithms, counter)
        for row in rows[-len(algorithms) - 1:]:
            say(f"{format_bytes(row['size']):>10} {row['count']:>10} {row['type']:>8} {row['redop']:>5} "
                f"{row['algorithm']:>18} {row['time_us']:>10.1f} {row['algbw']:>7.3f} {row['busbw']:>7.3f} "
                f"{row['wrong']:>6} {row['vs_mpi']:>6.2f}"
                + (f" {row['link_bytes']:>11.0f} {_ratio(row['link_bytes_vs_bound']):>8}" if counter else ""))
    memcpy = _memcpy_reference(comm)
    summary = _summary(rows, algorithms, memcpy)
    for line in summary["lines"]:
        say(f"# {line}")
    if args.json and rank == 0:
        write_result(args.json, "allreduce", meta, rows=rows, memcpy_GBps=memcpy, summary=summary)
        say(f"# wrote {args.json}")
    wrong = sum(r["wrong"] for r in rows)
    return 1 if wrong else 0


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _measure_size(comm, nbytes, dtype, args, algorithms, counter=None):
    n = comm.Get_size()
    count = nbytes // dtype.itemsize
    # Zeros: summing a buffer in place over and over must not grow it to inf,
    # which would change both the timing and the checked result.
    buf = np.zeros(count, dtype=dtype)
    calls = {PEER: lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)}
    for alg in algorithms:
        name, check = alg.removesuffix("+check"), alg.endswith("+check")
        calls[alg] = lambda name=name, check=check: allreduce(buf, args.op, name, comm, check=check)
    iters = iterations(nbytes, args.iter_bytes, args.min_iters)
    times = {name: [] for name in calls}
    sent = {name: [] for name in calls}  # per repetition: bytes per call of the busiest node
    for _ in range(args.repeat):
        for name, call in calls.items():
            times[name].append(time_collective(comm, call, iters, args.warmup,
                                               mark=counter.mark if counter else None))
            if counter:
                sent[name].append(max(counter.per_host(iters)))
    peer_time = float(np.median(times[PEER]))
    rows = []
    for name in calls:
        t = float(np.median(times[name]))
        algbw = nbytes / t / 1e9
        rows.append({"size": nbytes, "count": count, "type": dtype.name, "redop": args.op,
                     "algorithm": name, "time_us": t * 1e6, "time_us_reps": [x * 1e6 for x in times[name]],
                     "algbw": algbw, "busbw": algbw * 2 * (n - 1) / n,
                     "wrong": _count_wrong(comm, count, dtype, args.op, name), "vs_mpi": peer_time / t})
        if counter:
            link = float(np.median(sent[name]))
            bound = two_level_bound(nbytes, counter.nodes)
            rows[-1].update(link_bytes=link, link_bytes_vs_bound=link / bound if bound else None,
                            nodes=counter.nodes)
    return rows


def _count_wrong(comm, count, dtype, op, name):
    """Elements (summed over ranks) that differ from the closed form after one call."""
    n, rank = comm.Get_size(), comm.Get_rank()
    pattern = (np.arange(count) % 13).astype(dtype)
    x = pattern * dtype.type(rank + 1)
    if name == PEER:
        comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
        if op == "mean":
            x = x / n
    else:
        allreduce(x, op, name.removesuffix("+check"), comm, check=name.endswith("+check"))
    # sum_r (r + 1) * p = p * n (n + 1) / 2, exact in every swept dtype.
    expected = pattern.astype(np.float64) * (n * (n + 1) / 2) / (n if op == "mean" else 1)
    tol = 0.0 if op == "sum" else 2 * np.finfo(dtype).eps * np.abs(expected)
    bad = np.array([np.count_nonzero(np.abs(x.astype(np.float64) - expected) > tol)])
    comm.Allreduce(MPI.IN_PLACE, bad, op=MPI.SUM)
    return int(bad[0])


def _memcpy_reference(comm, nbytes=64 << 20):
    # Rank 0 alone copies while the others wait: a single core's copy rate.
    value = np.array([memcpy_bandwidth(nbytes) if comm.Get_rank() == 0 else 0.0])
    comm.Bcast(value, 0)
    return float(value[0])


def _summary(rows, algorithms, memcpy):
    lines, out = [], {}
    by = {}
    for r in rows:
        by.setdefault(r["algorithm"], []).append(r)
    for alg in algorithms:
        ratios = [r["vs_mpi"] for r in by[alg]]
        out[alg] = {"min_vs_mpi": min(ratios), "max_vs_mpi": max(ratios)}
        lines.append(f"{alg}: {min(ratios):.2f}x to {max(ratios):.2f}x the speed of {PEER}")
    if "ring" in by:
        faster = [r["size"] for r in by["ring"] if r["vs_mpi"] > 1.0]
        crossover = next((s for s in sorted(faster) if all(r["vs_mpi"] > 1.0 for r in by["ring"]
                                                          if r["size"] >= s)), None)
        out["ring_faster_from_bytes"] = crossover
        if crossover is not None:
            lines.append(f"ring beats {PEER} at every size from {format_bytes(crossover)} "
                         f"(RINGTRAIN_RING_MIN_BYTES={crossover} sets auto's switch)")
        big = [r for r in by["ring"] if r["size"] >= 64 << 20]
        if big:
            r = big[0]
            out["ring_busbw_vs_memcpy"] = r["busbw"] / memcpy
            lines.append(f"ring busbw at {format_bytes(r['size'])}: {r['busbw']:.2f} GB/s = "
                         f"{100 * r['busbw'] / memcpy:.0f}% of single-core memcpy ({memcpy:.1f} GB/s)")
    if "auto" in by and "auto+check" in by:
        extra = [c["time_us"] - a["time_us"] for a, c in zip(by["auto"], by["auto+check"])]
        out["handshake_us_median"] = float(np.median(extra))
        lines.append(f"handshake (check=True) adds {np.median(extra):.1f} us per call (median over sizes)")
    out["lines"] = lines
    return out
