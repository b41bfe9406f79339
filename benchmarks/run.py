"""flashclr's benchmark suite in one command: one table per component, the reference beside each figure.

    python benchmarks/run.py [--quick] [--plot] [--gpu] [--out DIR] [--only nt_xent,train_step]

Components, each measured against its reference in the same run and reported as a ratio:

==============  ===========================================  ====================================
component       ours                                         reference(s)
==============  ===========================================  ====================================
nt_xent         ``flashclr.kernels.nt_xent`` (fused)          naive torch, eager and torch.compile
distill_ce      ``flashclr.kernels.distill_ce`` (fused)       eager torch (log_softmax + softmax)
dataio          ``flashclr.dataio`` DALI pretraining loader   PIL + torch DataLoader, same chain
lars            ``flashclr.core.lars.LARS`` step              per-parameter Python loop
train_step      a whole pretraining / distillation step      the same step with the eager loss
==============  ===========================================  ====================================

The component benchmarks live beside this file (``bench_<component>.py``); a component whose module
is not in the checkout is reported in one line and skipped. Sizes: ``--quick`` tiny (seconds; the
smoke test and ``make bench``), default the CPU sizes of each issue, ``--gpu`` the GPU sizes of
``benchmarks/gpu_check.sh`` (2N up to 32768 for NT-Xent, r50_1x_sk0 at batch 256 bf16 channels_last).

Every run starts with the machine (device, versions, date, command, load), NVML's state (one line
without a GPU), and the measured matmul peak and copy bandwidth (:mod:`benchmarks.peaks`), the
denominators of the "% of peak" columns. It writes ``bench.json`` (everything, machine-readable)
and ``bench.md`` (the tables) under ``--out``, else ``$OUT``, else ``./bench-out``; ``--plot`` adds
PNGs of time and memory against batch size for the losses (:mod:`benchmarks.plots`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: `benchmarks` and `tests` import from the repo root
    sys.path.insert(0, REPO)

import torch  # noqa: E402

from benchmarks import peaks as peaks_mod  # noqa: E402
from benchmarks.nvml import Nvml, NvmlReading  # noqa: E402
from benchmarks.report import Table, machine, machine_line, ratio  # noqa: E402


@dataclass
class Context:
    """What every component adapter gets: where to run, at which sizes, and the measured peaks."""

    device: torch.device
    mode: str  # "quick", "cpu" (the default sizes) or "gpu"
    peaks: peaks_mod.Peaks
    nvml: Nvml
    args: argparse.Namespace


def _kwargs_for(fn: Callable, wanted: dict) -> dict:
    """The entries of ``wanted`` that ``fn`` accepts (component functions grow arguments over time;
    a size it does not take is left to its default)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    return {k: v for k, v in wanted.items() if k in params}


def _sampled(ctx: Context, fn: Callable, *args, **kwargs):
    """Call ``fn`` with NVML polling around it; returns (result, NVML summary dict or None)."""
    with ctx.nvml.sample() as got:
        out = fn(*args, **kwargs)
    return out, (got[0].as_dict() if got[0] is not None else None)


def _nvml_cell(reading: dict | None) -> str | None:
    return NvmlReading(**reading).short() if reading else None


# --- components: the fused losses ----------------------------------------------------------------


def _impl_kind(impl: str) -> str:
    """fused / compiled / eager, from a component's implementation label."""
    low = impl.lower()
    if "flashclr" in low or "fused" in low or "ours" in low:
        return "fused"
    return "compiled" if "compile" in low else "eager"


