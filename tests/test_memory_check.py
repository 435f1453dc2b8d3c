"""The memory preflight: estimates checked against measured peaks, refusals with what fits, and no trace left.

Refusals are whole runs under mpiexec (a tiny or the demo GPT), each under a timeout; the address-space case
limits the child alone (RLIMIT_AS), so nothing here needs a machine of a given size.
"""
import json
import re
import resource
import subprocess
import sys

import pytest
import torch

from ringtrain.model import GPT, GPTConfig
from ringtrain.train import TrainConfig
from ringtrain.train.memory_check import BACKWARD_FACTOR, gpt_parameters, saved_activation_bytes
from ringtrain.train.model_factory import gpt_loss
from ringtrain.train.task import Task
from tests.test_bad_runs import ROOT, one_line, train


@pytest.mark.parametrize("shape", [{}, {"width": 96, "layers": 3, "heads": 3, "context": 40}, {"layers": 1}])
def test_the_closed_form_parameter_count_is_the_models(shape):
    cfg = TrainConfig(**shape)
    model = GPT(GPTConfig(context=cfg.context, layers=cfg.layers, heads=cfg.heads, width=cfg.width))
    assert gpt_parameters(cfg) == sum(p.numel() for p in model.parameters())


def test_the_probe_leaves_the_rng_and_the_buffers_as_they_were():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5))
    task = Task(model, lambda m, x: m(x).sum())
    x = torch.randn(3, 4)
    before = torch.get_rng_state(), [b.clone() for b in model.buffers()]
    assert saved_activation_bytes(task, (x,)) > 0
    assert torch.equal(torch.get_rng_state(), before[0])
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), before[1]))


def peak_rss(tmp_path, batch):
    out = tmp_path / f"b{batch}"
    result = subprocess.run([sys.executable, "-m", "ringtrain", "train", "--steps", "2", "--batch-size", str(batch),
                             "--eval-windows", "2", "--eval-every", "0", "--sample-tokens", "0", "--out-dir",
                             str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    return max(r["ranks"][0]["peak_rss"] for r in rows if r.get("event") == "memory")


def test_the_activation_estimate_matches_the_measured_growth_of_the_peak(tmp_path):
    cfg = TrainConfig()
    model = GPT(GPTConfig(context=cfg.context, layers=cfg.layers, heads=cfg.heads, width=cfg.width))
    x = torch.zeros(1, cfg.context, dtype=torch.long)
    estimated = BACKWARD_FACTOR * saved_activation_bytes(Task(model, gpt_loss), (x, x)) * 127
    measured = peak_rss(tmp_path, 128) - peak_rss(tmp_path, 1)
    # Peak RSS is noisy (the allocator keeps and reuses freed pages): measured 1.2-1.9x below the estimate
    # here. The estimate must not fall short (the OOM killer), nor refuse runs that fit by far.
    assert 0.8 * measured <= estimated <= 2.5 * measured, (estimated, measured)


@pytest.mark.parametrize("flag, value, fits", [("--batch-size", "10000000", "--batch-size"),
                                               ("--eval-windows", "100000000", "--eval-windows"),
                                               ("--width", "1000000", "--width")])
def test_a_run_that_cannot_fit_is_refused_with_the_largest_value_that_does(tmp_path, flag, value, fits):
    result = train(2, tmp_path, "--steps", "2", flag, value, "--width" if flag != "--width" else "--heads",
                   "32" if flag != "--width" else "2")
    assert result.returncode == 2
    line = one_line(result)
    assert line.startswith("ringtrain: memory: ") and "or pass --memory-check off" in line
    largest = int(re.search(f"the largest {fits} that fits(?: \\(a multiple of --heads 2\\))? is (\\d+)", line)[1])
    assert 1 <= largest < int(value)


def limited(gigabytes):
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (int(gigabytes * 2**30), int(gigabytes * 2**30)))
    return limit


def test_the_address_space_limit_is_respected_and_an_allocation_failure_is_one_line(tmp_path):
    args = [sys.executable, "-m", "ringtrain", "train", "--steps", "1", "--batch-size", "3000", "--eval-windows", "2",
            "--sample-tokens", "0", "--out-dir", str(tmp_path / "out")]
    refused = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT, preexec_fn=limited(6))
    assert refused.returncode == 2
    assert "(its address-space limit, ulimit -v) — the largest --batch-size that fits is" in one_line(refused)
    failed = subprocess.run(args + ["--memory-check", "off"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            preexec_fn=limited(6))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    said = [line for line in failed.stderr.splitlines() if line.startswith("ringtrain: rank 0: out of memory (")]
    assert len(said) == 1 and said[0].endswith("or run fewer ranks per node (exit code 2)"), failed.stderr
