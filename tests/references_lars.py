"""Hand-written per-parameter LARS, the reference the fused and sharded versions are tested and
benchmarked against. It follows google-research/simclr ``lars_optimizer.py`` (classic momentum):

    u = g + wd * w   (unless excluded);  trust = eta * ||w|| / ||u||  (1 if a norm is 0 or excluded)
    v = momentum * v + lr * trust * u;  w = w - v
"""

from __future__ import annotations

import torch


def lars_reference_step(
    w: torch.Tensor,
    g: torch.Tensor,
    v: torch.Tensor,
    lr: float,
    momentum: float,
    eta: float,
    weight_decay: float,
    exclude: bool,
) -> None:
    """One LARS update of one whole parameter ``w`` (in place on ``w`` and ``v``)."""
    u = g if exclude or weight_decay == 0 else g + weight_decay * w
    trust = 1.0
    if not exclude:
        w_norm, u_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(u)
        if w_norm > 0 and u_norm > 0:
            trust = eta * w_norm / u_norm
    v.mul_(momentum).add_(lr * trust * u)
    w.sub_(v)


class ReferenceLARS(torch.optim.Optimizer):
    """The same update as a plain optimizer with a Python loop over parameters.

    Given DeepSpeed's flat partitions instead of parameters it computes its norms over whatever
    tensor it is handed: the naive combination the ZeRO tests show to be wrong.
    """

    def __init__(self, params, lr, momentum=0.9, trust_coefficient=1e-3, weight_decay=0.0):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            trust_coefficient=trust_coefficient,
            weight_decay=weight_decay,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                lars_reference_step(
                    p,
                    p.grad,
                    state["momentum_buffer"],
                    group["lr"],
                    group["momentum"],
                    group["trust_coefficient"],
                    group["weight_decay"],
                    group["lars_exclude"],
                )
