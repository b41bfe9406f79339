"""Batch norm with statistics over the global batch, as SimCLR v2's global BN.

On CUDA this is ``torch.nn.SyncBatchNorm``. That class refuses CPU tensors, so CPU runs (gloo)
get :class:`GlooSyncBatchNorm`: one all-reduce of the per-channel sum, sum of squares and count,
through a differentiable all-reduce whose backward all-reduces the gradient, so the gradients are
those of batch norm over the concatenated global batch (with each rank's loss counted: see
``core/stages.py`` for how that meets DeepSpeed's gradient averaging).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """y = sum over ranks of x; the gradient of x is the sum over ranks of the gradient of y, since
    every rank's loss reads y. (``torch.distributed.nn.functional.all_reduce`` does the same and is
    deprecated in torch 2.13.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlooSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover every rank's batch; works on CPU tensors.

    Shape: input ``(N, C)`` or ``(N, C, *)``; output the same. With one rank (or no process
    group) it computes exactly what ``nn.BatchNorm`` does.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of shape (N, C, *), got {tuple(input.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and synced):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        local_count = x.numel() // x.shape[1]
        xf = x.float()
        count = xf.new_full((1,), float(local_count))
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])  # (2C + 1,)
        stats = _AllReduceSum.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n  # (C,)
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0.0)  # biased, as BN normalises
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n.item())
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape)
        if self.bias is not None:
            y = y + self.bias.view(shape)
        return y.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        # Same factor as nn.BatchNorm: a cumulative average when momentum is None.
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Return ``module`` with every batch norm synchronised across ranks (in place where possible).

    CUDA models get ``torch.nn.SyncBatchNorm``; CPU models get :class:`GlooSyncBatchNorm`,
    carrying over parameters and running statistics.
    """
    first = next(module.parameters(), None)
    if first is not None and first.is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        sync = GlooSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine and module.bias is None:
            # The projection head's last BN has gamma only (no beta); keep it that way.
            sync.register_parameter("bias", None)
        sync.load_state_dict(module.state_dict())
        sync.train(module.training)
        return sync
    for name, child in module.named_children():
        module.add_module(name, _convert_cpu(child))
    return module
