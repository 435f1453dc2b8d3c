"""The Slurm templates against a real single-node Slurm cluster (slurm/local-cluster.sh).

Needs root and Debian's packages; skipped elsewhere, except in CI (CI=true),
where a cluster that cannot start is a failure. A failing test shows the job
log and the daemons' logs.
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from tests.test_readme_ddp_example import readme_example

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "slurm", "local-cluster.sh")
SLURM_DIR = os.environ.get("RINGTRAIN_SLURM_DIR", "/tmp/ringtrain-slurm")
TORCH_SBATCH = os.path.join(ROOT, "slurm", "torch.sbatch")
TINY = ["--layers", "1", "--width", "32", "--heads", "2", "--context", "16", "--sample-tokens", "0",
        "--eval-windows", "8", "--log-every", "1"]


@pytest.fixture(scope="module")
def slurm():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        if os.environ.get("CI"):
            pytest.fail("the Slurm tests need root and apt-get in CI")
        pytest.skip("the local Slurm cluster needs root and apt-get")
    started = subprocess.run(["bash", CLUSTER, "start"], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, started.stdout + started.stderr
    env = dict(os.environ, SLURM_CONF=os.path.join(SLURM_DIR, "slurm.conf"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    yield env
    subprocess.run(["bash", CLUSTER, "stop"], capture_output=True, text=True, timeout=120)


def logs(*job_logs) -> str:
    """The job logs and the daemons' last lines, for assertion messages."""
    parts = []
    for path in [*job_logs, *sorted(glob.glob(os.path.join(SLURM_DIR, "log", "*.log")))]:
        if os.path.exists(path):
            with open(path, errors="replace") as f:
                parts.append(f"--- {path}\n" + "".join(f.readlines()[-40:]))
    return "\n".join(parts)


def sbatch(env, args, cwd):
    """Submit; returns the job id. With --wait, sbatch's exit code is the job's, so only the id is checked."""
    out = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=300)
    job_id = out.stdout.strip().split(";")[0]
    assert job_id.isdigit(), out.stderr
    return job_id


def job_state(env, job_id) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job_id], env=env, capture_output=True, text=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def wait_state(env, job_id, states, limit, log):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        state = job_state(env, job_id)
        if state.get("JobState") in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not in {states} after {limit} s: {job_state(env, job_id)}\n{logs(log)}")


def test_train_sbatch_runs_4_ranks_to_completion(slurm, tmp_path):
    log = str(tmp_path / "job.log")
    job = sbatch(slurm, ["--wait", "--nodes=1", "--ntasks-per-node=4", "--cpus-per-task=1", f"--output={log}",
                         os.path.join(ROOT, "slurm", "train.sbatch"), *TINY, "--steps", "30",
                         "--out-dir", str(tmp_path / "out")], cwd=tmp_path)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 60, log)
    text = open(log).read()
    assert state["JobState"] == "COMPLETED", logs(log)
    assert "ringtrain: 4 ranks x 1 torch threads" in text, logs(log)
    rows = [json.loads(x) for x in open(tmp_path / "out" / "metrics.jsonl")]
    end = [r for r in rows if r.get("event") == "end"][-1]
    assert end["end_loss"] < end["start_loss"] - 0.5, end


def test_a_wrong_pmi_setting_fails_loudly(slurm, tmp_path):
    log = str(tmp_path / "job.log")
    # Without --mpi=pmi2 each task would be its own single-rank world.
    script = tmp_path / "wrong.sbatch"
    script.write_text("#!/bin/bash\nexport RINGTRAIN_EXPECT_WORLD_SIZE=$SLURM_NTASKS\n"
                      f"srun --mpi=none {sys.executable} -m ringtrain info\n")
    job = sbatch(slurm, ["--wait", "--ntasks=2", f"--output={log}", str(script)], cwd=tmp_path)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED"}, 60, log)
    assert state["JobState"] == "FAILED", logs(log)
    assert "MPI sees a world of 1 rank(s) but the job started 2 tasks" in open(log).read(), logs(log)


