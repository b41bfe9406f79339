"""GPU readings through NVML (the official binding, distribution ``nvidia-ml-py``, module ``pynvml``).

Each benchmark figure is measured inside :meth:`Nvml.sample`, which polls the device from a
background thread and returns the mean utilisation, the peak memory used, the mean power and the
mean SM and memory clocks over the measurement. Without a GPU, without the NVML library or without
the binding, :class:`Nvml` is unavailable: ``Nvml().reason`` says why in one line and sampling
returns ``None``. Nothing here ever raises because NVML is missing.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass


@dataclass
class NvmlReading:
    """What NVML reported over one measurement (means, except memory which is the peak)."""

    gpu_util_pct: float
    mem_util_pct: float
    mem_used_gib: float
    power_w: float
    sm_clock_mhz: float
    mem_clock_mhz: float
    samples: int

    def as_dict(self) -> dict:
        return asdict(self)

    def short(self) -> str:
        """One compact cell for a table: ``util% / GiB / W / MHz``."""
        return (
            f"{self.gpu_util_pct:.0f}% {self.mem_used_gib:.1f}GiB {self.power_w:.0f}W "
            f"{self.sm_clock_mhz:.0f}MHz"
        )


class Nvml:
    """NVML handle for one device (the current CUDA device, or index ``device_index``).

    ``available`` is False, with ``reason`` set to one line, when NVML cannot be used.
    """

    def __init__(self, device_index: int | None = None):
        self.available = False
        self.reason = ""
        self.name = ""
        self._handle = None
        try:
            import pynvml
        except ImportError:
            self.reason = "NVML: nvidia-ml-py is not installed (pip install nvidia-ml-py); no GPU readings"
            return
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            self.reason = f"NVML: unavailable on this machine ({err}); no GPU readings"
            return
        try:
            if pynvml.nvmlDeviceGetCount() == 0:
                self.reason = "NVML: no GPU on this machine; no GPU readings"
                return
            index = self._device_index() if device_index is None else device_index
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(self._handle)
            self.name = name.decode() if isinstance(name, bytes) else name
        except pynvml.NVMLError as err:
            self.reason = f"NVML: cannot open the device ({err}); no GPU readings"
            return
        self.available = True

    @staticmethod
    def _device_index() -> int:
        """NVML's index of torch's current CUDA device (CUDA_VISIBLE_DEVICES renumbers devices
        for torch; NVML numbers them physically)."""
        current = 0
        try:
            import torch

            if torch.cuda.is_available():
                current = torch.cuda.current_device()
        except Exception:  # torch without CUDA support: the first device
            pass
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if current < len(visible) and visible[current].isdigit():
            return int(visible[current])
        return current

    def read(self) -> dict | None:
        """One instantaneous reading, or ``None`` without NVML (or if a query fails)."""
        if not self.available:
            return None
        n = self._nvml
        try:
            util = n.nvmlDeviceGetUtilizationRates(self._handle)
            mem = n.nvmlDeviceGetMemoryInfo(self._handle)
            try:
                power = n.nvmlDeviceGetPowerUsage(self._handle) / 1000.0
            except n.NVMLError:  # some boards (and MIG slices) do not report power
                power = float("nan")
            sm = n.nvmlDeviceGetClockInfo(self._handle, n.NVML_CLOCK_SM)
            memclk = n.nvmlDeviceGetClockInfo(self._handle, n.NVML_CLOCK_MEM)
        except n.NVMLError:
            return None
        return {
            "gpu_util_pct": float(util.gpu),
            "mem_util_pct": float(util.memory),
            "mem_used_gib": mem.used / 2**30,
            "power_w": power,
            "sm_clock_mhz": float(sm),
            "mem_clock_mhz": float(memclk),
        }

    @contextlib.contextmanager
    def sample(self, interval_s: float = 0.05) -> Iterator[list]:
        """Poll NVML every ``interval_s`` while the block runs.

        Yields a list that, after the block, holds one :class:`NvmlReading` (or ``None`` without
        NVML or when no sample was taken)::

            with nvml.sample() as got:
                run()
            reading = got[0]
        """
        box: list = [None]
        if not self.available:
            yield box
            return
        readings: list[dict] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                r = self.read()
                if r is not None:
                    readings.append(r)
                stop.wait(interval_s)

        thread = threading.Thread(target=poll, name="nvml-sampler", daemon=True)
        thread.start()
        try:
            yield box
        finally:
            stop.set()
            thread.join()
            # Very short measurements can end before the first poll: take one reading then.
            if not readings:
                r = self.read()
                if r is not None:
                    readings.append(r)
            if readings:
                box[0] = _summarise(readings)

    def describe(self) -> str:
        """One line: the device and its idle reading, or why NVML is absent."""
        if not self.available:
            return self.reason
        r = self.read() or {}
        nan = float("nan")
        return (
            f"NVML: {self.name}, {r.get('mem_used_gib', nan):.1f} GiB used, "
            f"{r.get('power_w', nan):.0f} W, SM {r.get('sm_clock_mhz', nan):.0f} MHz at start"
        )


def _summarise(readings: list[dict]) -> NvmlReading:
    def mean(key: str) -> float:
        return sum(r[key] for r in readings) / len(readings)

    return NvmlReading(
        gpu_util_pct=mean("gpu_util_pct"),
        mem_util_pct=mean("mem_util_pct"),
        mem_used_gib=max(r["mem_used_gib"] for r in readings),
        power_w=mean("power_w"),
        sm_clock_mhz=mean("sm_clock_mhz"),
        mem_clock_mhz=mean("mem_clock_mhz"),
        samples=len(readings),
    )


def _main() -> None:
    nvml = Nvml()
    print(nvml.describe())
    if nvml.available:
        with nvml.sample() as got:
            time.sleep(0.3)
        print(got[0].short())


if __name__ == "__main__":
    _main()
