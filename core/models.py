"""SimCLR v2 models: encoder + projection head + classifier, and the name registry.

Names are ``r{depth}_{width}x_sk{0|1}``: ``r50_1x_sk0`` is ResNet-50 1x, ``r152_3x_sk1`` ResNet-152
3x with selective kernels. Registered (``list_models()``): depths 18, 34, 50, 101, 152, widths 1, 2, 3,
with and without SK. Any positive width parses (``r18_0.5x_sk0`` for demos) without being listed.

Examples::

    model = build_model("r50_1x_sk1")                 # pretraining: model.projections(x) -> (B, 128)
    model.load_state_dict(torch.load("pretrained.pt"))
    model.finetune_head_()                            # keep head layers <= ft_proj_selector
    logits = model.logits(x)                          # (B, 1000)
    big = build_model("r152_3x_sk1", device="meta")   # shapes and counts, no memory
"""

from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from .heads import ProjectionHead
from .resnet import DEPTHS, ResNet

_NAME = re.compile(r"r(\d+)_(\d+(?:\.\d+)?)x_sk([01])")
_WIDTHS = (1, 2, 3)
OUTPUTS = ("projections", "logits", "features")


def _format_width(width: float) -> str:
    return f"{width:g}"


def list_models() -> list[str]:
    """The registered names, sorted as strings (``r101_1x_sk0`` ... ``r50_3x_sk1``)."""
    return sorted(f"r{d}_{w}x_sk{sk}" for d in DEPTHS for w in _WIDTHS for sk in (0, 1))


def parse_name(name: str) -> tuple[int, float, bool]:
    """``"r50_2x_sk1"`` -> ``(50, 2.0, True)``; ValueError naming the known models otherwise."""
    match = _NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or int(match.group(1)) not in DEPTHS or float(match.group(2)) <= 0:
        raise ValueError(
            f"unknown model name {name!r}: expected r{{depth}}_{{width}}x_sk{{0|1}} with depth in "
            f"{sorted(DEPTHS)} and width > 0; registered: {', '.join(list_models())}"
        )
    return int(match.group(1)), float(match.group(2)), match.group(3) == "1"


class SimCLRModel(nn.Module):
    """Encoder + projection head + classifier, with one method per SimCLR v2 stage.

    - ``projections(x)``: (B, 3, H, W) -> (B, proj_dim), pretraining (NT-Xent on these).
    - ``logits(x)``: (B, 3, H, W) -> (B, num_classes), fine-tuning and distillation; the classifier
      reads head layer ``ft_proj_selector`` (0 = encoder output, 1 = first head layer, the paper's
      choice for 1% and 10% labels).
    - ``features(x)``: (B, 3, H, W) -> (B, feature_dim), the encoder output, for linear evaluation.
    - ``projections_and_logits(x)``: both from one encoder pass, the classifier on a detached input
      (the official ``lineareval_while_pretraining``: the linear probe never trains the encoder).

    ``forward(x, output="projections")`` dispatches to the first three by name, for wrappers (DeepSpeed
    engines) that only call the module. ``finetune_head_()`` drops the head layers above
    ``ft_proj_selector``, as fine-tuning does; ``projections`` is unavailable afterwards.
    """

    def __init__(
        self, encoder: ResNet, head: ProjectionHead, classifier: nn.Linear | None, ft_proj_selector: int
    ):
        super().__init__()
        if not 0 <= ft_proj_selector <= len(head.layers):
            raise ValueError(
                f"ft_proj_selector must be in [0, proj_layers={len(head.layers)}], got {ft_proj_selector}"
            )
        self.encoder = encoder
        self.head = head
        self.classifier = classifier
        self.ft_proj_selector = ft_proj_selector
        self.proj_layers = len(head.layers)
        self.config: dict = {}

    @property
    def feature_dim(self) -> int:
        return self.encoder.out_features

    @property
    def head_is_complete(self) -> bool:
        """False after :meth:`finetune_head_` dropped layers."""
        return len(self.head.layers) == self.proj_layers

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, feature_dim)."""
        return self.encoder(x)

    def projections(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, proj_dim)."""
        if not self.head_is_complete:
            raise RuntimeError(
                f"projections() needs all {self.proj_layers} head layers, but finetune_head_() kept "
                f"{len(self.head.layers)}; build a fresh model for pretraining"
            )
        return self.head(self.encoder(x))

    def _check_classifier(self) -> None:
        if self.classifier is None:
            raise RuntimeError("this model was built with num_classes=0: it has no classifier")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes), classifier on head layer ``ft_proj_selector``."""
        self._check_classifier()
        k = self.ft_proj_selector
        return self.classifier(self.head.hiddens(self.encoder(x), upto=k)[k])

    def projections_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> ((B, proj_dim), (B, num_classes)); no gradient from logits to the body."""
        if not self.head_is_complete:
            raise RuntimeError("projections_and_logits() needs the full head (finetune_head_() dropped some)")
        self._check_classifier()
        hiddens = self.head.hiddens(self.encoder(x))
        return hiddens[-1], self.classifier(hiddens[self.ft_proj_selector].detach())

    def forward(self, x: torch.Tensor, output: str = "projections") -> torch.Tensor:
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        return getattr(self, output)(x)

    def finetune_head_(self) -> SimCLRModel:
        """Drop head layers above ``ft_proj_selector`` in place (their parameters leave the model).

        Load a pretrained (full) state dict BEFORE calling this; returns ``self``.
        """
        del self.head.layers[self.ft_proj_selector :]
        return self


