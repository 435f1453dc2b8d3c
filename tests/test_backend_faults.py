"""A stalled rank under the ringtrain backend is named by every survivor, and the job ends with 76 in time."""
import os
import subprocess
import sys
import time

from tests.launch import mpiexec_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "stall_in_a_backend_collective.py")


def test_a_rank_stalled_in_a_backend_collective_is_named_and_the_job_ends_with_76():
    env = {**os.environ, "PYTHONPATH": ROOT}
    started = time.monotonic()
    out = subprocess.run([mpiexec_path(), "-n", "3", sys.executable, SCRIPT, "3"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    # MPICH returns the abort's 76, or 9 when it reports first the stopped rank it then killed (SIGKILL).
    assert out.returncode in (76, 9), out.stdout + out.stderr
    for survivor in (0, 2):
        assert (f"ringtrain: rank {survivor}: all_reduce on ringtrain-pg-" in out.stderr
                and "did not finish within 3 s; rank 1 did not answer (dead or stalled)" in out.stderr), out.stderr
    assert "passed the stalled collective" not in out.stdout
    assert elapsed < 60, elapsed


def test_an_exception_on_one_rank_of_a_plain_script_ends_the_job_at_once():
    # mpiexec python script.py, no python -m mpi4py: without the hook the job would hang in the all_reduce.
    env = {**os.environ, "PYTHONPATH": ROOT}
    started = time.monotonic()
    out = subprocess.run([mpiexec_path(), "-n", "3", sys.executable,
                          os.path.join(ROOT, "tests", "scripts", "raise_in_a_backend_job.py")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and time.monotonic() - started < 60, out.stdout + out.stderr
    assert "ringtrain: uncaught exception on rank 1, aborting the job:" in out.stderr
    assert "RuntimeError: rank 1 gives up" in out.stderr and "finished" not in out.stdout


def test_a_world_of_the_wrong_size_is_refused_by_the_backend():
    env = {**os.environ, "PYTHONPATH": ROOT, "RINGTRAIN_EXPECT_WORLD_SIZE": "3"}
    out = subprocess.run([mpiexec_path(), "-n", "2", sys.executable, "-c",
                          "import ringtrain.distributed, torch.distributed as dist; dist.init_process_group('ringtrain')"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "RINGTRAIN_EXPECT_WORLD_SIZE" in out.stderr, out.stderr
