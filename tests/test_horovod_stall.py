"""A rank that never submits the operation its peers wait for: Horovod's stall inspector, under mpiexec.

With HOROVOD_STALL_SHUTDOWN_TIME_SECONDS set, the waiting rank warns, names
the operation and aborts the job, instead of the stall Horovod users know.
"""
import os
import time

from tests.launch import run_mpi

SCRIPT = """
import time, torch, ringtrain.horovod as hvd
hvd.init()
if hvd.rank() == 0:
    hvd.allreduce(torch.ones(1), name="only.rank0")
else:
    time.sleep(60)
"""


def test_a_stalled_operation_is_named_then_the_job_ends(tmp_path):
    script = tmp_path / "stall.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HOROVOD_STALL_CHECK_TIME_SECONDS": "1", "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "3"}
    start = time.perf_counter()
    out = run_mpi(2, [str(script)], timeout=50, env=env)
    elapsed = time.perf_counter() - start
    assert out.returncode != 0 and elapsed < 40
    assert "waited 1 s for the other ranks to reach allreduce 'only.rank0'" in out.stderr
    assert "did not reach allreduce 'only.rank0' within 3 s; aborting the job" in out.stderr
