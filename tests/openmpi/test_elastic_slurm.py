"""slurm/train.sbatch's in-place elastic form (RINGTRAIN_LAUNCHER=mpirun-ulfm) against the local Slurm cluster,
with the Open MPI environment's python: a rank killed with SIGKILL, and the job goes on at the smaller size."""
import json
import os
import sys

from tests.test_slurm import ROOT, TINY, logs, sbatch, slurm, wait_state  # noqa: F401 - slurm is the fixture


def test_train_sbatch_mpirun_ulfm_goes_on_without_a_dead_rank(slurm, tmp_path):  # noqa: F811
    log, out = str(tmp_path / "job.log"), tmp_path / "out"
    env = dict(slurm, RINGTRAIN_LAUNCHER="mpirun-ulfm", RINGTRAIN_PYTHON=sys.executable,
               RINGTRAIN_CHECKPOINT_DIR=str(tmp_path / "ckpt"), RINGTRAIN_KILL="2:6:backward:3", RINGTRAIN_MAX_REQUEUES="0",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + slurm["PATH"])
    job = sbatch(env, ["--nodes=1", "--ntasks-per-node=4", "--cpus-per-task=1", "--oversubscribe", f"--output={log}",
                       os.path.join(ROOT, "slurm", "train.sbatch"), *TINY, "--steps", "20", "--out-dir", str(out)],
                 cwd=tmp_path)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 300, log)
    assert state["JobState"] == "COMPLETED", logs(log)
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    recovered = [r for r in rows if r.get("event") == "recovered"]
    assert [(r["dead_as_launched"], r["world_size"]) for r in recovered] == [([2], 3)], logs(log)
    assert rows[-1]["event"] == "end" and rows[-1]["step"] == 20
    assert "train.sbatch: training finished" in open(log).read()
