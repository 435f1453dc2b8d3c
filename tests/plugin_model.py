"""A model from outside ringtrain, for --model tests.plugin_model:build."""
import torch
from torch.nn import functional as F


class NextByteMLP(torch.nn.Module):
    """Predicts each next byte from the current one: embedding, one hidden layer."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.embed = torch.nn.Embedding(256, width)
        self.hidden = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, 256)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(self.embed(x))))


def loss(model, x, y):
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))


def build():
    return NextByteMLP(), loss
