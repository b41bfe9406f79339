"""The torch path of the distillation cross-entropy (``distill_ce`` on CPU tensors).

Same loss and gradient as the Triton kernel in ``distill_ce.py`` (see its module docstring),
computed block of rows by block of rows: each block is upcast to fp32 in three reused (R, C)
buffers that stay in the CPU's cache, its loss and gradient are computed with in-place torch ops,
and its gradient rows are written once into the (B, C) output. The only B×C tensor it allocates
is that gradient; eager torch writes several (the scaled logits, both softmaxes, their product,
and as many again in backward) and streams each through DRAM.
"""

import torch

# Rows per block: about 2^16 fp32 values per buffer (256 KB, three buffers fit a 1-2 MB L2) and at
# least one row. torch splits each op of the block over its intra-op threads (grain 32768).
_BLOCK_ELEMS = 1 << 16


def distill_ce_forward_torch(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
    ignore_index: int,
    grad_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and gradient on validated inputs, with the interface of ``distill_ce_forward``.

    student, teacher: (B, C) logits. labels: (B,) integer or None (then alpha must be 1).
    Returns the 0-dim fp32 loss and ∂loss/∂student (B, C) in grad_dtype, or None when grad_dtype
    is None.
    """
    n_rows, n_cols = student.shape
    has_soft, has_hard = alpha > 0.0, alpha < 1.0
    inv_temperature = 1.0 / temperature
    rows_per_block = max(1, _BLOCK_ELEMS // n_cols)
    shape = (min(rows_per_block, n_rows), n_cols)
    buf_s = torch.empty(shape, dtype=torch.float32)
    buf_t = torch.empty(shape, dtype=torch.float32) if has_soft else None
    buf_b = torch.empty(shape, dtype=torch.float32) if has_soft else None
    loss_rows = torch.empty(n_rows, dtype=torch.float32)
    grad = None if grad_dtype is None else torch.empty((n_rows, n_cols), dtype=grad_dtype)

    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        n = stop - start
        s = buf_s[:n].copy_(student[start:stop])  # (n, C) fp32
        m_s = s.amax(dim=1, keepdim=True)  # (n, 1)
        row_loss = loss_rows[start:stop]
        row_loss.zero_()
        if has_soft:
            # P_T = softmax(t/τ), formed in place from (t − max t)/τ.
            p_t = buf_t[:n].copy_(teacher[start:stop])
            p_t.sub_(p_t.amax(dim=1, keepdim=True)).mul_(inv_temperature).exp_()
            p_t.div_(p_t.sum(dim=1, keepdim=True))
            # soft = lse(s/τ) − Σ P_T s/τ, both relative to max(s)/τ so nothing large cancels.
            d = torch.sub(s, m_s, out=buf_b[:n]).mul_(inv_temperature)  # (s − max s)/τ ≤ 0
            cross = torch.bmm(p_t.unsqueeze(1), d.unsqueeze(2)).view(n)  # Σ_y P_T · d
            z_b = d.exp_().sum(dim=1, keepdim=True)
            row_loss.add_(torch.log(z_b).view(n).sub_(cross), alpha=alpha)
            if grad is not None:
                # α/(Bτ) · (P_S,τ − P_T)
                d.div_(z_b).sub_(p_t).mul_(alpha / (n_rows * temperature))
        if has_hard:
            y = labels[start:stop].to(torch.int64)
            labelled = y != ignore_index
            safe_y = torch.where(labelled, y, 0).unsqueeze(1)  # (n, 1)
            s_y = s.gather(1, safe_y).view(n)
            z_c = s.sub_(m_s).exp_().sum(dim=1, keepdim=True)
            hard = (m_s + torch.log(z_c)).view(n).sub_(s_y)
            row_loss.add_(torch.where(labelled, hard, 0.0), alpha=1.0 - alpha)
            if grad is not None:
                # (1 − α)·m_i/B · (P_S,1 − onehot(y))
                s.div_(z_c)
                s.scatter_add_(1, safe_y, torch.full((n, 1), -1.0))
                s.mul_(labelled.unsqueeze(1) * ((1.0 - alpha) / n_rows))
                if has_soft:
                    d.add_(s)
        if grad is not None:
            grad[start:stop].copy_(d if has_soft else s)
    return loss_rows.sum() / n_rows, grad
