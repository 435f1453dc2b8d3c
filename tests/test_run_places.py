"""One run per place: the --out-dir and --checkpoint-dir locks, metrics rows that name their run, a full disk.

Whole runs under mpiexec with a tiny GPT, each under a timeout, plus the lock itself in-process.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from ringtrain.checkpoint import DirectoryLock, LockLost
from tests.launch import mpiexec_path
from tests.test_bad_runs import ROOT, TINY, one_line, train

HOLD = ("import sys, time\nfrom ringtrain.checkpoint import DirectoryLock\n"
        "lock = DirectoryLock(sys.argv[1]); print('locked', flush=True); time.sleep(60)")


def rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def start(tmp_path, name, *flags):
    """A longer tiny run in the background: mpiexec -n 2 ... train, its output in tmp_path/name.log."""
    log = open(tmp_path / f"{name}.log", "w")
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "ringtrain", "train", *TINY, *flags]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, job, limit=120):
    t0 = time.monotonic()
    while not predicate():
        assert job.poll() is None, "the job ended before the moment the test waits for"
        assert time.monotonic() - t0 < limit, "timed out waiting"
        time.sleep(0.1)


def test_a_second_run_on_the_same_out_dir_is_refused_and_every_row_names_its_run(tmp_path):
    out = str(tmp_path / "out")
    first = start(tmp_path, "first", "--steps", "2000", "--out-dir", out, "--checkpoint-dir", str(tmp_path / "c1"))
    try:
        metrics = os.path.join(out, "metrics.jsonl")
        wait_for(lambda: os.path.exists(metrics) and len(rows(metrics)) > 2, first)
        second = train(2, tmp_path, "--steps", "3", "--checkpoint-dir", str(tmp_path / "c2"))
        assert second.returncode == 2
        assert f"--out-dir {out} is in use by another run (PID" in one_line(second)
    finally:
        first.kill()
        first.wait(timeout=30)
    assert not os.path.exists(tmp_path / "c2") or os.listdir(tmp_path / "c2") == [], "the refused run wrote there"
    steps = [r["step"] for r in rows(metrics) if "loss" in r]
    assert steps == sorted(steps) and len({r["run"] for r in rows(metrics)}) == 1


def test_a_resumed_run_starts_on_a_fresh_line_after_a_cut_off_one(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    assert train(1, tmp_path, "--steps", "2", "--checkpoint-dir", ckpt).returncode == 0
    metrics = tmp_path / "out" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"time": 1, "step": 3, "lo')  # a kill in the middle of a row
    assert train(1, tmp_path, "--steps", "4", "--checkpoint-dir", ckpt).returncode == 0
    lines = metrics.read_text().splitlines()
    cut = lines.index('{"time": 1, "step": 3, "lo')
    later = [json.loads(line) for line in lines[cut + 1:]]
    assert later[0]["event"] == "start" and later[0]["step"] == 2
    runs = [json.loads(line)["run"] for line in lines[:cut]], [r["run"] for r in later]
    assert len(set(runs[0])) == 1 and len(set(runs[1])) == 1 and runs[0][0] != runs[1][0]


def test_a_full_out_dir_is_one_line_naming_the_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.symlink("/dev/full", out / "metrics.jsonl")  # every write: ENOSPC, as on a full disk
    result = train(2, tmp_path, "--steps", "2")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("ringtrain:")]
    assert len(said) == 1 and f"writing {out}/metrics.jsonl failed: No space left on device (errno 28)" in said[0]


def test_out_dir_and_checkpoint_dir_in_one_place_share_one_lock(tmp_path):
    place = str(tmp_path / "run")
    assert train(2, tmp_path, "--steps", "2", "--out-dir", place, "--checkpoint-dir", place).returncode == 0
    assert sorted(os.listdir(place)) == ["metrics.jsonl", "ringtrain.lock", "step-00000002"]


def test_a_removed_lock_is_taken_again_and_a_run_that_took_it_is_never_written_beside(tmp_path):
    d = str(tmp_path / "ckpt")
    os.makedirs(d)  # as preflight's probe does
    lock = DirectoryLock(d)
    shutil.rmtree(d)
    assert not lock.held()
    lock.keep()  # the directory and the lock come back, held by us
    assert lock.held()
    holder = subprocess.run([sys.executable, "-c", HOLD, d], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert holder.returncode != 0 and "is in use by another run" in holder.stderr
    shutil.rmtree(d)
    os.makedirs(d)  # a second run's preflight
    other = subprocess.Popen([sys.executable, "-c", HOLD, d], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(LockLost, match="its lock file was removed during this run, and --checkpoint-dir .* is "
                                           f"in use by another run \\(PID {other.pid}"):
            lock.keep()
    finally:
        other.kill()
        other.wait()
    lock.close()


def test_a_deleted_checkpoint_dir_never_gets_two_writers(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    first = start(tmp_path, "first", "--steps", "2000", "--out-dir", str(tmp_path / "o1"), "--checkpoint-dir", ckpt,
                  "--checkpoint-every", "5")
    try:
        # Any complete checkpoint: retention prunes step-00000005 itself once three later ones exist, so waiting
        # for that one name could miss it and wait out the whole run.
        wait_for(lambda: os.path.isdir(ckpt) and any(re.fullmatch(r"step-\d{8}", n) for n in os.listdir(ckpt)),
                 first)
        while os.path.exists(ckpt):  # the run may write into it meanwhile ("Directory not empty"): again
            shutil.rmtree(ckpt, ignore_errors=True)
        wait_for(lambda: os.path.isdir(ckpt) and any(n.startswith("step-") for n in os.listdir(ckpt)), first)
        second = train(2, tmp_path, "--steps", "3", "--checkpoint-dir", ckpt, "--out-dir", str(tmp_path / "o2"))
    finally:
        first.kill()
        first.wait(timeout=30)
    assert second.returncode == 2 and "is in use by another run" in one_line(second)
    assert not [n for n in os.listdir(ckpt) if n.startswith("replaced-")]


def test_an_out_dir_lock_names_its_flag_and_leaves_checkpoint_leftovers_alone(tmp_path):
    leftover = tmp_path / "step-00000001.tmp-otherhost-1-abcd"
    leftover.mkdir()
    (tmp_path / "ringtrain.lock").write_text(json.dumps({"host": "otherhost", "pid": 1, "writer": "otherhost-1"}))
    lock = DirectoryLock(str(tmp_path), "--out-dir", leftovers=False)
    child = subprocess.run([sys.executable, "-c", HOLD.replace("(sys.argv[1])", "(sys.argv[1], '--out-dir')"),
                            str(tmp_path)], capture_output=True, text=True, timeout=60, cwd=ROOT)
    lock.close()
    assert child.returncode != 0 and f"--out-dir {tmp_path} is in use by another run" in child.stderr
    assert leftover.exists()
