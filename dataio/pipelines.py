"""DALI pipelines of the four stages; one definition serves the CPU and the GPU.

Every pipeline takes its batch from one ``fn.external_source`` (encoded file bytes, labels and
the per-sample augmentation rows of augment.py) and decodes with ``fn.decoders.image``: on the CPU
(``device_id=None``, backend "cpu") or with nvJPEG (backend "mixed"), after which every operator
runs where its input lives, so the GPU pipeline augments on the GPU with the same graph.

Per view: ``resize`` of the crop window (relative ROI; a mirrored window flips) to size×size;
pretrain only: ``color_twist`` (jitter + grayscale, uint8, so values clamp to 0..255 as the
official code clamps) and ``gaussian_blur`` (per-view window and sigma, float output), each
only for the views that need it (DALI conditionals on per-view predicates: an identity view costs
either operator as much as any other); then ``crop_mirror_normalize`` to float, normalised with
the ImageNet mean and std, written directly in the layout the trainer asked for: CHW, or HWC for
channels_last (the iterator then only permutes the view), so no extra copy is made in Python.

Measured on the 2-core dev machine (CPU time per image, two 224-px views): decode 0.5 ms, two
resizes 1.2 ms, ``color_twist`` 1.8 ms per view in uint8, the cut blur window (augment.py) ~2x
cheaper than the official 23 taps; blurring on the batch in torch instead (grouped separable
conv) cost 3.3 ms per view, more than DALI's own blur with the cut window. Skipping the identity
views raised the loader's rate with 2 threads from 220–226 to 240–279 images/s, 1.26–1.58× the
PIL reference's in the same runs (``benchmarks/bench_dataio.py``, idle machine, README).
Eval: resize the shorter side to 1.14×size (official: centre crop of 87.5%), centre crop.

Outputs (names are the iterator's output map):
- pretrain: ``view1``, ``view2`` (B, 3, S, S) or (B, S, S, 3) float; ``label`` (B,) int64;
- finetune, distill, eval: ``image``, the same way; ``label`` (B,) int64.
"""

from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types

from . import augment

MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics, on the 0..1 scale
STD = (0.229, 0.224, 0.225)
EVAL_RESIZE = 1.14  # 1 / 0.875, the official centre-crop proportion

OUTPUTS = {
    "pretrain": ["view1", "view2", "label"],
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


def _view(images, params, size: int, layout: str, extra=None):
    """One view: crop window (+ flip) -> [colour twist if coloured -> blur if blurred, when
    ``extra`` = (window, sigma, blurred, coloured) of augment.view_inputs] -> normalise."""
    out = fn.resize(
        images,
        size=(size, size),
        roi_start=params[0:2],
        roi_end=params[2:4],
        roi_relative=True,
    )
    if extra is not None:
        window, sigma, blurred, coloured = extra
        if coloured:  # DALI conditional: only the views it holds for run the operator
            out = fn.color_twist(
                out,
                brightness=params[augment.BRIGHTNESS],
                contrast=params[augment.CONTRAST],
                saturation=params[augment.SATURATION],
                hue=params[augment.HUE],
            )
        if blurred:
            out = fn.gaussian_blur(out, window_size=window, sigma=sigma, dtype=types.FLOAT)
        else:  # both branches must merge into one batch of one dtype
            out = fn.cast(out, dtype=types.FLOAT)
    return _normalize(out, layout)


@pipeline_def(enable_conditionals=True)
def stage_pipeline(source, stage: str, size: int, decoder: str, layout: str = "CHW"):
    """The DALI graph of ``stage``; ``decoder`` is "cpu" or "mixed" (nvJPEG, then GPU operators);
    ``layout`` of the images: "CHW" or "HWC".

    ``source`` is an iterable whose batches are tuples: (bytes, labels) for eval, (bytes, labels,
    params) for finetune/distill, (bytes, labels, params1, window1, sigma1, blurred1, coloured1,
    params2, window2, sigma2, blurred2, coloured2) for pretrain (augment.py makes them).
    """
    n_out = {"pretrain": 12, "eval": 2}.get(stage, 3)
    inputs = fn.external_source(source=source, num_outputs=n_out, batch=True, cycle="raise", parallel=False)
    images = fn.decoders.image(inputs[0], device=decoder, output_type=types.RGB)
    label = inputs[1]
    if stage == "eval":
        images = fn.resize(images, resize_shorter=round(EVAL_RESIZE * size))
        return _normalize(images, layout, crop=(size, size)), label
    if stage == "pretrain":
        view1 = _view(images, inputs[2], size, layout, extra=tuple(inputs[3:7]))
        view2 = _view(images, inputs[7], size, layout, extra=tuple(inputs[8:12]))
        return view1, view2, label
    return _view(images, inputs[2], size, layout), label
