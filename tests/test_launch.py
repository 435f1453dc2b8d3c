"""``launch``: which exit codes it restarts, what it says each means, and where it says a restart resumes.

A fake mpiexec (a shell script given as --mpiexec) stands in for the job, so
each run costs one supervisor start and no training. The codes a real
mpiexec returns for a killed rank were measured (fault/exit_codes.py);
test_fault_tolerance.py checks SIGKILL's on a real job.
"""
import os
import subprocess
import sys

import pytest

from ringtrain.fault.supervise import describe_exit, newest_checkpoint, restart_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Exits with $CODES' first word and keeps the rest for the next attempt; makes $MAKE if set.
FAKE = """#!/bin/sh
set -- $(cat "$CODES")
code=$1
shift
echo "$*" > "$CODES"
[ -n "$MAKE" ] && mkdir -p "$MAKE" && echo {} > "$MAKE/MANIFEST.json"
exit $code
"""


def launch(tmp_path, codes: str, *job: str, make: str = "", restarts: int = 1) -> subprocess.CompletedProcess:
    fake = tmp_path / "mpiexec"
    fake.write_text(FAKE)
    fake.chmod(0o755)
    (tmp_path / "codes").write_text(codes)
    env = {**os.environ, "CODES": str(tmp_path / "codes"), "MAKE": make}
    return subprocess.run([sys.executable, "-m", "ringtrain", "launch", "-n", "2", "--max-restarts", str(restarts),
                           "--mpiexec", str(fake), "--", *job], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("code", [2, 3, 75])
def test_what_a_restart_cannot_cure_is_not_restarted(tmp_path, code):
    out = launch(tmp_path, f"{code} 0", "train", "--checkpoint-dir", str(tmp_path / "ckpt"), restarts=3)
    assert out.returncode == code, out.stdout + out.stderr
    assert out.stdout.count("launch: attempt") == 2, out.stdout  # its command line, then how it ended
    assert f"attempt 1 ended with {describe_exit(code)}; not restarting" in out.stdout


def test_a_killed_rank_is_restarted_from_the_newest_checkpoint_the_directory_holds(tmp_path):
    ckpt = tmp_path / "ckpt"
    os.makedirs(ckpt / "step-00000050")  # no manifest: incomplete, not counted
    os.makedirs(ckpt / "step-00000060.tmp-host-1-0123abcd")
    out = launch(tmp_path, "9 137 0", "train", f"--checkpoint-dir={ckpt}", make=str(ckpt / "step-00000040"),
                 restarts=2)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if "ended with" in line]
    assert lines == [
        f"launch: attempt 1 ended with {describe_exit(9)}; restarting in 1 s (restart 1 of 2) from the checkpoint at "
        f"step 40 in {ckpt}",
        f"launch: attempt 2 ended with {describe_exit(137)}; restarting in 2 s (restart 2 of 2) from the checkpoint "
        f"at step 40 in {ckpt}"]
    assert "a rank was killed by SIGKILL" in lines[0] and "a rank was killed by SIGKILL" in lines[1]


def test_a_restart_before_any_checkpoint_says_it_starts_from_step_0(tmp_path):
    out = launch(tmp_path, "76 0", "train", "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert (f"restarting in 1 s (restart 1 of 1) from step 0: no checkpoint in {tmp_path / 'ckpt'} yet"
            in out.stdout)
    assert "latest checkpoint" not in out.stdout


def test_where_each_kind_of_train_command_restarts(tmp_path):
    assert restart_point(["train", "--steps", "9"]) == "step 0 (train without --checkpoint-dir keeps no checkpoints)"
    assert restart_point(["--steps", "9", "--checkpoint-dir", "c", "--resume", "none"]) == "step 0 (--resume none)"
    assert restart_point(["train", "--checkpoint-dir", "c", "--resume", "c/step-00000010"]) == \
        "the checkpoint c/step-00000010 (--resume)"
    assert restart_point(["bench", "allreduce"]) is None
    assert newest_checkpoint(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("code, words", [
    (0, "exit code 0"), (1, "an error on some rank"), (2, "bad input"), (3, "the loss diverged"),
    (75, "stopped by a signal after a checkpoint"), (76, "a collective missed its deadline"),
    (130, "a second SIGINT"), (255, "MPICH's mpiexec could not start the job, or was force-aborted"),
    # MPICH's mpiexec: the signal's number
    (9, "killed by SIGKILL: out of memory, or kill -9; MPICH"), (11, "killed by SIGSEGV"), (7, "killed by SIGBUS"),
    (6, "killed by SIGABRT"), (15, "killed by SIGTERM"),
    # Open MPI's mpirun: 128 + the signal
    (137, "killed by SIGKILL: out of memory, or kill -9; Open MPI"), (139, "killed by SIGSEGV"),
    (135, "killed by SIGBUS"), (134, "killed by SIGABRT"), (143, "killed by SIGTERM"), (131, "killed by SIGQUIT"),
    (-9, "killed by signal SIGKILL"), (200, "exit code 200"),
])
def test_every_measured_code_is_named(code, words):
    said = describe_exit(code)
    assert said.startswith(f"exit code {code}" if code >= 0 else "killed by signal")
    assert words in said, said
