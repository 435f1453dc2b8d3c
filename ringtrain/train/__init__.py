"""The training loop, its configuration, and the Task it trains."""
from .config import TrainConfig
from .task import Task
from .trainer import fit, train

__all__ = ["Task", "TrainConfig", "fit", "train"]
