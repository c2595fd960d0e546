"""NVIDIA GPUs read through NVML (nvidia-ml-py): capacity, use and utilisation, no torch."""

from __future__ import annotations

import logging
from typing import Any

from hpo.devices._base import Device, DeviceSnapshot, capped

logger = logging.getLogger(__name__)


def _nvml() -> Any | None:
    """The initialised pynvml module, or None when there is no driver or library."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError …
        logger.debug("NVML unavailable: %s", e)
        return None


def nvidia_count() -> int:
    """Number of NVIDIA GPUs NVML sees (0 without a driver)."""
    nvml = _nvml()
    if nvml is None:
        return 0
    try:
        return int(nvml.nvmlDeviceGetCount())
    except Exception:
        return 0


class NvidiaDevice(Device):
    """GPU ``index`` as NVML sees it; ``capacity_gib`` makes hpo plan as if it were smaller."""

    def __init__(self, index: int, capacity_gib: float | None = None) -> None:
        nvml = _nvml()
        if nvml is None:
            raise RuntimeError("NVML is not available: no NVIDIA driver on this machine")
        if not 0 <= index < nvml.nvmlDeviceGetCount():
            raise ValueError(f"GPU index must be in [0, {nvml.nvmlDeviceGetCount()}), got {index}")
        self._nvml = nvml
        self._index = index
        self._handle = nvml.nvmlDeviceGetHandleByIndex(index)
        total = int(nvml.nvmlDeviceGetMemoryInfo(self._handle).total)
        self._capacity = capped(total, capacity_gib)

    @property
    def label(self) -> str:
        return f"cuda:{self._index}"

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    def snapshot(self) -> DeviceSnapshot:
        mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
        return DeviceSnapshot(self.label, self._capacity, int(mem.used), util.gpu / 100.0)
