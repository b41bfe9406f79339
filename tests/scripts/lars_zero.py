"""Launched by tests/test_lars_zero.py through `deepspeed --num_gpus 2`: K LARS steps on a small
SK-ResNet under real DeepSpeed engines with ZeRO stages 1, 2 and 3, once with flashclr's LARS and
its ZeRO layout and once with the naive per-tensor reference LARS over DeepSpeed's flat partitions.
Rank 0 writes the final weights of each run to OUT_DIR/{lars,naive}_stage{s}.pt, and those of
bf16 runs of a small MLP through DeepSpeed's two bf16 wrappers to OUT_DIR/bf16_stage{0,1}.pt. With
``--train DATA OUT`` it then runs train.py's pretraining (LARS, configs/ds_zero2.json) for 3 steps
into OUT/whole, and for 2 steps then resumed to 3 into OUT/resumed.

The test imports `build_model`, `batch` and the constants from here to compute the unsharded
single-process reference with the same initial weights and data.
"""

import argparse
import os

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K_STEPS, LR, WEIGHT_DECAY, MICRO_BATCH, WORLD = 5, 0.5, 1e-2, 4, 2


class Objective(nn.Module):
    """Wraps the model so that the engine's forward returns a scalar loss on the projections."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.projections(x).square().mean()


def build_model() -> nn.Module:
    from flashclr.core.models import build_model as build

    torch.manual_seed(0)
    return Objective(
        build("r18_0.125x_sk1", num_classes=0, proj_dim=16, small_images=True, min_sk_channels=4)
    )


def batch(rank: int, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(MICRO_BATCH, 3, 16, 16, generator=gen)


def build_mlp() -> nn.Module:
    """A model without batch norm for the bf16 runs (CPU batch norm refuses bf16 activations)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 33), nn.ReLU(), nn.Linear(33, 7))


class MlpObjective(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.to(self.model[1].weight.dtype)).float().square().mean()


# Layout variants: several stage-3 sub-groups per param group (one all-reduce each), and stage 2
# with DeepSpeed's round-robin reordering of each group's parameters.
VARIANTS = {
    "3_subgroups": (3, {"sub_group_size": 20000}),
    "2_round_robin": (2, {"round_robin_gradients": True}),
}


def _config(stage: int, **zero_extra) -> dict:
    zero = {"stage": stage, **zero_extra}
    if stage == 3:
        zero["stage3_param_persistence_threshold"] = 0  # shard every parameter, small ones included
    return {
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,  # DeepSpeed >= 0.19.3 would clip at 1.0 by default
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def _run_bf16(stage: int) -> dict:
    """bf16 weights: stage 0 goes through DeepSpeed's FP16_UnfusedOptimizer (per-parameter fp32
    copies), stage 1 with fp32 gradient accumulation through its BF16_Optimizer (flat partitions)."""
    import deepspeed

    from flashclr.core.lars import LARS, lars_param_groups
    from flashclr.core.lars_zero import attach_zero_layout

    model = MlpObjective(build_mlp())
    config = {**_config(stage), "bf16": {"enabled": True}}
    if stage == 1:  # DeepSpeed picks BF16_Optimizer for ZeRO 1 only with fp32 gradient accumulation
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    optimizer = LARS(lars_param_groups(model, WEIGHT_DECAY), lr=LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    attach_zero_layout(engine)
    rank = torch.distributed.get_rank()
    for step in range(K_STEPS):
        loss = engine(batch(rank, step))
        engine.backward(loss)
        engine.step()
    weights = {name: p.detach().float().clone() for name, p in engine.module.named_parameters()}
    engine.destroy()
    return {"wrapper": type(engine.optimizer).__name__, "weights": weights}


def _run(stage: int, naive: bool, **zero_extra) -> dict:
    import deepspeed

    from flashclr.core.lars import LARS, lars_param_groups
    from flashclr.core.lars_zero import attach_zero_layout
    from tests.references_lars import ReferenceLARS

    model = build_model()
    groups = lars_param_groups(model, WEIGHT_DECAY)
    optimizer = ReferenceLARS(groups, lr=LR) if naive else LARS(groups, lr=LR)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=_config(stage, **zero_extra))
    if not naive:
        attach_zero_layout(engine)
    rank = torch.distributed.get_rank()
    for step in range(K_STEPS):
        loss = engine(batch(rank, step))
        engine.backward(loss)
        engine.step()
    params = list(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params], enabled=stage == 3):
        weights = {name: p.detach().clone() for name, p in params}
    engine.destroy()
    return weights


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--stages", default="1,2,3")
    parser.add_argument("--train", nargs=2, metavar=("DATA", "OUT"), help="also run train.py on ZeRO 2")
    parser.add_argument("--local_rank", type=int, default=-1)  # injected by the deepspeed launcher
    args = parser.parse_args()

    import deepspeed

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")
    for stage in map(int, args.stages.split(",")):
        for naive in (False, True):
            weights = _run(stage, naive)
            if torch.distributed.get_rank() == 0:
                name = f"{'naive' if naive else 'lars'}_stage{stage}.pt"
                torch.save(weights, os.path.join(args.out_dir, name))
    for name, (stage, zero_extra) in VARIANTS.items():
        weights = _run(stage, False, **zero_extra)
        if torch.distributed.get_rank() == 0:
            torch.save(weights, os.path.join(args.out_dir, f"lars_stage{name}.pt"))
    for stage in (0, 1):
        result = _run_bf16(stage)
        if torch.distributed.get_rank() == 0:
            torch.save(result, os.path.join(args.out_dir, f"bf16_stage{stage}.pt"))
    if args.train:
        import train

        data, out = args.train
        common = ["--stage", "pretrain", "--data", data, "--batch-size", "8", "--epochs", "0.05"]
        common += ["--model", "r18_0.25x_sk1", "--small-images", "--image-size", "16", "--no-progress"]
        common += [
            "--optimizer",
            "lars",
            "--deepspeed_config",
            os.path.join(REPO_ROOT, "configs", "ds_zero2.json"),
        ]
        # An uninterrupted run, and one stopped after 2 steps and resumed from its ZeRO checkpoint.
        train.main([*common, "--out", f"{out}/whole", "--max-steps", "3"])
        train.main([*common, "--out", f"{out}/resumed", "--max-steps", "2", "--save-every", "1"])
        train.main([*common, "--out", f"{out}/resumed", "--max-steps", "3", "--resume"])
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
