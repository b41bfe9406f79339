"""LARS (layer-wise adaptive rate scaling) as SimCLR trains with it, unsharded or under ZeRO.

The update follows the official SimCLR optimizer (google-research/simclr, ``lars_optimizer.py``,
``classic_momentum=True``, no Nesterov), for every parameter ``w`` with gradient ``g``::

    u     = g + wd * w                                  # weight decay first (skipped if excluded)
    trust = eta * ||w|| / ||u||   (1 if ||w|| == 0 or ||u|| == 0, or if excluded)
    v     = momentum * v + lr * trust * u               # lr lives INSIDE the momentum buffer
    w     = w - v

``||.||`` is the L2 norm over all of the parameter's elements (``tf.norm(x, ord=2)`` on the whole
variable), taken on the weight and on the decayed gradient ``u``, not on the raw gradient. Because
the learning rate is folded into ``v``, a learning-rate change reaches the update gradually, as in
the official code (PyTorch's SGD would apply it at once). Excluded parameters (``lars_exclude`` in
their group: batch norm and biases by :func:`default_exclude`) get neither weight decay nor the
trust ratio, as in the official code where ``exclude_from_layer_adaptation`` defaults to
``exclude_from_weight_decay``.

Two ways to run the same maths:
- on CPU tensors, ``torch._foreach_*`` calls over the whole group (no Python loop of tensor
  maths per parameter);
- on CUDA tensors, two Triton launches per group (:mod:`flashclr.kernels.lars_update`): squared
  norms per parameter, then weight decay, trust ratio and momentum applied in one pass.

Sharded optimizers (DeepSpeed ZeRO) hand the optimizer flat tensors that hold slices of many
parameters. A :class:`SegmentLayout` registered for such a flat tensor (see
:func:`flashclr.core.lars_zero.attach_zero_layout`) tells LARS which element range belongs to which
parameter; the per-parameter squared norms are then summed over the pieces of each parameter and
over ranks (one ``all_reduce`` per flat tensor) before the same update runs. A flat tensor LARS
does not know is refused, because its norms would silently be wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["LARS", "SegmentLayout", "default_exclude", "lars_param_groups", "window_pieces"]


def default_exclude(module_name: str, module: nn.Module, param_name: str, param: nn.Parameter) -> bool:
    """The SimCLR rule: batch-norm parameters and biases skip weight decay and the trust ratio.

    Batch norm is any subclass of ``torch.nn.modules.batchnorm._BatchNorm`` (``BatchNorm1d/2d/3d``,
    ``SyncBatchNorm``, flashclr's ``GlooSyncBatchNorm``) or any module with a true ``is_batchnorm``
    attribute (for custom normalisation layers that do not subclass ``_BatchNorm``); this covers
    the shortcut's batch norm too. A bias is a parameter registered under the name ``bias``.
    Pass your own function with this signature to :func:`lars_param_groups` to change the rule.
    """
    del module_name, param
    return (
        isinstance(module, _BatchNorm) or bool(getattr(module, "is_batchnorm", False)) or param_name == "bias"
    )


def lars_param_groups(
    model: nn.Module,
    weight_decay: float,
    exclude: Callable[[str, nn.Module, str, nn.Parameter], bool] = default_exclude,
) -> list[dict]:
    """Split ``model``'s trainable parameters into the two LARS groups.

    Returns ``[{"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
    {"params": excluded, "weight_decay": 0.0, "lars_exclude": True}]``, where ``excluded`` holds the
    parameters for which ``exclude(module_name, module, param_name, param)`` is true. A group that
    would be empty is left out (DeepSpeed refuses empty groups). Shared parameters appear once.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    adapted: list[nn.Parameter] = []
    excluded: list[nn.Parameter] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (excluded if exclude(module_name, module, param_name, param) else adapted).append(param)
    groups = [
        {"params": adapted, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


@dataclass(frozen=True)
class SegmentLayout:
    """Which parameter each element range of one flat (sharded) tensor belongs to.

    The flat tensor of ``numel`` elements is cut, in order, into ``len(sizes)`` consecutive pieces;
    piece ``k`` has ``sizes[k]`` elements and belongs to parameter slot ``slots[k]`` in
    ``[0, n_slots)``. Padding pieces use the extra slot ``n_slots - 1`` (``has_padding_slot``), whose
    trust ratio is computed but only ever applied to zeros. The per-slot squared norms are summed
    over ``process_group`` (every rank holding a slice of the same parameters) with one all-reduce
    of a ``(2, n_slots)`` tensor; ``process_group=None`` with ``reduce=False`` skips it.
    """

    sizes: tuple[int, ...]
    slots: torch.Tensor  # (n_pieces,) int64, on the flat tensor's device
    n_slots: int
    process_group: object = None
    reduce: bool = True

    def __post_init__(self):
        if len(self.sizes) != self.slots.numel():
            raise ValueError(f"SegmentLayout: {len(self.sizes)} sizes but {self.slots.numel()} slots")
        if any(s <= 0 for s in self.sizes):
            raise ValueError("SegmentLayout: every piece needs at least one element")

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    @classmethod
    def from_pieces(
        cls, pieces: list[tuple[int, int]], n_params: int, process_group=None, device=None, reduce=True
    ) -> SegmentLayout:
        """Build from ``(slot, size)`` pairs in flat order; slot ``-1`` marks padding.

        Zero-size pieces are dropped and neighbouring pieces of one slot merged.
        """
        merged: list[list[int]] = []
        for slot, size in pieces:
            if not -1 <= slot < n_params:
                raise ValueError(f"SegmentLayout: slot {slot} outside [-1, {n_params})")
            if size < 0:
                raise ValueError(f"SegmentLayout: negative piece size {size}")
            if size == 0:
                continue
            if merged and merged[-1][0] == slot:
                merged[-1][1] += size
            else:
                merged.append([slot, size])
        slots = torch.tensor(
            [n_params if s == -1 else s for s, _ in merged], dtype=torch.int64, device=device
        )
        return cls(tuple(n for _, n in merged), slots, n_params + 1, process_group, reduce)


def window_pieces(spans: list[tuple[int, int, int]], start: int, length: int) -> list[tuple[int, int]]:
    """The ``(slot, size)`` pieces of the window ``[start, start + length)`` of a flat buffer.

    ``spans``: ``(slot, offset, numel)`` of each parameter laid out in the buffer, in increasing
    offset order and not overlapping. Elements of the window covered by no span are padding
    (slot -1). A parameter that straddles the window's edge contributes only its inside part.
    """
    pieces: list[tuple[int, int]] = []
    pos, end = start, start + length
    for slot, offset, numel in spans:
        lo, hi = max(offset, pos), min(offset + numel, end)
        if lo >= hi:
            continue
        pieces.append((-1, lo - pos))
        pieces.append((slot, hi - lo))
        pos = hi
    pieces.append((-1, end - pos))
    return pieces


def _trust_ratio(sumsq: torch.Tensor, eta: float) -> torch.Tensor:
    """``sumsq`` (2, n): squared norms of w and of u = g + wd*w per parameter -> trust (n,)."""
    w_norm, u_norm = sumsq.sqrt().unbind(0)
    one = torch.ones_like(w_norm)
    return torch.where(w_norm > 0, torch.where(u_norm > 0, eta * w_norm / u_norm, one), one)


class LARS(torch.optim.Optimizer):
    """LARS with SimCLR's semantics (see the module docstring for the exact update).

    Args:
        params: parameters or param groups; a group may set ``lr``, ``momentum``,
            ``trust_coefficient``, ``weight_decay`` and ``lars_exclude`` (bool: no weight decay and
            no trust ratio). :func:`lars_param_groups` builds SimCLR's two groups.
        lr: learning rate (inside the momentum buffer, as in the official code).
        momentum: classic momentum, in ``[0, 1)``.
        trust_coefficient: ``eta`` of the trust ratio (SimCLR: 1e-3).
        weight_decay: L2 coefficient added to the gradient before the trust ratio.
        fused: ``None`` picks the Triton kernels for CUDA tensors and ``torch._foreach_*`` for CPU
            ones; ``True`` forces the kernels (on CPU only under ``TRITON_INTERPRET=1``),
            ``False`` forces foreach.

    Example:
        >>> opt = LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.3)
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        trust_coefficient: float = 1e-3,
        weight_decay: float = 0.0,
        fused: bool | None = None,
    ):
        if not lr >= 0:
            raise ValueError(f"LARS: lr must be >= 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"LARS: momentum must be in [0, 1), got {momentum}")
        if not trust_coefficient > 0:
            raise ValueError(f"LARS: trust_coefficient must be > 0, got {trust_coefficient}")
        if not weight_decay >= 0:
            raise ValueError(f"LARS: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            trust_coefficient=trust_coefficient,
            weight_decay=weight_decay,
            lars_exclude=False,
        )
        super().__init__(params, defaults)
        self.fused = fused
        # Flat tensors handed over by a sharded optimizer, with their layout (see SegmentLayout).
        self._layouts: dict[int, tuple[torch.Tensor, SegmentLayout]] = {}
        # Shapes of each group's parameters as built. A tensor without a layout is accepted in
        # step() only where it can be a whole parameter: the shape of the parameter at its place
        # (mixed-precision wrappers substitute same-shaped fp32 copies); flat partitions are refused.
        self._shapes: dict[int, list[tuple[int, ...]]] = {
            id(g): [tuple(p.shape) for p in g["params"]] for g in self.param_groups
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # torch rebuilds the group dicts: carry the built shapes over, group by group.
        shapes = [self._shapes.get(id(g), []) for g in self.param_groups]
        super().load_state_dict(state_dict)
        self._shapes = {id(g): s for g, s in zip(self.param_groups, shapes, strict=True)}

    def register_layout(self, flat: torch.Tensor, layout: SegmentLayout) -> None:
        """Declare ``flat`` (1-D) a sharded tensor cut into parameter pieces by ``layout``."""
        if flat.dim() != 1 or flat.numel() != layout.numel:
            raise ValueError(
                f"register_layout: flat tensor of shape {tuple(flat.shape)} does not match a layout "
                f"of {layout.numel} elements"
            )
        self._layouts[id(flat)] = (flat, layout)

    def _use_fused(self, t: torch.Tensor) -> bool:
        return t.is_cuda if self.fused is None else self.fused

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            plain: list[torch.Tensor] = []
            shapes = self._shapes.get(id(group), [])
            for k, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS does not support sparse gradients")
                entry = self._layouts.get(id(p))
                if entry is not None and entry[0] is p:
                    self._step_flat(group, p, entry[1])
                elif k < len(shapes) and tuple(p.shape) == shapes[k]:
                    plain.append(p)
                else:
                    raise RuntimeError(
                        f"LARS was handed a tensor of shape {tuple(p.shape)} where it was built with "
                        f"{shapes[k] if k < len(shapes) else 'nothing'}, and no segment layout: a sharded "
                        "optimizer (DeepSpeed ZeRO) flattened the parameters, so per-parameter norms "
                        "would be wrong. Call "
                        "flashclr.core.lars_zero.attach_zero_layout(engine) after deepspeed.initialize."
                    )
            if plain:
                self._step_plain(group, plain)
        return loss

    def _buffers(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        bufs = []
        for p in tensors:
            state = self.state[p]
            if "momentum_buffer" not in state:
                # v starts at zero, so the first step is v = lr * trust * u as in the official code.
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(state["momentum_buffer"])
        return bufs

    def _step_plain(self, group: dict, params: list[torch.Tensor]) -> None:
        # One kernel launch (and one stack of norms) serves one dtype on one device: split mixed groups.
        batches: dict[tuple, list[torch.Tensor]] = {}
        for p in params:
            batches.setdefault((p.dtype, p.device), []).append(p)
        for batch in batches.values():
            fused = self._use_fused(batch[0])
            _lars_pieces(
                batch, [p.grad for p in batch], self._buffers(batch), group, None, len(batch), None, fused
            )

    def _step_flat(self, group: dict, flat: torch.Tensor, layout: SegmentLayout) -> None:
        (buf,) = self._buffers([flat])
        if flat.grad.shape != flat.shape:
            raise RuntimeError(
                f"LARS: gradient of shape {tuple(flat.grad.shape)} for a flat tensor {tuple(flat.shape)}"
            )
        ws = list(torch.split(flat, layout.sizes))
        gs = list(torch.split(flat.grad, layout.sizes))
        vs = list(torch.split(buf, layout.sizes))
        reduce = None
        if layout.reduce and dist.is_available() and dist.is_initialized():
            group_pg = layout.process_group

            def reduce(t: torch.Tensor) -> None:
                dist.all_reduce(t, group=group_pg)

        _lars_pieces(
            ws,
            gs,
            vs,
            group,
            slots=layout.slots,
            n_slots=layout.n_slots,
            reduce=reduce,
            fused=self._use_fused(flat),
        )


def _lars_pieces(
    ws: list[torch.Tensor],
    gs: list[torch.Tensor],
    vs: list[torch.Tensor],
    group: dict,
    slots: torch.Tensor | None,
    n_slots: int,
    reduce: Callable[[torch.Tensor], None] | None,
    fused: bool,
) -> None:
    """One LARS update over pieces ``ws`` (weights), ``gs`` (gradients), ``vs`` (momentum).

    Piece ``k`` belongs to parameter slot ``slots[k]`` (``None``: piece k is parameter k). The
    squared norms of each slot are the sums over its pieces, then over ranks by ``reduce``.
    """
    lr, momentum = group["lr"], group["momentum"]
    exclude = bool(group["lars_exclude"])
    wd = 0.0 if exclude else float(group["weight_decay"])
    if fused:
        from flashclr.kernels.lars_update import lars_sumsq, lars_update

        if exclude:
            coef = torch.full((len(ws),), lr, dtype=torch.float32, device=ws[0].device)
        else:
            per_piece = lars_sumsq(ws, gs, weight_decay=wd)  # (n_pieces, 2) fp32
            coef = lr * _trust_ratio(
                _slot_sums(per_piece.t(), slots, n_slots, reduce), group["trust_coefficient"]
            )
            if slots is not None:
                coef = coef[slots]
        lars_update(ws, gs, vs, coef, weight_decay=wd, momentum=momentum)
        return

    us = torch._foreach_add(gs, ws, alpha=wd) if wd != 0 else gs
    torch._foreach_mul_(vs, momentum)
    if exclude:
        torch._foreach_add_(vs, us, alpha=lr)
    else:
        # Norms in fp32 whatever the parameter dtype, as the official code keeps fp32 variables.
        sumsq = torch.stack(
            [
                torch.stack(torch._foreach_norm(ws, dtype=torch.float32)),
                torch.stack(torch._foreach_norm(us, dtype=torch.float32)),
            ]
        ).square_()  # (2, n_pieces)
        coef = lr * _trust_ratio(_slot_sums(sumsq, slots, n_slots, reduce), group["trust_coefficient"])
        if slots is not None:
            coef = coef[slots]
        # v += coef * u without a temporary (the 0-dim coefficients broadcast per tensor).
        torch._foreach_addcmul_(vs, us, list(coef.to(ws[0].dtype).unbind()))
    torch._foreach_sub_(ws, vs)


def _slot_sums(
    sumsq: torch.Tensor,
    slots: torch.Tensor | None,
    n_slots: int,
    reduce: Callable[[torch.Tensor], None] | None,
) -> torch.Tensor:
    """(2, n_pieces) squared norms per piece -> (2, n_slots) per parameter, summed over ranks."""
    if slots is not None:
        sumsq = sumsq.new_zeros(2, n_slots).index_add_(1, slots, sumsq)
    if reduce is not None:
        sumsq = sumsq.contiguous()
        reduce(sumsq)
    return sumsq
