"""The demo model: a small GPT language model over bytes."""
from .gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig"]
