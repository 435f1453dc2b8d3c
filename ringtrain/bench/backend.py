"""``python -m ringtrain bench backend``: torch.distributed on ringtrain against gloo and MPI's own collective.

Under mpiexec it starts torch.distributed on the ringtrain backend, makes a
gloo group of the same ranks (it meets through the MPI-served store, so no
MASTER_ADDR), and times each collective a torch user calls, synchronously as
the user sees it, on both groups and as MPI's own collective through mpi4py
on the same memory::

    mpiexec -n 2 python -m ringtrain bench backend --json backend.json

One row per (size, op, backend) in nccl-tests' columns, each with its busbw
as a ratio to gloo's and to MPI's from the same run. The three backends are
interleaved within each repetition, so drift on a shared machine hits them
alike; a row's time is the median over repetitions of the slowest rank's
average. Every result is checked against a closed form (``#wrong``;
backend_ops.py). Then an OSU-style latency table: the 1-element all_reduce,
the slowest rank's median over ``--latency-calls`` single calls.
"""
import argparse
import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from .._version import __version__
from ..results import add_link_argument, metadata, write_result
from ..timing import iterations, time_collective
from .backend_latency import latency_rows, latency_table
from .backend_ops import CASES, count_wrong
from .options import add_sweep_arguments, check_sweep, chosen
from .sizes import format_bytes, parse_bytes, sweep

BACKENDS = ("ringtrain", "gloo", "mpi4py")
SUMMARY_SIZES = (1 << 20, 64 << 20)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_sweep_arguments(p, min_bytes="8", max_bytes="64M", iter_bytes="64M", min_iters=3)
    p.add_argument("--ops", default=",".join(CASES), help=f"comma-separated, from {','.join(CASES)} (default all)")
    p.add_argument("--alltoall-max-bytes", type=parse_bytes, default=1 << 20,
                   help="all_to_all_single only up to this size (default 1M; --alltoall-max-bytes 64M for all)")
    p.add_argument("--max-iters", type=int, default=200, help="most timed calls per timing (default 200)")
    p.add_argument("--latency-calls", type=int, default=1000,
                   help="single 1-element all_reduce calls per latency figure, after 100 warm-up (default 1000; "
                        "0 skips the latency table)")
    p.add_argument("--json", metavar="FILE", help="write rows, latency and metadata as JSON")
    add_link_argument(p)


def main(args) -> int:
    ops = chosen(args.ops, CASES, "--ops", "bench backend")
    check_sweep(args, "bench backend")
    if args.max_iters < 1 or args.latency_calls < 0:
        raise SystemExit(f"bench backend: need --max-iters >= 1 and --latency-calls >= 0, got {args.max_iters} "
                         f"and {args.latency_calls}")
    # torch 2.13 renames all_gather_into_tensor and reduce_scatter_tensor (*_single) and warns on every rank;
    # the old names are what users' code calls today, so those are the ones timed, without the warning.
    warnings.filterwarnings("ignore", message=r".*is deprecated. Please use .torch.distributed.\w+_single",
                            category=FutureWarning)
    import ringtrain.distributed
    comm = MPI.COMM_WORLD
    n, rank = comm.Get_size(), comm.Get_rank()
    groups = {"ringtrain": ringtrain.distributed.init(), "gloo": dist.new_group(backend="gloo"), "mpi4py": None}
    try:
        return _run(comm, n, rank, groups, ops, args)
    finally:
        dist.destroy_process_group()


