"""ResNet encoders of SimCLR v2: depths 18-152, any width multiplier, optional selective kernels.

Follows the official TF2 code (google-research/simclr, ``tf2/resnet.py``) layer for layer, so that
parameter counts and shapes match the released checkpoints:

- Stem: 7x7 stride-2 conv (64w) -> BN-ReLU -> 3x3 stride-2 max-pool. With selective kernels
  (``sk_ratio > 0``) the conv becomes three 3x3 convs (32w stride 2, 32w, 64w), BN-ReLU after each.
  ``small_images=True`` (the official ``cifar_stem``, for 32-px inputs): one 3x3 stride-1 conv (64w)
  -> BN-ReLU, no max-pool, with or without selective kernels.
- Stages: 64w, 128w, 256w, 512w filters, strides 1, 2, 2, 2. Basic blocks (depth 18, 34) output
  ``filters`` channels, bottlenecks (50, 101, 152) ``4 * filters``. As in the official code, the
  first block of EVERY stage has a projection shortcut (1x1 conv + BN), even in stage 1 of ResNet-18
  where the channel count does not change; with selective kernels the shortcut is ResNet-D
  (2x2 average pool carrying the stride, then a stride-1 1x1 conv).
- Selective kernels replace only the bottleneck's 3x3 conv and the BN-ReLU after it (basic blocks
  have none, as in the official code; their ``sk1`` variants differ only by stem and shortcuts).
- The last BN of every residual branch starts with gamma = 0, so each block starts as identity.
- Convs have no bias; BN eps 1e-5 and momentum 0.1 (TF decay 0.9); conv weights start from TF's
  ``VarianceScaling()`` (truncated normal, std sqrt(1 / fan_in)).

Pooling uses TensorFlow's "SAME" rule (pad after, and before only when the total is odd), not
PyTorch's symmetric padding: on even sizes the two put the max-pool windows one pixel apart, and a
converted checkpoint would see shifted features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch convention; equals TF's batch_norm_decay 0.9 of the official code.
# TF's truncated normal draws N(0, 1) cut at +-2 and rescales by this factor so that the kept
# samples have unit standard deviation (the std of N(0, 1) restricted to [-2, 2]).
_TRUNC_STD = 0.87962566103423978

DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _channels(base: int, width: float) -> int:
    """Channel count of a layer with ``base`` channels at width multiplier ``width``.

    ``int`` (not ``round``) matches the official ``64 * width_multiplier // 2`` on integer widths.
    """
    return max(1, int(base * width))


def conv_init_(weight: torch.Tensor) -> None:
    """TF ``VarianceScaling()`` init in place: std sqrt(1 / fan_in), truncated at +-2 std.

    Sampled like TF's ``truncated_normal``: N(0, 1) draws outside [-2, 2] are redrawn, then the
    result is scaled by std / 0.8796 (the std of the truncated unit normal). Rejection is ~5x
    faster on CPU than ``nn.init.trunc_normal_`` (whose ``erfinv`` made building the 795M-parameter
    encoder take a minute on 2 cores).
    """
    if weight.is_meta:
        return
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    with torch.no_grad():
        flat = weight.view(-1)
        flat.normal_()
        redraw = (flat.abs() > 2).nonzero().squeeze(1)  # about 4.6% of the draws
        while redraw.numel():
            values = torch.randn(redraw.numel(), dtype=flat.dtype, device=flat.device)
            kept = values.abs() <= 2
            flat[redraw[kept]] = values[kept]
            redraw = redraw[~kept]
        flat.mul_(math.sqrt(1.0 / fan_in) / _TRUNC_STD)


def conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Bias-free conv with symmetric padding ``kernel // 2``.

    For odd kernels this equals the official ``Conv2dFixedPadding`` at every stride (TF "SAME" at
    stride 1, explicit symmetric padding then "VALID" at stride 2).
    """
    layer = nn.utils.skip_init(  # skip PyTorch's default init: it is overwritten just below
        nn.Conv2d,
        in_ch,
        out_ch,
        kernel,
        stride=stride,
        padding=kernel // 2,
        bias=False,
        device=torch.get_default_device(),
    )
    conv_init_(layer.weight)
    return layer


def bn(channels: int, zero_gamma: bool = False) -> nn.BatchNorm2d:
    layer = nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)
    if zero_gamma:
        nn.init.zeros_(layer.weight)
    return layer


