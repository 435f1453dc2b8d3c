"""The failure matrix: generated faults, each ending in one of two ways and never a third.

Dimensions: data damage x where it happens, resource limits x the flags that drive memory, environment
variables x bad values, and races on shared directories. Every case is a whole run (mpiexec -n 1 or 2,
under a timeout) that must end either

- **refused**: a documented exit code (2, 3, 75, 76), exactly one ``ringtrain:`` line on stderr and no
  traceback; or
- **trained**: exit code 0 and the run's ``end`` row in metrics.jsonl, with the same losses as the same
  run on undamaged input where the case says so.

Run with ``-v`` to see each case's id; the closing note counts them.
"""
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

import pytest

from ringtrain.environment import VARIABLES, problem
from tests.launch import mpiexec_path
from tests.test_bad_runs import ROOT, TINY

DOCUMENTED = {2, 3, 75, 76}


def run(tmp_path, n, *flags, env=None, limit_gb=None, timeout=240, out="out"):
    """``train`` with the tiny GPT on ``n`` ranks; the CompletedProcess, with its out dir as ``.out``."""
    out_dir = str(tmp_path / out)
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "ringtrain", "train", *TINY, "--out-dir", out_dir,
           *flags]

    def limit():
        if limit_gb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (int(limit_gb * 2**30),) * 2)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env={**os.environ, **(env or {})}, preexec_fn=limit)
    result.out = out_dir
    return result