def _run(comm, n, rank, groups, ops, args) -> int:
    # Other jobs on the machine stretch small-message times most: record how busy it was when the run began.
    meta = metadata(comm, args, link=args.link, load_average=os.getloadavg())
    say = print if rank == 0 else (lambda *a, **k: None)
    say(f"# ringtrain {__version__} bench backend: {n} ranks, torch {torch.__version__}, "
        f"{MPI.Get_library_version().splitlines()[0].strip()}")
    say(f"# float32, synchronous calls (async_op=False), median of {args.repeat}; torch.distributed on "
        "ringtrain and on gloo, and MPI's own collective through mpi4py, interleaved in the same run")
    say("# peers per op: " + ", ".join(f"{name}={case.mpi_call}" for name, case in CASES.items() if name in ops))
    say(f"{'size':>10} {'count':>10} {'type':>7} {'redop':>5} {'op':>22} {'backend':>9} "
        f"{'time_us':>10} {'algbw':>7} {'busbw':>7} {'#wrong':>6} {'vs_gloo':>7} {'vs_mpi':>6}")
    rows, seen = [], set()
    for nbytes in sweep(args.min_bytes, args.max_bytes, args.step_factor, 4):
        for op in ops:
            # The split calls round small sizes up to n elements, so two sweep sizes can give one row.
            size = 4 * CASES[op].elements(nbytes, n)
            if (op == "all_to_all_single" and nbytes > args.alltoall_max_bytes) or (op, size) in seen:
                continue
            seen.add((op, size))
            for row in _measure(comm, CASES[op], nbytes, groups, args):
                rows.append(row)
                say(f"{format_bytes(row['size']):>10} {row['count']:>10} {row['type']:>7} {row['redop']:>5} "
                    f"{row['op']:>22} {row['backend']:>9} {row['time_us']:>10.1f} {row['algbw']:>7.3f} "
                    f"{row['busbw']:>7.3f} {row['wrong']:>6} {row['vs_gloo']:>7.2f} {row['vs_mpi']:>6.2f}")
    latency = latency_rows(comm, groups, args.latency_calls, args.repeat) if args.latency_calls else []
    for line in latency_table(latency):
        say(line)
    summary = _summary(rows, ops, latency)
    for line in summary["lines"]:
        say(f"# {line}")
    if args.json and rank == 0:
        meta["load_average_at_end"] = os.getloadavg()
        write_result(args.json, "backend", meta, rows=rows, latency=latency, summary=summary)
        say(f"# wrote {args.json}")
    return 1 if any(r["wrong"] for r in rows) else 0


def _measure(comm, case_class, nbytes, groups, args) -> list[dict]:
    """Rows for one op at one size: each backend timed ``--repeat`` times, interleaved, then checked once."""
    n = comm.Get_size()
    count = case_class.elements(nbytes, n)
    size = 4 * count
    case = case_class(count, comm)
    iters = min(args.max_iters, iterations(size, args.iter_bytes, args.min_iters))
    times = {b: [] for b in BACKENDS}
    for _ in range(args.repeat):
        for backend in BACKENDS:
            times[backend].append(time_collective(comm, lambda: case.run(groups[backend]), iters, args.warmup))
    median = {b: float(np.median(t)) for b, t in times.items()}
    rows = []
    for backend in BACKENDS:
        t = median[backend]
        algbw = size / t / 1e9
        rows.append({"size": size, "count": count, "type": "float", "redop": case.redop, "op": case.name,
                     "backend": backend, "peer": case.mpi_call if backend == "mpi4py" else None,
                     "time_us": t * 1e6, "time_us_reps": [x * 1e6 for x in times[backend]], "iters": iters,
                     "algbw": algbw, "busbw": algbw * case.busbw_factor(n),
                     "wrong": count_wrong(case, groups[backend]),
                     "vs_gloo": median["gloo"] / t, "vs_mpi": median["mpi4py"] / t})
    return rows


def _summary(rows, ops, latency) -> dict:
    """Per op: the smallest size from which ringtrain's busbw stays >= gloo's, and the ratio at 1M and 64M."""
    lines, out = [], {}
    for op in ops:
        mine = sorted((r for r in rows if r["op"] == op and r["backend"] == "ringtrain"), key=lambda r: r["size"])
        if not mine:
            continue
        # vs_gloo is gloo's time over ringtrain's, which is ringtrain's busbw over gloo's.
        from_size = next((r["size"] for i, r in enumerate(mine) if all(s["vs_gloo"] >= 1.0 for s in mine[i:])), None)
        at = {format_bytes(r["size"]): {"vs_gloo": r["vs_gloo"], "vs_mpi": r["vs_mpi"]}
              for r in mine if r["size"] in SUMMARY_SIZES}
        out[op] = {"ringtrain_busbw_ge_gloo_from_bytes": from_size, "at": at}
        said = ", ".join(f"{s}: {v['vs_gloo']:.2f}x gloo, {v['vs_mpi']:.2f}x MPI" for s, v in at.items())
        start = f"from {format_bytes(from_size)}" if from_size is not None else "at no size up to the largest"
        lines.append(f"{op}: ringtrain busbw >= gloo's {start}" + (f"; busbw {said}" if said else ""))
    if latency:
        first = {r["backend"]: r for r in latency}
        out["latency_time_vs_gloo"] = first["ringtrain"]["time_vs_gloo"]
        out["latency_over_mpi_us"] = first["ringtrain"]["over_mpi_us"]
        lines.append(f"1-element all_reduce: ringtrain {first['ringtrain']['median_us']:.1f} us = "
                     f"{first['ringtrain']['time_vs_gloo']:.2f}x gloo's {first['gloo']['median_us']:.1f} us, "
                     f"{first['ringtrain']['over_mpi_us']:.1f} us over mpi4py's {first['mpi4py']['median_us']:.1f} us")
    out["lines"] = lines
    return out