def test_preemption_checkpoints_requeues_and_resumes(slurm, tmp_path):
    log, out = str(tmp_path / "job.log"), tmp_path / "out"
    job = sbatch(slurm, ["--nodes=1", "--ntasks-per-node=4", "--cpus-per-task=1", f"--output={log}",
                         os.path.join(ROOT, "slurm", "train.sbatch"), *TINY, "--steps", "400",
                         "--out-dir", str(out)], cwd=tmp_path)
    t0 = time.monotonic()
    while not (out / "metrics.jsonl").exists() or '"step": 5,' not in (out / "metrics.jsonl").read_text():
        assert time.monotonic() - t0 < 90, f"training did not start\n{logs(log)}"
        time.sleep(0.3)
    # What the time limit does: USR1 to the batch shell (--signal=B:USR1@...).
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 150, log)
    text = open(log).read()
    assert state["JobState"] == "COMPLETED", logs(log)
    stopped = [json.loads(x) for x in open(out / "metrics.jsonl") if '"stopped"' in x]
    assert stopped and stopped[0]["reason"] == "SIGUSR1 on some rank", logs(log)
    step = stopped[0]["step"]
    assert "requeueing job" in text and "job " + job + " run 2" in text, logs(log)
    assert f"resumed from the checkpoint at step {step}" in text, logs(log)
    assert "step 400/400" in text and state.get("Restarts") == "1", logs(log)


