"""Horovod's PyTorch synthetic benchmark, on ringtrain.horovod: training throughput on one fixed random batch.

A Horovod script with its import changed (``import ringtrain.horovod as hvd``),
with the flags of Horovod's ``pytorch_synthetic_benchmark.py``. torchvision's
models are not here (its wheels pin a torch build), so ``--model`` picks a
small built-in network; its BatchNorm layers are ``hvd.SyncBatchNorm``, as
Horovod's benchmark passes ``norm_layer=hvd.SyncBatchNorm``.

    mpiexec -n 4 python -m ringtrain.examples.horovod_synthetic_benchmark --model cnn --fp16-allreduce

Rank 0 prints img/sec for each timed iteration, then per device and in total
(mean +- 1.96 standard deviations), and last a line ``result {json}`` for
scripts. Adasum is not built in ringtrain.horovod: ``--use-adasum`` is refused.
"""
import argparse
import json
import timeit

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import ringtrain.horovod as hvd


class ConvNet(nn.Module):
    """(B, 3, S, S) images -> (B, classes): three 3x3 conv blocks (conv, norm, ReLU, 2x2 pool), a linear head."""

    def __init__(self, classes: int, norm_layer=nn.BatchNorm2d, width: int = 32):
        super().__init__()
        blocks, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            blocks += [nn.Conv2d(channels, out, 3, padding=1, bias=False), norm_layer(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.features(x)                     # (B, 4w, S/8, S/8)
        return self.head(x.mean(dim=(2, 3)))     # global average pool -> (B, classes)


class MLP(nn.Module):
    """(B, 3, S, S) images, flattened -> (B, classes): two hidden layers with BatchNorm."""

    def __init__(self, classes: int, image_size: int, norm_layer=nn.BatchNorm1d, hidden: int = 512):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, hidden, bias=False),
                                    norm_layer(hidden), nn.ReLU(), nn.Linear(hidden, hidden, bias=False),
                                    norm_layer(hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.layers(x)


MODELS = {"cnn": lambda a: ConvNet(a.num_classes, norm_layer=hvd.SyncBatchNorm),
          "mlp": lambda a: MLP(a.num_classes, a.image_size, norm_layer=hvd.SyncBatchNorm)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch synthetic benchmark on ringtrain.horovod",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--fp16-allreduce", action="store_true", help="average gradients in float16 (Compression.fp16)")
    p.add_argument("--model", default="cnn", choices=sorted(MODELS), help="the built-in model to time")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch on each rank")
    p.add_argument("--image-size", type=int, default=64, help="height and width of the 3-channel images")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the synthetic labels")
    p.add_argument("--num-warmup-batches", type=int, default=10, help="batches run before timing")
    p.add_argument("--num-batches-per-iter", type=int, default=10, help="batches per timed iteration")
    p.add_argument("--num-iters", type=int, default=10, help="timed iterations")
    p.add_argument("--no-cuda", action="store_true", help="accepted; ringtrain.horovod runs on CPU")
    p.add_argument("--use-adasum", action="store_true", help="refused: Adasum is not built in ringtrain.horovod")
    args = p.parse_args(argv)
    if args.use_adasum:
        p.error("--use-adasum: Adasum is not built in ringtrain.horovod; leave the flag out to average (hvd.Average)")
    for name in ("batch_size", "image_size", "num_classes", "num_batches_per_iter", "num_iters"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.num_warmup_batches < 0:
        p.error(f"--num-warmup-batches {args.num_warmup_batches}: must be at least 0")
    if args.model == "cnn" and args.image_size < 8:
        p.error(f"--image-size {args.image_size}: the cnn pools three times, so it needs at least 8")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    hvd.init()
    torch.manual_seed(0)
    model = MODELS[args.model](args)

    # Gradients are averaged over ranks, so a rank's step sees size() times the batch: scale the rate.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01 * hvd.size())
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression, op=hvd.Average)
    # Every rank starts from rank 0's weights and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    # One fixed batch, different on each rank: the benchmark times compute and communication, not data.
    gen = torch.Generator().manual_seed(1000 + hvd.rank())
    data = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    target = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen)

    def benchmark_step():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()

    def log(line):
        if hvd.rank() == 0:
            print(line, flush=True)

    log(f"Model: {args.model}")
    log(f"Batch size: {args.batch_size}")
    log(f"Number of CPUs: {hvd.size()}")
    log("Running warmup...")
    timeit.timeit(benchmark_step, number=args.num_warmup_batches)
    log("Running benchmark...")
    img_secs = []
    for i in range(args.num_iters):
        seconds = timeit.timeit(benchmark_step, number=args.num_batches_per_iter)
        img_secs.append(args.batch_size * args.num_batches_per_iter / seconds)
        log(f"Iter #{i}: {img_secs[-1]:.1f} img/sec per CPU")

    mean, spread = float(np.mean(img_secs)), float(1.96 * np.std(img_secs))
    log(f"Img/sec per CPU: {mean:.1f} +-{spread:.1f}")
    log(f"Total img/sec on {hvd.size()} CPU(s): {hvd.size() * mean:.1f} +-{hvd.size() * spread:.1f}")
    log("result " + json.dumps({"model": args.model, "size": hvd.size(), "batch_size": args.batch_size,
                                "fp16_allreduce": args.fp16_allreduce, "img_sec_per_device": mean,
                                "img_sec_per_device_spread": spread, "img_sec_total": hvd.size() * mean}))
    hvd.shutdown()


if __name__ == "__main__":
    main()
