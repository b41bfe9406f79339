"""Distributed helpers for the fused losses that also work in a single process.

Without an initialised ``torch.distributed`` process group, :func:`rank` is 0, :func:`world_size`
is 1 and the gathers return their input, so the losses need no special case on one CPU.

- :func:`all_gather_rows` concatenates equal-shaped tensors of every rank along dim 0, in rank
  order, without gradient (the fused NT-Xent uses it for the embeddings and the per-row
  logsumexps; its backward needs no gradient communication, see ``nt_xent.py``).
- :func:`all_gather_with_grad` is the differentiable version for losses written in plain torch:
  the backward of each rank's slot is summed over all ranks and handed to the rank that owns it
  (several public ports keep only the local slot's gradient, which is wrong when every rank's
  loss reads every slot).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of ranks; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (R, ...) of every rank along dim 0 in rank order: (world_size * R, ...).

    No gradient flows through. Every rank must pass the same shape.
    """
    if world_size() == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return all_gather_rows(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss may read every slot: the owner's gradient is the sum over ranks.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Differentiable :func:`all_gather_rows`: (R, ...) -> (world_size * R, ...).

    The gradient of this rank's rows is the sum of the gradients every rank computed for them.
    In a single process it returns ``x`` itself.
    """
    if world_size() == 1:
        return x
    return _AllGatherWithGrad.apply(x)
