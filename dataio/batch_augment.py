"""Colour jitter, grayscale and Gaussian blur of the pretraining views, on the decoded batch.

DALI decodes, crops, flips and normalises each view (pipelines.py). The rest of the SimCLR chain
runs here, in torch, on the (B, 3, S, S) float batch wherever it lives. On a GPU that matches the
official code, which blurs on the accelerator. On the CPU it runs in the consumer's thread while
DALI's threads decode the next batches. DALI's own CPU ``color_twist`` and ``gaussian_blur`` cost
about 1.1 and 1.2 ms per 224-px view on the 2-core dev machine; this module needs about 0.22 and
0.54 (``benchmarks/bench_dataio.py --ops``, README).

Colour jitter: for each view, the four operations run in that view's random order (augment.py
``ORDER``), as the official ``color_jitter_rand`` does. Each is an affine map of the RGB pixel on
the 0..1 scale:
- brightness f: x -> f x (the SimCLR v2 form);
- contrast f: x -> f x + (1 - f) m, where m is the view's per-channel mean at that point in the
  chain (as ``tf.image.adjust_contrast`` computes it);
- saturation f: x -> f x + (1 - f) Y(x) 1, a blend with the luma Y = 0.299 R + 0.587 G + 0.114 B;
- hue h (in turns): a rotation by 2πh about the gray axis in YIQ space, in the direction that
  moves HSV's hue forward (red -> yellow -> green), as ``tf.image.adjust_hue`` does for h > 0.
Grayscale is saturation 0. That equals converting the jittered view to gray, because each map
above commutes with the luma projection.

The four maps compose into one 3x3 matrix and one offset per view. The mean of an affine image is
the same affine map of its mean, so m is tracked exactly. The composite is conjugated by the
normalisation, applied in one pass, and then clamped once to the 0..1 range. Differences from the
official code: saturation and hue are linear maps (as in DALI's ``color_twist``), not HSV ones, and
the official code clamps after each operation, not only at the end.

Blur: a separable Gaussian with the view's sigma. Its window is the official one (side // 10, made
odd), cut to 2⌈3σ⌉ + 1 taps when that is shorter; the taps dropped hold under 0.3% of the weight.
Borders are reflect-101 (DALI's and torchvision's choice). The official code zero-pads, which
darkens the borders. The blur is linear with weights summing to 1, so it commutes with the
per-channel normalisation and can run on the normalised batch.

Two schedules, with the same arithmetic:
- per view (the CPU default): a Python loop over views small enough to stay in cache, skipping
  views that keep their colours or are not blurred;
- batched (the GPU default): whole-batch ops, with the blur grouped by tap count, so the number of
  kernel launches does not grow with the batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from . import augment
from .augment import MEAN, STD

LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as tf.image.rgb_to_grayscale
_RGB_TO_YIQ = np.array([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
BRIGHTNESS_OP, CONTRAST_OP, SATURATION_OP, HUE_OP = range(4)  # the codes in augment.ORDER


def blur_taps(sigma: torch.Tensor, side: int) -> torch.Tensor:
    """Taps of each view's blur for (B,) ``sigma`` at ``side`` px: (B,) int64, odd; 1 means no blur.

    The official window is ``side // 10`` made odd. It is cut to 2⌈3σ⌉ + 1 taps when that is shorter.
    """
    window = augment.blur_window(side)
    cut = 2 * torch.ceil(3 * sigma.double()).long() + 1
    return torch.where(sigma > 0, cut.clamp(max=window), torch.ones_like(cut))


def gaussian_weights(sigma: torch.Tensor, taps: int) -> torch.Tensor:
    """(n,) sigmas -> (n, taps) float64 normalised Gaussian weights, centre at taps // 2."""
    r = taps // 2
    j = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(j**2) / (2 * sigma.double()[:, None] ** 2))
    return g / g.sum(1, keepdim=True)


