"""Optimizer step time of flashclr's LARS against the per-parameter Python loop, per model size.

    python benchmarks/bench_lars.py [--models r18_0.5x_sk0 r18_1x_sk0 r50_1x_sk1] [--repeat 5]

On a shared CPU, ``OMP_NUM_THREADS=1`` gives steadier figures (intra-op threads of a step that is
tens of milliseconds long wait on each other when other processes hold the cores).

Both optimizers take SimCLR's two parameter groups (``lars_param_groups``, weight decay 1e-6)
and the same gradients; the reference is tests/references_lars.py's ``ReferenceLARS`` (one
Python iteration and a handful of small kernels per parameter). flashclr's LARS runs
``torch._foreach_*`` on the CPU and the two Triton launches per group on CUDA. Each step changes
the weights, which does not change the work. Rounds alternate the two optimizers (so load changes
on a shared machine hit both); times are medians over the rounds after a first one that allocates
the momentum buffers and, on CUDA, compiles the kernels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: `benchmarks` and `tests` import from the repo root
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from benchmarks.report import machine, machine_line, ratio  # noqa: E402
from benchmarks.timing import time_fn  # noqa: E402
from flashclr.core.lars import LARS, lars_param_groups  # noqa: E402
from flashclr.core.models import build_model  # noqa: E402
from tests.references_lars import ReferenceLARS  # noqa: E402

IMPLS = {"flashclr": LARS, "per-parameter loop": ReferenceLARS}


def bench_lars(
    model_names=("r18_0.5x_sk0", "r18_1x_sk0", "r50_1x_sk1"),
    *,
    device: torch.device | str | None = None,
    repeat: int = 5,
    seed: int = 0,
) -> list[dict]:
    """One LARS step over every parameter of each model (encoder + 3-layer head), both optimizers.

    Returns one dict per (model, implementation): ``model``, ``parameters``, ``tensors``,
    ``impl`` (``flashclr`` or ``per-parameter loop``), ``path`` (``foreach`` / ``triton``),
    ``time_s`` (median of ``repeat``), ``min_s``, and on the reference rows ``speedup``
    (reference time / flashclr time, same run).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    for name in model_names:
        torch.manual_seed(seed)
        model = build_model(name, num_classes=0, device=device)
        params = list(model.parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        optimizers = {
            impl: cls(lars_param_groups(model, weight_decay=1e-6), lr=0.1) for impl, cls in IMPLS.items()
        }
        # Rounds alternate the two optimizers, so that load changes on a shared machine hit both.
        times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
        for _ in range(repeat + 1):
            for impl, opt in optimizers.items():
                times[impl].append(time_fn(opt.step, device, warmup=0, repeat=1)["median_s"])
        ours = None
        for impl, cls in IMPLS.items():
            measured = times[impl][1:]  # the first round allocates momentum buffers (and compiles)
            row = {
                "model": name,
                "parameters": sum(p.numel() for p in params),
                "tensors": len(params),
                "impl": impl,
                "path": ("triton" if device.type == "cuda" else "foreach") if cls is LARS else "python loop",
                "time_s": statistics.median(measured),
                "min_s": min(measured),
            }
            if ours is None:
                ours = row
            else:
                row["speedup"] = ratio(row["time_s"], ours["time_s"])
            rows.append(row)
        del optimizers
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["r18_0.5x_sk0", "r18_1x_sk0", "r50_1x_sk1"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(machine_line(machine(device)) + f"; torch threads {torch.get_num_threads()}")
    rows = bench_lars(args.models, device=device, repeat=args.repeat)
    print(f"{'model':<14}{'params':>12}{'tensors':>9}  {'impl':<20}{'path':<13}{'ms':>10}{'speedup':>9}")
    for r in rows:
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        print(
            f"{r['model']:<14}{r['parameters']:>12,}{r['tensors']:>9}  {r['impl']:<20}{r['path']:<13}"
            f"{1000 * r['time_s']:>10.2f}{speed:>9}"
        )
    print("speedup = per-parameter loop time / flashclr time, measured in the same run")


if __name__ == "__main__":
    main()
