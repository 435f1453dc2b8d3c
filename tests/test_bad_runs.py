"""Bad input to whole runs under mpiexec: one line and a documented exit code, never a lost checkpoint.

A tiny GPT keeps each run to a few seconds, most of it importing torch.
"""
import os
import subprocess
import sys
import time

from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width", "32", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "2",
        "--eval-windows", "4", "--sample-tokens", "0", "--log-every", "1000"]


def train(n, tmp_path, *flags, timeout=120):
    return run_mpi(n, ["-m", "ringtrain", "train", *TINY, "--out-dir", str(tmp_path / "out"), *flags],
                   timeout=timeout, cwd=ROOT)


def one_line(out) -> str:
    """The one line a refused run prints, checking there is nothing else on stderr."""
    assert "Traceback" not in out.stderr and "Abort" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringtrain: "), out.stderr
    return lines[0]


def test_resuming_with_a_changed_model_is_one_line(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    assert train(2, tmp_path, "--steps", "2", "--checkpoint-dir", ckpt).returncode == 0
    out = train(2, tmp_path, "--steps", "4", "--checkpoint-dir", ckpt, "--width", "64")
    assert out.returncode == 2
    assert "was written with a different configuration (width: 32 -> 64)" in one_line(out)
    assert sorted(os.listdir(ckpt)) == ["ringtrain.lock", "step-00000002"]


def test_a_diverged_loss_stops_with_exit_3_and_keeps_the_last_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    out = train(2, tmp_path, "--steps", "40", "--lr", "1000", "--grad-clip", "0", "--warmup", "0",
                "--checkpoint-dir", ckpt, "--checkpoint-every", "1")
    assert out.returncode == 3, out.stderr
    line = one_line(out)
    assert line.startswith("ringtrain: the loss is nan at step ") or line.startswith("ringtrain: the loss is inf")
    diverged_at = int(line.split(" at step ")[1].split(" ")[0])
    kept = sorted(n for n in os.listdir(ckpt) if n.startswith("step-"))
    assert kept and int(kept[-1][5:]) == diverged_at - 1  # every finite step's checkpoint, none after


def test_a_diverged_gradient_under_compression_stops_with_exit_3(tmp_path):
    # The compressor meets the NaN before the loss is agreed, on its own rank: one line per rank, then abort.
    out = train(2, tmp_path, "--steps", "40", "--lr", "1000", "--grad-clip", "0", "--warmup", "0",
                "--compression", "int8")
    assert out.returncode == 3, out.stderr
    assert "the gradient has NaN or inf values on this rank, so the compressed average stopped" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_directory_whose_checkpoints_none_can_load_is_refused_then_kept_beside_a_fresh_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert train(1, tmp_path, "--steps", "4", "--checkpoint-dir", str(ckpt), "--checkpoint-every", "2").returncode == 0
    for step in ("step-00000002", "step-00000004"):
        os.remove(ckpt / step / "MANIFEST.json")
    refused = train(1, tmp_path, "--steps", "6", "--checkpoint-dir", str(ckpt))
    assert refused.returncode == 2
    assert "holds checkpoints but none can be loaded: step-00000004, step-00000002" in refused.stderr
    assert "pass --resume none" in refused.stderr.strip().splitlines()[-1]
    fresh = train(1, tmp_path, "--steps", "2", "--checkpoint-dir", str(ckpt), "--resume", "none")
    assert fresh.returncode == 0, fresh.stderr
    names = sorted(os.listdir(ckpt))
    assert names == ["damaged-step-00000002", "damaged-step-00000004", "ringtrain.lock", "step-00000002"]
    # Nothing of the old run was lost: its model files are all still there.
    assert sorted(os.listdir(ckpt / "damaged-step-00000004")) == ["rank-00000.pt", "replicated.pt"]


def test_a_second_run_on_a_locked_directory_is_refused_and_the_first_finishes(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    cmd = [sys.executable, "-m", "ringtrain", "train", *TINY, "--out-dir", str(tmp_path / "out1"),
           "--steps", "100000", "--checkpoint-dir", ckpt, "--checkpoint-every", "20", "--stop-after", "100000"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (os.path.isdir(ckpt) and any(n.startswith("step-") for n in os.listdir(ckpt))):
            assert time.monotonic() < deadline and first.poll() is None, "the first run wrote no checkpoint"
            time.sleep(0.2)
        second = train(1, tmp_path, "--steps", "5", "--checkpoint-dir", ckpt)
        assert second.returncode == 2
        assert f"is in use by another run (PID {first.pid} on host " in one_line(second)
    finally:
        first.send_signal(2)  # SIGINT: checkpoint and stop
        output = first.communicate(timeout=60)[0]
    assert first.returncode == 75, output
    assert "checkpoint at step" in output


def test_launch_does_not_restart_what_a_restart_cannot_cure(tmp_path):
    cmd = [sys.executable, "-m", "ringtrain", "launch", "-n", "2", "--max-restarts", "3", "--", "train", *TINY,
           "--data", str(tmp_path / "missing.txt"), "--out-dir", str(tmp_path / "out")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout.count("launch: attempt") == 2  # "attempt 1: <command>", then "attempt 1 ended with"
    assert "attempt 1 ended with exit code 2 (bad input; see the message above); not restarting" in out.stdout
    assert f"ringtrain: --data {tmp_path / 'missing.txt'}: no such file or directory" in out.stderr
