"""NT-Xent with gather_distributed on 2 gloo processes against one process on the whole batch.

Each rank holds half of a global batch and the same linear layer (a stand-in for the encoder).
The loss averaged over ranks must equal the single-process loss; the layer's gradient averaged
over ranks (what data-parallel training does) must equal the single-process gradient; and each
rank's gradient of its own embeddings is the sum over every rank's loss, i.e. world_size times
the single-process gradient of the mean loss.
"""

from __future__ import annotations

import pytest
import torch

from flashclr.kernels import distributed
from flashclr.kernels.nt_xent import nt_xent
from tests.distributed import run_distributed

WORLD = 2
N_LOCAL, D_IN, D = 5, 6, 7


def _global_batch(with_negatives: bool):
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(WORLD * N_LOCAL, D_IN, generator=gen)
    x2 = torch.randn(WORLD * N_LOCAL, D_IN, generator=gen)
    weight = torch.randn(D_IN, D, generator=gen)
    negatives = torch.randn(11, D, generator=gen) if with_negatives else None
    return x1, x2, weight, negatives


def _loss_and_grads(x1, x2, weight, negatives, backend, tau):
    w = weight.clone().requires_grad_()
    z1 = (x1 @ w).detach().requires_grad_()
    z2 = (x2 @ w).detach().requires_grad_()
    loss = nt_xent(z1, z2, tau, negatives=negatives, gather_distributed=True, backend=backend)
    loss.backward()
    # Chain the embedding gradients into the layer, as autograd would through the encoder.
    w_grad = torch.autograd.grad((x1 @ w, x2 @ w), w, (z1.grad, z2.grad))[0]
    return loss.detach(), z1.grad, z2.grad, w_grad


CASES = [("torch", False, 0.1), ("torch", True, 0.5), ("torch", False, 0.01), ("triton", True, 0.1)]


def _as_lists(tensors):
    # Plain lists cross the process boundary reliably; tensors go through torch's fd sharing,
    # which fails here when the sending rank has already exited.
    return [t.tolist() for t in tensors]


def _rank_fn(rank, world_size):
    """Every check of this file in one spawn (starting 2 processes costs ~20 s on 2 cores)."""
    assert distributed.rank() == rank and distributed.world_size() == world_size
    out = {"cases": []}
    for backend, with_negatives, tau in CASES:
        x1, x2, weight, negatives = _global_batch(with_negatives)
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        out["cases"].append(_as_lists(_loss_and_grads(x1[rows], x2[rows], weight, negatives, backend, tau)))
    # all_gather_with_grad: each rank weights every slot differently; the owner gets the sum.
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered = distributed.all_gather_with_grad(x)  # (world * 2, 3)
    weights = torch.arange(gathered.numel(), dtype=torch.float32).reshape(gathered.shape) * (rank + 1)
    (gathered * weights).sum().backward()
    out["gather"] = _as_lists((gathered.detach(), x.grad))
    # Different N on the two ranks: a clear error on every rank, before any work.
    z = torch.randn(3 + rank, 4)
    try:
        nt_xent(z, z, gather_distributed=True)
        out["mismatch"] = "no error"
    except ValueError as err:
        out["mismatch"] = str(err)
    return out


@pytest.fixture(scope="module")
def rank_results():
    return run_distributed(_rank_fn, WORLD)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{b}-neg{n}-tau{t}" for b, n, t in CASES])
def test_gathered_loss_and_gradients_match_one_process(rank_results, case):
    backend, with_negatives, tau = CASES[case]
    x1, x2, weight, negatives = _global_batch(with_negatives)
    # One process: gather_distributed is a no-op without a process group.
    loss, g1, g2, w_grad = _loss_and_grads(x1, x2, weight, negatives, "torch", tau)
    results = [[torch.tensor(v) for v in r["cases"][case]] for r in rank_results]
    losses = torch.stack([r[0] for r in results])
    torch.testing.assert_close(losses.mean(), loss, atol=1e-5, rtol=1e-5)
    # Data-parallel averaging of the shared layer's gradient.
    torch.testing.assert_close(torch.stack([r[3] for r in results]).mean(0), w_grad, atol=1e-5, rtol=1e-4)
    # Each owner got the sum over ranks: WORLD × the gradient of the mean loss.
    for rank, (_, r1, r2, _) in enumerate(results):
        rows = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        torch.testing.assert_close(r1 / WORLD, g1[rows], atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(r2 / WORLD, g2[rows], atol=1e-6, rtol=1e-4)


def test_all_gather_with_grad_sums_gradients_to_the_owner(rank_results):
    base = torch.arange(WORLD * 2 * 3, dtype=torch.float32).reshape(WORLD * 2, 3)
    total = base * sum(r + 1 for r in range(WORLD))  # Σ over ranks of each rank's weights
    expected = torch.cat([torch.full((2, 3), float(r + 1)) for r in range(WORLD)])
    for rank, result in enumerate(rank_results):
        gathered, grad = (torch.tensor(v) for v in result["gather"])
        assert torch.equal(gathered, expected)
        torch.testing.assert_close(grad, total[2 * rank : 2 * rank + 2])


def test_mismatched_batch_sizes_raise_on_every_rank(rank_results):
    for result in rank_results:
        assert "same (N, D) on every rank" in result["mismatch"]


def test_helpers_in_one_process():
    x = torch.randn(3, 4, requires_grad=True)
    assert distributed.rank() == 0 and distributed.world_size() == 1
    assert distributed.all_gather_rows(x) is x and distributed.all_gather_with_grad(x) is x
