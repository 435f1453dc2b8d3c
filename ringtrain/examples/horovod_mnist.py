"""Horovod's PyTorch MNIST example, on ringtrain.horovod: a small CNN trained data-parallel, then tested.

The flow of Horovod's ``pytorch_mnist.py`` with its import changed: each rank
reads its share through a DistributedSampler; rank 0's parameters and
optimizer state are broadcast; DistributedOptimizer averages the gradients
(``--fp16-allreduce``: in float16; ``--gradient-predivide-factor``); the test
loss and accuracy are averaged over ranks with ``hvd.allreduce(name=...)``.

There is no download (torchvision is not here, nor a network): the images are
MNIST's own IDX files where ``--data-dir`` has them (``train-images-idx3-ubyte``
and the three others, optionally gzipped, as torchvision stores them under
``MNIST/raw``); otherwise, or with ``--synthetic``, a dataset of MNIST's shape
(1x28x28 images, 10 classes) drawn from a seeded generator: each class is a
fixed random pattern plus noise, so that accuracy rises well above chance.

    mpiexec -n 4 python -m ringtrain.examples.horovod_mnist --epochs 2 --fp16-allreduce

Rank 0 prints the training loss every ``--log-interval`` batches, the test set's
loss and accuracy after each epoch, and last a line ``result {json}``.
"""
import argparse
import gzip
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import ringtrain.horovod as hvd

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MEAN, STD = 0.1307, 0.3081  # MNIST's pixel statistics, by which its images are normalized


