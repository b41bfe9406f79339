"""pytest-benchmark: the fused losses against their references, forward + backward.

Groups: ``nt_xent 2N=... D=...`` (fused, eager reference, torch.compile'd reference) and
``distill_ce B=... C=...`` (fused, eager reference). The references are tests/references.py's,
run in the inputs' dtype.
"""

from __future__ import annotations

import pytest
import torch

from flashclr.kernels.distill_ce import distill_ce
from flashclr.kernels.nt_xent import nt_xent
from tests.references import distill_ce_reference, nt_xent_reference

HAS_CUDA = torch.cuda.is_available()
DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32
# CPU: sizes whose eager reference takes under a second on 2 cores; GPU: the sizes.
NT_XENT_2N = (4096, 16384, 32768) if HAS_CUDA else (1024, 4096)
DISTILL_SHAPES = ((4096, 1000), (4096, 21843)) if HAS_CUDA else ((1024, 1000), (256, 21843))
_compiled = {}


def _nt_xent_impl(name: str):
    if name == "fused":
        return lambda z1, z2: nt_xent(z1, z2, 0.1)
    if name == "eager":
        return lambda z1, z2: nt_xent_reference(z1, z2, 0.1, dtype=z1.dtype)
    if "compiled" not in _compiled:  # one compiled function for every size (dynamic shapes)
        _compiled["compiled"] = torch.compile(nt_xent_reference, dynamic=True)
    fn = _compiled["compiled"]
    return lambda z1, z2: fn(z1, z2, 0.1, dtype=z1.dtype)


@pytest.mark.parametrize("impl", ["fused", "eager", "compiled"])
@pytest.mark.parametrize("n2", NT_XENT_2N)
def test_bench_nt_xent(benchmark, device, sync, n2, impl):
    d = 128
    z1 = torch.randn(n2 // 2, d, device=device, dtype=DTYPE, requires_grad=True)
    z2 = torch.randn(n2 // 2, d, device=device, dtype=DTYPE, requires_grad=True)
    loss_fn = _nt_xent_impl(impl)

    def step():
        loss = loss_fn(z1, z2)
        loss.backward()
        z1.grad = z2.grad = None
        sync()

    step()  # compile / autotune outside the timing
    benchmark.group = f"nt_xent 2N={n2} D={d} {str(DTYPE).replace('torch.', '')}"
    benchmark.extra_info["flop_6_2N2_D"] = 6 * n2 * n2 * d
    benchmark.pedantic(step, rounds=3 if device.type == "cpu" else 10, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["fused", "eager"])
@pytest.mark.parametrize("shape", DISTILL_SHAPES, ids=lambda s: f"B{s[0]}xC{s[1]}")
def test_bench_distill_ce(benchmark, device, sync, shape, impl):
    b, c = shape
    student = torch.randn(b, c, device=device, dtype=DTYPE, requires_grad=True)
    teacher = torch.randn(b, c, device=device, dtype=DTYPE)
    if impl == "fused":
        loss_fn = lambda s, t: distill_ce(s, t, 2.0)  # noqa: E731
    else:
        loss_fn = lambda s, t: distill_ce_reference(s, t, 2.0, dtype=s.dtype)  # noqa: E731

    def step():
        loss_fn(student, teacher).backward()
        student.grad = None
        sync()

    step()
    benchmark.group = f"distill_ce B={b} C={c} {str(DTYPE).replace('torch.', '')}"
    # Bytes a fused pass must move: read both logits, write the student's gradient.
    benchmark.extra_info["bytes_moved"] = 3 * b * c * student.element_size()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
