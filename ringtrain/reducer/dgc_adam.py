"""DGC under AdamW: 1-bit Adam's frozen variance, then Deep Gradient Compression of Adam's momentum.

DGC's momentum correction (Lin et al., 2018) needs an update that is linear in
the gradients: the velocity each rank accumulates must add up to what the
optimizer would have applied. Adam's is not, through its variance. 1-bit Adam
(Tang et al., 2021) observed that the variance settles early and can be
frozen; from then on AdamW is momentum SGD with a fixed per-coordinate step
lr / D, where D = sqrt(v / bc2) + eps. So, after ``warmup`` steps of AdamW on
averaged gradients (this phase is AdamW exactly, as in OneBitAdam):

    g' = (1 - b1) g / D                 this rank's gradient, in the units of the update
    DGC on g' with momentum b1          u = b1 u + g'  (u = this rank's m / D); v += u;
                                        top-k of |v| sent, and zeroed in v (and in u
                                        with masking=1; masking=0 is what works here)
    p = p (1 - lr wd) - (lr / bc1) mean_ranks(sparse v)

Because D is the same on every rank and does not change, DGC on g' selects the
coordinates whose pending update is largest, and the sent values add up to the
frozen-variance AdamW update, only delayed. u starts from the momentum at the
freeze. The density warm-up, local clipping and masking are DGC's own
(compression/dgc.py), counted from the freeze. State per rank: AdamW's, u and
v; a resume at the same world size is exact.
"""
import torch

from ..compression.compatibility import dgc_adam
from ..compression.dgc import DGC
from .onebit_adam import OneBitAdam


class DGCAdam(OneBitAdam):
    """AdamW for ``warmup`` steps, then DGC (``dgc``, momentum = beta1) on the momentum over a frozen variance."""

    def __init__(self, reducer, params, *, dgc: DGC, **options):
        super().__init__(reducer, params, **options)
        b1 = self.adamw.param_groups[0]["betas"][0]
        if not dgc_adam(dgc, "adamw", b1):
            raise ValueError(f"dgc momentum={dgc.momentum:g}: under AdamW, DGC's momentum is Adam's beta1 ({b1:g})")
        self.dgc = dgc
        self.denominator = None  # D of every parameter, flat, from the freeze on

    def _freeze(self) -> None:
        self.reducer.averaging = False
        params = self._params()
        self._fill_state()
        denominators, momenta = [], []
        for group in self.adamw.param_groups:
            _, b2 = group["betas"]
            for p in group["params"]:
                state = self.adamw.state[p]
                steps = float(state["step"])
                bc2 = 1 - b2 ** steps if steps else 1.0
                denominators.append((state["exp_avg_sq"].sqrt() / bc2 ** 0.5).add_(group["eps"]).reshape(-1))
                momenta.append(state["exp_avg"].reshape(-1))
        self.denominator = torch.cat(denominators)
        self._gradient = torch.zeros(self.denominator.numel())
        if self.dgc.velocity is None:  # a fresh freeze, not a resume: the velocity continues the momentum
            self.dgc.velocity = (torch.cat(momenta) / self.denominator).numpy()
            self.dgc.accumulated = torch.zeros(self.denominator.numel()).numpy()
        self._sizes = [p.numel() for p in params]

    @torch.no_grad()
    def _compressed_step(self) -> None:
        params = self._params()
        b1 = self.adamw.param_groups[0]["betas"][0]
        for piece, p in zip(torch.split(self._gradient, self._sizes), params):
            piece.copy_(p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()))
        self._gradient.mul_(1 - b1).div_(self.denominator)
        update = torch.from_numpy(self.dgc.allreduce_mean(self._gradient.numpy(), self.comm))
        n = self.comm.Get_size()
        # An allgather of every rank's top-k: what this rank receives (and, over the ring, sends).
        self.sent = (n - 1) * self.dgc.wire_bytes(update.numel()) if n > 1 else 0
        self.reducer.last_wire_bytes += self.sent
        at = 0
        for group in self.adamw.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                state = self.adamw.state[p]
                state.setdefault("momentum_steps", torch.tensor(float(state["step"])))
                state["momentum_steps"] += 1
                bc1 = 1 - b1 ** float(state["momentum_steps"])
                p.mul_(1 - lr * decay)
                p.add_(update[at:at + p.numel()].view_as(p), alpha=-lr / bc1)
                at += p.numel()

    def state_nbytes(self) -> int:
        total = self._adamw_nbytes()
        if self.dgc.velocity is not None:
            total += self.dgc.velocity.nbytes + self.dgc.accumulated.nbytes
        return total

    @property
    def last_wire_bytes(self) -> int:
        return getattr(self, "sent", 0)

    def state_dict(self) -> dict:
        return {"adamw": self.adamw.state_dict(), "steps": self.steps, "dgc": self.dgc.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adamw.load_state_dict(state["adamw"])
        self.steps = int(state["steps"])
        self.dgc.load_state_dict(state["dgc"])
        if self.frozen:
            self._freeze()
