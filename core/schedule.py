"""Learning-rate schedule of SimCLR v2: a base rate scaled with the global batch, linear warm-up,
then cosine decay to zero.

The paper scales the base rate with the global batch ``B``: ``0.075 * sqrt(B)`` (``"sqrt"``) or
``0.3 * B / 256`` (``"linear"``); the two agree at B = 4096. The schedule is a pure function of the
step, so a resumed run needs only the step to continue the same curve.
"""

from __future__ import annotations

import math

LR_RULES = ("sqrt", "linear")


def base_learning_rate(rule: str, coefficient: float, global_batch: int) -> float:
    """``coefficient * sqrt(B)`` for ``rule="sqrt"``, ``coefficient * B / 256`` for ``"linear"``."""
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    if rule == "sqrt":
        return coefficient * math.sqrt(global_batch)
    if rule == "linear":
        return coefficient * global_batch / 256
    raise ValueError(f"unknown lr rule {rule!r}; choose one of {LR_RULES}")


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """The rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up rises linearly and reaches ``base_lr`` at the end of step ``warmup_steps - 1``; the
    cosine then decays from ``base_lr`` over the remaining steps.
    """
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps})")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
