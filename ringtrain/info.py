"""``python -m ringtrain info``: what MPI, which ranks where, and which versions."""
import platform
import socket

import numpy as np
from mpi4py import MPI

from ._version import __version__

_THREAD_LEVELS = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                  MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}


def describe(comm: MPI.Comm = MPI.COMM_WORLD) -> dict:
    """The facts ``info`` prints, as a dict (collective: gathers every rank's host)."""
    import torch  # imported here: it takes seconds, and only info needs its version
    import mpi4py
    hosts = comm.gather(socket.gethostname(), root=0)
    return {
        "ringtrain": __version__,
        "mpi_library": MPI.Get_library_version().strip().splitlines()[0],
        "mpi_standard": "%d.%d" % MPI.Get_version(),
        "world_size": comm.Get_size(),
        "hosts": hosts,
        "thread_level": _THREAD_LEVELS.get(MPI.Query_thread(), str(MPI.Query_thread())),
        "survives_a_dead_rank": _survival(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "mpi4py": mpi4py.__version__,
    }


def _survival() -> str:
    """Whether this job can lose a rank and go on (train --elastic), and if not, why."""
    from .elastic.ulfm import can_shrink
    reason = can_shrink()
    return "yes: ULFM (train --elastic shrinks in place)" if reason is None else f"no: {reason}"


def main(args) -> int:
    facts = describe()
    if MPI.COMM_WORLD.Get_rank() == 0:
        width = max(map(len, facts))
        for key, value in facts.items():
            if key == "hosts":
                for rank, host in enumerate(value):
                    print(f"{'rank ' + str(rank):>{width}}  {host}")
            else:
                print(f"{key:>{width}}  {value}")
    return 0