def _side_by_side(rows: list[dict], size_keys: tuple[str, ...], rename: dict[str, str]) -> list[dict]:
    """Rows of (size, implementation) -> one row per size with every implementation beside the
    fused one: ``<kind>_ms``, ``<kind>_mib``, ``vs_<kind>`` (its time / fused time) and
    ``mem_vs_<kind>`` (its peak / fused peak)."""
    by_size: dict[tuple, dict] = {}
    for r in rows:
        key = tuple(r.get(k) for k in size_keys)
        out = by_size.setdefault(key, {rename.get(k, k): r.get(k) for k in size_keys})
        kind = _impl_kind(r["impl"])
        out[f"{kind}_impl"] = r["impl"]
        out[f"{kind}_ms"] = 1000 * r["time_s"]
        peak = r.get("peak_bytes")
        out[f"{kind}_mib"] = peak / 2**20 if peak is not None else None
        if kind == "fused":
            out["fused_row"] = r
    for out in by_size.values():
        for kind in ("eager", "compiled"):
            out[f"vs_{kind}"] = ratio(out.get(f"{kind}_ms"), out.get("fused_ms"))
            out[f"mem_vs_{kind}"] = ratio(out.get(f"{kind}_mib"), out.get("fused_mib"))
    return list(by_size.values())


def _present(columns: list[tuple[str, str]], rows: list[dict]) -> list[tuple[str, str]]:
    """The columns that at least one row has a figure for (never print an empty column)."""
    return [c for c in columns if any(r.get(c[0]) is not None for r in rows)]


NT_XENT_SIZES = {
    "quick": dict(two_n_list=(64, 256), d=32, repeat=1),
    "cpu": dict(two_n_list=(4096, 8192, 16384), d=128, repeat=3, naive_max=16384),
    "gpu": dict(two_n_list=(4096, 8192, 16384, 32768), d=128, repeat=10, naive_max=32768),
}


def run_nt_xent(ctx: Context) -> Table:
    sizes = dict(NT_XENT_SIZES[ctx.mode])
    notes = []
    if ctx.device.type == "cuda":
        from benchmarks.bench_nt_xent_gpu import bench_nt_xent_gpu

        rows = bench_nt_xent_gpu(device=ctx.device, nvml=ctx.nvml, **sizes)
        notes.append("GPU: CUDA-event timing, peak = torch.cuda.max_memory_allocated (bench_nt_xent_gpu.py).")
    else:
        from benchmarks.bench_nt_xent import bench_nt_xent

        rows, reading = _sampled(ctx, bench_nt_xent, **_kwargs_for(bench_nt_xent, sizes))
        notes.append("CPU: wall clock; peak = torch CPU allocator peak in the call (timing.cpu_peak_bytes).")
    out = _side_by_side(rows, ("two_n", "d", "dtype"), {"two_n": "n2"})
    for r in out:
        fused = r.pop("fused_row", None) or {}
        flop = 6 * r["n2"] ** 2 * r["d"]
        tflops = flop / (r["fused_ms"] / 1000) / 1e12 if r.get("fused_ms") else None
        # TFLOP/s on a GPU, GFLOP/s on the CPU (where TFLOP/s would print as 1e-05).
        if tflops and ctx.device.type == "cuda":
            r["tflops"] = tflops
        elif tflops:
            r["gflops"] = 1000 * tflops
        r["pct_peak"] = 100 * tflops / ctx.peaks.matmul_tflops if tflops else None
        r["dtype"] = r.get("dtype") or "float32"
        r["nvml"] = _nvml_cell(fused.get("nvml"))
    columns = [
        ("n2", "2N"),
        ("d", "D"),
        ("dtype", "dtype"),
        ("fused_ms", "fused ms"),
        ("eager_ms", "eager ms"),
        ("compiled_ms", "compiled ms"),
        ("vs_eager", "eager/fused time"),
        ("vs_compiled", "compiled/fused time"),
        ("fused_mib", "fused MiB"),
        ("eager_mib", "eager MiB"),
        ("compiled_mib", "compiled MiB"),
        ("mem_vs_eager", "eager/fused mem"),
        ("tflops", "fused TFLOP/s"),
        ("gflops", "fused GFLOP/s"),
        ("pct_peak", f"% of {ctx.peaks.matmul_dtype} matmul peak"),
        ("nvml", "NVML util/mem/power/clock (fused)"),
    ]
    notes.append(
        "forward + backward; FLOP counted as 6·(2N)²·D; eager and compiled are tests/references.py's "
        "naive nt_xent_reference (writes the (2N)² matrix) in the inputs' dtype; '-' = not run "
        "(the reference above its size limit) or not measured."
    )
    return Table(
        "nt_xent",
        "NT-Xent loss: fused against the naive reference (eager and torch.compile)",
        _present(columns, out),
        out,
        notes,
        reference=["eager_ms", "vs_eager"],
    )


