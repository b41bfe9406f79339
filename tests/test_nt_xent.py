"""Fused NT-Xent against the float64 reference: loss and both gradients, both backends.

Coverage (chosen to fit the ~150 s budget on 2 cores):
- the tiled torch path: the issue's grid N ∈ {1, 2, 7, 64, 257} × D ∈ {1, 3, 64, 96, 128, 300}
  × τ ∈ {0.05, 0.1, 0.5} in fp32 and N = 1000 on three (D, τ), plus a diagonal sample of the
  grid in bf16, fp16 and float64, the online-maximum path (unnormalised, τ < 0.025), negatives,
  and tiny tiles that force every branch of the symmetric tiling;
- the Triton kernels under the interpreter (slow: ~1e3× the GPU): a diagonal sample of the grid
  covering every N up to 257 (N = 1000 takes 18 s there), every D and τ, across fp32, bf16
  (tiles upcast, see nt_xent.py) and fp16, plus
  negatives, unnormalised, small τ, and the kernels' outputs poisoned with NaN before each launch;
- on a GPU (marked ``gpu``): real bf16/fp16 tensor cores and tf32 with the documented tolerances.
Every case uses grad_output ≠ 1.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from flashclr.kernels import nt_xent_cpu
from flashclr.kernels.nt_xent import nt_xent, nt_xent_triton_backward, nt_xent_triton_forward
from tests.conftest import HAS_CUDA
from tests.references import nt_xent_reference

NS = (1, 2, 7, 64, 257, 1000)
DS = (1, 3, 64, 96, 128, 300)
TAUS = (0.05, 0.1, 0.5)
GRAD_OUT = 0.7

# (loss atol, gradient tolerance relative to the largest reference gradient), per compute path.
# bf16/fp16 round the normalised inputs to 8/11 bits before the dot: s_ij is off by ~|s|·2^-8.
TOL = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (3e-2, 3e-2),
}
# tf32 on the GPU (see the module docstring of nt_xent.py).
TOL_TF32 = (2e-2, 1e-2)


def _inputs(n, d, dtype, device="cpu", scale=1.0):
    z1 = (torch.randn(n, d, device=device) * scale).to(dtype).requires_grad_()
    z2 = (torch.randn(n, d, device=device) * scale).to(dtype).requires_grad_()
    return z1, z2


def _check(z1, z2, tau, backend, tol, normalize=True, negatives=None):
    loss = nt_xent(z1, z2, tau, normalize=normalize, negatives=negatives, backend=backend)
    loss.backward(torch.tensor(GRAD_OUT, dtype=loss.dtype, device=loss.device))
    r1 = z1.detach().cpu().double().requires_grad_()
    r2 = z2.detach().cpu().double().requires_grad_()
    neg = None if negatives is None else negatives.cpu()
    ref = nt_xent_reference(r1, r2, float(tau), normalize, neg)
    (ref * GRAD_OUT).backward()
    assert loss.dtype == z1.dtype and loss.dim() == 0
    loss_tol, grad_tol = tol
    torch.testing.assert_close(loss.detach().cpu().double(), ref.detach(), atol=loss_tol, rtol=0)
    for got, want in ((z1.grad, r1.grad), (z2.grad, r2.grad)):
        assert got is not None and got.dtype == z1.dtype
        # Floor: with N = 1 the loss is identically 0 and the exact gradient is 0.
        atol = grad_tol * max(float(want.abs().max()), 0.05)
        torch.testing.assert_close(got.cpu().double(), want, atol=atol, rtol=0)


# ---------------------------------------------------------------- tiled torch path (CPU)


# The full grid below N = 1000; N = 1000 (float64 reference ~4 s a case here) on three D, every τ.
GRID = list(itertools.product(NS[:-1], DS, TAUS)) + [
    (1000, d, t) for d, t in zip((3, 128, 300), TAUS, strict=True)
]


@pytest.mark.parametrize("n,d,tau", GRID)
def test_torch_path_grid_fp32(n, d, tau):
    _check(*_inputs(n, d, torch.float32), tau, "torch", TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("n,d,tau", [(1, 1, 0.05), (7, 64, 0.1), (257, 96, 0.5), (1000, 300, 0.1)])
def test_torch_path_dtypes(n, d, tau, dtype):
    _check(*_inputs(n, d, dtype), tau, "torch", TOL[dtype])


@pytest.mark.parametrize(
    "n,d,tau,normalize,m",
    [
        (64, 64, 0.1, False, 0),  # online maximum: unnormalised inputs
        (257, 3, 0.01, True, 0),  # online maximum: exp(-2/τ) would underflow
        (7, 96, 0.1, True, 50),  # negatives with the fixed maximum
        (257, 64, 0.01, True, 33),  # negatives with the online maximum
        (2, 128, 0.5, False, 1),
    ],
)
def test_torch_path_paths(n, d, tau, normalize, m):
    negatives = torch.randn(m, d) * 3 if m else None
    z1, z2 = _inputs(n, d, torch.float32, scale=0.5)
    _check(z1, z2, tau, "torch", TOL[torch.float32], normalize=normalize, negatives=negatives)


@pytest.mark.parametrize(
    "normalize,tau,m", [(True, 0.1, 0), (True, 0.1, 9), (False, 0.2, 9), (True, 0.01, 0)]
)
def test_torch_path_small_tiles(monkeypatch, normalize, tau, m):
    """Tiles far smaller than the batch: every off-diagonal/partial-tile branch runs."""
    monkeypatch.setattr(nt_xent_cpu, "_ROW_BLOCK", 16)
    monkeypatch.setattr(nt_xent_cpu, "_TILE_ELEMENTS", 16 * 40)
    negatives = torch.randn(m, 5) if m else None
    z1, z2 = _inputs(101, 5, torch.float32)
    _check(z1, z2, tau, "torch", TOL[torch.float32], normalize=normalize, negatives=negatives)


def test_auto_backend_on_cpu_is_torch_path():
    z1, z2 = _inputs(9, 4, torch.float32)
    auto = nt_xent(z1, z2)
    assert torch.equal(auto, nt_xent(z1, z2, backend="torch"))


def test_temperature_as_tensor():
    z1, z2 = _inputs(9, 4, torch.float32)
    assert torch.allclose(nt_xent(z1, z2, torch.tensor(0.2)), nt_xent(z1, z2, 0.2))


# ---------------------------------------------------------------- Triton kernels

# A diagonal sample of the grid: every N, D and τ at least once, spread over the dtypes.
TRITON_CASES = [
    (1, 1, 0.05, torch.float32),
    (2, 3, 0.1, torch.bfloat16),
    (7, 64, 0.5, torch.float16),
    (64, 96, 0.05, torch.float32),
    (257, 128, 0.1, torch.bfloat16),
    (257, 3, 0.5, torch.float32),
    (7, 300, 0.1, torch.bfloat16),
    (64, 1, 0.5, torch.float16),
    # Just inside the fixed maximum's range (τ ≥ 1/40), where the backward's factored
    # exponentials 2^(t - m/2)·g·2^(m/2 - lse) reach their largest and smallest factors.
    (33, 128, 0.026, torch.float32),
]


@pytest.mark.parametrize("n,d,tau,dtype", TRITON_CASES)
def test_triton_grid_sample(kernel_device, n, d, tau, dtype):
    tol = TOL[dtype] if kernel_device.type == "cpu" or dtype != torch.float32 else TOL_TF32
    _check(*_inputs(n, d, dtype, kernel_device), tau, "triton", tol)


@pytest.mark.parametrize(
    "n,d,tau,normalize,m,dtype",
    [
        (64, 64, 0.1, False, 0, torch.float32),
        (257, 3, 0.01, True, 70, torch.float32),
        (7, 96, 0.1, True, 65, torch.bfloat16),
        (2, 128, 0.5, False, 1, torch.float16),
    ],
)
def test_triton_paths(kernel_device, n, d, tau, normalize, m, dtype):
    negatives = torch.randn(m, d, device=kernel_device) * 3 if m else None
    z1, z2 = _inputs(n, d, dtype, kernel_device, scale=0.5)
    tol = TOL[dtype] if kernel_device.type == "cpu" or dtype != torch.float32 else TOL_TF32
    _check(z1, z2, tau, "triton", tol, normalize=normalize, negatives=negatives)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_huge_grad_output_at_the_smallest_fixed_max_tau(kernel_device, backend):
    """A dynamic fp16 loss scaler can hand the loss grad_output up to 2^24. At τ just above 1/40,
    for an anchor whose every other column points the opposite way (lse = log 3 - 1/τ), the
    backward's per-row factor g·e^(a - lse) must stay finite until the small exponential brings
    it back: split at a = 1/τ it is about 4e39 here, at a = 1/(2τ) about 2e31."""
    device = kernel_device if backend == "triton" else torch.device("cpu")
    tau, grad_out = 0.026, 2.0**24
    v = torch.randn(1, 8)
    noise = torch.randn(4, 8) * 1e-3
    z = torch.cat([v, -v, -v, -v]) + noise  # row 0 against three opposite rows
    z1, z2 = (z[:2].to(device).requires_grad_(), z[2:].to(device).requires_grad_())
    loss = nt_xent(z1, z2, tau, backend=backend)
    loss.backward(torch.tensor(grad_out, device=device))
    r1 = z1.detach().cpu().double().requires_grad_()
    r2 = z2.detach().cpu().double().requires_grad_()
    (nt_xent_reference(r1, r2, tau) * grad_out).backward()
    for got, want in ((z1.grad, r1.grad), (z2.grad, r2.grad)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.cpu().double(), want, atol=1e-3 * float(want.abs().max()), rtol=0)


def _reference_lse_and_acc(z, neg, inv_tau, g):
    """float64 row logsumexps and the backward accumulator Σ_j W_ij z_j + Σ_m g_i P_im n_m."""
    z, g = z.double(), g.double()
    cols = z if neg is None else torch.cat([z, neg.double()])
    s = z @ cols.T * inv_tau
    s.fill_diagonal_(float("-inf"))
    lse = torch.logsumexp(s, dim=1)
    p = torch.exp(s - lse[:, None])  # (C, C + M)
    c = z.shape[0]
    w = g[:, None] * p[:, :c] + (g[:, None] * p[:, :c]).T
    acc = w @ z
    if neg is not None:
        acc += (g[:, None] * p[:, c:]) @ neg.double()
    return lse, acc


@pytest.mark.parametrize("fixed_max", [True, False])
@pytest.mark.parametrize("m", [0, 19])
def test_triton_launch_helpers_write_every_output(kernel_device, fixed_max, m):
    """The kernels' outputs start as NaN: any element the kernels skip fails the comparison."""
    c, d, inv_tau = 150, 40, 7.0  # 150 rows: two row blocks, the second partial; D=40: masked
    z = torch.nn.functional.normalize(torch.randn(c, d, device=kernel_device), dim=1)
    neg = torch.nn.functional.normalize(torch.randn(m, d, device=kernel_device), dim=1) if m else None
    g = torch.rand(c, device=kernel_device) + 0.5
    lse_ref, acc_ref = _reference_lse_and_acc(z.cpu(), None if neg is None else neg.cpu(), inv_tau, g.cpu())
    lse = torch.full((c,), float("nan"), device=kernel_device)
    nt_xent_triton_forward(z, 0, c, neg, inv_tau, fixed_max, out=lse)
    acc = torch.full((c, d), float("nan"), device=kernel_device)
    nt_xent_triton_backward(z, 0, c, neg, inv_tau, lse_ref.float().to(kernel_device), g, fixed_max, out=acc)
    tol = 1e-5 if kernel_device.type == "cpu" else 1e-2
    torch.testing.assert_close(lse.cpu().double(), lse_ref, atol=tol * 10, rtol=0)
    torch.testing.assert_close(acc.cpu().double(), acc_ref, atol=tol * float(acc_ref.abs().max()), rtol=0)