def max_pool_3x3_s2_same(x: torch.Tensor) -> torch.Tensor:
    """TF ``MaxPooling2D(3, 2, "SAME")``: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)).

    TF pads ``total = max((ceil(H / 2) - 1) * 2 + 3 - H, 0)`` rows, ``total // 2`` before and the
    rest after: (0, 1) for even H, (1, 1) for odd H. Padding with -inf keeps it a true max.
    """
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, 2)


def avg_pool_2x2_same(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The ResNet-D shortcut pool of the official code: (B, C, H, W) -> (B, C, ceil(H/s), ceil(W/s)).

    stride 1: TF ``AveragePooling2D(2, 1, "SAME")`` pads one row/column after and averages over the
    valid elements only. Symmetric padding 1 with ``count_include_pad=False`` gives the same windows
    shifted by one, so the first row/column is dropped.
    stride 2: ``FixedPadding(2)`` (zeros after) then a "VALID" 2x2 pool, zeros counted. On even
    sizes the padding is never read, so it is only applied to odd sizes.
    """
    if stride == 1:
        return F.avg_pool2d(x, 2, 1, padding=1, count_include_pad=False)[..., 1:, 1:]
    h, w = x.shape[-2:]
    if h % 2 or w % 2:
        x = F.pad(x, [0, 1, 0, 1])
    return F.avg_pool2d(x, 2, stride)


class AvgPoolSame(nn.Module):
    """Module form of :func:`avg_pool_2x2_same`, so the shortcut reads as a ``Sequential``."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_2x2_same(x, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size=2, stride={self.stride}, padding=TF-SAME"


class SKConv2d(nn.Module):
    """Selective-kernel 3x3 convolution (Li et al. 2019, arXiv 1903.06586; SimCLR v2 variant).

    ``y = a_0 * s_0 + a_1 * s_1`` where ``[s_0, s_1] = split(ReLU(BN(conv3x3(x))), 2)`` are two
    (B, C, H', W') streams made by ONE 3x3 conv to 2C channels (which carries the stride), and the
    per-channel mixing weights ``a = softmax over streams of conv1x1_b(ReLU(BN(conv1x1_a(g))))``,
    with ``g = mean_{H',W'}(s_0 + s_1)`` of shape (B, C, 1, 1), ``conv1x1_a``: C -> max(int(C *
    sk_ratio), min_channels), ``conv1x1_b``: -> 2C (both bias-free).

    Shape: (B, C_in, H, W) -> (B, C, ceil(H / stride), ceil(W / stride)). There is no BN or ReLU on
    the output: in the bottleneck the SK conv replaces the 3x3 conv AND its BN-ReLU.
    """

    def __init__(
        self, in_ch: int, out_ch: int, stride: int = 1, sk_ratio: float = 0.0625, min_channels: int = 32
    ):
        super().__init__()
        if sk_ratio <= 0:
            raise ValueError(f"SKConv2d: sk_ratio must be > 0, got {sk_ratio}")
        self.out_ch = out_ch
        mid = max(int(out_ch * sk_ratio), min_channels)
        self.conv = conv(in_ch, 2 * out_ch, 3, stride)
        self.bn = bn(2 * out_ch)
        self.fuse = conv(out_ch, mid, 1)
        self.fuse_bn = bn(mid)
        self.select = conv(mid, 2 * out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams = F.relu(self.bn(self.conv(x)))  # (B, 2C, H', W')
        s0, s1 = streams.split(self.out_ch, dim=1)  # 2 x (B, C, H', W')
        g = (s0 + s1).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        mix = self.select(F.relu(self.fuse_bn(self.fuse(g))))  # (B, 2C, 1, 1)
        a0, a1 = mix.unflatten(1, (2, self.out_ch)).softmax(dim=1).unbind(1)  # 2 x (B, C, 1, 1)
        return s0 * a0 + s1 * a1


def _shortcut(in_ch: int, out_ch: int, stride: int, resnet_d: bool) -> nn.Sequential:
    """Projection shortcut: 1x1 conv (stride) + BN, or ResNet-D: 2x2 avg pool (stride) + 1x1 conv + BN."""
    if resnet_d:
        return nn.Sequential(AvgPoolSame(stride), conv(in_ch, out_ch, 1), bn(out_ch))
    return nn.Sequential(conv(in_ch, out_ch, 1, stride), bn(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 convs: (B, C_in, H, W) -> (B, filters, H / stride, W / stride)."""

    expansion = 1

    def __init__(
        self, in_ch: int, filters: int, stride: int, projection: bool, sk_ratio: float, min_sk_channels: int
    ):
        super().__init__()
        del min_sk_channels  # basic blocks have no SK conv in the official code
        self.conv1 = conv(in_ch, filters, 3, stride)
        self.bn1 = bn(filters)
        self.conv2 = conv(filters, filters, 3)
        self.bn2 = bn(filters, zero_gamma=True)
        self.shortcut = _shortcut(in_ch, filters, stride, sk_ratio > 0) if projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (or SK) -> 1x1 (4x filters): (B, C_in, H, W) -> (B, 4 filters, H / s, W / s)."""

    expansion = 4

    def __init__(
        self, in_ch: int, filters: int, stride: int, projection: bool, sk_ratio: float, min_sk_channels: int
    ):
        super().__init__()
        out_ch = 4 * filters
        self.conv1 = conv(in_ch, filters, 1)
        self.bn1 = bn(filters)
        if sk_ratio > 0:
            # The SK conv replaces the 3x3 conv and its BN-ReLU (its streams are already BN-ReLU'd).
            self.conv2 = SKConv2d(filters, filters, stride, sk_ratio, min_sk_channels)
            self.bn2, self.relu2 = nn.Identity(), nn.Identity()
        else:
            self.conv2 = conv(filters, filters, 3, stride)
            self.bn2, self.relu2 = bn(filters), nn.ReLU(inplace=True)
        self.conv3 = conv(filters, out_ch, 1)
        self.bn3 = bn(out_ch, zero_gamma=True)
        self.shortcut = _shortcut(in_ch, out_ch, stride, sk_ratio > 0) if projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """The SimCLR v2 encoder: images (B, 3, H, W) -> features (B, out_features).

    ``out_features = 512 * width * expansion`` (2048 for ResNet-50 1x). ``stage_outputs`` gives the
    intermediate maps: stem (B, 64w, H/4, W/4), layer1..4 with strides 4, 8, 16, 32 (1, 1, 2, 4, 8
    with ``small_images``).
    """

    def __init__(
        self,
        depth: int,
        width: float = 1.0,
        sk_ratio: float = 0.0,
        min_sk_channels: int = 32,
        small_images: bool = False,
        in_channels: int = 3,
    ):
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth must be one of {sorted(DEPTHS)}, got {depth}")
        if not width > 0:
            raise ValueError(f"ResNet width multiplier must be > 0, got {width}")
        if sk_ratio < 0:
            raise ValueError(f"ResNet sk_ratio must be >= 0 (0 = no selective kernels), got {sk_ratio}")
        kind, blocks = DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.width, self.sk_ratio = depth, width, sk_ratio
        self.small_images, self.in_channels = small_images, in_channels

        stem_ch = _channels(64, width)
        if small_images:
            stem = [conv(in_channels, stem_ch, 3), bn(stem_ch), nn.ReLU(inplace=True)]
        elif sk_ratio > 0:
            half = _channels(32, width)
            stem = [conv(in_channels, half, 3, 2), bn(half), nn.ReLU(inplace=True)]
            stem += [conv(half, half, 3), bn(half), nn.ReLU(inplace=True)]
            stem += [conv(half, stem_ch, 3), bn(stem_ch), nn.ReLU(inplace=True)]
        else:
            stem = [conv(in_channels, stem_ch, 7, 2), bn(stem_ch), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)

        in_ch = stem_ch
        for i, (n, stride) in enumerate(zip(blocks, (1, 2, 2, 2), strict=True)):
            filters = _channels(64 * 2**i, width)
            layers = []
            for j in range(n):
                layers.append(
                    block(in_ch, filters, stride if j == 0 else 1, j == 0, sk_ratio, min_sk_channels)
                )
                in_ch = filters * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))
        self.out_features = in_ch

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResNet expects images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"ResNet expects floating-point images, got dtype {x.dtype}")

    def stage_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Feature maps after the stem (max-pool included) and after each of the 4 stages."""
        self._check_input(x)
        out = self.stem(x)
        if not self.small_images:
            out = max_pool_3x3_s2_same(out)
        maps = {"stem": out}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            out = getattr(self, name)(out)
            maps[name] = out
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_features): global average pool of the last stage."""
        return self.stage_outputs(x)["layer4"].mean(dim=(2, 3))