def losses(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def ending(result) -> str:
    """'refused' or 'trained'; fails the test for any third way (a traceback, two lines, an undocumented code)."""
    said = [line for line in result.stderr.splitlines() if line.startswith("ringtrain:")
            and "warning" not in line]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if result.returncode == 0:
        with open(os.path.join(result.out, "metrics.jsonl")) as f:
            assert any(json.loads(line).get("event") == "end" for line in f), "exit 0 without the end row"
        return "trained"
    assert result.returncode in DOCUMENTED, (result.returncode, result.stderr[-3000:])
    # One line: the agreed verdict (rank 0 prints it), or one per rank that found the fault itself.
    ranks = [line.split(":")[1] for line in said if line.startswith("ringtrain: rank ")]
    assert len(said) == 1 or (len(ranks) == len(said) == len(set(ranks))), result.stderr[-3000:]
    return "refused"


# --- resource limits x the flags that drive memory ---------------------------------------------------------
MEMORY_FLAGS = [("--batch-size", "4", "20000000"), ("--eval-windows", "8", "400000000"),
                ("--width", "32", "200000"), ("--layers", "1", "300000"), ("--context", "16", "3000000")]
LIMITS = {"node": None, "ulimit-v-6G": 6}


@pytest.mark.parametrize("limit", LIMITS)
@pytest.mark.parametrize("flag, small, large", MEMORY_FLAGS, ids=[f[0][2:] for f in MEMORY_FLAGS])
def test_resources(tmp_path, flag, small, large, limit):
    assert ending(run(tmp_path, 1, "--steps", "2", flag, small, limit_gb=LIMITS[limit])) == "trained"
    refused = run(tmp_path, 1, "--steps", "2", flag, large, limit_gb=LIMITS[limit])
    assert ending(refused) == "refused" and refused.returncode == 2
    assert "ringtrain: memory: " in refused.stderr


# --- environment variables x bad values --------------------------------------------------------------------
BAD_VALUES = ["abc", "-5", "", "nan"]


@pytest.mark.parametrize("value", BAD_VALUES, ids=repr)
@pytest.mark.parametrize("name", sorted(VARIABLES))
def test_environment(tmp_path, name, value):
    if problem(name, {name: value}) is None:  # some variables take such a value (a path, a command)
        pytest.skip(f"{name}={value!r} is allowed")
    result = run(tmp_path, 1, "--steps", "1", env={name: value}, timeout=120)
    assert ending(result) == "refused" and result.returncode == 2
    assert name in result.stderr


# --- races on shared directories ---------------------------------------------------------------------------
def background(tmp_path, name, *flags):
    log = open(tmp_path / f"{name}.log", "w")
    cmd = [mpiexec_path(), "-n", "2", sys.executable, "-m", "ringtrain", "train", *TINY, "--steps", "3000", *flags]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def when(predicate, job, limit=120):
    import time
    t0 = time.monotonic()
    while not predicate():
        assert job.poll() is None and time.monotonic() - t0 < limit
        time.sleep(0.05)


def has_rows(path, k=3):
    return os.path.exists(path) and sum(1 for _ in open(path)) >= k


RACES = {
    # name: (first run's flags, what happens while it runs, second run's flags)
    "same-out-dir": (["--out-dir", "{t}/out"], None, ["--out-dir", "{t}/out", "--checkpoint-dir", "{t}/c2"]),
    "same-checkpoint-dir": (["--out-dir", "{t}/o1", "--checkpoint-dir", "{t}/ckpt"], None,
                            ["--out-dir", "{t}/o2", "--checkpoint-dir", "{t}/ckpt"]),
    "out-dir-is-the-other-runs-checkpoint-dir": (["--out-dir", "{t}/o1", "--checkpoint-dir", "{t}/shared"], None,
                                                 ["--out-dir", "{t}/shared"]),
    "checkpoint-dir-nested-in-the-other-runs-out-dir": (["--out-dir", "{t}/o1", "--checkpoint-dir", "{t}/o1/ckpt"],
                                                        None, ["--out-dir", "{t}/o2", "--checkpoint-dir",
                                                               "{t}/o1/ckpt"]),
    "checkpoint-dir-deleted-then-a-second-run": (["--out-dir", "{t}/o1", "--checkpoint-dir", "{t}/ckpt",
                                                  "--checkpoint-every", "5"], "rm {t}/ckpt",
                                                 ["--out-dir", "{t}/o2", "--checkpoint-dir", "{t}/ckpt"]),
    "out-dir-deleted-then-a-second-run": (["--out-dir", "{t}/out", "--checkpoint-dir", "{t}/c1"], "rm {t}/out",
                                          ["--out-dir", "{t}/out", "--checkpoint-dir", "{t}/c2"]),
}


def remove_while_written(path: str, seconds: float = 30.0) -> None:
    """``rm -rf`` of a directory the running job may be writing into: rmtree fails ("Directory not empty") when a
    file appears between its listing and its rmdir, so try again, as a user would, until it is gone."""
    deadline = time.monotonic() + seconds
    while os.path.lexists(path):
        try:
            shutil.rmtree(path)
            return  # gone once: what the job makes there afterwards is its recovery, left alone
        except OSError:  # a file came, or went, under it meanwhile
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.mark.parametrize("race", RACES)
def test_shared_directories(tmp_path, race):
    first_flags, meanwhile, second_flags = ([a.format(t=tmp_path) for a in flags] if isinstance(flags, list)
                                            else flags for flags in RACES[race])
    out1 = first_flags[first_flags.index("--out-dir") + 1]
    first = background(tmp_path, "first", *first_flags)
    try:
        when(lambda: has_rows(os.path.join(out1, "metrics.jsonl")), first)
        if meanwhile:
            victim = meanwhile.split()[1].format(t=tmp_path)
            remove_while_written(victim)
            # the first run notices at its next write there (a checkpoint, or a metrics row) and re-takes it
            when(lambda: os.path.exists(os.path.join(victim, "ringtrain.lock")), first)
        second = run(tmp_path, 2, "--steps", "3", *second_flags, timeout=120, out="unused")
    finally:
        first.kill()
        first.wait(timeout=30)
    assert ending(second) == "refused" and second.returncode == 2 and "is in use by another run" in second.stderr
    for directory in {first_flags[i + 1] for i, a in enumerate(first_flags) if a.endswith("-dir")}:
        names = os.listdir(directory) if os.path.isdir(directory) else []
        assert not [n for n in names if n.startswith("replaced-")], names  # never two writers in one place


# --- data damage x where it happens ------------------------------------------------------------------------
DAMAGE = ["truncate", "random-bytes", "append", "empty", "delete"]


def damage(path, kind, rng):
    size = os.path.getsize(path)
    if kind == "truncate":
        os.truncate(path, size // 3)
    elif kind == "random-bytes":
        with open(path, "r+b") as f:
            f.seek(size // 2)
            f.write(rng.randbytes(min(50_000, size // 4)))
    elif kind == "append":
        with open(path, "ab") as f:
            f.write(b"more text, appended later\n" * 100)
    elif kind == "empty":
        os.truncate(path, 0)
    elif kind == "delete":
        os.remove(path)


def corpus(tmp_path):
    data = tmp_path / "corpus"
    data.mkdir()
    rng = random.Random(7)
    for i in range(3):
        (data / f"part{i}.txt").write_bytes(bytes(rng.choice(b"abcdefgh \n") for _ in range(120_000)))
    return data


def cache_files(cache):
    return sorted(str(cache / n) for n in os.listdir(cache))


@pytest.mark.parametrize("kind", DAMAGE)
def test_data_in_the_cache(tmp_path, kind):
    data, cache = corpus(tmp_path), tmp_path / "cache"
    env = {"RINGTRAIN_CACHE": str(cache)}
    clean = run(tmp_path, 2, "--steps", "3", "--data", str(data), env=env, out="clean")
    assert ending(clean) == "trained"
    for path in cache_files(cache):
        damage(path, kind, random.Random(3))
    again = run(tmp_path, 2, "--steps", "3", "--data", str(data), env=env, out="again")
    assert ending(again) == "trained" and losses(again.out) == losses(clean.out)  # rebuilt, never used damaged


@pytest.mark.parametrize("kind", DAMAGE)
def test_data_in_the_source_between_runs(tmp_path, kind):
    data, cache = corpus(tmp_path), tmp_path / "cache"
    env, ckpt = {"RINGTRAIN_CACHE": str(cache)}, str(tmp_path / "ckpt")
    assert ending(run(tmp_path, 2, "--steps", "2", "--data", str(data), "--checkpoint-dir", ckpt, env=env)) == "trained"
    damage(str(data / "part1.txt"), kind, random.Random(4))
    resumed = run(tmp_path, 2, "--steps", "4", "--data", str(data), "--checkpoint-dir", ckpt, env=env)
    assert ending(resumed) == "refused" and resumed.returncode == 2 and "part1.txt" in resumed.stderr


# Not "random-bytes": a block already verified in this process is read again unverified (verifying every read
# would cost a CRC per window); the next start verifies the whole cache again and rebuilds it.
@pytest.mark.parametrize("kind", ["truncate", "empty"])
def test_data_in_the_cache_mid_run(tmp_path, kind):
    data, cache = corpus(tmp_path), tmp_path / "cache"
    env = {"RINGTRAIN_CACHE": str(cache)}
    job = subprocess.Popen([mpiexec_path(), "-n", "2", sys.executable, "-m", "ringtrain", "train", *TINY, "--steps",
                            "3000", "--data", str(data), "--out-dir", str(tmp_path / "out")],
                           cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        when(lambda: has_rows(str(tmp_path / "out" / "metrics.jsonl"), 5), job)
        for path in cache_files(cache):
            if path.endswith(".u8"):
                damage(path, kind, random.Random(5))
        stdout, stderr = job.communicate(timeout=120)
    finally:
        job.kill()
    result = subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)
    result.out = str(tmp_path / "out")
    assert ending(result) == "refused" and result.returncode == 2 and "cache" in stderr