def test_triton_rows_slice(kernel_device):
    """Anchors as a slice of the columns (the distributed layout): lse of exactly those rows."""
    c, d, inv_tau = 90, 17, 3.0
    z = torch.nn.functional.normalize(torch.randn(c, d, device=kernel_device), dim=1)
    g = torch.rand(c, device=kernel_device)
    lse_ref, acc_ref = _reference_lse_and_acc(z.cpu(), None, inv_tau, g.cpu())
    lse = torch.full((30,), float("nan"), device=kernel_device)
    nt_xent_triton_forward(z, 30, 30, None, inv_tau, True, out=lse)
    acc = torch.full((30, d), float("nan"), device=kernel_device)
    nt_xent_triton_backward(z, 30, 30, None, inv_tau, lse_ref.float().to(kernel_device), g, True, out=acc)
    torch.testing.assert_close(lse.cpu().double(), lse_ref[30:60], atol=1e-4, rtol=0)
    torch.testing.assert_close(acc.cpu().double(), acc_ref[30:60], atol=1e-4, rtol=0)


def test_torch_path_rows_slice():
    c, d, inv_tau = 90, 17, 3.0
    z = torch.nn.functional.normalize(torch.randn(c, d), dim=1)
    g = torch.rand(c)
    lse_ref, acc_ref = _reference_lse_and_acc(z, None, inv_tau, g)
    for fixed_max in (True, False):
        lse = nt_xent_cpu.nt_xent_cpu_forward(z, 30, 30, None, inv_tau, fixed_max)
        acc = nt_xent_cpu.nt_xent_cpu_backward(z, 30, 30, None, inv_tau, lse_ref.float(), g, fixed_max)
        torch.testing.assert_close(lse.double(), lse_ref[30:60], atol=1e-5, rtol=0)
        torch.testing.assert_close(acc.double(), acc_ref[30:60], atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,d,tau", [(1, 1, 0.1), (257, 96, 0.05), (1000, 300, 0.5), (4096, 128, 0.1)])
def test_triton_on_gpu(n, d, tau, dtype):
    tol = TOL_TF32 if dtype == torch.float32 else TOL[dtype]
    negatives = torch.randn(100, d, device="cuda")
    _check(*_inputs(n, d, dtype, "cuda"), tau, "triton", tol, negatives=negatives)


@pytest.mark.gpu
def test_auto_backend_on_gpu_matches_triton():
    z1, z2 = _inputs(100, 64, torch.bfloat16, "cuda")
    assert torch.equal(nt_xent(z1, z2), nt_xent(z1, z2, backend="triton"))


# ---------------------------------------------------------------- validation


F64 = torch.zeros(4, 8, dtype=torch.float64)


def _bad(**kw):
    args = {"z1": torch.randn(4, 8), "z2": torch.randn(4, 8), "temperature": 0.1}
    args.update(kw)
    z1, z2, tau = args.pop("z1"), args.pop("z2"), args.pop("temperature")
    return lambda: nt_xent(z1, z2, tau, **args)


@pytest.mark.parametrize(
    "call,match",
    [
        (_bad(z2=torch.randn(5, 8)), "same shape"),
        (_bad(z2=torch.randn(4, 9)), "same shape"),
        (_bad(z1=torch.randn(4), z2=torch.randn(4)), "2-D"),
        (_bad(z1=torch.randn(0, 8), z2=torch.randn(0, 8)), "empty"),
        (_bad(z1=torch.randn(4, 0), z2=torch.randn(4, 0)), "empty"),
        (_bad(z1=torch.ones(4, 8, dtype=torch.long)), "floating"),
        (_bad(z2=torch.randn(4, 8, dtype=torch.float64)), "same dtype"),
        (_bad(temperature=0.0), "temperature"),
        (_bad(temperature=-1.0), "temperature"),
        (_bad(temperature=float("inf")), "temperature"),
        (_bad(temperature=float("nan")), "temperature"),
        (_bad(temperature=torch.tensor([0.1, 0.2])), "0-dim"),
        (_bad(temperature="0.1"), "temperature"),
        (_bad(negatives=torch.randn(3, 7)), "D = 7"),
        (_bad(negatives=torch.randn(3)), "negatives"),
        (_bad(negatives=torch.ones(3, 8, dtype=torch.long)), "negatives"),
        (_bad(backend="cuda"), "backend"),
        (
            _bad(
                z1=torch.randn(4, 8, dtype=torch.float64),
                z2=torch.randn(4, 8, dtype=torch.float64),
                backend="triton",
            ),
            "triton",
        ),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device for a second device")
def test_different_devices_raise():
    with pytest.raises(ValueError, match="devices"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8, device="cuda"))
    with pytest.raises(ValueError, match="negatives are on"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), negatives=torch.randn(2, 8, device="cuda"))


def test_different_devices_raise_without_gpu():
    """The meta device stands in for a second device on a CPU-only machine."""
    with pytest.raises(ValueError, match="different devices"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8, device="meta"))
    with pytest.raises(ValueError, match="negatives are on"):
        nt_xent(torch.randn(4, 8), torch.randn(4, 8), negatives=torch.randn(2, 8, device="meta"))


