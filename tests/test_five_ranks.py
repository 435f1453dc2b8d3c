"""Five ranks, which tests/run.sh does not reach: nodes of 2 and 3 ranks leave uneven groups (2+2+1, 3+2)."""
import os

from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pytest_at_five(files: list[str], timeout: float):
    """pytest on 5 ranks. Captured at the Python level only (--capture=sys), so what MPI or a dying rank
    writes to fd 2 reaches the output; the whole output is printed, and so shown in full on a failure."""
    out = run_mpi(5, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", "--with-mpi", *files],
                  timeout=timeout, cwd=ROOT)
    print(f"exit code {out.returncode}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}")
    return out


def test_the_node_aware_allreduce_at_five_ranks():
    out = _pytest_at_five(["tests/mpi/test_hierarchical.py"], timeout=300)
    assert out.returncode == 0, f"exit code {out.returncode}: the output is printed above"
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_the_torch_distributed_backend_at_five_ranks():
    """Odd world sizes leave uneven ring chunks: every op and dtype, DDP and FSDP2 against gloo, pipelining."""
    out = _pytest_at_five(["tests/mpi/test_backend_ops.py", "tests/mpi/test_backend_training.py"], timeout=600)
    assert out.returncode == 0, f"exit code {out.returncode}: the output is printed above"
    assert " passed" in out.stdout and "failed" not in out.stdout
