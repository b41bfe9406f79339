"""Fused temperature-scaled distillation cross-entropy (SimCLR v2 stage 3), in Triton.

The loss of "Big Self-Supervised Models are Strong Semi-Supervised Learners" (Chen et al. 2020,
arXiv 2006.10029; the formula of design.md), the hard-label term only on labelled rows, averaged
over the batch of B rows::

    L = (1/B) · Σ_i [ α · soft_i + (1 − α) · m_i · hard_i ]
    soft_i = −Σ_y P_T(y | x_i; τ) · log P_S(y | x_i; τ)        P(y | x; τ) = softmax(logits / τ)
    hard_i = −log P_S(y_i | x_i; 1)                              m_i = [y_i ≠ ignore_index]

Algorithm: one program per row streams the row's classes in chunks of BLOCK_C and keeps online
(running max, rescaled sum) statistics for three softmaxes at once: the teacher at τ, the student at
τ and the student at 1 (the two student softmaxes share one running max, since max(s/τ) = max(s)/τ
for τ > 0). The cross term Σ_y P_T · s/τ is accumulated relative to the running student max and
rescaled with it, so no large numbers cancel: the loss stays exact at τ = 0.1 with logits of
magnitude 100. Once the statistics are final, a second loop over the same row writes the gradient
of L with respect to the student (the re-read hits L2 when the row is still there: 87 KB of bf16
student and teacher logits at C = 21843; not measured yet, no GPU so far)::

    ∂L/∂s_ij = α/(Bτ) · (P_S(j | x_i; τ) − P_T(j | x_i; τ)) + (1 − α) · m_i/B · (P_S(j | x_i; 1) − [j = y_i])

When the row fits one chunk (C ≤ 4096) the exponentials of the first loop are reused and the logits
are read once. The backward of the autograd Function only multiplies the stored gradient by
grad_output, and returns it untouched when grad_output is 1.

Differences from eager torch and cautions:
- The gradient is computed during the forward, so the forward costs a B×C write even if backward
  never runs; with ``student.requires_grad=False`` (evaluation) the kernel skips it.
- The gradient is stored in the student's dtype, except for fp16 logits where it is stored in fp32:
  ∂L/∂s is of order 1/(B·C), below fp16's normal range at B = 4096, C = 1000, and a GradScaler's
  grad_output would then scale numbers that have already lost their bits. bf16 has fp32's range.
- Labels are range-checked on the host before the launch (one device synchronisation on CUDA), and
  deciding whether grad_output is 1 reads it (one synchronisation in backward).
"""

import math
import os

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .distill_ce_cpu import distill_ce_forward_torch

# log2(e) and ln(2): the kernel works in base 2 so that each exponential is one exp2.
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)

# Rows of up to this many classes are held in registers whole (one read of the logits); longer rows
# stream in chunks of _CHUNK. Both keep 8 fp32 values per thread and tile (256 per warp): with 8 at
# 4096 classes ptxas spilled on sm_80 (16 values a thread), with 16 warps it uses 58 registers and
# no spill (ptxas-blackwell -v, triton 3.9). A 2048 chunk pads C = 21843 by 3% (11 chunks), 4096
# would pad it by 12%.
_MAX_SINGLE_BLOCK = 4096
_CHUNK = 2048


@triton.jit
def _chunk_exps(s, t, m_s, m_t, inv_temperature, HAS_SOFT: tl.constexpr, HAS_HARD: tl.constexpr):
    """Unnormalised exponentials of one chunk against the given maxima (masked lanes hold −inf
    and give 0): teacher at τ, student at τ, student at 1."""
    k = inv_temperature * _LOG2E
    # Streams a term does not need are zeros, which the compiler drops with their sums.
    e_t = tl.zeros_like(s)
    e_b = tl.zeros_like(s)
    e_c = tl.zeros_like(s)
    if HAS_SOFT:
        e_t = tl.exp2((t - m_t) * k)
        e_b = tl.exp2((s - m_s) * k)
    if HAS_HARD:
        e_c = tl.exp2((s - m_s) * _LOG2E)
    return e_t, e_b, e_c


