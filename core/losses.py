"""The losses as ``nn.Module``s, thin wrappers over the fused kernels in ``flashclr.kernels``."""

from __future__ import annotations

import math

import torch
from torch import nn

from flashclr.kernels.distill_ce import distill_ce
from flashclr.kernels.distributed import all_gather_rows
from flashclr.kernels.nt_xent import nt_xent


class DistillationLoss(nn.Module):
    """SimCLR v2 distillation: cross-entropy of the student against the teacher's softmax at τ,
    plus an optional hard-label cross-entropy (at τ = 1) on labelled rows.

    ``L = (1/B) · Σ_i [α · soft_i + (1 − α) · m_i · hard_i]``, with m_i = 1 when
    ``labels[i] != ignore_index``; both terms are averaged over all B rows (see
    :func:`flashclr.kernels.distill_ce` for why). Runs the fused Triton kernel on CUDA and a
    chunked torch path on CPU; the teacher never receives a gradient.

    Args:
        temperature: τ > 0 of both softmaxes of the soft term.
        alpha: weight α ∈ [0, 1] of the soft term; below 1, ``forward`` needs labels.
        ignore_index: label of rows without a hard term (unlabelled images of a mixed batch).

    Shape:
        - student_logits: (B, C), float32, bfloat16 or float16.
        - teacher_logits: (B, C).
        - labels: (B,) integer, or None when alpha is 1.
        - output: () float32.

    Examples:
        >>> criterion = DistillationLoss(temperature=1.0)
        >>> with torch.no_grad():
        ...     teacher_logits = teacher(images)
        >>> loss = criterion(student(images), teacher_logits)
        >>> loss.backward()
    """

    def __init__(self, temperature: float = 1.0, alpha: float = 1.0, *, ignore_index: int = -100):
        super().__init__()
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"DistillationLoss: temperature must be a finite number > 0, got {temperature}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"DistillationLoss: alpha must lie in [0, 1], got {alpha}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.ignore_index = int(ignore_index)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        return distill_ce(
            student_logits,
            teacher_logits,
            self.temperature,
            labels=labels,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
        )

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, alpha={self.alpha}, ignore_index={self.ignore_index}"


class NTXentLoss(nn.Module):
    """SimCLR's NT-Xent loss over the 2N views of a batch, on the fused kernel
    :func:`flashclr.kernels.nt_xent` (Triton on CUDA, tiled torch on CPU).

    With ``memory_bank_size > 0`` it keeps a FIFO queue of the last ``memory_bank_size``
    normalised embeddings (detached; with ``gather_distributed``, of the global batch, so every
    rank holds the same queue) and passes it as extra ``negatives``; the current batch is pushed
    after its loss is computed, and only in training mode.

    Args:
        temperature: τ > 0.
        gather_distributed: columns are the whole batch of every rank (torch.distributed).
        memory_bank_size: rows of the queue of past embeddings; 0 disables it.

    Shape:
        - z1, z2: (N, D) projections of the two views, float32, bfloat16 or float16.
        - output: () in the input dtype.

    Examples:
        >>> criterion = NTXentLoss(temperature=0.1)
        >>> loss = criterion(head(encoder(view1)), head(encoder(view2)))
        >>> loss.backward()
    """

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False, memory_bank_size: int = 0):
        super().__init__()
        if not (isinstance(temperature, int | float) and temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"NTXentLoss: temperature must be a finite number > 0, got {temperature}")
        if not isinstance(memory_bank_size, int) or memory_bank_size < 0:
            raise ValueError(f"NTXentLoss: memory_bank_size must be an int >= 0, got {memory_bank_size}")
        self.temperature = float(temperature)
        self.gather_distributed = bool(gather_distributed)
        self.memory_bank_size = memory_bank_size
        # Sized on the first batch (D is not known before); saved with the module's state.
        self.register_buffer("queue", torch.zeros(0, 0))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("head", torch.zeros((), dtype=torch.long))

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        negatives = None
        if self.memory_bank_size and int(self.filled) > 0:
            negatives = self.queue[: int(self.filled)]
            if negatives.shape[1] != z1.shape[-1]:
                raise ValueError(
                    f"NTXentLoss: the memory bank holds D = {negatives.shape[1]}, "
                    f"got z1 with D = {z1.shape[-1]}"
                )
        loss = nt_xent(
            z1, z2, self.temperature, negatives=negatives, gather_distributed=self.gather_distributed
        )
        if self.memory_bank_size and self.training:
            self._enqueue(torch.cat([z1, z2]).detach())
        return loss

    @torch.no_grad()
    def _enqueue(self, z: torch.Tensor) -> None:
        keys = torch.nn.functional.normalize(z.float(), dim=1)  # (2N, D)
        if self.gather_distributed:
            keys = all_gather_rows(keys)  # (world · 2N, D), rank order
        if self.queue.numel() == 0:
            self.queue = torch.zeros(self.memory_bank_size, keys.shape[1], device=keys.device)
        size = self.memory_bank_size
        keys = keys[-size:]
        idx = (int(self.head) + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.head.fill_((int(self.head) + keys.shape[0]) % size)
        self.filled.fill_(min(int(self.filled) + keys.shape[0], size))
