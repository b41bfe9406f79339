"""The table at the end of ``make demo``: validation accuracy of every run of the demo.

``python -m flashclr.core.report RUNS_DIR`` reads ``RUNS_DIR/<run>/eval.json`` (written by train.py
when a stage with a classifier finishes) for the runs below, prints a Markdown table and writes it
to ``RUNS_DIR/results.md``. A missing run is shown as such rather than failing the report.
"""

from __future__ import annotations

import json
import os
import sys
import time

# (run directory, what it measures)
ROWS = (
    ("supervised", "supervised only: random init, fine-tuned on the same 10% labels"),
    ("linear_random", "linear probe on frozen features of a random encoder"),
    ("linear_pretrained", "linear probe on frozen features of the pretrained encoder"),
    ("finetune", "SimCLR v2: pretrained, fine-tuned from head layer 1 on 10% labels"),
    ("distill", "distilled student (teacher: the fine-tuned model; unlabelled train images)"),
)


def _read(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def table(runs_dir: str) -> str:
    """The Markdown table of validation top-1 accuracy for :data:`ROWS` under ``runs_dir``."""
    lines = ["| run | val top-1 | images |", "|---|---|---|"]
    for name, what in ROWS:
        result = _read(os.path.join(runs_dir, name, "eval.json"))
        if result is None:
            lines.append(f"| {what} | missing ({name}/eval.json) | |")
        else:
            lines.append(f"| {what} | {result['val_top1']:.3f} | {result['val_images']} |")
    memory = _read(os.path.join(runs_dir, "distill", "teacher_memory.json"))
    if memory is not None:
        held = ", ".join(f"{b / 2**20:.2f}" for b in memory["per_rank_bytes"])
        lines.append("")
        lines.append(
            f"Teacher (ZeRO-3): {memory['teacher_bytes'] / 2**20:.2f} MiB of parameters, held per rank: "
            f"{held} MiB over {memory['world_size']} ranks."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m flashclr.core.report RUNS_DIR")
    runs_dir = args[0]
    text = table(runs_dir)
    start = os.path.join(runs_dir, "started")
    if os.path.isfile(start):
        with open(start, encoding="utf-8") as f:
            elapsed = time.time() - float(f.read().strip())
        text += f"\n\nWhole demo: {elapsed / 60:.1f} min wall clock."
    with open(os.path.join(runs_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
