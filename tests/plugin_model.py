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


# A task with its own datasets, for --model tests.plugin_model:task: which of 4 corners a noisy point is near.
def _corners(n, seed):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, 4, (n,), generator=g)
    corner = torch.stack([label % 2, label // 2], dim=1).float() * 2 - 1
    return torch.utils.data.TensorDataset(corner + 0.3 * torch.randn(n, 2, generator=g), label)


def _cross_entropy(model, x, y):
    return F.cross_entropy(model(x), y)


def _accuracy(model, x, y):
    return (model(x).argmax(1) == y).float().mean()


def task():
    from ringtrain import Task
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 4))
    return Task(model, _cross_entropy, train_data=_corners(200, 0), val_data=_corners(50, 1),
                metrics={"accuracy": _accuracy})


# Factories that return the wrong things.
def returns_a_list():
    return [NextByteMLP(), loss]


def returns_one_thing():
    return (NextByteMLP(),)


def streams_its_data():
    from ringtrain import Task

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter([])
    return Task(NextByteMLP(), loss, train_data=Stream())
