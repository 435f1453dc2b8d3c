"""Horovod's two PyTorch examples, as ringtrain.examples.horovod_*: they run at 2 and 3 ranks under mpiexec, with and
without --fp16-allreduce, and end with a ``result {json}`` line that says they did their work.

The MNIST run must learn (test accuracy well above the 10% of chance on its seeded synthetic data); the benchmark
must report a positive throughput for the right world size. Sizes are tiny, each run under a timeout.
"""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.launch import run_mpi

ROOT = Path(__file__).resolve().parent.parent
MNIST = "ringtrain.examples.horovod_mnist"
BENCHMARK = "ringtrain.examples.horovod_synthetic_benchmark"
TINY_MNIST = ["--epochs", "3", "--lr", "0.05", "--batch-size", "32", "--test-batch-size", "128",
              "--synthetic-train-size", "1024", "--synthetic-test-size", "256", "--log-interval", "100"]
TINY_BENCHMARK = ["--batch-size", "8", "--image-size", "16", "--num-classes", "10", "--num-warmup-batches", "1",
                  "--num-batches-per-iter", "2", "--num-iters", "2"]


def result(done: subprocess.CompletedProcess) -> dict:
    """The ``result {json}`` line rank 0 prints last, after checking the run ended well."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("result ")]
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0][len("result "):])


@pytest.mark.parametrize("n, fp16", [(2, False), (2, True)])
def test_mnist_learns_on_synthetic_data(n, fp16):
    flags = TINY_MNIST + (["--fp16-allreduce"] if fp16 else [])
    out = result(run_mpi(n, ["-m", MNIST, *flags], timeout=300, cwd=ROOT))
    assert out["data"] == "synthetic" and out["size"] == n and out["fp16_allreduce"] == fp16, out
    assert out["test_accuracy"] > 0.5 and out["test_loss"] < np.log(10), out  # chance: 0.1 and ln 10


def test_mnist_with_a_gradient_predivide_factor():
    out = result(run_mpi(2, ["-m", MNIST, *TINY_MNIST, "--gradient-predivide-factor", "2"], timeout=300, cwd=ROOT))
    assert out["gradient_predivide_factor"] == 2.0 and out["test_accuracy"] > 0.5, out


@pytest.mark.parametrize("n, model, fp16", [(2, "cnn", False), (2, "cnn", True), (3, "mlp", False)])
def test_synthetic_benchmark_reports_throughput(n, model, fp16):
    flags = TINY_BENCHMARK + ["--model", model] + (["--fp16-allreduce"] if fp16 else [])
    out = result(run_mpi(n, ["-m", BENCHMARK, *flags], timeout=300, cwd=ROOT))
    assert out["size"] == n and out["model"] == model and out["fp16_allreduce"] == fp16, out
    assert out["img_sec_per_device"] > 0 and out["img_sec_total"] == pytest.approx(n * out["img_sec_per_device"])


@pytest.mark.parametrize("module", [MNIST, BENCHMARK])
def test_help_and_adasum_refusal(module):
    helped = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert helped.returncode == 0 and "--fp16-allreduce" in helped.stdout, helped.stderr
    refused = subprocess.run([sys.executable, "-m", module, "--use-adasum"], capture_output=True, text=True,
                             timeout=120, cwd=ROOT)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "--use-adasum: Adasum is not built" in last, refused.stderr


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files_where_data_dir_has_them(tmp_path):
    from ringtrain.examples.horovod_mnist import MEAN, STD, mnist
    raw = tmp_path / "MNIST" / "raw"  # where torchvision keeps them
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (6, 28, 28)), "t10k": rng.integers(0, 256, (4, 28, 28))}
    labels = {"train": rng.integers(0, 10, 6), "t10k": rng.integers(0, 10, 4)}
    for part in images:
        _write_idx(raw / f"{part}-images-idx3-ubyte.gz", images[part])
        _write_idx(raw / f"{part}-labels-idx1-ubyte.gz", labels[part])
    train, test = mnist(str(tmp_path))
    x, y = train.tensors
    assert x.shape == (6, 1, 28, 28) and torch.equal(y, torch.from_numpy(labels["train"]))
    assert torch.allclose(x[:, 0] * STD + MEAN, torch.from_numpy(images["train"] / 255.0).float(), atol=1e-6)
    assert len(test) == 4 and mnist(str(tmp_path / "MNIST")) is None  # missing files: None, so synthetic data