DISTILL_SIZES = {  # (batches, classes) pairs; the batch sweep at 1000 classes feeds the plot
    "quick": dict(pairs=((16, 10), (64, 10), (64, 100)), dtype="fp32", repeat=1),
    "cpu": dict(pairs=((1024, 1000), (4096, 1000), (4096, 21843)), dtype="fp32", repeat=3),
    "gpu": dict(pairs=((1024, 1000), (4096, 1000), (16384, 1000), (4096, 21843)), dtype="bf16", repeat=10),
}


def run_distill_ce(ctx: Context) -> Table:
    from benchmarks.bench_distill_ce import bench_distill_ce

    sizes = DISTILL_SIZES[ctx.mode]
    rows = []
    for b, c in sizes["pairs"]:
        got, reading = _sampled(
            ctx, bench_distill_ce, b, (c,), dtype=sizes["dtype"], device=ctx.device, repeat=sizes["repeat"]
        )
        for r in got:
            r["time_s"] = r["fwd_bwd_s"]
            r["nvml"] = reading
        rows += got
    out = _side_by_side(rows, ("batch", "classes", "dtype"), {"batch": "b", "classes": "c"})
    for r in out:
        fused = r.pop("fused_row", None) or {}
        r["fused_forward_ms"] = 1000 * fused["forward_s"] if "forward_s" in fused else None
        r["gbps"] = fused.get("gbps")
        r["pct_copy"] = 100 * r["gbps"] / ctx.peaks.copy_gbps if r["gbps"] else None
        r["nvml"] = _nvml_cell(fused.get("nvml"))
    columns = [
        ("b", "B"),
        ("c", "C"),
        ("dtype", "dtype"),
        ("fused_ms", "fused ms"),
        ("eager_ms", "eager ms"),
        ("vs_eager", "eager/fused time"),
        ("fused_forward_ms", "fused fwd-only ms"),
        ("fused_mib", "fused MiB"),
        ("eager_mib", "eager MiB"),
        ("mem_vs_eager", "eager/fused mem"),
        ("gbps", "fused GB/s"),
        ("pct_copy", "% of copy bandwidth"),
        ("nvml", "NVML util/mem/power/clock (run of both)"),
    ]
    notes = [
        "forward + backward (ms columns); eager = tests/references.py distill_ce_reference "
        "(log_softmax + softmax + sum) in the logits' dtype; τ = 1, α = 1; peak memory above the inputs "
        "(CPU: torch allocator peak; GPU: max_memory_allocated); GB/s counts reading both logits "
        "and writing the gradient (bench_distill_ce.py).",
    ]
    return Table(
        "distill_ce",
        "Distillation cross-entropy: fused against eager torch",
        _present(columns, out),
        out,
        notes,
        reference=["eager_ms", "vs_eager"],
    )


# --- component: data pipeline -----------------------------------------------------------------


DATAIO_SIZES = {
    "quick": dict(n_images=16, batch=8, size=32, workers=1, epochs=1),
    "cpu": dict(n_images=400, batch=32, size=224, workers=2, epochs=2),
    "gpu": dict(n_images=2048, batch=256, size=224, workers=min(16, os.cpu_count() or 2), epochs=2),
}


