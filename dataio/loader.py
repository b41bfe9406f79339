"""``build_loader``: files -> validated, sharded, seeded batches -> DALI -> torch tensors.

Order and sharding (Python side, fed to DALI through ``fn.external_source``):
- training stages (pretrain, finetune, distill): epoch e visits the files in
  ``default_rng((seed, e)).permutation(N)``; shard r of R takes positions r, r+R, r+2R, ... of
  it, cut to ``N // R`` files so every rank has the same count, and drops the last partial batch.
  Within an epoch no file appears twice across ranks; ``N mod R`` files sit out each epoch (not
  the same ones from one epoch to the next);
- eval: files in listing order, split into R contiguous parts whose sizes differ by at most one;
  every file appears exactly once across ranks, and the last batch of a rank may be smaller.

Augmentation parameters are drawn per batch from ``(seed, epoch, shard, batch)`` (augment.py), so
``epoch`` and ``start_batch`` resume exactly: the batches yielded from ``start_batch`` on are
identical, pixel for pixel, to those of an uninterrupted run with the same seed, sharding and
device (the GPU resamples with its own kernels, so CPU and GPU batches differ slightly).
"""

from __future__ import annotations

import collections
import contextlib
import os
import warnings

import numpy as np
import torch
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator
from PIL import Image

from . import augment
from .batch_augment import augment_views_
from .folder import DataError, Validated, list_source, validate
from .pipelines import OUTPUTS, stage_pipeline
from .subsets import label_subset as _label_subset

STAGES = tuple(OUTPUTS)
_PREFETCH = 2  # DALI's prefetch queue depth: batches decoded ahead of the consumer


def _default_shards(shard_id, num_shards) -> tuple[int, int]:
    if (shard_id is None) != (num_shards is None):
        raise ValueError("give both shard_id and num_shards, or neither (then torch.distributed decides)")
    if shard_id is None:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards={num_shards}), got {shard_id}")
    return int(shard_id), int(num_shards)


def _device_id(device) -> int | None:
    """DALI's device_id for a torch device: None for the CPU (CPU-only pipeline)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return None
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or 'cuda[:k]', got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    return dev.index if dev.index is not None else torch.cuda.current_device()


class _EpochSource:
    """The iterable behind ``fn.external_source``: one pass yields the current epoch's batches.

    ``epoch`` and ``start_batch`` are set by the loader before DALI (re)starts a pass.
    """

    def __init__(
        self, data: Validated, stage: str, batch_size: int, seed: int, shard: tuple[int, int], strength
    ):
        self.stage, self.batch_size, self.seed = stage, batch_size, seed
        self.shard_id, self.num_shards = shard
        self.strength = strength
        self.epoch, self.start_batch = 0, 0
        self.set_data(data)
        # File lists of the batches handed to DALI recently, to name the file behind a decode error.
        self.recent: collections.deque[list[str]] = collections.deque(maxlen=_PREFETCH + 2)

    def set_data(self, data: Validated) -> None:
        """Use ``data`` from now on (also after dropping files that failed at run time)."""
        self.data = data
        n = len(data.paths)
        if self.stage == "eval":
            self.shard_size = len(np.array_split(np.arange(n), self.num_shards)[self.shard_id])
            self.n_batches = -(-self.shard_size // self.batch_size)
        else:
            self.shard_size = n // self.num_shards
            self.n_batches = self.shard_size // self.batch_size
        if self.n_batches == 0:
            raise DataError(
                f"{n} usable images over {self.num_shards} shard(s) give {self.shard_size} per shard, "
                f"fewer than one batch of {self.batch_size}"
            )

    def shard_indices(self, epoch: int) -> np.ndarray:
        """Indices (into the validated files) this shard visits in ``epoch``, in order."""
        n = len(self.data.paths)
        if self.stage == "eval":
            return np.array_split(np.arange(n), self.num_shards)[self.shard_id]
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return order[self.shard_id :: self.num_shards][: self.shard_size]

    def __iter__(self):
        return self._batches(self.epoch, self.start_batch)

    def _batches(self, epoch: int, start: int):
        idx = self.shard_indices(epoch)
        for b in range(start, self.n_batches):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            paths = [self.data.paths[i] for i in sel]
            self.recent.append(paths)
            encoded = [np.fromfile(p, dtype=np.uint8) for p in paths]
            labels = self.data.labels[sel]
            if self.stage == "eval":
                yield encoded, labels
                continue
            rng = augment.batch_rng(self.seed, epoch, self.shard_id, b, self.stage)
            sizes = self.data.sizes[sel]
            if self.stage == "pretrain":
                p1 = augment.simclr_params(rng, sizes, self.strength)
                p2 = augment.simclr_params(rng, sizes, self.strength)
                yield encoded, labels, p1, p2
            else:
                yield encoded, labels, augment.crop_flip_params(rng, sizes)


class _BadFiles(Exception):
    """Files that failed to decode at run time, to be skipped (on_bad_file="skip")."""

    def __init__(self, paths: list[str]):
        super().__init__(paths)
        self.paths = paths


def _find_undecodable(paths: list[str]) -> list[str]:
    """Files among ``paths`` that PIL cannot fully decode (run only after DALI reported an error)."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception:  # any failure to decode marks the file; the caller reports it
            bad.append(p)
    return bad


