"""Configuration of a training stage: one dataclass, its command line, and the checks that run
before any work.

``TrainConfig`` holds every option of ``train.py``; each field's ``metadata["help"]`` is its
``--flag`` help. Options left at ``None`` take the stage's SimCLR v2 default from
:data:`STAGE_DEFAULTS` (learning-rate rule, coefficient, weight decay, temperature). :func:`validate`
raises :class:`ConfigError` naming the bad option before any process group, model or data is built
beyond what the check itself needs (a directory listing, a small JSON file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field

from .models import parse_name
from .schedule import LR_RULES

STAGES = ("pretrain", "finetune", "distill", "linear-eval")
OPTIMIZERS = ("lars", "sgd", "adamw")

# Per stage: (optimizer, lr rule, lr coefficient, weight decay, temperature).
# pretrain: paper section 4 (LARS, 0.075 * sqrt(B), wd 1e-6, tau 0.1); finetune: LARS,
# 0.005 * sqrt(B), no weight decay; distill: the pretraining recipe with the distillation
# temperature 1; linear-eval: SimCLR's 0.1 * B / 256 without weight decay.
STAGE_DEFAULTS: dict[str, dict] = {
    "pretrain": dict(optimizer="lars", lr_rule="sqrt", lr_coef=0.075, weight_decay=1e-6, temperature=0.1),
    "finetune": dict(optimizer="lars", lr_rule="sqrt", lr_coef=0.005, weight_decay=0.0, temperature=1.0),
    "distill": dict(optimizer="lars", lr_rule="sqrt", lr_coef=0.075, weight_decay=1e-6, temperature=1.0),
    "linear-eval": dict(optimizer="lars", lr_rule="linear", lr_coef=0.1, weight_decay=0.0, temperature=1.0),
}


class ConfigError(ValueError):
    """A bad option or input, found before training starts."""


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    stage: str = _opt(None, "pretrain | finetune | distill | linear-eval", choices=STAGES, required=True)
    data: str = _opt(None, "dataset root holding train/ and val/ ImageFolder trees", required=True)
    out: str = _opt(None, "run directory: checkpoints, metrics, plot, exported model", required=True)
    model: str | None = _opt(None, "r{depth}_{width}x_sk{0|1}; default: the --init checkpoint's model")
    init: str | None = _opt(
        None,
        "run directory of the previous stage to start from (its stem and head sizes are used), "
        "or 'random' (finetune, linear-eval)",
    )
    teacher: str | None = _opt(None, "distill: run directory of the fine-tuned teacher")
    epochs: float = _opt(1.0, "training length in epochs (fractions allowed)")
    max_steps: int | None = _opt(None, "stop after N optimizer steps (the schedule still spans --epochs)")
    batch_size: int = _opt(256, "GLOBAL batch size, split evenly over the ranks")
    image_size: int = _opt(224, "crop side in pixels")
    small_images: bool = _opt(False, "3x3 stride-1 stem without max-pool, for 32-px images")
    proj_layers: int = _opt(3, "projection head layers")
    proj_dim: int = _opt(128, "projection output width")
    ft_proj_selector: int = _opt(1, "head layer the classifier reads (0 = encoder output)")
    optimizer: str | None = _opt(None, "lars | sgd | adamw (stage default: lars)", choices=OPTIMIZERS)
    lr: float | None = _opt(None, "base learning rate; default: --lr-coef scaled by --lr-rule")
    lr_rule: str | None = _opt(None, "sqrt: coef*sqrt(B); linear: coef*B/256", choices=LR_RULES)
    lr_coef: float | None = _opt(None, "coefficient of --lr-rule (stage default)")
    warmup_epochs: float = _opt(0.0, "linear warm-up length in epochs, then cosine decay")
    weight_decay: float | None = _opt(None, "weight decay (pretrain 1e-6, finetune 0)")
    momentum: float = _opt(0.9, "optimizer momentum")
    temperature: float | None = _opt(None, "NT-Xent (pretrain: 0.1) or distillation (1) temperature")
    memory_size: int = _opt(0, "pretrain: MoCo-style memory of negatives (0 = off)")
    memory_momentum: float = _opt(0.999, "pretrain: momentum encoder decay when --memory-size > 0")
    label_fraction: float | None = _opt(None, "finetune/linear-eval: fraction of train labels (e.g. 0.1)")
    label_file: str | None = _opt(None, "finetune/linear-eval: file listing the labelled images")
    alpha: float = _opt(1.0, "distill: weight of the teacher term; 1 - alpha on labelled rows")
    zero_stage: int | None = _opt(None, "override the DeepSpeed config's ZeRO stage")
    save_every: int = _opt(0, "checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _opt(2, "checkpoints kept on disk (older ones are deleted)")
    resume: bool = _opt(False, "continue from the last complete checkpoint in --out")
    seed: int = _opt(0, "seed of initialisation and data order")
    num_threads: int = _opt(2, "data pipeline threads per rank")
    color_strength: float = _opt(1.0, "pretrain: colour-jitter strength s")
    log_every: int = _opt(1, "metrics line every N steps")
    collective_timeout: float = _opt(60.0, "seconds before a collective gives up on a dead rank")
    no_progress: bool = _opt(False, "no tqdm bar")

    def stage_default(self, name: str):
        """The option if set, else the stage's default from :data:`STAGE_DEFAULTS`."""
        value = getattr(self, name)
        return STAGE_DEFAULTS[self.stage][name] if value is None else value

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_parser() -> argparse.ArgumentParser:
    """argparse for :class:`TrainConfig` (``--batch-size`` for ``batch_size``), plus DeepSpeed's
    ``--deepspeed``/``--deepspeed_config`` and the launcher's ``--local_rank``."""
    import deepspeed  # imported here: validation in tests needs no DeepSpeed

    parser = argparse.ArgumentParser(description="SimCLR v2 stages on DeepSpeed", allow_abbrev=False)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        if f.type == "bool":
            parser.add_argument(flag, action="store_true", help=meta["help"])
            continue
        kind = {"int": int, "float": float}.get(f.type.split(" |")[0], str)
        parser.add_argument(flag, type=kind, default=f.default, **meta)
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    deepspeed.add_config_arguments(parser)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, str | None]:
    """Command line -> (config, DeepSpeed config path or None)."""
    args = vars(build_parser().parse_args(argv))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in args.items() if k in names}), args.get("deepspeed_config")