def run_dataio(ctx: Context) -> Table:
    from benchmarks.bench_dataio import bench_dataio

    sizes = dict(DATAIO_SIZES[ctx.mode], device=str(ctx.device))
    kwargs = _kwargs_for(bench_dataio, sizes)
    rows, reading = _sampled(ctx, bench_dataio, **kwargs)
    for r in rows:
        r["nvml"] = reading
    ref = next(r for r in rows if "reference" in r["loader"].lower() or "pil" in r["loader"].lower())
    notes = []
    if ctx.device.type == "cuda" and "device" not in kwargs:
        # bench_dataio measures the CPU-only pipeline; the GPU one is measured here, same JPEGs.
        gpu_row, gpu_reading = _sampled(ctx, _gpu_loader_rate, ctx.device, sizes)
        rows.append({**gpu_row, "nvml": gpu_reading})
        notes.append(
            "The nvJPEG + GPU row is measured by run.py (_gpu_loader_rate) over the same kind of JPEGs."
        )
    out = []
    for r in rows:
        if r is ref:
            continue
        out.append(
            {
                "loader": r["loader"],
                "images_per_s": r["images_per_s"],
                "reference": ref["loader"],
                "reference_images_per_s": ref["images_per_s"],
                "ratio": ratio(r["images_per_s"], ref["images_per_s"]),
                "images": r.get("images"),
                "batch": r.get("batch"),
                "size": r.get("size"),
                "workers": r.get("workers"),
                "nvml": _nvml_cell(r["nvml"]),
            }
        )
    columns = [
        ("loader", "loader"),
        ("images_per_s", "img/s (2 views each)"),
        ("reference", "reference"),
        ("reference_images_per_s", "reference img/s"),
        ("ratio", "ratio"),
        ("images", "images"),
        ("batch", "batch"),
        ("size", "px"),
        ("workers", "workers/threads"),
        ("nvml", "NVML util/mem/power/clock"),
    ]
    columns = [c for c in columns if any(r.get(c[0]) is not None for r in out)]
    notes.append(
        "Full SimCLR augmentation chain on both sides (blur included); JPEGs written by the benchmark."
    )
    title = "Data pipeline: pretraining loader, two views per image"
    return Table("dataio", title, columns, out, notes, reference=["reference_images_per_s", "ratio"])


def _gpu_loader_rate(device, sizes: dict) -> dict:
    """Images per second (two views each) of the pretraining loader decoding with nvJPEG on
    ``device``: one warm-up epoch, then ``epochs`` timed epochs over JPEGs written here."""
    import tempfile

    from benchmarks.bench_dataio import write_jpegs
    from flashclr.dataio import build_loader

    with tempfile.TemporaryDirectory(prefix="flashclr-gpu-loader-") as root:
        write_jpegs(root, sizes["n_images"])
        loader = build_loader(
            "pretrain",
            root,
            batch_size=sizes["batch"],
            image_size=sizes["size"],
            device=device,
            num_threads=sizes["workers"],
        )
        for _ in loader:  # warm-up: pipeline build, nvJPEG handles
            pass
        torch.cuda.synchronize(device)
        t0, n = time.perf_counter(), 0
        for _ in range(sizes["epochs"]):
            for _ in loader:
                n += sizes["batch"]
        torch.cuda.synchronize(device)
        ips = n / (time.perf_counter() - t0)
    return {
        "loader": "flashclr.dataio DALI GPU (nvJPEG)",
        "images_per_s": ips,
        "device": "cuda",
        **{k: sizes[k] for k in ("batch", "size", "workers")},
        "images": sizes["n_images"],
    }


LARS_SIZES = {
    "quick": dict(model_names=("r18_0.25x_sk0",), repeat=1),
    "cpu": dict(model_names=("r18_0.5x_sk0", "r18_1x_sk0", "r50_1x_sk1"), repeat=5),
    "gpu": dict(model_names=("r18_1x_sk0", "r50_1x_sk1", "r152_2x_sk1"), repeat=10),
}