def test_bench_array_job_writes_json_that_merges(slurm, tmp_path):
    results = tmp_path / "results"
    env = dict(slurm, RINGTRAIN_BENCH_SIZES="1 2", RINGTRAIN_BENCH_DIR=str(results))
    job = sbatch(env, ["--wait", "--array=0-1", "--nodes=1", "--ntasks-per-node=2", "--exclusive",
                       f"--output={tmp_path}/bench-%a.log", os.path.join(ROOT, "slurm", "bench.sbatch"),
                       "--max-bytes", "4K", "--step-factor", "16", "--repeat", "1", "--algorithms", "ring,auto"],
                 cwd=tmp_path)
    assert sorted(os.listdir(results)) == ["allreduce-n1.json", "allreduce-n2.json"], logs(
        *glob.glob(f"{tmp_path}/bench-*.log"))
    merged = subprocess.run([sys.executable, "-m", "ringtrain", "bench", "merge", *sorted(glob.glob(f"{results}/*.json")),
                             "--json", str(tmp_path / "all.json"), "--plot", str(tmp_path / "all.png")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert merged.returncode == 0, merged.stderr
    rows = json.load(open(tmp_path / "all.json"))["rows"]
    assert {r["world_size"] for r in rows} == {1, 2} and all(r["wrong"] == 0 for r in rows)
    assert os.path.getsize(tmp_path / "all.png") > 10_000
    assert job


def test_a_dead_rank_under_srun_is_named_by_every_survivor(slurm, tmp_path):
    out = tmp_path / "out"
    job = subprocess.Popen(["srun", "--mpi=pmi2", "-n", "3", sys.executable, "-m", "ringtrain", "train", *TINY,
                            "--steps", "100000", "--timeout", "5", "--out-dir", str(out)],
                           env=slurm, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not (out / "metrics.jsonl").exists() or '"step": 3,' not in (out / "metrics.jsonl").read_text():
        assert time.monotonic() - t0 < 90 and job.poll() is None, "training did not start"
        time.sleep(0.2)
    start = [json.loads(x) for x in open(out / "metrics.jsonl") if '"start"' in x][-1]
    os.kill(start["ranks"][2]["pid"], 9)
    t0 = time.monotonic()
    output = job.communicate(timeout=60)[0]
    elapsed = time.monotonic() - t0
    assert job.returncode != 0 and elapsed < 30, output
    for survivor in (0, 1):
        assert (f"ringtrain: rank {survivor}: the " in output and "did not finish within 5 s; rank 2 did not answer"
                in output), output
    assert output.count("rank 2 did not answer (dead or stalled)") == 2, output


def user_script_env(slurm) -> dict:
    """What a user's torch script sees: ringtrain importable, and no MASTER_ADDR (ranks come from MPI)."""
    env = {k: v for k, v in slurm.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    return dict(env, PYTHONPATH=ROOT)


@pytest.mark.parametrize("ranks", [2, 3])
def test_torch_sbatch_runs_the_readme_ddp_example(slurm, tmp_path, ranks):
    (tmp_path / "ddp_example.py").write_text(readme_example())
    log = str(tmp_path / "job.log")
    job = sbatch(user_script_env(slurm), ["--wait", "--nodes=1", f"--ntasks={ranks}", "--cpus-per-task=1",
                                          f"--output={log}", TORCH_SBATCH, "ddp_example.py"], cwd=tmp_path)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 60, log)
    text = open(log).read()
    assert state["JobState"] == "COMPLETED" and "torch.sbatch: the script finished" in text, logs(log)
    found = re.search(rf"^{ranks} ranks, step 100: loss ([0-9.]+)$", text, re.M)
    assert found and float(found.group(1)) < 1e-3, logs(log)


def test_torch_sbatch_runs_fsdp2_against_one_process(slurm, tmp_path):
    log = str(tmp_path / "job.log")
    job = sbatch(user_script_env(slurm), ["--wait", "--nodes=1", "--ntasks=3", "--cpus-per-task=1",
                                          f"--output={log}", TORCH_SBATCH,
                                          os.path.join(ROOT, "tests", "scripts", "fsdp_mlp.py")], cwd=tmp_path)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 60, log)
    assert state["JobState"] == "COMPLETED", logs(log)
    found = re.search(r"^3 ranks, FSDP2 step 5: loss ([0-9.]+) \(step 1: ([0-9.]+)\), parameters (\w+) on every "
                      r"rank, max difference from one process (\S+) \(loss (\S+)\)$", open(log).read(), re.M)
    assert found, logs(log)
    last, first, identical, difference, loss_difference = found.groups()
    assert identical == "identical" and float(difference) < 1e-5 and float(loss_difference) < 1e-5, found.group(0)
    assert float(last) < float(first), found.group(0)


def test_torch_sbatch_stops_a_world_of_singletons(slurm, tmp_path):
    # The template with the PMI setting a site's MPI might not understand: each task its own world.
    wrong = tmp_path / "wrong-pmi.sbatch"
    wrong.write_text(open(TORCH_SBATCH).read().replace("srun --mpi=pmi2", "srun --mpi=none"))
    (tmp_path / "ddp_example.py").write_text(readme_example())
    log = str(tmp_path / "job.log")
    job = sbatch(user_script_env(slurm), ["--wait", "--nodes=1", "--ntasks=2", "--cpus-per-task=1",
                                          f"--output={log}", str(wrong), "ddp_example.py"], cwd=tmp_path)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 60, log)
    text = open(log).read()
    assert state["JobState"] == "FAILED" and state["ExitCode"] == "2:0", logs(log)
    assert "MPI sees a world of 1 rank(s) but the job started 2 tasks" in text and " ranks, step" not in text, logs(log)


# Either would leave rank 0 in its allreduce until the time limit: a raise without the
# template's abort, a dead rank without srun's --kill-on-bad-exit.
@pytest.mark.parametrize("failure, said", [
    ("raise RuntimeError('deliberate failure on rank 1')", "uncaught exception on rank 1"),
    ("os.kill(os.getpid(), 9)  # what the out-of-memory killer does", "task 1: Killed")], ids=["raises", "killed"])
def test_torch_sbatch_ends_the_job_when_one_rank_fails(slurm, tmp_path, failure, said):
    (tmp_path / "fail_on_rank_1.py").write_text(
        "import os, torch, torch.distributed as dist, ringtrain.distributed\n"
        "dist.init_process_group('ringtrain')\n"
        "if dist.get_rank() == 1:\n"
        f"    {failure}\n"
        "dist.all_reduce(torch.ones(4))\n")
    log = str(tmp_path / "job.log")
    job = sbatch(user_script_env(slurm), ["--nodes=1", "--ntasks=2", "--cpus-per-task=1", "--time=5",
                                          f"--output={log}", TORCH_SBATCH, "fail_on_rank_1.py"], cwd=tmp_path)
    # Slurm ends the step within its KillWait (30 s) of an abort, at most.
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, 120, log)
    text = open(log).read()
    assert state["JobState"] == "FAILED" and said in text, logs(log)
    assert "torch.sbatch: the script failed with exit code" in text and "requeueing job" not in text, logs(log)


