"""The latency half of ``bench backend``: a 1-element all_reduce on ringtrain, on gloo and as raw mpi4py.

OSU's pattern: 100 warm-up calls, then single calls each started after a
barrier (outside the clock), the median per rank and the slowest rank's
median. The three are interleaved within each repetition; the figure is the
median over repetitions, with the best beside it. ``time_vs_gloo`` is a
ratio of times (below 1 is faster than gloo); ``over_mpi_us`` is what the
torch.distributed layers add to MPI's own call::

    >>> latency_table([{"backend": "gloo", "size": 4, "median_us": 300.0, "best_us": 250.0,
    ...                 "time_vs_gloo": 1.0, "over_mpi_us": 297.0}])[-1]
    '      gloo          4      300.0      250.0      1.00       297.0'
"""
import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from ..timing import median_call

WARMUP = 100


def latency_rows(comm: MPI.Comm, groups: dict, calls: int, repeat: int) -> list[dict]:
    """One row per backend in ``groups`` (a torch group, or None for mpi4py's Allreduce). Collective."""
    one = torch.zeros(1)  # zeros: a sum of zeros stays zero however often it runs
    runs = {backend: (lambda g=group: dist.all_reduce(one, group=g)) if group is not None
            else (lambda: comm.Allreduce(MPI.IN_PLACE, one.numpy(), op=MPI.SUM))
            for backend, group in groups.items()}
    medians = {backend: [] for backend in runs}
    for _ in range(repeat):
        for backend, run in runs.items():
            for _ in range(WARMUP):
                run()
            medians[backend].append(median_call(comm, run, calls))
    mid = {b: float(np.median(m)) for b, m in medians.items()}
    return [{"backend": b, "size": 4, "count": 1, "calls": calls, "median_us": mid[b] * 1e6,
             "best_us": min(medians[b]) * 1e6, "median_us_reps": [x * 1e6 for x in medians[b]],
             "time_vs_gloo": mid[b] / mid["gloo"], "over_mpi_us": (mid[b] - mid["mpi4py"]) * 1e6}
            for b in runs]


def latency_table(rows: list[dict]) -> list[str]:
    """OSU-style lines for ``latency_rows``' rows (none if there are none)."""
    if not rows:
        return []
    lines = [f"# 1-element all_reduce (float32, sum), median of single calls after {WARMUP} warm-up",
             f"# {'backend':>8} {'size':>10} {'median_us':>10} {'best_us':>10} {'vs_gloo':>9} {'over_mpi':>11}"]
    for r in rows:
        lines.append(f"{r['backend']:>10} {r['size']:>10} {r['median_us']:>10.1f} {r['best_us']:>10.1f} "
                     f"{r['time_vs_gloo']:>9.2f} {r['over_mpi_us']:>11.1f}")
    return lines
