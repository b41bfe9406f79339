"""The losses as ``nn.Module``s, thin wrappers over the fused kernels in ``flashclr.kernels``."""

from __future__ import annotations

import math

import torch
from torch import nn

from flashclr.kernels.distill_ce import distill_ce


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
