"""DALI pipelines of the four stages; one definition serves the CPU and the GPU.

Every pipeline takes its batch from one ``fn.external_source`` (encoded file bytes, labels and
the per-sample augmentation rows of augment.py) and decodes with ``fn.decoders.image``: on the CPU
(``device_id=None``, backend "cpu") or with nvJPEG (backend "mixed"), after which every operator
runs where its input lives, so the GPU pipeline augments on the GPU with the same graph.

Per view: ``resize`` of the crop window (relative ROI; a mirrored window flips) to size×size,
``color_twist`` (pretrain only), then ``crop_mirror_normalize`` to float, normalised with the
ImageNet mean and std, HWC (the iterator permutes to NCHW, so channels_last costs nothing).
Eval: resize the shorter side to 1.14×size (official: centre crop of 87.5%), centre crop.

Outputs (names are the iterator's output map):
- pretrain: ``view1``, ``view2`` (B, S, S, 3) float; ``label`` (B,) int64; ``params1``,
  ``params2`` (B, N_PARAMS) float32 (the blur sigma is read from them on the batch);
- finetune, distill, eval: ``image`` (B, S, S, 3) float; ``label`` (B,) int64.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from . import augment

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, on the 0..1 scale
STD = (0.229, 0.224, 0.225)
EVAL_RESIZE = 1.14  # 1 / 0.875, the official centre-crop proportion

OUTPUTS = {
    "pretrain": ["view1", "view2", "label", "params1", "params2"],
    "finetune": ["image", "label"],
    "distill": ["image", "label"],
    "eval": ["image", "label"],
}


def _normalize(images, **crop):
    return fn.crop_mirror_normalize(
        images,
        **crop,
        dtype=types.FLOAT,
        output_layout="HWC",
        mean=[255 * m for m in MEAN],
        std=[255 * s for s in STD],
    )


def _view(images, params, size: int, color: bool):
    """One augmented view: crop window (+ flip) -> [colour twist] -> normalise."""
    out = fn.resize(
        images,
        size=(size, size),
        roi_start=params[0:2],
        roi_end=params[2:4],
        roi_relative=True,
    )
    if color:
        out = fn.color_twist(
            out,
            brightness=params[augment.BRIGHTNESS],
            contrast=params[augment.CONTRAST],
            saturation=params[augment.SATURATION],
            hue=params[augment.HUE],
        )
    return _normalize(out)


@pipeline_def(enable_conditionals=False)
def stage_pipeline(source, stage: str, size: int, decoder: str):
    """The DALI graph of ``stage``; ``decoder`` is "cpu" or "mixed" (nvJPEG, then GPU operators).

    ``source`` is an iterable whose batches are tuples: (bytes, labels) for eval, (bytes, labels,
    params) for finetune/distill, (bytes, labels, params1, params2) for pretrain.
    """
    n_out = {"pretrain": 4, "eval": 2}.get(stage, 3)
    inputs = fn.external_source(source=source, num_outputs=n_out, batch=True, cycle="raise", parallel=False)
    images = fn.decoders.image(inputs[0], device=decoder, output_type=types.RGB)
    label = inputs[1]
    if stage == "eval":
        images = fn.resize(images, resize_shorter=round(EVAL_RESIZE * size))
        return _normalize(images, crop=(size, size)), label
    if stage == "pretrain":
        p1, p2 = inputs[2], inputs[3]
        return _view(images, p1, size, True), _view(images, p2, size, True), label, p1, p2
    return _view(images, inputs[2], size, False), label
