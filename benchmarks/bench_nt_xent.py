"""NT-Xent on the CPU: the tiled torch path against the naive reference, eager and torch.compile'd.

    python benchmarks/bench_nt_xent.py [--two-n 4096 8192 16384 32768] [--d 128] [--repeat 3]
                                       [--naive-max 16384] [--big 131072]

For each 2N it times forward + backward (``loss.backward()`` with z1, z2 requiring grad) of
``flashclr.kernels.nt_xent`` (backend "torch") and of ``tests.references.nt_xent_reference`` in
fp32, eager and ``torch.compile``d (compiled once at that size before timing), and records the peak
memory of one more call: the most bytes torch's CPU allocator held during it above what it held
before (``benchmarks.timing.cpu_peak_bytes``; the inputs are not in it, their gradients are). The
ratio columns are reference time / ours and reference memory / ours. FLOP count: 2N·2N·D
multiply-adds for the forward, two more for the backward, 6·(2N)²·D FLOP in all (fixed, so a path
that exploits the symmetry of S shows as faster, not as fewer FLOP).

The naive reference writes (2N)² floats several times: 2N = 32768 needs ~13 GB, so it only runs up
to ``--naive-max`` (default 16384); ``--big`` runs ours alone at a size the naive path cannot hold.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: `tests` imports from the repo root
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from benchmarks.timing import cpu_peak_bytes  # noqa: E402
from flashclr.kernels.nt_xent import nt_xent  # noqa: E402
from tests.references import nt_xent_reference  # noqa: E402


def _implementations(temperature: float):
    compiled = torch.compile(nt_xent_reference)
    return {
        "flashclr (tiled torch)": lambda a, b: nt_xent(a, b, temperature, backend="torch"),
        "naive eager": lambda a, b: nt_xent_reference(a, b, temperature, dtype=torch.float32),
        "naive torch.compile": lambda a, b: compiled(a, b, temperature, dtype=torch.float32),
    }


def _run_once(fn, z1, z2) -> float:
    z1.grad = z2.grad = None
    t0 = time.perf_counter()
    fn(z1, z2).backward()
    return time.perf_counter() - t0


def bench_nt_xent(
    two_n_list=(4096, 8192, 16384, 32768),
    d: int = 128,
    *,
    repeat: int = 3,
    temperature: float = 0.1,
    naive_max: int = 16384,
    warmup: bool = True,
    seed: int = 0,
) -> list[dict]:
    """Time and peak memory of forward + backward on the CPU, ours and the references, per 2N.

    Returns one dict per (2N, implementation): ``two_n``, ``d``, ``impl``, ``time_s`` (median of
    ``repeat`` calls after one warm-up, which also compiles; ``warmup=False`` skips it, for
    sizes where one call takes minutes), ``peak_bytes`` (see module doc),
    ``gflops`` (6·(2N)²·D / time), and for the references ``speedup`` (their time / ours) and
    ``memory_ratio`` (their peak / ours). References above ``naive_max`` are skipped.
    """
    torch.manual_seed(seed)
    impls = _implementations(temperature)
    rows = []
    for two_n in two_n_list:
        z1 = torch.randn(two_n // 2, d, requires_grad=True)
        z2 = torch.randn(two_n // 2, d, requires_grad=True)
        ours = None
        for name, fn in impls.items():
            if name != "flashclr (tiled torch)" and two_n > naive_max:
                continue
            if warmup:
                _run_once(fn, z1, z2)  # warm-up (and compile)
            times = [_run_once(fn, z1, z2) for _ in range(repeat)]
            z1.grad = z2.grad = None  # freed before the peak is watched, not inside it
            row = {
                "two_n": two_n,
                "d": d,
                "impl": name,
                "time_s": statistics.median(times),
                "peak_bytes": cpu_peak_bytes(lambda fn=fn, a=z1, b=z2: _run_once(fn, a, b)),
                "gflops": 6 * two_n**2 * d / statistics.median(times) / 1e9,
            }
            if ours is None:
                ours = row
            else:
                row["speedup"] = row["time_s"] / ours["time_s"]
                row["memory_ratio"] = row["peak_bytes"] / max(ours["peak_bytes"], 1)
            rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        f"{'2N':>7} {'D':>4}  {'implementation':<24} {'fwd+bwd s':>9} {'GFLOP/s':>8} {'peak MB':>8}"
        f" {'ref/ours time':>13} {'ref/ours mem':>12}",
    ]
    for r in rows:
        lines.append(
            f"{r['two_n']:>7} {r['d']:>4}  {r['impl']:<24} {r['time_s']:>9.3f} {r['gflops']:>8.1f}"
            f" {r['peak_bytes'] / 2**20:>8.0f} {r.get('speedup', float('nan')):>13.2f}"
            f" {r.get('memory_ratio', float('nan')):>12.1f}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--two-n", type=int, nargs="*", default=[4096, 8192, 16384, 32768])
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--naive-max", type=int, default=16384)
    p.add_argument("--big", type=int, nargs="*", default=[], help="extra 2N for ours alone (1 call)")
    args = p.parse_args(argv)
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    rows = bench_nt_xent(args.two_n, args.d, repeat=args.repeat, naive_max=args.naive_max)
    if args.big:
        rows += bench_nt_xent(args.big, args.d, repeat=1, naive_max=0, warmup=False)
    print(format_table(rows))


if __name__ == "__main__":
    main()
