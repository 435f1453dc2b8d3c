"""One shape for every benchmark result: ``{"benchmark": NAME, "meta": {...}, ...body}``.

The ``meta`` block says where and how a figure was measured, the same way in
every file: ringtrain and MPI versions, world size, hosts and ranks per host
(as MPI sees them: ``COMM_TYPE_SHARED`` groups), the link (passed in with
``--link``, never guessed), cores, date and command line. Benchmarks write
with ``write_result``; the cost-model fit, the sweep report and ``bench
merge`` read with ``load_result``, which refuses files of another shape.
Files from before this format were converted once by
``benchmarks/convert_results.py``.
"""
import json
import os
import platform
import socket
import sys
import time

import numpy as np
from mpi4py import MPI

from ._version import __version__
from .collectives.topology import node_groups
from .rates import parse_rate

FORMAT = 2
SHARED_MEMORY = "shared memory"


def add_link_argument(parser) -> None:
    parser.add_argument("--link", default=None,
                        help="the link between hosts, in tc notation (100mbit, 1gbit, 10gbit), recorded with the "
                             f"results for the cost-model fit (default: '{SHARED_MEMORY}' on one host)")


def metadata(comm: MPI.Comm, args=None, *, link: str | None = None, **extra) -> dict:
    """The meta block of a result measured on ``comm``. Collective (it counts the hosts)."""
    groups = node_groups(comm)
    import mpi4py
    meta = {"format": FORMAT, "ringtrain": __version__, "mpi_library": MPI.Get_library_version().strip(),
            "mpi4py": mpi4py.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "host": socket.gethostname(), "cpus": os.cpu_count(),
            "cores": len(os.sched_getaffinity(0)), "world_size": comm.Get_size(), "hosts": groups.nodes,
            "ranks_per_host": groups.widest,
            "link": link if link is not None else (SHARED_MEMORY if groups.nodes == 1 else None),
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}
    if "torch" in sys.modules:
        meta["torch"] = sys.modules["torch"].__version__
    if args is not None:
        meta["args"] = {k: v for k, v in vars(args).items() if not callable(v)}
    meta.update(extra)
    return meta


def write_result(path: str, benchmark: str, meta: dict, **body) -> None:
    """Write one result file: the benchmark's name, its meta block, then ``body``."""
    with open(path, "w") as f:
        json.dump({"benchmark": benchmark, "meta": meta, **body}, f, indent=1)


def load_result(path: str) -> dict:
    """A result file written by ``write_result``; ValueError naming the file if it has another shape."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("meta", {}).get("format") != FORMAT:
        raise ValueError(f"{path}: not a ringtrain result of format {FORMAT} — convert older results once with "
                         "benchmarks/convert_results.py")
    return data


def link_rate(result: dict) -> float | None:
    """The link rate in bit/s a result was measured at; None for shared memory or an unknown link."""
    link = result["meta"].get("link")
    return None if link in (None, SHARED_MEMORY) else parse_rate(link)
