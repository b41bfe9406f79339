"""The torch path of the distillation cross-entropy (``distill_ce`` on CPU tensors).

Same loss and gradient as the Triton kernel in ``distill_ce.py`` (see its module docstring),
computed block of rows by block of rows: each block is upcast to fp32 into up to three reused
(R, C) buffers that stay in the CPU's last-level cache, goes through torch's fused (log_)softmax
kernels writing into those buffers, and its gradient rows are written once, straight into the
(B, C) output. The only
B×C tensor it allocates is that gradient; eager torch writes several (the scaled logits, both
softmaxes, their product, and as many again in backward) and streams each through DRAM. A block
costs 6 full-size torch ops for the soft term at τ = 1 (12 at other τ, 5 more for the hard term).
"""

import torch

# Rows per block: about 2^20 fp32 values per buffer (4 MiB; the three buffers fit a 32 MiB L3) and
# at least one row. Measured at B = 1024, C = 21843 on the 2-core dev machine (fwd incl. gradient,
# 1 thread): 2^17 to 2^21 are within 20% of each other, all 2.5-3.4x faster than eager torch. With 2
# threads on a loaded machine each op pays an OpenMP barrier, and 2^17 (8x more ops) was 2-4x slower
# than 2^20: fewer, larger ops are the robust choice.
_BLOCK_ELEMS = 1 << 20


def _shifted_scaled(x: torch.Tensor, scale: float, out: torch.Tensor | None) -> torch.Tensor:
    """Logits ready for an fp32 (log_)softmax at temperature 1/scale: x itself when scale is 1
    (the softmax upcasts), else (x − rowmax x) · scale in out. Subtracting before scaling keeps
    exact the values near the max, which carry the probability: with logits of 100 at τ = 0.1,
    x/τ would round by ±3e-5 and move each probability by as much, relatively."""
    if scale == 1.0:
        return x
    row_max = x.amax(dim=1, keepdim=True).float()  # (n, 1); exact for any input dtype
    return torch.sub(x, row_max, out=out).mul_(scale)  # the subtraction promotes x to fp32


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
    # a: the student's shifted logits (only when τ ≠ 1); b: teacher logits, then log P_S; c: P_T,
    # then log P_S at τ = 1.
    buf_a = torch.empty(shape, dtype=torch.float32) if has_soft and temperature != 1.0 else None
    buf_b = torch.empty(shape, dtype=torch.float32) if has_soft else None
    buf_c = torch.empty(shape, dtype=torch.float32)
    loss_rows = torch.empty(n_rows, dtype=torch.float32)
    grad = None if grad_dtype is None else torch.empty((n_rows, n_cols), dtype=grad_dtype)
    soft_scale = alpha / (n_rows * temperature)  # ∂L/∂s = α/(Bτ) · (P_S,τ − P_T)

    for start in range(0, n_rows, rows_per_block):
        stop = min(start + rows_per_block, n_rows)
        n = stop - start
        s_in, c = student[start:stop], buf_c[:n]
        grad_rows = None if grad is None else grad[start:stop]
        soft_grad = None
        block_loss = torch.zeros(n)
        if has_soft:
            b = buf_b[:n]
            t = _shifted_scaled(teacher[start:stop], inv_temperature, b)
            p_t = torch.softmax(t, dim=1, dtype=torch.float32, out=c)
            s = _shifted_scaled(s_in, inv_temperature, None if buf_a is None else buf_a[:n])
            log_p_s = torch.log_softmax(s, dim=1, dtype=torch.float32, out=b)
            # soft_i = −Σ_y P_T log P_S,τ: a batched (1, C)·(C, 1) product per row, no (n, C) temporary.
            cross = torch.bmm(p_t.unsqueeze(1), log_p_s.unsqueeze(2)).view(n)
            block_loss.sub_(cross, alpha=alpha)
            if grad is not None:
                soft_grad = log_p_s.exp_().sub_(p_t)  # in b
        if has_hard:
            y = labels[start:stop].to(torch.int64)
            labelled = y != ignore_index
            safe_y = torch.where(labelled, y, 0).unsqueeze(1)  # (n, 1)
            log_p = torch.log_softmax(s_in, dim=1, dtype=torch.float32, out=c)  # P_T is spent
            hard = log_p.gather(1, safe_y).view(n).neg_()
            block_loss.add_(torch.where(labelled, hard, 0.0), alpha=1.0 - alpha)
            if grad is not None:
                # (1 − α)·m_i/B · (P_S,1 − onehot(y)), then the soft part added into it.
                hard_grad = log_p.exp_().scatter_add_(1, safe_y, torch.full((n, 1), -1.0))
                hard_grad.mul_(labelled.unsqueeze(1) * ((1.0 - alpha) / n_rows))
                if soft_grad is not None:
                    hard_grad.add_(soft_grad, alpha=soft_scale)
                grad_rows.copy_(hard_grad)
        elif grad is not None:
            torch.mul(soft_grad, soft_scale, out=grad_rows)
        loss_rows[start:stop] = block_loss
    return loss_rows.sum() / n_rows, grad
