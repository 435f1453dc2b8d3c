"""Learning rate: linear warm-up, then cosine decay to lr * min_lr_ratio at the last step."""
import math


def learning_rate(step: int, *, lr: float, warmup: int, steps: int, min_lr_ratio: float) -> float:
    """The learning rate for 0-based ``step``.

    >>> [round(learning_rate(s, lr=1.0, warmup=2, steps=5, min_lr_ratio=0.0), 3) for s in range(5)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, steps - 1 - warmup)
    progress = min(1.0, (step - warmup) / span)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
