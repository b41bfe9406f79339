"""The fused losses on a GPU against their references: time, peak memory, FLOP and byte rates.

The component benchmarks ``bench_nt_xent.py`` and ``bench_distill_ce.py`` measure the CPU paths
(wall clock, resident memory). On a CUDA device ``run.py --gpu`` (and so ``gpu_check.sh``) uses
this module instead, which times with CUDA events and reads ``torch.cuda.max_memory_allocated``:

- NT-Xent: ``flashclr.kernels.nt_xent`` (Triton) against ``tests.references.nt_xent_reference``
  eager and ``torch.compile``d, forward + backward, in the inputs' dtype (bf16 by default).
  FLOP counted as 6·(2N)²·D (forward 2·(2N)²·D, backward twice that); the count is fixed, so a
  kernel that exploits the symmetry of S shows as a higher rate, not as fewer FLOP.
- Distillation CE: ``flashclr.kernels.distill_ce`` against ``distill_ce_reference`` eager, forward +
  backward. Bytes counted as the fused kernel's minimum traffic: read the student and teacher logits
  and write the student's gradient, 3·B·C elements.

Rows use the same keys as the CPU benchmarks (``impl``, ``time_s``, ``peak_bytes``, ``speedup`` =
reference time / ours, ``memory_ratio`` = reference peak / ours) plus ``tflops`` or ``gbps``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

import torch

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import cuda_peak_bytes, time_fn  # noqa: E402


def _measure(fn: Callable[[], None], device: torch.device, repeat: int, nvml) -> tuple:
    """Median seconds of ``fn`` after a warm-up call (compiles, autotunes), its peak memory, and
    the NVML readings over the timed calls (``None`` without NVML)."""
    fn()
    with nvml.sample() if nvml is not None else contextlib.nullcontext([None]) as got:
        timing = time_fn(fn, device, warmup=0, repeat=repeat)
    reading = got[0].as_dict() if got[0] is not None else None
    return timing["median_s"], cuda_peak_bytes(fn, device), reading


def _relative(rows: list[dict]) -> list[dict]:
    ours = rows[0]
    for r in rows[1:]:
        r["speedup"] = r["time_s"] / ours["time_s"]
        if r["peak_bytes"] is not None and ours["peak_bytes"]:
            r["memory_ratio"] = r["peak_bytes"] / ours["peak_bytes"]
    return rows


def bench_nt_xent_gpu(
    two_n_list=(4096, 8192, 16384, 32768),
    d: int = 128,
    *,
    dtype: torch.dtype = torch.bfloat16,
    temperature: float = 0.1,
    repeat: int = 10,
    naive_max: int = 32768,
    compiled: bool = True,
    device: torch.device | str = "cuda",
    nvml=None,
) -> list[dict]:
    """One dict per (2N, implementation); the references are skipped above ``naive_max``.

    ``nvml``: a :class:`benchmarks.nvml.Nvml` whose readings over each measurement go in ``nvml``.
    """
    from flashclr.kernels.nt_xent import nt_xent
    from tests.references import nt_xent_reference

    device = torch.device(device)
    impls = {
        "flashclr (triton)": lambda a, b: nt_xent(a, b, temperature),
        "naive eager": lambda a, b: nt_xent_reference(a, b, temperature, dtype=a.dtype),
    }
    if compiled:
        # One compiled graph for every size: dynamic shapes spare a recompilation per 2N.
        ref = torch.compile(nt_xent_reference, dynamic=True)
        impls["naive torch.compile"] = lambda a, b: ref(a, b, temperature, dtype=a.dtype)
    rows = []
    for two_n in two_n_list:
        z1 = torch.randn(two_n // 2, d, device=device, dtype=dtype, requires_grad=True)
        z2 = torch.randn(two_n // 2, d, device=device, dtype=dtype, requires_grad=True)
        size_rows = []
        for name, loss in impls.items():
            if name != "flashclr (triton)" and two_n > naive_max:
                continue

            def step(loss=loss, z1=z1, z2=z2):
                z1.grad = z2.grad = None
                loss(z1, z2).backward()

            t, peak, reading = _measure(step, device, repeat, nvml)
            flop = 6 * two_n**2 * d
            size_rows.append(
                dict(two_n=two_n, d=d, dtype=str(dtype).replace("torch.", ""), impl=name, time_s=t,
                     peak_bytes=peak, flop=flop, tflops=flop / t / 1e12, nvml=reading)
            )  # fmt: skip
        rows += _relative(size_rows)
    return rows


def bench_distill_ce_gpu(
    shapes=((1024, 1000), (4096, 1000), (16384, 1000), (4096, 21843)),
    *,
    dtype: torch.dtype = torch.bfloat16,
    temperature: float = 2.0,
    repeat: int = 10,
    device: torch.device | str = "cuda",
    nvml=None,
) -> list[dict]:
    """One dict per ((B, C), implementation): fused and the eager reference (``nvml`` as above)."""
    from flashclr.kernels.distill_ce import distill_ce
    from tests.references import distill_ce_reference

    device = torch.device(device)
    impls = {
        "flashclr (triton)": lambda s, t: distill_ce(s, t, temperature),
        "eager (log_softmax + softmax)": lambda s, t: distill_ce_reference(s, t, temperature, dtype=s.dtype),
    }
    rows = []
    for b, c in shapes:
        student = torch.randn(b, c, device=device, dtype=dtype, requires_grad=True)
        teacher = torch.randn(b, c, device=device, dtype=dtype)
        size_rows = []
        for name, loss in impls.items():

            def step(loss=loss, student=student, teacher=teacher):
                student.grad = None
                loss(student, teacher).backward()

            t, peak, reading = _measure(step, device, repeat, nvml)
            moved = 3 * b * c * student.element_size()
            size_rows.append(
                dict(b=b, c=c, dtype=str(dtype).replace("torch.", ""), impl=name, time_s=t, peak_bytes=peak,
                     bytes_moved=moved, gbps=moved / t / 1e9, nvml=reading)
            )  # fmt: skip
        rows += _relative(size_rows)
    return rows


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device; on the CPU use bench_nt_xent.py and bench_distill_ce.py")
    for r in bench_nt_xent_gpu() + bench_distill_ce_gpu():
        print(r)
