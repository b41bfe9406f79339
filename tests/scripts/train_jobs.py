"""Launched by tests/test_train.py through ``deepspeed --num_gpus N``: several train.py runs in one
launch (the launcher and the DeepSpeed import cost more than a few tiny training steps).

``--jobs FILE`` is a JSON list; each item is either
- ``["train", [argv...]]``: ``train.main(argv)``, exactly what ``python train.py argv`` runs;
  a ``NonFiniteLoss`` is recorded in ``OUT/nonfinite.txt`` instead of stopping the launch;
- ``["first_step", OUT]``: one pretraining step of train.py's objective, LARS and DeepSpeed
  engine on a fixed synthetic global batch of 8 views-pairs, each rank taking its slice; rank 0
  saves the mean loss and the updated model state to ``OUT/first_step_world{W}.pt``.
"""

import argparse
import json
import os

import torch

from flashclr.core.config import TrainConfig

# DeepSpeed and train.py are imported inside the functions: tests import the two helpers below
# for their single-process reference without paying for those imports.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRST_STEP_BATCH = 8


def first_step_config(out: str) -> TrainConfig:
    """Shared with the single-process reference in tests/test_train.py."""
    return TrainConfig(
        stage="pretrain",
        data="unused",
        out=out,
        model="r18_0.25x_sk0",
        small_images=True,
        batch_size=FIRST_STEP_BATCH,
        lr=2.0,
    )


def first_step_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(FIRST_STEP_BATCH, 3, 16, 16, generator=g), torch.randn(
        FIRST_STEP_BATCH, 3, 16, 16, generator=g
    )


def first_step(out: str) -> None:
    import deepspeed
    import torch.distributed as dist

    import train
    from flashclr.core.config import deepspeed_config
    from flashclr.core.stages import build_stage

    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = first_step_config(out)
    built = build_stage(cfg, 0, world, torch.device("cpu"))
    ds = deepspeed_config(os.path.join(REPO_ROOT, "configs", "ds_zero0.json"), cfg, world, False)
    engine, *_ = deepspeed.initialize(
        model=built.objective, optimizer=train.build_optimizer(cfg, built.objective, cfg.lr), config=ds
    )
    view1, view2 = first_step_batch()
    rows = slice(rank * FIRST_STEP_BATCH // world, (rank + 1) * FIRST_STEP_BATCH // world)
    loss = engine(view1[rows], view2[rows])
    mean = train.global_mean(loss)
    engine.backward(loss)
    engine.step()
    if rank == 0:
        state = {k: v.detach().clone() for k, v in built.model.state_dict().items()}
        torch.save({"loss": mean, "state": state}, os.path.join(out, f"first_step_world{world}.pt"))
    dist.barrier()


def main() -> None:
    import deepspeed
    import torch.distributed as dist

    import train

    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--local_rank", type=int, default=-1)
    args = parser.parse_args()
    with open(args.jobs, encoding="utf-8") as f:
        jobs = json.load(f)
    for kind, arg in jobs:
        if kind == "first_step":
            if not dist.is_initialized():
                deepspeed.init_distributed(dist_backend="gloo")
            first_step(arg)
            continue
        try:
            train.main(arg)
        except train.NonFiniteLoss as e:
            out = arg[arg.index("--out") + 1]
            with open(os.path.join(out, "nonfinite.txt"), "w", encoding="utf-8") as f:
                f.write(str(e))


if __name__ == "__main__":
    main()
