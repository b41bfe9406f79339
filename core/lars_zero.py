"""Exact LARS under DeepSpeed ZeRO stages 1, 2 and 3: tell LARS where each parameter lies in the
flat partitions DeepSpeed hands it.

ZeRO replaces the optimizer's parameters by flat fp32 tensors, one per param group (stages 1 and 2)
or per sub-group (stage 3), each holding only this rank's slice. LARS's trust ratio needs every
parameter's whole-tensor norms, so :func:`attach_zero_layout` reads DeepSpeed's partitioning (once,
after ``deepspeed.initialize``) and registers a :class:`~flashclr.core.lars.SegmentLayout` for each
flat tensor. At every step LARS then sums per-parameter squared norms over the pieces it holds and
over the ranks (one ``all_reduce`` of a ``(2, n_params_in_group + 1)`` tensor per flat tensor of
an adapted group; excluded groups need no norms, so SimCLR's two groups cost one all-reduce per
step) and applies the unsharded update.

How DeepSpeed 0.19.8 lays the partitions out (``runtime/zero/stage_1_and_2.py``, ``stage3.py``):

- Stages 1 and 2: the parameters of group ``i`` (``round_robin_bit16_groups[i]``, in that order, at
  ``round_robin_bit16_offsets[i]``; gaps are alignment padding) are concatenated into one buffer,
  padded to a multiple of ``2 * world``, and cut into ``world`` consecutive equal partitions
  (``parallel_partitioned_bit16_groups[i]``). Rank r's ``single_partition_of_fp32_groups[i]`` is a
  copy of partition r, so a parameter may straddle two (or more) ranks.
- Stage 3: every parameter is cut on its own: padded to a multiple of ``world``, rank r holds
  elements ``[r * ps, (r + 1) * ps)`` with ``ps = param.partition_numel()``. The flat tensor
  ``fp32_partitioned_groups_flat[s]`` of sub-group s concatenates those slices for the parameters
  of ``fp16_groups[s]``, so every parameter is spread over all ranks.

Usage::

    optimizer = LARS(lars_param_groups(model, weight_decay), lr=lr)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    attach_zero_layout(engine)

The config needs ``"zero_allow_untested_optimizer": true``. Without the call, LARS refuses the flat
tensors at its first step instead of computing wrong norms.
"""

from __future__ import annotations

import torch.distributed as dist

from .lars import LARS, SegmentLayout, window_pieces

__all__ = ["attach_zero_layout"]


def attach_zero_layout(engine) -> LARS:
    """Register the layout of every flat partition of ``engine``'s optimizer wrapper with its LARS.

    ``engine``: a ``deepspeed.DeepSpeedEngine`` built with a :class:`LARS` client optimizer.
    Handles DeepSpeed's ZeRO stages 1-2 (``DeepSpeedZeroOptimizer``) and 3, its bf16 ZeRO-1
    wrapper (``BF16_Optimizer``: ZeRO 1 with bf16 weights and fp32 gradient accumulation) and its
    unfused mixed-precision wrapper (stage 0 with bf16/fp16: per-parameter fp32 copies that LARS
    updates as whole parameters; that wrapper runs one optimizer step with zero gradients while it
    is built, which weight decay turns into a real update, so it is undone here). Stage 0 in fp32
    hands LARS the parameters themselves: nothing to do. Returns the LARS.
    """
    wrapper = engine.optimizer
    lars = wrapper if isinstance(wrapper, LARS) else getattr(wrapper, "optimizer", None)
    if not isinstance(lars, LARS):
        raise TypeError(
            f"attach_zero_layout: the engine's optimizer is {type(wrapper).__name__} wrapping "
            f"{type(lars).__name__}, not flashclr.core.lars.LARS"
        )
    if wrapper is lars:
        return lars
    # Imported here: the checks above and stage 0 in fp32 need no DeepSpeed (seconds to import).
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if isinstance(wrapper, FP16_UnfusedOptimizer):
        _undo_initial_step(wrapper, lars)
        return lars
    if isinstance(wrapper, DeepSpeedZeroOptimizer):
        layouts = _stage_1_2_layouts(wrapper)
    elif isinstance(wrapper, DeepSpeedZeroOptimizer_Stage3):
        layouts = _stage_3_layouts(wrapper)
    elif isinstance(wrapper, BF16_Optimizer):
        layouts = _bf16_layouts(wrapper)
    else:
        raise TypeError(
            f"attach_zero_layout: DeepSpeed optimizer wrapper {type(wrapper).__name__} is not supported"
        )
    for flat, layout in layouts:
        lars.register_layout(flat, layout)
    return lars


def _undo_initial_step(wrapper, lars: LARS) -> None:
    """``FP16_UnfusedOptimizer`` steps once with zero gradients at construction to create the
    optimizer state. Its fp32 copies were clones of the low-precision weights, which that step
    did not touch: copy them back and drop the momentum the step created."""
    for fp32_group, lp_group in zip(wrapper.fp32_groups, wrapper.fp16_groups, strict=True):
        for fp32, lp in zip(fp32_group, lp_group, strict=True):
            fp32.data.copy_(lp.data)
            lars.state.pop(fp32, None)


def _stage_1_2_layouts(zero) -> list[tuple]:
    layouts = []
    for i, params in enumerate(zero.round_robin_bit16_groups):
        group = zero.real_dp_process_group[i]
        rank = dist.get_rank(group=group)
        partitions = zero.parallel_partitioned_bit16_groups[i]
        start = sum(p.numel() for p in partitions[:rank])
        length = partitions[rank].numel()
        # Shapes from DeepSpeed's meta copies: parameter storage may be swapped out (offload).
        metas = zero.round_robin_bit16_meta[i]
        offsets = zero.round_robin_bit16_offsets[i]
        spans = [
            (j, offset, meta.numel()) for j, (offset, meta) in enumerate(zip(offsets, metas, strict=True))
        ]
        flat = zero.single_partition_of_fp32_groups[i]
        layout = SegmentLayout.from_pieces(
            window_pieces(spans, start, length), len(params), group, device=flat.device
        )
        layouts.append((flat, layout))
    return layouts


def _stage_3_layouts(zero) -> list[tuple]:
    layouts = []
    for s, params in enumerate(zero.fp16_groups):
        group = zero.sub_group_process_groups[s]
        rank = dist.get_rank(group=group)
        pieces = []
        for j, p in enumerate(params):
            size = p.partition_numel()
            valid = max(0, min(size, p.ds_numel - rank * size))
            pieces += [(j, valid), (-1, size - valid)]
        flat = zero.fp32_partitioned_groups_flat[s]
        layouts.append((flat, SegmentLayout.from_pieces(pieces, len(params), group, device=flat.device)))
    return layouts


def _bf16_layouts(bf16) -> list[tuple]:
    """``BF16_Optimizer``: each group's parameters back to back from offset 0, padded at the end,
    cut into ``world`` equal partitions; rank r holds ``fp32_groups_flat_partition[i]``."""
    layouts = []
    for i, params in enumerate(bf16.bf16_groups):
        group = bf16.real_dp_process_group[i]
        rank = dist.get_rank(group=group)
        flat = bf16.fp32_groups_flat_partition[i]
        spans, offset = [], 0
        for j, p in enumerate(params):
            spans.append((j, offset, p.numel()))
            offset += p.numel()
        pieces = window_pieces(spans, rank * flat.numel(), flat.numel())
        layouts.append((flat, SegmentLayout.from_pieces(pieces, len(params), group, device=flat.device)))
    return layouts