# ---- run directories --------------------------------------------------------------------------

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_META = "model.json"


def read_export_meta(run_dir: str, option: str) -> dict:
    """The ``model.json`` of a finished stage's run directory; ConfigError if it is not one."""
    path = os.path.join(run_dir, EXPORT_META)
    if not os.path.isdir(run_dir):
        raise ConfigError(f"{option} {run_dir!r}: no such directory")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(run_dir, EXPORT_WEIGHTS))):
        raise ConfigError(
            f"{option} {run_dir!r}: missing checkpoint ({EXPORT_META} and {EXPORT_WEIGHTS} are "
            "written when a stage finishes)"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _check_image_folder(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f"--data: missing {what} data: {path!r} is not a directory (expected ImageFolder)")
    if not any(e.is_dir() for e in os.scandir(path)):
        raise ConfigError(f"--data: {what} data {path!r} has no class folders")


# ---- validation -------------------------------------------------------------------------------


def validate(cfg: TrainConfig, world_size: int, zero_stage: int) -> TrainConfig:
    """Check ``cfg`` for ``world_size`` ranks and ZeRO stage ``zero_stage``; fill ``cfg.model`` from
    the ``--init`` checkpoint when omitted. Raises :class:`ConfigError`; returns ``cfg``."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"--stage: unknown stage {cfg.stage!r}; choose one of {', '.join(STAGES)}")
    if not cfg.data or not cfg.out:
        raise ConfigError("--data and --out are required")
    if cfg.batch_size < 1 or cfg.batch_size % world_size:
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is not divisible by the {world_size} ranks "
            "(it is the global batch)"
        )
    if cfg.epochs <= 0 or (cfg.max_steps is not None and cfg.max_steps < 1):
        raise ConfigError(f"--epochs must be > 0 and --max-steps >= 1, got {cfg.epochs}, {cfg.max_steps}")
    _check_image_folder(os.path.join(cfg.data, "train"), "train")
    if cfg.stage != "pretrain":
        _check_image_folder(os.path.join(cfg.data, "val"), "val")

    init_meta = None
    needs_init = cfg.stage in ("finetune", "linear-eval")
    if needs_init and cfg.init is None:
        raise ConfigError(
            f"--stage {cfg.stage} needs --init: the previous stage's run directory "
            "(or 'random' for a baseline)"
        )
    if cfg.init is not None and cfg.init != "random":
        init_meta = read_export_meta(cfg.init, "--init")
        if cfg.model is None:
            cfg.model = init_meta["name"]
    if cfg.model is None:
        raise ConfigError("--model is required (or --init, whose model it then takes)")
    try:
        canonical = parse_name(cfg.model)
    except ValueError as e:
        raise ConfigError(f"--model: {e}") from None
    if init_meta is not None and parse_name(init_meta["name"]) != canonical:
        raise ConfigError(
            f"--init {cfg.init!r} is a checkpoint of another architecture: {init_meta['name']}, "
            f"but --model is {cfg.model}"
        )
    if init_meta is not None:
        # The stem and the head are part of the checkpoint's architecture too.
        cfg.small_images = bool(init_meta["small_images"])
        cfg.proj_layers, cfg.proj_dim = init_meta["proj_layers"], init_meta["proj_dim"]
    if cfg.stage == "distill":
        if cfg.teacher is None:
            raise ConfigError("--stage distill needs --teacher: the fine-tuned teacher's run directory")
        teacher = read_export_meta(cfg.teacher, "--teacher")
        if not teacher.get("num_classes"):
            raise ConfigError(f"--teacher {cfg.teacher!r} has no classifier: fine-tune it first")
        classes = sum(e.is_dir() for e in os.scandir(os.path.join(cfg.data, "train")))
        if teacher["num_classes"] != classes:
            raise ConfigError(
                f"--teacher {cfg.teacher!r} predicts {teacher['num_classes']} classes "
                f"but --data has {classes}"
            )
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"--alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.stage in ("finetune", "linear-eval") or (cfg.stage == "distill" and cfg.alpha < 1.0):
        if cfg.label_fraction is not None and not 0.0 < cfg.label_fraction <= 1.0:
            raise ConfigError(f"--label-fraction must be in (0, 1], got {cfg.label_fraction}")
        if cfg.label_file is not None and not os.path.isfile(cfg.label_file):
            raise ConfigError(f"--label-file {cfg.label_file!r}: no such file")
    if cfg.memory_size < 0 or not 0.0 <= cfg.memory_momentum < 1.0:
        raise ConfigError(
            f"--memory-size must be >= 0 and --memory-momentum in [0, 1), got {cfg.memory_size}, "
            f"{cfg.memory_momentum}"
        )
    if cfg.memory_size and cfg.stage != "pretrain":
        raise ConfigError("--memory-size applies to --stage pretrain only")
    if not 0 <= cfg.ft_proj_selector <= cfg.proj_layers:
        raise ConfigError(f"--ft-proj-selector must be in [0, --proj-layers={cfg.proj_layers}]")

    ckpt_marker = os.path.join(cfg.out, "checkpoints", "latest.json")
    if cfg.resume and not os.path.isfile(ckpt_marker):
        raise ConfigError(f"--resume: missing checkpoint: no complete checkpoint in {cfg.out!r}")
    if not cfg.resume and os.path.isfile(ckpt_marker):
        raise ConfigError(
            f"--out {cfg.out!r} already holds checkpoints: pass --resume to continue, or choose a new --out"
        )
    return cfg


# ---- DeepSpeed config --------------------------------------------------------------------------


def deepspeed_config(path: str, cfg: TrainConfig, world_size: int, cuda: bool) -> dict:
    """Read a DeepSpeed JSON config and fill in what the run decides: the batch (global
    ``--batch-size`` over ``world_size`` ranks, no accumulation), the ZeRO stage override, and
    ``bf16.enabled: "auto"`` -> on with CUDA, off on CPU (fp32)."""
    if not os.path.isfile(path):
        raise ConfigError(f"--deepspeed_config {path!r}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            ds = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--deepspeed_config {path!r} is not valid JSON: {e}") from None
    if "gradient_clipping" not in ds:
        raise ConfigError(
            f"--deepspeed_config {path!r} must set gradient_clipping explicitly (0.0 = off): "
            "DeepSpeed >= 0.19.3 otherwise clips at 1.0"
        )
    ds["train_batch_size"] = cfg.batch_size
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size // world_size
    ds["gradient_accumulation_steps"] = 1
    zero = dict(ds.get("zero_optimization", {}))
    if cfg.zero_stage is not None:
        zero["stage"] = cfg.zero_stage
    zero.setdefault("stage", 0)
    ds["zero_optimization"] = zero
    bf16 = dict(ds.get("bf16", {}))
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = cuda
    ds["bf16"] = bf16
    ds.setdefault("steps_per_print", 10**9)
    return ds
