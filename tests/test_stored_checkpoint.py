"""Checkpoints written before the house's third pass load and resume bit for bit (tests/data/checkpoint_0ecf9af).

Each stored step-2 checkpoint is resumed to step 4 at 2 ranks by today's
code; the losses of steps 3 and 4 must equal those the old code logged when it
ran on from the same checkpoint (its metrics.jsonl, stored beside it).
"""
import json
import os
import shutil

import pytest

from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORED = os.path.join(ROOT, "tests", "data", "checkpoint_0ecf9af")
FLAGS = ["--width", "32", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "2",
         "--eval-windows", "4", "--sample-tokens", "0", "--log-every", "1000", "--eval-every", "0", "--steps", "4",
         "--onebit-warmup", "1"]


def losses(path: str) -> dict:
    return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if "loss" in r}


@pytest.mark.parametrize("optimizer", ["adamw", "onebit-adam"])
def test_a_stored_checkpoint_resumes_to_the_old_runs_losses(tmp_path, optimizer):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(os.path.join(STORED, optimizer, "step-00000002"), ckpt / "step-00000002")
    # The corpus is the same bytes at another path (and modification time): say so, as a user would.
    out = run_mpi(2, ["-m", "ringtrain", "train", *FLAGS, "--optimizer", optimizer, "--data-changed", "ok",
                      "--data", os.path.join(STORED, "corpus.txt"), "--checkpoint-dir", str(ckpt),
                      "--out-dir", str(tmp_path / "out")],
                  timeout=300, cwd=ROOT, env={**os.environ, "RINGTRAIN_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resumed from the checkpoint at step 2" in out.stdout
    old = losses(os.path.join(STORED, optimizer, "metrics.jsonl"))
    new = losses(tmp_path / "out" / "metrics.jsonl")
    assert sorted(new) == [3, 4] and all(new[s] == old[s] for s in (3, 4)), (old, new)
