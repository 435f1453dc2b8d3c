"""launch --elastic under MPICH, which cannot shrink in place: a host stops answering and a rank on it is
killed; launch restarts on the host that answers, from the newest checkpoint, then grows back to both hosts at
a checkpoint once the other answers again. The two "hosts" are two names of this machine, localhost and
127.0.0.1; whether one answers is a file's absence (--host-check)."""
import os
import re
import signal
import subprocess
import sys
import time

from tests.test_fault_tolerance import ROOT, TINY, metrics, pid_of, wait_for_step


def starts(out):
    return [r["world_size"] for r in metrics(out) if r.get("event") == "start"]


def _trained_since_the_last_start(rows, steps):
    """Whether the newest attempt has completed ``steps`` steps (so it has a checkpoint to stop at)."""
    last_start = max(i for i, r in enumerate(rows) if r.get("event") == "start")
    return sum("loss" in r and "event" not in r for r in rows[last_start:]) >= steps


def test_launch_elastic_shrinks_to_the_answering_host_and_grows_back(tmp_path):
    ckpt, out, down = str(tmp_path / "ckpt"), str(tmp_path / "out"), tmp_path / "down-127.0.0.1"
    cmd = [sys.executable, "-m", "ringtrain", "launch", "-n", "4", "--elastic", "--hosts", "localhost:2,127.0.0.1:2",
           "--host-check", f"test ! -e {tmp_path}/down-{{host}}", "--regrow-every", "1", "--max-restarts", "2",
           "--", "train", *TINY, "--steps", "300", "--checkpoint-every", "5", "--timeout", "10",
           "--checkpoint-dir", ckpt, "--out-dir", out]
    launch = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_step(out, 8, launch)
        down.write_text("")
        os.kill(pid_of(out, 3), signal.SIGKILL)  # ranks 2 and 3 ran on 127.0.0.1
        t0 = time.monotonic()
        while starts(out) != [4, 2] or not _trained_since_the_last_start(metrics(out), 3):
            assert launch.poll() is None and time.monotonic() - t0 < 120, launch.stdout.read() if launch.poll() else ""
            time.sleep(0.2)
        down.unlink()  # the host answers again: launch asks for a checkpoint and restarts at 4
        output, _ = launch.communicate(timeout=300)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 0, output
    assert starts(out) == [4, 2, 4], output
    assert re.search(r"launch: attempt 2 at 2 of 4 ranks \(127\.0\.0\.1 not answering\): \S*mpiexec -hosts "
                     r"localhost:2 -n 2", output), output
    assert "launch: 127.0.0.1 answering again; asking the job to checkpoint and stop (SIGUSR1)" in output
    assert "launch: attempt 3 at 4 of 4 ranks: " in output
    steps = [r["step"] for r in metrics(out) if "loss" in r]
    assert steps[-1] == 300
    # Each restart resumed from a checkpoint: the regrow from the one the job wrote on SIGUSR1.
    resumed = [int(s) for s in re.findall(r"resumed from the checkpoint at step (\d+)", output)]
    stopped = [int(s) for s in re.findall(r"stopping after step (\d+) \(SIGUSR1", output)]
    assert len(resumed) == 2 and resumed[0] % 5 == 0 and resumed[1] == stopped[0], output


def test_launch_elastic_options_are_checked(tmp_path):
    def launch(*args):
        return subprocess.run([sys.executable, "-m", "ringtrain", "launch", "-n", "2", *args, "--", "train"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    plain = launch("--hosts", "a:2")
    assert plain.returncode == 2 and "--hosts, --hostfile, --host-check and --min-ranks shape an elastic launch" \
        in plain.stderr
    bad = launch("--elastic", "--hosts", "a:two")
    assert bad.returncode == 2 and "'a:two' is not host or host:slots" in bad.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    none = subprocess.run([sys.executable, "-m", "ringtrain", "launch", "-n", "2", "--elastic", "--", "train"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert none.returncode == 2 and "no hosts to shrink to or grow back on" in none.stderr
    slurm = subprocess.run([sys.executable, "-m", "ringtrain", "launch", "-n", "2", "--elastic", "--", "train"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60,
                           env=dict(env, SLURM_JOB_NODELIST="vm", SLURM_TASKS_PER_NODE="two"))
    assert slurm.returncode == 2 and "SLURM_TASKS_PER_NODE='two' is not Slurm's form" in slurm.stderr, slurm.stderr
    floor = launch("--elastic", "--hosts", "a:2", "--min-ranks", "3")
    assert floor.returncode == 2 and "1 <= --min-ranks <= -n 2" in floor.stderr
