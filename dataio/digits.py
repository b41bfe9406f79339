"""The embedded dataset: scikit-learn's handwritten digits as a JPEG ImageFolder.

``python -m flashclr.dataio.digits OUT_DIR [--size 32] [--val-fraction 0.2] [--seed 0]`` writes
the 1,797 8x8 digit images (10 classes, 16 grey levels) that ship with scikit-learn as
``OUT_DIR/train/<digit>/<index>.jpg`` and ``OUT_DIR/val/<digit>/<index>.jpg``: a stratified split
with a fixed seed, each image upscaled (bicubic) to ``size`` pixels and saved as grayscale JPEG
(DALI decodes it to RGB). Takes about a second.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def write_digits(out_dir: str, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict[str, int]:
    """Write the train/ and val/ ImageFolders; returns the number of images per split."""
    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8x8), got {size}")
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..255
    index = np.arange(len(images))
    train, val = train_test_split(index, test_size=val_fraction, stratify=digits.target, random_state=seed)
    counts = {}
    for split, members in (("train", train), ("val", val)):
        for i in np.sort(members):
            folder = os.path.join(out_dir, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC)
            img.save(os.path.join(folder, f"{i:04d}.jpg"), quality=95)
        counts[split] = len(members)
    return counts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", type=int, default=32, help="side of the written images in pixels")
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_digits(args.out_dir, args.size, args.val_fraction, args.seed)
    print(f"wrote {counts['train']} train and {counts['val']} val digits ({args.size} px) to {args.out_dir}")


if __name__ == "__main__":
    main()
