"""Handwritten digits: a small CNN with BatchNorm on scikit-learn's 8x8 digits, with accuracy.

The 1,797 images ship inside scikit-learn (``pip install 'ringtrain[examples]'``),
so nothing is downloaded. Every fifth image is held out for validation (359),
the other 1,438 train; pixels are scaled from 0..16 to 0..1.

    mpiexec -n 4 python -m ringtrain train --model ringtrain.examples.digits:task --epochs 10

>>> t = task()                                                  # doctest: +SKIP
>>> len(t.train_data), len(t.val_data), sorted(t.metrics)       # doctest: +SKIP
(1438, 359, ['accuracy'])
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..fault.errors import UsageError
from ..train.task import Task

VAL_EVERY = 5


class DigitsCNN(nn.Module):
    """(B, 1, 8, 8) images -> (B, 10) logits: two 3x3 convolutions with BatchNorm, a 2x2 pool, a linear head."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))                  # (B, w, 8, 8)
        x = F.max_pool2d(F.relu(self.norm2(self.conv2(x))), 2)  # (B, 2w, 4, 4)
        return self.head(x.flatten(1))


def cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def accuracy(model, x, y):
    return (model(x).argmax(dim=1) == y).float().mean()


def datasets():
    """(train, validation) TensorDatasets of (image (1, 8, 8) float32, label int64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UsageError("the digits example needs scikit-learn, which ships the images — "
                         "pip install 'ringtrain[examples]'") from None
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.int64)
    held = torch.arange(len(labels)) % VAL_EVERY == VAL_EVERY - 1
    return (torch.utils.data.TensorDataset(images[~held], labels[~held]),
            torch.utils.data.TensorDataset(images[held], labels[held]))


def task() -> Task:
    """The digits task, for ``--model ringtrain.examples.digits:task``."""
    train, val = datasets()
    return Task(DigitsCNN(), cross_entropy, train_data=train, val_data=val, metrics={"accuracy": accuracy})