def pixel_transforms(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The composed colour jitter of each view, on the 0..1 pixel scale, from its params alone.

    ``params`` (B, augment.N_PARAMS) CPU rows. Returns A and G, (B, 3, 3) float64, such that the
    jittered view is A x + G m, where m (3,) is the view's per-channel mean before the jitter. The
    mean enters only through contrast. Each op maps the running mean linearly (contrast keeps it),
    so the offsets are linear in m and the composite can be built before m is known. That keeps
    these small ops on the CPU: on a GPU, building them there would block on host copies.
    """
    p = params.to(torch.float64)
    n = p.shape[0]
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    gray = torch.as_tensor(LUMA).expand(3, 3)  # every row the luma weights: x -> Y(x) 1
    brightness = p[:, augment.BRIGHTNESS, None, None] * eye
    c = p[:, augment.CONTRAST, None, None]
    contrast = c * eye  # plus the offset (1 - c) m_k, m_k the mean at its turn
    s = p[:, augment.SATURATION, None, None]
    saturation = s * eye + (1 - s) * gray
    # In YIQ, HSV's hue direction (red -> yellow -> green) is a clockwise turn of (I, Q).
    theta = -2 * math.pi * p[:, augment.HUE]
    cos, sin, zero, one = torch.cos(theta), torch.sin(theta), torch.zeros_like(theta), torch.ones_like(theta)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).view(n, 3, 3)
    hue = torch.as_tensor(_YIQ_TO_RGB) @ rot @ torch.as_tensor(_RGB_TO_YIQ)
    ops = torch.stack([brightness, contrast, saturation, hue], dim=1)  # (B, 4, 3, 3), by op code
    order = p[:, augment.ORDER].long()  # (B, 4): the op applied at each position
    rows = torch.arange(n)
    A, G, P = eye.clone(), torch.zeros(n, 3, 3, dtype=torch.float64), eye.clone()  # P: mean map so far
    for k in range(4):
        is_contrast = (order[:, k] == CONTRAST_OP)[:, None, None]
        A_k = ops[rows, order[:, k]]  # (B, 3, 3)
        A = A_k @ A
        G = A_k @ G + torch.where(is_contrast, (1 - c) * P, torch.zeros_like(P))
        P = torch.where(is_contrast, P, A_k @ P)
    return A, G


def normalised_transforms(A: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Conjugate the pixel-scale maps of pixel_transforms by the normalisation x_n = (x - μ) / σ.

    Returns M, t0, H (float64, (B, 3, 3), (B, 3), (B, 3, 3)) such that the jittered normalised view
    is M x_n + t0 + H m_n, where m_n (3,) is the view's per-channel mean in normalised units.
    """
    mu = torch.tensor(MEAN, dtype=torch.float64)
    sd = torch.tensor(STD, dtype=torch.float64)
    M = A * sd[None, None, :] / sd[None, :, None]
    t0 = ((A + G) @ mu - mu) / sd
    H = G * sd[None, None, :] / sd[None, :, None]
    return M, t0, H


_CLAMP_BOUNDS = [(-m / d, (1 - m) / d) for m, d in zip(MEAN, STD, strict=True)]  # 0..1, normalised


def _flat(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A (n, 3, S, S) batch, NCHW or channels_last contiguous (augment_views_ checks), as a view
    (n, 3, S*S) (NCHW) or (n, S*S, 3) (channels_last), and which."""
    if x.is_contiguous():
        return x.view(x.shape[0], 3, -1), False
    return x.permute(0, 2, 3, 1).view(x.shape[0], -1, 3), True


def _colour_(x: torch.Tensor, M: torch.Tensor, t: torch.Tensor) -> None:
    """x (n, 3, S, S) normalised <- clamp(M x + t) in place; M (n, 3, 3), t (n, 3) in x's dtype."""
    flat, last = _flat(x)
    y = torch.empty_like(flat)
    if last:  # (n, S*S, 3): x^T M^T + t^T
        torch.baddbmm(t[:, None, :], flat, M.transpose(1, 2), out=y)
    else:
        torch.baddbmm(t[:, :, None], M, flat, out=y)
    # one clamp per channel with scalar bounds: cheaper on the CPU than one with broadcast bounds
    for c, (lo, hi) in enumerate(_CLAMP_BOUNDS):
        idx = (..., c) if last else (slice(None), c)
        torch.clamp(y[idx], lo, hi, out=flat[idx])


def _blur_(x: torch.Tensor, w: torch.Tensor) -> None:
    """Separable blur of x (n, 3, S, S) in place with per-view weights w (n, k) (a CPU tensor),
    reflect-101 borders."""
    n, k = w.shape
    r, s = k // 2, x.shape[-1]
    if n == 1:  # one view: Python-float weights, cheaper than broadcasting a weight tensor
        taps = w[0].tolist()

        def accumulate(out, src, j):
            out.add_(src, alpha=taps[j])
    else:
        wv = w.to(x.device, x.dtype, non_blocking=True).view(n, k, 1, 1, 1)

        def accumulate(out, src, j):
            out.addcmul_(src, wv[:, j])

    first = taps[0] if n == 1 else wv[:, 0]
    rows = F.pad(x, (0, 0, r, r), mode="reflect")  # (n, 3, S + 2r, S)
    y = rows[:, :, 0:s] * first
    for j in range(1, k):
        accumulate(y, rows[:, :, j : j + s], j)
    cols = F.pad(y, (r, r, 0, 0), mode="reflect")  # (n, 3, S, S + 2r)
    torch.mul(cols[..., 0:s], first, out=x)
    for j in range(1, k):
        accumulate(x, cols[..., j : j + s], j)


def _is_identity_colour(params: torch.Tensor) -> torch.Tensor:
    """(B,) bool for CPU ``params`` rows: views whose jitter and grayscale change nothing."""
    colour = params[:, augment.BRIGHTNESS : augment.HUE + 1]
    return (colour == torch.tensor([1.0, 1.0, 1.0, 0.0])).all(1)


def augment_views_(views: torch.Tensor, params: torch.Tensor, per_view: bool | None = None) -> torch.Tensor:
    """Colour jitter, grayscale and blur of normalised ``views`` (B, 3, S, S), in place.

    ``params`` (B, augment.N_PARAMS) are the rows augment.simclr_params drew for these views (any
    device; they are read on the CPU). ``per_view`` picks the schedule; by default it is per view on
    the CPU and batched elsewhere. Returns ``views``.
    """
    if views.dim() != 4 or views.shape[1] != 3 or views.shape[2] != views.shape[3]:
        raise ValueError(f"views must be (B, 3, S, S), got {tuple(views.shape)}")
    if params.shape != (views.shape[0], augment.N_PARAMS):
        raise ValueError(f"params must be ({views.shape[0]}, {augment.N_PARAMS}), got {tuple(params.shape)}")
    if not views.is_floating_point():
        raise ValueError(f"views must be floating point, got {views.dtype}")
    if not (views.is_contiguous() or views.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"views must be NCHW or channels_last contiguous, got strides {views.stride()}")
    if per_view is None:
        per_view = views.device.type == "cpu"
    dev = views.device
    # Everything derived from params is made on the CPU and sent without blocking: a blocking
    # host-to-device copy would wait for all the GPU work queued before it (the training step).
    params = params.detach().cpu()
    M, t0, H = (
        v.to(dev, views.dtype, non_blocking=True) for v in normalised_transforms(*pixel_transforms(params))
    )
    means = views.mean((2, 3), dtype=views.dtype)  # (B, 3), normalised units
    t = t0 + (H @ means[:, :, None])[:, :, 0]
    taps = blur_taps(params[:, augment.SIGMA], views.shape[-1])
    sigma = params[:, augment.SIGMA].double()
    if per_view:
        coloured = (~_is_identity_colour(params)).tolist()
        # channels_last views are worked on as NCHW copies: the ops run about 2x faster that way
        nchw = views.is_contiguous()
        for i in range(views.shape[0]):
            if not (coloured[i] or taps[i] > 1):
                continue
            view = views[i : i + 1] if nchw else views[i : i + 1].contiguous()
            if coloured[i]:
                _colour_(view, M[i : i + 1], t[i : i + 1])
            if taps[i] > 1:
                _blur_(view, gaussian_weights(sigma[i : i + 1], int(taps[i])))
            if not nchw:
                views[i : i + 1].copy_(view)
        return views
    _colour_(views, M, t)  # identity views too: cheaper than gathering the others on a GPU
    for k in torch.unique(taps).tolist():
        if k == 1:
            continue
        group = taps == k
        idx = torch.nonzero(group)[:, 0].to(dev, non_blocking=True)
        sub = views.index_select(0, idx)
        _blur_(sub, gaussian_weights(sigma[group], k))
        views.index_copy_(0, idx, sub)
    return views
