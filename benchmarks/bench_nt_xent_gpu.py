"""NT-Xent on a GPU: the fused Triton loss against the naive reference, eager and torch.compile'd.

``bench_nt_xent.py`` measures the CPU path (wall clock, resident memory). On a CUDA device
``run.py`` (and so ``gpu_check.sh``) uses this module instead: CUDA-event timing and
``torch.cuda.max_memory_allocated``, forward + backward of ``flashclr.kernels.nt_xent`` (Triton)
and of ``tests.references.nt_xent_reference`` eager and ``torch.compile``d, in the inputs' dtype
(bf16 by default). FLOP counted as 6·(2N)²·D (forward 2·(2N)²·D, backward twice that); the count
is fixed, so a kernel that exploits the symmetry of S shows as a higher rate, not as fewer FLOP.

Rows use the CPU benchmark's keys (``impl``, ``time_s``, ``peak_bytes``, ``speedup`` = reference
time / ours, ``memory_ratio`` = reference peak / ours) plus ``tflops`` and ``nvml``.
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

            try:
                t, peak, reading = _measure(step, device, repeat, nvml)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if name == "flashclr (triton)":
                    raise
                # A reference that does not fit (or does not compile) leaves its cells empty; the
                # fused figures of the size still count.
                print(f"nt_xent 2N={two_n}: {name} skipped ({type(exc).__name__}: {str(exc)[:200]})")
                torch.cuda.empty_cache()
                continue
            flop = 6 * two_n**2 * d
            size_rows.append(
                dict(two_n=two_n, d=d, dtype=str(dtype).replace("torch.", ""), impl=name, time_s=t,
                     peak_bytes=peak, flop=flop, tflops=flop / t / 1e12, nvml=reading)
            )  # fmt: skip
        rows += _relative(size_rows)
    return rows


if __name__ == "__main__":
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA device; on the CPU use benchmarks/bench_nt_xent.py")
    for r in bench_nt_xent_gpu():
        print(r)
