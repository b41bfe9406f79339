"""Fused LARS update over many tensors ("pieces") per launch.

LARS (You et al. 2017, arXiv 1708.03888, as in SimCLR's ``lars_optimizer.py``) needs, per
parameter, the norms of the weight ``w`` and of the decayed gradient ``u = g + wd * w`` before it
can update anything. Two launches cover any number of tensors:

1. :func:`lars_sumsq` -- ``_lars_sumsq_kernel``: every program takes ``BLOCK`` elements of one
   piece and writes that block's ``sum(w^2)`` and ``sum(u^2)``; the blocks of a piece are then
   added in a fixed order (``index_add_``), so the result does not depend on scheduling.
2. :func:`lars_update` -- ``_lars_update_kernel``: with a per-piece coefficient ``c = lr * trust``
   computed by the caller (where sharded callers also sum norms over ranks),
   ``u = g + wd * w;  v = momentum * v + c * u;  w = w - v`` in one read and one write of w and v.

The pieces are separate tensors (one per parameter, or slices of a flat ZeRO partition). Their
addresses travel in an int64 table that the kernels turn back into pointers, as apex's
``multi_tensor_apply`` does, so one launch serves them all. All pieces of a launch share one dtype
(fp32, fp16 or bf16); arithmetic is fp32. Cautions: each piece must be dense (contiguous, or
channels_last for 4-D weights, with its gradient and momentum laid out alike: the update is
elementwise, so memory order does not matter) and stay alive until the launch finishes; building the address table reads ``data_ptr()`` of each piece in Python.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["AOT_SPECS", "lars_sumsq", "lars_update"]

# 1024 fp32 elements per program: 4 warps x 32 threads x 8 elements (two 128-bit loads per thread
# per tensor); the usual size for memory-bound elementwise Triton kernels (Liger, torch inductor).
BLOCK = 1024
NUM_WARPS = 4

_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@triton.jit
def _piece_block(block_piece_ptr, block_start_ptr, numel_ptr, BLOCK: tl.constexpr):
    """Which piece this program works on, the element offsets of its block and their mask."""
    pid = tl.program_id(0)
    piece = tl.load(block_piece_ptr + pid)
    start = tl.load(block_start_ptr + pid)
    numel = tl.load(numel_ptr + piece)
    offs = start + tl.arange(0, BLOCK).to(tl.int64)
    return pid, piece, offs, offs < numel


@triton.jit
def _lars_sumsq_kernel(
    w_addr_ptr,
    g_addr_ptr,
    numel_ptr,
    block_piece_ptr,
    block_start_ptr,
    out_ptr,
    weight_decay,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per-block squared norms of w and of u = g + wd * w.

    w_addr_ptr, g_addr_ptr: (n_pieces,) int64 addresses of each piece's weight and gradient.
    numel_ptr: (n_pieces,) int64 element count of each piece.
    block_piece_ptr, block_start_ptr: (n_blocks,) int64 piece index and first element of each
        program's block.
    out_ptr: (n_blocks, 2) fp32, row-major: [sum(w^2), sum(u^2)] of the block.
    weight_decay: fp32 scalar wd.
    DTYPE: element type of the pieces; BLOCK: elements per program.
    """
    # 1. Locate the block and its piece's tensors.
    pid, piece, offs, mask = _piece_block(block_piece_ptr, block_start_ptr, numel_ptr, BLOCK)
    w_ptr = tl.load(w_addr_ptr + piece).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(g_addr_ptr + piece).to(tl.pointer_type(DTYPE))
    # 2. u = g + wd * w in fp32; masked lanes load 0 and add nothing.
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = g + weight_decay * w
    # 3. The block's sums of squares.
    tl.store(out_ptr + 2 * pid, tl.sum(w * w, axis=0))
    tl.store(out_ptr + 2 * pid + 1, tl.sum(u * u, axis=0))


