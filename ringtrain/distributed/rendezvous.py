"""torch's ``env://`` rendezvous, falling back to MPI when MASTER_ADDR is unset.

``init_process_group(backend)`` without a store or URL meets through
``env://``, which needs MASTER_ADDR and MASTER_PORT: a launcher like torchrun
sets them, ``mpiexec`` and ``srun`` do not. Without MASTER_ADDR this handler
takes rank and world size from MPI's COMM_WORLD and serves the store over MPI
(store.py), so ``init_process_group("ringtrain")``, and gloo too, start under
any MPI launcher. With MASTER_ADDR set, torch's own handler runs unchanged.
"""
import importlib
import os
from urllib.parse import parse_qs, urlparse

from mpi4py import MPI

from .store import MPIStore

# The module, not the function torch.distributed exports under the same name.
_torch = importlib.import_module("torch.distributed.rendezvous")

_installed = []


def install() -> None:
    """Wrap torch's env:// handler (once per process)."""
    if _installed:
        return
    original = _torch._rendezvous_handlers["env"]

    def env_or_mpi(url: str, **kwargs):
        if "MASTER_ADDR" in os.environ:
            yield from original(url, **kwargs)
            return
        world = MPI.COMM_WORLD
        query = {k: int(v[0]) for k, v in parse_qs(urlparse(url).query).items() if k in ("rank", "world_size")}
        rank, size = world.Get_rank(), world.Get_size()
        for name, given, mpi in (("rank", query.get("rank", -1), rank), ("world_size", query.get("world_size", -1),
                                                                            size)):
            if given not in (-1, mpi):
                raise ValueError(f"init_process_group: {name}={given}, but MPI says {mpi}: without MASTER_ADDR "
                                 "the ranks come from MPI; leave rank and world_size out, or set MASTER_ADDR")
        store = MPIStore(world)
        kwargs_timeout = kwargs.get("timeout")
        if kwargs_timeout is not None:
            store.set_timeout(kwargs_timeout)
        yield store, rank, size

    # torch offers no replacement call (register_rendezvous_handler refuses a known scheme).
    _torch._rendezvous_handlers["env"] = env_or_mpi
    _installed.append(original)
