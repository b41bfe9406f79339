"""pytest-benchmark: one whole training step (pretraining and distillation), fused loss vs eager.

Groups ``train_step <stage> <model> B=...``; each round is one step (forward, loss, backward,
LARS). For the phase split, images/s and MFU use ``python benchmarks/run.py`` instead.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.bench_train_step import loss_functions
from flashclr.core.lars import LARS, lars_param_groups
from flashclr.core.models import build_model

HAS_CUDA = torch.cuda.is_available()
# CPU: a small ResNet-18 at 64 px keeps a round near a second on 2 cores; GPU: the setting.
MODEL, BATCH, SIZE = ("r50_1x_sk0", 256, 224) if HAS_CUDA else ("r18_0.5x_sk0", 16, 64)


@pytest.mark.parametrize("loss", ["fused", "eager"])
@pytest.mark.parametrize("stage", ["pretrain", "distill"])
def test_bench_train_step(benchmark, device, sync, stage, loss):
    fmt = torch.channels_last if HAS_CUDA else torch.contiguous_format
    small = SIZE <= 64
    model = build_model(MODEL, small_images=small, device=device).to(memory_format=fmt)
    teacher = build_model(MODEL, small_images=small, device=device).to(memory_format=fmt).eval()
    opt = LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.075 * math.sqrt(BATCH))
    loss_fn = dict(zip(("fused", "eager"), loss_functions(stage), strict=True))[loss]
    views = 2 if stage == "pretrain" else 1
    x = torch.randn(views * BATCH, 3, SIZE, SIZE, device=device).contiguous(memory_format=fmt)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=HAS_CUDA)

    def step():
        if stage == "pretrain":
            with autocast:
                z = model.projections(x)  # (2B, 128)
            out = loss_fn(*z.chunk(2))
        else:
            with torch.no_grad(), autocast:
                t = teacher.logits(x)  # (B, 1000)
            with autocast:
                s = model.logits(x)
            out = loss_fn(s, t)
        out.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()

    benchmark.group = f"train_step {stage} {MODEL} B={BATCH} {SIZE}px"
    benchmark.extra_info["images_per_round"] = BATCH
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)
