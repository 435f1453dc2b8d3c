"""Run commands under mpiexec, always with a timeout."""
import subprocess
import sys

from ringtrain.fault.supervise import mpiexec_path  # noqa: F401  ($MPIEXEC, else beside this Python, else PATH)


def run_mpi(n: int, args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``mpiexec -n N python ARGS``, capturing output; raises TimeoutExpired past ``timeout``."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