class Net(nn.Module):
    """(B, 1, 28, 28) -> (B, 10) log-probabilities: two 5x5 convolutions with pooling, two linear layers."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.drop2d = nn.Dropout2d(0.5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))                  # (B, 10, 12, 12)
        x = F.relu(F.max_pool2d(self.drop2d(self.conv2(x)), 2))     # (B, 20, 4, 4)
        x = F.relu(self.fc1(x.flatten(1)))                          # (B, 50)
        x = F.dropout(x, 0.5, training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)


def _read_idx(path: str) -> np.ndarray:
    """An IDX file (MNIST's format: a magic number whose last byte is the rank, big-endian sizes, then uint8)."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _find(data_dir: str, name: str) -> str | None:
    for folder in (data_dir, os.path.join(data_dir, "MNIST", "raw")):
        for path in (os.path.join(folder, name), os.path.join(folder, name + ".gz")):
            if os.path.exists(path):
                return path
    return None


def mnist(data_dir: str | None) -> tuple[TensorDataset, TensorDataset] | None:
    """MNIST's (train, test) from its IDX files in ``data_dir``, normalized; None if any file is missing."""
    if not data_dir:
        return None
    paths = {part: [_find(data_dir, n) for n in names] for part, names in MNIST_FILES.items()}
    if any(p is None for pair in paths.values() for p in pair):
        return None
    sets = []
    for images, labels in paths.values():
        x = torch.from_numpy(_read_idx(images).astype(np.float32) / 255.0).unsqueeze(1)  # (N, 1, 28, 28)
        sets.append(TensorDataset((x - MEAN) / STD, torch.from_numpy(_read_idx(labels).astype(np.int64))))
    return sets[0], sets[1]


def synthetic(train_size: int, test_size: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """MNIST-shaped (train, test): class c's images are pattern c (fixed by ``seed``) plus unit noise.

    Every rank draws the same sets from the same seed, as every rank would read the same files.
    """
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.randn(10, 1, 28, 28, generator=gen)

    def draw(n):
        labels = torch.randint(0, 10, (n,), generator=gen)
        return TensorDataset(patterns[labels] + torch.randn(n, 1, 28, 28, generator=gen), labels)
    return draw(train_size), draw(test_size)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch MNIST example on ringtrain.horovod")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size per rank (default: 64)")
    p.add_argument("--test-batch-size", type=int, default=1000, help="test batch size per rank (default: 1000)")
    p.add_argument("--epochs", type=int, default=10, help="epochs to train (default: 10)")
    p.add_argument("--lr", type=float, default=0.01, help="learning rate for one rank, scaled by the size (0.01)")
    p.add_argument("--momentum", type=float, default=0.5, help="SGD momentum (default: 0.5)")
    p.add_argument("--no-cuda", action="store_true", help="accepted; ringtrain.horovod runs on CPU")
    p.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    p.add_argument("--log-interval", type=int, default=10, help="batches between training log lines (default: 10)")
    p.add_argument("--fp16-allreduce", action="store_true", help="average gradients in float16 (Compression.fp16)")
    p.add_argument("--use-mixed-precision", action="store_true", help="refused: it needs CUDA")
    p.add_argument("--use-adasum", action="store_true", help="refused: Adasum is not built in ringtrain.horovod")
    p.add_argument("--gradient-predivide-factor", type=float, default=1.0,
                   help="divide gradients by this before the sum and by size/this after (default: 1.0)")
    p.add_argument("--data-dir", help="a directory with MNIST's IDX files (default: none, so synthetic data)")
    p.add_argument("--synthetic", action="store_true", help="use the seeded MNIST-shaped dataset even if "
                   "--data-dir has MNIST (the default without it)")
    p.add_argument("--synthetic-train-size", type=int, default=60000, help="synthetic training images (60000)")
    p.add_argument("--synthetic-test-size", type=int, default=10000, help="synthetic test images (10000)")
    args = p.parse_args(argv)
    if args.use_adasum:
        p.error("--use-adasum: Adasum is not built in ringtrain.horovod; leave the flag out to average (hvd.Average)")
    if args.use_mixed_precision:
        p.error("--use-mixed-precision: mixed precision needs CUDA (torch.cuda.amp), and ringtrain.horovod runs on CPU")
    for name in ("batch_size", "test_batch_size", "epochs", "log_interval", "synthetic_train_size",
                 "synthetic_test_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.gradient_predivide_factor <= 0:
        p.error(f"--gradient-predivide-factor {args.gradient_predivide_factor}: must be positive")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    hvd.init()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # ranks share the machine's cores

    found = None if args.synthetic else mnist(args.data_dir)
    train_set, test_set = found or synthetic(args.synthetic_train_size, args.synthetic_test_size, args.seed)
    data_name = "mnist" if found else "synthetic"
    # Each rank reads 1/size of each set; the sampler pads the last share so every rank has as many.
    train_sampler = DistributedSampler(train_set, num_replicas=hvd.size(), rank=hvd.rank())
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=train_sampler)
    test_sampler = DistributedSampler(test_set, num_replicas=hvd.size(), rank=hvd.rank())
    test_loader = DataLoader(test_set, batch_size=args.test_batch_size, sampler=test_sampler)

    model = Net()
    # The averaged gradient stands for size() times the batch: scale the learning rate with it.
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr * hvd.size(), momentum=args.momentum)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression, op=hvd.Average,
                                         gradient_predivide_factor=args.gradient_predivide_factor)

    def log(line):
        if hvd.rank() == 0:
            print(line, flush=True)

    def train_epoch(epoch):
        model.train()
        train_sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for batch, (data, target) in enumerate(train_loader):
            optimizer.zero_grad()
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
            if batch % args.log_interval == 0:
                log(f"Train Epoch: {epoch} [{batch * len(data)}/{len(train_sampler)} "
                    f"({100.0 * batch / len(train_loader):.0f}%)]\tLoss: {loss.item():.6f}")

    def metric_average(value, name):
        return hvd.allreduce(torch.tensor(value), name=name).item()  # hvd.Average by default

    def test():
        model.eval()
        loss_sum = correct = 0.0
        with torch.no_grad():
            for data, target in test_loader:
                output = model(data)
                loss_sum += F.nll_loss(output, target, reduction="sum").item()
                correct += (output.argmax(dim=1) == target).sum().item()
        # This rank's means over its share (all shares are equal), then their mean over ranks.
        return (metric_average(loss_sum / len(test_sampler), "avg_loss"),
                metric_average(correct / len(test_sampler), "avg_accuracy"))

    log(f"Data: {data_name}, {len(train_set)} training and {len(test_set)} test images, {hvd.size()} ranks")
    for epoch in range(1, args.epochs + 1):
        train_epoch(epoch)
        test_loss, test_accuracy = test()
        log(f"\nTest set: Average loss: {test_loss:.4f}, Accuracy: {100.0 * test_accuracy:.2f}%\n")
    log("result " + json.dumps({"data": data_name, "size": hvd.size(), "epochs": args.epochs,
                                "fp16_allreduce": args.fp16_allreduce,
                                "gradient_predivide_factor": args.gradient_predivide_factor,
                                "test_loss": test_loss, "test_accuracy": test_accuracy}))
    hvd.shutdown()


if __name__ == "__main__":
    main()
