"""Result tables and the description of the machine they were measured on.

A :class:`Table` is what every benchmark hands to ``run.py``: a title, named columns and rows of
plain values (so the whole run serialises to JSON), plus notes. ``Table.text()`` renders it as a
Markdown table, the form printed on the terminal and pasted into the README.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Table:
    """One component's results.

    ``columns`` are ``(key, header)`` pairs; each row is a dict over those keys (missing keys and
    ``None`` print as ``-``: a figure that was not measured is never printed). ``reference`` names
    the columns that hold the reference's figures or the ratio against it.
    """

    name: str
    title: str
    columns: list[tuple[str, str]]
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reference: list[str] = field(default_factory=list)

    def text(self) -> str:
        headers = [h for _, h in self.columns]
        lines = [f"### {self.title}", "", "| " + " | ".join(headers) + " |"]
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        for row in self.rows:
            lines.append("| " + " | ".join(fmt(row.get(k)) for k, _ in self.columns) + " |")
        lines.extend(["", *self.notes] if self.notes else [])
        return "\n".join(lines)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["columns"] = [list(c) for c in self.columns]
        return d


def fmt(value) -> str:
    """Three significant figures for floats, thousands separators for big integers."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"
    return str(value)


def ratio(reference: float | None, ours: float | None) -> float | None:
    """reference / ours: above 1 means ours is faster (for times) or smaller (for memory)."""
    if reference is None or ours is None or ours <= 0:
        return None
    return reference / ours


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    """Where and when the figures were taken: device, CPU, versions, date, command, load."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable), *sys.argv]),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = None
    return info


def machine_line(info: dict) -> str:
    where = info["gpu"] or f"{info['cpu_cores']}-core CPU ({info['cpu']}), no GPU"
    return (
        f"machine: {where}; torch {info['torch']}, triton {info['triton']}; {info['date_utc']}; "
        f"load average {info['load_avg_1m_at_start']} at start; command: {info['command']}"
    )