# ---------------------------------------------------------------- nn.Module


def test_ntxent_loss_module_matches_function():
    from flashclr.core.losses import NTXentLoss

    z1, z2 = _inputs(6, 5, torch.float32)
    assert torch.equal(NTXentLoss(0.2)(z1, z2), nt_xent(z1, z2, 0.2))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(0.0)
    with pytest.raises(ValueError, match="memory_bank_size"):
        NTXentLoss(memory_bank_size=-1)


def test_ntxent_loss_memory_bank_is_a_fifo_of_negatives():
    from flashclr.core.losses import NTXentLoss

    criterion = NTXentLoss(0.1, memory_bank_size=10)
    batches = [_inputs(3, 4, torch.float32) for _ in range(3)]
    seen = []
    for z1, z2 in batches:
        loss = criterion(z1, z2)
        negatives = torch.cat(seen)[-10:] if seen else None
        ref = nt_xent_reference(z1.detach().double(), z2.detach().double(), 0.1, True, negatives)
        torch.testing.assert_close(loss.double(), ref, atol=1e-5, rtol=0)
        seen.append(torch.nn.functional.normalize(torch.cat([z1, z2]).detach(), dim=1))
    assert int(criterion.filled) == 10 and criterion.queue.shape == (10, 4)
    criterion.eval()  # evaluation does not push
    criterion(*batches[0])
    assert int(criterion.head) == (3 * 6) % 10
