"""Training metrics: one JSON object per line while a stage runs, one PNG of its curves at the end.

Only rank 0 writes. A resumed run appends to the same file; the plot then shows the whole curve.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


class MetricsLog:
    """Appends records such as ``{"step": 10, "loss": 4.2, "lr": 0.3, "images_per_s": 812.0}``
    to ``path`` (JSON lines). A no-op when ``enabled`` is false (ranks other than 0)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(self, record: Mapping[str, float | int | str]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(dict(record)) + "\n")


def read_metrics(path: str) -> list[dict]:
    """Every record of a JSON-lines metrics file, in order."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_metrics(path: str, png_path: str, title: str) -> str:
    """Plot every numeric series of ``path`` against ``step`` into ``png_path``, one panel each."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    records = read_metrics(path)
    keys = sorted({k for r in records for k, v in r.items() if k != "step" and isinstance(v, int | float)})
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * max(len(keys), 1)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        points = [(r["step"], r[key]) for r in records if key in r and "step" in r]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
