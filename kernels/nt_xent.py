"""Fused NT-Xent (SimCLR) loss: Triton kernels that never write the similarity matrix.

Algorithm (the flash-attention recipe applied to a contrastive softmax, Dao et al. 2022):

    z = cat(z1, z2)                       (2N, D), L2-normalised along D when ``normalize``
    s_ij = z_i · z_j / τ
    l_i = logsumexp_{j ≠ i} s_ij - s_{i, p(i)},    p(i) = i ± N (the other view)
    loss = mean_i l_i

The denominator also runs over every row of ``negatives`` (M, D) (a memory bank, normalised the
same way, no gradient). With ``gather_distributed`` the anchors are this rank's 2N rows and the
columns are the global batch (every rank's z1 and z2, in rank order).

Forward: one program per block of anchor rows walks every column block with ``tl.dot`` and keeps
an online row maximum and sum; it stores one fp32 logsumexp per row, O(2N) memory. With
normalised inputs s_ij ≤ 1/τ, so the fixed maximum 1/τ replaces the online one (one exponential
per element, no rescaling) while exp(-2/τ) does not underflow in fp32 (τ ≥ 0.025).

Backward: recompute the tiles. With g_i = dloss/dl_i and P_ij = exp(s_ij - lse_i),

    dL/dz_k = (1/τ) [ Σ_{j ≠ k} (g_k P_kj + g_j P_jk) z_j + Σ_m g_k P_km n_m - 2 g_k z_{p(k)} ]

and S is symmetric, so P_jk = exp(s_kj - lse_j): one pass per row block that reads the row and the
column logsumexps gives the full gradient, with no atomics and no pass over the transpose. With
the fixed maximum m = 1/τ both terms share one exponential, P_kj g_k + P_jk g_j =
e^(s_kj - m/2) (c_k + c_j) with c = g e^(m/2 - lse) precomputed per row: at D = 128 the
exponential unit, not the tensor cores, is the bottleneck of this loop (as in FlashAttention-3). The
positive terms are O(N·D) and done in torch, as is the backward through the normalisation.
Distributed, the same formula with the gathered logsumexps and per-rank g gives each rank the
gradient of its own rows summed over every rank's loss, without communicating any gradient.

Precision: accumulation is fp32. bf16/fp16 use the tensor cores. fp32 inputs use tf32 on the GPU
(``tl.dot`` default): s_ij then carries a relative error of about 1e-3, so at τ = 0.1 expect
about 1e-2 absolute on the loss and 1e-2 relative on the gradients (the GPU tests use those). Under
``TRITON_INTERPRET=1`` the interpreter's ``tl.dot`` on bf16 is wrong (design.md), so the kernels
upcast tiles to fp32 there (``UPCAST``): that tests their logic, not the GPU's bf16 numerics.

Cautions: τ gets no gradient; with ``gather_distributed`` every rank must pass the same N and D.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from . import distributed
from .nt_xent_cpu import nt_xent_cpu_backward, nt_xent_cpu_forward

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
# Below this τ, exp(-2/τ) underflows fp32 (exp(-80) ≈ 1.8e-35 is still a normal number), so the
# fixed maximum 1/τ is used only for τ ≥ 1/40 and normalised inputs.
_FIXED_MAX_INV_TAU = 40.0


@triton.jit
def _scores(
    a_ptr,
    a_rows,
    a_mask,
    a_stride,
    b_ptr,
    b_rows,
    b_mask,
    b_stride,
    dim,
    UPCAST: tl.constexpr,
    SINGLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """(BLOCK_M, BLOCK_N) fp32 tile of a_rows · b_rows over the whole of D, masked to zero.

    SINGLE_D (dim ≤ BLOCK_D): one chunk, no inner loop, which keeps the column loop the only
    loop for the software pipeliner (the nested loop spilled registers in the AOT check).
    """
    offs_d = tl.arange(0, BLOCK_D)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in tl.range(0, BLOCK_D if SINGLE_D else dim, BLOCK_D):
        d_mask = (d0 + offs_d) < dim
        a = tl.load(
            a_ptr + a_rows[:, None] * a_stride + (d0 + offs_d)[None, :],
            mask=a_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        b = tl.load(
            b_ptr + b_rows[None, :] * b_stride + (d0 + offs_d)[:, None],
            mask=b_mask[None, :] & d_mask[:, None],
            other=0.0,
        )
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit
def _nt_xent_fwd_kernel(
    z_ptr,
    neg_ptr,
    lse_ptr,
    n_rows,
    n_cols,
    n_neg,
    dim,
    row_start,
    z_stride,
    neg_stride,
    scale,
    FIXED_MAX: tl.constexpr,
    UPCAST: tl.constexpr,
    SINGLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Row logsumexps of the NT-Xent similarities.

    z_ptr: (n_cols, dim) column embeddings, row stride ``z_stride``; the anchors are its rows
    ``row_start .. row_start + n_rows``. neg_ptr: (n_neg, dim) extra columns, ``neg_stride``.
    lse_ptr: (n_rows,) fp32 output, natural log. scale = log2(e)/τ (base-2 exponentials).
    FIXED_MAX: use the bound 1/τ as the maximum (normalised inputs) instead of the online one.
    UPCAST: convert tiles to fp32 before ``tl.dot`` (interpreter only). Grid: cdiv(n_rows, BLOCK_M).
    """
    tl.static_assert(BLOCK_D >= 16)
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    z_rows = row_start + rows
    # 1. running maximum m_i and sum l_i = Σ_j 2^(t_ij - m_i), t = s·log2(e), in base 2.
    if FIXED_MAX:
        m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) + scale
    else:
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    # 2. the batch columns, the self column masked out.
    for n0 in range(0, n_cols, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
        t = (
            _scores(
                z_ptr,
                z_rows,
                row_mask,
                z_stride,
                z_ptr,
                cols,
                col_mask,
                z_stride,
                dim,
                UPCAST,
                SINGLE_D,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
            )
            * scale
        )
        valid = col_mask[None, :] & (cols[None, :] != z_rows[:, None])
        m_i, l_i = _online_update(t, valid, m_i, l_i, FIXED_MAX)
    # 3. the negatives: plain extra columns.
    for n0 in range(0, n_neg, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < n_neg
        t = (
            _scores(
                z_ptr,
                z_rows,
                row_mask,
                z_stride,
                neg_ptr,
                cols,
                col_mask,
                neg_stride,
                dim,
                UPCAST,
                SINGLE_D,
                BLOCK_M,
                BLOCK_N,
                BLOCK_D,
            )
            * scale
        )
        m_i, l_i = _online_update(t, col_mask[None, :], m_i, l_i, FIXED_MAX)
    # 4. lse = ln 2 · (m + log2 l)
    tl.store(lse_ptr + rows, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=row_mask)


@triton.jit
def _online_update(t, valid, m_i, l_i, FIXED_MAX: tl.constexpr):
    """Fold the tile t (base-2 logits) into the running maximum and sum of each row."""
    if FIXED_MAX:
        p = tl.where(valid, tl.exp2(t - m_i[:, None]), 0.0)
        l_i = l_i + tl.sum(p, axis=1)
    else:
        t = tl.where(valid, t, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(t, axis=1))
        # A row with no valid column yet keeps m = -inf: shift by 0 to avoid (-inf) - (-inf).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(t - m_safe[:, None])
        l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(p, axis=1)
        m_i = m_new
    return m_i, l_i


@triton.jit
def _column_tile(
    a,
    a_ptr,
    a_rows,
    a_mask,
    b_ptr,
    b_rows,
    b_mask,
    a_stride,
    b_stride,
    dim,
    offs_d,
    d_mask,
    UPCAST: tl.constexpr,
    SINGLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Backward helper: the fp32 score tile a_rows · b_rows and b's (BLOCK_N, BLOCK_D) chunk at
    ``offs_d``. With SINGLE_D the chunk is all of D: one load serves both dots (``a`` preloaded)."""
    b = tl.load(
        b_ptr + b_rows[:, None] * b_stride + offs_d[None, :],
        mask=b_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if UPCAST:
        b = b.to(tl.float32)
    if SINGLE_D:
        t = tl.dot(a, tl.trans(b))
    else:
        t = _scores(
            a_ptr, a_rows, a_mask, a_stride, b_ptr, b_rows, b_mask, b_stride, dim,
            UPCAST, SINGLE_D, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
    return t, b


@triton.jit
def _nt_xent_bwd_kernel(
    z_ptr,
    neg_ptr,
    lse_ptr,
    g_ptr,
    acc_ptr,
    n_rows,
    n_cols,
    n_neg,
    dim,
    row_start,
    z_stride,
    neg_stride,
    acc_stride,
    scale,
    FIXED_MAX: tl.constexpr,
    UPCAST: tl.constexpr,
    SINGLE_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """acc_k = Σ_{j ≠ k} (g_k P_kj + g_j P_jk) z_j + Σ_m g_k P_km neg_m for a block of anchors.

    z_ptr, neg_ptr, n_*, row_start, strides, scale and FIXED_MAX as in the forward kernel.
    lse_ptr, g_ptr: (n_cols,) fp32 logsumexp and loss weight of every column's own row (S is
    symmetric, so P_jk = exp(s_kj - lse_j)). acc_ptr: (n_rows, dim) fp32 output, ``acc_stride``.
    Grid: (cdiv(n_rows, BLOCK_M), cdiv(dim, BLOCK_D)); axis 1 picks the output column chunk.

    FIXED_MAX factors both exponentials through the bound m = 1/τ (base 2: ``scale``):
    g_k 2^(t - lse_k) + g_j 2^(t - lse_j) = 2^(t - m/2) (c_k + c_j) with c = g e^(1/(2τ) - lse),
    so each element costs one exponential instead of two (the exponential unit, not the tensor
    cores, bounds this loop at D = 128). g_ptr then holds c, computed once per column by the
    launch helper, and lse_ptr is not read. Range: |t| ≤ m and lse ≥ log2(C - 1) - m, so
    2^(t - m/2) ∈ [2^(-3m/2), 2^(m/2)] and c ≤ g 2^(3m/2): for τ ≥ 1/40 (the forward's condition)
    both stay in fp32's normal range with a margin of 2^40 for a large g (fp16 loss scaling);
    splitting at m instead would overflow c from g ≈ 6000 on.
    """
    tl.static_assert(BLOCK_D >= 16)
    pid = tl.program_id(0)
    pid_d = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    z_rows = row_start + rows
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < dim
    # 1. the anchors' own base-2 logsumexp and weight.
    # Masked lanes read lse = +inf, so their 2^(t - lse) is 0 instead of an overflow.
    g_r = tl.load(g_ptr + z_rows, mask=row_mask, other=0.0)  # with FIXED_MAX: c_k
    if not FIXED_MAX:
        lse_r = tl.load(lse_ptr + z_rows, mask=row_mask, other=float("inf")) * 1.4426950408889634
    # The anchors' chunk of D: with SINGLE_D it is all of D, loaded once for every score tile.
    a = tl.load(
        z_ptr + z_rows[:, None] * z_stride + offs_d[None, :],
        mask=row_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    if UPCAST:
        a = a.to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    # 2. batch columns: W = g_k 2^(t - lse_k) + g_j 2^(t - lse_j), self column excluded.
    for n0 in range(0, n_cols, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
        t, zc = _column_tile(
            a, z_ptr, z_rows, row_mask, z_ptr, cols, col_mask, z_stride, z_stride, dim, offs_d, d_mask,
            UPCAST, SINGLE_D, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        t = t * scale
        g_c = tl.load(g_ptr + cols, mask=col_mask, other=0.0)
        if FIXED_MAX:
            w = tl.exp2(t - 0.5 * scale) * (g_r[:, None] + g_c[None, :])
        else:
            lse_c = tl.load(lse_ptr + cols, mask=col_mask, other=float("inf")) * 1.4426950408889634
            w = g_r[:, None] * tl.exp2(t - lse_r[:, None]) + g_c[None, :] * tl.exp2(t - lse_c[None, :])
        valid = row_mask[:, None] & col_mask[None, :] & (cols[None, :] != z_rows[:, None])
        w = tl.where(valid, w, 0.0)
        acc = tl.dot(w.to(zc.dtype), zc, acc)
    # 3. negatives: row terms only.
    for n0 in range(0, n_neg, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_mask = cols < n_neg
        t, nc = _column_tile(
            a, z_ptr, z_rows, row_mask, neg_ptr, cols, col_mask, z_stride, neg_stride, dim, offs_d, d_mask,
            UPCAST, SINGLE_D, BLOCK_M, BLOCK_N, BLOCK_D,
        )  # fmt: skip
        t = t * scale
        if FIXED_MAX:
            p = tl.exp2(t - 0.5 * scale) * g_r[:, None]
        else:
            p = g_r[:, None] * tl.exp2(t - lse_r[:, None])
        w = tl.where(row_mask[:, None] & col_mask[None, :], p, 0.0)
        acc = tl.dot(w.to(nc.dtype), nc, acc)
    # 4. store the fp32 accumulator.
    tl.store(
        acc_ptr + rows[:, None] * acc_stride + offs_d[None, :],
        acc,
        mask=row_mask[:, None] & d_mask[None, :],
    )


# Tile shapes (BLOCK_M, BLOCK_N, num_warps, num_stages) per input dtype: 128×64 score tiles with
# 8 warps for 16-bit inputs, the flash-attention forward shape for head dim ≤ 128 on A100/H100;
# fp32 tiles take twice the registers, so 64×64 (128×64 spilled 340-480 bytes in the AOT check).
# D is walked in chunks of at most 128. `python -m flashclr.kernels.aot` checks that every config
# compiles without spills for sm_80 and sm_90.
_CONFIGS = {
    torch.float32: (64, 64, 8, 2),
    torch.bfloat16: (128, 64, 8, 2),
    torch.float16: (128, 64, 8, 2),
}
MAX_BLOCK_D = 128


def _block_d(dim: int) -> int:
    return min(max(triton.next_power_of_2(dim), 16), MAX_BLOCK_D)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _upcast(dtype: torch.dtype) -> bool:
    # The interpreter's tl.dot is wrong on bf16 (design.md); fp32 and fp16 are right.
    return _interpreting() and dtype == torch.bfloat16


def nt_xent_triton_forward(
    z: torch.Tensor,
    row_start: int,
    n_rows: int,
    negatives: torch.Tensor | None,
    inv_tau: float,
    fixed_max: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the forward kernel. z: (C, D) contiguous; negatives: (M, D) or None.

    Returns the (n_rows,) fp32 logsumexps of the anchors ``z[row_start : row_start + n_rows]``,
    written into ``out`` when given (tests pass a NaN-filled one).
    """
    n_cols, dim = z.shape
    neg = z if negatives is None else negatives  # any valid pointer when there are none
    n_neg = 0 if negatives is None else negatives.shape[0]
    lse = torch.empty(n_rows, dtype=torch.float32, device=z.device) if out is None else out
    block_m, block_n, num_warps, num_stages = _CONFIGS[z.dtype]
    _nt_xent_fwd_kernel[(triton.cdiv(n_rows, block_m),)](
        z,
        neg,
        lse,
        n_rows,
        n_cols,
        n_neg,
        dim,
        row_start,
        z.stride(0),
        neg.stride(0),
        inv_tau * LOG2E,
        FIXED_MAX=fixed_max,
        UPCAST=_upcast(z.dtype),
        SINGLE_D=dim <= _block_d(dim),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=_block_d(dim),
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return lse


def nt_xent_triton_backward(
    z: torch.Tensor,
    row_start: int,
    n_rows: int,
    negatives: torch.Tensor | None,
    inv_tau: float,
    lse: torch.Tensor,
    g: torch.Tensor,
    fixed_max: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch the backward kernel; returns the (n_rows, D) fp32 accumulator (see the kernel),
    written into ``out`` (contiguous) when given.

    lse, g: (C,) fp32 per column of z. ``fixed_max``: factor the exponentials through the bound
    1/τ, one per element instead of two (see the kernel); the forward's condition holds for it.
    """
    if fixed_max:
        g = (g * torch.exp(0.5 * inv_tau - lse)).contiguous()  # (C,) c_j = g_j e^(1/(2τ) - lse_j)
    n_cols, dim = z.shape
    neg = z if negatives is None else negatives
    n_neg = 0 if negatives is None else negatives.shape[0]
    acc = torch.empty(n_rows, dim, dtype=torch.float32, device=z.device) if out is None else out
    block_d = _block_d(dim)
    block_m, block_n, num_warps, num_stages = _CONFIGS[z.dtype]
    _nt_xent_bwd_kernel[(triton.cdiv(n_rows, block_m), triton.cdiv(dim, block_d))](
        z,
        neg,
        lse,
        g,
        acc,
        n_rows,
        n_cols,
        n_neg,
        dim,
        row_start,
        z.stride(0),
        neg.stride(0),
        acc.stride(0),
        inv_tau * LOG2E,
        FIXED_MAX=fixed_max,
        UPCAST=_upcast(z.dtype),
        SINGLE_D=dim <= block_d,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return acc


_BACKENDS = {
    "triton": (nt_xent_triton_forward, nt_xent_triton_backward),
    "torch": (nt_xent_cpu_forward, nt_xent_cpu_backward),
}
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, D) -> (x / max(|x|, eps), max(|x|, eps) (R, 1)), both fp32 or wider."""
    x = x.float() if x.dtype != torch.float64 else x
    norm = x.norm(dim=1, keepdim=True).clamp_min(eps)
    return x / norm, norm


def _l2_normalize_backward(grad: torch.Tensor, xn: torch.Tensor, norm: torch.Tensor, eps: float = 1e-12):
    """Gradient through x -> x / max(|x|, eps): (grad - xn (xn·grad)) / |x|, or grad / eps below eps."""
    radial = xn * (xn * grad).sum(dim=1, keepdim=True)
    return torch.where(norm > eps, grad - radial, grad) / norm


class NTXentFunction(torch.autograd.Function):
    """Autograd wrapper: forward and backward only call the launch helpers (see module doc)."""

    @staticmethod
    def forward(ctx, z1, z2, negatives, inv_tau, normalize, gather_distributed, backend):
        fwd, _ = _BACKENDS[backend]
        n_half = z1.shape[0]
        n_rows = 2 * n_half
        # The CPU path computes in fp32 (float64 kept); the kernels read the input dtype.
        compute = z1.dtype if backend == "triton" or z1.dtype == torch.float64 else torch.float32
        z = torch.cat([z1, z2])  # (2N, D)
        if normalize:
            zn, norm = _l2_normalize(z)
            zk = zn.to(compute).contiguous()
        else:
            zn = norm = None
            zk = z.to(compute).contiguous()
        neg = None
        if negatives is not None and negatives.shape[0] > 0:
            neg = negatives.detach()
            neg = (_l2_normalize(neg)[0] if normalize else neg).to(compute).contiguous()
        fixed_max = normalize and inv_tau <= _FIXED_MAX_INV_TAU
        if gather_distributed:
            zc = distributed.all_gather_rows(zk)  # (W·2N, D), rank order
            row_start = distributed.rank() * n_rows
        else:
            zc, row_start = zk, 0
        lse = fwd(zc, row_start, n_rows, neg, inv_tau, fixed_max)  # (2N,) fp32 (f64 kept)
        perm = (torch.arange(n_rows, device=z.device) + n_half) % n_rows
        zw = zk.to(lse.dtype)
        pos = (zw * zw[perm]).sum(dim=1) * inv_tau  # (2N,) s_{i,p(i)}
        loss = (lse - pos).mean()
        lse_all = distributed.all_gather_rows(lse) if gather_distributed else lse  # (C,)
        ctx.save_for_backward(zc, neg, lse_all, zn, norm)
        ctx.cfg = (n_half, row_start, inv_tau, fixed_max, gather_distributed, backend, z1.dtype)
        return loss.to(z1.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        zc, neg, lse_all, zn, norm = ctx.saved_tensors
        n_half, row_start, inv_tau, fixed_max, gather_distributed, backend, in_dtype = ctx.cfg
        _, bwd = _BACKENDS[backend]
        n_rows = 2 * n_half
        wd = lse_all.dtype  # fp32, or float64 on the torch path
        g = grad_loss.to(wd).reshape(1) / n_rows  # dloss/dl_i for this rank's anchors
        if gather_distributed:
            g_cols = distributed.all_gather_rows(g).repeat_interleave(n_rows)  # (C,) each row's rank
        else:
            g_cols = g.expand(n_rows)
        g_cols = g_cols.contiguous()
        acc = bwd(zc, row_start, n_rows, neg, inv_tau, lse_all, g_cols, fixed_max).to(wd)  # (2N, D)
        zk = zc[row_start : row_start + n_rows].to(wd)
        perm = (torch.arange(n_rows, device=zc.device) + n_half) % n_rows
        dz = (acc - 2.0 * g * zk[perm]) * inv_tau  # d loss / d (normalised) z
        if zn is not None:
            dz = _l2_normalize_backward(dz.to(zn.dtype), zn, norm)
        dz = dz.to(in_dtype)
        return dz[:n_half], dz[n_half:], None, None, None, None, None


def _check_inputs(z1, z2, temperature, negatives, backend) -> float:
    """Validate before any work; return 1/τ as a Python float."""
    for name, t in (("z1", z1), ("z2", z2)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"nt_xent: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"nt_xent: {name} must be 2-D (N, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"nt_xent: {name} must be a floating dtype, got {t.dtype}")
    if z1.shape != z2.shape:
        raise ValueError(
            f"nt_xent: z1 and z2 must have the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.numel() == 0:
        raise ValueError(
            f"nt_xent: empty input, z1 and z2 have shape {tuple(z1.shape)} (need N >= 1, D >= 1)"
        )
    if z1.dtype != z2.dtype:
        raise ValueError(f"nt_xent: z1 and z2 must have the same dtype, got {z1.dtype} and {z2.dtype}")
    if z1.device != z2.device:
        raise ValueError(f"nt_xent: z1 and z2 are on different devices ({z1.device} and {z2.device})")
    if negatives is not None:
        if not isinstance(negatives, torch.Tensor) or negatives.dim() != 2:
            shape = (
                tuple(negatives.shape) if isinstance(negatives, torch.Tensor) else type(negatives).__name__
            )
            raise ValueError(f"nt_xent: negatives must be a 2-D (M, D) tensor, got {shape}")
        if negatives.shape[1] != z1.shape[1]:
            raise ValueError(
                f"nt_xent: negatives have D = {negatives.shape[1]}, but z1 and z2 have D = {z1.shape[1]}"
            )
        if not negatives.is_floating_point():
            raise ValueError(f"nt_xent: negatives must be a floating dtype, got {negatives.dtype}")
        if negatives.device != z1.device:
            raise ValueError(
                f"nt_xent: negatives are on {negatives.device}, but z1 and z2 are on {z1.device}"
            )
    if isinstance(temperature, torch.Tensor):
        if temperature.dim() != 0:
            raise ValueError(
                f"nt_xent: temperature must be a float or a 0-dim tensor, got shape {tuple(temperature.shape)}"
            )
        temperature = float(temperature.detach())
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise ValueError(
            f"nt_xent: temperature must be a float or a 0-dim tensor, got {type(temperature).__name__}"
        )
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be finite and > 0, got {temperature}")
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"nt_xent: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton":
        if z1.dtype not in _TRITON_DTYPES:
            raise ValueError(
                f"nt_xent: the triton backend takes float32, bfloat16 or float16, got {z1.dtype}"
            )
        if z1.device.type != "cuda" and not _interpreting():
            raise ValueError(
                f"nt_xent: backend='triton' needs CUDA tensors (got {z1.device}) or TRITON_INTERPRET=1 "
                "set before triton is imported; use backend='torch' or 'auto' for CPU tensors"
            )
    return 1.0 / temperature


def _check_distributed_shapes(z1: torch.Tensor) -> None:
    shape = torch.tensor(list(z1.shape), device=z1.device)
    shapes = distributed.all_gather_rows(shape.reshape(1, 2))
    if not bool((shapes == shape).all()):
        raise ValueError(
            f"nt_xent: gather_distributed needs the same (N, D) on every rank, got {shapes.tolist()}"
        )


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float | torch.Tensor = 0.1,
    *,
    normalize: bool = True,
    negatives: torch.Tensor | None = None,
    gather_distributed: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """NT-Xent (SimCLR) loss without the (2N, 2N) similarity matrix.

    Args:
        z1, z2: (N, D) projections of the two views, float32, bfloat16 or float16 (the torch
            backend also takes float64).
        temperature: τ > 0, a float or a 0-dim tensor (no gradient flows to it).
        normalize: L2-normalise z1, z2 (and ``negatives``) along D first.
        negatives: (M, D) extra negatives for every anchor (e.g. a memory bank); no gradient.
        gather_distributed: columns are the whole batch of every rank (torch.distributed);
            this rank's loss is the mean over its own 2N anchors.
        backend: "auto" (Triton for CUDA tensors, the tiled torch path for CPU tensors),
            "triton" (CUDA, or CPU tensors under ``TRITON_INTERPRET=1``) or "torch".

    Returns:
        0-dim tensor in the input dtype: mean over the 2N anchors of
        logsumexp_{j ≠ i} s_ij - s_{i, p(i)}, s = z zᵀ / τ, p(i) = i ± N.

    Example:
        >>> z1, z2 = torch.randn(256, 128), torch.randn(256, 128)
        >>> loss = nt_xent(z1, z2, temperature=0.1)
    """
    inv_tau = _check_inputs(z1, z2, temperature, negatives, backend)
    if backend == "auto":
        backend = "triton" if z1.device.type == "cuda" and z1.dtype in _TRITON_DTYPES else "torch"
    if gather_distributed and distributed.world_size() > 1:
        _check_distributed_shapes(z1)
    gather = gather_distributed and distributed.world_size() > 1
    return NTXentFunction.apply(z1, z2, negatives, inv_tau, normalize, gather, backend)


_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _aot_spec(kernel: str, dtype: str, fixed_max: bool = True) -> dict:
    """One shipped config (D = 128, the SimCLR projection width) in ``kernels/aot.py``'s format."""
    ptr = f"*{dtype}"
    common = {"n_rows": "i32", "n_cols": "i32", "n_neg": "i32", "dim": "i32", "row_start": "i32"}
    block_m, block_n, num_warps, num_stages = _CONFIGS[_TORCH_DTYPES[dtype]]
    blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": MAX_BLOCK_D}
    if kernel == "fwd":
        fn = _nt_xent_fwd_kernel
        pointers = {"z_ptr": ptr, "neg_ptr": ptr, "lse_ptr": "*fp32"}
        strides = {"z_stride": "i32", "neg_stride": "i32"}
        constexprs = {"FIXED_MAX": fixed_max, "UPCAST": False, "SINGLE_D": True, **blocks}
    else:
        fn = _nt_xent_bwd_kernel
        pointers = {"z_ptr": ptr, "neg_ptr": ptr, "lse_ptr": "*fp32", "g_ptr": "*fp32", "acc_ptr": "*fp32"}
        strides = {"z_stride": "i32", "neg_stride": "i32", "acc_stride": "i32"}
        constexprs = {"FIXED_MAX": fixed_max, "UPCAST": False, "SINGLE_D": True, **blocks}
    signature = {**pointers, **common, **strides, "scale": "fp32", **dict.fromkeys(constexprs, "constexpr")}
    return {
        "name": f"nt_xent_{kernel}" + ("" if fixed_max else "_online"),
        "fn": fn,
        "signature": signature,
        "constexprs": constexprs,
        "num_warps": num_warps,
        "num_stages": num_stages,
        "dtype": dtype,
        # fp32 tiles go through tf32 wgmma too, but only the bf16 use is promised and tested.
        "expect_wgmma": dtype == "bf16",
    }


AOT_SPECS = [
    _aot_spec("fwd", "bf16"),
    _aot_spec("fwd", "bf16", fixed_max=False),
    _aot_spec("bwd", "bf16"),
    _aot_spec("bwd", "bf16", fixed_max=False),
    _aot_spec("fwd", "fp16"),
    _aot_spec("bwd", "fp16"),
    _aot_spec("fwd", "fp32"),
    _aot_spec("bwd", "fp32"),
]
