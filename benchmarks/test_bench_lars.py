"""pytest-benchmark: one LARS step over a whole model, flashclr's against the per-parameter loop.

Group ``lars <model>``: ``flashclr.core.lars.LARS`` (foreach on the CPU, Triton on CUDA) and
tests/references_lars.py's ``ReferenceLARS`` (a Python loop over parameters), same parameter
groups, same gradients.
"""

from __future__ import annotations

import pytest
import torch

from flashclr.core.lars import LARS, lars_param_groups
from flashclr.core.models import build_model
from tests.references_lars import ReferenceLARS


@pytest.mark.parametrize("impl", ["flashclr", "per_parameter_loop"])
@pytest.mark.parametrize("model_name", ["r18_1x_sk0", "r50_1x_sk1"])
def test_bench_lars(benchmark, device, sync, model_name, impl):
    model = build_model(model_name, device=device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    groups = lars_param_groups(model, weight_decay=1e-6)
    opt = LARS(groups, lr=0.1) if impl == "flashclr" else ReferenceLARS(groups, lr=0.1)

    def step():
        opt.step()
        sync()

    step()  # momentum buffers allocated outside the timing
    benchmark.group = f"lars {model_name}"
    benchmark.extra_info["parameters"] = sum(p.numel() for p in model.parameters())
    benchmark.extra_info["tensors"] = sum(1 for _ in model.parameters())
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
