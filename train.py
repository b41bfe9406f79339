"""Train the SimCLR v2 stages on DeepSpeed: pretrain, fine-tune, distill, linear evaluation.

Launch it the way DeepSpeed programs are launched (``--batch-size`` is the GLOBAL batch):

    # 1. contrastive pretraining (LARS, lr 0.075*sqrt(B), tau 0.1, wd 1e-6, global batch norm)
    deepspeed --num_gpus 8 train.py --stage pretrain --model r50_1x_sk1 --data /imagenet \\
        --out runs/pre --batch-size 4096 --epochs 100 --warmup-epochs 10 \\
        --deepspeed_config configs/ds_zero0.json
    # 2. fine-tune on 10% of the labels, classifier on head layer 1 (LARS, lr 0.005*sqrt(B), no wd)
    deepspeed --num_gpus 8 train.py --stage finetune --init runs/pre --data /imagenet \\
        --label-fraction 0.1 --out runs/ft --batch-size 1024 --epochs 30 \\
        --deepspeed_config configs/ds_zero0.json
    # 3. distill the fine-tuned teacher (a ZeRO-3 engine: its parameters sharded over all ranks)
    deepspeed --hostfile hosts train.py --stage distill --teacher runs/ft --model r50_1x_sk0 \\
        --data /imagenet --out runs/distill --batch-size 1024 --epochs 100 \\
        --deepspeed_config configs/ds_zero0.json
    # 4. linear evaluation of frozen features ('--init random' for a random encoder)
    deepspeed --num_gpus 8 train.py --stage linear-eval --init runs/pre --data /imagenet \\
        --out runs/lin --batch-size 4096 --epochs 90 --deepspeed_config configs/ds_zero0.json

``python train.py ...`` runs one process. Without a GPU, ``deepspeed --num_gpus 2 train.py ...``
runs 2 CPU ranks on gloo in fp32 (the configs' ``"bf16": {"enabled": "auto"}`` turns bf16 on only
with CUDA). ``--resume`` continues a run from the last complete checkpoint in ``--out``. Each run
directory ends with ``model.safetensors`` + ``model.json`` (load with
``flashclr.core.checkpoint.load_exported``, no DeepSpeed needed), ``metrics.jsonl``,
``metrics.png`` and, for stages with a classifier, ``eval.json``.
``make demo`` runs all of it on the embedded digits.

The file reads top to bottom: arguments, build, loop, save.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import resource
import socket
import sys
import time
import traceback

import deepspeed
import torch
import torch.distributed as dist
from tqdm import tqdm

from flashclr.core import checkpoint, peers
from flashclr.core.config import ConfigError, TrainConfig, deepspeed_config, parse_args, validate
from flashclr.core.lars import LARS, lars_param_groups
from flashclr.core.lars_zero import attach_zero_layout
from flashclr.core.metrics import MetricsLog, plot_metrics
from flashclr.core.schedule import base_learning_rate, learning_rate
from flashclr.core.stages import (
    IGNORE_INDEX,
    build_stage,
    build_teacher,
    teacher_ds_config,
    teacher_parameter_bytes,
)
from flashclr.dataio import build_loader, label_subset, num_classes

DEFAULT_DS_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "ds_zero0.json")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the run stops without saving."""


# ---- arguments ---------------------------------------------------------------------------------


def configure(argv: list[str] | None) -> tuple[TrainConfig, dict]:
    """Parse and check everything before any process group, model or data pipeline exists."""
    cfg, ds_path = parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ds = deepspeed_config(ds_path or DEFAULT_DS_CONFIG, cfg, world, torch.cuda.is_available())
    validate(cfg, world, ds["zero_optimization"]["stage"])
    return cfg, ds


# ---- build -------------------------------------------------------------------------------------


