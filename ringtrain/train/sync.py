"""What the training loop asks of whatever averages the gradients: the GradientReducer, or a peer such as DDP.

The loop runs forward on ``sync.model`` (DDP's wrapper, or the model itself
for the reducer, which hooks the parameters), backward, and then
``synchronize()``, after which every rank holds the same averaged gradient.
The DDP benchmark peer (bench/ddp_peer.py) plugs in here, so it runs the very
loop ringtrain runs.
"""
from typing import ContextManager, Protocol

import torch


class GradientSync(Protocol):
    model: torch.nn.Module
    """What forward is called on."""
    last_comm_seconds: float
    """Seconds spent averaging the last step's gradients (overlapped or not)."""
    last_wire_bytes: int | None
    """Bytes this rank sent averaging the last step's gradients; None where it is not known."""

    def no_sync(self) -> ContextManager:
        """Backward inside it accumulates locally (all but the last micro-batch of a step)."""

    def synchronize(self) -> None:
        """Wait until the averaged gradients are in every parameter's ``.grad``. Collective."""

    def state_dict(self) -> dict:
        """Per-rank state a checkpoint keeps (compression residuals)."""

    def load_state_dict(self, state: dict, *, warn: bool = True) -> bool:
        """Load what ``state_dict`` gave; False where it could not apply (the reducer's compression state saved
        with another node layout: left at zero, with a warning if ``warn``). --elastic relies on it."""

    def close(self) -> None: ...
