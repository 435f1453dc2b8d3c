"""AdamW for a warm-up, then a frozen variance and a momentum each rank averages its own way.

What 1-bit Adam (onebit_adam.py) and DGC under AdamW (dgc_adam.py) share.
Warm-up (the first ``warmup`` steps): torch's AdamW itself, on gradients the
reducer averages, so this phase is AdamW exactly. Adam's variance settles
early in training (Tang et al., 2021); at the freeze it stops changing, with
its bias correction, and the reducer stops averaging gradients. From then on
every step is, per parameter,

    p = p (1 - lr wd) - lr / bc1 * (averaged momentum) / D,   D = sqrt(v / bc2) + eps

where bc1 counts the momentum's own steps on from the variance's age. How
the momentum is averaged, and what is sent, is the subclass's. The state is
per rank (each rank's residuals or velocity differ), so a checkpoint keeps
each rank's own.

    class MyAdam(FrozenVarianceAdam):
        def _start(self, params): ...       # at the freeze (and on loading a state past it)
        def _average(self) -> int: ...       # average the momenta; returns the bytes sent
        def _apply(self, i, p, state, group, step_size): ...   # p += step_size * (parameter i's momentum / D)
        # and the compressor's state: _compressor_state, _load_compressor_state, _compressor_nbytes
"""
import torch

from ..compression.compatibility import onebit_adam_conflict
from .interface import AveragingReducer, ReducerOptimizer


class FrozenVarianceAdam(ReducerOptimizer, torch.optim.AdamW):
    """AdamW for ``warmup`` steps on ``reducer``'s averaged gradients, then the frozen-variance update."""

    state_layout = "per_rank"
    legacy_key = ""
    """The key under which checkpoints written before ringtrain.optim kept the compressor's state."""

    def __init__(self, reducer: AveragingReducer, params, *, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, warmup: int = 100):
        name = type(self).__name__
        # The rule is compression/compatibility.py's, which TrainConfig checks too; it asks only whether
        # the reducer compresses at all, so the spec stands for the compressor here.
        reason = onebit_adam_conflict(reducer.zero, None if reducer.compression_spec == "none"
                                      else reducer.compression_spec)
        if reason:
            raise ValueError(f"{name} on a GradientReducer with zero or compression: not supported — {reason}")
        if not (isinstance(warmup, int) and warmup >= 1):
            raise ValueError(f"warmup={warmup!r}: {name} needs at least one step of AdamW, a whole number >= 1")
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.reducer, self.comm, self.warmup = reducer, reducer.comm, warmup
        self.steps = 0
        self.last_wire_bytes = 0
        """Bytes this rank sent averaging the momentum in the last step (0 in the warm-up: the reducer sent)."""

    @property
    def frozen(self) -> bool:
        return self.steps >= self.warmup

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def step(self, closure=None):
        """One optimizer step. Collective after the warm-up (the momentum's average)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.frozen:
            self._frozen_step()
        else:
            _adamw_step(self)
        self.steps += 1
        if self.steps == self.warmup:
            self._freeze()
        return loss

    def _freeze(self) -> None:
        """From now on: local gradients, and a variance (and its age) that no longer changes."""
        self.reducer.keep_local_gradients()
        for p in self._params():  # a parameter that never had a gradient gets AdamW's initial state
            state = self.state[p]
            if not state:
                state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        self._start(self._params())

    @torch.no_grad()
    def _frozen_step(self) -> None:
        self.last_wire_bytes = self._average()
        # The momentum's average is what averages the step now: its bytes are the step's wire bytes.
        self.reducer.add_wire_bytes(self.last_wire_bytes)
        i = 0
        for group in self.param_groups:
            b1 = group["betas"][0]
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                state = self.state[p]
                # The variance's age at the freeze, as it stays; the momentum counts its own steps on from there.
                state.setdefault("momentum_steps", torch.tensor(float(state["step"])))
                state["momentum_steps"] += 1
                bc1 = 1 - b1 ** float(state["momentum_steps"])
                p.mul_(1 - lr * decay)
                self._apply(i, p, state, group, -lr / bc1)
                i += 1

    @staticmethod
    def variance_correction(state: dict, group: dict) -> float:
        """Adam's bias correction of the variance at its age, bc2 (1 for a variance that never had a step)."""
        steps = float(state["step"])
        return 1 - group["betas"][1] ** steps if steps else 1.0

    def _start(self, params: list[torch.Tensor]) -> None:
        """At the freeze, and on loading a state past it: set up the momentum's averaging."""
        raise NotImplementedError

    def _average(self) -> int:
        """Average the momenta over the ranks from this rank's gradients. Collective; returns the bytes sent."""
        raise NotImplementedError

    def _apply(self, i: int, p: torch.Tensor, state: dict, group: dict, step_size: float) -> None:
        """``p += step_size * (averaged momentum / D)`` for parameter ``i`` (counting through the groups)."""
        raise NotImplementedError

    def _compressor_state(self) -> dict | None:
        raise NotImplementedError

    def _load_compressor_state(self, saved: dict | None) -> None:
        raise NotImplementedError

    def _compressor_nbytes(self) -> int:
        raise NotImplementedError

    def state_nbytes(self) -> int:
        """Bytes of optimizer state this rank holds: AdamW's, and the compressor's from the freeze on."""
        return super().state_nbytes() + self._compressor_nbytes()

    def state_dict(self) -> dict:
        """torch's AdamW state_dict, with the step count and the compressor's state (this rank's own)."""
        return {**super().state_dict(), "steps": self.steps, "compressor": self._compressor_state()}

    def load_state_dict(self, state: dict) -> None:
        """A ``state_dict()``, or one written before ringtrain.optim (``{"adamw": ..., "steps": ..., key: ...}``)."""
        state = self.current_format(state)
        super().load_state_dict({"state": state["state"], "param_groups": state["param_groups"]})
        self.steps = int(state["steps"])
        if self.frozen:
            self._freeze()  # with the loaded momenta; then the compressor's own state over it
        self._load_compressor_state(state["compressor"])

    def current_format(self, state: dict) -> dict:
        """``state`` as ``state_dict()`` writes it, whichever format it was saved in."""
        if "adamw" not in state:
            return state
        return {**state["adamw"], "steps": state["steps"], "compressor": state[self.legacy_key]}


def _adamw_step(optimizer: torch.optim.AdamW) -> None:
    """torch's AdamW step on ``optimizer``'s groups and state.

    Not through the hooked ``AdamW.step`` once torch has wrapped it (any
    AdamW made in the process does): that would run the step hooks
    registered on ``optimizer`` a second time, inside its own hooked step.
    """
    step = torch.optim.AdamW.step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    step(optimizer)
