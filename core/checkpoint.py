"""Checkpoints that a kill cannot corrupt, and the exported model that needs no DeepSpeed.

Layout of a run directory ``OUT``::

    OUT/checkpoints/step_00000120/   DeepSpeed's files for step 120 (model, optimizer, client state)
    OUT/checkpoints/latest.json      {"tag": "step_00000120", "step": 120}: the last COMPLETE one
    OUT/model.safetensors            exported weights (plain state dict)
    OUT/model.json                   build_model arguments + stage + head layers kept

``latest.json`` is replaced atomically (write to a temporary file, fsync, ``os.replace``) only after
every rank finished writing the tag directory, so a kill at any moment leaves it naming a complete
checkpoint; ``--resume`` loads that one and nothing else. DeepSpeed's own ``latest`` file is not
written. Older tags beyond ``keep`` are deleted after the marker moved on.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from .config import EXPORT_META, EXPORT_WEIGHTS
from .models import SimCLRModel, build_model

MARKER = "latest.json"
_BUILD_KEYS = ("name", "num_classes", "proj_layers", "proj_dim", "ft_proj_selector", "small_images")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def latest(ckpt_dir: str) -> dict | None:
    """``{"tag": ..., "step": ...}`` of the last complete checkpoint, or None."""
    path = os.path.join(ckpt_dir, MARKER)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save(engine, ckpt_dir: str, step: int, client_state: dict, keep: int = 2) -> str:
    """Write a DeepSpeed checkpoint of ``engine`` for ``step`` on every rank, then publish it."""
    tag = f"step_{step:08d}"
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state, save_latest=False)
    _barrier()  # every rank's shard is on disk before the marker names the tag
    if _rank() == 0:
        _atomic_write(os.path.join(ckpt_dir, MARKER), json.dumps({"tag": tag, "step": step}))
        tags = sorted(d for d in os.listdir(ckpt_dir) if d.startswith("step_") and d != tag)
        for old in tags[: max(len(tags) - (keep - 1), 0)]:
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    _barrier()
    return tag


def load(engine, ckpt_dir: str) -> dict:
    """Load the last complete checkpoint into ``engine`` (weights, optimizer); return its client state."""
    mark = latest(ckpt_dir)
    if mark is None:
        raise FileNotFoundError(f"no complete checkpoint in {ckpt_dir!r} ({MARKER} missing)")
    path, client_state = engine.load_checkpoint(
        ckpt_dir, tag=mark["tag"], load_optimizer_states=True, load_lr_scheduler_states=False
    )
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {mark['tag']!r} from {ckpt_dir!r}")
    return client_state


# ---- export ------------------------------------------------------------------------------------


def export(model: SimCLRModel, run_dir: str, extra: dict | None = None) -> str | None:
    """Write ``model`` (already gathered, plain tensors) as OUT/model.safetensors + OUT/model.json
    on rank 0. Returns the weights path on rank 0, None elsewhere."""
    if _rank() != 0:
        return None
    meta = {k: model.config[k] for k in _BUILD_KEYS}
    meta["head_layers"] = len(model.head.layers)
    meta.update(extra or {})
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    weights = os.path.join(run_dir, EXPORT_WEIGHTS)
    tmp = weights + ".tmp"
    save_file(tensors, tmp, metadata={"flashclr": json.dumps(meta)})
    os.replace(tmp, weights)
    _atomic_write(os.path.join(run_dir, EXPORT_META), json.dumps(meta, indent=1))
    return weights


def build_from_meta(meta: dict, **overrides) -> SimCLRModel:
    """``build_model`` with the arguments recorded in ``model.json`` (``overrides`` win); the head is
    cut to the layers the export kept."""
    kwargs = {k: meta[k] for k in _BUILD_KEYS}
    kwargs.update(overrides)
    name = kwargs.pop("name")
    model = build_model(name, **kwargs)
    if meta.get("head_layers", model.proj_layers) < model.proj_layers:
        del model.head.layers[meta["head_layers"] :]
    return model


def load_exported(run_dir: str) -> SimCLRModel:
    """The exported model of ``run_dir``, built with ``build_model``; no DeepSpeed involved."""
    with open(os.path.join(run_dir, EXPORT_META), encoding="utf-8") as f:
        meta = json.load(f)
    model = build_from_meta(meta)
    model.load_state_dict(read_weights(run_dir))
    return model


def read_weights(run_dir: str, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of OUT/model.safetensors whose names start with ``prefix``."""
    with safe_open(os.path.join(run_dir, EXPORT_WEIGHTS), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