def run_lars(ctx: Context) -> Table:
    from benchmarks.bench_lars import bench_lars

    sizes = LARS_SIZES[ctx.mode]
    out = []
    for name in sizes["model_names"]:
        rows, reading = _sampled(ctx, bench_lars, (name,), device=ctx.device, repeat=sizes["repeat"])
        ours = next(r for r in rows if r["impl"] == "flashclr")
        ref = next(r for r in rows if r is not ours)
        # Minimum traffic of a LARS step: the norm pass reads w and g, the update reads w, g, v and
        # writes w, v: 7 fp32 tensors of every parameter.
        moved = 7 * 4 * ours["parameters"]
        gbps = moved / ours["time_s"] / 1e9
        out.append(
            {
                "model": name,
                "parameters": ours["parameters"],
                "tensors": ours["tensors"],
                "path": ours["path"],
                "ours_ms": 1000 * ours["time_s"],
                "loop_ms": 1000 * ref["time_s"],
                "vs_loop": ratio(ref["time_s"], ours["time_s"]),
                "gbps": gbps,
                "pct_copy": 100 * gbps / ctx.peaks.copy_gbps,
                "nvml": _nvml_cell(reading),
            }
        )
    columns = [
        ("model", "model"),
        ("parameters", "parameters"),
        ("tensors", "tensors"),
        ("path", "flashclr path"),
        ("ours_ms", "flashclr ms"),
        ("loop_ms", "per-parameter loop ms"),
        ("vs_loop", "loop/flashclr time"),
        ("gbps", "flashclr GB/s"),
        ("pct_copy", "% of copy bandwidth"),
        ("nvml", "NVML util/mem/power/clock (run of both)"),
    ]
    notes = [
        "One step over the encoder + 3-layer head (SimCLR's two groups, weight decay 1e-6); the "
        "reference is tests/references_lars.py ReferenceLARS (bench_lars.py). GB/s counts 7 fp32 "
        "tensors per parameter (norms read w, g; the update reads w, g, v and writes w, v)."
    ]
    return Table(
        "lars",
        "LARS optimizer step: flashclr against the per-parameter loop",
        _present(columns, out),
        out,
        notes,
        reference=["loop_ms", "vs_loop"],
    )


# --- component: training step ------------------------------------------------------------------


# Sizes per mode. quick: a quarter-width ResNet-18 on 16-px images (seconds). cpu: r50 at 96 px,
# about a minute per stage on 2 cores. gpu: the r50_1x_sk0, batch 256 per GPU, bf16, NHWC.
TRAIN_STEP_SIZES = {
    "quick": dict(model="r18_0.25x_sk0", batch=4, image_size=16, precision="fp32", channels_last=False),
    "cpu": dict(model="r50_1x_sk0", batch=16, image_size=96, precision="fp32", channels_last=False),
    "gpu": dict(model="r50_1x_sk0", batch=256, image_size=224, precision="bf16", channels_last=True),
}
# (warm-up, timed) steps; quick times a cold step: its figures only show that the step runs.
TRAIN_STEP_STEPS = {"quick": (0, 1), "cpu": (2, 5), "gpu": (5, 15)}


def run_train_step(ctx: Context) -> Table:
    from benchmarks import bench_train_step as bts

    a = ctx.args
    cfg = dict(TRAIN_STEP_SIZES[ctx.mode])
    for key in cfg:
        if getattr(a, key) is not None:
            cfg[key] = getattr(a, key)
    warmup, steps = TRAIN_STEP_STEPS[ctx.mode]
    rows, notes = [], []
    for stage in bts.STAGES:
        try:
            rows += bts.bench_train_step(
                stage=stage,
                warmup=warmup,
                steps=steps,
                small_images=cfg["image_size"] <= 64,
                data=a.train_data,
                peak_tflops=ctx.peaks.matmul_tflops,
                device=ctx.device,
                nvml=ctx.nvml,
                **cfg,
            )
        except (ImportError, AttributeError) as exc:  # a piece (loss, reference) not in the checkout
            notes.append(f"{stage} step: skipped, a piece is missing ({type(exc).__name__}: {exc})")
    if not rows:
        raise RuntimeError("; ".join(notes))
    table = bts.table(rows, ctx.peaks.line())
    table.notes += notes
    return table