@triton.jit
def _distill_ce_kernel(
    student_ptr,
    teacher_ptr,
    labels_ptr,
    grad_ptr,
    loss_ptr,
    student_row_stride,
    teacher_row_stride,
    grad_row_stride,
    n_cols,
    inv_temperature,
    soft_weight,
    hard_weight,
    grad_soft_scale,
    grad_hard_scale,
    ignore_index,
    HAS_SOFT: tl.constexpr,
    HAS_HARD: tl.constexpr,
    COMPUTE_GRAD: tl.constexpr,
    SINGLE_BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program per row i of the (B, C) logits.

    student_ptr, teacher_ptr: (B, C) logits (fp32, bf16 or fp16), last dimension contiguous.
    labels_ptr: (B,) int64 class indices or ignore_index; read only when HAS_HARD.
    grad_ptr: (B, C) output ∂L/∂student; written only when COMPUTE_GRAD.
    loss_ptr: (B,) fp32 output, soft_weight · soft_i + hard_weight · m_i · hard_i.
    *_row_stride: elements between consecutive rows of each (B, C) tensor.
    n_cols: C. inv_temperature: 1/τ. soft_weight, hard_weight: α and 1 − α.
    grad_soft_scale: α/(Bτ). grad_hard_scale: (1 − α)/B. ignore_index: the label of unlabelled rows.
    HAS_SOFT: α > 0 (else the teacher is never read). HAS_HARD: α < 1 with labels.
    COMPUTE_GRAD: write grad_ptr. SINGLE_BLOCK: C ≤ BLOCK_C, the row is loaded once.
    BLOCK_C: power-of-two chunk of classes.
    """
    row = tl.program_id(0).to(tl.int64)
    student_ptr += row * student_row_stride
    teacher_ptr += row * teacher_row_stride
    k = inv_temperature * _LOG2E  # 1/τ in base 2

    # 1. First chunk: it always holds at least one real class, so the maxima start finite and the
    #    rescalings below never meet −inf − (−inf).
    cols = tl.arange(0, BLOCK_C)
    mask = cols < n_cols
    s = tl.load(student_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
    m_s = tl.max(s, axis=0)
    if HAS_SOFT:
        t = tl.load(teacher_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
        m_t = tl.max(t, axis=0)
    else:
        t = s
        m_t = m_s
    e_t, e_b, e_c = _chunk_exps(s, t, m_s, m_t, inv_temperature, HAS_SOFT, HAS_HARD)
    z_t = tl.sum(e_t, axis=0)
    z_b = tl.sum(e_b, axis=0)
    z_c = tl.sum(e_c, axis=0)
    # w = Σ e_t · (s − m_s)/τ in base 2; the guard keeps 0 · (−inf) (masked lanes, or a student
    # logit of −inf where the teacher has no mass) out of the sum.
    w = tl.sum(e_t * tl.where(e_t > 0.0, (s - m_s) * k, 0.0), axis=0)

    # 2. Remaining chunks: online update. When a max grows by d, every stored exponential shrinks
    #    by 2^(−d·k); w also loses d·k per unit of teacher mass because it is relative to m_s.
    if not SINGLE_BLOCK:
        for start in range(BLOCK_C, n_cols, BLOCK_C):
            cols = start + tl.arange(0, BLOCK_C)
            mask = cols < n_cols
            s = tl.load(student_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
            m_s_new = tl.maximum(m_s, tl.max(s, axis=0))
            if HAS_SOFT:
                t = tl.load(teacher_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
                m_t_new = tl.maximum(m_t, tl.max(t, axis=0))
                scale_t = tl.exp2((m_t - m_t_new) * k)
                w = (w - (m_s_new - m_s) * k * z_t) * scale_t
                z_t = z_t * scale_t
                z_b = z_b * tl.exp2((m_s - m_s_new) * k)
            else:
                t = s
                m_t_new = m_s_new
            if HAS_HARD:
                z_c = z_c * tl.exp2((m_s - m_s_new) * _LOG2E)
            m_s = m_s_new
            m_t = m_t_new
            e_t, e_b, e_c = _chunk_exps(s, t, m_s, m_t, inv_temperature, HAS_SOFT, HAS_HARD)
            z_t += tl.sum(e_t, axis=0)
            z_b += tl.sum(e_b, axis=0)
            z_c += tl.sum(e_c, axis=0)
            w += tl.sum(e_t * tl.where(e_t > 0.0, (s - m_s) * k, 0.0), axis=0)

    # 3. Row loss. soft_i = lse(s/τ) − Σ P_T · s/τ = ln2 · (log2 z_b − w / z_t), both terms taken
    #    relative to m_s/τ. hard_i = lse(s) − s_y = m_s + ln2 · log2 z_c − s_y.
    row_loss = 0.0
    if HAS_SOFT:
        row_loss += soft_weight * _LN2 * (tl.log2(z_b) - w / z_t)
    if HAS_HARD:
        label = tl.load(labels_ptr + row)
        labelled = label != ignore_index
        safe_label = tl.where(labelled, label, 0)
        s_y = tl.load(student_ptr + safe_label).to(tl.float32)
        hard = m_s + _LN2 * tl.log2(z_c) - s_y
        row_loss += tl.where(labelled, hard_weight * hard, 0.0)
        row_hard_scale = tl.where(labelled, grad_hard_scale, 0.0)
    tl.store(loss_ptr + row, row_loss)

    # 4. Gradient: α/(Bτ)·(P_S,τ − P_T) + (1 − α)·m_i/B·(P_S,1 − onehot(y)).
    if COMPUTE_GRAD:
        grad_ptr += row * grad_row_stride
        # Per-row coefficients, so the per-element work is multiply-adds (no division).
        if HAS_SOFT:
            coef_t = grad_soft_scale / z_t
            coef_b = grad_soft_scale / z_b
        if HAS_HARD:
            coef_c = row_hard_scale / z_c
        if SINGLE_BLOCK:
            cols = tl.arange(0, BLOCK_C)
            g = tl.zeros_like(s)
            if HAS_SOFT:
                g += coef_b * e_b - coef_t * e_t
            if HAS_HARD:
                g += coef_c * e_c - tl.where(cols == label, row_hard_scale, 0.0)
            tl.store(grad_ptr + cols, g.to(grad_ptr.dtype.element_ty), mask=cols < n_cols)
        else:
            for start in range(0, n_cols, BLOCK_C):
                cols = start + tl.arange(0, BLOCK_C)
                mask = cols < n_cols
                s = tl.load(student_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
                if HAS_SOFT:
                    t = tl.load(teacher_ptr + cols, mask=mask, other=-float("inf")).to(tl.float32)
                else:
                    t = s
                e_t, e_b, e_c = _chunk_exps(s, t, m_s, m_t, inv_temperature, HAS_SOFT, HAS_HARD)
                g = tl.zeros_like(s)
                if HAS_SOFT:
                    g += coef_b * e_b - coef_t * e_t
                if HAS_HARD:
                    g += coef_c * e_c - tl.where(cols == label, row_hard_scale, 0.0)
                tl.store(grad_ptr + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _aot_spec(dtype: str, n_cols: int, has_hard: bool) -> dict:
    """The config ``distill_ce_forward`` launches for (B, n_cols) ``dtype`` logits with a gradient."""
    block, single, num_warps = _block_config(n_cols)
    pointer = f"*{dtype}"
    signature = {
        "student_ptr": pointer,
        "teacher_ptr": pointer,
        "labels_ptr": "*i64",
        "grad_ptr": "*fp32" if dtype == "fp16" else pointer,
        "loss_ptr": "*fp32",
        **dict.fromkeys(["student_row_stride", "teacher_row_stride", "grad_row_stride", "n_cols"], "i32"),
        **dict.fromkeys(
            ["inv_temperature", "soft_weight", "hard_weight", "grad_soft_scale", "grad_hard_scale"], "fp32"
        ),
        "ignore_index": "i32",
        **dict.fromkeys(["HAS_SOFT", "HAS_HARD", "COMPUTE_GRAD", "SINGLE_BLOCK", "BLOCK_C"], "constexpr"),
    }
    constexprs = dict(HAS_SOFT=True, HAS_HARD=has_hard, COMPUTE_GRAD=True, SINGLE_BLOCK=single, BLOCK_C=block)
    return dict(
        name=f"distill_ce_C{n_cols}",
        fn=_distill_ce_kernel,
        signature=signature,
        constexprs=constexprs,
        num_warps=num_warps,
        num_stages=1,
        dtype=dtype,
        expect_wgmma=False,  # no matrix product: a streaming reduction
    )


def _block_config(n_cols: int) -> tuple[int, bool, int]:
    """(BLOCK_C, SINGLE_BLOCK, num_warps) for rows of n_cols classes: 8 values per thread and
    tile (bf16 rows load in 16-byte vectors), fewer for rows under 256 classes."""
    if n_cols <= _MAX_SINGLE_BLOCK:
        block, single = triton.next_power_of_2(n_cols), True
    else:
        block, single = _CHUNK, False
    return block, single, min(max(block // 256, 1), 16)


# Checked by `python -m flashclr.kernels.aot` (sm_80, sm_90): per dtype, ImageNet-1k with pure
# distillation (the stage-3 default), the largest single-block row with both terms (the most live
# registers), and ImageNet-21k's chunked rows with both terms.
AOT_SPECS = [
    _aot_spec(dtype, n_cols, has_hard)
    for dtype in ("fp32", "bf16", "fp16")
    for n_cols, has_hard in ((1000, False), (4096, True), (21843, True))
]


def gradient_dtype(student_dtype: torch.dtype) -> torch.dtype:
    """dtype in which the forward stores ∂L/∂student: the student's, fp32 for fp16 (module doc)."""
    return torch.float32 if student_dtype == torch.float16 else student_dtype


def distill_ce_forward(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
    ignore_index: int,
    grad_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch the kernel on validated inputs (see ``distill_ce``).

    student, teacher: (B, C) logits. labels: (B,) integer or None (then alpha must be 1).
    Returns the 0-dim fp32 loss and ∂loss/∂student (B, C) in grad_dtype, or None when grad_dtype
    is None (no gradient wanted: the kernel then only reads).
    """
    n_rows, n_cols = student.shape
    # Rows may be strided (a slice of a wider output); the class dimension must be unit-stride.
    student = student if student.stride(-1) == 1 else student.contiguous()
    teacher = teacher if teacher.stride(-1) == 1 else teacher.contiguous()
    has_soft, has_hard = alpha > 0.0, alpha < 1.0
    loss_rows = torch.empty(n_rows, dtype=torch.float32, device=student.device)
    compute_grad = grad_dtype is not None
    grad = None
    if compute_grad:
        grad = torch.empty((n_rows, n_cols), dtype=grad_dtype, device=student.device)
    if has_hard:
        labels = labels.to(torch.int64)
    block, single, num_warps = _block_config(n_cols)
    _distill_ce_kernel[(n_rows,)](
        student_ptr=student,
        teacher_ptr=teacher,
        # Unused pointers are given a live tensor: the kernel never reads them (constexpr-gated).
        labels_ptr=labels if has_hard else loss_rows,
        grad_ptr=grad if compute_grad else loss_rows,
        loss_ptr=loss_rows,
        student_row_stride=student.stride(0),
        teacher_row_stride=teacher.stride(0),
        grad_row_stride=n_cols,
        n_cols=n_cols,
        inv_temperature=1.0 / temperature,
        soft_weight=alpha,
        hard_weight=1.0 - alpha,
        grad_soft_scale=alpha / (n_rows * temperature),
        grad_hard_scale=(1.0 - alpha) / n_rows,
        ignore_index=ignore_index,
        HAS_SOFT=has_soft,
        HAS_HARD=has_hard,
        COMPUTE_GRAD=compute_grad,
        SINGLE_BLOCK=single,
        BLOCK_C=block,
        num_warps=num_warps,
    )
    return loss_rows.sum() / n_rows, grad


def distill_ce_backward(grad: torch.Tensor, grad_output: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """∂/∂student of grad_output · L from the stored ∂L/∂student (B, C): returned as is when
    grad_output is 1 and no cast is needed, else scaled out of place (a retained graph may run
    backward again on the same stored gradient)."""
    if grad.dtype == dtype and bool(grad_output == 1):
        return grad
    return torch.mul(grad, grad_output.to(grad.dtype)).to(dtype)


class DistillCEFunction(torch.autograd.Function):
    """Autograd wrapper: the forward stores ∂L/∂student, the backward scales it. The teacher is
    passed detached, so it never receives a gradient."""

    @staticmethod
    def forward(ctx, student, teacher, labels, temperature, alpha, ignore_index, backend):
        forward = distill_ce_forward if backend == "triton" else distill_ce_forward_torch
        grad_dtype = gradient_dtype(student.dtype) if ctx.needs_input_grad[0] else None
        loss, grad = forward(student, teacher, labels, temperature, alpha, ignore_index, grad_dtype)
        ctx.student_dtype = student.dtype
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return distill_ce_backward(grad, grad_output, ctx.student_dtype), None, None, None, None, None, None


def _check_inputs(student, teacher, temperature, labels, alpha, backend, ignore_index) -> float:
    """Raise ValueError naming the first problem with the arguments; return τ as a float."""
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        raise ValueError("distill_ce: student_logits and teacher_logits must be torch tensors")
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(
            "distill_ce: student_logits and teacher_logits must both be (B, C), got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    n_rows, n_cols = student.shape
    if n_rows == 0 or n_cols == 0:
        raise ValueError(f"distill_ce: empty logits of shape {tuple(student.shape)}")
    for name, x in (("student_logits", student), ("teacher_logits", teacher)):
        if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise ValueError(f"distill_ce: {name} must be float32, bfloat16 or float16, got {x.dtype}")
    if teacher.device != student.device:
        raise ValueError(f"distill_ce: teacher on {teacher.device}, student on {student.device}")
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1:
            raise ValueError(
                f"distill_ce: temperature must be a scalar, got shape {tuple(temperature.shape)}"
            )
        temperature = temperature.item()
    temperature = float(temperature)
    if not (temperature > 0.0 and math.isfinite(temperature)):
        raise ValueError(f"distill_ce: temperature must be a finite number > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill_ce: alpha must lie in [0, 1], got {alpha}")
    if labels is None:
        if alpha < 1.0:
            raise ValueError(f"distill_ce: alpha = {alpha} < 1 weights a hard-label term but labels is None")
    else:
        if (
            not isinstance(labels, torch.Tensor)
            or labels.dtype.is_floating_point
            or labels.dtype
            in (
                torch.bool,
                torch.complex64,
                torch.complex128,
            )
        ):
            dtype = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"distill_ce: labels must be an integer tensor, got {dtype}")
        if labels.shape != (n_rows,):
            raise ValueError(f"distill_ce: labels must have shape ({n_rows},), got {tuple(labels.shape)}")
        if labels.device != student.device:
            raise ValueError(f"distill_ce: labels on {labels.device}, logits on {student.device}")
        bad = ((labels < 0) | (labels >= n_cols)) & (labels != ignore_index)
        if bool(bad.any()):
            first = labels[bad][0].item()
            raise ValueError(
                f"distill_ce: labels must lie in [0, {n_cols}) or equal ignore_index={ignore_index}, got {first}"
            )
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"distill_ce: backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton" and not student.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            "distill_ce: backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
        )
    if backend == "torch" and student.device.type != "cpu":
        raise ValueError(f"distill_ce: backend='torch' is the CPU path, got tensors on {student.device}")
    return temperature


def distill_ce(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    *,
    labels: torch.Tensor | None = None,
    alpha: float = 1.0,
    ignore_index: int = -100,
    backend: str = "auto",
) -> torch.Tensor:
    """Temperature-scaled distillation cross-entropy with an optional hard-label term.

    ``L = (1/B) · Σ_i [α · soft_i + (1 − α) · m_i · hard_i]``, where
    ``soft_i = −Σ_y softmax(t_i/τ)_y · log softmax(s_i/τ)_y``, ``hard_i = −log softmax(s_i)_{y_i}``
    and ``m_i = 1`` when ``labels[i] != ignore_index``. This is the SimCLR v2 distillation loss
    (design.md) divided by the batch size B.

    Averaging: both terms are divided by B, the number of rows, not the hard term by the number of
    labelled rows (as ``F.cross_entropy(ignore_index=...)`` would). Each row then carries a fixed
    weight: a row's gradient does not depend on how many other rows of the batch happen to be
    labelled, a batch without labelled rows is well defined (hard term 0), the mean over data-
    parallel ranks of equal batch size equals the loss of the global batch, and α keeps the meaning
    it has in the paper's formula, where labelled examples enter with their frequency in the data.
    There is no τ² factor: the soft term's gradient scales as 1/τ, as in the formula.

    Args:
        student_logits: (B, C) float32, bfloat16 or float16; receives the gradient.
        teacher_logits: (B, C) floating logits of the frozen teacher; never gets a gradient.
        temperature: τ > 0, a float or a one-element tensor (read as a number; not learnable).
        labels: (B,) integer class indices in [0, C) or ``ignore_index``; required when α < 1.
        alpha: weight α ∈ [0, 1] of the soft term; 1 is pure distillation.
        ignore_index: label value of rows without a hard term.
        backend: "auto" (Triton on CUDA, the torch path on CPU), "triton" (CPU tensors need
            ``TRITON_INTERPRET=1``) or "torch" (CPU only).

    Returns:
        0-dim float32 tensor.

    Example:
        >>> loss = distill_ce(student(x), teacher(x).detach(), 1.0, labels=y, alpha=0.5)
        >>> loss.backward()
    """
    temperature = _check_inputs(
        student_logits, teacher_logits, temperature, labels, alpha, backend, ignore_index
    )
    if backend == "auto":
        backend = "triton" if student_logits.is_cuda else "torch"
    return DistillCEFunction.apply(
        student_logits, teacher_logits.detach(), labels, temperature, float(alpha), int(ignore_index), backend
    )
