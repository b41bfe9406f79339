"""float64 references of the colour jitter and blur that dataio/batch_augment.py applies.

Written from the definitions, one operation at a time on the image itself (the contrast mean is
measured on the image at its turn), not from batch_augment's composed matrices.
"""

from __future__ import annotations

import math

import numpy as np

from flashclr.dataio import augment

LUMA = np.array([0.299, 0.587, 0.114])
RGB_TO_YIQ = np.array([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def colour_jitter_reference(x: np.ndarray, row: np.ndarray) -> np.ndarray:
    """One view (3, H, W) on the 0..1 scale, float64 -> jittered, then clamped to 0..1 once."""
    y = x.astype(np.float64)
    for op in row[augment.ORDER].astype(int):
        if op == 0:
            y = row[augment.BRIGHTNESS] * y
        elif op == 1:
            f = row[augment.CONTRAST]
            y = f * y + (1 - f) * y.mean(axis=(1, 2), keepdims=True)
        elif op == 2:
            f = row[augment.SATURATION]
            y = f * y + (1 - f) * np.einsum("c,chw->hw", LUMA, y)[None]
        else:
            a = -2 * math.pi * row[augment.HUE]  # forward HSV hue is clockwise in (I, Q)
            rot = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
            y = np.einsum("dc,chw->dhw", np.linalg.inv(RGB_TO_YIQ) @ rot @ RGB_TO_YIQ, y)
    return np.clip(y, 0.0, 1.0)


def gaussian_blur_reference(x: np.ndarray, sigma: float, side_window: int) -> np.ndarray:
    """One view (3, H, W) float64 blurred with a Gaussian of ``sigma`` over min(2⌈3σ⌉ + 1,
    ``side_window``) taps per axis, reflect-101 borders; sigma 0 returns x."""
    taps = min(2 * math.ceil(3 * sigma) + 1, side_window) if sigma > 0 else 1
    if taps == 1:
        return x.astype(np.float64)
    r = taps // 2
    g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    g /= g.sum()
    padded = np.pad(x.astype(np.float64), ((0, 0), (r, r), (r, r)), mode="reflect")  # d c b | a b c d
    h, w = x.shape[1:]
    out = np.zeros((3, h, w))
    for i in range(taps):  # the full 2-D kernel g g^T, not the separable two passes
        for j in range(taps):
            out += g[i] * g[j] * padded[:, i : i + h, j : j + w]
    return out
