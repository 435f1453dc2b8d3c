"""Checkpoint store: atomic writes, verification, fallback, pruning, kill -9 at random moments."""
import json
import os
import random
import socket
import subprocess
import sys

import pytest
import torch
from mpi4py import MPI

from ringtrain import checkpoint
from ringtrain.fault.errors import UsageError
from benchmarks.kill_trials import one_trial

SELF = MPI.COMM_SELF


def write(directory, step, keep=5, lineage="a"):
    return checkpoint.save(str(directory), step, {"w": torch.full((100,), float(step))},
                           {"rng": torch.full((3,), step)}, SELF, keep=keep, lineage=lineage)


def test_save_writes_a_verified_manifest(tmp_path):
    path = write(tmp_path, 3)
    manifest = checkpoint.verify(path)
    assert manifest["step"] == 3 and manifest["world_size"] == 1
    assert set(manifest["files"]) == {"replicated.pt", "rank-00000.pt"}
    assert checkpoint.load_part(path, "replicated.pt", manifest)["w"][0] == 3.0
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete the manifest", "garble the manifest"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, capfd, damage):
    write(tmp_path, 1)
    newest = write(tmp_path, 2)
    target = os.path.join(newest, "replicated.pt")
    if damage == "flip a byte":
        data = bytearray(open(target, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(target, "wb").write(bytes(data))
    elif damage == "truncate":
        os.truncate(target, os.path.getsize(target) // 2)
    elif damage == "delete the manifest":
        os.remove(os.path.join(newest, checkpoint.store.MANIFEST))
    else:
        open(os.path.join(newest, checkpoint.store.MANIFEST), "w").write("{not json")
    left = {name: open(os.path.join(newest, name), "rb").read() for name in os.listdir(newest)}
    path, manifest = checkpoint.find_latest(str(tmp_path), SELF)
    assert path.endswith("step-00000001") and manifest["step"] == 1
    assert "step-00000002 is damaged" in capfd.readouterr().err
    # Moved aside, never deleted: what the damage left is all still there, byte for byte.
    aside = tmp_path / "damaged-step-00000002"
    assert {name: open(aside / name, "rb").read() for name in os.listdir(aside)} == left


def test_no_valid_checkpoint_means_none(tmp_path):
    assert checkpoint.find_latest(str(tmp_path / "missing"), SELF) == (None, None)
    os.makedirs(tmp_path / "step-00000009.tmp-abc")  # a killed writer's leftovers
    assert checkpoint.find_latest(str(tmp_path), SELF) == (None, None)


def _dead_pid():
    """A PID that no process has right now."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_the_newest_k_are_kept_and_only_provably_dead_leftovers_go(tmp_path):
    host = socket.gethostname()
    dead = f"step-00000001.tmp-{host}-{_dead_pid()}-0123abcd"      # a killed writer on this host
    mine = f"step-00000002.tmp-{host}-{os.getpid()}-0123abcd"      # this process's own
    alive = f"step-00000003.tmp-{host}-1-0123abcd"                 # PID 1 lives: maybe still writing
    remote = f"step-00000004.tmp-otherhost-77-0123abcd"            # another host: cannot tell
    foreign = "step-00000005.tmp-dead"                              # not our naming: not ours to judge
    for name in (dead, mine, alive, remote, foreign):
        os.makedirs(tmp_path / name)
    for step in range(1, 6):
        write(tmp_path, step, keep=2)
    assert sorted(os.listdir(tmp_path)) == sorted([alive, remote, foreign, "step-00000004", "step-00000005"])


def test_pruning_touches_only_its_own_lineage(tmp_path):
    for step in (1, 2, 3):
        write(tmp_path, step, lineage="old")
    for step in (4, 5, 6):
        write(tmp_path, step, keep=2, lineage="new")
    assert sorted(n for n in os.listdir(tmp_path)) == [f"step-0000000{s}" for s in (1, 2, 3, 5, 6)]


def test_pruning_keeps_k_that_verify_and_moves_damaged_ones_aside(tmp_path):
    for step in (1, 2, 3):
        write(tmp_path, step)
    os.truncate(tmp_path / "step-00000003" / "replicated.pt", 10)  # the newest goes bad on disk
    write(tmp_path, 4, keep=2)
    # 4 and 2 verify and are kept; 3 is moved aside, not counted; only 1 is deleted.
    assert sorted(os.listdir(tmp_path)) == ["damaged-step-00000003", "step-00000002", "step-00000004"]


def test_a_checkpoint_of_the_same_step_is_kept_aside_not_overwritten(tmp_path):
    first = write(tmp_path, 7)
    data = open(os.path.join(first, "replicated.pt"), "rb").read()
    write(tmp_path, 7)
    assert open(tmp_path / "replaced-step-00000007" / "replicated.pt", "rb").read() == data


def test_checkpoints_that_none_can_load_are_refused_not_buried(tmp_path, capfd):
    for step in (1, 2):
        write(tmp_path, step)
        os.remove(tmp_path / f"step-0000000{step}" / checkpoint.store.MANIFEST)
    with pytest.raises(UsageError, match="holds checkpoints but none can be loaded: step-00000002, step-00000001"):
        checkpoint.find_latest(str(tmp_path), SELF)
    assert sorted(os.listdir(tmp_path)) == ["damaged-step-00000001", "damaged-step-00000002"]
    # Asked again, the damaged ones from before still stop a silent fresh start.
    with pytest.raises(UsageError, match="pass --resume none"):
        checkpoint.find_latest(str(tmp_path), SELF)


def test_a_fresh_start_moves_old_checkpoints_out_of_the_way(tmp_path):
    for step in (3, 4):
        write(tmp_path, step)
    moved = checkpoint.supersede(str(tmp_path))
    assert os.path.basename(moved).startswith("superseded-")
    assert sorted(os.listdir(moved)) == ["step-00000003", "step-00000004"]
    assert checkpoint.find_latest(str(tmp_path), SELF) == (None, None)
    assert checkpoint.supersede(str(tmp_path)) is None


class NotATensor:
    """Pickled by reference to this module: torch.load(weights_only=True) must refuse it."""


def test_loading_refuses_pickled_code_and_falls_back(tmp_path, capfd):
    good = write(tmp_path, 1)
    path = checkpoint.save(str(tmp_path), 2, {"obj": NotATensor()}, {}, SELF)
    manifest = checkpoint.verify(path)  # the checksums match: only unpickling betrays it
    with pytest.raises(checkpoint.CheckpointError, match="does not unpickle with weights_only=True"):
        checkpoint.load_part(path, "replicated.pt", manifest)
    assert checkpoint.find_latest(str(tmp_path), SELF)[0] == good
    assert "damaged-step-00000002" in capfd.readouterr().err


def test_a_file_changed_after_verification_is_refused(tmp_path):
    path = write(tmp_path, 1)
    manifest = checkpoint.verify(path)
    manifest = json.loads(json.dumps(manifest))
    manifest["files"]["replicated.pt"]["sha256"] = "0" * 64
    with pytest.raises(checkpoint.CheckpointError, match="changed since it was verified"):
        checkpoint.load_part(path, "replicated.pt", manifest)


def test_kill_9_at_random_moments_never_leaves_a_checkpoint_that_loads_wrongly(tmp_path):
    rng = random.Random(2026)
    wrong = [w for w in (one_trial(str(tmp_path / f"trial{i}"), rng) for i in range(6)) if w]
    assert wrong == []
    # The trials must actually have produced checkpoints to check.
    assert sum(bool(checkpoint.find_latest(str(tmp_path / f"trial{i}"), SELF)[0]) for i in range(6)) >= 5


HOLDER = """
import sys, time
from ringtrain.checkpoint import DirectoryLock
lock = DirectoryLock(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def test_a_dead_holders_leftovers_on_another_host_go_when_its_lock_is_taken_over(tmp_path):
    (tmp_path / "ringtrain.lock").write_text('{"host": "otherhost", "pid": 77, "writer": "otherhost-77", "since": 0}')
    for name in ("step-00000003.tmp-otherhost-77-0123abcd", "step-00000004.tmp-otherhost-78-0123abcd"):
        os.makedirs(tmp_path / name)
    lock = checkpoint.DirectoryLock(str(tmp_path))
    lock.close()
    # Only the dead holder's: nothing proves PID 78 on otherhost dead, so its directory stays.
    assert sorted(os.listdir(tmp_path)) == ["ringtrain.lock", "step-00000004.tmp-otherhost-78-0123abcd"]


def test_a_second_run_is_refused_by_the_lock_and_a_dead_holder_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(UsageError, match=f"in use by another run \\(PID {holder.pid} on host "
                                             f"{socket.gethostname()}, since "):
            checkpoint.DirectoryLock(str(tmp_path))
    finally:
        holder.kill()  # kill -9: it never unlocks, the kernel does
        holder.wait()
    lock = checkpoint.DirectoryLock(str(tmp_path))
    try:
        assert lock.taken_over() == (f"took over the lock of PID {holder.pid} on host {socket.gethostname()}, "
                                     f"since {lock.taken_over().split('since ')[1]}")
        assert str(holder.pid) in lock.taken_over() and "no longer running" in lock.taken_over()
        with pytest.raises(UsageError, match=f"PID {os.getpid()}"):  # a second lock in the same process too
            checkpoint.DirectoryLock(str(tmp_path))
    finally:
        lock.close()
    again = checkpoint.DirectoryLock(str(tmp_path))
    assert again.taken_over() is None  # a clean close leaves no holder behind
    again.close()
