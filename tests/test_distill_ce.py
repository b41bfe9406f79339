"""flashclr.kernels.distill_ce against the float64 reference, on both backends.

The Triton backend runs on the GPU when there is one, else on CPU tensors under the interpreter
(tests/conftest.py); the torch backend is the CPU path. Inputs are rounded to the tested dtype
first and the reference takes the rounded values in float64, so the tolerances only cover fp32
accumulation and the rounding of the stored gradient.
"""

import pytest
import torch

from flashclr.core.losses import DistillationLoss
from flashclr.kernels import distill_ce
from tests.references import distill_ce_reference

# (B, C): one class, odd small sizes, ImageNet's 1000 in one block, rows over the 4096-class
# single-block limit (chunked, uneven last chunk), and the 21843 classes of ImageNet-21k.
SHAPES = [(1, 1), (3, 10), (3, 1000), (3, 5000), (1, 21843)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative tolerances: fp32 accumulation for the loss; the gradient is rounded to the logits dtype.
LOSS_RTOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}
TEMPERATURES = [0.1, 1.0, 4.0]
ALPHAS = [0.0, 0.5, 1.0]
# fp32 on single-block shapes takes every (τ, α). Other cases take a Latin square, one row per
# dtype, so the three dtypes together still cover all nine pairs: the dtype only changes loads and
# stores, and the interpreter needs ~0.5 s per 5000-class row.
SWEEP = [(t, a) for t in TEMPERATURES for a in ALPHAS]
LATIN = {d: [(t, ALPHAS[(i + k) % 3]) for i, t in enumerate(TEMPERATURES)] for k, d in enumerate(DTYPES)}


@pytest.fixture(params=["triton", "torch"])
def backend_device(request, kernel_device):
    """(backend, device): Triton where kernels run, the torch path on the CPU."""
    return request.param, kernel_device if request.param == "triton" else torch.device("cpu")


def _inputs(n_rows, n_cols, dtype, device, scale=3.0, ignored=True):
    student = (torch.randn(n_rows, n_cols) * scale).to(dtype).to(device)
    teacher = (torch.randn(n_rows, n_cols) * scale).to(dtype).to(device)
    labels = torch.randint(0, n_cols, (n_rows,))
    if ignored:
        labels[::2] = -100  # a mixed batch: every other row unlabelled
    return student, teacher, labels.to(device)


def _check(student, teacher, temperature, labels, alpha, backend, grad_output=1.0):
    """Loss and ∂(grad_output · loss)/∂student against the float64 reference."""
    dtype = student.dtype
    s = student.clone().requires_grad_()
    loss = distill_ce(s, teacher, temperature, labels=labels, alpha=alpha, backend=backend)
    (loss * grad_output).backward()
    s64 = student.double().requires_grad_()
    ref = distill_ce_reference(s64, teacher, temperature, labels, alpha)
    (ref * grad_output).backward()
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=LOSS_RTOL[dtype], atol=1e-5)
    assert s.grad.dtype == dtype
    scale = s64.grad.abs().max().item()
    torch.testing.assert_close(
        s.grad.double(), s64.grad, rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype] * max(scale, 1e-30)
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_reference(backend_device, shape, dtype):
    backend, device = backend_device
    student, teacher, labels = _inputs(*shape, dtype, device)
    full = shape[1] <= 4096 and dtype == torch.float32
    for temperature, alpha in SWEEP if full else LATIN[dtype]:
        _check(student, teacher, temperature, labels, alpha, backend)
    if shape[1] <= 4096:  # every row labelled, and pure distillation without labels
        _check(student, teacher, 1.0, labels.clamp(min=0), 0.5, backend)
        _check(student, teacher, 0.1, None, 1.0, backend)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_grad_output_not_one(backend_device, alpha):
    backend, device = backend_device
    for dtype in DTYPES:  # fp16 takes the fp32-stored path: scaled, then cast
        student, teacher, labels = _inputs(3, 1500, dtype, device)
        _check(student, teacher, 4.0, labels, alpha, backend, grad_output=-2.5)


