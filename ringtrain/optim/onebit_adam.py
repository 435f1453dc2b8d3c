"""1-bit Adam (Tang et al., 2021): AdamW for a warm-up, then a frozen variance and momentum sent as signs.

    reducer = ringtrain.GradientReducer(model)
    optimizer = ringtrain.OneBitAdam(reducer, model.parameters(), lr=1e-3, warmup=100)
    loss.backward(); reducer.synchronize(); optimizer.step()    # the usual loop

The warm-up and the frozen-variance update are frozen_variance_adam.py's.
After the freeze each step updates the momentum from this rank's own
gradient, ``m = b1 m + (1 - b1) g``, averages the momenta with the two-sided
error-feedback sign allreduce (compression/onebit_allreduce.py: about 1/32
of the float32 bytes), and applies AdamW's update with the frozen variance:
``p -= lr (m / bc1) / (sqrt(v / bc2) + eps)`` after decoupled weight decay.
Every rank decompresses the same payloads, so the parameters stay identical.

The momenta live in one flat buffer from the freeze on, so the allreduce
needs no copies. The state (AdamW's, the step, both residuals) is per rank
and goes into each rank's checkpoint file; resuming at the same world size is
exact.
"""
import numpy as np
import torch

from ..compression.onebit_allreduce import OneBitAllreduce
from .frozen_variance_adam import FrozenVarianceAdam


class OneBitAdam(FrozenVarianceAdam):
    """AdamW for ``warmup`` steps, then 1-bit compressed momentum with a frozen variance, on ``reducer``'s ranks.

    ``options``: lr, betas, eps, weight_decay and warmup, as FrozenVarianceAdam takes them.
    """

    legacy_key = "residuals"

    def __init__(self, reducer, params, **options):
        super().__init__(reducer, params, **options)
        self.compressed = None  # the sign allreduce, from the freeze on

    def _start(self, params: list[torch.Tensor]) -> None:
        """One flat momentum buffer, each parameter's momentum a view of it, and the sign allreduce over it."""
        flat = torch.cat([self.state[p]["exp_avg"].reshape(-1) for p in params])
        at = 0
        for p in params:
            self.state[p]["exp_avg"] = flat[at:at + p.numel()].view_as(p)
            at += p.numel()
        self.flat_momentum = flat
        if self.compressed is None:
            self.compressed = OneBitAllreduce(flat.numel(), self.comm)

    def _average(self) -> int:
        for group in self.param_groups:
            b1 = group["betas"][0]
            for p in group["params"]:
                m = self.state[p]["exp_avg"]
                m.mul_(b1)
                if p.grad is not None:  # this rank's own gradient
                    m.add_(p.grad, alpha=1 - b1)
        self.compressed.mean(self.flat_momentum.numpy())
        return self.compressed.last_wire_bytes

    def _apply(self, i: int, p: torch.Tensor, state: dict, group: dict, step_size: float) -> None:
        # np.sqrt, as before: it rounds differently from ** 0.5 in some cases, and runs must stay bit for bit.
        denom = (state["exp_avg_sq"].sqrt() / np.sqrt(self.variance_correction(state, group))).add_(group["eps"])
        p.addcdiv_(state["exp_avg"], denom, value=step_size)

    def _compressor_state(self) -> dict | None:
        """Both residuals, this rank's (they differ between ranks); None before the freeze."""
        return self.compressed.state_dict() if self.compressed is not None else None

    def _load_compressor_state(self, saved: dict | None) -> None:
        if saved is not None:
            self.compressed.load_state_dict(saved)

    def _compressor_nbytes(self) -> int:
        if self.compressed is None:
            return 0
        return self.compressed.worker_error.nbytes + self.compressed.server_error.nbytes

    def resume_state(self, state: dict, saved_world: int, world: int) -> tuple[dict, str | None]:
        """The residuals were cut for the old number of ranks: they start from zero."""
        warning = (f"1-bit Adam's error-feedback residuals were saved for {saved_world} ranks; at {world} they "
                   "start from zero")
        return {**self.current_format(state), "compressor": None}, warning
