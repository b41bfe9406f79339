"""LARS: the exclusion rule, the foreach and Triton paths against the per-parameter reference,
the fused kernels against float64, and sharded flat tensors (segment layouts) on 2 gloo ranks."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from flashclr.core.lars import LARS, SegmentLayout, default_exclude, lars_param_groups, window_pieces
from flashclr.kernels.lars_update import BLOCK, lars_sumsq, lars_update
from tests.distributed import run_distributed
from tests.references_lars import ReferenceLARS, lars_reference_step

LR, MOMENTUM, ETA = 0.7, 0.9, 1e-3


class _CustomBN(_BatchNorm):
    """A batch norm flashclr does not know, subclassing _BatchNorm (like a custom sync BN)."""

    def _check_input_dim(self, x):
        pass


class _FlaggedNorm(nn.Module):
    is_batchnorm = True

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.shift = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return x * self.weight[:, None, None] + self.shift[:, None, None]


def _small_net():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=True),
        nn.BatchNorm2d(6),
        _CustomBN(6),
        _FlaggedNorm(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 5 * 5, 7),
    )


def test_default_exclude_batch_norm_and_biases():
    net = _small_net()
    adapted, excluded = lars_param_groups(net, weight_decay=1e-6)
    assert adapted == {"params": [net[0].weight, net[6].weight], "weight_decay": 1e-6, "lars_exclude": False}
    ids = {id(p) for p in excluded["params"]}
    expected = [net[0].bias, net[1].weight, net[1].bias, net[2].weight, net[2].bias]
    expected += [net[3].weight, net[3].shift, net[6].bias]
    assert ids == {id(p) for p in expected} and len(excluded["params"]) == len(expected)
    assert excluded["weight_decay"] == 0.0 and excluded["lars_exclude"] is True


def test_exclude_rule_is_overridable_and_empty_groups_dropped():
    net = _small_net()
    groups = lars_param_groups(net, 1e-4, exclude=lambda *a: False)
    assert len(groups) == 1 and len(groups[0]["params"]) == len(list(net.parameters()))
    assert default_exclude("x", nn.Linear(2, 2), "weight", None) is False


def _random_problem(dtype, device):
    """Params of odd sizes in three groups, covering the trust = 1 branches (zero w, zero u)."""
    shapes = [(5, 3, 3, 3), (17,), (1,), (33, 65), (BLOCK + 3,)]
    adapted = [torch.randn(s, dtype=dtype, device=device) for s in shapes]
    no_wd = [torch.zeros(4, 3, dtype=dtype, device=device), torch.randn(9, dtype=dtype, device=device)]
    excluded = [torch.randn(s, dtype=dtype, device=device) for s in [(6,), (2, 3)]]
    groups = [
        {"params": adapted, "weight_decay": 1e-2, "lars_exclude": False},
        {"params": no_wd, "weight_decay": 0.0, "lars_exclude": False},
        {"params": excluded, "weight_decay": 5e-2, "lars_exclude": True},
    ]
    # no_wd[1] gets zero gradients, so its u is zero every step -> trust 1.
    return groups, len(adapted) + 1


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "triton"])
def test_lars_matches_reference_five_steps(fused, kernel_device):
    device = kernel_device if fused else torch.device("cpu")
    groups, zero_grad_index = _random_problem(torch.float32, device)
    ref_groups = [dict(g, params=[p.detach().double().clone() for p in g["params"]]) for g in groups]
    params = [nn.Parameter(p) for g in groups for p in g["params"]]
    it = iter(params)
    opt_groups = [dict(g, params=[next(it) for _ in g["params"]]) for g in groups]
    opt = LARS(opt_groups, lr=LR, momentum=MOMENTUM, trust_coefficient=ETA, fused=fused)
    ref_bufs = [[torch.zeros_like(p) for p in g["params"]] for g in ref_groups]
    for step in range(5):
        for k, (p, rp) in enumerate(zip(params, [p for g in ref_groups for p in g["params"]], strict=True)):
            grad = torch.randn_like(rp) * (0.0 if k == zero_grad_index else 1.0)
            p.grad = grad.to(p.dtype)
            rp.grad = grad
        opt.step()
        for g, bufs in zip(ref_groups, ref_bufs, strict=True):
            for rp, v in zip(g["params"], bufs, strict=True):
                lars_reference_step(rp, rp.grad, v, LR, MOMENTUM, ETA, g["weight_decay"], g["lars_exclude"])
        for p, rp in zip(params, [p for g in ref_groups for p in g["params"]], strict=True):
            torch.testing.assert_close(p.detach().double(), rp, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    # The zero weight stayed zero except for its plain SGD-with-momentum move (trust = 1).
    assert opt.state[params[5]]["momentum_buffer"].abs().sum() > 0


def test_lars_on_sk_resnet_matches_reference_optimizer():
    """SimCLR's groups on a real SK-ResNet, foreach path (the Triton path is covered above; under
    the interpreter a whole model costs tens of seconds)."""
    from flashclr.core.models import build_model

    model = build_model("r18_0.125x_sk1", num_classes=0, proj_dim=16, small_images=True, min_sk_channels=4)
    ref = copy.deepcopy(model)
    opt = LARS(lars_param_groups(model, 1e-3), lr=LR, fused=False)
    ref_opt = ReferenceLARS(lars_param_groups(ref, 1e-3), lr=LR)
    x = torch.randn(6, 3, 16, 16)
    for _ in range(3):
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            m.projections(x).square().mean().backward()
            o.step()
    for (name, p), rp in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, rp, rtol=1e-4, atol=2e-5, msg=name)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "triton"])
def test_group_mixing_fp32_and_bf16(fused, kernel_device):
    device = kernel_device if fused else torch.device("cpu")
    a = nn.Parameter(torch.randn(7, device=device))
    b = nn.Parameter(torch.randn(5, 3, device=device).bfloat16())
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    want = []
    for p in (a, b):
        w, v = p.detach().double().clone(), torch.zeros(p.shape, dtype=torch.float64, device=device)
        lars_reference_step(w, p.grad.double(), v, LR, MOMENTUM, ETA, 1e-2, False)
        want.append(w)
    LARS([a, b], lr=LR, weight_decay=1e-2, fused=fused).step()
    torch.testing.assert_close(a.detach().double(), want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.detach().double(), want[1], rtol=2e-2, atol=2e-2)


def test_state_dict_round_trip_continues_exactly():
    def run(split: bool):
        torch.manual_seed(3)
        net = _small_net()
        opt = LARS(lars_param_groups(net, 1e-2), lr=0.3)
        x = torch.randn(4, 3, 7, 7)
        for step in range(4):
            if split and step == 2:
                state = copy.deepcopy(opt.state_dict())
                opt = LARS(lars_param_groups(net, 1e-2), lr=0.3)
                opt.load_state_dict(state)
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        return [p.detach() for p in net.parameters()]

    for a, b in zip(run(False), run(True), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---- the fused kernels against float64 ------------------------------------------------------

_KERNEL_SIZES = [(1,), (BLOCK - 1,), (BLOCK,), (2 * BLOCK + 5,), (7, 13), (3, 5, 5, 5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lars_sumsq_kernel(dtype, kernel_device):
    ws = [torch.randn(s, device=kernel_device).to(dtype) for s in _KERNEL_SIZES]
    gs = [torch.randn(s, device=kernel_device).to(dtype) for s in _KERNEL_SIZES]
    n_blocks = sum((w.numel() + BLOCK - 1) // BLOCK for w in ws)
    partials = torch.full((n_blocks, 2), float("nan"), device=kernel_device)
    out = lars_sumsq(ws, gs, weight_decay=0.3, partials=partials)
    want = torch.tensor(
        [
            [w.double().square().sum(), (g.double() + 0.3 * w.double()).square().sum()]
            for w, g in zip(ws, gs, strict=True)
        ]
    )
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(out.double().cpu(), want, **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lars_update_kernel(dtype, kernel_device):
    ws = [torch.randn(s, device=kernel_device).to(dtype) for s in _KERNEL_SIZES]
    gs = [torch.randn(s, device=kernel_device).to(dtype) for s in _KERNEL_SIZES]
    vs = [torch.randn(s, device=kernel_device).to(dtype) for s in _KERNEL_SIZES]
    coef = torch.rand(len(ws), device=kernel_device) + 0.5
    want_w, want_v = [], []
    for w, g, v, c in zip(ws, gs, vs, coef.tolist(), strict=True):
        v64 = 0.9 * v.double() + c * (g.double() + 0.1 * w.double())
        want_v.append(v64)
        want_w.append(w.double() - v64)
    lars_update(ws, gs, vs, coef, weight_decay=0.1, momentum=0.9)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for k in range(len(ws)):
        torch.testing.assert_close(vs[k].double(), want_v[k], **tol)
        torch.testing.assert_close(ws[k].double(), want_w[k], **tol)


def test_lars_update_kernel_channels_last(kernel_device):
    """Weights, gradients and momentum in channels_last memory order, as conv weights on GPUs."""
    w, g, v = (
        torch.randn(6, 5, 3, 3, device=kernel_device).to(memory_format=torch.channels_last) for _ in range(3)
    )
    want_v = 0.9 * v.double() + 0.7 * (g.double() + 0.1 * w.double())
    want_w = w.double() - want_v
    sumsq = lars_sumsq([w], [g], weight_decay=0.1)
    torch.testing.assert_close(sumsq[0, 0].double().cpu(), w.double().square().sum().cpu(), rtol=1e-6, atol=0)
    lars_update([w], [g], [v], torch.tensor([0.7], device=kernel_device), weight_decay=0.1, momentum=0.9)
    torch.testing.assert_close(v.double(), want_v, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w.double(), want_w, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="strides"):
        lars_update([w], [g.contiguous()], [v], torch.tensor([0.7], device=kernel_device), 0.1, 0.9)


def test_kernels_reject_bad_input(kernel_device):
    w = torch.randn(4, device=kernel_device)
    with pytest.raises(ValueError, match="grads"):
        lars_sumsq([w], [torch.randn(5, device=kernel_device)], 0.0)
    with pytest.raises(ValueError, match="coef"):
        lars_update([w], [w.clone()], [w.clone()], torch.ones(2, device=kernel_device), 0.0, 0.9)
    with pytest.raises(ValueError, match="dtype"):
        lars_sumsq([w.double()], [w.double()], 0.0)


def test_lars_rejects_bad_hyperparameters_and_unknown_flat_tensors():
    p = nn.Parameter(torch.randn(3))
    for kw, word in [
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"trust_coefficient": 0.0}, "trust"),
    ]:
        with pytest.raises(ValueError, match=word):
            LARS([p], **{"lr": 0.1, **kw})
    opt = LARS([p], lr=0.1)
    stranger = torch.zeros(10, requires_grad=True)
    stranger.grad = torch.ones(10)
    opt.param_groups[0]["params"] = [stranger]  # what DeepSpeed ZeRO does to the groups
    with pytest.raises(RuntimeError, match="attach_zero_layout"):
        opt.step()
    # A same-shaped stand-in (a mixed-precision wrapper's fp32 copy) is a whole parameter.
    copy_ = p.detach().clone().requires_grad_(True)
    copy_.grad = torch.ones(3)
    opt.param_groups[0]["params"] = [copy_]
    opt.step()
    assert not torch.equal(copy_, p)


# ---- sharded flat tensors --------------------------------------------------------------------


def test_attach_zero_layout_refuses_other_optimizers():
    from types import SimpleNamespace

    from flashclr.core.lars_zero import attach_zero_layout

    sgd = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.1)
    with pytest.raises(TypeError, match="not flashclr.core.lars.LARS"):
        attach_zero_layout(SimpleNamespace(optimizer=SimpleNamespace(optimizer=sgd)))


def test_window_pieces_straddling_and_padding():
    spans = [(0, 0, 5), (1, 5, 3), (2, 10, 4)]  # a gap of 2 padding elements at 8..9
    assert window_pieces(spans, 0, 7) == [(-1, 0), (0, 5), (-1, 0), (1, 2), (-1, 0)]
    assert window_pieces(spans, 7, 9) == [(-1, 0), (1, 1), (-1, 2), (2, 4), (-1, 2)]
    layout = SegmentLayout.from_pieces(window_pieces(spans, 7, 9), n_params=3)
    assert layout.sizes == (1, 2, 4, 2) and layout.slots.tolist() == [1, 3, 2, 3] and layout.n_slots == 4


def _flat_problem():
    """Weights and 5 steps of gradients of 4 parameters, laid out in a flat buffer of 2 x 14."""
    gen = torch.Generator().manual_seed(1)
    numels = [5, 12, 1, 6]  # parameter 1 straddles the two halves (14 | 14); 4 padding at the end
    params = [torch.randn(n, generator=gen) for n in numels]
    grads = [[torch.randn(n, generator=gen) for n in numels] for _ in range(5)]
    offsets = [0, 5, 17, 18]
    return params, grads, offsets, 28


def _sharded_flat_run(rank, world_size):
    """Each rank holds half of the flat buffer; one group adapted, one excluded (same data)."""
    params, grads, offsets, total = _flat_problem()
    spans = [(j, o, p.numel()) for j, (o, p) in enumerate(zip(offsets, params, strict=True))]
    half = total // world_size
    start = rank * half

    def flatten(tensors):
        full = torch.zeros(total)
        for o, t in zip(offsets, tensors, strict=True):
            full[o : o + t.numel()] = t
        return full[start : start + half].clone()

    flats = [flatten(params).requires_grad_(True) for _ in range(2)]
    groups = [
        {"params": [f], "weight_decay": 0.05, "lars_exclude": ex}
        for f, ex in zip(flats, (False, True), strict=True)
    ]
    opt = LARS(groups, lr=LR)
    for f in flats:
        opt.register_layout(f, SegmentLayout.from_pieces(window_pieces(spans, start, half), len(params)))
    for step_grads in grads:
        for f in flats:
            f.grad = flatten(step_grads)
        opt.step()
    return [f.detach().tolist() for f in flats]  # plain floats: a shared tensor needs the rank alive


def test_flat_shards_on_two_ranks_match_unsharded():
    halves = run_distributed(_sharded_flat_run, 2)
    for k, exclude in enumerate((False, True)):
        got = torch.tensor(halves[0][k] + halves[1][k])
        params, grads, offsets, total = _flat_problem()
        bufs = [torch.zeros_like(p) for p in params]
        for step_grads in grads:
            for p, g, v in zip(params, step_grads, bufs, strict=True):
                lars_reference_step(p, g, v, LR, MOMENTUM, ETA, 0.05, exclude)
        for o, p in zip(offsets, params, strict=True):
            torch.testing.assert_close(got[o : o + p.numel()], p, rtol=1e-5, atol=1e-7)
        assert got[24:].abs().max() == 0  # padding untouched