def test_extreme_logits_low_temperature(backend_device):
    """τ = 0.1 with logits of magnitude 100: exponents reach ±2000, fine only with the maxima."""
    backend, device = backend_device
    student = (torch.rand(3, 5000) * 200 - 100).to(device)
    teacher = (torch.rand(3, 5000) * 200 - 100).to(device)
    teacher[1] = student[1]  # student == teacher: soft loss = teacher entropy, close to 0
    labels = torch.tensor([7, -100, 4999], device=device)
    for alpha in ALPHAS:
        _check(student, teacher, 0.1, labels, alpha, backend)


def test_fp16_gradient_survives_loss_scaling(backend_device):
    """fp16 logits with a GradScaler-like grad_output: ∂L/∂s ~ 1/(B·C) lies below fp16's normal
    range, so it must be scaled before it is rounded to fp16 (elementwise relative check)."""
    backend, device = backend_device
    student, teacher, _ = _inputs(4, 1000, torch.float16, device)
    s = student.clone().requires_grad_()
    (distill_ce(s, teacher, 4.0, backend=backend) * 2.0**16).backward()
    s64 = student.double().requires_grad_()
    (distill_ce_reference(s64, teacher, 4.0) * 2.0**16).backward()
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=2e-3, atol=1e-6)


def test_teacher_gets_no_gradient(backend_device):
    backend, device = backend_device
    student, teacher, labels = _inputs(4, 300, torch.float32, device)
    student.requires_grad_()
    teacher.requires_grad_()
    distill_ce(student, teacher, 2.0, labels=labels, alpha=0.5, backend=backend).backward()
    assert teacher.grad is None
    assert student.grad is not None and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", [(5, 1000), (3, 5000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_poisoned_outputs(backend_device, shape, alpha, monkeypatch):
    """Every buffer from torch.empty starts as NaN: an element the kernel leaves unwritten fails."""
    backend, device = backend_device
    real_empty = torch.empty
    allocated = []

    def poisoned_empty(*args, **kwargs):
        out = real_empty(*args, **kwargs)
        if out.is_floating_point():
            out.fill_(float("nan"))
        allocated.append(tuple(out.shape))
        return out

    student, teacher, labels = _inputs(*shape, torch.float32, device)
    monkeypatch.setattr(torch, "empty", poisoned_empty)
    _check(student, teacher, 0.5, labels, alpha, backend)
    assert shape in allocated and (shape[0],) in allocated, "outputs no longer come from torch.empty"


def test_averaging_over_all_rows(backend_device):
    """Both terms are divided by B, not the hard term by the number of labelled rows: a batch's
    loss is the mean of its halves' losses, and a batch without labels has a zero hard term."""
    backend, device = backend_device
    student, teacher, labels = _inputs(8, 50, torch.float32, device)
    labels[:3] = -100
    labels[3:] = torch.arange(5, device=device)
    s_ref, s = student.clone().requires_grad_(), student.clone().requires_grad_()
    hard = torch.nn.functional.cross_entropy(s_ref[3:], labels[3:], reduction="sum") / 8
    got = distill_ce(s, teacher, labels=labels, alpha=0.0, backend=backend)
    hard.backward()
    got.backward()
    torch.testing.assert_close(got, hard)
    torch.testing.assert_close(s.grad, s_ref.grad)
    halves = [distill_ce(student[i::2], teacher[i::2], 2.0, labels=labels[i::2], alpha=0.3) for i in (0, 1)]
    whole = distill_ce(student, teacher, 2.0, labels=labels, alpha=0.3, backend=backend)
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2)

    s = student.clone().requires_grad_()
    none_labelled = torch.full_like(labels, -100)
    loss = distill_ce(s, teacher, labels=none_labelled, alpha=0.0, backend=backend)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(s.grad) == 0


def test_strided_rows_mixed_dtypes_int32_labels(backend_device):
    """A column slice of a wider tensor (row stride ≠ C), a bf16 teacher with an fp32 student."""
    backend, device = backend_device
    wide = torch.randn(5, 1100, device=device) * 3
    student = wide[:, 50:1050]
    teacher = (torch.randn(5, 1000) * 3).to(torch.bfloat16).to(device)
    labels = torch.tensor([3, -100, 999, 0, 17], dtype=torch.int32, device=device)
    _check(student, teacher, 0.5, labels, 0.5, backend)


def test_without_gradient(backend_device):
    backend, device = backend_device
    student, teacher, labels = _inputs(4, 700, torch.float32, device)
    with torch.no_grad():
        loss = distill_ce(student, teacher, 0.1, labels=labels, alpha=0.5, backend=backend)
    assert not loss.requires_grad
    ref = distill_ce_reference(student, teacher, 0.1, labels, 0.5)
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)


