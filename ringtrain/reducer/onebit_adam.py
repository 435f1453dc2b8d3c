"""1-bit Adam (Tang et al., 2021): AdamW for a warm-up, then a frozen variance and momentum sent as signs.

    reducer = ringtrain.GradientReducer(model)
    optimizer = ringtrain.OneBitAdam(reducer, model.parameters(), lr=1e-3, warmup=100)
    loss.backward(); reducer.synchronize(); optimizer.step()    # the usual loop

Warm-up (the first ``warmup`` steps): torch's AdamW itself, on gradients the
reducer averages, so this phase is AdamW exactly. Adam's variance settles
early in training; after the warm-up it is frozen (with its bias
correction), and the reducer stops averaging gradients. Each step then
updates the momentum from this rank's own gradient, ``m = b1 m + (1 - b1) g``,
averages the momenta with the two-sided error-feedback sign allreduce
(compression/onebit_allreduce.py: about 1/32 of the float32 bytes), and
applies AdamW's update with the frozen variance:
``p -= lr (m / bc1) / (sqrt(v / bc2) + eps)`` after decoupled weight decay.
Every rank decompresses the same payloads, so the parameters stay identical.

The momenta live in one flat buffer from the freeze on, so the allreduce
needs no copies. The state (AdamW's, the step, both residuals) is per rank
and goes into each rank's checkpoint file; resuming at the same world size is
exact.
"""
import numpy as np
import torch

from ..compression.compatibility import onebit_adam_conflict
from ..compression.onebit_allreduce import OneBitAllreduce


class OneBitAdam:
    """AdamW for ``warmup`` steps, then 1-bit compressed momentum with a frozen variance, on ``reducer``'s ranks."""

    def __init__(self, reducer, params, *, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, warmup: int = 100):
        reason = onebit_adam_conflict(getattr(reducer, "zero", 0), (getattr(reducer, "compressors", None) or [None])[0])
        if reason:
            raise ValueError(f"OneBitAdam on a GradientReducer with zero or compression: not supported — {reason}")
        if not (isinstance(warmup, int) and warmup >= 1):
            raise ValueError(f"warmup={warmup!r}: 1-bit Adam needs at least one step of AdamW, a whole number >= 1")
        self.reducer, self.comm, self.warmup = reducer, reducer.comm, warmup
        self.adamw = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.steps = 0
        self.compressed = None  # the sign allreduce, from the freeze on

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups

    @property
    def frozen(self) -> bool:
        return self.steps >= self.warmup

    def _params(self):
        return [p for g in self.adamw.param_groups for p in g["params"]]

    def step(self) -> None:
        """One optimizer step. Collective after the warm-up (the momentum allreduce)."""
        if not self.frozen:
            self.adamw.step()
            self.steps += 1
            if self.frozen:
                self._freeze()
            return
        self._compressed_step()
        self.steps += 1

    def _freeze(self) -> None:
        """From now on: local gradients, one flat momentum buffer, the sign allreduce."""
        self.reducer.averaging = False
        params = self._params()
        self._fill_state()
        flat = torch.cat([self.adamw.state[p]["exp_avg"].reshape(-1) for p in params])
        at = 0
        for p in params:
            self.adamw.state[p]["exp_avg"] = flat[at:at + p.numel()].view_as(p)
            at += p.numel()
        self.flat_momentum = flat
        if self.compressed is None:
            self.compressed = OneBitAllreduce(flat.numel(), self.comm)

    def _fill_state(self) -> None:
        """A parameter that never had a gradient gets AdamW's initial state, so every one has a variance."""
        for p in self._params():
            state = self.adamw.state[p]
            if not state:
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))

    def _adamw_nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for s in self.adamw.state.values() for t in s.values()
                   if torch.is_tensor(t))

    @torch.no_grad()
    def _compressed_step(self) -> None:
        for group in self.adamw.param_groups:
            b1, _ = group["betas"]
            for p in group["params"]:
                m = self.adamw.state[p]["exp_avg"]
                m.mul_(b1)
                if p.grad is not None:  # this rank's own gradient
                    m.add_(p.grad, alpha=1 - b1)
        self.compressed.mean(self.flat_momentum.numpy())
        # The momentum allreduce is what averages the step now: its bytes are the step's wire bytes.
        self.reducer.last_wire_bytes += self.compressed.last_wire_bytes
        for group in self.adamw.param_groups:
            b1, b2 = group["betas"]
            lr, eps, decay = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                state = self.adamw.state[p]
                frozen_steps = float(state["step"])  # the variance's age at the freeze, as it stays
                state.setdefault("momentum_steps", torch.tensor(frozen_steps))
                state["momentum_steps"] += 1
                bc1 = 1 - b1 ** float(state["momentum_steps"])
                bc2 = 1 - b2 ** frozen_steps if frozen_steps else 1.0
                p.mul_(1 - lr * decay)
                denom = (state["exp_avg_sq"].sqrt() / np.sqrt(bc2)).add_(eps)
                p.addcdiv_(state["exp_avg"], denom, value=-lr / bc1)

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds: AdamW's, and both residuals after the freeze."""
        total = self._adamw_nbytes()
        if self.compressed is not None:
            total += self.compressed.worker_error.nbytes + self.compressed.server_error.nbytes
        return total

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.adamw.zero_grad(set_to_none=set_to_none)

    @property
    def last_wire_bytes(self) -> int:
        """Bytes the momentum allreduce sent in the last step (0 in the warm-up, where the reducer sends)."""
        return self.compressed.last_wire_bytes if self.compressed is not None else 0

    def state_dict(self) -> dict:
        """AdamW's state, the step count and both residuals: this rank's (residuals differ between ranks)."""
        return {"adamw": self.adamw.state_dict(), "steps": self.steps,
                "residuals": self.compressed.state_dict() if self.compressed is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.adamw.load_state_dict(state["adamw"])
        self.steps = int(state["steps"])
        if self.frozen:
            self._freeze()  # the loaded momenta into one flat buffer again
            if state["residuals"] is not None:
                self.compressed.load_state_dict(state["residuals"])
