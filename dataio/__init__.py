"""flashclr.dataio: DALI pipelines for the SimCLR v2 stages, CPU-only or on the GPU.

Public API::

    build_loader(stage, source, *, batch_size, image_size=224, device="cpu", seed=0,
                 shard_id=None, num_shards=None, num_threads=2, label_subset=None,
                 color_strength=1.0, channels_last=False, on_bad_file="fail",
                 epoch=0, start_batch=0) -> DaliLoader
    label_subset(source, fraction=None, file=None, seed=0) -> list[(path, label)]
    class_names(source) -> list[str];  num_classes(source) -> int
    DataError  (a ValueError: missing, empty, corrupt or mislabelled input)

- ``stage``: "pretrain" yields ``(view1, view2, label)``; "finetune" and "distill" (random resized
  crop + flip) and "eval" (resize the shorter side to 1.14 x size, centre crop) yield
  ``(image, label)``. Images are float32 (B, 3, S, S) normalised with the ImageNet mean/std
  (``pipelines.MEAN``/``STD``), on ``device``, NCHW-contiguous or, with ``channels_last=True``,
  in the channels_last memory format; labels are int64 (B,) on ``device``.
- ``source``: an ImageFolder root (root/<class>/<image>), a text file of "relpath label" lines,
  or a list of (path, label) pairs (folder.py).
- ``device``: "cpu" runs DALI CPU-only (``device_id=None``); "cuda" / "cuda:k" decodes with nvJPEG
  (``decoders.image`` backend "mixed") and augments on that GPU. Same graph either way.
- ``shard_id``/``num_shards``: default to torch.distributed's rank/world size when initialised.
- ``len(loader)``: batches per epoch on this shard. Training stages drop the last partial batch
  (every batch has ``batch_size`` images); eval yields every image of its shard exactly once
  (shards differ in size by at most one image, so their ``len()`` may differ by one).
- Epochs: each ``iter(loader)`` runs one epoch, starting at ``epoch`` (from ``start_batch``), then
  ``epoch + 1`` from batch 0, and so on; ``loader.set_epoch(e, start_batch)`` repositions. The
  order and every augmentation parameter are functions of (seed, epoch, shard, batch), so a
  resumed run yields exactly the batches the uninterrupted run would have (loader.py).
- ``label_subset``: None, a fraction (float), a subset file (path), or (path, label) pairs.
- ``on_bad_file``: "fail" raises DataError naming the first bad file; "skip" leaves bad files out,
  warns, and lists them in ``loader.skipped``. The check runs at build time (folder.validate:
  header + end marker, ~0.05 ms CPU per cached file). A file that passes it and still fails to
  decode in DALI (for example, rewritten after the build) raises a DataError naming it under
  "fail"; under "skip" it is dropped, the pipeline rebuilt, and the epoch goes on from the failed
  batch (eval keeps listing order, so every other image is still seen once; training stages
  reshuffle the rest of the epoch without it).
- Loader attributes: ``classes``, ``num_classes``, ``skipped``, ``epoch`` (the next one to run),
  ``set_epoch(e, start_batch=0)``, ``paths`` (validated files, all shards) and
  ``shard_paths(epoch)`` (this shard's files of an epoch, in order).

The pretrain views come out fully augmented: DALI decodes, crops, flips and normalises them, then
the loader applies the colour jitter, grayscale and Gaussian blur to the batch on ``device``
(batch_augment.py: in torch, on the GPU as the official code blurs there, or on the CPU while
DALI's threads decode the next batch). The parameters of every view come from augment.py.

``python -m flashclr.dataio.digits OUT_DIR`` writes scikit-learn's handwritten digits as a JPEG
ImageFolder (train/ and val/).
"""

import importlib

# Lazy attributes (PEP 562): ``python -m flashclr.dataio.digits`` then starts without importing
# torch and DALI (seconds), and ``import flashclr.dataio`` stays cheap until a loader is built.
_EXPORTS = {
    "DataError": "folder",
    "class_names": "folder",
    "num_classes": "folder",
    "DaliLoader": "loader",
    "build_loader": "loader",
    "label_subset": "subsets",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])


__all__ = ["DataError", "DaliLoader", "build_loader", "class_names", "label_subset", "num_classes"]