def test_torch_sbatch_requeues_a_script_that_checkpoints_on_usr1(slurm, tmp_path):
    log, checkpoint = str(tmp_path / "job.log"), tmp_path / "ddp.pt"
    job = sbatch(user_script_env(slurm), ["--nodes=1", "--ntasks=3", "--cpus-per-task=1", f"--output={log}",
                                          TORCH_SBATCH, os.path.join(ROOT, "tests", "scripts", "ddp_preemptible.py"),
                                          "--steps", "150", "--checkpoint", str(checkpoint), "--step-seconds",
                                          "0.05"], cwd=tmp_path)
    t0 = time.monotonic()
    while not os.path.exists(log) or "step 10/150" not in open(log).read():
        assert time.monotonic() - t0 < 90, f"training did not start\n{logs(log)}"
        time.sleep(0.3)
    # What the time limit does: USR1 to the batch shell (--signal=B:USR1@...).
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=slurm, check=True)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 150, log)
    text = open(log).read()
    assert state["JobState"] == "COMPLETED" and state.get("Restarts") == "1", logs(log)
    stopped = re.search(r"USR1: checkpointed at step (\d+), exiting with 75", text)
    assert stopped and "requeueing job " + job in text and "job " + job + " run 2" in text, logs(log)
    assert f"resumed from the checkpoint at step {stopped.group(1)}" in text, logs(log)
    assert re.search(r"^3 ranks, step 150: loss 0\.00", text, re.M), logs(log)


def test_train_sbatch_launch_elastic_restarts_on_the_answering_node(slurm, tmp_path):
    # MPICH cannot shrink in place: a rank killed with SIGKILL ends the attempt, and launch --elastic restarts
    # on the allocation's nodes that answer (here the one node, at full size), from the newest checkpoint.
    log, out = str(tmp_path / "job.log"), tmp_path / "out"
    env = dict(slurm, RINGTRAIN_LAUNCHER="launch-elastic", RINGTRAIN_CHECKPOINT_DIR=str(tmp_path / "ckpt"),
               RINGTRAIN_MAX_REQUEUES="0")
    job = sbatch(env, ["--nodes=1", "--ntasks-per-node=3", "--cpus-per-task=1", f"--output={log}",
                       os.path.join(ROOT, "slurm", "train.sbatch"), *TINY, "--steps", "300", "--checkpoint-every",
                       "5", "--timeout", "10", "--out-dir", str(out)], cwd=tmp_path)
    t0 = time.monotonic()
    while not (out / "metrics.jsonl").exists() or '"step": 8,' not in (out / "metrics.jsonl").read_text():
        assert time.monotonic() - t0 < 120, logs(log)
        time.sleep(0.2)
    start = [json.loads(x) for x in open(out / "metrics.jsonl") if '"start"' in x][-1]
    os.kill(start["ranks"][1]["pid"], 9)
    state = wait_state(slurm, job, {"COMPLETED", "FAILED", "CANCELLED"}, 300, log)
    text = open(log).read()
    assert state["JobState"] == "COMPLETED", logs(log)
    assert re.search(r"launch: attempt 1 at 3 of 3 ranks: \S*mpiexec -hosts \S+:3 -n 3", text), logs(log)
    assert "launch: attempt 2 at 3 of 3 ranks" in text and "resumed from the checkpoint at step" in text, logs(log)
    assert [json.loads(x) for x in open(out / "metrics.jsonl")][-1]["step"] == 300
