"""CPU-only execution: no device memory to plan, so no VRAM figures at all."""

from __future__ import annotations

import psutil

from hpo.devices._base import Device, DeviceSnapshot


class CpuDevice(Device):
    """Trials run on the host CPU; the VRAM user attributes stay absent (never a fake zero)."""

    @property
    def label(self) -> str:
        return "cpu"

    @property
    def capacity_bytes(self) -> int | None:
        return None

    def snapshot(self) -> DeviceSnapshot:
        return DeviceSnapshot(self.label, None, None, psutil.cpu_percent(interval=None) / 100.0)
