"""Timing helpers shared by the benchmarks: CUDA events on a GPU, a wall clock on the CPU.

Every function takes the device the work runs on and synchronises it, so a figure is the time the
work took, not the time to queue it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Marks points in a stream of work and returns the seconds between consecutive marks.

    On CUDA each mark records an event on the current stream (no synchronisation until
    :meth:`laps`); on the CPU it reads ``time.perf_counter`` (the work is synchronous there).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._marks: list = []

    def mark(self) -> None:
        if self.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    def laps(self) -> list[float]:
        """Seconds between each pair of consecutive marks; clears the marks."""
        marks, self._marks = self._marks, []
        if self.device.type == "cuda":
            marks[-1].synchronize()
            return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:], strict=False)]
        return [b - a for a, b in zip(marks, marks[1:], strict=False)]


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 1, repeat: int = 5) -> dict:
    """Run ``fn`` ``warmup`` times untimed, then ``repeat`` times timed.

    Returns ``{"median_s", "min_s", "repeat"}``; the median is the figure to report (the minimum
    is kept to show the spread on a shared machine).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        watch = Stopwatch(device)
        watch.mark()
        fn()
        watch.mark()
        times.append(watch.laps()[0])
    return {"median_s": statistics.median(times), "min_s": min(times), "repeat": repeat}


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak CUDA memory allocated while ``fn`` runs, above what was allocated before; ``None``
    off CUDA (CPU peak memory is measured by the component benchmarks that need it)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
