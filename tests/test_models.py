"""Tests of flashclr.core.models / resnet / heads: architecture facts of the official SimCLR v2 code
(google-research/simclr tf2/resnet.py, tf2/model.py), shapes, counts, the three stages, bad input."""

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flashclr.core.heads import ProjectionHead
from flashclr.core.models import build_model, list_models, parameter_counts, parse_name
from flashclr.core.resnet import (
    BasicBlock,
    Bottleneck,
    SKConv2d,
    avg_pool_2x2_same,
    conv_init_,
    max_pool_3x3_s2_same,
)

# Encoder parameters (BN gamma and beta included) of the official architectures: the paper's
# Table 1 / official README numbers (design.md), and the exact counts this code gives.
PAPER_COUNTS = {
    "r50_1x_sk0": 23.51e6,
    "r50_1x_sk1": 35.22e6,
    "r152_2x_sk1": 353.40e6,
    "r152_3x_sk1": 794.70e6,
}
EXACT_COUNTS = {
    "r50_1x_sk0": 23_508_032,
    "r50_1x_sk1": 35_215_584,
    "r152_2x_sk1": 353_398_528,
    "r152_3x_sk1": 794_704_160,
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _randomise_bn_(model: nn.Module) -> nn.Module:
    """Give every batch norm non-trivial affine parameters and running statistics, so eval-mode
    outputs depend on all of them (fresh models have gamma 0 in residual branches, mean 0, var 1)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _expected_stage_shapes(name: str, batch: int, size: int, small_images: bool = False) -> dict:
    depth, width, _ = parse_name(name)
    expansion = 1 if depth in (18, 34) else 4
    s = size if small_images else math.ceil(math.ceil(size / 2) / 2)
    shapes = {"stem": (batch, int(64 * width), s, s)}
    for i in range(4):
        if i:
            s = math.ceil(s / 2)
        shapes[f"layer{i + 1}"] = (batch, int(64 * 2**i * width) * expansion, s, s)
    return shapes


# ---------------------------------------------------------------------------------------- registry


def test_registry_names():
    names = list_models()
    assert names == sorted(names)
    assert len(names) == 30
    assert {"r50_1x_sk0", "r50_1x_sk1", "r152_2x_sk1", "r152_3x_sk1", "r18_3x_sk0"} <= set(names)
    assert parse_name("r18_0.5x_sk0") == (18, 0.5, False)
    assert parse_name("r152_3x_sk1") == (152, 3.0, True)


@pytest.mark.parametrize("name", list_models())
def test_stage_shapes_every_registered_name(name):
    """Every stage of every registered model at 64 px, batch 2, on the meta device (no memory, no
    arithmetic). One encoder pass feeds the head stages: meta ops are traced in Python (~ms each),
    and the model's stage methods themselves are tested on real models below. Eval mode because
    meta batch norm is ~2x cheaper to trace there."""
    model = build_model(name, num_classes=10, device="meta").eval()
    maps = model.encoder.stage_outputs(torch.empty(2, 3, 64, 64, device="meta"))
    assert {k: tuple(v.shape) for k, v in maps.items()} == _expected_stage_shapes(name, 2, 64)
    assert model.encoder.out_features == model.feature_dim == maps["layer4"].shape[1]
    hiddens = model.head.hiddens(maps["layer4"].mean(dim=(2, 3)))
    width = model.feature_dim
    assert [tuple(h.shape) for h in hiddens] == [(2, width), (2, width), (2, width), (2, 128)]
    assert model.classifier(hiddens[1]).shape == (2, 10)


@pytest.mark.parametrize("name", ["r18_1x_sk1", "r50_0.5x_sk1"])
def test_small_images_stem(name):
    """32-px stem: one 3x3 stride-1 conv, no max-pool, so the stem keeps full resolution."""
    model = build_model(name, small_images=True, num_classes=10).eval()
    convs = [m for m in model.encoder.stem if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.stride, c.out_channels) for c in convs] == [
        ((3, 3), (1, 1), model.encoder.stem[0].out_channels)
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = model.encoder.stage_outputs(x)
        assert {k: tuple(v.shape) for k, v in maps.items()} == _expected_stage_shapes(name, 2, 32, True)
        assert model.logits(x).shape == (2, 10)


# ------------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_encoder_parameter_counts(name):
    encoder = build_model(name, device="meta").encoder
    n = _count(encoder)
    assert abs(n - PAPER_COUNTS[name]) / PAPER_COUNTS[name] < 0.005
    assert n == EXACT_COUNTS[name]


def test_head_and_classifier_counts():
    """Head of a 2048-wide encoder: 2 x (2048^2 weights + gamma + beta) + 2048*128 + gamma only."""
    model = build_model("r50_1x_sk0", device="meta")
    assert _count(model.head) == 2 * (2048 * 2048 + 2 * 2048) + 2048 * 128 + 128
    assert _count(model.classifier) == 2048 * 1000 + 1000
    counts = parameter_counts(model)
    assert counts["encoder"] == EXACT_COUNTS["r50_1x_sk0"]
    assert counts["total"] == counts["encoder"] + counts["head"] + counts["classifier"] == _count(model)
    top = build_model("r50_1x_sk0", ft_proj_selector=3, num_classes=10, device="meta")
    assert top.classifier.in_features == 128
    assert build_model("r50_1x_sk0", num_classes=0, device="meta").classifier is None


# ------------------------------------------------------------------------- architecture details


def _bn_eval(x, bn):
    """Batch norm in eval mode written out: (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    out = (x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
    out = out * bn.weight.view(shape)
    return out + bn.bias.view(shape) if bn.bias is not None else out


@pytest.mark.parametrize("stride,size,channels", [(1, 9, 40), (2, 11, 24), (2, 8, 600)])
def test_sk_conv_against_direct_formula(stride, size, channels):
    sk = _randomise_bn_(SKConv2d(16, channels, stride)).eval()
    mid = max(int(channels * 0.0625), 32)
    assert sk.fuse.out_channels == mid and sk.select.out_channels == 2 * channels
    assert sk.conv.kernel_size == (3, 3) and sk.conv.out_channels == 2 * channels
    x = torch.randn(3, 16, size, size, dtype=torch.float64)
    sk = sk.double()
    streams = F.relu(_bn_eval(F.conv2d(x, sk.conv.weight, stride=stride, padding=1), sk.bn))
    s0, s1 = streams[:, :channels], streams[:, channels:]
    g = (s0 + s1).mean(dim=(2, 3), keepdim=True)
    z = F.relu(_bn_eval(F.conv2d(g, sk.fuse.weight), sk.fuse_bn))
    logits = F.conv2d(z, sk.select.weight)
    e0, e1 = torch.exp(logits[:, :channels]), torch.exp(logits[:, channels:])
    expected = s0 * e0 / (e0 + e1) + s1 * e1 / (e0 + e1)
    with torch.no_grad():
        out = sk(x)
    assert out.shape == (3, channels, math.ceil(size / stride), math.ceil(size / stride))
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def _tf_same_pool(x, kernel, stride, op, pad_mode):
    """TensorFlow pooling written as loops over output pixels. pad_mode 'same': TF 'SAME' (pad
    total split floor before / rest after, padding excluded from the window); 'fixed': zeros after
    (odd sizes), then 'VALID' with the zeros counted (the official FixedPadding(2) + VALID)."""
    h, w = x.shape[-2:]
    if pad_mode == "same":
        oh, ow = math.ceil(h / stride), math.ceil(w / stride)
        ph = max((oh - 1) * stride + kernel - h, 0) // 2
        pw = max((ow - 1) * stride + kernel - w, 0) // 2
    else:
        x = F.pad(x, [0, 1, 0, 1])
        oh, ow = (h + 1 - kernel) // stride + 1, (w + 1 - kernel) // stride + 1
        ph = pw = 0
        h, w = h + 1, w + 1
    out = torch.empty(*x.shape[:-2], oh, ow, dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * stride - ph, j * stride - pw
            window = x[..., max(r0, 0) : min(r0 + kernel, h), max(c0, 0) : min(c0 + kernel, w)]
            out[..., i, j] = window.amax(dim=(-2, -1)) if op == "max" else window.mean(dim=(-2, -1))
    return out


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (1, 2)])
def test_pools_follow_tensorflow_same(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(max_pool_3x3_s2_same(x), _tf_same_pool(x, 3, 2, "max", "same"))
    torch.testing.assert_close(avg_pool_2x2_same(x, 1), _tf_same_pool(x, 2, 1, "avg", "same"))
    torch.testing.assert_close(avg_pool_2x2_same(x, 2), _tf_same_pool(x, 2, 2, "avg", "fixed"))


def test_sk_stem_and_resnet_d_shortcuts():
    enc = build_model("r50_1x_sk1", device="meta").encoder
    convs = [m for m in enc.stem if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (3, 3), (2, 2)),
        (32, (3, 3), (1, 1)),
        (64, (3, 3), (1, 1)),
    ]
    for stage, stride in zip((enc.layer1, enc.layer2, enc.layer3, enc.layer4), (1, 2, 2, 2), strict=True):
        pool, conv1x1, bn = stage[0].shortcut
        assert pool.stride == stride and conv1x1.stride == (1, 1) and isinstance(bn, nn.BatchNorm2d)
        assert isinstance(stage[0].conv2, SKConv2d) and stage[0].conv2.conv.stride == (stride, stride)
        assert all(isinstance(block.shortcut, nn.Identity) for block in stage[1:])
    plain = build_model("r50_1x_sk0", device="meta").encoder
    assert plain.stem[0].kernel_size == (7, 7) and plain.layer2[0].shortcut[0].stride == (2, 2)
    # Basic blocks have no SK conv (official code); sk1 only changes the stem and the shortcuts.
    r18 = build_model("r18_2x_sk1", device="meta").encoder
    assert not any(isinstance(m, SKConv2d) for m in r18.modules())
    assert len(r18.layer1[0].shortcut) == 3 and r18.stem[6].out_channels == 128


@pytest.mark.parametrize("name", ["r18_1x_sk0", "r50_0.5x_sk1"])
def test_zero_init_last_bn_gamma(name):
    model = build_model(name).eval()
    blocks = [m for m in model.encoder.modules() if isinstance(m, BasicBlock | Bottleneck)]
    assert len(blocks) == 8 if name.startswith("r18") else 16
    for block in blocks:
        last = block.bn2 if isinstance(block, BasicBlock) else block.bn3
        assert torch.count_nonzero(last.weight) == 0
        assert torch.all(block.bn1.weight == 1)
        if not isinstance(block.shortcut, nn.Identity):
            assert torch.all(block.shortcut[-1].weight == 1)
        # With gamma 0 (and beta 0) the residual branch is silent: block(x) = ReLU(shortcut(x)).
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(block(x), F.relu(block.shortcut(x)))


def test_conv_init_is_tf_variance_scaling():
    w = torch.empty(256, 64, 3, 3)
    conv_init_(w)
    std = math.sqrt(1 / (64 * 9))
    assert w.abs().max() <= 2 * std / 0.87962566103423978 + 1e-7
    assert abs(w.std().item() - std) / std < 0.02
    assert abs(w.mean().item()) < 0.01 * std * 10


# --------------------------------------------------------------------------------- head and stages


def test_projection_head_structure():
    head = ProjectionHead(64, proj_layers=3, proj_dim=16)
    assert [layer.linear.out_features for layer in head.layers] == [64, 64, 16]
    assert all(layer.linear.bias is None for layer in head.layers)
    assert [layer.bn.bias is None for layer in head.layers] == [False, False, True]
    assert [layer.relu for layer in head.layers] == [True, True, False]
    head = _randomise_bn_(head).eval()
    h = torch.randn(5, 64)
    hiddens = head.hiddens(h)
    assert len(hiddens) == 4 and hiddens[0] is h
    layer = head.layers[0]
    expected1 = F.relu(_bn_eval(h @ layer.linear.weight.T, layer.bn))
    torch.testing.assert_close(hiddens[1], expected1)
    assert torch.all(hiddens[2] >= 0)
    torch.testing.assert_close(
        head(h), _bn_eval(hiddens[2] @ head.layers[2].linear.weight.T, head.layers[2].bn)
    )
    assert ProjectionHead(64, proj_layers=0)(h) is h


@pytest.mark.parametrize("selector", [0, 1, 2, 3])
def test_classifier_reads_head_layer_and_finetune_truncation(selector):
    model = _randomise_bn_(
        build_model("r18_0.5x_sk0", num_classes=7, ft_proj_selector=selector, small_images=True)
    )
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        hidden = model.head.hiddens(model.features(x))[selector]
        logits = model.logits(x)
        torch.testing.assert_close(logits, model.classifier(hidden))
        assert model.classifier.in_features == (256 if selector < 3 else 128)
        n_before = _count(model)
        assert model.finetune_head_() is model
        assert len(model.head.layers) == selector
        torch.testing.assert_close(model.logits(x), logits)
        if selector == 3:  # the classifier reads the last layer: nothing to drop
            assert model.head_is_complete and _count(model) == n_before
            return
        assert not model.head_is_complete and _count(model) < n_before
        with pytest.raises(RuntimeError, match="finetune_head_"):
            model.projections(x)


def test_projections_and_logits_keep_the_probe_off_the_body():
    model = build_model("r18_0.5x_sk1", num_classes=5, small_images=True)
    x = torch.randn(4, 3, 16, 16)
    z, logits = model.projections_and_logits(x)
    assert z.shape == (4, 128) and logits.shape == (4, 5)
    logits.sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.head.parameters())
    assert model.classifier.weight.grad is not None
    model.zero_grad(set_to_none=True)
    model.projections(x).square().sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None and not n.startswith("classifier")]
    assert unused == []  # pretraining reaches every encoder and head parameter (DDP/ZeRO need it)


