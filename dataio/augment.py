"""Per-sample augmentation parameters, drawn in NumPy from a seeded generator.

The random choices of every view (crop window, flip, colour jitter, grayscale, blur sigma) are
drawn here, in Python, from ``numpy.random.default_rng((seed, epoch, shard, batch))``, and fed to
DALI (crop and flip, per-sample argument inputs) and to batch_augment.py (colour and blur), which
only apply them. So the augmentations of a batch are an exact function of (seed, epoch, shard,
batch index): resuming mid-epoch reproduces them, and neither DALI's thread count nor the device
changes them.

The SimCLR v2 chain (paper appendix A / official ``data_util.py``), for colour strength s:
- random resized crop: area fraction in [0.08, 1], aspect ratio (w/h) log-uniform in [3/4, 4/3],
  ten tries then a centre crop fallback (as torchvision and the official code do); the window is
  kept at sub-pixel precision (DALI resamples fractional ROIs) instead of being rounded;
- horizontal flip with p = 0.5 (encoded by swapping the window's x ends: DALI's resize mirrors);
- colour jitter with p = 0.8: brightness, contrast, saturation factors in [1 - 0.8s, 1 + 0.8s],
  hue shift in [-0.2s, 0.2s] of a turn, applied in a random order per view (``ORDER``), as the
  official ``color_jitter_rand`` does;
- grayscale with p = 0.2, written as saturation 0 (batch_augment.py: equal to converting the
  jittered view to gray);
- Gaussian blur with p = 0.5, sigma uniform in [0.1, 2]; sigma 0 means "no blur" (window rule in
  batch_augment.py).
DALI applies the crop and flip (pipelines.py); the colour and blur columns are read by
batch_augment.py, on the decoded batch.
"""

from __future__ import annotations

import math

import numpy as np

AREA_RANGE = (0.08, 1.0)
RATIO_RANGE = (3 / 4, 4 / 3)
CROP_TRIES = 10
FLIP_P = 0.5
JITTER_P = 0.8
GRAY_P = 0.2
BLUR_P = 0.5
SIGMA_RANGE = (0.1, 2.0)

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics on the 0..1 scale: every stage normalises with them
STD = (0.229, 0.224, 0.225)

# Column layout of one view's parameter row (float32), as DALI and batch_augment.py read it.
ROI = slice(0, 4)  # y0, x0, y1, x1 relative to the decoded image; x0 > x1 means mirrored
BRIGHTNESS, CONTRAST, SATURATION, HUE, SIGMA = 4, 5, 6, 7, 8  # factors; hue in turns; sigma in px
ORDER = slice(9, 13)  # the jitter ops by position: 0 brightness, 1 contrast, 2 saturation, 3 hue
N_PARAMS = 13
IDENTITY_ORDER = (0, 1, 2, 3)

STAGE_CODES = {"pretrain": 0, "finetune": 1, "distill": 2, "eval": 3}


def blur_window(side: int) -> int:
    """The official window length for views of ``side`` pixels: ``side // 10`` made odd."""
    return 2 * ((side // 10) // 2) + 1


def batch_rng(seed: int, epoch: int, shard_id: int, batch_index: int, stage: str) -> np.random.Generator:
    """The generator of one batch: independent streams for every (seed, epoch, shard, batch, stage)."""
    return np.random.default_rng([seed, epoch, shard_id, batch_index, STAGE_CODES[stage]])


def random_resized_crop(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """Crop windows for images of ``sizes`` (B, 2) = (height, width) in pixels.

    Returns (B, 4) float64: y0, x0, y1, x1 relative to each image (0 = top/left, 1 = bottom/right).
    """
    h_img = sizes[:, 0:1].astype(np.float64)  # (B, 1)
    w_img = sizes[:, 1:2].astype(np.float64)
    b = sizes.shape[0]
    target = h_img * w_img * rng.uniform(*AREA_RANGE, size=(b, CROP_TRIES))  # (B, T) pixels
    ratio = np.exp(rng.uniform(math.log(RATIO_RANGE[0]), math.log(RATIO_RANGE[1]), size=(b, CROP_TRIES)))
    w = np.sqrt(target * ratio)
    h = np.sqrt(target / ratio)
    ok = (w <= w_img) & (h <= h_img)
    first = np.argmax(ok, axis=1)  # first successful try per row (0 when none)
    rows = np.arange(b)
    w, h = w[rows, first], h[rows, first]
    w_img, h_img = w_img[:, 0], h_img[:, 0]
    # Fallback when all tries fail: the largest centre window whose ratio is within the range.
    fail = ~ok.any(axis=1)
    in_ratio = w_img / h_img
    fw = np.where(
        in_ratio < RATIO_RANGE[0], w_img, np.where(in_ratio > RATIO_RANGE[1], h_img * RATIO_RANGE[1], w_img)
    )
    fh = np.where(
        in_ratio < RATIO_RANGE[0], w_img / RATIO_RANGE[0], np.where(in_ratio > RATIO_RANGE[1], h_img, h_img)
    )
    w, h = np.where(fail, fw, w), np.where(fail, fh, h)
    u = rng.random((b, 2))
    y0 = np.where(fail, (h_img - h) / 2, u[:, 0] * (h_img - h))
    x0 = np.where(fail, (w_img - w) / 2, u[:, 1] * (w_img - w))
    return np.stack([y0 / h_img, x0 / w_img, (y0 + h) / h_img, (x0 + w) / w_img], axis=1)


def crop_flip_params(rng: np.random.Generator, sizes: np.ndarray) -> np.ndarray:
    """(B, N_PARAMS) float32 rows for crop + flip only (no colour change, no blur)."""
    b = sizes.shape[0]
    p = np.zeros((b, N_PARAMS), dtype=np.float64)
    p[:, ROI] = random_resized_crop(rng, sizes)
    flip = rng.random(b) < FLIP_P
    p[flip, 1], p[flip, 3] = p[flip, 3].copy(), p[flip, 1].copy()
    p[:, [BRIGHTNESS, CONTRAST, SATURATION]] = 1.0
    p[:, ORDER] = IDENTITY_ORDER
    return p.astype(np.float32)


def simclr_params(rng: np.random.Generator, sizes: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """(B, N_PARAMS) float32 rows for one fully augmented SimCLR view of each image."""
    p = crop_flip_params(rng, sizes).astype(np.float64)
    b = sizes.shape[0]
    jitter = rng.random(b) < JITTER_P
    lo, hi = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
    factors = rng.uniform(lo, hi, size=(b, 3))
    hue = rng.uniform(-0.2 * strength, 0.2 * strength, size=b)  # turns
    order = np.argsort(rng.random((b, 4)), axis=1)  # a uniform random permutation per view
    p[jitter, BRIGHTNESS : SATURATION + 1] = factors[jitter]
    p[jitter, HUE] = hue[jitter]
    p[jitter, ORDER] = order[jitter]
    gray = rng.random(b) < GRAY_P
    p[gray, SATURATION] = 0.0
    blur = rng.random(b) < BLUR_P
    p[:, SIGMA] = np.where(blur, rng.uniform(*SIGMA_RANGE, size=b), 0.0)
    return p.astype(np.float32)
