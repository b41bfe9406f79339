"""The four SimCLR v2 stages as objectives that a DeepSpeed engine trains, and their builders.

Each objective is an ``nn.Module`` whose ``forward`` returns this rank's loss (a 0-dim tensor), so
the whole computation runs inside the engine (ZeRO-3 gathers parameters through module hooks):

- :class:`PretrainObjective`: ``(view1, view2)`` -> NT-Xent over the global batch (both views go
  through the network as one batch, so batch norm sees all 2N images, as in the official code).
- :class:`ClassifierObjective`: ``(images, labels)`` -> cross-entropy of the classifier on head
  layer ``ft_proj_selector`` (fine-tuning), or on frozen encoder features (linear evaluation).
- :class:`DistillObjective`: ``(images, teacher_logits, labels)`` -> ``distill_ce``.

Gradient convention across ranks: each rank's loss is the mean over its own rows, the NT-Xent
gather and the synchronised batch norm return to each rank the gradient of the SUM of all ranks'
losses, and DeepSpeed averages gradients over ranks: together, the gradient of the global mean,
equal to a single process on the whole batch.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from flashclr.kernels.distill_ce import distill_ce
from flashclr.kernels.nt_xent import nt_xent

from . import resnet
from .checkpoint import build_from_meta, read_weights
from .config import ConfigError, TrainConfig, read_export_meta
from .memory_bank import MomentumMemory
from .models import SimCLRModel, build_model
from .syncbn import convert_sync_batchnorm

IGNORE_INDEX = -100


class PretrainObjective(nn.Module):
    """NT-Xent on the projections of two views; optional MoCo-style memory of negatives."""

    def __init__(self, model: SimCLRModel, temperature: float, memory: MomentumMemory | None = None):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.memory = memory

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        """view1, view2: (N, 3, S, S) this rank's views -> 0-dim loss (mean over its 2N anchors)."""
        negatives = None
        if self.memory is not None:
            self.memory.update_network(self.model)
            # A copy: enqueue() below overwrites the queue before backward reads the negatives.
            negatives = self.memory.negatives().clone() if int(self.memory.filled) else None
        z = self.model.projections(torch.cat([view1, view2]))  # (2N, proj_dim)
        z1, z2 = z.float().chunk(2)
        loss = nt_xent(z1, z2, self.temperature, negatives=negatives, gather_distributed=True)
        if self.memory is not None:
            self.memory.enqueue(torch.cat([view1, view2]))
        return loss


