"""MoCo-style memory of negatives for pretraining, as SimCLR v2 adds it (paper section 2).

A momentum copy of the network (its weights an exponential moving average of the trained ones,
decay ``momentum`` = 0.999) projects each batch; those projections, L2-normalised, enter a FIFO
queue of ``size`` rows that later steps use as extra negatives (no gradient). Positives still come
from the trained network's two views. Every rank keeps the same queue: it enqueues the projections
of the GLOBAL batch, so the negatives are those a single process would see.

The momentum network and the queue are a submodule of the objective, so DeepSpeed checkpoints them
with the model and ``--resume`` continues with the same memory.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from flashclr.kernels.distributed import all_gather_rows

from .models import SimCLRModel


class MomentumMemory(nn.Module):
    """Momentum network + queue of negatives.

    Shape: ``queue`` is (size, proj_dim); :meth:`negatives` returns the filled rows (M, proj_dim),
    M <= size (M = 0 until the first enqueue).
    """

    def __init__(self, model: SimCLRModel, size: int, momentum: float):
        super().__init__()
        if size < 1 or not 0.0 <= momentum < 1.0:
            raise ValueError(f"MomentumMemory: need size >= 1 and momentum in [0, 1), got {size}, {momentum}")
        self.momentum = momentum
        self.network = copy.deepcopy(model)
        for p in self.network.parameters():
            p.requires_grad_(False)
        dim = model.config["proj_dim"]
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # rows written so far
        self.register_buffer("head", torch.zeros((), dtype=torch.long))  # next row to overwrite

    def negatives(self) -> torch.Tensor:
        """(M, proj_dim) the rows written so far (the whole queue once it wrapped)."""
        return self.queue[: int(self.filled)]

    @torch.no_grad()
    def update_network(self, model: nn.Module) -> None:
        """w_m <- momentum * w_m + (1 - momentum) * w, for every parameter; buffers copied."""
        for pm, p in zip(self.network.parameters(), model.parameters(), strict=True):
            pm.mul_(self.momentum).add_(p.detach(), alpha=1.0 - self.momentum)
        for bm, b in zip(self.network.buffers(), model.buffers(), strict=True):
            bm.copy_(b)

    @torch.no_grad()
    def enqueue(self, views: torch.Tensor) -> None:
        """Project ``views`` (B, 3, H, W) with the momentum network and push the global batch."""
        keys = F.normalize(self.network.projections(views).float(), dim=1)  # (B, proj_dim)
        keys = all_gather_rows(keys)  # (world * B, proj_dim), rank order
        size = self.queue.shape[0]
        keys = keys[-size:]
        idx = (int(self.head) + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.head.fill_((int(self.head) + keys.shape[0]) % size)
        self.filled.fill_(min(int(self.filled) + keys.shape[0], size))
