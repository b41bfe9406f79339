"""``run.py --plot``: time and peak memory of the losses against batch size, fused vs reference.

One PNG per loss table of a run (``nt_xent.png``, ``distill_ce.png``), two log-log panels each:
forward+backward time and peak memory against the batch size (2N for NT-Xent, B for distillation),
one line per implementation (fused, eager, torch.compile), and per class count for distillation.
On log axes the naive NT-Xent's O(N²) memory is a line of slope 2 and the fused one's O(N) a line
of slope 1. A figure that was not measured (for example CPU peak memory that a component did not
report) is simply absent from the panel.
"""

from __future__ import annotations

import os
from collections import defaultdict

# Loss tables that are plotted: table name -> (batch-size key, its axis label, grouping key).
PLOTTED = {
    "nt_xent": ("n2", "2N (views in the batch)", "d"),
    "distill_ce": ("b", "B (rows)", "c"),
}
IMPLS = ("fused", "eager", "compiled")
STYLE = {"fused": "o-", "eager": "s--", "compiled": "^:"}


def _series(rows: list[dict], x_key: str, group_key: str, suffix: str) -> dict[str, list[tuple]]:
    """label -> sorted [(x, y)] for every implementation that reports ``<impl><suffix>``."""
    out: dict[str, list[tuple]] = defaultdict(list)
    groups = {r.get(group_key) for r in rows}
    for r in rows:
        for impl in IMPLS:
            y = r.get(f"{impl}{suffix}")
            if y is None or y <= 0 or r.get(x_key) is None:  # log axes: a 0 (below resolution) is left out
                continue
            label = impl if len(groups) == 1 else f"{impl}, {group_key.upper()}={r.get(group_key)}"
            out[label].append((r[x_key], y))
    return {k: sorted(v) for k, v in out.items() if v}


def write(result: dict, folder: str) -> list[str]:
    """Write one PNG per plotted loss table of ``result`` (run.py's JSON) into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    machine = result["machine"]
    where = machine.get("gpu") or f"{machine['cpu_cores']}-core CPU"
    paths = []
    for table in result["tables"]:
        if table["name"] not in PLOTTED:
            continue
        x_key, x_label, group_key = PLOTTED[table["name"]]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        panels = ((axes[0], "_ms", "forward + backward (ms)"), (axes[1], "_mib", "peak memory (MiB)"))
        for ax, suffix, y_label in panels:
            series = _series(table["rows"], x_key, group_key, suffix)
            for label, points in series.items():
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, STYLE[label.split(",")[0]], label=label)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.grid(True, which="both", alpha=0.3)
            if series:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        fig.suptitle(f"{table['title']} — {where}, {machine['date_utc']}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(folder, f"{table['name']}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
