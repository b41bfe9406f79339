"""Measured peaks of this machine, the denominators of every "fraction of peak" figure.

- GPU: the bf16 matrix-multiply rate (``torch.matmul`` of square bf16 matrices, 2·n³ FLOP each)
  and the device-to-device copy bandwidth (``Tensor.copy_`` between two buffers; bytes moved =
  read + write = 2 × size).
- CPU: the fp32 matrix-multiply rate, and the memory copy bandwidth the same way.

Peaks are measured rather than taken from data sheets: clocks, power caps and the library build
decide what a kernel can reach on the machine at hand. The best of several timed runs is the peak.

``python -m benchmarks.peaks`` (or ``python benchmarks/peaks.py``) prints them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import time_fn  # noqa: E402


@dataclass
class Peaks:
    device: str
    matmul_dtype: str
    matmul_n: int
    matmul_tflops: float
    copy_bytes: int
    copy_gbps: float

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return (
            f"measured peaks on {self.device}: {self.matmul_dtype} matmul {self.matmul_tflops:.3g} TFLOP/s "
            f"(n={self.matmul_n}), copy {self.copy_gbps:.4g} GB/s ({self.copy_bytes / 2**20:.0f} MiB buffers)"
        )


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeat: int = 5) -> float:
    """Best rate of ``a @ b`` for (n, n) matrices, in TFLOP/s (2·n³ FLOP per product)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    # On a GPU one product takes about a millisecond: time a batch of them per reading.
    inner = 10 if device.type == "cuda" else 1
    out = torch.empty(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(inner):
            torch.matmul(a, b, out=out)

    t = time_fn(run, device, warmup=2, repeat=repeat)["min_s"] / inner
    return 2 * n**3 / t / 1e12


def copy_gbps(device: torch.device, nbytes: int, repeat: int = 5) -> float:
    """Best device-to-device (or RAM-to-RAM) copy rate in GB/s, counting the read and the write."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    inner = 10 if device.type == "cuda" else 1

    def run() -> None:
        for _ in range(inner):
            dst.copy_(src)

    t = time_fn(run, device, warmup=2, repeat=repeat)["min_s"] / inner
    return 2 * nbytes / t / 1e9


def measure(device: torch.device, *, quick: bool = False) -> Peaks:
    """The peaks of ``device``: bf16 matmul on CUDA, fp32 on the CPU; the copy rate on both."""
    if device.type == "cuda":
        dtype, n = torch.bfloat16, (4096 if quick else 8192)
        nbytes = (256 if quick else 2048) * 2**20
        name = torch.cuda.get_device_name(device)
    else:
        # 2048 is large enough for the CPU BLAS to reach its plateau and takes ~0.1 s on 2 cores.
        dtype, n = torch.float32, (512 if quick else 2048)
        nbytes = (16 if quick else 256) * 2**20
        name = f"CPU ({torch.get_num_threads()} threads)"
    repeat = 2 if quick else 5
    return Peaks(
        device=name,
        matmul_dtype=str(dtype).replace("torch.", ""),
        matmul_n=n,
        matmul_tflops=matmul_tflops(device, dtype, n, repeat),
        copy_bytes=nbytes,
        copy_gbps=copy_gbps(device, nbytes, repeat),
    )


if __name__ == "__main__":
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(measure(dev).line())
