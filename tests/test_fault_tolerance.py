"""Signals, dead and stalled ranks, and supervised restarts, on real mpiexec jobs.

Each rank's stderr goes to its own file (the launcher may drop forwarded
output when a job is aborted), so the tests can check every survivor's message.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import torch

from tests.launch import mpiexec_path

ROOT = os.path.dirname(os.path.dirname(__file__))
TINY = ["--layers", "1", "--width", "32", "--heads", "2", "--context", "16", "--batch-size", "4",
        "--sample-tokens", "0", "--eval-windows", "8", "--log-every", "1"]


def start(n, out_dir, args):
    """mpiexec -n N ... python -m ringtrain ARGS, each rank's stderr in out_dir/err.<rank>."""
    os.makedirs(out_dir, exist_ok=True)
    rank_cmd = f'exec "$0" -m ringtrain "$@" 2>{out_dir}/err.${{PMI_RANK:-0}}'
    cmd = [mpiexec_path(), "-n", str(n), "sh", "-c", rank_cmd, sys.executable, *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def metrics(out_dir):
    path = os.path.join(out_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def wait_for_step(out_dir, step, job, limit=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if any(r.get("step", 0) >= step and "loss" in r for r in metrics(out_dir)):
            return
        assert job.poll() is None, f"the job ended early: {job.stdout.read()}"
        time.sleep(0.1)
    raise AssertionError(f"step {step} not reached in {limit} s")


def pid_of(out_dir, rank):
    starts = [r for r in metrics(out_dir) if r.get("event") == "start"]
    return starts[-1]["ranks"][rank]["pid"]


def stderr_of(out_dir, rank):
    with open(os.path.join(out_dir, f"err.{rank}")) as f:
        return f.read()


def leftover(out_dir):
    found = subprocess.run(["pgrep", "-f", f"--out-dir {out_dir}"], capture_output=True, text=True).stdout
    return found.split()


def test_sigusr1_on_one_rank_checkpoints_and_the_rerun_resumes(tmp_path):
    out, ckpt = str(tmp_path / "out"), str(tmp_path / "ckpt")
    args = ["train", *TINY, "--steps", "400", "--checkpoint-dir", ckpt, "--out-dir", out]
    job = start(2, out, args)
    wait_for_step(out, 3, job)
    os.kill(pid_of(out, 1), signal.SIGUSR1)
    job.wait(timeout=60)
    assert job.returncode == 75, job.stdout.read()
    stopped = [r for r in metrics(out) if r.get("event") == "stopped"][-1]
    assert "SIGUSR1" in stopped["reason"]
    assert sorted(os.listdir(ckpt)) == ["ringtrain.lock", f"step-{stopped['step']:08d}"]
    again = start(2, out, [*args[:-2], "--steps", str(stopped["step"] + 5), "--out-dir", out])
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output
    assert f"resumed from the checkpoint at step {stopped['step']}" in output
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps[-5:] == list(range(stopped["step"] + 1, stopped["step"] + 6))


def _kill_and_watch(tmp_path, sig, victim):
    out = str(tmp_path / "out")
    job = start(3, out, ["train", *TINY, "--steps", "100000", "--timeout", "5", "--out-dir", out])
    wait_for_step(out, 3, job)
    pid = pid_of(out, victim)
    t0 = time.monotonic()
    os.kill(pid, sig)
    job.wait(timeout=60)
    elapsed = time.monotonic() - t0
    return out, job.returncode, elapsed


def test_kill_9_of_one_rank_out_of_3_under_mpiexec_ends_the_job(tmp_path):
    # MPICH's mpiexec kills the survivors itself as soon as a rank dies; under
    # srun, which leaves them running, ringtrain's deadline ends them and each
    # names the dead rank (tests/test_slurm.py).
    out, code, elapsed = _kill_and_watch(tmp_path, signal.SIGKILL, victim=2)
    assert code == 9  # MPICH's mpiexec returns the signal's number, not 255 (fault/exit_codes.py)
    assert elapsed < 30, f"the survivors took {elapsed:.1f} s to exit"
    assert leftover(out) == []


def test_a_stalled_rank_is_named_and_the_job_ends(tmp_path):
    out, code, elapsed = _kill_and_watch(tmp_path, signal.SIGSTOP, victim=1)
    assert code != 0 and elapsed < 30
    for survivor in (0, 2):
        assert "rank 1 did not answer (dead or stalled)" in stderr_of(out, survivor)
    assert leftover(out) == []


def test_launch_recovers_from_a_killed_rank_with_the_same_final_parameters(tmp_path):
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    train_args = ["train", *TINY, "--steps", "40", "--checkpoint-every", "5", "--timeout", "5"]
    cmd = [sys.executable, "-m", "ringtrain", "launch", "-n", "3", "--max-restarts", "2", "--",
           *train_args, "--checkpoint-dir", ckpt, "--out-dir", out]
    supervisor = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(out, 12, supervisor)
    os.kill(pid_of(out, 1), signal.SIGKILL)
    killed_after = max(r["step"] for r in metrics(out) if "loss" in r)
    output, _ = supervisor.communicate(timeout=300)
    assert supervisor.returncode == 0, output
    assert "launch: attempt 1 ended with" in output
    resumed = int(re.search(r"resumed from the checkpoint at step (\d+)", output).group(1))
    # launch says where the restart resumes, as the checkpoint directory shows it, and that is where it resumed
    assert int(re.search(r"restarting in \d+ s \(restart 1 of \d+\) from the checkpoint at step (\d+)",
                         output).group(1)) == resumed
    # The newest checkpoint before the kill: a multiple of --checkpoint-every at or below the last step seen.
    assert resumed % 5 == 0 and 10 <= resumed <= killed_after + 1, (resumed, killed_after, output)
    reference = subprocess.run([mpiexec_path(), "-n", "3", sys.executable, "-m", "ringtrain", *train_args,
                                "--checkpoint-dir", str(tmp_path / "ref"), "--out-dir", str(tmp_path / "refout")],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    a = torch.load(os.path.join(ckpt, "step-00000040", "replicated.pt"), weights_only=True)["model"]
    b = torch.load(str(tmp_path / "ref" / "step-00000040" / "replicated.pt"), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_resuming_at_another_world_size_loads_the_model_and_says_what_changes(tmp_path):
    ckpt, out = str(tmp_path / "ckpt"), str(tmp_path / "out")
    args = ["train", *TINY, "--steps", "10", "--compression", "ef+topk:ratio=0.1", "--checkpoint-dir", ckpt,
            "--out-dir", out]
    first = subprocess.run([mpiexec_path(), "-n", "2", sys.executable, "-m", "ringtrain", *args, "--stop-after", "4"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 75, first.stderr
    second = subprocess.run([mpiexec_path(), "-n", "3", sys.executable, "-m", "ringtrain", *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "resumed from the checkpoint at step 4" in second.stdout
    assert "resuming at world size 3 from a checkpoint written at 2" in second.stderr
    assert "per-rank state (RNG, compression residuals) starts fresh" in second.stderr
    assert "step 10/10" in second.stdout
