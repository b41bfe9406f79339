"""Timing helpers shared by the benchmarks: CUDA events on a GPU, a wall clock on the CPU.

Every function takes the device the work runs on and synchronises it, so a figure is the time the
work took, not the time to queue it.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
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


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes held by torch's CPU allocator while ``fn`` runs, above what it held before.

    Read from the profiler's allocator events (``profile_memory=True``): every allocation and free
    of a CPU tensor, in order, whichever thread made it, compiled (inductor) code included. Unlike
    the process's resident set, it does not depend on whether malloc hands freed blocks back to the
    OS or reuses them, so a second call shows the same peak as the first. Memory that is not a torch
    tensor (Python objects, the compiler's own) is not in it. The profiler slows ``fn``: never time
    the same call.
    """
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():  # kineto prints a line to fd 2 at start and at stop
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if e.device_type() == torch.autograd.DeviceType.CPU:
            held += e.nbytes()
            peak = max(peak, held)
    return peak


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null for the block (C++ code writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)