def build_model(
    name: str,
    num_classes: int = 1000,
    proj_layers: int = 3,
    proj_dim: int = 128,
    ft_proj_selector: int = 1,
    *,
    small_images: bool = False,
    sk_ratio: float = 0.0625,
    min_sk_channels: int = 32,
    device: torch.device | str | None = None,
) -> SimCLRModel:
    """Build a :class:`SimCLRModel` by name (see module docstring); ``num_classes=0``: no classifier.

    ``sk_ratio`` and ``min_sk_channels`` apply to ``sk1`` names only. ``small_images``: 3x3 stride-1
    stem, no max-pool (32-px inputs). ``device="meta"`` builds without allocating memory.
    """
    depth, width, sk = parse_name(name)
    if not 0 <= ft_proj_selector <= proj_layers:
        raise ValueError(
            f"ft_proj_selector={ft_proj_selector} is impossible with proj_layers={proj_layers}: "
            f"the classifier reads head layer 0 (encoder output) .. {proj_layers}"
        )
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0 (0 = no classifier), got {num_classes}")
    if sk and not sk_ratio > 0:
        raise ValueError(f"{name} has selective kernels: sk_ratio must be > 0, got {sk_ratio}")
    if min_sk_channels < 1:
        raise ValueError(f"min_sk_channels must be >= 1, got {min_sk_channels}")
    with torch.device(device) if device is not None else contextlib.nullcontext():
        encoder = ResNet(depth, width, sk_ratio if sk else 0.0, min_sk_channels, small_images)
        head = ProjectionHead(encoder.out_features, proj_layers, proj_dim)
        classifier = None
        if num_classes:
            in_features = head.layer_features(ft_proj_selector)
            device = torch.get_default_device()
            classifier = nn.utils.skip_init(nn.Linear, in_features, num_classes, device=device)
            nn.init.normal_(classifier.weight, std=0.01)
            nn.init.zeros_(classifier.bias)
    model = SimCLRModel(encoder, head, classifier, ft_proj_selector)
    model.config = dict(
        name=f"r{depth}_{_format_width(width)}x_sk{int(sk)}",
        num_classes=num_classes,
        proj_layers=proj_layers,
        proj_dim=proj_dim,
        ft_proj_selector=ft_proj_selector,
        small_images=small_images,
        sk_ratio=sk_ratio,
        min_sk_channels=min_sk_channels,
    )
    return model


def parameter_counts(model: SimCLRModel) -> dict[str, int]:
    """Parameters of ``encoder`` (BN gamma and beta included), ``head``, ``classifier`` and ``total``."""
    parts = {name: getattr(model, name) for name in ("encoder", "head", "classifier")}
    counts = {
        name: sum(p.numel() for p in part.parameters()) if part is not None else 0
        for name, part in parts.items()
    }
    counts["total"] = sum(counts.values())
    return counts


def _print_count_table() -> None:
    """``python -m flashclr.core.models``: the README's table, built on the meta device."""
    print("| model | encoder | head (3 layers, 128) | classifier (1000) | total |")
    print("|---|---:|---:|---:|---:|")
    for name in sorted(list_models(), key=parse_name):
        c = parameter_counts(build_model(name, device="meta"))
        print(f"| {name} | {c['encoder']:,} | {c['head']:,} | {c['classifier']:,} | {c['total']:,} |")


if __name__ == "__main__":
    _print_count_table()
