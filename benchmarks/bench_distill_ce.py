"""Distillation cross-entropy: ``flashclr.kernels.distill_ce`` against eager torch, same run.

    python benchmarks/bench_distill_ce.py [--batch 4096] [--classes 1000,21843] [--dtype fp32]
                                          [--temperature 1.0] [--alpha 1.0] [--repeat 3] [--threads N]

The reference is ``tests.references.distill_ce_reference`` in the input dtype: log_softmax of the
student, softmax of the teacher, their product summed over classes, mean over rows (plus
``F.cross_entropy`` when α < 1), differentiated by autograd. For each class count it times the
forward and the forward + backward of both (median of ``repeat``), and the peak memory of forward +
backward above the inputs: on the CPU the most bytes torch's allocator held
(``benchmarks.timing.cpu_peak_bytes``), on CUDA ``torch.cuda.max_memory_allocated``. The gradient of the
student, B×C in the input dtype, is part of both peaks.

Bytes moved (the GPU bandwidth figure): read both logits and write the gradient, B·C·(2·size + the
gradient's size); the fused kernel reads the logits a second time for C > 4096, from L2 at best.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

if __package__ in (None, ""):  # run as a script: `benchmarks` and `tests` import from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import cpu_peak_bytes, cuda_peak_bytes, synchronize, time_fn  # noqa: E402
from flashclr.kernels import distill_ce  # noqa: E402
from flashclr.kernels.distill_ce import gradient_dtype  # noqa: E402
from tests.references import distill_ce_reference as eager_loss  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_distill_ce(
    batch: int = 4096,
    classes_list: tuple[int, ...] | list[int] = (1000, 21843),
    *,
    dtype: torch.dtype | str = torch.float32,
    temperature: float = 1.0,
    alpha: float = 1.0,
    device: torch.device | str | None = None,
    warmup: int = 1,
    repeat: int = 3,
) -> list[dict]:
    """One row per (implementation, C): times in seconds, peak bytes, bytes moved and GB/s.

    Rows come in pairs, ``impl`` "fused" then "eager"; the fused row carries ``speedup`` (eager
    time / fused time, forward + backward) and ``memory_ratio`` (eager peak / fused peak).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    grad_size = torch.empty((), dtype=gradient_dtype(dtype)).element_size()
    rows = []
    for n_cols in classes_list:
        gen = torch.Generator().manual_seed(0)
        student = (torch.randn(batch, n_cols, generator=gen) * 3).to(device, dtype)
        teacher = (torch.randn(batch, n_cols, generator=gen) * 3).to(device, dtype)
        labels = None
        if alpha < 1:
            labels = torch.randint(0, n_cols, (batch,), generator=gen).to(device)
            labels[::2] = -100  # a mixed batch: half the rows unlabelled
        losses = {
            "fused": lambda s, t=teacher, y=labels: distill_ce(s, t, temperature, labels=y, alpha=alpha),
            "eager": lambda s, t=teacher, y=labels: eager_loss(s, t, temperature, y, alpha, dtype=dtype),
        }
        common = dict(batch=batch, classes=n_cols, dtype=str(dtype).removeprefix("torch."))
        common.update(temperature=temperature, alpha=alpha, device=str(device))
        common["bytes_moved"] = batch * n_cols * (2 * student.element_size() + grad_size)
        # Both timings before either peak: the profiler that measures the CPU peak slows what it watches.
        times = {impl: _times(loss, student, device, warmup, repeat) for impl, loss in losses.items()}
        fused, eager = (
            {"impl": impl, **common, **times[impl], "peak_bytes": _peak(loss, student, device)}
            for impl, loss in losses.items()
        )
        fused["speedup"] = eager["fwd_bwd_s"] / fused["fwd_bwd_s"]
        if fused["peak_bytes"] and eager["peak_bytes"]:
            fused["memory_ratio"] = eager["peak_bytes"] / fused["peak_bytes"]
        for row in (fused, eager):
            row["gbps"] = row["bytes_moved"] / row["fwd_bwd_s"] / 1e9
        rows += [fused, eager]
    return rows


def _step(loss_fn, student: torch.Tensor):
    """Forward + backward of ``loss_fn`` on a fresh leaf view of ``student``; returns the gradient."""
    leaf = student.detach().requires_grad_()
    loss_fn(leaf).backward()
    return leaf.grad


def _times(loss_fn, student: torch.Tensor, device: torch.device, warmup: int, repeat: int) -> dict:
    """Forward time (no gradient) and forward + backward time of ``loss_fn(student)``."""

    def forward():
        with torch.no_grad():
            loss_fn(student)

    fwd = time_fn(forward, device, warmup=warmup, repeat=repeat)
    both = time_fn(lambda: _step(loss_fn, student), device, warmup=warmup, repeat=repeat)
    return {"forward_s": fwd["median_s"], "fwd_bwd_s": both["median_s"], "fwd_bwd_min_s": both["min_s"]}


def _peak(loss_fn, student: torch.Tensor, device: torch.device) -> int | None:
    """Peak bytes of one forward + backward above what was allocated before."""
    synchronize(device)
    if device.type == "cuda":
        return cuda_peak_bytes(lambda: _step(loss_fn, student), device)
    return cpu_peak_bytes(lambda: _step(loss_fn, student))


def format_rows(rows: list[dict]) -> str:
    """A Markdown table of ``bench_distill_ce`` rows."""
    head = "| C | impl | forward ms | fwd+bwd ms | peak MiB | B×C fp32 tensors | speedup | memory ratio |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = r["peak_bytes"]
        mib = f"{peak / 2**20:.0f}" if peak is not None else "-"
        tensors = f"{peak / (r['batch'] * r['classes'] * 4):.2f}" if peak is not None else "-"
        speedup = f"{r['speedup']:.2f}×" if "speedup" in r else ""
        memory = f"{r['memory_ratio']:.2f}×" if "memory_ratio" in r else ""
        times = f"{r['forward_s'] * 1e3:.0f} | {r['fwd_bwd_s'] * 1e3:.0f}"
        lines.append(f"| {r['classes']} | {r['impl']} | {times} | {mib} | {tensors} | {speedup} | {memory} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--classes", default="1000,21843", help="comma-separated class counts")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = [int(c) for c in args.classes.split(",")]
    rows = bench_distill_ce(
        args.batch,
        classes,
        dtype=args.dtype,
        temperature=args.temperature,
        alpha=args.alpha,
        repeat=args.repeat,
    )
    device = rows[0]["device"]
    print(
        f"distill_ce vs eager torch: B={args.batch}, {args.dtype}, τ={args.temperature}, α={args.alpha}, "
        f"{device}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(format_rows(rows))


if __name__ == "__main__":
    main()
