"""DGC under AdamW: 1-bit Adam's frozen variance, then Deep Gradient Compression of Adam's momentum.

DGC's momentum correction (Lin et al., 2018) needs an update that is linear in
the gradients: the velocity each rank accumulates must add up to what the
optimizer would have applied. Adam's is not, through its variance. 1-bit Adam
(Tang et al., 2021) observed that the variance settles early and can be
frozen; from then on AdamW is momentum SGD with a fixed per-coordinate step
lr / D, where D = sqrt(v / bc2) + eps. So, after ``warmup`` steps of AdamW on
averaged gradients (frozen_variance_adam.py, as in OneBitAdam):

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

    optimizer = DGCAdam(reducer, model.parameters(), lr=1e-3, betas=(0.9, 0.95), warmup=100,
                        dgc=ringtrain.compression.get("dgc:ratio=0.01,momentum=0.9,masking=0"))
"""
import torch

from ..compression.compatibility import dgc_adam
from ..compression.dgc import DGC
from .frozen_variance_adam import FrozenVarianceAdam


class DGCAdam(FrozenVarianceAdam):
    """AdamW for ``warmup`` steps, then DGC (``dgc``, momentum = beta1) on the momentum over a frozen variance.

    ``options``: lr, betas, eps, weight_decay and warmup, as FrozenVarianceAdam takes them.
    """

    legacy_key = "dgc"

    def __init__(self, reducer, params, *, dgc: DGC, **options):
        super().__init__(reducer, params, **options)
        self.dgc = dgc
        self._check_momentum()
        self.denominator = None  # D of every parameter, flat, from the freeze on

    def _check_momentum(self) -> None:
        for group in self.param_groups:
            b1 = group["betas"][0]
            if not dgc_adam(self.dgc, "adamw", b1):
                raise ValueError(f"dgc momentum={self.dgc.momentum:g}: under AdamW, DGC's momentum is Adam's beta1 "
                                 f"({b1:g}), in every parameter group")

    def _start(self, params: list[torch.Tensor]) -> None:
        """D of every parameter, flat; a fresh freeze (not a resume) starts the velocity from the momentum."""
        self._check_momentum()  # a group added since the constructor
        denominators, momenta = [], []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                # ** 0.5, as before: it rounds differently from sqrt in some cases, and runs must stay bit for bit.
                bc2 = self.variance_correction(state, group)
                denominators.append((state["exp_avg_sq"].sqrt() / bc2 ** 0.5).add_(group["eps"]).reshape(-1))
                momenta.append(state["exp_avg"].reshape(-1))
        self.denominator = torch.cat(denominators)
        self._gradient = torch.zeros(self.denominator.numel())
        if self.dgc.velocity is None:
            self.dgc.velocity = (torch.cat(momenta) / self.denominator).numpy()
            self.dgc.accumulated = torch.zeros(self.denominator.numel()).numpy()
        self._sizes = [p.numel() for p in params]

    def _average(self) -> int:
        b1 = self.dgc.momentum
        for piece, p in zip(torch.split(self._gradient, self._sizes), self._params()):
            piece.copy_(p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()))
        self._gradient.mul_(1 - b1).div_(self.denominator)
        update = torch.from_numpy(self.dgc.allreduce_mean(self._gradient.numpy(), self.comm))
        self._updates = [u.view_as(p) for u, p in zip(torch.split(update, self._sizes), self._params())]
        n = self.comm.Get_size()
        # An allgather of every rank's top-k: what this rank receives (and, over the ring, sends).
        return (n - 1) * self.dgc.wire_bytes(update.numel()) if n > 1 else 0

    def _apply(self, i: int, p: torch.Tensor, state: dict, group: dict, step_size: float) -> None:
        p.add_(self._updates[i], alpha=step_size)

    def _compressor_state(self) -> dict:
        """DGC's velocity u, pending updates v and step count: this rank's."""
        return self.dgc.state_dict()

    def _load_compressor_state(self, saved: dict) -> None:
        self.dgc.load_state_dict(saved)

    def _compressor_nbytes(self) -> int:
        if self.dgc.velocity is None:
            return 0
        return self.dgc.velocity.nbytes + self.dgc.accumulated.nbytes

    def resume_state(self, state: dict, saved_world: int, world: int) -> tuple[dict, str | None]:
        """Every rank continues from the velocity and pending updates of the rank whose state it was given."""
        return self.current_format(state), (f"DGC's per-rank velocity was saved for {saved_world} ranks; at {world} "
                                            "every rank continues from rank 0's")
