"""The training loop and its configuration."""
from .config import TrainConfig
from .trainer import train

__all__ = ["TrainConfig", "train"]
