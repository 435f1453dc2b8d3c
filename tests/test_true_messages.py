"""What a run says at its end is what happened: a resume past --steps, and a watchdog that calls a deadline.

Real two-rank jobs of a tiny GPT, each under a timeout.
"""
import os
import subprocess
import sys

from tests.launch import mpiexec_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width", "32", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "2",
        "--eval-windows", "4", "--sample-tokens", "0", "--log-every", "1000"]
ABORT = "Aborting the job (exit code 76)"


def train(tmp_path, *flags) -> subprocess.CompletedProcess:
    """Two ranks of train, stdout and stderr as one stream, in the order the launcher forwarded them."""
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "ringtrain", "train", *TINY,
           "--out-dir", str(tmp_path / "out"), *flags]
    return subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)


def test_a_checkpoint_past_steps_is_refused_and_one_at_steps_is_a_true_no_op(tmp_path):
    ckpt = ["--checkpoint-dir", str(tmp_path / "ckpt")]
    assert train(tmp_path, "--steps", "4", *ckpt).returncode == 0
    below = train(tmp_path, "--steps", "2", *ckpt)
    assert below.returncode == 2, below.stdout
    assert ("ringtrain: --steps 2 is below the checkpoint's step 4, so nothing was trained — give --steps > 4 to "
            "continue it, or --resume none to start afresh") in below.stdout.splitlines()
    assert "Traceback" not in below.stdout and "nothing to do" not in below.stdout
    assert "validation loss" not in below.stdout  # refused before any work, right after the checkpoint's load
    again = train(tmp_path, "--steps", "4", *ckpt)
    assert again.returncode == 0, again.stdout
    assert "nothing to do: the checkpoint is already at step 4, which is --steps; nothing trained" in again.stdout
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["ringtrain.lock", "step-00000004"]


def test_a_run_that_the_watchdog_calls_late_ends_with_76_and_never_after_done(tmp_path):
    # A 1 ms deadline on every wait for the peers, and on start-up and the first step one that passes
    # at start-up (1 ms), or late in it or in the first step (1-4 s): the watchdog decides while the main
    # thread is about to finish. Before the fix, half such runs printed the abort line and exited 0.
    endings = []
    for run, first in enumerate(["0.001", "1", "2", "3", "4"] * 2):
        out = train(tmp_path / str(run), "--steps", "3", "--timeout", "0.001", "--first-timeout", first)
        aborted, done = ABORT in out.stdout, "\ndone: " in f"\n{out.stdout}"
        endings.append((first, out.returncode, aborted, done))
        assert (out.returncode, aborted, done) in ((76, True, False), (0, False, True)), (first, out.stdout)
    assert any(code == 76 for _, code, _, _ in endings), endings