class DaliLoader:
    """Iterable over one stage's batches; each ``iter()`` runs one epoch (see build_loader)."""

    def __init__(
        self, source: _EpochSource, *, size, device, num_threads, channels_last, classes, on_bad_file
    ):
        self._source = source
        self.stage = source.stage
        self.batch_size = source.batch_size
        self.image_size = size
        self.device = torch.device(device)
        self.num_threads = num_threads
        self.channels_last = channels_last
        self.on_bad_file = on_bad_file
        self.skipped = list(source.data.skipped)  # (path, reason) of files left out at build
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self._epoch, self._start = 0, 0
        self._dali = None
        self._exhausted = False

    def __len__(self) -> int:
        """Batches per (full) epoch on this shard."""
        return self._source.n_batches

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will run."""
        return self._epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next ``iter()`` run ``epoch`` from batch ``start_batch`` (to resume)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self._epoch, self._start = int(epoch), int(start_batch)

    @property
    def paths(self) -> list[str]:
        """The validated files this loader reads (all shards), in listing order."""
        return list(self._source.data.paths)

    def shard_paths(self, epoch: int) -> list[str]:
        """The files this shard visits in ``epoch``, in order (before dropping a partial batch)."""
        return [self._source.data.paths[i] for i in self._source.shard_indices(epoch)]

    def _iterator(self) -> DALIGenericIterator:
        if self._dali is not None and self._exhausted:
            self._dali.reset()  # restarts the pass: DALI calls iter() on the source again
            return self._dali
        # First pass, or the previous pass was left early: DALI cannot drop the batches it
        # prefetched, so a fresh pipeline is built (about a second).
        pipe = stage_pipeline(
            source=self._source,
            stage=self.stage,
            size=self.image_size,
            decoder="cpu" if self.device.type == "cpu" else "mixed",
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=_device_id(self.device),
            seed=self._source.seed,
            prefetch_queue_depth=_PREFETCH,
            layout="HWC" if self.channels_last else "CHW",
        )
        self._dali = DALIGenericIterator(
            pipe,
            OUTPUTS[self.stage],
            auto_reset=False,
            last_batch_policy=LastBatchPolicy.PARTIAL,
            prepare_first_batch=False,
        )
        return self._dali

    def __iter__(self):
        epoch, batch = self._epoch, self._start
        self._epoch, self._start = self._epoch + 1, 0
        while True:
            try:
                for out in self._pass(epoch, batch):
                    batch += 1
                    yield out
                return
            except _BadFiles as e:  # on_bad_file="skip": drop them, rebuild, go on from `batch`
                self._drop(e.paths)

    def _pass(self, epoch: int, start: int):
        """Batches of ``epoch`` from ``start`` until the end or the first decode failure."""
        self._source.epoch, self._source.start_batch = epoch, start
        self._exhausted = False
        self._source.recent.clear()
        it = self._iterator()
        while True:
            try:
                out = next(it)[0]
            except StopIteration:
                self._exhausted = True
                return
            except RuntimeError as e:
                self._dali = None  # a failed pipeline is not reused
                raise self._decode_error(e) from e
            yield self._to_torch(out)

    def _decode_error(self, exc: RuntimeError) -> Exception:
        candidates = [p for batch in self._source.recent for p in batch]
        bad = _find_undecodable(candidates)
        if not bad:
            return RuntimeError(f"DALI pipeline failed on a batch of {len(candidates)} recent files: {exc}")
        if self.on_bad_file == "skip":
            return _BadFiles(bad)
        return DataError(
            f"cannot decode {bad[0]}"
            + (f" (and {len(bad) - 1} more: {bad[1:4]})" if len(bad) > 1 else "")
            + " although its header passed validation at build time; pass on_bad_file='skip' to"
            " leave such files out"
        )

    def _drop(self, paths: list[str]) -> None:
        data = self._source.data
        keep = [i for i, p in enumerate(data.paths) if p not in set(paths)]
        reason = "failed to decode at run time"
        self.skipped += [(p, f"{reason}: {p}") for p in paths]
        self._source.set_data(
            Validated([data.paths[i] for i in keep], data.labels[keep], data.sizes[keep], data.skipped)
        )
        warnings.warn(
            f"skipped {len(paths)} file(s) that {reason} ({paths[0]}); the rest of this epoch"
            + (" continues in listing order" if self.stage == "eval" else " is reshuffled without them"),
            stacklevel=3,
        )

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S) with channels_last strides
        return x.to(self.device, non_blocking=True)

    def _to_torch(self, out: dict) -> tuple[torch.Tensor, ...]:
        label = out["label"].reshape(-1).to(self.device, torch.int64, non_blocking=True)
        if self.stage != "pretrain":
            return self._image(out["image"]), label
        views = self._image(out["view1"]), self._image(out["view2"])
        with _single_threaded(self.device.type == "cpu"):
            for view, params in zip(views, (out["params1"], out["params2"]), strict=True):
                augment_views_(view, params)
        return (*views, label)


@contextlib.contextmanager
def _single_threaded(active: bool):
    """torch's intra-op threads set to 1 for the block (when ``active``), then restored.

    The CPU colour and blur run while DALI's threads already occupy the cores. With torch's pool of
    threads beside them, bench_dataio's loader ran at 346-352 images/s instead of 415-550 (2-core
    dev machine, 224 px, README).
    """
    if not active:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_loader(
    stage: str,
    source,
    *,
    batch_size: int,
    image_size: int = 224,
    device="cpu",
    seed: int = 0,
    shard_id: int | None = None,
    num_shards: int | None = None,
    num_threads: int = 2,
    label_subset=None,
    color_strength: float = 1.0,
    channels_last: bool = False,
    on_bad_file: str = "fail",
    epoch: int = 0,
    start_batch: int = 0,
) -> DaliLoader:
    """A DALI loader for ``stage``; see the package docstring for the full contract."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if batch_size < 1 or image_size < 1 or num_threads < 1:
        raise ValueError(
            f"batch_size, image_size, num_threads must be >= 1: {batch_size}, {image_size}, {num_threads}"
        )
    if color_strength < 0:
        raise ValueError(f"color_strength must be >= 0, got {color_strength}")
    shard = _default_shards(shard_id, num_shards)
    _device_id(device)  # fails now, before any work, on a device this machine lacks
    listing = list_source(source, on_bad_file)
    if label_subset is None:
        pairs = None
    elif isinstance(label_subset, float | int) and not isinstance(label_subset, bool):
        pairs = _label_subset(source, fraction=float(label_subset), seed=seed)
    elif isinstance(label_subset, str | os.PathLike):
        pairs = _label_subset(source, file=label_subset)
    else:
        pairs = list(label_subset)
    if pairs is not None:
        paths, labels = [p for p, _ in pairs], np.asarray([y for _, y in pairs], dtype=np.int64)
    else:
        paths, labels = listing.paths, listing.labels
    data = validate(paths, labels, on_bad_file)
    src = _EpochSource(data, stage, batch_size, seed, shard, color_strength)
    loader = DaliLoader(
        src,
        size=image_size,
        device=device,
        num_threads=num_threads,
        channels_last=channels_last,
        classes=listing.classes,
        on_bad_file=on_bad_file,
    )
    loader.set_epoch(epoch, start_batch)
    return loader
