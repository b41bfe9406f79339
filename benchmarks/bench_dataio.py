"""Throughput of the pretraining data pipeline: flashclr.dataio (DALI) against PIL + DataLoader.

Both sides run the full SimCLR chain (crop, flip, colour jitter, grayscale, blur, normalise) and
produce two views per image; the reference is tests/pil_reference.py with as many DataLoader
workers as DALI gets threads. The JPEGs (256x256, smooth random content, quality 90) are written
by the benchmark. Each side is warmed up for one epoch (worker start-up, pipeline build), then
timed over ``epochs`` full epochs; the figure is images per second (each image = two views).

Because wall-clock rates on a shared machine move with the load, each row also gives the CPU time
per image of the same chain run serially in this process (DALI with one thread, the DataLoader
with no workers), measured by ``time.process_time``: a cost the other processes disturb much less.

``--ops`` measures instead where the pretraining chain's colour and blur run: the CPU time per
view of DALI's CPU ``color_twist`` and ``gaussian_blur`` (with the same cut windows) against
flashclr's torch versions (dataio/batch_augment.py, per-view schedule), one thread, on the same
224-px views and parameters.

    python benchmarks/bench_dataio.py [--images 400] [--batch 32] [--size 224] [--workers 2] [--ops]
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

from flashclr.dataio import augment, build_loader  # noqa: E402
from flashclr.dataio.batch_augment import augment_views_, blur_taps  # noqa: E402
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


def _dali_cpu_ms(views: list[np.ndarray], op: str, params: np.ndarray, repeat: int) -> float:
    """CPU ms per view of DALI's CPU operator ``op`` ("color_twist", "gaussian_blur" or "none")
    over uint8 (S, S, 3) ``views``, one thread; the source-only pipeline ("none") is the baseline."""
    import torch
    from nvidia.dali import fn, pipeline_def, types

    size = views[0].shape[0]
    taps = blur_taps(torch.from_numpy(params[:, augment.SIGMA]), size).numpy().astype(np.int32)
    sigma = np.where(params[:, augment.SIGMA] > 0, params[:, augment.SIGMA], 1.0).astype(np.float32)
    columns = [params[:, k].copy() for k in (augment.BRIGHTNESS, augment.CONTRAST, augment.SATURATION)]
    batch = (views, *columns, (params[:, augment.HUE] * 360).astype(np.float32), taps, sigma)

    @pipeline_def
    def pipe():
        # the layout matters: without "HWC", gaussian_blur treats the views as 3-D volumes
        layouts = ["HWC"] + [""] * 6
        x, b, c, s, h, w, sg = fn.external_source(
            source=lambda: batch, num_outputs=7, batch=True, layout=layouts
        )
        if op == "color_twist":
            return fn.color_twist(x, brightness=b, contrast=c, saturation=s, hue=h)
        if op == "gaussian_blur":
            return fn.gaussian_blur(x, window_size=w, sigma=sg, dtype=types.FLOAT)
        return x

    p = pipe(batch_size=len(views), num_threads=1, device_id=None, prefetch_queue_depth=1)
    p.build()
    p.run()
    c0 = time.process_time()
    for _ in range(repeat):
        p.run()
    return 1000 * (time.process_time() - c0) / (repeat * len(views))


def bench_augment_ops(n_views: int = 64, size: int = 224, repeat: int = 5, seed: int = 0) -> list[dict]:
    """CPU ms per view of the colour jitter and of the blur: DALI's CPU operators against
    batch_augment's torch code (per-view schedule, one thread), on the same views and params.

    Colour is timed on views that all change colour and keep their sharpness, blur on views that
    are all blurred (sigma uniform in [0.1, 2], the cut windows) and keep their colours.
    """
    import torch

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, 8)
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
        images = [np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files]
    views = [images[i % len(images)] for i in range(n_views)]
    sizes = np.full((n_views, 2), size)
    colour = augment.simclr_params(rng, sizes)
    colour[:, augment.BRIGHTNESS : augment.HUE + 1] = np.column_stack(
        [rng.uniform(0.2, 1.8, (n_views, 3)), rng.uniform(-0.2, 0.2, n_views)]
    )
    colour[:, augment.SIGMA] = 0.0
    blur = augment.crop_flip_params(rng, sizes)
    blur[:, augment.SIGMA] = rng.uniform(*augment.SIGMA_RANGE, n_views)
    base = _dali_cpu_ms(views, "none", colour, repeat)
    # NCHW-contiguous, as the loader's views are (permute alone would leave channels_last strides)
    nchw = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).contiguous()
    normalised = (nchw.float() / 255 - 0.45) / 0.225
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for name, op, params in (("colour jitter", "color_twist", colour), ("blur", "gaussian_blur", blur)):
            dali = _dali_cpu_ms(views, op, params, repeat) - base
            x = normalised.clone()
            augment_views_(x, torch.from_numpy(params))  # warm-up
            c0 = time.process_time()
            for _ in range(repeat):
                augment_views_(normalised.clone(), torch.from_numpy(params))
            copy_c0 = time.process_time()
            for _ in range(repeat):
                normalised.clone()
            copy = time.process_time() - copy_c0
            ours = 1000 * (copy_c0 - c0 - copy) / (repeat * n_views)
            rows.append(
                {
                    "op": name,
                    "dali_ms": dali,
                    "torch_ms": ours,
                    "ratio": dali / ours if ours > 0 else float("nan"),
                    "views": n_views,
                }
            )
    finally:
        torch.set_num_threads(before)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--ops", action="store_true", help="DALI's CPU colour/blur operators against ours")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    if args.ops:
        rows = bench_augment_ops(size=args.size)
        print(
            f"{os.cpu_count()} CPUs; 1-min load average {load_before:.2f};"
            f" CPU ms per {args.size}-px view, 1 thread"
        )
        print(f"{'op':14s} {'DALI CPU operator':>18s} {'flashclr torch':>15s} {'DALI/ours':>10s}")
        for r in rows:
            print(f"{r['op']:14s} {r['dali_ms']:18.3f} {r['torch_ms']:15.3f} {r['ratio']:9.2f}x")
        return
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