def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """Process group with a collective timeout: if a rank dies, the others stop instead of hanging."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        # `python train.py ...` without a launcher: one process (DeepSpeed would try MPI discovery).
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
    deepspeed.init_distributed(
        dist_backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=cfg.collective_timeout)
    )
    rank, world = dist.get_rank(), dist.get_world_size()
    # The launcher names the wrong rank when one dies (see core/peers.py): the survivors do it.
    peers.record_peers()
    peers.exit_on_sigterm(rank)
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    elif "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one machine share its cores; more threads than cores makes OpenMP spin (5x slower
        # measured with 2 threads per rank on a busy 2-core machine).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_SIZE", "1"))))
    return rank, world, torch.device("cuda") if cuda else torch.device("cpu")


def train_source(cfg: TrainConfig, classes: int):
    """The training images of the stage: all of train/, or its labelled subset; for distillation
    with labelled rows, every image with unlabelled ones marked by label + classes (see step_loss)."""
    root = os.path.join(cfg.data, "train")
    labelled = cfg.label_fraction is not None or cfg.label_file is not None
    if cfg.stage in ("finetune", "linear-eval") and labelled:
        return label_subset(root, fraction=cfg.label_fraction, file=cfg.label_file, seed=cfg.seed)
    if cfg.stage == "distill" and cfg.alpha < 1.0 and labelled:
        subset = label_subset(root, fraction=cfg.label_fraction, file=cfg.label_file, seed=cfg.seed)
        keep = {p for p, _ in subset}
        every = label_subset(root, fraction=1.0)
        return [(p, y if p in keep else y + classes) for p, y in every]
    return root


def build_optimizer(cfg: TrainConfig, objective: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    name, wd = cfg.stage_default("optimizer"), cfg.stage_default("weight_decay")
    if name == "lars":
        return LARS(lars_param_groups(objective, wd), lr=lr, momentum=cfg.momentum, trust_coefficient=1e-3)
    params = [p for p in objective.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=wd)
    return torch.optim.AdamW(params, lr=lr, weight_decay=wd)


def agreed_batches(n: int, device: torch.device, op=dist.ReduceOp.MIN) -> int:
    """Batches per epoch that every rank has (shards may differ by one batch); ``op=MAX``: the most
    any rank has. Tensors live on ``device``: NCCL reduces CUDA tensors only."""
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=op)
    return int(t)


# ---- loop --------------------------------------------------------------------------------------


def step_loss(cfg, engine, teacher, batch, dtype, classes) -> torch.Tensor:
    """One forward through the engine (and the frozen teacher): this rank's loss."""
    if cfg.stage == "pretrain":
        view1, view2, _ = batch
        return engine(view1.to(dtype), view2.to(dtype))
    images, labels = batch
    if cfg.stage != "distill":
        return engine(images.to(dtype), labels)
    with torch.no_grad():
        teacher_logits = teacher(images.to(dtype), output="logits")  # (B, C)
    targets = None
    if cfg.alpha < 1.0:
        targets = torch.where(labels < classes, labels, torch.full_like(labels, IGNORE_INDEX))
    return engine(images.to(dtype), teacher_logits, targets)


def client_state(cfg: TrainConfig, step: int) -> dict:
    """What a checkpoint carries besides weights and optimizer state: the step (which fixes the
    schedule and the data position) and the configuration (checked on --resume)."""
    return {"step": step, "config": cfg.to_dict()}


def resume(cfg: TrainConfig, engine, ckpt_dir: str) -> int:
    """Load the last complete checkpoint; refuse one of another model, batch or stage."""
    state = checkpoint.load(engine, ckpt_dir)
    for key in ("model", "batch_size", "stage"):
        theirs, ours = state["config"][key], getattr(cfg, key)
        if theirs != ours:
            raise ConfigError(
                f"--resume: the checkpoint in {cfg.out!r} has {key}={theirs!r}, this run {ours!r}"
            )
    return state["step"]


def global_mean(x: torch.Tensor) -> float:
    x = x.detach().float().clone()
    dist.all_reduce(x)
    return x.item() / dist.get_world_size()


