"""Checkpoint store: atomic writes, verification, fallback, pruning, kill -9 at random moments."""
import json
import os
import random

import pytest
import torch
from mpi4py import MPI

from ringtrain import checkpoint
from tests.kill_trials import one_trial

SELF = MPI.COMM_SELF


def write(directory, step, keep=5):
    return checkpoint.save(str(directory), step, {"w": torch.full((100,), float(step))},
                           {"rng": torch.full((3,), step)}, SELF, keep=keep)


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
    path, manifest = checkpoint.find_latest(str(tmp_path), SELF)
    assert path.endswith("step-00000001") and manifest["step"] == 1
    assert "step-00000002 is damaged" in capfd.readouterr().err


def test_no_valid_checkpoint_means_none(tmp_path):
    assert checkpoint.find_latest(str(tmp_path / "missing"), SELF) == (None, None)
    os.makedirs(tmp_path / "step-00000009.tmp-abc")  # a killed writer's leftovers
    assert checkpoint.find_latest(str(tmp_path), SELF) == (None, None)


def test_only_the_newest_k_are_kept_and_leftovers_go(tmp_path):
    os.makedirs(tmp_path / "step-00000001.tmp-dead")
    for step in range(1, 6):
        write(tmp_path, step, keep=2)
    assert sorted(os.listdir(tmp_path)) == ["step-00000004", "step-00000005"]


class NotATensor:
    """Pickled by reference to this module: torch.load(weights_only=True) must refuse it."""


def test_loading_refuses_pickled_code(tmp_path):
    path = checkpoint.save(str(tmp_path), 1, {"obj": NotATensor()}, {}, SELF)
    manifest = checkpoint.verify(path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        checkpoint.load_part(path, "replicated.pt", manifest)


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
