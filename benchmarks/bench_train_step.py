"""Training-step throughput: images per second, split into data, forward, loss, backward, optimizer.

Two steps of SimCLR v2, each with the fused loss and with the eager reference loss in the same run:

- ``pretrain``: two views of B images -> ``model.projections`` on the 2B views at once (batch norm
  sees both views, as in the official code) -> ``nt_xent`` (fused) or ``nt_xent_reference`` from
  tests/references.py run in the projections' dtype (eager) -> backward -> LARS step.
- ``distill``: B images -> frozen teacher logits (no grad, eval mode) and student logits ->
  ``distill_ce`` (fused) or the eager reference -> backward -> LARS step.

The split: ``data`` is the wait for the next batch (DALI decode + augmentation + the per-batch blur,
or a pre-made batch with ``data="synthetic"``); ``teacher`` the teacher's forward (distill only);
``forward`` the student/encoder forward; ``loss`` the loss forward and its backward to the model
outputs (``torch.autograd.grad``), so that ``backward`` is the model's backward alone; ``optimizer``
LARS and ``zero_grad``. On a GPU each boundary is a CUDA event on the compute stream; on the CPU a
wall clock. The two losses take turns step by step on the same model (each with its own LARS), so
a change of load hits both alike; each figure is the median over the timed steps.

Model FLOP utilisation (MFU): the FLOPs of one training step are counted with
``torch.utils.flop_counter.FlopCounterMode`` on a meta-device copy of the model (forward and
backward of the model; the teacher's forward for distillation; the losses are not counted), divided
by the measured step time and by the measured matmul peak of :mod:`benchmarks.peaks` (bf16 on a GPU,
fp32 on the CPU). The encoder's forward GFLOP per image is reported too.

Command line (see ``--help``)::

    python benchmarks/bench_train_step.py --model r50_1x_sk0 --batch 256 --precision bf16 --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import statistics
import sys
import tempfile

import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `tests` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.nvml import Nvml, NvmlReading  # noqa: E402
from benchmarks.report import Table, ratio  # noqa: E402
from benchmarks.timing import Stopwatch  # noqa: E402

STAGES = ("pretrain", "distill")
LOSSES = ("fused", "eager")
PHASES = {
    "pretrain": ("data", "forward", "loss", "backward", "optimizer"),
    "distill": ("data", "teacher", "forward", "loss", "backward", "optimizer"),
}
TEMPERATURE = {"pretrain": 0.1, "distill": 1.0}


@functools.lru_cache(maxsize=8)
def _meta_counts(model_name: str, image_size: int, small_images: bool) -> dict:
    """FLOPs per image of one model: encoder forward, logits forward, and forward + backward of
    the projections and of the logits; counted once per (model, size)."""
    from torch.utils.flop_counter import FlopCounterMode

    from flashclr.core.models import build_model

    model = build_model(model_name, small_images=small_images, device="meta")
    # A batch of 2: batch norm in training mode needs more than one value per channel.
    x = torch.empty(2, 3, image_size, image_size, device="meta")
    counts = {}
    for key, run in (
        ("encoder_fwd", lambda: model.encoder(x)),
        ("logits_fwd", lambda: model.logits(x)),
        ("projections_train", lambda: model.projections(x).sum().backward()),
        ("logits_train", lambda: model.logits(x).sum().backward()),
    ):
        with FlopCounterMode(display=False) as counter:
            run()
        counts[key] = counter.get_total_flops() / 2
    return counts


def count_flops(
    model_name: str, image_size: int, stage: str, teacher: str | None, small_images: bool
) -> dict:
    """FLOPs per image: the encoder's forward, and one training step (model fwd + bwd, teacher fwd).

    Counted on meta-device models (no memory, no compute) with ``FlopCounterMode``. A pretraining
    image has two views: its step counts two views' worth; a distillation image adds the
    teacher's forward. The losses are not counted.
    """
    counts = _meta_counts(model_name, image_size, small_images)
    if stage == "pretrain":
        step = 2 * counts["projections_train"]
    else:
        teacher_counts = _meta_counts(teacher or model_name, image_size, small_images)
        step = counts["logits_train"] + teacher_counts["logits_fwd"]
    return {"encoder_fwd": counts["encoder_fwd"], "step": step}


def loss_functions(stage: str):
    """(fused, eager) loss callables for ``stage``; eager is the reference from tests/."""
    import tests.references as refs

    if stage == "pretrain":
        from flashclr.kernels.nt_xent import nt_xent

        tau = TEMPERATURE[stage]
        fused = lambda z1, z2: nt_xent(z1, z2, tau)  # noqa: E731
        eager = lambda z1, z2: refs.nt_xent_reference(z1, z2, tau, dtype=z1.dtype)  # noqa: E731
        return fused, eager
    from flashclr.kernels.distill_ce import distill_ce

    tau = TEMPERATURE[stage]
    fused = lambda s, t: distill_ce(s, t, tau)  # noqa: E731
    eager = lambda s, t: refs.distill_ce_reference(s, t, tau, dtype=s.dtype)  # noqa: E731
    return fused, eager


class _Batches:
    """Endless batches for one stage: pre-made tensors (synthetic) or a DALI loader over epochs."""

    def __init__(self, stage, batch, image_size, device, channels_last, data, data_dir, num_classes):
        self.stage = stage
        self.loader = None
        if data == "synthetic":
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            views = 2 if stage == "pretrain" else 1
            self.fixed = tuple(
                torch.randn(batch, 3, image_size, image_size, device=device).contiguous(memory_format=fmt)
                for _ in range(views)
            )
            return
        from flashclr.dataio import build_loader

        self.loader = build_loader(
            stage,
            data_dir,
            batch_size=batch,
            image_size=image_size,
            device=device,
            num_threads=max(1, (os.cpu_count() or 2) // (1 if device.type == "cuda" else 2)),
            channels_last=channels_last,
        )
        self._it = iter(self.loader)

    def next(self) -> tuple[torch.Tensor, ...]:
        if self.loader is None:
            return self.fixed
        try:
            out = next(self._it)
        except StopIteration:  # next epoch (DALI resets its pipeline; counted as data time)
            self._it = iter(self.loader)
            out = next(self._it)
        return out[:-1]  # drop the labels: neither step uses them


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(stage, loss_fn, model, teacher, opt, inputs, device, precision) -> tuple[list[float], float]:
    """One training step on ``inputs``; returns the seconds of each phase after ``data`` (teacher,
    forward, loss, backward, optimizer) and the loss value."""
    watch = Stopwatch(device)
    watch.mark()
    if stage == "pretrain":
        x = torch.cat(inputs)  # (2B, 3, S, S): both views in one pass
        with _autocast(device, precision):
            out = model.projections(x)  # (2B, proj_dim)
        watch.mark()
        z1, z2 = out.chunk(2)
        loss = loss_fn(z1, z2)
    else:
        (x,) = inputs
        with torch.no_grad(), _autocast(device, precision):
            t_logits = teacher.logits(x)  # (B, C)
        watch.mark()
        with _autocast(device, precision):
            out = model.logits(x)  # (B, C)
        watch.mark()
        loss = loss_fn(out, t_logits)
    # The loss's own backward stops at the model outputs, so that `backward` is the model's alone.
    (grad,) = torch.autograd.grad(loss, out)
    watch.mark()
    out.backward(grad)
    watch.mark()
    opt.step()
    opt.zero_grad(set_to_none=True)
    watch.mark()
    return watch.laps(), float(loss.detach())


def measure_losses(stage, loss_fns, model, teacher, batch, batches, device, precision, warmup, steps, nvml):
    """Time ``warmup`` + ``steps`` steps per loss, the losses taking turns step by step (so that a
    change of load on a shared machine hits them alike). One LARS per loss, same model.

    Returns per loss the median seconds of each phase, their sum ``step_s``, the CUDA peak memory
    and the NVML readings over the whole run (shared by the losses, which alternate).
    """
    from flashclr.core.lars import LARS, lars_param_groups

    # SimCLR's LARS: lr = 0.075·sqrt(batch), weight decay 1e-6 (design.md).
    opts = {
        n: LARS(lars_param_groups(model, weight_decay=1e-6), lr=0.075 * math.sqrt(batch)) for n in loss_fns
    }
    laps: dict[str, dict[str, list[float]]] = {n: {p: [] for p in PHASES[stage]} for n in loss_fns}
    peak = dict.fromkeys(loss_fns, 0)
    model.train()
    with nvml.sample() as reading:
        for i in range(warmup + steps):
            for name, loss_fn in loss_fns.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                watch = Stopwatch(device)
                watch.mark()
                inputs = batches.next()
                watch.mark()
                (data_s,) = watch.laps()
                rest, value = train_step(
                    stage, loss_fn, model, teacher, opts[name], inputs, device, precision
                )
                if not math.isfinite(value):
                    raise FloatingPointError(f"{stage} step {i} with the {name} loss: loss is {value}")
                if i < warmup:
                    continue
                for phase, lap in zip(PHASES[stage], [data_s, *rest], strict=True):
                    laps[name][phase].append(lap)
                if device.type == "cuda":
                    peak[name] = max(peak[name], torch.cuda.max_memory_allocated(device))
    results = {}
    for name in loss_fns:
        r = {f"{p}_s": statistics.median(v) for p, v in laps[name].items()}
        r["step_s"] = sum(r[f"{p}_s"] for p in PHASES[stage])
        r["peak_gib"] = peak[name] / 2**30 if device.type == "cuda" else None
        r["nvml"] = reading[0].as_dict() if reading[0] is not None else None
        results[name] = r
    return results


def bench_train_step(
    model: str = "r50_1x_sk0",
    stage: str = "pretrain",
    batch: int = 256,
    image_size: int = 224,
    precision: str = "bf16",
    channels_last: bool = True,
    losses: tuple[str, ...] = LOSSES,
    steps: int = 10,
    warmup: int = 3,
    data: str = "synthetic",
    data_dir: str | None = None,
    teacher: str | None = None,
    small_images: bool = False,
    peak_tflops: float | None = None,
    device: torch.device | str | None = None,
    nvml: Nvml | None = None,
) -> list[dict]:
    """Measure one training step of ``stage`` with each loss in ``losses``; one dict per loss.

    Args:
        model: registered name (``flashclr.core.models.list_models()``) or e.g. ``r18_0.5x_sk0``.
        stage: "pretrain" (two views, NT-Xent) or "distill" (teacher + student, distillation CE).
        batch: images per step (a pretraining step runs 2·batch views).
        precision: "fp32" or "bf16" (autocast around the model forwards).
        channels_last: model and inputs in NHWC memory format.
        data: "synthetic" (a pre-made batch on the device: no input pipeline) or "dali"
            (``flashclr.dataio.build_loader`` over ``data_dir``, JPEGs written when it is None).
        teacher: distillation teacher name (default: the student's, i.e. self-distillation).
        peak_tflops: matmul peak for MFU (from benchmarks.peaks); MFU is left out without it.

    Returns: per loss, ``images_per_s``, ``views_per_s``, ``<phase>_s`` medians, ``step_s``,
    ``step_gflop_per_image``, ``encoder_gflop_per_image``, ``mfu_pct``, ``peak_gib`` (CUDA), ``nvml``.
    """
    from flashclr.core.models import build_model

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    if data not in ("synthetic", "dali"):
        raise ValueError(f"data must be 'synthetic' or 'dali', got {data!r}")
    unknown = set(losses) - set(LOSSES)
    if unknown or not losses:
        raise ValueError(f"losses must be a non-empty subset of {LOSSES}, got {losses}")
    if batch < 2 or steps < 1 or warmup < 0:
        raise ValueError(f"need batch >= 2, steps >= 1, warmup >= 0; got {batch}, {steps}, {warmup}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    nvml = nvml or Nvml()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    flops = count_flops(model, image_size, stage, teacher, small_images)
    net = build_model(model, small_images=small_images, device=device).to(memory_format=fmt)
    big = None
    if stage == "distill":
        big = build_model(teacher or model, small_images=small_images, device=device)
        big = big.to(memory_format=fmt).eval()
        for p in big.parameters():
            p.requires_grad_(False)
    tmp = None
    if data == "dali" and data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="flashclr-bench-")
        # Enough files for the timed steps of one loss within one epoch where that is cheap.
        count = min(batch * (warmup + steps), 2048)
        # The data pipeline benchmark's pictures, a little larger than the crops (ImageNet-like).
        from benchmarks.bench_dataio import write_jpegs

        write_jpegs(tmp.name, max(count, 2 * batch), side=max(image_size * 8 // 7, 32))
        data_dir = tmp.name
    try:
        batches = _Batches(stage, batch, image_size, device, channels_last, data, data_dir, 1000)
        fns = {n: f for n, f in zip(LOSSES, loss_functions(stage), strict=True) if n in losses}
        measured = measure_losses(
            stage, fns, net, big, batch, batches, device, precision, warmup, steps, nvml
        )
        rows = []
        for name, r in measured.items():
            views = 2 if stage == "pretrain" else 1
            r.update(
                stage=stage,
                model=model,
                teacher=(teacher or model) if stage == "distill" else None,
                loss=name,
                batch=batch,
                image_size=image_size,
                precision=precision,
                channels_last=channels_last,
                data=data,
                images_per_s=batch / r["step_s"],
                views_per_s=views * batch / r["step_s"],
                encoder_gflop_per_image=flops["encoder_fwd"] / 1e9,
                step_gflop_per_image=flops["step"] / 1e9,
                mfu_pct=(
                    100 * flops["step"] * batch / r["step_s"] / (peak_tflops * 1e12) if peak_tflops else None
                ),
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            )
            rows.append(r)
        return rows
    finally:
        if tmp is not None:
            tmp.cleanup()


def table(rows: list[dict], peaks_line: str | None = None) -> Table:
    """One table for all stages: a row per (stage, loss), times in ms, ratio against eager."""
    eager = {r["stage"]: r["images_per_s"] for r in rows if r["loss"] == "eager"}
    out = []
    for r in rows:
        row = {k: v for k, v in r.items() if k != "nvml"}
        for p in ("data", "teacher", "forward", "loss", "backward", "optimizer", "step"):
            row[f"{p}_ms"] = 1000 * r[f"{p}_s"] if f"{p}_s" in r else None
        row["vs_eager"] = ratio(r["images_per_s"], eager.get(r["stage"]))
        row["nvml"] = _nvml_cell(r.get("nvml"))
        out.append(row)
    first = rows[0]
    title = (
        f"Training step: {first['model']}, batch {first['batch']}, {first['image_size']} px, "
        f"{first['precision']}, {'channels_last' if first['channels_last'] else 'NCHW'}, data {first['data']}"
    )
    columns = [
        ("stage", "stage"),
        ("loss", "loss"),
        ("images_per_s", "img/s"),
        ("vs_eager", "img/s vs eager"),
        ("data_ms", "data ms"),
        ("teacher_ms", "teacher ms"),
        ("forward_ms", "fwd ms"),
        ("loss_ms", "loss ms"),
        ("backward_ms", "bwd ms"),
        ("optimizer_ms", "opt ms"),
        ("step_ms", "step ms"),
        ("step_gflop_per_image", "GFLOP/img"),
        ("mfu_pct", "MFU %"),
        ("peak_gib", "peak GiB"),
    ]
    columns.append(("nvml", "NVML util/mem/power/clock"))
    # Columns no row has a figure for (the teacher in a pretraining-only run, GPU memory and NVML
    # on the CPU) are left out rather than printed empty.
    columns = [c for c in columns if any(row.get(c[0]) is not None for row in out)]
    notes = [
        f"encoder forward: {first['encoder_gflop_per_image']:.3g} GFLOP per image at "
        f"{first['image_size']} px (FlopCounterMode); GFLOP/img is one training step's model "
        "forward+backward (two views for pretraining; plus the teacher's forward for distillation).",
        "loss = loss forward + its backward to the model outputs; bwd = the model's backward alone.",
    ]
    if peaks_line:
        notes.append(f"MFU against the {peaks_line}.")
    return Table("train_step", title, columns, out, notes, reference=["vs_eager"])


def _nvml_cell(d: dict | None) -> str | None:
    if not d:
        return None
    return NvmlReading(**d).short()


def main(argv: list[str] | None = None) -> None:
    from benchmarks import peaks

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="r50_1x_sk0")
    p.add_argument("--teacher", default=None, help="distillation teacher (default: the student's model)")
    p.add_argument("--stage", choices=(*STAGES, "both"), default="both")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: GPU 256, CPU 16)")
    p.add_argument("--image-size", type=int, default=None, help="default: 224 on GPU, 96 on CPU")
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="default: GPU bf16, CPU fp32")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--data", choices=("synthetic", "dali"), default="synthetic")
    p.add_argument("--data-dir", default=None, help="ImageFolder for --data dali (default: written)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args(argv)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    nvml = Nvml()
    print(nvml.describe())
    pk = peaks.measure(device)
    print(pk.line())
    rows = []
    for stage in STAGES if args.stage == "both" else (args.stage,):
        rows += bench_train_step(
            model=args.model,
            stage=stage,
            batch=args.batch or (256 if gpu else 16),
            image_size=args.image_size or (224 if gpu else 96),
            precision=args.precision or ("bf16" if gpu else "fp32"),
            channels_last=gpu if args.channels_last is None else args.channels_last,
            steps=args.steps,
            warmup=args.warmup,
            data=args.data,
            data_dir=args.data_dir,
            teacher=args.teacher,
            peak_tflops=pk.matmul_tflops,
            device=device,
            nvml=nvml,
        )
    print(table(rows, pk.line()).text())


if __name__ == "__main__":
    main()