# --- the issues' GPU targets --------------------------------------------------------------------

# (target, table, row filter, column, minimum, unit): the figures gpu_check.sh must reach on one H200.
TARGETS = (
    ("NT-Xent fused ≥ 75% of the measured bf16 matmul peak (2N ≥ 16384, D = 128)", "nt_xent",
     lambda r: r["n2"] >= 16384 and r["d"] == 128, "pct_peak", 75.0, "%"),
    ("NT-Xent fused ≥ 5× the eager reference (2N ≥ 16384, D = 128)", "nt_xent",
     lambda r: r["n2"] >= 16384 and r["d"] == 128, "vs_eager", 5.0, "×"),
    ("distillation CE ≥ 85% of the measured copy bandwidth (B = 4096)", "distill_ce",
     lambda r: r["b"] == 4096, "pct_copy", 85.0, "%"),
    ("distillation CE ≥ 2× eager torch (B = 4096)", "distill_ce",
     lambda r: r["b"] == 4096, "vs_eager", 2.0, "×"),
    ("r50_1x_sk0 pretraining ≥ 2,500 images/s (batch 256, bf16, channels_last, fused loss)", "train_step",
     lambda r: r["stage"] == "pretrain" and r["loss"] == "fused" and r["model"] == "r50_1x_sk0"
     and r["batch"] == 256 and r["precision"] == "bf16" and r["channels_last"],
     "images_per_s", 2500.0, " img/s"),
    ("DALI nvJPEG + GPU pretraining loader ≥ 5,000 images/s (two 224-px views)", "dataio",
     lambda r: "GPU" in r["loader"] and r.get("size") == 224, "images_per_s", 5000.0, " img/s"),
)  # fmt: skip


def targets_table(tables: list[dict]) -> Table:
    """Each target beside the figures measured for it; ``met`` is None where nothing was measured."""
    rows_of = {t["name"]: t["rows"] for t in tables}
    out = []
    for target, table, keep, column, minimum, unit in TARGETS:
        values = [(r, r.get(column)) for r in rows_of.get(table, []) if keep(r) and r.get(column) is not None]
        measured = "; ".join(f"{v:,.3g}{unit}" + _where(table, r) for r, v in values) or "not measured"
        met = all(v >= minimum for _, v in values) if values else None
        out.append({"target": target, "measured": measured, "met": met})
    columns = [("target", "target"), ("measured", "measured in this run"), ("met", "met")]
    return Table("targets", "Targets of the issues on one GPU", columns, out, [], reference=["measured"])


def _where(table: str, row: dict) -> str:
    if table == "nt_xent":
        return f" at 2N={row['n2']}"
    if table == "distill_ce":
        return f" at C={row['c']}"
    return ""


# --- the runner --------------------------------------------------------------------------------

