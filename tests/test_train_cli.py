"""`python -m ringtrain train` end to end under mpiexec: the demo, a plug-in model, bad flags."""
import json
import os

import pytest

from ringtrain.__main__ import main
from tests.launch import run_mpi

ROOT = os.path.dirname(os.path.dirname(__file__))


def read_metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_default_gpt_trains_and_reports(tmp_path):
    out = run_mpi(2, ["-m", "ringtrain", "train", "--steps", "30", "--log-every", "10", "--sample-tokens", "40",
                      "--out-dir", str(tmp_path)], timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "2 ranks x 1 torch threads" in out.stdout
    assert "step 30/30" in out.stdout and "sample:\ndef " in out.stdout
    rows = read_metrics(tmp_path)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 31))
    end = rows[-1]
    assert end["event"] == "end" and end["end_loss"] < end["start_loss"] - 1.0
    assert end["val_loss"] < end["start_val_loss"] - 1.0


def test_plug_in_model_trains(tmp_path):
    out = run_mpi(2, ["-m", "ringtrain", "train", "--model", "tests.plugin_model:build", "--steps", "40",
                      "--lr", "0.01", "--out-dir", str(tmp_path)], timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    params = 256 * 32 + (32 * 32 + 32) + (32 * 256 + 256)  # embedding, hidden, output
    assert f"tests.plugin_model:build with {params:,} parameters" in out.stdout
    end = read_metrics(tmp_path)[-1]
    assert end["end_loss"] < end["start_loss"] - 0.5


@pytest.mark.parametrize("flags, words", [
    (["--steps", "0"], "steps (--steps) = 0: not allowed — a whole number >= 1"),
    (["--optimizer", "lamb"], "optimizer (--optimizer) = 'lamb': not allowed — one of adamw, sgd"),
    (["--width", "100", "--heads", "3"], "width (--width) = 100: not allowed — a multiple of heads (3)"),
    (["--compression", "zip"], "compression (--compression): compression 'zip': unknown compressor 'zip'"),
])
def test_bad_flags_are_one_line_with_exit_code_2(flags, words, capsys):
    # In-process: the checks run before MPI is needed (tests/test_bad_input.py has the full matrix).
    with pytest.raises(SystemExit) as stop:
        main(["train", *flags, "--out-dir", os.devnull])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith(f"ringtrain: {words}")


def test_under_mpiexec_only_rank_0_says_it(tmp_path):
    out = run_mpi(2, ["-m", "ringtrain", "train", "--grad-clip", "nan", "--out-dir", str(tmp_path)], timeout=120,
                  cwd=ROOT)
    # Both ranks refuse, rank 0 alone says so: one line, no traceback, no MPI abort banner.
    assert out.returncode == 2
    assert out.stderr == "ringtrain: grad_clip (--grad-clip) = nan: not allowed — a finite number >= 0\n"


def test_options_without_the_train_command_train(tmp_path):
    # `python -m ringtrain --steps 3` is the default job with options, not an unknown command.
    out = run_mpi(1, ["-m", "ringtrain", "--steps", "3", "--sample-tokens", "0", "--out-dir", str(tmp_path)],
                  timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3]
    with pytest.raises(SystemExit) as stop:
        main(["--steps", "0", "--out-dir", str(tmp_path)])
    assert stop.value.code == 2


def test_auto_settings_are_chosen_once_and_kept_on_resume(tmp_path):
    args = ["-m", "ringtrain", "--steps", "6", "--compression", "auto", "--bucket-cap-mb", "auto",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--sample-tokens", "0", "--out-dir", str(tmp_path)]
    first = run_mpi(2, [*args, "--stop-after", "3"], timeout=300, cwd=ROOT)
    assert first.returncode == 75, first.stderr
    # Whatever it chose on this machine: a compression, or 1-bit Adam in place of AdamW.
    assert "autotune: compression " in first.stdout or "autotune: optimizer onebit-adam" in first.stdout
    assert "averaging all gradients: none" in first.stdout
    second = run_mpi(2, args, timeout=300, cwd=ROOT)
    assert second.returncode == 0, second.stderr
    assert "as chosen before the checkpoint" in second.stdout
    starts = [r for r in read_metrics(tmp_path) if r.get("event") == "start"]
    assert len(starts) == 2
    chosen = [(r["compression"], r["bucket_cap_mb"], r["optimizer"]) for r in starts]
    assert chosen[0] == chosen[1]
    assert starts[0]["bucket_cap_mb"] in (1, 2, 5, 10, 25, 50, 100) and starts[0]["autotune"]["compute_s"] > 0
    with pytest.raises(SystemExit) as stop:
        main(["--bucket-cap-mb", "fast"])
    assert stop.value.code == 2


def test_a_model_that_cannot_be_imported_stops_every_rank(tmp_path):
    out = run_mpi(2, ["-m", "ringtrain", "train", "--model", "no_such_module:build", "--out-dir", str(tmp_path)],
                  timeout=120, cwd=ROOT)
    assert out.returncode == 2 and out.stderr == ("ringtrain: --model no_such_module:build: cannot import "
                                                  "no_such_module (No module named 'no_such_module') — give gpt, or "
                                                  "module:function with the module on PYTHONPATH\n")


def test_training_with_compression_checkpoints_error_feedback(tmp_path):
    ckpt = tmp_path / "ckpt"
    out = run_mpi(2, ["-m", "ringtrain", "train", "--compression", "ef+topk:ratio=0.05+lz4", "--steps", "30",
                      "--checkpoint-dir", str(ckpt), "--sample-tokens", "0", "--out-dir", str(tmp_path)],
                  timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "compression ef+topk:ratio=0.05+lz4" in out.stdout
    end = read_metrics(tmp_path)[-1]
    assert end["end_loss"] < end["start_loss"] - 1.0
    import torch
    mine = torch.load(ckpt / "step-00000030" / "rank-00001.pt", weights_only=True)
    residuals = [b["residual"] for b in mine["reducer"]["compression"]]
    assert residuals and all(r is not None and float(r.abs().sum()) > 0 for r in residuals)



def test_a_task_with_datasets_trains_through_the_cli(tmp_path):
    out = run_mpi(2, ["-m", "ringtrain", "train", "--model", "tests.plugin_model:task", "--epochs", "4",
                      "--batch-size", "10", "--lr", "0.02", "--eval-every", "10", "--loader-workers", "1",
                      "--out-dir", str(tmp_path)], timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    # 200 samples / (2 ranks x 10) = 10 steps an epoch.
    assert "200 training samples (10 micro-steps per epoch), 50 for validation | 4 epochs = 40 steps" in out.stdout
    assert "step 40/40 | epoch 4.00 |" in out.stdout and "samples/s" in out.stdout
    rows = read_metrics(tmp_path)
    assert rows[0]["steps_per_epoch"] == 10
    evals = [r for r in rows if "val_accuracy" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert evals[-1]["val_accuracy"] >= 0.9 and evals[-1]["val_loss"] < 0.5


@pytest.mark.parametrize("factory, words", [
    ("returns_a_list", "it returned a list — it must return a ringtrain.Task (model, loss_fn, datasets, ...) or a "
                       "(torch.nn.Module, loss_fn) pair"),
    ("returns_one_thing", "it returned a tuple of 1 (NextByteMLP) — it must return a ringtrain.Task"),
    ("streams_its_data", "Task.train_data is a Stream: give a map-style dataset (with __len__ and __getitem__)"),
])
def test_a_factory_that_returns_something_else_stops_every_rank(tmp_path, factory, words):
    out = run_mpi(2, ["-m", "ringtrain", "train", "--model", f"tests.plugin_model:{factory}",
                      "--out-dir", str(tmp_path)], timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith(f"ringtrain: --model tests.plugin_model:{factory}: {words}"), out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


@pytest.mark.parametrize("flags, words", [
    (["--model", "tests.plugin_model:task", "--data", "README.md"], "--data README.md: this task brings its own"),
    (["--epochs", "2"], "--epochs 2: it applies to a task with datasets"),
    (["--model", "tests.plugin_model:task", "--last-batch", "drop", "--batch-size", "150"],
     "--last-batch drop: the training dataset has 200 samples, fewer than one global batch"),
])
def test_dataset_flags_that_do_not_fit_the_task(tmp_path, flags, words):
    out = run_mpi(2, ["-m", "ringtrain", "train", *flags, "--out-dir", str(tmp_path)], timeout=120, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.startswith(f"ringtrain: {words}"), out.stderr


SMALL = ["--layers", "1", "--width", "32", "--heads", "2", "--context", "16", "--sample-tokens", "0",
         "--eval-every", "0", "--eval-windows", "8"]


def test_consolidate_joins_zero_shards_into_an_ordinary_checkpoint(tmp_path):
    import subprocess
    import sys

    import torch
    ck = tmp_path / "sharded"
    out = run_mpi(3, ["-m", "ringtrain", "train", *SMALL, "--zero", "2", "--steps", "4", "--checkpoint-dir",
                      str(ck), "--out-dir", str(tmp_path / "m0")], timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    joined = subprocess.run([sys.executable, "-m", "ringtrain", "consolidate", str(ck / "step-00000004"),
                             str(tmp_path / "one")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert joined.returncode == 0, joined.stderr
    assert "consolidated 3 shards of step 4" in joined.stdout
    state = torch.load(tmp_path / "one/step-00000004/replicated.pt", weights_only=True)
    nparams = len([k for k in state["model"] if not k.endswith("mask")])
    assert state["config"]["zero"] == 0 and len(state["optimizer"]["state"]) >= nparams - 1
    assert all("exp_avg" in s for s in state["optimizer"]["state"].values())
    # The ordinary checkpoint resumes unsharded training exactly as the sharded one does.
    losses = []
    for name, resume in (("a", tmp_path / "one/step-00000004"), ("b", ck / "step-00000004")):
        run = run_mpi(2, ["-m", "ringtrain", "train", *SMALL, "--steps", "6", "--resume", str(resume),
                          "--out-dir", str(tmp_path / name)], timeout=300, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        losses.append([r["loss"] for r in read_metrics(tmp_path / name) if "loss" in r])
    assert len(losses[0]) == 2 and losses[0] == losses[1]
    again = subprocess.run([sys.executable, "-m", "ringtrain", "consolidate", str(tmp_path / "one/step-00000004"),
                            str(tmp_path / "two")], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert again.returncode == 2 and "it is not sharded" in again.stderr


def test_a_registered_compressor_trains_from_the_command_line(tmp_path):
    """ringtrain/examples/random_k.py registers randomk and runs the command line: --compression knows it."""
    flags = ["--compression", "ef+randomk:ratio=0.1", "--steps", "3", "--layers", "1", "--width", "32",
             "--context", "32", "--eval-every", "0", "--sample-tokens", "0", "--out-dir", str(tmp_path)]
    out = run_mpi(2, ["-m", "ringtrain.examples.random_k", *flags], timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "compression ef+randomk:ratio=0.1" in out.stdout
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3]
    # Without the registration the name is unknown.
    plain = run_mpi(1, ["-m", "ringtrain", *flags], timeout=300, cwd=ROOT)
    assert plain.returncode == 2 and "unknown compressor 'randomk'" in plain.stderr
