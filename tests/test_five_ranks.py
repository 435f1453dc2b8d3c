"""Five ranks, which tests/run.sh does not reach: nodes of 2 and 3 ranks leave uneven groups (2+2+1, 3+2)."""
import os

from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_node_aware_allreduce_at_five_ranks():
    out = run_mpi(5, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-mpi", "tests/mpi/test_hierarchical.py"],
                  timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_the_torch_distributed_backend_at_five_ranks():
    """Odd world sizes leave uneven ring chunks: every op and dtype, DDP and FSDP2 against gloo, pipelining."""
    out = run_mpi(5, ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--with-mpi", "tests/mpi/test_backend_ops.py",
                      "tests/mpi/test_backend_training.py"],
                  timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
