"""The Open MPI tests: whole jobs under mpirun with ULFM, run by tests/run.sh's Open MPI part with that
environment's python. Under another MPI they are skipped, unless RINGTRAIN_TEST_OPENMPI=1 (set by that
script) makes a missing Open MPI a failure, so that CI cannot pass them by skipping."""
import os
import subprocess
import sys

import pytest
from mpi4py import MPI

BIN = os.path.dirname(sys.executable)
ULFM = ["--with-ft", "ulfm", "--mca", "pml", "ob1", "--mca", "btl", "tcp,self"]
ROOT_OK = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def pytest_collection_modifyitems(config, items):
    if "Open MPI" in MPI.Get_library_version():
        return
    if os.environ.get("RINGTRAIN_TEST_OPENMPI") == "1":
        raise pytest.UsageError("RINGTRAIN_TEST_OPENMPI=1 but mpi4py loads " + MPI.Get_library_version()[:40])
    skip = pytest.mark.skip(reason="needs Open MPI (tests/run.sh runs these in .venv-openmpi)")
    for item in items:
        if "tests/openmpi" in str(item.fspath):
            item.add_marker(skip)


def mpirun(n: int, args: list[str], *, env: dict | None = None, timeout: float = 300, ft: bool = True):
    """``python ARGS`` on ``n`` ranks under Open MPI's mpirun (with ULFM unless ``ft`` is off), under a timeout."""
    command = [os.path.join(BIN, "mpirun"), "--oversubscribe", *(ULFM if ft else []),
               *[x for name in (env or {}) for x in ("-x", name)], "-n", str(n), sys.executable, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **ROOT_OK, **(env or {})})