def test_forward_dispatches_by_output_name():
    model = build_model("r18_0.5x_sk0", num_classes=3, small_images=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.projections(x))
        torch.testing.assert_close(model(x, output="logits"), model.logits(x))
        torch.testing.assert_close(model(x, "features"), model.features(x))


# ------------------------------------------------------------------ state dict, devices, precision


def test_state_dict_round_trip():
    a = _randomise_bn_(build_model("r50_0.5x_sk1", num_classes=10, small_images=True)).eval()
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    torch.manual_seed(1)
    b = build_model("r50_0.5x_sk1", num_classes=10, small_images=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(a.projections(x), b.projections(x))
        buffer.seek(0)
        b.load_state_dict(torch.load(buffer, weights_only=True))
        torch.testing.assert_close(b.projections(x), a.projections(x), rtol=0, atol=0)
        torch.testing.assert_close(b.logits(x), a.logits(x), rtol=0, atol=0)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert "head.layers.2.bn.bias" not in a.state_dict()  # last head BN has gamma only


def test_batch_norms_are_standard_and_convertible():
    model = build_model("r50_0.5x_sk1", device="meta")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in norms)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert all(
        type(m) is nn.SyncBatchNorm
        for m in synced.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )
    assert synced.head.layers[2].bn.bias is None


