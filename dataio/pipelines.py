"""DALI pipelines of the four stages; one definition serves the CPU and the GPU.

Every pipeline takes its batch from one ``fn.external_source`` (encoded file bytes, labels and
the per-sample augmentation rows of augment.py) and decodes with ``fn.decoders.image``: on the CPU
(``device_id=None``, backend "cpu") or with nvJPEG (backend "mixed"), after which every operator
runs where its input lives, so the GPU pipeline augments on the GPU with the same graph.

Per view: ``resize`` of the crop window (relative ROI; a mirrored window flips) to size×size, then
``crop_mirror_normalize`` to float, normalised with the ImageNet mean and std, written directly in
the layout the trainer asked for: CHW, or HWC for channels_last (the iterator then only permutes
the view), so no extra copy is made in Python. The pretraining views' colour jitter, grayscale and
blur run after DALI, on the decoded batch (batch_augment.py): the pipeline passes each view's
parameter rows through as outputs, so they stay paired with their batch through DALI's prefetch
queue. DALI's CPU ``color_twist`` and ``gaussian_blur`` cost about 1.1 and 1.2 ms per 224-px view
on the 2-core dev machine, about two thirds of the loader's CPU time when they ran here (README).
Eval: resize the shorter side to 1.14×size (official: centre crop of 87.5%), centre crop.

Outputs (names are the iterator's output map):
- pretrain: ``view1``, ``view2`` (B, 3, S, S) or (B, S, S, 3) float, cropped, flipped and
  normalised; ``label`` (B,) int64; ``params1``, ``params2`` (B, augment.N_PARAMS) float32;
- finetune, distill, eval: ``image``, the same way; ``label`` (B,) int64.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from .augment import MEAN, STD

EVAL_RESIZE = 1.14  # 1 / 0.875, the official centre-crop proportion

__all__ = ["EVAL_RESIZE", "MEAN", "OUTPUTS", "STD", "stage_pipeline"]

OUTPUTS = {
    "pretrain": ["view1", "view2", "label", "params1", "params2"],
    "finetune": ["image", "label"],
    "distill": ["image", "label"],
    "eval": ["image", "label"],
}


def _normalize(images, layout: str, **crop):
    return fn.crop_mirror_normalize(
        images,
        **crop,
        dtype=types.FLOAT,
        output_layout=layout,
        mean=[255 * m for m in MEAN],
        std=[255 * s for s in STD],
    )


def _view(images, params, size: int, layout: str):
    """One view: the crop window of ``params`` (a mirrored window flips) -> size x size -> normalise."""
    out = fn.resize(
        images,
        size=(size, size),
        roi_start=params[0:2],
        roi_end=params[2:4],
        roi_relative=True,
    )
    return _normalize(out, layout)


@pipeline_def
def stage_pipeline(source, stage: str, size: int, decoder: str, layout: str = "CHW"):
    """The DALI graph of ``stage``; ``decoder`` is "cpu" or "mixed" (nvJPEG, then GPU operators);
    ``layout`` of the images: "CHW" or "HWC".

    ``source`` is an iterable whose batches are tuples: (bytes, labels) for eval, (bytes, labels,
    params) for finetune/distill, (bytes, labels, params1, params2) for pretrain (augment.py makes
    the params).
    """
    n_out = {"pretrain": 4, "eval": 2}.get(stage, 3)
    inputs = fn.external_source(source=source, num_outputs=n_out, batch=True, cycle="raise", parallel=False)
    images = fn.decoders.image(inputs[0], device=decoder, output_type=types.RGB)
    label = inputs[1]
    if stage == "eval":
        images = fn.resize(images, resize_shorter=round(EVAL_RESIZE * size))
        return _normalize(images, layout, crop=(size, size)), label
    if stage == "pretrain":
        params1, params2 = inputs[2], inputs[3]
        return (
            _view(images, params1, size, layout),
            _view(images, params2, size, layout),
            label,
            params1,
            params2,
        )
    return _view(images, inputs[2], size, layout), label
