"""Exact LARS under DeepSpeed ZeRO stages 1, 2 and 3: tell LARS where each parameter lies in the
flat partitions DeepSpeed hands it.

ZeRO replaces the optimizer's parameters by flat fp32 tensors, one per param group (stages 1 and 2)
or per sub-group (stage 3), each holding only this rank's slice. LARS's trust ratio needs every
parameter's whole-tensor norms, so :func:`attach_zero_layout` reads DeepSpeed's partitioning (once,
after ``deepspeed.initialize``) and registers a :class:`~flashclr.core.lars.SegmentLayout` for each
flat tensor. At every step LARS then sums per-parameter squared norms over the pieces it holds and
over the ranks (one ``all_reduce`` of a ``(2, n_params_in_group + 1)`` tensor per flat tensor that
DeepSpeed steps, i.e. per param group) and applies the unsharded update.

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
    """Register the layout of every flat partition of ``engine``'s ZeRO optimizer with its LARS.

    ``engine``: a ``deepspeed.DeepSpeedEngine`` built with a :class:`LARS` client optimizer.
    Returns that LARS. With ZeRO stage 0 LARS sees whole parameters and nothing is registered.
    """
    stage = engine.zero_optimization_stage()
    wrapper = engine.optimizer
    lars = wrapper if isinstance(wrapper, LARS) else getattr(wrapper, "optimizer", None)
    if not isinstance(lars, LARS):
        raise TypeError(
            f"attach_zero_layout: the engine's optimizer is {type(wrapper).__name__} wrapping "
            f"{type(lars).__name__}, not flashclr.core.lars.LARS"
        )
    if stage == 0:
        return lars
    if stage in (1, 2):
        layouts = _stage_1_2_layouts(wrapper)
    elif stage == 3:
        layouts = _stage_3_layouts(wrapper)
    else:
        raise ValueError(f"attach_zero_layout: unknown ZeRO stage {stage}")
    for flat, layout in layouts:
        lars.register_layout(flat, layout)
    return lars


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
