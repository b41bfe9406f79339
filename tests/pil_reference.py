"""Reference: the SimCLR pretraining augmentation chain in PIL + a torch DataLoader.

What benchmarks/bench_dataio.py measures flashclr.dataio against: per image, one PIL decode and
two views, each a random resized crop (area 0.08-1, ratio 3/4-4/3, bilinear), a horizontal flip
(p 0.5), colour jitter (p 0.8; brightness, contrast, saturation 0.8 s, hue 0.2 s, in random
order as torchvision does), grayscale (p 0.2), Gaussian blur (p 0.5, sigma 0.1-2, PIL's
``GaussianBlur``) and normalisation, in ``num_workers`` DataLoader worker processes. No
torchvision (it does not install beside the CPU torch here), so the chain is written out.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _crop_box(rng: np.random.Generator, w: int, h: int) -> tuple[float, float, float, float]:
    for _ in range(10):
        area = w * h * rng.uniform(0.08, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if cw <= w and ch <= h:
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return x0, y0, x0 + cw, y0 + ch
    return 0.0, 0.0, float(w), float(h)


def _hue(img: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(img.convert("HSV"))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def simclr_view(img: Image.Image, rng: np.random.Generator, size: int, strength: float = 1.0) -> torch.Tensor:
    """One augmented view of an RGB PIL image -> (3, size, size) float32, normalised."""
    view = img.resize((size, size), Image.BILINEAR, box=_crop_box(rng, *img.size))
    if rng.random() < 0.5:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.8:
        s = strength
        ops = [
            lambda v: ImageEnhance.Brightness(v).enhance(rng.uniform(max(0, 1 - 0.8 * s), 1 + 0.8 * s)),
            lambda v: ImageEnhance.Contrast(v).enhance(rng.uniform(max(0, 1 - 0.8 * s), 1 + 0.8 * s)),
            lambda v: ImageEnhance.Color(v).enhance(rng.uniform(max(0, 1 - 0.8 * s), 1 + 0.8 * s)),
            lambda v: _hue(v, rng.uniform(-0.2 * s, 0.2 * s)),
        ]
        for k in rng.permutation(4):
            view = ops[k](view)
    if rng.random() < 0.2:
        view = view.convert("L").convert("RGB")
    if rng.random() < 0.5:
        view = view.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
    x = (np.asarray(view, dtype=np.float32) / 255.0 - MEAN) / STD  # (S, S, 3)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


class PilPretrainDataset(torch.utils.data.Dataset):
    """ImageFolder root -> (view1, view2, label) with the chain above."""

    def __init__(self, root: str, size: int = 224):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        self.items = [
            (os.path.join(root, c, f), k)
            for k, c in enumerate(classes)
            for f in sorted(os.listdir(os.path.join(root, c)))
        ]
        self.size = size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        # torch's generator is seeded per worker by the DataLoader, so workers draw differently.
        rng = np.random.default_rng(int(torch.randint(2**31, ())))
        with Image.open(path) as im:
            img = im.convert("RGB")
        return simclr_view(img, rng, self.size), simclr_view(img, rng, self.size), label


def pil_pretrain_loader(root: str, batch_size: int, size: int, workers: int, seed: int = 0):
    """The reference DataLoader: shuffled, last partial batch dropped, ``workers`` processes."""
    return torch.utils.data.DataLoader(
        PilPretrainDataset(root, size),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
