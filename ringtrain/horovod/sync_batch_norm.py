"""Horovod's SyncBatchNorm: batch normalization over the samples of every rank, on CPU tensors.

In training, each channel is normalized with the mean and variance of the
whole batch, all ranks' samples together (each rank may hold a different
number, even none), so the output equals one process's BatchNorm on the
concatenated batch. Forward sends one sum allreduce of ``2C + 1`` float64
(sample count, per-channel sum and sum of squares); backward one of ``2C``
(the per-channel sums of dy and dy * x_hat), which the input's gradient
needs. The weight's and bias's gradients stay this rank's own sums, as in
Horovod: the optimizer's allreduce adds the ranks' shares, as for any other
parameter. Both talk on the job's ``norm`` communicator, through
ringtrain.allreduce, whose handshake makes a mismatch (a different channel
count on one rank) an error on every rank instead of a hang.

In eval with running statistics, and on one rank, it is torch's batch norm.

    bn = hvd.SyncBatchNorm(64)          # where the model had nn.BatchNorm2d(64)
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from .. import collectives
from .basics import job


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics span every rank's batch; any input of shape (N, C, ...).

    Arguments as torch's BatchNorm: ``momentum=None`` keeps a cumulative
    average, ``track_running_stats=False`` normalizes with the batch's
    statistics in eval too (synchronized then as well, as Horovod does).
    Collective in training: every rank must call forward (and backward) on
    its layers in the same order.

    >>> bn = SyncBatchNorm(3)
    >>> bn.running_mean.shape, bn.weight.shape
    (torch.Size([3]), torch.Size([3]))
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm: expected at least 2D input (N, C, ...), got {input.dim()}D input")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm: input has {input.shape[1]} channels (shape {tuple(input.shape)}); "
                             f"this layer has num_features={self.num_features}")
        # The momentum torch's BatchNorm would use: None means a cumulative average over the batches seen.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        batch_stats = self.training or not self.track_running_stats
        comm = job().norm
        if not batch_stats or comm.Get_size() == 1:
            # Without running statistics the buffers are None, and F.batch_norm uses the batch's.
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias, batch_stats,
                                factor, self.eps)
        return _SyncBatchNormFunction.apply(input, self.weight, self.bias, self.running_mean, self.running_var,
                                            self.eps, factor, comm)


def _channel_dims(x: torch.Tensor) -> list[int]:
    """Every dimension but the channels' (1): the ones a channel's statistics run over."""
    return [0] + list(range(2, x.dim()))


def _per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(C,) -> (1, C, 1, ...), to broadcast against ``x``."""
    return v.reshape([1, -1] + [1] * (x.dim() - 2))


def _sum_over_ranks(values: torch.Tensor, comm) -> torch.Tensor:
    """Sum a small float64 CPU vector over the ranks of ``comm`` (ringtrain's allreduce, with its handshake)."""
    a = np.ascontiguousarray(values.detach().cpu().numpy(), dtype=np.float64)
    collectives.allreduce(a, op="sum", algorithm="mpi", comm=comm)
    return torch.from_numpy(a)


class _SyncBatchNormFunction(torch.autograd.Function):
    """Normalize with the statistics of all ranks' batches; backward sums the two gradient reductions across ranks."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, comm):
        x = x.contiguous()
        c = x.shape[1]
        acc = torch.promote_types(x.dtype, torch.float32)  # 16-bit inputs: statistics in float32
        dims = _channel_dims(x)
        n_local = x.numel() // c if c else 0
        # Local mean and variance by torch's two-pass var_mean (stable), then the sum and the sum of squares in
        # float64: summed over ranks, sumsq - n * mean^2 cancels only (mean / std)^2 * 2^-53 of the variance.
        if n_local:
            var, mean = torch.var_mean(x.to(acc), dims, correction=0)
            mean, var = mean.double(), var.double()
        else:  # an empty batch on this rank adds nothing
            mean = var = torch.zeros(c, dtype=torch.float64)
        local = torch.cat([torch.tensor([float(n_local)], dtype=torch.float64),
                           n_local * mean.cpu(), n_local * (var.cpu() + mean.cpu() ** 2)])
        total = _sum_over_ranks(local, comm)
        n = total[0].item()
        if n <= 1:  # as torch's BatchNorm: the variance of one value is not defined
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel when training, got {int(n)} "
                             f"over all ranks (this rank's input size {list(x.shape)})")
        g_mean = total[1:1 + c] / n
        g_var = (total[1 + c:] / n - g_mean ** 2).clamp_min(0.0)  # biased: the one that normalizes
        if running_mean is not None:
            with torch.no_grad():
                # torch's update: the running variance takes the unbiased variance.
                running_mean.mul_(1 - momentum).add_(g_mean.to(running_mean), alpha=momentum)
                running_var.mul_(1 - momentum).add_((g_var * n / (n - 1)).to(running_var), alpha=momentum)
        mean = g_mean.to(device=x.device, dtype=acc)
        invstd = torch.rsqrt(g_var + eps).to(device=x.device, dtype=acc)
        x_hat = (x.to(acc) - _per_channel(mean, x)) * _per_channel(invstd, x)
        y = x_hat
        if weight is not None:
            y = y * _per_channel(weight.to(acc), x) + _per_channel(bias.to(acc), x)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.comm = n, comm
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        acc = mean.dtype
        dy = dy.contiguous().to(acc)
        dims = _channel_dims(x)
        x_hat = (x.to(acc) - _per_channel(mean, x)) * _per_channel(invstd, x)
        sum_dy = dy.sum(dims)              # (C,): this rank's dL/dbias
        sum_dy_xhat = (dy * x_hat).sum(dims)  # (C,): this rank's dL/dweight
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            c = sum_dy.numel()
            total = _sum_over_ranks(torch.cat([sum_dy.double(), sum_dy_xhat.double()]), ctx.comm)
            mean_dy = total[:c].to(device=x.device, dtype=acc) / ctx.n
            mean_dy_xhat = total[c:].to(device=x.device, dtype=acc) / ctx.n
            # d/dx of (x - mean) * invstd, with mean and variance over all ranks' samples.
            scale = invstd if weight is None else invstd * weight.to(acc)
            grad_x = (_per_channel(scale, x) * (dy - _per_channel(mean_dy, x) - x_hat * _per_channel(mean_dy_xhat, x)))
            grad_x = grad_x.to(x.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat.to(weight.dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            grad_bias = sum_dy.to(weight.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None, None