class ClassifierObjective(nn.Module):
    """Cross-entropy of ``model.logits``; ``frozen_encoder``: only the classifier learns, on
    features of the encoder kept in eval mode (linear evaluation)."""

    def __init__(self, model: SimCLRModel, frozen_encoder: bool = False):
        super().__init__()
        self.model = model
        self.frozen_encoder = frozen_encoder
        if frozen_encoder:
            for p in model.encoder.parameters():
                p.requires_grad_(False)
            for p in model.head.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_encoder:
            self.model.encoder.eval()  # frozen batch-norm statistics too
            self.model.head.eval()
        return self

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S), labels (B,) -> 0-dim mean cross-entropy."""
        if self.frozen_encoder:
            with torch.no_grad():
                feats = self.model.features(images)  # (B, feature_dim)
            logits = self.model.classifier(feats)
        else:
            logits = self.model.logits(images)  # (B, C)
        return F.cross_entropy(logits.float(), labels)


class DistillObjective(nn.Module):
    """``distill_ce(student logits, teacher logits, tau, labels, alpha)``; rows with label
    ``IGNORE_INDEX`` (unlabelled) get the teacher term only."""

    def __init__(self, model: SimCLRModel, temperature: float, alpha: float):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.alpha = alpha

    def forward(self, images: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None):
        """images (B, 3, S, S), teacher_logits (B, C), labels (B,) or None -> 0-dim loss."""
        student = self.model.logits(images).float()  # (B, C)
        return distill_ce(
            student,
            teacher_logits.float(),
            self.temperature,
            labels=labels,
            alpha=self.alpha,
            ignore_index=IGNORE_INDEX,
        )


# ---- builders ---------------------------------------------------------------------------------


@dataclass
class Built:
    """What a stage trains: the objective for the engine, the model inside it (to export and
    evaluate), and the data stage its loader uses."""

    objective: nn.Module
    model: SimCLRModel
    loader_stage: str
    num_classes: int


def _load_init(model: SimCLRModel, run_dir: str, encoder_only: bool = False) -> None:
    """Copy a previous stage's exported weights into ``model``; only the classifier and head
    layers the checkpoint does not have may stay at their initial values."""
    state = read_weights(run_dir, prefix="encoder." if encoder_only else "")
    own = model.state_dict()
    # A pretraining export has no classifier; a fine-tuned one has another task's: not carried over.
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    unexpected = [k for k in state if k not in own]
    if wrong or unexpected:
        raise ConfigError(
            f"--init {run_dir!r} is a checkpoint of another architecture: "
            + "; ".join((wrong + [f"unexpected {k}" for k in unexpected])[:5])
        )
    missing = [k for k in own if k not in state and not k.startswith(("classifier.", "head."))]
    if missing:
        raise ConfigError(f"--init {run_dir!r} lacks {len(missing)} weights of the model, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)


def _sync_bn(model: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    model.to(device)
    return convert_sync_batchnorm(model) if world_size > 1 else model


def build_stage(cfg: TrainConfig, num_classes: int, world_size: int, device: torch.device) -> Built:
    """Model + objective for ``cfg.stage``, weights loaded from ``cfg.init``, batch norm synchronised
    over ``world_size`` ranks."""
    init = cfg.init if cfg.init not in (None, "random") else None
    kwargs = dict(proj_layers=cfg.proj_layers, proj_dim=cfg.proj_dim, small_images=cfg.small_images)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank and every run
    if cfg.stage == "pretrain":
        model = build_model(cfg.model, num_classes=0, ft_proj_selector=cfg.ft_proj_selector, **kwargs)
        if init:
            _load_init(model, init)
        model = _sync_bn(model, world_size, device)
        memory = MomentumMemory(model, cfg.memory_size, cfg.memory_momentum) if cfg.memory_size else None
        return Built(PretrainObjective(model, cfg.stage_default("temperature"), memory), model, "pretrain", 0)
    if cfg.stage == "linear-eval":
        model = build_model(cfg.model, num_classes=num_classes, ft_proj_selector=0, **kwargs)
        if init:
            _load_init(model, init, encoder_only=True)
        model.finetune_head_()  # the probe reads the encoder output; no head
        model.to(device)
        return Built(ClassifierObjective(model, frozen_encoder=True), model, "finetune", num_classes)
    model = build_model(cfg.model, num_classes=num_classes, ft_proj_selector=cfg.ft_proj_selector, **kwargs)
    if init:
        _load_init(model, init)
    model.finetune_head_()
    model = _sync_bn(model, world_size, device)
    if cfg.stage == "finetune":
        return Built(ClassifierObjective(model), model, "finetune", num_classes)
    objective = DistillObjective(model, cfg.stage_default("temperature"), cfg.alpha)
    return Built(objective, model, "distill", num_classes)


# ---- the ZeRO-3 teacher -----------------------------------------------------------------------


def teacher_ds_config(student_config: dict) -> dict:
    """The teacher engine's DeepSpeed config: the student's batch and precision, ZeRO stage 3 with
    every parameter partitioned (persistence threshold 0: by default ZeRO-3 keeps parameters under
    100k elements whole on every rank), no optimizer."""
    keys = (
        "train_batch_size",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "bf16",
        "fp16",
    )
    cfg = {k: student_config[k] for k in keys if k in student_config}
    cfg["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    cfg["steps_per_print"] = student_config.get("steps_per_print", 10**9)
    return cfg


@contextlib.contextmanager
def _no_init_of_partitioned_convs():
    """``resnet.conv_init_`` reads ``weight.shape``, which is empty once ``zero.Init`` has partitioned
    the weight (its shape is in ``ds_shape``). The teacher's weights come from its checkpoint
    anyway, so their random initialisation is skipped while the teacher is built."""
    original = resnet.conv_init_

    def init_unless_partitioned(weight: torch.Tensor) -> None:
        if not hasattr(weight, "ds_shape"):
            original(weight)

    resnet.conv_init_ = init_unless_partitioned
    try:
        yield
    finally:
        resnet.conv_init_ = original


def build_teacher(run_dir: str, ds_config: dict, device: torch.device):
    """The fine-tuned model of ``run_dir`` as a frozen DeepSpeed ZeRO-3 engine (eval mode).

    Built under ``deepspeed.zero.Init``: each parameter is partitioned as its module is created, so
    no rank ever holds the whole teacher. Weights are then loaded one module at a time: the
    module's own parameters are gathered, rank 0 copies them from the safetensors file (read
    lazily, tensor by tensor) and the gather's exit broadcasts and re-partitions them.
    Returns ``(engine, meta)``.
    """
    import deepspeed

    meta = read_export_meta(run_dir, "--teacher")
    with _no_init_of_partitioned_convs(), deepspeed.zero.Init(config_dict_or_path=ds_config):
        teacher = build_from_meta(meta)
    from safetensors import safe_open

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with safe_open(os.path.join(run_dir, "model.safetensors"), framework="pt") as f:
        names = set(f.keys())
        for prefix, module in teacher.named_modules():
            prefix = f"{prefix}." if prefix else ""
            params = list(module.named_parameters(recurse=False))
            with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=0):
                if rank == 0:
                    with torch.no_grad():
                        for name, p in params:
                            p.copy_(f.get_tensor(prefix + name))
            for name, b in module.named_buffers(recurse=False):
                if prefix + name in names:
                    b.copy_(f.get_tensor(prefix + name))
    for p in teacher.parameters():
        p.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=teacher, config=ds_config)
    engine.eval()
    return engine, meta


def teacher_parameter_bytes(teacher: nn.Module) -> tuple[int, int]:
    """(bytes of teacher parameters held by this rank, bytes of the whole teacher)."""
    held = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in teacher.parameters())
    whole = sum(p.ds_numel * p.ds_tensor.element_size() for p in teacher.parameters())
    return held, whole
