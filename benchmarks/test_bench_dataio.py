"""pytest-benchmark: one epoch of the pretraining loader, flashclr.dataio (DALI) against PIL.

Group ``dataio pretrain ...``: the DALI CPU-only pipeline (or nvJPEG + GPU with CUDA) and the PIL +
DataLoader reference of tests/pil_reference.py with as many workers as DALI has threads, both
with the full augmentation chain over the same JPEGs (written by benchmarks/bench_dataio.py).
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.bench_dataio import write_jpegs
from flashclr.dataio import build_loader
from tests.pil_reference import pil_pretrain_loader

HAS_CUDA = torch.cuda.is_available()
IMAGES, BATCH, SIZE = (2048, 256, 224) if HAS_CUDA else (128, 32, 224)
WORKERS = min(8, os.cpu_count() or 2)


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    write_jpegs(str(root), IMAGES)
    return str(root)


@pytest.mark.parametrize("impl", ["dali", "pil_dataloader"])
def test_bench_dataio(benchmark, device, sync, jpeg_root, impl):
    if impl == "dali":
        loader = build_loader(
            "pretrain", jpeg_root, batch_size=BATCH, image_size=SIZE, device=device, num_threads=WORKERS
        )
    else:
        loader = pil_pretrain_loader(jpeg_root, batch_size=BATCH, size=SIZE, workers=WORKERS)

    def epoch():
        for _ in loader:
            pass
        sync()

    benchmark.group = f"dataio pretrain {IMAGES} images B={BATCH} {SIZE}px {WORKERS} workers"
    benchmark.extra_info["images_per_round"] = IMAGES // BATCH * BATCH
    benchmark.pedantic(epoch, rounds=3, warmup_rounds=1)