@triton.jit
def _lars_update_kernel(
    w_addr_ptr,
    g_addr_ptr,
    v_addr_ptr,
    numel_ptr,
    block_piece_ptr,
    block_start_ptr,
    coef_ptr,
    weight_decay,
    momentum,
    DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """In place: u = g + wd * w;  v = momentum * v + coef[piece] * u;  w = w - v.

    w_addr_ptr, g_addr_ptr, v_addr_ptr: (n_pieces,) int64 addresses of weight, gradient and
        momentum buffer of each piece.
    numel_ptr: (n_pieces,) int64 element counts; block_piece_ptr, block_start_ptr: (n_blocks,).
    coef_ptr: (n_pieces,) fp32 lr * trust ratio of each piece's parameter.
    weight_decay, momentum: fp32 scalars. DTYPE: element type; BLOCK: elements per program.
    """
    # 1. Locate the block and its piece's tensors.
    pid, piece, offs, mask = _piece_block(block_piece_ptr, block_start_ptr, numel_ptr, BLOCK)
    w_ptr = tl.load(w_addr_ptr + piece).to(tl.pointer_type(DTYPE))
    g_ptr = tl.load(g_addr_ptr + piece).to(tl.pointer_type(DTYPE))
    v_ptr = tl.load(v_addr_ptr + piece).to(tl.pointer_type(DTYPE))
    coef = tl.load(coef_ptr + piece)
    # 2. The SimCLR update (classic momentum with lr inside v), in fp32.
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    v = momentum * v + coef * (g + weight_decay * w)
    # 3. Write back in the pieces' dtype.
    tl.store(v_ptr + offs, v.to(DTYPE), mask=mask)
    tl.store(w_ptr + offs, (w - v).to(DTYPE), mask=mask)


def _check_pieces(name: str, pieces: list[torch.Tensor], like: list[torch.Tensor]) -> None:
    if len(pieces) != len(like):
        raise ValueError(f"{name}: {len(pieces)} tensors for {len(like)} weights")
    for k, (t, w) in enumerate(zip(pieces, like, strict=True)):
        if t.shape != w.shape or t.dtype != w.dtype or t.device != w.device:
            raise ValueError(
                f"{name}[{k}]: shape {tuple(t.shape)} {t.dtype} on {t.device} does not match the weight "
                f"{tuple(w.shape)} {w.dtype} on {w.device}"
            )
        if t.stride() != w.stride():
            raise ValueError(f"{name}[{k}]: strides {t.stride()} differ from the weight's {w.stride()}")


def _tables(ws: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """numel (n_pieces,), block_piece (n_blocks,), block_start (n_blocks,), int64 on the device."""
    device = ws[0].device
    numel = torch.tensor([w.numel() for w in ws], dtype=torch.int64, device=device)
    n_blocks = (numel + BLOCK - 1) // BLOCK
    block_piece = torch.repeat_interleave(torch.arange(len(ws), device=device), n_blocks)
    first_block = torch.cumsum(n_blocks, 0) - n_blocks  # index of each piece's first block
    block_start = (torch.arange(block_piece.numel(), device=device) - first_block[block_piece]) * BLOCK
    return numel, block_piece, block_start


def _addresses(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=ts[0].device)


def _validate(ws: list[torch.Tensor], gs: list[torch.Tensor]) -> None:
    if not ws:
        raise ValueError("lars kernels: no tensors given")
    if ws[0].dtype not in _TL_DTYPES:
        raise ValueError(f"lars kernels: dtype {ws[0].dtype} not supported (fp32, fp16, bf16)")
    for k, w in enumerate(ws):
        if w.numel() == 0:
            raise ValueError(f"lars kernels: weight {k} is empty")
    if any(w.dtype != ws[0].dtype or w.device != ws[0].device for w in ws):
        raise ValueError("lars kernels: all tensors of one launch need one dtype and one device")
    for k, w in enumerate(ws):
        if not (w.is_contiguous() or (w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last))):
            raise ValueError(
                f"lars kernels: weight {k} must be contiguous (or channels_last), strides {w.stride()}"
            )
    _check_pieces("grads", gs, ws)


def lars_sumsq(
    ws: list[torch.Tensor],
    gs: list[torch.Tensor],
    weight_decay: float,
    partials: torch.Tensor | None = None,
) -> torch.Tensor:
    """Squared norms of each weight and of its decayed gradient ``g + weight_decay * w``.

    Shapes: ``ws[k]``, ``gs[k]`` any contiguous shape (same per k) -> ``(n_pieces, 2)`` fp32,
    column 0 ``sum(w^2)``, column 1 ``sum(u^2)``. ``partials`` is the ``(n_blocks, 2)`` fp32
    scratch the kernel writes every element of (tests pass one filled with NaN).
    """
    _validate(ws, gs)
    numel, block_piece, block_start = _tables(ws)
    n_blocks = block_piece.numel()
    if partials is None:
        partials = torch.empty(n_blocks, 2, dtype=torch.float32, device=ws[0].device)
    elif partials.shape != (n_blocks, 2) or partials.dtype != torch.float32:
        raise ValueError(f"lars_sumsq: partials must be ({n_blocks}, 2) fp32, got {tuple(partials.shape)}")
    _lars_sumsq_kernel[(n_blocks,)](
        w_addr_ptr=_addresses(ws),
        g_addr_ptr=_addresses(gs),
        numel_ptr=numel,
        block_piece_ptr=block_piece,
        block_start_ptr=block_start,
        out_ptr=partials,
        weight_decay=float(weight_decay),
        DTYPE=_TL_DTYPES[ws[0].dtype],
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )
    return partials.new_zeros(len(ws), 2).index_add_(0, block_piece, partials)


def lars_update(
    ws: list[torch.Tensor],
    gs: list[torch.Tensor],
    vs: list[torch.Tensor],
    coef: torch.Tensor,
    weight_decay: float,
    momentum: float,
) -> None:
    """In place, for every piece k: ``v = momentum * v + coef[k] * (g + wd * w); w -= v``.

    Shapes: ``ws[k]``, ``gs[k]``, ``vs[k]`` the same contiguous shape per k; ``coef`` ``(n_pieces,)``
    (``lr * trust``), any float dtype, on the pieces' device.
    """
    _validate(ws, gs)
    _check_pieces("momentum buffers", vs, ws)
    if coef.shape != (len(ws),):
        raise ValueError(f"lars_update: coef must have shape ({len(ws)},), got {tuple(coef.shape)}")
    numel, block_piece, block_start = _tables(ws)
    _lars_update_kernel[(block_piece.numel(),)](
        w_addr_ptr=_addresses(ws),
        g_addr_ptr=_addresses(gs),
        v_addr_ptr=_addresses(vs),
        numel_ptr=numel,
        block_piece_ptr=block_piece,
        block_start_ptr=block_start,
        coef_ptr=coef.to(device=ws[0].device, dtype=torch.float32).contiguous(),
        weight_decay=float(weight_decay),
        momentum=float(momentum),
        DTYPE=_TL_DTYPES[ws[0].dtype],
        BLOCK=BLOCK,
        num_warps=NUM_WARPS,
    )


def _aot_spec(kernel: str, dtype: str) -> dict:
    """A config of :mod:`flashclr.kernels.aot` for one kernel and piece dtype."""
    tables = {"numel_ptr": "*i64", "block_piece_ptr": "*i64", "block_start_ptr": "*i64"}
    if kernel == "sumsq":
        fn = _lars_sumsq_kernel
        signature = {"w_addr_ptr": "*i64", "g_addr_ptr": "*i64", **tables, "out_ptr": "*fp32"}
        signature["weight_decay"] = "fp32"
    else:
        fn = _lars_update_kernel
        signature = {"w_addr_ptr": "*i64", "g_addr_ptr": "*i64", "v_addr_ptr": "*i64", **tables}
        signature.update(coef_ptr="*fp32", weight_decay="fp32", momentum="fp32")
    signature.update(DTYPE="constexpr", BLOCK="constexpr")
    tl_dtype = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16}[dtype]
    return dict(
        name=f"lars_{kernel}",
        fn=fn,
        signature=signature,
        constexprs={"DTYPE": tl_dtype, "BLOCK": BLOCK},
        num_warps=NUM_WARPS,
        num_stages=1,
        dtype=dtype,
        expect_wgmma=False,
    )


# Every shipped config (the kernels are elementwise: no tensor cores, hence no wgmma expected).
AOT_SPECS = [_aot_spec(k, d) for k in ("sumsq", "update") for d in ("fp32", "bf16")]