@torch.no_grad()
def evaluate(cfg, model, device, dtype, world) -> dict:
    """Top-1 accuracy over every validation image (each rank scores its shard)."""
    loader = build_loader(
        "eval",
        os.path.join(cfg.data, "val"),
        batch_size=cfg.batch_size // world,
        image_size=cfg.image_size,
        device=device.type,
        seed=cfg.seed,
        num_threads=cfg.num_threads,
    )
    # Shards may differ by a batch; under ZeRO-3 every forward is collective (parameter gathers),
    # so a rank with fewer batches runs uncounted forwards until all ranks ran the same number.
    most = agreed_batches(len(loader), device, dist.ReduceOp.MAX)
    model.eval()
    counts = torch.zeros(2, dtype=torch.float64, device=device)
    for images, labels in loader:
        pred = model.logits(images.to(dtype)).argmax(dim=1)
        counts += torch.stack([(pred == labels).sum(), torch.tensor(labels.numel(), device=device)])
    for _ in range(most - len(loader)):
        model.logits(torch.zeros(1, 3, cfg.image_size, cfg.image_size, dtype=dtype, device=device))
    dist.all_reduce(counts)
    model.train()
    return {"val_top1": counts[0].item() / counts[1].item(), "val_images": int(counts[1].item())}


def report_teacher_memory(teacher, out: str, rank: int, world: int) -> None:
    """Write OUT/teacher_memory.json: the bytes of teacher parameters each rank holds, and each
    rank's peak resident memory so far (teacher built, student not yet trained)."""
    held, whole = teacher_parameter_bytes(teacher.module)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    device = next(teacher.module.parameters()).device
    gathered = [torch.zeros(2, dtype=torch.float64, device=device) for _ in range(world)]
    dist.all_gather(
        gathered, torch.tensor([float(held), float(peak_rss)], dtype=torch.float64, device=device)
    )
    if rank == 0:
        per_rank = [int(t[0]) for t in gathered]
        memory = {"world_size": world, "teacher_bytes": whole, "per_rank_bytes": per_rank}
        memory["per_rank_peak_rss_bytes"] = [int(t[1]) for t in gathered]
        with open(os.path.join(out, "teacher_memory.json"), "w", encoding="utf-8") as f:
            json.dump(memory, f)
        print(f"teacher parameters: {whole} bytes in all; held per rank: {per_rank}")