def test_backward_twice_with_retained_graph(backend_device):
    """The stored gradient is scaled out of place, so a retained graph gives the same gradient."""
    backend, device = backend_device
    student, teacher, _ = _inputs(3, 40, torch.float32, device)
    student.requires_grad_()
    loss = distill_ce(student, teacher, 2.0, backend=backend) * 3.0
    first = torch.autograd.grad(loss, student, retain_graph=True)[0]
    second = torch.autograd.grad(loss, student)[0]
    torch.testing.assert_close(first, second)


def test_auto_backend_and_module():
    """ "auto" takes the torch path on CPU tensors; DistillationLoss is the same function."""
    student, teacher, labels = _inputs(6, 333, torch.float32, torch.device("cpu"))
    expected = distill_ce(student, teacher, 4.0, labels=labels, alpha=0.25, backend="torch")
    torch.testing.assert_close(distill_ce(student, teacher, 4.0, labels=labels, alpha=0.25), expected)
    module = DistillationLoss(temperature=torch.tensor(4.0), alpha=0.25)
    torch.testing.assert_close(module(student, teacher, labels), expected)
    assert "temperature=4.0" in repr(module)


def test_temperature_as_tensor():
    student, teacher, _ = _inputs(3, 20, torch.float32, torch.device("cpu"))
    expected = distill_ce(student, teacher, 0.5)
    torch.testing.assert_close(distill_ce(student, teacher, torch.tensor(0.5)), expected)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(teacher=torch.randn(4, 11)), "must both be \\(B, C\\)"),
        (dict(student=torch.randn(4, 10, 1), teacher=torch.randn(4, 10, 1)), "must both be \\(B, C\\)"),
        (dict(student=torch.randint(0, 5, (4, 10))), "student_logits must be float32"),
        (dict(teacher=torch.randn(4, 10, dtype=torch.float64)), "teacher_logits must be float32"),
        (dict(labels=torch.tensor([0, 1, 10, 2]), alpha=0.5), "labels must lie in \\[0, 10\\)"),
        (dict(labels=torch.tensor([0, 1, -1, 2]), alpha=0.5), "got -1"),
        (dict(labels=torch.tensor([0.0, 1.0, 2.0, 3.0]), alpha=0.5), "labels must be an integer tensor"),
        (dict(labels=torch.tensor([0, 1, 2]), alpha=0.5), "labels must have shape \\(4,\\)"),
        (dict(alpha=1.5), "alpha must lie in \\[0, 1\\]"),
        (dict(alpha=-0.1), "alpha must lie in \\[0, 1\\]"),
        (dict(alpha=0.5, labels=None), "labels is None"),
        (dict(temperature=0.0), "temperature must be a finite number > 0"),
        (dict(temperature=-1.0), "temperature must be a finite number > 0"),
        (dict(temperature=torch.tensor([1.0, 2.0])), "temperature must be a scalar"),
        (dict(student=torch.randn(0, 10), teacher=torch.randn(0, 10), labels=None), "empty logits"),
        (dict(backend="cuda"), "backend must be"),
    ],
)
def test_bad_input_raises(change, match):
    args = dict(student=torch.randn(4, 10), teacher=torch.randn(4, 10), temperature=1.0)
    args.update(labels=torch.tensor([0, 1, -100, 9]), alpha=1.0)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        distill_ce(
            args["student"],
            args["teacher"],
            args["temperature"],
            labels=args["labels"],
            alpha=args["alpha"],
            backend=args.get("backend", "auto"),
        )


def test_module_rejects_bad_config():
    with pytest.raises(ValueError, match="temperature"):
        DistillationLoss(temperature=0.0)
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss(alpha=2.0)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(4096, 1000), (512, 21843)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_issue_sizes(shape, dtype):
    """The compiled kernel's real numerics (bf16/fp16 loads, exp2, fp32 reductions) at the issue's
    sizes, with logits of magnitude 100 at τ = 0.1 and a mixed batch."""
    student, teacher, labels = _inputs(*shape, dtype, torch.device("cuda"), scale=40.0)
    for temperature, alpha in [(0.1, 0.5), (1.0, 1.0), (4.0, 0.0)]:
        _check(student, teacher, temperature, labels, alpha, "triton")
