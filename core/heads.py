"""The SimCLR v2 projection head (official TF2 code: google-research/simclr ``tf2/model.py``).

``proj_layers`` layers, each Linear (no bias: a batch norm follows) -> BatchNorm1d; all but the last
add a ReLU and have BN gamma and beta, the last has a BN with gamma only (the official ``center=False``:
"last layer without bias"). Hidden width = input width, output ``proj_dim``. Linear weights start
from N(0, 0.01^2) as in the official ``LinearLayer``.

``hiddens(h)`` returns the official ``hiddens_list``: element 0 is the encoder output, element k the
output of head layer k (after its ReLU for middle layers). The fine-tuning classifier reads element
``ft_proj_selector`` of that list.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import BN_EPS, BN_MOMENTUM


class HeadLayer(nn.Module):
    """Linear (no bias) -> BatchNorm1d (-> ReLU): (B, in_features) -> (B, out_features)."""

    def __init__(self, in_features: int, out_features: int, last: bool):
        super().__init__()
        self.linear = nn.utils.skip_init(
            nn.Linear, in_features, out_features, bias=False, device=torch.get_default_device()
        )
        nn.init.normal_(self.linear.weight, std=0.01)
        self.bn = nn.BatchNorm1d(out_features, eps=BN_EPS, momentum=BN_MOMENTUM)
        if last:
            # The official last layer has no bias at all: gamma only. A standard BatchNorm1d with
            # no `bias` parameter (F.batch_norm accepts None) keeps the module swappable for a
            # synchronised batch norm.
            self.bn.register_parameter("bias", None)
        self.relu = not last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn(self.linear(x))
        return F.relu(out) if self.relu else out


class ProjectionHead(nn.Module):
    """(B, in_features) -> (B, proj_dim) through ``proj_layers`` :class:`HeadLayer` s.

    ``proj_layers = 0`` is the official ``proj_head_mode='none'``: the output is the input.
    """

    def __init__(self, in_features: int, proj_layers: int = 3, proj_dim: int = 128):
        super().__init__()
        if proj_layers < 0:
            raise ValueError(f"ProjectionHead: proj_layers must be >= 0, got {proj_layers}")
        if proj_dim < 1:
            raise ValueError(f"ProjectionHead: proj_dim must be >= 1, got {proj_dim}")
        self.in_features = in_features
        self.layers = nn.ModuleList(
            HeadLayer(in_features, proj_dim if k == proj_layers - 1 else in_features, k == proj_layers - 1)
            for k in range(proj_layers)
        )

    def layer_features(self, k: int) -> int:
        """Width of ``hiddens(h)[k]``: the encoder width, except ``proj_dim`` after the last layer."""
        return self.in_features if k == 0 else self.layers[k - 1].linear.out_features

    def hiddens(self, h: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """``[h, layer1(h), layer2(layer1(h)), ...]`` up to head layer ``upto`` (default: all)."""
        out = [h]
        for layer in self.layers[:upto]:
            out.append(layer(out[-1]))
        return out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.hiddens(h)[-1]
