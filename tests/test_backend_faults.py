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
    assert out.returncode == 76, out.stdout + out.stderr
    for survivor in (0, 2):
        assert (f"ringtrain: rank {survivor}: all_reduce on ringtrain-pg-" in out.stderr
                and "did not finish within 3 s; rank 1 did not answer (dead or stalled)" in out.stderr), out.stderr
    assert "passed the stalled collective" not in out.stdout
    assert elapsed < 60, elapsed
