"""Run commands under mpiexec, always with a timeout."""
import os
import shutil
import subprocess
import sys


def mpiexec_path() -> str:
    """The mpiexec next to this Python (the mpich wheel's), else the one on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.path.exists(beside) else shutil.which("mpiexec")
    if found is None:
        raise RuntimeError("no mpiexec found: pip install 'ringtrain[mpich]' or load your MPI module")
    return found


def run_mpi(n: int, args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``mpiexec -n N python ARGS``, capturing output; raises TimeoutExpired past ``timeout``."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