def main(argv: list[str] | None = None) -> None:
    # arguments
    cfg, ds_config = configure(argv)

    # build
    rank, world, device = init_distributed(cfg)
    dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
    classes = num_classes(os.path.join(cfg.data, "train"))
    teacher = None
    if cfg.stage == "distill":
        teacher, _ = build_teacher(cfg.teacher, teacher_ds_config(ds_config), device)
    loader = build_loader(
        {"pretrain": "pretrain", "distill": "distill"}.get(cfg.stage, "finetune"),
        train_source(cfg, classes),
        batch_size=cfg.batch_size // world,
        image_size=cfg.image_size,
        device=device.type,
        seed=cfg.seed,
        num_threads=cfg.num_threads,
        color_strength=cfg.color_strength,
    )
    built = build_stage(cfg, classes, world, device)
    steps_per_epoch = agreed_batches(len(loader), device)
    if steps_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the training set of {cfg.data!r}")
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    stop = min(total_steps, cfg.max_steps or total_steps)
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    rule, coef = cfg.stage_default("lr_rule"), cfg.stage_default("lr_coef")
    base_lr = cfg.lr or base_learning_rate(rule, coef, cfg.batch_size)
    optimizer = build_optimizer(cfg, built.objective, base_lr)
    engine, *_ = deepspeed.initialize(model=built.objective, optimizer=optimizer, config=ds_config)
    if isinstance(optimizer, LARS):
        attach_zero_layout(engine)  # per-parameter trust ratios over ZeRO's flat partitions
    ckpt_dir = os.path.join(cfg.out, "checkpoints")
    step = resume(cfg, engine, ckpt_dir) if cfg.resume else 0
    log = MetricsLog(os.path.join(cfg.out, "metrics.jsonl"), enabled=rank == 0)
    if rank == 0:
        with open(os.path.join(cfg.out, "config.json"), "w", encoding="utf-8") as f:
            json.dump({**cfg.to_dict(), "world_size": world, "deepspeed": ds_config}, f, indent=1)
    if teacher is not None:
        report_teacher_memory(teacher, cfg.out, rank, world)

    # loop
    loader.set_epoch(step // steps_per_epoch, step % steps_per_epoch)
    bar = tqdm(total=stop, initial=step, unit="step", disable=rank != 0 or cfg.no_progress)
    engine.train()
    while step < stop:
        tick = time.perf_counter()
        for batch in loader:
            lr = learning_rate(step, total_steps, warmup, base_lr)
            for group in engine.optimizer.param_groups:
                group["lr"] = lr
            loss = step_loss(cfg, engine, teacher, batch, dtype, classes)
            mean_loss = global_mean(loss)
            if not math.isfinite(mean_loss):
                raise NonFiniteLoss(
                    f"loss is {mean_loss} at step {step + 1} (epoch {step // steps_per_epoch}); "
                    f"stopped without saving: the last good checkpoint in {ckpt_dir!r} is intact"
                )
            engine.backward(loss)
            engine.step()
            step += 1
            now = time.perf_counter()
            images_per_s, tick = cfg.batch_size / (now - tick), now
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.3g}", img_s=f"{images_per_s:.0f}")
            if step % cfg.log_every == 0 or step == stop:
                epoch = step / steps_per_epoch
                log.write(
                    {"step": step, "epoch": epoch, "loss": mean_loss, "lr": lr, "images_per_s": images_per_s}
                )
            if cfg.save_every and step % cfg.save_every == 0 and step < stop:
                checkpoint.save(engine, ckpt_dir, step, client_state(cfg, step), cfg.keep_checkpoints)
            if step >= stop:
                break
    bar.close()

    # save
    checkpoint.save(engine, ckpt_dir, step, client_state(cfg, step), cfg.keep_checkpoints)
    results = {"stage": cfg.stage, "step": step}
    if built.num_classes:
        results.update(evaluate(cfg, built.model, device, dtype, world))
    # ZeRO-3 keeps each rank's slice only; its module hooks gather for forwards, not for state_dict.
    zero3 = ds_config["zero_optimization"]["stage"] == 3
    with deepspeed.zero.GatheredParameters(list(built.model.parameters()), enabled=zero3):
        checkpoint.export(built.model, cfg.out, results)
    if rank == 0:
        if built.num_classes:
            log.write({"step": step, "val_top1": results["val_top1"]})
        with open(os.path.join(cfg.out, "eval.json"), "w", encoding="utf-8") as f:
            json.dump(results, f)
        title = f"{cfg.stage} {cfg.model} ({world} ranks)"
        plot_metrics(log.path, os.path.join(cfg.out, "metrics.png"), title)
        print(f"{cfg.stage} done: {json.dumps(results)} -> {cfg.out}")
    dist.barrier()


def run() -> int:
    """Exit codes: 0 done, 2 bad configuration, 3 non-finite loss, 1 anything else, 143 stopped by
    SIGTERM. Every failure prints its rank and which ranks on its host are gone, so the rank that
    failed is named even when it was killed and the launcher names another."""
    rank = os.environ.get("RANK", "0")
    try:
        main()
    except ConfigError as e:
        if rank == "0":
            print(f"train.py: configuration error: {e}", file=sys.stderr, flush=True)
        return 2
    except NonFiniteLoss as e:
        print(f"train.py [rank {rank}]: {e}", file=sys.stderr, flush=True)
        return 3
    except Exception:
        detail = f"{traceback.format_exc()}({peers.describe_gone_peers()})"
        print(f"train.py [rank {rank}] failed:\n{detail}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
