"""Float64 references for the fused kernels: plain, naive torch that writes every matrix.

Kernel tests compare against these; benchmarks import them from here (never copy them). Each
reference is a plain function of tensors, differentiable with autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent_reference(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float = 0.1,
    normalize: bool = True,
    negatives: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """NT-Xent (SimCLR) loss, the naive way: the whole (2N, 2N + M) similarity matrix.

    z1, z2: (N, D); negatives: (M, D) or None, no gradient. Returns a 0-dim tensor: the mean
    over the 2N anchors of logsumexp_{j != i} s_ij - s_{i, p(i)}, s = z z^T / temperature.
    Computed in ``dtype`` (float64 for tests; benchmarks pass the input dtype).
    """
    z = torch.cat([z1, z2]).to(dtype)  # (2N, D)
    n2 = z.shape[0]
    half = n2 // 2
    if normalize:
        z = F.normalize(z, dim=1)
    cols = z
    if negatives is not None:
        neg = negatives.detach().to(dtype)
        cols = torch.cat([z, F.normalize(neg, dim=1) if normalize else neg])  # (2N + M, D)
    s = z @ cols.T / temperature  # (2N, 2N + M)
    idx = torch.arange(n2, device=z.device)
    s = s.masked_fill(F.one_hot(idx, cols.shape[0]).bool(), float("-inf"))
    pos = s[idx, (idx + half) % n2]
    return (torch.logsumexp(s, dim=1) - pos).mean()


def distill_ce_reference(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    alpha: float = 1.0,
    ignore_index: int = -100,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """SimCLR v2 distillation cross-entropy, the eager way (log_softmax + softmax + sum).

    student, teacher: (B, C) logits (the teacher gets no gradient); labels: (B,) or None. Returns
    a 0-dim tensor: mean over the B rows of α·soft_i + (1 − α)·[labels_i ≠ ignore_index]·hard_i,
    soft_i = −Σ_y softmax(t_i/τ)_y log softmax(s_i/τ)_y, hard_i = −log softmax(s_i)_{labels_i}.
    Computed in ``dtype`` (float64 for tests; benchmarks pass the input dtype).
    """
    s = student.to(dtype)
    t = teacher.detach().to(dtype)
    soft = -(torch.softmax(t / temperature, dim=1) * torch.log_softmax(s / temperature, dim=1)).sum(dim=1)
    rows = alpha * soft  # (B,)
    if alpha < 1.0:
        labelled = labels != ignore_index
        hard = F.cross_entropy(s, torch.where(labelled, labels, 0).long(), reduction="none")  # (B,)
        rows = rows + (1.0 - alpha) * torch.where(labelled, hard, 0.0)
    return rows.mean()