def test_real_forward_at_224():
    """A real ResNet-50 1x+SK (SK convs, ResNet-D shortcuts, 3-conv stem) at 224 px, batch 1;
    the 795M-parameter r152_3x_sk1 is checked on the meta device below (real: see README)."""
    model = build_model("r50_1x_sk1").eval()
    with torch.no_grad():
        maps = model.encoder.stage_outputs(torch.randn(1, 3, 224, 224))
    assert {k: tuple(v.shape) for k, v in maps.items()} == _expected_stage_shapes("r50_1x_sk1", 1, 224)
    assert torch.isfinite(maps["layer4"]).all()


def test_biggest_model_on_meta_at_224():
    """Eval mode: in training mode a batch of 1 has one value per channel in the SK fuse BN."""
    model = build_model("r152_3x_sk1", device="meta").eval()
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert _count(model.encoder) == EXACT_COUNTS["r152_3x_sk1"]
    x = torch.empty(1, 3, 224, 224, device="meta")
    assert model.projections(x).shape == (1, 128)
    assert model.logits(x).shape == (1, 1000)


# Relative (Frobenius) error against fp32, eval mode, random BN statistics, 64 px. bf16 keeps 8
# significant bits (rounding 2^-9 = 0.2%) and ~50 layers add their errors: measured at most 7.2e-3
# (r18_1x, r50_0.5x+SK, r50_1x+SK, 3 seeds each, 2-core CPU, 2026-12-03), so 3e-2 is the bound.
# channels_last in fp32 only reorders the conv sums: measured at most 8.3e-7.
BF16_REL_TOL = 3e-2
CHANNELS_LAST_REL_TOL = 1e-5


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("name", ["r50_0.5x_sk1", "r18_1x_sk0"])
def test_channels_last_and_bf16_autocast_agree_with_fp32(name):
    model = _randomise_bn_(build_model(name, num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.projections(x), model.logits(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.to(memory_format=torch.channels_last)
        for out, ref in zip((model_cl.projections(x_cl), model_cl.logits(x_cl)), reference, strict=True):
            assert _rel_err(out, ref) < CHANNELS_LAST_REL_TOL
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs = model_cl.projections(x_cl), model_cl.logits(x_cl)
        for out, ref in zip(outs, reference, strict=True):
            assert out.dtype == torch.bfloat16
            assert _rel_err(out, ref) < BF16_REL_TOL


# ------------------------------------------------------------------------------------- bad input


def test_bad_names_list_the_known_ones():
    for bad in ["resnet50", "r200_1x_sk0", "r50_1x_sk2", "r50_0x_sk0", "r50_x_sk0", 50]:
        with pytest.raises(ValueError, match="r152_3x_sk1") as info:
            build_model(bad, device="meta")
        assert "unknown model name" in str(info.value)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ft_proj_selector=4), "ft_proj_selector=4 is impossible with proj_layers=3"),
        (dict(ft_proj_selector=2, proj_layers=1), "impossible"),
        (dict(ft_proj_selector=-1), "impossible"),
        (dict(proj_dim=0), "proj_dim"),
        (dict(num_classes=-1), "num_classes"),
        (dict(sk_ratio=0.0), "sk_ratio"),
    ],
)
def test_impossible_combinations_fail_at_build(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model("r18_1x_sk1", device="meta", **kwargs)


def test_bad_inputs_name_the_problem():
    model = build_model("r18_0.5x_sk0", num_classes=0, small_images=True)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(2, 1, 8, 8\)"):
        model.projections(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\)"):
        model.features(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="floating-point images, got dtype torch.uint8"):
        model.features(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="output must be one of"):
        model(torch.randn(1, 3, 8, 8), output="embeddings")
    with pytest.raises(RuntimeError, match="num_classes=0"):
        model.logits(torch.randn(1, 3, 8, 8))
