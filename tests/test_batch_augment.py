"""dataio/batch_augment.py against the float64 references, on random views of odd sizes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flashclr.dataio import augment
from flashclr.dataio.augment import MEAN, STD, blur_window
from flashclr.dataio.batch_augment import augment_views_, blur_taps
from tests.references_augment import colour_jitter_reference, gaussian_blur_reference

MU = np.array(MEAN)[:, None, None]
SD = np.array(STD)[:, None, None]


def normalise(pixels: np.ndarray) -> np.ndarray:
    return (pixels - MU) / SD


def random_views(rng, n: int, side: int) -> np.ndarray:
    """(n, 3, side, side) float64 on 0..1: smooth colour fields plus noise, some near 0 and 1."""
    base = rng.uniform(0, 1, (n, 3, 1, 1))
    ramp = np.linspace(-0.3, 0.3, side)
    noise = rng.normal(0, 0.15, (n, 3, side, side))
    return np.clip(base + ramp[None, None, :, None] * rng.uniform(-1, 1, (n, 3, 1, 1)) + noise, 0, 1)


def expected(pixels: np.ndarray, params: np.ndarray) -> np.ndarray:
    side = pixels.shape[-1]
    out = [
        gaussian_blur_reference(colour_jitter_reference(v, row), float(row[augment.SIGMA]), blur_window(side))
        for v, row in zip(pixels, params, strict=True)
    ]
    return normalise(np.stack(out))


def run(pixels: np.ndarray, params: np.ndarray, per_view: bool, channels_last: bool) -> torch.Tensor:
    views = torch.tensor(normalise(pixels), dtype=torch.float32)
    if channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    out = augment_views_(views, torch.from_numpy(params), per_view=per_view)
    assert out is views  # in place, layout kept
    assert views.is_contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    return views


@pytest.mark.parametrize("side", [37, 64, 131])  # blur windows 3, 7 and 13 taps
@pytest.mark.parametrize("per_view", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_full_chain_matches_float64_reference(side, per_view, channels_last):
    rng = np.random.default_rng(side)
    n = 11
    pixels = random_views(rng, n, side)
    params = augment.simclr_params(rng, np.full((n, 2), 300))
    params[:3, augment.SIGMA] = [0.1, 1.0, 2.0]  # the shortest, a middle and the longest window
    params[3, augment.BRIGHTNESS : augment.HUE + 1] = [1.6, 1.7, 1.5, 0.2]  # strong: clamps
    got = run(pixels, params, per_view, channels_last)
    torch.testing.assert_close(got.double(), torch.from_numpy(expected(pixels, params)), atol=2e-5, rtol=0)


def test_every_jitter_order_and_strength():
    """All 24 orders, with the contrast mean tracked through the ops before it."""
    rng = np.random.default_rng(1)
    orders = np.array(list(itertools.permutations(range(4))), dtype=np.float32)
    n = len(orders)
    pixels = random_views(rng, n, 19)
    params = augment.crop_flip_params(rng, np.full((n, 2), 50))
    params[:, augment.BRIGHTNESS : augment.HUE + 1] = np.column_stack(
        [rng.uniform(0.2, 1.8, (n, 3)), rng.uniform(-0.2, 0.2, n)]
    )
    params[:, augment.ORDER] = orders
    got = run(pixels, params, per_view=False, channels_last=False)
    torch.testing.assert_close(got.double(), torch.from_numpy(expected(pixels, params)), atol=2e-5, rtol=0)


def test_identity_views_and_grayscale():
    rng = np.random.default_rng(2)
    pixels = random_views(rng, 4, 40)
    params = augment.crop_flip_params(rng, np.full((4, 2), 50))  # identity colour, no blur
    params[1, augment.SATURATION] = 0.0  # grayscale only
    for per_view in (True, False):
        got = run(pixels, params, per_view, channels_last=False).double()
        px = got * torch.tensor(SD) + torch.tensor(MU)
        torch.testing.assert_close(
            got[[0, 2, 3]], torch.from_numpy(normalise(pixels[[0, 2, 3]])), atol=1e-6, rtol=0
        )
        assert (px[1].amax(0) - px[1].amin(0)).max() < 1e-5  # gray: the three channels agree
        luma = np.einsum("c,chw->hw", [0.299, 0.587, 0.114], pixels[1])
        torch.testing.assert_close(px[1, 0], torch.from_numpy(luma), atol=1e-5, rtol=0)


def test_blur_taps_rule():
    sigma = torch.tensor([0.0, 0.1, 0.34, 1.0, 2.0, 2.0])
    assert blur_taps(sigma[:5], 224).tolist() == [1, 3, 5, 7, 13]
    assert blur_taps(sigma, 64).tolist()[-1] == 7  # the official window at 64 px
    assert blur_taps(sigma, 16).tolist() == [1] * 6  # 16 // 10 made odd is 1: no blur


def test_bad_arguments_are_named():
    views = torch.zeros(4, 3, 8, 8)
    with pytest.raises(ValueError, match=r"params must be \(4, 13\)"):
        augment_views_(views, torch.zeros(3, augment.N_PARAMS))
    with pytest.raises(ValueError, match=r"views must be \(B, 3, S, S\)"):
        augment_views_(torch.zeros(4, 8, 8, 3), torch.zeros(4, augment.N_PARAMS))
    with pytest.raises(ValueError, match="floating point"):
        augment_views_(views.to(torch.uint8), torch.zeros(4, augment.N_PARAMS))
    with pytest.raises(ValueError, match="strides"):
        augment_views_(torch.zeros(4, 3, 8, 16)[..., ::2], torch.zeros(4, augment.N_PARAMS))


@pytest.mark.gpu
def test_gpu_matches_cpu():
    rng = np.random.default_rng(4)
    pixels = random_views(rng, 16, 96)
    params = augment.simclr_params(rng, np.full((16, 2), 300))
    cpu = run(pixels, params, per_view=True, channels_last=False)
    gpu = torch.tensor(normalise(pixels), dtype=torch.float32, device="cuda").contiguous(
        memory_format=torch.channels_last
    )
    augment_views_(gpu, torch.from_numpy(params))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-5, rtol=0)