COMPONENTS: dict[str, tuple[str, Callable[[Context], Table], str]] = {
    # name: (module under benchmarks/, adapter, who provides it)
    "nt_xent": ("bench_nt_xent", run_nt_xent, "issue 3"),
    "distill_ce": ("bench_distill_ce", run_distill_ce, "issue 4"),
    "dataio": ("bench_dataio", run_dataio, "issue 6"),
    "lars": ("bench_lars", run_lars, "issue 8"),
    "train_step": ("bench_train_step", run_train_step, "issue 9"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes: seconds, for smoke tests")
    size.add_argument("--gpu", action="store_true", help="the GPU sizes of gpu_check.sh (needs CUDA)")
    p.add_argument("--plot", action="store_true", help="write PNGs of time/memory against batch size")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else ./bench-out)")
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(COMPONENTS)}")
    t = p.add_argument_group("training step (defaults depend on the size mode)")
    t.add_argument("--model", default=None, help="e.g. r50_1x_sk0 (flashclr.core.models.list_models())")
    t.add_argument("--batch", type=int, default=None, help="images per step")
    t.add_argument("--image-size", type=int, default=None)
    t.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument(
        "--train-data", choices=("synthetic", "dali"), default="synthetic",
        help="synthetic: a pre-made batch (compute only); dali: flashclr.dataio over written JPEGs",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.only:
        args.only = [c.strip() for c in args.only.split(",") if c.strip()]
        unknown = [c for c in args.only if c not in COMPONENTS]
        if unknown:
            p.error(f"--only: unknown component(s) {unknown}; known: {', '.join(COMPONENTS)}")
    else:
        args.only = list(COMPONENTS)
    if args.gpu and not torch.cuda.is_available():
        p.error("--gpu needs a CUDA device, and torch sees none (drop --gpu for the CPU sizes)")
    return args


def out_dir(args: argparse.Namespace) -> str:
    return args.out or os.environ.get("OUT") or os.path.join(os.getcwd(), "bench-out")


def main(argv: list[str] | None = None) -> dict:
    """Run the selected components; returns what it writes to ``bench.json``."""
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mode = "quick" if args.quick else ("gpu" if args.gpu else "cpu")
    folder = out_dir(args)
    os.makedirs(folder, exist_ok=True)

    info = machine(device)
    info["command"] = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(machine_line(info), flush=True)
    nvml = Nvml()
    print(nvml.describe() if nvml.available else nvml.reason, flush=True)
    pk = peaks_mod.measure(device, quick=args.quick)
    print(pk.line(), flush=True)
    ctx = Context(device, mode, pk, nvml, args)

    result = {"machine": info, "mode": mode, "nvml": nvml.reason or nvml.name, "peaks": pk.as_dict()}
    result.update(tables=[], skipped=[], failed=[])
    for name in args.only:
        module, adapter, owner = COMPONENTS[name]
        if importlib.util.find_spec(f"benchmarks.{module}") is None:
            line = f"{name}: benchmarks/{module}.py is not in this checkout ({owner}); skipped"
            print(line, flush=True)
            result["skipped"].append({"component": name, "reason": line})
            continue
        t0 = time.perf_counter()
        try:
            table = adapter(ctx)
        except Exception as exc:  # one component failing must not lose the others' figures
            line = f"{name}: FAILED ({type(exc).__name__}: {exc})"
            print(line, flush=True)
            result["failed"].append({"component": name, "error": line, "traceback": traceback.format_exc()})
            continue
        table.notes.append(f"({name} took {time.perf_counter() - t0:.0f} s in this run)")
        print("\n" + table.text() + "\n", flush=True)
        result["tables"].append(table.as_dict())
        _write(folder, result)  # after each component: a run cut short keeps what it measured

    if mode == "gpu":
        table = targets_table(result["tables"])
        print("\n" + table.text() + "\n", flush=True)
        result["tables"].append(table.as_dict())
    info["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    _write(folder, result)
    if args.plot:
        from benchmarks import plots

        for path in plots.write(result, folder):
            print(f"plot: {path}")
    print(f"wrote {os.path.join(folder, 'bench.json')} and bench.md")
    return result


def _write(folder: str, result: dict) -> None:
    with open(os.path.join(folder, "bench.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, default=str)
    info = result["machine"]
    lines = [
        machine_line(info),
        result["nvml"] if isinstance(result["nvml"], str) else "",
        peaks_mod.Peaks(**result["peaks"]).line(),
        "",
    ]
    lines += [s["reason"] for s in result["skipped"]] + [f["error"] for f in result["failed"]]
    for t in result["tables"]:
        table = Table(**{**t, "columns": [tuple(c) for c in t["columns"]]})
        lines += ["", table.text()]
    with open(os.path.join(folder, "bench.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines).strip() + "\n")


if __name__ == "__main__":
    main()
