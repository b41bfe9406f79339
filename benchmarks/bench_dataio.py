"""Throughput of the pretraining data pipeline: flashclr.dataio (DALI) against PIL + DataLoader.

Both sides run the full SimCLR chain (crop, flip, colour jitter, grayscale, blur, normalise) and
produce two views per image; the reference is tests/pil_reference.py with as many DataLoader
workers as DALI gets threads. The JPEGs (256x256, smooth random content, quality 90) are written
by the benchmark. Each side is warmed up for one epoch (worker start-up, pipeline build), then
timed over ``epochs`` full epochs; the figure is images per second (each image = two views).

Because wall-clock rates on a shared machine move with the load, each row also gives the CPU time
per image of the same chain run serially in this process (DALI with one thread, the DataLoader
with no workers), measured by ``time.process_time``: a cost the other processes disturb much less.

    python benchmarks/bench_dataio.py [--images 400] [--batch 32] [--size 224] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from flashclr.dataio import build_loader  # noqa: E402
from tests.pil_reference import pil_pretrain_loader  # noqa: E402


def write_jpegs(root: str, n_images: int, side: int = 256, n_classes: int = 4, seed: int = 0) -> None:
    """``n_images`` JPEGs of side x side as an ImageFolder: smooth colour fields plus mild noise."""
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        folder = os.path.join(root, f"c{i % n_classes}")
        os.makedirs(folder, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize(
            (side, side), Image.BICUBIC
        )
        pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (side, side, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:05d}.jpg"), quality=90
        )


def _images_per_second(loader, epochs: int, batch: int) -> float:
    for _ in loader:  # warm-up epoch
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for _ in loader:
            n += batch
    return n / (time.perf_counter() - t0)


def _cpu_ms_per_image(loader, batch: int) -> float:
    for _ in loader:  # warm-up epoch
        pass
    n, c0 = 0, time.process_time()
    for _ in loader:
        n += batch
    return 1000 * (time.process_time() - c0) / n


def bench_dataio(
    n_images: int = 400, batch: int = 32, size: int = 224, workers: int = 2, epochs: int = 2
) -> list[dict]:
    """Measure both loaders in this process, one after the other; returns one row per loader."""
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, n_images)
        dali = build_loader("pretrain", root, batch_size=batch, image_size=size, num_threads=workers)
        dali_ips = _images_per_second(dali, epochs, batch)
        pil = pil_pretrain_loader(root, batch_size=batch, size=size, workers=workers)
        pil_ips = _images_per_second(pil, epochs, batch)
        dali_cpu = _cpu_ms_per_image(
            build_loader("pretrain", root, batch_size=batch, image_size=size, num_threads=1), batch
        )
        pil_cpu = _cpu_ms_per_image(pil_pretrain_loader(root, batch_size=batch, size=size, workers=0), batch)
    common = {"images": n_images, "batch": batch, "size": size, "workers": workers, "epochs": epochs}
    return [
        {
            "loader": "flashclr.dataio DALI CPU",
            "images_per_s": dali_ips,
            "ratio": dali_ips / pil_ips,
            "cpu_ms_per_image": dali_cpu,
            "cpu_ratio": pil_cpu / dali_cpu,
            **common,
        },
        {
            "loader": "PIL + DataLoader (reference)",
            "images_per_s": pil_ips,
            "ratio": 1.0,
            "cpu_ms_per_image": pil_cpu,
            "cpu_ratio": 1.0,
            **common,
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = bench_dataio(args.images, args.batch, args.size, args.workers, args.epochs)
    print(
        f"{os.cpu_count()} CPUs; 1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(
        f"{'loader':30s} {'img/s (2 views)':>16s} {'vs PIL':>7s} {'CPU ms/img serial':>18s} {'PIL/ours':>9s}"
    )
    for r in rows:
        print(
            f"{r['loader']:30s} {r['images_per_s']:16.1f} {r['ratio']:6.2f}x"
            f" {r['cpu_ms_per_image']:18.2f} {r['cpu_ratio']:8.2f}x"
        )


if __name__ == "__main__":
    main()
